//! Every message vector and the replay sequence, sent through the running
//! gateway over real sockets: accepted ones come out byte for byte on
//! `clean/`, rejected ones as a named event on `sealgate/events/`.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::*;
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors/vectors.json")).unwrap()
}

/// Sends one vector and asserts what the subscriber sees next.
async fn expect_verdict(dev: &mut Client, sub: &mut Client, v: &Value) {
    let name = v["name"].as_str().unwrap();
    let payload = B64.decode(v["payload_b64"].as_str().unwrap()).unwrap();
    dev.publish_acked(v["topic"].as_str().unwrap(), payload)
        .await;
    let (topic, body) = sub.next_publish().await;
    match v["verdict"].as_str().unwrap() {
        "accept" => {
            assert_eq!(topic, v["clean_topic"].as_str().unwrap(), "{name}");
            assert_eq!(
                B64.encode(&body),
                v["clean_body_b64"].as_str().unwrap(),
                "{name}"
            );
        }
        reason => {
            let e = event(&body);
            assert_eq!(e["reason"], reason, "{name}: {e}");
            assert_eq!(topic, "sealgate/events/esp32-a1", "{name}");
            assert_only_event_fields(&e);
        }
    }
}

/// Only these fields, ever: no payload, MAC, key or token.
fn assert_only_event_fields(e: &Value) {
    for key in e.as_object().unwrap().keys() {
        assert!(
            ["at", "device_id", "stream", "reason", "nonce"].contains(&key.as_str()),
            "{e}"
        );
    }
}

/// Vectors on another device's topic (`unknown-device`, `bad-device-id`)
/// cannot reach the verifier from esp32-a1's connection: the front door
/// refuses them as `not_allowed` and closes the session. (Their verifier
/// verdicts are covered in tests/vectors.rs.)
async fn expect_refused_at_the_door(
    dev: Client,
    sub: &mut Client,
    v: &Value,
    creds: &sealgate::admin::client::Credentials,
    port: u16,
) -> Client {
    let mut dev = dev;
    let payload = B64.decode(v["payload_b64"].as_str().unwrap()).unwrap();
    dev.client
        .publish(
            v["topic"].as_str().unwrap(),
            rumqttc::QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .unwrap();
    let (topic, body) = sub.next_publish().await;
    assert_eq!(topic, "sealgate/events/esp32-a1");
    assert_eq!(event(&body)["reason"], "not_allowed");
    assert_only_event_fields(&event(&body));
    loop {
        if let Seen::Closed(_) = dev.next().await {
            break;
        }
    }
    Client::device(port, creds).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vector_through_the_gateway() {
    // Debug logging, so the secrecy check below covers every log line we write.
    let gw = Gateway::start(&[("RUST_LOG", "debug")]);
    let creds = gw.add_device("ESP32-A1").await;
    assert_eq!(creds.device_id, "esp32-a1");
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    let v = vectors();
    let messages = v["messages"].as_array().unwrap();
    // kid-2 is valid only after rotation: send it last.
    for m in messages.iter().filter(|m| m["name"] != "kid-2") {
        let own = sealgate::envelope::SealedTopic::parse("sealed", m["topic"].as_str().unwrap())
            .is_ok_and(|t| t.device_id == "esp32-a1");
        if own {
            expect_verdict(&mut dev, &mut sub, m).await;
        } else {
            dev = expect_refused_at_the_door(dev, &mut sub, m, &creds, gw.mqtt_port).await;
        }
    }
    let rotated = gw.admin_call(|a| a.rotate("esp32-a1")).await.unwrap();
    assert_eq!(rotated.kid, 2);
    let kid2 = messages.iter().find(|m| m["name"] == "kid-2").unwrap();
    expect_verdict(&mut dev, &mut sub, kid2).await;
    // The previous kid stays valid during the grace period.
    let json_plain_kid1 = common::seal(
        &sealgate::admin::client::Credentials {
            kid: 1,
            secret: "a6351e260ad1d8c3e8b65529cd14e448123d634f9caee23e1aa8f65008ac56bd".into(),
            ..rotated.clone()
        },
        "telemetry",
        10_020,
        b"still kid 1",
    );
    dev.publish_acked("sealed/esp32-a1/telemetry", json_plain_kid1)
        .await;
    assert_eq!(sub.next_publish().await.1, b"still kid 1");
    let accepted = gw
        .metric("sealgate_messages_total{result=\"accepted\"}")
        .await;
    assert_eq!(accepted, 12.0);
    assert_eq!(
        gw.metric("sealgate_rejects_total{reason=\"bad_mac\"}")
            .await,
        4.0
    );

    // No secret, token, MAC or payload byte in any log line.
    let mut forbidden: Vec<String> = vec![
        VECTOR_MASTER.into(),
        ADMIN_TOKEN.into(),
        SUB_PASS.into(),
        creds.secret.clone(),
        creds.mqtt_password.clone(),
        rotated.secret.clone(),
        rotated.mqtt_password.clone(),
        "temp_c".into(),
        "still kid 1".into(),
    ];
    for m in messages {
        forbidden.push(m["payload_b64"].as_str().unwrap().into());
        if let Some(b) = m["clean_body_b64"].as_str() {
            forbidden.push(b.into());
        }
        let payload = B64.decode(m["payload_b64"].as_str().unwrap()).unwrap();
        if let Ok(p) = sealgate::envelope::parse(&payload) {
            forbidden.push(hex::encode(p.mac));
            forbidden.push(hex::encode(p.mac).to_uppercase());
            if p.body.len() >= 8 {
                forbidden.push(B64.encode(&p.body));
            }
        }
    }
    forbidden.retain(|f| f.len() >= 8);
    let (status, log) = gw.terminate_with_log();
    assert!(status.success());
    assert!(
        log.len() > 20,
        "expected a debug log, got {} lines",
        log.len()
    );
    for line in &log {
        for f in &forbidden {
            assert!(!line.contains(f.as_str()), "log line leaks {f:?}: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sequence_through_the_gateway() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-a1").await;
    let meter = gw.add_device("meter-0042").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    let v = vectors();
    let seq = &v["replay_sequence"];
    let topic = seq["topic"].as_str().unwrap();
    let mut duplicates = 0.0;
    for step in seq["steps"].as_array().unwrap() {
        let payload = B64.decode(step["payload_b64"].as_str().unwrap()).unwrap();
        let verdict = step["verdict"].as_str().unwrap();
        dev.publish_acked(topic, payload).await;
        match verdict {
            "duplicate" => {
                // Silent by design: counted, no event, nothing on clean/.
                duplicates += 1.0;
                assert_eq!(
                    gw.metric("sealgate_rejects_total{reason=\"duplicate\"}")
                        .await,
                    duplicates
                );
            }
            "accept" => assert_eq!(sub.next_publish().await.0, "clean/esp32-a1/telemetry"),
            reason => {
                let (t, body) = sub.next_publish().await;
                assert_eq!(t, "sealgate/events/esp32-a1");
                assert_eq!(event(&body)["reason"], reason);
                assert_eq!(event(&body)["nonce"], step["nonce"]);
            }
        }
    }
    // Nothing was published for the duplicates: the next thing seen is this.
    let mut m = Client::device(gw.mqtt_port, &meter).await;
    m.publish_acked(
        "sealed/meter-0042",
        common::seal(&meter, "", 1, b"sentinel"),
    )
    .await;
    assert_eq!(
        sub.next_publish().await,
        ("clean/meter-0042".into(), b"sentinel".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_refused_and_its_messages_rejected() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-r").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    dev.publish_acked("sealed/esp32-r/t", common::seal(&creds, "t", 1, b"before"))
        .await;
    assert_eq!(sub.next_publish().await.1, b"before");
    gw.admin_call(|a| a.revoke("esp32-r")).await.unwrap();
    // The open session is closed at once...
    loop {
        match dev.next().await {
            Seen::Closed(_) => break,
            _ => continue,
        }
    }
    // ...and it cannot connect again.
    let (_c, r) = Client::connect(gw.mqtt_port, "esp32-r", "esp32-r", &creds.mqtt_password).await;
    assert!(r.unwrap_err().contains("NotAuthorized"));
    let list = gw.admin_call(|a| a.list()).await.unwrap();
    assert_eq!(list.devices[0].state, "revoked");
    assert!(list.devices[0].last_seen.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_take_a_subscriber_account_name() {
    let gw = Gateway::start(&[]);
    let err = gw.admin_call(|a| a.add("DASH", None)).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_register_accepts_a_valid_mac_from_an_unknown_device() {
    let gw = Gateway::start(&[("SEALGATE_AUTO_REGISTER", "true")]);
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    // Credentials derived offline, as a factory would, never registered.
    let master = sealgate::envelope::MasterKey::from_hex(VECTOR_MASTER).unwrap();
    let secret = master.device_secret("factory-1", 1);
    let keys = sealgate::envelope::DeviceKeys::from_secret(&secret);
    let creds = sealgate::admin::client::Credentials {
        device_id: "factory-1".into(),
        kid: 1,
        secret: hex::encode(secret),
        mqtt_password: sealgate::envelope::connect_token(&keys, "factory-1", 0),
    };
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    dev.publish_acked("sealed/factory-1", common::seal(&creds, "", 5, b"hello"))
        .await;
    assert_eq!(
        sub.next_publish().await,
        ("clean/factory-1".into(), b"hello".to_vec())
    );
    let shown = gw.admin_call(|a| a.show("factory-1")).await.unwrap();
    assert!(shown.auto_registered);
    assert_eq!(gw.metric("sealgate_auto_registered_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsealed_payloads_go_to_unverified_only_when_allowed() {
    let gw = Gateway::start_with_config(
        "[acl]\nsubscriber_subscribe = [\"clean/#\", \"sealgate/events/#\", \"unverified/#\"]\n",
        &[("SEALGATE_ALLOW_UNSEALED", "true")],
    );
    let creds = gw.add_device("legacy-1").await;
    let mut sub = Client::subscriber_to(
        gw.mqtt_port,
        &["clean/#", "sealgate/events/#", "unverified/#"],
    )
    .await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    dev.publish_acked("sealed/legacy-1/t", b"raw reading 42".to_vec())
        .await;
    assert_eq!(
        sub.next_publish().await,
        ("unverified/legacy-1/t".into(), b"raw reading 42".to_vec())
    );
    // Tampered and broken envelopes are still rejected, never "unverified".
    let mut sealed = common::seal(&creds, "t", 1, b"x");
    let n = sealed.len();
    sealed[n - 3] ^= 1;
    for (payload, reason) in [
        (sealed, "bad_mac"),
        (br#"{"v":1,"nonce":"x"}"#.to_vec(), "malformed"),
    ] {
        dev.publish_acked("sealed/legacy-1/t", payload).await;
        let (t, body) = sub.next_publish().await;
        assert_eq!(t, "sealgate/events/legacy-1");
        assert_eq!(event(&body)["reason"], reason);
    }
    // Plain JSON telemetry is not an envelope attempt.
    dev.publish_acked("sealed/legacy-1/t", br#"{"temp":21.5}"#.to_vec())
        .await;
    assert_eq!(sub.next_publish().await.0, "unverified/legacy-1/t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_sealed_messages_stay_retained_on_clean() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-ret").await;
    let dev = Client::device(gw.mqtt_port, &creds).await;
    let mut first = Client::subscriber(gw.mqtt_port).await;
    let m = common::seal(&creds, "state", 1, b"door=open");
    dev.client
        .publish("sealed/esp32-ret/state", rumqttc::QoS::AtLeastOnce, true, m)
        .await
        .unwrap();
    assert_eq!(first.next_publish().await.1, b"door=open");
    // A dashboard that subscribes later still gets the last state.
    let (mut late, r) = Client::connect(gw.mqtt_port, "dash-late", SUB_USER, SUB_PASS).await;
    r.unwrap();
    late.client
        .subscribe("clean/esp32-ret/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(
        late.next_publish().await,
        ("clean/esp32-ret/state".into(), b"door=open".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_kid_is_unknown_once_its_grace_period_is_over() {
    let gw = Gateway::start_with_config("[keys]\nrotation_grace_secs = 0\n", &[]);
    let old = gw.add_device("esp32-g").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let new = gw.admin_call(|a| a.rotate("esp32-g")).await.unwrap();
    // The old token no longer connects; the new one does.
    let (_c, r) = Client::connect(gw.mqtt_port, "esp32-g", "esp32-g", &old.mqtt_password).await;
    assert!(r.unwrap_err().contains("NotAuthorized"));
    let mut dev = Client::device(gw.mqtt_port, &new).await;
    // A message still sealed under kid 1 is refused as unknown_kid...
    dev.publish_acked("sealed/esp32-g", common::seal(&old, "", 1, b"old key"))
        .await;
    let (t, body) = sub.next_publish().await;
    assert_eq!(t, "sealgate/events/esp32-g");
    assert_eq!(event(&body)["reason"], "unknown_kid");
    // ...and kid 2 is accepted.
    dev.publish_acked("sealed/esp32-g", common::seal(&new, "", 2, b"new key"))
        .await;
    assert_eq!(sub.next_publish().await.1, b"new key");
}
