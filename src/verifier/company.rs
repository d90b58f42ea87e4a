//! Adaptive group commit: a small batch waits a moment for company when
//! the measured arrival rate says company is coming.
//!
//! Why: in power-loss mode every batch pays one `fdatasync`, about 35 us of
//! CPU on our test machine and the largest cost of a batch. At fleet rates
//! batches are small (the messages that arrived during the previous sync),
//! so at 10k msgs/s a sync is paid for every two or so messages. Waiting a
//! `verifier.group_wait_us` lets the batch gather a few more. The cost is
//! that wait in latency (a sleep, which the kernel may stretch a little),
//! and one timed sleep per batch, so it is paid only while at least two
//! more messages are expected within the wait, and never for a batch
//! already large enough, nor at low rates, where nobody would come.

use std::time::{Duration, Instant};

/// From this many messages on, a batch's sync is cheap enough per message.
const LARGE: usize = 8;
/// Messages expected within the wait for it to be worth a sleep.
const WORTH_IT: f64 = 2.0;
/// How far back the arrival rate looks: it follows a change of load within
/// a few of these, and an idle gap of a few of these forgets a burst.
const MEMORY: Duration = Duration::from_millis(50);

pub(super) struct Company {
    wait: Duration,
    /// Messages per second, averaged over about [`MEMORY`].
    rate: f64,
    /// When the previous batch was complete.
    last: Option<Instant>,
}

impl Company {
    /// `wait` zero turns waiting off.
    pub(super) fn new(wait: Duration) -> Company {
        Company {
            wait,
            rate: 0.0,
            last: None,
        }
    }

    /// How long a batch read with `messages` should wait for more, if at
    /// all: only while the rate says company is coming, and `busy` (a
    /// commit under way elsewhere) not, since the batch then grows while
    /// it waits its turn anyway.
    pub(super) fn wait_for(&self, messages: usize, busy: bool) -> Option<Duration> {
        let coming = self.rate * self.wait.as_secs_f64();
        (!self.wait.is_zero() && !busy && messages < LARGE && coming >= WORTH_IT)
            .then_some(self.wait)
    }

    /// Counts a complete batch (what was read, and what came while it
    /// waited). No clock is read when waiting is off.
    pub(super) fn complete(&mut self, messages: usize) {
        if !self.wait.is_zero() {
            self.complete_at(messages, Instant::now());
        }
    }

    /// [`Company::complete`] at `now`. Each gap weighs by its length, so an
    /// idle second is not outvoted by the burst before it.
    fn complete_at(&mut self, messages: usize, now: Instant) {
        if let Some(last) = self.last {
            let gap = now.duration_since(last).as_secs_f64().max(1e-6);
            let weight = 1.0 - (-gap / MEMORY.as_secs_f64()).exp();
            self.rate += weight * (messages as f64 / gap - self.rate);
        }
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits at a steady 20k msgs/s of single messages; not at 1k, not for
    /// large batches, not while a commit is under way, not when turned off,
    /// and not for the first message after an idle second that followed a
    /// burst.
    #[test]
    fn waits_only_when_company_is_coming() {
        let wait = Duration::from_micros(250);
        let steady = |c: &mut Company, now: &mut Instant, every: Duration, size: usize| {
            for _ in 0..2_000 {
                *now += every;
                c.complete_at(size, *now);
            }
        };
        let mut now = Instant::now();
        let mut c = Company::new(wait);
        steady(&mut c, &mut now, Duration::from_micros(50), 1);
        assert_eq!(c.wait_for(1, false), Some(wait));
        assert_eq!(c.wait_for(LARGE, false), None);
        assert_eq!(c.wait_for(1, true), None);
        steady(&mut c, &mut now, Duration::from_millis(1), 1);
        assert_eq!(c.wait_for(1, false), None, "1k msgs/s");

        let mut c = Company::new(wait);
        steady(&mut c, &mut now, Duration::from_micros(10), 64);
        assert_eq!(c.wait_for(1, false), Some(wait), "a burst");
        now += Duration::from_secs(1);
        c.complete_at(1, now);
        assert_eq!(c.wait_for(1, false), None, "after an idle second");

        let mut c = Company::new(Duration::ZERO);
        steady(&mut c, &mut now, Duration::from_micros(50), 1);
        assert_eq!(c.wait_for(1, false), None, "off");
    }
}
