//! Hostile traffic: each attack proves first that the gateway accepts an
//! honest message from the same device (so a quiet `clean/` means "refused",
//! not "broken"), then sends the hostile messages, then an honest canary.
//! The canary travels the same connection after the hostile messages, so
//! once it is delivered every hostile message has been decided and anything
//! of them that reached `clean/` has been seen.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use rumqttc::AsyncClient;
use sealgate_envelope::{self as envelope, DeviceKeys, Enc};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::time::Instant;

use crate::collector::{self, Observed};
use crate::device;
use crate::fleet::{self, SimDevice};
use crate::ledger::Tally;
use crate::message::{self, first_nonce, plaintext};
use crate::report::{AttackReport, AttackSummary};
use crate::Common;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttackKind {
    /// Resend the exact bytes of an accepted message.
    Replay,
    /// Flip a bit in the IV, body or MAC of a valid message.
    Tamper,
    /// Seal with a random key.
    WrongKey,
    /// Seal validly with a nonce 1000 below an accepted one.
    Stale,
    /// Device A's message published by A on device B's topic.
    ForeignTopic,
    /// Every attack above, in turn.
    All,
}

impl AttackKind {
    const EACH: [AttackKind; 5] = [
        AttackKind::Replay,
        AttackKind::Tamper,
        AttackKind::WrongKey,
        AttackKind::Stale,
        AttackKind::ForeignTopic,
    ];

    fn name(self) -> &'static str {
        match self {
            AttackKind::Replay => "replay",
            AttackKind::Tamper => "tamper",
            AttackKind::WrongKey => "wrong-key",
            AttackKind::Stale => "stale",
            AttackKind::ForeignTopic => "foreign-topic",
            AttackKind::All => "all",
        }
    }

    fn expected(self) -> &'static str {
        match self {
            AttackKind::Replay => "duplicate: dropped silently, no event",
            AttackKind::Tamper | AttackKind::WrongKey => "bad_mac",
            AttackKind::Stale => "stale_nonce",
            AttackKind::ForeignTopic => "not_allowed or bad_mac",
            AttackKind::All => "",
        }
    }

    fn expand(self) -> Vec<AttackKind> {
        if self == AttackKind::All {
            AttackKind::EACH.to_vec()
        } else {
            vec![self]
        }
    }
}

/// How long to wait for an honest message before calling the gateway deaf.
const HONEST_WAIT: Duration = Duration::from_secs(10);
/// Events may trail the canary (they are another topic); wait this much more.
const AFTER_CANARY: Duration = Duration::from_millis(500);
/// Without a canary, how long `clean/` must stay quiet.
const QUIET: Duration = Duration::from_secs(3);
/// The stale attack's distance below the accepted nonce: far outside the
/// default window of 64.
const STALE_BY: u64 = 1000;

pub async fn run(common: &Common, kind: AttackKind, hostile: u32) -> Result<AttackSummary, String> {
    let (source, imp) = (common.source.clone(), common.sealer);
    let pair = tokio::task::spawn_blocking(move || fleet::provision(&source, Some(2), imp))
        .await
        .map_err(|e| format!("provisioning stopped: {e}"))??;
    let [a, b]: [SimDevice; 2] = pair
        .try_into()
        .map_err(|_| "two devices are needed".to_owned())?;

    let (tx, rx) = mpsc::unbounded_channel();
    let collector =
        collector::start(&common.target, &common.subscriber, &common.topics, tx).await?;
    let tally = Arc::new(Tally::new(std::time::Instant::now())?);
    let link_a = device::connect(&a, &common.target, common.link, tally.clone()).await?;
    // B publishes nothing; it is online so the foreign-topic attack targets
    // a live device, as it would in the field.
    let link_b = device::connect(&b, &common.target, common.link, tally).await?;

    let mut arena = Arena {
        common,
        a,
        b,
        client_a: link_a.client.clone(),
        rx,
        log: Vec::new(),
        next_nonce: 0,
    };
    let mut reports = Vec::new();
    for k in kind.expand() {
        let r = arena.attack(k, hostile).await?;
        reports.push(r);
    }
    let devices = [arena.a.id.clone(), arena.b.id.clone()];
    link_a.close().await;
    link_b.close().await;
    collector.close().await;
    Ok(AttackSummary::new(devices, common.sealer.name(), reports))
}

struct Arena<'c> {
    common: &'c Common,
    a: SimDevice,
    b: SimDevice,
    client_a: AsyncClient,
    rx: UnboundedReceiver<Observed>,
    /// What the subscriber saw since the log was last cleared.
    log: Vec<Observed>,
    next_nonce: u64,
}

impl Arena<'_> {
    /// Nonces above anything used before, this run or earlier ones.
    fn fresh_nonce(&mut self) -> u64 {
        let n = self.next_nonce.max(first_nonce(message::now_ms()));
        self.next_nonce = n + 1;
        n
    }

    /// A's own sealing, with the run's `--impl`: the honest messages and
    /// canaries, and the validly sealed messages that replay, tamper, stale
    /// and foreign-topic turn hostile.
    fn seal_a(&self, nonce: u64, pt: &[u8]) -> Result<Vec<u8>, String> {
        message::seal_as(&self.a, &self.common.stream, nonce, pt, self.common.style)
            .map_err(|e| format!("device {}: {e}", self.a.id))
    }

    fn topic_of(&self, device_id: &str) -> String {
        message::topic(&self.common.topics.sealed, device_id, &self.common.stream)
    }

    async fn publish_a(&self, topic: String, bytes: Vec<u8>) -> Result<(), String> {
        self.client_a
            .publish(topic, self.common.qos, false, bytes)
            .await
            .map_err(|e| format!("device {}: publish failed: {e}", self.a.id))
    }

    /// Receives into the log until `deadline`, or until an item satisfies
    /// `want`. True when it did.
    async fn collect_until(&mut self, deadline: Instant, want: impl Fn(&Observed) -> bool) -> bool {
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(o)) => {
                    let hit = want(&o);
                    self.log.push(o);
                    if hit {
                        return true;
                    }
                }
                Ok(None) | Err(_) => return false,
            }
        }
    }

    /// Publishes `pt` sealed by A with `nonce` on A's topic and waits for it
    /// on `clean/`: as the plaintext, or as the envelope itself when the
    /// gateway runs in passthrough mode. Returns whether it arrived, and the
    /// sealed bytes.
    async fn honest(&mut self, nonce: u64, pt: &[u8]) -> Result<(bool, Vec<u8>), String> {
        let sealed = self.seal_a(nonce, pt)?;
        self.publish_a(self.topic_of(&self.a.id), sealed.clone())
            .await?;
        let id = self.a.id.clone();
        let seen = self
            .collect_until(Instant::now() + HONEST_WAIT, |o| {
                is_clean(o, &id, pt) || is_clean(o, &id, &sealed)
            })
            .await;
        Ok((seen, sealed))
    }

    async fn attack(&mut self, kind: AttackKind, hostile: u32) -> Result<AttackReport, String> {
        let mut report = AttackReport {
            attack: kind.name(),
            expected: kind.expected(),
            honest_delivered: false,
            hostile_sent: 0,
            hostile_reached_clean: 0,
            events: BTreeMap::new(),
            dropped_silently: 0,
            passed: false,
            notes: Vec::new(),
        };
        while self.rx.try_recv().is_ok() {}
        self.log.clear();

        let x = self.fresh_nonce();
        let honest_pt = plaintext(x, self.common.payload_bytes);
        let (delivered, honest_sealed) = self.honest(x, &honest_pt).await?;
        report.honest_delivered = delivered;
        if !report.honest_delivered {
            report.notes.push(format!(
                "the honest message of {} was not delivered within {} s; hostile messages \
                 were not sent (is the device registered and the gateway verifying?)",
                self.a.id,
                HONEST_WAIT.as_secs()
            ));
            report.finish();
            return Ok(report);
        }
        self.log.clear();

        let hostile_msgs = self.hostile(kind, hostile, x, &honest_sealed)?;
        let mut hostile_nonces = HashSet::new();
        for (topic, nonce, bytes) in hostile_msgs {
            self.publish_a(topic, bytes).await?;
            hostile_nonces.insert(nonce);
            report.hostile_sent += 1;
        }

        let y = self.fresh_nonce();
        let canary_pt = plaintext(y, self.common.payload_bytes);
        let (canary_seen, canary_sealed) = self.honest(y, &canary_pt).await?;
        if canary_seen {
            self.collect_until(Instant::now() + AFTER_CANARY, |_| false)
                .await;
        } else {
            report.notes.push(
                "the canary after the hostile messages was not delivered; waited for \
                 quiet instead"
                    .into(),
            );
            let mut last = self.log.len();
            loop {
                self.collect_until(Instant::now() + QUIET, |_| false).await;
                if self.log.len() == last {
                    break;
                }
                last = self.log.len();
            }
        }

        let ours = [self.a.id.as_str(), self.b.id.as_str()];
        let mut unrelated = 0u64;
        for o in &self.log {
            match o {
                Observed::Clean {
                    device_id, payload, ..
                } if ours.contains(&device_id.as_str())
                    && *payload != canary_pt
                    && *payload != canary_sealed =>
                {
                    report.hostile_reached_clean += 1;
                }
                Observed::Event {
                    device_id,
                    reason,
                    nonce,
                    ..
                } if ours.contains(&device_id.as_str()) => {
                    // An event naming a nonce we did not send in this attack
                    // is someone else's traffic on the same devices.
                    if nonce.is_some_and(|n| !hostile_nonces.contains(&n)) {
                        unrelated += 1;
                    } else {
                        *report.events.entry(reason.clone()).or_insert(0) += 1;
                    }
                }
                _ => {}
            }
        }
        if unrelated > 0 {
            report.notes.push(format!(
                "{unrelated} event(s) for other nonces of these devices were ignored"
            ));
        }
        report.finish();
        Ok(report)
    }

    /// The hostile messages of one attack, as (topic, nonce, payload); all
    /// are published by A's connection.
    fn hostile(
        &mut self,
        kind: AttackKind,
        n: u32,
        accepted: u64,
        accepted_bytes: &[u8],
    ) -> Result<Vec<(String, u64, Vec<u8>)>, String> {
        let own = self.topic_of(&self.a.id);
        let mut out = Vec::new();
        for i in 0..u64::from(n) {
            let msg = match kind {
                AttackKind::Replay => (own.clone(), accepted, accepted_bytes.to_vec()),
                AttackKind::Tamper => {
                    let nonce = self.fresh_nonce();
                    let valid = self.seal_a(nonce, &plaintext(nonce, self.common.payload_bytes))?;
                    // The bit flip is Rust's, whichever library sealed.
                    let bad = tamper(&valid, i as usize, n as usize)
                        .ok_or("no byte of the sealed message can be flipped and still parse")?;
                    (own.clone(), nonce, bad)
                }
                AttackKind::WrongKey => {
                    let nonce = self.fresh_nonce();
                    // Forged in Rust with `--impl c` too: no device holds
                    // this key, so it is not the device's library at work.
                    let keys = DeviceKeys::from_secret(&rand::random::<[u8; 32]>());
                    let pt = plaintext(nonce, self.common.payload_bytes);
                    let bytes = message::seal(
                        &keys,
                        &self.a.id,
                        self.a.kid,
                        &self.common.stream,
                        nonce,
                        &pt,
                        self.common.style,
                    )?;
                    (own.clone(), nonce, bytes)
                }
                AttackKind::Stale => {
                    let nonce = accepted.saturating_sub(STALE_BY + i).max(1);
                    let pt = plaintext(nonce, self.common.payload_bytes);
                    (own.clone(), nonce, self.seal_a(nonce, &pt)?)
                }
                AttackKind::ForeignTopic => {
                    let nonce = self.fresh_nonce();
                    let pt = plaintext(nonce, self.common.payload_bytes);
                    (self.topic_of(&self.b.id), nonce, self.seal_a(nonce, &pt)?)
                }
                AttackKind::All => return Ok(out),
            };
            out.push(msg);
        }
        Ok(out)
    }
}

fn is_clean(o: &Observed, device: &str, payload: &[u8]) -> bool {
    matches!(o, Observed::Clean { device_id, payload: p, .. } if device_id == device && p == payload)
}

/// Positions where flipping the low bit still leaves an envelope that parses
/// with the same kid, nonce, encryption and body length: the IV, body and
/// MAC. Found through the library's parser rather than by knowing the layout,
/// so the gateway is tested on its MAC check, not on its parser.
fn tamper_positions(msg: &[u8]) -> Vec<usize> {
    let Ok(orig) = envelope::parse(msg) else {
        return Vec::new();
    };
    let same_shape = |p: &envelope::Parsed| {
        p.kid == orig.kid
            && p.nonce == orig.nonce
            && p.body.len() == orig.body.len()
            && matches!(
                (p.enc, orig.enc),
                (Enc::None, Enc::None) | (Enc::Aes128Cbc(_), Enc::Aes128Cbc(_))
            )
            && *p != orig
    };
    let mut m = msg.to_vec();
    (0..msg.len())
        .filter(|&i| {
            m[i] ^= 1;
            let ok = envelope::parse(&m).is_ok_and(|p| same_shape(&p));
            m[i] ^= 1;
            ok
        })
        .collect()
}

/// The `i`-th of `n` tampered copies: positions spread over the whole
/// tamperable area so both body and MAC get hit.
fn tamper(msg: &[u8], i: usize, n: usize) -> Option<Vec<u8>> {
    let pos = tamper_positions(msg);
    let at = *pos.get(i.checked_mul(pos.len())? / n.max(1))?;
    let mut out = msg.to_vec();
    out[at] ^= 1;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SealStyle;

    #[test]
    fn tampered_messages_parse_but_fail_the_mac() {
        let keys = DeviceKeys::from_secret(&[9; 32]);
        for binary in [false, true] {
            for encrypt in [false, true] {
                let style = SealStyle { binary, encrypt };
                let pt = plaintext(500, 64);
                let valid =
                    message::seal(&keys, "d1", 1, "telemetry", 500, &pt, style).expect("seals");
                let ok = envelope::parse(&valid).expect("valid parses");
                assert!(ok.mac_matches(&keys.mac, "d1", "telemetry"));
                let n = 20;
                let mut distinct = std::collections::HashSet::new();
                for i in 0..n {
                    let bad = tamper(&valid, i, n).expect("tamperable");
                    let p = envelope::parse(&bad).expect("still parses");
                    assert_eq!(p.nonce, 500);
                    assert!(
                        !p.mac_matches(&keys.mac, "d1", "telemetry"),
                        "{binary} {encrypt} {i}"
                    );
                    distinct.insert(bad);
                }
                assert!(distinct.len() >= n / 2, "positions should spread");
            }
        }
    }

    #[test]
    fn all_expands_to_every_attack() {
        assert_eq!(AttackKind::All.expand().len(), 5);
        assert_eq!(AttackKind::Stale.expand(), vec![AttackKind::Stale]);
        assert!(AttackKind::EACH.iter().all(|k| !k.expected().is_empty()));
    }
}
