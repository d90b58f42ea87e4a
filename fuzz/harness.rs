//! The bodies of the fuzz targets, shared by libFuzzer (`fuzz/fuzz_targets/`,
//! nightly) and the corpus replay (`tests/fuzz_corpus.rs`, stable), so the
//! committed corpus is checked by every CI run against exactly the code the
//! fuzzer ran.
//!
//! Each function takes bytes a client controls and drives a parser the
//! gateway runs on them. A panic, or a failed assertion of an invariant
//! stated here, is a finding.

// Each fuzz target uses one of these functions; the replay uses all of them.
#![allow(dead_code)]

use std::sync::OnceLock;

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{Error as CodecError, Protocol};
use sealgate::config::Config;
use sealgate::envelope::{self, DeviceKeys, Enc, Malformed, MasterKey, SealedTopic};
use sealgate::front_door::acl::Acl;
use sealgate::front_door::auth::Role;
use sealgate::front_door::packet::{self, Frame};
use sealgate::topic;

/// The master key of tests/vectors/vectors.json, so that corpus entries made
/// from the vectors pass the MAC and reach decryption.
const MASTER_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Device and stream of the vectors' accepted messages.
const DEVICE: &str = "esp32-a1";
const STREAM: &str = "telemetry";
const BINARY_MAGIC: &[u8] = b"SG\x01";

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut c = Config::load(None, &[("SEALGATE_USERS", "dash:x,ops:y")])
            .expect("the embedded default config loads");
        // One account on the default grants, one granted everything, so
        // both the default and the widest subscriber rules are exercised.
        if let Some(ops) = c.users.iter_mut().find(|u| u.name == "ops") {
            ops.subscribe = Some(vec!["#".into()]);
            ops.publish = Some(vec!["cmd/+/reboot".into(), "#".into()]);
        }
        c
    })
}

fn master() -> &'static MasterKey {
    static MASTER: OnceLock<MasterKey> = OnceLock::new();
    MASTER.get_or_init(|| MasterKey::from_hex(MASTER_HEX).expect("MASTER_HEX is 32 bytes"))
}

fn device_keys(kid: u32) -> DeviceKeys {
    master().device_keys(DEVICE, kid)
}

// ---------------------------------------------------------------- MQTT framing

/// sealgate's own header reading (`front_door::packet`) and rumqttd's codec
/// as the front door drives it, for both protocol levels.
pub fn mqtt_frame(data: &[u8]) {
    check_packet_helpers(data);
    let max = config().mqtt.max_packet_bytes;
    connect_path(V4, false, data, max);
    connect_path(V5, true, data, max);
    session_loop(V4, false, data, max);
    session_loop(V5, true, data, max);
}

fn check_packet_helpers(data: &[u8]) {
    match packet::frame(data) {
        Frame::Incomplete => {
            // Only a header still missing bytes is incomplete.
            let header_done = data.iter().skip(1).take(4).any(|b| b & 0x80 == 0);
            assert!(
                data.len() < 5 && !header_done,
                "incomplete but header is whole"
            );
        }
        Frame::Malformed => {
            assert!(data.len() >= 5 && data[1..5].iter().all(|b| b & 0x80 != 0));
        }
        Frame::Frame { first, len } => {
            assert_eq!(first, data[0]);
            // Never shorter than its own header: 1 type byte plus the
            // length bytes up to the one without continuation.
            let length_bytes = data[1..]
                .iter()
                .position(|b| b & 0x80 == 0)
                .expect("a whole header ends")
                + 1;
            assert!(length_bytes <= 4);
            let header = 1 + length_bytes;
            assert!(len >= header, "frame shorter than its header");
            assert!(len <= 5 + 268_435_455);
        }
    }
    if let Some((qos, pkid)) = packet::publish_qos_pkid(data) {
        assert_eq!(data[0] >> 4, 3, "only a PUBLISH has a QoS and packet id");
        assert!(qos <= 3);
        if qos == 0 {
            assert_eq!(pkid, 0);
        }
    }
    if packet::connect_level(data).is_some() {
        assert_eq!(data[0] >> 4, 1, "only a CONNECT has a protocol level");
    }
}

/// The first packet, as `front_door::connect` reads it: rumqttd's codec on
/// the buffer as it is, before any framing of ours, called again whenever it
/// asks for more bytes (here: only while it still consumes some, as no more
/// will come).
fn connect_path<P: Protocol>(mut proto: P, v5: bool, data: &[u8], max: usize) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode(&mut proto, v5, &mut buf, max) {
            Some(Err(CodecError::InsufficientBytes(_))) if buf.len() < before => continue,
            _ => return,
        }
    }
}

/// Every packet after CONNECT, as `Session::on_readable` reads them: our
/// header check first (malformed and oversized refused on the header
/// alone), then rumqttd's decoder on a frame known to be complete.
fn session_loop<P: Protocol>(mut proto: P, v5: bool, data: &[u8], max: usize) {
    let mut buf = BytesMut::from(data);
    loop {
        let (first, len) = match packet::frame(&buf) {
            Frame::Incomplete | Frame::Malformed => return,
            Frame::Frame { first, len } => (first, len),
        };
        if len > max || len > buf.len() {
            return;
        }
        let qos_pkid = packet::publish_qos_pkid(&buf);
        let before = buf.len();
        match decode(&mut proto, v5, &mut buf, max) {
            Some(Ok(pkt)) => {
                // Our framing and rumqttd's must agree on where a packet
                // ends, or the QoS and packet id we read belong to another
                // packet than the one rumqttd decoded.
                assert_eq!(before - buf.len(), len, "codec consumed another length");
                if let rumqttd::protocol::Packet::Publish(p, _) = pkt {
                    assert!(qos_pkid.is_some(), "a decoded PUBLISH has a header we read");
                    assert_eq!(p.retain, first & 1 == 1, "codec read another header");
                }
            }
            // As the front door: wait for more bytes (none will come here).
            Some(Err(CodecError::InsufficientBytes(_))) => return,
            // As the front door: the connection is closed.
            Some(Err(_)) | None => return,
        }
    }
}

/// rumqttd's decoder, except on the one input class known to panic in it.
fn decode<P: Protocol>(
    proto: &mut P,
    v5: bool,
    buf: &mut BytesMut,
    max: usize,
) -> Option<Result<rumqttd::protocol::Packet, CodecError>> {
    if v5 && v5_decoder_panics(buf, max) {
        return None;
    }
    Some(proto.read_mut(buf, max))
}

/// Known rumqttd 0.20 bug (docs/fuzzing.md): `V5::read_mut` reaches
/// `unreachable!()` on a complete CONNACK or UNSUBACK with a non-empty body,
/// packets a client never sends but can. Only that class is skipped, so the
/// rest of the decoder keeps being fuzzed.
fn v5_decoder_panics(buf: &[u8], max: usize) -> bool {
    let Frame::Frame { first, len } = packet::frame(buf) else {
        return false;
    };
    let header = 1 + buf[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    let remaining = len - header;
    matches!(first >> 4, 2 | 11) && remaining > 0 && remaining <= max && len <= buf.len()
}

// ------------------------------------------------------------------- envelope

/// A payload published on `sealed/esp32-a1/telemetry`, as the verifier reads
/// it: parse, then (with the vectors' key) the MAC and decryption.
pub fn envelope_json(data: &[u8]) {
    envelope(data);
}

/// The binary encoding: the magic is supplied when missing so that every
/// input reaches the binary parser.
pub fn envelope_binary(data: &[u8]) {
    if data.starts_with(BINARY_MAGIC) {
        envelope(data);
    } else {
        let mut framed = BINARY_MAGIC.to_vec();
        framed.extend_from_slice(data);
        envelope(&framed);
    }
}

fn envelope(payload: &[u8]) {
    if payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        // The one-pass reader of the common shape reads what serde reads.
        assert_eq!(
            envelope::parse(payload),
            envelope::parse_json_by_serde(payload),
            "the JSON shortcut and serde disagree"
        );
    }
    let looks_sealed = envelope::looks_sealed(payload);
    let parsed = match envelope::parse(payload) {
        Ok(p) => p,
        Err(Malformed::NotEnvelope) => {
            assert!(!payload.starts_with(BINARY_MAGIC));
            return;
        }
        Err(_) => return,
    };
    assert!(
        looks_sealed || !payload.starts_with(BINARY_MAGIC),
        "a parsed binary frame must look sealed"
    );
    assert!(parsed.kid >= 1 && parsed.nonce >= 1);
    if payload.starts_with(BINARY_MAGIC) {
        // The binary form has one spelling: the fields rebuild the frame.
        let mut again = BINARY_MAGIC.to_vec();
        again.push(matches!(parsed.enc, Enc::Aes128Cbc(_)) as u8);
        again.extend_from_slice(&parsed.kid.to_be_bytes());
        again.extend_from_slice(&parsed.nonce.to_be_bytes());
        if let Enc::Aes128Cbc(iv) = &parsed.enc {
            again.extend_from_slice(iv);
        }
        again.extend_from_slice(&parsed.body);
        again.extend_from_slice(&parsed.mac);
        assert_eq!(again, payload, "binary frame does not rebuild");
    }
    let keys = device_keys(parsed.kid);
    let _ = parsed.mac_matches(&keys.mac, DEVICE, STREAM);
    // The gateway decrypts only after the MAC matched; decrypting attacker
    // bytes anyway keeps the cipher and padding code under the fuzzer.
    if let Some(plain) = envelope::open_body(parsed.clone(), &keys.enc) {
        if parsed.enc == Enc::None {
            assert_eq!(plain, parsed.body);
        }
    }
}

/// The legacy EcoWatt envelope (a legacy device's `sealed/` topic and the
/// HTTP ingest), opened with the legacy vectors' keys: parse, then decrypt
/// and MAC as one step that must not tell a bad padding from a bad MAC.
pub fn envelope_legacy(data: &[u8]) {
    use sealgate::envelope::legacy::{self, LegacyKeys};
    let Ok(env) = legacy::parse(data) else {
        return;
    };
    assert!(env.nonce >= 1);
    let keys = LegacyKeys {
        psk_hmac: LEGACY_PSK_HMAC.to_vec(),
        psk_aes: LEGACY_PSK_AES,
        iv: LEGACY_IV,
    };
    if let Some(plain) = legacy::open(&env, &keys) {
        // Whatever opens seals again to an envelope that opens the same.
        let again = legacy::seal(&keys, env.nonce, &plain, env.encrypted);
        let env2 = legacy::parse(&again).expect("a sealed envelope parses");
        assert_eq!(legacy::open(&env2, &keys), Some(plain));
    }
}

/// The keys of tests/vectors/legacy-vectors.json, so corpus entries made
/// from the vectors pass the MAC.
const LEGACY_PSK_HMAC: [u8; 32] = [
    0x7d, 0x2a, 0x9c, 0x41, 0xe0, 0xb3, 0x5f, 0x66, 0xa1, 0x8e, 0x04, 0xc9, 0xd2, 0x7b, 0x3f, 0x55,
    0x10, 0xaa, 0x9b, 0xe4, 0xc3, 0xd2, 0xf1, 0xe0, 0xff, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
];
const LEGACY_PSK_AES: [u8; 16] = [
    0x3c, 0x4f, 0xcf, 0x09, 0x88, 0x15, 0xf7, 0xab, 0xa6, 0xd2, 0xae, 0x28, 0x16, 0x15, 0x7e, 0x2b,
];
const LEGACY_IV: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

// --------------------------------------------------------------- connect token

/// The MQTT password of a device's CONNECT, checked against esp32-a1's key.
pub fn connect_token(data: &[u8]) {
    // rumqttd hands the front door the password as a String.
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let keys = device_keys(1);
    let strict = envelope::verify_connect_token(&keys, DEVICE, token, 1_700_000_000, false);
    let lax = envelope::verify_connect_token(&keys, DEVICE, token, 1_700_000_000, true);
    // Allowing tokens without expiry only ever turns NoExpiry into Ok.
    match strict {
        Err(envelope::TokenError::NoExpiry) => assert_eq!(lax, Ok(())),
        other => assert_eq!(other, lax),
    }
    if strict.is_ok() || lax.is_ok() {
        assert!(token.starts_with("v1:"));
    }
}

// ----------------------------------------------------------------------- topic

/// Input: `topic`, then optionally `\n` and a filter (the topic itself when
/// absent), then optionally `\n` and a raw device id.
pub fn topic(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = s.splitn(3, '\n');
    let topic = parts.next().unwrap_or_default();
    let filter = parts.next().unwrap_or(topic);
    let raw_id = parts.next().unwrap_or(DEVICE);
    topic_rules(topic, filter, raw_id);
}

/// The topic and filter rules a client's PUBLISH and SUBSCRIBE meet. Kept in
/// one function so it can follow topic validation when that moves.
fn topic_rules(topic: &str, filter: &str, raw_id: &str) {
    let c = config();
    let acl = Acl::new(&c.topics, &c.acl, &c.users);
    let sealed = c.topics.sealed.as_str();
    // What the front door checks before any rule: MQTT's rules and the
    // router's (`sealgate::topic`); the router files a shared filter under
    // the filter after `$share/{group}/`.
    let routed = topic::filter(filter).and_then(topic::router_takes);
    let valid = routed.is_ok();
    let delivered = routed.is_ok_and(|f| routes(topic, f));
    // Our own matcher agrees with the router's wherever the router is used.
    if let Ok(f) = routed {
        if topic::topic_name(topic.as_bytes())
            .and_then(topic::router_takes)
            .is_ok()
        {
            assert_eq!(
                topic::matches(f, topic),
                routes(topic, f),
                "{f:?} {topic:?}"
            );
        }
    }
    // The verifier's reading of a sealed topic.
    let parsed = SealedTopic::parse(sealed, topic);
    let mut roles = vec![
        Role::Subscriber("dash".into()),
        Role::Subscriber("ops".into()),
    ];
    if let Ok(id) = envelope::normalise_device_id(raw_id) {
        roles.push(Role::Device(id));
    }
    for role in &roles {
        if acl.may_publish(role, topic) {
            match role {
                // A device's publish is one the verifier files under it.
                Role::Device(id) => match &parsed {
                    Ok(t) => assert_eq!(&t.device_id, id, "published under another id"),
                    Err(e) => assert_eq!(*e, Malformed::StreamTooLong, "{e:?}"),
                },
                // Nobody but the gateway writes clean, events or sealed.
                Role::Subscriber(_) => {
                    for reserved in [
                        sealed,
                        c.topics.clean.as_str(),
                        c.topics.events.as_str(),
                        c.topics.unverified.as_str(),
                    ] {
                        assert!(!under(topic, reserved), "subscriber writes {reserved}");
                    }
                }
            }
        }
        if let (Ok(f), true) = (
            routed,
            valid && acl.may_subscribe(role, filter) && delivered,
        ) {
            // Sealed topics never enter the router, so a wildcard of an
            // account granted everything may match them; but no device's
            // filter does, and no granted filter names the sealed prefix.
            if under(topic, sealed) {
                assert!(
                    matches!(role, Role::Subscriber(_)),
                    "a device's granted filter reads sealed topics"
                );
                assert!(!under(f, sealed), "a granted filter names sealed/");
            }
            // The tenants' mounts: only a grant covering all of them (ops's).
            if under(topic, &c.topics.tenants) {
                assert!(
                    matches!(role, Role::Subscriber(n) if n == "ops"),
                    "{role:?} reads a tenant's mount"
                );
            }
        }
    }
}

/// Whether the router delivers `topic` to `filter` (rumqttd's matcher).
/// Only topics the front door lets through reach it: rumqttd 0.20's
/// `matches` panics on a first character that is multi-byte
/// (docs/fuzzing.md), which `topic::router_takes` refuses.
fn routes(topic: &str, filter: &str) -> bool {
    if !rumqttd::protocol::valid_topic(topic)
        || topic::topic_name(topic.as_bytes())
            .and_then(topic::router_takes)
            .is_err()
    {
        return false;
    }
    rumqttd::protocol::matches(topic, filter)
}

fn under(topic: &str, prefix: &str) -> bool {
    topic == prefix
        || topic
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with('/'))
}
