//! What a publish carries through the embedded router for the front door
//! to read back at delivery: the QoS it was published with.
//!
//! MQTT delivers a message at the lower of its publish QoS and the
//! subscription's (3.1.1 and 5, section 3.8.4), but rumqttd 0.20's router
//! overwrites a forwarded publish's QoS with the subscription's
//! (`router/routing.rs`), so the publish QoS is gone before the front door
//! sees the message. It is therefore written into the properties handed to
//! the router, in the one field the router passes on untouched whose value
//! fits in a byte: the payload format indicator. (`topic_alias`, the field
//! that looks unused, is consumed by the router when a message is appended.)
//!
//! Only `republish.rs` hands publishes to the router (a client's PUBLISH
//! reaches it through the verifier's queue and the outbox), so every marked
//! value is the gateway's own; the front door unmarks every publish it
//! delivers, so no client sees one. The mark costs no allocation: a
//! properties struct with empty strings and lists, where the `sg-*` user
//! properties measured a fifth of the throughput.

use rumqttd::protocol::PublishProperties;

/// Set in a marked payload format indicator; MQTT's own values are 0 and 1.
const MARK: u8 = 0x80;
/// The publish QoS, in the low two bits.
const QOS: u8 = 0x03;
/// The publisher's own payload format indicator, in bits 2 and 3: 0 none,
/// 1 for 0 (unspecified bytes), 2 for 1 (UTF-8).
const FORMAT_SHIFT: u8 = 2;

/// The properties to hand the router for a message published at `qos`,
/// with the publisher's own properties (if any). A QoS 2 message without
/// properties needs no mark: the router's delivery QoS is then already the
/// lower of the two.
pub fn mark(qos: u8, props: Option<PublishProperties>) -> Option<PublishProperties> {
    if qos >= 2 && props.is_none() {
        return None;
    }
    let mut p = props.unwrap_or_default();
    let format = match p.payload_format_indicator {
        None => 0,
        Some(0) => 1,
        Some(_) => 2,
    };
    p.payload_format_indicator = Some(MARK | (format << FORMAT_SHIFT) | qos.min(2));
    Some(p)
}

/// Takes the mark off the properties of a publish the router forwarded and
/// returns its publish QoS: the most it may be delivered at. Properties left
/// empty become `None`. An unmarked publish may go at any QoS.
pub fn unmark(props: &mut Option<PublishProperties>) -> u8 {
    let Some(p) = props.as_mut() else {
        return 2;
    };
    let Some(v) = p.payload_format_indicator.filter(|v| v & MARK != 0) else {
        return 2;
    };
    p.payload_format_indicator = match (v >> FORMAT_SHIFT) & 0x03 {
        0 => None,
        1 => Some(0),
        _ => Some(1),
    };
    if *p == PublishProperties::default() {
        *props = None;
    }
    v & QOS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_qos_and_the_publishers_format_come_back() {
        for qos in 0..=2u8 {
            let mut m = mark(qos, None);
            assert_eq!(unmark(&mut m), qos);
            assert_eq!(m, None, "nothing of the mark is left");
            for format in [None, Some(0), Some(1)] {
                let own = PublishProperties {
                    payload_format_indicator: format,
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                };
                let mut m = mark(qos, Some(own.clone()));
                assert_eq!(unmark(&mut m), qos);
                assert_eq!(m, Some(own));
            }
        }
        // Unmarked: whatever the router chose stands.
        assert_eq!(unmark(&mut None), 2);
        let mut own = Some(PublishProperties {
            payload_format_indicator: Some(1),
            ..Default::default()
        });
        assert_eq!(unmark(&mut own), 2);
        assert_eq!(own.and_then(|p| p.payload_format_indicator), Some(1));
    }
}
