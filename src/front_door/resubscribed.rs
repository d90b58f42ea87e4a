//! Retained messages for a re-subscription with MQTT 5 Retain Handling 0
//! (section 3.8.3.1: sent on every SUBSCRIBE) or MQTT 3.1.1 (section
//! 3.8.4: re-sent when a subscription is renewed), for sessions the router
//! serves (clean ones, and persistent ones it resumed). rumqttd 0.20's
//! router sends retained messages only for a filter a session did not
//! hold, so for one it holds the front door sends them itself,
//! read from the outbox's retained messages as a persistent session's are
//! (`persistent.rs`), and the router is not involved.
//!
//! They are read as the SUBSCRIBE arrives and written after its SUBACK, at
//! the lower of their QoS and the granted QoS, within the client's Receive
//! Maximum (`flow.rs`: the router's forwards wait behind them). Their
//! packet ids lie above the ones the router uses (1 to
//! [`flow::ROUTER_INFLIGHT`]), so the client's acknowledgements of them
//! are told apart and never reach the router, which awaits none for them.

use std::collections::{HashMap, VecDeque};

use rumqttd::protocol::{Packet, Protocol, PubRecReason, PubRel, PubRelReason};

use super::error::ConnError;
use super::flow;
use super::persistent::{self, Retained, Written};
use super::session::Session;
use crate::outbox::Entry;

/// The first packet id of ours: above the router's.
const FIRST_PKID: u16 = flow::ROUTER_INFLIGHT as u16 + 1;

/// One retained message owed: at the QoS to send, with the SUBSCRIBE's
/// subscription identifier.
struct Owed {
    entry: Entry,
    qos: u8,
    id: Option<usize>,
}

/// What a session's re-subscriptions are owed and have in flight.
pub(super) struct Resubscribed {
    /// Read as their SUBSCRIBE came, by its packet id: sent after its SUBACK.
    waiting: Vec<(u16, Vec<Owed>)>,
    /// After their SUBACK, waiting for room in the client's Receive Maximum.
    ready: VecDeque<Owed>,
    /// QoS 1/2 messages written and not acknowledged, by packet id: whether
    /// a QoS 2 one was received (PUBREC seen, PUBCOMP awaited).
    in_flight: HashMap<u16, bool>,
    next_pkid: u16,
    /// The last receive time formatted for `sg-received`.
    received: (u64, String),
}

impl Default for Resubscribed {
    fn default() -> Self {
        Resubscribed {
            waiting: Vec::new(),
            ready: VecDeque::new(),
            in_flight: HashMap::new(),
            next_pkid: FIRST_PKID,
            received: (u64::MAX, String::new()),
        }
    }
}

impl Resubscribed {
    /// Whether owed messages wait for room: the router's QoS 1/2 forwards
    /// then wait behind them.
    pub fn pending(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Whether `pkid` is one of ours in flight: its acknowledgement is not
    /// the router's.
    pub fn owns(&self, pkid: u16) -> bool {
        pkid >= FIRST_PKID && self.in_flight.contains_key(&pkid)
    }

    fn take_pkid(&mut self) -> u16 {
        let taken = &self.in_flight;
        flow::free_pkid(&mut self.next_pkid, FIRST_PKID, |p| taken.contains_key(&p))
    }
}

/// The packet id a PUBACK, PUBREC or PUBCOMP acknowledges.
pub(super) fn acked_pkid(p: &Packet) -> Option<u16> {
    match p {
        Packet::PubAck(a, _) => Some(a.pkid),
        Packet::PubRec(r, _) => Some(r.pkid),
        Packet::PubComp(c, _) => Some(c.pkid),
        _ => None,
    }
}

impl<P: Protocol> Session<P> {
    /// Reads the retained messages a SUBSCRIBE (`pkid`, subscription
    /// identifier `id`) owes for the filters (as the client named them,
    /// with their options) the router already held for this session. Filed under the
    /// session's mount, as the router files them, so a tenant's account
    /// sees its tenant's messages only. Shared subscriptions get none
    /// (MQTT 5 section 4.8.2).
    pub(super) fn owe_retained(&mut self, pkid: u16, held: &[(String, u8)], id: Option<usize>) {
        use super::options;
        let mut owed = Vec::new();
        for (filter, o) in held {
            if filter.starts_with("$share/") || !options::sends_retained(*o, true) {
                continue;
            }
            let filed = super::mount::filter(self.login.mount.as_deref(), filter);
            let entries = match self.ctx.persistent.outbox().retained(&filed) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::error!(error = %e, "Could not read the retained messages for a re-subscription.");
                    continue;
                }
            };
            let me = &self.login.router_client_id;
            for entry in entries {
                if *o & options::NO_LOCAL != 0 && persistent::published_by(&entry, me) {
                    continue;
                }
                let qos = entry.qos.min(options::qos(*o));
                owed.push(Owed { entry, qos, id });
            }
        }
        if !owed.is_empty() {
            self.resubscribed.waiting.push((pkid, owed));
        }
    }

    /// The SUBACK of SUBSCRIBE `pkid` was written: what it owes follows.
    pub(super) fn suback_written(&mut self, pkid: u16) -> Result<(), ConnError> {
        let r = &mut self.resubscribed;
        if let Some(at) = r.waiting.iter().position(|(p, _)| *p == pkid) {
            let (_, owed) = r.waiting.remove(at);
            r.ready.extend(owed);
        }
        self.send_retained()
    }

    /// Writes owed retained messages while the client's Receive Maximum
    /// has room for them.
    pub(super) fn send_retained(&mut self) -> Result<(), ConnError> {
        let now = crate::now_ms();
        while let Some(o) = self.resubscribed.ready.pop_front() {
            if o.qos > 0 && !self.quota.room() {
                self.resubscribed.ready.push_front(o);
                break;
            }
            let Some(expiry) = persistent::expiry_left(&o.entry, now) else {
                self.expired(1);
                continue;
            };
            let r = &mut self.resubscribed;
            let pkid = if o.qos > 0 { r.take_pkid() } else { 0 };
            let how = Retained {
                qos: o.qos,
                pkid,
                expiry,
                id: o.id,
            };
            let mount = self.login.mount.as_deref();
            let max = self.out.max_packet();
            match persistent::write_retained(
                self.v5,
                mount,
                &o.entry,
                how,
                max,
                &mut r.received,
                self.out.raw(),
            ) {
                Written::Sent if o.qos > 0 => {
                    r.in_flight.insert(pkid, false);
                    self.quota.sent(pkid, o.qos);
                    self.unacked.sent(self.out.timeout());
                }
                Written::Sent | Written::Unframable => {}
                Written::TooLarge => self.too_large(1),
            }
        }
        Ok(())
    }

    /// The client's PUBACK, PUBREC or PUBCOMP of one of ours (`owns`): its
    /// slot is freed as the router's would be, and a PUBREC answered with a
    /// PUBREL here.
    pub(super) fn retained_acked(
        &mut self,
        ack: Packet,
        to_router: &mut Vec<Packet>,
    ) -> Result<(), ConnError> {
        let timeout = self.out.timeout();
        match &ack {
            Packet::PubAck(a, _) => {
                self.resubscribed.in_flight.remove(&a.pkid);
                self.unacked.acked(timeout);
                self.quota.acked(&ack);
            }
            Packet::PubRec(r, _) => {
                self.unacked.acked(timeout);
                self.quota.acked(&ack);
                let failed = !matches!(
                    r.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                );
                if failed {
                    self.resubscribed.in_flight.remove(&r.pkid);
                } else {
                    self.resubscribed.in_flight.insert(r.pkid, true);
                    let rel = PubRel {
                        pkid: r.pkid,
                        reason: PubRelReason::Success,
                    };
                    self.out.encode(Packet::PubRel(rel, None))?;
                }
            }
            // A PUBCOMP before its PUBREC ends nothing.
            Packet::PubComp(c, _) if self.resubscribed.in_flight.get(&c.pkid) == Some(&true) => {
                self.resubscribed.in_flight.remove(&c.pkid);
                self.quota.completed(c.pkid);
            }
            _ => {}
        }
        self.release(to_router)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over sockets the ids cannot be run through: ours never fall among
    /// the router's, also when they wrap.
    #[test]
    fn packet_ids_stay_above_the_routers() {
        let mut r = Resubscribed {
            next_pkid: u16::MAX,
            ..Resubscribed::default()
        };
        r.in_flight.insert(FIRST_PKID, false);
        assert_eq!(r.take_pkid(), u16::MAX);
        assert_eq!(r.take_pkid(), FIRST_PKID + 1, "in flight: skipped");
        assert!(r.owns(FIRST_PKID));
        assert!(!r.owns(1) && !r.owns(FIRST_PKID + 1));
    }
}
