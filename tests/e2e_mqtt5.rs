//! What an MQTT 5 client is told and what it is held to: the CONNACK says
//! what the gateway really does (receive maximum, packet size, aliases,
//! retain, wildcards, subscription identifiers, shared subscriptions), and
//! the client's own Maximum Packet Size is kept on both delivery paths.

mod common;

use common::v5::{Got, Peer as V5};
use common::*;
use rumqttc::v5::mqttbytes::v5::ConnAckProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The dashboard account's MQTT 5 options.
fn dash(port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials(SUB_USER, SUB_PASS);
    o
}

/// What the gateway announces to every MQTT 5 client, `shared` aside.
fn announced(max_packet: u32, shared: u8) -> ConnAckProperties {
    ConnAckProperties {
        receive_max: Some(100),
        max_packet_size: Some(max_packet),
        topic_alias_max: Some(10),
        retain_available: Some(1),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(shared),
        // Nothing else: QoS 2 is supported, the session kept as asked.
        session_expiry_interval: None,
        max_qos: None,
        assigned_client_identifier: None,
        reason_string: None,
        user_properties: Vec::new(),
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt5_connack_says_what_the_gateway_does() {
    let gw = Gateway::start_with_config("[mqtt]\nmax_packet_bytes = 20000\n", &[]);
    // A clean session may share subscriptions.
    let (_clean, props) = V5::connect(dash(gw.mqtt_port, "dash-clean")).await;
    assert_eq!(props, Some(announced(20000, 1)));
    // A persistent one may not (`$share/` is refused there).
    let mut o = dash(gw.mqtt_port, "dash-kept");
    o.set_clean_start(true);
    o.set_session_expiry_interval(Some(3600));
    let (_kept, props) = V5::connect(o).await;
    assert_eq!(props, Some(announced(20000, 0)));
    // MQTT 3.1.1 is unchanged: its CONNACK has no properties to carry any
    // of this, and it connects, subscribes and receives as before.
    let creds = gw.add_device("esp32-v4").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    still_delivers(&gw, &creds, 1, &mut sub).await;
}

/// MQTT 5 "MQTT5-3.3.4-7": a client keeps to the server's Receive Maximum,
/// and one that does not hears DISCONNECT 0x93. A compliant client (which
/// rumqttc is) is never cut off, however many publishes it queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_is_kept_and_enforced() {
    let gw = Gateway::start_with_config(
        "[[users]]\nname = \"ops\"\npassword = \"ops-pw\"\npublish = [\"cmd/#\"]\n",
        &[("SEALGATE_USERS", "")],
    );
    // Compliant: 300 QoS 2 publishes queued at once, an upper limit of 1000.
    let mut o = MqttOptions::new("ops-ok", "127.0.0.1", gw.mqtt_port);
    o.set_credentials("ops", "ops-pw");
    o.set_outgoing_inflight_upper_limit(1000);
    let (mut ops, props) = V5::connect(o).await;
    assert_eq!(props.and_then(|p| p.receive_max), Some(100));
    for n in 0..300u32 {
        let payload = n.to_string();
        ops.client
            .publish("cmd/x/go", QoS::ExactlyOnce, false, payload)
            .await
            .unwrap();
    }
    let mut completed = 0;
    while completed < 300 {
        match ops.next().await {
            Got::PubComp => completed += 1,
            Got::Closed(e) => panic!("a compliant client was cut off: {e}"),
            _ => {}
        }
    }

    // Not compliant: 101 QoS 2 publishes whose PUBREC it never releases.
    let mut s = TcpStream::connect(("127.0.0.1", gw.mqtt_port))
        .await
        .unwrap();
    s.write_all(&connect_v5("ops-raw", "ops", "ops-pw"))
        .await
        .unwrap();
    assert_eq!(read_packet(&mut s).await.map(|p| p[0]), Some(0x20));
    for pkid in 1..=101u16 {
        s.write_all(&publish_v5_qos2("cmd/x/go", pkid, b"go"))
            .await
            .unwrap();
    }
    let mut pubrecs = 0;
    let disconnect = loop {
        let packet = read_packet(&mut s)
            .await
            .expect("a DISCONNECT before the close");
        match packet[0] {
            0x50 => pubrecs += 1,
            0xE0 => break packet,
            other => panic!("unexpected packet type {other:#x}"),
        }
    };
    assert_eq!(disconnect[2], 0x93, "Receive Maximum exceeded");
    assert!(pubrecs <= 100, "{pubrecs} PUBRECs");
}

/// An MQTT 5 CONNECT, clean start, with username and password.
fn connect_v5(id: &str, user: &str, pass: &str) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(b"MQTT", &mut body);
    body.extend_from_slice(&[5, 0b1100_0010, 0, 30, 0]);
    mqtt_str(id.as_bytes(), &mut body);
    mqtt_str(user.as_bytes(), &mut body);
    mqtt_str(pass.as_bytes(), &mut body);
    framed(0x10, &body)
}

fn publish_v5_qos2(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(topic.as_bytes(), &mut body);
    body.extend_from_slice(&pkid.to_be_bytes());
    body.push(0); // no properties
    body.extend_from_slice(payload);
    framed(0x34, &body)
}

/// The next whole packet, or `None` once the server closed the socket.
async fn read_packet(s: &mut TcpStream) -> Option<Vec<u8>> {
    let read = async {
        let mut packet = vec![s.read_u8().await.ok()?];
        let mut len = 0usize;
        for i in 0..4 {
            let b = s.read_u8().await.ok()?;
            packet.push(b);
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        let start = packet.len();
        packet.resize(start + len, 0);
        s.read_exact(&mut packet[start..]).await.ok()?;
        Some(packet)
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("timed out reading from the gateway")
}

/// The Maximum Packet Size the limited subscribers announce; the large
/// message exceeds it, the small one does not.
const LIMIT: u32 = 1024;

fn large() -> Vec<u8> {
    vec![b'L'; 1500]
}

/// A subscriber with a Maximum Packet Size gets the small message of each
/// pair and never the large one (rumqttc would fail the connection on a
/// packet over its limit), QoS 0 and 1; one without a limit gets both. More
/// large messages than rumqttd keeps in flight to a client are discarded in
/// a row: had they not counted as acknowledged, the router would send the
/// QoS 1 subscriber nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_never_gets_a_packet_over_its_maximum_size() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-big").await;
    let mut limited = Vec::new();
    for (id, qos) in [("small-1", QoS::AtLeastOnce), ("small-0", QoS::AtMostOnce)] {
        let mut o = dash(gw.mqtt_port, id);
        o.set_max_packet_size(Some(LIMIT));
        let (mut c, _) = V5::connect(o).await;
        c.subscribe("clean/#", qos, None).await;
        limited.push(c);
    }
    let (mut full, _) = V5::connect(dash(gw.mqtt_port, "full")).await;
    full.subscribe("clean/#", QoS::AtLeastOnce, None).await;

    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    let topic = "sealed/esp32-big/t";
    let mut nonce = 0;
    let mut send = |body: Vec<u8>| {
        nonce += 1;
        seal(&creds, "t", nonce, &body)
    };
    dev.publish_acked(topic, send(large())).await;
    dev.publish_acked(topic, send(b"small".to_vec())).await;
    for c in &mut limited {
        assert_eq!(c.next_publish().await.payload.to_vec(), b"small");
    }
    assert_eq!(full.next_publish().await.payload.to_vec(), large());
    assert_eq!(full.next_publish().await.payload.to_vec(), b"small");

    for _ in 0..101 {
        dev.publish_acked(topic, send(large())).await;
    }
    dev.publish_acked(topic, send(b"after".to_vec())).await;
    for c in &mut limited {
        assert_eq!(c.next_publish().await.payload.to_vec(), b"after");
    }
    for _ in 0..101 {
        assert_eq!(full.next_publish().await.payload.to_vec(), large());
    }
    assert_eq!(full.next_publish().await.payload.to_vec(), b"after");
    let dropped = "sealgate_dropped_total{reason=\"too_large_for_client\"}";
    assert_eq!(gw.metric(dropped).await, 2.0 * 102.0);
}

/// The same for a persistent session, fed from the outbox: a discarded
/// message counts as delivered, so it neither holds the client's window
/// (Receive Maximum 2 here) nor is sent again when the session resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_moves_past_what_is_too_large_for_it() {
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("esp32-big").await;
    let kept = |id: &str, clean_start: bool| {
        let mut o = dash(gw.mqtt_port, id);
        o.set_max_packet_size(Some(LIMIT));
        o.set_receive_maximum(Some(2));
        o.set_clean_start(clean_start);
        o.set_session_expiry_interval(Some(3600));
        o
    };
    let (mut q1, _) = V5::connect(kept("kept-1", true)).await;
    q1.subscribe("clean/#", QoS::AtLeastOnce, None).await;
    let (mut q0, _) = V5::connect(kept("kept-0", true)).await;
    q0.subscribe("clean/#", QoS::AtMostOnce, None).await;
    let mut o = dash(gw.mqtt_port, "kept-full");
    o.set_session_expiry_interval(Some(3600));
    let (mut full, _) = V5::connect(o).await;
    full.subscribe("clean/#", QoS::AtLeastOnce, None).await;

    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    let topic = "sealed/esp32-big/t";
    for nonce in 1..=3 {
        dev.publish_acked(topic, seal(&creds, "t", nonce, &large()))
            .await;
    }
    dev.publish_acked(topic, seal(&creds, "t", 4, b"small"))
        .await;
    for c in [&mut q1, &mut q0] {
        assert_eq!(c.next_publish().await.payload.to_vec(), b"small");
    }
    for _ in 0..3 {
        assert_eq!(full.next_publish().await.payload.to_vec(), large());
    }
    assert_eq!(full.next_publish().await.payload.to_vec(), b"small");

    // Offline, one more; on resuming, it is the first thing sent.
    q1.disconnect().await;
    dev.publish_acked(topic, seal(&creds, "t", 5, b"while away"))
        .await;
    let (mut q1, _) = V5::connect(kept("kept-1", false)).await;
    assert_eq!(q1.next_publish().await.payload.to_vec(), b"while away");
    let dropped = "sealgate_dropped_total{reason=\"too_large_for_client\"}";
    assert_eq!(gw.metric(dropped).await, 6.0);
}
