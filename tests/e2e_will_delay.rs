//! MQTT 5 Will Delay Interval (section 3.1.3.2.2): a vanished client's will
//! waits for its delay, is not published at all when the client is back in
//! time, and waits at most until its session expires; for accounts and for
//! devices, whose sealed wills are verified when they go out. Order is what the
//! tests watch, never the clock: a marker published once the gateway has
//! seen the connection go (its connection gauge) must arrive before the
//! will, and a will that was dropped must not arrive before one filed
//! after it with the same delay. A waiting will survives a restart,
//! graceful or `kill -9`: a persistent watcher session collects what is
//! published while the gateway is down or starting.

mod common;

use common::*;
use rumqttc::v5::mqttbytes::v5::{LastWillProperties, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use sealgate::admin::client::Credentials;
use tokio::sync::mpsc;

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
    let (client, task, _) = connect_watching(o).await;
    (client, task)
}

/// `connect`, and every packet that arrives after the CONNACK.
async fn connect_watching(
    o: MqttOptions,
) -> (
    AsyncClient,
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<Packet>,
) {
    let (client, mut el) = AsyncClient::new(o, 10);
    let (connected, is_connected) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut connected = Some(connected);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(p)) => {
                    let _ = tx.send(p);
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
    (client, task, rx)
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

/// The same gateway, restarted on its data: gracefully (SIGTERM, the whole
/// shutdown path) or killed (`kill -9`, none of it).
fn restart(gw: Gateway, kill: bool) -> Gateway {
    let cfg = gw.config_file();
    let cfg = cfg.to_str().expect("utf-8 path").to_owned();
    let env = [("SEALGATE_CONFIG", cfg.as_str()), ("SEALGATE_USERS", "")];
    if kill {
        gw.kill9_and_restart_with(&env)
    } else {
        gw.terminate_and_restart_with(&env)
    }
}

/// A persistent MQTT 5 session watching `filters` at QoS 2: what is
/// published while the gateway restarts waits in its session for it.
struct Watcher {
    rx: mpsc::UnboundedReceiver<Packet>,
    client: AsyncClient,
    _task: tokio::task::JoinHandle<()>,
}

/// Dropped, its socket goes: the session is offline, and kept.
impl Drop for Watcher {
    fn drop(&mut self) {
        self._task.abort();
    }
}

impl Watcher {
    /// Opens the session and subscribes.
    async fn start(port: u16, filters: &[&str]) -> Watcher {
        let mut w = Watcher::resume(port).await;
        let subs = filters
            .iter()
            .map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(*f, QoS::ExactlyOnce));
        w.client.subscribe_many(subs).await.expect("subscribe");
        let p = w.next_packet().await;
        assert!(matches!(p, Packet::SubAck(_)), "expected SUBACK, got {p:?}");
        w
    }

    /// Connects to the session kept for it (after a restart).
    async fn resume(port: u16) -> Watcher {
        let (client, task, rx) = connect_watching(options(port, "watch", 600, None)).await;
        Watcher {
            rx,
            client,
            _task: task,
        }
    }

    async fn next_packet(&mut self) -> Packet {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for MQTT traffic")
            .expect("connection open")
    }

    async fn next_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        loop {
            if let Packet::Publish(p) = self.next_packet().await {
                return p;
            }
        }
    }
}

/// The restarted gateway said it restored `n` waiting wills (before it was
/// ready), and logged nothing of them but their number.
fn restored(gw: &Gateway, n: usize) {
    let lines = gw.log_lines();
    let line = lines
        .iter()
        .find(|l| l.contains("Wills waiting for their delay restored"))
        .expect("restored wills logged");
    assert!(line.contains(&format!("wills={n}")), "{line}");
    assert!(
        !line.contains("gone") && !line.contains("status/"),
        "{line}"
    );
}

/// The watcher gets nothing more (no will twice, no cancelled will): a
/// marker published now is the next thing it sees.
async fn nothing_more(gw: &Gateway, watcher: &mut Watcher) {
    let (mut marker, r) = Client::connect(gw.mqtt_port, "marker", OPS, OPS_PASS).await;
    r.unwrap();
    marker.publish_acked("status/m", b"end".to_vec()).await;
    assert_eq!(
        seen(&watcher.next_publish().await),
        received("status/m", "end")
    );
}

/// (topic, payload) of a publish.
fn seen(p: &rumqttc::v5::mqttbytes::v5::Publish) -> (String, Vec<u8>) {
    (
        String::from_utf8_lossy(&p.topic).into_owned(),
        p.payload.to_vec(),
    )
}

/// Will properties worth carrying: content type, correlation data and a
/// user property (and the delay).
fn will_props(delay: u32) -> LastWillProperties {
    LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: Some("status/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        user_properties: vec![("site".into(), "north".into())],
    }
}

/// Whether `p` carries what `will_props` set.
fn carries_will_props(p: &rumqttc::v5::mqttbytes::v5::Publish) -> bool {
    p.properties.as_ref().is_some_and(|pp| {
        pp.payload_format_indicator == Some(1)
            && pp.content_type.as_deref() == Some("text/plain")
            && pp.response_topic.as_deref() == Some("status/reply")
            && pp.correlation_data.as_deref() == Some(&b"corr"[..])
            && pp.user_properties == vec![("site".to_owned(), "north".to_owned())]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_will_survives_a_graceful_restart() {
    let gw = gateway();
    let watcher = Watcher::start(gw.mqtt_port, &["status/#"]).await;
    drop(watcher);
    // A retained QoS 1 will with properties, waiting when the gateway is
    // stopped (the watcher's session is offline by then); the delay leaves
    // the shutdown time to finish first.
    let mut o = options(gw.mqtt_port, "g", 60, None);
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "status/g",
        b"g gone".to_vec(),
        QoS::AtLeastOnce,
        true,
        Some(will_props(2)),
    ));
    vanish(o).await;
    connections(&gw, 0).await;
    let gw = restart(gw, false);
    restored(&gw, 1);
    let mut watcher = Watcher::resume(gw.mqtt_port).await;
    let got = watcher.next_publish().await;
    assert_eq!(seen(&got), received("status/g", "g gone"));
    assert_eq!(
        got.qos,
        QoS::AtLeastOnce,
        "the will's QoS, under the subscription's 2"
    );
    assert!(carries_will_props(&got), "{:?}", got.properties);
    // Retained as the will asked: a new subscriber gets it; and it came
    // once.
    let mut late = Client::account_to(gw.mqtt_port, "late", OPS, OPS_PASS, &["status/g"]).await;
    assert_eq!(late.next_publish().await, received("status/g", "g gone"));
    nothing_more(&gw, &mut watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_will_survives_kill_9_and_a_sealed_one_is_verified() {
    let gw = gateway();
    let device = gw.add_device("dev-k").await;
    drop(Watcher::start(gw.mqtt_port, &["status/#", "clean/#"]).await);
    let mut o = options(gw.mqtt_port, "k", 60, None);
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "status/k",
        b"k gone".to_vec(),
        QoS::AtLeastOnce,
        false,
        Some(will_props(1)),
    ));
    vanish(o).await;
    // A device's sealed will, with properties that must not reach clean/.
    let sealed = common::seal(&device, "status", 1, b"dev-k gone");
    let mut o = with_login(gw.mqtt_port, login(&device), 60, None);
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        format!("sealed/{}/status", device.device_id),
        sealed,
        QoS::AtLeastOnce,
        false,
        Some(will_props(1)),
    ));
    vanish(o).await;
    connections(&gw, 0).await;
    let gw = restart(gw, true);
    restored(&gw, 2);
    let mut watcher = Watcher::resume(gw.mqtt_port).await;
    let mut got = [watcher.next_publish().await, watcher.next_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(seen(&got[0]), received("clean/dev-k/status", "dev-k gone"));
    assert!(
        got[0].properties.as_ref().is_none_or(|p| p
            .user_properties
            .iter()
            .all(|(k, _)| k.starts_with("sg-"))
            && p.content_type.is_none()),
        "{:?}",
        got[0].properties
    );
    assert_eq!(seen(&got[1]), received("status/k", "k gone"));
    assert!(carries_will_props(&got[1]), "{:?}", got[1].properties);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_cancelled_before_a_restart_stays_cancelled() {
    let gw = gateway();
    drop(Watcher::start(gw.mqtt_port, &["status/#"]).await);
    let port = gw.mqtt_port;
    vanish(options(port, "w", 60, Some(("status/w", b"w gone", 1)))).await;
    connections(&gw, 0).await;
    // Back in time (and connected, without a will, until the kill).
    let (_back, _task) = connect(options(port, "w", 60, None)).await;
    connections(&gw, 1).await;
    // Filed after w's was cancelled, with the same delay: had w's been
    // kept, it would come first.
    vanish(options(port, "x", 60, Some(("status/x", b"x gone", 1)))).await;
    connections(&gw, 1).await;
    let gw = restart(gw, true);
    let mut watcher = Watcher::resume(gw.mqtt_port).await;
    assert_eq!(
        seen(&watcher.next_publish().await),
        received("status/x", "x gone")
    );
    nothing_more(&gw, &mut watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_after_a_restart_cancels_its_will() {
    let gw = gateway();
    drop(Watcher::start(gw.mqtt_port, &["status/#"]).await);
    let port = gw.mqtt_port;
    // Long enough for the restart to finish within it.
    const DELAY: u32 = 2;
    vanish(options(port, "w", 60, Some(("status/w", b"w gone", DELAY)))).await;
    connections(&gw, 0).await;
    vanish(options(port, "y", 60, Some(("status/y", b"y gone", DELAY)))).await;
    connections(&gw, 0).await;
    let gw = restart(gw, true);
    // w is back before its deadline; y is not. Had w's will been kept, it
    // would come before y's, filed after it with the same delay.
    let (_back, _task) = connect(options(gw.mqtt_port, "w", 60, None)).await;
    let mut watcher = Watcher::resume(gw.mqtt_port).await;
    assert_eq!(
        seen(&watcher.next_publish().await),
        received("status/y", "y gone")
    );
    nothing_more(&gw, &mut watcher).await;
}

/// Waits until the gateway has logged a line containing `text`, and
/// returns it.
async fn logged(gw: &Gateway, text: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(l) = gw.log_lines().into_iter().find(|l| l.contains(text)) {
            return l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never logged: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The store really fails (a file-size limit, sled's writes hit EFBIG): a
/// will that starts waiting then is said not to be kept, when it is due it
/// is said to be lost (nothing is published while the store fails), and
/// neither line names its topic or payload; the gateway goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_the_store_cannot_keep_is_logged_without_its_content() {
    let gw = Gateway::start_with_file_size_limit(64 * 1024);
    let creds = gw.add_device("dev-f").await;
    let mut sub = Client::subscriber(gw.mqtt_port).await;
    let dev = Client::device(gw.mqtt_port, &creds).await;
    // Each message yields one publish: its clean message, or the event of
    // the store's failure.
    let mut failed_at = None;
    for nonce in 1..=20_000u64 {
        let m = common::seal(&creds, "t", nonce, &[b'x'; 100]);
        dev.client
            .publish("sealed/dev-f/t", rumqttc::QoS::AtMostOnce, false, m)
            .await
            .expect("publish");
        if sub.next_publish().await.0 != "clean/dev-f/t" {
            failed_at = Some(nonce);
            break;
        }
    }
    let nonce = failed_at.expect("the store never failed") + 1;
    let will = common::seal(&creds, "status", nonce, b"dev-f gone");
    let topic = "sealed/dev-f/status";
    vanish(with_login(
        gw.mqtt_port,
        login(&creds),
        60,
        Some((topic, &will, 1)),
    ))
    .await;
    let filed = logged(&gw, "A waiting will could not be stored").await;
    let due = logged(&gw, "nor keep it. It is lost.").await;
    for line in [filed, due] {
        assert!(!line.contains("dev-f") && !line.contains("gone"), "{line}");
        assert!(!line.contains(&String::from_utf8_lossy(&will[..16]).into_owned()));
    }
    assert_eq!(
        gw.http_get("/readyz").await,
        (503, "store_unavailable\n".to_owned())
    );
}
