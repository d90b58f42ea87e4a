//! The verifier: takes sealed publishes from the front door in batches,
//! checks each ([`check`]) and stages the replay windows they advance; the
//! commit stage (`commit.rs`) then makes the batch durable with one journal
//! record and only then republishes and acknowledges.
//!
//! The verifier thread commits a batch itself when the commit thread is
//! idle, which at fleet rates is nearly always: a hand-off between threads
//! (a futex wake and two context switches) costs more than verifying a
//! message. Only when a batch is ready while the previous one is still
//! being committed, or more input is already waiting, does it go to the
//! `commit` thread, so under load a batch waiting for its fsync overlaps
//! the verifying of the next. Both
//! block (crypto, sled, the router channel), so neither runs on the async
//! runtime.

pub mod check;
mod commit;
mod company;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::events::{result, RejectReason, SecurityEvent};
use crate::metrics::Metrics;
use crate::outbox::{self, Entry, Origin};
use crate::replay::ReplayStore;
use crate::republish::Republisher;
use check::{Checked, Checker};
use commit::{Committer, Job, Output};

/// A sealed publish handed over by a connection.
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
    pub retain: bool,
    /// The QoS it came with: persistent sessions get it at most at this.
    pub qos: u8,
    /// Where to acknowledge once the outcome is final (QoS 1 and 2 only).
    pub ack: Option<AckTo>,
    /// An account's publish: its MQTT 5 properties, as passed on
    /// (`properties::screen`). Always `None` for a sealed one: nothing
    /// outside the envelope's MAC may reach `clean/`.
    pub props: Option<Box<rumqttd::protocol::PublishProperties>>,
    /// Whether a refusal publishes its security event. The HTTP ingest
    /// clears it past a device's budget of refusals: anyone can post forged
    /// envelopes in a device's name, and they must not flood its events.
    /// Refusals are counted either way.
    pub events: bool,
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
    /// Delivered.
    Delivered,
    /// A repeat of a message delivered before: acknowledged like a delivery
    /// over MQTT (the device resent because it missed the PUBACK), refused
    /// over the HTTP ingest as the legacy server did.
    Duplicate,
    /// Refused for good: acknowledging stops the device resending it.
    Rejected(RejectReason),
    /// Not made durable: the device should resend later.
    Unavailable,
}

pub enum Input {
    Message(Inbound),
    /// An account's publish (not sealed): logged in the outbox like every
    /// message, and acknowledged once durable.
    Relay(Inbound),
    /// Operator reset of a device's window; answered once durable.
    ResetWindow(String, oneshot::Sender<Result<(), String>>),
    /// The event of a refusal decided (and counted) at the front door
    /// (`not_allowed`, `rate_limited`, `too_large`), published in order with
    /// the verifier's own.
    Event {
        reason: RejectReason,
        /// The device, or the subscriber account, that was refused.
        client: String,
    },
    /// Stop taking input, finish what is queued, then exit.
    Close,
}

pub struct Verifier {
    pub checker: Checker,
    pub store: ReplayStore,
    /// Where the commit stage makes each batch durable.
    pub journal: crate::journal::Journal,
    /// The trees a durable batch is written to.
    pub trees: crate::journal::Trees,
    pub out: Republisher,
    /// Every published message is logged here in the windows' transaction.
    pub outbox: outbox::Writer,
    pub topics: crate::config::Topics,
    pub metrics: Arc<Metrics>,
    /// Cleared for good when a commit or the router hand-off fails: the
    /// gateway fails closed until restarted.
    pub store_ok: Arc<AtomicBool>,
    pub max_batch: usize,
    /// How long a small batch may wait for company ([`company`]); zero
    /// when batches pay no sync (process-crash mode) or the operator
    /// turned it off.
    pub group_wait: std::time::Duration,
    pub passthrough: bool,
    /// Cancelled at shutdown: a full outbox no longer holds the batch, so
    /// draining cannot wait on sessions that are closing.
    pub stopping: tokio_util::sync::CancellationToken,
    /// For refusals of subscriber accounts: the tenant an account belongs
    /// to gets the event in its mount too, so its dashboards see it.
    pub accounts: Option<crate::accounts::Accounts>,
}

fn now_rfc3339() -> String {
    crate::rfc3339_ms(crate::now_ms())
}

/// Counts and logs a reject and returns its security event, if it has one:
/// the one place a reject becomes observable.
fn reject(
    metrics: &Metrics,
    reason: RejectReason,
    device_id: String,
    stream: Option<String>,
    nonce: Option<u64>,
    detail: Option<crate::envelope::Malformed>,
) -> Option<SecurityEvent> {
    metrics.reject(reason);
    if !reason.publishes_event() {
        metrics.message(result::DUPLICATE);
        tracing::debug!(device_id = %device_id, nonce, "Dropped duplicate.");
        return None;
    }
    metrics.message(result::REJECTED);
    let (r, id) = (reason.as_str(), device_id.as_str());
    match detail {
        Some(d) => {
            tracing::warn!(reason = r, device_id = id, nonce, detail = %d, "Rejected sealed message.")
        }
        None => tracing::warn!(
            reason = r,
            device_id = id,
            nonce,
            "Rejected sealed message."
        ),
    }
    Some(security_event(reason, device_id, stream, nonce))
}

fn security_event(
    reason: RejectReason,
    device_id: String,
    stream: Option<String>,
    nonce: Option<u64>,
) -> SecurityEvent {
    SecurityEvent {
        at: now_rfc3339(),
        device_id,
        stream,
        reason: reason.as_str(),
        nonce,
    }
}

/// An entry for a payload published as it came (unverified, passthrough).
fn plain(topic: String, m: &Inbound, now: u64) -> Entry {
    Entry {
        topic,
        payload: m.payload.clone(),
        qos: m.qos,
        retain: m.retain,
        at_ms: now,
        origin: None,
        props: None,
    }
}

/// The acknowledgement outcome of a reject.
fn outcome_of(reason: RejectReason) -> Outcome {
    match reason {
        // A retransmission of something delivered: acknowledge it as such.
        RejectReason::Duplicate => Outcome::Duplicate,
        RejectReason::StoreUnavailable => Outcome::Unavailable,
        r => Outcome::Rejected(r),
    }
}

/// The verifying half: everything of the verifier but the commit stage.
struct Stage {
    checker: Checker,
    store: ReplayStore,
    outbox: outbox::Writer,
    topics: crate::config::Topics,
    metrics: Arc<Metrics>,
    store_ok: Arc<AtomicBool>,
    passthrough: bool,
    stopping: tokio_util::sync::CancellationToken,
    accounts: Option<crate::accounts::Accounts>,
}

impl Verifier {
    /// Runs until `Input::Close` has been seen and the queue is empty, and
    /// the commit stage has finished the last batch.
    pub fn run(self, mut rx: mpsc::Receiver<Input>) {
        // The commit thread spawned below inherits it.
        crate::sched::pipeline_thread();
        let Verifier {
            checker,
            store,
            journal,
            trees,
            out,
            outbox,
            topics,
            metrics,
            store_ok,
            max_batch,
            group_wait,
            passthrough,
            stopping,
            accounts,
        } = self;
        let (jobs, job_rx) = std::sync::mpsc::sync_channel::<Job>(1);
        let committer = Arc::new(Mutex::new(Committer {
            journal,
            trees,
            out,
            outbox: outbox.outbox().clone(),
            metrics: metrics.clone(),
            store_ok: store_ok.clone(),
        }));
        // Jobs sent to the commit thread and not yet committed. Only this
        // thread adds; the commit thread subtracts while it still holds the
        // committer, so whoever holds it and reads 0 commits in order.
        let queued = Arc::new(AtomicUsize::new(0));
        let commit_thread = {
            let (committer, queued) = (committer.clone(), queued.clone());
            std::thread::Builder::new()
                .name("commit".into())
                .spawn(move || Committer::run(committer, &queued, job_rx))
                .expect("spawn the commit thread")
        };
        let mut stage = Stage {
            checker,
            store,
            outbox,
            topics,
            metrics,
            store_ok,
            passthrough,
            stopping,
            accounts,
        };
        let mut batch = Vec::with_capacity(max_batch);
        let mut company = company::Company::new(group_wait);
        let take_queued = |rx: &mut mpsc::Receiver<Input>, batch: &mut Vec<Input>| {
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
        };
        loop {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            if crate::failpoint::enabled(crate::failpoint::VERIFIER_PANIC) {
                panic!("fail point {}", crate::failpoint::VERIFIER_PANIC);
            }
            batch.push(first);
            take_queued(&mut rx, &mut batch);
            let busy = queued.load(Ordering::Acquire) > 0;
            if let Some(wait) = company.wait_for(batch.len(), busy) {
                if !batch.iter().any(|i| matches!(i, Input::Close)) {
                    std::thread::sleep(wait);
                    take_queued(&mut rx, &mut batch);
                }
            }
            company.complete(batch.len());
            let (job, close) = stage.process(&mut batch);
            // Inline only when nothing else waits: with input queued, the
            // commit thread takes this batch (and its fsync) while this
            // thread verifies the next.
            let job = match committer.try_lock() {
                Ok(mut c) if queued.load(Ordering::Acquire) == 0 && rx.is_empty() => {
                    c.commit(job);
                    None
                }
                _ => Some(job),
            };
            if let Some(job) = job {
                queued.fetch_add(1, Ordering::AcqRel);
                if jobs.send(job).is_err() {
                    break;
                }
            }
            if close {
                // Refuse new input; what is already queued is still drained.
                rx.close();
            }
        }
        // The committer first: the commit thread closes the journal once the
        // channel is closed, and needs it to itself (unwinding drops these
        // in the same order).
        drop(committer);
        drop(jobs);
        let _ = commit_thread.join();
        tracing::info!("Verifier drained and stopped.");
    }
}

impl Stage {
    /// Verifies one batch and stages its window updates; returns the job for
    /// the commit stage and whether the batch contained `Close`.
    fn process(&mut self, batch: &mut Vec<Input>) -> (Job, bool) {
        let now = crate::now_ms();
        let mut close = false;
        let mut job = Job::with_capacity(batch.len());
        for input in batch.drain(..) {
            let m = match input {
                Input::Message(m) => m,
                Input::Close => {
                    close = true;
                    continue;
                }
                Input::Event { reason, client } => {
                    let owner = self
                        .owner_of(&client)
                        .or_else(|| self.accounts.as_ref().and_then(|a| a.tenant_of(&client)));
                    let e = security_event(reason, client, None, None);
                    let entry = crate::republish::event_entry(&self.topics, &e, now);
                    let before = job.outputs.len();
                    job.outputs.push(Output::Event(entry));
                    self.mirror(owner, before, &mut job.outputs);
                    continue;
                }
                Input::Relay(m) => {
                    let idx = job.acks.len();
                    let entry = Entry {
                        topic: String::from_utf8_lossy(&m.topic).into_owned(),
                        payload: m.payload,
                        qos: m.qos,
                        retain: m.retain,
                        at_ms: now,
                        origin: None,
                        props: m.props,
                    };
                    job.outputs.push(Output::AfterCommit {
                        idx,
                        entry,
                        stream: None,
                    });
                    job.acks.push((m.ack, Outcome::Delivered));
                    continue;
                }
                Input::ResetWindow(id, reply) => {
                    // Answered once the batch's commit made it durable.
                    self.store.reset(&id);
                    job.replies.push(reply);
                    continue;
                }
            };
            let idx = job.acks.len();
            let before = job.outputs.len();
            let outcome = self.verify_one(&m, now, idx, &mut job.outputs);
            if !m.events {
                let mut i = before;
                job.outputs.retain(|o| {
                    i += 1;
                    i <= before || !matches!(o, Output::Event(_))
                });
            }
            let owner = self
                .device_of(&m.topic)
                .and_then(|d| self.owner_of(d.as_str()));
            self.mirror(owner, before, &mut job.outputs);
            job.acks.push((m.ack, outcome));
        }
        if !job.outputs.is_empty() || self.store.has_pending() {
            self.stage(&mut job);
        }
        (job, close)
    }

    /// Decides one message, appending what it publishes to `outputs`.
    fn verify_one(
        &mut self,
        m: &Inbound,
        now: u64,
        idx: usize,
        outputs: &mut Vec<Output>,
    ) -> Outcome {
        let Ok(topic) = std::str::from_utf8(&m.topic) else {
            return self.rejected(
                outputs,
                RejectReason::Malformed,
                String::new(),
                None,
                None,
                None,
            );
        };
        if self.passthrough {
            let clean = topic.replacen(&self.checker.sealed_prefix, &self.out_topics().clean, 1);
            outputs.push(Output::Now(plain(clean, m, now)));
            return Outcome::Delivered;
        }
        if !self.store_ok.load(Ordering::Relaxed) {
            return self.unavailable(outputs, topic);
        }
        let started = Instant::now();
        let checked = self.checker.check(topic, &m.payload, &mut self.store, now);
        self.metrics
            .verify_seconds
            .observe(started.elapsed().as_secs_f64());
        match checked {
            Ok(Checked::Accept {
                topic,
                kid,
                nonce,
                mac,
                plaintext,
            }) => {
                if let Err(e) = self.store.accept(&topic.device_id, nonce, &mac, now) {
                    self.store_failed(&e);
                    let (d, s) = (topic.device_id, Some(topic.stream));
                    return self.rejected(
                        outputs,
                        RejectReason::StoreUnavailable,
                        d,
                        s,
                        Some(nonce),
                        None,
                    );
                }
                let clean = topic.under(&self.out_topics().clean);
                let entry = Entry {
                    topic: clean,
                    payload: Bytes::from(plaintext),
                    qos: m.qos,
                    retain: m.retain,
                    at_ms: now,
                    origin: Some(Origin {
                        device: topic.device_id,
                        kid,
                        nonce,
                    }),
                    props: None,
                };
                outputs.push(Output::AfterCommit {
                    idx,
                    entry,
                    stream: Some(topic.stream),
                });
                Outcome::Delivered
            }
            Ok(Checked::Unsealed { topic }) => {
                self.metrics.message(result::UNVERIFIED);
                let t = topic.under(&self.out_topics().unverified);
                outputs.push(Output::Now(plain(t, m, now)));
                Outcome::Delivered
            }
            Ok(Checked::Reject {
                reason,
                device_id,
                stream,
                nonce,
                detail,
            }) => self.rejected(outputs, reason, device_id, stream, nonce, detail),
            Err(e) => {
                self.store_failed(&e);
                self.unavailable(outputs, topic)
            }
        }
    }

    /// Encodes the batch's outbox entries and window updates for the commit
    /// stage, which journals them and then writes them to sled. Waits first
    /// while the outbox is at its size bound: the devices are held, nothing
    /// is lost.
    fn stage(&mut self, job: &mut Job) {
        let outbox = self.outbox.outbox().clone();
        if !job.outputs.is_empty() && outbox.bytes() >= outbox.max_bytes() {
            self.metrics.outbox_full.set(1);
            tracing::warn!(
                bytes = outbox.bytes(),
                "The outbox is full: devices are held until persistent sessions read on."
            );
            let stopping = self.stopping.clone();
            self.outbox.wait_for_room(&|| stopping.is_cancelled());
            self.metrics.outbox_full.set(0);
        }
        let mut pending = self.outbox.stage(job.outputs.iter().map(|o| o.entry()));
        job.ops = self.store.stage(Some(&mut pending));
        self.outbox.written(&pending);
        job.outbox_end = pending.end;
        if job.promises() {
            crate::failpoint::abort_at(crate::failpoint::ABORT_AFTER_STAGE);
        }
    }

    /// The device a sealed topic names, read without allocating: this runs
    /// for every message, and the checker parsed the topic already.
    fn device_of(&self, topic: &[u8]) -> Option<crate::envelope::DeviceId> {
        let raw = std::str::from_utf8(topic)
            .ok()?
            .strip_prefix(self.checker.sealed_prefix.as_str())?
            .strip_prefix('/')?
            .split('/')
            .next()?;
        crate::envelope::DeviceId::new(raw).ok()
    }

    /// The tenant that owns `device` now: its messages of this moment go to
    /// that tenant's mount, and stay there if ownership changes later.
    fn owner_of(&self, device: &str) -> Option<String> {
        self.checker
            .registry
            .with(device, |d| d.and_then(|d| d.owner.clone()))
    }

    /// Copies what one message published (`outputs[from..]`) under
    /// `owner`'s mount.
    fn mirror(&self, owner: Option<String>, from: usize, outputs: &mut Vec<Output>) {
        let Some(owner) = owner else {
            return;
        };
        let end = outputs.len();
        for i in from..end {
            let (entry, after_commit) = match &outputs[i] {
                Output::Now(e) | Output::Event(e) => (e, false),
                Output::AfterCommit { entry, .. } => (entry, true),
                Output::Mirror { .. } => continue,
            };
            let mut copy = entry.clone();
            copy.topic = crate::republish::mounted(&self.topics, &owner, &entry.topic);
            outputs.push(Output::Mirror {
                entry: copy,
                after_commit,
            });
        }
    }

    fn out_topics(&self) -> &crate::config::Topics {
        &self.topics
    }

    /// Fails a message closed, still saying which device was turned away.
    fn unavailable(&self, outputs: &mut Vec<Output>, topic: &str) -> Outcome {
        let device = crate::envelope::SealedTopic::parse(&self.checker.sealed_prefix, topic)
            .map(|t| t.device_id)
            .unwrap_or_default();
        self.rejected(
            outputs,
            RejectReason::StoreUnavailable,
            device,
            None,
            None,
            None,
        )
    }

    fn store_failed(&self, e: &crate::replay::StoreError) {
        if self.store_ok.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %e, "Replay store failed; refusing all sealed traffic until restart.");
        }
    }

    fn rejected(
        &self,
        outputs: &mut Vec<Output>,
        reason: RejectReason,
        device_id: String,
        stream: Option<String>,
        nonce: Option<u64>,
        detail: Option<crate::envelope::Malformed>,
    ) -> Outcome {
        if let Some(event) = reject(&self.metrics, reason, device_id, stream, nonce, detail) {
            let entry = crate::republish::event_entry(&self.topics, &event, crate::now_ms());
            outputs.push(Output::Event(entry));
        }
        outcome_of(reason)
    }
}
