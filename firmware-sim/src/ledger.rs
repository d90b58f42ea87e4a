//! What was sent and what came back: the bookkeeping that turns a load run
//! into loss, duplicate and latency figures.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Send times of one device's messages. Nonces are consecutive from `base`,
/// so a nonce indexes straight into the vectors: no hashing on the hot path.
struct SentLog {
    base: u64,
    sent_us: Vec<u64>,
    seen: Vec<bool>,
}

/// The outcome of matching one clean message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    First {
        latency: Duration,
    },
    Duplicate,
    /// One of our devices, but a nonce we never sent.
    Unexpected,
    /// A device that is not part of this run (other traffic on the gateway).
    Foreign,
}

pub struct Ledger {
    index: HashMap<String, usize>,
    logs: Vec<Mutex<SentLog>>,
    epoch: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not hide the figures gathered so far.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ledger {
    /// `devices` are (id, first nonce) in device-index order.
    pub fn new(devices: &[(String, u64)], epoch: Instant) -> Ledger {
        Ledger {
            index: devices
                .iter()
                .enumerate()
                .map(|(i, (id, _))| (id.clone(), i))
                .collect(),
            logs: devices
                .iter()
                .map(|(_, base)| {
                    Mutex::new(SentLog {
                        base: *base,
                        sent_us: Vec::new(),
                        seen: Vec::new(),
                    })
                })
                .collect(),
            epoch,
        }
    }

    pub fn knows(&self, device_id: &str) -> bool {
        self.index.contains_key(device_id)
    }

    /// Records a send before it is handed to MQTT, so that a delivery racing
    /// ahead of the bookkeeping can never look unexpected. Only the next
    /// consecutive nonce is recorded.
    pub fn record(&self, device: usize, nonce: u64, at: Instant) {
        let Some(log) = self.logs.get(device) else {
            return;
        };
        let mut log = lock(log);
        if nonce == log.base + log.sent_us.len() as u64 {
            let us = at.saturating_duration_since(self.epoch).as_micros() as u64;
            log.sent_us.push(us);
            log.seen.push(false);
        }
    }

    /// Takes back the last record when the publish never happened.
    pub fn unrecord(&self, device: usize, nonce: u64) {
        let Some(log) = self.logs.get(device) else {
            return;
        };
        let mut log = lock(log);
        if !log.sent_us.is_empty() && nonce == log.base + log.sent_us.len() as u64 - 1 {
            log.sent_us.pop();
            log.seen.pop();
        }
    }

    pub fn deliver(&self, device_id: &str, nonce: u64, at: Instant) -> Delivery {
        let Some(&i) = self.index.get(device_id) else {
            return Delivery::Foreign;
        };
        let mut log = lock(&self.logs[i]);
        let Some(k) = nonce
            .checked_sub(log.base)
            .and_then(|k| usize::try_from(k).ok())
            .filter(|k| *k < log.sent_us.len())
        else {
            return Delivery::Unexpected;
        };
        if log.seen[k] {
            return Delivery::Duplicate;
        }
        log.seen[k] = true;
        let now_us = at.saturating_duration_since(self.epoch).as_micros() as u64;
        Delivery::First {
            latency: Duration::from_micros(now_us.saturating_sub(log.sent_us[k])),
        }
    }
}

/// Counters shared by publishers, device event loops and the matcher.
pub struct Tally {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub unexpected: AtomicU64,
    pub foreign: AtomicU64,
    pub rejected: AtomicU64,
    pub reconnects: AtomicU64,
    pub publish_errors: AtomicU64,
    /// Microseconds since the epoch of the last clean message or event of
    /// ours: the drain stops when the gateway has gone quiet.
    pub last_activity_us: AtomicU64,
    by_reason: Mutex<BTreeMap<String, u64>>,
    latency_us: Mutex<Latencies>,
    epoch: Instant,
}

/// Every first delivery's latency, as one histogram and as a timeline.
struct Latencies {
    all: Histogram<u64>,
    /// Per [`TIMELINE_STEP`] of delivery time since the epoch: deliveries
    /// and the largest latency. Where a tail comes from is a question of
    /// when: a stall shows as a run of slow steps, noise as scattered ones.
    timeline: Vec<(u64, u64)>,
}

/// The timeline's resolution.
pub const TIMELINE_STEP: Duration = Duration::from_millis(10);

impl Tally {
    pub fn new(epoch: Instant) -> Result<Tally, String> {
        // 1 µs to one hour, three significant digits.
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map_err(|e| format!("latency histogram: {e}"))?;
        Ok(Tally {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            last_activity_us: AtomicU64::new(0),
            by_reason: Mutex::new(BTreeMap::new()),
            latency_us: Mutex::new(Latencies {
                all: hist,
                timeline: Vec::new(),
            }),
            epoch,
        })
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn touch(&self, at: Instant) {
        let us = at.saturating_duration_since(self.epoch).as_micros() as u64;
        self.last_activity_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Time since the last message or event of ours (or since the epoch).
    pub fn idle_for(&self, now: Instant) -> Duration {
        let last = Duration::from_micros(self.last_activity_us.load(Ordering::Relaxed));
        now.saturating_duration_since(self.epoch)
            .saturating_sub(last)
    }

    pub fn delivery(&self, d: Delivery, at: Instant) {
        match d {
            Delivery::First { latency } => {
                Tally::bump(&self.delivered);
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let step = at.saturating_duration_since(self.epoch).as_micros()
                    / TIMELINE_STEP.as_micros();
                let step = usize::try_from(step).unwrap_or(usize::MAX);
                let mut l = lock(&self.latency_us);
                l.all.saturating_record(us);
                // A delivery hours into the run is not worth gigabytes.
                if step < 1 << 24 {
                    if l.timeline.len() <= step {
                        l.timeline.resize(step + 1, (0, 0));
                    }
                    let slot = &mut l.timeline[step];
                    slot.0 += 1;
                    slot.1 = slot.1.max(us);
                }
            }
            Delivery::Duplicate => Tally::bump(&self.duplicates),
            Delivery::Unexpected => Tally::bump(&self.unexpected),
            Delivery::Foreign => {
                Tally::bump(&self.foreign);
                return;
            }
        }
        self.touch(at);
    }

    pub fn reject(&self, reason: &str, at: Instant) {
        Tally::bump(&self.rejected);
        *lock(&self.by_reason).entry(reason.to_owned()).or_insert(0) += 1;
        self.touch(at);
    }

    pub fn rejected_by_reason(&self) -> BTreeMap<String, u64> {
        lock(&self.by_reason).clone()
    }

    pub fn latency(&self) -> Histogram<u64> {
        lock(&self.latency_us).all.clone()
    }

    /// Per [`TIMELINE_STEP`] since the epoch: deliveries and the largest
    /// latency in microseconds.
    pub fn timeline(&self) -> Vec<(u64, u64)> {
        lock(&self.latency_us).timeline.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_first_duplicate_unexpected_foreign() {
        let t0 = Instant::now();
        let l = Ledger::new(&[("a".into(), 1000), ("b".into(), 5000)], t0);
        l.record(0, 1000, t0);
        l.record(0, 1001, t0 + Duration::from_millis(1));
        l.record(0, 1005, t0); // not consecutive: ignored
        let at = t0 + Duration::from_millis(4);
        assert_eq!(
            l.deliver("a", 1001, at),
            Delivery::First {
                latency: Duration::from_millis(3)
            }
        );
        assert_eq!(l.deliver("a", 1001, at), Delivery::Duplicate);
        assert_eq!(l.deliver("a", 1002, at), Delivery::Unexpected);
        assert_eq!(l.deliver("a", 999, at), Delivery::Unexpected);
        assert_eq!(l.deliver("b", 5000, at), Delivery::Unexpected);
        assert_eq!(l.deliver("zz", 1000, at), Delivery::Foreign);
        assert!(matches!(l.deliver("a", 1000, at), Delivery::First { .. }));
    }

    #[test]
    fn unrecord_takes_back_only_the_last() {
        let t0 = Instant::now();
        let l = Ledger::new(&[("a".into(), 10)], t0);
        l.record(0, 10, t0);
        l.record(0, 11, t0);
        l.unrecord(0, 10); // not the last: kept
        l.unrecord(0, 11);
        assert_eq!(l.deliver("a", 11, t0), Delivery::Unexpected);
        assert!(matches!(l.deliver("a", 10, t0), Delivery::First { .. }));
        l.record(0, 11, t0);
        assert!(matches!(l.deliver("a", 11, t0), Delivery::First { .. }));
    }

    #[test]
    fn tally_counts_and_ignores_foreign_for_activity() {
        let t0 = Instant::now();
        let t = Tally::new(t0).expect("tally");
        t.delivery(Delivery::Foreign, t0 + Duration::from_secs(5));
        assert_eq!(
            t.idle_for(t0 + Duration::from_secs(6)),
            Duration::from_secs(6)
        );
        t.delivery(
            Delivery::First {
                latency: Duration::from_millis(2),
            },
            t0 + Duration::from_secs(5),
        );
        t.reject("bad_mac", t0);
        t.reject("bad_mac", t0);
        assert_eq!(
            t.idle_for(t0 + Duration::from_secs(6)),
            Duration::from_secs(1)
        );
        assert_eq!(Tally::get(&t.delivered), 1);
        assert_eq!(Tally::get(&t.foreign), 1);
        assert_eq!(t.rejected_by_reason().get("bad_mac"), Some(&2));
        assert_eq!(t.latency().len(), 1);
    }

    #[test]
    fn the_timeline_keeps_each_steps_count_and_worst_latency() {
        let t0 = Instant::now();
        let t = Tally::new(t0).expect("tally");
        let first = |ms| Delivery::First {
            latency: Duration::from_millis(ms),
        };
        t.delivery(first(2), t0 + Duration::from_millis(3));
        t.delivery(first(7), t0 + Duration::from_millis(9));
        t.delivery(first(1), t0 + Duration::from_millis(31));
        t.delivery(Delivery::Duplicate, t0 + Duration::from_millis(15));
        assert_eq!(t.timeline(), [(2, 7_000), (0, 0), (0, 0), (1, 1_000)]);
    }
}
