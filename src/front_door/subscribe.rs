//! SUBSCRIBE and UNSUBSCRIBE: every filter is checked (well-formed and
//! takeable by the router, then the topic rules, then the caps) before the
//! router sees it. Refused filters get a failure code while the client's
//! other filters in the same packet are granted. The router sees only the
//! granted ones; its SUBACK is completed with the refusals.
//!
//! The caps exist because each filter costs the router a scan of every new
//! topic and a copy of every message it matches, and rumqttd never forgets a
//! filter: per connection, per account (all its connections together) and
//! distinct filters over the process lifetime.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rumqttd::protocol::{
    Packet, Protocol, SubAck, Subscribe, SubscribeProperties, SubscribeReasonCode, UnsubAck,
    UnsubAckReason, Unsubscribe,
};

use super::auth::Role;
use super::session::{ConnError, Session};
use crate::config::LimitsConfig;
use crate::events::subscription_refused as refused;
use crate::metrics::Metrics;
use crate::topic;

/// SUBSCRIBEs the router sees only part of: pkid -> per filter, `None` when
/// it went to the router, else the code it was refused with.
pub(super) type Pending = HashMap<u16, Vec<Option<SubscribeReasonCode>>>;

/// Counts shared by every connection: filters held per account and every
/// filter ever handed to the router.
pub struct SubscriptionCaps {
    per_connection: usize,
    per_account: usize,
    router_max: usize,
    metrics: Arc<Metrics>,
    state: Mutex<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Filters held by each account's (or device's) live connections.
    accounts: HashMap<Account, usize>,
    /// Every filter handed to the router since start; never shrinks, as the
    /// router's own table never does.
    router: HashSet<String>,
}

/// A device and an account may share a name; their counts must not.
type Account = (bool, String);

fn account(role: &Role) -> Account {
    match role {
        Role::Device(id) => (true, id.clone()),
        Role::Subscriber(name) => (false, name.clone()),
    }
}

impl SubscriptionCaps {
    pub fn new(limits: &LimitsConfig, metrics: Arc<Metrics>) -> SubscriptionCaps {
        SubscriptionCaps {
            per_connection: limits.max_subscriptions_per_connection,
            per_account: limits.max_subscriptions_per_account,
            router_max: limits.max_router_filters,
            metrics,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The filters one connection holds. Dropped with the session, which gives
/// the account's share back however the connection ended.
pub(super) struct Subscriptions {
    caps: Arc<SubscriptionCaps>,
    account: Account,
    held: HashSet<String>,
}

impl Subscriptions {
    pub(super) fn new(caps: Arc<SubscriptionCaps>, role: &Role) -> Subscriptions {
        Subscriptions {
            caps,
            account: account(role),
            held: HashSet::new(),
        }
    }

    /// Takes room for `filter` under every cap, or says which cap is full.
    /// A filter this connection already holds is free.
    fn admit(&mut self, filter: &str) -> Result<(), &'static str> {
        if self.held.contains(filter) {
            return Ok(());
        }
        if self.held.len() >= self.caps.per_connection {
            return Err(refused::CONNECTION_CAP);
        }
        let mut shared = self.caps.lock();
        let Shared { accounts, router } = &mut *shared;
        let count = accounts.get(&self.account).copied().unwrap_or(0);
        if count >= self.caps.per_account {
            return Err(refused::ACCOUNT_CAP);
        }
        if !router.contains(filter) {
            if router.len() >= self.caps.router_max {
                return Err(refused::ROUTER_CAP);
            }
            router.insert(filter.to_owned());
            self.caps.metrics.router_filters.set(router.len() as i64);
        }
        accounts.insert(self.account.clone(), count + 1);
        self.held.insert(filter.to_owned());
        Ok(())
    }

    /// Gives back the room of a filter this connection unsubscribes from.
    fn release(&mut self, filter: &str) {
        if self.held.remove(filter) {
            let mut shared = self.caps.lock();
            give_back(&mut shared.accounts, &self.account, 1);
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let mut shared = self.caps.lock();
            give_back(&mut shared.accounts, &self.account, self.held.len());
        }
    }
}

fn give_back(accounts: &mut HashMap<Account, usize>, account: &Account, n: usize) {
    if let Some(count) = accounts.get_mut(account) {
        *count = count.saturating_sub(n);
        if *count == 0 {
            accounts.remove(account);
        }
    }
}

/// The SUBACK code for a refusal: MQTT 3.1.1 has only 0x80.
fn code(v5: bool, reason: &'static str) -> SubscribeReasonCode {
    match (v5, reason) {
        (false, _) => SubscribeReasonCode::Failure,
        (true, refused::INVALID_FILTER) => SubscribeReasonCode::TopicFilterInvalid,
        (true, refused::NOT_ALLOWED) => SubscribeReasonCode::NotAuthorized,
        (true, _) => SubscribeReasonCode::QuotaExceeded,
    }
}

/// A filter as far as a log line needs it: a refused one may be huge.
fn shown(filter: &str) -> String {
    filter.chars().take(80).collect()
}

impl<P: Protocol> Session<P> {
    /// Judges one filter; `Err` is the refusal reason (`events::subscription_refused`).
    fn judge(&mut self, filter: &str) -> Result<(), &'static str> {
        let usable = topic::filter(filter).and_then(topic::router_takes);
        if let Err(why) = usable {
            let gate = crate::events::refusal_log();
            if let Some(held_back) = gate.admit("invalid_filter", std::time::Instant::now()) {
                tracing::info!(client = ?self.client_name(), filter = ?shown(filter), reason = %why, held_back, "Refused an invalid filter.");
            }
            return Err(refused::INVALID_FILTER);
        }
        if !self.ctx.acl.may_subscribe(&self.login.role, filter) {
            return Err(refused::NOT_ALLOWED);
        }
        self.subs.admit(filter)
    }

    /// Splits a SUBSCRIBE into granted and refused filters. Returns what to
    /// send: a SUBACK to write now when nothing is granted, otherwise the
    /// SUBSCRIBE (possibly narrowed) for the router; its SUBACK is completed
    /// with the refusals by `merge_suback`.
    pub(super) fn screen_subscribe(
        &mut self,
        mut sub: Subscribe,
        props: Option<SubscribeProperties>,
    ) -> Packet {
        let verdicts: Vec<Result<(), &'static str>> =
            sub.filters.iter().map(|f| self.judge(&f.path)).collect();
        if verdicts.iter().all(Result::is_ok) {
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
        if let Some(held_back) = gate.admit("subscription", std::time::Instant::now()) {
            tracing::info!(client = ?self.client_name(), refused = ?denied, held_back, "Refused subscription.");
        }
        let codes: Vec<Option<SubscribeReasonCode>> = verdicts
            .iter()
            .map(|v| v.err().map(|r| code(self.v5, r)))
            .collect();
        if codes.iter().all(Option::is_some) {
            let ack = SubAck {
                pkid: sub.pkid,
                return_codes: codes.into_iter().flatten().collect(),
            };
            return Packet::SubAck(ack, None);
        }
        let mut keep = verdicts.iter();
        sub.filters
            .retain(|_| keep.next().is_some_and(Result::is_ok));
        self.pending_subacks.insert(sub.pkid, codes);
        Packet::Subscribe(sub, props)
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
        for f in &unsub.filters {
            self.subs.release(f);
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

/// Puts the refused filters' codes back into a narrowed SUBSCRIBE's SUBACK.
pub(super) fn merge_suback(v5: bool, packet: Packet, pending: &mut Pending) -> Packet {
    let Packet::SubAck(mut ack, props) = packet else {
        return packet;
    };
    if let Some(codes) = pending.remove(&ack.pkid) {
        let mut granted = ack.return_codes.into_iter();
        ack.return_codes = codes
            .into_iter()
            .map(|c| match c {
                Some(refusal) => refusal,
                None => granted.next().unwrap_or(code(v5, refused::INVALID_FILTER)),
            })
            .collect();
    }
    Packet::SubAck(ack, props)
}
