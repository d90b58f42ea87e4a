//! Topic names and filters a client sends, with real clients: what MQTT
//! forbids and what the router cannot take is refused before either sees
//! it, shared subscriptions are judged by the filter the router uses, and
//! subscriptions are capped per connection, per account and over the
//! router's lifetime.

mod common;

use common::*;
use rumqttc::{QoS, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `dash` as the harness knows it, and `ops`, granted publish on everything.
/// SEALGATE_USERS is blanked so these `[[users]]` count.
const USERS: &str = r##"
[[users]]
name = "dash"
password = "dash-password"

[[users]]
name = "ops"
password = "ops-password"
publish = ["#"]
subscribe = ["#"]
"##;

const NO_ENV_USERS: &[(&str, &str)] = &[("SEALGATE_USERS", "")];

fn gateway(extra: &str) -> Gateway {
    Gateway::start_with_config(&format!("{extra}\n{USERS}"), NO_ENV_USERS)
}

async fn ops(port: u16, client_id: &str) -> Client {
    let (c, r) = Client::connect(port, client_id, "ops", "ops-password").await;
    r.expect("ops connects");
    c
}

/// One MQTT 3.1.1 packet: fixed header byte, remaining length, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn mqtt_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Connects as `ops` over a bare socket (rumqttc will not send a wildcard
/// in a topic name), publishes one QoS 0 message on `topic` and returns
/// once the gateway has closed the connection.
async fn raw_publish_is_closed(port: u16, topic: &[u8]) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut connect = Vec::new();
    mqtt_str(&mut connect, b"MQTT");
    // Level 4, flags: username, password, clean session; keep-alive 60 s.
    connect.extend_from_slice(&[4, 0xC2, 0, 60]);
    mqtt_str(&mut connect, b"ops-raw");
    mqtt_str(&mut connect, b"ops");
    mqtt_str(&mut connect, b"ops-password");
    s.write_all(&packet(0x10, &connect)).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    let mut publish = Vec::new();
    mqtt_str(&mut publish, topic);
    publish.extend_from_slice(b"payload");
    s.write_all(&packet(0x30, &publish)).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("the gateway closes the connection");
    assert_eq!(n.unwrap_or(0), 0, "nothing is answered: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_starting_with_a_multibyte_character_cannot_kill_the_router() {
    let gw = gateway("");
    let a = gw.add_device("dev-a").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    still_delivers(&gw, &a, 1, &mut sub).await;
    // Legal MQTT, and `ops` may publish anywhere: rumqttd 0.20's matcher
    // would panic on it and take the router thread down.
    let mut o = ops(gw.mqtt_port, "ops-1").await;
    o.client
        .publish("é/x", QoS::AtLeastOnce, false, b"x".to_vec())
        .await
        .unwrap();
    expect_event(&mut sub, "sealgate/events/ops", "invalid_topic").await;
    closed(&mut o).await;
    assert_eq!(
        gw.metric("sealgate_rejects_total{reason=\"invalid_topic\"}")
            .await,
        1.0
    );
    still_delivers(&gw, &a, 2, &mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_names_mqtt_forbids_are_refused() {
    let gw = gateway("");
    let a = gw.add_device("dev-a").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    for topic in [&b"a/+/b"[..], b"a/#", b"a/\0b", b"a/\xff", b"a/\nb"] {
        raw_publish_is_closed(gw.mqtt_port, topic).await;
        expect_event(&mut sub, "sealgate/events/ops", "invalid_topic").await;
    }
    assert_eq!(
        gw.metric("sealgate_rejects_total{reason=\"invalid_topic\"}")
            .await,
        5.0
    );
    still_delivers(&gw, &a, 1, &mut sub).await;
}

/// MQTT reserves `$` topics for the server and says a server should keep
/// clients from exchanging messages over them: an account's publish there
/// is acknowledged (QoS 1 and 2) and goes nowhere, and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_dollar_topic_is_acknowledged_and_goes_nowhere() {
    let gw = gateway("");
    let a = gw.add_device("dev-a").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut o = ops(gw.mqtt_port, "ops-dollar").await;
    o.publish_acked("$SYS/x", b"x".to_vec()).await;
    o.client
        .publish("$TopicA/B", QoS::ExactlyOnce, false, b"y".to_vec())
        .await
        .unwrap();
    loop {
        match o.next().await {
            Seen::PubComp(_) => break,
            Seen::Closed(e) => panic!("closed: {e}"),
            _ => {}
        }
    }
    // Nothing was delivered or refused: the next message the dashboard
    // sees is the device's.
    still_delivers(&gw, &a, 1, &mut sub).await;
    o.publish_acked("$SYS/y", b"z".to_vec()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_the_router_cannot_take_are_refused_in_the_suback() {
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode as Code};
    use rumqttc::v5::mqttbytes::QoS as Qos5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let gw = gateway("");
    let a = gw.add_device("dev-a").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut o = ops(gw.mqtt_port, "ops-1").await;
    let codes = o.subscribe(&["é/#", "😀", "$SYS/#", "cmd/#"]).await;
    assert_eq!(codes[..3], [SubscribeReasonCode::Failure; 3], "{codes:?}");
    assert!(matches!(codes[3], SubscribeReasonCode::Success(_)));
    // MQTT 5 hears "topic filter invalid".
    let mut opts = MqttOptions::new("ops-5", "127.0.0.1", gw.mqtt_port);
    opts.set_credentials("ops", "ops-password");
    let (client, mut el) = AsyncClient::new(opts, 10);
    client.subscribe("é/#", Qos5::AtLeastOnce).await.unwrap();
    let code = loop {
        if let Event::Incoming(Packet::SubAck(s)) = tokio::time::timeout(WAIT, el.poll())
            .await
            .unwrap()
            .unwrap()
        {
            break s.return_codes[0];
        }
    };
    assert_eq!(code, Code::TopicFilterInvalid);
    assert_eq!(
        gw.metric("sealgate_subscriptions_refused_total{reason=\"invalid_filter\"}")
            .await,
        3.0 + 1.0
    );
    still_delivers(&gw, &a, 1, &mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_topic_the_router_cannot_take_refuses_the_connect() {
    let gw = gateway("");
    let mut o = options(gw.mqtt_port, "ops-w", "ops", "ops-password");
    o.set_last_will(rumqttc::LastWill::new(
        "é/status",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (_c, r) = Client::connect_with(o).await;
    let err = r.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
    assert_eq!(
        gw.metric("sealgate_connect_refused_total{reason=\"will_topic_invalid\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_are_judged_by_the_filter_the_router_uses() {
    let gw = gateway("");
    let a = gw.add_device("dev-a").await;
    // `ops` may subscribe to `#`, shared or not, but never to sealed/ by
    // name (nothing sealed enters the router).
    let mut o = ops(gw.mqtt_port, "ops-1").await;
    let codes = o
        .subscribe(&["$share/g/sealed/#", "$share/g/#", "$share/g/+/dev-a/#"])
        .await;
    assert_eq!(codes[0], SubscribeReasonCode::Failure);
    assert!(
        codes[1..]
            .iter()
            .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
        "{codes:?}"
    );
    // `dash` may subscribe to clean/#, so to its shared form too.
    let (mut dash, r) = Client::connect(gw.mqtt_port, "dash-s", SUB_USER, SUB_PASS).await;
    r.unwrap();
    let codes = dash
        .subscribe(&["$share/g/clean/#", "$share/g/cmd/#"])
        .await;
    assert!(
        matches!(codes[0], SubscribeReasonCode::Success(_)),
        "{codes:?}"
    );
    assert_eq!(codes[1], SubscribeReasonCode::Failure);
    let mut dev = Client::device(gw.mqtt_port, &a).await;
    dev.publish_acked("sealed/dev-a/t", common::seal(&a, "t", 1, b"shared"))
        .await;
    assert_eq!(
        dash.next_publish().await,
        ("clean/dev-a/t".into(), b"shared".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_per_connection_and_per_account() {
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode as Code};
    use rumqttc::v5::mqttbytes::QoS as Qos5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let gw = gateway(
        "[limits]\nmax_subscriptions_per_connection = 3\nmax_subscriptions_per_account = 5\n",
    );
    let mut first = ops(gw.mqtt_port, "ops-1").await;
    // The fourth filter is over the connection's cap; the others are granted.
    let codes = first.subscribe(&["cmd/1", "cmd/2", "cmd/3", "cmd/4"]).await;
    let granted: Vec<bool> = codes
        .iter()
        .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
        .collect();
    assert_eq!(granted, [true, true, true, false], "{codes:?}");
    assert_eq!(codes[3], SubscribeReasonCode::Failure);
    // One it holds is free; after an UNSUBSCRIBE there is room again.
    assert!(matches!(
        first.subscribe(&["cmd/1"]).await[0],
        SubscribeReasonCode::Success(_)
    ));
    first.client.unsubscribe("cmd/1").await.unwrap();
    assert!(matches!(
        first.subscribe(&["cmd/4"]).await[0],
        SubscribeReasonCode::Success(_)
    ));
    assert_eq!(
        gw.metric("sealgate_subscriptions_refused_total{reason=\"connection_cap\"}")
            .await,
        1.0
    );

    // A second connection of the same account shares the account's cap:
    // 3 held there, 2 more here. MQTT 5 hears "quota exceeded".
    let mut opts = MqttOptions::new("ops-5", "127.0.0.1", gw.mqtt_port);
    opts.set_credentials("ops", "ops-password");
    let (second, mut el) = AsyncClient::new(opts, 10);
    let mut suback = async |filters: &[&str]| {
        let f = filters
            .iter()
            .map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(*f, Qos5::AtLeastOnce));
        second.subscribe_many(f).await.unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(s)) = tokio::time::timeout(WAIT, el.poll())
                .await
                .unwrap()
                .unwrap()
            {
                return s.return_codes;
            }
        }
    };
    let codes = suback(&["cmd/5", "cmd/6", "cmd/7"]).await;
    assert!(matches!(codes[0], Code::Success(_)), "{codes:?}");
    assert!(matches!(codes[1], Code::Success(_)), "{codes:?}");
    assert_eq!(codes[2], Code::QuotaExceeded);
    assert_eq!(
        gw.metric("sealgate_subscriptions_refused_total{reason=\"account_cap\"}")
            .await,
        1.0
    );
    // When the first connection ends, its filters no longer count.
    let open = gw.metric("sealgate_connections").await;
    first.client.disconnect().await.unwrap();
    closed(&mut first).await;
    wait_metric(&gw, "sealgate_connections", |v| v < open).await;
    let codes = suback(&["cmd/7"]).await;
    assert!(matches!(codes[0], Code::Success(_)), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_unsubscribe_churn_cannot_grow_the_router() {
    let gw = gateway(
        "[limits]\nmax_subscriptions_per_connection = 3\nmax_subscriptions_per_account = 3\nmax_router_filters = 7\n",
    );
    let mut o = ops(gw.mqtt_port, "ops-1").await;
    let mut n = 0;
    let mut last = Vec::new();
    // Each round holds at most 3 filters, but every one is new to the router.
    for _ in 0..3 {
        let round: Vec<String> = (0..3).map(|i| format!("churn/{}", n + i)).collect();
        n += 3;
        let refs: Vec<&str> = round.iter().map(String::as_str).collect();
        last = o.subscribe(&refs).await;
        for f in round {
            o.client.unsubscribe(f).await.unwrap();
        }
    }
    // churn/0..=6 fit; churn/7 and churn/8 are new and over the lifetime cap.
    let granted: Vec<bool> = last
        .iter()
        .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
        .collect();
    assert_eq!(granted, [true, false, false], "{last:?}");
    assert_eq!(
        gw.metric("sealgate_subscriptions_refused_total{reason=\"router_cap\"}")
            .await,
        2.0
    );
    assert_eq!(gw.metric("sealgate_router_filters").await, 7.0);
    // A filter the router already knows stays free, from any connection.
    let mut other = ops(gw.mqtt_port, "ops-2").await;
    let codes = other.subscribe(&["churn/0", "churn/7"]).await;
    assert!(
        matches!(codes[0], SubscribeReasonCode::Success(_)),
        "{codes:?}"
    );
    assert_eq!(codes[1], SubscribeReasonCode::Failure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_clients_hear_which_topic_or_filter_was_invalid() {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet, UnsubAckReason};
    use rumqttc::v5::mqttbytes::QoS as Qos5;
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

    let gw = gateway("");
    let mut opts = MqttOptions::new("ops-5", "127.0.0.1", gw.mqtt_port);
    opts.set_credentials("ops", "ops-password");
    let (client, mut el) = AsyncClient::new(opts, 10);
    // Nothing that could have been granted: answered here, not by the router.
    client.unsubscribe("é/#").await.unwrap();
    let reasons = loop {
        if let Event::Incoming(Packet::UnsubAck(u)) = tokio::time::timeout(WAIT, el.poll())
            .await
            .unwrap()
            .unwrap()
        {
            break u.reasons;
        }
    };
    assert_eq!(reasons, [UnsubAckReason::TopicFilterInvalid]);
    client
        .publish("é/x", Qos5::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let code = loop {
        match tokio::time::timeout(WAIT, el.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::Disconnect(d))) => break d.reason_code,
            Ok(_) => continue,
            Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code, ..
            })) => break reason_code,
            Err(e) => panic!("closed without DISCONNECT: {e}"),
        }
    };
    assert_eq!(code, DisconnectReasonCode::TopicNameInvalid);
}

/// Topic alias 0 is never valid: DISCONNECT 0x94 (topic alias invalid),
/// and nothing of it is delivered (tests/e2e_aliases.rs has the valid
/// ones). A raw socket, since rumqttc itself refuses to send such an alias.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_alias_is_refused_with_disconnect_0x94() {
    let gw = gateway("");
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.mqtt_port))
        .await
        .unwrap();
    let mut connect = Vec::new();
    mqtt_str(&mut connect, b"MQTT");
    // Level 5, flags: username, password, clean start; keep-alive 60 s; no properties.
    connect.extend_from_slice(&[5, 0xC2, 0, 60, 0]);
    mqtt_str(&mut connect, b"ops-alias");
    mqtt_str(&mut connect, b"ops");
    mqtt_str(&mut connect, b"ops-password");
    s.write_all(&packet(0x10, &connect)).await.unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.unwrap();
    let mut rest = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!((head[0], rest[1]), (0x20, 0), "CONNACK accepted");
    // QoS 0 PUBLISH with properties: Topic Alias (0x23) = 0.
    let mut publish = Vec::new();
    mqtt_str(&mut publish, b"cmd/dev-a/x");
    publish.extend_from_slice(&[3, 0x23, 0, 0]);
    publish.extend_from_slice(b"x");
    s.write_all(&packet(0x30, &publish)).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection")
        .ok();
    assert_eq!(answer.first(), Some(&0xE0), "a DISCONNECT: {answer:?}");
    assert_eq!(
        answer.get(2),
        Some(&0x94),
        "topic alias invalid: {answer:?}"
    );
}
