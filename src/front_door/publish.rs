//! A client's PUBLISH: the topic rules and the rate limit first, then the
//! sealed path (the verifier, acknowledged once the outcome is final) or the
//! router; and the acknowledgement a verifier outcome turns into.

use rumqttd::protocol::{
    DisconnectReasonCode, Packet, Protocol, PubAck, PubAckReason, PubRec, PubRecReason, Publish,
    PublishProperties,
};

use super::auth::Role;
use super::error::ConnError;
use super::session::{End, Session};
use crate::events::RejectReason;
use crate::verifier::{AckResult, AckTo, Inbound, Input, Outcome};

/// The QoS 1/2 publishes an MQTT 5 client may have unacknowledged at once
/// (its CONNACK's Receive Maximum). Each holds up to `mqtt.max_packet_bytes`
/// in the verifier's queue until it is durable; without a bound per
/// connection one client could fill the queue the whole fleet shares.
/// As many as rumqttd's router keeps in flight to a client. MQTT 3.1.1 has
/// no way to say it: those clients are bounded by the queue's backpressure.
pub(super) const RECEIVE_MAXIMUM: u16 = 100;

/// A publish over the rate limit.
struct Over {
    event: bool,
    cut_off: bool,
}

impl<P: Protocol> Session<P> {
    /// Judges one PUBLISH of this client and sends it on its way: to the
    /// verifier (sealed) or through the outbox (an account's). `Some` when
    /// the session must end.
    pub(super) async fn on_publish(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        qos: u8,
        pkid: u16,
    ) -> Result<Option<End>, ConnError> {
        // A resent QoS 2 publish still waiting for its PUBREL is no new one.
        let resent = qos == 2 && self.own_pubrels.contains(&pkid);
        if self.v5 && qos > 0 && !resent && self.inbound_in_flight() >= RECEIVE_MAXIMUM.into() {
            self.refuse(RejectReason::Malformed).await;
            let code = DisconnectReasonCode::ReceiveMaximumExceeded;
            return Ok(Some(End::Refused(code)));
        }
        // Before any rule or matcher sees it: MQTT's rules and the router's.
        let topic = crate::topic::topic_name(&publish.topic).and_then(crate::topic::router_takes);
        let allowed = match topic {
            Ok(t) => self.ctx.acl.may_publish(&self.login.role, t),
            // MQTT reserves `$` topics for the server, and says a server
            // SHOULD keep clients from exchanging messages over them
            // (3.1.1 section 4.7.2): an account's publish there is taken
            // and acknowledged, and goes nowhere. (Nobody can subscribe to
            // one, and the router could not take it.)
            Err(crate::topic::Invalid::Dollar)
                if matches!(self.login.role, Role::Subscriber(_)) =>
            {
                return Ok(self.swallow(qos, pkid));
            }
            Err(why) => {
                tracing::debug!(client = ?self.client_name(), reason = %why, "The PUBLISH topic name is invalid.");
                self.refuse(RejectReason::InvalidTopic).await;
                return Ok(Some(End::Refused(DisconnectReasonCode::TopicNameInvalid)));
            }
        };
        if !allowed {
            self.refuse(RejectReason::NotAllowed).await;
            return Ok(Some(End::Refused(DisconnectReasonCode::NotAuthorized)));
        }
        if let Some(over) = self.over_rate() {
            self.count_refusal(RejectReason::RateLimited);
            if over.event {
                self.refusal_event(RejectReason::RateLimited).await;
            }
            if over.cut_off {
                return Ok(Some(End::Refused(DisconnectReasonCode::QuotaExceeded)));
            }
            // MQTT 5 hears "quota exceeded"; MQTT 3.1.1 gets no PUBACK for a
            // message that was not taken in.
            if self.v5 && qos > 0 {
                let p = if qos == 2 {
                    Packet::PubRec(
                        PubRec {
                            pkid,
                            reason: PubRecReason::QuotaExceeded,
                        },
                        None,
                    )
                } else {
                    Packet::PubAck(
                        PubAck {
                            pkid,
                            reason: PubAckReason::QuotaExceeded,
                        },
                        None,
                    )
                };
                self.out.encode(p)?;
            }
            return Ok(None);
        }
        if !self.is_sealed(&publish.topic) {
            // Passed on to subscribers, but none that could pass for the
            // gateway's own. (They count against nothing: the packet they
            // came in was within `mqtt.max_packet_bytes`.)
            let mut props = crate::properties::screen(props);
            // Its own No Local subscriptions must not get it back: named,
            // so delivery can tell (`options`).
            if self.no_local(&publish.topic) {
                crate::properties::tag_from(&mut props, &self.login.router_client_id);
            }
            // A QoS 2 resend before our PUBREC's PUBREL: already taken.
            if qos == 2 && self.own_pubrels.contains(&pkid) {
                return Ok(self.swallow(qos, pkid));
            }
            let ack = (qos > 0).then(|| AckTo {
                tx: self.ack_tx.clone(),
                pkid,
                qos2: qos == 2,
            });
            self.relay(publish, qos, ack, props).await;
            return Ok(None);
        }
        if !self.stream_admitted(&publish.topic) {
            self.refuse(RejectReason::TooManyStreams).await;
            return Ok(Some(End::Refused(DisconnectReasonCode::QuotaExceeded)));
        }
        // A device's properties are outside its envelope's MAC: dropped.
        drop(props);
        let ack = (qos > 0).then(|| AckTo {
            tx: self.ack_tx.clone(),
            pkid,
            qos2: qos == 2,
        });
        if self.hand_to_verifier(publish, ack).await && qos > 0 {
            self.owed += 1;
        }
        Ok(None)
    }

    /// Whether this session's subscriptions that match `topic` all have No
    /// Local.
    fn no_local(&self, topic: &[u8]) -> bool {
        let topic = std::str::from_utf8(topic).unwrap_or_default();
        match &self.login.feed {
            Some(feed) => feed.no_local(topic),
            None => self.options.no_local(topic),
        }
    }

    /// The client's QoS 1/2 publishes not yet acknowledged, as the client
    /// counts them for Receive Maximum: those awaiting their outcome, and
    /// QoS 2 ones between our PUBREC and its PUBREL. Never more than the
    /// client counts, so a client that keeps to the bound is never cut off.
    fn inbound_in_flight(&self) -> usize {
        self.owed + self.own_pubrels.len()
    }

    /// Acknowledges a publish that goes nowhere, as QoS asks: PUBACK, or
    /// PUBREC with its PUBREL answered later (`own_pubrels`).
    fn swallow(&mut self, qos: u8, pkid: u16) -> Option<End> {
        let ack = match qos {
            1 => Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            ),
            2 => {
                self.own_pubrels.insert(pkid);
                Packet::PubRec(
                    PubRec {
                        pkid,
                        reason: PubRecReason::Success,
                    },
                    None,
                )
            }
            _ => return None,
        };
        self.out.encode(ack).err().map(|_| End::Lost)
    }

    /// Counts, logs and publishes (through the verifier's queue, so events
    /// stay in order) a refusal of this client.
    pub(super) fn refuse(
        &self,
        reason: RejectReason,
    ) -> impl std::future::Future<Output = ()> + 'static {
        self.count_refusal(reason);
        self.refusal_event(reason)
    }

    /// Counts one refused packet of this client, and logs it unless a line
    /// for the same reason was written in the last seconds.
    fn count_refusal(&self, reason: RejectReason) {
        self.ctx.metrics.reject(reason);
        self.ctx.metrics.message(crate::events::result::REJECTED);
        let gate = crate::events::refusal_log();
        if let Some(held_back) = gate.admit(reason.as_str(), std::time::Instant::now()) {
            tracing::warn!(
                reason = reason.as_str(),
                client = ?self.client_name(),
                held_back,
                "Refused packet."
            );
        }
    }

    /// Publishes the refusal's event, through the verifier so that events
    /// stay in order.
    /// (Borrows nothing across the await, so the session's stream need not
    /// be `Sync`.)
    fn refusal_event(
        &self,
        reason: RejectReason,
    ) -> impl std::future::Future<Output = ()> + 'static {
        let client = self.client_name().to_owned();
        let tx = self.ctx.verifier.clone();
        async move {
            let _ = tx.send(Input::Event { reason, client }).await;
        }
    }

    /// Checks the rate limit for one publish; `Some` when it is over.
    fn over_rate(&mut self) -> Option<Over> {
        match self.login.rate.as_mut()?.check(std::time::Instant::now()) {
            super::limits::Verdict::Admit => None,
            super::limits::Verdict::Over { event, cut_off } => Some(Over { event, cut_off }),
        }
    }

    pub(super) fn client_name(&self) -> &str {
        match &self.login.role {
            Role::Device(id) | Role::Subscriber(id) => id,
        }
    }

    /// Whether this device may publish on the stream of `topic` (a sealed
    /// topic, checked by the topic rules): one it used on this connection,
    /// or one `limits::Streams` admits. Accounts have no streams.
    fn stream_admitted(&mut self, topic: &[u8]) -> bool {
        let super::auth::Role::Device(id) = &self.login.role else {
            return true;
        };
        let prefix = self.ctx.config.topics.sealed.len() + 1;
        let rest = topic.get(prefix..).unwrap_or_default();
        let stream = match rest.iter().position(|b| *b == b'/') {
            Some(i) => &rest[i + 1..],
            None => &[][..],
        };
        let stream = std::str::from_utf8(stream).unwrap_or_default();
        if self.streams_used.contains(stream) {
            return true;
        }
        if !self.ctx.streams.admit(id, stream) {
            return false;
        }
        self.streams_used.insert(stream.to_owned());
        true
    }

    pub(super) fn is_sealed(&self, topic: &[u8]) -> bool {
        let prefix = self.ctx.config.topics.sealed.as_bytes();
        topic.len() > prefix.len() && topic.starts_with(prefix) && topic[prefix.len()] == b'/'
    }

    /// Queues a sealed publish for the verifier. Waits while the verifier's
    /// queue is full: this connection stops reading its socket, which is the
    /// backpressure. If the verifier no longer takes input (shutdown), the
    /// message is not acknowledged and the device will resend it.
    pub(super) async fn hand_to_verifier(&mut self, publish: Publish, ack: Option<AckTo>) -> bool {
        let qos = match &ack {
            Some(a) if a.qos2 => 2,
            Some(_) => 1,
            None => 0,
        };
        self.queue_for_verifier(publish, qos, ack, None, Input::Message)
            .await
    }

    /// Hands an account's publish to the outbox, with the
    /// properties passed on, through the verifier's queue so that it is
    /// logged in order with everything else; acknowledged once durable,
    /// like a sealed one.
    pub(super) async fn relay(
        &mut self,
        publish: Publish,
        qos: u8,
        ack: Option<AckTo>,
        props: Option<Box<PublishProperties>>,
    ) {
        let acked = ack.is_some();
        if self
            .queue_for_verifier(publish, qos, ack, props, Input::Relay)
            .await
            && acked
        {
            self.owed += 1;
        }
    }

    /// Queues a publish for the verifier as `kind`; false when it no longer
    /// takes input.
    async fn queue_for_verifier(
        &mut self,
        publish: Publish,
        qos: u8,
        ack: Option<AckTo>,
        props: Option<Box<PublishProperties>>,
        kind: fn(Inbound) -> Input,
    ) -> bool {
        // Held here while a `block` subscriber catches up: this socket is
        // not read and nothing is acknowledged meanwhile.
        self.ctx.lag.admitted().await;
        let m = Inbound {
            topic: publish.topic,
            payload: publish.payload,
            retain: publish.retain,
            qos,
            ack,
            events: true,
            props,
        };
        self.ctx.verifier.send(kind(m)).await.is_ok()
    }

    /// The packet that answers a verifier outcome, if any.
    pub(super) fn ack_packet(&mut self, ack: AckResult) -> Option<Packet> {
        let reason = match ack.outcome {
            Outcome::Delivered | Outcome::Duplicate => PubAckReason::Success,
            Outcome::Rejected(r) => match r {
                crate::events::RejectReason::Malformed => PubAckReason::PayloadFormatInvalid,
                _ => PubAckReason::NotAuthorized,
            },
            // MQTT 3.1.1 has no negative acknowledgement: stay silent so the
            // device resends after reconnecting. MQTT 5 says so explicitly.
            Outcome::Unavailable if !self.v5 => return None,
            Outcome::Unavailable => PubAckReason::UnspecifiedError,
        };
        if ack.qos2 {
            let reason = match reason {
                PubAckReason::Success => PubRecReason::Success,
                PubAckReason::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
                PubAckReason::NotAuthorized => PubRecReason::NotAuthorized,
                _ => PubRecReason::UnspecifiedError,
            };
            // A failed PUBREC ends an MQTT 5 exchange: no PUBREL follows.
            if !self.v5 || reason == PubRecReason::Success {
                self.own_pubrels.insert(ack.pkid);
            }
            return Some(Packet::PubRec(
                PubRec {
                    pkid: ack.pkid,
                    reason,
                },
                None,
            ));
        }
        Some(Packet::PubAck(
            PubAck {
                pkid: ack.pkid,
                reason,
            },
            None,
        ))
    }
}
