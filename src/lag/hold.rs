//! How long each `block` subscriber account has held the devices, so that no
//! account can hold them for ever.
//!
//! A `block` reader that acknowledges one message just before every write
//! timeout is never stuck, yet it can stay over the lag bound indefinitely.
//! So an account may hold the fleet for at most `limits.max_hold_secs` in
//! total per *episode*; past that it is treated as `drop` (devices released,
//! what it then misses counted as `hold_exceeded`).
//!
//! An episode starts when one of the account's readers first holds the
//! devices. Time is added up while any of its readers holds (several
//! connections of one account hold at most once), across separate holds:
//! dipping just under the release mark and climbing back over the bound
//! resumes the same budget. The episode ends, and the account is `block`
//! again, only once none of its readers has been over the release mark (half
//! the bound) for `max_hold_secs` in a row, or none has been connected for
//! that long. An account can therefore hold the devices at most half the
//! time, however it behaves or reconnects.
//!
//! Episodes are kept per account name (a bounded set, from the config) and
//! forgotten when they end.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// What one monitor pass saw of an account's `block` readers.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Seen {
    /// One of them holds the devices after this pass.
    pub holding: bool,
    /// One of them is over the release mark (held or not).
    pub over: bool,
}

struct Episode {
    /// Hold time before `since`.
    held: Duration,
    /// When the account's current hold began.
    since: Option<Instant>,
    /// When one of its readers was last over the release mark.
    last_over: Instant,
    exceeded: bool,
}

pub(super) struct Holds {
    max: Duration,
    episodes: HashMap<String, Episode>,
}

impl Holds {
    pub(super) fn new(max: Duration) -> Holds {
        Holds {
            max,
            episodes: HashMap::new(),
        }
    }

    /// Whether `account` used up its budget: its readers are `drop` now.
    pub(super) fn exceeded(&self, account: &str) -> bool {
        self.episodes.get(account).is_some_and(|e| e.exceeded)
    }

    /// Accounts this pass, by name. Returns the accounts that used up their
    /// budget in this pass, with how long they held; their readers must be
    /// released now. An account absent from `seen` has no `block` reader
    /// connected.
    pub(super) fn update(
        &mut self,
        seen: &HashMap<&str, Seen>,
        now: Instant,
    ) -> Vec<(String, Duration)> {
        for (name, s) in seen {
            if s.holding && !self.episodes.contains_key(*name) {
                self.episodes.insert(
                    (*name).to_owned(),
                    Episode {
                        held: Duration::ZERO,
                        since: None,
                        last_over: now,
                        exceeded: false,
                    },
                );
            }
        }
        let max = self.max;
        let mut exceeded = Vec::new();
        self.episodes.retain(|name, e| {
            let s = seen.get(name.as_str()).copied().unwrap_or_default();
            if s.holding {
                let since = *e.since.get_or_insert(now);
                let held = e.held + now.duration_since(since);
                if !e.exceeded && held >= max {
                    e.exceeded = true;
                    e.held = held;
                    e.since = None;
                    exceeded.push((name.clone(), held));
                }
            } else if let Some(since) = e.since.take() {
                e.held += now.duration_since(since);
            }
            if s.over || s.holding {
                e.last_over = now;
                return true;
            }
            let keep = now.duration_since(e.last_over) < max;
            if !keep {
                tracing::debug!(
                    subscriber = %name,
                    "A subscriber account kept up again; its hold budget is renewed."
                );
            }
            keep
        });
        exceeded
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.episodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(10);

    fn pass(h: &mut Holds, holding: bool, over: bool, at: Instant) -> bool {
        let seen = HashMap::from([("dash", Seen { holding, over })]);
        let out = h.update(&seen, at);
        !out.is_empty()
    }

    #[test]
    fn holds_add_up_across_dips_under_the_release_mark() {
        let mut h = Holds::new(MAX);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(!pass(&mut h, true, true, t0));
        assert!(!pass(&mut h, true, true, t0 + 6 * s));
        // Under the release mark for a moment, then back over the bound.
        assert!(!pass(&mut h, false, false, t0 + 6 * s));
        assert!(!pass(&mut h, false, false, t0 + 9 * s));
        assert!(!pass(&mut h, true, true, t0 + 10 * s));
        assert!(!h.exceeded("dash"));
        assert!(pass(&mut h, true, true, t0 + 14 * s), "6 s + 4 s held");
        assert!(h.exceeded("dash"));
        // Reported once; behind but no longer holding.
        assert!(!pass(&mut h, false, true, t0 + 15 * s));
        assert!(h.exceeded("dash"));
    }

    #[test]
    fn the_budget_is_renewed_only_after_keeping_up_for_the_whole_bound() {
        let mut h = Holds::new(MAX);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        pass(&mut h, true, true, t0);
        assert!(pass(&mut h, true, true, t0 + 10 * s));
        // Over the release mark again within the bound: still exceeded.
        pass(&mut h, false, false, t0 + 12 * s);
        pass(&mut h, false, true, t0 + 21 * s);
        pass(&mut h, false, false, t0 + 22 * s);
        assert!(h.exceeded("dash"));
        pass(&mut h, false, false, t0 + 30 * s);
        assert!(h.exceeded("dash"));
        // Gone (no reader connected) counts as keeping up.
        h.update(&HashMap::new(), t0 + 31 * s);
        assert!(!h.exceeded("dash"));
        assert!(h.is_empty());
    }

    #[test]
    fn several_readers_of_one_account_share_its_budget() {
        let mut h = Holds::new(MAX);
        let t0 = Instant::now();
        let seen = HashMap::from([
            (
                "dash",
                Seen {
                    holding: true,
                    over: true,
                },
            ),
            ("ops", Seen::default()),
        ]);
        assert!(h.update(&seen, t0).is_empty());
        let out = h.update(&seen, t0 + MAX);
        assert_eq!(out, [("dash".to_owned(), MAX)]);
        assert!(!h.exceeded("ops"));
    }
}
