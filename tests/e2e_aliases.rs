//! Topic aliases from MQTT 5 clients (section 3.3.2.3.4): the CONNACK
//! offers `mqtt.topic_alias_maximum`, an alias set by one PUBLISH names the
//! topic of a later one with an empty topic name, for sealed publishes (the
//! verifier's MAC covers the resolved topic) and accounts' alike, and an
//! alias of 0, above the maximum, or never set gets DISCONNECT 0x94.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn gateway(extra: &str) -> Gateway {
    let toml = format!(
        "{extra}[[users]]\nname = \"{SUB_USER}\"\npassword = \"{SUB_PASS}\"\n\
         subscribe = [\"clean/#\", \"sealgate/events/#\", \"ops/#\"]\npublish = [\"ops/#\"]\n"
    );
    Gateway::start_with_config(&toml, &[("SEALGATE_USERS", "")])
}

/// Connects an MQTT 5 client; returns it, its event loop's PUBACKs and
/// publishes on a channel, and the Topic Alias Maximum its CONNACK said.
async fn connect(
    port: u16,
    id: &str,
    user: &str,
    pass: &str,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
    Option<u16>,
) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials(user, pass);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 100);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let seen = match el.poll().await {
                Ok(Event::Incoming(p)) => Ok(p),
                Ok(_) => continue,
                Err(e) => Err(e.to_string()),
            };
            let end = seen.is_err();
            if tx.send(seen).is_err() || end {
                return;
            }
        }
    });
    let max = match tokio::time::timeout(WAIT, rx.recv()).await.unwrap() {
        Some(Ok(Packet::ConnAck(a))) => a.properties.and_then(|p| p.topic_alias_max),
        other => panic!("expected CONNACK, got {other:?}"),
    };
    (client, rx, max)
}

fn alias(n: u16) -> PublishProperties {
    PublishProperties {
        topic_alias: Some(n),
        ..Default::default()
    }
}

/// Waits for `count` PUBACKs, all successes.
async fn pubacks(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
    count: usize,
) {
    let mut seen = 0;
    while seen < count {
        match tokio::time::timeout(WAIT, rx.recv()).await.unwrap() {
            Some(Ok(Packet::PubAck(a))) => {
                assert_eq!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                seen += 1;
            }
            Some(Ok(_)) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_name_the_topic_for_sealed_and_account_publishes() {
    let gw = gateway("");
    let a = gw.add_device("dev-a").await;
    let mut sub = Client::subscriber_to(gw.mqtt_port, &["clean/#", "ops/#"]).await;
    let (dev, mut dev_rx, max) = connect(gw.mqtt_port, "dev-a", "dev-a", &a.mqtt_password).await;
    assert_eq!(max, Some(10), "the default mqtt.topic_alias_maximum");
    // Sealed: the alias is set by the first publish and used by the next
    // two; the MAC covers the stream, so a wrong topic would be bad_mac.
    for (n, topic) in [(1, "sealed/dev-a/t"), (2, ""), (3, "")] {
        let body = format!("n{n}");
        let sealed = common::seal(&a, "t", n, body.as_bytes());
        dev.publish_with_properties(topic, QoS::AtLeastOnce, false, sealed, alias(10))
            .await
            .unwrap();
    }
    pubacks(&mut dev_rx, 3).await;
    for n in 1..=3 {
        assert_eq!(
            sub.next_publish().await,
            ("clean/dev-a/t".to_owned(), format!("n{n}").into_bytes())
        );
    }
    // An account's publish, aliased the same way; and an alias set again.
    let (ops, mut ops_rx, _) = connect(gw.mqtt_port, "ops-1", SUB_USER, SUB_PASS).await;
    for (topic, body) in [("ops/x", "x1"), ("", "x2"), ("ops/y", "y1"), ("", "y2")] {
        ops.publish_with_properties(topic, QoS::AtLeastOnce, false, body, alias(1))
            .await
            .unwrap();
    }
    pubacks(&mut ops_rx, 4).await;
    for (topic, body) in [
        ("ops/x", "x1"),
        ("ops/x", "x2"),
        ("ops/y", "y1"),
        ("ops/y", "y2"),
    ] {
        assert_eq!(
            sub.next_publish().await,
            (topic.to_owned(), body.as_bytes().to_vec())
        );
    }
    // Aliases are per connection: another connection of the same account
    // has none of them (an empty topic with alias 1 is refused there).
    let mut s = raw_connect(gw.mqtt_port, "ops-2").await;
    s.write_all(&publish_qos0("", Some(1), b"z")).await.unwrap();
    assert_eq!(disconnect_reason(&mut s).await, 0x94);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_of_0_above_the_maximum_or_never_set_is_invalid() {
    let gw = gateway("[mqtt]\ntopic_alias_maximum = 3\n");
    let a = gw.add_device("dev-a").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let (_c, _rx, max) = connect(gw.mqtt_port, "ops-max", SUB_USER, SUB_PASS).await;
    assert_eq!(max, Some(3));
    for (i, (topic, n)) in [("ops/x", 0), ("ops/x", 4), ("", 2)]
        .into_iter()
        .enumerate()
    {
        let mut s = raw_connect(gw.mqtt_port, &format!("ops-{i}")).await;
        // A valid alias first, so the connection has one that works.
        s.write_all(&publish_qos0("ops/ok", Some(1), b"ok"))
            .await
            .unwrap();
        s.write_all(&publish_qos0(topic, Some(n), b"bad"))
            .await
            .unwrap();
        assert_eq!(disconnect_reason(&mut s).await, 0x94, "alias {n} {topic:?}");
        expect_event(&mut sub, "sealgate/events/dash", "invalid_topic").await;
    }
    // Nothing else was disturbed.
    still_delivers(&gw, &a, 1, &mut sub).await;
}

/// The dashboard account over a hand-written MQTT 5 CONNECT.
async fn raw_connect(port: u16, id: &str) -> TcpStream {
    raw_v5_connect(port, id, 0b1100_0010, &[]).await
}

/// A QoS 0 MQTT 5 PUBLISH, with a Topic Alias property if `alias` is set.
fn publish_qos0(topic: &str, alias: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(topic.as_bytes(), &mut body);
    match alias {
        Some(n) => {
            body.push(3);
            body.push(0x23);
            body.extend_from_slice(&n.to_be_bytes());
        }
        None => body.push(0),
    }
    body.extend_from_slice(payload);
    framed(0x30, &body)
}

/// Reads up to the server's DISCONNECT and returns its reason code.
async fn disconnect_reason(s: &mut TcpStream) -> u8 {
    let read = async {
        loop {
            let first = s.read_u8().await.expect("a DISCONNECT before the close");
            let mut len = 0usize;
            for i in 0..4 {
                let b = s.read_u8().await.unwrap();
                len |= usize::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    break;
                }
            }
            let mut rest = vec![0u8; len];
            s.read_exact(&mut rest).await.unwrap();
            if first == 0xE0 {
                return rest.first().copied().unwrap_or(0);
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.unwrap()
}
