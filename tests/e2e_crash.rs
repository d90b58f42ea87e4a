//! Crash consistency of the durable outbox (issue 9): whatever the gateway
//! acknowledged to a device reaches a persistent subscriber after any crash,
//! and no nonce is ever accepted twice.
//!
//! Devices behave as firmware: QoS 1, several messages in flight, each one
//! resent with the same bytes until it is acknowledged, across restarts. The
//! gateway dies at each test-only fail point and then at random moments under
//! SIGKILL, and comes back on the same data directory each time.
//! `SEALGATE_CRASH_SEED` repeats a run; the seed is printed.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS};
use sealgate::admin::client::Credentials;
use tokio::sync::{mpsc, watch};

const DEVICES: usize = 3;
/// Messages one device keeps unacknowledged at most, so that batches hold
/// several messages of several devices.
const PIPELINE: usize = 8;
/// Each tick a device fills its pipeline up again: messages go out in
/// bursts, and the rate stays low enough for `MAX_NONCE`.
const PACE: Duration = Duration::from_millis(30);
/// Replays at the end must still fall inside the replay window to be told
/// apart as `duplicate` (not `stale_nonce`): nonces stay below `WINDOW`.
const WINDOW: u64 = 4096;
const MAX_NONCE: u64 = WINDOW - 100;
/// The gateway's own settings for this test: a window that holds every nonce
/// of the run, and no rate limit, so that the final replays are judged by the
/// window alone (an over-limit 3.1.1 message gets no PUBACK at all).
const CONFIG: &str = "[verifier]\nwindow = 4096\n[limits]\ndevice_rate = 0.0\n";
const FAIL_POINTS: [&str; 3] = [
    "abort_after_stage",
    "abort_after_flush",
    "abort_after_handoff",
];
/// Which batch a fail point fires on: late enough to be mid-stream.
const FAIL_AT: u32 = 3;
const KILL_ROUNDS: usize = 5;
const MAX_KILL_DELAY_MS: u64 = 300;
/// PUBACKs each device must get from a restarted gateway before the next
/// crash, so that every round proves the recovery before it breaks it again.
const PROGRESS: usize = 5;
const RETRY: Duration = Duration::from_millis(50);
const SUB_ID: &str = "dash-crash";
const DUPLICATES: &str = "sealgate_rejects_total{reason=\"duplicate\"}";
const ACCEPTED: &str = "sealgate_messages_total{result=\"accepted\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_crashes_and_no_nonce_is_accepted_twice() {
    let seed = seed();
    println!("crash test seed {seed} (repeat with SEALGATE_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("sealgate.toml");
    std::fs::write(&cfg, CONFIG).unwrap();

    let mut gw = start(&data, &cfg, Some(FAIL_POINTS[0])).await;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        devices.push(DeviceLog::new(gw.add_device(&format!("crash-{i}")).await));
    }
    let sh = Arc::new(Shared::new(seed, devices, gw.mqtt_port));
    let subscriber = tokio::spawn(subscriber_task(sh.clone()));
    sh.until("the subscriber's SUBACK", |s| s.subscribed).await;
    let device_tasks: Vec<_> = (0..DEVICES)
        .map(|i| tokio::spawn(device_task(sh.clone(), i)))
        .collect();

    // (a) One crash at each fail point, mid-stream.
    for (k, fp) in FAIL_POINTS.iter().enumerate() {
        if k > 0 {
            drop(gw);
            gw = start(&data, &cfg, Some(fp)).await;
            sh.port.send_replace(gw.mqtt_port);
        }
        println!("round {}: {fp}@{FAIL_AT}", k + 1);
        expect_abort(gw, fp).await;
        let base = sh.baseline();
        gw = start(&data, &cfg, None).await;
        sh.port.send_replace(gw.mqtt_port);
        sh.progress(&base, &format!("recovery after {fp}")).await;
    }
    // (b) SIGKILL at random moments while traffic flows.
    for r in 1..=KILL_ROUNDS {
        let delay = Duration::from_millis(rng.gen_range(0..=MAX_KILL_DELAY_MS));
        println!("round {}: SIGKILL after {delay:?}", FAIL_POINTS.len() + r);
        // The crash's random moment, not a synchronisation.
        tokio::time::sleep(delay).await;
        drop(gw);
        let base = sh.baseline();
        gw = start(&data, &cfg, None).await;
        sh.port.send_replace(gw.mqtt_port);
        sh.progress(&base, &format!("recovery after SIGKILL {r}"))
            .await;
    }

    // Quiesce: every device gets its outstanding PUBACKs, then the
    // subscriber must hold every acknowledged message.
    sh.update(|s| s.publishing = false);
    sh.until("every device's outstanding PUBACKs", |s| {
        s.devices.iter().all(|d| d.unacked.is_empty())
    })
    .await;
    sh.until("every acknowledged message at the subscriber", |s| {
        s.missing().is_empty()
    })
    .await;
    for t in device_tasks {
        t.abort();
        let _ = t.await;
    }
    println!("{}", sh.with(Fleet::summary));

    // No nonce is accepted twice. Per topic the subscriber gets messages in
    // the order they were accepted (MQTT 3.1.1, 4.6) and nothing crashes from
    // here on, so once a device's barrier has arrived nothing older of that
    // device can follow it: the next message of that device the subscriber
    // gets must be the fresh one sent after the replays, or a replay got
    // through.
    let mut conns = Vec::new();
    for i in 0..DEVICES {
        let creds = sh.with(|s| s.devices[i].creds.clone());
        conns.push(device_conn(gw.mqtt_port, &creds).await);
    }
    let mut barriers = Vec::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        barriers.push(send_one(&sh, i, conn).await);
    }
    sh.until("the barrier messages", |s| {
        barriers
            .iter()
            .enumerate()
            .all(|(i, n)| s.received.contains_key(&(i, *n)))
    })
    .await;
    let duplicates_before = gw.metric(DUPLICATES).await;
    let accepted_before = gw.metric(ACCEPTED).await;
    let mut replayed = 0usize;
    for (i, conn) in conns.iter_mut().enumerate() {
        let (topic, sealed) = sh.with(|s| {
            let d = &s.devices[i];
            let sealed: Vec<Vec<u8>> = d.acked.iter().map(|n| d.sealed[n].clone()).collect();
            (d.topic(), sealed)
        });
        replayed += sealed.len();
        for m in &sealed {
            conn.client
                .publish(&topic, QoS::AtLeastOnce, false, m.clone())
                .await
                .unwrap();
        }
        conn.await_pubacks(sealed.len()).await;
    }
    let mut fresh = Vec::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        fresh.push(send_one(&sh, i, conn).await);
    }
    let duplicates = gw.metric(DUPLICATES).await - duplicates_before;
    let accepted = gw.metric(ACCEPTED).await - accepted_before;
    assert!(
        duplicates >= replayed as f64,
        "{replayed} acknowledged messages replayed, only {duplicates} refused as duplicate"
    );
    assert_eq!(
        accepted, DEVICES as f64,
        "of {replayed} replays and {DEVICES} fresh messages, {accepted} were accepted"
    );
    sh.until("the fresh messages", |s| {
        fresh
            .iter()
            .enumerate()
            .all(|(i, n)| s.received.contains_key(&(i, *n)))
    })
    .await;
    let arrivals = sh.with(|s| s.arrivals.clone());
    for i in 0..DEVICES {
        let of_device: Vec<u64> = arrivals
            .iter()
            .filter(|(d, _)| *d == i)
            .map(|(_, n)| *n)
            .collect();
        let at = of_device
            .iter()
            .position(|n| *n == barriers[i])
            .expect("the barrier arrived");
        assert_eq!(
            of_device.get(at + 1),
            Some(&fresh[i]),
            "device {i}: after its barrier {} the subscriber got {:?}, not the fresh {}: a replay was delivered",
            barriers[i],
            &of_device[at + 1..],
            fresh[i]
        );
    }
    let clean = sh.with(|s| s.errors.is_empty());
    assert!(clean, "{}", sh.with(Fleet::summary));
    subscriber.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_persistent_subscriber_gets_what_it_missed_across_kill_9() {
    const N: u64 = 20;
    let gw = Gateway::start(&[]);
    let creds = gw.add_device("away-1").await;
    let (mut sub, present) = persistent_subscriber(gw.mqtt_port, "dash-away").await;
    assert!(!present, "a new client id has no session");
    sub.client
        .subscribe("clean/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Ev::SubAck(codes) = sub.next().await {
            assert!(
                matches!(codes[..], [rumqttc::SubscribeReasonCode::Success(_)]),
                "{codes:?}"
            );
            break;
        }
    }
    sub.client.disconnect().await.unwrap();
    while !matches!(sub.next().await, Ev::Closed(_)) {}
    drop(sub);

    let body = |n: u64| format!("away {n}").into_bytes();
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    for n in 1..=N {
        dev.publish_acked("sealed/away-1/t", common::seal(&creds, "t", n, &body(n)))
            .await;
    }
    drop(dev);
    let gw = gw.kill9_and_restart();

    // Same client id, clean session off, no new SUBSCRIBE.
    let (mut sub, present) = persistent_subscriber(gw.mqtt_port, "dash-away").await;
    assert!(present, "the session did not survive kill -9");
    let mut dev = Client::device(gw.mqtt_port, &creds).await;
    dev.publish_acked(
        "sealed/away-1/t",
        common::seal(&creds, "t", N + 1, &body(N + 1)),
    )
    .await;
    for n in 1..=N + 1 {
        assert_eq!(
            sub.next_publish().await,
            ("clean/away-1/t".to_owned(), body(n)),
            "message {n} of {}",
            N + 1
        );
    }
}

/// What a connection's event loop saw.
#[derive(Debug)]
enum Ev {
    ConnAck {
        session_present: bool,
    },
    /// A QoS 1 publish went out with this packet id.
    Sent(u16),
    PubAck(u16),
    SubAck(Vec<rumqttc::SubscribeReasonCode>),
    Publish(String, Vec<u8>),
    Closed(String),
}

/// One MQTT connection. Its event loop runs in a task of its own (polling
/// it is not cancel-safe) and ends with the connection: rumqttc's own
/// reconnect is never used, each reconnect is a new `Conn`, so a resend is
/// always the test's own decision. Dropping it closes the socket.
struct Conn {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Ev>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    /// Connects; returns the connection and the CONNACK's session present flag.
    async fn open(opts: MqttOptions) -> Result<(Conn, bool), String> {
        let (client, mut el) = AsyncClient::new(opts, 1000);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                let ev = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(c)))
                        if c.code == ConnectReturnCode::Success =>
                    {
                        Ev::ConnAck {
                            session_present: c.session_present,
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(c))) => Ev::Closed(format!("{:?}", c.code)),
                    Ok(Event::Incoming(Packet::PubAck(a))) => Ev::PubAck(a.pkid),
                    Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(s.return_codes),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Ev::Publish(p.topic, p.payload.to_vec())
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ev::Sent(pkid),
                    Ok(_) => continue,
                    Err(e) => Ev::Closed(e.to_string()),
                };
                let closed = matches!(ev, Ev::Closed(_));
                if tx.send(ev).is_err() || closed {
                    return;
                }
            }
        });
        let mut conn = Conn { client, rx, driver };
        match tokio::time::timeout(WAIT, conn.rx.recv()).await {
            Ok(Some(Ev::ConnAck { session_present })) => Ok((conn, session_present)),
            Ok(other) => Err(format!("no CONNACK: {other:?}")),
            Err(_) => Err("no CONNACK in time".into()),
        }
    }

    /// The next event; the test fails if none comes within `WAIT`.
    async fn next(&mut self) -> Ev {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for MQTT traffic")
            .unwrap_or(Ev::Closed("event loop ended".into()))
    }

    async fn next_publish(&mut self) -> (String, Vec<u8>) {
        loop {
            match self.next().await {
                Ev::Publish(t, p) => return (t, p),
                Ev::Closed(e) => panic!("closed while waiting for a publish: {e}"),
                _ => {}
            }
        }
    }

    async fn await_pubacks(&mut self, mut n: usize) {
        while n > 0 {
            match self.next().await {
                Ev::PubAck(_) => n -= 1,
                Ev::Closed(e) => panic!("closed with {n} PUBACKs outstanding: {e}"),
                _ => {}
            }
        }
    }
}

async fn persistent_subscriber(port: u16, id: &str) -> (Conn, bool) {
    let mut o = options(port, id, SUB_USER, SUB_PASS);
    o.set_clean_session(false);
    Conn::open(o).await.expect("subscriber connects")
}

async fn device_conn(port: u16, creds: &Credentials) -> Conn {
    let id = &creds.device_id;
    Conn::open(options(port, id, id, &creds.mqtt_password))
        .await
        .expect("device connects")
        .0
}

/// One device's history: every nonce it sealed, and what came of it.
struct DeviceLog {
    creds: Credentials,
    next: u64,
    /// The bytes sent for each nonce, resent unchanged.
    sealed: BTreeMap<u64, Vec<u8>>,
    unacked: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    connects: u32,
    acks_this_connection: usize,
}

impl DeviceLog {
    fn new(creds: Credentials) -> DeviceLog {
        DeviceLog {
            creds,
            next: 1,
            sealed: BTreeMap::new(),
            unacked: BTreeSet::new(),
            acked: BTreeSet::new(),
            connects: 0,
            acks_this_connection: 0,
        }
    }

    fn topic(&self) -> String {
        format!("sealed/{}/t", self.creds.device_id)
    }
}

/// Everything the devices and the subscriber did, shared with the test.
struct Fleet {
    seed: u64,
    devices: Vec<DeviceLog>,
    publishing: bool,
    subscribed: bool,
    sub_connects: u32,
    /// How often each (device index, nonce) reached the subscriber.
    received: HashMap<(usize, u64), u32>,
    /// Everything the subscriber got, in order.
    arrivals: Vec<(usize, u64)>,
    /// Broken promises seen by the tasks; any fails the test.
    errors: Vec<String>,
}

impl Fleet {
    /// A new message for device `i` if it may send one now.
    fn new_message(&mut self, i: usize) -> Option<(u64, Vec<u8>)> {
        let d = &self.devices[i];
        if !self.publishing || d.unacked.len() >= PIPELINE || d.next > MAX_NONCE {
            return None;
        }
        let (n, m) = self.seal_next(i);
        self.devices[i].unacked.insert(n);
        Some((n, m))
    }

    fn seal_next(&mut self, i: usize) -> (u64, Vec<u8>) {
        let seed = self.seed;
        let d = &mut self.devices[i];
        let n = d.next;
        d.next += 1;
        let m = common::seal(&d.creds, "t", n, &plaintext(seed, i, n));
        d.sealed.insert(n, m.clone());
        (n, m)
    }

    fn acked(&mut self, i: usize, n: u64) {
        let d = &mut self.devices[i];
        d.unacked.remove(&n);
        d.acked.insert(n);
        d.acks_this_connection += 1;
    }

    /// Checks a clean message against what was sent and records it.
    fn record(&mut self, topic: &str, payload: &[u8]) {
        let parsed = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| Some((v["d"].as_str()?.to_owned(), v["n"].as_u64()?)));
        let Some((id, n)) = parsed else {
            self.errors
                .push(format!("a message on {topic} that no device sent"));
            return;
        };
        let Some(i) = self.devices.iter().position(|d| d.creds.device_id == id) else {
            self.errors
                .push(format!("a message naming unknown device {id}"));
            return;
        };
        if topic != format!("clean/{id}/t") {
            self.errors
                .push(format!("{id} nonce {n} arrived on {topic}"));
        }
        if !self.devices[i].sealed.contains_key(&n) {
            self.errors
                .push(format!("{id} nonce {n} arrived but was never sent"));
        } else if payload != plaintext(self.seed, i, n) {
            self.errors
                .push(format!("{id} nonce {n} arrived with other content"));
        }
        *self.received.entry((i, n)).or_default() += 1;
        self.arrivals.push((i, n));
    }

    /// Acknowledged messages the subscriber has not had, per device.
    fn missing(&self) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            out.extend(
                d.acked
                    .iter()
                    .filter(|n| !self.received.contains_key(&(i, **n)))
                    .map(|n| (i, *n)),
            );
        }
        out
    }

    fn summary(&self) -> String {
        let mut s = String::new();
        let missing = self.missing();
        for (i, d) in self.devices.iter().enumerate() {
            let lost: Vec<u64> = missing
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, n)| *n)
                .collect();
            s += &format!(
                "{}: sealed {}, acked {}, in flight {:?}, connections {}, acked but not received {} {:?}\n",
                d.creds.device_id,
                d.sealed.len(),
                d.acked.len(),
                d.unacked,
                d.connects,
                lost.len(),
                &lost[..lost.len().min(20)]
            );
        }
        s += &format!(
            "subscriber: connections {}, received {} distinct in {} deliveries\n",
            self.sub_connects,
            self.received.len(),
            self.arrivals.len()
        );
        if !self.errors.is_empty() {
            s += &format!(
                "errors ({}): {:#?}\n",
                self.errors.len(),
                &self.errors[..self.errors.len().min(20)]
            );
        }
        s
    }
}

/// Counts taken between a crash and the restart; see [`Shared::progress`].
struct Baseline {
    device_connects: Vec<u32>,
    sub_connects: u32,
}

struct Shared {
    state: Mutex<Fleet>,
    /// Bumped on every change of `state`, so waiting is awaiting an event.
    tick: watch::Sender<u64>,
    /// The running gateway's MQTT port; it changes with each restart.
    port: watch::Sender<u16>,
}

impl Shared {
    fn new(seed: u64, devices: Vec<DeviceLog>, port: u16) -> Shared {
        Shared {
            state: Mutex::new(Fleet {
                seed,
                devices,
                publishing: true,
                subscribed: false,
                sub_connects: 0,
                received: HashMap::new(),
                arrivals: Vec::new(),
                errors: Vec::new(),
            }),
            tick: watch::channel(0).0,
            port: watch::channel(port).0,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Fleet) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    fn update<T>(&self, f: impl FnOnce(&mut Fleet) -> T) -> T {
        let r = f(&mut self.state.lock().unwrap());
        self.tick.send_modify(|t| *t += 1);
        r
    }

    /// Waits until `cond` holds; fails at once on a recorded error, and
    /// with a summary if it does not hold within `WAIT`.
    async fn until(&self, what: &str, cond: impl Fn(&Fleet) -> bool) {
        let mut tick = self.tick.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (done, failed) = self.with(|s| (cond(s), !s.errors.is_empty()));
            // Panics outside the lock, which the tasks go on using.
            if failed {
                panic!("while waiting for {what}:\n{}", self.with(Fleet::summary));
            }
            if done {
                return;
            }
            if tokio::time::timeout_at(deadline, tick.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out waiting for {what}:\n{}",
                    self.with(Fleet::summary)
                );
            }
        }
    }

    /// Taken while no gateway runs, so any connection counted later is to
    /// the next one.
    fn baseline(&self) -> Baseline {
        self.with(|s| Baseline {
            device_connects: s.devices.iter().map(|d| d.connects).collect(),
            sub_connects: s.sub_connects,
        })
    }

    /// Every device has reconnected and had `PROGRESS` messages acknowledged
    /// on that connection, and the subscriber has reconnected (its session
    /// present, checked by its task).
    async fn progress(&self, base: &Baseline, what: &str) {
        self.until(what, |s| {
            s.sub_connects > base.sub_connects
                && s.devices
                    .iter()
                    .zip(&base.device_connects)
                    .all(|(d, c)| d.connects > *c && d.acks_this_connection >= PROGRESS)
        })
        .await;
    }
}

/// A firmware-like device: connects to whichever gateway runs, resends
/// everything unacknowledged (same bytes, oldest first), then keeps up to
/// `PIPELINE` messages in flight.
async fn device_task(sh: Arc<Shared>, i: usize) {
    let mut port = sh.port.subscribe();
    loop {
        let p = *port.borrow_and_update();
        device_connection(&sh, i, p).await;
        // Back off, or go at once to a restarted gateway.
        let _ = tokio::time::timeout(RETRY, port.changed()).await;
    }
}

async fn device_connection(sh: &Shared, i: usize, port: u16) {
    let creds = sh.with(|s| s.devices[i].creds.clone());
    let id = &creds.device_id;
    let Ok((mut conn, _)) = Conn::open(options(port, id, id, &creds.mqtt_password)).await else {
        return;
    };
    let (topic, resend) = sh.update(|s| {
        let d = &mut s.devices[i];
        d.connects += 1;
        d.acks_this_connection = 0;
        let resend: Vec<(u64, Vec<u8>)> = d
            .unacked
            .iter()
            .map(|n| (*n, d.sealed[n].clone()))
            .collect();
        (d.topic(), resend)
    });
    // Nonces in the order their publishes were queued; rumqttc sends them in
    // that order and reports each one's packet id as it goes out.
    let mut queued = VecDeque::new();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    for (n, m) in resend {
        if conn
            .client
            .publish(&topic, QoS::AtLeastOnce, false, m)
            .await
            .is_err()
        {
            return;
        }
        queued.push_back(n);
    }
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = pace.tick() => {
                while let Some((n, m)) = sh.update(|s| s.new_message(i)) {
                    if conn.client.publish(&topic, QoS::AtLeastOnce, false, m).await.is_err() {
                        return;
                    }
                    queued.push_back(n);
                }
            }
            ev = conn.rx.recv() => match ev {
                Some(Ev::Sent(pkid)) => match queued.pop_front() {
                    Some(n) => {
                        in_flight.insert(pkid, n);
                    }
                    None => {
                        sh.update(|s| s.errors.push(format!("{id}: packet id {pkid} for no queued message")));
                        return;
                    }
                },
                Some(Ev::PubAck(pkid)) => match in_flight.remove(&pkid) {
                    Some(n) => sh.update(|s| s.acked(i, n)),
                    None => {
                        sh.update(|s| s.errors.push(format!("{id}: PUBACK for packet id {pkid} not in flight")));
                        return;
                    }
                },
                Some(Ev::Closed(_)) | None => return,
                Some(_) => {}
            }
        }
    }
}

/// The persistent subscriber: subscribes once, on its first connection;
/// after that every CONNACK must say its session is present.
async fn subscriber_task(sh: Arc<Shared>) {
    let mut port = sh.port.subscribe();
    loop {
        let p = *port.borrow_and_update();
        subscriber_connection(&sh, p).await;
        let _ = tokio::time::timeout(RETRY, port.changed()).await;
    }
}

async fn subscriber_connection(sh: &Shared, port: u16) {
    let mut o = options(port, SUB_ID, SUB_USER, SUB_PASS);
    o.set_clean_session(false);
    let Ok((mut conn, present)) = Conn::open(o).await else {
        return;
    };
    let first = sh.update(|s| {
        s.sub_connects += 1;
        if s.subscribed && !present {
            s.errors.push(format!(
                "subscriber connection {}: CONNACK session_present=false, the session was lost",
                s.sub_connects
            ));
        }
        !s.subscribed
    });
    if first
        && conn
            .client
            .subscribe("clean/#", QoS::AtLeastOnce)
            .await
            .is_err()
    {
        return;
    }
    loop {
        match conn.rx.recv().await {
            Some(Ev::Publish(t, p)) => sh.update(|s| s.record(&t, &p)),
            Some(Ev::SubAck(codes)) => sh.update(|s| {
                if matches!(codes[..], [rumqttc::SubscribeReasonCode::Success(_)]) {
                    s.subscribed = true;
                } else {
                    s.errors.push(format!("clean/# refused: {codes:?}"));
                }
            }),
            Some(Ev::Closed(_)) | None => return,
            Some(_) => {}
        }
    }
}

/// Seals device `i`'s next nonce, publishes it on `conn`, and waits for its
/// PUBACK (the only message in flight there).
async fn send_one(sh: &Shared, i: usize, conn: &mut Conn) -> u64 {
    let (topic, n, m) = sh.update(|s| {
        let (n, m) = s.seal_next(i);
        (s.devices[i].topic(), n, m)
    });
    conn.client
        .publish(&topic, QoS::AtLeastOnce, false, m)
        .await
        .unwrap();
    conn.await_pubacks(1).await;
    sh.update(|s| {
        s.devices[i].acked.insert(n);
    });
    n
}

/// The plaintext of device `i`'s nonce `n`: names both, plus a value of the
/// seed so that content from another message cannot pass for it.
fn plaintext(seed: u64, i: usize, n: u64) -> Vec<u8> {
    let mut x = seed ^ ((i as u64) << 48) ^ n;
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    format!(r#"{{"d":"crash-{i}","n":{n},"x":"{x:016x}"}}"#).into_bytes()
}

fn seed() -> u64 {
    match std::env::var("SEALGATE_CRASH_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SEALGATE_CRASH_SEED={v} is not a u64")),
        Err(_) => rand::random(),
    }
}

/// A gateway on `data` with this test's settings and, if given, a fail
/// point armed for batch `FAIL_AT`.
async fn start(data: &Path, cfg: &Path, fail_point: Option<&str>) -> Gateway {
    let data = data.to_owned();
    let cfg = cfg.to_str().expect("utf-8 temp path").to_owned();
    let fp = fail_point.map(|f| format!("{f}@{FAIL_AT}"));
    tokio::task::spawn_blocking(move || {
        let mut env = vec![("SEALGATE_CONFIG", cfg.as_str())];
        if let Some(fp) = &fp {
            env.push(("SEALGATE_FAILPOINTS", fp.as_str()));
        }
        Gateway::start_in(&data, &env)
    })
    .await
    .unwrap()
}

/// Waits for the gateway to abort at `fp`; fails clearly if it does not
/// within `WAIT` (a gateway without that fail point) or dies otherwise.
async fn expect_abort(gw: Gateway, fp: &str) {
    let Ok((status, log)) = tokio::spawn(gw.wait_exit()).await else {
        panic!(
            "fail point {fp}@{FAIL_AT}: the gateway was still running {WAIT:?} into traffic \
             (does it implement SEALGATE_FAILPOINTS={fp}@{FAIL_AT}?)"
        );
    };
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "fail point {fp}@{FAIL_AT}: expected an abort, the gateway ended with {status}; last log lines: {:#?}",
        &log[log.len().saturating_sub(20)..]
    );
}
