//! The front door's topic rules with real clients (MQTT 3.1.1 through the
//! shared harness, MQTT 5 through rumqttc's v5 client): each denial as
//! specified, and other clients left untouched.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{QoS, SubscribeReasonCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_publish_only_on_their_own_sealed_topics() {
    let gw = Gateway::start(&[]);
    let a = gw.add_device("dev-a").await;
    let b = gw.add_device("dev-b").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut dev_b = Client::device(gw.mqtt_port, &b).await;
    // Upper case in the topic is still its own topic.
    dev_b
        .publish_acked("sealed/DEV-B/t", common::seal(&b, "t", 1, b"own"))
        .await;
    assert_eq!(sub.next_publish().await.1, b"own");
    for (i, topic) in [
        "sealed/dev-a/t",
        "clean/dev-b/t",
        "sealgate/events/dev-b",
        "cmd/dev-b/x",
    ]
    .into_iter()
    .enumerate()
    {
        let mut dev = Client::device(gw.mqtt_port, &b).await;
        let forged = common::seal(&b, "t", 10 + i as u64, b"forged");
        dev.client
            .publish(topic, QoS::AtLeastOnce, false, forged)
            .await
            .unwrap();
        // The refusal is an event about the offender; nothing reached clean/.
        expect_event(&mut sub, "sealgate/events/dev-b", "not_allowed").await;
        closed(&mut dev).await;
    }
    assert_eq!(
        gw.metric("sealgate_rejects_total{reason=\"not_allowed\"}")
            .await,
        4.0
    );
    drop(dev_b);
    still_delivers(&gw, &a, 1, &mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_limited_filter_by_filter() {
    let gw = Gateway::start(&[]);
    let a = gw.add_device("dev-a").await;
    let mut dev = Client::device(gw.mqtt_port, &a).await;
    let codes = dev
        .subscribe(&[
            "#",
            "sealed/#",
            "cmd/dev-a/#",
            "cmd/dev-b/#",
            "+/+/#",
            "clean/+",
        ])
        .await;
    let granted: Vec<bool> = codes
        .iter()
        .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
        .collect();
    assert_eq!(
        granted,
        [false, false, true, false, false, false],
        "{codes:?}"
    );
    assert!(codes
        .iter()
        .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
        .all(|c| *c == SubscribeReasonCode::Failure));
    // The granted one works, and the connection stays up.
    let (mut ops, r) = Client::connect(gw.mqtt_port, "dash-x", SUB_USER, SUB_PASS).await;
    r.unwrap();
    let codes = ops
        .subscribe(&["#", "sealed/dev-a/#", "clean/dev-a/#"])
        .await;
    assert_eq!(codes[0], SubscribeReasonCode::Failure);
    assert_eq!(codes[1], SubscribeReasonCode::Failure);
    assert!(matches!(codes[2], SubscribeReasonCode::Success(_)));
    dev.publish_acked("sealed/dev-a", common::seal(&a, "", 1, b"x"))
        .await;
    assert_eq!(ops.next_publish().await.0, "clean/dev-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_cannot_forge_clean_data_or_take_device_sessions() {
    let gw = Gateway::start(&[]);
    let a = gw.add_device("dev-a").await;
    let mut watcher = Client::subscriber(gw.mqtt_port).await;
    let mut dev = Client::device(gw.mqtt_port, &a).await;
    // A dashboard using the device's id as its client id is a different
    // router session: the device is not kicked.
    let (mut forger, r) = Client::connect(gw.mqtt_port, "dev-a", SUB_USER, SUB_PASS).await;
    r.unwrap();
    forger
        .client
        .publish("clean/dev-a/t", QoS::AtLeastOnce, false, b"forged".to_vec())
        .await
        .unwrap();
    expect_event(&mut watcher, "sealgate/events/dash", "not_allowed").await;
    closed(&mut forger).await;
    dev.publish_acked("sealed/dev-a/t", common::seal(&a, "t", 1, b"real"))
        .await;
    assert_eq!(
        watcher.next_publish().await,
        ("clean/dev-a/t".into(), b"real".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_a_forbidden_topic_is_refused_at_connect() {
    let gw = Gateway::start(&[]);
    let a = gw.add_device("dev-a").await;
    let mut o = rumqttc::MqttOptions::new("dev-a", "127.0.0.1", gw.mqtt_port);
    o.set_credentials("dev-a", &a.mqtt_password);
    o.set_last_will(rumqttc::LastWill::new(
        "clean/dev-a/status",
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
    let err = el.poll().await.unwrap_err().to_string();
    assert!(err.contains("NotAuthorized"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_clients_are_told_why() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet, SubscribeReasonCode as Code};
    use rumqttc::v5::mqttbytes::QoS as Qos5;
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

    let gw = Gateway::start(&[]);
    let a = gw.add_device("dev-a").await;
    let mut o = MqttOptions::new("dev-a", "127.0.0.1", gw.mqtt_port);
    o.set_credentials("dev-a", &a.mqtt_password);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 10);
    client.subscribe("#", Qos5::AtLeastOnce).await.unwrap();
    client
        .subscribe("cmd/dev-a/#", Qos5::AtLeastOnce)
        .await
        .unwrap();
    let mut subacks = Vec::new();
    while subacks.len() < 2 {
        if let Event::Incoming(Packet::SubAck(s)) = tokio::time::timeout(WAIT, el.poll())
            .await
            .unwrap()
            .unwrap()
        {
            subacks.push(s.return_codes[0]);
        }
    }
    assert_eq!(subacks[0], Code::NotAuthorized);
    assert!(matches!(subacks[1], Code::Success(_)));
    client
        .publish("clean/dev-a/t", Qos5::AtLeastOnce, false, "forged")
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, el.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                assert_eq!(d.reason_code, DisconnectReasonCode::NotAuthorized);
                break;
            }
            Ok(_) => continue,
            // rumqttc reports a server DISCONNECT as an error carrying it.
            Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code, ..
            })) => {
                assert_eq!(reason_code, DisconnectReasonCode::NotAuthorized);
                break;
            }
            Err(e) => panic!("closed without DISCONNECT 0x87: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_of_a_device_takes_over_the_old_one() {
    let gw = Gateway::start(&[]);
    let a = gw.add_device("dev-a").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut first = Client::device(gw.mqtt_port, &a).await;
    let mut second = Client::device(gw.mqtt_port, &a).await;
    closed(&mut first).await;
    second
        .publish_acked("sealed/dev-a/t", common::seal(&a, "t", 1, b"second"))
        .await;
    assert_eq!(sub.next_publish().await.1, b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_of_everything_never_opens_the_gateways_prefixes() {
    let users = "[[users]]\nname = \"dash\"\npassword = \"dash-password\"\n\n[[users]]\nname = \"ops\"\npassword = \"ops-password\"\npublish = [\"#\"]\n";
    let gw = Gateway::start_with_config(users, &[("SEALGATE_USERS", "")]);
    let a = gw.add_device("dev-a").await;
    let mut sub = Client::subscriber_to(gw.mqtt_port, &["sealgate/events/#", "clean/#"]).await;
    // Unsealed device traffic, verified data and security events are the
    // gateway's to write, whatever an account is granted.
    for topic in [
        "unverified/dev-a/t",
        "unverified",
        "clean/dev-a/t",
        "sealgate/events/dev-a",
    ] {
        let (mut ops, r) = Client::connect(gw.mqtt_port, "ops-1", "ops", "ops-password").await;
        r.unwrap();
        ops.client
            .publish(topic, QoS::AtLeastOnce, false, b"spoofed".to_vec())
            .await
            .unwrap();
        expect_event(&mut sub, "sealgate/events/ops", "not_allowed").await;
        closed(&mut ops).await;
    }
    still_delivers(&gw, &a, 1, &mut sub).await;
}
