//! A subscriber that stops reading while devices keep publishing, under each
//! loss policy (`limits.slow_subscriber`):
//! - `block`: devices are held, then released when it reads again, and it
//!   gets every acknowledged message exactly once;
//! - `drop`: devices are never held; what it misses is counted exactly in
//!   `sealgate_dropped_total{reason="subscriber_lagged"}`;
//! - a `block` subscriber that never reads again is cut off at the write
//!   timeout, so it cannot hold the fleet for ever;
//! - nor can one that reads, but too slowly, acknowledging just often enough
//!   never to be stuck: it holds the fleet for `limits.max_hold_secs` at
//!   most, then is treated as `drop`, and what it misses is counted.
//!
//! The router's log is made small (6 segments of 32 KiB, about 1,700
//! messages) so that a few thousand messages overflow it.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, NetworkOptions, Packet, QoS};
use sealgate::admin::client::Credentials;
use tokio::sync::{mpsc, watch};

const DEVICES: usize = 4;
const PER_DEVICE: u64 = 1500;

fn config(policy: &str, write_timeout_secs: u64) -> String {
    config_with_hold(policy, write_timeout_secs, 60)
}

fn config_with_hold(policy: &str, write_timeout_secs: u64, max_hold_secs: u64) -> String {
    format!(
        "[router]\nmax_segment_size = 32768\nmax_segment_count = 6\n\
         [limits]\ndevice_rate = 0.0\nslow_subscriber = \"{policy}\"\nsubscriber_max_lag = 200\n\
         write_timeout_secs = {write_timeout_secs}\nmax_hold_secs = {max_hold_secs}\n\
         [verifier]\nmax_batch = 32\nqueue = 64\n"
    )
}

/// A dashboard whose reading can be paused: while paused its event loop is
/// not polled, so the gateway's writes to it back up (a small receive
/// buffer makes that quick).
struct Dashboard {
    client: AsyncClient,
    reading: watch::Sender<bool>,
    rx: mpsc::UnboundedReceiver<Option<(String, Vec<u8>)>>,
}

impl Dashboard {
    /// A clean-session dashboard subscribed to `clean/#`.
    async fn connect(port: u16) -> Dashboard {
        Dashboard::connect_with(port, true, true).await
    }

    async fn connect_with(port: u16, clean: bool, subscribe: bool) -> Dashboard {
        let mut opts = options(port, "slow-dash", SUB_USER, SUB_PASS);
        opts.set_clean_session(clean);
        let (client, mut el) = AsyncClient::new(opts, 10);
        let mut net = NetworkOptions::new();
        net.set_tcp_recv_buffer_size(4096);
        el.set_network_options(net);
        let (reading, mut gate) = watch::channel(true);
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                if gate.wait_for(|r| *r).await.is_err() {
                    return;
                }
                let seen = match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => Some((p.topic, p.payload.to_vec())),
                    Ok(Event::Incoming(Packet::SubAck(_))) => Some((String::new(), Vec::new())),
                    Ok(_) => continue,
                    Err(_) => None,
                };
                let closed = seen.is_none();
                if tx.send(seen).is_err() || closed {
                    return;
                }
            }
        });
        if subscribe {
            client.subscribe("clean/#", QoS::AtLeastOnce).await.unwrap();
            let suback = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
            assert_eq!(suback, Some(Some((String::new(), Vec::new()))), "SUBACK");
        }
        Dashboard {
            client,
            reading,
            rx,
        }
    }

    /// The next message, or `None` once the gateway closed the connection.
    async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for the dashboard")
            .flatten()
    }
}

/// Each device publishes `PER_DEVICE` sealed QoS 1 messages as fast as its
/// in-flight window allows; the task returns the PUBACKs it got.
async fn publish_all(gw: &Gateway) -> (Vec<Credentials>, Vec<tokio::task::JoinHandle<u64>>) {
    let mut creds = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..DEVICES {
        let c = gw.add_device(&format!("d{i}")).await;
        let mut dev = Client::device(gw.mqtt_port, &c).await;
        let c2 = c.clone();
        tasks.push(tokio::spawn(async move {
            let client = dev.client.clone();
            let sender = tokio::spawn(async move {
                for nonce in 1..=PER_DEVICE {
                    let m = seal(&c2, "t", nonce, &plaintext(nonce));
                    let topic = format!("sealed/{}/t", c2.device_id);
                    client
                        .publish(topic, QoS::AtLeastOnce, false, m)
                        .await
                        .unwrap();
                }
            });
            let mut acked = 0;
            while acked < PER_DEVICE {
                match dev.next().await {
                    Seen::PubAck(_) => acked += 1,
                    Seen::Closed(e) => panic!("device cut off: {e}"),
                    _ => {}
                }
            }
            sender.await.unwrap();
            acked
        }));
        creds.push(c);
    }
    (creds, tasks)
}

/// `publish_all`, then waits for every PUBACK.
async fn publish_all_acked(gw: &Gateway) -> Vec<Credentials> {
    let (creds, tasks) = publish_all(gw).await;
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    assert_eq!(acked, DEVICES as u64 * PER_DEVICE);
    creds
}

/// Publishes one more message, acknowledged after all the others and so the
/// last in the log. Once `dash` has it, everything was either delivered to
/// it or skipped: checks that delivered + counted as lagged is every message.
async fn all_delivered_or_counted(gw: &Gateway, creds: &Credentials, dash: &mut Dashboard) {
    all_delivered_or_counted_as(gw, creds, dash, LAGGED, true).await
}

/// `all_delivered_or_counted` for the drop counter `counter`, which must
/// be above zero if `overflow`, and zero otherwise.
async fn all_delivered_or_counted_as(
    gw: &Gateway,
    creds: &Credentials,
    dash: &mut Dashboard,
    counter: &str,
    overflow: bool,
) {
    let mut marker = Client::device(gw.mqtt_port, creds).await;
    let last = PER_DEVICE + 1;
    let topic = format!("sealed/{}/t", creds.device_id);
    marker
        .publish_acked(&topic, seal(creds, "t", last, &plaintext(last)))
        .await;
    dash.reading.send(true).unwrap();
    let mut seen = HashSet::new();
    loop {
        let (t, p) = dash.next().await.expect("dashboard stays connected");
        let (dev, nonce) = identify(&t, &p);
        assert!(seen.insert((dev.clone(), nonce)), "duplicate {t}");
        if dev == creds.device_id && nonce == last {
            break;
        }
    }
    let delivered = seen.len() as u64;
    let dropped = gw.metric(counter).await as u64;
    assert_eq!(dropped > 0, overflow, "{counter}: {dropped}");
    assert_eq!(
        delivered + dropped,
        DEVICES as u64 * PER_DEVICE + 1,
        "delivered {delivered} + counted {dropped} must be every acknowledged message"
    );
}

fn plaintext(nonce: u64) -> Vec<u8> {
    format!("{nonce:0100}").into_bytes()
}

/// (device, nonce) of a delivered message.
fn identify(topic: &str, payload: &[u8]) -> (String, u64) {
    let dev = topic
        .strip_prefix("clean/")
        .and_then(|r| r.strip_suffix("/t"))
        .expect("a clean telemetry topic");
    let nonce = std::str::from_utf8(payload).unwrap().parse().unwrap();
    (dev.to_owned(), nonce)
}

const HELD: &str = "sealgate_devices_held";
const LAG: &str = "sealgate_subscriber_lag_messages";
const LAGGED: &str = "sealgate_dropped_total{reason=\"subscriber_lagged\"}";
const RETENTION: &str = "sealgate_dropped_total{reason=\"session_retention\"}";
const STALLED: &str = "sealgate_dropped_total{reason=\"subscriber_stalled\"}";
const HOLD_EXCEEDED: &str = "sealgate_dropped_total{reason=\"hold_exceeded\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_holds_devices_and_the_subscriber_gets_everything_once() {
    let gw = Gateway::start_with_config(&config("block", 30), &[]);
    let mut dash = Dashboard::connect(gw.mqtt_port).await;
    dash.reading.send(false).unwrap();

    let (_creds, tasks) = publish_all(&gw).await;
    // The devices are held once the dashboard is 200 messages behind...
    wait_metric(&gw, HELD, |v| v == 1.0).await;
    assert!(gw.metric(LAG).await > 200.0);
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "held devices cannot have every PUBACK"
    );

    // ...and released once it reads again.
    dash.reading.send(true).unwrap();
    let total = DEVICES as u64 * PER_DEVICE;
    let mut seen = HashSet::new();
    while (seen.len() as u64) < total {
        let (t, p) = dash.next().await.expect("dashboard stays connected");
        assert!(seen.insert(identify(&t, &p)), "duplicate {t}");
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    assert_eq!(acked, total);
    assert_eq!(gw.metric(LAGGED).await, 0.0);
    assert_eq!(gw.metric(STALLED).await, 0.0);
    wait_metric(&gw, HELD, |v| v == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_never_holds_devices_and_counts_exactly_what_the_subscriber_missed() {
    let gw = Gateway::start_with_config(&config("drop", 30), &[]);
    let mut dash = Dashboard::connect(gw.mqtt_port).await;
    dash.reading.send(false).unwrap();

    // Every device gets every PUBACK while the dashboard reads nothing.
    let creds = publish_all_acked(&gw).await;
    assert_eq!(gw.metric(HELD).await, 0.0);
    all_delivered_or_counted(&gw, &creds[0], &mut dash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_subscriber_that_never_reads_again_is_cut_off_and_devices_go_on() {
    let gw = Gateway::start_with_config(&config("block", 1), &[]);
    let mut dash = Dashboard::connect(gw.mqtt_port).await;
    dash.reading.send(false).unwrap();

    publish_all_acked(&gw).await;
    // What the router still held for it went with its clean session: counted.
    assert!(gw.metric(STALLED).await > 0.0);
    assert_eq!(gw.metric(HELD).await, 0.0);
    dash.reading.send(true).unwrap();
    while dash.next().await.is_some() {}
}

/// A persistent session is served from the durable outbox, not the
/// router's log: offline, it holds nobody, and back it gets every message,
/// however far the router's log rotated meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_subscriber_gets_everything_it_missed_while_offline() {
    let gw = Gateway::start_with_config(&config("block", 30), &[]);
    let mut dash = Dashboard::connect_with(gw.mqtt_port, false, true).await;
    dash.client.disconnect().await.unwrap();
    while dash.next().await.is_some() {}

    // Offline, it holds nobody: every device gets every PUBACK.
    let creds = publish_all_acked(&gw).await;
    let mut dash = Dashboard::connect_with(gw.mqtt_port, false, false).await;
    all_delivered_or_counted_as(&gw, &creds[0], &mut dash, RETENTION, false).await;
    assert_eq!(gw.metric(LAGGED).await, 0.0);
}

/// Past `sessions.retention_messages`, an offline session's oldest messages
/// are trimmed without it, each one counted; it gets all the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_offline_session_loses_past_its_retention_is_counted() {
    let cfg = format!(
        "{}[sessions]\nretention_messages = 500\n",
        config("block", 30)
    );
    let gw = Gateway::start_with_config(&cfg, &[]);
    let mut dash = Dashboard::connect_with(gw.mqtt_port, false, true).await;
    dash.client.disconnect().await.unwrap();
    while dash.next().await.is_some() {}

    let creds = publish_all_acked(&gw).await;
    // The trimmer runs on its own: wait until it has dropped some for it.
    wait_metric(&gw, RETENTION, |v| v > 0.0).await;
    let mut dash = Dashboard::connect_with(gw.mqtt_port, false, false).await;
    all_delivered_or_counted_as(&gw, &creds[0], &mut dash, RETENTION, true).await;
}

/// A `block` subscriber that acknowledges its QoS 1 messages one every
/// `SLOW_ACK`, in order, until told to hurry: it is never stuck for the write
/// timeout, yet falls ever further behind the fleet.
struct SlowAcker {
    _client: AsyncClient,
    hurry: watch::Sender<bool>,
}

const SLOW_ACK: Duration = Duration::from_millis(250);

impl SlowAcker {
    async fn connect(port: u16) -> SlowAcker {
        let mut opts = options(port, "slow-acker", SUB_USER, SUB_PASS);
        opts.set_manual_acks(true);
        let (client, mut el) = AsyncClient::new(opts, 10);
        let (publishes, mut to_ack) = mpsc::unbounded_channel();
        let (subacked, mut suback) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if publishes.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subacked.send(());
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let (hurry, mut hurried) = watch::channel(false);
        let acks = client.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SLOW_ACK);
            while let Some(p) = to_ack.recv().await {
                if !*hurried.borrow() {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = hurried.changed() => {}
                    }
                }
                if acks.ack(&p).await.is_err() {
                    return;
                }
            }
        });
        client.subscribe("clean/#", QoS::AtLeastOnce).await.unwrap();
        tokio::time::timeout(WAIT, suback.recv())
            .await
            .expect("SUBACK")
            .expect("SUBACK");
        SlowAcker {
            _client: client,
            hurry,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_subscriber_that_acks_too_slowly_holds_devices_for_max_hold_at_most() {
    let gw = Gateway::start_with_config(&config_with_hold("block", 30, 2), &[]);
    let acker = SlowAcker::connect(gw.mqtt_port).await;

    let (_creds, tasks) = publish_all(&gw).await;
    wait_metric(&gw, HELD, |v| v == 1.0).await;
    // Released after 2 s of holding, though the subscriber stays behind: every
    // device gets every PUBACK. (Only a guard against hanging: held for
    // ever, they never would.)
    let all = async {
        let mut acked = 0;
        for t in tasks {
            acked += t.await.unwrap();
        }
        acked
    };
    let acked = tokio::time::timeout(Duration::from_secs(45), all)
        .await
        .expect("devices held for longer than max_hold_secs");
    assert_eq!(acked, DEVICES as u64 * PER_DEVICE);
    wait_metric(&gw, HELD, |v| v == 0.0).await;

    // What it missed meanwhile is counted once it reads on: it was not cut off.
    acker.hurry.send(true).unwrap();
    wait_metric(&gw, HOLD_EXCEEDED, |v| v > 0.0).await;
    assert_eq!(gw.metric(STALLED).await, 0.0);
    assert_eq!(gw.metric(LAGGED).await, 0.0);
}
