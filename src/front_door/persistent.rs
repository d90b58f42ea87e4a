//! Feeding a persistent session from the durable outbox: in order, from the
//! session's own acknowledged position, at most `sessions.max_inflight`
//! QoS 1/2 messages unacknowledged at a time.
//!
//! The position moves only on the client's acknowledgements, so a restart or
//! a lost connection resends what was not acknowledged (DUP set), and
//! nothing is skipped. The router is not involved: rumqttd could neither
//! keep these sessions across a restart nor deliver below the subscription's
//! QoS.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::sync::watch;

use crate::outbox::Entry;
use crate::sessions::{Attached, Sessions};

/// Out-of-order acknowledgements kept above the position at most; older
/// ones are forgotten and their messages resent after a reconnect.
const MAX_ACKED: usize = 10_000;
/// How often a moving position is written at most.
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// Entries examined per turn of the session loop, so one session catching
/// up does not starve the others on its worker.
const READ_CHUNK: usize = 256;

struct InFlight {
    /// The outbox entry; `None` for a retained message sent on SUBSCRIBE,
    /// which is not part of the session's position.
    seq: Option<u64>,
    /// PUBREC seen (QoS 2): delivered; the packet id waits for PUBCOMP.
    received: bool,
}

/// What one `Feed::fill` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Filled {
    /// QoS 1/2 messages written: in flight until acknowledged.
    pub sent: usize,
    /// Messages not written because they exceed the client's Maximum
    /// Packet Size.
    pub too_large: usize,
    /// Messages not written because their message expiry interval ran out.
    pub expired: usize,
}

pub(super) struct Feed {
    sessions: Arc<Sessions>,
    id: String,
    generation: u64,
    /// Filter, options byte (`options::byte`), subscription identifier.
    filters: Vec<(String, u8, Option<usize>)>,
    /// Whether a filter has a subscription identifier: only then is each
    /// message asked for its identifiers.
    identified: bool,
    /// The next outbox entry to examine.
    read_at: u64,
    /// Entries below this were sent before: resent with DUP.
    sent_to: u64,
    /// Sequence numbers in flight, and acknowledged above the lowest of them.
    pending: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    by_pkid: HashMap<u16, InFlight>,
    next_pkid: u16,
    head: watch::Receiver<u64>,
    max_inflight: usize,
    changed: bool,
    /// Retained messages owed for new subscriptions, at the QoS to send,
    /// with the subscription's identifier.
    retained: VecDeque<(Entry, u8, Option<usize>)>,
    /// The expiry a DISCONNECT set, applied as the session detaches.
    expiry_on_leave: Option<u64>,
    /// An account of a tenant: its filters are filed under this mount, and
    /// it is stripped from what the session is sent (`super::mount`).
    mount: Option<String>,
    /// Entries read from the outbox and not yet examined: a record holds a
    /// whole batch, far more than one turn's in-flight room.
    buffered: VecDeque<crate::outbox::Stored>,
    /// When the position was last written.
    saved_at: std::time::Instant,
    /// The last receive time formatted for `sg-received`: a batch's
    /// messages share it.
    received: (u64, String),
}

impl Feed {
    /// `receive_maximum`: what an MQTT 5 client said it takes in flight
    /// (MQTT5-3.3.4-9: never more QoS 1/2 messages unacknowledged).
    pub fn new(
        sessions: Arc<Sessions>,
        id: String,
        attached: &Attached,
        receive_maximum: Option<u16>,
        mount: Option<String>,
    ) -> Feed {
        let r = &attached.record;
        let read_at = r.next.max(sessions.outbox().first());
        let max_inflight = super::flow::window(receive_maximum, sessions.config().max_inflight);
        Feed {
            head: sessions.outbox().watch(),
            max_inflight,
            sessions,
            id,
            generation: attached.generation,
            filters: with_ids(&r.filters, &r.ids),
            identified: !r.ids.is_empty(),
            read_at,
            sent_to: r.sent_to,
            pending: BTreeSet::new(),
            acked: r.acked.iter().copied().filter(|s| *s >= read_at).collect(),
            by_pkid: HashMap::new(),
            next_pkid: 1,
            changed: false,
            retained: VecDeque::new(),
            buffered: VecDeque::new(),
            saved_at: std::time::Instant::now(),
            received: (u64::MAX, String::new()),
            mount,
            expiry_on_leave: None,
        }
    }

    fn in_flight(&self) -> usize {
        self.by_pkid.len()
    }

    /// Resolves when there may be something to send: entries past the read
    /// position and room in the in-flight window.
    pub async fn ready(&mut self) {
        if self.in_flight() >= self.max_inflight {
            return std::future::pending().await;
        }
        if !self.retained.is_empty() {
            return;
        }
        loop {
            if self.read_at < *self.head.borrow_and_update() {
                return;
            }
            if self.head.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The highest QoS a filter of this session grants `topic`.
    /// The filters with their options (`options::byte`).
    fn options(&self) -> impl Iterator<Item = (&str, u8)> + Clone {
        self.filters.iter().map(|(f, o, _)| (f.as_str(), *o))
    }

    /// The subscription identifiers a message on `topic` carries to this
    /// session: those of every filter that lets it through.
    fn ids(&self, topic: &str, own: bool) -> Vec<usize> {
        if !self.identified {
            return Vec::new();
        }
        let filters = self.filters.iter().map(|(f, o, id)| (f.as_str(), *o, *id));
        super::identifiers::matching(filters, topic, own)
    }

    /// Whether this session's subscriptions that match `topic` all have No
    /// Local: its own message there must be named as its own.
    pub fn no_local(&self, topic: &str) -> bool {
        super::options::no_local(self.options(), topic)
    }

    /// Whether this session published `e` (named by `properties::tag_from`).
    fn own(&self, e: &Entry) -> bool {
        published_by(e, &self.id)
    }

    /// Encodes what is ready into `out`: matching entries at the lower of
    /// their QoS and the subscription's. A message larger than `max_packet`
    /// (the client's MQTT 5 Maximum Packet Size) is not sent and counts as
    /// delivered (MQTT5-3.1.2-25): the position moves past it. So does one
    /// whose message expiry interval ran out (MQTT-3.3.2-5).
    pub fn fill(
        &mut self,
        v5: bool,
        max_packet: Option<usize>,
        out: &mut BytesMut,
    ) -> Result<Filled, sled::Error> {
        let mut filled = Filled::default();
        let room = self.max_inflight.saturating_sub(self.in_flight());
        if room == 0 {
            return Ok(filled);
        }
        let now = crate::now_ms();
        // MQTT: retained messages follow the SUBACK, before new ones.
        while filled.sent < room {
            let Some((e, qos, id)) = self.retained.pop_front() else {
                break;
            };
            let Some(expiry) = expiry_left(&e, now) else {
                filled.expired += 1;
                continue;
            };
            let pkid = if qos > 0 { self.take_pkid() } else { 0 };
            let r = Retained {
                qos,
                pkid,
                expiry,
                id,
            };
            let mount = self.mount.as_deref();
            match write_retained(v5, mount, &e, r, max_packet, &mut self.received, out) {
                Written::Sent => {}
                Written::TooLarge => {
                    filled.too_large += 1;
                    continue;
                }
                Written::Unframable => continue,
            }
            if qos > 0 {
                let f = InFlight {
                    seq: None,
                    received: false,
                };
                self.by_pkid.insert(pkid, f);
                filled.sent += 1;
            }
        }
        if filled.sent == room {
            return Ok(filled);
        }
        while filled.sent < room {
            if self.buffered.is_empty() {
                let entries = self.sessions.outbox().read(self.read_at, READ_CHUNK)?;
                if entries.is_empty() {
                    break;
                }
                self.buffered.extend(entries);
            }
            let Some(s) = self.buffered.pop_front() else {
                break;
            };
            self.read_at = s.seq + 1;
            if self.acked.contains(&s.seq) {
                continue;
            }
            let own = self.own(&s.entry);
            let Some(verdict) = super::options::judge(self.options(), &s.entry.topic, own) else {
                continue;
            };
            let Some(expiry) = expiry_left(&s.entry, now) else {
                filled.expired += 1;
                self.acked.insert(s.seq);
                continue;
            };
            let qos = verdict.qos.min(s.entry.qos);
            let dup = qos > 0 && s.seq < self.sent_to;
            let pkid = if qos > 0 { self.take_pkid() } else { 0 };
            // A message that matches an established subscription goes out
            // with RETAIN 0, unless the subscription asked for Retain As
            // Published.
            let retain = verdict.retain_as_published && s.entry.retain;
            let start = out.len();
            let e = shown(self.mount.as_deref(), &s.entry);
            let m = Message {
                qos,
                pkid,
                dup,
                retain,
                expiry,
                ids: self.ids(&s.entry.topic, own),
            };
            let encoded = encode_publish(v5, &e, m, &mut self.received, out);
            if unframable(encoded) {
                self.acked.insert(s.seq);
                continue;
            }
            if too_large(out, start, max_packet) {
                filled.too_large += 1;
                self.acked.insert(s.seq);
                continue;
            }
            if qos > 0 {
                self.pending.insert(s.seq);
                self.by_pkid.insert(
                    pkid,
                    InFlight {
                        seq: Some(s.seq),
                        received: false,
                    },
                );
                filled.sent += 1;
            } else {
                self.acked.insert(s.seq);
            }
        }
        self.sent_to = self.sent_to.max(self.read_at);
        self.changed = true;
        Ok(filled)
    }

    fn take_pkid(&mut self) -> u16 {
        let taken = &self.by_pkid;
        super::flow::free_pkid(&mut self.next_pkid, 1, |p| taken.contains_key(&p))
    }

    fn delivered(&mut self, seq: Option<u64>) {
        let Some(seq) = seq else {
            return;
        };
        self.pending.remove(&seq);
        self.acked.insert(seq);
        self.changed = true;
    }

    /// A PUBACK; false if the packet id is not one of ours.
    pub fn puback(&mut self, pkid: u16) -> bool {
        match self.by_pkid.remove(&pkid) {
            Some(f) => {
                self.delivered(f.seq);
                true
            }
            None => false,
        }
    }

    /// A PUBREC: delivered; the PUBREL is owed. False if not ours.
    pub fn pubrec(&mut self, pkid: u16) -> bool {
        let Some(f) = self.by_pkid.get_mut(&pkid) else {
            return false;
        };
        if !f.received {
            f.received = true;
            let seq = f.seq;
            self.delivered(seq);
        }
        true
    }

    /// A PUBCOMP frees the packet id.
    pub fn pubcomp(&mut self, pkid: u16) {
        if self.by_pkid.get(&pkid).is_some_and(|f| f.received) {
            self.by_pkid.remove(&pkid);
        }
    }

    /// Where the session stands: the lowest entry not yet delivered.
    fn position(&self) -> u64 {
        self.pending.first().copied().unwrap_or(self.read_at)
    }

    /// Writes the position if it moved, at most every [`SAVE_EVERY`]
    /// unless `now` (not flushed: see `Sessions::update`). A position
    /// written late only means repeats after a crash.
    pub fn save(&mut self, now: bool) -> Result<(), sled::Error> {
        if !self.changed {
            return Ok(());
        }
        let next = self.position();
        self.acked = self.acked.split_off(&next);
        while self.acked.len() > MAX_ACKED {
            self.acked.pop_last();
        }
        if !now && self.saved_at.elapsed() < SAVE_EVERY {
            return Ok(());
        }
        self.changed = false;
        self.saved_at = std::time::Instant::now();
        let acked: Vec<u64> = self.acked.iter().copied().collect();
        let sent_to = self.sent_to;
        self.sessions.update(&self.id, self.generation, |r| {
            r.next = next;
            r.acked = acked;
            r.sent_to = sent_to;
        })
    }

    /// When a position deferred by `save` is due to be written: the
    /// session loop wakes for it, so an idle session's position (which the
    /// outbox's trimming waits on) is never left unwritten.
    pub fn save_due(&self) -> Option<tokio::time::Instant> {
        self.changed
            .then(|| tokio::time::Instant::from_std(self.saved_at + SAVE_EVERY))
    }

    /// Adds or replaces filters (granted with `options`, `options::byte`,
    /// and the SUBSCRIBE's subscription identifier `id`, which replaces
    /// theirs) and makes them durable before the SUBACK; the retained
    /// messages they match are sent next, as their Retain Handling says.
    pub async fn subscribe(
        &mut self,
        granted: &[(String, u8)],
        id: Option<usize>,
    ) -> Result<(), sled::Error> {
        use super::options;
        for (f, o) in granted {
            let existed = match self.filters.iter_mut().find(|(g, ..)| g == f) {
                Some(slot) => {
                    (slot.1, slot.2) = (*o, id);
                    true
                }
                None => {
                    self.filters.push((f.clone(), *o, id));
                    false
                }
            };
            if !options::sends_retained(*o, existed) {
                continue;
            }
            for e in self.sessions.outbox().retained(f)? {
                // `retained(f)` matched the topic already: only No Local is
                // left to judge.
                if *o & options::NO_LOCAL != 0 && self.own(&e) {
                    continue;
                }
                let qos = e.qos.min(options::qos(*o));
                self.retained.push_back((e, qos, id));
            }
        }
        self.store_filters().await
    }

    pub async fn unsubscribe(&mut self, filters: &[String]) -> Result<(), sled::Error> {
        self.filters.retain(|(f, ..)| !filters.contains(f));
        self.store_filters().await
    }

    async fn store_filters(&mut self) -> Result<(), sled::Error> {
        self.identified = self.filters.iter().any(|(.., id)| id.is_some());
        let filters = self.filters.iter().map(|(f, o, _)| (f.clone(), *o));
        let filters: Vec<(String, u8)> = filters.collect();
        let ids = self
            .filters
            .iter()
            .filter_map(|(f, _, id)| Some((f.clone(), (*id)?)));
        let ids: Vec<(String, usize)> = ids.collect();
        self.sessions.update(&self.id, self.generation, |r| {
            r.filters = filters;
            r.ids = ids;
        })?;
        self.sessions.sync().await
    }

    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.filters.iter().map(|(f, ..)| f.as_str())
    }

    /// The connection ended: the session stays, without it.
    pub fn detach(mut self) {
        if let Err(e) = self.save(true) {
            tracing::error!(error = %e, "Could not record a persistent session's position.");
        }
        self.sessions
            .detach(&self.id, self.generation, self.expiry_on_leave);
    }

    /// The session expiry a DISCONNECT asked for, capped like the one of
    /// CONNECT (`sessions.max_expiry_secs`); 0 ends the session as it goes.
    pub fn set_expiry(&mut self, secs: u64) {
        self.expiry_on_leave = Some(secs.min(self.sessions.config().max_expiry_secs));
    }
}

/// How one entry is sent to this session.
struct Message {
    qos: u8,
    pkid: u16,
    dup: bool,
    retain: bool,
    /// What is left of the entry's message expiry interval, if it has one.
    expiry: Option<u32>,
    /// The subscription identifiers it carries (MQTT 5).
    ids: Vec<usize>,
}

/// Whether the session `id` published `e`: named so by
/// `properties::tag_from`, which it is where No Local needs to know.
pub(super) fn published_by(e: &Entry, id: &str) -> bool {
    e.props
        .as_deref()
        .and_then(crate::properties::from)
        .is_some_and(|from| from == id)
}

/// How a retained message sent because of a SUBSCRIBE goes out.
pub(super) struct Retained {
    pub qos: u8,
    pub pkid: u16,
    /// What is left of its message expiry interval (`expiry_left`).
    pub expiry: Option<u32>,
    /// The identifier of the SUBSCRIBE that asked for it.
    pub id: Option<usize>,
}

/// What `write_retained` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    Sent,
    /// Over the client's Maximum Packet Size: not sent, counts as delivered.
    TooLarge,
    /// Too large for MQTT to frame: not sent (logged).
    Unframable,
}

/// Writes a retained message a SUBSCRIBE made due, for a persistent session
/// and for a re-subscription the router serves (`super::resubscribed`) alike:
/// RETAIN 1 whatever Retain As Published says (MQTT 5 section 3.8.3.1:
/// retained messages sent when the subscription is established have it),
/// its properties as stored, the mount stripped from its topic.
pub(super) fn write_retained(
    v5: bool,
    mount: Option<&str>,
    e: &Entry,
    r: Retained,
    max_packet: Option<usize>,
    received: &mut (u64, String),
    out: &mut BytesMut,
) -> Written {
    let start = out.len();
    let e = shown(mount, e);
    let m = Message {
        qos: r.qos,
        pkid: r.pkid,
        dup: false,
        retain: true,
        expiry: r.expiry,
        ids: Vec::from_iter(r.id),
    };
    if unframable(encode_publish(v5, &e, m, received, out)) {
        return Written::Unframable;
    }
    if too_large(out, start, max_packet) {
        return Written::TooLarge;
    }
    Written::Sent
}

/// A stored record's filters with their subscription identifiers.
fn with_ids(filters: &[(String, u8)], ids: &[(String, usize)]) -> Vec<(String, u8, Option<usize>)> {
    filters
        .iter()
        .map(|(f, o)| {
            let id = ids.iter().find(|(g, _)| g == f).map(|(_, id)| *id);
            (f.clone(), *o, id)
        })
        .collect()
}

/// What is left of an entry's message expiry interval: `Some(None)` when it
/// has none, `None` when it ran out.
pub(super) fn expiry_left(e: &Entry, now_ms: u64) -> Option<Option<u32>> {
    match e.props.as_ref().and_then(|p| p.message_expiry_interval) {
        None => Some(None),
        Some(secs) => crate::properties::expiry_left(secs, e.at_ms, now_ms).map(Some),
    }
}

/// Writes an MQTT PUBLISH. rumqttd keeps a publish's QoS and packet id
/// private to its crate, so packets it did not decode itself cannot carry
/// them: this is the one encoder of our own (lengths are written by
/// rumqttd's `write_remaining_length`), checked against rumqttd's decoder in
/// the tests below. Fails only for a packet MQTT cannot frame (over 256 MiB).
fn encode_publish(
    v5: bool,
    e: &Entry,
    m: Message,
    received: &mut (u64, String),
    out: &mut BytesMut,
) -> Result<(), rumqttd::protocol::Error> {
    let Message {
        qos,
        pkid,
        dup,
        retain,
        expiry,
        ids,
    } = m;
    use crate::republish::property;
    use rumqttd::protocol::v4::write_remaining_length;
    // MQTT 5: the properties, after their length.
    let mut props = BytesMut::new();
    if v5 {
        let mut list = BytesMut::new();
        if let Some(o) = &e.origin {
            if received.0 != e.at_ms {
                *received = (e.at_ms, crate::rfc3339_ms(e.at_ms));
            }
            let mut number = itoa::Buffer::new();
            put_user_property(&mut list, property::DEVICE, &o.device);
            put_user_property(&mut list, property::KID, number.format(o.kid));
            put_user_property(&mut list, property::NONCE, number.format(o.nonce));
            put_user_property(&mut list, property::RECEIVED, &received.1);
        }
        if let Some(p) = &e.props {
            crate::properties::write_for_client(p, expiry, &mut list);
        }
        super::identifiers::write(&ids, &mut list)?;
        write_remaining_length(&mut props, list.len())?;
        props.extend_from_slice(&list);
    }
    let pkid_len = if qos > 0 { 2 } else { 0 };
    let len = 2 + e.topic.len() + pkid_len + props.len() + e.payload.len();
    out.put_u8(0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain));
    write_remaining_length(out, len)?;
    put_str(out, &e.topic);
    if qos > 0 {
        out.put_u16(pkid);
    }
    out.extend_from_slice(&props);
    out.extend_from_slice(&e.payload);
    Ok(())
}

/// Whether the packet encoded at `start` exceeds the client's Maximum
/// Packet Size; if so it is taken back out of `out`.
fn too_large(out: &mut BytesMut, start: usize, max_packet: Option<usize>) -> bool {
    let over = max_packet.is_some_and(|max| out.len() - start > max);
    if over {
        out.truncate(start);
    }
    over
}

/// The entry as the session sees it: for an account of a tenant, with the
/// mount stripped from its topic (every filter of the session is under the
/// mount, so every entry it is sent is too).
fn shown<'a>(mount: Option<&str>, e: &'a Entry) -> std::borrow::Cow<'a, Entry> {
    match mount.and_then(|m| super::mount::topic(m, &e.topic)) {
        Some(t) => {
            let mut copy = e.clone();
            copy.topic = t.to_owned();
            std::borrow::Cow::Owned(copy)
        }
        None => std::borrow::Cow::Borrowed(e),
    }
}

/// Whether a message could not be framed; it is logged and skipped (it
/// can never be delivered, and must not stop the session's position).
fn unframable(r: Result<(), rumqttd::protocol::Error>) -> bool {
    match r {
        Ok(()) => false,
        Err(e) => {
            tracing::warn!(error = ?e, "Skipped a message too large to frame as MQTT.");
            true
        }
    }
}

/// MQTT 5 user property: identifier 0x26, then a UTF-8 string pair.
fn put_user_property(out: &mut BytesMut, k: &str, v: &str) {
    out.put_u8(0x26);
    put_str(out, k);
    put_str(out, v);
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{v4::V4, v5::V5, Packet, Protocol};

    fn entry(payload: usize) -> Entry {
        Entry {
            topic: "clean/dev-1/t".into(),
            payload: vec![7u8; payload].into(),
            qos: 2,
            retain: true,
            at_ms: 1_700_000_000_000,
            origin: Some(crate::outbox::Origin {
                device: "dev-1".into(),
                kid: 3,
                nonce: 42,
            }),
            props: None,
        }
    }

    /// Over sockets the absence of a third message cannot be awaited, so
    /// the window is checked on the feed itself.
    #[tokio::test]
    async fn an_mqtt5_receive_maximum_bounds_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let (outbox, mut writer) = crate::outbox::Outbox::open(&db, u64::MAX).unwrap();
        let config = crate::config::Config::load(None, &[]).unwrap().sessions;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let sessions = Sessions::open(&db, outbox, config, metrics).unwrap();
        let attached = sessions.attach("u.1.d.x", "d", true, 60).unwrap();
        let mut feed = Feed::new(sessions.clone(), "u.1.d.x".into(), &attached, Some(2), None);
        feed.subscribe(&[("clean/#".into(), 1)], None)
            .await
            .unwrap();
        writer
            .append((0..5).map(|n| Entry {
                qos: 1,
                retain: false,
                at_ms: n,
                ..entry(10)
            }))
            .unwrap();
        let mut out = BytesMut::new();
        assert_eq!(feed.fill(true, None, &mut out).unwrap().sent, 2);
        let full = feed.fill(true, None, &mut out).unwrap().sent;
        assert_eq!(full, 0, "the window is full");
        assert!(feed.puback(1));
        assert_eq!(feed.fill(true, None, &mut out).unwrap().sent, 1);
    }

    #[test]
    fn rumqttd_decodes_what_we_encode() {
        for payload in [0, 10, 200, 20_000] {
            for qos in 0..=2u8 {
                let e = entry(payload);
                let mut b = BytesMut::new();
                let mut r = (0, String::new());
                let m = |dup| Message {
                    qos,
                    pkid: 513,
                    dup,
                    retain: true,
                    expiry: None,
                    ids: Vec::new(),
                };
                encode_publish(false, &e, m(true), &mut r, &mut b).unwrap();
                assert_eq!((b[0] >> 1) & 3, qos);
                let Packet::Publish(p, None) = V4.read_mut(&mut b, 1 << 20).unwrap() else {
                    panic!("not a publish")
                };
                assert_eq!(
                    (&p.topic[..], &p.payload[..]),
                    (e.topic.as_bytes(), &e.payload[..])
                );
                assert!(p.retain);
                assert!(b.is_empty());

                let mut b = BytesMut::new();
                encode_publish(true, &e, m(false), &mut r, &mut b).unwrap();
                let Packet::Publish(p, Some(props)) = V5.read_mut(&mut b, 1 << 20).unwrap() else {
                    panic!("not a v5 publish with properties")
                };
                assert_eq!(&p.payload[..], &e.payload[..]);
                let names: Vec<&str> = props
                    .user_properties
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect();
                assert_eq!(names, ["sg-device", "sg-kid", "sg-nonce", "sg-received"]);
                assert_eq!(props.user_properties[2].1, "42");
                assert!(b.is_empty());

                // An account's publish: its own properties, with the
                // expiry left.
                let own = rumqttd::protocol::PublishProperties {
                    content_type: Some("text/plain".into()),
                    message_expiry_interval: Some(60),
                    user_properties: vec![("k".into(), "v".into())],
                    ..Default::default()
                };
                let e = Entry {
                    origin: None,
                    props: Some(Box::new(own.clone())),
                    ..e
                };
                let mut b = BytesMut::new();
                let with_expiry = Message {
                    expiry: Some(7),
                    ..m(false)
                };
                encode_publish(true, &e, with_expiry, &mut r, &mut b).unwrap();
                let Packet::Publish(_, Some(props)) = V5.read_mut(&mut b, 1 << 20).unwrap() else {
                    panic!("not a v5 publish with properties")
                };
                let expected = rumqttd::protocol::PublishProperties {
                    message_expiry_interval: Some(7),
                    ..own
                };
                assert_eq!(props, expected);

                // Subscription identifiers, small and multi-byte.
                let mut b = BytesMut::new();
                let with_ids = Message {
                    ids: vec![1, 300, 268_435_455],
                    ..m(false)
                };
                encode_publish(true, &e, with_ids, &mut r, &mut b).unwrap();
                let Packet::Publish(_, Some(props)) = V5.read_mut(&mut b, 1 << 20).unwrap() else {
                    panic!("not a v5 publish with properties")
                };
                assert_eq!(props.subscription_identifiers, [1, 300, 268_435_455]);
            }
        }
    }
}
