//! What subscribers receive, as MQTT 3.1.1 and 5 say: a message arrives at
//! the lower of its publish QoS and the subscription's (section 3.8.4), on
//! every path: accounts' publishes, verified messages on `clean/`, retained
//! messages (after a restart too) and persistent sessions. An account's
//! MQTT 5 properties reach MQTT 5 subscribers, and an expired message
//! nobody; a device's never reach `clean/`. MQTT 5 subscription options
//! (No Local, Retain As Published, Retain Handling) are kept.

mod common;

use common::*;
use rumqttc::v5::mqttbytes::v5 as m5;
use tokio::sync::mpsc;

/// A publish as a client received it.
#[derive(Debug, Clone, PartialEq)]
struct Got {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    /// MQTT 5 only.
    props: Option<m5::PublishProperties>,
}

#[derive(Debug)]
enum Ev {
    Publish(Got),
    SubAck,
    UnsubAck,
    /// PUBACK, or PUBCOMP: the end of a QoS 1 or 2 publish.
    Done,
    Closed(String),
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A client of either protocol version whose event loop reports what it saw.
struct Peer {
    handle: Handle,
    rx: mpsc::UnboundedReceiver<Ev>,
    /// Publishes that arrived while an acknowledgement was awaited.
    held: std::collections::VecDeque<Got>,
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Peer {
    /// An MQTT 3.1.1 client (`clean` false: a persistent session).
    async fn v4(port: u16, id: &str, user: &str, pass: &str, clean: bool) -> Peer {
        let mut o = options(port, id, user, pass);
        o.set_clean_session(clean);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            use rumqttc::{Event, Packet};
            loop {
                let ev = match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish(Got {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        props: None,
                    }),
                    Ok(Event::Incoming(Packet::SubAck(_))) => Ev::SubAck,
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => Ev::Done,
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::SubAck,
                    Ok(_) => continue,
                    Err(e) => Ev::Closed(e.to_string()),
                };
                let closed = matches!(ev, Ev::Closed(_));
                if tx.send(ev).is_err() || closed {
                    return;
                }
            }
        });
        let mut p = Peer {
            handle: Handle::V4(client),
            rx,
            held: Default::default(),
        };
        p.connected().await;
        p
    }

    /// An MQTT 5 client (`expiry` above 0: a persistent session).
    async fn v5(port: u16, id: &str, user: &str, pass: &str, expiry: u32) -> Peer {
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
        o.set_credentials(user, pass);
        o.set_keep_alive(std::time::Duration::from_secs(30));
        if expiry > 0 {
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(expiry));
        }
        let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            use m5::Packet;
            use rumqttc::v5::Event;
            loop {
                let ev = match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish(Got {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        qos: p.qos as u8,
                        retain: p.retain,
                        props: p.properties,
                    }),
                    Ok(Event::Incoming(Packet::SubAck(_))) => Ev::SubAck,
                    Ok(Event::Incoming(Packet::UnsubAck(_))) => Ev::UnsubAck,
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => Ev::Done,
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::SubAck,
                    Ok(_) => continue,
                    Err(e) => Ev::Closed(e.to_string()),
                };
                let closed = matches!(ev, Ev::Closed(_));
                if tx.send(ev).is_err() || closed {
                    return;
                }
            }
        });
        let mut p = Peer {
            handle: Handle::V5(client),
            rx,
            held: Default::default(),
        };
        p.connected().await;
        p
    }

    async fn next(&mut self) -> Ev {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for MQTT traffic")
            .unwrap_or(Ev::Closed("event loop ended".into()))
    }

    async fn connected(&mut self) {
        match self.next().await {
            Ev::SubAck => {}
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: u8) {
        match &self.handle {
            Handle::V4(c) => c.subscribe(filter, qos4(qos)).await.unwrap(),
            Handle::V5(c) => c.subscribe(filter, qos5(qos)).await.unwrap(),
        }
        loop {
            match self.next().await {
                Ev::SubAck => return,
                Ev::Closed(e) => panic!("closed while subscribing: {e}"),
                _ => {}
            }
        }
    }

    async fn unsubscribe(&mut self, filter: &str) {
        let Handle::V5(c) = &self.handle else {
            panic!("MQTT 5 only here")
        };
        c.unsubscribe(filter).await.unwrap();
        loop {
            match self.next().await {
                Ev::UnsubAck => return,
                Ev::Closed(e) => panic!("closed while unsubscribing: {e}"),
                _ => {}
            }
        }
    }

    /// An MQTT 5 SUBSCRIBE with options.
    async fn subscribe_with(&mut self, filter: m5::Filter) {
        let Handle::V5(c) = &self.handle else {
            panic!("MQTT 3.1.1 has no subscription options")
        };
        c.subscribe_many([filter]).await.unwrap();
        loop {
            match self.next().await {
                Ev::SubAck => return,
                Ev::Closed(e) => panic!("closed while subscribing: {e}"),
                _ => {}
            }
        }
    }

    /// Publishes without waiting for anything.
    async fn send(&mut self, topic: &str, qos: u8, retain: bool, payload: &[u8]) {
        match &self.handle {
            Handle::V4(c) => c
                .publish(topic, qos4(qos), retain, payload.to_vec())
                .await
                .unwrap(),
            Handle::V5(c) => c
                .publish(topic, qos5(qos), retain, payload.to_vec())
                .await
                .unwrap(),
        }
    }

    /// Subscribes to one filter with a subscription identifier.
    async fn subscribe_with_id(&mut self, filter: m5::Filter, id: usize) {
        let Handle::V5(c) = &self.handle else {
            panic!("MQTT 3.1.1 has no subscription identifiers")
        };
        let props = m5::SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        };
        c.subscribe_many_with_properties([filter], props)
            .await
            .unwrap();
        loop {
            match self.next().await {
                Ev::SubAck => return,
                Ev::Closed(e) => panic!("closed while subscribing: {e}"),
                _ => {}
            }
        }
    }

    /// Publishes with MQTT 5 properties and waits for the PUBACK.
    async fn publish_with(
        &mut self,
        topic: &str,
        retain: bool,
        payload: &[u8],
        props: m5::PublishProperties,
    ) {
        let Handle::V5(c) = &self.handle else {
            panic!("MQTT 3.1.1 has no properties")
        };
        let qos = qos5(1);
        c.publish_with_properties(topic, qos, retain, payload.to_vec(), props)
            .await
            .unwrap();
        self.done(1).await;
    }

    async fn disconnect(&mut self) {
        match &self.handle {
            Handle::V4(c) => c.disconnect().await.unwrap(),
            Handle::V5(c) => c.disconnect().await.unwrap(),
        }
        loop {
            if let Ev::Closed(_) = self.next().await {
                return;
            }
        }
    }

    /// Publishes and, for QoS 1 and 2, waits for the end of the exchange
    /// (the gateway acknowledges once the message is durable).
    async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: &[u8]) {
        self.send(topic, qos, retain, payload).await;
        if qos > 0 {
            self.done(1).await;
        }
    }

    /// Waits for `n` PUBACKs or PUBCOMPs.
    async fn done(&mut self, mut n: usize) {
        while n > 0 {
            match self.next().await {
                Ev::Done => n -= 1,
                Ev::Publish(g) => self.held.push_back(g),
                Ev::Closed(e) => panic!("closed while publishing: {e}"),
                _ => {}
            }
        }
    }

    async fn next_publish(&mut self) -> Got {
        if let Some(g) = self.held.pop_front() {
            return g;
        }
        loop {
            match self.next().await {
                Ev::Publish(g) => return g,
                Ev::Closed(e) => panic!("closed while awaiting a publish: {e}"),
                _ => {}
            }
        }
    }
}

const OPS: &str = "ops";
const OPS_PASS: &str = "ops-password";

fn gateway() -> Gateway {
    Gateway::start_with_dash_and_ops()
}

/// Subscribers at QoS 1 and 2, one of each protocol version: (QoS, peer).
async fn subscribers(gw: &Gateway, filter: &str, user: &str, pass: &str) -> Vec<(u8, Peer)> {
    let port = gw.mqtt_port;
    let mut subs = vec![
        (1, Peer::v4(port, "sub-v4-q1", user, pass, true).await),
        (2, Peer::v4(port, "sub-v4-q2", user, pass, true).await),
        (1, Peer::v5(port, "sub-v5-q1", user, pass, 0).await),
        (2, Peer::v5(port, "sub-v5-q2", user, pass, 0).await),
    ];
    for (q, s) in subs.iter_mut() {
        s.subscribe(filter, *q).await;
    }
    subs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_publish_arrives_at_the_lower_of_the_two_qos() {
    let gw = gateway();
    let mut subs = subscribers(&gw, "status/#", OPS, OPS_PASS).await;
    let port = gw.mqtt_port;
    let mut publishers = [
        Peer::v4(port, "pub-v4", OPS, OPS_PASS, true).await,
        Peer::v5(port, "pub-v5", OPS, OPS_PASS, 0).await,
    ];
    for p in publishers.iter_mut() {
        for qos in 0..=2u8 {
            let payload = format!("at {qos}");
            p.publish("status/x", qos, false, payload.as_bytes()).await;
            for (sub_qos, s) in subs.iter_mut() {
                let got = s.next_publish().await;
                assert_eq!(got.payload, payload.as_bytes());
                assert_eq!(got.qos, qos.min(*sub_qos), "published at {qos}");
            }
        }
    }

    // More than the router keeps in flight (100), at each QoS below the
    // subscriptions': the acknowledgements the router awaits and the
    // client does not give are given for it, in order, or the router would
    // stop forwarding (or drop the link). Then QoS 2 goes through as such.
    let [p, _] = &mut publishers;
    for qos in [0u8, 1] {
        for i in 0..150 {
            p.send("status/bulk", qos, false, format!("{i}").as_bytes())
                .await;
        }
        if qos > 0 {
            p.done(150).await;
        }
        for (sub_qos, s) in subs.iter_mut() {
            for i in 0..150 {
                let got = s.next_publish().await;
                assert_eq!(got.payload, format!("{i}").as_bytes());
                assert_eq!(got.qos, qos.min(*sub_qos));
            }
        }
    }
    p.publish("status/x", 2, false, b"last").await;
    for (sub_qos, s) in subs.iter_mut() {
        let got = s.next_publish().await;
        assert_eq!((got.payload, got.qos), (b"last".to_vec(), *sub_qos));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_message_arrives_at_the_devices_qos_at_most() {
    let gw = gateway();
    let creds = gw.add_device("esp32-q").await;
    let mut subs = subscribers(&gw, "clean/#", SUB_USER, SUB_PASS).await;
    let mut dev = Peer::v4(
        gw.mqtt_port,
        &creds.device_id,
        &creds.device_id,
        &creds.mqtt_password,
        true,
    )
    .await;
    for (nonce, qos) in [(1, 0u8), (2, 1), (3, 2)] {
        let body = format!("sealed at {qos}");
        let sealed = seal(&creds, "t", nonce, body.as_bytes());
        dev.publish("sealed/esp32-q/t", qos, false, &sealed).await;
        for (sub_qos, s) in subs.iter_mut() {
            let got = s.next_publish().await;
            assert_eq!(got.topic, "clean/esp32-q/t");
            assert_eq!(got.payload, body.as_bytes());
            assert_eq!(got.qos, qos.min(*sub_qos), "sealed at {qos}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_keeps_its_qos_across_a_restart() {
    let gw = gateway();
    let port = gw.mqtt_port;
    let mut p = Peer::v4(port, "pub-r", OPS, OPS_PASS, true).await;
    p.publish("status/r0", 0, true, b"kept at 0").await;
    p.publish("status/r1", 1, true, b"kept at 1").await;
    // A QoS 0 publish is acknowledged by nothing: a later one in the same
    // order shows both are in.
    p.publish("status/r2", 2, true, b"kept at 2").await;
    drop(p);

    let expect = |got: &mut Vec<Got>| {
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        got.iter()
            .map(|g| (g.topic.clone(), g.qos, g.retain))
            .collect::<Vec<_>>()
    };
    let check = |gw: &Gateway| {
        let port = gw.mqtt_port;
        async move {
            for v5 in [false, true] {
                let mut s = match v5 {
                    false => Peer::v4(port, "late-v4", OPS, OPS_PASS, true).await,
                    true => Peer::v5(port, "late-v5", OPS, OPS_PASS, 0).await,
                };
                s.subscribe("status/#", 2).await;
                let mut got = Vec::new();
                for _ in 0..3 {
                    got.push(s.next_publish().await);
                }
                assert_eq!(
                    expect(&mut got),
                    [
                        ("status/r0".to_string(), 0, true),
                        ("status/r1".to_string(), 1, true),
                        ("status/r2".to_string(), 2, true),
                    ],
                    "MQTT 5: {v5}"
                );
            }
        }
    };
    check(&gw).await;
    let cfg = gw.config_file();
    let cfg = cfg.to_str().unwrap();
    let gw = gw.kill9_and_restart_with(&[("SEALGATE_CONFIG", cfg), ("SEALGATE_USERS", "")]);
    check(&gw).await;
}

/// Persistent sessions are fed from the outbox, which knows each message's
/// publish QoS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_gets_the_lower_of_the_two_qos() {
    let gw = gateway();
    let port = gw.mqtt_port;
    let mut subs = [
        Peer::v4(port, "kept-v4", OPS, OPS_PASS, false).await,
        Peer::v5(port, "kept-v5", OPS, OPS_PASS, 600).await,
    ];
    for s in subs.iter_mut() {
        s.subscribe("status/#", 2).await;
    }
    let mut p = Peer::v5(port, "pub-k", OPS, OPS_PASS, 0).await;
    for qos in 0..=2u8 {
        p.publish("status/k", qos, false, &[qos]).await;
        for s in subs.iter_mut() {
            let got = s.next_publish().await;
            assert_eq!((got.payload, got.qos), (vec![qos], qos));
        }
    }
}

/// Everything an account may attach, and two user properties it may not.
fn attached() -> m5::PublishProperties {
    m5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        topic_alias: None,
        response_topic: Some("status/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01id")),
        user_properties: vec![
            ("unit".into(), "kWh".into()),
            ("sg-device".into(), "esp32-forged".into()),
            ("SG-Nonce".into(), "1".into()),
            ("unit".into(), "Wh".into()),
        ],
        subscription_identifiers: Vec::new(),
        content_type: Some("application/json".into()),
    }
}

/// What an MQTT 5 subscriber gets of `attached()`: everything but the
/// reserved names, with the expiry interval less the whole seconds waited.
fn assert_passed_on(got: &Got) {
    let p = got.props.clone().expect("properties");
    let expiry = p.message_expiry_interval;
    assert!(matches!(expiry, Some(590..=600)), "{expiry:?}");
    let expected = m5::PublishProperties {
        message_expiry_interval: expiry,
        user_properties: vec![("unit".into(), "kWh".into()), ("unit".into(), "Wh".into())],
        ..attached()
    };
    assert_eq!(p, expected, "{}", got.topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_properties_reach_mqtt5_subscribers_and_survive_a_restart() {
    let gw = gateway();
    let port = gw.mqtt_port;
    let mut v5 = Peer::v5(port, "props-v5", OPS, OPS_PASS, 0).await;
    let mut kept = Peer::v5(port, "props-kept", OPS, OPS_PASS, 600).await;
    let mut v4 = Peer::v4(port, "props-v4", OPS, OPS_PASS, true).await;
    for s in [&mut v5, &mut kept, &mut v4] {
        s.subscribe("status/#", 1).await;
    }
    let mut p = Peer::v5(port, "props-pub", OPS, OPS_PASS, 0).await;
    p.publish_with("status/p", false, b"{}", attached()).await;
    assert_passed_on(&v5.next_publish().await);
    assert_passed_on(&kept.next_publish().await);
    let got = v4.next_publish().await;
    assert_eq!((got.topic.as_str(), got.props), ("status/p", None));

    // Retained, for clean and persistent sessions that subscribe later.
    p.publish_with("status/r", true, b"{}", attached()).await;
    for s in [&mut v5, &mut kept] {
        assert_passed_on(&s.next_publish().await);
    }
    let mut late = Peer::v5(port, "props-late", OPS, OPS_PASS, 0).await;
    let mut late_kept = Peer::v5(port, "props-late-kept", OPS, OPS_PASS, 600).await;
    for s in [&mut late, &mut late_kept] {
        s.subscribe("status/#", 1).await;
        let got = s.next_publish().await;
        assert!(got.retain);
        assert_passed_on(&got);
    }

    // From the outbox, across a kill -9: what a persistent session missed
    // while away, and the retained message given back to the router.
    kept.disconnect().await;
    p.publish_with("status/away", false, b"{}", attached())
        .await;
    let cfg = gw.config_file();
    let cfg = cfg.to_str().unwrap();
    let gw = gw.kill9_and_restart_with(&[("SEALGATE_CONFIG", cfg), ("SEALGATE_USERS", "")]);
    let mut kept = Peer::v5(gw.mqtt_port, "props-kept", OPS, OPS_PASS, 600).await;
    // Its position reaches the disk within a checkpoint (about a second),
    // so a kill -9 may replay what it had: repeats, each whole, never loss.
    let got = loop {
        let got = kept.next_publish().await;
        assert_passed_on(&got);
        if got.topic == "status/away" {
            break got;
        }
        assert!(
            ["status/p", "status/r"].contains(&got.topic.as_str()),
            "{}",
            got.topic
        );
    };
    assert_passed_on(&got);
    let mut late = Peer::v5(gw.mqtt_port, "props-after", OPS, OPS_PASS, 0).await;
    late.subscribe("status/#", 1).await;
    assert_passed_on(&late.next_publish().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_is_not_delivered() {
    let gw = gateway();
    let port = gw.mqtt_port;
    let mut kept = Peer::v5(port, "exp-kept", OPS, OPS_PASS, 600).await;
    kept.subscribe("status/#", 1).await;
    kept.disconnect().await;
    let mut p = Peer::v5(port, "exp-pub", OPS, OPS_PASS, 0).await;
    let expiring = |secs| m5::PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };
    for retain in [true, false] {
        let r = if retain { "r" } else { "m" };
        p.publish_with(&format!("status/{r}/short"), retain, b"1", expiring(1))
            .await;
        p.publish_with(&format!("status/{r}/long"), retain, b"100", expiring(100))
            .await;
    }
    // What is tested is time passing: nothing happens that could be awaited.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;

    let mut late = Peer::v5(port, "exp-late", OPS, OPS_PASS, 0).await;
    late.subscribe("status/#", 1).await;
    let mut kept = Peer::v5(port, "exp-kept", OPS, OPS_PASS, 600).await;
    // Something after them all: once it arrives, nothing expired came first.
    p.publish("status/fence", 1, false, b"fence").await;
    // The late subscriber gets the retained messages; the persistent
    // session what was published while it was away, retained or not.
    let late_expected = &["status/r/long", "status/fence"][..];
    let kept_expected = &["status/r/long", "status/m/long", "status/fence"][..];
    for (s, expected) in [(&mut late, late_expected), (&mut kept, kept_expected)] {
        let mut topics = Vec::new();
        loop {
            let got = s.next_publish().await;
            if got.topic.ends_with("long") {
                let left = got.props.and_then(|p| p.message_expiry_interval);
                assert!(matches!(left, Some(90..=98)), "{left:?}");
            }
            let fence = got.topic == "status/fence";
            topics.push(got.topic);
            if fence {
                break;
            }
        }
        assert_eq!(topics, expected);
    }
    let expired = "sealgate_dropped_total{reason=\"message_expired\"}";
    assert_eq!(gw.metric(expired).await, 3.0);
}

/// Properties are outside the envelope's MAC: nothing a device attaches
/// reaches `clean/`, for clean sessions or persistent ones (which get the
/// gateway's `sg-*` origin only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_properties_never_reach_clean() {
    let gw = gateway();
    let creds = gw.add_device("esp32-p").await;
    let port = gw.mqtt_port;
    let mut clean = Peer::v5(port, "dash-clean", SUB_USER, SUB_PASS, 0).await;
    let mut kept = Peer::v5(port, "dash-kept", SUB_USER, SUB_PASS, 600).await;
    for s in [&mut clean, &mut kept] {
        s.subscribe("clean/#", 1).await;
    }
    let mut dev = Peer::v5(
        port,
        &creds.device_id,
        &creds.device_id,
        &creds.mqtt_password,
        0,
    )
    .await;
    let sealed = seal(&creds, "t", 1, b"body");
    dev.publish_with("sealed/esp32-p/t", false, &sealed, attached())
        .await;
    let got = clean.next_publish().await;
    assert_eq!((got.payload.as_slice(), got.props), (&b"body"[..], None));
    let got = kept.next_publish().await;
    let names: Vec<String> = got
        .props
        .expect("the origin")
        .user_properties
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(names, ["sg-device", "sg-kid", "sg-nonce", "sg-received"]);
}

/// `status/#` at QoS 1 with options.
fn status(nolocal: bool, preserve_retain: bool, rh: m5::RetainForwardRule) -> m5::Filter {
    m5::Filter {
        path: "status/#".into(),
        qos: qos5(1),
        nolocal,
        preserve_retain,
        retain_forward_rule: rh,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_keeps_a_clients_own_messages_from_it() {
    use m5::RetainForwardRule::OnEverySubscribe as Every;
    let gw = gateway();
    let port = gw.mqtt_port;
    let mut other = Peer::v5(port, "nl-other", OPS, OPS_PASS, 0).await;
    let mut other_kept = Peer::v5(port, "nl-other-kept", OPS, OPS_PASS, 600).await;
    other.subscribe("status/#", 1).await;
    other_kept.subscribe("status/#", 1).await;
    for expiry in [0, 600] {
        let mut me = Peer::v5(port, "nl-me", OPS, OPS_PASS, expiry).await;
        me.subscribe_with(status(true, false, Every)).await;
        me.publish("status/mine", 1, false, b"mine").await;
        // Others get it, without the name of the session it came from.
        for o in [&mut other, &mut other_kept] {
            let got = o.next_publish().await;
            assert_eq!((got.topic.as_str(), got.props), ("status/mine", None));
        }
        // In order after it: once this arrives, the first did not.
        other.publish("status/theirs", 1, false, b"theirs").await;
        assert_eq!(
            me.next_publish().await.topic,
            "status/theirs",
            "expiry {expiry}"
        );
        assert_eq!(other.next_publish().await.topic, "status/theirs");
        assert_eq!(other_kept.next_publish().await.topic, "status/theirs");
        me.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_keeps_the_retain_flag() {
    use m5::RetainForwardRule::Never;
    let gw = gateway();
    let port = gw.mqtt_port;
    let mut rap = Peer::v5(port, "rap", OPS, OPS_PASS, 0).await;
    let mut kept = Peer::v5(port, "rap-kept", OPS, OPS_PASS, 600).await;
    let mut plain = Peer::v5(port, "rap-plain", OPS, OPS_PASS, 0).await;
    for s in [&mut rap, &mut kept] {
        s.subscribe_with(status(false, true, Never)).await;
    }
    plain.subscribe("status/#", 1).await;
    let mut p = Peer::v5(port, "rap-pub", OPS, OPS_PASS, 0).await;
    p.publish("status/r", 1, true, b"r").await;
    p.publish("status/n", 1, false, b"n").await;
    for (s, retained) in [(&mut rap, true), (&mut kept, true), (&mut plain, false)] {
        let r = s.next_publish().await;
        assert_eq!((r.topic.as_str(), r.retain), ("status/r", retained));
        let n = s.next_publish().await;
        assert_eq!((n.topic.as_str(), n.retain), ("status/n", false));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_decides_what_a_subscription_gets_as_it_is_made() {
    use m5::RetainForwardRule::{Never, OnEverySubscribe, OnNewSubscribe};
    let gw = gateway();
    let port = gw.mqtt_port;
    let mut p = Peer::v5(port, "rh-pub", OPS, OPS_PASS, 0).await;
    p.publish("status/r", 1, true, b"r").await;
    let mut fences = 0;
    for expiry in [0, 600] {
        let mut s = Peer::v5(port, "rh", OPS, OPS_PASS, expiry).await;
        // (unsubscribe first, Retain Handling, whether the retained message
        // comes before the fence published after the SUBACK).
        let steps = [
            (false, OnNewSubscribe, true),
            (false, Never, false),
            (false, OnNewSubscribe, false),
            (false, OnEverySubscribe, true),
            (true, Never, false),
            (true, OnEverySubscribe, true),
        ];
        for (unsubscribe, rh, retained) in steps {
            if unsubscribe {
                s.unsubscribe("status/#").await;
            }
            s.subscribe_with(status(false, false, rh.clone())).await;
            fences += 1;
            let fence = format!("status/fence-{fences}");
            p.publish(&fence, 1, false, b"f").await;
            let step = format!("{rh:?} after unsubscribing: {unsubscribe}, expiry {expiry}");
            let mut got = s.next_publish().await;
            if retained {
                assert_eq!(
                    (got.topic.as_str(), got.retain),
                    ("status/r", true),
                    "{step}"
                );
                got = s.next_publish().await;
            }
            assert_eq!(got.topic, fence, "{step}");
        }
        s.disconnect().await;
    }
}

/// MQTT 5 section 3.8.3.1: Retain Handling 0 sends the retained messages
/// on every SUBSCRIBE, also one renewing a clean session's subscription
/// (the router sends them for new ones only): at the lower of their QoS and
/// the one granted now, RETAIN set, with the SUBSCRIBE's identifier and the
/// properties they were published with. 1 and 2 send none on renewal. The
/// router's own deliveries go on around them (their acks are not its).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_sessions_resubscription_gets_the_retained_messages_again() {
    use m5::RetainForwardRule::{Never, OnEverySubscribe, OnNewSubscribe};
    let gw = gateway();
    let port = gw.mqtt_port;
    let mut p = Peer::v5(port, "rs-pub", OPS, OPS_PASS, 0).await;
    let typed = m5::PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    p.publish_with("status/rs/a", true, b"a", typed.clone())
        .await;
    p.publish("status/rs/b", 2, true, b"b").await;
    p.publish("status/other", 1, true, b"c").await;
    let mut s = Peer::v5(port, "rs", OPS, OPS_PASS, 0).await;
    let filter = |qos, rh| m5::Filter {
        path: "status/rs/#".into(),
        qos: qos5(qos),
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: rh,
    };
    // (granted QoS, Retain Handling, whether the retained messages come).
    let steps = [
        (2, OnEverySubscribe, true),
        (2, OnEverySubscribe, true),
        (1, OnEverySubscribe, true),
        (0, OnEverySubscribe, true),
        (2, OnNewSubscribe, false),
        (2, Never, false),
        (2, OnEverySubscribe, true),
    ];
    for (n, (granted, rh, retained)) in steps.into_iter().enumerate() {
        let id = n + 1;
        s.subscribe_with_id(filter(granted, rh.clone()), id).await;
        let fence = format!("status/rs/fence-{id}");
        p.publish(&fence, 1, false, b"f").await;
        let step = format!("step {id}: QoS {granted}, {rh:?}");
        if retained {
            let mut got = [s.next_publish().await, s.next_publish().await];
            got.sort_by(|x, y| x.topic.cmp(&y.topic));
            let [a, b] = got;
            let ids = |g: &Got| g.props.clone().unwrap_or_default().subscription_identifiers;
            assert_eq!(
                (a.topic.as_str(), a.qos, a.retain, ids(&a)),
                ("status/rs/a", granted.min(1), true, vec![id]),
                "{step}"
            );
            assert_eq!(
                (b.topic.as_str(), b.qos, b.retain, ids(&b)),
                ("status/rs/b", granted.min(2), true, vec![id]),
                "{step}"
            );
            let props = a.props.unwrap_or_default();
            assert_eq!(props.content_type, typed.content_type, "{step}");
            assert_eq!(props.user_properties, typed.user_properties, "{step}");
        }
        let got = s.next_publish().await;
        assert_eq!(
            (got.topic.as_str(), got.retain),
            (fence.as_str(), false),
            "{step}"
        );
    }
    // The router's deliveries still flow: their acknowledgements reached it
    // in its order, and the retained messages' did not.
    for i in 0..3 {
        let topic = format!("status/rs/after-{i}");
        p.publish(&topic, 2, false, b"x").await;
        assert_eq!(s.next_publish().await.topic, topic);
    }
}

/// MQTT 3.1.1 section 3.8.4: a SUBSCRIBE renewing a subscription re-sends
/// the retained messages its filter matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt311_resubscription_gets_the_retained_messages_again() {
    let gw = gateway();
    let port = gw.mqtt_port;
    let mut p = Peer::v5(port, "rs4-pub", OPS, OPS_PASS, 0).await;
    p.publish("status/r", 2, true, b"r").await;
    let mut s = Peer::v4(port, "rs4", OPS, OPS_PASS, true).await;
    for n in 0..3 {
        s.subscribe("status/#", 1).await;
        let fence = format!("status/fence-{n}");
        p.publish(&fence, 1, false, b"f").await;
        let got = s.next_publish().await;
        assert_eq!(
            (got.topic.as_str(), got.qos, got.retain),
            ("status/r", 1, true),
            "{n}"
        );
        assert_eq!(s.next_publish().await.topic, fence, "{n}");
    }
}

/// A gateway with device d1 and a connected account `ops` that may publish
/// under `cmd/`, which devices may subscribe to.
async fn commanding_d1() -> (Gateway, sealgate::admin::client::Credentials, Client) {
    let gw = Gateway::start_with_config(
        "[[users]]\nname = \"ops\"\npassword = \"ops-pw\"\npublish = [\"cmd/#\"]\n",
        &[("SEALGATE_USERS", "")],
    );
    let d = gw.add_device("d1").await;
    let (ops, r) = Client::connect(gw.mqtt_port, "ops-1", "ops", "ops-pw").await;
    r.unwrap();
    (gw, d, ops)
}

/// `ops` commands d1 on `topic`, at QoS 1.
async fn command(ops: &Client, topic: &str) {
    ops.client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, b"x".to_vec())
        .await
        .unwrap();
}

/// d1 with its persistent session.
fn persistent_d1(port: u16, d: &sealgate::admin::client::Credentials) -> rumqttc::MqttOptions {
    let mut o = options(port, "d1", "d1", &d.mqtt_password);
    o.set_clean_session(false);
    o
}

/// d1's persistent session, connected and subscribed to its commands.
async fn subscribed_d1(port: u16, d: &sealgate::admin::client::Credentials) -> Client {
    let (mut dev, r) = Client::connect_with(persistent_d1(port, d)).await;
    r.unwrap();
    dev.subscribe(&["cmd/d1/#"]).await;
    dev
}

/// Connects d1's persistent session again (taking it over if it is still
/// connected) and asserts that the first message it gets is a fence sent
/// now: nothing it acknowledged before comes again.
async fn resumes_with_nothing_acknowledged(
    port: u16,
    d: &sealgate::admin::client::Credentials,
    ops: &Client,
) {
    let (mut dev, r) = Client::connect_with(persistent_d1(port, d)).await;
    r.unwrap();
    command(ops, "cmd/d1/fence").await;
    assert_eq!(dev.next_publish().await.0, "cmd/d1/fence");
}

/// The same for a session the router resumed (an MQTT 3.1.1 device with
/// clean session 0): it holds the filter from before, so its SUBSCRIBE
/// after a reconnect renews it, and the retained messages come again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_router_sessions_resubscription_gets_the_retained_messages() {
    let (gw, d, mut ops) = commanding_d1().await;
    let port = gw.mqtt_port;
    let publish = |ops: &mut Client, topic: &'static str, retain: bool| {
        let c = ops.client.clone();
        async move {
            c.publish(topic, rumqttc::QoS::AtLeastOnce, retain, b"x".to_vec())
                .await
                .unwrap();
        }
    };
    publish(&mut ops, "cmd/d1/cfg", true).await;
    while !matches!(ops.next().await, Seen::PubAck(_)) {}
    for (n, fence) in ["cmd/d1/fence-0", "cmd/d1/fence-1"].into_iter().enumerate() {
        let mut o = options(port, "d1", "d1", &d.mqtt_password);
        o.set_clean_session(false);
        let (mut dev, r) = Client::connect_with(o).await;
        r.unwrap();
        dev.subscribe(&["cmd/d1/#"]).await;
        assert_eq!(dev.next_publish().await.0, "cmd/d1/cfg", "{n}");
        publish(&mut ops, fence, false).await;
        assert_eq!(dev.next_publish().await.0, fence, "{n}");
        dev.client.disconnect().await.unwrap();
        while !matches!(dev.next().await, Seen::Closed(_)) {}
    }
}

/// What a resumed router session's client acknowledged is not sent again
/// after it reconnects, though the front door hands the router its acks in
/// batches: the session's end takes the ones held along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_router_session_is_not_sent_again_what_it_acknowledged() {
    let (gw, d, ops) = commanding_d1().await;
    let port = gw.mqtt_port;
    let mut dev = subscribed_d1(port, &d).await;
    for topic in ["cmd/d1/a", "cmd/d1/b", "cmd/d1/c"] {
        command(&ops, topic).await;
        assert_eq!(dev.next_publish().await.0, topic);
    }
    dev.client.disconnect().await.unwrap();
    while !matches!(dev.next().await, Seen::Closed(_)) {}
    resumes_with_nothing_acknowledged(port, &d, &ops).await;
}

/// A raw MQTT 3.1.1 CONNECT of device d1 (clean session as given).
fn raw_device_connect(d: &sealgate::admin::client::Credentials, clean: bool) -> Vec<u8> {
    let mut connect = Vec::new();
    mqtt_str(b"MQTT", &mut connect);
    connect.extend_from_slice(&[4, 0b1100_0000 | (u8::from(clean) << 1), 0, 30]);
    for field in ["d1", "d1", d.mqtt_password.as_str()] {
        mqtt_str(field.as_bytes(), &mut connect);
    }
    framed(0x10, &connect)
}

/// A SUBSCRIBE sent right behind the CONNECT, in the same write (MQTT lets
/// a client not wait for the CONNACK), is answered at once: before, it
/// waited in the read buffer for the client's next packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_sent_with_the_connect_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, d, _ops) = commanding_d1().await;
    let mut subscribe = vec![0, 1];
    mqtt_str(b"cmd/d1/#", &mut subscribe);
    subscribe.push(1);
    let mut both = raw_device_connect(&d, true);
    both.extend_from_slice(&framed(0x82, &subscribe));
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", gw.mqtt_port))
        .await
        .unwrap();
    raw.write_all(&both).await.unwrap();
    let mut acks = [0u8; 9];
    tokio::time::timeout(WAIT, raw.read_exact(&mut acks))
        .await
        .expect("CONNACK and SUBACK")
        .unwrap();
    assert_eq!(acks, [0x20, 2, 0, 0, 0x90, 3, 0, 1, 1]);
}

/// A PUBACK that arrives in the same read as the DISCONNECT after it still
/// reaches the router: the resumed session is not sent the message again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_read_with_the_disconnect_still_counts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, d, ops) = commanding_d1().await;
    let port = gw.mqtt_port;
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    raw.write_all(&raw_device_connect(&d, false)).await.unwrap();
    let mut connack = [0u8; 4];
    raw.read_exact(&mut connack).await.unwrap();
    let mut subscribe = vec![0, 1];
    mqtt_str(b"cmd/d1/#", &mut subscribe);
    subscribe.push(1);
    raw.write_all(&framed(0x82, &subscribe)).await.unwrap();
    let mut suback = [0u8; 5];
    raw.read_exact(&mut suback).await.unwrap();
    assert_eq!((connack[0], suback[0], suback[4]), (0x20, 0x90, 1));
    command(&ops, "cmd/d1/a").await;
    let mut head = [0u8; 2];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0] & 0xf0, 0x30, "a PUBLISH");
    let mut body = vec![0u8; usize::from(head[1])];
    raw.read_exact(&mut body).await.unwrap();
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    assert_eq!(&body[2..2 + topic_len], b"cmd/d1/a");
    let pkid = &body[2 + topic_len..4 + topic_len];
    // PUBACK and DISCONNECT in one write.
    raw.write_all(&[0x40, 2, pkid[0], pkid[1], 0xe0, 0])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest).await;
    resumes_with_nothing_acknowledged(port, &d, &ops).await;
}

/// The same when a new connection takes the session over while the old
/// one is still open: the router saves the session at once, so the old
/// connection must already have handed over what its client acknowledged
/// (a persistent session's acks are never held back for batching).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_taken_over_is_not_sent_again_what_it_acknowledged() {
    let (gw, d, ops) = commanding_d1().await;
    let port = gw.mqtt_port;
    let mut dev = subscribed_d1(port, &d).await;
    command(&ops, "cmd/d1/a").await;
    assert_eq!(dev.next_publish().await.0, "cmd/d1/a");
    // A fence the router never sees: once its PUBACK is back, the gateway
    // has read the client's PUBACK for cmd/d1/a, which came before it.
    dev.publish_acked("sealed/d1/t", seal(&d, "t", 1, b"fence"))
        .await;
    resumes_with_nothing_acknowledged(port, &d, &ops).await;
}

/// A will's MQTT 5 properties go out with it, screened like a PUBLISH's
/// (the reserved `sg-` names dropped), when its client vanishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wills_properties_reach_mqtt5_subscribers() {
    let gw = gateway();
    let port = gw.mqtt_port;
    let mut v5 = Peer::v5(port, "will-watch", OPS, OPS_PASS, 0).await;
    v5.subscribe("status/#", 1).await;
    let a = attached();
    let props = m5::LastWillProperties {
        delay_interval: None,
        payload_format_indicator: a.payload_format_indicator,
        message_expiry_interval: a.message_expiry_interval,
        content_type: a.content_type,
        response_topic: a.response_topic,
        correlation_data: a.correlation_data,
        user_properties: a.user_properties,
    };
    let mut o = rumqttc::v5::MqttOptions::new("will-owner", "127.0.0.1", port);
    o.set_credentials(OPS, OPS_PASS);
    o.set_last_will(m5::LastWill::new(
        "status/will",
        b"{}".to_vec(),
        qos5(1),
        false,
        Some(props),
    ));
    let (_client, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("CONNACK")
        {
            Ok(rumqttc::v5::Event::Incoming(m5::Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("connect: {e}"),
        }
    }
    // Gone without DISCONNECT: the event loop, and its socket, dropped.
    drop(el);
    let got = v5.next_publish().await;
    assert_eq!(got.topic, "status/will");
    assert_passed_on(&got);
}
