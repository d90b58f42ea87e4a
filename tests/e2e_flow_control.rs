//! The client's Receive Maximum (MQTT 5 section 3.3.4, MQTT5-3.3.4-9):
//! never more QoS 1 and 2 deliveries unacknowledged to a client than it
//! announced; the rest wait, in order, and go out one per acknowledgement.
//! QoS 0 deliveries are not counted and are not held, which is what lets
//! a test see that the others were: a QoS 0 marker published after them
//! arrives before them.

mod common;

use common::v5::{text, Peer};
use common::*;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;

/// The `ops` account of `start_with_dash_and_ops`, over MQTT 5.
fn ops(port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials("ops", "ops-password");
    o
}

/// A subscriber that announces `receive_maximum` and acknowledges only
/// when the test says so.
async fn slow_reader(port: u16, receive_maximum: u16, qos: QoS) -> Peer {
    let mut o = ops(port, "slow-reader");
    o.set_receive_maximum(Some(receive_maximum));
    o.set_manual_acks(true);
    let (mut sub, _) = Peer::connect(o).await;
    sub.subscribe("status/#", qos, None).await;
    sub
}

/// Publishes `m1` to `m{n}` on `topic` at `qos`, then a QoS 0 `marker`,
/// which no Receive Maximum holds back.
async fn publish_then_marker(publisher: &mut Peer, topic: &str, qos: QoS, n: usize) {
    for i in 1..=n {
        publisher.publish(topic, qos, &format!("m{i}")).await;
    }
    publisher.publish(topic, QoS::AtMostOnce, "marker").await;
}

/// QoS 1, Receive Maximum 2: two go out, the rest wait behind them (the
/// marker overtakes them), and each PUBACK lets exactly the next one go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_deliveries_wait_for_room_in_the_clients_receive_maximum() {
    let gw = Gateway::start_with_dash_and_ops();
    let mut sub = slow_reader(gw.mqtt_port, 2, QoS::AtLeastOnce).await;
    let (mut publisher, _) = Peer::connect(ops(gw.mqtt_port, "publisher")).await;
    publish_then_marker(&mut publisher, "status/a", QoS::AtLeastOnce, 6).await;

    let mut unacked = std::collections::VecDeque::new();
    for expected in ["m1", "m2", "marker"] {
        let p = sub.next_publish().await;
        assert_eq!(text(&p), expected, "only two are sent before any PUBACK");
        if p.qos != QoS::AtMostOnce {
            unacked.push_back(p);
        }
    }
    for n in 3..=6 {
        let oldest = unacked.pop_front().unwrap();
        sub.client.ack(&oldest).await.unwrap();
        let p = sub.next_publish().await;
        assert_eq!(text(&p), format!("m{n}"), "one PUBACK, the next one");
        assert_eq!(p.qos, QoS::AtLeastOnce);
        unacked.push_back(p);
    }
    // Nothing more was waiting: the next marker is next.
    publisher.publish("status/a", QoS::AtMostOnce, "end").await;
    assert_eq!(text(&sub.next_publish().await), "end");
    for p in unacked {
        sub.client.ack(&p).await.unwrap();
    }
}

/// QoS 2, Receive Maximum 1: the slot is free only once the exchange is
/// complete (PUBREC, PUBREL, PUBCOMP), then the next one goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_delivery_holds_its_slot_until_pubcomp() {
    let gw = Gateway::start_with_dash_and_ops();
    let mut sub = slow_reader(gw.mqtt_port, 1, QoS::ExactlyOnce).await;
    let (mut publisher, _) = Peer::connect(ops(gw.mqtt_port, "publisher")).await;
    publish_then_marker(&mut publisher, "status/b", QoS::ExactlyOnce, 3).await;

    let first = sub.next_publish().await;
    assert_eq!((text(&first), first.qos), ("m1".into(), QoS::ExactlyOnce));
    assert_eq!(text(&sub.next_publish().await), "marker");
    // PUBREC; rumqttc answers the PUBREL with PUBCOMP itself.
    sub.client.ack(&first).await.unwrap();
    let second = sub.next_publish().await;
    assert_eq!(text(&second), "m2");
    sub.client.ack(&second).await.unwrap();
    let third = sub.next_publish().await;
    assert_eq!(text(&third), "m3");
    sub.client.ack(&third).await.unwrap();
    publisher.publish("status/b", QoS::AtMostOnce, "end").await;
    assert_eq!(text(&sub.next_publish().await), "end");
}

/// The retained messages a clean session's re-subscription gets (sent by
/// the front door, not the router) keep to the Receive Maximum too, and
/// the router's deliveries wait behind them: Receive Maximum 1, two
/// retained QoS 1 messages, then a live one; each PUBACK lets the next go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscriptions_retained_messages_keep_to_the_receive_maximum() {
    let gw = Gateway::start_with_dash_and_ops();
    let (mut publisher, _) = Peer::connect(ops(gw.mqtt_port, "publisher")).await;
    for topic in ["status/r1", "status/r2"] {
        publisher
            .client
            .publish(topic, QoS::AtLeastOnce, true, "kept")
            .await
            .unwrap();
        while !matches!(publisher.next().await, common::v5::Got::PubAck) {}
    }
    let mut sub = slow_reader(gw.mqtt_port, 1, QoS::AtLeastOnce).await;
    // The new subscription's, from the router, one at a time.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let p = sub.next_publish().await;
        seen.push(String::from_utf8_lossy(&p.topic).into_owned());
        sub.client.ack(&p).await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, ["status/r1", "status/r2"]);

    // Renewed with Retain Handling 0 (rumqttc's default).
    sub.subscribe("status/#", QoS::AtLeastOnce, None).await;
    publisher
        .publish("status/live", QoS::AtLeastOnce, "live")
        .await;
    publisher
        .publish("status/a", QoS::AtMostOnce, "marker")
        .await;
    let first = sub.next_publish().await;
    assert_eq!(
        (first.topic.as_ref(), first.retain),
        (&b"status/r1"[..], true)
    );
    assert_eq!(text(&sub.next_publish().await), "marker", "one in flight");
    let mut last = first;
    for (topic, retained) in [("status/r2", true), ("status/live", false)] {
        sub.client.ack(&last).await.unwrap();
        let p = sub.next_publish().await;
        assert_eq!((p.topic.as_ref(), p.retain), (topic.as_bytes(), retained));
        assert_eq!(p.qos, QoS::AtLeastOnce);
        last = p;
    }
    sub.client.ack(&last).await.unwrap();
    // The router took the acknowledgements it awaited: it goes on.
    publisher
        .publish("status/after", QoS::AtLeastOnce, "after")
        .await;
    let p = sub.next_publish().await;
    assert_eq!(text(&p), "after");
    sub.client.ack(&p).await.unwrap();
}
