//! One subscriber session as the monitor sees it: its positions, whether it
//! holds the devices, and whether an estimate that calls it behind can be
//! trusted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::cursor::Position;
use super::heads::UNKNOWN;
use super::lock;

/// How long a reader must be idle, with nothing new forwarded, before a lag
/// estimate above 0 is taken to be wrong and reset.
pub(super) const RESYNC_AFTER: Duration = Duration::from_secs(1);

/// A subscriber session as the monitor sees it.
pub(super) struct Reader {
    /// The account name: hold budgets are per account.
    pub(super) name: String,
    pub(super) block: bool,
    /// By filter; written by the session's cursor only.
    pub(super) positions: Mutex<HashMap<String, Arc<Position>>>,
    /// Set by the session when it ends; the monitor then lets go of it.
    pub(super) closed: AtomicBool,
    /// Whether this reader holds the devices; written by the monitor only.
    pub(super) holding: AtomicBool,
    /// A `block` reader whose account used up its hold budget, treated as
    /// `drop`; written by the monitor only.
    pub(super) demoted: AtomicBool,
    /// Messages forwarded to it so far, and when the monitor last saw that
    /// number change (or the reader caught up).
    pub(super) progress: AtomicU64,
    pub(super) still: Mutex<(u64, tokio::time::Instant)>,
    /// Set by the session while it owes the reader nothing: every write done,
    /// every forwarded message acknowledged. The router then has nothing
    /// more for it either, or it would have forwarded it.
    pub(super) idle: AtomicBool,
}

impl Reader {
    pub(super) fn new(
        name: &str,
        block: bool,
        positions: HashMap<String, Arc<Position>>,
        demoted: bool,
    ) -> Reader {
        Reader {
            name: name.to_owned(),
            block,
            positions: Mutex::new(positions),
            closed: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            demoted: AtomicBool::new(demoted),
            progress: AtomicU64::new(0),
            still: Mutex::new((0, tokio::time::Instant::now())),
            idle: AtomicBool::new(true),
        }
    }

    /// Whether the reader has been idle with no new message for
    /// [`RESYNC_AFTER`]. Only ever true while the estimate says it is behind,
    /// which is then wrong (a message counted that the router never
    /// appended); without this a held fleet would never be released.
    pub(super) fn idle_too_long(&self, now: tokio::time::Instant) -> bool {
        let progress = self.progress.load(Ordering::Relaxed);
        let mut still = lock(&self.still);
        if progress != still.0 || !self.idle.load(Ordering::Relaxed) {
            *still = (progress, now);
            return false;
        }
        now.duration_since(still.1) >= RESYNC_AFTER
    }

    /// Takes the reader's positions as the heads of its filters.
    pub(super) fn resync(&self) {
        for p in lock(&self.positions).values() {
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

    pub(super) fn behind(&self) -> u64 {
        lock(&self.positions)
            .values()
            .map(|p| p.head.behind(p.next.load(Ordering::Relaxed)))
            .sum()
    }
}
