//! How far each subscriber account is behind, and what that costs: devices
//! held (`block`) or messages dropped and counted (`drop`).
//!
//! rumqttd keeps each subscription filter's messages in an in-memory log of
//! `max_segment_count` segments and drops the oldest segment when the log is
//! full, however far behind a reader still is. The reader jumps ahead and
//! nobody is told (a WARN line, and an alert whose count is always 0). Two
//! things here make that explicit:
//!
//! - **Counting.** Every message the router forwards carries its absolute
//!   offset in the filter's log, so a session sees a jump as a gap between
//!   consecutive offsets: exactly the messages it missed. Gaps go to
//!   `sealgate_dropped_total{reason="subscriber_lagged"}`.
//! - **Holding.** To see that a reader is behind *before* its messages rotate
//!   away, everything that publishes into the router counts what it hands over
//!   per tracked filter ([`Lag::published`]), and a monitor compares that with
//!   each reader's position every [`TICK`]. While a `block` reader is more
//!   than `limits.subscriber_max_lag` messages behind, every device's sealed
//!   publishes wait in [`Lag::admitted`]: the device's socket is not read and
//!   its PUBACK not sent, so nothing acknowledged can be lost to that reader.
//!
//! Only `block` subscriber accounts hold the fleet, and each for at most
//! `limits.max_hold_secs` per episode (`hold`): past that it is treated as
//! `drop`, and what it then misses is counted as `hold_exceeded`. It is not
//! disconnected: the loss is counted exactly from offsets while it stays
//! connected.
//!
//! Only clean sessions are tracked here: persistent sessions read the
//! outbox (`crate::sessions`), whose own bound holds the devices.
//!
//! Our count starts when a filter is first tracked, the router's offsets when
//! it first saw the filter, so the two differ by a constant (the skew). It is
//! learnt as the smallest `published - offset - 1` any reader has seen: never
//! below the true skew, and equal to it once a reader of the filter has been
//! caught up. A lag is therefore never overstated by more than what is still
//! on its way into the router, which drains while devices are held, so a held
//! fleet is always released once the reader catches up.
//!
//! A filter is tracked while a session reads it; after that its head is
//! freed, and a later head for it learns its skew again.
//!
//! - `heads`: per-filter counts and the trie that matches topics to them.
//! - `cursor`: one session's positions.
//! - `reader`: one session as the monitor sees it.
//! - `hold`: how long each account has held the devices.
//! - here: the facade the front door and republisher use, and the monitor.

mod cursor;
mod heads;
mod hold;
mod reader;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use cursor::Cursor;
use heads::{Head, Trie};
use hold::{Holds, Seen};
use reader::Reader;

use crate::metrics::Metrics;

/// How often the monitor compares positions with what was published. At
/// 35k msgs/s a tick is under a thousand messages, far below any sane lag
/// bound.
pub const TICK: Duration = Duration::from_millis(20);

/// How often the monitor looks while no `block` reader is connected: then
/// nothing waits on it but the `subscriber_lag` gauge and the clean-up of
/// closed readers, and an idle gateway need not wake 50 times a second.
pub const IDLE_TICK: Duration = Duration::from_secs(1);

/// Holds are logged at most this often.
const HOLD_LOG_EVERY: Duration = Duration::from_secs(10);

/// Subscriber positions and the device hold, shared by the whole gateway.
pub struct Lag {
    /// Every tracked filter, found by the topics it matches. A head is here
    /// while a session reads its filter.
    heads: RwLock<Trie<Arc<Head>>>,
    readers: Mutex<Vec<Arc<Reader>>>,
    /// `block` readers over the bound; devices wait while it is not 0.
    holding: AtomicUsize,
    released: Notify,
    /// Wakes a monitor on [`IDLE_TICK`] when a `block` reader arrives.
    block_joined: Notify,
    max_lag: u64,
    holds: Mutex<Holds>,
    metrics: Arc<Metrics>,
    /// When a hold was last logged, and holds since.
    hold_log: Mutex<(Option<tokio::time::Instant>, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lag {
    /// `max_hold`: the longest one account may hold the devices per episode
    /// (`limits.max_hold_secs`).
    pub fn new(max_lag: u64, max_hold: Duration, metrics: Arc<Metrics>) -> Arc<Lag> {
        Arc::new(Lag {
            heads: RwLock::default(),
            readers: Mutex::default(),
            holding: AtomicUsize::new(0),
            released: Notify::new(),
            block_joined: Notify::new(),
            max_lag,
            holds: Mutex::new(Holds::new(max_hold)),
            metrics,
            hold_log: Mutex::default(),
        })
    }

    /// Counts messages about to be handed to the router. Everything that
    /// publishes into it calls this; with no subscriber account connected
    /// it costs one uncontended read lock. A topic that is not UTF-8 is not
    /// counted: the router appends it nowhere.
    pub fn published<'a>(&self, topics: impl IntoIterator<Item = &'a [u8]>) {
        let heads = self.heads.read().unwrap_or_else(|e| e.into_inner());
        if heads.is_empty() {
            return;
        }
        for topic in topics {
            if std::str::from_utf8(topic).is_err() {
                continue;
            }
            heads.for_each_match(topic, |h| {
                h.published.fetch_add(1, Ordering::Relaxed);
            });
        }
    }

    /// Returns once no `block` subscriber is too far behind. Device sessions
    /// await this before a sealed publish goes to the verifier.
    pub async fn admitted(&self) {
        loop {
            let released = self.released.notified();
            if self.holding.load(Ordering::Acquire) == 0 {
                return;
            }
            released.await;
        }
    }

    /// Starts tracking a clean subscriber session of account `name`.
    pub fn reader(self: &Arc<Self>, name: &str, block: bool) -> Cursor {
        let demoted = block && lock(&self.holds).exceeded(name);
        let reader = Arc::new(Reader::new(name, block, HashMap::new(), demoted));
        lock(&self.readers).push(reader.clone());
        if block {
            self.block_joined.notify_one();
        }
        Cursor {
            lag: self.clone(),
            reader,
            index: Trie::default(),
        }
    }

    /// The tracked head for `filter`, made now if it is new.
    fn head(&self, filter: &str) -> Arc<Head> {
        let mut heads = self.heads.write().unwrap_or_else(|e| e.into_inner());
        heads
            .get_or_insert_with(filter, || Arc::new(Head::new(filter)))
            .clone()
    }

    /// Stops tracking those of `filters` that nobody holds a head of any
    /// more. Callers drop their own references first.
    fn forget(&self, filters: impl IntoIterator<Item = String>) {
        let mut filters = filters.into_iter().peekable();
        if filters.peek().is_none() {
            return;
        }
        let mut heads = self.heads.write().unwrap_or_else(|e| e.into_inner());
        for f in filters {
            // The trie's own reference is the last: no session reads it.
            // New references are only made under this
            // lock, so none can appear meanwhile.
            if heads.get(&f).is_some_and(|h| Arc::strong_count(h) == 1) {
                heads.remove(&f);
            }
        }
    }

    /// Compares every reader's position with what was published, every
    /// [`TICK`] while a `block` reader is connected (every [`IDLE_TICK`]
    /// otherwise, and at once when one arrives), and holds or releases the
    /// devices. At `stop` it releases them for good, so shutdown never
    /// waits on a subscriber.
    pub async fn monitor(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let blocking = lock(&self.readers).iter().any(|r| r.block);
            let next = tokio::time::sleep(if blocking { TICK } else { IDLE_TICK });
            tokio::select! {
                _ = next => self.check(),
                _ = self.block_joined.notified() => self.check(),
                _ = stop.cancelled() => break,
            }
        }
        for r in lock(&self.readers).iter() {
            r.holding.store(false, Ordering::Relaxed);
        }
        self.holding.store(0, Ordering::Release);
        self.metrics.devices_held.set(0);
        self.released.notify_waiters();
    }

    /// Logs a hold, at most once per [`HOLD_LOG_EVERY`]: a subscriber that
    /// is simply slower than the fleet is held several times a second.
    fn log_hold(&self, name: &str, behind: u64, now: tokio::time::Instant) {
        let mut log = lock(&self.hold_log);
        log.1 += 1;
        if log
            .0
            .is_some_and(|last| now.duration_since(last) < HOLD_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            subscriber = %name,
            behind,
            limit = self.max_lag,
            holds = log.1,
            "Holding device publishes: a block-policy subscriber is too far behind."
        );
        *log = (Some(now), 0);
    }

    /// One monitor pass. The monitor alone changes `holding`, so a reader
    /// that closes while over the bound is released here, on the next pass.
    fn check(&self) {
        self.check_at(tokio::time::Instant::now());
    }

    fn check_at(&self, now: tokio::time::Instant) {
        let mut readers = lock(&self.readers);
        let mut holds = lock(&self.holds);
        let mut furthest = 0;
        let mut released = false;
        let mut seen: HashMap<&str, Seen> = HashMap::new();
        // Read once per pass: a reader is let go only in a pass that saw it
        // closed, and so released it.
        let mut closed = Vec::with_capacity(readers.len());
        for r in readers.iter() {
            let gone = r.closed.load(Ordering::Acquire);
            closed.push(gone);
            let behind = if gone { 0 } else { r.behind() };
            furthest = furthest.max(behind);
            let behind = if behind > 0 && r.idle_too_long(now) {
                r.resync();
                0
            } else {
                behind
            };
            if !r.block {
                continue;
            }
            let mark = match r.holding.load(Ordering::Relaxed) {
                true => self.max_lag / 2,
                false => self.max_lag,
            };
            let hold = !gone && !holds.exceeded(&r.name) && behind > mark;
            released |= self.set_holding(r, hold, behind, now);
            let s = seen.entry(r.name.as_str()).or_default();
            s.holding |= hold;
            s.over |= behind > self.max_lag / 2;
        }
        for (name, held) in holds.update(&seen, now) {
            tracing::warn!(
                subscriber = %name,
                held_secs = held.as_secs(),
                "A block-policy subscriber held device publishes for limits.max_hold_secs: it is treated as drop until it keeps up, and what it misses is counted as hold_exceeded."
            );
            for r in readers.iter().filter(|r| r.name == name) {
                released |= self.set_holding(r, false, 0, now);
            }
        }
        for r in readers.iter().filter(|r| r.block) {
            r.demoted.store(holds.exceeded(&r.name), Ordering::Relaxed);
        }
        drop(holds);
        let mut gone = closed.into_iter();
        readers.retain(|_| !gone.next().unwrap_or(false));
        drop(readers);
        self.metrics.subscriber_lag.set(furthest as i64);
        if released {
            self.released.notify_waiters();
        }
    }

    /// Makes `r` hold the devices or not; true when that released them.
    fn set_holding(&self, r: &Reader, hold: bool, behind: u64, now: tokio::time::Instant) -> bool {
        if r.holding.swap(hold, Ordering::Relaxed) == hold {
            return false;
        }
        if hold {
            if self.holding.fetch_add(1, Ordering::AcqRel) == 0 {
                self.metrics.devices_held.set(1);
            }
            self.log_hold(&r.name, behind, now);
            return false;
        }
        tracing::debug!(subscriber = %r.name, behind, "Released device publishes.");
        if self.holding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.metrics.devices_held.set(0);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::reader::RESYNC_AFTER;
    use super::*;
    use crate::events::dropped;

    const MAX_HOLD: Duration = Duration::from_secs(10);

    pub(super) fn lag() -> Arc<Lag> {
        Lag::new(10, MAX_HOLD, Arc::new(Metrics::new()))
    }

    /// Whether `fut` would wait, polled once.
    fn pending(fut: impl std::future::Future) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::pin!(fut).poll(&mut cx).is_pending()
    }

    /// A reader of `clean/#` that was handed offset `at`, with `published`
    /// messages counted for the filter by then.
    fn reader_at(lag: &Arc<Lag>, block: bool, published: u64, at: u64) -> Cursor {
        let mut c = lag.reader("r", block);
        c.subscribed(["clean/#"]);
        publish(lag, published);
        c.forwarded(b"clean/a/t", (0, at));
        c
    }

    fn publish(lag: &Lag, n: u64) {
        for _ in 0..n {
            lag.published([&b"clean/a/t"[..]]);
        }
    }

    pub(super) fn dropped(lag: &Lag, reason: &str) -> u64 {
        let text = lag.metrics.encode();
        let sample = format!("sealgate_dropped_total{{reason=\"{reason}\"}}");
        let line = text
            .lines()
            .find(|l| l.starts_with(&sample))
            .expect("metric present");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    pub(super) fn dropped_lagged(lag: &Lag) -> u64 {
        dropped(lag, dropped::SUBSCRIBER_LAGGED)
    }

    #[test]
    fn the_lag_is_what_was_published_after_the_readers_position() {
        let lag = lag();
        // The router's log already held 100 messages when we began counting.
        let mut c = reader_at(&lag, true, 1, 100);
        assert_eq!(c.behind(), 0);
        for _ in 0..25 {
            lag.published([&b"clean/b/t"[..], &b"other/x"[..]]);
        }
        assert_eq!(c.behind(), 25);
        c.forwarded(b"clean/b/t", (0, 101));
        assert_eq!(c.behind(), 24);
    }

    #[tokio::test]
    async fn a_block_reader_over_the_bound_holds_devices_until_half() {
        let lag = lag();
        let mut c = reader_at(&lag, true, 1, 0);
        publish(&lag, 11);
        lag.check();
        assert!(
            pending(lag.admitted()),
            "devices wait while the reader is 11 behind"
        );
        for at in 1..=6 {
            c.forwarded(b"clean/a/t", (0, at));
        }
        lag.check();
        assert_eq!(c.behind(), 5);
        lag.admitted().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_monitor_idles_until_a_block_reader_arrives_then_ticks() {
        let lag = lag();
        let stop = CancellationToken::new();
        let monitor = tokio::spawn(lag.clone().monitor(stop.clone()));
        let drop_reader = reader_at(&lag, false, 1, 0);
        publish(&lag, 20);
        // Mid-way through the monitor's idle wait.
        tokio::time::sleep(IDLE_TICK / 2).await;
        let _c = reader_at(&lag, true, 0, 0);
        tokio::time::sleep(TICK * 2).await;
        assert!(
            pending(lag.admitted()),
            "a block reader 20 behind is seen within ticks, not at the idle pace"
        );
        drop(drop_reader);
        stop.cancel();
        monitor.await.unwrap();
        lag.admitted().await;
    }

    #[test]
    fn a_closed_holding_reader_releases_the_devices() {
        let lag = lag();
        let c = reader_at(&lag, true, 1, 0);
        publish(&lag, 20);
        lag.check();
        assert_eq!(lag.holding.load(Ordering::Relaxed), 1);
        drop(c);
        lag.check();
        assert_eq!(lag.holding.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_idle_reader_the_estimate_calls_behind_is_resynchronised() {
        let lag = lag();
        let c = reader_at(&lag, true, 1, 0);
        // Counted, but the router never appended them (the estimate drifts).
        publish(&lag, 20);
        let t0 = tokio::time::Instant::now();
        c.set_idle(false);
        lag.check_at(t0);
        lag.check_at(t0 + RESYNC_AFTER * 2);
        assert_eq!(
            lag.holding.load(Ordering::Relaxed),
            1,
            "busy: not resynchronised"
        );
        c.set_idle(true);
        lag.check_at(t0 + RESYNC_AFTER * 3);
        lag.check_at(t0 + RESYNC_AFTER * 5);
        assert_eq!(c.behind(), 0);
        assert_eq!(lag.holding.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn published_topics_are_counted_for_every_filter_they_match() {
        let lag = lag();
        let filters = [
            "clean/#",
            "clean/+/t",
            "clean/d1/t",
            "#",
            "+/d2/#",
            "sealgate/events/#",
        ];
        let mut c = lag.reader("dash", false);
        c.subscribed(filters);
        lag.published([
            &b"clean/d1/t"[..],
            &b"clean/d2/x"[..],
            &b"a/d2/b"[..],
            &b"clean"[..],
            // The router appends neither: not counted, and no panic.
            &b"clean/\xff/t"[..],
            "é/d2".as_bytes(),
        ]);
        let heads = lag.heads.read().unwrap();
        let counts: Vec<(String, u64)> = filters
            .iter()
            .map(|f| {
                let h = heads.get(f).unwrap();
                (f.to_string(), h.published.load(Ordering::Relaxed))
            })
            .collect();
        let want = [
            ("clean/#", 3),
            ("clean/+/t", 1),
            ("clean/d1/t", 1),
            ("#", 5),
            ("+/d2/#", 3),
            ("sealgate/events/#", 0),
        ];
        assert_eq!(counts, want.map(|(f, n)| (f.to_string(), n)));
    }

    /// A fresh `block` reader of `clean/#` for `account`, 20 behind, after
    /// a monitor pass at `at`.
    fn behind_20(lag: &Arc<Lag>, account: &str, at: tokio::time::Instant) -> Cursor {
        let mut c = lag.reader(account, true);
        c.subscribed(["clean/#"]);
        publish(lag, 1);
        c.forwarded(b"clean/a/t", (0, 0));
        publish(lag, 20);
        c.set_idle(false);
        lag.check_at(at);
        c
    }

    fn holding(lag: &Arc<Lag>, account: &str, at: tokio::time::Instant) -> Cursor {
        let c = behind_20(lag, account, at);
        assert_eq!(lag.holding.load(Ordering::Relaxed), 1);
        c
    }

    #[tokio::test]
    async fn a_block_reader_holds_devices_for_max_hold_at_most_then_is_treated_as_drop() {
        let lag = lag();
        let t0 = tokio::time::Instant::now();
        let mut c = holding(&lag, "dash", t0);
        lag.check_at(t0 + MAX_HOLD / 2);
        assert!(pending(lag.admitted()), "still within its budget");
        lag.check_at(t0 + MAX_HOLD);
        lag.admitted().await;
        assert_eq!(lag.metrics.devices_held.get(), 0);
        // Still 20 behind, as a drop reader: devices stay released.
        publish(&lag, 100);
        lag.check_at(t0 + MAX_HOLD * 3 / 2);
        assert_eq!(lag.holding.load(Ordering::Relaxed), 0);
        // What it misses now is the price of the release.
        c.forwarded(b"clean/a/t", (0, 50));
        assert_eq!(dropped(&lag, dropped::HOLD_EXCEEDED), 49);
        assert_eq!(dropped(&lag, dropped::SUBSCRIBER_LAGGED), 0);
        // Reconnecting does not renew the budget.
        drop(c);
        let c = behind_20(&lag, "dash", t0 + MAX_HOLD * 2);
        assert_eq!(lag.holding.load(Ordering::Relaxed), 0);
        drop(c);
    }

    #[test]
    fn the_hold_budget_is_renewed_once_the_account_kept_up_for_max_hold() {
        let lag = lag();
        let t0 = tokio::time::Instant::now();
        let mut c = holding(&lag, "dash", t0);
        lag.check_at(t0 + MAX_HOLD);
        assert_eq!(lag.holding.load(Ordering::Relaxed), 0);
        // Caught up (skipped ahead)...
        c.forwarded(b"clean/a/t", (0, 20));
        assert_eq!(c.behind(), 0);
        lag.check_at(t0 + MAX_HOLD * 3 / 2);
        // ...and over the bound again too soon: still drop.
        publish(&lag, 20);
        lag.check_at(t0 + MAX_HOLD * 3 / 2 + TICK);
        assert_eq!(lag.holding.load(Ordering::Relaxed), 0);
        c.forwarded(b"clean/a/t", (0, 40));
        assert_eq!(c.behind(), 0);
        lag.check_at(t0 + MAX_HOLD * 2);
        publish(&lag, 20);
        lag.check_at(t0 + MAX_HOLD * 2 + TICK);
        assert_eq!(lag.holding.load(Ordering::Relaxed), 0);
        c.forwarded(b"clean/a/t", (0, 60));
        // Kept under the release mark for the whole bound: block again.
        lag.check_at(t0 + MAX_HOLD * 3 + TICK);
        publish(&lag, 20);
        lag.check_at(t0 + MAX_HOLD * 3 + TICK * 2);
        assert_eq!(lag.holding.load(Ordering::Relaxed), 1);
        drop(c);
    }

    #[test]
    fn accounts_have_separate_hold_budgets() {
        let lag = lag();
        let t0 = tokio::time::Instant::now();
        let a = holding(&lag, "a", t0);
        lag.check_at(t0 + MAX_HOLD);
        assert_eq!(lag.holding.load(Ordering::Relaxed), 0);
        let b = holding(&lag, "b", t0 + MAX_HOLD);
        drop((a, b));
    }
}
