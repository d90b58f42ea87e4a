//! MQTT 5 subscription identifiers (sections 3.8.2.1.2 and 3.3.4): a
//! delivery carries the identifier of each subscription of the session it
//! is sent for.
//!
//! A clean session's identifiers are kept by the embedded router, which
//! tags every forward with the identifier of the filter it read it for
//! (one copy per matching filter, so one identifier each, MQTT5-3.3.4-5).
//! But rumqttd 0.20 keeps a filter's identifier when a SUBSCRIBE without
//! one renews the filter; MQTT has the new subscription replace it. Such a
//! SUBSCRIBE is therefore handed to the router with [`NONE`], which the
//! writer takes off every forward. A persistent session is fed from the
//! outbox and sends one copy per message: it carries the identifiers of
//! all its filters that let the message through ([`matching`],
//! MQTT5-3.3.4-4).

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::PublishProperties;

/// The identifier a clean session's filter gets in the router when a
/// SUBSCRIBE takes its identifier away. Above the largest MQTT can encode
/// (268,435,455), so no client's identifier is ever taken for it.
pub(super) const NONE: usize = usize::MAX;

/// MQTT 5's property identifier for a subscription identifier.
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;

/// Takes [`NONE`] off a forward's identifiers.
pub(super) fn strip(props: &mut Option<PublishProperties>) {
    if let Some(p) = props {
        p.subscription_identifiers.retain(|id| *id != NONE);
    }
}

/// The identifiers of the filters (filter, options byte, identifier) that
/// let a message on `topic` through to a session (`own`: it published it,
/// and a No Local filter does not let it through).
pub(super) fn matching<'a>(
    filters: impl IntoIterator<Item = (&'a str, u8, Option<usize>)>,
    topic: &str,
    own: bool,
) -> Vec<usize> {
    filters
        .into_iter()
        .filter_map(|(f, options, id)| {
            let id = id?;
            let filter = crate::topic::filter(f).ok()?;
            let lets_through = crate::topic::matches(filter, topic)
                && !(own && options & super::options::NO_LOCAL != 0);
            lets_through.then_some(id)
        })
        .collect()
}

/// Writes `ids` as MQTT 5 PUBLISH properties (without their length).
/// Fails only for an identifier MQTT cannot encode, which no SUBSCRIBE
/// could have carried.
pub(super) fn write(ids: &[usize], out: &mut BytesMut) -> Result<(), rumqttd::protocol::Error> {
    for id in ids {
        out.put_u8(SUBSCRIPTION_IDENTIFIER);
        // MQTT's variable byte integer, as a remaining length is written.
        rumqttd::protocol::v4::write_remaining_length(out, *id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_filters_that_let_the_message_through_give_their_identifier() {
        let no_local = super::super::options::NO_LOCAL;
        let filters = [
            ("a/#", 1, Some(1)),
            ("a/b", 1 | no_local, Some(2)),
            ("a/+", 0, None),
            ("x/#", 1, Some(4)),
        ];
        assert_eq!(matching(filters, "a/b", false), [1, 2]);
        assert_eq!(matching(filters, "a/b", true), [1]);
        assert!(matching(filters, "b", false).is_empty());
    }
}
