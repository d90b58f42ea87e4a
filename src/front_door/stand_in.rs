//! Acknowledgements given to the router in a client's place. The router
//! awaits acks for every QoS 1/2 publish it forwards, at the subscription's
//! QoS, but the client does not always owe them:
//!
//! - a publish larger than the client's MQTT 5 Maximum Packet Size is
//!   discarded, and MQTT5-3.1.2-25 has the server behave as if it had been
//!   delivered;
//! - a publish delivered below the router's QoS (MQTT's delivery QoS is the
//!   lower of the publish's and the subscription's, `routed.rs`): at QoS 0
//!   the client acknowledges nothing, at QoS 1 its PUBACK answers a QoS 2
//!   forward and becomes the PUBREC, and the PUBCOMP is given here.
//!
//! rumqttd 0.20 takes a client's PUBACKs and PUBRECs only in the order it
//! sent the publishes, and PUBCOMPs only in the order of its PUBRELs; any
//! other order drops the link. So an ack given in the client's place waits
//! until the client has acknowledged everything the router sent before it.

use std::collections::{HashMap, VecDeque};

use rumqttd::protocol::{
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason,
};

/// One QoS 1/2 publish the router awaits an acknowledgement for.
struct Awaited {
    pkid: u16,
    /// Forwarded at QoS 2: the router awaits a PUBREC.
    qos2: bool,
    /// Who acknowledges it: the client, after getting it at this QoS (1 or
    /// 2), or nobody (`None`: acknowledged here).
    client: Option<u8>,
}

/// What the router awaits from one client, in the order it awaits it.
#[derive(Default)]
pub(super) struct StandIn {
    /// QoS 1/2 publishes awaiting a PUBACK or PUBREC.
    publishes: VecDeque<Awaited>,
    /// PUBRELs awaiting a PUBCOMP: packet id, answered here.
    releases: VecDeque<(u16, bool)>,
    /// PUBRECs given in the client's place whose PUBREL has not come back.
    /// Counted per packet id: the router reuses ids while a PUBREL is owed,
    /// and two PUBRELs with one id are the same packet whichever answers it.
    owed_releases: HashMap<u16, usize>,
}

impl StandIn {
    /// A publish the router forwarded at QoS `routed` (1 or 2), written to
    /// the client at QoS `qos` (at most `routed`): acknowledged here at
    /// once if the client owes nothing for it (QoS 0) and nothing is
    /// unacknowledged before it.
    pub fn sent(&mut self, pkid: u16, routed: u8, qos: u8, to_router: &mut Vec<Packet>) {
        if qos == 0 {
            self.discarded(pkid, routed, to_router);
            return;
        }
        self.publishes.push_back(Awaited {
            pkid,
            qos2: routed == 2,
            client: Some(qos),
        });
    }

    /// A QoS 1/2 publish the client does not get; its ack goes into
    /// `to_router` once everything before it is acknowledged.
    pub fn discarded(&mut self, pkid: u16, qos: u8, to_router: &mut Vec<Packet>) {
        self.publishes.push_back(Awaited {
            pkid,
            qos2: qos == 2,
            client: None,
        });
        self.settle(to_router);
    }

    /// A publish `sent` to the client that it will not get after all: it
    /// waited for room in the client's Receive Maximum (`flow.rs`) and
    /// expired, or the session's options declined it, meanwhile. It is
    /// acknowledged here, in its turn.
    pub fn withdrawn(&mut self, pkid: u16, to_router: &mut Vec<Packet>) {
        let awaited = self
            .publishes
            .iter_mut()
            .find(|a| a.pkid == pkid && a.client.is_some());
        if let Some(a) = awaited {
            a.client = None;
        }
        self.settle(to_router);
    }

    /// The client's PUBACK or PUBREC: into `to_router` as the router awaits
    /// it (a PUBACK for a QoS 2 forward delivered at QoS 1 becomes a PUBREC),
    /// then what was given here behind it.
    pub fn acked(&mut self, ack: Packet, to_router: &mut Vec<Packet>) {
        let pkid = match &ack {
            Packet::PubAck(a, _) => a.pkid,
            Packet::PubRec(r, _) => r.pkid,
            _ => 0,
        };
        let at = self
            .publishes
            .iter()
            .position(|a| a.pkid == pkid && a.client.is_some());
        let lowered = match at.and_then(|at| self.publishes.remove(at)) {
            Some(a) => a.qos2 && a.client == Some(1),
            None => false,
        };
        if lowered {
            self.receive(pkid, to_router);
        } else {
            to_router.push(ack);
        }
        self.settle(to_router);
    }

    /// The client's PUBCOMP, already in `to_router`.
    pub fn completed(&mut self, pkid: u16, to_router: &mut Vec<Packet>) {
        let at = self.releases.iter().position(|(p, d)| *p == pkid && !d);
        if let Some(at) = at {
            self.releases.remove(at);
        }
        self.settle(to_router);
    }

    /// A PUBREL from the router: true when it is for the client, false when
    /// it answers a PUBREC given here (its PUBCOMP then goes into
    /// `to_router` in turn).
    pub fn released(&mut self, pkid: u16, to_router: &mut Vec<Packet>) -> bool {
        let ours = match self.owed_releases.get_mut(&pkid) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.owed_releases.remove(&pkid);
                }
                true
            }
            None => false,
        };
        self.releases.push_back((pkid, ours));
        self.settle(to_router);
        !ours
    }

    /// A PUBREC given here; its PUBREL is answered here too.
    fn receive(&mut self, pkid: u16, to_router: &mut Vec<Packet>) {
        *self.owed_releases.entry(pkid).or_default() += 1;
        let rec = PubRec {
            pkid,
            reason: PubRecReason::Success,
        };
        to_router.push(Packet::PubRec(rec, None));
    }

    /// Acknowledges, in order, the publishes acknowledged here and our
    /// PUBRELs that nothing unacknowledged precedes.
    fn settle(&mut self, to_router: &mut Vec<Packet>) {
        while let Some(&Awaited {
            pkid,
            qos2,
            client: None,
        }) = self.publishes.front()
        {
            self.publishes.pop_front();
            if qos2 {
                self.receive(pkid, to_router);
            } else {
                let ack = PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                };
                to_router.push(Packet::PubAck(ack, None));
            }
        }
        while let Some(&(pkid, true)) = self.releases.front() {
            self.releases.pop_front();
            let comp = PubComp {
                pkid,
                reason: PubCompReason::Success,
            };
            to_router.push(Packet::PubComp(comp, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(packets: &[Packet]) -> Vec<(&'static str, u16)> {
        packets
            .iter()
            .map(|p| match p {
                Packet::PubAck(a, _) => ("ack", a.pkid),
                Packet::PubRec(a, _) => ("rec", a.pkid),
                Packet::PubComp(a, _) => ("comp", a.pkid),
                _ => ("other", 0),
            })
            .collect()
    }

    fn puback(pkid: u16) -> Packet {
        let reason = PubAckReason::Success;
        Packet::PubAck(PubAck { pkid, reason }, None)
    }

    fn pubrec(pkid: u16) -> Packet {
        let reason = PubRecReason::Success;
        Packet::PubRec(PubRec { pkid, reason }, None)
    }

    /// The router must see acks in the order it sent: a discarded publish
    /// behind an unacknowledged one waits for it. (Over sockets the order
    /// the router sees cannot be observed, only that it keeps forwarding.)
    #[test]
    fn acks_given_in_the_clients_place_keep_the_routers_order() {
        let mut s = StandIn::default();
        let mut out = Vec::new();
        s.sent(1, 1, 1, &mut out);
        s.discarded(2, 1, &mut out);
        s.discarded(3, 2, &mut out);
        assert!(out.is_empty(), "1 is not acknowledged yet");
        s.acked(puback(1), &mut out);
        assert_eq!(ids(&out), [("ack", 1), ("ack", 2), ("rec", 3)]);
        out.clear();
        // The router's PUBREL for 3 is ours: answered at once, not sent on.
        assert!(!s.released(3, &mut out));
        assert_eq!(ids(&out), [("comp", 3)]);
        out.clear();
        // Nothing ahead: a discarded QoS 1 publish is acknowledged at once.
        s.discarded(4, 1, &mut out);
        assert_eq!(ids(&out), [("ack", 4)]);
    }

    #[test]
    fn a_pubcomp_given_here_waits_for_the_clients_earlier_one() {
        let mut s = StandIn::default();
        let mut out = Vec::new();
        s.sent(1, 2, 2, &mut out);
        s.acked(pubrec(1), &mut out);
        // The client's PUBREC went to the router, whose PUBREL goes on.
        assert!(s.released(1, &mut out));
        s.discarded(2, 2, &mut out);
        assert_eq!(ids(&out), [("rec", 1), ("rec", 2)]);
        out.clear();
        assert!(!s.released(2, &mut out));
        assert!(out.is_empty(), "the client's PUBCOMP for 1 comes first");
        s.completed(1, &mut out);
        assert_eq!(ids(&out), [("comp", 2)]);
    }

    /// A publish held for the client's Receive Maximum keeps its place in
    /// the router's order; if it is withdrawn (it expired while it waited)
    /// it is acknowledged here in that place, not before the one ahead.
    #[test]
    fn a_withdrawn_publish_is_acknowledged_in_its_turn() {
        let mut s = StandIn::default();
        let mut out = Vec::new();
        s.sent(1, 1, 1, &mut out);
        s.sent(2, 2, 2, &mut out);
        s.sent(3, 1, 0, &mut out);
        s.withdrawn(2, &mut out);
        assert!(out.is_empty(), "1 is not acknowledged yet");
        s.acked(puback(1), &mut out);
        assert_eq!(ids(&out), [("ack", 1), ("rec", 2), ("ack", 3)]);
    }

    /// Delivered below the router's QoS: at QoS 0 the client owes nothing,
    /// at QoS 1 its PUBACK is the PUBREC of a QoS 2 forward. The router's
    /// order holds across both.
    #[test]
    fn a_publish_delivered_below_the_routers_qos_is_completed_here() {
        let mut s = StandIn::default();
        let mut out = Vec::new();
        s.sent(1, 2, 1, &mut out);
        s.sent(2, 2, 0, &mut out);
        s.sent(3, 1, 0, &mut out);
        assert!(out.is_empty(), "1 is not acknowledged yet");
        s.acked(puback(1), &mut out);
        assert_eq!(ids(&out), [("rec", 1), ("rec", 2), ("ack", 3)]);
        out.clear();
        assert!(!s.released(1, &mut out));
        assert!(!s.released(2, &mut out));
        assert_eq!(ids(&out), [("comp", 1), ("comp", 2)]);
        out.clear();
        // Nothing ahead: acknowledged at once.
        s.sent(4, 2, 0, &mut out);
        assert_eq!(ids(&out), [("rec", 4)]);
    }
}
