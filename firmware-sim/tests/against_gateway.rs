//! firmware-sim against a real gateway: the attack suite must find nothing
//! hostile on `clean/` and every expected reason in the events; a short load
//! run must deliver everything it sent, sealed by either library.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn sim(gw: &Gateway, args: &[&str]) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args([
            "--mqtt",
            &format!("127.0.0.1:{}", gw.mqtt_port),
            "--admin-url",
            &gw.http_url,
            "--admin-token",
            ADMIN_TOKEN,
            "--subscriber",
            &format!("{SUB_USER}:{SUB_PASS}"),
            "--json",
        ])
        .args(args)
        .output()
        .expect("run firmware-sim");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

/// What an attack report must say: nothing hostile on `clean/`, the honest
/// messages delivered, and each attack refused with its reason.
fn every_attack_refused(report: &Value) {
    let attacks = report["attacks"].as_array().unwrap();
    assert_eq!(attacks.len(), 5);
    for a in attacks {
        assert_eq!(a["hostile_reached_clean"], 0, "{a}");
        assert_eq!(a["honest_delivered"], true, "{a}");
    }
    let by_name = |n: &str| attacks.iter().find(|a| a["attack"] == n).unwrap().clone();
    assert_eq!(by_name("replay")["dropped_silently"], 20);
    assert_eq!(by_name("tamper")["events"]["bad_mac"], 20);
    assert_eq!(by_name("wrong-key")["events"]["bad_mac"], 20);
    assert_eq!(by_name("stale")["events"]["stale_nonce"], 20);
}

#[test]
fn every_attack_is_refused() {
    let gw = Gateway::start(&[]);
    let (ok, report) = sim(&gw, &["--attack", "all"]);
    assert!(ok, "{report}");
    every_attack_refused(&report);
}

#[test]
fn attacks_are_caught_when_the_gateway_does_not_verify() {
    // The suite is only worth something if it fails against a gateway that
    // lets hostile traffic through: passthrough mode forwards it all.
    let gw = Gateway::start_with_config("[verifier]\npassthrough = true\n", &[]);
    let (ok, report) = sim(&gw, &["--attack", "tamper"]);
    assert!(!ok, "{report}");
    assert_eq!(
        report["attacks"][0]["hostile_reached_clean"], 20,
        "{report}"
    );
}

#[test]
fn a_short_load_run_delivers_everything() {
    let gw = Gateway::start(&[]);
    // Any live process will do for the CPU window; benches/compare.py
    // passes the gateway's.
    let pid = std::process::id().to_string();
    let (ok, r) = sim(
        &gw,
        &[
            "--devices",
            "5",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--encrypt",
            "--format",
            "binary",
            "--cpu-pid",
            &pid,
        ],
    );
    assert!(ok, "{r}");
    assert!(r["sent"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["delivered"], r["sent"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["rejected_total"], 0, "{r}");
    assert_eq!(r["settings"]["impl"], "rust", "{r}");
    let watched = &r["watched_cpu"][0];
    assert_eq!(watched["pid"].to_string(), pid, "{r}");
    assert!(watched["cpu_ticks"].is_u64(), "{r}");
    assert!(watched["cpu_ns"].is_u64(), "{r}");
    // The last delivery comes after the first send and before the run ends.
    let active = r["active_secs"].as_f64().unwrap();
    let whole = r["publish_secs"].as_f64().unwrap() + r["drain_secs"].as_f64().unwrap();
    assert!(active > 0.0 && active <= whole + 0.1, "{r}");
}

/// Whether firmware-sim was built with the C sealer (build.rs sets the cfg
/// for every target of the package). Without it the `--impl c` tests skip,
/// saying why, except in CI, which installs gcc and mbedTLS: there they fail.
fn c_sealer_built() -> bool {
    if cfg!(has_c_sealer) {
        return true;
    }
    let why = "firmware-sim was built without the C sealer \
               (apt-get install gcc libmbedtls-dev, then rebuild)";
    assert!(std::env::var_os("CI").is_none(), "CI is set: {why}");
    eprintln!("skipped: {why}");
    false
}

#[test]
fn a_short_load_run_sealed_by_the_c_library_delivers_everything() {
    if !c_sealer_built() {
        return;
    }
    let gw = Gateway::start(&[]);
    // The devices' passwords come from the C library too, so a connect
    // failure would end the run before anything is sent.
    for (format, prefix) in [("json", "cj-"), ("binary", "cb-")] {
        let (ok, r) = sim(
            &gw,
            &[
                "--impl",
                "c",
                "--prefix",
                prefix,
                "--devices",
                "5",
                "--rate",
                "200",
                "--duration",
                "2s",
                "--encrypt",
                "--format",
                format,
            ],
        );
        assert!(ok, "{r}");
        assert_eq!(r["settings"]["impl"], "c", "{r}");
        assert_eq!(r["settings"]["format"], format, "{r}");
        assert!(r["sent"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["delivered"], r["sent"], "{r}");
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["rejected_total"], 0, "{r}");
        assert_eq!(r["reconnects"], 0, "{r}");
    }
}

#[test]
fn every_attack_is_refused_when_the_c_library_seals() {
    if !c_sealer_built() {
        return;
    }
    let gw = Gateway::start(&[]);
    let (ok, report) = sim(&gw, &["--impl", "c", "--attack", "all"]);
    assert!(ok, "{report}");
    assert_eq!(report["impl"], "c", "{report}");
    every_attack_refused(&report);
}

#[test]
fn overload_slows_devices_and_loses_nothing_acknowledged() {
    // No rate limit: every device publishes back to back, as fast as its
    // inflight window allows, so the gateway is the bottleneck throughout.
    let gw = Gateway::start_with_config("[limits]\ndevice_rate = 0.0\n", &[]);
    let (ok, r) = sim(
        &gw,
        &[
            "--devices",
            "20",
            "--rate",
            "0",
            "--duration",
            "4s",
            "--encrypt",
            "--qos",
            "1",
        ],
    );
    assert!(ok, "{r}");
    assert!(r["acknowledged"].as_u64().unwrap() > 1000, "{r}");
    // Every PUBACKed message arrived on clean/ exactly once.
    assert_eq!(r["delivered"], r["acknowledged"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["unexpected"], 0, "{r}");
    // Slowed, not cut off.
    assert_eq!(r["reconnects"], 0, "{r}");
    assert_eq!(r["rejected_total"], 0, "{r}");
}

/// The walk-through's claim step: firmware-sim claims a device for a tenant
/// the way the device would, with a pairing code and its claim MAC.
#[test]
fn a_device_claims_itself_for_a_tenant() {
    let gw = Gateway::start(&[]);
    let op = gw.admin();
    let acme = op.add_tenant("acme").unwrap();
    let creds = op.add("esp32-claim", None).unwrap();
    let tenant = sealgate::admin::client::AdminClient::new(&gw.http_url, &acme.api_key);
    let code = tenant.pairing_code(None).unwrap();
    let claim = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
            .env_clear()
            .env("SEALGATE_DEVICE_SECRET", &creds.secret)
            .args(["--admin-url", &gw.http_url, "claim", "--device-id", id])
            .args(["--pairing-code", &code.pairing_code])
            .output()
            .expect("run firmware-sim")
    };
    let out = claim("ESP32-CLAIM");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["device_id"], "esp32-claim");
    assert_eq!(answer["tenant"], "acme");
    assert_eq!(
        tenant.show("esp32-claim").unwrap().owner.as_deref(),
        Some("acme")
    );
    // The code is spent: a second claim is refused, and says why.
    let again = claim("esp32-claim");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("403"));
}
