//! A subscriber session's own positions in the router's logs: moved on every
//! forwarded message without a lock, shared with the monitor. Only clean
//! sessions read the router: persistent ones are fed from the outbox.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::heads::{Head, Trie, UNKNOWN};
use super::{lock, Lag, Reader};
use crate::events::dropped;

/// One reader's next expected offset in one filter's log.
pub(super) struct Position {
    pub(super) head: Arc<Head>,
    pub(super) next: AtomicU64,
}

impl Position {
    pub(super) fn new(head: Arc<Head>, next: u64) -> Arc<Position> {
        Arc::new(Position {
            head,
            next: AtomicU64::new(next),
        })
    }
}

/// A subscriber session's view of its own positions.
///
/// Its filters live in two places that must agree: the reader's map (by
/// filter, read by the monitor) and `index` (by topic, read here on every
/// forwarded message). Only the cursor changes either.
pub struct Cursor {
    pub(super) lag: Arc<Lag>,
    pub(super) reader: Arc<Reader>,
    /// The session's positions, found by the topics they match: the router
    /// says which log a message came from only by its offset.
    pub(super) index: Trie<Arc<Position>>,
}

impl Cursor {
    /// Filters the router is about to be asked to subscribe. A filter
    /// subscribed again starts over: the router restarts it at its head.
    pub fn subscribed<'a>(&mut self, filters: impl IntoIterator<Item = &'a str>) {
        let mut positions = lock(&self.reader.positions);
        for f in filters {
            match positions.get(f) {
                Some(p) => p.next.store(UNKNOWN, Ordering::Relaxed),
                None => {
                    let p = Position::new(self.lag.head(f), UNKNOWN);
                    self.index.get_or_insert_with(f, || p.clone());
                    positions.insert(f.to_owned(), p);
                }
            }
        }
    }

    /// Filters the router is about to be asked to unsubscribe. A filter no
    /// other session reads is no longer tracked.
    pub fn unsubscribed<'a>(&mut self, filters: impl IntoIterator<Item = &'a str>) {
        let mut gone = Vec::new();
        {
            let mut positions = lock(&self.reader.positions);
            for f in filters {
                if positions.remove(f).is_some() {
                    self.index.remove(f);
                    gone.push(f.to_owned());
                }
            }
        }
        self.lag.forget(gone);
    }

    /// A message the router forwarded from offset `offset` of one of this
    /// session's filters. Counts a gap as dropped.
    pub fn forwarded(&mut self, topic: &[u8], offset: (u64, u64)) {
        self.reader.progress.fetch_add(1, Ordering::Relaxed);
        let at = offset.1;
        // With overlapping filters the router forwards once per filter; the
        // one this offset continues is the right one, then one that has not
        // had a message yet.
        let mut pick: Option<(u8, &Arc<Position>)> = None;
        self.index.for_each_match(topic, |p| {
            let rank = match p.next.load(Ordering::Relaxed) {
                next if next == at => 2,
                UNKNOWN => 1,
                _ => 0,
            };
            if pick.is_none_or(|(best, _)| rank > best) {
                pick = Some((rank, p));
            }
        });
        let Some((_, p)) = pick else {
            return;
        };
        let next = p.next.load(Ordering::Relaxed);
        if next != UNKNOWN && at < next {
            // A redelivery after a reconnect: not new, not a gap.
            return;
        }
        if next != UNKNOWN && at > next {
            let missed = at - next;
            // Treated as `drop` after holding the devices too long: what it
            // misses is the price of releasing them, counted apart.
            let reason = if self.reader.demoted.load(Ordering::Relaxed) {
                dropped::HOLD_EXCEEDED
            } else {
                dropped::SUBSCRIBER_LAGGED
            };
            self.lag.metrics.dropped(reason, missed);
            tracing::warn!(
                subscriber = %self.reader.name,
                filter = %p.head.filter,
                missed,
                reason,
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
    /// Lets the positions go, and with them every filter nobody else tracks.
    fn drop(&mut self) {
        let positions = std::mem::take(&mut *lock(&self.reader.positions));
        self.reader.closed.store(true, Ordering::Release);
        self.index = Trie::default();
        let filters: Vec<String> = positions.into_keys().collect();
        self.lag.forget(filters);
    }
}

#[cfg(test)]
mod tests {
    use crate::events::dropped;
    use crate::lag::tests::{dropped, dropped_lagged, lag};
    use crate::lag::Lag;

    fn tracked(lag: &Lag) -> bool {
        !lag.heads.read().unwrap().is_empty()
    }

    #[test]
    fn a_gap_in_offsets_is_counted_exactly_and_redeliveries_are_not() {
        let lag = lag();
        let mut c = lag.reader("dash", false);
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
    fn overlapping_filters_each_keep_their_own_position() {
        let lag = lag();
        let mut c = lag.reader("dash", false);
        c.subscribed(["clean/#", "clean/+/t"]);
        // The router forwards a message once per filter, from each log.
        for (a, b) in [(10, 3), (11, 4), (12, 5)] {
            c.forwarded(b"clean/a/t", (0, a));
            c.forwarded(b"clean/a/t", (0, b));
        }
        c.forwarded(b"clean/a/x", (0, 13));
        assert_eq!(dropped_lagged(&lag), 0);
    }

    #[test]
    fn a_forwarded_message_with_any_topic_bytes_is_handled() {
        let lag = lag();
        let mut c = lag.reader("dash", false);
        c.subscribed(["#", "é/+"]);
        c.forwarded("é/ü".as_bytes(), (0, 1));
        c.forwarded(b"\xc3", (0, 2));
        c.forwarded(b"clean/\xff", (0, 3));
        assert_eq!(dropped(&lag, dropped::SUBSCRIBER_LAGGED), 0);
    }

    #[test]
    fn filters_nobody_reads_any_more_are_no_longer_tracked() {
        let lag = lag();
        let mut a = lag.reader("a", false);
        let mut b = lag.reader("b", false);
        for round in 0..100 {
            let filters: Vec<String> = (0..50).map(|n| format!("clean/+/{round}/{n}")).collect();
            a.subscribed(filters.iter().map(String::as_str));
            b.subscribed(["clean/#", filters[0].as_str()]);
            a.unsubscribed(filters.iter().map(String::as_str));
            // Still read by b.
            assert!(lag.heads.read().unwrap().get(&filters[0]).is_some());
            b.unsubscribed(["clean/#", filters[0].as_str()]);
            assert!(!tracked(&lag), "round {round}");
        }
        // A clean session's filters go with it, unless another reads them.
        a.subscribed(["clean/#", "sealgate/events/#"]);
        b.subscribed(["clean/#"]);
        drop(a);
        assert!(lag.heads.read().unwrap().get("sealgate/events/#").is_none());
        assert!(lag.heads.read().unwrap().get("clean/#").is_some());
        drop(b);
        assert!(!tracked(&lag));
    }
}
