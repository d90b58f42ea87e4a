//! Adaptive group commit: a small batch waits a moment for company when
//! the measured arrival rate says company is coming.
//!
//! Why: in power-loss mode every batch pays one `fdatasync`, about 35 us of
//! CPU on our test machine and the largest cost of a batch. At fleet rates
//! batches are small (the messages that arrived during the previous sync),
//! so at 10k msgs/s a sync is paid for every two or so messages. Waiting a
//! bounded `verifier.group_wait_us` lets the batch gather a few more. The
//! cost is that wait in latency, and one timed sleep per batch, so it is
//! paid only while at least two more messages are expected within the
//! wait, and never for a batch already large enough, nor at low rates,
//! where nobody would come.

use std::time::{Duration, Instant};

/// From this many messages on, a batch's sync is cheap enough per message.
const LARGE: usize = 8;
/// Messages expected within the wait for it to be worth a sleep.
const WORTH_IT: f64 = 2.0;
/// Weight of the newest batch in the arrival rate.
const SMOOTHING: f64 = 0.2;

pub(super) struct Company {
    wait: Duration,
    /// Messages per second, smoothed over recent batches.
    rate: f64,
    /// When the previous batch was read.
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

    /// Called once per batch, with the number of messages it was read
    /// with: how long to wait for more, if at all.
    pub(super) fn wait_for(&mut self, messages: usize, now: Instant) -> Option<Duration> {
        if self.wait.is_zero() {
            return None;
        }
        if let Some(last) = self.last {
            let gap = now.duration_since(last).as_secs_f64().max(1e-6);
            self.rate += SMOOTHING * (messages as f64 / gap - self.rate);
        }
        self.last = Some(now);
        (messages < LARGE && self.rate * self.wait.as_secs_f64() >= WORTH_IT).then_some(self.wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits at a steady 20k msgs/s of single messages; not at 1k, not for
    /// large batches, not when turned off.
    #[test]
    fn waits_only_when_company_is_coming() {
        let wait = Duration::from_micros(250);
        let run = |every: Duration, size: usize, wait: Duration| {
            let mut c = Company::new(wait);
            let mut now = Instant::now();
            let mut answer = None;
            for _ in 0..50 {
                answer = c.wait_for(size, now);
                now += every;
            }
            answer
        };
        assert_eq!(run(Duration::from_micros(50), 1, wait), Some(wait));
        assert_eq!(run(Duration::from_millis(1), 1, wait), None);
        assert_eq!(run(Duration::from_micros(50), LARGE, wait), None);
        assert_eq!(run(Duration::from_micros(50), 1, Duration::ZERO), None);
    }
}
