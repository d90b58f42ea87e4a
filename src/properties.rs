//! The MQTT 5 properties of an account's PUBLISH that travel with the
//! message to its subscribers (MQTT 5 section 3.3.2.3): payload format
//! indicator, message expiry interval, content type, response topic,
//! correlation data and user properties. What a client may not set is taken
//! off on the way in (`screen`); the rest is stored with the message in the
//! outbox in MQTT 5's own property encoding, which is also how a persistent
//! session is sent them.
//!
//! Sealed publishes keep none: properties are outside the envelope's MAC,
//! so nothing a device attaches may reach `clean/`.

use bytes::{BufMut, Bytes};
use rumqttd::protocol::PublishProperties;

/// User properties whose name starts with this (in any case) are the
/// gateway's own: the `sg-*` origin of verified messages
/// (`republish::property`), and what `routed` carries through the router.
/// A client's are dropped, so none can pass for the gateway's.
pub const RESERVED_PREFIX: &str = "sg-";

/// The user property that names the session an account's message came
/// from (its router client id), added as the last of its properties when
/// that session's No Local subscriptions must not get it back
/// (`front_door::options`). Never sent to a client.
pub const FROM: &str = "sg-from";

/// MQTT 5 property identifiers (section 2.2.2.2).
const FORMAT: u8 = 0x01;
const EXPIRY: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION: u8 = 0x09;
const USER: u8 = 0x26;

/// What of a client's PUBLISH properties is passed on; `None` when nothing.
/// Not a topic alias (the front door resolves those), nor subscription
/// identifiers (a server's to send, MQTT-3.3.4-6), nor a user property
/// with a reserved name. A payload format indicator other than 0 or 1 is
/// taken as 1, and an expiry interval of 0 as none (rumqttd's router would
/// drop such a retained message at once, other servers never expire it).
pub fn screen(props: Option<PublishProperties>) -> Option<Box<PublishProperties>> {
    let mut p = props?;
    p.topic_alias = None;
    p.subscription_identifiers = Vec::new();
    p.user_properties.retain(|(name, _)| !reserved(name));
    p.payload_format_indicator = p.payload_format_indicator.map(|v| v.min(1));
    p.message_expiry_interval = p.message_expiry_interval.filter(|s| *s > 0);
    (p != PublishProperties::default()).then(|| Box::new(p))
}

/// Names the session a message came from (`FROM`).
pub fn tag_from(props: &mut Option<Box<PublishProperties>>, session: &str) {
    props
        .get_or_insert_with(Default::default)
        .user_properties
        .push((FROM.to_owned(), session.to_owned()));
}

/// The session a message came from, if it was named (`tag_from`).
pub fn from(p: &PublishProperties) -> Option<&str> {
    match p.user_properties.last() {
        Some((k, v)) if k == FROM => Some(v),
        _ => None,
    }
}

/// Whether a user property's name is reserved for the gateway.
pub fn reserved(name: &str) -> bool {
    name.as_bytes()
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|n| n.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
}

/// What is left of a message expiry interval: `None` once the message has
/// expired. The interval loses the whole seconds the message has waited
/// (MQTT-3.3.2-6), counted from `received_ms`.
pub fn expiry_left(interval_secs: u32, received_ms: u64, now_ms: u64) -> Option<u32> {
    let deadline = received_ms.saturating_add(u64::from(interval_secs) * 1000);
    expiry_left_until(deadline, now_ms.max(received_ms))
}

/// The same rule for a message due to expire at `deadline_ms`: the interval
/// left, in seconds rounded up (so whole seconds waited are taken off);
/// `None` once it has run out.
pub fn expiry_left_until(deadline_ms: u64, now_ms: u64) -> Option<u32> {
    let left = deadline_ms.checked_sub(now_ms).filter(|ms| *ms > 0)?;
    Some(u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX))
}

/// Writes `p` as MQTT 5 PUBLISH properties (without their length), with
/// `expiry` as the message expiry interval, for a client: without the
/// gateway's reserved user properties.
pub fn write_for_client(p: &PublishProperties, expiry: Option<u32>, out: &mut impl BufMut) {
    write_some(p, expiry, false, out);
}

/// Writes `p` as MQTT 5 PUBLISH properties (without their length), with
/// `expiry` as the message expiry interval, all of them (to be stored).
pub fn write(p: &PublishProperties, expiry: Option<u32>, out: &mut impl BufMut) {
    write_some(p, expiry, true, out);
}

fn write_some(p: &PublishProperties, expiry: Option<u32>, all: bool, out: &mut impl BufMut) {
    if let Some(f) = p.payload_format_indicator {
        out.put_u8(FORMAT);
        out.put_u8(f);
    }
    if let Some(e) = expiry {
        out.put_u8(EXPIRY);
        out.put_u32(e);
    }
    if let Some(t) = &p.content_type {
        out.put_u8(CONTENT_TYPE);
        put_bytes(out, t.as_bytes());
    }
    if let Some(t) = &p.response_topic {
        out.put_u8(RESPONSE_TOPIC);
        put_bytes(out, t.as_bytes());
    }
    if let Some(c) = &p.correlation_data {
        out.put_u8(CORRELATION);
        put_bytes(out, c);
    }
    for (k, v) in &p.user_properties {
        if !all && reserved(k) {
            continue;
        }
        out.put_u8(USER);
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
}

/// The length `write` gives.
pub fn written_len(p: &PublishProperties, expiry: Option<u32>) -> usize {
    let s = |s: &Option<String>| s.as_ref().map_or(0, |s| 3 + s.len());
    p.payload_format_indicator.map_or(0, |_| 2)
        + expiry.map_or(0, |_| 5)
        + s(&p.content_type)
        + s(&p.response_topic)
        + p.correlation_data.as_ref().map_or(0, |c| 3 + c.len())
        + p.user_properties
            .iter()
            .map(|(k, v)| 5 + k.len() + v.len())
            .sum::<usize>()
}

/// Reads what `write` wrote; `None` for anything else.
pub fn read(mut b: &[u8]) -> Option<PublishProperties> {
    let mut p = PublishProperties::default();
    while let Some((&id, rest)) = b.split_first() {
        b = rest;
        match id {
            FORMAT => p.payload_format_indicator = Some(take(&mut b, 1)?[0]),
            EXPIRY => {
                let v = take(&mut b, 4)?;
                p.message_expiry_interval = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            }
            CONTENT_TYPE => p.content_type = Some(string(&mut b)?),
            RESPONSE_TOPIC => p.response_topic = Some(string(&mut b)?),
            CORRELATION => p.correlation_data = Some(Bytes::copy_from_slice(binary(&mut b)?)),
            USER => {
                let k = string(&mut b)?;
                let v = string(&mut b)?;
                p.user_properties.push((k, v));
            }
            _ => return None,
        }
    }
    Some(p)
}

/// MQTT's two-byte length, then the bytes. Every string and binary here
/// came from a decoded packet, so it fits.
fn put_bytes(out: &mut impl BufMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Some(head)
}

fn binary<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take(b, 2)?;
    take(b, usize::from(u16::from_be_bytes([len[0], len[1]])))
}

fn string(b: &mut &[u8]) -> Option<String> {
    String::from_utf8(binary(b)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> PublishProperties {
        PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: None,
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01id")),
            user_properties: vec![("unit".into(), "kWh".into()), ("unit".into(), "".into())],
            subscription_identifiers: Vec::new(),
            content_type: Some("application/json".into()),
        }
    }

    #[test]
    fn properties_read_back_as_written() {
        let p = full();
        let mut b = Vec::new();
        write(&p, p.message_expiry_interval, &mut b);
        assert_eq!(b.len(), written_len(&p, Some(60)));
        assert_eq!(read(&b), Some(p.clone()));
        assert_eq!(read(&b[..b.len() - 1]), None, "cut short");
        let mut b = Vec::new();
        write(&p, None, &mut b);
        assert_eq!(b.len(), written_len(&p, None));
        assert_eq!(read(&b).and_then(|r| r.message_expiry_interval), None);
    }

    #[test]
    fn what_a_client_may_not_set_is_screened_out() {
        let mut p = full();
        p.topic_alias = Some(3);
        p.subscription_identifiers = vec![7];
        p.payload_format_indicator = Some(9);
        let mut no_expiry = full();
        no_expiry.message_expiry_interval = Some(0);
        let screened = screen(Some(no_expiry)).unwrap();
        assert_eq!(screened.message_expiry_interval, None);
        p.user_properties
            .push(("sg-device".into(), "forged".into()));
        p.user_properties.push(("SG-Nonce".into(), "1".into()));
        let s = screen(Some(p)).unwrap();
        let mut want = full();
        want.payload_format_indicator = Some(1);
        assert_eq!(*s, want);
        let only_reserved = PublishProperties {
            user_properties: vec![("sg-kid".into(), "1".into())],
            ..Default::default()
        };
        assert_eq!(screen(Some(only_reserved)), None);
        assert!(!reserved("s") && !reserved("sgx") && reserved("Sg-"));
    }

    #[test]
    fn an_expiry_loses_the_whole_seconds_waited() {
        assert_eq!(expiry_left(10, 1_000, 1_000), Some(10));
        assert_eq!(expiry_left(10, 1_000, 1_999), Some(10));
        assert_eq!(expiry_left(10, 1_000, 2_000), Some(9));
        assert_eq!(expiry_left(10, 1_000, 10_999), Some(1));
        assert_eq!(expiry_left(10, 1_000, 11_000), None);
    }
}
