//! The durable outbox: every message the gateway publishes (clean plaintext,
//! unverified payloads, security events, what accounts publish), as an
//! ordered log in sled, journaled with the replay windows it advances in one
//! record (`crate::journal`) that is synced before any PUBACK.
//!
//! Why a log and not only the router: rumqttd keeps its state in memory, so
//! a kill -9 between a flush and the hand-off would lose acknowledged
//! messages, and a persistent subscriber would lose its backlog on any
//! restart. Persistent sessions (`crate::sessions`) read this log from
//! their own durable position; the router keeps serving clean sessions.
//!
//! Layout: every message has a sequence number, but sled holds records of
//! a few KiB (several messages of one batch), keyed by their first sequence
//! number (8 bytes, big-endian), so the tree's order is the log's. Far
//! fewer inserts than one per message: sled rewrites a leaf on every
//! insert, which at one insert per message cost more than half the
//! gateway's throughput. The empty key holds
//! where trimming stopped, so the sequence never goes back even when the log
//! is empty. Each record carries the running byte total, so the log's size is
//! known from its first and last records at startup, without a scan.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

/// One message as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// When the gateway received it (ms since the epoch).
    pub at_ms: u64,
    /// Set for verified messages: who sealed it, so a consumer can drop a
    /// crash's repeat by (device, nonce).
    pub origin: Option<Origin>,
    /// An account's publish: the MQTT 5 properties passed on to
    /// subscribers (`properties::screen`). Boxed: most messages have none.
    pub props: Option<Box<rumqttd::protocol::PublishProperties>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub device: String,
    pub kid: u32,
    pub nonce: u64,
}

const VERSION: u8 = 1;
/// Entry flags: retain, the QoS, and whether properties follow the origin.
const RETAIN: u8 = 0x01;
const PROPS: u8 = 0x08;
const META_KEY: &[u8] = b"";
/// Fixed part of an encoded entry: version, flags, time.
const HEADER: usize = 1 + 1 + 8;
/// Fixed part of a record: version, entry count, running total.
const RECORD_HEADER: usize = 1 + 4 + 8;
/// A record is closed once it holds this many bytes. sled splits a leaf at
/// 17 items and writes a page image larger than a quarter segment (128 KiB)
/// as a separate blob file: records this small keep most leaves in the log.
/// Large messages (a record holds at least one whole message) can still
/// make a blob; `Database::flush` syncs those too, since sled 0.34 never
/// does.
pub const RECORD_BYTES: usize = 4096;

impl Entry {
    fn encode_into(&self, v: &mut Vec<u8>) {
        v.push(VERSION);
        let props = if self.props.is_some() { PROPS } else { 0 };
        v.push(u8::from(self.retain) | (self.qos.min(2) << 1) | props);
        v.extend_from_slice(&self.at_ms.to_be_bytes());
        v.extend_from_slice(&(self.topic.len() as u16).to_be_bytes());
        v.extend_from_slice(self.topic.as_bytes());
        match &self.origin {
            None => v.push(0),
            Some(o) => {
                v.push(1);
                v.push(o.device.len() as u8);
                v.extend_from_slice(o.device.as_bytes());
                v.extend_from_slice(&o.kid.to_be_bytes());
                v.extend_from_slice(&o.nonce.to_be_bytes());
            }
        }
        if let Some(p) = &self.props {
            let len = crate::properties::written_len(p, p.message_expiry_interval);
            v.extend_from_slice(&(len as u32).to_be_bytes());
            crate::properties::write(p, p.message_expiry_interval, v);
        }
        v.extend_from_slice(&self.payload);
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.size());
        self.encode_into(&mut v);
        v
    }

    /// Its encoding in the outbox, appended to `v`: one format for every
    /// message the gateway keeps (a waiting will, `front_door::wills`).
    pub fn append_to(&self, v: &mut Vec<u8>) {
        v.reserve(self.size());
        self.encode_into(v);
    }

    /// Reads what `append_to` wrote; `None` for anything else.
    pub fn read(v: &[u8]) -> Option<Entry> {
        decode_entry(v, |at| Bytes::copy_from_slice(&v[at..]))
    }

    /// The length of its encoding.
    fn size(&self) -> usize {
        let origin = self.origin.as_ref().map_or(0, |o| 1 + o.device.len() + 12);
        let props = self.props.as_ref().map_or(0, |p| {
            4 + crate::properties::written_len(p, p.message_expiry_interval)
        });
        HEADER + 2 + self.topic.len() + 1 + origin + props + self.payload.len()
    }
}

/// An entry read back, with its sequence number.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub entry: Entry,
}

/// One batch's record, as trimming sees it.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The first entry's sequence number.
    pub seq: u64,
    pub entries: Vec<Entry>,
    /// Bytes of the log up to and including this record, since its creation.
    pub total: u64,
    /// This record's key and value.
    pub size: u64,
}

impl Batch {
    /// The sequence number after its last entry.
    pub fn end(&self) -> u64 {
        self.seq + self.entries.len() as u64
    }
}

/// Decodes one entry; `payload` makes the payload from its offset in `v`
/// (a slice of a shared buffer, a copy, or nothing).
fn decode_entry(v: &[u8], payload: impl FnOnce(usize) -> Bytes) -> Option<Entry> {
    let mut r = Reader(v);
    if r.u8()? != VERSION {
        return None;
    }
    let flags = r.u8()?;
    let at_ms = r.u64()?;
    let topic_len = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
    let topic = String::from_utf8(r.take(topic_len)?.to_vec()).ok()?;
    let origin = match r.u8()? {
        0 => None,
        _ => {
            let n = r.u8()? as usize;
            let device = String::from_utf8(r.take(n)?.to_vec()).ok()?;
            let kid = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
            let nonce = r.u64()?;
            Some(Origin { device, kid, nonce })
        }
    };
    let props = match flags & PROPS {
        0 => None,
        _ => {
            let n = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
            Some(Box::new(crate::properties::read(r.take(n)?)?))
        }
    };
    let at = v.len() - r.0.len();
    Some(Entry {
        topic,
        payload: payload(at),
        qos: (flags >> 1) & 3,
        retain: flags & RETAIN == RETAIN,
        at_ms,
        origin,
        props,
    })
}

/// A record: its header, then each entry as a length and its encoding.
/// With `whole` (the record in one shared buffer) payloads are slices of
/// it, one copy per record; without, they are left empty.
fn decode_record(k: &[u8], v: &[u8], whole: Option<&Bytes>) -> Option<Batch> {
    let seq = seq_of(k)?;
    let (count, total, mut r) = record_start(v)?;
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
        let start = v.len() - r.0.len();
        let e = decode_entry(r.take(len)?, |at| match whole {
            Some(b) => b.slice(start + at..start + len),
            None => Bytes::new(),
        })?;
        entries.push(e);
    }
    Some(Batch {
        seq,
        entries,
        total,
        size: (k.len() + v.len()) as u64,
    })
}

/// Only the header of a record: its end, running total and size.
fn record_header(k: &[u8], v: &[u8]) -> Option<(u64, u64, u64)> {
    let seq = seq_of(k)?;
    let (count, total, _) = record_start(v)?;
    Some((seq + u64::from(count), total, (k.len() + v.len()) as u64))
}

/// A record's entry count and running total, and a reader at its entries.
fn record_start(v: &[u8]) -> Option<(u32, u64, Reader<'_>)> {
    let mut r = Reader(v);
    if r.u8()? != VERSION {
        return None;
    }
    let count = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
    let total = r.u64()?;
    Some((count, total, r))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

/// The log shared by its writer (the verifier), its readers (persistent
/// sessions) and its trimmer.
pub struct Outbox {
    tree: sled::Tree,
    /// The retained message of each topic (MQTT's retain flag), kept with
    /// the log in the same transaction: it outlives the entry it came in,
    /// and the router's own retained store, which a restart empties.
    retained: sled::Tree,
    /// The sequence number after the last flushed entry: readers see
    /// nothing at or past it, so nothing a crash could take back is read.
    head: watch::Sender<u64>,
    /// Running byte total after the last staged entry, and before the
    /// first entry still kept: their difference is the log's size.
    written: AtomicU64,
    trimmed: AtomicU64,
    /// The first sequence number of the oldest record kept (== head when
    /// empty).
    first: AtomicU64,
    max_bytes: u64,
    /// Signalled when trimming frees room, for a writer waiting on it.
    room: (Mutex<()>, Condvar),
}

/// Adds entries, one batch at a time; lives on the verifier thread.
pub struct Writer {
    outbox: Arc<Outbox>,
    next: u64,
}

/// A batch's records, journaled with the windows in one record.
#[derive(Default)]
pub struct Pending {
    /// The batch's writes: its records, then the retained messages it sets
    /// (or clears, by an empty payload). Applied to sled and journaled as
    /// one (`crate::journal`).
    pub(crate) ops: crate::journal::Ops,
    /// The sequence number after the batch's last entry.
    pub(crate) end: Option<u64>,
    bytes: u64,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.end.is_none()
    }
}

/// Where trimming stopped (records keyed below it are gone for good), and
/// the running byte total there.
fn trim_marker(tree: &sled::Tree) -> Result<(u64, u64), sled::Error> {
    Ok(match tree.get(META_KEY)? {
        Some(v) if v.len() == 16 => (
            u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(v[8..].try_into().expect("8 bytes")),
        ),
        _ => (0, 0),
    })
}

/// Where trimming stopped: the journal's replay skips records below it.
pub(crate) fn trimmed_to(tree: &sled::Tree) -> Result<u64, sled::Error> {
    Ok(trim_marker(tree)?.0)
}

/// Whether `k` is a record's key below `trimmed_to`: the journal does not
/// bring such a record back.
pub(crate) fn below(k: &[u8], trimmed_to: u64) -> bool {
    seq_of(k).is_some_and(|seq| seq < trimmed_to)
}

impl Outbox {
    pub const TREE: &'static str = "outbox";
    pub const RETAINED_TREE: &'static str = "retained";

    /// Opens the log: reads its first and last entries and where trimming
    /// stopped, never the entries between.
    pub fn open(db: &sled::Db, max_bytes: u64) -> Result<(Arc<Outbox>, Writer), sled::Error> {
        let tree = db.open_tree(Self::TREE)?;
        let retained = db.open_tree(Self::RETAINED_TREE)?;
        let (trimmed_to, trimmed_total) = trim_marker(&tree)?;
        let first = match tree.range(key(0)..).next().transpose()? {
            Some((k, v)) => record_header(&k, &v).map(|h| (seq_of(&k).unwrap_or(0), h)),
            None => None,
        };
        let last = match tree.last()? {
            Some((k, v)) if k.len() == 8 => record_header(&k, &v),
            _ => None,
        };
        let next = last.map_or(trimmed_to, |(end, _, _)| end.max(trimmed_to));
        let written = last.map_or(trimmed_total, |(_, total, _)| total);
        let trimmed = first.map_or(written, |(_, (_, total, size))| total - size);
        let outbox = Arc::new(Outbox {
            tree,
            retained,
            head: watch::Sender::new(next),
            written: AtomicU64::new(written),
            trimmed: AtomicU64::new(trimmed),
            first: AtomicU64::new(first.map_or(next, |(seq, _)| seq)),
            max_bytes,
            room: (Mutex::new(()), Condvar::new()),
        });
        let writer = Writer {
            outbox: outbox.clone(),
            next,
        };
        Ok((outbox, writer))
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub fn retained_tree(&self) -> &sled::Tree {
        &self.retained
    }

    /// The retained messages whose topics `filter` matches. Only topics
    /// under the filter's literal prefix are looked at.
    pub fn retained(&self, filter: &str) -> Result<Vec<Entry>, sled::Error> {
        let literal = filter.find(['+', '#']).map_or(filter, |i| &filter[..i]);
        let mut out = Vec::new();
        for kv in self.retained.scan_prefix(literal.as_bytes()) {
            let (k, v) = kv?;
            let Ok(topic) = std::str::from_utf8(&k) else {
                continue;
            };
            if !crate::topic::matches(filter, topic) {
                continue;
            }
            if let Some(e) = decode_entry(&v, |at| Bytes::copy_from_slice(&v[at..])) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Every retained message, to give the router back after a restart.
    pub fn all_retained(&self) -> impl Iterator<Item = Entry> + '_ {
        self.retained
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| decode_entry(&v, |at| Bytes::copy_from_slice(&v[at..])))
    }

    /// The sequence number after the last flushed entry.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// The lowest sequence number still kept.
    pub fn first(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    /// Wakes readers when new entries are durable.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Entries up to `end` are flushed: readers may see them.
    pub fn flushed(&self, end: u64) {
        self.head.send_if_modified(|h| {
            let moved = end > *h;
            *h = (*h).max(end);
            moved
        });
    }

    /// Bytes the log holds.
    pub fn bytes(&self) -> u64 {
        self.written
            .load(Ordering::Acquire)
            .saturating_sub(self.trimmed.load(Ordering::Acquire))
    }

    /// The running byte total after the last staged entry.
    pub fn written_total(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Flushed entries from `from` on, in order: at least the rest of the
    /// record holding `from`, then whole records while fewer than `max`.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<Stored>, sled::Error> {
        let head = self.head();
        let mut out = Vec::new();
        if from >= head {
            return Ok(out);
        }
        // The record holding `from` starts at or before it. A reader that
        // consumed whole records asks for a record's first entry: found
        // forwards. Otherwise (a position inside a record, after a restart
        // or a takeover) it is the record before, found backwards, which
        // sled does far more slowly.
        let starts_here = match self.tree.range(key(from)..key(head)).next() {
            Some(kv) => seq_of(&kv?.0) == Some(from),
            None => false,
        };
        let start = if starts_here {
            from
        } else {
            match self.tree.range(key(0)..key(from)).next_back() {
                Some(kv) => seq_of(&kv?.0).unwrap_or(from),
                None => from,
            }
        };
        for kv in self.tree.range(key(start)..key(head)) {
            let (k, v) = kv?;
            let whole = Bytes::copy_from_slice(&v);
            let Some(b) = decode_record(&k, &whole, Some(&whole)) else {
                continue;
            };
            for (i, entry) in b.entries.into_iter().enumerate() {
                let seq = b.seq + i as u64;
                if seq >= from {
                    out.push(Stored { seq, entry });
                }
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Up to `max` flushed records from the oldest, without payloads: what
    /// trimming looks at.
    pub fn oldest(&self, max: usize) -> Result<Vec<Batch>, sled::Error> {
        let head = self.head();
        let mut out = Vec::new();
        for kv in self.tree.range(key(self.first())..key(head)).take(max) {
            let (k, v) = kv?;
            if let Some(b) = decode_record(&k, &v, None) {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Removes every record below `head`, reading only their headers: what
    /// trimming does when no persistent session exists. Returns how many.
    pub fn trim_before(&self, head: u64, max: usize) -> Result<usize, sled::Error> {
        let mut batch = sled::Batch::default();
        let mut last = None;
        let mut n = 0;
        for kv in self.tree.range(key(self.first())..key(head)).take(max) {
            let (k, v) = kv?;
            if let Some(h) = record_header(&k, &v) {
                batch.remove(k);
                last = Some(h);
                n += 1;
            }
        }
        let Some((end, total, _)) = last else {
            return Ok(0);
        };
        self.finish_trim(batch, end, total)?;
        Ok(n)
    }

    /// Removes `records` (the oldest ones, in order) and records where
    /// trimming stopped, in one batch. Not flushed: a crash merely keeps them.
    pub fn trim(&self, records: &[Batch]) -> Result<(), sled::Error> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for r in records {
            batch.remove(&key(r.seq));
        }
        self.finish_trim(batch, last.end(), last.total)
    }

    /// Applies a trim's removals with the marker of where it stopped, and
    /// wakes a writer waiting for room.
    fn finish_trim(&self, mut batch: sled::Batch, end: u64, total: u64) -> Result<(), sled::Error> {
        let mut meta = Vec::with_capacity(16);
        meta.extend_from_slice(&end.to_be_bytes());
        meta.extend_from_slice(&total.to_be_bytes());
        batch.insert(META_KEY, meta);
        self.tree.apply_batch(batch)?;
        self.trimmed.fetch_max(total, Ordering::AcqRel);
        self.first.fetch_max(end, Ordering::AcqRel);
        let _guard = self.room.0.lock().unwrap_or_else(|e| e.into_inner());
        self.room.1.notify_all();
        Ok(())
    }
}

impl Writer {
    /// Assigns the next sequence numbers to `entries` and stages them, in
    /// records of about [`RECORD_BYTES`], for the batch's transaction.
    pub fn stage<'a>(&mut self, entries: impl IntoIterator<Item = &'a Entry>) -> Pending {
        let mut p = Pending::default();
        let mut total = self.outbox.written.load(Ordering::Acquire);
        let mut record = Vec::with_capacity(RECORD_BYTES + 1024);
        let mut retained = crate::journal::Ops::default();
        let mut first = self.next;
        let mut count: u32 = 0;
        let mut close = |record: &mut Vec<u8>, first: u64, count: u32, p: &mut Pending| {
            let bytes = (8 + record.len()) as u64;
            total += bytes;
            p.bytes += bytes;
            record[1..5].copy_from_slice(&count.to_be_bytes());
            record[5..RECORD_HEADER].copy_from_slice(&total.to_be_bytes());
            p.ops
                .insert(crate::journal::Tree::Outbox, &key(first), record);
            record.clear();
        };
        for e in entries {
            if e.retain {
                // MQTT: an empty retained message clears the topic's.
                let t = e.topic.as_bytes();
                if e.payload.is_empty() {
                    retained.remove(crate::journal::Tree::Retained, t);
                } else {
                    retained.insert(crate::journal::Tree::Retained, t, &e.encode());
                }
            }
            if record.is_empty() {
                record.push(VERSION);
                record.extend_from_slice(&[0; 4 + 8]);
            }
            record.extend_from_slice(&(e.size() as u32).to_be_bytes());
            e.encode_into(&mut record);
            count += 1;
            self.next += 1;
            if record.len() >= RECORD_BYTES {
                close(&mut record, first, count, &mut p);
                first = self.next;
                count = 0;
            }
        }
        if count > 0 {
            close(&mut record, first, count, &mut p);
        }
        p.ops.append(retained);
        if p.bytes > 0 {
            p.end = Some(self.next);
        }
        p
    }

    /// Counts a staged batch as written.
    pub fn written(&self, p: &Pending) {
        self.outbox.written.fetch_add(p.bytes, Ordering::AcqRel);
    }

    /// Waits while the log is at its size bound: the devices are held (no
    /// PUBACK) until persistent sessions read on or trimming frees room.
    pub fn wait_for_room(&self, stop: &dyn Fn() -> bool) {
        let o = &self.outbox;
        let mut guard = o.room.0.lock().unwrap_or_else(|e| e.into_inner());
        while o.bytes() >= o.max_bytes && !stop() {
            guard = o
                .room
                .1
                .wait_timeout(guard, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Stages and writes `entries` on their own, outside any window
    /// transaction, and lets readers see them (not flushed): for tools and
    /// tests that prepare a log.
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry>) -> Result<(), sled::Error> {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let p = self.stage(&entries);
        p.ops.apply(|t| match t {
            crate::journal::Tree::Retained => &self.outbox.retained,
            _ => &self.outbox.tree,
        })?;
        self.written(&p);
        if let Some(end) = p.end {
            self.outbox.flushed(end);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, n: u64) -> Entry {
        Entry {
            topic: topic.into(),
            payload: Bytes::from(format!("body {n}")),
            qos: 1,
            retain: n % 2 == 0,
            at_ms: 1000 + n,
            origin: (n % 3 == 0).then(|| Origin {
                device: "d1".into(),
                kid: 2,
                nonce: n,
            }),
            props: (n % 3 == 1).then(|| {
                Box::new(rumqttd::protocol::PublishProperties {
                    message_expiry_interval: Some(60),
                    user_properties: vec![("k".into(), format!("{n}"))],
                    ..Default::default()
                })
            }),
        }
    }

    fn write(w: &mut Writer, entries: Vec<Entry>) {
        w.append(entries).unwrap();
    }

    use crate::test_support::reopen;

    #[test]
    fn entries_round_trip_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<Entry> = (0..10).map(|n| entry("clean/d1/t", n)).collect();
        {
            let db = crate::database::Database::for_tests(dir.path());
            let (o, mut w) = Outbox::open(&db, u64::MAX).unwrap();
            write(&mut w, all[..4].to_vec());
            write(&mut w, all[4..].to_vec());
            let read = o.read(0, 100).unwrap();
            assert_eq!(read.len(), 10);
            assert!(read.iter().zip(&all).all(|(s, e)| &s.entry == e));
            assert_eq!(
                read.iter().map(|s| s.seq).collect::<Vec<_>>(),
                (0..10).collect::<Vec<_>>()
            );
            // From the middle of a record, and across records.
            let from = o.read(2, 1).unwrap();
            assert_eq!(from.iter().map(|s| s.seq).collect::<Vec<_>>(), [2, 3]);
            assert_eq!(o.read(3, 3).unwrap().len(), 7);
            let records = o.oldest(10).unwrap();
            assert_eq!(o.bytes(), records.iter().map(|b| b.size).sum::<u64>());
            db.flush().unwrap();
        }
        let db = reopen(dir.path());
        let (o, _w) = Outbox::open(&db, u64::MAX).unwrap();
        assert_eq!((o.first(), o.head()), (0, 10));
        assert_eq!(o.read(7, 100).unwrap().len(), 3);
        let sizes: u64 = o.oldest(10).unwrap().iter().map(|b| b.size).sum();
        assert_eq!(o.bytes(), sizes);
    }

    #[test]
    fn retained_messages_are_kept_per_topic_and_cleared_by_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let (o, mut w) = Outbox::open(&db, u64::MAX).unwrap();
        let mut e = entry("clean/a/t", 2);
        write(
            &mut w,
            vec![e.clone(), entry("clean/b/t", 4), entry("clean/c/t", 1)],
        );
        let topics = |f: &str| -> Vec<String> {
            o.retained(f)
                .unwrap()
                .into_iter()
                .map(|e| e.topic)
                .collect()
        };
        assert_eq!(topics("clean/#"), ["clean/a/t", "clean/b/t"]);
        assert_eq!(topics("clean/+/t"), ["clean/a/t", "clean/b/t"]);
        assert_eq!(topics("clean/b/#"), ["clean/b/t"]);
        assert_eq!(o.retained("clean/a/t").unwrap()[0].payload, e.payload);
        e.payload = Bytes::new();
        write(&mut w, vec![e]);
        assert_eq!(topics("#"), ["clean/b/t"]);
        assert_eq!(o.all_retained().count(), 1);
    }

    #[test]
    fn unflushed_entries_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let (o, mut w) = Outbox::open(&db, u64::MAX).unwrap();
        let p = w.stage(&[entry("a/b", 1)]);
        p.ops.apply(|_| o.tree()).unwrap();
        assert!(o.read(0, 10).unwrap().is_empty());
        o.flushed(p.end.unwrap());
        assert_eq!(o.read(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn trimming_to_empty_keeps_the_sequence_and_size_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::database::Database::for_tests(dir.path());
            let (o, mut w) = Outbox::open(&db, u64::MAX).unwrap();
            write(&mut w, (0..2).map(|n| entry("a/b", n)).collect());
            write(&mut w, (2..5).map(|n| entry("a/b", n)).collect());
            let all = o.oldest(10).unwrap();
            o.trim(&all[..1]).unwrap();
            assert_eq!(o.first(), 2);
            assert_eq!(o.bytes(), all[1].size);
            o.trim(&all[1..]).unwrap();
            assert_eq!(o.bytes(), 0);
            db.flush().unwrap();
        }
        let db = reopen(dir.path());
        let (o, mut w) = Outbox::open(&db, u64::MAX).unwrap();
        assert_eq!((o.first(), o.head(), o.bytes()), (5, 5, 0));
        write(&mut w, vec![entry("a/b", 9)]);
        let read = o.read(0, 10).unwrap();
        assert_eq!(read[0].seq, 5);
        assert_eq!(o.bytes(), o.oldest(1).unwrap()[0].size);
    }

    #[test]
    fn a_full_log_holds_the_writer_until_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let (o, mut w) = Outbox::open(&db, 1).unwrap();
        write(&mut w, vec![entry("a/b", 1)]);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = o.clone();
        assert!(reader.bytes() >= reader.max_bytes());
        let t = std::thread::spawn(move || {
            w.wait_for_room(&|| false);
            tx.send(()).unwrap();
        });
        let all = reader.oldest(10).unwrap();
        reader.trim(&all).unwrap();
        rx.recv().unwrap();
        t.join().unwrap();
    }
}
