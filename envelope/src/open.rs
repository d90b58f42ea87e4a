//! Reading envelopes off the wire and opening them (spec sections 4, 5, 7).
//! Parsing performs no cryptography; nothing parsed is trusted until
//! [`Envelope::mac_matches`] says so.

use hmac::Mac;

use crate::seal::{mac_head, Enc, BINARY_MAGIC, BINARY_MIN, IV_LEN, MAC_LEN};
use crate::Malformed;

/// An envelope read off the wire. `body` is the plaintext when `enc` is
/// `None`, the ciphertext otherwise; it borrows the frame for
/// [`parse_binary`] and is owned for [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<B> {
    pub kid: u32,
    pub nonce: u64,
    pub enc: Enc,
    pub body: B,
    pub mac: [u8; MAC_LEN],
}

impl<B: AsRef<[u8]>> Envelope<B> {
    /// Constant-time check of the MAC under `k_mac`, binding the normalised
    /// device id and the stream taken from the topic.
    pub fn mac_matches(&self, k_mac: &[u8; 32], device_id: &str, stream: &str) -> bool {
        let mut m = mac_head(k_mac, device_id, stream, self.kid, self.nonce, &self.enc);
        m.update(self.body.as_ref());
        // `verify_slice` compares in constant time.
        m.verify_slice(&self.mac).is_ok()
    }
}

/// Reads a binary frame (`S` `G` 0x01) without copying it.
pub fn parse_binary(frame: &[u8]) -> Result<Envelope<&[u8]>, Malformed> {
    if !frame.starts_with(BINARY_MAGIC) {
        return Err(Malformed::NotEnvelope);
    }
    if frame.len() < BINARY_MIN {
        return Err(Malformed::TooShort);
    }
    let kid = u32::from_be_bytes(frame[4..8].try_into().expect("4 bytes"));
    let nonce = u64::from_be_bytes(frame[8..16].try_into().expect("8 bytes"));
    if kid == 0 {
        return Err(Malformed::Kid);
    }
    if nonce == 0 {
        return Err(Malformed::Nonce);
    }
    let (enc, rest) = match frame[3] {
        0 => (Enc::None, &frame[16..]),
        1 if frame.len() >= BINARY_MIN + IV_LEN => {
            let iv: [u8; IV_LEN] = frame[16..32].try_into().expect("16 bytes");
            (Enc::Aes128Cbc(iv), &frame[32..])
        }
        1 => return Err(Malformed::TooShort),
        _ => return Err(Malformed::Enc),
    };
    let (body, mac) = rest.split_at(rest.len() - MAC_LEN);
    Ok(Envelope {
        kid,
        nonce,
        enc,
        body,
        mac: mac.try_into().expect("32 bytes"),
    })
}

#[cfg(feature = "alloc")]
pub use owned::*;

#[cfg(feature = "alloc")]
mod owned {
    use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    use alloc::vec::Vec;

    use super::{Enc, Envelope};

    /// An envelope whose body it owns.
    pub type Parsed = Envelope<Vec<u8>>;

    /// The plaintext of a message whose MAC has already been checked. `None`
    /// means the padding was wrong: the spec's `decrypt_failed`.
    pub fn open_body(parsed: Parsed, k_enc: &[u8; 16]) -> Option<Vec<u8>> {
        match parsed.enc {
            Enc::None => Some(parsed.body),
            Enc::Aes128Cbc(iv) => {
                let mut body = parsed.body;
                let n = cbc::Decryptor::<aes::Aes128>::new(k_enc.into(), &iv.into())
                    .decrypt_padded_mut::<Pkcs7>(&mut body)
                    .ok()?
                    .len();
                body.truncate(n);
                Some(body)
            }
        }
    }
}

#[cfg(feature = "json")]
pub use json::*;

#[cfg(feature = "json")]
mod json {
    use alloc::string::String;
    use alloc::vec::Vec;

    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use serde::Deserialize;
    use serde_json::Value;

    use super::{parse_binary, Envelope, Parsed};
    use crate::seal::{Enc, BINARY_MAGIC, MAC_LEN};
    use crate::Malformed;

    /// Reads a payload as a JSON envelope (first non-space byte `{`) or a
    /// binary frame (`S` `G` 0x01). Performs no cryptography.
    pub fn parse(payload: &[u8]) -> Result<Parsed, Malformed> {
        if payload.starts_with(BINARY_MAGIC) {
            return parse_binary(payload).map(|e| Envelope {
                kid: e.kid,
                nonce: e.nonce,
                enc: e.enc,
                body: e.body.to_vec(),
                mac: e.mac,
            });
        }
        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => parse_json(payload),
            _ => Err(Malformed::NotEnvelope),
        }
    }

    /// Whether a payload that failed to parse was meant as an envelope: a
    /// binary frame, or JSON naming `v` or `mac`. With unsealed traffic
    /// allowed, only payloads that are not trying to be envelopes go to
    /// `unverified/`; a broken envelope stays `malformed`.
    pub fn looks_sealed(payload: &[u8]) -> bool {
        if payload.starts_with(BINARY_MAGIC) {
            return true;
        }
        match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(map)) => map.contains_key("v") || map.contains_key("mac"),
            Ok(_) => false,
            // Not JSON at all, or broken JSON: judge by the field names.
            Err(_) => {
                let text = String::from_utf8_lossy(payload);
                text.contains("\"mac\"") || text.contains("\"v\"")
            }
        }
    }

    /// Known fields of the JSON form. Each is a raw value so that every rule
    /// can be checked and named; serde refuses duplicate keys, which would
    /// otherwise let two readers of one payload disagree.
    #[derive(Deserialize)]
    struct JsonFields {
        v: Option<Value>,
        kid: Option<Value>,
        nonce: Option<Value>,
        enc: Option<Value>,
        iv: Option<Value>,
        payload: Option<Value>,
        mac: Option<Value>,
    }

    fn parse_json(payload: &[u8]) -> Result<Parsed, Malformed> {
        let f: JsonFields = serde_json::from_slice(payload).map_err(|_| Malformed::Json)?;
        if f.v.as_ref().and_then(Value::as_u64) != Some(1) {
            return Err(Malformed::Version);
        }
        let kid = match &f.kid {
            None => 1,
            Some(v) => v
                .as_u64()
                .and_then(|k| u32::try_from(k).ok())
                .filter(|k| *k >= 1)
                .ok_or(Malformed::Kid)?,
        };
        let nonce = f
            .nonce
            .as_ref()
            .and_then(Value::as_u64)
            .filter(|n| *n >= 1)
            .ok_or(Malformed::Nonce)?;
        let aes = match f.enc.as_ref().map(|v| v.as_str()) {
            None | Some(Some("none")) => false,
            Some(Some("aes-128-cbc")) => true,
            Some(_) => return Err(Malformed::Enc),
        };
        let enc = match (aes, &f.iv) {
            (false, None) => Enc::None,
            (true, Some(Value::String(s))) => {
                let iv = B64.decode(s).map_err(|_| Malformed::Iv)?;
                Enc::Aes128Cbc(iv.try_into().map_err(|_| Malformed::Iv)?)
            }
            _ => return Err(Malformed::Iv),
        };
        let body: Vec<u8> = match &f.payload {
            Some(Value::String(s)) => B64.decode(s).map_err(|_| Malformed::Payload)?,
            _ => return Err(Malformed::Payload),
        };
        let mac = match &f.mac {
            Some(Value::String(s)) if s.len() == 2 * MAC_LEN => {
                let mut mac = [0u8; MAC_LEN];
                hex::decode_to_slice(s, &mut mac).map_err(|_| Malformed::Mac)?;
                mac
            }
            _ => return Err(Malformed::Mac),
        };
        Ok(Envelope {
            kid,
            nonce,
            enc,
            body,
            mac,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tells_broken_envelopes_from_plain_payloads() {
            assert!(looks_sealed(b"SG\x01"));
            assert!(looks_sealed(br#"{"v":1,"nonce":"x"}"#));
            assert!(looks_sealed(br#"{"mac":"00"#));
            assert!(!looks_sealed(br#"{"temp":21.5}"#));
            assert!(!looks_sealed(b"raw reading 42"));
            assert!(!looks_sealed(b"[1,2]"));
        }
    }
}
