//! What a client sends: the read buffer is framed, each complete packet is
//! decoded and acted on, and what the router must see goes to it in one
//! batch. A header that can never frame a packet, or a packet larger than
//! `mqtt.max_packet_bytes`, ends the session on the header alone, so the
//! buffer never holds more than one packet and one read.

use rumqttd::protocol::{DisconnectReasonCode, Packet, PingResp, Protocol, PubComp, PubCompReason};

use super::error::ConnError;
use super::packet::{self, Frame};
use super::session::{End, Session};
use crate::events::RejectReason;

impl<P: Protocol> Session<P> {
    /// Decodes every complete packet in the read buffer and acts on it;
    /// `Some` when the session must end.
    pub(super) async fn on_readable(&mut self) -> Result<Option<End>, ConnError> {
        let max = self.ctx.config.mqtt.max_packet_bytes;
        let mut to_router: Vec<Packet> = Vec::new();
        loop {
            let len = match packet::frame(&self.rbuf) {
                Frame::Incomplete => break,
                // A fifth length byte never becomes a packet: waiting for one
                // would let the client fill the buffer for ever.
                Frame::Malformed => {
                    self.refuse(RejectReason::Malformed).await;
                    return Ok(Some(End::Refused(DisconnectReasonCode::MalformedPacket)));
                }
                Frame::Frame { first, len } => {
                    // Packets only a server sends (CONNACK, SUBACK, UNSUBACK,
                    // PINGRESP), AUTH (no enhanced authentication here) and
                    // the reserved type: rumqttd's decoders panic on some,
                    // and the router would log the rest at WARN.
                    if matches!(first >> 4, 0 | 2 | 9 | 11 | 13 | 15) {
                        self.refuse(RejectReason::Malformed).await;
                        return Ok(Some(End::Refused(DisconnectReasonCode::ProtocolError)));
                    }
                    len
                }
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
            // The frame is complete: a decoder that still wants bytes, or
            // panics, was given a malformed packet (rumqttd has already
            // consumed the frame, so it cannot be read again).
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.proto.read_mut(&mut self.rbuf, max)
            }));
            let pkt = match decoded {
                Ok(Ok(p)) => p,
                Ok(Err(rumqttd::protocol::Error::InsufficientBytes(_))) | Err(_) => {
                    self.refuse(RejectReason::Malformed).await;
                    return Ok(Some(End::Refused(DisconnectReasonCode::MalformedPacket)));
                }
                Ok(Err(e)) => return Err(e.into()),
            };
            self.last_packet = tokio::time::Instant::now();
            match pkt {
                Packet::Publish(publish, props) => {
                    let (qos, pkid) = qos_pkid.unwrap_or((0, 0));
                    let end = self
                        .on_publish(publish, props, qos, pkid, &mut to_router)
                        .await?;
                    if end.is_some() {
                        return Ok(end);
                    }
                }
                Packet::PubRel(rel, _) if self.own_pubrels.remove(&rel.pkid) => {
                    let comp = PubComp {
                        pkid: rel.pkid,
                        reason: PubCompReason::Success,
                    };
                    self.out.encode(Packet::PubComp(comp, None))?;
                }
                Packet::Subscribe(sub, props) => {
                    let p = self.screen_subscribe(sub, props);
                    match p {
                        Packet::SubAck(..) => {
                            self.out.encode(p)?;
                        }
                        p => {
                            if let Packet::Subscribe(s, _) = &p {
                                let filters = s.filters.iter().filter_map(|f| tracked(&f.path));
                                match self.login.cursor.as_mut() {
                                    Some(c) => c.subscribed(filters),
                                    None => self.ctx.lag.routed(filters),
                                }
                            }
                            to_router.push(p)
                        }
                    }
                }
                p @ (Packet::PubAck(..) | Packet::PubRec(..)) => {
                    self.unacked.acked(self.out.timeout());
                    to_router.push(p);
                }
                Packet::Unsubscribe(u, props) => {
                    let Some(u) = self.screen_unsubscribe(u)? else {
                        continue;
                    };
                    if let Some(c) = self.login.cursor.as_mut() {
                        c.unsubscribed(u.filters.iter().filter_map(|f| tracked(f)));
                    }
                    to_router.push(Packet::Unsubscribe(u, props));
                }
                Packet::PingReq(_) => {
                    self.out.encode(Packet::PingResp(PingResp))?;
                }
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
}

/// The filters lag accounting follows. A shared subscription's members
/// each get a share of its messages, so counting every message against each
/// would call them behind and hold the devices: they are not tracked.
fn tracked(filter: &str) -> Option<&str> {
    (!filter.starts_with("$share/")).then_some(filter)
}
