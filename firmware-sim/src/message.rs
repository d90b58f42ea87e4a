//! What one simulated message carries, and how to recognise it again when it
//! comes back on `clean/`. Sealing itself is a library's job (the Rust
//! envelope crate, or the C library devices run); this module only chooses
//! the plaintext, the nonce, the topic and which library seals.

use clap::ValueEnum;
use rand::Rng;
use sealgate_envelope::{self as envelope, DeviceKeys, SealInput};
use serde::Deserialize;

use crate::c_sealer::CDevice;
use crate::fleet::SimDevice;

/// `--impl`: which library seals the devices' messages and makes their
/// connect passwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SealImpl {
    /// sealgate-envelope, the gateway's own codec.
    Rust,
    /// The C library of firmware-sim/c (mbedTLS) over FFI, as firmware runs it.
    C,
}

impl SealImpl {
    pub fn name(self) -> &'static str {
        match self {
            SealImpl::Rust => "rust",
            SealImpl::C => "c",
        }
    }
}

/// A device's sealing library, with whatever state it keeps.
#[derive(Debug)]
pub enum Sealer {
    /// Seals with the device's `DeviceKeys`.
    Rust,
    /// Holds the C library's own copy of the keys.
    C(Box<CDevice>),
}

/// How a device seals, shared by every message of a run.
#[derive(Debug, Clone, Copy)]
pub struct SealStyle {
    pub binary: bool,
    pub encrypt: bool,
}

/// Milliseconds since the Unix epoch; 0 if the clock is before 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The first nonce of a run. Devices keep no state between runs, so the
/// counter starts from the wall clock: a run started a millisecond later
/// starts 1000 above, which outruns any earlier run unless it sent more than
/// 1000 messages per device per millisecond of its own length.
pub fn first_nonce(now_ms: u64) -> u64 {
    now_ms.saturating_mul(1000).max(1)
}

/// The plaintext `{"n":<nonce>,"pad":"xxx…"}`, padded to `size` bytes so the
/// payload size is under the caller's control, but never shorter than the
/// skeleton: the nonce must survive so deliveries can be matched.
pub fn plaintext(nonce: u64, size: usize) -> Vec<u8> {
    let head = format!("{{\"n\":{nonce},\"pad\":\"");
    let tail = "\"}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut out = Vec::with_capacity(head.len() + pad + tail.len());
    out.extend_from_slice(head.as_bytes());
    out.resize(head.len() + pad, b'x');
    out.extend_from_slice(tail.as_bytes());
    out
}

/// `{prefix}/{device}/{stream}`, or `{prefix}/{device}` for the empty stream,
/// as spec section 2 names topics.
pub fn topic(prefix: &str, device_id: &str, stream: &str) -> String {
    if stream.is_empty() {
        format!("{prefix}/{device_id}")
    } else {
        format!("{prefix}/{device_id}/{stream}")
    }
}

/// The device id level of `{prefix}/{device}[/...]`, or `None` for topics
/// outside the prefix.
pub fn device_of<'t>(prefix: &str, topic: &'t str) -> Option<&'t str> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let id = rest.split('/').next().unwrap_or(rest);
    (!id.is_empty()).then_some(id)
}

#[derive(Deserialize)]
struct Probe {
    n: Option<u64>,
}

/// The nonce a clean payload stands for. A verifying gateway delivers our
/// plaintext, which carries `"n"`; a gateway in passthrough mode forwards the
/// envelope itself, whose nonce the library reads.
pub fn nonce_in_clean(payload: &[u8]) -> Option<u64> {
    if let Ok(Probe { n: Some(n) }) = serde_json::from_slice::<Probe>(payload) {
        return Some(n);
    }
    envelope::parse(payload).ok().map(|p| p.nonce)
}

/// Seals `plaintext` as `dev` does for `stream`, with the library the run
/// chose.
pub fn seal_as(
    dev: &SimDevice,
    stream: &str,
    nonce: u64,
    plaintext: &[u8],
    style: SealStyle,
) -> Result<Vec<u8>, String> {
    match &dev.sealer {
        Sealer::Rust => seal(&dev.keys, &dev.id, dev.kid, stream, nonce, plaintext, style),
        Sealer::C(c) => c.seal(stream, nonce, plaintext, style.binary, style.encrypt),
    }
}

/// Seals `plaintext` in Rust as `device_id` would for `stream`, with a fresh
/// random IV when encrypting, as the spec requires of devices. Also seals
/// with keys no device has, for the attacks.
pub fn seal(
    keys: &DeviceKeys,
    device_id: &str,
    kid: u32,
    stream: &str,
    nonce: u64,
    plaintext: &[u8],
    style: SealStyle,
) -> Result<Vec<u8>, String> {
    let iv = style.encrypt.then(|| rand::thread_rng().gen::<[u8; 16]>());
    envelope::seal(
        keys,
        &SealInput {
            device_id,
            stream,
            kid,
            nonce,
            iv,
            plaintext,
            binary: style.binary,
        },
    )
    .map_err(|e| format!("cannot seal: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_padded_to_size() {
        let p = plaintext(42, 128);
        assert_eq!(p.len(), 128);
        let v: serde_json::Value = serde_json::from_slice(&p).expect("valid JSON");
        assert_eq!(v["n"], 42);
        assert!(v["pad"]
            .as_str()
            .is_some_and(|s| s.bytes().all(|b| b == b'x')));
    }

    #[test]
    fn plaintext_never_shorter_than_skeleton() {
        let p = plaintext(1_700_000_000_000_000, 1);
        assert_eq!(p, br#"{"n":1700000000000000,"pad":""}"#);
        let exact = p.len();
        assert_eq!(plaintext(1_700_000_000_000_000, exact), p);
        assert_eq!(plaintext(1_700_000_000_000_000, exact + 1).len(), exact + 1);
    }

    #[test]
    fn first_nonce_is_positive_and_moves_with_the_clock() {
        assert_eq!(first_nonce(0), 1);
        assert_eq!(first_nonce(5), 5000);
        assert!(first_nonce(u64::MAX) > 0);
    }

    #[test]
    fn topics_round_trip() {
        assert_eq!(topic("sealed", "d1", "telemetry"), "sealed/d1/telemetry");
        assert_eq!(topic("sealed", "d1", ""), "sealed/d1");
        assert_eq!(device_of("clean", "clean/d1/telemetry"), Some("d1"));
        assert_eq!(device_of("clean", "clean/d1"), Some("d1"));
        assert_eq!(device_of("clean", "cleanx/d1"), None);
        assert_eq!(device_of("clean", "clean/"), None);
        assert_eq!(
            device_of("sealgate/events", "sealgate/events/d1"),
            Some("d1")
        );
    }

    #[test]
    fn nonce_found_in_plaintext_and_in_passthrough_envelopes() {
        assert_eq!(nonce_in_clean(&plaintext(77, 64)), Some(77));
        let keys = DeviceKeys::from_secret(&[3; 32]);
        for binary in [false, true] {
            for encrypt in [false, true] {
                let pt = plaintext(99, 64);
                let sealed = seal(
                    &keys,
                    "d1",
                    1,
                    "t",
                    1234,
                    &pt,
                    SealStyle { binary, encrypt },
                )
                .expect("seals");
                assert_eq!(
                    nonce_in_clean(&sealed),
                    Some(1234),
                    "binary={binary} enc={encrypt}"
                );
            }
        }
        assert_eq!(nonce_in_clean(b"hello"), None);
        assert_eq!(nonce_in_clean(br#"{"x":1}"#), None);
    }
}
