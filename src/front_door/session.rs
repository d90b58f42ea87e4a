//! One client's session, from its CONNACK to close: the loop that waits on
//! the socket, the router, the verifier's acknowledgements, keep-alive,
//! takeover, revocation and shutdown, and the clean-up however it ends.
//!
//! Sealed publishes go straight to the verifier and are acknowledged only
//! when their outcome is final (durable and republished, or refused), so a
//! PUBACK is a promise. Everything else is relayed to the router through the
//! session's own local link, and the router's notifications are written
//! back to the socket. Reading packets is `inbound.rs`, writing them
//! `writer.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, LastWill, Packet, Protocol};
use rumqttd::Notification;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::Role;
use super::error::ConnError;
use super::options::Options;
use super::stand_in::StandIn;
use super::subscriptions;
use super::transport::Stream;
use super::writer::Writer;
use super::Context;
use crate::verifier::AckResult;

/// How long the router must be quiet before a draining connection closes.
const DRAIN_QUIET: Duration = Duration::from_millis(300);
/// The longest a connection keeps draining after the verifier stopped.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// The longest the closing handshake of a transport may take.
const SHUTDOWN_WRITE: Duration = Duration::from_secs(1);
/// Free buffer space a read is given, at least.
const READ_ROOM: usize = 1024;

/// How a session ended, which decides whether the will is published.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The client sent DISCONNECT.
    Graceful,
    /// Gateway shutdown; the session is closed by the server.
    Shutdown,
    /// Socket closed, error, keep-alive expiry or takeover.
    Lost,
    /// The device was revoked while connected: closed, and its will is not
    /// published.
    Revoked,
    /// The client broke a rule (topic, size, rate): MQTT 5 clients are told
    /// why with this DISCONNECT reason, then the connection is closed.
    Refused(DisconnectReasonCode),
}

/// Who connected and what the CONNECT asked for, as the connect path
/// decided it.
pub(super) struct Login {
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
    /// The router resumed a persistent session (CONNACK session present).
    pub resumed: bool,
    /// Cancelled when a newer connection of the same device takes over.
    pub taken_over: CancellationToken,
    /// A subscriber account's positions in the router's logs.
    pub cursor: Option<crate::lag::Cursor>,
    /// A persistent account session, fed from the outbox instead.
    pub feed: Option<super::persistent::Feed>,
    /// The largest packet an MQTT 5 client takes (its Maximum Packet Size).
    pub max_packet: Option<usize>,
    /// The QoS 1/2 messages an MQTT 5 client takes unacknowledged (its
    /// Receive Maximum), if it said.
    pub receive_maximum: Option<u16>,
    /// For an account of a tenant: its mount, `{topics.tenants}/{tenant}`.
    /// Its filters are filed under it and what it receives has it stripped,
    /// so it sees its tenant's devices only, whatever filter it uses.
    pub mount: Option<String>,
    /// How long the will waits after the connection is lost (MQTT 5 Will
    /// Delay Interval, capped at the session's expiry); zero: at once.
    pub will_delay: Duration,
    /// The will's MQTT 5 properties, screened like a PUBLISH's.
    pub will_props: Option<Box<rumqttd::protocol::PublishProperties>>,
}

pub(super) struct Session<P> {
    pub(super) ctx: Arc<Context>,
    pub(super) stream: Stream,
    /// Bytes read and not yet decoded: at most one incomplete packet (of at
    /// most `mqtt.max_packet_bytes`) and one read.
    pub(super) rbuf: BytesMut,
    /// Decodes; the writer has its own copy to encode.
    pub(super) proto: P,
    pub(super) out: Writer<P>,
    pub(super) v5: bool,
    pub(super) login: Login,
    /// In-flight QoS 1/2 messages to the client (stuck-peer detection).
    pub(super) unacked: Unacked,
    /// When the client's last complete packet arrived: keep-alive counts
    /// packets, not bytes, so a client trickling one endless packet is
    /// still silent.
    pub(super) last_packet: Instant,
    /// The verifier's outcomes for this client's sealed publishes.
    pub(super) ack_tx: mpsc::UnboundedSender<AckResult>,
    ack_rx: mpsc::UnboundedReceiver<AckResult>,
    /// Acknowledgements still owed by the verifier; draining waits for them.
    pub(super) owed: usize,
    /// PUBRECs we sent for sealed QoS 2 publishes, whose PUBREL we answer.
    pub(super) own_pubrels: HashSet<u16>,
    /// SUBSCRIBEs the router sees only part of, to complete their SUBACKs.
    pub(super) pending_subacks: subscriptions::Pending,
    /// The filters this connection holds, counted against the caps.
    pub(super) subs: subscriptions::Subscriptions,
    /// The subscription options the router ignores, for a clean session.
    pub(super) options: Options,
    /// Acks owed to the router that the client does not give: for
    /// publishes too large for it, or delivered below the router's QoS.
    pub(super) stand_in: StandIn,
    /// Deliveries against the client's Receive Maximum (`flow.rs`).
    pub(super) quota: super::flow::Quota,
    /// Streams this device's connection already published on: only a new
    /// one asks the shared `limits::Streams`.
    pub(super) streams_used: HashSet<String>,
    /// The topic aliases this client set (MQTT 5).
    pub(super) aliases: super::alias::Aliases,
    /// Retained messages owed to re-subscriptions the router serves.
    pub(super) resubscribed: super::resubscribed::Resubscribed,
    /// The client's acks for what the router delivered, not yet handed over.
    held: HeldAcks,
}

/// A clean session's PUBACKs and PUBCOMPs for router deliveries, handed to
/// the router in batches. At fleet rates each one handed over alone wakes the
/// router thread for one ack, and a wake-up (two context switches) costs
/// more than the ack. They only free the router's in-flight slots for this
/// session (at most 100, rumqttd's packet ids), so they are held for at
/// most [`HOLD_ACKS_FOR`] or [`HOLD_ACKS_MAX`] acks, whichever comes first;
/// anything else for the router takes them along, in order, and so does
/// the end of the session. A persistent session's are never held: they
/// are its state, which the router saves when a new connection of the
/// same client takes over, possibly before this one has finished.
#[derive(Default)]
struct HeldAcks {
    packets: Vec<Packet>,
    /// When they must be handed over at the latest.
    due: Option<Instant>,
}

/// How long a client's ack may wait for company before the router gets it.
const HOLD_ACKS_FOR: Duration = Duration::from_millis(5);
/// How many acks may wait: well below the router's 100 in-flight per link.
const HOLD_ACKS_MAX: usize = 16;

impl HeldAcks {
    /// Whether `packets` may wait with the ones held.
    fn takes(&self, packets: &[Packet]) -> bool {
        !packets.is_empty()
            && self.packets.len() + packets.len() < HOLD_ACKS_MAX
            && packets
                .iter()
                .all(|p| matches!(p, Packet::PubAck(..) | Packet::PubComp(..)))
    }
}

/// QoS 1 and 2 messages written to the client that it has not acknowledged
/// yet. A client that holds them for `limits.write_timeout_secs` without
/// acknowledging one is stuck: the router sends it nothing more meanwhile.
#[derive(Default)]
pub(super) struct Unacked {
    count: usize,
    /// When the next acknowledgement is due.
    deadline: Option<Instant>,
}

impl Unacked {
    pub(super) fn sent(&mut self, limit: Duration) {
        if self.count == 0 {
            self.deadline = Some(Instant::now() + limit);
        }
        self.count += 1;
    }

    pub(super) fn acked(&mut self, limit: Duration) {
        self.count = self.count.saturating_sub(1);
        self.deadline = (self.count > 0).then(|| Instant::now() + limit);
    }
}

impl<P: Protocol + Clone> Session<P> {
    /// A session for a client whose CONNECT was accepted; `rbuf` holds what
    /// was read after the CONNECT.
    pub fn new(
        ctx: Arc<Context>,
        proto: P,
        v5: bool,
        stream: Stream,
        rbuf: BytesMut,
        login: Login,
    ) -> Session<P> {
        let timeout = Duration::from_secs(ctx.config.limits.write_timeout_secs);
        let alias_max = ctx.config.mqtt.topic_alias_max();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let mut subs = subscriptions::Subscriptions::new(
            ctx.subscriptions.clone(),
            &login.role,
            &login.router_client_id,
            login.clean_session,
            login.resumed,
        );
        if let Some(feed) = &login.feed {
            subs.restore(feed.filters());
        }
        let out = Writer::new(proto.clone(), v5, timeout, login.max_packet);
        Session {
            out,
            stand_in: StandIn::default(),
            quota: super::flow::Quota::new(login.receive_maximum),
            options: Options::default(),
            proto,
            v5,
            stream,
            rbuf,
            ctx,
            login,
            unacked: Unacked::default(),
            last_packet: Instant::now(),
            ack_tx,
            ack_rx,
            owed: 0,
            own_pubrels: HashSet::new(),
            pending_subacks: HashMap::new(),
            subs,
            streams_used: HashSet::new(),
            aliases: super::alias::Aliases::new(alias_max),
            resubscribed: Default::default(),
            held: HeldAcks::default(),
        }
    }
}

impl<P: Protocol> Session<P> {
    /// Serves the session until it ends, then cleans up with the router:
    /// however it ends, the will and the router's DISCONNECT are not skipped.
    pub async fn run(mut self, connack: Packet) -> End {
        let end = match self.serve(connack).await {
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
        match end {
            End::Refused(code) => self.out.tell_disconnect(code, &mut self.stream).await,
            End::Revoked => {
                let code = DisconnectReasonCode::NotAuthorized;
                self.out.tell_disconnect(code, &mut self.stream).await
            }
            _ => {}
        }
        tracing::debug!(role = ?self.login.role, end = ?end, "Session ended.");
        self.finish(&end).await;
        end
    }

    /// A peer that took nothing (no byte, or no acknowledgement) for the
    /// write timeout is closed. For a clean-session subscriber, what the
    /// router still held for it goes with the session: counted as dropped. A
    /// persistent session keeps it.
    fn stalled(&self) {
        let secs = self.ctx.config.limits.write_timeout_secs;
        tracing::warn!(
            client = ?self.client_name(),
            secs,
            "Closing a connection that took nothing for the write timeout."
        );
        if let (Some(c), true) = (&self.login.cursor, self.login.clean_session) {
            self.ctx
                .metrics
                .dropped(crate::events::dropped::SUBSCRIBER_STALLED, c.behind());
        }
    }

    /// MQTT's 1.5 x keep-alive, capped; "no keep-alive" gets the cap, so an
    /// idle socket cannot stay open for ever.
    fn keep_alive(&self) -> Duration {
        let max = self.ctx.config.limits.max_keep_alive_secs;
        let ka = effective_keep_alive(self.login.keep_alive, max);
        Duration::from_millis(u64::from(ka) * 1500)
    }

    /// The session loop; returns how it ended. An error is a lost connection.
    async fn serve(&mut self, connack: Packet) -> Result<End, ConnError> {
        // Listening for revocations before the CONNACK: a revocation the
        // client could have seen coming is never missed.
        let mut revoked = self.ctx.revoked.subscribe();
        // A revocation (or an account's deletion) between authentication
        // and the line above was broadcast before we listened: look again.
        if self.ctx.auth.is_gone(&self.login.role) {
            return Ok(End::Revoked);
        }
        self.out.write(connack, &mut self.stream).await?;
        // What the client sent right behind its CONNECT (MQTT lets it not
        // wait for the CONNACK) came in the CONNECT's read: serve it now,
        // not at the next read, which a client waiting for its SUBACK
        // would never send.
        if !self.rbuf.is_empty() {
            if let Some(end) = self.serve_read().await {
                return Ok(end);
            }
            self.out.flush(&mut self.stream).await?;
        }
        let keep_alive = self.keep_alive();
        let stop = self.ctx.stop.clone();
        let watched = match &self.login.role {
            Role::Device(id) => id.clone(),
            Role::Subscriber(name) => name.clone(),
        };
        let verifier_done = self.ctx.verifier_done.clone();
        let taken_over = self.login.taken_over.clone();
        let mut draining = false;
        // Set once the verifier has drained: close when the router is quiet.
        let mut quiet: Option<Instant> = None;
        let mut hard_stop = Instant::now();
        // One timer for all of the session's deadlines, moved only when the
        // earliest one moves (later, it is only marked, not re-registered):
        // a timer per deadline per turn cost a clock read and a timer
        // registration each, on every packet.
        let timer = tokio::time::sleep_until(self.last_packet + keep_alive);
        tokio::pin!(timer);

        let end = 'session: loop {
            let save_due = self.login.feed.as_ref().and_then(|f| f.save_due());
            let idle = (!draining).then(|| self.last_packet + keep_alive);
            let due = [idle, self.unacked.deadline, self.held.due, save_due, quiet]
                .into_iter()
                .flatten()
                .min();
            if let Some(due) = due {
                if timer.is_elapsed() || timer.deadline() != due {
                    timer.as_mut().reset(due);
                }
            }
            // Room for more than a packet: a read that fills the buffer
            // leaves the socket marked ready, which costs an extra read
            // (1.56 reads per message at 40k without this). `try_reclaim`
            // never allocates: it moves what is left of a packet to the
            // front of the buffer, which no decoded packet shares
            // (`read_packets`); when that is not enough room (a large
            // partial packet) the read gets what there is, as before. The
            // idle footprint stays the CONNECT's 1 KiB.
            let _ = self.rbuf.try_reclaim(READ_ROOM);
            let mut router_active = false;
            tokio::select! {
                // Reading goes on while draining: subscribers' PUBACKs keep the
                // router forwarding. New sealed publishes then find the
                // verifier closed and are not acknowledged.
                read = self.stream.read_buf(&mut self.rbuf) => {
                    if read? == 0 {
                        break End::Lost;
                    }
                    if let Some(end) = self.serve_read().await {
                        break end;
                    }
                }
                _ = taken_over.cancelled() => {
                    break End::Refused(DisconnectReasonCode::SessionTakenOver);
                }
                () = &mut timer, if due.is_some() => {
                    let now = Instant::now();
                    let passed = |d: Option<Instant>| d.is_some_and(|d| d <= now);
                    if passed(self.unacked.deadline) {
                        return Err(ConnError::Stalled);
                    }
                    if passed(idle) {
                        break End::Lost;
                    }
                    if passed(quiet) {
                        self.out.tell_disconnect(DisconnectReasonCode::ServerShuttingDown, &mut self.stream).await;
                        break End::Shutdown;
                    }
                    if passed(self.held.due) {
                        self.hand_over_held().await?;
                    }
                    if passed(save_due) {
                        if let Some(feed) = self.login.feed.as_mut() {
                            feed.save(true).map_err(store_error)?;
                        }
                    }
                }
                _ = feed_ready(&mut self.login.feed) => {
                    if let Some(feed) = self.login.feed.as_mut() {
                        let max = self.out.max_packet();
                        let filled = feed.fill(self.v5, max, self.out.raw()).map_err(store_error)?;
                        for _ in 0..filled.sent {
                            self.unacked.sent(self.out.timeout());
                        }
                        self.too_large(filled.too_large);
                        self.expired(filled.expired);
                    }
                }
                n = next_notification(&mut self.login.link) => {
                    router_active = true;
                    // Take everything the router has ready: one socket write
                    // for the lot instead of one per message.
                    let mut n = n;
                    loop {
                        if let Some(end) = self.on_notification(n).await? {
                            break 'session end;
                        }
                        match ready_now(next_notification(&mut self.login.link)) {
                            Some(more) => n = more,
                            None => break,
                        }
                    }
                }
                Some(ack) = self.ack_rx.recv() => {
                    let mut ack = ack;
                    loop {
                        self.owed = self.owed.saturating_sub(1);
                        if let Some(p) = self.ack_packet(ack) {
                            self.out.encode(p)?;
                        }
                        match self.ack_rx.try_recv() {
                            Ok(more) => ack = more,
                            Err(_) => break,
                        }
                    }
                }
                r = revoked.recv() => {
                    // A lagged receiver may have missed our name: look again.
                    let mine = match r {
                        // Sent only once the revocation or deletion is
                        // stored; names are one namespace.
                        Ok(name) => name == watched,
                        Err(_) => self.ctx.auth.is_gone(&self.login.role),
                    };
                    if mine {
                        tracing::info!(client = ?super::shown(&watched), "Closing the session of a revoked device or deleted account.");
                        break End::Revoked;
                    }
                }
                _ = stop.cancelled(), if !draining => {
                    draining = true;
                }
                _ = verifier_done.cancelled(), if draining && self.owed == 0 && quiet.is_none() => {
                    // Keep serving until the router has been quiet for a
                    // moment, so what the verifier published last reaches
                    // subscribers (their PUBACKs are still read above).
                    let now = Instant::now();
                    hard_stop = now + DRAIN_MAX;
                    quiet = Some(now + DRAIN_QUIET);
                }
            }
            self.out.flush(&mut self.stream).await?;
            if let Some(feed) = self.login.feed.as_mut() {
                feed.save(false).map_err(store_error)?;
            }
            if let Some(c) = &self.login.cursor {
                c.set_idle(self.unacked.count == 0);
            }
            if let Some(q) = quiet.as_mut() {
                if router_active {
                    *q = (Instant::now() + DRAIN_QUIET).min(hard_stop);
                }
            }
        };
        Ok(end)
    }

    /// Acts on what was read; `Some` when the session ends, an error in
    /// what the client sent ending it as lost.
    async fn serve_read(&mut self) -> Option<End> {
        match self.on_readable().await {
            Ok(end) => end,
            Err(e) => {
                tracing::info!(error = %e, "Closing connection.");
                Some(End::Lost)
            }
        }
    }

    /// This session's router link, made now if it does not exist yet.
    pub(super) async fn router(&mut self) -> Result<&mut LinkTx, ConnError> {
        if self.login.link.is_none() {
            let broker = self.ctx.broker.clone();
            let (id, clean) = (
                self.login.router_client_id.clone(),
                self.login.clean_session,
            );
            let (tx, rx, _connack) = tokio::task::spawn_blocking(move || broker.link(&id, clean))
                .await
                .map_err(|e| ConnError::Io(std::io::Error::other(e)))?
                .map_err(ConnError::Link)?;
            self.login.link = Some((tx, rx));
        }
        match self.login.link.as_mut() {
            Some((tx, _)) => Ok(tx),
            None => Err(ConnError::Io(std::io::Error::other("no router link"))),
        }
    }

    /// Handles one router notification; `Some` when the session must end.
    async fn on_notification(
        &mut self,
        n: Result<Option<Notification>, rumqttd::local::LinkError>,
    ) -> Result<Option<End>, ConnError> {
        match n {
            Ok(Some(Notification::Unschedule)) => {
                if let Some((_, rx)) = &self.login.link {
                    rx.wake().await?;
                }
            }
            Ok(Some(Notification::Disconnect(d, props))) => {
                if self.v5 {
                    self.out.encode(Packet::Disconnect(d, props))?;
                }
                return Ok(Some(End::Lost));
            }
            Ok(Some(n)) => {
                if let (Notification::Forward(f), Some(c)) = (&n, self.login.cursor.as_mut()) {
                    if let Some(at) = f.cursor {
                        c.forwarded(&f.publish.topic, at);
                    }
                }
                if let Some(p) = Option::<Packet>::from(n) {
                    let mut p = subscriptions::merge_suback(self.v5, p, &mut self.pending_subacks);
                    if let (Some(m), Packet::Publish(publish, _)) = (&self.login.mount, &mut p) {
                        // Every filter of this session is under its mount, so
                        // every topic it is sent is too.
                        let shown = std::str::from_utf8(&publish.topic)
                            .ok()
                            .and_then(|t| super::mount::topic(m, t))
                            .map(|t| bytes::Bytes::copy_from_slice(t.as_bytes()));
                        if let Some(t) = shown {
                            publish.topic = t;
                        }
                    }
                    let mut to_router = Vec::new();
                    if let Packet::PubRel(rel, _) = &p {
                        if !self.stand_in.released(rel.pkid, &mut to_router) {
                            return self.send_to_router(to_router).await.map(|()| None);
                        }
                    }
                    let suback = match &p {
                        Packet::SubAck(a, _) => Some(a.pkid),
                        _ => None,
                    };
                    self.deliver(p, &mut to_router)?;
                    if let Some(pkid) = suback {
                        self.suback_written(pkid)?;
                    }
                    self.send_to_router(to_router).await?;
                }
            }
            Ok(None) => {}
            // The router dropped us: another connection took this client id.
            Err(_) => return Ok(Some(End::Lost)),
        }
        Ok(None)
    }

    /// Counts messages not sent because they exceed the client's Maximum
    /// Packet Size; they count as delivered to it.
    pub(super) fn too_large(&self, messages: usize) {
        if messages == 0 {
            return;
        }
        let reason = crate::events::dropped::TOO_LARGE_FOR_CLIENT;
        self.ctx.metrics.dropped(reason, messages as u64);
        tracing::debug!(client = ?self.client_name(), messages, "Discarded messages larger than the client's maximum packet size.");
    }

    /// Counts messages not sent because their message expiry interval ran
    /// out while they waited.
    pub(super) fn expired(&self, messages: usize) {
        if messages > 0 {
            let reason = crate::events::dropped::MESSAGE_EXPIRED;
            self.ctx.metrics.dropped(reason, messages as u64);
        }
    }

    /// Hands packets to the router with one wake-up, after the acks held
    /// ([`HeldAcks`]), or holds them too if they are acks.
    pub(super) async fn send_to_router(
        &mut self,
        mut packets: Vec<Packet>,
    ) -> Result<(), ConnError> {
        if packets.is_empty() {
            return Ok(());
        }
        if self.login.clean_session && self.held.takes(&packets) {
            self.held.packets.append(&mut packets);
            self.held
                .due
                .get_or_insert_with(|| Instant::now() + HOLD_ACKS_FOR);
            return Ok(());
        }
        self.hand_over(packets).await
    }

    /// Hands the acks held to the router now.
    async fn hand_over_held(&mut self) -> Result<(), ConnError> {
        self.hand_over(Vec::new()).await
    }

    async fn hand_over(&mut self, mut packets: Vec<Packet>) -> Result<(), ConnError> {
        if !self.held.packets.is_empty() {
            self.held.due = None;
            packets.splice(0..0, self.held.packets.drain(..));
        }
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        let tx = self.router().await?;
        // `send` appends the last packet and notifies.
        tx.buffer().extend(packets);
        tx.send(last).await?;
        Ok(())
    }

    /// Ends the router session: publishes the will when the client vanished,
    /// then tells the router this connection is gone.
    async fn finish(mut self, end: &End) {
        // First: the will may wait (a held subscriber, the verifier).
        if !self.held.packets.is_empty() {
            let _ = self.hand_over_held().await;
        }
        if let Some(feed) = self.login.feed.take() {
            feed.detach();
        }
        if let (End::Lost, Some(will)) = (end, self.login.will.take()) {
            let will = super::wills::Will {
                sealed: self.is_sealed(&will.topic),
                will,
                delay: self.login.will_delay,
                props: self.login.will_props.take(),
            };
            let (id, taken_over) = (&self.login.router_client_id, &self.login.taken_over);
            super::wills::publish(&self.ctx, id, taken_over, will).await;
        }
        if let Some((tx, _)) = self.login.link.as_mut() {
            let d = Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            };
            let _ = tx.send(Packet::Disconnect(d, None)).await;
        }
        // Bounded: a TLS close_notify to a peer that reads nothing would wait.
        let _ = tokio::time::timeout(SHUTDOWN_WRITE, self.stream.shutdown()).await;
    }
}

/// The keep-alive the gateway holds a client to: the one it asked for,
/// capped at `max`; "none" (0) gets the cap, so an idle socket cannot stay
/// open for ever.
pub(super) fn effective_keep_alive(asked: u16, max: u16) -> u16 {
    match asked {
        0 => max,
        ka => ka.min(max),
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

/// A store failure while serving a persistent session ends the connection:
/// its client reconnects and resumes from the last position written.
fn store_error(e: sled::Error) -> ConnError {
    tracing::error!(error = %e, "A persistent session's record could not be read or written.");
    ConnError::Io(std::io::Error::other("session store"))
}

/// Resolves when a persistent session has something to send; never for
/// other sessions.
async fn feed_ready(feed: &mut Option<super::persistent::Feed>) {
    match feed {
        Some(f) => f.ready().await,
        None => std::future::pending().await,
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
