//! The legacy EcoWatt-style envelope that fleets already in the field send:
//! `{"nonce": <u32>, "payload": <base64>, "mac": <hex>, "encrypted": <bool>}`
//! with MAC = HMAC-SHA256(psk_hmac, u32be(nonce) ‖ plaintext) and optional
//! AES-128-CBC under a fixed key and IV (see `legacy-vectors.json`).
//!
//! It is weak by design (fixed IV, MAC over the plaintext, keys shared across
//! a fleet, nothing binds the device or topic) and is accepted only so such
//! fleets can move to v1 without reflashing on the day the gateway changes.
//! Because the MAC covers the plaintext, an encrypted message must be
//! decrypted before it can be checked. [`open`] therefore reports a wrong
//! padding and a wrong MAC identically, and does the same work for both, so
//! the answer is no padding oracle.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecryptMut, KeyIvInit};
use alloc::vec::Vec;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::Mac;
use serde::Deserialize;
use serde_json::Value;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::keys::HmacSha256;
use crate::Malformed;

const BLOCK: usize = 16;

/// A legacy device's pre-shared keys, as its firmware holds them. `Debug`
/// never prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct LegacyKeys {
    pub psk_hmac: Vec<u8>,
    pub psk_aes: [u8; 16],
    pub iv: [u8; 16],
}

impl core::fmt::Debug for LegacyKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LegacyKeys(..)")
    }
}

/// A legacy envelope read off the wire; nothing in it is trusted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyEnvelope {
    pub nonce: u32,
    pub encrypted: bool,
    /// The plaintext, or the ciphertext when `encrypted`.
    pub body: Vec<u8>,
    pub mac: [u8; 32],
}

#[derive(Deserialize)]
struct Fields {
    nonce: Option<Value>,
    payload: Option<Value>,
    mac: Option<Value>,
    encrypted: Option<Value>,
}

/// Reads a legacy envelope. Unknown fields (`compressed`, ...) are ignored as
/// the old server ignored them; duplicate fields are refused. The MAC may be
/// hex of either case: the old server compared case-insensitively.
pub fn parse(payload: &[u8]) -> Result<LegacyEnvelope, Malformed> {
    let f: Fields = serde_json::from_slice(payload).map_err(|_| Malformed::Json)?;
    let nonce = f
        .nonce
        .as_ref()
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .ok_or(Malformed::Nonce)?;
    let encrypted = match f.encrypted {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(Malformed::Enc),
    };
    let body = match &f.payload {
        Some(Value::String(s)) => B64.decode(s).map_err(|_| Malformed::Payload)?,
        _ => return Err(Malformed::Payload),
    };
    let mac = match &f.mac {
        Some(Value::String(s)) if s.len() == 64 => {
            let mut mac = [0u8; 32];
            hex::decode_to_slice(s, &mut mac).map_err(|_| Malformed::Mac)?;
            mac
        }
        _ => return Err(Malformed::Mac),
    };
    Ok(LegacyEnvelope {
        nonce,
        encrypted,
        body,
        mac,
    })
}

fn mac_start(keys: &LegacyKeys, nonce: u32) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(&keys.psk_hmac).expect("HMAC accepts any key length");
    m.update(&nonce.to_be_bytes());
    m
}

/// The plaintext of a legacy message whose MAC checks, or `None` for any
/// failure (wrong MAC, wrong padding, a ciphertext that is not whole
/// blocks): the caller reports all of them as `bad_mac`.
///
/// For an encrypted body the work does not depend on the padding: the MAC is
/// computed for each of the 16 lengths the padding could give, the one the
/// padding names is selected in constant time, and a bad padding only clears
/// a flag at the end. Time depends on the body's length, which the attacker
/// already knows.
pub fn open(env: &LegacyEnvelope, keys: &LegacyKeys) -> Option<Vec<u8>> {
    if !env.encrypted {
        let mut m = mac_start(keys, env.nonce);
        m.update(&env.body);
        return m.verify_slice(&env.mac).is_ok().then(|| env.body.clone());
    }
    let n = env.body.len();
    if n == 0 || n % BLOCK != 0 {
        // Public from the length alone: no oracle in saying so early.
        return None;
    }
    let mut plain = env.body.clone();
    let mut cipher = cbc::Decryptor::<aes::Aes128>::new((&keys.psk_aes).into(), (&keys.iv).into());
    for block in plain.chunks_exact_mut(BLOCK) {
        cipher.decrypt_block_mut(GenericArray::from_mut_slice(block));
    }
    // PKCS#7: the last byte p in 1..=16, and the last p bytes all equal p.
    let last = &plain[n - BLOCK..];
    let p = last[BLOCK - 1];
    let mut pad_ok = !p.ct_eq(&0) & (p.ct_eq(&16) | subtle::Choice::from((p < 16) as u8));
    for (i, b) in last.iter().enumerate() {
        // Byte i of the last block is padding when i >= 16 - p.
        let in_pad = subtle::Choice::from(((BLOCK - i) as u8 <= p) as u8);
        pad_ok &= !in_pad | b.ct_eq(&p);
    }
    // The MAC for each candidate length n-16 ..= n-1, then the one p names.
    let mut m = mac_start(keys, env.nonce);
    m.update(&plain[..n - BLOCK]);
    let mut expected = [0u8; 32];
    for k in 0..BLOCK {
        let mut c = m.clone();
        c.update(&last[..k]);
        let tag: [u8; 32] = c.finalize().into_bytes().into();
        // Length n-16+k means padding 16-k.
        let pick = ((BLOCK - k) as u8).ct_eq(&p);
        for (e, t) in expected.iter_mut().zip(tag.iter()) {
            e.conditional_assign(t, pick);
        }
    }
    let ok = pad_ok & expected.ct_eq(&env.mac);
    if bool::from(ok) {
        plain.truncate(n - usize::from(p));
        Some(plain)
    } else {
        None
    }
}

/// Seals as legacy firmware does (field order and spacing of its JSON), for
/// simulators and tests; the gateway never seals this format.
pub fn seal(keys: &LegacyKeys, nonce: u32, plaintext: &[u8], encrypted: bool) -> Vec<u8> {
    use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut};
    let mut m = mac_start(keys, nonce);
    m.update(plaintext);
    let mac = m.finalize().into_bytes();
    let body = if encrypted {
        let mut buf = alloc::vec![0u8; (plaintext.len() / BLOCK + 1) * BLOCK];
        let n = cbc::Encryptor::<aes::Aes128>::new((&keys.psk_aes).into(), (&keys.iv).into())
            .encrypt_padded_b2b_mut::<Pkcs7>(plaintext, &mut buf)
            .expect("room for the padding")
            .len();
        buf.truncate(n);
        buf
    } else {
        plaintext.to_vec()
    };
    let mut out = alloc::format!("{{\"nonce\": {nonce}, \"payload\": \"");
    out.push_str(&B64.encode(&body));
    out.push_str("\", \"mac\": \"");
    let mut hex_mac = [0u8; 64];
    hex::encode_to_slice(mac, &mut hex_mac).expect("64 bytes for 32");
    out.push_str(core::str::from_utf8(&hex_mac).unwrap_or(""));
    out.push_str(if encrypted {
        "\", \"encrypted\": true}"
    } else {
        "\", \"encrypted\": false}"
    });
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> LegacyKeys {
        LegacyKeys {
            psk_hmac: alloc::vec![7; 32],
            psk_aes: [9; 16],
            iv: [1; 16],
        }
    }

    #[test]
    fn round_trips_every_length() {
        for len in 0..70 {
            let plain: Vec<u8> = (0..len as u8).collect();
            for encrypted in [false, true] {
                let sealed = seal(&keys(), 42, &plain, encrypted);
                let env = parse(&sealed).unwrap();
                assert_eq!(
                    open(&env, &keys()),
                    Some(plain.clone()),
                    "{len} {encrypted}"
                );
            }
        }
    }

    /// A body whose padding is wrong and one whose MAC is wrong get the same
    /// answer. (Timing is argued in `open`'s comment, not measured here.)
    #[test]
    fn bad_padding_and_bad_mac_look_alike() {
        let sealed = seal(&keys(), 5, b"sixteen byte msg", true);
        let env = parse(&sealed).unwrap();
        let mut bad_mac = env.clone();
        bad_mac.mac[0] ^= 1;
        assert_eq!(open(&bad_mac, &keys()), None);
        // Flip the last byte of the second-to-last block: the padding breaks.
        let mut bad_pad = env.clone();
        let n = bad_pad.body.len();
        bad_pad.body[n - 17] ^= 0x5a;
        assert_eq!(open(&bad_pad, &keys()), None);
        let mut torn = env.clone();
        torn.body.pop();
        assert_eq!(open(&torn, &keys()), None);
    }

    #[test]
    fn refuses_what_the_format_does_not_allow() {
        let ok = r#"{"nonce": 1, "payload": "", "mac": "00000000000000000000000000000000000000000000000000000000000000AA"}"#;
        assert!(parse(ok.as_bytes()).is_ok());
        for (bad, why) in [
            (
                r#"{"nonce": 0, "payload": "", "mac": ""}"#,
                Malformed::Nonce,
            ),
            (
                r#"{"nonce": 4294967296, "payload": "", "mac": ""}"#,
                Malformed::Nonce,
            ),
            (r#"{"nonce": 1, "payload": ""}"#, Malformed::Mac),
            (r#"{"nonce": 1, "mac": ""}"#, Malformed::Payload),
            (
                r#"{"nonce": 1, "payload": "", "mac": "", "encrypted": 1}"#,
                Malformed::Enc,
            ),
            (r#"{"nonce": 1, "nonce": 2}"#, Malformed::Json),
            ("[]", Malformed::Json),
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(why), "{bad}");
        }
    }
}
