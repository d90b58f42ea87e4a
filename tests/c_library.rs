//! The C sealing library (firmware-sim/c) built by gcc and checked from here:
//! against every SEALED-ENVELOPE-v1 vector and against our Rust sealer, its
//! own unit tests, each plain and under AddressSanitizer and
//! UndefinedBehaviorSanitizer, and a freestanding build for the ESP32-C3.
//!
//! The C toolchain is a requirement, not an option: without gcc,
//! libmbedtls-dev or the riscv64 cross compiler these tests fail and say what
//! to install (`.ci/run` installs them).

mod c_build;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use c_build::{c_dir, Build};
use sealgate::envelope::{self, DeviceKeys, Enc, MasterKey, SealInput, SealedTopic};
use serde_json::Value;

const INSTALL: &str = "apt-get install gcc libmbedtls-dev gcc-riscv64-unknown-elf \
                       picolibc-riscv64-unknown-elf (.ci/run does)";

fn run(cmd: &mut Command) -> Output {
    c_build::run(cmd, INSTALL)
}

/// Builds the library with one test program, warnings as errors.
fn build(program: &str, kind: Build, dir: &Path) -> PathBuf {
    let main = c_dir().join("test").join(format!("{program}.c"));
    c_build::build(&main, kind, &dir.join(program), &["-lmbedcrypto"], INSTALL)
}

/// Runs a test program; any sanitizer report fails it.
fn run_program(exe: &Path, args: &[&Path]) -> String {
    let out = run(c_build::program(exe).args(args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !c_build::sanitizer_report(&stderr),
        "{} failed ({}):\n{stderr}",
        exe.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors/vectors.json")).expect("vectors.json parses")
}

fn hex_or_dash(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "-".into()
    } else {
        hex::encode(bytes)
    }
}

/// One line of the C program's input and the output it must print.
struct Case {
    line: String,
    name: String,
    want: String,
}

/// A seal case: `raw_id` as it appears in a topic (the C library normalises
/// it), `want` the exact bytes.
struct Seal<'a> {
    raw_id: &'a str,
    stream: &'a str,
    kid: u32,
    nonce: u64,
    iv: Option<[u8; 16]>,
    body: &'a [u8],
    binary: bool,
}

fn seal_case(name: String, s: &Seal<'_>, want: &[u8]) -> Case {
    let id = envelope::normalise_device_id(s.raw_id).expect("a valid id");
    let secret = master().device_secret(&id, s.kid);
    let line = format!(
        "seal {name} {} {} {} {} {} {} {} {}",
        hex::encode(secret),
        hex_or_dash(s.raw_id.as_bytes()),
        s.kid,
        hex_or_dash(s.stream.as_bytes()),
        s.nonce,
        if s.binary { "binary" } else { "json" },
        s.iv.map_or("-".into(), hex::encode),
        hex_or_dash(s.body),
    );
    Case {
        line,
        name,
        want: hex::encode(want),
    }
}

fn master() -> MasterKey {
    MasterKey::from_hex(vectors()["master_key_hex"].as_str().unwrap()).unwrap()
}

/// Key derivation and connect tokens, as the vectors give them.
fn key_and_token_cases() -> Vec<Case> {
    let v = vectors();
    let mut cases = Vec::new();
    for (i, k) in v["keys"].as_array().unwrap().iter().enumerate() {
        let s = |f: &str| k[f].as_str().unwrap().to_owned();
        cases.push(Case {
            line: format!(
                "keys keys-{i} {} {} {}",
                s("secret_hex"),
                hex::encode(s("device_id")),
                k["kid"]
            ),
            name: format!("keys-{i}"),
            want: format!("{}:{}:{}", s("k_mac_hex"), s("k_enc_hex"), s("k_auth_hex")),
        });
    }
    for (i, c) in v["connect"].as_array().unwrap().iter().enumerate() {
        let id = c["device_id"].as_str().unwrap();
        let kid = c["kid"].as_u64().unwrap() as u32;
        cases.push(Case {
            line: format!(
                "token token-{i} {} {} {kid} {}",
                hex::encode(master().device_secret(id, kid)),
                hex::encode(id),
                c["expiry"]
            ),
            name: format!("token-{i}"),
            want: c["password"].as_str().unwrap().to_owned(),
        });
    }
    cases
}

/// Every accepted message and every step of the replay sequence (all carry a
/// valid MAC), to be resealed from their own fields.
fn reseal_cases() -> Vec<Case> {
    let v = vectors();
    let mut cases = Vec::new();
    for m in v["messages"].as_array().unwrap() {
        // kid-absent-defaults-1 dropped a field every sealer writes.
        if m["verdict"] == "accept" && m["name"] != "kid-absent-defaults-1" {
            let plain = B64.decode(m["clean_body_b64"].as_str().unwrap()).unwrap();
            cases.push(reseal(
                m["name"].as_str().unwrap(),
                &m["topic"],
                &m["payload_b64"],
                Some(plain),
            ));
        }
    }
    let seq = &v["replay_sequence"];
    for (i, step) in seq["steps"].as_array().unwrap().iter().enumerate() {
        cases.push(reseal(
            &format!("replay-{i}"),
            &seq["topic"],
            &step["payload_b64"],
            None,
        ));
    }
    cases
}

/// A case that must give back `payload` exactly. `plain` is the plaintext of
/// an encrypted body; a plain body is its own.
fn reseal(name: &str, topic: &Value, payload: &Value, plain: Option<Vec<u8>>) -> Case {
    let topic = topic.as_str().unwrap();
    let payload = B64.decode(payload.as_str().unwrap()).unwrap();
    let p = envelope::parse(&payload).unwrap();
    let t = SealedTopic::parse("sealed", topic).unwrap();
    let body = plain.unwrap_or_else(|| p.body.clone());
    let seal = Seal {
        raw_id: topic["sealed/".len()..].split('/').next().unwrap(),
        stream: &t.stream,
        kid: p.kid,
        nonce: p.nonce,
        iv: match p.enc {
            Enc::None => None,
            Enc::Aes128Cbc(iv) => Some(iv),
        },
        body: &body,
        binary: payload.starts_with(b"SG\x01"),
    };
    seal_case(name.to_owned(), &seal, &payload)
}

/// Edges the vectors do not reach, checked against the Rust sealer: every
/// padding boundary, the longest id and stream, the largest kid and nonce,
/// bodies that are not text.
fn edge_cases() -> Vec<Case> {
    let long_id = "a".repeat(64);
    let long_stream = "s".repeat(200);
    let ids = [" Dev-1\t", long_id.as_str(), "esp32-a1"];
    let streams = ["", "t", "power/inverter/1", long_stream.as_str()];
    let mut cases = Vec::new();
    for (i, len) in [0usize, 1, 2, 3, 15, 16, 17, 31, 32, 33, 100]
        .into_iter()
        .enumerate()
    {
        let body: Vec<u8> = (0..len).map(|b| (b * 37 + i) as u8).collect();
        for (j, (binary, aes)) in [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .enumerate()
        {
            let n = i * 4 + j;
            let seal = Seal {
                raw_id: ids[n % ids.len()],
                stream: streams[n % streams.len()],
                kid: [1, 2, u32::MAX][n % 3],
                nonce: [1, 12_345, u64::MAX, 10_000_000_000][n % 4],
                iv: aes.then_some([n as u8 ^ 0x5a; 16]),
                body: &body,
                binary,
            };
            let id = envelope::normalise_device_id(seal.raw_id).unwrap();
            let keys = DeviceKeys::from_secret(&master().device_secret(&id, seal.kid));
            let want = envelope::seal(
                &keys,
                &SealInput {
                    device_id: &id,
                    stream: seal.stream,
                    kid: seal.kid,
                    nonce: seal.nonce,
                    iv: seal.iv,
                    plaintext: &body,
                    binary,
                },
            )
            .expect("sealable");
            cases.push(seal_case(format!("edge-{n}"), &seal, &want));
        }
    }
    cases
}

fn check_cases(kind: Build) {
    let dir = tempfile::tempdir().unwrap();
    let exe = build("test_vectors", kind, dir.path());
    let cases: Vec<Case> = [key_and_token_cases(), reseal_cases(), edge_cases()]
        .into_iter()
        .flatten()
        .collect();
    let input = dir.path().join("cases.txt");
    let lines: Vec<&str> = cases.iter().map(|c| c.line.as_str()).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = run_program(&exe, &[&input]);
    let got: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    for c in &cases {
        assert_eq!(
            got.get(c.name.as_str()).copied(),
            Some(c.want.as_str()),
            "case {}",
            c.name
        );
    }
    assert_eq!(got.len(), cases.len(), "one result per case");
}

#[test]
fn reproduces_every_vector_and_the_rust_sealer() {
    check_cases(Build::Plain);
}

#[test]
fn reproduces_every_vector_under_sanitizers() {
    check_cases(Build::Sanitized);
}

#[test]
fn unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    run_program(&build("test_unit", Build::Plain, dir.path()), &[]);
}

#[test]
fn unit_tests_under_sanitizers() {
    let dir = tempfile::tempdir().unwrap();
    run_program(&build("test_unit", Build::Sanitized, dir.path()), &[]);
}

/// Compiles for rv32imc with picolibc and checks the library needs no
/// allocator. The sizes it prints are the ones in firmware-sim/c/README.md.
#[test]
fn builds_freestanding_for_rv32imc() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(c_dir().join("tools/rv32-build.sh")).arg(dir.path()));
    assert!(
        out.status.success(),
        "rv32imc build failed; {INSTALL}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}
