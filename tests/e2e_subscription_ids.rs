//! MQTT 5 subscription identifiers (sections 3.8.2.1.2 and 3.3.4): a
//! delivery carries the identifier of every subscription of the session
//! it was sent for. A clean session gets one copy of a message per
//! matching filter (the embedded router's way), each with its own
//! filter's identifier; a persistent session gets one copy with the
//! identifiers of all its matching filters.

mod common;

use common::v5::{text, Got, Peer};
use common::*;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;

/// The `ops` account of `start_with_dash_and_ops`, over MQTT 5.
fn ops(port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials("ops", "ops-password");
    o
}

/// The identifiers a delivery carries, sorted.
fn ids(p: &Publish) -> Vec<usize> {
    let mut ids = p
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// A clean session: a retained message sent as the subscription is made
/// and a live one carry its identifier; a subscription without one, none;
/// overlapping filters get a copy each, with their own identifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_gets_each_filters_identifier() {
    let gw = Gateway::start_with_dash_and_ops();
    let (mut publisher, props) = Peer::connect(ops(gw.mqtt_port, "publisher")).await;
    let available = props.and_then(|p| p.subscription_identifiers_available);
    assert_eq!(available, Some(1));
    publisher
        .client
        .publish("status/kept", QoS::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    publisher.next().await;

    let (mut sub, _) = Peer::connect(ops(gw.mqtt_port, "sub")).await;
    sub.subscribe("status/kept", QoS::AtLeastOnce, Some(11))
        .await;
    let r = sub.next_publish().await;
    assert_eq!((text(&r), ids(&r)), ("retained".into(), vec![11]));

    let (mut plain, _) = Peer::connect(ops(gw.mqtt_port, "plain")).await;
    plain.subscribe("status/#", QoS::AtLeastOnce, None).await;
    let r = plain.next_publish().await;
    assert_eq!((text(&r), ids(&r)), ("retained".into(), vec![]));
    // Each new filter brings the retained message again, with its own.
    for (filter, id) in [("status/#", 2), ("status/+", 3)] {
        sub.subscribe(filter, QoS::AtLeastOnce, Some(id)).await;
        let r = sub.next_publish().await;
        assert_eq!((text(&r), ids(&r)), ("retained".into(), vec![id]));
    }
    publisher.publish("status/x", QoS::AtLeastOnce, "one").await;
    let mut copies = vec![
        ids(&sub.next_publish().await),
        ids(&sub.next_publish().await),
    ];
    copies.sort();
    assert_eq!(copies, [[2], [3]], "one copy per filter, each with its own");
    let p = plain.next_publish().await;
    assert_eq!((text(&p), ids(&p)), ("one".into(), vec![]));
}

/// Subscribing again to a filter replaces its identifier, and a
/// subscription made again without one has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_again_replaces_the_identifier() {
    let gw = Gateway::start_with_dash_and_ops();
    let (mut publisher, _) = Peer::connect(ops(gw.mqtt_port, "publisher")).await;
    let kept = |id: &str, clean_start: bool| {
        let mut o = ops(gw.mqtt_port, id);
        o.set_clean_start(clean_start);
        o.set_session_expiry_interval(Some(3600));
        o
    };
    let (mut clean, _) = Peer::connect(ops(gw.mqtt_port, "clean")).await;
    let (mut persistent, _) = Peer::connect(kept("kept", true)).await;
    for (n, id) in [(1, Some(5)), (2, Some(6)), (3, None)] {
        for c in [&mut clean, &mut persistent] {
            c.subscribe("status/#", QoS::AtLeastOnce, id).await;
        }
        publisher
            .publish("status/x", QoS::AtLeastOnce, &format!("m{n}"))
            .await;
        for c in [&mut clean, &mut persistent] {
            let p = c.next_publish().await;
            assert_eq!(text(&p), format!("m{n}"));
            assert_eq!(ids(&p), Vec::from_iter(id), "m{n}");
        }
    }
}

/// A persistent session gets one copy of a message its filters overlap
/// on, with both identifiers, also after a reconnect (what waited for it
/// included) and for the retained messages a subscription brings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_keeps_its_identifiers_across_reconnects() {
    let gw = Gateway::start_with_dash_and_ops();
    let (mut publisher, _) = Peer::connect(ops(gw.mqtt_port, "publisher")).await;
    let kept = |clean_start: bool| {
        let mut o = ops(gw.mqtt_port, "kept");
        o.set_clean_start(clean_start);
        o.set_session_expiry_interval(Some(3600));
        o
    };
    let (mut sub, _) = Peer::connect(kept(true)).await;
    sub.subscribe("status/#", QoS::AtLeastOnce, Some(9)).await;
    sub.subscribe("status/a", QoS::AtLeastOnce, Some(3)).await;
    publisher
        .publish("status/a", QoS::AtLeastOnce, "both")
        .await;
    let p = sub.next_publish().await;
    assert_eq!((text(&p), ids(&p)), ("both".into(), vec![3, 9]));
    publisher.publish("status/b", QoS::AtLeastOnce, "one").await;
    let p = sub.next_publish().await;
    assert_eq!((text(&p), ids(&p)), ("one".into(), vec![9]));

    sub.disconnect().await;
    publisher
        .publish("status/a", QoS::AtLeastOnce, "away")
        .await;
    let (mut sub, _) = Peer::connect(kept(false)).await;
    let p = sub.next_publish().await;
    assert_eq!((text(&p), ids(&p)), ("away".into(), vec![3, 9]));

    publisher
        .client
        .publish("status/r", QoS::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    let p = sub.next_publish().await;
    assert_eq!((text(&p), ids(&p)), ("retained".into(), vec![9]));
    sub.subscribe("status/r", QoS::AtLeastOnce, Some(4)).await;
    let p = sub.next_publish().await;
    assert_eq!((text(&p), ids(&p)), ("retained".into(), vec![4]));
}

/// Identifier 0 is a protocol error (MQTT 5 section 3.8.2.1.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifier_zero_is_a_protocol_error() {
    let gw = Gateway::start_with_dash_and_ops();
    let mut o = ops(gw.mqtt_port, "zero");
    o.set_session_expiry_interval(Some(3600));
    for o in [ops(gw.mqtt_port, "zero"), o] {
        let (sub, _) = Peer::connect(o).await;
        let props = rumqttc::v5::mqttbytes::v5::SubscribeProperties {
            id: Some(0),
            user_properties: Vec::new(),
        };
        sub.client
            .subscribe_with_properties("status/#", QoS::AtLeastOnce, props)
            .await
            .unwrap();
        let mut sub = sub;
        // rumqttc reports the DISCONNECT as the end of its event loop.
        match sub.next().await {
            Got::Disconnect(code) => assert_eq!(code, DisconnectReasonCode::ProtocolError),
            Got::Closed(e) if e.contains("ProtocolError") => {}
            other => panic!("expected DISCONNECT 0x82, got {other:?}"),
        }
    }
}

/// A persistent session's identifiers are stored with its filters: a
/// gateway restart keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_sessions_identifiers_survive_a_restart() {
    let gw = Gateway::start_with_dash_and_ops();
    let kept = |port: u16, clean_start: bool| {
        let mut o = ops(port, "kept");
        o.set_clean_start(clean_start);
        o.set_session_expiry_interval(Some(3600));
        o
    };
    let (mut sub, _) = Peer::connect(kept(gw.mqtt_port, true)).await;
    sub.subscribe("status/#", QoS::AtLeastOnce, Some(12)).await;
    sub.disconnect().await;

    let config = gw.config_file();
    let config = config.to_str().unwrap().to_owned();
    let env = [("SEALGATE_CONFIG", config.as_str()), ("SEALGATE_USERS", "")];
    let gw = gw.kill9_and_restart_with(&env);
    let (mut publisher, _) = Peer::connect(ops(gw.mqtt_port, "publisher")).await;
    publisher
        .publish("status/a", QoS::AtLeastOnce, "after")
        .await;
    let (mut sub, _) = Peer::connect(kept(gw.mqtt_port, false)).await;
    let p = sub.next_publish().await;
    assert_eq!((text(&p), ids(&p)), ("after".into(), vec![12]));
}
