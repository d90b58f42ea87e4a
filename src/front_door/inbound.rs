//! What a client sends: the read buffer is framed, each complete packet is
//! decoded and acted on, and what the router must see goes to it in one
//! batch. A header that can never frame a packet, or a packet larger than
//! `mqtt.max_packet_bytes`, ends the session on the header alone, so the
//! buffer never holds more than one packet and one read.

use bytes::{Buf, BytesMut};
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PingResp, Protocol, PubComp, PubCompReason, PubRel, PubRelReason,
    SubAck, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};

use super::error::ConnError;
use super::packet::{self, Frame};
use super::session::{End, Session};
use crate::events::RejectReason;

impl<P: Protocol> Session<P> {
    /// Decodes every complete packet in the read buffer and acts on it;
    /// `Some` when the session must end. What the router must see goes to
    /// it in one wake-up, also when the read ends the session: a PUBACK
    /// read together with a DISCONNECT still counts (a resumed session is
    /// not sent again what its client acknowledged).
    pub(super) async fn on_readable(&mut self) -> Result<Option<End>, ConnError> {
        let mut to_router = Vec::new();
        let read = self.read_packets(&mut to_router).await;
        if matches!(read, Ok(None)) || self.login.link.is_some() {
            self.send_to_router(to_router).await?;
        }
        read
    }

    async fn read_packets(
        &mut self,
        to_router: &mut Vec<Packet>,
    ) -> Result<Option<End>, ConnError> {
        let max = self.ctx.config.mqtt.max_packet_bytes;
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
            // Decoded from a copy of exactly its frame: what the packet
            // keeps (a publish's topic and payload, passed on to the
            // router) then holds its own bytes only, and the read buffer is
            // never shared, so it is reused in place (`Session::run`). Were
            // the packet cut from the read buffer, a message kept by the
            // router would pin the whole buffer it was read into.
            let mut frame = BytesMut::from(&self.rbuf[..len]);
            self.rbuf.advance(len);
            // The frame is complete: a decoder that still wants bytes, or
            // panics, was given a malformed packet.
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.proto.read_mut(&mut frame, max)
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
                Packet::Publish(mut publish, mut props) => {
                    // Before anything else sees the topic: the rules, the
                    // verifier (whose MAC covers it) and the router see the
                    // full name only.
                    if let Err(why) = self.aliases.resolve(&mut publish, &mut props) {
                        tracing::debug!(client = ?self.client_name(), reason = ?why, "The PUBLISH topic alias is invalid.");
                        self.refuse(RejectReason::InvalidTopic).await;
                        let code = DisconnectReasonCode::TopicAliasInvalid;
                        return Ok(Some(End::Refused(code)));
                    }
                    let (qos, pkid) = qos_pkid.unwrap_or((0, 0));
                    let end = self.on_publish(publish, props, qos, pkid).await?;
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
                // MQTT 5 section 3.8.2.1.2: 0 is a protocol error.
                Packet::Subscribe(_, Some(p)) if p.id == Some(0) => {
                    self.refuse(RejectReason::Malformed).await;
                    return Ok(Some(End::Refused(DisconnectReasonCode::ProtocolError)));
                }
                Packet::Subscribe(sub, props) if self.login.feed.is_some() => {
                    let p = self.screen_subscribe(sub, props);
                    let ack = self.subscribe_durable(p).await?;
                    self.out.encode(ack)?;
                }
                Packet::Subscribe(sub, props) => {
                    let p = self.screen_subscribe(sub, props);
                    match p {
                        Packet::SubAck(ref ack, _) => {
                            let pkid = ack.pkid;
                            self.out.encode(p)?;
                            self.suback_written(pkid)?;
                        }
                        p => {
                            if let Packet::Subscribe(s, _) = &p {
                                let filters = s.filters.iter().filter_map(|f| tracked(&f.path));
                                if let Some(c) = self.login.cursor.as_mut() {
                                    c.subscribed(filters);
                                }
                            }
                            to_router.push(p)
                        }
                    }
                }
                Packet::PubAck(ack, _) if self.feed_puback(ack.pkid) => {}
                Packet::PubRec(rec, _) if self.feed_pubrec(rec.pkid) => {
                    let rel = PubRel {
                        pkid: rec.pkid,
                        reason: PubRelReason::Success,
                    };
                    self.out.encode(Packet::PubRel(rel, None))?;
                }
                Packet::PubComp(comp, _) if self.login.feed.is_some() => {
                    if let Some(feed) = self.login.feed.as_mut() {
                        feed.pubcomp(comp.pkid);
                    }
                }
                // Acknowledging a retained message a re-subscription got
                // from the front door (`resubscribed.rs`), not the router.
                p @ (Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..))
                    if super::resubscribed::acked_pkid(&p)
                        .is_some_and(|id| self.resubscribed.owns(id)) =>
                {
                    self.retained_acked(p, to_router)?;
                }
                p @ (Packet::PubAck(..) | Packet::PubRec(..)) => {
                    self.unacked.acked(self.out.timeout());
                    self.quota.acked(&p);
                    self.stand_in.acked(p, to_router);
                    self.release(to_router)?;
                }
                Packet::PubComp(comp, props) => {
                    let pkid = comp.pkid;
                    self.quota.completed(pkid);
                    to_router.push(Packet::PubComp(comp, props));
                    self.stand_in.completed(pkid, to_router);
                    self.release(to_router)?;
                }
                Packet::Unsubscribe(u, _) if self.login.feed.is_some() => {
                    let Some(u) = self.screen_unsubscribe(u)? else {
                        continue;
                    };
                    if let Some(feed) = self.login.feed.as_mut() {
                        feed.unsubscribe(&u.filters)
                            .await
                            .map_err(|_| ConnError::Io(std::io::Error::other("session store")))?;
                    }
                    let reasons = match self.v5 {
                        true => vec![UnsubAckReason::Success; u.filters.len()],
                        false => Vec::new(),
                    };
                    let ack = UnsubAck {
                        pkid: u.pkid,
                        reasons,
                    };
                    self.out.encode(Packet::UnsubAck(ack, None))?;
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
                Packet::Disconnect(_, props) => {
                    // MQTT 5 lets the client change its session's expiry on
                    // the way out (3.14.2.2.2), but not from 0: a session
                    // that was not kept cannot be kept now.
                    let asked = props.and_then(|p| p.session_expiry_interval);
                    match (asked, self.login.feed.as_mut()) {
                        (Some(secs), Some(feed)) => feed.set_expiry(u64::from(secs)),
                        (Some(secs), None)
                            if secs > 0
                                && matches!(self.login.role, super::auth::Role::Subscriber(_)) =>
                        {
                            return Ok(Some(End::Refused(DisconnectReasonCode::ProtocolError)));
                        }
                        _ => {}
                    }
                    return Ok(Some(End::Graceful));
                }
                Packet::Connect(..) => return Err(ConnError::DuplicateConnect),
                other => to_router.push(other),
            }
        }
        Ok(None)
    }
}

impl<P: Protocol> Session<P> {
    /// A persistent session's PUBACK; false when it is not for the feed.
    fn feed_puback(&mut self, pkid: u16) -> bool {
        let ours = self.login.feed.as_mut().is_some_and(|f| f.puback(pkid));
        if ours {
            self.unacked.acked(self.out.timeout());
        }
        ours
    }

    fn feed_pubrec(&mut self, pkid: u16) -> bool {
        let ours = self.login.feed.as_mut().is_some_and(|f| f.pubrec(pkid));
        if ours {
            self.unacked.acked(self.out.timeout());
        }
        ours
    }

    /// Completes a screened SUBSCRIBE of a persistent session: the granted
    /// filters are stored durably (before the SUBACK), none go to the router.
    async fn subscribe_durable(&mut self, screened: Packet) -> Result<Packet, ConnError> {
        let (pkid, granted, mut codes, id) = match screened {
            Packet::SubAck(ack, _) => return Ok(Packet::SubAck(ack, None)),
            Packet::Subscribe(sub, props) => {
                let codes = self.pending_subacks.remove(&sub.pkid);
                // With their options (`options::byte`), which the feed applies.
                let granted: Vec<(String, u8)> = sub
                    .filters
                    .iter()
                    .map(|f| (f.path.clone(), super::options::byte(f)))
                    .collect();
                let id = props.and_then(|p| p.id);
                (sub.pkid, granted, codes, id)
            }
            _ => return Err(ConnError::Io(std::io::Error::other("not a SUBSCRIBE"))),
        };
        if let Some(feed) = self.login.feed.as_mut() {
            feed.subscribe(&granted, id)
                .await
                .map_err(|_| ConnError::Io(std::io::Error::other("session store")))?;
        }
        let mut granted = granted.into_iter();
        let return_codes = match codes.take() {
            // Some filters were refused: their codes are in place already.
            Some(codes) => codes
                .into_iter()
                .map(|c| c.unwrap_or_else(|| success(granted.next().map_or(0, |g| g.1))))
                .collect(),
            None => granted.map(|g| success(g.1)).collect(),
        };
        Ok(Packet::SubAck(SubAck { pkid, return_codes }, None))
    }
}

/// The SUBACK code granting a filter with these options.
fn success(options: u8) -> SubscribeReasonCode {
    let qos = super::options::qos(options);
    SubscribeReasonCode::Success(rumqttd::protocol::qos(qos).unwrap_or_default())
}

/// The filters lag accounting follows. A shared subscription's members
/// each get a share of its messages, so counting every message against each
/// would call them behind and hold the devices: they are not tracked.
fn tracked(filter: &str) -> Option<&str> {
    (!filter.starts_with("$share/")).then_some(filter)
}
