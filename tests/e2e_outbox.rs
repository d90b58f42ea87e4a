//! What the durable outbox adds that MQTT 5 clients can see: every verified
//! message a persistent session gets names its origin (device, kid, nonce,
//! time received) in user properties set by the gateway alone, and
//! persistent sessions follow MQTT 5's Clean Start and Session Expiry.

mod common;

use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

#[derive(Debug)]
enum Got {
    ConnAck { present: bool, expiry: Option<u32> },
    Publish(String, Vec<u8>, Vec<(String, String)>),
    SubAck,
    PubAck,
    Closed,
}

struct V5 {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Got>,
}

impl V5 {
    /// Connects and returns the client with what its CONNACK said.
    async fn connect(o: MqttOptions) -> (V5, bool, Option<u32>) {
        let (client, mut el) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let seen = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Got::ConnAck {
                        present: a.session_present,
                        expiry: a.properties.and_then(|p| p.session_expiry_interval),
                    },
                    Ok(Event::Incoming(Packet::Publish(p))) => Got::Publish(
                        String::from_utf8(p.topic.to_vec()).unwrap(),
                        p.payload.to_vec(),
                        p.properties.map(|p| p.user_properties).unwrap_or_default(),
                    ),
                    Ok(Event::Incoming(Packet::SubAck(_))) => Got::SubAck,
                    Ok(Event::Incoming(Packet::PubAck(_))) => Got::PubAck,
                    Ok(_) => continue,
                    Err(_) => {
                        let _ = tx.send(Got::Closed);
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        let mut c = V5 { client, rx };
        match c.next().await {
            Got::ConnAck { present, expiry } => (c, present, expiry),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn next(&mut self) -> Got {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for MQTT traffic")
            .unwrap_or(Got::Closed)
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            if let Got::SubAck = self.next().await {
                return;
            }
        }
    }

    async fn next_publish(&mut self) -> (String, Vec<u8>, Vec<(String, String)>) {
        loop {
            match self.next().await {
                Got::Publish(t, p, props) => return (t, p, props),
                Got::Closed => panic!("closed while waiting for a publish"),
                _ => {}
            }
        }
    }

    async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        while !matches!(self.next().await, Got::Closed) {}
    }
}

/// A dashboard account's MQTT 5 options: `expiry` seconds of session.
fn dash(port: u16, id: &str, clean_start: bool, expiry: Option<u32>) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials(SUB_USER, SUB_PASS);
    o.set_clean_start(clean_start);
    o.set_session_expiry_interval(expiry);
    o
}

/// The user properties of a verified message, checked and returned without
/// the receive time (which is checked for shape).
fn origin(props: &[(String, String)]) -> Vec<(String, String)> {
    let names: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["sg-device", "sg-kid", "sg-nonce", "sg-received"]);
    let received = &props[3].1;
    assert!(
        received.len() == 24 && received.ends_with('Z'),
        "{received:?}"
    );
    props[..3].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_messages_name_their_origin_and_nothing_a_device_attached() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-p").await;
    // One subscriber fed by the router, one by the outbox.
    let (mut routed, _, _) = V5::connect(dash(gw.mqtt_port, "routed", true, None)).await;
    routed.subscribe("clean/#").await;
    let (mut kept, present, _) = V5::connect(dash(gw.mqtt_port, "kept", true, Some(3600))).await;
    assert!(!present);
    kept.subscribe("clean/#").await;

    let mut o = MqttOptions::new(&creds.device_id, "127.0.0.1", gw.mqtt_port);
    o.set_credentials(&creds.device_id, &creds.mqtt_password);
    let (mut device, _, _) = V5::connect(o).await;
    // Properties outside the MAC: a forged origin and one of its own.
    let forged = PublishProperties {
        user_properties: vec![
            ("sg-nonce".into(), "999".into()),
            ("sg-device".into(), "someone-else".into()),
            ("note".into(), "from the device".into()),
        ],
        ..Default::default()
    };
    device
        .client
        .publish_with_properties(
            "sealed/esp32-p/t",
            QoS::AtLeastOnce,
            false,
            seal(&creds, "t", 7, b"reading"),
            forged,
        )
        .await
        .unwrap();
    while !matches!(device.next().await, Got::PubAck) {}

    let expected = vec![
        ("sg-device".to_owned(), "esp32-p".to_owned()),
        ("sg-kid".to_owned(), creds.kid.to_string()),
        ("sg-nonce".to_owned(), "7".to_owned()),
    ];
    let (topic, payload, props) = kept.next_publish().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("clean/esp32-p/t", &b"reading"[..])
    );
    assert_eq!(origin(&props), expected);
    // A clean session cannot get a repeat: no origin, and nothing of the
    // device's either.
    let (topic, payload, props) = routed.next_publish().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("clean/esp32-p/t", &b"reading"[..])
    );
    assert_eq!(props, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_session_lasts_its_expiry_and_clean_start_ends_it() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-q").await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    let topic = "sealed/esp32-q/t";

    let (mut c, present, _) = V5::connect(dash(gw.mqtt_port, "q", true, Some(3600))).await;
    assert!(!present);
    c.subscribe("clean/#").await;
    c.disconnect().await;
    dev.publish_acked(topic, seal(&creds, "t", 1, b"while away"))
        .await;

    // Resumed: the subscription and the message waited.
    let (mut c, present, _) = V5::connect(dash(gw.mqtt_port, "q", false, Some(3600))).await;
    assert!(present);
    let (t, p, _) = c.next_publish().await;
    assert_eq!(
        (t.as_str(), p.as_slice()),
        ("clean/esp32-q/t", &b"while away"[..])
    );
    c.disconnect().await;

    // Clean Start with no expiry ends the session: nothing waits any more.
    let (c, present, _) = V5::connect(dash(gw.mqtt_port, "q", true, None)).await;
    assert!(!present);
    c.disconnect().await;
    dev.publish_acked(topic, seal(&creds, "t", 2, b"nobody kept"))
        .await;
    let (mut c, present, _) = V5::connect(dash(gw.mqtt_port, "q", false, Some(3600))).await;
    assert!(!present);
    c.subscribe("clean/#").await;
    dev.publish_acked(topic, seal(&creds, "t", 3, b"new")).await;
    let (_, p, _) = c.next_publish().await;
    assert_eq!(p, b"new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expires_and_a_longer_expiry_is_capped_and_told() {
    let gw = Gateway::start_with_config("[sessions]\nmax_expiry_secs = 1\n", &[]);
    let (mut c, _, told) = V5::connect(dash(gw.mqtt_port, "e", true, Some(3600))).await;
    assert_eq!(told, Some(1), "the CONNACK says the expiry kept");
    c.subscribe("clean/#").await;
    assert_eq!(gw.metric("sealgate_persistent_sessions").await, 1.0);
    c.disconnect().await;
    // A second after the connection ended, the session is gone.
    wait_metric(&gw, "sealgate_persistent_sessions", |v| v == 0.0).await;
    let (_, present, _) = V5::connect(dash(gw.mqtt_port, "e", false, Some(1))).await;
    assert!(!present);
}

/// At its size bound the outbox holds the devices (no PUBACK) instead of
/// dropping anything; once the persistent session reads on, every message
/// is acknowledged and delivered, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_holds_devices_and_loses_nothing() {
    use rumqttc::{Event as E4, Packet as P4, QoS as Q4};
    const N: u64 = 60;
    let gw = Gateway::start_with_config(
        "[sessions]\noutbox_max_bytes = 8192\nretention_bytes = 8192\nmax_inflight = 1\n\
         [limits]\ndevice_rate = 0.0\n[verifier]\nmax_batch = 4\n",
        &[],
    );
    let creds = gw.add_device("esp32-h").await;
    // A persistent subscriber that acknowledges nothing until told to.
    let mut o = options(gw.mqtt_port, "holder", SUB_USER, SUB_PASS);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    let (sub, mut el) = rumqttc::AsyncClient::new(o, 100);
    sub.subscribe("clean/#", Q4::AtLeastOnce).await.unwrap();
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let (acking_tx, mut acking) = tokio::sync::watch::channel(false);
    let acker = sub.clone();
    tokio::spawn(async move {
        let mut waiting = Vec::new();
        loop {
            tokio::select! {
                ev = el.poll() => match ev {
                    Ok(E4::Incoming(P4::SubAck(_))) => { let _ = got_tx.send(None); }
                    Ok(E4::Incoming(P4::Publish(p))) => {
                        let _ = got_tx.send(Some(p.payload.to_vec()));
                        waiting.push(p);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                _ = acking.changed() => {}
            }
            if *acking.borrow() {
                for p in waiting.drain(..) {
                    acker.ack(&p).await.unwrap();
                }
            }
        }
    });
    assert_eq!(got.recv().await, Some(None), "SUBACK first");

    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    for n in 1..=N {
        let body = format!("{n:0200}");
        dev.client
            .publish(
                "sealed/esp32-h/t",
                Q4::AtLeastOnce,
                false,
                seal(&creds, "t", n, body.as_bytes()),
            )
            .await
            .unwrap();
    }
    wait_metric(&gw, "sealgate_outbox_full", |v| v == 1.0).await;
    // Held: the devices are not told anything is delivered meanwhile.
    let mut acked = 0;
    while let Ok(common::Seen::PubAck(_)) = dev.rx.try_recv() {
        acked += 1;
    }
    assert!(acked < N, "{acked} of {N} acknowledged while full");

    acking_tx.send(true).unwrap();
    while acked < N {
        if let common::Seen::PubAck(_) = dev.next().await {
            acked += 1;
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N as usize {
        let body = tokio::time::timeout(WAIT, got.recv())
            .await
            .expect("every message arrives")
            .flatten()
            .expect("a publish");
        let n: u64 = String::from_utf8(body).unwrap().parse().unwrap();
        assert!(seen.insert(n), "message {n} twice");
    }
    assert_eq!(seen, (1..=N).collect());
    assert_eq!(gw.metric("sealgate_outbox_full").await, 0.0);
}

/// Retained messages are kept with the outbox: a persistent session gets
/// them when it subscribes, and after a kill -9 the router has them back
/// for clean sessions too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_a_restart_and_reach_persistent_sessions() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-r").await;
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    dev.client
        .publish(
            "sealed/esp32-r/state",
            rumqttc::QoS::AtLeastOnce,
            true,
            seal(&creds, "state", 1, b"on"),
        )
        .await
        .unwrap();
    while !matches!(dev.next().await, common::Seen::PubAck(_)) {}

    let mut o = options(gw.mqtt_port, "kept-r", SUB_USER, SUB_PASS);
    o.set_clean_session(false);
    let (mut kept, r) = Client::connect_with(o).await;
    r.unwrap();
    kept.subscribe(&["clean/#"]).await;
    assert_eq!(
        kept.next_publish().await,
        ("clean/esp32-r/state".into(), b"on".to_vec())
    );
    drop((kept, dev));

    let gw = gw.kill9_and_restart();
    for id in ["clean-r", "kept-r2"] {
        let mut o = options(gw.mqtt_port, id, SUB_USER, SUB_PASS);
        o.set_clean_session(id.starts_with("clean"));
        let (mut sub, r) = Client::connect_with(o).await;
        r.unwrap();
        sub.subscribe(&["clean/#"]).await;
        assert_eq!(
            sub.next_publish().await,
            ("clean/esp32-r/state".into(), b"on".to_vec()),
            "{id}"
        );
    }
}

/// A persistent session gets everything its filters match while it is
/// away, across a kill -9: security events, unverified payloads and what
/// accounts publish, not only verified plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_unverified_and_account_publishes_wait_for_a_persistent_session() {
    let gw = Gateway::start_with_config(
        "[verifier]\nallow_unsealed = true\n\
         [[users]]\nname = \"dash\"\npassword = \"dash-password\"\n\
         subscribe = [\"sealgate/events/#\", \"unverified/#\", \"status/#\"]\n\
         [[users]]\nname = \"ops\"\npassword = \"ops-password\"\npublish = [\"status/#\"]\n",
        &[("SEALGATE_USERS", "")],
    );
    let creds = gw.add_device("esp32-e").await;
    let mut o = options(gw.mqtt_port, "kept-e", SUB_USER, SUB_PASS);
    o.set_clean_session(false);
    let (mut sub, r) = Client::connect_with(o.clone()).await;
    r.unwrap();
    sub.subscribe(&["sealgate/events/#", "unverified/#", "status/#"])
        .await;
    sub.client.disconnect().await.unwrap();
    while !matches!(sub.next().await, common::Seen::Closed(_)) {}

    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    // A forged MAC (an event), then a payload that is no envelope.
    let mut forged = seal(&creds, "t", 1, b"x");
    let at = forged.len() - 3;
    forged[at] ^= 1;
    dev.publish_acked("sealed/esp32-e/t", forged).await;
    dev.publish_acked("sealed/esp32-e/t", b"plain reading".to_vec())
        .await;
    let (mut ops, r) = Client::connect(gw.mqtt_port, "ops-1", "ops", "ops-password").await;
    r.unwrap();
    ops.publish_acked("status/site", b"up".to_vec()).await;
    drop((dev, ops));

    let cfg = gw.config_file();
    let cfg = cfg.to_str().unwrap();
    let gw = gw.kill9_and_restart_with(&[("SEALGATE_CONFIG", cfg), ("SEALGATE_USERS", "")]);
    let mut o = options(gw.mqtt_port, "kept-e", SUB_USER, SUB_PASS);
    o.set_clean_session(false);
    let (mut sub, r) = Client::connect_with(o).await;
    r.unwrap();
    let (t, p) = sub.next_publish().await;
    assert_eq!(t, "sealgate/events/esp32-e");
    assert_eq!(event(&p)["reason"], "bad_mac");
    assert_eq!(
        sub.next_publish().await,
        ("unverified/esp32-e/t".into(), b"plain reading".to_vec())
    );
    assert_eq!(
        sub.next_publish().await,
        ("status/site".into(), b"up".to_vec())
    );
}

/// MQTT 5 (3.14.2.2.2): a DISCONNECT may change the session's expiry. An
/// expiry of 0 there ends a kept session at once. (rumqttc sends DISCONNECT
/// without properties, so this client writes its packets itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expiry_sent_on_disconnect_is_honoured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&[]);
    // CONNECT v5, clean start, Session Expiry 3600.
    let mut s = raw_v5_connect(
        gw.mqtt_port,
        "raw-expiry",
        0b1100_0010,
        &[0x11, 0, 0, 0x0e, 0x10],
    )
    .await;
    wait_metric(&gw, "sealgate_persistent_sessions", |v| v == 1.0).await;
    // DISCONNECT 0x00 with Session Expiry Interval 0.
    s.write_all(&[0xe0, 0x07, 0x00, 0x05, 0x11, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut end = Vec::new();
    let _ = s.read_to_end(&mut end).await;
    wait_metric(&gw, "sealgate_persistent_sessions", |v| v == 0.0).await;
    let (_, present, _) = V5::connect(dash(gw.mqtt_port, "raw-expiry", false, Some(3600))).await;
    assert!(!present, "the session ended with its connection");
}
