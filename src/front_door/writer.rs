//! What goes back to a client: packets are encoded into one buffer during a
//! turn of the session loop and written with one syscall at its end, under
//! the write timeout, so a peer that takes nothing cannot hold its task.

use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, Protocol};
use tokio::io::AsyncWriteExt;

use super::error::ConnError;
use super::transport::Stream;

pub(super) struct Writer<P> {
    proto: P,
    v5: bool,
    buf: BytesMut,
    /// `limits.write_timeout_secs`.
    timeout: Duration,
}

impl<P: Protocol> Writer<P> {
    pub fn new(proto: P, v5: bool, timeout: Duration) -> Writer<P> {
        // Small at first: an idle device never writes more than a PINGRESP or an ack.
        Writer {
            proto,
            v5,
            buf: BytesMut::with_capacity(128),
            timeout,
        }
    }

    /// Encodes a packet into the buffer; returns its first byte (type and
    /// flags: a PUBLISH's QoS, which rumqttd keeps private, is there).
    pub fn encode(&mut self, packet: Packet) -> Result<u8, ConnError> {
        let packet = match packet {
            Packet::Disconnect(d, None) if self.v5 => {
                let props = disconnect_reason(d.reason_code);
                Packet::Disconnect(d, Some(props))
            }
            p if !self.v5 => without_properties(p),
            p => p,
        };
        let start = self.buf.len();
        // rumqttd's encoders end in `unreachable!` for combinations they do
        // not expect: a panic here ends this connection, not the process
        // or the session's clean-up.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.proto.write(packet, &mut self.buf)
        }));
        match written {
            Ok(r) => {
                r?;
            }
            Err(_) => {
                self.buf.truncate(start);
                return Err(ConnError::Codec("encode"));
            }
        }
        Ok(self.buf.get(start).copied().unwrap_or(0))
    }

    /// The buffer, for packets encoded elsewhere (`persistent.rs`).
    pub fn raw(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Writes out everything encoded so far. A peer that takes nothing for
    /// the write timeout is given up on (`ConnError::Stalled`).
    pub async fn flush(&mut self, stream: &mut Stream) -> Result<(), ConnError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(self.timeout, stream.write_all(&self.buf))
            .await
            .map_err(|_| ConnError::Stalled)??;
        self.buf.clear();
        Ok(())
    }

    /// Encodes a packet and writes everything buffered at once.
    pub async fn write(&mut self, packet: Packet, stream: &mut Stream) -> Result<(), ConnError> {
        self.encode(packet)?;
        self.flush(stream).await
    }

    /// Tells an MQTT 5 client why the server closes the connection (MQTT
    /// 3.1.1 has no server DISCONNECT). Best effort: the socket may be gone.
    pub async fn tell_disconnect(
        &mut self,
        reason_code: DisconnectReasonCode,
        stream: &mut Stream,
    ) {
        if self.v5 {
            let d = Packet::Disconnect(Disconnect { reason_code }, None);
            let _ = self.write(d, stream).await;
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Properties for a DISCONNECT we send. rumqttd 0.20's v5 encoder writes a
/// DISCONNECT without properties, or with empty ones, wrongly (a lost reason
/// code or a miscounted length); one with a reason string encodes correctly.
/// Applied in `encode`, so router-originated DISCONNECTs are covered too.
fn disconnect_reason(code: DisconnectReasonCode) -> DisconnectProperties {
    let why = match code {
        DisconnectReasonCode::NotAuthorized => "not authorized",
        DisconnectReasonCode::ServerShuttingDown => "server shutting down",
        DisconnectReasonCode::QuotaExceeded => "rate limit exceeded",
        DisconnectReasonCode::PacketTooLarge => "packet too large",
        DisconnectReasonCode::MalformedPacket => "malformed packet",
        DisconnectReasonCode::SessionTakenOver => "session taken over",
        DisconnectReasonCode::TopicNameInvalid => "topic name invalid",
        DisconnectReasonCode::TopicAliasInvalid => "topic alias invalid",
        _ => "closed by the server",
    };
    DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some(why.to_owned()),
        user_properties: Vec::new(),
        server_reference: None,
    }
}

/// MQTT 3.1.1 has no properties: rumqttd's 3.1.1 encoder panics on a packet
/// that carries some, as the router's may (a forwarded MQTT 5 publish).
fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        p => p,
    }
}
