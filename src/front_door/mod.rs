//! The front door: every MQTT connection is accepted, authenticated and
//! served here; rumqttd is only the router behind it.
//!
//! Serving sockets ourselves is what lets a CONNACK say "not authorized"
//! (rumqttd's listener just closes the socket), lets sealed publishes skip
//! the router's lossy commit log on their way to the verifier, and lets a
//! PUBACK wait until the message is durable.

pub mod acl;
pub mod auth;
mod connection;
pub mod limits;
#[doc(hidden)]
pub mod packet;
mod publish;
mod subscribe;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{ConnectReturnCode, Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, DEVICE_NS, USER_NS};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::verifier::Input;
use auth::{Authenticator, Role};
use connection::{refusal, Session};
use transport::Stream;
pub use transport::Transport;

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
                        ctx.metrics.connect_refused("too_many_connections");
                        drop(stream);
                        continue;
                    };
                    let ctx = ctx.clone();
                    let transport = transport.clone();
                    tracker.spawn(async move {
                        let _slot = slot;
                        ctx.metrics.connections.inc();
                        if let Err(e) = handle(stream, transport, ctx.clone()).await {
                            tracing::debug!(%peer, error = %e, "Connection ended with an error.");
                        }
                        ctx.metrics.connections.dec();
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

/// Runs the transport handshake, reads the CONNECT, picks the protocol
/// version it asks for, authenticates. The handshake and the CONNECT share
/// one deadline, so a silent socket cannot hold a slot.
async fn handle(
    tcp: TcpStream,
    transport: Transport,
    ctx: Arc<Context>,
) -> Result<(), connection::ConnError> {
    tcp.set_nodelay(true)?;
    let timeout = Duration::from_millis(ctx.config.mqtt.connect_timeout_ms);
    let mut stream = match tokio::time::timeout(timeout, transport.upgrade(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.metrics.connect_refused("handshake_failed");
            tracing::debug!(listener = transport.name(), error = %e, "Transport handshake failed.");
            return Ok(());
        }
        Err(_) => {
            ctx.metrics.connect_refused("connect_timeout");
            return Ok(());
        }
    };
    let mut buf = BytesMut::with_capacity(1024);
    let level = tokio::time::timeout(timeout, async {
        loop {
            if let Some(level) = packet::connect_level(&buf) {
                return Ok(Some(level));
            }
            match packet::frame(&buf) {
                packet::Frame::Frame { first, .. } if first >> 4 != 1 => return Ok(None),
                packet::Frame::Malformed => return Ok(None),
                _ => {}
            }
            if buf.len() > 1024 || stream.read_buf(&mut buf).await? == 0 {
                return Ok::<_, std::io::Error>(None);
            }
        }
    })
    .await;
    match level {
        Ok(Ok(Some(5))) => connect(V5, true, stream, buf, ctx).await,
        Ok(Ok(Some(4))) => connect(V4, false, stream, buf, ctx).await,
        Ok(Ok(Some(_))) => {
            // MQTT 3.1 and unknown levels: 3.1.1's "unacceptable protocol version".
            let mut out = BytesMut::new();
            let _ = V4.write(refusal(ConnectReturnCode::RefusedProtocolVersion), &mut out);
            stream.write_all(&out).await?;
            ctx.metrics.connect_refused("protocol_version");
            Ok(())
        }
        Ok(Ok(None)) | Ok(Err(_)) => {
            ctx.metrics.connect_refused("not_connect");
            Ok(())
        }
        Err(_) => {
            ctx.metrics.connect_refused("connect_timeout");
            Ok(())
        }
    }
}

async fn connect<P: Protocol + Send + 'static>(
    mut proto: P,
    v5: bool,
    mut stream: Stream,
    mut buf: BytesMut,
    ctx: Arc<Context>,
) -> Result<(), connection::ConnError> {
    let timeout = Duration::from_millis(ctx.config.mqtt.connect_timeout_ms);
    let max = ctx.config.mqtt.max_packet_bytes;
    let packet = loop {
        match proto.read_mut(&mut buf, max) {
            Ok(p) => break p,
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {
                match tokio::time::timeout(timeout, stream.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Ok(()),
                }
            }
            Err(e) => {
                ctx.metrics.connect_refused("malformed_connect");
                return Err(e.into());
            }
        }
    };
    let Packet::Connect(connect, _props, will, _will_props, login) = packet else {
        return Ok(());
    };
    let now_ms = crate::now_ms();
    let role = ctx.auth.authenticate(
        &connect.client_id,
        login
            .as_ref()
            .map(|l| (l.username.as_str(), l.password.as_str())),
        now_ms / 1000,
        now_ms,
    );
    let role = match role {
        Ok(role) => role,
        Err(refused) => {
            ctx.metrics.connect_refused(refused.as_str());
            let user = login.as_ref().map(|l| l.username.as_str()).unwrap_or("");
            tracing::info!(reason = refused.as_str(), client_id = %connect.client_id, username = %user, "Refused CONNECT.");
            let mut out = BytesMut::new();
            let _ = proto.write(refusal(ConnectReturnCode::NotAuthorized), &mut out);
            stream.write_all(&out).await?;
            return Ok(());
        }
    };
    if let Some(w) = &will {
        let allowed = std::str::from_utf8(&w.topic).is_ok_and(|t| ctx.acl.may_publish(&role, t));
        if !allowed {
            ctx.metrics.connect_refused("will_not_allowed");
            tracing::info!(client_id = %connect.client_id, "Refused CONNECT: will topic not allowed.");
            let mut out = BytesMut::new();
            let _ = proto.write(refusal(ConnectReturnCode::NotAuthorized), &mut out);
            stream.write_all(&out).await?;
            return Ok(());
        }
    }
    let router_client_id = match &role {
        Role::Device(id) => format!("{DEVICE_NS}{id}"),
        Role::Subscriber(_) if connect.client_id.is_empty() && connect.clean_session => {
            format!("{USER_NS}auto-{:016x}", rand::random::<u64>())
        }
        Role::Subscriber(_)
            if connect.client_id.is_empty() || connect.client_id.contains(['+', '#', '/', '$']) =>
        {
            let mut out = BytesMut::new();
            let _ = proto.write(
                refusal(ConnectReturnCode::ClientIdentifierNotValid),
                &mut out,
            );
            stream.write_all(&out).await?;
            ctx.metrics.connect_refused("client_id_invalid");
            return Ok(());
        }
        Role::Subscriber(_) => format!("{USER_NS}{}", connect.client_id),
    };
    let clean = connect.clean_session;
    // A clean-session device needs no router session until it subscribes:
    // its sealed publishes go straight to the verifier.
    let lazy = clean && matches!(role, Role::Device(_));
    let (link, connack) = if lazy {
        let ack = rumqttd::protocol::ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        };
        (None, Packet::ConnAck(ack, None))
    } else {
        let broker = ctx.broker.clone();
        let id = router_client_id.clone();
        let linked = tokio::task::spawn_blocking(move || broker.link(&id, clean)).await;
        let (link_tx, link_rx, connack) = match linked {
            Ok(Ok(l)) => l,
            _ => {
                let mut out = BytesMut::new();
                let _ = proto.write(refusal(ConnectReturnCode::ServerUnavailable), &mut out);
                stream.write_all(&out).await?;
                ctx.metrics.connect_refused("router_full");
                return Ok(());
            }
        };
        let Some(connack) = Option::<Packet>::from(connack) else {
            return Ok(());
        };
        (Some((link_tx, link_rx)), connack)
    };
    // One live connection per device: a newer one takes over (MQTT 5 clients
    // hear DISCONNECT 0x8E), also when no router session exists to do it.
    let taken_over = CancellationToken::new();
    let serial = ctx.sessions.claim(&role, taken_over.clone());
    tracing::debug!(client_id = %connect.client_id, role = ?role, "Connected.");
    let rate = match &role {
        Role::Device(_) if ctx.config.limits.device_rate > 0.0 => Some(limits::RateLimit::new(
            ctx.config.limits.device_rate,
            ctx.config.limits.device_burst,
            std::time::Instant::now(),
        )),
        _ => None,
    };
    // Subscriber accounts are tracked for lag (`crate::lag`); devices'
    // downlink on `cmd/` is too thin to need it.
    let cursor = match &role {
        Role::Subscriber(name) => {
            let policy = ctx
                .config
                .users
                .iter()
                .find(|u| &u.name == name)
                .and_then(|u| u.slow_subscriber)
                .unwrap_or(ctx.config.limits.slow_subscriber);
            let resumed = matches!(&connack, Packet::ConnAck(a, _) if a.session_present);
            Some(ctx.lag.reader(
                name,
                &router_client_id,
                policy == crate::config::SlowSubscriber::Block,
                !clean,
                resumed,
            ))
        }
        Role::Device(_) => None,
    };
    let role_for_release = role.clone();
    let sessions_ctx = ctx.clone();
    let result = Session {
        proto,
        v5,
        stream,
        rbuf: buf,
        ctx,
        role,
        keep_alive: connect.keep_alive,
        rate,
        will,
        link,
        router_client_id,
        clean_session: clean,
        taken_over,
        cursor,
        unacked: Default::default(),
    }
    .run(connack)
    .await;
    sessions_ctx.sessions.release(&role_for_release, serial);
    result
}

/// The live connection of each device, so a new CONNECT can end the old one.
#[derive(Default)]
pub struct Sessions {
    live: std::sync::Mutex<std::collections::HashMap<String, (u64, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Sessions {
    /// Registers a device's new connection and ends the previous one.
    fn claim(&self, role: &Role, token: CancellationToken) -> u64 {
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
