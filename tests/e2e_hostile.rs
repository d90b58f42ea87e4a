//! Hostile clients at the front door, over raw sockets where a real client
//! library would refuse to misbehave: each test is one finding of the input
//! audit and fails on a gateway without its fix.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An MQTT 3.1.1 CONNECT with username and password, clean session.
fn connect_packet(client_id: &[u8], user: &[u8], pass: &[u8], keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(b"MQTT", &mut body);
    body.push(4);
    body.push(0b1100_0010);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    mqtt_str(client_id, &mut body);
    mqtt_str(user, &mut body);
    mqtt_str(pass, &mut body);
    let mut p = vec![0x10];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(&body);
    p
}

/// Connects as the test's dashboard account over a raw socket and reads the
/// CONNACK.
async fn raw_subscriber(port: u16, keep_alive: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&connect_packet(
        b"raw-dash",
        SUB_USER.as_bytes(),
        SUB_PASS.as_bytes(),
        keep_alive,
    ))
    .await
    .unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    s
}

/// Sends one byte every `every` until the server closes the socket; returns
/// whether it did before `max` bytes were sent. The pace is the behaviour
/// under test (a client that trickles), not synchronisation.
async fn trickle_until_closed(s: &mut TcpStream, every: Duration, max: usize) -> bool {
    let mut b = [0u8; 64];
    for _ in 0..max {
        tokio::select! {
            r = s.read(&mut b) => match r {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            },
            _ = tokio::time::sleep(every) => {
                if s.write_all(&[0x61]).await.is_err() {
                    return true;
                }
            }
        }
    }
    false
}

/// Waits until the server closes `s`, draining whatever it sends. `false`
/// if it is still open after the test's patience runs out.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Finding 1: the connect deadline covers the whole CONNECT, so a client
/// announcing a large CONNECT and trickling it gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_connect_is_cut_at_one_deadline() {
    let gw = Gateway::start_with_config("[mqtt]\nconnect_timeout_ms = 1000\n", &[]);
    let mut s = TcpStream::connect(("127.0.0.1", gw.mqtt_port))
        .await
        .unwrap();
    // A CONNECT announcing 65,535 bytes, then one byte at a time, each well
    // inside the timeout.
    s.write_all(&[
        0x10, 0xff, 0xff, 0x03, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4,
    ])
    .await
    .unwrap();
    assert!(
        trickle_until_closed(&mut s, Duration::from_millis(200), 100).await,
        "a trickling CONNECT kept its connection"
    );
    assert!(
        gw.metric("sealgate_connect_refused_total{reason=\"connect_timeout\"}")
            .await
            >= 1.0
    );
}

/// Finding 2: a remaining length with a fifth continuation byte closes a
/// logged-in connection (counted) instead of buffering what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_length_after_login_closes_the_connection() {
    let gw = Gateway::start(&[]);
    let mut s = raw_subscriber(gw.mqtt_port, 30).await;
    let (mut rd, mut wr) = s.split();
    let flood = async {
        // Five length bytes, then 50 MB that can never complete a packet.
        if wr.write_all(&[0x30, 0x80, 0x80, 0x80, 0x80]).await.is_err() {
            return;
        }
        let chunk = vec![0x80u8; 64 * 1024];
        for _ in 0..800 {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let mut b = [0u8; 64];
    let closed = async {
        loop {
            match rd.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let both = async { tokio::join!(flood, closed) };
    assert!(
        tokio::time::timeout(WAIT, both).await.is_ok(),
        "the connection stayed open while the client streamed a malformed header"
    );
    assert!(
        gw.metric("sealgate_rejects_total{reason=\"malformed\"}")
            .await
            >= 1.0
    );
}

/// Finding 2, keep-alive: bytes of a packet that never completes are not
/// keep-alive traffic. A client trickling one large PUBLISH is closed at
/// 1.5 x its keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_bytes_are_not_keep_alive_traffic() {
    let gw = Gateway::start(&[]);
    let mut s = raw_subscriber(gw.mqtt_port, 1).await;
    // A PUBLISH announcing 60,000 bytes (under max_packet_bytes).
    let mut header = vec![0x30];
    remaining_length(60_000, &mut header);
    s.write_all(&header).await.unwrap();
    assert!(
        trickle_until_closed(&mut s, Duration::from_millis(200), 100).await,
        "a trickled packet kept a silent connection alive"
    );
}

/// Finding 7: WebSocket messages are capped near `max_packet_bytes` before
/// login too. One 200 KB message holding a CONNECT and pings is refused by
/// the WebSocket layer, so the CONNECT is never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_websocket_message_is_refused() {
    let gw = Gateway::start_with_config(
        "[mqtt]\nws_listen = \"127.0.0.1:0\"\nmax_packet_bytes = 4096\n",
        &[],
    );
    let ws_port = gw.ws_port.expect("ws listener");
    let connect_ws = || async move {
        use async_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://127.0.0.1:{ws_port}/mqtt")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", "mqtt".parse().unwrap());
        async_tungstenite::tokio::connect_async(req)
            .await
            .unwrap()
            .0
    };
    let connect = connect_packet(b"ws-dash", SUB_USER.as_bytes(), SUB_PASS.as_bytes(), 30);
    use async_tungstenite::tungstenite::Message;

    // Within the cap, the same CONNECT is answered.
    let mut ok = connect_ws().await;
    ok.send(Message::binary(connect.clone())).await.unwrap();
    match tokio::time::timeout(WAIT, ok.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(&b[..], &[0x20, 2, 0, 0]),
        other => panic!("expected a CONNACK, got {other:?}"),
    }

    let mut big = connect;
    for _ in 0..100_000 {
        big.extend_from_slice(&[0xc0, 0x00]);
    }
    let mut ws = connect_ws().await;
    let _ = ws.send(Message::binary(big)).await;
    let answer = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the server closes the connection");
    assert!(
        !matches!(answer, Some(Ok(Message::Binary(_)))),
        "an oversized WebSocket message was read: {answer:?}"
    );
}

fn account_config() -> &'static str {
    "[[users]]\nname = \"alpha\"\npassword = \"alpha-pw\"\n\
     [[users]]\nname = \"beta\"\npassword = \"beta-pw\"\nsubscribe = [\"clean/esp32-a1/#\"]\n"
}

async fn account(
    port: u16,
    client_id: &str,
    user: &str,
    pass: &str,
    clean: bool,
) -> (AsyncClient, rumqttc::EventLoop, bool) {
    let mut o = options(port, client_id, user, pass);
    o.set_clean_session(clean);
    let (c, mut el) = AsyncClient::new(o, 100);
    loop {
        match tokio::time::timeout(WAIT, el.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::ConnAck(a))) => {
                assert_eq!(a.code, rumqttc::ConnectReturnCode::Success);
                return (c, el, a.session_present);
            }
            Ok(_) => {}
            Err(e) => panic!("{user} connect: {e}"),
        }
    }
}

/// Finding 3: two accounts using one client id neither kick each other nor
/// share a session: the second gets no session present, inherits none of
/// the first's subscriptions, and the first stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_do_not_share_client_ids() {
    let gw = Gateway::start_with_config(account_config(), &[("SEALGATE_USERS", "")]);
    let other = gw.add_device("esp32-b2").await;

    // alpha leaves a persistent session on clean/# behind.
    let (a, mut ael, _) = account(gw.mqtt_port, "shared", "alpha", "alpha-pw", false).await;
    a.subscribe("clean/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = ael.poll().await {
            break;
        }
    }
    a.disconnect().await.unwrap();
    while ael.poll().await.is_ok() {}

    // beta, allowed only clean/esp32-a1/#, resumes "shared".
    let (b, mut bel, present) = account(gw.mqtt_port, "shared", "beta", "beta-pw", false).await;
    assert!(!present, "beta was handed alpha's session");

    // alpha comes back while beta is connected: neither is kicked.
    let (_a2, mut ael2, present) =
        account(gw.mqtt_port, "shared", "alpha", "alpha-pw", false).await;
    assert!(present, "alpha's own session survives beta");

    // Another device's clean message reaches alpha's inherited filter, and
    // never beta.
    let mut dev = Client::device(gw.mqtt_port, &other).await;
    dev.publish_acked("sealed/esp32-b2/t", seal(&other, "t", 1, b"secret-b2"))
        .await;
    loop {
        match tokio::time::timeout(WAIT, ael2.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                assert_eq!(p.topic, "clean/esp32-b2/t");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("alpha was disconnected: {e}"),
        }
    }
    // beta's first message is esp32-a1's, published after esp32-b2's: had
    // it inherited clean/#, esp32-b2's would have come first. Its
    // connection survived alpha's return.
    let a1 = gw.add_device("esp32-a1").await;
    b.subscribe("clean/esp32-a1/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, bel.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::SubAck(_))) => break,
            Ok(Event::Incoming(Packet::Publish(p))) => panic!("beta received {}", p.topic),
            Ok(_) => {}
            Err(e) => panic!("beta was disconnected: {e}"),
        }
    }
    let mut dev = Client::device(gw.mqtt_port, &a1).await;
    dev.publish_acked("sealed/esp32-a1/t", seal(&a1, "t", 1, b"for-beta"))
        .await;
    loop {
        match tokio::time::timeout(WAIT, bel.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                assert_eq!(
                    p.topic, "clean/esp32-a1/t",
                    "beta got another device's data"
                );
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("beta was disconnected: {e}"),
        }
    }
}

/// Finding 11: client id and username are the client's bytes; a newline in
/// either cannot forge a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_cannot_forge_log_lines() {
    let gw = Gateway::start(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", gw.mqtt_port))
        .await
        .unwrap();
    s.write_all(&connect_packet(
        b"evil\nFORGED client line",
        b"nobody\nFORGED user line",
        b"pw",
        30,
    ))
    .await
    .unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack[3], 5, "not authorized");
    assert!(closed_by_server(&mut s).await);
    let (_, log) = gw.terminate_with_log();
    assert!(
        log.iter().any(|l| l.contains("Refused CONNECT")),
        "the refusal is logged"
    );
    assert!(
        !log.iter().any(|l| l.starts_with("FORGED")),
        "a forged line: {log:#?}"
    );
}

/// Review finding: rumqttd 0.20's router panics when a persistent session
/// leaves a shared group with messages in flight. Shared subscriptions are
/// for clean sessions only; the gateway keeps delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_shared_subscription_cannot_kill_the_router() {
    let gw = Gateway::start(&[]);
    let dev = gw.add_device("esp32-s").await;
    let mut o = options(gw.mqtt_port, "solo", SUB_USER, SUB_PASS);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    let (c, mut el) = AsyncClient::new(o, 100);
    c.subscribe("$share/solo/clean/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let code = loop {
        match tokio::time::timeout(WAIT, el.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::SubAck(a))) => break a.return_codes[0],
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(code, rumqttc::SubscribeReasonCode::Failure);
    let mut d = Client::device(gw.mqtt_port, &dev).await;
    d.publish_acked("sealed/esp32-s/t", seal(&dev, "t", 1, b"one"))
        .await;
    // Leave without acknowledging anything.
    drop(c);
    drop(el);
    // The router is alive: a new subscriber gets the next message.
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    d.publish_acked("sealed/esp32-s/t", seal(&dev, "t", 2, b"two"))
        .await;
    assert_eq!(
        sub.next_publish().await,
        ("clean/esp32-s/t".into(), b"two".to_vec())
    );
}

/// Review finding: rumqttd keys shared groups by name alone. Two accounts
/// using one group name must each get every message, not split them; a
/// filter repeated in one SUBSCRIBE joins the group once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_never_share_a_shared_group() {
    let gw = Gateway::start_with_config(account_config(), &[("SEALGATE_USERS", "")]);
    let dev = gw.add_device("esp32-a1").await;
    let (mut a, r) = Client::connect(gw.mqtt_port, "a-1", "alpha", "alpha-pw").await;
    r.unwrap();
    let codes = a.subscribe(&["$share/g/clean/#", "$share/g/clean/#"]).await;
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
        "{codes:?}"
    );
    let (mut b, r) = Client::connect(gw.mqtt_port, "b-1", "beta", "beta-pw").await;
    r.unwrap();
    let codes = b.subscribe(&["$share/g/clean/esp32-a1/#"]).await;
    assert!(matches!(codes[0], rumqttc::SubscribeReasonCode::Success(_)));
    let mut d = Client::device(gw.mqtt_port, &dev).await;
    for n in 1..=6u64 {
        d.publish_acked(
            "sealed/esp32-a1/t",
            seal(&dev, "t", n, format!("m{n}").as_bytes()),
        )
        .await;
    }
    for n in 1..=6u64 {
        let want = ("clean/esp32-a1/t".to_string(), format!("m{n}").into_bytes());
        assert_eq!(a.next_publish().await, want, "alpha");
        assert_eq!(b.next_publish().await, want, "beta");
    }
}

/// Review finding: packets only a server sends (here CONNACK and, in MQTT 5,
/// UNSUBACK, on which rumqttd's decoder panics) close the connection, and
/// the session's clean-up still runs: the connection gauge comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_packets_close_the_connection_cleanly() {
    let gw = Gateway::start(&[]);
    let mut s = raw_subscriber(gw.mqtt_port, 30).await;
    s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    assert!(closed_by_server(&mut s).await);

    // MQTT 5 CONNECT (no properties), then an UNSUBACK.
    let mut s = raw_v5_connect(gw.mqtt_port, "raw-v5", 0b1100_0010, &[]).await;
    s.write_all(&[0xb0, 0x02, 0x00, 0x01]).await.unwrap();
    assert!(closed_by_server(&mut s).await);
    wait_metric(&gw, "sealgate_connections", |v| v == 0.0).await;
    // And the router is fine.
    let dev = gw.add_device("esp32-c").await;
    // clean/ only: the `malformed` events of the two connections above may
    // still be on their way to the events topic.
    let mut sub = Client::subscriber_to(gw.mqtt_port, &["clean/#"]).await;
    let mut d = Client::device(gw.mqtt_port, &dev).await;
    d.publish_acked("sealed/esp32-c/t", seal(&dev, "t", 1, b"ok"))
        .await;
    assert_eq!(sub.next_publish().await.1, b"ok");
}

/// Review finding: an MQTT 5 client's publish properties never reach the
/// router, where they are stored uncounted and crash 3.1.1 subscribers'
/// encoder. A 3.1.1 device subscribed to its downlink gets the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_publish_properties_stop_at_the_front_door() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let gw = Gateway::start_with_config(
        "[[users]]\nname = \"ops\"\npassword = \"ops-pw\"\npublish = [\"cmd/#\"]\n",
        &[("SEALGATE_USERS", "")],
    );
    let dev = gw.add_device("esp32-p").await;
    let mut d = Client::device(gw.mqtt_port, &dev).await;
    let codes = d.subscribe(&["cmd/esp32-p/#"]).await;
    assert!(matches!(codes[0], rumqttc::SubscribeReasonCode::Success(_)));

    let mut o = rumqttc::v5::MqttOptions::new("ops-5", "127.0.0.1", gw.mqtt_port);
    o.set_credentials("ops", "ops-pw");
    let (ops, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let props = PublishProperties {
        user_properties: vec![("k".into(), "v".repeat(1000)); 20],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    ops.publish_with_properties(
        "cmd/esp32-p/reboot",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "now",
        props,
    )
    .await
    .unwrap();
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    assert_eq!(
        d.next_publish().await,
        ("cmd/esp32-p/reboot".into(), b"now".to_vec())
    );
}

/// Review finding: a 3.1.1 client refused because the router is full gets
/// 3.1.1's "server unavailable" (rumqttd's encoder panicked on MQTT 5's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_router_refuses_a_3_1_1_client_with_its_own_code() {
    // The verifier's link and one account session fill the router.
    let gw = Gateway::start_with_config("[router]\nmax_connections = 2\n", &[]);
    let (_first, r) = Client::connect(gw.mqtt_port, "dash-1", SUB_USER, SUB_PASS).await;
    r.unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", gw.mqtt_port))
        .await
        .unwrap();
    s.write_all(&connect_packet(
        b"dash-2",
        SUB_USER.as_bytes(),
        SUB_PASS.as_bytes(),
        30,
    ))
    .await
    .unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 3], "server unavailable");
}

/// A persistent "keeper" session of the dashboard account subscribes to
/// `filters`, then disconnects; returns the SUBACK codes.
async fn keeper_subscribes(port: u16, filters: &[&str]) -> Vec<rumqttc::SubscribeReasonCode> {
    let mut o = options(port, "keeper", SUB_USER, SUB_PASS);
    o.set_clean_session(false);
    let (mut c, r) = Client::connect_with(o).await;
    r.unwrap();
    let codes = c.subscribe(filters).await;
    c.client.disconnect().await.unwrap();
    codes
}

/// Review finding: a persistent session's filters stay in the router when
/// its connection ends, so they stay counted: reconnecting does not reset
/// the per-connection cap, and the session cannot grow past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_persistent_session_keeps_its_subscriptions_counted() {
    let gw = Gateway::start_with_config(
        "[limits]\nmax_subscriptions_per_connection = 2\nmax_subscriptions_per_account = 2\n",
        &[],
    );
    let first = keeper_subscribes(gw.mqtt_port, &["clean/a/#", "clean/b/#"]).await;
    assert!(first
        .iter()
        .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))));
    let again = keeper_subscribes(gw.mqtt_port, &["clean/c/#"]).await;
    assert_eq!(again, [rumqttc::SubscribeReasonCode::Failure]);
}

/// Review finding: one account's subscribe/unsubscribe churn cannot use up
/// the router's lifetime room for filters; another account still gets its
/// new filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_cannot_use_up_the_routers_filter_room() {
    let gw = Gateway::start_with_config(
        &format!(
            "[limits]\nmax_subscriptions_per_connection = 2\nmax_subscriptions_per_account = 2\n\
             max_router_filters_per_account = 3\n{}",
            account_config()
        ),
        &[("SEALGATE_USERS", "")],
    );
    let (mut a, r) = Client::connect(gw.mqtt_port, "a-1", "alpha", "alpha-pw").await;
    r.unwrap();
    for n in 0..3 {
        let f = format!("clean/{n}/#");
        let codes = a.subscribe(&[f.as_str()]).await;
        assert!(matches!(codes[0], rumqttc::SubscribeReasonCode::Success(_)));
        a.client.unsubscribe(f).await.unwrap();
    }
    assert_eq!(
        a.subscribe(&["clean/3/#"]).await,
        [rumqttc::SubscribeReasonCode::Failure]
    );
    let (mut b, r) = Client::connect(gw.mqtt_port, "b-1", "beta", "beta-pw").await;
    r.unwrap();
    let codes = b.subscribe(&["clean/esp32-a1/t"]).await;
    assert!(matches!(codes[0], rumqttc::SubscribeReasonCode::Success(_)));
    assert_eq!(
        gw.metric("sealgate_subscriptions_refused_total{reason=\"router_cap\"}")
            .await,
        1.0
    );
}

/// Review finding: every stream a device publishes on is a clean topic the
/// router keeps for ever (with its retained message). A device making up
/// streams is stopped at `limits.max_streams_per_device`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_make_up_streams_without_end() {
    let gw = Gateway::start_with_config("[limits]\nmax_streams_per_device = 2\n", &[]);
    let dev = gw.add_device("esp32-m").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let mut d = Client::device(gw.mqtt_port, &dev).await;
    for (n, stream) in [(1u64, "a"), (2, "b"), (3, "a")] {
        d.publish_acked(
            &format!("sealed/esp32-m/{stream}"),
            seal(&dev, stream, n, b"x"),
        )
        .await;
        assert_eq!(
            sub.next_publish().await.0,
            format!("clean/esp32-m/{stream}")
        );
    }
    d.client
        .publish(
            "sealed/esp32-m/c",
            QoS::AtLeastOnce,
            false,
            seal(&dev, "c", 4, b"x"),
        )
        .await
        .unwrap();
    let (topic, payload) = sub.next_publish().await;
    assert_eq!(topic, "sealgate/events/esp32-m");
    assert_eq!(event(&payload)["reason"], "too_many_streams");
    loop {
        match d.next().await {
            Seen::Closed(_) => break,
            Seen::PubAck(_) => panic!("a refused stream was acknowledged"),
            _ => {}
        }
    }
    // The streams it has stay open to it.
    let mut d = Client::device(gw.mqtt_port, &dev).await;
    d.publish_acked("sealed/esp32-m/b", seal(&dev, "b", 5, b"y"))
        .await;
    assert_eq!(sub.next_publish().await.0, "clean/esp32-m/b");
}

/// Fuzzing finding: an MQTT 5 CONNECT whose property length is cut short is
/// a whole frame the codec cannot decode. It is refused as malformed; what
/// follows it (here a CONNACK, on which rumqttd's decoder panics) is never
/// read as its rest, and the connection is counted out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_connect_is_malformed_not_continued() {
    let gw = Gateway::start(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", gw.mqtt_port))
        .await
        .unwrap();
    let mut bytes = vec![
        0x10, 0x0b, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 0x3c, 0x80,
    ];
    bytes.extend_from_slice(&[0x20, 0x01, 0x00]);
    s.write_all(&bytes).await.unwrap();
    assert!(closed_by_server(&mut s).await);
    wait_metric(
        &gw,
        "sealgate_connect_refused_total{reason=\"malformed_connect\"}",
        |v| v == 1.0,
    )
    .await;
    wait_metric(&gw, "sealgate_connections", |v| v == 0.0).await;
}
