//! The two encodings of a sealed message (spec sections 4 and 5).

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use super::{DeviceKeys, Malformed};

pub const MAC_LEN: usize = 32;
const IV_LEN: usize = 16;
const BINARY_MAGIC: &[u8; 3] = b"SG\x01";
/// "SG" 0x01, enc, kid, nonce, mac: the smallest binary frame.
const BINARY_MIN: usize = 3 + 1 + 4 + 8 + MAC_LEN;

/// Body encryption. `Aes128Cbc` carries the message's IV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    None,
    Aes128Cbc([u8; IV_LEN]),
}

/// An envelope read off the wire. Nothing in it is trusted until
/// [`Parsed::mac_matches`] says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub kid: u32,
    pub nonce: u64,
    pub enc: Enc,
    /// Plaintext when `enc` is `None`, ciphertext otherwise.
    pub body: Vec<u8>,
    pub mac: [u8; MAC_LEN],
}

/// Reads a payload as a JSON envelope (first non-space byte `{`) or a binary
/// frame (`S` `G` 0x01). Performs no cryptography.
pub fn parse(payload: &[u8]) -> Result<Parsed, Malformed> {
    if payload.starts_with(BINARY_MAGIC) {
        return parse_binary(payload);
    }
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => parse_json(payload),
        _ => Err(Malformed::NotEnvelope),
    }
}

/// Whether a payload that failed to parse was meant as an envelope: a binary
/// frame, or JSON naming `v` or `mac`. With unsealed traffic allowed, only
/// payloads that are not trying to be envelopes go to `unverified/`; a broken
/// envelope stays `malformed`.
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

/// Known fields of the JSON form. Each is a raw value so that every rule can
/// be checked and named; serde refuses duplicate keys, which would otherwise
/// let two readers of one payload disagree.
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
    let body = match &f.payload {
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
    Ok(Parsed {
        kid,
        nonce,
        enc,
        body,
        mac,
    })
}

fn parse_binary(frame: &[u8]) -> Result<Parsed, Malformed> {
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
    Ok(Parsed {
        kid,
        nonce,
        enc,
        body: body.to_vec(),
        mac: mac.try_into().expect("32 bytes"),
    })
}

/// The MAC of spec section 4, computed without assembling `mac_input`.
fn compute_mac(
    k_mac: &[u8; 32],
    device_id: &str,
    stream: &str,
    kid: u32,
    nonce: u64,
    enc: &Enc,
    body: &[u8],
) -> [u8; MAC_LEN] {
    let mut m = Hmac::<Sha256>::new_from_slice(k_mac).expect("HMAC accepts any key length");
    m.update(b"SGv1");
    // Callers guarantee a normalised id (<= 64 bytes) and a stream <= 200 bytes.
    m.update(&[device_id.len() as u8]);
    m.update(device_id.as_bytes());
    m.update(&(stream.len() as u16).to_be_bytes());
    m.update(stream.as_bytes());
    m.update(&kid.to_be_bytes());
    m.update(&nonce.to_be_bytes());
    match enc {
        Enc::None => m.update(&[0]),
        Enc::Aes128Cbc(iv) => {
            m.update(&[1]);
            m.update(iv);
        }
    }
    m.update(body);
    m.finalize().into_bytes().into()
}

impl Parsed {
    /// Constant-time check of the MAC under `k_mac`, binding the normalised
    /// device id and the stream taken from the topic.
    pub fn mac_matches(&self, k_mac: &[u8; 32], device_id: &str, stream: &str) -> bool {
        use subtle::ConstantTimeEq;
        let expected = compute_mac(
            k_mac, device_id, stream, self.kid, self.nonce, &self.enc, &self.body,
        );
        bool::from(expected.ct_eq(&self.mac))
    }
}

/// The plaintext of a message whose MAC has already been checked. `None`
/// means the padding was wrong: the spec's `decrypt_failed`.
pub fn open_body(parsed: Parsed, k_enc: &[u8; 16]) -> Option<Vec<u8>> {
    match parsed.enc {
        Enc::None => Some(parsed.body),
        Enc::Aes128Cbc(iv) => cbc::Decryptor::<aes::Aes128>::new(k_enc.into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&parsed.body)
            .ok(),
    }
}

/// What a device seals. `iv: Some(..)` encrypts; devices must use a fresh
/// random IV for every message.
#[derive(Debug, Clone)]
pub struct SealInput<'a> {
    pub device_id: &'a str,
    pub stream: &'a str,
    pub kid: u32,
    pub nonce: u64,
    pub iv: Option<[u8; IV_LEN]>,
    pub plaintext: &'a [u8],
    pub binary: bool,
}

/// Seals a message the way a device does; the output is byte for byte what
/// the reference implementation writes (compact JSON, `enc` and `iv` only when
/// encrypting).
pub fn seal(keys: &DeviceKeys, m: &SealInput<'_>) -> Vec<u8> {
    let (enc, body) = match m.iv {
        None => (Enc::None, m.plaintext.to_vec()),
        Some(iv) => (
            Enc::Aes128Cbc(iv),
            cbc::Encryptor::<aes::Aes128>::new((&keys.enc).into(), &iv.into())
                .encrypt_padded_vec_mut::<Pkcs7>(m.plaintext),
        ),
    };
    let mac = compute_mac(
        &keys.mac,
        m.device_id,
        m.stream,
        m.kid,
        m.nonce,
        &enc,
        &body,
    );
    if m.binary {
        let mut out = Vec::with_capacity(BINARY_MIN + IV_LEN + body.len());
        out.extend_from_slice(BINARY_MAGIC);
        out.push(matches!(enc, Enc::Aes128Cbc(_)) as u8);
        out.extend_from_slice(&m.kid.to_be_bytes());
        out.extend_from_slice(&m.nonce.to_be_bytes());
        if let Enc::Aes128Cbc(iv) = &enc {
            out.extend_from_slice(iv);
        }
        out.extend_from_slice(&body);
        out.extend_from_slice(&mac);
        return out;
    }
    let mut out = format!("{{\"v\":1,\"kid\":{},\"nonce\":{}", m.kid, m.nonce);
    if let Enc::Aes128Cbc(iv) = &enc {
        out.push_str(",\"enc\":\"aes-128-cbc\",\"iv\":\"");
        out.push_str(&B64.encode(iv));
        out.push('"');
    }
    out.push_str(",\"payload\":\"");
    out.push_str(&B64.encode(&body));
    out.push_str("\",\"mac\":\"");
    out.push_str(&hex::encode(mac));
    out.push_str("\"}");
    out.into_bytes()
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
