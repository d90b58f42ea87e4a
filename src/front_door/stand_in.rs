//! Acknowledgements given to the router in a client's place, for the
//! publishes it forwarded that were larger than the client's MQTT 5 Maximum
//! Packet Size. MQTT5-3.1.2-25 has the server discard such a publish and
//! behave as if it had been delivered; for the router that means an ack.
//!
//! rumqttd 0.20 takes a client's PUBACKs and PUBRECs only in the order it
//! sent the publishes, and PUBCOMPs only in the order of its PUBRELs; any
//! other order drops the link. So an ack given in the client's place waits
//! until the client has acknowledged everything the router sent before it.

use std::collections::{HashMap, VecDeque};

use rumqttd::protocol::{
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason,
};

/// What the router awaits from one client, in the order it awaits it.
#[derive(Default)]
pub(super) struct StandIn {
    /// QoS 1/2 publishes awaiting a PUBACK or PUBREC: packet id, QoS 2,
    /// discarded (acknowledged here).
    publishes: VecDeque<(u16, bool, bool)>,
    /// PUBRELs awaiting a PUBCOMP: packet id, answered here.
    releases: VecDeque<(u16, bool)>,
    /// PUBRECs given in the client's place whose PUBREL has not come back.
    /// Counted per packet id: the router reuses ids while a PUBREL is owed,
    /// and two PUBRELs with one id are the same packet whichever answers it.
    owed_releases: HashMap<u16, usize>,
}

impl StandIn {
    /// A QoS 1/2 publish written to the client.
    pub fn sent(&mut self, pkid: u16, qos: u8) {
        self.publishes.push_back((pkid, qos == 2, false));
    }

    /// A QoS 1/2 publish the client does not get; its ack goes into
    /// `to_router` once everything before it is acknowledged.
    pub fn discarded(&mut self, pkid: u16, qos: u8, to_router: &mut Vec<Packet>) {
        self.publishes.push_back((pkid, qos == 2, true));
        self.settle(to_router);
    }

    /// The client's PUBACK or PUBREC, already in `to_router`.
    pub fn acked(&mut self, pkid: u16, to_router: &mut Vec<Packet>) {
        let at = self.publishes.iter().position(|(p, _, d)| *p == pkid && !d);
        if let Some(at) = at {
            self.publishes.remove(at);
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

    /// Acknowledges, in order, the discarded publishes and our PUBRELs that
    /// nothing unacknowledged precedes.
    fn settle(&mut self, to_router: &mut Vec<Packet>) {
        while let Some(&(pkid, qos2, true)) = self.publishes.front() {
            self.publishes.pop_front();
            if qos2 {
                *self.owed_releases.entry(pkid).or_default() += 1;
                let rec = PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                };
                to_router.push(Packet::PubRec(rec, None));
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

    /// The router must see acks in the order it sent: a discarded publish
    /// behind an unacknowledged one waits for it. (Over sockets the order
    /// the router sees cannot be observed, only that it keeps forwarding.)
    #[test]
    fn acks_given_in_the_clients_place_keep_the_routers_order() {
        let mut s = StandIn::default();
        let mut out = Vec::new();
        s.sent(1, 1);
        s.discarded(2, 1, &mut out);
        s.discarded(3, 2, &mut out);
        assert!(out.is_empty(), "1 is not acknowledged yet");
        s.acked(1, &mut out);
        assert_eq!(ids(&out), [("ack", 2), ("rec", 3)]);
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
        s.sent(1, 2);
        s.acked(1, &mut out);
        // The client's PUBREC went to the router, whose PUBREL goes on.
        assert!(s.released(1, &mut out));
        s.discarded(2, 2, &mut out);
        assert_eq!(ids(&out), [("rec", 2)]);
        out.clear();
        assert!(!s.released(2, &mut out));
        assert!(out.is_empty(), "the client's PUBCOMP for 1 comes first");
        s.completed(1, &mut out);
        assert_eq!(ids(&out), [("comp", 2)]);
    }
}
