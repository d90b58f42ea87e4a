//! Subscription bookkeeping shared by the SUBSCRIBE path and the session:
//! the caps on how many filters a connection, an account and the router may
//! hold, and the SUBACKs of SUBSCRIBEs the router saw only part of.
//!
//! The caps exist because each filter costs the router a scan of every new
//! topic and a copy of every message it matches, and rumqttd never forgets a
//! filter: per connection, per account (all its connections together) and
//! distinct filters over the process lifetime.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rumqttd::protocol::{Packet, SubscribeReasonCode};

use super::auth::Role;
use crate::config::LimitsConfig;
use crate::events::subscription_refused as refused;
use crate::metrics::Metrics;

/// SUBSCRIBEs the router sees only part of: pkid -> per filter, `None` when
/// it went to the router, else the code it was refused with.
pub(super) type Pending = HashMap<u16, Vec<Option<SubscribeReasonCode>>>;

/// Counts shared by every connection: filters held per account and every
/// filter ever handed to the router.
pub struct SubscriptionCaps {
    per_connection: usize,
    per_account: usize,
    router_max: usize,
    router_per_account: usize,
    metrics: Arc<Metrics>,
    state: Mutex<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Filters held by each account's (or device's) connections, and by its
    /// persistent sessions while they are parked in the router.
    accounts: HashMap<Account, usize>,
    /// The filters of persistent sessions whose connection ended: the
    /// router keeps them and gives them back when the session resumes, so
    /// they stay counted (by router client id) until then.
    parked: HashMap<String, HashSet<String>>,
    /// Every filter handed to the router since start; never shrinks, as the
    /// router's own table never does.
    router: HashSet<String>,
    /// How many of those each account (or device) was the first to ask for.
    introduced: HashMap<Account, usize>,
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
            router_per_account: limits.max_router_filters_per_account,
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
    /// The router session's id when it outlives the connection.
    persistent: Option<String>,
}

impl Subscriptions {
    /// The filters of a new connection. A persistent session that the
    /// router resumed brings back the filters it had; any other connection
    /// with that router id ends the old session, whose filters are given
    /// back.
    pub(super) fn new(
        caps: Arc<SubscriptionCaps>,
        role: &Role,
        router_client_id: &str,
        clean_session: bool,
        resumed: bool,
    ) -> Subscriptions {
        let account = account(role);
        let parked = caps.lock().parked.remove(router_client_id);
        let held = match parked {
            Some(filters) if resumed => filters,
            Some(filters) => {
                give_back(&mut caps.lock().accounts, &account, filters.len());
                HashSet::new()
            }
            None => HashSet::new(),
        };
        Subscriptions {
            caps,
            account,
            held,
            persistent: (!clean_session).then(|| router_client_id.to_owned()),
        }
    }

    /// Takes room for `filter` under every cap, or says which cap is full.
    /// A filter this connection already holds is free.
    pub(super) fn admit(&mut self, filter: &str) -> Result<(), &'static str> {
        if self.held.contains(filter) {
            return Ok(());
        }
        if self.held.len() >= self.caps.per_connection {
            return Err(refused::CONNECTION_CAP);
        }
        let mut shared = self.caps.lock();
        let Shared {
            accounts,
            router,
            introduced,
            ..
        } = &mut *shared;
        let count = accounts.get(&self.account).copied().unwrap_or(0);
        if count >= self.caps.per_account {
            return Err(refused::ACCOUNT_CAP);
        }
        if !router.contains(filter) {
            let mine = introduced.get(&self.account).copied().unwrap_or(0);
            if router.len() >= self.caps.router_max || mine >= self.caps.router_per_account {
                return Err(refused::ROUTER_CAP);
            }
            router.insert(filter.to_owned());
            introduced.insert(self.account.clone(), mine + 1);
            self.caps.metrics.router_filters.set(router.len() as i64);
        }
        accounts.insert(self.account.clone(), count + 1);
        self.held.insert(filter.to_owned());
        Ok(())
    }

    /// Takes back the filters of a resumed persistent session (kept by
    /// `crate::sessions`, not the router). They were admitted when it
    /// subscribed, so no cap refuses them now; they fill this connection's
    /// room as they did before.
    pub(super) fn restore<'a>(&mut self, filters: impl Iterator<Item = &'a str>) {
        let mut n = 0;
        for f in filters {
            if self.held.insert(f.to_owned()) {
                n += 1;
            }
        }
        *self
            .caps
            .lock()
            .accounts
            .entry(self.account.clone())
            .or_default() += n;
    }

    /// Whether this connection already holds `filter`.
    pub(super) fn holds(&self, filter: &str) -> bool {
        self.held.contains(filter)
    }

    /// Gives back the room of a filter this connection unsubscribes from.
    pub(super) fn release(&mut self, filter: &str) {
        if self.held.remove(filter) {
            let mut shared = self.caps.lock();
            give_back(&mut shared.accounts, &self.account, 1);
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut shared = self.caps.lock();
        match self.persistent.take() {
            Some(id) => {
                let held = std::mem::take(&mut self.held);
                // A newer connection with this id may have parked or taken
                // the session already: what it holds is counted there.
                if let Some(old) = shared.parked.insert(id, held) {
                    give_back(&mut shared.accounts, &self.account, old.len());
                }
            }
            None => give_back(&mut shared.accounts, &self.account, self.held.len()),
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
pub(super) fn code(v5: bool, reason: &'static str) -> SubscribeReasonCode {
    match (v5, reason) {
        (false, _) => SubscribeReasonCode::Failure,
        (true, refused::INVALID_FILTER) => SubscribeReasonCode::TopicFilterInvalid,
        (true, refused::NOT_ALLOWED) => SubscribeReasonCode::NotAuthorized,
        (true, refused::SHARED_PERSISTENT) => SubscribeReasonCode::SharedSubscriptionsNotSupported,
        (true, _) => SubscribeReasonCode::QuotaExceeded,
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

/// The filter the router files a client's filter under. rumqttd keys shared
/// groups by name alone, so `$share/{group}/...` becomes
/// `$share/{owner}{len}.{name}.{group}/...`: two accounts (or an account and
/// a device) using one group name never share it, and the length prefix
/// keeps ("a.b", "c") and ("a", "b.c") apart. Other filters are unchanged.
pub(super) fn router_filter<'a>(role: &Role, filter: &'a str) -> std::borrow::Cow<'a, str> {
    let Some((group, rest)) = filter
        .strip_prefix("$share/")
        .and_then(|s| s.split_once('/'))
    else {
        return std::borrow::Cow::Borrowed(filter);
    };
    let (kind, name) = match role {
        Role::Device(id) => ('d', id),
        Role::Subscriber(name) => ('u', name),
    };
    std::borrow::Cow::Owned(format!("$share/{kind}{}.{name}.{group}/{rest}", name.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Arc<SubscriptionCaps> {
        let limits = crate::config::Config::load(None, &[]).unwrap().limits;
        Arc::new(SubscriptionCaps::new(&limits, Arc::new(Metrics::new())))
    }

    fn count(caps: &SubscriptionCaps, role: &Role) -> usize {
        caps.lock()
            .accounts
            .get(&account(role))
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn a_persistent_session_keeps_its_filters_counted_while_parked() {
        let caps = caps();
        let a = Role::Subscriber("a".into());
        let mut s = Subscriptions::new(caps.clone(), &a, "u.1.a.x", false, false);
        for f in ["clean/1", "clean/2"] {
            s.admit(f).unwrap();
        }
        drop(s);
        assert_eq!(count(&caps, &a), 2, "the router still holds them");
        // Resumed: the filters come back and are not counted twice.
        let mut s = Subscriptions::new(caps.clone(), &a, "u.1.a.x", false, true);
        assert!(s.holds("clean/1"));
        s.admit("clean/1").unwrap();
        assert_eq!(count(&caps, &a), 2);
        drop(s);
        // A clean session with the id ends the old one: all given back.
        let s = Subscriptions::new(caps.clone(), &a, "u.1.a.x", true, false);
        assert_eq!(count(&caps, &a), 0);
        drop(s);
        assert_eq!(count(&caps, &a), 0);
    }

    #[test]
    fn one_account_cannot_use_up_the_routers_room() {
        let mut limits = crate::config::Config::load(None, &[]).unwrap().limits;
        limits.max_subscriptions_per_connection = 2;
        limits.max_subscriptions_per_account = 2;
        limits.max_router_filters = 10;
        limits.max_router_filters_per_account = 3;
        let caps = Arc::new(SubscriptionCaps::new(&limits, Arc::new(Metrics::new())));
        let a = Role::Subscriber("a".into());
        let mut s = Subscriptions::new(caps.clone(), &a, "u.1.a.x", true, false);
        for n in 0..3 {
            let f = format!("clean/{n}");
            s.admit(&f).unwrap();
            s.release(&f);
        }
        assert_eq!(s.admit("clean/new"), Err(refused::ROUTER_CAP));
        // A filter the router knows is still free to take.
        s.admit("clean/0").unwrap();
        // Another account has its own room.
        let b = Role::Subscriber("b".into());
        let mut t = Subscriptions::new(caps, &b, "u.1.b.x", true, false);
        t.admit("clean/new").unwrap();
    }

    #[test]
    fn shared_groups_are_owned_by_their_account() {
        let a = Role::Subscriber("a".into());
        let ab = Role::Subscriber("a.b".into());
        let d = Role::Device("a".into());
        assert_eq!(router_filter(&a, "clean/#"), "clean/#");
        assert_eq!(
            router_filter(&a, "$share/g/clean/#"),
            "$share/u1.a.g/clean/#"
        );
        assert_ne!(
            router_filter(&a, "$share/b.g/x"),
            router_filter(&ab, "$share/g/x")
        );
        assert_ne!(
            router_filter(&a, "$share/g/x"),
            router_filter(&d, "$share/g/x")
        );
    }
}
