//! End to end from C: firmware-sim/c/examples/host/sealgate_pub.c, the
//! sealing library plus libmosquitto, publishes sealed messages to a running
//! gateway, and what comes out on `clean/` must be exactly its plaintexts.
//!
//! gcc, libmbedtls-dev and libmosquitto-dev are requirements, not options:
//! without them these tests fail and say what to install (`.ci/run` does).

mod c_build;
mod common;

use std::path::{Path, PathBuf};

use c_build::{c_dir, Build};
use common::*;
use sealgate::admin::client::Credentials;
use sealgate::events::RejectReason;

const INSTALL: &str = "apt-get install gcc libmbedtls-dev libmosquitto-dev (.ci/run does)";
/// Every encoding the program takes: JSON and binary, plain and AES.
const ENCODINGS: [&str; 4] = ["json", "json-aes", "binary", "binary-aes"];
const PER_RUN: u64 = 5;
const STREAM: &str = "power/inverter";

fn build_publisher(kind: Build, dir: &Path) -> PathBuf {
    let main = c_dir().join("examples/host/sealgate_pub.c");
    c_build::build(
        &main,
        kind,
        &dir.join("sealgate_pub"),
        &["-lmbedcrypto", "-lmosquitto"],
        INSTALL,
    )
}

/// The nonces one run used, from its summary line
/// ("published N messages to T, nonces A..B").
#[derive(Debug, Clone, Copy)]
struct Nonces {
    first: u64,
    last: u64,
}

/// Runs the program to completion (every message acknowledged) and returns
/// the nonces it used.
async fn publish(
    exe: &Path,
    port: u16,
    creds: &Credentials,
    encoding: &str,
    prefix: &str,
    nonce_file: &Path,
) -> Nonces {
    let mut cmd = c_build::program(exe);
    cmd.args([
        "127.0.0.1",
        &port.to_string(),
        &creds.device_id,
        &creds.kid.to_string(),
        &creds.secret,
        STREAM,
        &PER_RUN.to_string(),
        encoding,
        prefix,
    ])
    .arg(nonce_file);
    let out = tokio::task::spawn_blocking(move || c_build::run(&mut cmd, INSTALL))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !c_build::sanitizer_report(&stderr),
        "sealgate_pub {encoding} failed ({}):\n{stdout}{stderr}",
        out.status
    );
    let range = stdout
        .trim_end()
        .rsplit_once("nonces ")
        .and_then(|(_, r)| r.split_once(".."))
        .unwrap_or_else(|| panic!("no nonce range in {stdout:?}"));
    let n = |s: &str| s.parse().unwrap_or_else(|_| panic!("nonce {s:?}"));
    Nonces {
        first: n(range.0),
        last: n(range.1),
    }
}

/// The next publishes on the subscriber are exactly this run's plaintexts,
/// in order, on the clean topic (a rejection would arrive as an event in
/// their place).
async fn expect_clean(sub: &mut Client, creds: &Credentials, prefix: &str) {
    let topic = format!("clean/{}/{STREAM}", creds.device_id);
    for i in 0..PER_RUN {
        let want = format!("{prefix}{i}").into_bytes();
        let (got_topic, got) = sub.next_publish().await;
        assert!(
            got_topic == topic && got == want,
            "message {i} of run {prefix:?}: got {got_topic} {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// Every encoding once, then every encoding again continuing the same nonce
/// file (a second boot of the device); all accepted, none rejected.
async fn publishes_end_to_end(kind: Build) {
    let dir = tempfile::tempdir().unwrap();
    let exe = build_publisher(kind, dir.path());
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("host-c1").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let nonce_file = dir.path().join("nonce-reservation");

    let mut runs: Vec<Nonces> = Vec::new();
    for pass in ["first", "second"] {
        for encoding in ENCODINGS {
            // Bytes no text encoding would carry unchanged: a quote, a
            // backslash, a control byte, non-ASCII.
            let prefix = format!("{pass} {encoding} \"\\\u{1}é #");
            let nonces = publish(&exe, gw.mqtt_port, &creds, encoding, &prefix, &nonce_file).await;
            expect_clean(&mut sub, &creds, &prefix).await;
            runs.push(nonces);
        }
    }
    // Each run started past every nonce of the one before: the reservation
    // was read back from the file, not started afresh.
    for pair in runs.windows(2) {
        assert!(pair[1].first > pair[0].last, "{runs:?}");
    }
    let total = (runs.len() as u64 * PER_RUN) as f64;
    assert_eq!(
        gw.metric("sealgate_messages_total{result=\"accepted\"}")
            .await,
        total
    );
    for reason in RejectReason::ALL {
        let sample = format!("sealgate_rejects_total{{reason=\"{}\"}}", reason.as_str());
        assert_eq!(gw.metric(&sample).await, 0.0, "{sample}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_host_program_publishes_sealed_messages() {
    publishes_end_to_end(Build::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_host_program_publishes_under_sanitizers() {
    publishes_end_to_end(Build::Sanitized).await;
}
