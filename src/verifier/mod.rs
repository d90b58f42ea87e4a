//! The verifier: one thread that takes sealed publishes from the front door
//! in batches, checks each ([`check`]), group-commits the replay windows to
//! sled, and only then republishes and acknowledges.
//!
//! It runs on its own OS thread because everything it does blocks: sled's
//! flush, rumqttd's router channel, and CPU-bound crypto.

pub mod check;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::events::{result, RejectReason, SecurityEvent};
use crate::metrics::Metrics;
use crate::replay::ReplayStore;
use crate::republish::Republisher;
use check::{Checked, Checker};

/// A sealed publish handed over by a connection.
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
    pub retain: bool,
    /// Where to acknowledge once the outcome is final (QoS 1 and 2 only).
    pub ack: Option<AckTo>,
}

/// A connection's acknowledgement channel plus the packet to acknowledge.
pub struct AckTo {
    pub tx: mpsc::UnboundedSender<AckResult>,
    pub pkid: u16,
    pub qos2: bool,
}

/// The final outcome of one acknowledged publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckResult {
    pub pkid: u16,
    pub qos2: bool,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (or, for `duplicate`, delivered before).
    Delivered,
    /// Refused for good: acknowledging stops the device resending it.
    Rejected(RejectReason),
    /// Not made durable: the device should resend later.
    Unavailable,
}

pub enum Input {
    Message(Inbound),
    /// Operator reset of a device's window; answered once durable.
    ResetWindow(String, oneshot::Sender<Result<(), String>>),
    /// Stop taking input, finish what is queued, then exit.
    Close,
}

pub struct Verifier {
    pub checker: Checker,
    pub store: ReplayStore,
    pub out: Republisher,
    pub metrics: Arc<Metrics>,
    /// Cleared for good when a commit or the router hand-off fails: the
    /// gateway fails closed until restarted.
    pub store_ok: Arc<AtomicBool>,
    pub max_batch: usize,
    pub passthrough: bool,
}

/// A verified message waiting for its batch's commit.
struct Accepted {
    /// Index of its entry in the batch's `pending` list.
    idx: usize,
    topic: crate::envelope::SealedTopic,
    nonce: u64,
    plaintext: Vec<u8>,
    retain: bool,
}

struct Pending {
    ack: Option<AckTo>,
    outcome: Outcome,
}

fn now_rfc3339() -> String {
    crate::rfc3339_ms(crate::now_ms())
}

impl Verifier {
    /// Runs until `Input::Close` has been seen and the queue is empty.
    pub fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            batch.push(first);
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let close = self.process(&mut batch);
            if close {
                // Refuse new input; what is already queued is still drained.
                rx.close();
            }
        }
        tracing::info!("Verifier drained and stopped.");
    }

    /// Handles one batch; returns true if it contained `Close`.
    fn process(&mut self, batch: &mut Vec<Input>) -> bool {
        let now = crate::now_ms();
        let mut close = false;
        let mut pending: Vec<Pending> = Vec::with_capacity(batch.len());
        let mut accepted: Vec<Accepted> = Vec::new();
        for input in batch.drain(..) {
            let m = match input {
                Input::Message(m) => m,
                Input::Close => {
                    close = true;
                    continue;
                }
                Input::ResetWindow(id, reply) => {
                    let r = self.store.reset(&id).map_err(|e| e.to_string());
                    let _ = reply.send(r);
                    continue;
                }
            };
            let outcome = self.verify_one(&m, now, &mut accepted, pending.len());
            pending.push(Pending {
                ack: m.ack,
                outcome,
            });
        }
        self.commit_and_publish(&mut pending, accepted);
        for p in pending {
            if let Some(a) = p.ack {
                let _ = a.tx.send(AckResult {
                    pkid: a.pkid,
                    qos2: a.qos2,
                    outcome: p.outcome,
                });
            }
        }
        close
    }

    /// Decides one message. Accepted ones are recorded in memory and listed
    /// in `accepted` for publishing after the commit.
    fn verify_one(
        &mut self,
        m: &Inbound,
        now: u64,
        accepted: &mut Vec<Accepted>,
        idx: usize,
    ) -> Outcome {
        let Ok(topic) = std::str::from_utf8(&m.topic) else {
            return Outcome::Rejected(RejectReason::Malformed);
        };
        if self.passthrough {
            let clean = topic.replacen(&self.checker.sealed_prefix, &self.out.topics().clean, 1);
            self.out.queue(clean, m.payload.clone(), m.retain);
            return Outcome::Delivered;
        }
        if !self.store_ok.load(Ordering::Relaxed) {
            // Fail closed, but still say which device was turned away.
            let (device, stream) =
                match crate::envelope::SealedTopic::parse(&self.checker.sealed_prefix, topic) {
                    Ok(t) => (t.device_id, Some(t.stream)),
                    Err(_) => (String::new(), None),
                };
            return self.rejected(RejectReason::StoreUnavailable, device, stream, None, None);
        }
        let started = Instant::now();
        let checked = self.checker.check(topic, &m.payload, &mut self.store, now);
        self.metrics
            .verify_seconds
            .observe(started.elapsed().as_secs_f64());
        match checked {
            Ok(Checked::Accept {
                topic,
                nonce,
                mac,
                plaintext,
            }) => {
                if let Err(e) = self.store.accept(&topic.device_id, nonce, &mac, now) {
                    self.store_failed(&e);
                    return self.rejected(
                        RejectReason::StoreUnavailable,
                        topic.device_id,
                        Some(topic.stream),
                        Some(nonce),
                        None,
                    );
                }
                accepted.push(Accepted {
                    idx,
                    topic,
                    nonce,
                    plaintext,
                    retain: m.retain,
                });
                Outcome::Delivered
            }
            Ok(Checked::Unsealed { topic }) => {
                self.metrics.message(result::UNVERIFIED);
                let t = topic.under(&self.out.topics().unverified);
                self.out.queue(t, m.payload.clone(), m.retain);
                Outcome::Delivered
            }
            Ok(Checked::Reject {
                reason,
                device_id,
                stream,
                nonce,
                detail,
            }) => self.rejected(reason, device_id, stream, nonce, detail),
            Err(e) => {
                self.store_failed(&e);
                let device =
                    crate::envelope::SealedTopic::parse(&self.checker.sealed_prefix, topic)
                        .map(|t| t.device_id)
                        .unwrap_or_default();
                self.rejected(RejectReason::StoreUnavailable, device, None, None, None)
            }
        }
    }

    fn store_failed(&self, e: &crate::replay::StoreError) {
        if self.store_ok.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %e, "Replay store failed; refusing all sealed traffic until restart.");
        }
    }

    /// Counts, logs and queues the event for a reject. `duplicate` is a
    /// retransmission: counted, no event, and acknowledged as delivered.
    fn rejected(
        &mut self,
        reason: RejectReason,
        device_id: String,
        stream: Option<String>,
        nonce: Option<u64>,
        detail: Option<crate::envelope::Malformed>,
    ) -> Outcome {
        self.metrics.reject(reason);
        if reason == RejectReason::Duplicate {
            self.metrics.message(result::DUPLICATE);
            tracing::debug!(device_id = %device_id, nonce, "Dropped duplicate.");
            return Outcome::Delivered;
        }
        self.metrics.message(result::REJECTED);
        if reason == RejectReason::StoreUnavailable {
            // The failure itself was logged once at error level; a line per
            // refused message would bury it during an outage.
            tracing::debug!(reason = reason.as_str(), device_id = %device_id, nonce, "Rejected sealed message.");
        } else {
            match detail {
                Some(d) => {
                    tracing::warn!(reason = reason.as_str(), device_id = %device_id, nonce, detail = %d, "Rejected sealed message.")
                }
                None => {
                    tracing::warn!(reason = reason.as_str(), device_id = %device_id, nonce, "Rejected sealed message.")
                }
            }
        }
        self.out.queue_event(&SecurityEvent {
            at: now_rfc3339(),
            device_id,
            stream,
            reason: reason.as_str(),
            nonce,
        });
        if reason == RejectReason::StoreUnavailable {
            Outcome::Unavailable
        } else {
            Outcome::Rejected(reason)
        }
    }

    /// Group commit, then publish. If the commit fails, nothing accepted in
    /// this batch reaches `clean/`: each becomes `store_unavailable`.
    fn commit_and_publish(&mut self, pending: &mut [Pending], accepted: Vec<Accepted>) {
        if !accepted.is_empty() {
            let started = Instant::now();
            let committed = self.store.commit();
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.observe(accepted.len() as f64);
            match committed {
                Ok(()) => {
                    let clean = self.out.topics().clean.clone();
                    for a in accepted {
                        self.metrics.message(result::ACCEPTED);
                        self.out
                            .queue(a.topic.under(&clean), Bytes::from(a.plaintext), a.retain);
                    }
                }
                Err(e) => {
                    self.store_failed(&e);
                    for a in accepted {
                        pending[a.idx].outcome = self.rejected(
                            RejectReason::StoreUnavailable,
                            a.topic.device_id,
                            Some(a.topic.stream),
                            Some(a.nonce),
                            None,
                        );
                    }
                }
            }
        }
        if let Err(e) = self.out.flush() {
            // The router thread is gone: nothing of this batch was handed
            // over, so nothing may be acknowledged as delivered.
            if self.store_ok.swap(false, Ordering::Relaxed) {
                tracing::error!(error = %e, "Router link failed; refusing all sealed traffic until restart.");
            }
            for p in pending
                .iter_mut()
                .filter(|p| p.outcome == Outcome::Delivered)
            {
                p.outcome = Outcome::Unavailable;
            }
        }
    }
}
