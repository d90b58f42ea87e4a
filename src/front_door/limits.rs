//! Per-device limits: the publish rate (a token bucket, plus the bookkeeping
//! that keeps a flooding device from also flooding the events topic) and the
//! number of distinct streams a device may publish on.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The streams each device has published on, shared by all its
/// connections. Each stream is a clean topic the router never forgets (and
/// keeps a retained message for), so a device that made up a new stream
/// per message would grow the router without bound.
pub struct Streams {
    max: usize,
    seen: Mutex<HashMap<String, HashSet<String>>>,
}

impl Streams {
    pub fn new(max: usize) -> Streams {
        Streams {
            max,
            seen: Mutex::default(),
        }
    }

    /// Whether `device` may publish on `stream`: one it used before, or a
    /// new one within the cap.
    pub fn admit(&self, device: &str, stream: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let streams = match seen.get_mut(device) {
            Some(s) => s,
            None => seen.entry(device.to_owned()).or_default(),
        };
        if streams.contains(stream) {
            return true;
        }
        if streams.len() >= self.max {
            return false;
        }
        streams.insert(stream.to_owned());
        true
    }
}

/// What to do with one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Over the limit. `event`: publish a `rate_limited` event now (at most
    /// one a second). `cut_off`: the device keeps sending at more than ten
    /// times its rate; close the connection.
    Over {
        event: bool,
        cut_off: bool,
    },
}

#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Start of the current one-second window and refusals in it.
    window_start: Instant,
    over_in_window: u32,
    last_event: Option<Instant>,
}

const WINDOW: Duration = Duration::from_secs(1);
/// A device refused more than this many times its rate within a second is
/// disconnected.
const CUT_OFF_FACTOR: f64 = 10.0;

impl RateLimit {
    /// `rate` messages a second, bursts of up to `burst`.
    pub fn new(rate: f64, burst: u32, now: Instant) -> RateLimit {
        RateLimit {
            rate,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
            window_start: now,
            over_in_window: 0,
            last_event: None,
        }
    }

    /// Whether a message now would be within the rate, taking nothing: for
    /// the HTTP ingest, which charges only what verified ([`Self::charge`]),
    /// so requests forged in a device's name cannot use up its rate.
    pub fn has_room(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Whether nothing was asked of the bucket for `idle`.
    pub fn idle_since(&self, now: Instant, idle: Duration) -> bool {
        now.saturating_duration_since(self.last) >= idle
    }

    /// Takes one message's worth (the bucket may go below zero).
    pub fn charge(&mut self) {
        self.tokens -= 1.0;
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Admit;
        }
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.over_in_window = 0;
        }
        self.over_in_window += 1;
        let event = self
            .last_event
            .is_none_or(|t| now.saturating_duration_since(t) >= WINDOW);
        if event {
            self.last_event = Some(now);
        }
        let cut_off = f64::from(self.over_in_window) > CUT_OFF_FACTOR * self.rate.max(1.0);
        Verdict::Over { event, cut_off }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_has_its_own_streams_up_to_the_cap() {
        let s = Streams::new(2);
        assert!(s.admit("a", "t") && s.admit("a", "") && s.admit("a", "t"));
        assert!(!s.admit("a", "new"));
        assert!(s.admit("b", "new"));
    }

    #[test]
    fn bucket_admits_burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10.0, 5, t0);
        for _ in 0..5 {
            assert_eq!(r.check(t0), Verdict::Admit);
        }
        assert_eq!(
            r.check(t0),
            Verdict::Over {
                event: true,
                cut_off: false
            }
        );
        assert_eq!(
            r.check(t0),
            Verdict::Over {
                event: false,
                cut_off: false
            }
        );
        // 100 ms later one token is back.
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Admit);
        // A second later, another event may be published.
        let t1 = t0 + Duration::from_millis(1100);
        for _ in 0..5 {
            assert_eq!(r.check(t1), Verdict::Admit);
        }
        assert_eq!(
            r.check(t1),
            Verdict::Over {
                event: true,
                cut_off: false
            }
        );
    }

    #[test]
    fn sustained_flood_is_cut_off() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(2.0, 1, t0);
        assert_eq!(r.check(t0), Verdict::Admit);
        let mut cut = false;
        for i in 0..100u64 {
            if let Verdict::Over { cut_off: true, .. } = r.check(t0 + Duration::from_millis(i)) {
                cut = true;
                assert!(i >= 20, "cut off after {i} refusals");
                break;
            }
        }
        assert!(cut);
    }
}
