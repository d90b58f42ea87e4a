//! The commit stage: one sled flush per batch (group commit), then the
//! batch's publishes in message order, then its acknowledgements.
//!
//! Nothing waiting for a commit is published unless that flush succeeded:
//! if it fails, each such message becomes `store_unavailable` and the gateway
//! fails closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{reject, AckResult, AckTo, Outcome};
use crate::events::{result, RejectReason, SecurityEvent};
use crate::metrics::Metrics;
use crate::republish::Republisher;

/// What one message publishes, in the order messages arrived.
pub(super) enum Output {
    /// Publish at once (events, unverified, passthrough).
    Now(String, Bytes, bool),
    Event(SecurityEvent),
    /// Verified plaintext: published only after the batch's flush.
    AfterCommit {
        /// Index of the message in `Job::acks`.
        idx: usize,
        topic: String,
        payload: Bytes,
        retain: bool,
        device_id: String,
        stream: String,
        nonce: u64,
    },
}

/// One verified batch.
pub(super) struct Job {
    pub outputs: Vec<Output>,
    pub acks: Vec<(Option<AckTo>, Outcome)>,
    /// False when writing the windows to sled already failed.
    pub staged: bool,
}

impl Job {
    pub fn with_capacity(n: usize) -> Job {
        Job {
            outputs: Vec::with_capacity(n),
            acks: Vec::with_capacity(n),
            staged: true,
        }
    }

    pub fn needs_flush(&self) -> bool {
        self.outputs
            .iter()
            .any(|o| matches!(o, Output::AfterCommit { .. }))
    }
}

pub(super) struct Committer {
    pub db: sled::Db,
    pub out: Republisher,
    pub metrics: Arc<Metrics>,
    pub store_ok: Arc<AtomicBool>,
}

impl Committer {
    pub fn run(mut self, jobs: std::sync::mpsc::Receiver<Job>) {
        for job in jobs {
            self.commit(job);
        }
    }

    fn fail(&self, what: &str, error: &dyn std::fmt::Display) {
        if self.store_ok.swap(false, Ordering::Relaxed) {
            tracing::error!(%error, "{what} failed; refusing all sealed traffic until restart.");
        }
    }

    fn commit(&mut self, mut job: Job) {
        let committed = if job.needs_flush() {
            let started = Instant::now();
            let flushed = job.staged && self.flush();
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            let n = job
                .outputs
                .iter()
                .filter(|o| matches!(o, Output::AfterCommit { .. }))
                .count();
            self.metrics.batch_size.observe(n as f64);
            flushed
        } else {
            true
        };
        for o in job.outputs {
            match o {
                Output::Now(topic, payload, retain) => self.out.queue(topic, payload, retain),
                Output::Event(e) => self.out.queue_event(&e),
                Output::AfterCommit {
                    topic,
                    payload,
                    retain,
                    ..
                } if committed => {
                    self.metrics.message(result::ACCEPTED);
                    self.out.queue(topic, payload, retain);
                }
                Output::AfterCommit {
                    idx,
                    device_id,
                    stream,
                    nonce,
                    ..
                } => {
                    job.acks[idx].1 = Outcome::Unavailable;
                    let reason = RejectReason::StoreUnavailable;
                    if let Some(e) = reject(
                        &self.metrics,
                        reason,
                        device_id,
                        Some(stream),
                        Some(nonce),
                        None,
                    ) {
                        self.out.queue_event(&e);
                    }
                }
            }
        }
        if let Err(e) = self.out.flush() {
            // The router thread is gone: nothing of this batch was handed
            // over, so nothing may be acknowledged as delivered.
            self.fail("Router hand-off", &e);
            for (_, outcome) in job
                .acks
                .iter_mut()
                .filter(|(_, o)| *o == Outcome::Delivered)
            {
                *outcome = Outcome::Unavailable;
            }
        }
        for (ack, outcome) in job.acks {
            if let Some(a) = ack {
                let _ = a.tx.send(AckResult {
                    pkid: a.pkid,
                    qos2: a.qos2,
                    outcome,
                });
            }
        }
    }

    fn flush(&self) -> bool {
        match self.db.flush() {
            Ok(_) => true,
            Err(e) => {
                self.fail("Replay store flush", &e);
                false
            }
        }
    }
}
