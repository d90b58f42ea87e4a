//! Who may publish and subscribe where (issue #4's rules).
//!
//! * A device publishes only on `sealed/{id}` and `sealed/{id}/#` (its own
//!   id, compared after normalising) and subscribes only within its
//!   configured filters (default `cmd/{id}/#`).
//! * A subscriber account subscribes within its grants (default `clean/#`,
//!   `sealgate/events/#`) and publishes only where granted (default nowhere).
//! * Nobody but the gateway publishes under the prefixes it publishes
//!   under (clean, events, unverified, tenants), and nobody subscribes to
//!   the sealed prefix by name: sealed traffic goes to the verifier and
//!   never enters the router (config validation keeps every other prefix
//!   out of it), so a wildcard that could match it, such as `#`, receives
//!   no sealed message and is judged by the grants alone.
//! * The tenants' mounts are all or nothing: an account whose grants cover
//!   the whole mount (`#`, `+/#`, `tenants/#`) may read it, copies included
//!   (it can read the originals anyway); any other client's filter that
//!   could match the mount is refused, because the router has no way to
//!   hand a filter everything but the mount.
//!
//! Wildcard filters are judged by every topic they could match, so `#`,
//! `+/+/#` or `clean/+` are refused to a device; a shared subscription
//! `$share/{group}/{filter}` is judged by `{filter}`, what the router uses.
//! Whether a topic or filter is well-formed is `crate::topic`'s question,
//! asked before these.

use std::collections::HashMap;

use super::auth::Role;
use crate::config::{AclConfig, Topics, User};
use crate::envelope::normalise_device_id;
use crate::topic::{self, overlaps, under};

/// The grants of one subscriber account.
#[derive(Debug, Clone)]
struct Grants {
    subscribe: Vec<String>,
    publish: Vec<String>,
    /// Whether `subscribe` covers the tenants' whole mount.
    mount: bool,
}

#[derive(Debug, Clone)]
pub struct Acl {
    topics: Topics,
    /// Filter templates; the level `{id}` stands for the device's id.
    device_subscribe: Vec<String>,
    users: HashMap<String, Grants>,
}

const ID: &str = "{id}";

/// Whether every topic `filter` can match is also matched by `grant`.
/// `id` fills a `{id}` level of the grant and is compared after normalising.
fn within(filter: &str, grant: &str, id: Option<&str>) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let g: Vec<&str> = grant.split('/').collect();
    for (i, gl) in g.iter().enumerate() {
        if *gl == "#" {
            return true;
        }
        let Some(fl) = f.get(i) else {
            return false;
        };
        let ok = match (*gl, *fl) {
            (_, "#") => false,
            ("+", _) => true,
            (_, "+") => false,
            (ID, lit) => id.is_some_and(|id| normalise_device_id(lit).is_ok_and(|n| n == id)),
            (g, lit) => g == lit,
        };
        if !ok {
            return false;
        }
    }
    f.len() == g.len()
}

impl Acl {
    pub fn new(topics: &Topics, acl: &AclConfig, users: &[User]) -> Acl {
        let users = users
            .iter()
            .map(|u| {
                // A tenant's account reads through its mount only and
                // publishes nowhere (`may_subscribe_in_mount`).
                if u.tenant.is_some() {
                    let none = Grants {
                        subscribe: Vec::new(),
                        publish: Vec::new(),
                        mount: false,
                    };
                    return (u.name.clone(), none);
                }
                let subscribe = u
                    .subscribe
                    .clone()
                    .unwrap_or_else(|| acl.subscriber_subscribe.clone());
                let whole_mount = format!("{}/#", topics.tenants);
                let g = Grants {
                    mount: subscribe.iter().any(|s| within(&whole_mount, s, None)),
                    subscribe,
                    publish: u
                        .publish
                        .clone()
                        .unwrap_or_else(|| acl.subscriber_publish.clone()),
                };
                (u.name.clone(), g)
            })
            .collect();
        Acl {
            topics: topics.clone(),
            device_subscribe: acl.device_subscribe.clone(),
            users,
        }
    }

    /// Topics only the gateway itself writes: a client publishing there
    /// could pass for verified data, a security event or a device's
    /// unsealed traffic.
    fn reserved_for_gateway(&self, topic: &str) -> bool {
        under(topic, &self.topics.clean)
            || under(topic, &self.topics.events)
            || under(topic, &self.topics.unverified)
            || under(topic, &self.topics.tenants)
    }

    /// Whether every topic `filter` could match is under the sealed prefix
    /// (`sealed/#`, `sealed/+/t`, `sealed`).
    fn names_sealed(&self, filter: &str) -> bool {
        within(filter, &format!("{}/#", self.topics.sealed), None)
    }

    /// Whether `topic` is `{sealed}/{raw id}[/...]` with `raw id` naming
    /// device `id` (already normalised, hence valid). Compared without
    /// allocating: this runs for every publish; the verifier parses the
    /// topic fully afterwards.
    fn own_sealed_topic(&self, id: &str, topic: &str) -> bool {
        let Some(rest) = topic
            .strip_prefix(self.topics.sealed.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        let raw = rest.split('/').next().unwrap_or_default();
        raw.trim_matches(|c: char| c.is_ascii_whitespace())
            .eq_ignore_ascii_case(id)
    }

    /// Whether this client may publish on `topic`, a topic name that
    /// `topic::topic_name` accepted.
    pub fn may_publish(&self, role: &Role, topic: &str) -> bool {
        match role {
            Role::Device(id) => self.own_sealed_topic(id, topic),
            Role::Subscriber(name) => {
                !self.reserved_for_gateway(topic)
                    && !under(topic, &self.topics.sealed)
                    && self
                        .users
                        .get(name)
                        .is_some_and(|g| g.publish.iter().any(|p| within(topic, p, None)))
            }
        }
    }

    /// Whether an account of a tenant may subscribe to `filter` (as it sent
    /// it): any valid filter, because it is filed under the tenant's mount
    /// and cannot match outside it; `$`-topics are not mounted.
    pub fn may_subscribe_in_mount(&self, filter: &str) -> bool {
        topic::filter(filter).is_ok_and(|inner| !inner.starts_with('$'))
    }

    /// Whether this client may subscribe to `filter`, as the client sent it
    /// (a `$share/{group}/` prefix included). An invalid filter is refused.
    pub fn may_subscribe(&self, role: &Role, filter: &str) -> bool {
        let Ok(filter) = topic::filter(filter) else {
            return false;
        };
        let sealed = overlaps(filter, &self.topics.sealed);
        let mount = overlaps(filter, &self.topics.tenants);
        match role {
            // A device's filters stay clear of both, whatever is configured.
            Role::Device(id) => {
                !sealed
                    && !mount
                    && self
                        .device_subscribe
                        .iter()
                        .any(|g| within(filter, g, Some(id)))
            }
            Role::Subscriber(name) => {
                // Nothing is ever published there in the router: a filter
                // naming it is a mistake, told as a refusal.
                !(sealed && self.names_sealed(filter))
                    && self.users.get(name).is_some_and(|g| {
                        (g.mount || !mount) && g.subscribe.iter().any(|s| within(filter, s, None))
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl() -> Acl {
        let topics = Topics {
            sealed: "sealed".into(),
            clean: "clean".into(),
            events: "sealgate/events".into(),
            unverified: "unverified".into(),
            tenants: "tenants".into(),
        };
        let cfg = AclConfig {
            device_subscribe: vec!["cmd/{id}/#".into()],
            subscriber_subscribe: vec!["clean/#".into(), "sealgate/events/#".into()],
            subscriber_publish: vec![],
        };
        let users = [
            User {
                name: "dash".into(),
                password: "x".into(),
                subscribe: None,
                publish: None,
                slow_subscriber: None,
                tenant: None,
            },
            User {
                name: "narrow".into(),
                password: "x".into(),
                subscribe: Some(vec!["+/+/clean/#".into(), "+/+/cmd/#".into(), "x/#".into()]),
                publish: None,
                slow_subscriber: None,
                tenant: None,
            },
            User {
                name: "ops".into(),
                password: "x".into(),
                subscribe: Some(vec!["#".into()]),
                publish: Some(vec!["cmd/+/reboot".into(), "#".into()]),
                slow_subscriber: None,
                tenant: None,
            },
        ];
        Acl::new(&topics, &cfg, &users)
    }

    #[test]
    fn devices_publish_only_their_own_sealed_topics() {
        let a = acl();
        let d = Role::Device("esp32-a1".into());
        for ok in [
            "sealed/esp32-a1",
            "sealed/esp32-a1/t",
            "sealed/ESP32-A1/x/y",
        ] {
            assert!(a.may_publish(&d, ok), "{ok}");
        }
        for no in [
            "sealed/esp32-a2/t",
            "clean/esp32-a1/t",
            "sealgate/events/esp32-a1",
            "cmd/esp32-a1/x",
            "sealed",
            "x",
        ] {
            assert!(!a.may_publish(&d, no), "{no}");
        }
    }

    #[test]
    fn device_subscriptions_are_judged_by_what_they_could_match() {
        let a = acl();
        let d = Role::Device("esp32-a1".into());
        for ok in [
            "cmd/esp32-a1/#",
            "cmd/esp32-a1",
            "cmd/ESP32-A1/+",
            "cmd/esp32-a1/ota/+/x",
        ] {
            assert!(a.may_subscribe(&d, ok), "{ok}");
        }
        for no in [
            "#",
            "+/+/#",
            "clean/+",
            "cmd/+/#",
            "cmd/esp32-a2/#",
            "sealed/#",
            "sealed/esp32-a1",
            "cmd/#",
        ] {
            assert!(!a.may_subscribe(&d, no), "{no}");
        }
    }

    #[test]
    fn subscribers_stay_within_grants_and_never_write_gateway_topics() {
        let a = acl();
        let dash = Role::Subscriber("dash".into());
        assert!(a.may_subscribe(&dash, "clean/#"));
        assert!(a.may_subscribe(&dash, "clean/esp32-a1/+"));
        assert!(a.may_subscribe(&dash, "sealgate/events/#"));
        assert!(!a.may_subscribe(&dash, "#"));
        assert!(!a.may_subscribe(&dash, "+/esp32-a1/#"));
        // A shared subscription is judged by the filter the router uses.
        assert!(a.may_subscribe(&dash, "$share/g/clean/#"));
        assert!(!a.may_subscribe(&dash, "$share/g/sealed/#"));
        assert!(!a.may_subscribe(&dash, "$share/clean/#"), "filter #");
        assert!(!a.may_subscribe(&dash, "$share/g/clean/#/x"));
        assert!(!a.may_publish(&dash, "clean/esp32-a1/t"));
        assert!(!a.may_publish(&dash, "anything"));
        // Even a grant of everything never opens the reserved prefixes to
        // publishing.
        let ops = Role::Subscriber("ops".into());
        assert!(a.may_publish(&ops, "cmd/esp32-a1/reboot"));
        for no in [
            "clean/x",
            "sealgate/events/x",
            "sealed/x/y",
            "clean",
            "unverified/dev-a/t",
            "unverified",
            "tenants/acme/clean/d1",
        ] {
            assert!(!a.may_publish(&ops, no), "{no}");
        }
        assert!(a.may_publish(&ops, "unverifiedx/t"));
    }

    #[test]
    fn wildcards_over_the_sealed_prefix_are_judged_by_the_grants() {
        let a = acl();
        // Sealed traffic never enters the router, so a filter that merely
        // could match it is granted where the grants allow it ...
        let ops = Role::Subscriber("ops".into());
        for ok in [
            "#",
            "+/+",
            "+/x",
            "+/#",
            "$share/g/+/x",
            "cmd/#",
            "$share/g/#",
        ] {
            assert!(a.may_subscribe(&ops, ok), "{ok}");
        }
        // ... one naming it is refused to everyone ...
        for no in [
            "sealed/#",
            "sealed",
            "sealed/+/t",
            "$share/g/sealed/#",
            "sealed/esp32-a1",
        ] {
            assert!(!a.may_subscribe(&ops, no), "{no}");
        }
        // ... and devices and narrower accounts are refused as before.
        let narrow = Role::Subscriber("narrow".into());
        let dash = Role::Subscriber("dash".into());
        let dev = Role::Device("esp32-a1".into());
        for who in [&narrow, &dash, &dev] {
            for no in ["#", "+/+", "+/#", "+/x"] {
                assert!(!a.may_subscribe(who, no), "{who:?} {no}");
            }
        }
    }

    #[test]
    fn the_tenants_mounts_are_read_only_by_a_grant_of_all_of_them() {
        let a = acl();
        let ops = Role::Subscriber("ops".into());
        for ok in ["#", "tenants/#", "tenants/acme/clean/#", "+/acme/#"] {
            assert!(a.may_subscribe(&ops, ok), "{ok}");
        }
        // A grant covering part of the mount does not open it.
        let narrow = Role::Subscriber("narrow".into());
        assert!(a.may_subscribe(&narrow, "x/#"));
        for no in [
            "+/+/clean/#",
            "+/+/cmd/#",
            "tenants/acme/clean/#",
            "$share/g/+/+/clean/x",
        ] {
            assert!(!a.may_subscribe(&narrow, no), "{no}");
        }
        let dash = Role::Subscriber("dash".into());
        for no in [
            "tenants/#",
            "tenants/acme/clean/#",
            "$share/g/tenants/+/clean/x",
        ] {
            assert!(!a.may_subscribe(&dash, no), "{no}");
        }
        assert!(!a.may_publish(&Role::Subscriber("ghost".into()), "cmd/x/reboot"));
    }
}
