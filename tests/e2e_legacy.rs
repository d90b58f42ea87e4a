//! The legacy EcoWatt profile end to end: every legacy vector, in order,
//! over MQTT and over the HTTP ingest, delivered byte for byte or refused
//! with its verdict; the ingest's bounds; device naming by header, path and
//! verified field; `device migrate`; and the imported keys never shown.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use sealgate::admin::client::LegacyKeysHex;
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors/legacy-vectors.json")).unwrap()
}

fn keys_hex(v: &Value) -> LegacyKeysHex {
    LegacyKeysHex {
        psk_hmac: v["psk_hmac_hex"].as_str().unwrap().into(),
        psk_aes: v["psk_aes_hex"].as_str().unwrap().into(),
        iv: v["iv_hex"].as_str().unwrap().into(),
    }
}

fn legacy_keys(v: &Value) -> sealgate::envelope::legacy::LegacyKeys {
    let k = keys_hex(v);
    sealgate::envelope::legacy::LegacyKeys {
        psk_hmac: hex::decode(k.psk_hmac).unwrap(),
        psk_aes: hex::decode(k.psk_aes).unwrap().try_into().unwrap(),
        iv: hex::decode(k.iv).unwrap().try_into().unwrap(),
    }
}

async fn add_legacy(gw: &Gateway, id: &str, v: &Value) -> sealgate::admin::client::Credentials {
    let keys = keys_hex(v);
    let id = id.to_owned();
    gw.admin_call(move |a| a.add_legacy(&id, None, &keys))
        .await
        .expect("add legacy device")
}

const INGEST_ON: &str = "[ingest]\nenabled = true\nlisten = \"127.0.0.1:0\"\n";

/// POSTs `body` to the ingest; returns the status and the answer's body.
async fn post(
    gw: &Gateway,
    path: &str,
    header: Option<(&str, &str)>,
    body: Vec<u8>,
) -> (u16, String) {
    let url = format!(
        "http://127.0.0.1:{}{path}",
        gw.ingest_port.expect("ingest enabled")
    );
    let header = header.map(|(k, v)| (k.to_owned(), v.to_owned()));
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::post(&url).set("content-type", "application/json");
        if let Some((k, v)) = &header {
            req = req.set(k, v);
        }
        match req.send_bytes(&body) {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
            Err(e) => panic!("POST {url}: {e}"),
        }
    })
    .await
    .unwrap()
}

/// What a subscriber must see after one vector: the clean message, the
/// event, or (for `duplicate`) nothing, which the next vector's outcome
/// arriving first proves.
async fn expect_outcome(sub: &mut Client, m: &Value, device: &str) {
    let name = m["name"].as_str().unwrap();
    match m["verdict"].as_str().unwrap() {
        "accept" => {
            let (topic, body) = sub.next_publish().await;
            assert_eq!(
                topic,
                m["clean_topic"]
                    .as_str()
                    .unwrap()
                    .replace("ecowatt-7", device),
                "{name}"
            );
            assert_eq!(
                B64.encode(&body),
                m["clean_body_b64"].as_str().unwrap(),
                "{name}"
            );
        }
        "duplicate" => {}
        reason => {
            let (topic, body) = sub.next_publish().await;
            assert_eq!(topic, format!("sealgate/events/{device}"), "{name}");
            assert_eq!(event(&body)["reason"], reason, "{name}");
        }
    }
}

fn forbidden(v: &Value) -> Vec<String> {
    let k = legacy_keys(v);
    vec![
        hex::encode(&k.psk_hmac),
        hex::encode(k.psk_aes),
        B64.encode(&k.psk_hmac),
        B64.encode(k.psk_aes),
    ]
}

fn assert_absent(text: &str, secrets: &[String], what: &str) {
    for s in secrets {
        assert!(
            !text.to_lowercase().contains(&s.to_lowercase()),
            "a key in {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_legacy_vector_over_mqtt() {
    let gw = Gateway::start(&[("RUST_LOG", "debug")]);
    let v = vectors();
    let creds = add_legacy(&gw, "ecowatt-7", &v).await;
    assert!(creds.secret.is_empty(), "a legacy device gets no v1 secret");
    assert!(creds.mqtt_password.starts_with("v1:0:"));
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    for m in v["messages"].as_array().unwrap() {
        let payload = B64.decode(m["payload_b64"].as_str().unwrap()).unwrap();
        dev.publish_acked(m["topic"].as_str().unwrap(), payload)
            .await;
        expect_outcome(&mut sub, m, "ecowatt-7").await;
    }
    let shown = gw.admin_call(|a| a.show("ecowatt-7")).await.unwrap();
    assert_eq!(shown.profile, "legacy-ecowatt");
    assert_eq!(shown.highest_nonce, 10005);
    let (_, list) = gw.http_get("/api/v1/devices").await;
    let (_, log) = gw.terminate_with_log();
    let secrets = forbidden(&v);
    assert_absent(
        &serde_json::to_string(&creds).unwrap(),
        &secrets,
        "the add answer",
    );
    assert_absent(&serde_json::to_string(&shown).unwrap(), &secrets, "show");
    assert_absent(&list, &secrets, "list");
    assert_absent(&log.join("\n"), &secrets, "the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_legacy_vector_over_http_ingest() {
    let toml = format!("{INGEST_ON}device_rate = 1000.0\n");
    let gw = Gateway::start_with_config(&toml, &[("RUST_LOG", "debug")]);
    let v = vectors();
    add_legacy(&gw, "ecowatt-7", &v).await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    for m in v["messages"].as_array().unwrap() {
        let payload = B64.decode(m["payload_b64"].as_str().unwrap()).unwrap();
        let (status, body) =
            post(&gw, "/process", Some(("x-device-id", "ecowatt-7")), payload).await;
        let want = if m["verdict"] == "accept" { 200 } else { 401 };
        assert_eq!(status, want, "{}: {body}", m["name"]);
        if status == 401 {
            // One body for every failed check: nothing to learn from it.
            assert_eq!(body, r#"{"error":"unauthorized"}"#);
        }
        expect_outcome(&mut sub, m, "ecowatt-7").await;
    }
    assert_eq!(
        gw.metric("sealgate_ingest_requests_total{answer=\"accepted\"}")
            .await,
        5.0
    );
    assert_eq!(
        gw.metric("sealgate_ingest_requests_total{answer=\"refused\"}")
            .await,
        5.0
    );
    let (_, log) = gw.terminate_with_log();
    assert_absent(&log.join("\n"), &forbidden(&v), "the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_bounds_and_naming_by_path() {
    let toml = format!(
        "{INGEST_ON}device_from = \"path\"\nmax_body_bytes = 1024\n# One request per 1000 s: the second is over.\ndevice_rate = 0.001\n"
    );
    let gw = Gateway::start_with_config(&toml, &[]);
    let v = vectors();
    add_legacy(&gw, "ecowatt-7", &v).await;
    let v1 = gw.add_device("v1-device").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let keys = legacy_keys(&v);
    let sealed = |n| sealgate::envelope::legacy::seal(&keys, n, b"{\"t\":1}", true);

    // Too large: refused before anything is read into the verifier.
    let (status, _) = post(&gw, "/process/ecowatt-7", None, vec![b' '; 2048]).await;
    assert_eq!(status, 413);
    // Unknown device, a v1 device, a bad id, no device: the same 401.
    for path in [
        "/process/nobody",
        &format!("/process/{}", v1.device_id),
        "/process/bad%20id!",
    ] {
        let (status, body) = post(&gw, path, None, sealed(1)).await;
        assert_eq!(
            (status, body.as_str()),
            (401, r#"{"error":"unauthorized"}"#),
            "{path}"
        );
    }
    let (status, _) = post(&gw, "/process", None, sealed(1)).await;
    assert_eq!(status, 404);
    // A forged request in the device's name does not use up its rate...
    let mut forged = keys.clone();
    forged.psk_hmac = vec![0; 32];
    let bad = sealgate::envelope::legacy::seal(&forged, 2, b"{\"t\":1}", false);
    let (status, _) = post(&gw, "/process/ecowatt-7", None, bad).await;
    assert_eq!(status, 401);
    expect_event(&mut sub, "sealgate/events/ecowatt-7", "bad_mac").await;
    // ...so the device's own first request is accepted, and its next is over.
    let (status, _) = post(&gw, "/process/ECOWATT-7", None, sealed(3)).await;
    assert_eq!(status, 200);
    let (topic, body) = sub.next_publish().await;
    assert_eq!(
        (topic.as_str(), body.as_slice()),
        ("clean/ecowatt-7/telemetry", &b"{\"t\":1}"[..])
    );
    let (status, _) = post(&gw, "/process/ecowatt-7", None, sealed(4)).await;
    assert_eq!(status, 429);
    assert_eq!(
        gw.metric("sealgate_ingest_requests_total{answer=\"rate_limited\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("sealgate_ingest_requests_total{answer=\"too_large\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_names_a_shared_key_fleet_by_a_verified_field() {
    let toml = format!("{INGEST_ON}device_from = \"field\"\n");
    let gw = Gateway::start_with_config(&toml, &[]);
    let v = vectors();
    // The vectors' plaintext names "ESP32_EcoWatt_Smart"; two devices share the pair.
    add_legacy(&gw, "esp32_ecowatt_smart", &v).await;
    add_legacy(&gw, "esp32_ecowatt_other", &v).await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let plain = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "encrypted")
        .unwrap();
    let payload = B64.decode(plain["payload_b64"].as_str().unwrap()).unwrap();
    let (status, _) = post(&gw, "/process", None, payload.clone()).await;
    assert_eq!(status, 200);
    let (topic, body) = sub.next_publish().await;
    assert_eq!(topic, "clean/esp32_ecowatt_smart/telemetry");
    assert_eq!(B64.encode(body), plain["clean_body_b64"].as_str().unwrap());
    // A header naming another device changes nothing in this mode.
    let keys = legacy_keys(&v);
    let other = sealgate::envelope::legacy::seal(
        &keys,
        20,
        br#"{"device_id":"ESP32_ECOWATT_OTHER"}"#,
        false,
    );
    let (status, _) = post(
        &gw,
        "/process",
        Some(("x-device-id", "esp32_ecowatt_smart")),
        other,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        sub.next_publish().await.0,
        "clean/esp32_ecowatt_other/telemetry"
    );
    // A key pair no device has: 401.
    let mut stranger = keys.clone();
    stranger.psk_aes = [7; 16];
    let forged = sealgate::envelope::legacy::seal(
        &stranger,
        21,
        br#"{"device_id":"esp32_ecowatt_smart"}"#,
        true,
    );
    let (status, _) = post(&gw, "/process", None, forged).await;
    assert_eq!(status, 401);
    // Replaying the first request: the window refuses it.
    let (status, _) = post(&gw, "/process", None, payload).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_device_to_v1_and_keeps_its_window() {
    let gw = Gateway::start(&[]);
    let v = vectors();
    let creds = add_legacy(&gw, "ecowatt-7", &v).await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    let first = &v["messages"][0];
    let legacy_payload = B64.decode(first["payload_b64"].as_str().unwrap()).unwrap();
    dev.publish_acked("sealed/ecowatt-7/telemetry", legacy_payload.clone())
        .await;
    expect_outcome(&mut sub, first, "ecowatt-7").await;

    let migrated = gw.admin_call(|a| a.migrate("ecowatt-7")).await.unwrap();
    assert_eq!(migrated.secret.len(), 64, "the v1 secret, shown once");
    assert_eq!(
        migrated.mqtt_password, creds.mqtt_password,
        "the connect token carries over"
    );
    let shown = gw.admin_call(|a| a.show("ecowatt-7")).await.unwrap();
    assert_eq!(shown.profile, "v1");
    let again = gw.admin_call(|a| a.migrate("ecowatt-7")).await.unwrap_err();
    assert_eq!(again.status(), Some(409));

    // The legacy envelope is no longer accepted...
    dev.publish_acked("sealed/ecowatt-7/telemetry", legacy_payload)
        .await;
    expect_event(&mut sub, "sealgate/events/ecowatt-7", "malformed").await;
    // ...the window carried over: a v1 message at the legacy nonce is a reuse...
    let reuse = seal(&migrated, "telemetry", 10001, b"v1 at an old nonce");
    dev.publish_acked("sealed/ecowatt-7/telemetry", reuse).await;
    expect_event(&mut sub, "sealgate/events/ecowatt-7", "nonce_reuse").await;
    // ...and above it the device is a v1 device like any other.
    let fresh = seal(&migrated, "telemetry", 20_000, b"hello from v1");
    dev.publish_acked("sealed/ecowatt-7/telemetry", fresh).await;
    assert_eq!(sub.next_publish().await.1, b"hello from v1");
}

/// The ingest over HTTPS, with the same rustls setup as MQTT's TLS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let toml = format!(
        "{INGEST_ON}tls_cert = {:?}\ntls_key = {:?}\n",
        dir.path().join("cert.pem"),
        dir.path().join("key.pem")
    );
    let gw = Gateway::start_with_config(&toml, &[]);
    let v = vectors();
    add_legacy(&gw, "ecowatt-7", &v).await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.ingest_port.unwrap()))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let m = &v["messages"][1];
    let body = B64.decode(m["payload_b64"].as_str().unwrap()).unwrap();
    let head = format!(
        "POST /process HTTP/1.1\r\nhost: gw\r\nx-device-id: ecowatt-7\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    expect_outcome(&mut sub, m, "ecowatt-7").await;
}

/// The ingest reads bodies from anyone: a client that declares a body and
/// sends only part of it is answered 408 and closed once the header-read
/// timeout has passed again, so it cannot hold a connection slot for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_closes_a_client_that_stalls_mid_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let toml = format!("{INGEST_ON}header_read_timeout_ms = 200\n");
    let gw = Gateway::start_with_config(&toml, &[]);
    let v = vectors();
    add_legacy(&gw, "ecowatt-7", &v).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.ingest_port.unwrap()))
        .await
        .unwrap();
    let head = "POST /process HTTP/1.1\r\nhost: gw\r\nx-device-id: ecowatt-7\r\ncontent-length: 100\r\n\r\n{\"nonce\": 1";
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the ingest kept the connection open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A whole request is served.
    let m = &v["messages"][1];
    let body = B64.decode(m["payload_b64"].as_str().unwrap()).unwrap();
    let (status, _) = post(&gw, "/process", Some(("x-device-id", "ecowatt-7")), body).await;
    assert_eq!(status, 200);
    assert_eq!(
        gw.metric("sealgate_ingest_requests_total{answer=\"timed_out\"}")
            .await,
        1.0
    );
}

/// Forged requests cost their sender nothing, so they must not flood a
/// device's events: past a small budget they are refused (and counted)
/// without one event each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ingest_requests_cannot_flood_a_devices_events() {
    let toml = format!("{INGEST_ON}device_rate = 1000.0\n");
    let gw = Gateway::start_with_config(&toml, &[]);
    let v = vectors();
    add_legacy(&gw, "ecowatt-7", &v).await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let keys = legacy_keys(&v);
    let mut forged_keys = keys.clone();
    forged_keys.psk_hmac = vec![0; 32];
    for n in 1..=20 {
        let forged = sealgate::envelope::legacy::seal(&forged_keys, n, b"{}", false);
        let (status, _) = post(&gw, "/process", Some(("x-device-id", "ecowatt-7")), forged).await;
        assert_eq!(status, 401);
    }
    let ok = sealgate::envelope::legacy::seal(&keys, 100, b"{\"t\":1}", false);
    let (status, _) = post(&gw, "/process", Some(("x-device-id", "ecowatt-7")), ok).await;
    assert_eq!(status, 200);
    // Events arrive in order before the accepted message: count them.
    let mut events = 0;
    loop {
        let (topic, _) = sub.next_publish().await;
        if topic == "clean/ecowatt-7/telemetry" {
            break;
        }
        events += 1;
    }
    assert!(
        (5..20).contains(&events),
        "{events} events for 20 forgeries"
    );
    assert_eq!(
        gw.metric("sealgate_rejects_total{reason=\"bad_mac\"}")
            .await,
        20.0
    );
}
