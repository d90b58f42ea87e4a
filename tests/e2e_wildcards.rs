//! Wildcard filters over the reserved prefixes, with real clients: an
//! operator account granted `#` may subscribe to `#` and `+/+` (rumqttc,
//! and `mosquitto_sub -t '#'` as operators use it), and receives the
//! gateway's output but never a sealed payload, whatever path the sealed
//! traffic took (a clean device, a persistent device session, a will on a
//! sealed topic, `allow_unsealed`); it reads the tenants' mounted copies as
//! well (its grant covers them). Devices and narrower accounts are refused.

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use common::*;
use rumqttc::{LastWill, QoS, SubscribeReasonCode};
use sealgate::admin::client::Credentials;

const OPS: &str = "ops";
const OPS_PASS: &str = "ops-password";

fn gateway() -> Gateway {
    let toml = format!(
        "[verifier]\nallow_unsealed = true\n\n\
         [[users]]\nname = \"{SUB_USER}\"\npassword = \"{SUB_PASS}\"\n\n\
         [[users]]\nname = \"{OPS}\"\npassword = \"{OPS_PASS}\"\nsubscribe = [\"#\"]\npublish = [\"ops/#\"]\n\n\
         [[users]]\nname = \"narrow\"\npassword = \"narrow-password\"\nsubscribe = [\"+/+/clean/#\", \"clean/#\"]\n"
    );
    Gateway::start_with_config(&toml, &[("SEALGATE_USERS", "")])
}

/// `mosquitto_sub -t '#' -v` as the operator, its output lines on a channel.
struct MosquittoSub {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl MosquittoSub {
    fn start(port: u16) -> MosquittoSub {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-u", OPS, "-P", OPS_PASS, "-i", "ops-mosq"])
            .args(["-t", "#", "-v", "-q", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (mosquitto-clients) is installed");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        MosquittoSub { child, lines }
    }

    /// Lines up to and including the first that starts with `last`.
    async fn until(&mut self, last: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.recv())
                .await
                .expect("timed out waiting for mosquitto_sub")
                .unwrap_or_else(|| panic!("mosquitto_sub ended; it printed {seen:?}"));
            let done = line.starts_with(last);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes from `c`, which subscribes to nothing, at QoS 1 and awaits
/// the PUBACK.
async fn publish(c: &mut Client, topic: &str, payload: &[u8], retain: bool) {
    c.client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .unwrap();
    match c.next().await {
        Seen::PubAck(_) => {}
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// Publishes up to and including `last`, skipping acks.
async fn until(c: &mut Client, last: &str) -> Vec<(String, Vec<u8>)> {
    let mut seen = Vec::new();
    loop {
        let (t, p) = c.next_publish().await;
        let done = t == last;
        seen.push((t, p));
        if done {
            return seen;
        }
    }
}

/// A device that connects with `will` and then vanishes without DISCONNECT.
async fn vanish_with_will(port: u16, creds: &Credentials, will: LastWill) {
    let mut o = options(
        port,
        &creds.device_id,
        &creds.device_id,
        &creds.mqtt_password,
    );
    o.set_last_will(will);
    let (_client, mut el) = rumqttc::AsyncClient::new(o, 10);
    let (connected, is_connected) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut connected = Some(connected);
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
    is_connected.await.unwrap();
    // The event loop, and with it the socket, goes away.
    task.abort();
}

fn granted(codes: &[SubscribeReasonCode]) -> Vec<bool> {
    codes
        .iter()
        .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_granted_everything_reads_everything_but_sealed_traffic() {
    let gw = gateway();
    let (a, p, u, w, t) = gw
        .admin_call(|op| {
            op.add_tenant("acme").unwrap();
            let t = op.add("d-acme", None).unwrap();
            op.assign("d-acme", "acme").unwrap();
            let a = op.add("dev-a", None).unwrap();
            let p = op.add("dev-p", None).unwrap();
            let u = op.add("dev-u", None).unwrap();
            let w = op.add("dev-w", None).unwrap();
            (a, p, u, w, t)
        })
        .await;
    let port = gw.mqtt_port;
    // The operator: `#` and `+/+` on two connections, `#` on a persistent
    // session (fed from the outbox), and mosquitto_sub on `#`.
    let (mut all, r) = Client::connect(port, "ops-all", OPS, OPS_PASS).await;
    r.unwrap();
    assert_eq!(granted(&all.subscribe(&["#"]).await), [true]);
    let (mut two, r) = Client::connect(port, "ops-two", OPS, OPS_PASS).await;
    r.unwrap();
    assert_eq!(granted(&two.subscribe(&["+/+"]).await), [true]);
    let mut o = options(port, "ops-kept", OPS, OPS_PASS);
    o.set_clean_session(false);
    let (mut kept, r) = Client::connect_with(o).await;
    r.unwrap();
    assert_eq!(granted(&kept.subscribe(&["#"]).await), [true]);
    // Markers come from a connection that subscribes to nothing.
    let (mut mark, r) = Client::connect(port, "ops-mark", OPS, OPS_PASS).await;
    r.unwrap();
    // mosquitto_sub is subscribed once it prints the retained marker.
    publish(&mut mark, "ops/ready", b"1", true).await;
    let mut mosq = MosquittoSub::start(port);
    mosq.until("ops/ready").await;

    // A clean-session device, on a stream and without one.
    let mut dev = Client::device(port, &a).await;
    dev.publish_acked("sealed/dev-a/t", seal(&a, "t", 1, b"a-t"))
        .await;
    dev.publish_acked("sealed/dev-a", seal(&a, "", 2, b"a-none"))
        .await;
    // A bad MAC: an event, and still nothing sealed.
    let mut forged = seal(&a, "t", 3, b"a-forged");
    let at = forged.len() - 4;
    forged[at] ^= 1;
    dev.publish_acked("sealed/dev-a/t", forged).await;
    // A device with a persistent session.
    let mut o = options(port, "dev-p", "dev-p", &p.mqtt_password);
    o.set_clean_session(false);
    let (mut dev_p, r) = Client::connect_with(o).await;
    r.unwrap();
    dev_p
        .publish_acked("sealed/dev-p/t", seal(&p, "t", 1, b"p-t"))
        .await;
    // Unsealed traffic allowed: it goes to unverified/, never as sealed/.
    let mut dev_u = Client::device(port, &u).await;
    dev_u
        .publish_acked("sealed/dev-u/t", b"u-raw".to_vec())
        .await;
    // Wills on sealed topics: one sealed, one unsealed. Each is awaited
    // before the next client connects.
    let mut got = Vec::new();
    let will = seal(&w, "status", 1, b"w-gone");
    vanish_with_will(
        port,
        &w,
        LastWill::new("sealed/dev-w/status", will, QoS::AtLeastOnce, false),
    )
    .await;
    got.extend(until(&mut all, "clean/dev-w/status").await);
    vanish_with_will(
        port,
        &u,
        LastWill::new("sealed/dev-u/status", "u-gone", QoS::AtLeastOnce, false),
    )
    .await;
    got.extend(until(&mut all, "unverified/dev-u/status").await);
    // A tenant's device: the operator reads the tenant's mounted copy too.
    let mut dev_t = Client::device(port, &t).await;
    dev_t
        .publish_acked("sealed/d-acme/t", seal(&t, "t", 1, b"t-t"))
        .await;
    publish(&mut mark, "ops/end", b"1", false).await;
    got.extend(until(&mut all, "ops/end").await);

    let expected: &[(&str, &[u8])] = &[
        ("clean/dev-a/t", b"a-t"),
        ("clean/dev-a", b"a-none"),
        ("clean/dev-p/t", b"p-t"),
        ("unverified/dev-u/t", b"u-raw"),
        ("clean/dev-w/status", b"w-gone"),
        ("unverified/dev-u/status", b"u-gone"),
        ("clean/d-acme/t", b"t-t"),
        ("tenants/acme/clean/d-acme/t", b"t-t"),
    ];
    // Every sealed payload here is JSON naming "mac"; no output does.
    let no_sealed = |topic: &str, payload: &[u8]| {
        assert!(!topic.starts_with("sealed"), "{topic}");
        assert!(
            !String::from_utf8_lossy(payload).contains("\"mac\""),
            "a sealed payload reached {topic}"
        );
    };
    for received in [got, until(&mut kept, "ops/end").await] {
        for (topic, payload) in &received {
            no_sealed(topic, payload);
        }
        for (topic, payload) in expected {
            assert!(
                received.contains(&(topic.to_string(), payload.to_vec())),
                "{topic} missing from {received:?}"
            );
        }
        let bad_mac = received
            .iter()
            .find(|(t, _)| t == "sealgate/events/dev-a")
            .expect("the bad MAC's event");
        assert_eq!(event(&bad_mac.1)["reason"], "bad_mac");
    }
    // `+/+`: the two-level topics only.
    let received = until(&mut two, "ops/end").await;
    for (topic, payload) in &received {
        no_sealed(topic, payload);
        assert_eq!(topic.split('/').count(), 2, "{topic}");
    }
    assert!(received.contains(&("clean/dev-a".to_owned(), b"a-none".to_vec())));
    // mosquitto_sub: `topic payload` lines.
    let lines = mosq.until("ops/end").await;
    for line in &lines {
        assert!(!line.starts_with("sealed"), "{line}");
        assert!(!line.contains("\"mac\""), "a sealed payload: {line}");
    }
    for (topic, payload) in expected {
        let line = format!("{topic} {}", String::from_utf8_lossy(payload));
        assert!(lines.contains(&line), "{line:?} missing from {lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_narrower_accounts_are_still_refused() {
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode as Code};
    use rumqttc::v5::mqttbytes::QoS as Qos5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let gw = gateway();
    let a = gw.add_device("dev-a").await;
    let port = gw.mqtt_port;
    let wide = ["#", "+/+", "+/#", "$share/g/#"];
    let mut dev = Client::device(port, &a).await;
    assert_eq!(granted(&dev.subscribe(&wide).await), [false; 4]);
    let (mut dash, r) = Client::connect(port, "dash-1", SUB_USER, SUB_PASS).await;
    r.unwrap();
    assert_eq!(granted(&dash.subscribe(&wide).await), [false; 4]);
    // A grant that covers part of the tenants' mount does not open it, and
    // nobody subscribes to the sealed prefix by name.
    let (mut narrow, r) = Client::connect(port, "narrow-1", "narrow", "narrow-password").await;
    r.unwrap();
    assert_eq!(
        granted(&narrow.subscribe(&["+/+/clean/#", "clean/#"]).await),
        [false, true]
    );
    let (mut ops, r) = Client::connect(port, "ops-1", OPS, OPS_PASS).await;
    r.unwrap();
    assert_eq!(
        granted(&ops.subscribe(&["sealed/#", "sealed/dev-a/t", "#"]).await),
        [false, false, true]
    );
    // MQTT 5 clients hear "not authorized".
    let mut o = MqttOptions::new("narrow-5", "127.0.0.1", port);
    o.set_credentials("narrow", "narrow-password");
    let (client, mut el) = AsyncClient::new(o, 10);
    client.subscribe("#", Qos5::AtLeastOnce).await.unwrap();
    let code = loop {
        match tokio::time::timeout(WAIT, el.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::SubAck(s))) => break s.return_codes[0],
            Ok(_) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, Code::NotAuthorized);
    // The refused filters leave the granted ones working.
    dev.publish_acked("sealed/dev-a/t", common::seal(&a, "t", 1, b"x"))
        .await;
    assert_eq!(
        narrow.next_publish().await,
        ("clean/dev-a/t".into(), b"x".to_vec())
    );
}
