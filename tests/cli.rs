//! The `sealgate device ...` commands against a running gateway, and bad
//! command-line and configuration input getting a clear answer.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn cli(gw: &Gateway, args: &[&str]) -> Output {
    Command::new(sealgate_bin())
        .env_clear()
        .env("SEALGATE_ADMIN_URL", &gw.http_url)
        .env("SEALGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .arg("device")
        .args(args)
        .output()
        .expect("run sealgate")
}

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn device_lifecycle_through_the_cli() {
    let gw = Gateway::start(&[]);
    let added = ok_json(cli(&gw, &["add", "ESP32-CLI", "--json"]));
    assert_eq!(added["device_id"], "esp32-cli");
    assert_eq!(added["kid"], 1);
    assert_eq!(added["secret"].as_str().unwrap().len(), 64);
    assert!(added["mqtt_password"]
        .as_str()
        .unwrap()
        .starts_with("v1:0:"));

    // The secret is shown once: nothing else prints it.
    let shown = cli(&gw, &["show", "esp32-cli", "--json"]);
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(!text.contains(added["secret"].as_str().unwrap()));
    assert_eq!(ok_json(shown)["state"], "active");

    assert!(cli(&gw, &["rename", "esp32-cli", "roof sensor"])
        .status
        .success());
    let rotated = ok_json(cli(&gw, &["rotate", "esp32-cli", "--json"]));
    assert_eq!(rotated["kid"], 2);
    assert_ne!(rotated["secret"], added["secret"]);
    assert!(cli(&gw, &["reset-nonce", "esp32-cli"]).status.success());
    let shown = ok_json(cli(&gw, &["show", "esp32-cli", "--json"]));
    assert_eq!(shown["label"], "roof sensor");
    assert_eq!(shown["previous_kid"], 1);

    assert!(cli(&gw, &["revoke", "esp32-cli"]).status.success());
    let list = ok_json(cli(&gw, &["list", "--json"]));
    assert_eq!(list["devices"][0]["state"], "revoked");
    let table = cli(&gw, &["list"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains("esp32-cli") && table.contains("revoked") && table.contains("never"),
        "{table}"
    );

    // add-bulk writes the credentials file, readable by the owner only.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.json");
    let out = cli(
        &gw,
        &[
            "add-bulk",
            "--prefix",
            "f-",
            "--count",
            "3",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let bulk: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let ids: Vec<&str> = bulk["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["f-0001", "f-0002", "f-0003"]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn legacy_devices_through_the_cli() {
    let gw = Gateway::start(&[]);
    let hmac = "7d2a9c41e0b35f66a18e04c9d27b3f5510aa9be4c3d2f1e0ff11223344556677";
    let aes = "3c4fcf098815f7aba6d2ae2816157e2b";
    // Keys from the environment, as the help advises (arguments are visible
    // to other local users).
    let out = Command::new(sealgate_bin())
        .env_clear()
        .env("SEALGATE_ADMIN_URL", &gw.http_url)
        .env("SEALGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SEALGATE_PSK_HMAC", hmac)
        .env("SEALGATE_PSK_AES", aes)
        .env("SEALGATE_PSK_IV", "000102030405060708090a0b0c0d0e0f")
        .args([
            "device",
            "add",
            "ecowatt-7",
            "--profile",
            "legacy-ecowatt",
            "--json",
        ])
        .output()
        .unwrap();
    let added = ok_json(out);
    assert!(added.get("secret").is_none(), "{added}");
    assert!(added["mqtt_password"]
        .as_str()
        .unwrap()
        .starts_with("v1:0:"));
    let shown = cli(&gw, &["show", "ecowatt-7", "--json"]);
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(!text.contains(hmac) && !text.contains(aes), "{text}");
    assert_eq!(ok_json(shown)["profile"], "legacy-ecowatt");

    // Bad keys: the field is named, its value never echoed.
    let out = cli(
        &gw,
        &[
            "add",
            "e8",
            "--profile",
            "legacy-ecowatt",
            "--psk-hmac",
            "zz-secret-zz",
            "--psk-aes",
            aes,
            "--iv",
            aes,
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("400") && err.contains("psk_hmac must be hex"),
        "{err}"
    );
    assert!(!err.contains("zz-secret-zz") && !err.contains(aes), "{err}");
    let out = cli(&gw, &["add", "e9", "--profile", "legacy-ecowatt"]);
    assert!(
        stderr(&out).contains("needs --psk-hmac"),
        "{}",
        stderr(&out)
    );
    let out = cli(&gw, &["add", "e9", "--psk-aes", aes]);
    assert!(
        stderr(&out).contains("need --profile legacy-ecowatt"),
        "{}",
        stderr(&out)
    );

    let migrated = ok_json(cli(&gw, &["migrate", "ecowatt-7", "--json"]));
    assert_eq!(migrated["secret"].as_str().unwrap().len(), 64);
    assert_eq!(
        ok_json(cli(&gw, &["show", "ecowatt-7", "--json"]))["profile"],
        "v1"
    );
    let again = cli(&gw, &["migrate", "ecowatt-7"]);
    assert!(stderr(&again).contains("409"), "{}", stderr(&again));
}

/// `sealgate tenant ...`, and `sealgate device ...` with a tenant's key.
#[test]
fn tenants_through_the_cli() {
    let gw = Gateway::start(&[]);
    let run = |token: &str, args: &[&str]| {
        Command::new(sealgate_bin())
            .env_clear()
            .env("SEALGATE_ADMIN_URL", &gw.http_url)
            .env("SEALGATE_ADMIN_TOKEN", token)
            .args(args)
            .output()
            .unwrap()
    };
    let acme = ok_json(run(ADMIN_TOKEN, &["tenant", "add", "acme", "--json"]));
    let key = acme["api_key"].as_str().unwrap().to_owned();
    let out = run(ADMIN_TOKEN, &["tenant", "add", "Bad Name"]);
    assert!(stderr(&out).contains("400"), "{}", stderr(&out));
    ok_json(run(ADMIN_TOKEN, &["device", "add", "meter-0042", "--json"]));
    assert!(
        run(ADMIN_TOKEN, &["device", "assign", "meter-0042", "acme"])
            .status
            .success()
    );
    let list = ok_json(run(&key, &["device", "list", "--json"]));
    assert_eq!(list["devices"][0]["device_id"], "meter-0042");
    assert_eq!(list["devices"][0]["owner"], "acme");
    let tenants = ok_json(run(ADMIN_TOKEN, &["tenant", "list", "--json"]));
    assert_eq!(tenants["tenants"][0]["devices"], 1);
    let out = run(&key, &["tenant", "list"]);
    assert!(
        stderr(&out).contains("403 operator_only"),
        "{}",
        stderr(&out)
    );
    let code = ok_json(run(&key, &["tenant", "pairing-code", "--json"]));
    assert_eq!(code["tenant"], "acme");
    assert!(run(ADMIN_TOKEN, &["device", "release", "meter-0042"])
        .status
        .success());
    assert_eq!(
        ok_json(run(&key, &["device", "list", "--json"]))["devices"],
        serde_json::json!([])
    );
    // The printed claim code of meter-0042 (claim-vectors.json).
    let claimed = ok_json(run(
        &key,
        &[
            "device",
            "claim",
            "meter-0042",
            "--claim-code",
            "VWMR-VATC-CPVL-MXSM",
            "--json",
        ],
    ));
    assert_eq!(claimed["tenant"], "acme");
    let rotated = ok_json(run(
        ADMIN_TOKEN,
        &["tenant", "rotate-key", "acme", "--json"],
    ));
    assert_ne!(rotated["api_key"], acme["api_key"]);
    assert!(stderr(&run(&key, &["device", "list"])).contains("401"));
}

#[test]
fn errors_are_specific() {
    let gw = Gateway::start(&[]);
    let out = cli(&gw, &["show", "nobody"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("404 not_found"), "{}", stderr(&out));
    let out = cli(&gw, &["add", "bad id!"]);
    assert!(
        stderr(&out).contains("400 bad_request") && stderr(&out).contains("device id"),
        "{}",
        stderr(&out)
    );
    cli(&gw, &["add", "twice"]);
    let out = cli(&gw, &["add", "twice"]);
    assert!(stderr(&out).contains("409 conflict"), "{}", stderr(&out));
    let out = Command::new(sealgate_bin())
        .env_clear()
        .env("SEALGATE_ADMIN_URL", &gw.http_url)
        .env("SEALGATE_ADMIN_TOKEN", "wrong-token-0123456789")
        .args(["device", "list"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("401 unauthorized"),
        "{}",
        stderr(&out)
    );
    // Out-of-range and missing arguments are usage errors (exit 2).
    let out = cli(
        &gw,
        &[
            "add-bulk",
            "--prefix",
            "x",
            "--count",
            "0",
            "--out",
            "/tmp/never",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn bad_configuration_stops_startup_naming_the_variable() {
    for (var, value) in [
        ("SEALGATE_MQTT_LISTEN", "not-an-address"),
        ("SEALGATE_MASTER_KEY", "abcd"),
        ("SEALGATE_USERS", "nopassword"),
        ("SEALGATE_AUTO_REGISTER", "perhaps"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(sealgate_bin())
            .env_clear()
            .env("SEALGATE_DATA_DIR", dir.path())
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let err = stderr(&out);
        assert!(err.contains(var), "{var}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = Command::new(sealgate_bin())
        .env_clear()
        .env("SEALGATE_CONFIG", "/nonexistent/sealgate.toml")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("/nonexistent/sealgate.toml"),
        "{}",
        stderr(&out)
    );
}

/// How a gateway started on a data directory ended up.
enum Startup {
    /// It logged "sealgate ready." and was then killed.
    Ready,
    /// It exited on its own, with this stderr.
    Exited(std::process::ExitStatus, String),
}

/// Runs the gateway on `dir` with no key or token in the environment until
/// it is ready (then kills it) or exits; fails after `WAIT`.
fn start_on_data_dir(dir: &std::path::Path) -> Startup {
    use std::io::BufRead;
    let mut child = Command::new(sealgate_bin())
        .env_clear()
        .env("SEALGATE_DATA_DIR", dir)
        .env("SEALGATE_MQTT_LISTEN", "127.0.0.1:0")
        .env("SEALGATE_HTTP_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = String::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(line) if line.contains("sealgate ready.") => {
                let _ = child.kill();
                let _ = child.wait();
                return Startup::Ready;
            }
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Startup::Exited(child.wait().unwrap(), log);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("the gateway neither became ready nor exited: {log}");
            }
        }
    }
}

#[test]
fn key_files_readable_by_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    for (file, contents) in [
        ("master.key", "ab".repeat(32)),
        ("admin.token", "a-token-long-enough-0123".to_owned()),
    ] {
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(file);
            std::fs::write(&path, &contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let Startup::Exited(status, err) = start_on_data_dir(dir.path()) else {
                panic!("the gateway started with {file} at mode {mode:o}");
            };
            assert!(!status.success(), "{file} {mode:o}: {err}");
            assert!(
                err.contains(&format!("chmod 600 {}", path.display())),
                "{file} {mode:o}: {err}"
            );
            assert!(!err.contains(&contents), "the secret was printed: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn created_key_files_are_owner_only_and_used_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(start_on_data_dir(dir.path()), Startup::Ready));
    let read = |file: &str| std::fs::read_to_string(dir.path().join(file)).unwrap();
    let (key, token) = (read("master.key"), read("admin.token"));
    for file in ["master.key", "admin.token"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    assert!(matches!(start_on_data_dir(dir.path()), Startup::Ready));
    assert_eq!((read("master.key"), read("admin.token")), (key, token));
}
