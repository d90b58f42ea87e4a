//! What goes back to a client: packets are encoded into one buffer during a
//! turn of the session loop and written with one syscall at its end, under
//! the write timeout, so a peer that takes nothing cannot hold its task.
//!
//! Nothing larger than the Maximum Packet Size an MQTT 5 client announced
//! leaves here (MQTT5-3.1.2-24): a PUBLISH is discarded (the caller treats
//! it as delivered), any other packet loses its reason string and user
//! properties, which MQTT 5 lets a server drop for that reason.

use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, Protocol};
use tokio::io::AsyncWriteExt;

use super::error::ConnError;
use super::options::{Forward, Options};
use super::packet;
use super::transport::Stream;

pub(super) struct Writer<P> {
    proto: P,
    v5: bool,
    buf: BytesMut,
    /// `limits.write_timeout_secs`.
    timeout: Duration,
    /// The largest packet the client takes (its MQTT 5 Maximum Packet Size).
    max_packet: Option<usize>,
}

/// What `Writer::encode` did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoded {
    /// A packet other than PUBLISH, encoded.
    Packet,
    /// A PUBLISH, encoded: `qos` as the client gets it; `routed` and
    /// `pkid`, which rumqttd keeps private, as the router sent it (what the
    /// router awaits acknowledgements for).
    Publish { qos: u8, pkid: u16, routed: u8 },
    /// A PUBLISH larger than the client takes: not sent. MQTT5-3.1.2-25 has
    /// the server behave as if it had been delivered. `qos` as the router
    /// sent it.
    TooLarge { qos: u8, pkid: u16 },
    /// A PUBLISH whose message expiry interval ran out while it waited: not
    /// sent (MQTT-3.3.2-5). `qos` as the router sent it.
    Expired { qos: u8, pkid: u16 },
    /// A PUBLISH the client's subscription options decline (its own message
    /// on No Local filters, a retained one its Retain Handling declines):
    /// not sent. `qos` as the router sent it.
    Withheld { qos: u8, pkid: u16 },
}

impl<P: Protocol> Writer<P> {
    /// `max_packet`: the client's Maximum Packet Size, if it sent one.
    pub fn new(proto: P, v5: bool, timeout: Duration, max_packet: Option<usize>) -> Writer<P> {
        // Small at first: an idle device never writes more than a PINGRESP or an ack.
        Writer {
            proto,
            v5,
            buf: BytesMut::with_capacity(128),
            timeout,
            max_packet: max_packet.filter(|_| v5),
        }
    }

    /// The largest packet this client takes, if it said.
    pub fn max_packet(&self) -> Option<usize> {
        self.max_packet
    }

    /// Encodes a packet into the buffer, within the client's Maximum Packet
    /// Size. Fails for a packet other than PUBLISH that does not fit even
    /// without its optional properties.
    pub fn encode(&mut self, packet: Packet) -> Result<Encoded, ConnError> {
        self.encode_at_most(packet, 2)
    }

    /// Encodes a packet the router sent. A publish goes at the lower of its
    /// publish QoS, which `routed` carried through the router, and the QoS
    /// the router sent it at (the subscription's): MQTT's delivery QoS; with
    /// the RETAIN flag and only if the session's subscription `options`
    /// say so (`me`: the session's router client id, for No Local). An
    /// expired one is not written.
    pub fn encode_forward(
        &mut self,
        mut packet: Packet,
        options: &Options,
        me: &str,
    ) -> Result<Encoded, ConnError> {
        let cap = match &mut packet {
            Packet::Publish(publish, props) => match crate::routed::unmark(props) {
                Some(routed) => {
                    super::identifiers::strip(props);
                    let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
                    let own = routed.from.as_deref() == Some(me);
                    match options.forward(topic, publish.retain, routed.retain, own) {
                        Forward::Send { retain } => {
                            publish.retain = retain;
                            Ok(routed.qos)
                        }
                        Forward::Withhold => Err(true),
                    }
                }
                None => Err(false),
            },
            _ => Ok(2),
        };
        let withheld = match cap {
            Ok(cap) => return self.encode_at_most(packet, cap),
            Err(withheld) => withheld,
        };
        // Encoded only for the QoS and packet id the router awaits acks for.
        let start = self.buf.len();
        self.put(packet)?;
        let (qos, pkid) = packet::publish_qos_pkid(&self.buf[start..]).unwrap_or((0, 0));
        self.buf.truncate(start);
        Ok(match withheld {
            true => Encoded::Withheld { qos, pkid },
            false => Encoded::Expired { qos, pkid },
        })
    }

    /// `encode`, with a PUBLISH written at `cap` at most.
    fn encode_at_most(&mut self, packet: Packet, cap: u8) -> Result<Encoded, ConnError> {
        let packet = match packet {
            Packet::Disconnect(d, None) if self.v5 => {
                let props = disconnect_reason(d.reason_code);
                Packet::Disconnect(d, Some(props))
            }
            p if !self.v5 => without_properties(p),
            p => p,
        };
        let publish = matches!(packet, Packet::Publish(..));
        // Kept only where it may have to be written again, smaller.
        let again = match self.max_packet {
            Some(_) if !publish => Some(packet.clone()),
            _ => None,
        };
        let start = self.buf.len();
        self.put(packet)?;
        if publish {
            let (routed, pkid) = packet::publish_qos_pkid(&self.buf[start..]).unwrap_or((0, 0));
            let qos = routed.min(cap);
            if qos < routed {
                let len = packet::lower_publish_qos(&mut self.buf[start..], qos);
                self.buf.truncate(start + len);
            }
            if self
                .max_packet
                .is_none_or(|max| self.buf.len() - start <= max)
            {
                return Ok(Encoded::Publish { qos, pkid, routed });
            }
            self.buf.truncate(start);
            return Ok(Encoded::TooLarge { qos: routed, pkid });
        }
        let fits = self
            .max_packet
            .is_none_or(|max| self.buf.len() - start <= max);
        if fits {
            return Ok(Encoded::Packet);
        }
        let written = self.buf.split_off(start);
        match again.map(trimmed) {
            Some(Packet::Disconnect(..)) => self.buf.extend_from_slice(&bare_disconnect(&written)),
            Some(p) => {
                self.put(p)?;
            }
            None => {}
        }
        if self
            .max_packet
            .is_some_and(|max| self.buf.len() - start > max)
        {
            self.buf.truncate(start);
            return Err(ConnError::Io(std::io::Error::other(
                "a packet larger than the client's maximum packet size",
            )));
        }
        Ok(Encoded::Packet)
    }

    /// Encodes with rumqttd's codec.
    fn put(&mut self, packet: Packet) -> Result<(), ConnError> {
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
        Ok(())
    }

    /// Where the next packet will be encoded, for `undo`.
    pub fn mark(&self) -> usize {
        self.buf.len()
    }

    /// Takes back what was encoded since `mark`: a publish that must wait
    /// (`flow.rs`).
    pub fn undo(&mut self, mark: usize) {
        self.buf.truncate(mark);
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

/// A packet without what MQTT 5 lets a server leave out when a packet
/// would exceed the client's Maximum Packet Size (MQTT5-3.2.2-19/20 and
/// the like for every acknowledgement): reason strings and user properties.
fn trimmed(packet: Packet) -> Packet {
    macro_rules! bare {
        ($props:expr) => {
            $props.map(|mut p| {
                p.reason_string = None;
                p.user_properties = Vec::new();
                p
            })
        };
    }
    match packet {
        Packet::ConnAck(a, p) => Packet::ConnAck(a, bare!(p)),
        Packet::PubAck(a, _) => Packet::PubAck(a, None),
        Packet::PubRec(a, _) => Packet::PubRec(a, None),
        Packet::PubRel(a, _) => Packet::PubRel(a, None),
        Packet::PubComp(a, _) => Packet::PubComp(a, None),
        Packet::SubAck(a, _) => Packet::SubAck(a, None),
        Packet::UnsubAck(a, _) => Packet::UnsubAck(a, None),
        Packet::Disconnect(d, p) => Packet::Disconnect(d, bare!(p)),
        p => p,
    }
}

/// A DISCONNECT with its reason code alone, taken from `encoded` (one
/// rumqttd wrote, with a reason string). rumqttd 0.20 cannot write one
/// without properties (see `disconnect_reason`).
fn bare_disconnect(encoded: &[u8]) -> [u8; 3] {
    // The reason code follows the fixed header: the type byte, then one to
    // four bytes of length.
    let length_bytes = encoded
        .iter()
        .skip(1)
        .take_while(|b| *b & 0x80 != 0)
        .count()
        + 1;
    let code = encoded.get(1 + length_bytes).copied().unwrap_or(0);
    [0xE0, 0x01, code]
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

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::v5::V5;
    use rumqttd::protocol::{Publish, SubAck, SubAckProperties, SubscribeReasonCode};

    fn writer(max_packet: usize) -> Writer<V5> {
        Writer::new(V5, true, Duration::from_secs(1), Some(max_packet))
    }

    /// The gateway sends no reason strings or user properties but those of
    /// its DISCONNECTs, so trimming the others cannot be reached over a
    /// socket.
    #[test]
    fn packets_other_than_publish_shrink_to_the_clients_maximum() {
        let mut w = writer(8);
        let props = SubAckProperties {
            reason_string: Some("a reason far longer than eight bytes".into()),
            user_properties: vec![("k".into(), "v".into())],
        };
        let ack = SubAck {
            pkid: 7,
            return_codes: vec![SubscribeReasonCode::Success(
                rumqttd::protocol::QoS::AtLeastOnce,
            )],
        };
        assert_eq!(
            w.encode(Packet::SubAck(ack, Some(props))).unwrap(),
            Encoded::Packet
        );
        let Packet::SubAck(ack, None) = V5.read_mut(w.raw(), 1 << 10).unwrap() else {
            panic!("not a bare SUBACK")
        };
        assert_eq!(ack.pkid, 7);

        // Ours carry a reason string; without it, the code alone.
        let d = Disconnect {
            reason_code: DisconnectReasonCode::ServerShuttingDown,
        };
        assert_eq!(
            w.encode(Packet::Disconnect(d, None)).unwrap(),
            Encoded::Packet
        );
        assert_eq!(&w.raw()[..], [0xE0, 0x01, 0x8B]);
    }

    #[test]
    fn a_publish_over_the_clients_maximum_is_not_written() {
        let mut w = writer(64);
        let small = Publish::new("t".to_string(), "s".repeat(16), false);
        assert_eq!(
            w.encode(Packet::Publish(small, None)).unwrap(),
            Encoded::Publish {
                qos: 0,
                pkid: 0,
                routed: 0
            }
        );
        let written = w.raw().len();
        let large = Publish::new("t".to_string(), "l".repeat(64), false);
        let encoded = w.encode(Packet::Publish(large, None)).unwrap();
        assert_eq!(encoded, Encoded::TooLarge { qos: 0, pkid: 0 });
        assert_eq!(w.raw().len(), written, "nothing of it is left");
        // A packet that cannot shrink enough ends the connection instead.
        let mut w = writer(2);
        let d = Disconnect {
            reason_code: DisconnectReasonCode::ServerShuttingDown,
        };
        assert!(w.encode(Packet::Disconnect(d, None)).is_err());
        assert!(w.raw().is_empty());
    }
}
