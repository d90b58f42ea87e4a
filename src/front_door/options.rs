//! MQTT 5 subscription options beyond the QoS (section 3.8.3.1): No Local,
//! Retain As Published and Retain Handling. rumqttd 0.20's router parses
//! them and ignores them, so the front door applies them as it delivers.
//!
//! The options of a subscription are kept as MQTT encodes them, one byte:
//! the QoS in bits 0-1, No Local in bit 2, Retain As Published in bit 3,
//! Retain Handling in bits 4-5. A persistent session stores that byte where
//! it stored the QoS alone (MQTT 3.1.1 subscriptions have only the QoS).
//!
//! The router forwards one copy of a message per matching filter without
//! saying which filter it is for, so the options are applied by topic: a
//! copy goes out if any filter of the session that matches the topic lets
//! it, with the flags the most permissive of those gives.

use rumqttd::protocol::{Filter, RetainForwardRule};

const QOS: u8 = 0x03;
pub(super) const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;
/// Retain Handling 2: no retained messages when subscribing.
const RETAINED_NEVER: u8 = 0x20;
/// Retain Handling 1: retained messages only for a new subscription.
const RETAINED_IF_NEW: u8 = 0x10;

/// A filter's options as one byte.
pub(super) fn byte(f: &Filter) -> u8 {
    let rh = match f.retain_forward_rule {
        RetainForwardRule::OnEverySubscribe => 0,
        RetainForwardRule::OnNewSubscribe => RETAINED_IF_NEW,
        RetainForwardRule::Never => RETAINED_NEVER,
    };
    (f.qos as u8).min(2)
        | if f.nolocal { NO_LOCAL } else { 0 }
        | if f.preserve_retain {
            RETAIN_AS_PUBLISHED
        } else {
            0
        }
        | rh
}

/// The granted QoS in an options byte.
pub(super) fn qos(options: u8) -> u8 {
    (options & QOS).min(2)
}

/// Whether a subscription with `options` gets the retained messages its
/// filter matches as it is made; `existed`: the session already had it.
pub(super) fn sends_retained(options: u8, existed: bool) -> bool {
    if options & RETAINED_NEVER != 0 {
        return false;
    }
    !(existed && options & RETAINED_IF_NEW != 0)
}

/// How a message goes to one session, judged by the filters it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    /// The highest QoS among the filters that let it through.
    pub qos: u8,
    /// Its RETAIN flag as published, for a filter with Retain As Published.
    pub retain_as_published: bool,
}

/// Judges a message on `topic` against `filters` (filter, options byte):
/// `None` when no matching filter lets it through (none matches, or it is
/// the session's own message and every matching filter has No Local).
pub(super) fn judge<'a>(
    filters: impl IntoIterator<Item = (&'a str, u8)>,
    topic: &str,
    own: bool,
) -> Option<Verdict> {
    let mut verdict: Option<Verdict> = None;
    for (f, options) in filters {
        let Ok(f) = crate::topic::filter(f) else {
            continue;
        };
        if !crate::topic::matches(f, topic) || (own && options & NO_LOCAL != 0) {
            continue;
        }
        let v = verdict.get_or_insert(Verdict {
            qos: 0,
            retain_as_published: false,
        });
        v.qos = v.qos.max(qos(options));
        v.retain_as_published |= options & RETAIN_AS_PUBLISHED != 0;
    }
    verdict
}

/// Whether a session with `filters` must not get its own message on
/// `topic` back: a filter matches it, and every one that does has No Local.
pub(super) fn no_local<'a>(
    filters: impl IntoIterator<Item = (&'a str, u8)> + Clone,
    topic: &str,
) -> bool {
    filters.clone().into_iter().any(|(_, o)| o & NO_LOCAL != 0)
        && judge(filters.clone(), topic, true).is_none()
        && judge(filters, topic, false).is_some()
}

/// The filters of a clean session with their options: what the router is
/// not told. The filters as the client named them (`$share/` kept), which
/// is what the router's forwards, mount stripped, are matched against.
#[derive(Default)]
pub(super) struct Options {
    /// Filter, options byte, and the subscription identifier the router
    /// holds for it, if any (`identifiers::NONE` for one taken away).
    filters: Vec<(String, u8, Option<usize>)>,
    /// Whether any filter asks for more than its QoS (and Retain Handling
    /// 1, which the router does itself): kept with the filters, so the
    /// common case costs one test per forwarded message.
    asks_more: bool,
}

/// What to do with one publish the router forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Forward {
    /// Send it, with this RETAIN flag.
    Send { retain: bool },
    /// Not for this client: its own message on No Local filters, or a
    /// retained message its Retain Handling declines.
    Withhold,
}

impl Options {
    pub fn subscribed(&mut self, filter: &str, options: u8) {
        match self.filters.iter_mut().find(|(f, ..)| f == filter) {
            Some(slot) => slot.1 = options,
            None => self.filters.push((filter.to_owned(), options, None)),
        }
        self.update_asks_more();
    }

    /// The subscription identifier the router was handed for `filter`
    /// (subscribed already).
    pub fn identified(&mut self, filter: &str, id: Option<usize>) {
        if let Some(slot) = self.filters.iter_mut().find(|(f, ..)| f == filter) {
            slot.2 = id;
        }
    }

    /// Whether the router holds a subscription identifier for `filter`.
    pub fn has_id(&self, filter: &str) -> bool {
        self.filters
            .iter()
            .any(|(f, _, id)| f == filter && id.is_some())
    }

    pub fn unsubscribed(&mut self, filter: &str) {
        self.filters.retain(|(f, ..)| f != filter);
        self.update_asks_more();
    }

    fn update_asks_more(&mut self) {
        self.asks_more = self
            .filters
            .iter()
            .any(|(_, o, _)| o & !QOS != 0 && o & !QOS != RETAINED_IF_NEW);
    }

    /// Whether forwards are sent as the router made them: no filter asks
    /// for more than its QoS.
    pub fn plain(&self) -> bool {
        !self.asks_more
    }

    /// Whether the session's own message on `topic` comes back to it on no
    /// filter: then it must be marked as its own when published.
    pub fn no_local(&self, topic: &str) -> bool {
        no_local(self.iter(), topic)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, u8)> + Clone {
        self.filters.iter().map(|(f, o, _)| (f.as_str(), *o))
    }

    /// Judges a forwarded publish: `retained` is its RETAIN flag as the
    /// router sent it (set only on the retained messages a new
    /// subscription gets; the router clears it on the others),
    /// `published_retain` its RETAIN flag as published, `own` whether this
    /// session published it.
    pub fn forward(
        &self,
        topic: &str,
        retained: bool,
        published_retain: bool,
        own: bool,
    ) -> Forward {
        // Nothing beyond the QoS asked for: the router's flags stand.
        if self.plain() {
            return Forward::Send { retain: retained };
        }
        if retained {
            let wanted = self.iter().filter(|(_, o)| o & RETAINED_NEVER == 0);
            return match judge(wanted, topic, own) {
                Some(_) => Forward::Send { retain: true },
                None => Forward::Withhold,
            };
        }
        match judge(self.iter(), topic, own) {
            Some(v) => Forward::Send {
                retain: v.retain_as_published && published_retain,
            },
            // No filter of ours matches (the router knows better): as sent.
            None if judge(self.iter(), topic, false).is_none() => Forward::Send { retain: false },
            None => Forward::Withhold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_applied_by_topic() {
        let mut o = Options::default();
        o.subscribed("a/#", 1);
        assert_eq!(
            o.forward("a/x", false, true, true),
            Forward::Send { retain: false }
        );
        assert!(!o.no_local("a/x"));
        o.subscribed("a/#", 1 | NO_LOCAL | RETAIN_AS_PUBLISHED);
        assert!(o.no_local("a/x"));
        assert_eq!(o.forward("a/x", false, true, true), Forward::Withhold);
        assert_eq!(
            o.forward("a/x", false, true, false),
            Forward::Send { retain: true }
        );
        // Another filter without No Local lets the session's own through.
        o.subscribed("a/x", 0);
        assert!(!o.no_local("a/x"));
        assert_eq!(
            o.forward("a/x", false, true, true),
            Forward::Send { retain: false }
        );
        o.unsubscribed("a/x");
        o.subscribed("r/#", 2 | RETAINED_NEVER);
        assert_eq!(o.forward("r/1", true, true, false), Forward::Withhold);
        assert_eq!(
            o.forward("r/1", false, true, false),
            Forward::Send { retain: false }
        );
        assert_eq!(
            o.forward("a/1", true, true, false),
            Forward::Send { retain: true }
        );
    }

    #[test]
    fn retain_handling_decides_what_a_subscription_gets_as_it_is_made() {
        assert!(sends_retained(0, false) && sends_retained(0, true));
        assert!(sends_retained(RETAINED_IF_NEW, false));
        assert!(!sends_retained(RETAINED_IF_NEW, true));
        assert!(!sends_retained(RETAINED_NEVER, false));
    }
}
