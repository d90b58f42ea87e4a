//! The durable outbox: every message the gateway publishes (clean plaintext,
//! unverified payloads, security events, what accounts publish), as an
//! ordered log in sled, written in the same transaction as the replay
//! windows it advances and flushed before any PUBACK.
//!
//! Why a log and not only the router: rumqttd keeps its state in memory, so
//! a kill -9 between a flush and the hand-off would lose acknowledged
//! messages, and a persistent subscriber would lose its backlog on any
//! restart. Persistent sessions (`crate::sessions`) read this log from
//! their own durable position; the router keeps serving clean sessions.
//!
//! Layout: keys are sequence numbers (8 bytes, big-endian), so the tree's
//! order is the log's. The empty key holds where trimming stopped, so the
//! sequence never goes back even when the log is empty. Each entry records
//! the running byte total, so the log's size is known from its first and
//! last entries at startup, without a scan.

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub device: String,
    pub kid: u32,
    pub nonce: u64,
}

const VERSION: u8 = 1;
const META_KEY: &[u8] = b"";
/// Fixed part of an encoded entry: version, flags, time, running total.
const HEADER: usize = 1 + 1 + 8 + 8;

impl Entry {
    fn encode(&self, total: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + 2 + self.topic.len() + 32 + self.payload.len());
        v.push(VERSION);
        v.push(u8::from(self.retain) | (self.qos.min(2) << 1));
        v.extend_from_slice(&self.at_ms.to_be_bytes());
        v.extend_from_slice(&total.to_be_bytes());
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
        v.extend_from_slice(&self.payload);
        v
    }

    /// The size an entry adds to the log: its key and its value.
    fn size(&self) -> u64 {
        let origin = self.origin.as_ref().map_or(0, |o| 1 + o.device.len() + 12);
        (8 + HEADER + 2 + self.topic.len() + 1 + origin + self.payload.len()) as u64
    }
}

/// An entry read back, with where it stands in the log.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub entry: Entry,
    /// Bytes of the log up to and including this entry, since its creation.
    pub total: u64,
    pub size: u64,
}

fn decode(seq: u64, key_len: usize, v: &[u8], with_payload: bool) -> Option<Stored> {
    let mut r = Reader(v);
    if r.u8()? != VERSION {
        return None;
    }
    let flags = r.u8()?;
    let at_ms = r.u64()?;
    let total = r.u64()?;
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
    Some(Stored {
        seq,
        total,
        size: (key_len + v.len()) as u64,
        entry: Entry {
            topic,
            payload: if with_payload {
                Bytes::copy_from_slice(r.0)
            } else {
                Bytes::new()
            },
            qos: (flags >> 1) & 3,
            retain: flags & 1 == 1,
            at_ms,
            origin,
        },
    })
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
    /// The lowest sequence number still kept (== head when empty).
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

/// A batch's entries, staged with the windows in one transaction.
#[derive(Default)]
pub struct Pending {
    pub(crate) batch: sled::Batch,
    /// Retained messages set (or cleared, by an empty payload).
    pub(crate) retained: sled::Batch,
    /// The sequence number after the batch's last entry.
    pub(crate) end: Option<u64>,
    bytes: u64,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.end.is_none()
    }
}

impl Outbox {
    pub const TREE: &'static str = "outbox";
    pub const RETAINED_TREE: &'static str = "retained";

    /// Opens the log: reads its first and last entries and where trimming
    /// stopped, never the entries between.
    pub fn open(db: &sled::Db, max_bytes: u64) -> Result<(Arc<Outbox>, Writer), sled::Error> {
        let tree = db.open_tree(Self::TREE)?;
        let retained = db.open_tree(Self::RETAINED_TREE)?;
        let (trimmed_to, trimmed_total) = match tree.get(META_KEY)? {
            Some(v) if v.len() == 16 => (
                u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(v[8..].try_into().expect("8 bytes")),
            ),
            _ => (0, 0),
        };
        let first = tree
            .range(key(0)..)
            .next()
            .transpose()?
            .and_then(|(k, v)| decode(seq_of(&k)?, k.len(), &v, false));
        let last = tree
            .last()?
            .and_then(|(k, v)| decode(seq_of(&k)?, k.len(), &v, false));
        let next = last
            .as_ref()
            .map_or(trimmed_to, |l| (l.seq + 1).max(trimmed_to));
        let written = last.as_ref().map_or(trimmed_total, |l| l.total);
        let trimmed = first.as_ref().map_or(written, |f| f.total - f.size);
        let outbox = Arc::new(Outbox {
            tree,
            retained,
            head: watch::Sender::new(next),
            written: AtomicU64::new(written),
            trimmed: AtomicU64::new(trimmed),
            first: AtomicU64::new(first.map_or(next, |f| f.seq)),
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
            if let Some(s) = decode(0, 0, &v, true) {
                out.push(s.entry);
            }
        }
        Ok(out)
    }

    /// Every retained message, to give the router back after a restart.
    pub fn all_retained(&self) -> impl Iterator<Item = Entry> + '_ {
        self.retained
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| decode(0, 0, &v, true).map(|s| s.entry))
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

    /// Up to `max` flushed entries from `from` on, in order.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<Stored>, sled::Error> {
        self.scan(from, max, true)
    }

    /// As `read`, without the payloads: what trimming looks at.
    pub fn read_headers(&self, from: u64, max: usize) -> Result<Vec<Stored>, sled::Error> {
        self.scan(from, max, false)
    }

    fn scan(&self, from: u64, max: usize, with_payload: bool) -> Result<Vec<Stored>, sled::Error> {
        let head = self.head();
        let mut out = Vec::new();
        if from >= head {
            return Ok(out);
        }
        for kv in self.tree.range(key(from)..key(head)).take(max) {
            let (k, v) = kv?;
            if let Some(s) = seq_of(&k).and_then(|seq| decode(seq, k.len(), &v, with_payload)) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Removes `entries` (the oldest ones, in order) and records where
    /// trimming stopped, in one batch. Not flushed: a crash merely keeps them.
    pub fn trim(&self, entries: &[Stored]) -> Result<(), sled::Error> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for s in entries {
            batch.remove(&key(s.seq));
        }
        let mut meta = Vec::with_capacity(16);
        meta.extend_from_slice(&(last.seq + 1).to_be_bytes());
        meta.extend_from_slice(&last.total.to_be_bytes());
        batch.insert(META_KEY, meta);
        self.tree.apply_batch(batch)?;
        self.trimmed.fetch_max(last.total, Ordering::AcqRel);
        self.first.fetch_max(last.seq + 1, Ordering::AcqRel);
        let _guard = self.room.0.lock().unwrap_or_else(|e| e.into_inner());
        self.room.1.notify_all();
        Ok(())
    }
}

impl Writer {
    /// Assigns the next sequence numbers to `entries` and stages them for
    /// the batch's transaction.
    pub fn stage(&mut self, entries: impl IntoIterator<Item = Entry>) -> Pending {
        let mut p = Pending::default();
        let mut total = self.outbox.written.load(Ordering::Acquire);
        for e in entries {
            let size = e.size();
            total += size;
            p.bytes += size;
            let encoded = e.encode(total);
            if e.retain {
                // MQTT: an empty retained message clears the topic's.
                match e.payload.is_empty() {
                    true => p.retained.remove(e.topic.as_bytes()),
                    false => p.retained.insert(e.topic.as_bytes(), encoded.clone()),
                }
            }
            p.batch.insert(&key(self.next), encoded);
            self.next += 1;
            p.end = Some(self.next);
        }
        p
    }

    /// Counts a staged batch as written (after its transaction applied).
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
        let p = self.stage(entries);
        self.outbox.tree.apply_batch(p.batch.clone())?;
        self.outbox.retained.apply_batch(p.retained.clone())?;
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
        }
    }

    fn write(w: &mut Writer, entries: Vec<Entry>) {
        w.append(entries).unwrap();
    }

    #[test]
    fn entries_round_trip_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<Entry> = (0..10).map(|n| entry("clean/d1/t", n)).collect();
        {
            let db = sled::open(dir.path()).unwrap();
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
            assert_eq!(o.bytes(), read.iter().map(|s| s.size).sum::<u64>());
            db.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let (o, _w) = Outbox::open(&db, u64::MAX).unwrap();
        assert_eq!((o.first(), o.head()), (0, 10));
        assert_eq!(o.read(7, 100).unwrap().len(), 3);
        let sizes: u64 = o.read(0, 100).unwrap().iter().map(|s| s.size).sum();
        assert_eq!(o.bytes(), sizes);
    }

    #[test]
    fn retained_messages_are_kept_per_topic_and_cleared_by_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
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
        let db = sled::open(dir.path()).unwrap();
        let (o, mut w) = Outbox::open(&db, u64::MAX).unwrap();
        let p = w.stage(vec![entry("a/b", 1)]);
        o.tree().apply_batch(p.batch.clone()).unwrap();
        assert!(o.read(0, 10).unwrap().is_empty());
        o.flushed(p.end.unwrap());
        assert_eq!(o.read(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn trimming_to_empty_keeps_the_sequence_and_size_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let (o, mut w) = Outbox::open(&db, u64::MAX).unwrap();
            write(&mut w, (0..5).map(|n| entry("a/b", n)).collect());
            let all = o.read(0, 10).unwrap();
            o.trim(&all[..2]).unwrap();
            assert_eq!(o.first(), 2);
            assert_eq!(o.bytes(), all[2..].iter().map(|s| s.size).sum::<u64>());
            o.trim(&all[2..]).unwrap();
            assert_eq!(o.bytes(), 0);
            db.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let (o, mut w) = Outbox::open(&db, u64::MAX).unwrap();
        assert_eq!((o.first(), o.head(), o.bytes()), (5, 5, 0));
        write(&mut w, vec![entry("a/b", 9)]);
        let read = o.read(0, 10).unwrap();
        assert_eq!(read[0].seq, 5);
        assert_eq!(o.bytes(), read[0].size);
    }

    #[test]
    fn a_full_log_holds_the_writer_until_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let (o, mut w) = Outbox::open(&db, 1).unwrap();
        write(&mut w, vec![entry("a/b", 1)]);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = o.clone();
        assert!(reader.bytes() >= reader.max_bytes());
        let t = std::thread::spawn(move || {
            w.wait_for_room(&|| false);
            tx.send(()).unwrap();
        });
        let all = reader.read(0, 10).unwrap();
        reader.trim(&all).unwrap();
        rx.recv().unwrap();
        t.join().unwrap();
    }
}
