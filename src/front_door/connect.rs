//! From accepted socket to session: the transport handshake, the CONNECT,
//! authentication and the router session. Everything here runs under one
//! deadline (`mqtt.connect_timeout_ms`) taken at accept, so a client that
//! trickles its handshake or its CONNECT one byte at a time still gives its
//! connection slot back on time.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{ConnAck, ConnectReturnCode, Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::auth::Role;
use super::error::ConnError;
use super::packet::{self, Frame};
use super::session::{Login, Session};
use super::transport::{Stream, Transport};
use super::{limits, shown, Context};
use crate::broker;
use crate::events::ConnectRefusal;

/// The longest client id an account may use. Persistent sessions live in
/// the router by client id (rumqttd never forgets one), so ids of up to a
/// packet's size would let one account hold that much per session.
const MAX_CLIENT_ID: usize = 256;

/// Bytes read before the protocol level is known: a CONNECT's level sits
/// in its first dozen bytes.
const LEVEL_PEEK: usize = 1024;

/// Serves one accepted socket until its session ends.
pub(super) async fn handle(
    tcp: TcpStream,
    transport: Transport,
    ctx: Arc<Context>,
) -> Result<(), ConnError> {
    tcp.set_nodelay(true)?;
    let deadline = Instant::now() + Duration::from_millis(ctx.config.mqtt.connect_timeout_ms);
    let max = ctx.config.mqtt.max_packet_bytes;
    let mut stream = match timeout_at(deadline, transport.upgrade(tcp, max)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.metrics.connect_refused(ConnectRefusal::HandshakeFailed);
            tracing::debug!(listener = transport.name(), error = %e, "Transport handshake failed.");
            return Ok(());
        }
        Err(_) => {
            ctx.metrics.connect_refused(ConnectRefusal::ConnectTimeout);
            return Ok(());
        }
    };
    let mut buf = BytesMut::with_capacity(LEVEL_PEEK);
    let level = timeout_at(deadline, async {
        loop {
            if let Some(level) = packet::connect_level(&buf) {
                return Ok(Some(level));
            }
            match packet::frame(&buf) {
                Frame::Frame { first, .. } if first >> 4 != 1 => return Ok(None),
                Frame::Malformed => return Ok(None),
                _ => {}
            }
            if buf.len() > LEVEL_PEEK || stream.read_buf(&mut buf).await? == 0 {
                return Ok::<_, std::io::Error>(None);
            }
        }
    })
    .await;
    match level {
        Ok(Ok(Some(5))) => connect(V5, true, stream, buf, deadline, ctx).await,
        Ok(Ok(Some(4))) => connect(V4, false, stream, buf, deadline, ctx).await,
        Ok(Ok(Some(_))) => {
            // MQTT 3.1 and unknown levels: 3.1.1's "unacceptable protocol version".
            let mut out = BytesMut::new();
            let _ = V4.write(connack(ConnectReturnCode::RefusedProtocolVersion), &mut out);
            let _ = timeout_at(deadline, stream.write_all(&out)).await;
            ctx.metrics.connect_refused(ConnectRefusal::ProtocolVersion);
            Ok(())
        }
        Ok(Ok(None)) | Ok(Err(_)) => {
            ctx.metrics.connect_refused(ConnectRefusal::NotConnect);
            Ok(())
        }
        Err(_) => {
            ctx.metrics.connect_refused(ConnectRefusal::ConnectTimeout);
            Ok(())
        }
    }
}

/// The CONNACK code that tells a client why it was refused; `None` where
/// the connection is closed without an answer.
fn return_code(reason: ConnectRefusal, v5: bool) -> Option<ConnectReturnCode> {
    use ConnectRefusal as R;
    match reason {
        // MQTT 3.1.1 has no code for it (and rumqttd's 3.1.1 encoder cannot
        // write 5's codes); 5 says "topic name invalid".
        R::WillTopicInvalid if v5 => Some(ConnectReturnCode::TopicNameInvalid),
        R::WillTopicInvalid => Some(ConnectReturnCode::NotAuthorized),
        R::NoCredentials
        | R::BadPassword
        | R::UnknownDevice
        | R::Revoked
        | R::BadToken
        | R::ExpiredToken
        | R::ClientIdMismatch
        | R::WillNotAllowed => Some(ConnectReturnCode::NotAuthorized),
        R::ClientIdInvalid => Some(ConnectReturnCode::ClientIdentifierNotValid),
        // 3.1.1's "server unavailable" is code 3, rumqttd's ServiceUnavailable;
        // its 3.1.1 encoder panics on the MQTT 5 variant.
        R::RouterFull | R::SessionStore if v5 => Some(ConnectReturnCode::ServerUnavailable),
        R::RouterFull | R::SessionStore => Some(ConnectReturnCode::ServiceUnavailable),
        R::TooManySessions if v5 => Some(ConnectReturnCode::QuotaExceeded),
        R::TooManySessions => Some(ConnectReturnCode::ServiceUnavailable),
        R::ProtocolVersion if v5 => Some(ConnectReturnCode::UnsupportedProtocolVersion),
        R::ProtocolVersion => Some(ConnectReturnCode::RefusedProtocolVersion),
        R::TooManyConnections
        | R::HandshakeFailed
        | R::ConnectTimeout
        | R::NotConnect
        | R::MalformedConnect => None,
    }
}

/// Refuses a CONNECT: the CONNACK that says why (written within the
/// connect deadline), the counter, and one log line. Client id and username
/// are the client's own bytes, so they are logged quoted: a newline in
/// either cannot forge a log line.
async fn refuse<P: Protocol>(
    proto: &mut P,
    v5: bool,
    stream: &mut Stream,
    deadline: Instant,
    ctx: &Context,
    reason: ConnectRefusal,
    (client_id, username): (&str, &str),
) {
    ctx.metrics.connect_refused(reason);
    // Anyone can send a CONNECT: the line is rate-limited per reason, and
    // what the client chose is shown quoted and cut short.
    let gate = crate::events::refusal_log();
    if let Some(held_back) = gate.admit(reason.as_str(), std::time::Instant::now()) {
        let (client_id, username) = (shown(client_id), shown(username));
        tracing::info!(reason = reason.as_str(), client_id = ?client_id, username = ?username, held_back, "Refused CONNECT.");
    }
    if let Some(code) = return_code(reason, v5) {
        let mut out = BytesMut::new();
        if proto.write(connack(code), &mut out).is_ok() {
            let _ = timeout_at(deadline, stream.write_all(&out)).await;
        }
    }
}

async fn connect<P: Protocol + Clone + Send + 'static>(
    mut proto: P,
    v5: bool,
    mut stream: Stream,
    mut buf: BytesMut,
    deadline: Instant,
    ctx: Arc<Context>,
) -> Result<(), ConnError> {
    let max = ctx.config.mqtt.max_packet_bytes;
    // The codec refuses a CONNECT larger than `max` on its header, so the
    // buffer never holds more than one CONNECT and one read.
    let packet = loop {
        // Whether the first frame is whole before the codec consumes it: a
        // decoder that still asks for bytes then was given a malformed
        // CONNECT, and what follows must not be read as its rest.
        let whole = matches!(packet::frame(&buf), Frame::Frame { len, .. } if len <= buf.len());
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            proto.read_mut(&mut buf, max)
        }));
        let Ok(decoded) = decoded else {
            ctx.metrics
                .connect_refused(ConnectRefusal::MalformedConnect);
            return Err(ConnError::Codec("decode"));
        };
        match decoded {
            Ok(p) => break p,
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) if whole => {
                ctx.metrics
                    .connect_refused(ConnectRefusal::MalformedConnect);
                return Ok(());
            }
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {
                match timeout_at(deadline, stream.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return Ok(()),
                    Err(_) => {
                        ctx.metrics.connect_refused(ConnectRefusal::ConnectTimeout);
                        return Ok(());
                    }
                }
            }
            Err(e) => {
                ctx.metrics
                    .connect_refused(ConnectRefusal::MalformedConnect);
                return Err(e.into());
            }
        }
    };
    let Packet::Connect(connect, props, will, will_props, login) = packet else {
        ctx.metrics.connect_refused(ConnectRefusal::NotConnect);
        return Ok(());
    };
    // Only these are used; the rest is up to a packet's worth of memory for
    // the whole session.
    let expiry = props.as_ref().and_then(|p| p.session_expiry_interval);
    let receive_maximum = props.as_ref().and_then(|p| p.receive_maximum);
    // 0 is a protocol error (MQTT 5 section 3.1.2.11.4): taken as "no limit".
    let max_packet = props
        .as_ref()
        .and_then(|p| p.max_packet_size)
        .filter(|m| *m > 0)
        .map(|m| usize::try_from(m).unwrap_or(usize::MAX));
    drop(props);
    let will_delay = will_props
        .as_ref()
        .and_then(|p| p.delay_interval)
        .unwrap_or(0);
    // Passed on with the will as an account's PUBLISH properties are
    // (screened the same way); a sealed will drops them at the verifier.
    let will_props = will_props.and_then(|p| {
        crate::properties::screen(Some(rumqttd::protocol::PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            ..Default::default()
        }))
    });
    let username = login.as_ref().map(|l| l.username.as_str()).unwrap_or("");
    let admitted = admit(&ctx, &connect, will.as_ref(), login.as_ref());
    let (role, router_client_id, assigned) = match admitted {
        Ok(admitted) => admitted,
        Err(reason) => {
            let who = (connect.client_id.as_str(), username);
            refuse(&mut proto, v5, &mut stream, deadline, &ctx, reason, who).await;
            return Ok(());
        }
    };
    // An account of a tenant sees the world through its tenant's mount.
    let mount = match &role {
        Role::Subscriber(name) => ctx
            .auth
            .accounts()
            .tenant_of(name)
            .map(|t| super::mount::of(&ctx.config.topics.tenants, &t)),
        Role::Device(_) => None,
    };
    let durable = match durability(
        &ctx,
        &role,
        mount.as_deref(),
        v5,
        &connect,
        expiry,
        &router_client_id,
    ) {
        Ok(d) => d,
        Err(reason) => {
            let who = (connect.client_id.as_str(), username);
            refuse(&mut proto, v5, &mut stream, deadline, &ctx, reason, who).await;
            return Ok(());
        }
    };
    // A persistent account session lives in the outbox, not the router
    // (`crate::sessions`); anything it still hands the router is clean.
    let clean = connect.clean_session || durable.is_some();
    // A clean-session device needs no router session until it subscribes:
    // its sealed publishes go straight to the verifier.
    let lazy = (clean && matches!(role, Role::Device(_))) || durable.is_some();
    let (link, connack) = if let Some(d) = &durable {
        let mut c = connack(ConnectReturnCode::Success);
        if let Packet::ConnAck(a, props) = &mut c {
            a.session_present = d.present;
            // MQTT 5: the server says so when it keeps a session for less
            // time than the client asked for.
            let kept = d.record.expiry_secs;
            if v5 && expiry.is_some_and(|asked| u64::from(asked) > kept) {
                props
                    .get_or_insert_with(Default::default)
                    .session_expiry_interval = Some(kept as u32);
            }
        }
        (None, c)
    } else if lazy {
        (None, connack(ConnectReturnCode::Success))
    } else {
        let broker = ctx.broker.clone();
        let id = router_client_id.clone();
        let linked = tokio::task::spawn_blocking(move || broker.link(&id, clean)).await;
        let (link_tx, link_rx, connack) = match linked {
            Ok(Ok(l)) => l,
            _ => {
                let who = (connect.client_id.as_str(), username);
                let reason = ConnectRefusal::RouterFull;
                refuse(&mut proto, v5, &mut stream, deadline, &ctx, reason, who).await;
                return Ok(());
            }
        };
        let Some(mut connack) = Option::<Packet>::from(connack) else {
            return Ok(());
        };
        // The router's Topic Alias Maximum is not the front door's, which
        // resolves the aliases (`tell_capabilities` says how many).
        if let Packet::ConnAck(_, Some(p)) = &mut connack {
            p.topic_alias_max = None;
        }
        (Some((link_tx, link_rx)), connack)
    };
    let mut connack = connack;
    if v5 {
        let max = ctx.config.limits.max_keep_alive_secs;
        tell_choices(&mut connack, connect.keep_alive, max, assigned);
        // A persistent session is fed from the outbox alone: no group to
        // share it with (`subscribe.rs` refuses `$share/` there).
        let shared = clean && durable.is_none();
        tell_capabilities(&mut connack, &ctx.config.mqtt, shared);
    }
    // One live connection per device: a newer one takes over (MQTT 5 clients
    // hear DISCONNECT 0x8E), also when no router session exists to do it.
    let taken_over = match &durable {
        Some(d) => d.taken_over.clone(),
        None => CancellationToken::new(),
    };
    let serial = ctx.sessions.take_over(&role, taken_over.clone());
    // Back in time: the will of its lost connection is not published.
    ctx.wills.cancel(&router_client_id).await;
    tracing::debug!(client_id = ?connect.client_id, role = ?role, "Connected.");
    let rate = match &role {
        Role::Device(_) if ctx.config.limits.device_rate > 0.0 => Some(limits::RateLimit::new(
            ctx.config.limits.device_rate,
            ctx.config.limits.device_burst,
            std::time::Instant::now(),
        )),
        _ => None,
    };
    let resumed = matches!(&connack, Packet::ConnAck(a, _) if a.session_present);
    // Subscriber accounts are tracked for lag (`crate::lag`); devices'
    // downlink on `cmd/` is too thin to need it.
    let cursor = match &role {
        // Fed from the outbox, at its own pace: no router position to track.
        Role::Subscriber(_) if durable.is_some() => None,
        Role::Subscriber(name) => {
            let policy = ctx
                .config
                .users
                .iter()
                .find(|u| &u.name == name)
                .and_then(|u| u.slow_subscriber)
                .unwrap_or(ctx.config.limits.slow_subscriber);
            Some(
                ctx.lag
                    .reader(name, policy == crate::config::SlowSubscriber::Block),
            )
        }
        Role::Device(_) => None,
    };
    // A will waits for its delay at most until the session ends.
    let session_secs = match &durable {
        Some(d) => d.record.expiry_secs,
        None => u64::from(expiry.unwrap_or(0)).min(ctx.persistent.config().max_expiry_secs),
    };
    let will_delay = Duration::from_secs(u64::from(will_delay).min(session_secs));
    let role_for_release = role.clone();
    let sessions = ctx.clone();
    let feed = durable.map(|d| {
        super::persistent::Feed::new(
            ctx.persistent.clone(),
            router_client_id.clone(),
            &d,
            receive_maximum,
            mount.clone(),
        )
    });
    let login = Login {
        role,
        keep_alive: connect.keep_alive,
        will,
        rate,
        link,
        router_client_id,
        clean_session: clean,
        resumed,
        taken_over,
        cursor,
        feed,
        max_packet,
        receive_maximum,
        mount,
        will_delay,
        will_props,
    };
    Session::new(ctx, proto, v5, stream, buf, login)
        .run(connack)
        .await;
    sessions.sessions.release(&role_for_release, serial);
    Ok(())
}

/// Tells an MQTT 5 client, in its CONNACK, what the gateway chose for it:
/// the keep-alive it will be held to when that is not the one it asked for
/// (MQTT 5 section 3.2.2.3.14), and the client id it was assigned when it
/// sent none (3.2.2.3.7), without the gateway's internal namespace.
fn tell_choices(connack: &mut Packet, asked: u16, max: u16, assigned: Option<String>) {
    let Packet::ConnAck(_, props) = connack else {
        return;
    };
    let held_to = super::session::effective_keep_alive(asked, max);
    if held_to == asked && assigned.is_none() {
        return;
    }
    let props = props.get_or_insert_with(Default::default);
    if held_to != asked {
        props.server_keep_alive = Some(held_to);
    }
    if assigned.is_some() {
        props.assigned_client_identifier = assigned;
    }
}

/// Tells an MQTT 5 client, in its CONNACK, what the gateway really does
/// (MQTT 5 section 3.2.2.3): how many QoS 1/2 publishes it takes in flight
/// (`publish::RECEIVE_MAXIMUM`, enforced), the largest packet it takes
/// (`mqtt.max_packet_bytes`, enforced on the header), the topic aliases it
/// may set (`mqtt.topic_alias_maximum`; any other alias gets DISCONNECT
/// 0x94), retained messages, wildcard filters and subscription identifiers
/// (`identifiers.rs`), and shared subscriptions where the session is clean
/// (`shared`).
fn tell_capabilities(connack: &mut Packet, mqtt: &crate::config::MqttConfig, shared: bool) {
    let Packet::ConnAck(_, props) = connack else {
        return;
    };
    let props = props.get_or_insert_with(Default::default);
    props.receive_max = Some(super::publish::RECEIVE_MAXIMUM);
    props.max_packet_size = Some(u32::try_from(mqtt.max_packet_bytes).unwrap_or(u32::MAX));
    props.topic_alias_max = Some(mqtt.topic_alias_max());
    props.retain_available = Some(1);
    props.wildcard_subscription_available = Some(1);
    props.subscription_identifiers_available = Some(1);
    props.shared_subscription_available = Some(u8::from(shared));
}

/// Decides a decoded CONNECT: who the client is (`auth.rs`), whether its
/// will topic is one it may publish to, its router session's id, and the
/// client id the gateway assigned it if it sent none.
fn admit(
    ctx: &Context,
    connect: &rumqttd::protocol::Connect,
    will: Option<&rumqttd::protocol::LastWill>,
    login: Option<&rumqttd::protocol::Login>,
) -> Result<(Role, String, Option<String>), ConnectRefusal> {
    let now_ms = crate::now_ms();
    let credentials = login.map(|l| (l.username.as_str(), l.password.as_str()));
    let role = ctx
        .auth
        .authenticate(&connect.client_id, credentials, now_ms / 1000, now_ms)?;
    if let Some(w) = will {
        // Before any rule or matcher sees it: MQTT's rules and the router's.
        let topic = crate::topic::topic_name(&w.topic)
            .and_then(crate::topic::router_takes)
            .map_err(|_| ConnectRefusal::WillTopicInvalid)?;
        if !ctx.acl.may_publish(&role, topic) {
            return Err(ConnectRefusal::WillNotAllowed);
        }
    }
    let id = &connect.client_id;
    let mut assigned = None;
    let router_client_id = match &role {
        Role::Device(device) => broker::device_client_id(device),
        Role::Subscriber(account) if id.is_empty() && connect.clean_session => {
            let chosen = format!("{:016x}", rand::random::<u64>());
            let routed = broker::assigned_client_id(account, &chosen);
            assigned = Some(chosen);
            routed
        }
        Role::Subscriber(_)
            if id.is_empty() || id.len() > MAX_CLIENT_ID || id.contains(['+', '#', '/', '$']) =>
        {
            return Err(ConnectRefusal::ClientIdInvalid);
        }
        Role::Subscriber(account) => broker::account_client_id(account, id),
    };
    Ok((role, router_client_id, assigned))
}

/// Opens the persistent session of an account, if the CONNECT asks for one:
/// clean session 0 (MQTT 3.1.1), or a session expiry above 0 (MQTT 5), or a
/// kept session resumed with Clean Start 0. Any other connection discards
/// a kept session of its client id, as Clean Start says. Devices keep the
/// router's sessions (their downlink is thin and best effort).
fn durability(
    ctx: &Context,
    role: &Role,
    mount: Option<&str>,
    v5: bool,
    connect: &rumqttd::protocol::Connect,
    expiry: Option<u32>,
    id: &str,
) -> Result<Option<crate::sessions::Attached>, ConnectRefusal> {
    let Role::Subscriber(account) = role else {
        return Ok(None);
    };
    let sessions = &ctx.persistent;
    let clean_start = connect.clean_session;
    let expiry = match (v5, clean_start) {
        (false, false) => sessions.config().max_expiry_secs,
        (false, true) => 0,
        (true, _) => u64::from(expiry.unwrap_or(0)),
    };
    let wanted = expiry > 0 || (!clean_start && sessions.contains(id));
    if !wanted {
        sessions.discard(id);
        return Ok(None);
    }
    match sessions.attach(id, account, clean_start, expiry) {
        Ok(mut a) => {
            // Topic rules may have narrowed since it subscribed: a kept
            // filter the account may no longer use is dropped.
            a.record.filters.retain(|(f, _)| match mount {
                Some(m) => super::mount::unfilter(m, f)
                    .is_some_and(|sent| ctx.acl.may_subscribe_in_mount(&sent)),
                None => ctx.acl.may_subscribe(role, f),
            });
            Ok(Some(a))
        }
        Err(crate::sessions::Refused::TooMany) => Err(ConnectRefusal::TooManySessions),
        Err(crate::sessions::Refused::Store) => Err(ConnectRefusal::SessionStore),
    }
}

/// A CONNACK with `code` and no session.
pub(super) fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_after_the_connect_is_answered() {
        // Refusals decided on a decoded CONNECT owe the client a CONNACK;
        // the others have no CONNECT to answer.
        for r in ConnectRefusal::ALL {
            let answered = return_code(r, false).is_some() && return_code(r, true).is_some();
            // Every code we would send encodes in the client's protocol.
            for (v5, code) in [(false, return_code(r, false)), (true, return_code(r, true))] {
                let Some(code) = code else { continue };
                let written = std::panic::catch_unwind(|| match v5 {
                    true => V5.write(connack(code), &mut BytesMut::new()).map(|_| ()),
                    false => V4.write(connack(code), &mut BytesMut::new()).map(|_| ()),
                });
                assert!(matches!(written, Ok(Ok(()))), "{} v5={v5}", r.as_str());
            }
            let before_connect = matches!(
                r,
                ConnectRefusal::TooManyConnections
                    | ConnectRefusal::HandshakeFailed
                    | ConnectRefusal::ConnectTimeout
                    | ConnectRefusal::NotConnect
                    | ConnectRefusal::MalformedConnect
            );
            assert_eq!(answered, !before_connect, "{}", r.as_str());
        }
    }
}
