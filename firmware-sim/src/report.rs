//! The figures a run ends with, as text for people and as one JSON object
//! for scripts (`--json`). Arithmetic lives here so it can be tested without
//! a gateway.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procstat::WatchedCpu;

/// How the load was shaped, echoed so a saved report explains itself.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSettings {
    pub devices: usize,
    pub target_rate: f64,
    pub qos: u8,
    pub format: &'static str,
    pub encrypt: bool,
    pub payload_bytes: usize,
    pub stream: String,
    /// `--impl`: the library that sealed (`rust` or `c`).
    #[serde(rename = "impl")]
    pub sealer: &'static str,
}

/// Raw counts at the end of a run, before any arithmetic.
#[derive(Debug, Clone, Default)]
pub struct LoadCounts {
    pub sent: u64,
    /// PUBACK/PUBCOMP seen; ignored for QoS 0, where nothing is acknowledged.
    pub acked: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub rejected: BTreeMap<String, u64>,
    pub reconnects: u64,
    pub publish_secs: f64,
    pub drain_secs: f64,
    /// From the start of publishing to the last delivery or event.
    pub active_secs: f64,
    /// False when the drain gave up before every message was accounted for.
    pub drained: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub mode: &'static str,
    pub settings: LoadSettings,
    pub sent: u64,
    pub acknowledged: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub rejected_total: u64,
    pub rejected: BTreeMap<String, u64>,
    pub publish_secs: f64,
    pub drain_secs: f64,
    /// Seconds from the start of publishing to the last delivery or event:
    /// `delivered / max(active_secs, publish_secs)` is the rate a server
    /// that drains a backlog after publishing stopped really delivered at.
    pub active_secs: f64,
    pub drained: bool,
    pub delivered_per_sec: f64,
    /// Milliseconds, end to end (device send to subscriber receive); absent
    /// when nothing was delivered.
    pub latency_ms: Option<Latency>,
    pub reconnects: u64,
    /// `--cpu-pid`: CPU time of the watched processes over the window from
    /// the start of publishing to the end of the drain.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub watched_cpu: Vec<WatchedCpu>,
}

/// Acknowledged messages neither delivered nor rejected: the ones the gateway
/// took responsibility for and then lost.
pub fn lost(acknowledged: u64, delivered: u64, rejected: u64) -> u64 {
    acknowledged.saturating_sub(delivered.saturating_add(rejected))
}

pub fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Percentiles in ms from a histogram of microseconds.
pub fn latency(hist: &Histogram<u64>) -> Option<Latency> {
    if hist.is_empty() {
        return None;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Some(Latency {
        p50: ms(hist.value_at_quantile(0.50)),
        p90: ms(hist.value_at_quantile(0.90)),
        p99: ms(hist.value_at_quantile(0.99)),
        max: ms(hist.max()),
    })
}

impl LoadReport {
    pub fn new(settings: LoadSettings, c: LoadCounts, hist: &Histogram<u64>) -> LoadReport {
        // QoS 0 has no acknowledgement; every send is as acknowledged as it gets.
        let acknowledged = if settings.qos == 0 { c.sent } else { c.acked };
        let rejected_total = c.rejected.values().sum();
        LoadReport {
            mode: "load",
            sent: c.sent,
            acknowledged,
            delivered: c.delivered,
            lost: lost(acknowledged, c.delivered, rejected_total),
            duplicates: c.duplicates,
            unexpected: c.unexpected,
            rejected_total,
            rejected: c.rejected,
            publish_secs: c.publish_secs,
            drain_secs: c.drain_secs,
            active_secs: c.active_secs,
            drained: c.drained,
            delivered_per_sec: per_sec(c.delivered, c.publish_secs),
            latency_ms: latency(hist),
            reconnects: c.reconnects,
            watched_cpu: Vec::new(),
            settings,
        }
    }

    pub fn text(&self) -> String {
        let s = &self.settings;
        let mut o = String::new();
        let rate = if s.target_rate > 0.0 {
            format!("{} msg/s", s.target_rate)
        } else {
            "as fast as possible".into()
        };
        let _ = writeln!(
            o,
            "{} devices, {rate}, qos {}, {}{}, {} B plaintext, stream {:?}, sealed by {}, {:.1} s",
            s.devices,
            s.qos,
            s.format,
            if s.encrypt { " + aes-128-cbc" } else { "" },
            s.payload_bytes,
            s.stream,
            s.sealer,
            self.publish_secs
        );
        let _ = writeln!(o, "  sent          {}", self.sent);
        let _ = writeln!(o, "  acknowledged  {}", self.acknowledged);
        let _ = writeln!(
            o,
            "  delivered     {}  ({:.1} msg/s)",
            self.delivered, self.delivered_per_sec
        );
        let _ = writeln!(o, "  lost          {}", self.lost);
        let _ = writeln!(
            o,
            "  rejected      {}{}",
            self.rejected_total,
            reasons(&self.rejected)
        );
        let _ = writeln!(o, "  duplicates    {}", self.duplicates);
        let _ = writeln!(o, "  unexpected    {}", self.unexpected);
        match &self.latency_ms {
            Some(l) => {
                let _ = writeln!(
                    o,
                    "  latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                    l.p50, l.p90, l.p99, l.max
                );
            }
            None => {
                let _ = writeln!(o, "  latency ms    -");
            }
        }
        if self.reconnects > 0 {
            let _ = writeln!(o, "  reconnects    {}", self.reconnects);
        }
        if !self.drained {
            let _ = writeln!(
                o,
                "  (drain stopped after {:.1} s with messages unaccounted for)",
                self.drain_secs
            );
        }
        o
    }
}

fn reasons(by: &BTreeMap<String, u64>) -> String {
    if by.is_empty() {
        return String::new();
    }
    let list: Vec<String> = by.iter().map(|(r, n)| format!("{r} {n}")).collect();
    format!("  ({})", list.join(", "))
}

/// One attack's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    pub attack: &'static str,
    /// What a correct gateway does with the hostile messages.
    pub expected: &'static str,
    pub honest_delivered: bool,
    pub hostile_sent: u64,
    pub hostile_reached_clean: u64,
    pub events: BTreeMap<String, u64>,
    /// Hostile messages that produced neither a clean message nor an event;
    /// by design for replays (`duplicate`).
    pub dropped_silently: u64,
    pub passed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl AttackReport {
    pub fn finish(&mut self) {
        let events: u64 = self.events.values().sum();
        self.dropped_silently = self
            .hostile_sent
            .saturating_sub(self.hostile_reached_clean.saturating_add(events));
        self.passed = self.honest_delivered && self.hostile_reached_clean == 0;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AttackSummary {
    pub mode: &'static str,
    pub devices: [String; 2],
    /// `--impl`: the library that sealed the devices' own messages.
    #[serde(rename = "impl")]
    pub sealer: &'static str,
    pub attacks: Vec<AttackReport>,
    pub passed: bool,
}

impl AttackSummary {
    pub fn new(
        devices: [String; 2],
        sealer: &'static str,
        attacks: Vec<AttackReport>,
    ) -> AttackSummary {
        let passed = attacks.iter().all(|a| a.passed);
        AttackSummary {
            mode: "attack",
            devices,
            sealer,
            attacks,
            passed,
        }
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "attacks with devices {} and {} (sealed by {})",
            self.devices[0], self.devices[1], self.sealer
        );
        for a in &self.attacks {
            let _ = writeln!(
                o,
                "  {:<14} {}  honest delivered: {}  hostile sent {}  reached clean/ {}  \
                 events {}  dropped silently {}   (expected: {})",
                a.attack,
                if a.passed { "PASS" } else { "FAIL" },
                if a.honest_delivered { "yes" } else { "NO" },
                a.hostile_sent,
                a.hostile_reached_clean,
                if a.events.is_empty() {
                    "none".to_owned()
                } else {
                    a.events
                        .iter()
                        .map(|(r, n)| format!("{r} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                a.dropped_silently,
                a.expected
            );
            for n in &a.notes {
                let _ = writeln!(o, "      note: {n}");
            }
        }
        o
    }

    /// Why the run failed, for the exit message.
    pub fn failure(&self) -> Option<String> {
        let failed: Vec<String> = self
            .attacks
            .iter()
            .filter(|a| !a.passed)
            .map(|a| {
                if !a.honest_delivered {
                    format!("{}: the honest message was not delivered", a.attack)
                } else {
                    format!(
                        "{}: {} hostile message(s) reached clean/",
                        a.attack, a.hostile_reached_clean
                    )
                }
            })
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(qos: u8) -> LoadSettings {
        LoadSettings {
            devices: 2,
            target_rate: 100.0,
            qos,
            format: "json",
            encrypt: false,
            payload_bytes: 128,
            stream: "telemetry".into(),
            sealer: "rust",
        }
    }

    fn hist(values_us: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("hist");
        for v in values_us {
            h.record(*v).expect("record");
        }
        h
    }

    #[test]
    fn lost_is_never_negative() {
        assert_eq!(lost(100, 90, 5), 5);
        assert_eq!(lost(100, 95, 10), 0);
        assert_eq!(lost(0, 0, 0), 0);
        assert_eq!(lost(u64::MAX, u64::MAX, u64::MAX), 0);
    }

    #[test]
    fn report_arithmetic() {
        let mut rejected = BTreeMap::new();
        rejected.insert("bad_mac".to_owned(), 3);
        rejected.insert("rate_limited".to_owned(), 2);
        let c = LoadCounts {
            sent: 1000,
            acked: 990,
            delivered: 980,
            rejected,
            publish_secs: 10.0,
            drained: true,
            ..LoadCounts::default()
        };
        let r = LoadReport::new(settings(1), c.clone(), &hist(&[1000, 2000, 3000, 4000]));
        assert_eq!(r.acknowledged, 990);
        assert_eq!(r.rejected_total, 5);
        assert_eq!(r.lost, 5);
        assert!((r.delivered_per_sec - 98.0).abs() < 1e-9);
        let l = r.latency_ms.expect("latency");
        assert!((l.max - 4.0).abs() < 0.01, "{l:?}");
        assert!((l.p50 - 2.0).abs() < 0.01, "{l:?}");
        assert!(r.text().contains("bad_mac 3"));

        // QoS 0: acknowledged is what was sent.
        let r0 = LoadReport::new(settings(0), c, &hist(&[]));
        assert_eq!(r0.acknowledged, 1000);
        assert_eq!(r0.lost, 15);
        assert!(r0.latency_ms.is_none());
        let json = serde_json::to_value(&r0).expect("json");
        assert_eq!(json["mode"], "load");
        assert!(json["latency_ms"].is_null());
    }

    #[test]
    fn per_sec_handles_zero_time() {
        assert_eq!(per_sec(10, 0.0), 0.0);
        assert_eq!(per_sec(10, 2.0), 5.0);
    }

    #[test]
    fn attack_verdicts() {
        let mut a = AttackReport {
            attack: "replay",
            expected: "duplicate",
            honest_delivered: true,
            hostile_sent: 20,
            hostile_reached_clean: 0,
            events: BTreeMap::new(),
            dropped_silently: 0,
            passed: false,
            notes: vec![],
        };
        a.finish();
        assert!(a.passed);
        assert_eq!(a.dropped_silently, 20);
        let mut b = a.clone();
        b.attack = "tamper";
        b.events.insert("bad_mac".into(), 19);
        b.hostile_reached_clean = 1;
        b.finish();
        assert!(!b.passed);
        assert_eq!(b.dropped_silently, 0);
        let mut c = a.clone();
        c.honest_delivered = false;
        c.finish();
        let s = AttackSummary::new(["a".into(), "b".into()], "rust", vec![a, b, c]);
        assert!(!s.passed);
        let f = s.failure().expect("failure");
        assert!(f.contains("tamper: 1 hostile"), "{f}");
        assert!(
            f.contains("replay: the honest message was not delivered"),
            "{f}"
        );
    }
}
