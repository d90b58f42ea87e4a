//! What a publish carries through the embedded router for the front door
//! to read back at delivery: the QoS and RETAIN flag it was published with,
//! when it expires, and (for No Local) which session published it.
//!
//! MQTT delivers a message at the lower of its publish QoS and the
//! subscription's (3.1.1 and 5, section 3.8.4), but rumqttd 0.20's router
//! overwrites a forwarded publish's QoS with the subscription's
//! (`router/routing.rs`), so the publish QoS is gone before the front door
//! sees the message. So is its RETAIN flag, which Retain As Published
//! subscriptions must get. It is therefore written into the properties handed to
//! the router, in the one field the router passes on untouched whose value
//! fits in a byte: the payload format indicator. (`topic_alias`, the field
//! that looks unused, is consumed by the router when a message is appended.)
//!
//! A message expiry interval cannot stay in the properties either: the
//! router rewrites it in retained messages each time it reads one, taking
//! off all the time since the message arrived again and again. The message's
//! deadline travels instead, as a user property of the gateway's own name,
//! and the front door makes the interval that is left out of it.
//!
//! Only `republish.rs` hands publishes to the router (a client's PUBLISH
//! reaches it through the verifier's queue and the outbox), and clients'
//! user properties with reserved names are dropped on the way in
//! (`properties::screen`), so every mark is the gateway's own; the front
//! door unmarks every publish it delivers, so no client sees one. The QoS
//! mark costs no allocation: a properties struct with empty strings and
//! lists, where the `sg-*` user properties measured a fifth of the
//! throughput. Only a message with an expiry pays for its deadline.

use rumqttd::protocol::PublishProperties;

/// Set in a marked payload format indicator; MQTT's own values are 0 and 1.
const MARK: u8 = 0x80;
/// The publish QoS, in the low two bits.
const QOS: u8 = 0x03;
/// The publisher's own payload format indicator, in bits 2 and 3: 0 none,
/// 1 for 0 (unspecified bytes), 2 for 1 (UTF-8).
const FORMAT_SHIFT: u8 = 2;
/// Published with RETAIN set.
const RETAINED: u8 = 0x10;
/// The user property that carries a message's deadline, in milliseconds
/// since the Unix epoch; always the last one.
const EXPIRES_AT: &str = "sg-expires-at";

/// The properties to hand the router for a message published at `qos` and
/// `retain`, with the publisher's own properties (if any), received at
/// `received_ms`. A QoS 2 message without RETAIN or properties needs no
/// mark: the router's delivery QoS is then already the lower of the two.
pub fn mark(
    qos: u8,
    retain: bool,
    props: Option<PublishProperties>,
    received_ms: u64,
) -> Option<PublishProperties> {
    if qos >= 2 && !retain && props.is_none() {
        return None;
    }
    let mut p = props.unwrap_or_default();
    if let Some(secs) = p.message_expiry_interval.take() {
        let deadline = received_ms.saturating_add(u64::from(secs) * 1000);
        p.user_properties
            .push((EXPIRES_AT.to_owned(), deadline.to_string()));
    }
    let format = match p.payload_format_indicator {
        None => 0,
        Some(0) => 1,
        Some(_) => 2,
    };
    let retained = if retain { RETAINED } else { 0 };
    p.payload_format_indicator = Some(MARK | retained | (format << FORMAT_SHIFT) | qos.min(2));
    Some(p)
}

/// What the marks said of a publish the router forwarded.
#[derive(Debug, PartialEq, Eq)]
pub struct Routed {
    /// Its publish QoS: the most it may be delivered at.
    pub qos: u8,
    /// Its RETAIN flag as published.
    pub retain: bool,
    /// The session that published it, if it was named (`properties::FROM`).
    pub from: Option<String>,
}

/// Takes the marks off the properties of a publish the router forwarded
/// and says what they held, or `None` once it has expired (then it must not
/// be delivered, MQTT-3.3.2-5). What is left of its expiry interval is put
/// back in place of its deadline. Properties left empty become `None`. An
/// unmarked publish was published at QoS 2 without RETAIN.
pub fn unmark(props: &mut Option<PublishProperties>) -> Option<Routed> {
    let unmarked = Routed {
        qos: 2,
        retain: false,
        from: None,
    };
    let Some(p) = props.as_mut() else {
        return Some(unmarked);
    };
    if p.user_properties
        .last()
        .is_some_and(|(k, _)| k == EXPIRES_AT)
    {
        let deadline = p
            .user_properties
            .pop()
            .and_then(|(_, v)| v.parse::<u64>().ok());
        match crate::properties::expiry_left_until(deadline.unwrap_or(0), crate::now_ms()) {
            Some(secs) => p.message_expiry_interval = Some(secs),
            None => return None,
        }
    }
    let from = match crate::properties::from(p) {
        Some(_) => p.user_properties.pop().map(|(_, v)| v),
        None => None,
    };
    let Some(v) = p.payload_format_indicator.filter(|v| v & MARK != 0) else {
        return Some(Routed { from, ..unmarked });
    };
    p.payload_format_indicator = match (v >> FORMAT_SHIFT) & 0x03 {
        0 => None,
        1 => Some(0),
        _ => Some(1),
    };
    if *p == PublishProperties::default() {
        *props = None;
    }
    Some(Routed {
        qos: v & QOS,
        retain: v & RETAINED != 0,
        from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(qos: u8, retain: bool) -> Option<Routed> {
        Some(Routed {
            qos,
            retain,
            from: None,
        })
    }

    #[test]
    fn the_publish_qos_retain_and_the_publishers_format_come_back() {
        for qos in 0..=2u8 {
            for retain in [false, true] {
                let mut m = mark(qos, retain, None, 0);
                assert_eq!(unmark(&mut m), routed(qos, retain));
                assert_eq!(m, None, "nothing of the mark is left");
            }
            for format in [None, Some(0), Some(1)] {
                let own = PublishProperties {
                    payload_format_indicator: format,
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                };
                let mut m = mark(qos, false, Some(own.clone()), 0);
                assert_eq!(unmark(&mut m), routed(qos, false));
                assert_eq!(m, Some(own));
            }
        }
        // Unmarked: whatever the router chose stands.
        assert_eq!(unmark(&mut None), routed(2, false));
        let mut own = Some(PublishProperties {
            payload_format_indicator: Some(1),
            ..Default::default()
        });
        assert_eq!(unmark(&mut own), routed(2, false));
        assert_eq!(own.and_then(|p| p.payload_format_indicator), Some(1));
    }

    #[test]
    fn the_expiry_interval_left_replaces_the_deadline() {
        let own = |expiry| PublishProperties {
            message_expiry_interval: expiry,
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let now = crate::now_ms();
        // Received 2.5 s ago with 60 s to live: 58 left.
        let mut m = mark(1, false, Some(own(Some(60))), now - 2_500);
        assert_eq!(m.as_ref().and_then(|p| p.message_expiry_interval), None);
        assert_eq!(unmark(&mut m), routed(1, false));
        let left = m.as_ref().and_then(|p| p.message_expiry_interval);
        assert!(matches!(left, Some(57..=58)), "{left:?}");
        assert_eq!(m.map(|p| p.user_properties.len()), Some(1));
        // Past its deadline: not delivered.
        let mut m = mark(2, false, Some(own(Some(1))), now - 1_000);
        assert_eq!(unmark(&mut m), None);
    }

    #[test]
    fn the_publishing_session_comes_back_and_is_taken_off() {
        let mut props = None;
        crate::properties::tag_from(&mut props, "u.3.ops.x");
        let props = props.map(|p| PublishProperties {
            message_expiry_interval: Some(60),
            ..*p
        });
        let mut m = mark(1, true, props, crate::now_ms());
        let r = unmark(&mut m).unwrap();
        assert_eq!(r.from.as_deref(), Some("u.3.ops.x"));
        assert!(r.retain);
        let p = m.unwrap();
        assert!(p.user_properties.is_empty());
        assert!(p.message_expiry_interval.is_some());
    }
}
