//! When a vanished client's will is published. MQTT 5 lets the client ask
//! for a delay (Will Delay Interval, section 3.1.3.2.2): a client that comes
//! back in time, say after a network blip, must not have "offline"
//! announced for it. The will waits for the shorter of the delay and the
//! session's expiry, and is dropped when a new connection of the same
//! client id is accepted meanwhile, or when the gateway stops (wills are
//! not published at shutdown). Without a delay it goes out at once.
//!
//! Either way it enters as the client's own publish would have: a will on
//! a sealed topic through the verifier, any other through the outbox, so
//! persistent sessions get it too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttd::protocol::LastWill;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::verifier::{Inbound, Input};

/// The wills waiting for their delay, by router client id.
#[derive(Default)]
pub struct Wills {
    pending: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next: AtomicU64,
}

impl Wills {
    /// A connection of `id` was accepted: a will waiting for it is dropped.
    pub(super) fn cancel(&self, id: &str) {
        if let Some((_, token)) = self.lock().remove(id) {
            token.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files a will of `id` to wait; `None` when a newer connection of it
    /// has taken over already (`taken_over` cancelled). Asked under the
    /// lock `cancel` takes, and a new connection takes over before it
    /// cancels, so a connection arriving while the old session ends
    /// cannot miss the will it must drop. One filed before is dropped (a
    /// connection came in between, which should have dropped it already).
    fn wait(&self, id: &str, taken_over: &CancellationToken) -> Option<(u64, CancellationToken)> {
        let mut pending = self.lock();
        if taken_over.is_cancelled() {
            return None;
        }
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        if let Some((_, old)) = pending.insert(id.to_owned(), (serial, token.clone())) {
            old.cancel();
        }
        Some((serial, token))
    }

    /// Forgets the will filed as `serial`, unless a newer one replaced it.
    fn forget(&self, id: &str, serial: u64) {
        let mut pending = self.lock();
        if pending.get(id).is_some_and(|(s, _)| *s == serial) {
            pending.remove(id);
        }
    }
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
/// once.
pub(super) async fn publish(
    ctx: &Arc<Context>,
    id: &str,
    taken_over: &CancellationToken,
    will: Will,
) {
    let Will {
        will,
        sealed,
        delay,
        props,
    } = will;
    if delay.is_zero() {
        send(ctx, will, sealed, props, None).await;
        return;
    }
    let Some((serial, reconnected)) = ctx.wills.wait(id, taken_over) else {
        return;
    };
    let ctx = ctx.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {
                // Still filed while it waits to be admitted, so a client
                // back meanwhile cancels it.
                send(&ctx, will, sealed, props, Some(&reconnected)).await;
                ctx.wills.forget(&id, serial);
            }
            _ = reconnected.cancelled() => {}
            _ = ctx.stop.cancelled() => ctx.wills.forget(&id, serial),
        }
    });
}

/// Queues the will for the verifier, as the client's publish: a sealed one
/// is verified (and, unacknowledged, taken at QoS 0), any other is logged
/// in the outbox at its own QoS.
async fn send(
    ctx: &Context,
    will: LastWill,
    sealed: bool,
    props: Option<Box<rumqttd::protocol::PublishProperties>>,
    unless: Option<&CancellationToken>,
) {
    // Held here while a `block` subscriber catches up, as any publish is.
    ctx.lag.admitted().await;
    if unless.is_some_and(CancellationToken::is_cancelled) {
        return;
    }
    let m = Inbound {
        topic: will.topic,
        payload: will.message,
        retain: will.retain,
        qos: if sealed { 0 } else { will.qos as u8 },
        ack: None,
        events: true,
        // Nothing outside the envelope's MAC may reach `clean/`.
        props: if sealed { None } else { props },
    };
    let input = if sealed {
        Input::Message(m)
    } else {
        Input::Relay(m)
    };
    let _ = ctx.verifier.send(input).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race a socket cannot reach: the client's new connection took
    /// over while its old session was ending, before the will was filed.
    #[test]
    fn a_will_filed_after_a_takeover_is_dropped() {
        let wills = Wills::default();
        let old = CancellationToken::new();
        let (_, waiting) = wills.wait("u.1.a.c", &old).expect("filed");
        wills.cancel("u.1.a.c");
        assert!(waiting.is_cancelled(), "a connection drops a waiting will");
        old.cancel();
        assert!(wills.wait("u.1.a.c", &old).is_none(), "taken over first");
        assert!(wills.lock().is_empty());
    }
}
