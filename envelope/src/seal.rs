//! Sealing: the MAC of spec section 4 and both encodings of section 5,
//! written straight into the caller's buffer.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::Mac;

use crate::id::{DeviceId, MAX_STREAM_LEN};
use crate::keys::{DeviceKeys, HmacSha256};

pub const MAC_LEN: usize = 32;
pub const IV_LEN: usize = 16;
pub(crate) const BINARY_MAGIC: &[u8; 3] = b"SG\x01";
/// "SG" 0x01, enc, kid, nonce, mac: the smallest binary frame.
pub(crate) const BINARY_MIN: usize = 3 + 1 + 4 + 8 + MAC_LEN;
const BLOCK: usize = 16;
/// A multiple of both the AES block and a base64 group, so ciphertext can be
/// encoded chunk by chunk without a buffer for all of it.
const CHUNK: usize = 3 * BLOCK;

const JSON_HEAD: &[u8] = br#"{"v":1,"kid":"#;
const JSON_NONCE: &[u8] = br#","nonce":"#;
const JSON_IV: &[u8] = br#","enc":"aes-128-cbc","iv":""#;
const JSON_PAYLOAD: &[u8] = br#"","payload":""#;
const JSON_PAYLOAD_NO_IV: &[u8] = br#","payload":""#;
const JSON_MAC: &[u8] = br#"","mac":""#;
const JSON_TAIL: &[u8] = br#""}"#;

/// Body encryption. `Aes128Cbc` carries the message's IV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    None,
    Aes128Cbc([u8; IV_LEN]),
}

/// What a device seals. `iv: Some(..)` encrypts; devices must use a fresh
/// random IV for every message.
#[derive(Debug, Clone)]
pub struct SealInput<'a> {
    /// Normalised (see [`DeviceId`]).
    pub device_id: &'a str,
    pub stream: &'a str,
    pub kid: u32,
    pub nonce: u64,
    pub iv: Option<[u8; IV_LEN]>,
    pub plaintext: &'a [u8],
    pub binary: bool,
}

/// Why [`seal_into`] wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The buffer is shorter than [`sealed_len`].
    BufferTooSmall {
        needed: usize,
    },
    /// The device id is not in normal form, so the MAC would not bind it.
    DeviceId,
    StreamTooLong,
}

impl core::fmt::Display for SealError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SealError::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: {needed} bytes needed")
            }
            SealError::DeviceId => f.write_str("device id is not normalised"),
            SealError::StreamTooLong => f.write_str("stream longer than 200 bytes"),
        }
    }
}

impl core::error::Error for SealError {}

/// The MAC state after everything but the body: callers feed the body
/// (plaintext, or ciphertext when encrypted) and finalise. Shared by sealing
/// and checking, so both hash the same bytes.
/// `K_mac` with HMAC's key schedule already run (the inner and outer pads
/// hashed): a verifier that keeps one per device saves two of the five or so
/// SHA-256 blocks a short message's MAC costs.
#[derive(Clone)]
pub struct MacKey(pub(crate) HmacSha256);

impl MacKey {
    pub fn new(k_mac: &[u8; 32]) -> MacKey {
        MacKey(HmacSha256::new_from_slice(k_mac).expect("HMAC accepts any key length"))
    }
}

impl core::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

pub(crate) fn mac_head_keyed(
    mut m: HmacSha256,
    device_id: &str,
    stream: &str,
    kid: u32,
    nonce: u64,
    enc: &Enc,
) -> HmacSha256 {
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
    m
}

fn body_len(m: &SealInput<'_>) -> usize {
    match m.iv {
        None => m.plaintext.len(),
        Some(_) => (m.plaintext.len() / BLOCK + 1) * BLOCK,
    }
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// The exact size [`seal_into`] writes for `m`.
pub fn sealed_len(m: &SealInput<'_>) -> usize {
    let body = body_len(m);
    let iv = m.iv.is_some();
    if m.binary {
        return BINARY_MIN + if iv { IV_LEN } else { 0 } + body;
    }
    let enc = if iv {
        JSON_IV.len() + 24 + JSON_PAYLOAD.len()
    } else {
        JSON_PAYLOAD_NO_IV.len()
    };
    JSON_HEAD.len()
        + digits(m.kid.into())
        + JSON_NONCE.len()
        + digits(m.nonce)
        + enc
        + body.div_ceil(3) * 4
        + JSON_MAC.len()
        + 2 * MAC_LEN
        + JSON_TAIL.len()
}

/// Appends to a buffer already checked to be large enough.
struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    fn put_u64(&mut self, n: u64) {
        let d = digits(n);
        let mut rest = n;
        for i in (0..d).rev() {
            self.buf[self.pos + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        self.pos += d;
    }

    fn put_b64(&mut self, bytes: &[u8]) {
        self.pos += B64
            .encode_slice(bytes, &mut self.buf[self.pos..])
            .expect("room checked by sealed_len");
    }

    fn rest(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf[self.pos..self.pos + len]
    }
}

/// Seals a message the way a device does, into `out`, and returns the length
/// written: byte for byte what the reference implementation writes (compact
/// JSON, `enc` and `iv` only when encrypting). Uses no heap and no buffer
/// beyond `out` and a few dozen bytes of stack, so it fits firmware.
pub fn seal_into(keys: &DeviceKeys, m: &SealInput<'_>, out: &mut [u8]) -> Result<usize, SealError> {
    if !DeviceId::is_normal(m.device_id) {
        return Err(SealError::DeviceId);
    }
    if m.stream.len() > MAX_STREAM_LEN {
        return Err(SealError::StreamTooLong);
    }
    let needed = sealed_len(m);
    if out.len() < needed {
        return Err(SealError::BufferTooSmall { needed });
    }
    let enc = match m.iv {
        None => Enc::None,
        Some(iv) => Enc::Aes128Cbc(iv),
    };
    let mut mac = mac_head_keyed(
        MacKey::new(&keys.mac).0,
        m.device_id,
        m.stream,
        m.kid,
        m.nonce,
        &enc,
    );
    let mut w = Out { buf: out, pos: 0 };
    let body = body_len(m);
    if m.binary {
        w.put(BINARY_MAGIC);
        w.put(&[m.iv.is_some() as u8]);
        w.put(&m.kid.to_be_bytes());
        w.put(&m.nonce.to_be_bytes());
        match m.iv {
            None => w.put(m.plaintext),
            Some(iv) => {
                w.put(&iv);
                cbc::Encryptor::<aes::Aes128>::new((&keys.enc).into(), &iv.into())
                    .encrypt_padded_b2b_mut::<Pkcs7>(m.plaintext, w.rest(body))
                    .expect("room checked by sealed_len");
                w.pos += body;
            }
        }
        mac.update(&w.buf[w.pos - body..w.pos]);
        w.put(&mac.finalize().into_bytes());
        debug_assert_eq!(w.pos, needed);
        return Ok(w.pos);
    }
    w.put(JSON_HEAD);
    w.put_u64(m.kid.into());
    w.put(JSON_NONCE);
    w.put_u64(m.nonce);
    match m.iv {
        None => {
            w.put(JSON_PAYLOAD_NO_IV);
            mac.update(m.plaintext);
            w.put_b64(m.plaintext);
        }
        Some(iv) => {
            w.put(JSON_IV);
            w.put_b64(&iv);
            w.put(JSON_PAYLOAD);
            // Encrypt 48 bytes at a time, MAC the ciphertext and encode it
            // straight into the output: the whole ciphertext never exists.
            let mut cipher = cbc::Encryptor::<aes::Aes128>::new((&keys.enc).into(), &iv.into());
            let mut chunk = [0u8; CHUNK];
            let mut full = m.plaintext.chunks_exact(CHUNK);
            for plain in &mut full {
                chunk.copy_from_slice(plain);
                for block in chunk.chunks_exact_mut(BLOCK) {
                    cipher.encrypt_block_mut(GenericArray::from_mut_slice(block));
                }
                mac.update(&chunk);
                w.put_b64(&chunk);
            }
            let tail = full.remainder();
            let padded = (tail.len() / BLOCK + 1) * BLOCK;
            chunk[..tail.len()].copy_from_slice(tail);
            chunk[tail.len()..padded].fill((padded - tail.len()) as u8);
            for block in chunk[..padded].chunks_exact_mut(BLOCK) {
                cipher.encrypt_block_mut(GenericArray::from_mut_slice(block));
            }
            mac.update(&chunk[..padded]);
            w.put_b64(&chunk[..padded]);
        }
    }
    w.put(JSON_MAC);
    let tag = mac.finalize().into_bytes();
    hex::encode_to_slice(tag, w.rest(2 * MAC_LEN)).expect("64 bytes for 32");
    w.pos += 2 * MAC_LEN;
    w.put(JSON_TAIL);
    debug_assert_eq!(w.pos, needed);
    Ok(w.pos)
}

/// [`seal_into`] a new `Vec` of exactly the right size.
#[cfg(feature = "alloc")]
pub fn seal(keys: &DeviceKeys, m: &SealInput<'_>) -> Result<alloc::vec::Vec<u8>, SealError> {
    let mut out = alloc::vec![0u8; sealed_len(m)];
    let n = seal_into(keys, m, &mut out)?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> DeviceKeys {
        DeviceKeys::from_secret(&[3; 32])
    }

    #[test]
    fn length_is_exact_for_every_shape() {
        let plain = [0x5au8; 100];
        let mut buf = [0u8; 512];
        for binary in [false, true] {
            for iv in [None, Some([7u8; 16])] {
                for len in 0..100 {
                    for (kid, nonce) in [(1, 1), (9, 10), (u32::MAX, u64::MAX)] {
                        let m = SealInput {
                            device_id: "d1",
                            stream: "s",
                            kid,
                            nonce,
                            iv,
                            plaintext: &plain[..len],
                            binary,
                        };
                        assert_eq!(seal_into(&keys(), &m, &mut buf), Ok(sealed_len(&m)));
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_what_would_break_the_format() {
        let mut m = SealInput {
            device_id: "ESP32",
            stream: "s",
            kid: 1,
            nonce: 1,
            iv: None,
            plaintext: b"x",
            binary: false,
        };
        let mut buf = [0u8; 256];
        assert_eq!(seal_into(&keys(), &m, &mut buf), Err(SealError::DeviceId));
        m.device_id = "esp32";
        let needed = sealed_len(&m);
        assert_eq!(
            seal_into(&keys(), &m, &mut buf[..needed - 1]),
            Err(SealError::BufferTooSmall { needed })
        );
        let long = [b's'; 201];
        m.stream = core::str::from_utf8(&long).unwrap();
        assert_eq!(
            seal_into(&keys(), &m, &mut buf),
            Err(SealError::StreamTooLong)
        );
    }
}
