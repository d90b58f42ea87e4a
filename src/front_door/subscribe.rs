//! SUBSCRIBE and UNSUBSCRIBE: every filter is checked (well-formed and
//! takeable by the router, then the topic rules, then the caps in
//! `subscriptions.rs`) before the router sees it. Refused filters get a
//! failure code while the client's other filters in the same packet are
//! granted. The router sees only the granted ones; its SUBACK is completed
//! with the refusals.

use rumqttd::protocol::{
    Packet, Protocol, SubAck, Subscribe, SubscribeProperties, SubscribeReasonCode, UnsubAck,
    UnsubAckReason, Unsubscribe,
};

use super::error::ConnError;
use super::session::Session;
use super::shown;
use super::subscriptions::{code, router_filter};
use crate::events::subscription_refused as refused;
use crate::topic;

impl<P: Protocol> Session<P> {
    /// Judges one filter: `Ok(true)` goes to the router, `Ok(false)` is
    /// granted here without it (a shared filter this connection already
    /// holds: the router would add the client to the group once more), and
    /// `Err` is the refusal reason (`events::subscription_refused`).
    fn judge(&mut self, filter: &str) -> Result<bool, &'static str> {
        let usable = topic::filter(filter).and_then(topic::router_takes);
        if let Err(why) = usable {
            let gate = crate::events::refusal_log();
            if let Some(held_back) = gate.admit("invalid_filter", std::time::Instant::now()) {
                tracing::info!(client = ?self.client_name(), filter = ?shown(filter), reason = %why, held_back, "Refused an invalid filter.");
            }
            return Err(refused::INVALID_FILTER);
        }
        let allowed = match &self.login.mount {
            Some(_) => self.ctx.acl.may_subscribe_in_mount(filter),
            None => self.ctx.acl.may_subscribe(&self.login.role, filter),
        };
        if !allowed {
            return Err(refused::NOT_ALLOWED);
        }
        if filter.starts_with("$share/") {
            // The outbox feeds a persistent session alone: no group to share.
            if !self.login.clean_session || self.login.feed.is_some() {
                return Err(refused::SHARED_PERSISTENT);
            }
            if self.subs.holds(filter) {
                return Ok(false);
            }
        }
        self.subs.admit(filter).map(|()| true)
    }

    /// Splits a SUBSCRIBE into granted and refused filters. Returns what to
    /// send: a SUBACK to write now when nothing is granted, otherwise the
    /// SUBSCRIBE (possibly narrowed) for the router; its SUBACK is completed
    /// with the refusals by `merge_suback`.
    pub(super) fn screen_subscribe(
        &mut self,
        mut sub: Subscribe,
        mut props: Option<SubscribeProperties>,
    ) -> Packet {
        // Filters the router holds for this session already (a resumed
        // router session's included), before judging admits them.
        let renewed: Vec<bool> = sub
            .filters
            .iter()
            .map(|f| self.subs.holds(&f.path))
            .collect();
        let verdicts: Vec<Result<bool, &'static str>> =
            sub.filters.iter().map(|f| self.judge(&f.path)).collect();
        if self.login.feed.is_none() {
            // Re-subscriptions: the router sends their retained messages
            // for none of them, whatever their Retain Handling asks.
            let held: Vec<(String, u8)> = sub
                .filters
                .iter()
                .zip(verdicts.iter().zip(&renewed))
                .filter(|(_, (v, renewed))| v.is_ok() && **renewed)
                .map(|(f, _)| (f.path.clone(), super::options::byte(f)))
                .collect();
            let asked = props.as_ref().and_then(|p| p.id);
            self.owe_retained(sub.pkid, &held, asked);
            // As the client named them: forwards are judged on the topics it
            // is shown (its mount stripped).
            for (f, v) in sub.filters.iter().zip(&verdicts) {
                if v.is_ok() {
                    self.options.subscribed(&f.path, super::options::byte(f));
                }
            }
            self.identify(&sub, &verdicts, &mut props);
        }
        for f in &mut sub.filters {
            let mounted = super::mount::filter(self.login.mount.as_deref(), &f.path).into_owned();
            f.path = router_filter(&self.login.role, &mounted).into_owned();
        }
        if verdicts.iter().all(|v| *v == Ok(true)) {
            return Packet::Subscribe(sub, props);
        }
        let mut denied = Vec::new();
        for (f, v) in sub.filters.iter().zip(&verdicts) {
            if let Err(reason) = v {
                self.ctx.metrics.subscription_refused(reason);
                denied.push((*reason, shown(&f.path)));
            }
        }
        let gate = crate::events::refusal_log();
        let log_now = (!denied.is_empty())
            .then(|| gate.admit("subscription", std::time::Instant::now()))
            .flatten();
        if let Some(held_back) = log_now {
            tracing::info!(client = ?self.client_name(), refused = ?denied, held_back, "Refused subscription.");
        }
        let codes: Vec<Option<SubscribeReasonCode>> = verdicts
            .iter()
            .zip(&sub.filters)
            .map(|(v, f)| match v {
                Ok(true) => None,
                Ok(false) => Some(SubscribeReasonCode::Success(f.qos)),
                Err(r) => Some(code(self.v5, r)),
            })
            .collect();
        if codes.iter().all(Option::is_some) {
            let ack = SubAck {
                pkid: sub.pkid,
                return_codes: codes.into_iter().flatten().collect(),
            };
            return Packet::SubAck(ack, None);
        }
        let mut keep = verdicts.iter();
        sub.filters.retain(|_| keep.next() == Some(&Ok(true)));
        self.pending_subacks.insert(sub.pkid, codes);
        Packet::Subscribe(sub, props)
    }

    /// Records the subscription identifier a clean session's SUBSCRIBE gives
    /// the filters the router will see, and makes sure the router replaces
    /// the identifier of one that had one (`identifiers.rs`).
    fn identify(
        &mut self,
        sub: &Subscribe,
        verdicts: &[Result<bool, &'static str>],
        props: &mut Option<SubscribeProperties>,
    ) {
        let to_router = || {
            sub.filters
                .iter()
                .zip(verdicts)
                .filter(|(_, v)| **v == Ok(true))
        };
        let asked = props.as_ref().and_then(|p| p.id);
        let id = asked.or_else(|| {
            to_router()
                .any(|(f, _)| self.options.has_id(&f.path))
                .then_some(super::identifiers::NONE)
        });
        for (f, _) in to_router() {
            self.options.identified(&f.path, id);
        }
        if asked.is_none() && id.is_some() {
            match props {
                Some(p) => p.id = id,
                None => {
                    *props = Some(SubscribeProperties {
                        id,
                        user_properties: Vec::new(),
                    })
                }
            }
        }
    }

    /// Drops the filters of an UNSUBSCRIBE that no SUBSCRIBE could have
    /// granted (the router is handed nothing it cannot take) and gives back
    /// the room of the others. `None` when nothing is left for the router:
    /// the UNSUBACK is then written here.
    pub(super) fn screen_unsubscribe(
        &mut self,
        mut unsub: Unsubscribe,
    ) -> Result<Option<Unsubscribe>, ConnError> {
        let count = unsub.filters.len();
        unsub
            .filters
            .retain(|f| topic::filter(f).and_then(topic::router_takes).is_ok());
        for f in &mut unsub.filters {
            self.subs.release(f);
            self.options.unsubscribed(f);
            let mounted = super::mount::filter(self.login.mount.as_deref(), f).into_owned();
            *f = router_filter(&self.login.role, &mounted).into_owned();
        }
        if !unsub.filters.is_empty() {
            return Ok(Some(unsub));
        }
        let reasons = match self.v5 {
            true => vec![UnsubAckReason::TopicFilterInvalid; count],
            false => Vec::new(),
        };
        let ack = UnsubAck {
            pkid: unsub.pkid,
            reasons,
        };
        self.out.encode(Packet::UnsubAck(ack, None))?;
        Ok(None)
    }
}
