//! The front door: every MQTT connection is accepted, authenticated and
//! served here; rumqttd is only the router behind it.
//!
//! Serving sockets ourselves is what lets a CONNACK say "not authorized"
//! (rumqttd's listener just closes the socket), lets sealed publishes skip
//! the router's lossy commit log on their way to the verifier, and lets a
//! PUBACK wait until the message is durable.

// The topic rules and client roles are public for the fuzz targets
// (fuzz/harness.rs), which judge arbitrary topics with them; framing too.
pub mod acl;
mod alias;
pub mod auth;
mod connect;
mod error;
mod flow;
mod identifiers;
mod inbound;
pub(crate) mod limits;
mod mount;
mod options;
#[doc(hidden)]
pub mod packet;
mod persistent;
mod publish;
mod resubscribed;
mod session;
mod stand_in;
mod subscribe;
mod subscriptions;
#[cfg(test)]
mod tests;
pub(crate) mod transport;
mod will_store;
mod wills;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::verifier::Input;
use auth::{Authenticator, Role};
pub use subscriptions::SubscriptionCaps;
pub use transport::Transport;
pub use wills::{restore as restore_wills, Wills};

/// What every connection needs.
pub struct Context {
    pub config: Arc<Config>,
    pub auth: Authenticator,
    pub acl: acl::Acl,
    pub broker: Broker,
    pub verifier: mpsc::Sender<Input>,
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: stop accepting and stop reading.
    pub stop: CancellationToken,
    /// Cancelled once the verifier has drained: connections may close.
    pub verifier_done: CancellationToken,
    /// Each device's live connection (takeover).
    pub sessions: Sessions,
    /// Connection slots shared by every listener (`limits.max_connections`).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Device ids revoked while connected: their sessions are closed at once.
    pub revoked: tokio::sync::broadcast::Sender<String>,
    /// Subscriber positions and the device hold.
    pub lag: Arc<crate::lag::Lag>,
    /// Subscription counts against `limits.max_subscriptions_*` and
    /// `limits.max_router_filters`.
    pub subscriptions: Arc<SubscriptionCaps>,
    /// Streams per device, against `limits.max_streams_per_device`.
    pub streams: limits::Streams,
    /// Persistent subscriber sessions, served from the outbox.
    pub persistent: Arc<crate::sessions::Sessions>,
    /// Wills waiting for their delay (MQTT 5).
    pub wills: wills::Wills,
}

/// Accepts connections until `ctx.stop`; each one runs on `tracker`.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    ctx: Arc<Context>,
    tracker: TaskTracker,
) {
    let slots = ctx.slots.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        // Full: close at once rather than queue idle sockets.
                        ctx.metrics.connect_refused(crate::events::ConnectRefusal::TooManyConnections);
                        drop(stream);
                        continue;
                    };
                    let ctx = ctx.clone();
                    let transport = transport.clone();
                    tracker.spawn(async move {
                        let _slot = slot;
                        // Counted out by a guard, so that even a panic in the
                        // connection's task leaves the gauge right.
                        let _open = Open::new(&ctx.metrics);
                        if let Err(e) = connect::handle(stream, transport, ctx.clone()).await {
                            tracing::debug!(%peer, error = %e, "Connection ended with an error.");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = ctx.stop.cancelled() => break,
        }
    }
    tracing::info!(
        listener = transport.name(),
        "Stopped accepting connections."
    );
}

/// The live connection of each device, so a new CONNECT can end the old one.
#[derive(Default)]
pub struct Sessions {
    live: std::sync::Mutex<std::collections::HashMap<String, (u64, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Sessions {
    /// Registers a device's new connection and ends the previous one.
    fn take_over(&self, role: &Role, token: CancellationToken) -> u64 {
        let serial = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Role::Device(id) = role {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, old)) = live.insert(id.clone(), (serial, token)) {
                old.cancel();
            }
        }
        serial
    }

    /// Forgets a connection that ended, unless a newer one replaced it.
    fn release(&self, role: &Role, serial: u64) {
        if let Role::Device(id) = role {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            if live.get(id).is_some_and(|(s, _)| *s == serial) {
                live.remove(id);
            }
        }
    }
}

/// One open connection on `sealgate_connections`, for as long as it lives.
struct Open(Arc<Metrics>);

impl Open {
    fn new(metrics: &Arc<Metrics>) -> Open {
        metrics.connections.inc();
        Open(metrics.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// A client-chosen string (client id, username, filter) as far as a log
/// line needs it: it may be up to a packet long, so it is cut short, and
/// it is logged with `?` so that control characters are escaped.
fn shown(s: &str) -> String {
    s.chars().take(80).collect()
}
