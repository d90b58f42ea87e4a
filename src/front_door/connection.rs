//! One client connection, from CONNECT to close.
//!
//! Sealed publishes go straight to the verifier and are acknowledged only
//! when their outcome is final (durable and republished, or refused), so a
//! PUBACK is a promise. Everything else is relayed to the router through the
//! connection's own local link, and the router's notifications are written
//! back to the socket.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Packet, PingResp,
    Protocol, PubComp, PubCompReason, Publish,
};
use rumqttd::Notification;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::auth::Role;
use super::packet;
use super::subscribe;
use super::Context;
use crate::verifier::AckResult;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0:?}")]
    Protocol(Box<rumqttd::protocol::Error>),
    #[error("router link: {0}")]
    Link(Box<rumqttd::local::LinkError>),
    #[error("second CONNECT on one connection")]
    DuplicateConnect,
    #[error("the socket took nothing for the write timeout")]
    Stalled,
}

impl From<rumqttd::local::LinkError> for ConnError {
    fn from(e: rumqttd::local::LinkError) -> Self {
        ConnError::Link(Box::new(e))
    }
}

impl From<rumqttd::protocol::Error> for ConnError {
    fn from(e: rumqttd::protocol::Error) -> Self {
        ConnError::Protocol(Box::new(e))
    }
}

use crate::events::RejectReason;

/// How long the router must be quiet before a draining connection closes.
const DRAIN_QUIET: Duration = Duration::from_millis(300);
/// The longest a connection keeps draining after the verifier stopped.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// The longest the closing handshake of a transport may take.
const SHUTDOWN_WRITE: Duration = Duration::from_secs(1);

/// How a session ended, which decides whether the will is published.
pub(super) enum End {
    /// The client sent DISCONNECT.
    Graceful,
    /// Gateway shutdown; the session is closed by the server.
    Shutdown,
    /// Socket closed, error, keep-alive expiry or takeover.
    Lost,
    /// The client broke a rule (topic, size, rate): MQTT 5 clients are told
    /// why with this DISCONNECT reason, then the connection is closed.
    Refused(DisconnectReasonCode),
}

pub(super) struct Session<P> {
    pub proto: P,
    pub v5: bool,
    pub stream: super::transport::Stream,
    pub rbuf: BytesMut,
    pub ctx: Arc<Context>,
    pub role: Role,
    pub keep_alive: u16,
    pub will: Option<LastWill>,
    /// Publish rate limit; devices only, and only when configured.
    pub rate: Option<super::limits::RateLimit>,
    /// The router session, made at CONNECT or, for a clean-session device,
    /// on its first packet that needs the router (a SUBSCRIBE): a device that
    /// only publishes sealed messages never costs router state.
    pub link: Option<(LinkTx, LinkRx)>,
    /// Client id and clean-session flag for a link made later.
    pub router_client_id: String,
    pub clean_session: bool,
    /// Cancelled when a newer connection of the same device takes over.
    pub taken_over: tokio_util::sync::CancellationToken,
    /// A subscriber account's positions in the router's logs.
    pub cursor: Option<crate::lag::Cursor>,
    pub unacked: Unacked,
    /// The filters this connection holds, counted against the caps.
    pub subs: subscribe::Subscriptions,
}

/// QoS 1 and 2 messages written to the client that it has not acknowledged
/// yet. A client that holds them for `limits.write_timeout_secs` without
/// acknowledging one is stuck: the router sends it nothing more meanwhile.
#[derive(Default)]
pub(super) struct Unacked {
    count: usize,
    /// When the next acknowledgement is due.
    deadline: Option<tokio::time::Instant>,
}

impl Unacked {
    fn sent(&mut self, limit: Duration) {
        if self.count == 0 {
            self.deadline = Some(tokio::time::Instant::now() + limit);
        }
        self.count += 1;
    }

    fn acked(&mut self, limit: Duration) {
        self.count = self.count.saturating_sub(1);
        self.deadline = (self.count > 0).then(|| tokio::time::Instant::now() + limit);
    }
}

impl<P: Protocol> Session<P> {
    /// Serves the session until it ends, then cleans up with the router:
    /// however it ends, the will and the router's DISCONNECT are not skipped.
    pub async fn run(mut self, connack: Packet) -> Result<(), ConnError> {
        // Small at first: an idle device never writes more than a PINGRESP or an ack.
        let mut wbuf = BytesMut::with_capacity(128);
        let end = match self.serve(connack, &mut wbuf).await {
            Ok(end) => end,
            Err(ConnError::Stalled) => {
                self.stalled();
                End::Lost
            }
            Err(e) => {
                tracing::debug!(error = %e, "Connection failed.");
                End::Lost
            }
        };
        if let End::Refused(code) = end {
            self.tell_disconnect(code, &mut wbuf).await;
        }
        tracing::debug!(role = ?self.role, "Session ended.");
        self.finish(end).await;
        Ok(())
    }

    /// A peer that took nothing (no byte, or no acknowledgement) for the
    /// write timeout is closed. For a clean-session subscriber, what the
    /// router still held for it goes with the session: counted as dropped. A
    /// persistent session keeps it.
    fn stalled(&self) {
        let secs = self.ctx.config.limits.write_timeout_secs;
        tracing::warn!(
            client = self.client_name(),
            secs,
            "Closing a connection that took nothing for the write timeout."
        );
        if let (Some(c), true) = (&self.cursor, self.clean_session) {
            self.ctx
                .metrics
                .dropped(crate::events::dropped::SUBSCRIBER_STALLED, c.behind());
        }
    }

    /// The session loop; returns how it ended. An error is a lost connection.
    async fn serve(&mut self, connack: Packet, wbuf: &mut BytesMut) -> Result<End, ConnError> {
        self.write(connack, wbuf).await?;
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<AckResult>();
        let mut own_pubrels: HashSet<u16> = HashSet::new();
        // SUBSCRIBEs the router sees only part of: pkid -> which filters were allowed.
        let mut pending_subacks: subscribe::Pending = HashMap::new();
        // Acks still owed by the verifier; drain waits for them.
        let mut owed: usize = 0;
        // MQTT's 1.5 x keep-alive, capped; "no keep-alive" gets the cap, so an
        // idle socket cannot stay open for ever.
        let max_ka = self.ctx.config.limits.max_keep_alive_secs;
        let ka = if self.keep_alive == 0 {
            max_ka
        } else {
            self.keep_alive.min(max_ka)
        };
        let keep_alive = Some(Duration::from_millis(u64::from(ka) * 1500));
        let stop = self.ctx.stop.clone();
        let mut revoked = self.ctx.revoked.subscribe();
        let device_id = match &self.role {
            Role::Device(id) => Some(id.clone()),
            Role::Subscriber(_) => None,
        };
        let verifier_done = self.ctx.verifier_done.clone();
        let mut draining = false;
        // Set once the verifier has drained: close when the router is quiet.
        let mut quiet: Option<tokio::time::Instant> = None;
        let mut hard_stop = tokio::time::Instant::now();

        let end = 'session: loop {
            let idle = async {
                match keep_alive {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            let mut router_active = false;
            tokio::select! {
                // Reading goes on while draining: subscribers' PUBACKs keep the
                // router forwarding. New sealed publishes then find the
                // verifier closed and are not acknowledged.
                read = self.stream.read_buf(&mut self.rbuf) => {
                    if read? == 0 {
                        break End::Lost;
                    }
                    match self.on_readable(&ack_tx, &mut own_pubrels, &mut owed, &mut pending_subacks, wbuf).await {
                        Ok(Some(end)) => break end,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::info!(error = %e, "Closing connection.");
                            break End::Lost;
                        }
                    }
                }
                _ = self.taken_over.cancelled() => {
                    break End::Refused(DisconnectReasonCode::SessionTakenOver);
                }
                _ = tokio::time::sleep_until(self.unacked.deadline.unwrap_or_else(tokio::time::Instant::now)), if self.unacked.deadline.is_some() => {
                    return Err(ConnError::Stalled);
                }
                n = next_notification(&mut self.link) => {
                    router_active = true;
                    // Take everything the router has ready: one socket write
                    // for the lot instead of one per message.
                    let mut n = n;
                    loop {
                        if let Some(end) = self.on_notification(n, &mut pending_subacks, wbuf).await? {
                            break 'session end;
                        }
                        match ready_now(next_notification(&mut self.link)) {
                            Some(more) => n = more,
                            None => break,
                        }
                    }
                }
                Some(ack) = ack_rx.recv() => {
                    let mut ack = ack;
                    loop {
                        owed = owed.saturating_sub(1);
                        if let Some(p) = self.ack_packet(ack, &mut own_pubrels) {
                            self.encode(p, wbuf)?;
                        }
                        match ack_rx.try_recv() {
                            Ok(more) => ack = more,
                            Err(_) => break,
                        }
                    }
                }
                _ = idle, if !draining => break End::Lost,
                r = revoked.recv(), if device_id.is_some() => {
                    // A lagged receiver may have missed our id: re-check the registry.
                    let mine = match r {
                        Ok(id) => device_id.as_deref() == Some(id.as_str()),
                        Err(_) => device_id.as_deref().is_some_and(|id| {
                            self.ctx.auth.is_revoked(id)
                        }),
                    };
                    if mine {
                        tracing::info!(device_id = device_id.as_deref().unwrap_or(""), "Closing the session of a revoked device.");
                        self.tell_disconnect(DisconnectReasonCode::NotAuthorized, wbuf).await;
                        // A revoked device's will is not published.
                        self.will = None;
                        break End::Lost;
                    }
                }
                _ = stop.cancelled(), if !draining => {
                    draining = true;
                }
                _ = verifier_done.cancelled(), if draining && owed == 0 && quiet.is_none() => {
                    // Keep serving until the router has been quiet for a
                    // moment, so what the verifier published last reaches
                    // subscribers (their PUBACKs are still read above).
                    let now = tokio::time::Instant::now();
                    hard_stop = now + DRAIN_MAX;
                    quiet = Some(now + DRAIN_QUIET);
                }
                _ = tokio::time::sleep_until(quiet.unwrap_or_else(tokio::time::Instant::now)), if quiet.is_some() => {
                    self.tell_disconnect(DisconnectReasonCode::ServerShuttingDown, wbuf).await;
                    break End::Shutdown;
                }
            }
            if !wbuf.is_empty() {
                self.flush(wbuf).await?;
            }
            if let Some(c) = &self.cursor {
                c.set_idle(self.unacked.count == 0);
            }
            if let Some(q) = quiet.as_mut() {
                if router_active {
                    *q = (tokio::time::Instant::now() + DRAIN_QUIET).min(hard_stop);
                }
            }
        };
        Ok(end)
    }

    /// This session's router link, made now if it does not exist yet.
    async fn router(&mut self) -> Result<&mut LinkTx, ConnError> {
        if self.link.is_none() {
            let broker = self.ctx.broker.clone();
            let (id, clean) = (self.router_client_id.clone(), self.clean_session);
            let (tx, rx, _connack) = tokio::task::spawn_blocking(move || broker.link(&id, clean))
                .await
                .map_err(|e| ConnError::Io(std::io::Error::other(e)))?
                .map_err(ConnError::Link)?;
            self.link = Some((tx, rx));
        }
        Ok(&mut self.link.as_mut().expect("made above").0)
    }

    /// Tells an MQTT 5 client why the server closes the connection (MQTT
    /// 3.1.1 has no server DISCONNECT). Best effort: the socket may be gone.
    async fn tell_disconnect(&mut self, reason_code: DisconnectReasonCode, wbuf: &mut BytesMut) {
        if self.v5 {
            let d = Packet::Disconnect(Disconnect { reason_code }, None);
            let _ = self.write(d, wbuf).await;
        }
    }

    /// Encodes a packet into the write buffer; the session loop writes the
    /// buffer once per turn.
    pub(super) fn encode(&self, packet: Packet, wbuf: &mut BytesMut) -> Result<(), ConnError> {
        let packet = match packet {
            Packet::Disconnect(d, None) => {
                let props = disconnect_reason(d.reason_code);
                Packet::Disconnect(d, Some(props))
            }
            p => p,
        };
        self.proto.write(packet, wbuf).map_err(ConnError::from)?;
        Ok(())
    }

    /// Handles one router notification; `Some` when the session must end.
    async fn on_notification(
        &mut self,
        n: Result<Option<Notification>, rumqttd::local::LinkError>,
        pending_subacks: &mut subscribe::Pending,
        wbuf: &mut BytesMut,
    ) -> Result<Option<End>, ConnError> {
        match n {
            Ok(Some(Notification::Unschedule)) => {
                if let Some((_, rx)) = &self.link {
                    rx.wake().await?;
                }
            }
            Ok(Some(Notification::Disconnect(d, props))) => {
                if self.v5 {
                    self.encode(Packet::Disconnect(d, props), wbuf)?;
                }
                return Ok(Some(End::Lost));
            }
            Ok(Some(n)) => {
                if let (Notification::Forward(f), Some(c)) = (&n, self.cursor.as_mut()) {
                    if let Some(at) = f.cursor {
                        c.forwarded(&f.publish.topic, at);
                    }
                }
                if let Some(p) = Option::<Packet>::from(n) {
                    let p = subscribe::merge_suback(self.v5, p, pending_subacks);
                    let forward = matches!(p, Packet::Publish(..));
                    let start = wbuf.len();
                    self.encode(p, wbuf)?;
                    // QoS sits in the fixed header (rumqttd keeps the field private).
                    if forward && (wbuf[start] >> 1) & 3 > 0 {
                        self.unacked.sent(self.write_timeout());
                    }
                }
            }
            Ok(None) => {}
            // The router dropped us: another connection took this client id.
            Err(_) => return Ok(Some(End::Lost)),
        }
        Ok(None)
    }

    /// Encodes a packet and writes everything buffered at once.
    async fn write(&mut self, packet: Packet, wbuf: &mut BytesMut) -> Result<(), ConnError> {
        self.encode(packet, wbuf)?;
        self.flush(wbuf).await
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.ctx.config.limits.write_timeout_secs)
    }

    /// Writes the buffer out. A peer that takes nothing for
    /// `limits.write_timeout_secs` is given up on, so a stuck subscriber can
    /// neither hold its task for ever nor hold the devices (`crate::lag`).
    async fn flush(&mut self, wbuf: &mut BytesMut) -> Result<(), ConnError> {
        tokio::time::timeout(self.write_timeout(), self.stream.write_all(wbuf))
            .await
            .map_err(|_| ConnError::Stalled)??;
        wbuf.clear();
        Ok(())
    }

    /// Decodes every complete packet in the read buffer and acts on it.
    async fn on_readable(
        &mut self,
        ack_tx: &mpsc::UnboundedSender<AckResult>,
        own_pubrels: &mut HashSet<u16>,
        owed: &mut usize,
        pending_subacks: &mut subscribe::Pending,
        wbuf: &mut BytesMut,
    ) -> Result<Option<End>, ConnError> {
        let max = self.ctx.config.mqtt.max_packet_bytes;
        let mut to_router: Vec<Packet> = Vec::new();
        loop {
            let len = match packet::frame(&self.rbuf) {
                packet::Frame::Incomplete => break,
                // A fifth length byte never becomes a packet: waiting for one
                // would let the client fill the buffer for ever.
                packet::Frame::Malformed => {
                    self.refuse(RejectReason::Malformed).await;
                    return Ok(Some(End::Refused(DisconnectReasonCode::MalformedPacket)));
                }
                packet::Frame::Frame { len, .. } => len,
            };
            // Refused on the header alone: an oversized packet is never buffered.
            if len > max {
                self.refuse(RejectReason::TooLarge).await;
                return Ok(Some(End::Refused(DisconnectReasonCode::PacketTooLarge)));
            }
            if len > self.rbuf.len() {
                break;
            }
            let qos_pkid = packet::publish_qos_pkid(&self.rbuf);
            let pkt = match self.proto.read_mut(&mut self.rbuf, max) {
                Ok(p) => p,
                Err(rumqttd::protocol::Error::InsufficientBytes(_)) => break,
                Err(e) => return Err(e.into()),
            };
            match pkt {
                Packet::Publish(publish, props) => {
                    let (qos, pkid) = qos_pkid.unwrap_or((0, 0));
                    let end = self
                        .on_publish(
                            publish,
                            props,
                            qos,
                            pkid,
                            ack_tx,
                            owed,
                            &mut to_router,
                            wbuf,
                        )
                        .await?;
                    if end.is_some() {
                        return Ok(end);
                    }
                }
                Packet::PubRel(rel, _) if own_pubrels.remove(&rel.pkid) => {
                    let comp = PubComp {
                        pkid: rel.pkid,
                        reason: PubCompReason::Success,
                    };
                    self.encode(Packet::PubComp(comp, None), wbuf)?;
                }
                Packet::Subscribe(sub, props) => {
                    let p = self.screen_subscribe(sub, props, pending_subacks);
                    match p {
                        Packet::SubAck(..) => self.encode(p, wbuf)?,
                        p => {
                            if let Packet::Subscribe(s, _) = &p {
                                let filters = s.filters.iter().map(|f| f.path.as_str());
                                match self.cursor.as_mut() {
                                    Some(c) => c.subscribed(filters),
                                    None => self.ctx.lag.routed(filters),
                                }
                            }
                            to_router.push(p)
                        }
                    }
                }
                p @ (Packet::PubAck(..) | Packet::PubRec(..)) => {
                    self.unacked.acked(self.write_timeout());
                    to_router.push(p);
                }
                Packet::Unsubscribe(u, props) => {
                    let Some(u) = self.screen_unsubscribe(u, wbuf)? else {
                        continue;
                    };
                    if let Some(c) = self.cursor.as_mut() {
                        c.unsubscribed(u.filters.iter().map(String::as_str));
                    }
                    to_router.push(Packet::Unsubscribe(u, props));
                }
                Packet::PingReq(_) => self.encode(Packet::PingResp(PingResp), wbuf)?,
                Packet::Disconnect(..) => return Ok(Some(End::Graceful)),
                Packet::Connect(..) => return Err(ConnError::DuplicateConnect),
                other => to_router.push(other),
            }
        }
        if let Some(last) = to_router.pop() {
            let tx = self.router().await?;
            // One router wake-up for everything: `send` appends the last
            // packet and notifies.
            tx.buffer().extend(to_router);
            tx.send(last).await?;
        }
        Ok(None)
    }

    /// Ends the router session: publishes the will when the client vanished,
    /// then tells the router this connection is gone.
    async fn finish(mut self, end: End) {
        if let (End::Lost, Some(will)) = (&end, self.will.take()) {
            let publish = Publish::new(will.topic, will.message, will.retain);
            if self.is_sealed(&publish.topic) {
                self.hand_to_verifier(publish, None).await;
            } else {
                self.ctx.lag.published([&publish.topic[..]]);
                if let Ok(tx) = self.router().await {
                    let _ = tx.send(Packet::Publish(publish, None)).await;
                }
            }
        }
        if let Some((tx, _)) = self.link.as_mut() {
            let d = Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            };
            let _ = tx.send(Packet::Disconnect(d, None)).await;
        }
        // Bounded: a TLS close_notify to a peer that reads nothing would wait.
        let _ = tokio::time::timeout(SHUTDOWN_WRITE, self.stream.shutdown()).await;
    }
}

/// Properties for a DISCONNECT we send. rumqttd 0.20's v5 encoder writes a
/// DISCONNECT without properties, or with empty ones, wrongly (a lost reason
/// code or a miscounted length); one with a reason string encodes correctly.
/// Applied in `encode`, so router-originated DISCONNECTs are covered too.
fn disconnect_reason(code: DisconnectReasonCode) -> rumqttd::protocol::DisconnectProperties {
    let why = match code {
        DisconnectReasonCode::NotAuthorized => "not authorized",
        DisconnectReasonCode::ServerShuttingDown => "server shutting down",
        DisconnectReasonCode::QuotaExceeded => "rate limit exceeded",
        DisconnectReasonCode::PacketTooLarge => "packet too large",
        DisconnectReasonCode::SessionTakenOver => "session taken over",
        DisconnectReasonCode::TopicNameInvalid => "topic name invalid",
        _ => "closed by the server",
    };
    rumqttd::protocol::DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some(why.to_owned()),
        user_properties: Vec::new(),
        server_reference: None,
    }
}

/// The output of `fut` if it is ready without waiting. Used to drain what the
/// router already queued; a future that would wait is dropped unpolled again.
fn ready_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// The next router notification, or never when there is no router link yet.
async fn next_notification(
    link: &mut Option<(LinkTx, LinkRx)>,
) -> Result<Option<Notification>, rumqttd::local::LinkError> {
    match link {
        Some((_, rx)) => rx.next().await,
        None => std::future::pending().await,
    }
}

/// CONNACK refusing a client.
pub(super) fn refusal(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}
