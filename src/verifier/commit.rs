//! The commit stage: one synced journal record per batch (group commit,
//! `crate::journal`), then the batch's publishes in message order, then its
//! acknowledgements.
//!
//! Nothing waiting for a commit is published or acknowledged unless that
//! record is durable: if the journal fails, each such message becomes
//! `store_unavailable` and the gateway fails closed. Once it is durable, the batch's outbox entries are durable and persistent sessions
//! may read them; the router gets the batch for clean sessions.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{reject, AckResult, AckTo, Outcome};
use crate::events::{result, RejectReason};
use crate::failpoint;
use crate::metrics::Metrics;
use crate::outbox::{Entry, Outbox};
use crate::republish::Republisher;

/// What one message publishes, in the order messages arrived.
pub(super) enum Output {
    /// Published whether or not the commit succeeds: unverified payloads,
    /// passthrough. Nobody was promised them.
    Now(Entry),
    /// A security event: published like `Now`, and kept apart so a message
    /// whose refusals may not publish events (`Inbound::events`) drops it.
    Event(Entry),
    /// Published and acknowledged only after the batch's commit: verified
    /// plaintext (with its origin) and what accounts publish.
    AfterCommit {
        /// Index of the message in `Job::acks`.
        idx: usize,
        entry: Entry,
        /// The sealed stream, for the event if the commit fails.
        stream: Option<String>,
    },
    /// The copy of a device's output under its tenant's mount
    /// (`crate::republish::mounted`), published when the original is: at
    /// once, or only after the commit. Never counted or acknowledged itself.
    Mirror { entry: Entry, after_commit: bool },
}

impl Output {
    pub fn entry(&self) -> &Entry {
        match self {
            Output::Now(e)
            | Output::Event(e)
            | Output::AfterCommit { entry: e, .. }
            | Output::Mirror { entry: e, .. } => e,
        }
    }
}

/// One verified batch.
pub(super) struct Job {
    pub outputs: Vec<Output>,
    pub acks: Vec<(Option<AckTo>, Outcome)>,
    /// The outbox sequence number after this batch's entries.
    pub outbox_end: Option<u64>,
    /// What the batch wrote to sled, for the journal.
    pub ops: crate::journal::Ops,
    /// Window resets, answered once the batch is durable.
    pub replies: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

impl Job {
    pub fn with_capacity(n: usize) -> Job {
        Job {
            outputs: Vec::with_capacity(n),
            acks: Vec::with_capacity(n),
            outbox_end: None,
            ops: Default::default(),
            replies: Vec::new(),
        }
    }

    /// Whether the batch holds a message that may not be published before
    /// the commit.
    pub fn promises(&self) -> bool {
        self.outputs
            .iter()
            .any(|o| matches!(o, Output::AfterCommit { .. }))
    }
}

pub(super) struct Committer {
    pub journal: crate::journal::Journal,
    /// Where a durable batch's writes go.
    pub trees: crate::journal::Trees,
    pub out: Republisher,
    pub outbox: Arc<Outbox>,
    pub metrics: Arc<Metrics>,
    pub store_ok: Arc<AtomicBool>,
}

impl Committer {
    /// The commit thread: commits what the verifier hands over because it
    /// found a commit under way, then closes the journal once the verifier
    /// has stopped (it drops its handle before the channel, so the committer
    /// is ours alone by then).
    pub fn run(committer: Arc<Mutex<Committer>>, queued: &AtomicUsize, jobs: Receiver<Job>) {
        for job in jobs {
            let mut c = committer.lock().unwrap_or_else(|p| p.into_inner());
            c.commit(job);
            queued.fetch_sub(1, Ordering::AcqRel);
        }
        // A commit that panicked may have journaled a batch sled lacks: leave
        // the journal for the next start to replay rather than checkpoint.
        let Some(c) = Arc::try_unwrap(committer)
            .ok()
            .and_then(|m| m.into_inner().ok())
        else {
            tracing::error!("A commit did not finish; the next start replays the journal.");
            return;
        };
        if let Err(e) = c.journal.close() {
            tracing::error!(error = %e, "The last journal checkpoint failed; the next start replays the journal.");
        }
    }

    fn fail(&self, what: &str, error: &dyn std::fmt::Display) {
        if self.store_ok.swap(false, Ordering::Relaxed) {
            tracing::error!(%error, "{what} failed; refusing all sealed traffic until restart.");
        }
    }

    pub fn commit(&mut self, mut job: Job) {
        let promises = job.promises();
        let committed = if !job.ops.is_empty() {
            let started = Instant::now();
            let durable = self.make_durable(&mut job.ops);
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.observe(job.outputs.len() as f64);
            durable
        } else {
            true
        };
        if committed {
            if let Some(end) = job.outbox_end {
                if promises {
                    failpoint::abort_at(failpoint::ABORT_AFTER_FLUSH);
                }
                self.outbox.flushed(end);
            }
        }
        for o in job.outputs {
            match o {
                Output::Now(entry) | Output::Event(entry) => self.out.queue(entry),
                Output::Mirror {
                    entry,
                    after_commit,
                } => {
                    if committed || !after_commit {
                        self.out.queue(entry);
                    }
                }
                Output::AfterCommit { entry, .. } if committed => {
                    if entry.origin.is_some() {
                        self.metrics.message(result::ACCEPTED);
                    }
                    self.out.queue(entry);
                }
                Output::AfterCommit { idx, entry, stream } => {
                    job.acks[idx].1 = Outcome::Unavailable;
                    let Some(origin) = entry.origin else {
                        continue;
                    };
                    let reason = RejectReason::StoreUnavailable;
                    let nonce = Some(origin.nonce);
                    if let Some(e) =
                        reject(&self.metrics, reason, origin.device, stream, nonce, None)
                    {
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
                .filter(|(_, o)| matches!(o, Outcome::Delivered | Outcome::Duplicate))
            {
                *outcome = Outcome::Unavailable;
            }
        } else if promises && committed {
            failpoint::abort_at(failpoint::ABORT_AFTER_HANDOFF);
        }
        for reply in job.replies {
            let _ = reply.send(match committed {
                true => Ok(()),
                false => Err("the replay store is unavailable".into()),
            });
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

    /// Journals the batch, then writes it to sled (which readers see).
    fn make_durable(&mut self, ops: &mut crate::journal::Ops) -> bool {
        if let Err(e) = self.journal.append(ops) {
            self.fail("Journal write", &e);
            return false;
        }
        if let Err(e) = self.journal.apply(ops, &self.trees) {
            // Durable in the journal, so a restart has it, as long as no
            // checkpoint deletes it: this process no longer knows what sled
            // holds.
            self.journal.poison();
            self.fail("Replay store write", &e);
            return false;
        }
        true
    }
}
