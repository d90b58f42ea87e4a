//! When a vanished client's will is published. MQTT 5 lets the client ask
//! for a delay (Will Delay Interval, section 3.1.3.2.2): a client that comes
//! back in time, say after a network blip, must not have "offline"
//! announced for it. The will waits for the shorter of the delay and the
//! session's expiry, and is dropped when a new connection of the same
//! client id is accepted meanwhile. Without a delay it goes out at once.
//!
//! A waiting will is kept on disk (`will_store`) until it is published or
//! dropped, so a gateway restart, graceful or `kill -9`, only pauses it:
//! the next run publishes it when it is due (at once if the deadline passed
//! while the gateway was down) unless its client is back first. Wills of
//! clients still connected when the gateway stops are not published (the
//! gateway, not the client, went away; docs/protocol.md, "Will delay").
//!
//! Either way it enters as the client's own publish would have: a will on
//! a sealed topic through the verifier, any other through the outbox, so
//! persistent sessions get it too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttd::protocol::LastWill;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::will_store::WillStore;
use super::Context;
use crate::verifier::{AckTo, Inbound, Input, Outcome};

/// The wills waiting for their delay, by router client id, in memory (to
/// cancel them) and on disk (to outlive a restart).
pub struct Wills {
    pending: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next: AtomicU64,
    store: WillStore,
}

impl Wills {
    /// Opens the kept wills in the gateway's database (`restore` schedules
    /// them).
    pub fn open(db: &crate::database::Database) -> Result<Wills, sled::Error> {
        Ok(Wills {
            pending: Default::default(),
            next: Default::default(),
            store: WillStore::open(db)?,
        })
    }

    /// A connection of `id` was accepted: a will waiting for it is dropped,
    /// on disk too before the connection is answered, so a crash after its
    /// CONNACK cannot bring the will back.
    pub(super) async fn cancel(&self, id: &str) {
        let removed = {
            let mut pending = self.lock();
            let Some((_, token)) = pending.remove(id) else {
                return;
            };
            token.cancel();
            self.store.remove(id)
        };
        let synced = match removed {
            Ok(true) => self.store.sync().await,
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = synced {
            tracing::error!(error = %e, "A cancelled will could not be removed from the store; a restart may publish it.");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files a will of `id` to wait, on disk too (not yet flushed: whether
    /// it was written comes back); `None` when a newer connection of it has
    /// taken over already (`taken_over` cancelled). Asked under the lock
    /// `cancel` takes, and a new connection takes over before it cancels,
    /// so a connection arriving while the old session ends cannot miss the
    /// will it must drop. One filed before is dropped (a connection came in
    /// between, which should have dropped it already).
    fn wait(
        &self,
        id: &str,
        taken_over: &CancellationToken,
        will: &Will,
    ) -> Option<(u64, CancellationToken, bool)> {
        let mut pending = self.lock();
        if taken_over.is_cancelled() {
            return None;
        }
        let (serial, token) = self.file(&mut pending, id);
        let written = match self.store.put(id, will, crate::now_ms()) {
            Ok(()) => true,
            Err(e) => {
                not_kept(&e);
                false
            }
        };
        Some((serial, token, written))
    }

    /// Files `id` in memory, dropping one filed before.
    fn file(
        &self,
        pending: &mut HashMap<String, (u64, CancellationToken)>,
        id: &str,
    ) -> (u64, CancellationToken) {
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        if let Some((_, old)) = pending.insert(id.to_owned(), (serial, token.clone())) {
            old.cancel();
        }
        (serial, token)
    }

    /// Forgets the will filed as `serial`, unless a newer one replaced it;
    /// on disk too once it is `published` (not flushed: the commit stage's
    /// next flush carries it, and a crash before that publishes it again,
    /// which beats losing it).
    fn forget(&self, id: &str, serial: u64, published: bool) {
        let mut pending = self.lock();
        if pending.get(id).is_none_or(|(s, _)| *s != serial) {
            return;
        }
        pending.remove(id);
        if published {
            if let Err(e) = self.store.remove(id) {
                tracing::error!(error = %e, "A published will could not be removed from the store; a restart may publish it again.");
            }
        }
    }
}

/// The will could not be written: it still waits, in memory, and goes out
/// on time if the store works again by then (sled's failures rarely pass:
/// the commit stage then publishes nothing at all) and the gateway does not
/// stop first. Publishing it early would announce a client gone that may
/// be back in time, which is what the delay is for. No topic or payload is
/// logged.
fn not_kept(e: &sled::Error) {
    tracing::error!(error = %e, "A waiting will could not be stored: it waits in memory only, and a gateway restart before its delay is up drops it.");
}

/// The will of a session that ended without DISCONNECT, and when it goes.
pub(super) struct Will {
    pub will: LastWill,
    /// Its topic is under the sealed prefix.
    pub sealed: bool,
    /// How long it waits (already capped at the session's expiry).
    pub delay: Duration,
    /// Its MQTT 5 properties, as screened at CONNECT.
    pub props: Option<Box<rumqttd::protocol::PublishProperties>>,
}

/// Publishes `will` of the session of router client id `id`: after its
/// delay unless its client reconnects first (`taken_over` is the session's
/// takeover token: cancelled, a newer connection is there already), or at
/// once. Returns once a waiting will is on disk, so what follows the
/// session's end (its connection counted out) finds it kept.
pub(super) async fn publish(
    ctx: &Arc<Context>,
    id: &str,
    taken_over: &CancellationToken,
    will: Will,
) {
    if will.delay.is_zero() {
        send(ctx, will, None).await;
        return;
    }
    let Some((serial, reconnected, written)) = ctx.wills.wait(id, taken_over, &will) else {
        return;
    };
    let kept = written
        && match ctx.wills.store.sync().await {
            Ok(()) => true,
            Err(e) => {
                not_kept(&e);
                false
            }
        };
    schedule(ctx.clone(), id.to_owned(), serial, reconnected, will, kept);
}

/// Schedules the wills the last run kept: those due go out now, the others
/// when their delay is up. Called before the listeners accept, so none of
/// their clients can be back yet; one that comes back later cancels its
/// will as ever.
pub fn restore(ctx: &Arc<Context>) {
    let kept = match ctx.wills.store.load(crate::now_ms()) {
        Ok(kept) => kept,
        Err(e) => {
            tracing::error!(error = %e, "The wills kept by the last run could not be read; none of them is published.");
            return;
        }
    };
    if kept.is_empty() {
        return;
    }
    let due = kept.iter().filter(|(_, w)| w.delay.is_zero()).count();
    tracing::info!(
        wills = kept.len(),
        due,
        "Wills waiting for their delay restored; those due are published now."
    );
    for (id, will) in kept {
        let (serial, token) = ctx.wills.file(&mut ctx.wills.lock(), &id);
        schedule(ctx.clone(), id, serial, token, will, true);
    }
}

/// Waits out `will`'s delay in a task of its own, then publishes it and
/// removes it from disk once the verifier has made it final. At shutdown,
/// and while the gateway cannot make messages durable (a failing store,
/// when nothing is published), a will `kept` on disk stays there for the
/// next run.
fn schedule(
    ctx: Arc<Context>,
    id: String,
    serial: u64,
    reconnected: CancellationToken,
    will: Will,
    kept: bool,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(will.delay) => {}
            _ = reconnected.cancelled() => return,
            _ = ctx.stop.cancelled() => return,
        }
        // Still filed while it waits to be admitted and committed, so a
        // client back meanwhile cancels it.
        match send(&ctx, will, Some(&reconnected)).await {
            Sent::Final => ctx.wills.forget(&id, serial, true),
            Sent::Cancelled => {}
            Sent::NotNow => {
                ctx.wills.forget(&id, serial, false);
                if ctx.stop.is_cancelled() {
                    // Kept for the next run, as a will still waiting is.
                } else if kept {
                    tracing::warn!("A will could not be published: the gateway could not make it durable. It is kept and published after a restart.");
                } else {
                    tracing::error!("A will could not be published: the gateway could not make it durable, nor keep it. It is lost.");
                }
            }
        }
    });
}

/// What became of a will handed to the verifier.
enum Sent {
    /// Published, or refused for good (a sealed will that fails
    /// verification): done with.
    Final,
    /// Its client came back first.
    Cancelled,
    /// Not taken: the gateway is stopping, or could not make it durable.
    NotNow,
}

/// Queues the will for the verifier, as the client's publish: a sealed one
/// is verified (and, unacknowledged, taken at QoS 0), any other is logged
/// in the outbox at its own QoS. A will that waited (`unless` is its
/// cancellation) is followed to its final outcome, and not sent once the
/// gateway is stopping: the verifier may close before it reads it, and the
/// will is kept for the next run instead.
async fn send(ctx: &Context, will: Will, unless: Option<&CancellationToken>) -> Sent {
    let Will {
        will,
        sealed,
        props,
        ..
    } = will;
    // Held here while a `block` subscriber catches up, as any publish is.
    ctx.lag.admitted().await;
    if unless.is_some_and(CancellationToken::is_cancelled) {
        return Sent::Cancelled;
    }
    let (tx, mut outcome) = mpsc::unbounded_channel();
    let follow = unless.is_some();
    if follow && ctx.stop.is_cancelled() {
        return Sent::NotNow;
    }
    let m = Inbound {
        topic: will.topic,
        payload: will.message,
        retain: will.retain,
        qos: if sealed { 0 } else { will.qos as u8 },
        ack: follow.then_some(AckTo {
            tx,
            pkid: 0,
            qos2: false,
        }),
        events: true,
        // Nothing outside the envelope's MAC may reach `clean/`.
        props: if sealed { None } else { props },
    };
    let input = if sealed {
        Input::Message(m)
    } else {
        Input::Relay(m)
    };
    if ctx.verifier.send(input).await.is_err() {
        return Sent::NotNow;
    }
    if !follow {
        return Sent::Final;
    }
    match outcome.recv().await {
        Some(a) if a.outcome != Outcome::Unavailable => Sent::Final,
        _ => Sent::NotNow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race a socket cannot reach: the client's new connection took
    /// over while its old session was ending, before the will was filed.
    #[tokio::test]
    async fn a_will_filed_after_a_takeover_is_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let db = crate::database::Database::for_tests(dir.path());
        let wills = Wills::open(&db).expect("opened");
        let will = Will {
            will: LastWill {
                topic: bytes::Bytes::from_static(b"status/w"),
                message: bytes::Bytes::from_static(b"gone"),
                qos: rumqttd::protocol::QoS::AtLeastOnce,
                retain: false,
            },
            sealed: false,
            delay: Duration::from_secs(5),
            props: None,
        };
        let old = CancellationToken::new();
        let (_, waiting, written) = wills.wait("u.1.a.c", &old, &will).expect("filed");
        assert!(written);
        wills.cancel("u.1.a.c").await;
        assert!(waiting.is_cancelled(), "a connection drops a waiting will");
        assert!(
            wills.store.load(0).expect("read").is_empty(),
            "and its record"
        );
        old.cancel();
        assert!(
            wills.wait("u.1.a.c", &old, &will).is_none(),
            "taken over first"
        );
        assert!(wills.lock().is_empty());
    }
}
