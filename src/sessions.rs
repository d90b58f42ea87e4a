//! Persistent subscriber sessions: their durable records (subscriptions,
//! acknowledged position in the outbox, expiry) and the retention policy
//! that trims the outbox behind them.
//!
//! rumqttd 0.20 keeps sessions in memory only, so persistent sessions do not
//! live in the router at all: a connection of one is fed from the outbox
//! (`front_door::persistent`), from its own position, and a restart — even
//! a kill -9 — only replays from the last position written. Clean sessions
//! stay in the router, which is where MQTT lets them lose what was in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::SessionsConfig;
use crate::metrics::Metrics;
use crate::outbox::{Batch, Outbox};

/// What is kept of one persistent session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub account: String,
    /// Filters and their subscription options as MQTT 5 encodes them: the
    /// granted QoS in bits 0-1, then No Local, Retain As Published and
    /// Retain Handling (`front_door::options`; an older record has the QoS
    /// alone, which reads the same).
    pub filters: Vec<(String, u8)>,
    /// The MQTT 5 subscription identifier of each filter that has one (an
    /// older record has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<(String, usize)>,
    /// Every outbox entry below this was delivered and acknowledged (or
    /// did not match).
    pub next: u64,
    /// Entries at or above `next` acknowledged already (out of order),
    /// ascending; a bounded few.
    pub acked: Vec<u64>,
    /// Entries below this were sent at least once: resent with DUP set.
    pub sent_to: u64,
    /// How long the session outlives its connection.
    pub expiry_secs: u64,
    /// When its last connection ended; `None` while connected.
    pub gone_at_ms: Option<u64>,
}

impl Record {
    /// Whether the session still needs entry `seq` on `topic`.
    fn needs(&self, seq: u64, topic: &str) -> bool {
        seq >= self.next
            && self.acked.binary_search(&seq).is_err()
            && self
                .filters
                .iter()
                .any(|(f, _)| crate::topic::matches(f, topic))
    }
}

struct Slot {
    record: Record,
    /// The live connection's token and number, if one is attached.
    online: Option<(CancellationToken, u64)>,
}

/// Why a persistent session could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `sessions.max_per_account` reached.
    TooMany,
    /// The database failed: fail closed.
    Store,
}

/// The attached connection's handle.
pub struct Attached {
    pub record: Record,
    /// True when an earlier session was resumed (CONNACK session present).
    pub present: bool,
    /// Cancelled when a newer connection takes the session over.
    pub taken_over: CancellationToken,
    pub generation: u64,
}

pub struct Sessions {
    tree: sled::Tree,
    db: crate::database::Database,
    outbox: Arc<Outbox>,
    config: SessionsConfig,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<String, Slot>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Sessions {
    pub const TREE: &'static str = "sessions";

    /// Loads every record; there are at most `max_per_account` per account.
    pub fn open(
        db: &crate::database::Database,
        outbox: Arc<Outbox>,
        config: SessionsConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Sessions>, sled::Error> {
        let tree = db.open_tree(Self::TREE)?;
        let mut slots = HashMap::new();
        let now = crate::now_ms();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let (Ok(id), Ok(mut record)) = (
                String::from_utf8(k.to_vec()),
                serde_json::from_slice::<Record>(&v),
            ) else {
                tracing::warn!("Skipped an unreadable persistent session record.");
                continue;
            };
            // It was connected when the gateway stopped: gone from now on.
            record.gone_at_ms.get_or_insert(now);
            slots.insert(
                id,
                Slot {
                    record,
                    online: None,
                },
            );
        }
        let behind: u64 = slots
            .values()
            .map(|s| {
                outbox
                    .head()
                    .saturating_sub(s.record.next.max(outbox.first()))
            })
            .sum();
        tracing::info!(
            sessions = slots.len(),
            outbox_entries = outbox.head() - outbox.first(),
            outbox_bytes = outbox.bytes(),
            unread = behind,
            "Persistent sessions restored; each resumes from its own position in the outbox."
        );
        metrics.persistent_sessions.set(slots.len() as i64);
        Ok(Arc::new(Sessions {
            tree,
            db: db.clone(),
            outbox,
            config,
            metrics,
            slots: Mutex::new(slots),
            generation: Default::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn config(&self) -> &SessionsConfig {
        &self.config
    }

    fn persist(&self, id: &str, record: &Record) -> Result<(), sled::Error> {
        let bytes = serde_json::to_vec(record).expect("a record serialises");
        self.tree.insert(id.as_bytes(), bytes)?;
        Ok(())
    }

    /// Makes what was written so far durable (new sessions, subscriptions):
    /// a client told its subscription is granted keeps it across a crash.
    pub async fn sync(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(|_| ())
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// A clean connection with this client id ends the kept session, and
    /// takes over from its connection if one is attached.
    pub fn discard(&self, id: &str) {
        let removed = self.lock().remove(id);
        if let Some(slot) = removed {
            if let Some((t, _)) = slot.online {
                t.cancel();
            }
            if let Err(e) = self.tree.remove(id.as_bytes()) {
                tracing::error!(error = %e, "Could not remove a discarded persistent session.");
            }
            self.metrics
                .persistent_sessions
                .set(self.lock().len() as i64);
        }
    }

    /// Ends every kept session of a deleted account (and any connection
    /// attached to one): nothing more is kept for a name that may be reused.
    pub fn discard_account(&self, account: &str) {
        let ids: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, slot)| slot.record.account == account)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.discard(&id);
        }
    }

    /// Opens the persistent session `id` for a new connection: resumes the
    /// one kept (unless `clean_start`), or starts one at the outbox's head.
    /// A connection already attached is taken over.
    pub fn attach(
        &self,
        id: &str,
        account: &str,
        clean_start: bool,
        expiry_secs: u64,
    ) -> Result<Attached, Refused> {
        let expiry_secs = expiry_secs.min(self.config.max_expiry_secs);
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut slots = self.lock();
        if clean_start {
            if let Some(old) = slots.remove(id) {
                if let Some((t, _)) = old.online {
                    t.cancel();
                }
            }
        }
        let present = slots.contains_key(id);
        if !present {
            let mine = slots
                .values()
                .filter(|s| s.record.account == account)
                .count();
            if mine >= self.config.max_per_account {
                return Err(Refused::TooMany);
            }
            let head = self.outbox.head();
            slots.insert(
                id.to_owned(),
                Slot {
                    record: Record {
                        account: account.to_owned(),
                        filters: Vec::new(),
                        ids: Vec::new(),
                        next: head,
                        acked: Vec::new(),
                        sent_to: head,
                        expiry_secs,
                        gone_at_ms: None,
                    },
                    online: None,
                },
            );
        }
        let slot = slots.get_mut(id).expect("inserted above");
        if let Some((t, _)) = slot.online.replace((token.clone(), generation)) {
            t.cancel();
        }
        slot.record.gone_at_ms = None;
        slot.record.expiry_secs = expiry_secs;
        let record = slot.record.clone();
        self.metrics.persistent_sessions.set(slots.len() as i64);
        drop(slots);
        if clean_start {
            self.tree
                .remove(id.as_bytes())
                .map_err(|_| Refused::Store)?;
        }
        self.persist(id, &record).map_err(|_| Refused::Store)?;
        Ok(Attached {
            record,
            present,
            taken_over: token,
            generation,
        })
    }

    /// Changes the record of `id` if `generation` still holds it, and
    /// writes it (not flushed: a crash replays from an older position,
    /// which is a duplicate, never a loss).
    pub fn update(
        &self,
        id: &str,
        generation: u64,
        change: impl FnOnce(&mut Record),
    ) -> Result<(), sled::Error> {
        let record = {
            let mut slots = self.lock();
            let Some(slot) = slots.get_mut(id) else {
                return Ok(());
            };
            if slot.online.as_ref().map(|(_, g)| *g) != Some(generation) {
                return Ok(());
            }
            change(&mut slot.record);
            slot.record.clone()
        };
        self.persist(id, &record)
    }

    /// The connection `generation` of `id` ended. A session that expires at
    /// once (MQTT 5 expiry 0) ends with it.
    pub fn detach(&self, id: &str, generation: u64, expiry_secs: Option<u64>) {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(id) else {
            return;
        };
        if slot.online.as_ref().map(|(_, g)| *g) != Some(generation) {
            return;
        }
        slot.online = None;
        if let Some(secs) = expiry_secs {
            slot.record.expiry_secs = secs;
        }
        if slot.record.expiry_secs == 0 {
            slots.remove(id);
            self.metrics.persistent_sessions.set(slots.len() as i64);
            drop(slots);
            let _ = self.tree.remove(id.as_bytes());
            return;
        }
        slot.record.gone_at_ms = Some(crate::now_ms());
        let record = slot.record.clone();
        drop(slots);
        if let Err(e) = self.persist(id, &record) {
            tracing::error!(error = %e, "Could not record the end of a persistent session.");
        }
    }

    /// One pass of housekeeping: ends expired sessions, then trims the
    /// outbox up to the first entry some session still needs. Entries that
    /// only offline sessions need are dropped for them once past the
    /// retention bound (counted as `session_retention`). Returns how many
    /// entries were removed.
    pub fn trim(&self, max: usize) -> Result<usize, sled::Error> {
        let now = crate::now_ms();
        self.expire(now)?;
        // Nobody can read an entry: it goes once it is flushed. The head is
        // taken first: a session that attaches after the look starts at or
        // past it.
        let head = self.outbox.head();
        if self.lock().is_empty() {
            let removed = self.outbox.trim_before(head, max)?;
            self.metrics.outbox_bytes.set(self.outbox.bytes() as i64);
            return Ok(removed);
        }
        let mut removed = 0;
        // One record first: when the oldest is still needed, it is all this
        // pass looks at.
        let mut chunk = 1;
        while removed < max {
            let n = self.trim_chunk(now, chunk.min(max - removed))?;
            removed += n;
            if n < chunk {
                break;
            }
            chunk = (chunk * 4).min(256);
        }
        self.metrics.outbox_bytes.set(self.outbox.bytes() as i64);
        Ok(removed)
    }

    /// Trims whole records from the front of the outbox among its oldest
    /// `max`; returns how many were removed.
    fn trim_chunk(&self, now: u64, max: usize) -> Result<usize, sled::Error> {
        let head = self.outbox.head();
        let records = self.outbox.oldest(max)?;
        if records.is_empty() {
            return Ok(0);
        }
        let written = self.outbox.written_total();
        let c = &self.config;
        let past_retention = |b: &Batch, seq: u64, at_ms: u64| {
            head - seq > c.retention_messages
                || now.saturating_sub(at_ms) > c.retention_secs.saturating_mul(1000)
                || written.saturating_sub(b.total - b.size) > c.retention_bytes
        };
        let mut removable = 0;
        let mut lost = 0u64;
        {
            let slots = self.lock();
            'records: for b in &records {
                let mut lost_here = 0;
                for (i, e) in b.entries.iter().enumerate() {
                    let seq = b.seq + i as u64;
                    let mut needed_online = false;
                    let mut needed_offline = 0u64;
                    for slot in slots.values() {
                        if slot.record.needs(seq, &e.topic) {
                            match slot.online {
                                Some(_) => needed_online = true,
                                None => needed_offline += 1,
                            }
                        }
                    }
                    if needed_online || (needed_offline > 0 && !past_retention(b, seq, e.at_ms)) {
                        break 'records;
                    }
                    lost_here += needed_offline;
                }
                lost += lost_here;
                removable += 1;
            }
        }
        if removable == 0 {
            return Ok(0);
        }
        self.outbox.trim(&records[..removable])?;
        if lost > 0 {
            self.metrics
                .dropped(crate::events::dropped::SESSION_RETENTION, lost);
            tracing::warn!(
                messages = lost,
                "Offline persistent sessions were past the retention bound: their oldest messages were dropped."
            );
        }
        Ok(removable)
    }

    fn expire(&self, now: u64) -> Result<(), sled::Error> {
        let expired: Vec<String> = {
            let mut slots = self.lock();
            let gone: Vec<String> = slots
                .iter()
                .filter(|(_, s)| {
                    s.online.is_none()
                        && s.record
                            .gone_at_ms
                            .is_some_and(|at| now.saturating_sub(at) / 1000 >= s.record.expiry_secs)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &gone {
                slots.remove(id);
            }
            self.metrics.persistent_sessions.set(slots.len() as i64);
            gone
        };
        for id in &expired {
            self.tree.remove(id.as_bytes())?;
        }
        if !expired.is_empty() {
            tracing::info!(
                sessions = expired.len(),
                "Persistent sessions expired and were removed."
            );
        }
        Ok(())
    }

    /// Runs housekeeping until `stop`: trims every 50 ms, and without pause
    /// while a pass finds a full batch to remove.
    pub async fn housekeep(self: Arc<Self>, stop: CancellationToken) {
        /// Records (batches) per pass.
        const BATCH: usize = 1024;
        loop {
            let me = self.clone();
            let trimmed = tokio::task::spawn_blocking(move || me.trim(BATCH)).await;
            let busy = match trimmed {
                Ok(Ok(n)) => n == BATCH,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "Trimming the outbox failed.");
                    false
                }
                Err(_) => false,
            };
            // Each pass is one sled batch of removals, written into the log
            // the commits flush: small, frequent passes keep any one flush
            // from carrying a large one (measured: a pass a second doubled
            // the p99 at 40k msgs/s against one every 50 ms).
            let pause = if busy { 10 } else { 50 };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(pause)) => {}
            }
        }
    }
}
