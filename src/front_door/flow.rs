//! The client's Receive Maximum (MQTT 5 section 3.3.4): never more QoS 1
//! and 2 PUBLISHes unacknowledged to a client than it said it takes
//! (MQTT5-3.3.4-9). The router knows nothing of it (rumqttd 0.20 keeps up
//! to its own 100 in flight to every client), so a forward that would
//! exceed it is held here, in order, and written when an acknowledgement
//! frees a slot (a PUBACK, a PUBCOMP, or a PUBREC with an error code).
//! Nothing but those PUBLISHes waits (MQTT5-3.3.4-10): SUBACKs, PUBRELs
//! and QoS 0 deliveries go out as they come.
//!
//! QoS 0 deliveries are not counted and are never held: they go out as
//! they come, ahead of held QoS 1/2 messages, also on the same topic. MQTT
//! orders a topic's messages per QoS (section 4.6), and lets QoS 0 go when
//! the quota is used up (4.9). Holding them too would either hold without
//! bound (the router does not count QoS 0 forwards) or stop reading the
//! router, which would hold the PUBRELs a QoS 2 slot waits for.
//!
//! A persistent session's feed reads the outbox only while it has room,
//! so it needs no queue; both take their window from [`window`].

use std::collections::VecDeque;

use rumqttd::protocol::{Packet, Protocol, PubRecReason};

use super::error::ConnError;
use super::session::Session;
use super::writer::Encoded;

/// What rumqttd 0.20's router keeps in flight to one client at most
/// (`router/iobufs.rs`, `MAX_INFLIGHT`): the window of a client that
/// announced none, and the bound on what [`Quota`] holds.
pub(super) const ROUTER_INFLIGHT: usize = 100;

/// The QoS 1/2 messages a client may have unacknowledged: its MQTT 5
/// Receive Maximum, within `ours` (what the gateway keeps in flight to it
/// anyway). 0, a protocol error, is taken as none.
/// The next packet id from `*next` on that `taken` does not hold, wrapping
/// to `first`: the ids the front door sends from itself (a persistent
/// session's from 1, a re-subscription's retained messages above the
/// router's).
pub(super) fn free_pkid(next: &mut u16, first: u16, taken: impl Fn(u16) -> bool) -> u16 {
    loop {
        let p = *next;
        *next = p.checked_add(1).unwrap_or(first);
        if !taken(p) {
            return p;
        }
    }
}

pub(super) fn window(receive_maximum: Option<u16>, ours: usize) -> usize {
    match receive_maximum {
        Some(n) if n > 0 => ours.min(usize::from(n)),
        _ => ours,
    }
}

/// Where an unacknowledged delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1, awaiting PUBACK.
    Ack,
    /// QoS 2, awaiting PUBREC.
    Rec,
    /// QoS 2, received, awaiting PUBCOMP.
    Comp,
}

/// A clean session's deliveries against its client's Receive Maximum.
pub(super) struct Quota {
    window: usize,
    /// QoS 1/2 publishes written and not yet acknowledged: at most
    /// `window`, so a scan is short.
    out: Vec<(u16, Stage)>,
    /// Forwards waiting for a slot, in the router's order, as the router
    /// sent them (marks on: written later, their expiry is judged then).
    /// At most [`ROUTER_INFLIGHT`]: each is a QoS 1/2 forward the router
    /// awaits an acknowledgement for, and it sends no more than that many.
    held: VecDeque<Packet>,
}

impl Quota {
    pub fn new(receive_maximum: Option<u16>) -> Quota {
        Quota {
            window: window(receive_maximum, ROUTER_INFLIGHT),
            out: Vec::new(),
            held: VecDeque::new(),
        }
    }

    /// Whether a QoS 1/2 delivery now has to wait: no slot, or others wait
    /// before it.
    pub fn full(&self) -> bool {
        !self.held.is_empty() || self.out.len() >= self.window
    }

    /// Whether a QoS 1/2 publish may be written now, held ones aside.
    pub fn room(&self) -> bool {
        self.out.len() < self.window
    }

    /// A QoS 1/2 publish written to the client.
    pub fn sent(&mut self, pkid: u16, qos: u8) {
        let stage = if qos == 2 { Stage::Rec } else { Stage::Ack };
        self.out.push((pkid, stage));
    }

    /// The next held forward, if a slot is free for it.
    fn next(&mut self) -> Option<Packet> {
        if self.out.len() >= self.window {
            return None;
        }
        self.held.pop_front()
    }

    /// The client's PUBACK, or its PUBREC (`failed`: with an error code,
    /// which ends the exchange).
    pub fn acked(&mut self, ack: &Packet) {
        match ack {
            Packet::PubAck(a, _) => self.remove(a.pkid, Stage::Ack),
            Packet::PubRec(r, _) => {
                let failed = !matches!(
                    r.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                );
                match failed {
                    true => self.remove(r.pkid, Stage::Rec),
                    false => {
                        let at = self.out.iter_mut().find(|s| **s == (r.pkid, Stage::Rec));
                        if let Some(s) = at {
                            s.1 = Stage::Comp;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The client's PUBCOMP.
    pub fn completed(&mut self, pkid: u16) {
        self.remove(pkid, Stage::Comp);
    }

    fn remove(&mut self, pkid: u16, stage: Stage) {
        if let Some(at) = self.out.iter().position(|s| *s == (pkid, stage)) {
            self.out.remove(at);
        }
    }
}

impl<P: Protocol> Session<P> {
    /// Writes a packet the router sent (mount already applied). A publish
    /// the client would have to acknowledge waits while its quota is used
    /// up; its place in the router's order of acknowledgements is taken at
    /// once (`stand_in.rs`).
    pub(super) fn deliver(
        &mut self,
        p: Packet,
        to_router: &mut Vec<Packet>,
    ) -> Result<(), ConnError> {
        // Kept in case it has to wait; only then, as the QoS it goes at is
        // known once it is encoded.
        let copy = match &p {
            Packet::Publish(..) if self.quota.full() || self.resubscribed.pending() => {
                Some(p.clone())
            }
            _ => None,
        };
        let mark = self.out.mark();
        let me = &self.login.router_client_id;
        match self.out.encode_forward(p, &self.options, me)? {
            Encoded::Publish { qos, pkid, routed } if routed > 0 => {
                if qos > 0 {
                    match copy {
                        Some(copy) => {
                            self.out.undo(mark);
                            self.quota.held.push_back(copy);
                        }
                        None => {
                            self.quota.sent(pkid, qos);
                            self.unacked.sent(self.out.timeout());
                        }
                    }
                }
                self.stand_in.sent(pkid, routed, qos, to_router);
            }
            Encoded::TooLarge { qos, pkid } => {
                self.too_large(1);
                if qos > 0 {
                    self.stand_in.discarded(pkid, qos, to_router);
                }
            }
            Encoded::Expired { qos, pkid } => {
                self.expired(1);
                if qos > 0 {
                    self.stand_in.discarded(pkid, qos, to_router);
                }
            }
            Encoded::Withheld { qos, pkid } if qos > 0 => {
                self.stand_in.discarded(pkid, qos, to_router);
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes held forwards while the client's quota has room (after the
    /// retained messages owed, `resubscribed.rs`); called after
    /// each of its acknowledgements. One that expired, or that the
    /// session's options now decline, while it waited is not written, and
    /// acknowledged to the router in its turn.
    pub(super) fn release(&mut self, to_router: &mut Vec<Packet>) -> Result<(), ConnError> {
        // Retained messages a re-subscription owes go first: their SUBACK
        // went before the forwards held.
        self.send_retained()?;
        while let Some(p) = self.quota.next() {
            let me = &self.login.router_client_id;
            match self.out.encode_forward(p, &self.options, me)? {
                Encoded::Publish { qos, pkid, .. } if qos > 0 => {
                    self.quota.sent(pkid, qos);
                    self.unacked.sent(self.out.timeout());
                }
                Encoded::Publish { pkid, .. } => self.stand_in.withdrawn(pkid, to_router),
                Encoded::TooLarge { pkid, .. } => {
                    self.too_large(1);
                    self.stand_in.withdrawn(pkid, to_router);
                }
                Encoded::Expired { pkid, .. } => {
                    self.expired(1);
                    self.stand_in.withdrawn(pkid, to_router);
                }
                Encoded::Withheld { pkid, .. } => self.stand_in.withdrawn(pkid, to_router),
                Encoded::Packet => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{PubAck, PubAckReason, PubRec};

    #[test]
    fn the_window_is_the_smaller_of_the_clients_and_ours() {
        assert_eq!(window(Some(2), 100), 2);
        assert_eq!(window(Some(500), 100), 100);
        assert_eq!(window(None, 100), 100);
        assert_eq!(window(Some(0), 100), 100);
    }

    /// Which acknowledgements free a slot (MQTT5-3.3.4-9): a PUBREC with
    /// an error code is one; a successful PUBREC is not, its PUBCOMP is.
    /// Over sockets a client cannot be made to refuse a message.
    #[test]
    fn a_failed_pubrec_frees_its_slot_a_successful_one_waits_for_pubcomp() {
        let mut q = Quota::new(Some(2));
        q.sent(1, 2);
        q.sent(2, 2);
        assert!(q.full());
        let rec = |pkid, reason| Packet::PubRec(PubRec { pkid, reason }, None);
        q.acked(&rec(1, PubRecReason::Success));
        assert!(q.full(), "1 awaits its PUBCOMP");
        q.acked(&rec(2, PubRecReason::UnspecifiedError));
        assert!(!q.full());
        q.sent(3, 1);
        // A PUBCOMP or PUBACK for what is not in flight changes nothing.
        q.completed(2);
        let ack = |pkid| {
            let reason = PubAckReason::Success;
            Packet::PubAck(PubAck { pkid, reason }, None)
        };
        q.acked(&ack(1));
        assert!(q.full());
        q.completed(1);
        q.acked(&ack(3));
        assert!(q.out.is_empty());
    }
}
