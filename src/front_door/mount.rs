//! Tenant mounts: how an account of a tenant sees only its tenant's devices.
//!
//! The verifier publishes every output of a tenant's device a second time
//! under `{topics.tenants}/{tenant}/` (`crate::republish::mounted`), and the
//! ACL keeps every client from reading that prefix directly. For an account
//! of a tenant, the front door files each filter under the tenant's mount
//! (`clean/#` becomes `tenants/acme/clean/#`, `#` becomes `tenants/acme/#`,
//! `$share/g/clean/#` becomes `$share/g/tenants/acme/clean/#`) and strips the
//! mount from every topic it delivers. A filter is a suffix of the mount, so
//! no wildcard can reach outside it: the account sees `clean/...`,
//! `unverified/...` and the events prefix as any dashboard does, but only
//! for devices its tenant owned when the message was published.

use std::borrow::Cow;

/// The mount of `tenant`.
pub(super) fn of(tenants_prefix: &str, tenant: &str) -> String {
    format!("{tenants_prefix}/{tenant}")
}

/// `filter` (possibly `$share/{group}/...`) filed under `mount`.
pub(super) fn filter<'a>(mount: Option<&str>, filter: &'a str) -> Cow<'a, str> {
    let Some(mount) = mount else {
        return Cow::Borrowed(filter);
    };
    match filter
        .strip_prefix("$share/")
        .and_then(|s| s.split_once('/'))
    {
        Some((group, rest)) => Cow::Owned(format!("$share/{group}/{mount}/{rest}")),
        None => Cow::Owned(format!("{mount}/{filter}")),
    }
}

/// The filter the client sent, from one filed under `mount`; `None` if it
/// is not under it (then the client never sent it).
pub(super) fn unfilter<'a>(mount: &str, filed: &'a str) -> Option<Cow<'a, str>> {
    match filed
        .strip_prefix("$share/")
        .and_then(|s| s.split_once('/'))
    {
        Some((group, rest)) => {
            let inner = rest.strip_prefix(mount)?.strip_prefix('/')?;
            Some(Cow::Owned(format!("$share/{group}/{inner}")))
        }
        None => filed
            .strip_prefix(mount)?
            .strip_prefix('/')
            .map(Cow::Borrowed),
    }
}

/// The topic the client sees for one delivered under `mount`.
pub(super) fn topic<'a>(mount: &str, delivered: &'a str) -> Option<&'a str> {
    delivered.strip_prefix(mount)?.strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_go_under_the_mount_and_come_back() {
        let m = of("tenants", "acme");
        for (sent, filed) in [
            ("clean/#", "tenants/acme/clean/#"),
            ("#", "tenants/acme/#"),
            ("+/d1/#", "tenants/acme/+/d1/#"),
            ("$share/g/clean/+", "$share/g/tenants/acme/clean/+"),
        ] {
            assert_eq!(filter(Some(&m), sent), filed);
            assert_eq!(unfilter(&m, filed).as_deref(), Some(sent));
        }
        assert_eq!(filter(None, "clean/#"), "clean/#");
        assert_eq!(unfilter(&m, "tenants/globex/clean/#"), None);
        assert_eq!(unfilter(&m, "tenants/acme-2/clean/#"), None);
        assert_eq!(topic(&m, "tenants/acme/clean/d1/t"), Some("clean/d1/t"));
        assert_eq!(topic(&m, "tenants/acmeX/clean/d1"), None);
        // No filed filter matches another tenant's mount.
        for sent in ["#", "+/#", "+/+/#", "clean/#"] {
            let filed = filter(Some(&m), sent);
            assert!(
                !crate::topic::matches(&filed, "tenants/globex/clean/d1"),
                "{sent}"
            );
            assert!(!crate::topic::matches(&filed, "clean/d1"), "{sent}");
        }
    }
}
