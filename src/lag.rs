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
//! Our count starts when a filter is first tracked, the router's offsets when
//! it first saw the filter, so the two differ by a constant (the skew). It is
//! learnt as the smallest `published - offset - 1` any reader has seen: never
//! below the true skew, and equal to it once a reader of the filter has been
//! caught up. A lag is therefore never overstated by more than what is still
//! on its way into the router, which drains while devices are held, so a held
//! fleet is always released once the reader catches up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rumqttd::protocol::matches;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::dropped;
use crate::metrics::Metrics;

/// How often the monitor compares positions with what was published. At
/// 35k msgs/s a tick is under a thousand messages, far below any sane lag
/// bound.
pub const TICK: Duration = Duration::from_millis(20);

/// How long a reader must be idle, with nothing new forwarded, before a lag
/// estimate above 0 is taken to be wrong and reset.
const RESYNC_AFTER: Duration = Duration::from_secs(1);

/// Holds are logged at most this often.
const HOLD_LOG_EVERY: Duration = Duration::from_secs(10);

/// A position before the reader's first message on a filter.
const UNKNOWN: u64 = u64::MAX;
/// A skew before any reader of the filter has seen a message.
const NO_SKEW: i64 = i64::MAX;

/// What went into the router for one filter.
struct Head {
    filter: String,
    published: AtomicU64,
    skew: AtomicI64,
    /// Nobody had subscribed to the filter before we began counting, so the
    /// router's log starts with our count: its offsets are at most ours.
    fresh: bool,
}

impl Head {
    /// The router's next offset for this filter, or an upper bound of it.
    fn estimate(&self) -> u64 {
        let published = self.published.load(Ordering::Relaxed);
        match self.skew.load(Ordering::Relaxed) {
            NO_SKEW if self.fresh => published,
            NO_SKEW => UNKNOWN,
            skew => u64::try_from(published as i64 - skew).unwrap_or(0),
        }
    }

    /// Messages published on this filter after `next`; 0 while unknown.
    fn behind(&self, next: u64) -> u64 {
        let skew = self.skew.load(Ordering::Relaxed);
        if skew == NO_SKEW || next == UNKNOWN {
            return 0;
        }
        let head = self.published.load(Ordering::Relaxed) as i64 - skew;
        u64::try_from(head - next as i64).unwrap_or(0)
    }
}

/// One reader's next expected offset in one filter's log.
struct Position {
    head: Arc<Head>,
    next: AtomicU64,
}

/// A subscriber session as the monitor sees it.
struct Reader {
    name: String,
    block: bool,
    positions: Mutex<Vec<Arc<Position>>>,
    /// Set by the session when it ends; the monitor then lets go of it.
    closed: AtomicBool,
    /// Whether this reader holds the devices; written by the monitor only.
    holding: AtomicBool,
    /// Messages forwarded to it so far, and when the monitor last saw that
    /// number change (or the reader caught up).
    progress: AtomicU64,
    still: Mutex<(u64, tokio::time::Instant)>,
    /// Set by the session while it owes the reader nothing: every write done,
    /// every forwarded message acknowledged. The router then has nothing
    /// more for it either, or it would have forwarded it.
    idle: AtomicBool,
}

impl Reader {
    /// Whether the reader has been idle with no new message for
    /// [`RESYNC_AFTER`]. Only ever true while the estimate says it is behind,
    /// which is then wrong (a message counted that the router never
    /// appended); without this a held fleet would never be released.
    fn idle_too_long(&self, now: tokio::time::Instant) -> bool {
        let progress = self.progress.load(Ordering::Relaxed);
        let mut still = lock(&self.still);
        if progress != still.0 || !self.idle.load(Ordering::Relaxed) {
            *still = (progress, now);
            return false;
        }
        now.duration_since(still.1) >= RESYNC_AFTER
    }

    /// Takes the reader's positions as the heads of its filters.
    fn resync(&self) {
        for p in lock(&self.positions).iter() {
            let next = p.next.load(Ordering::Relaxed);
            if next != UNKNOWN {
                let published = p.head.published.load(Ordering::Relaxed) as i64;
                p.head
                    .skew
                    .store(published - next as i64, Ordering::Relaxed);
            }
        }
        tracing::debug!(subscriber = %self.name, "Resynchronised a subscriber's lag estimate.");
    }

    fn behind(&self) -> u64 {
        lock(&self.positions)
            .iter()
            .map(|p| p.head.behind(p.next.load(Ordering::Relaxed)))
            .sum()
    }
}

/// An offline session's next offset per filter.
type Parked = Vec<(Arc<Head>, u64)>;

/// Tracked filters by their literal prefix (the levels before the first
/// wildcard), so a topic is matched against the few filters it could match,
/// not all of them.
#[derive(Default)]
struct Heads(HashMap<String, Vec<Arc<Head>>>);

impl Heads {
    fn prefix(filter: &str) -> &str {
        let mut end = 0;
        for (i, level) in filter.split('/').enumerate() {
            if level == "+" || level == "#" {
                break;
            }
            end += level.len() + usize::from(i > 0);
        }
        &filter[..end]
    }

    /// Every tracked filter `topic` matches.
    fn matching<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Arc<Head>> + 'a {
        let ends = std::iter::once(0)
            .chain(topic.match_indices('/').map(|(i, _)| i))
            .chain(std::iter::once(topic.len()));
        ends.filter_map(|end| self.0.get(&topic[..end]))
            .flatten()
            .filter(move |h| matches(topic, &h.filter))
    }
}

/// Subscriber positions and the device hold, shared by the whole gateway.
pub struct Lag {
    /// Kept for as long as the router keeps its logs (for ever), so the skew
    /// stays known.
    heads: RwLock<Heads>,
    /// Every filter anyone asked the router for, devices included.
    routed: Mutex<std::collections::HashSet<String>>,
    readers: Mutex<Vec<Arc<Reader>>>,
    /// Persistent sessions by router client id: the newest session's serial,
    /// and its positions while it is offline, so loss while it was away is
    /// counted when it comes back.
    parked: Mutex<HashMap<String, (u64, Option<Parked>)>>,
    serials: AtomicU64,
    /// `block` readers over the bound; devices wait while it is not 0.
    holding: AtomicUsize,
    released: Notify,
    max_lag: u64,
    metrics: Arc<Metrics>,
    /// When a hold was last logged, and holds since.
    hold_log: Mutex<(Option<tokio::time::Instant>, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lag {
    pub fn new(max_lag: u64, metrics: Arc<Metrics>) -> Arc<Lag> {
        Arc::new(Lag {
            heads: RwLock::default(),
            routed: Mutex::default(),
            readers: Mutex::default(),
            parked: Mutex::default(),
            serials: AtomicU64::new(0),
            holding: AtomicUsize::new(0),
            released: Notify::new(),
            max_lag,
            metrics,
            hold_log: Mutex::default(),
        })
    }

    /// Counts messages about to be handed to the router. Everything that
    /// publishes into it calls this; with no subscriber account connected
    /// it costs one uncontended read lock.
    pub fn published<'a>(&self, topics: impl IntoIterator<Item = &'a [u8]>) {
        let heads = self.heads.read().unwrap_or_else(|e| e.into_inner());
        if heads.0.is_empty() {
            return;
        }
        for topic in topics {
            let Ok(topic) = std::str::from_utf8(topic) else {
                continue;
            };
            for h in heads.matching(topic) {
                h.published.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Notes filters a connection that is not tracked (a device) asks the
    /// router for: their logs then exist before any head of ours.
    pub fn routed<'a>(&self, filters: impl IntoIterator<Item = &'a str>) {
        let mut routed = lock(&self.routed);
        for f in filters {
            if !routed.contains(f) {
                routed.insert(f.to_owned());
            }
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

    /// Starts tracking a subscriber session. `resumed`: the router kept its
    /// persistent session, so its positions from last time still apply.
    pub fn reader(
        self: &Arc<Self>,
        name: &str,
        router_client_id: &str,
        block: bool,
        persistent: bool,
        resumed: bool,
    ) -> Cursor {
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        // A session taking over a live one finds nothing parked: it is
        // tracked again from its next SUBSCRIBE.
        let parked = {
            let mut parked = lock(&self.parked);
            let previous = parked.remove(router_client_id).and_then(|(_, p)| p);
            if persistent {
                parked.insert(router_client_id.to_owned(), (serial, None));
            }
            previous
        };
        let positions: Vec<Arc<Position>> = match parked {
            Some(p) if resumed => p
                .into_iter()
                .map(|(head, next)| {
                    Arc::new(Position {
                        head,
                        next: AtomicU64::new(next),
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let reader = Arc::new(Reader {
            name: name.to_owned(),
            block,
            positions: Mutex::new(positions.clone()),
            closed: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            progress: AtomicU64::new(0),
            still: Mutex::new((0, tokio::time::Instant::now())),
            idle: AtomicBool::new(true),
        });
        lock(&self.readers).push(reader.clone());
        Cursor {
            lag: self.clone(),
            reader,
            positions,
            parked_as: persistent.then(|| (router_client_id.to_owned(), serial)),
        }
    }

    /// The tracked head for `filter`, made now if it is new.
    fn head(&self, filter: &str) -> Arc<Head> {
        let mut heads = self.heads.write().unwrap_or_else(|e| e.into_inner());
        let bucket = heads.0.entry(Heads::prefix(filter).to_owned()).or_default();
        if let Some(h) = bucket.iter().find(|h| h.filter == filter) {
            return h.clone();
        }
        let h = Arc::new(Head {
            filter: filter.to_owned(),
            published: AtomicU64::new(0),
            skew: AtomicI64::new(NO_SKEW),
            fresh: lock(&self.routed).insert(filter.to_owned()),
        });
        bucket.push(h.clone());
        h
    }

    /// Compares every reader's position with what was published, every
    /// [`TICK`], and holds or releases the devices. At `stop` it releases
    /// them for good, so shutdown never waits on a subscriber.
    pub async fn monitor(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => self.check(),
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
        let mut furthest = 0;
        let mut released = false;
        readers.retain(|r| {
            let closed = r.closed.load(Ordering::Acquire);
            let behind = if closed { 0 } else { r.behind() };
            furthest = furthest.max(behind);
            let behind = if behind > 0 && r.idle_too_long(now) {
                r.resync();
                0
            } else {
                behind
            };
            let holding = r.holding.load(Ordering::Relaxed);
            if r.block && !holding && behind > self.max_lag {
                r.holding.store(true, Ordering::Relaxed);
                if self.holding.fetch_add(1, Ordering::AcqRel) == 0 {
                    self.metrics.devices_held.set(1);
                }
                self.log_hold(&r.name, behind, now);
            } else if holding && (closed || behind <= self.max_lag / 2) {
                r.holding.store(false, Ordering::Relaxed);
                if self.holding.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.metrics.devices_held.set(0);
                    released = true;
                }
                tracing::debug!(subscriber = %r.name, behind, "Released device publishes.");
            }
            !closed
        });
        drop(readers);
        self.metrics.subscriber_lag.set(furthest as i64);
        if released {
            self.released.notify_waiters();
        }
    }
}

/// A subscriber session's view of its own positions: updated on every
/// forwarded message without a lock, shared with the monitor.
pub struct Cursor {
    lag: Arc<Lag>,
    reader: Arc<Reader>,
    positions: Vec<Arc<Position>>,
    /// The router client id of a persistent session, to park positions
    /// under, and this session's serial.
    parked_as: Option<(String, u64)>,
}

impl Cursor {
    /// Filters the router is about to be asked to subscribe. A filter
    /// subscribed again starts over: the router restarts it at its head.
    pub fn subscribed<'a>(&mut self, filters: impl IntoIterator<Item = &'a str>) {
        for f in filters {
            match self.positions.iter().find(|p| p.head.filter == f) {
                Some(p) => p.next.store(UNKNOWN, Ordering::Relaxed),
                None => self.positions.push(Arc::new(Position {
                    head: self.lag.head(f),
                    next: AtomicU64::new(UNKNOWN),
                })),
            }
        }
        *lock(&self.reader.positions) = self.positions.clone();
    }

    /// Filters the router is about to be asked to unsubscribe.
    pub fn unsubscribed<'a>(&mut self, filters: impl IntoIterator<Item = &'a str>) {
        for f in filters {
            self.positions.retain(|p| p.head.filter != f);
        }
        *lock(&self.reader.positions) = self.positions.clone();
    }

    /// A message the router forwarded from offset `offset` of one of this
    /// session's filters. Counts a gap as dropped.
    pub fn forwarded(&mut self, topic: &[u8], offset: (u64, u64)) {
        self.reader.progress.fetch_add(1, Ordering::Relaxed);
        let Ok(topic) = std::str::from_utf8(topic) else {
            return;
        };
        let at = offset.1;
        // With overlapping filters the router forwards once per filter; the
        // one this offset continues is the right one.
        let mut pick = None;
        for p in self
            .positions
            .iter()
            .filter(|p| matches(topic, &p.head.filter))
        {
            let next = p.next.load(Ordering::Relaxed);
            if next == at || next == UNKNOWN {
                pick = Some(p);
                break;
            }
            pick.get_or_insert(p);
        }
        let Some(p) = pick else {
            return;
        };
        let next = p.next.load(Ordering::Relaxed);
        if next != UNKNOWN && at < next {
            // A redelivery after a reconnect: not new, not a gap.
            return;
        }
        if next != UNKNOWN && at > next {
            let missed = at - next;
            self.lag.metrics.dropped(dropped::SUBSCRIBER_LAGGED, missed);
            tracing::warn!(
                subscriber = %self.reader.name,
                filter = %p.head.filter,
                missed,
                "A subscriber fell further behind than the router keeps and missed messages."
            );
        }
        p.next.store(at + 1, Ordering::Relaxed);
        let published = p.head.published.load(Ordering::Relaxed) as i64;
        p.head
            .skew
            .fetch_min(published - at as i64 - 1, Ordering::Relaxed);
    }

    /// Messages published for this session that it has not been handed yet.
    pub fn behind(&self) -> u64 {
        self.reader.behind()
    }

    /// Tells the monitor whether the session owes the reader nothing (every
    /// write done, every forwarded message acknowledged).
    pub fn set_idle(&self, idle: bool) {
        self.reader.idle.store(idle, Ordering::Relaxed);
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        if let Some((id, serial)) = self.parked_as.take() {
            let mut parked = lock(&self.lag.parked);
            // Only the newest session of a client id parks: one that was
            // taken over would leave positions older than its successor's.
            if let Some((newest, slot)) = parked.get_mut(&id) {
                if *newest == serial {
                    // A filter it got nothing on yet: it is at the head now,
                    // or before it (an upper bound never counts a false gap).
                    let kept = self
                        .positions
                        .iter()
                        .map(|p| match p.next.load(Ordering::Relaxed) {
                            UNKNOWN => (p.head.clone(), p.head.estimate()),
                            next => (p.head.clone(), next),
                        })
                        .collect();
                    *slot = Some(kept);
                }
            }
        }
        self.reader.closed.store(true, Ordering::Release);
        lock(&self.reader.positions).clear();
        self.positions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag() -> Arc<Lag> {
        Lag::new(10, Arc::new(Metrics::new()))
    }

    /// Whether `fut` would wait, polled once.
    fn pending(fut: impl std::future::Future) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::pin!(fut).poll(&mut cx).is_pending()
    }

    /// A reader of `clean/#` that was handed offset `at`, with `published`
    /// messages counted for the filter by then.
    fn reader_at(lag: &Arc<Lag>, block: bool, published: u64, at: u64) -> Cursor {
        let mut c = lag.reader("r", "u.r", block, false, false);
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

    fn dropped_lagged(lag: &Lag) -> u64 {
        let text = lag.metrics.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("sealgate_dropped_total{reason=\"subscriber_lagged\"}"))
            .expect("metric present");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_gap_in_offsets_is_counted_exactly_and_redeliveries_are_not() {
        let lag = lag();
        let mut c = lag.reader("dash", "u.dash", false, false, false);
        c.subscribed(["clean/#"]);
        c.forwarded(b"clean/a/t", (0, 5));
        c.forwarded(b"clean/a/t", (0, 6));
        assert_eq!(dropped_lagged(&lag), 0);
        c.forwarded(b"clean/a/t", (2, 40));
        assert_eq!(dropped_lagged(&lag), 33);
        c.forwarded(b"clean/a/t", (2, 12));
        assert_eq!(dropped_lagged(&lag), 33);
        c.forwarded(b"clean/a/t", (2, 41));
        assert_eq!(dropped_lagged(&lag), 33);
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
    fn a_resumed_persistent_session_counts_what_it_missed_while_away() {
        let lag = lag();
        let mut c = lag.reader("dash", "u.dash", false, true, false);
        c.subscribed(["clean/#"]);
        c.forwarded(b"clean/a/t", (0, 7));
        drop(c);
        let mut c = lag.reader("dash", "u.dash", false, true, true);
        c.forwarded(b"clean/a/t", (3, 50));
        assert_eq!(dropped_lagged(&lag), 42);
        // A session the router did not keep starts over.
        drop(c);
        let mut c = lag.reader("dash", "u.dash", false, true, false);
        c.subscribed(["clean/#"]);
        c.forwarded(b"clean/a/t", (9, 900));
        assert_eq!(dropped_lagged(&lag), 42);
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
    fn a_session_taken_over_does_not_park_stale_positions() {
        let lag = lag();
        let mut old = lag.reader("dash", "u.dash", false, true, false);
        old.subscribed(["clean/#"]);
        old.forwarded(b"clean/a/t", (0, 7));
        let mut new = lag.reader("dash", "u.dash", false, true, true);
        new.subscribed(["clean/#"]);
        new.forwarded(b"clean/a/t", (0, 30));
        drop(old);
        drop(new);
        let mut back = lag.reader("dash", "u.dash", false, true, true);
        back.forwarded(b"clean/a/t", (0, 31));
        assert_eq!(dropped_lagged(&lag), 0);
    }

    #[test]
    fn topics_are_matched_through_the_literal_prefix_of_filters() {
        assert_eq!(Heads::prefix("clean/#"), "clean");
        assert_eq!(Heads::prefix("clean/+/t"), "clean");
        assert_eq!(Heads::prefix("clean/d1/t"), "clean/d1/t");
        assert_eq!(Heads::prefix("#"), "");
        assert_eq!(Heads::prefix("+/x"), "");
        let lag = lag();
        let filters = [
            "clean/#",
            "clean/+/t",
            "clean/d1/t",
            "#",
            "+/d2/#",
            "sealgate/events/#",
        ];
        let mut c = lag.reader("dash", "u.dash", false, false, false);
        c.subscribed(filters);
        lag.published([
            &b"clean/d1/t"[..],
            &b"clean/d2/x"[..],
            &b"a/d2/b"[..],
            &b"clean"[..],
        ]);
        let heads = lag.heads.read().unwrap();
        let counts: Vec<(String, u64)> = filters
            .iter()
            .map(|f| {
                let h = heads.0[Heads::prefix(f)]
                    .iter()
                    .find(|h| h.filter == *f)
                    .unwrap();
                (f.to_string(), h.published.load(Ordering::Relaxed))
            })
            .collect();
        let want = [
            ("clean/#", 3),
            ("clean/+/t", 1),
            ("clean/d1/t", 1),
            ("#", 4),
            ("+/d2/#", 2),
            ("sealgate/events/#", 0),
        ];
        assert_eq!(counts, want.map(|(f, n)| (f.to_string(), n)));
    }

    #[test]
    fn a_persistent_session_that_got_nothing_counts_from_where_the_log_was() {
        let lag = lag();
        let mut c = lag.reader("dash", "u.dash", false, true, false);
        c.subscribed(["clean/#"]);
        drop(c);
        for _ in 0..100 {
            lag.published([&b"clean/a/t"[..]]);
        }
        // Nobody subscribed to clean/# before: the log began with our count.
        let mut c = lag.reader("dash", "u.dash", false, true, true);
        c.forwarded(b"clean/a/t", (1, 60));
        assert_eq!(dropped_lagged(&lag), 60);
        drop(c);
        // A filter a device had subscribed first: where its log was is unknown.
        lag.routed(["cmd/#"]);
        let mut c = lag.reader("ops", "u.ops", false, true, false);
        c.subscribed(["cmd/#"]);
        drop(c);
        let mut c = lag.reader("ops", "u.ops", false, true, true);
        c.forwarded(b"cmd/a/t", (1, 60));
        assert_eq!(dropped_lagged(&lag), 60);
    }
}
