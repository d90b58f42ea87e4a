//! MQTT 5 Will Delay Interval (section 3.1.3.2.2): a vanished client's will
//! waits for its delay, is not published at all when the client is back in
//! time, and waits at most until its session expires; for accounts and for
//! devices, whose sealed wills are verified when they go out. Order is what the
//! tests watch, never the clock: a marker published once the gateway has
//! seen the connection go (its connection gauge) must arrive before the
//! will, and a will that was dropped must not arrive before one filed
//! after it with the same delay.

mod common;

use common::*;
use rumqttc::v5::mqttbytes::v5::{LastWillProperties, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use sealgate::admin::client::Credentials;

const OPS: &str = "ops";
const OPS_PASS: &str = "ops-password";

fn gateway() -> Gateway {
    let toml = format!(
        "[[users]]\nname = \"{OPS}\"\npassword = \"{OPS_PASS}\"\n\
         subscribe = [\"#\"]\npublish = [\"status/#\"]\n"
    );
    Gateway::start_with_config(&toml, &[("SEALGATE_USERS", "")])
}

/// The number of open MQTT connections, once the gateway agrees.
async fn connections(gw: &Gateway, n: usize) {
    wait_metric(gw, "sealgate_connections", |v| v == n as f64).await;
}

/// An MQTT 5 connection of the account as `id` with a session expiry and,
/// if `will` is set, a will (topic, payload, delay in seconds).
fn options(port: u16, id: &str, expiry: u32, will: Option<(&str, &[u8], u32)>) -> MqttOptions {
    with_login(port, (id, OPS, OPS_PASS), expiry, will)
}

/// The same for any login: (client id, username, password).
fn with_login(
    port: u16,
    (id, user, pass): (&str, &str, &str),
    expiry: u32,
    will: Option<(&str, &[u8], u32)>,
) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials(user, pass);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(expiry));
    if let Some((topic, payload, delay)) = will {
        let props = LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        };
        o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            topic,
            payload.to_vec(),
            QoS::AtLeastOnce,
            false,
            Some(props),
        ));
    }
    o
}

/// Connects, and returns the client with its event loop's task once the
/// CONNACK is in.
async fn connect(o: MqttOptions) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let (client, mut el) = AsyncClient::new(o, 10);
    let (connected, is_connected) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut connected = Some(connected);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(WAIT, is_connected)
        .await
        .expect("CONNACK")
        .expect("connected");
    (client, task)
}

/// Connects with a will and vanishes without DISCONNECT: the event loop,
/// and with it the socket, goes away.
async fn vanish(o: MqttOptions) {
    let (_client, task) = connect(o).await;
    task.abort();
    let _ = task.await;
}

/// A device connects with a sealed will on `sealed/{id}/status` (nonce
/// `nonce`, delay 1 s, session 60 s) and vanishes.
async fn vanish_sealed(port: u16, device: &Credentials, nonce: u64, text: &[u8]) {
    let will = common::seal(device, "status", nonce, text);
    let topic = format!("sealed/{}/status", device.device_id);
    vanish(with_login(
        port,
        login(device),
        60,
        Some((&topic, &will, 1)),
    ))
    .await;
}

/// The watcher on `status/#` and a connection that publishes markers.
async fn watcher_and_marker(gw: &Gateway) -> (Client, Client) {
    let watcher = Client::account_to(gw.mqtt_port, "watch", OPS, OPS_PASS, &["status/#"]).await;
    let (marker, r) = Client::connect(gw.mqtt_port, "marker", OPS, OPS_PASS).await;
    r.unwrap();
    (watcher, marker)
}

/// A device's login: (client id, username, password).
fn login(c: &Credentials) -> (&str, &str, &str) {
    (&c.device_id, &c.device_id, &c.mqtt_password)
}

fn received(topic: &str, payload: &str) -> (String, Vec<u8>) {
    (topic.to_owned(), payload.as_bytes().to_vec())
}

/// A client of session expiry `expiry` vanishes with a will on `topic`
/// delayed `delay` seconds: a marker published once the gateway has ended
/// the session arrives first, then the will.
async fn marker_then_will(id: &str, expiry: u32, topic: &str, delay: u32) {
    let gw = gateway();
    let (mut watcher, mut marker) = watcher_and_marker(&gw).await;
    vanish(options(
        gw.mqtt_port,
        id,
        expiry,
        Some((topic, b"gone", delay)),
    ))
    .await;
    // The gateway has ended the session: a will published at once would
    // already be on its way.
    connections(&gw, 2).await;
    marker.publish_acked(topic, b"marker".to_vec()).await;
    assert_eq!(watcher.next_publish().await, received(topic, "marker"));
    assert_eq!(watcher.next_publish().await, received(topic, "gone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_waits_for_its_delay() {
    marker_then_will("w", 60, "status/w", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_in_time_has_no_will_published() {
    let gw = gateway();
    let (mut watcher, mut marker) = watcher_and_marker(&gw).await;
    let port = gw.mqtt_port;
    vanish(options(port, "w", 60, Some(("status/w", b"w gone", 1)))).await;
    connections(&gw, 2).await;
    // Back, with the same client id, before the delay is up.
    let (_back, _task) = connect(options(port, "w", 60, None)).await;
    connections(&gw, 3).await;
    // Another client's will with the same delay, filed after w's: had w's
    // been kept, it would come first.
    vanish(options(port, "x", 60, Some(("status/x", b"x gone", 1)))).await;
    connections(&gw, 3).await;
    assert_eq!(watcher.next_publish().await, received("status/x", "x gone"));
    marker.publish_acked("status/w", b"end".to_vec()).await;
    assert_eq!(watcher.next_publish().await, received("status/w", "end"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_waits_at_most_until_its_session_expires() {
    // A delay of an hour, a session of one second: the will comes with the
    // session's end (the await in the helper would time out long before the
    // hour).
    marker_then_will("s", 1, "status/s", 3600).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_sealed_will_waits_and_is_verified_or_dropped() {
    let gw = gateway();
    let a = gw.add_device("dev-a").await;
    let b = gw.add_device("dev-b").await;
    // One filter, so everything arrives in the order it was published.
    let mut watcher = Client::account_to(gw.mqtt_port, "watch", OPS, OPS_PASS, &["#"]).await;
    let (mut marker, r) = Client::connect(gw.mqtt_port, "marker", OPS, OPS_PASS).await;
    r.unwrap();
    let port = gw.mqtt_port;
    // dev-a's will waits for its delay, then is verified onto clean/.
    vanish_sealed(port, &a, 1, b"a gone").await;
    connections(&gw, 2).await;
    marker.publish_acked("status/m", b"1".to_vec()).await;
    assert_eq!(watcher.next_publish().await, received("status/m", "1"));
    assert_eq!(
        watcher.next_publish().await,
        received("clean/dev-a/status", "a gone")
    );
    // dev-b is back in time: its will is dropped; dev-a's next one, filed
    // after it with the same delay, comes alone.
    vanish_sealed(port, &b, 1, b"b gone").await;
    connections(&gw, 2).await;
    let (_back, _task) = connect(with_login(port, login(&b), 60, None)).await;
    connections(&gw, 3).await;
    vanish_sealed(port, &a, 2, b"a gone again").await;
    connections(&gw, 3).await;
    assert_eq!(
        watcher.next_publish().await,
        received("clean/dev-a/status", "a gone again")
    );
    marker.publish_acked("status/m", b"2".to_vec()).await;
    assert_eq!(watcher.next_publish().await, received("status/m", "2"));
}
