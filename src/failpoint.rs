//! Test-only fail points: faults a test selects by name to prove what the
//! gateway does when a part of it fails at an exact moment. They are off
//! unless `SEALGATE_FAILPOINTS` (comma-separated names, each optionally
//! `name@K`: act on the K-th time the point is reached) is set, and cost one
//! lookup in a short list when they are. Never set it in production.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Kills the router thread after startup, the way a router panic would.
pub const ROUTER_PANIC: &str = "router_panic";
/// Panics the verifier thread on the first message it receives.
pub const VERIFIER_PANIC: &str = "verifier_panic";
/// Aborts the process once a batch's windows and outbox entries are
/// written to sled but not flushed.
pub const ABORT_AFTER_STAGE: &str = "abort_after_stage";
/// Aborts the process once a batch is flushed, before the router has it
/// and before any PUBACK.
pub const ABORT_AFTER_FLUSH: &str = "abort_after_flush";
/// Aborts the process once a batch is in the router, before its PUBACKs.
pub const ABORT_AFTER_HANDOFF: &str = "abort_after_handoff";

struct Point {
    name: String,
    at: u64,
    reached: AtomicU64,
}

fn selected() -> &'static [Point] {
    static SELECTED: OnceLock<Vec<Point>> = OnceLock::new();
    SELECTED.get_or_init(|| {
        let v = std::env::var("SEALGATE_FAILPOINTS").unwrap_or_default();
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (name, at) = match s.split_once('@') {
                    Some((n, k)) => (n, k.parse().unwrap_or(1)),
                    None => (s, 1),
                };
                Point {
                    name: name.to_owned(),
                    at,
                    reached: AtomicU64::new(0),
                }
            })
            .collect()
    })
}

/// Whether the fail point `name` is selected.
pub fn enabled(name: &str) -> bool {
    selected().iter().any(|p| p.name == name)
}

/// Counts one arrival at `name`; aborts the process on the selected one.
/// An abort, not a panic: nothing unwinds, no destructor flushes, as with
/// kill -9 at exactly this point.
pub fn abort_at(name: &str) {
    for p in selected().iter().filter(|p| p.name == name) {
        if p.reached.fetch_add(1, Ordering::Relaxed) + 1 == p.at {
            eprintln!("fail point {name}: aborting");
            std::process::abort();
        }
    }
}
