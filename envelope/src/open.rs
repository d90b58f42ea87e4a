//! Reading envelopes off the wire and opening them (spec sections 4, 5, 7).
//! Parsing performs no cryptography; nothing parsed is trusted until
//! [`Envelope::mac_matches`] says so.

use hmac::Mac;

use crate::seal::{mac_head_keyed, Enc, MacKey, BINARY_MAGIC, BINARY_MIN, IV_LEN, MAC_LEN};
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
        self.mac_matches_key(&MacKey::new(k_mac), device_id, stream)
    }

    /// [`Envelope::mac_matches`] under a key whose schedule is already run.
    pub fn mac_matches_key(&self, key: &MacKey, device_id: &str, stream: &str) -> bool {
        let mut m = mac_head_keyed(
            key.0.clone(),
            device_id,
            stream,
            self.kid,
            self.nonce,
            &self.enc,
        );
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
    use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, InnerIvInit, KeyInit};
    use alloc::vec::Vec;

    use super::{Enc, Envelope};

    /// An envelope whose body it owns.
    pub type Parsed = Envelope<Vec<u8>>;

    /// A device's decryption key with AES's key schedule already run. A
    /// gateway keeps one per device, as it keeps a [`crate::MacKey`]: the
    /// schedule costs about as much as decrypting a 128-byte body.
    #[derive(Clone)]
    pub struct DecKey(aes::Aes128Dec);

    impl DecKey {
        pub fn new(k_enc: &[u8; 16]) -> DecKey {
            DecKey(aes::Aes128Dec::new(k_enc.into()))
        }
    }

    impl core::fmt::Debug for DecKey {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("DecKey(..)")
        }
    }

    /// The plaintext of a message whose MAC has already been checked. `None`
    /// means the padding was wrong: the spec's `decrypt_failed`.
    pub fn open_body(parsed: Parsed, k_enc: &[u8; 16]) -> Option<Vec<u8>> {
        open_body_keyed(parsed, &DecKey::new(k_enc))
    }

    /// [`open_body`] under a key whose schedule is already run.
    pub fn open_body_keyed(parsed: Parsed, key: &DecKey) -> Option<Vec<u8>> {
        match parsed.enc {
            Enc::None => Some(parsed.body),
            Enc::Aes128Cbc(iv) => {
                let mut body = parsed.body;
                let n = cbc::Decryptor::inner_iv_init(key.0.clone(), &iv.into())
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

    use alloc::borrow::Cow;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    use data_encoding::HEXLOWER_PERMISSIVE;
    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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

    /// One field of the JSON form, as the rules need it: a non-negative
    /// integer, a string (its UTF-8 bytes, borrowed from the payload unless
    /// it had escapes; every rule reads bytes), or any other value (present,
    /// of the wrong type). Read instead of a
    /// `serde_json::Value`, so the fields of a message cost no allocation;
    /// `null` reads as absent, as it did through `Option<Value>`.
    enum Field<'a> {
        Num(u64),
        Str(Cow<'a, [u8]>),
        Other,
    }

    impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(FieldVisitor)
        }
    }

    struct FieldVisitor;

    impl<'de> Visitor<'de> for FieldVisitor {
        type Value = Field<'de>;

        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("a JSON value")
        }

        fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
            Ok(Field::Num(v))
        }

        fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
            Ok(u64::try_from(v).map_or(Field::Other, Field::Num))
        }

        fn visit_f64<E>(self, _: f64) -> Result<Field<'de>, E> {
            Ok(Field::Other)
        }

        fn visit_bool<E>(self, _: bool) -> Result<Field<'de>, E> {
            Ok(Field::Other)
        }

        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
            Ok(Field::Str(Cow::Borrowed(v.as_bytes())))
        }

        fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
            Ok(Field::Str(Cow::Owned(v.as_bytes().into())))
        }

        fn visit_string<E>(self, v: String) -> Result<Field<'de>, E> {
            Ok(Field::Str(Cow::Owned(v.into_bytes())))
        }

        fn visit_unit<E>(self) -> Result<Field<'de>, E> {
            Ok(Field::Other)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Field::Other)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Field::Other)
        }
    }

    impl Field<'_> {
        fn num(&self) -> Option<u64> {
            match self {
                Field::Num(n) => Some(*n),
                _ => None,
            }
        }

        fn str(&self) -> Option<&[u8]> {
            match self {
                Field::Str(s) => Some(s),
                _ => None,
            }
        }
    }

    /// Known fields of the JSON form. Each is read as a [`Field`] so that
    /// every rule can be checked and named; serde refuses duplicate keys,
    /// which would otherwise let two readers of one payload disagree.
    #[derive(Deserialize, Default)]
    struct JsonFields<'a> {
        #[serde(borrow)]
        v: Option<Field<'a>>,
        #[serde(borrow)]
        kid: Option<Field<'a>>,
        #[serde(borrow)]
        nonce: Option<Field<'a>>,
        #[serde(borrow)]
        enc: Option<Field<'a>>,
        #[serde(borrow)]
        iv: Option<Field<'a>>,
        #[serde(borrow)]
        payload: Option<Field<'a>>,
        #[serde(borrow)]
        mac: Option<Field<'a>>,
    }

    fn parse_json(payload: &[u8]) -> Result<Parsed, Malformed> {
        match plain::fields(payload) {
            Some(f) => f.envelope(),
            None => parse_json_by_serde(payload),
        }
    }

    /// The JSON form read by serde alone, without [`plain`]'s shortcut: the
    /// reference the shortcut is tested against (unit tests, fuzz corpus).
    #[doc(hidden)]
    pub fn parse_json_by_serde(payload: &[u8]) -> Result<Parsed, Malformed> {
        serde_json::from_slice::<JsonFields<'_>>(payload)
            .map_err(|_| Malformed::Json)?
            .envelope()
    }

    impl JsonFields<'_> {
        /// The spec's rules for the fields, in the order their verdicts
        /// are named.
        fn envelope(&self) -> Result<Parsed, Malformed> {
            if self.v.as_ref().and_then(Field::num) != Some(1) {
                return Err(Malformed::Version);
            }
            let kid = match &self.kid {
                None => 1,
                Some(v) => v
                    .num()
                    .and_then(|k| u32::try_from(k).ok())
                    .filter(|k| *k >= 1)
                    .ok_or(Malformed::Kid)?,
            };
            let nonce = self
                .nonce
                .as_ref()
                .and_then(Field::num)
                .filter(|n| *n >= 1)
                .ok_or(Malformed::Nonce)?;
            let aes = match self.enc.as_ref().map(Field::str) {
                None | Some(Some(b"none")) => false,
                Some(Some(b"aes-128-cbc")) => true,
                Some(_) => return Err(Malformed::Enc),
            };
            let enc = match (aes, self.iv.as_ref().map(Field::str)) {
                (false, None) => Enc::None,
                (true, Some(Some(s))) => {
                    // Room for any base64 string a 16-byte IV could be, so a
                    // longer one is told by its length, not by the buffer.
                    let mut iv = [0u8; 24];
                    let n = B64.decode_slice(s, &mut iv).map_err(|_| Malformed::Iv)?;
                    Enc::Aes128Cbc(iv[..n].try_into().map_err(|_| Malformed::Iv)?)
                }
                _ => return Err(Malformed::Iv),
            };
            let body: Vec<u8> = match self.payload.as_ref().and_then(Field::str) {
                Some(s) => B64.decode(s).map_err(|_| Malformed::Payload)?,
                None => return Err(Malformed::Payload),
            };
            let mac = match self.mac.as_ref().and_then(Field::str) {
                Some(s) if s.len() == 2 * MAC_LEN => {
                    let mut mac = [0u8; MAC_LEN];
                    HEXLOWER_PERMISSIVE
                        .decode_mut(s, &mut mac)
                        .map_err(|_| Malformed::Mac)?;
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
    }

    /// A one-pass reader for the shape every sealer writes: one flat object
    /// of the known keys, each once, whose values are strings without
    /// escapes or control bytes, plain non-negative integers or `null`. Anything else (an
    /// escape, an unknown or repeated key, a nested value, a sign, a
    /// fraction, a leading zero, a number past `u64`, stray bytes) returns
    /// `None`, and serde decides. So the shortcut can make a message cheaper
    /// to read but never read differently: a payload it accepts is one
    /// serde reads to the same fields.
    mod plain {
        use alloc::borrow::Cow;

        use super::{Field, JsonFields};

        /// JSON's four whitespace bytes (not `\x0c`, which Rust's ASCII
        /// whitespace includes and JSON does not).
        fn skip_ws(p: &[u8], mut i: usize) -> usize {
            while matches!(p.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                i += 1;
            }
            i
        }

        /// A string starting at `p[i]` (its opening quote) without escapes
        /// or control bytes, and the index past its closing quote. Any
        /// valid UTF-8 is taken, as serde takes it; the UTF-8 check only
        /// runs on a string with a byte past ASCII, which a sealer never
        /// writes.
        fn string(p: &[u8], i: usize) -> Option<(&[u8], usize)> {
            if p.get(i) != Some(&b'"') {
                return None;
            }
            let rest = p.get(i + 1..)?;
            let len = memchr::memchr2(b'"', b'\\', rest)?;
            if rest[len] != b'"' {
                return None;
            }
            let s = &rest[..len];
            // No early exit, so the check is vectorised.
            if s.iter().fold(false, |bad, b| bad | (*b < 0x20)) {
                return None;
            }
            if !s.is_ascii() && core::str::from_utf8(s).is_err() {
                return None;
            }
            Some((s, i + len + 2))
        }

        /// A value at `p[i]`: `Some(None)` is `null`.
        fn value(p: &[u8], i: usize) -> Option<(Option<Field<'_>>, usize)> {
            match *p.get(i)? {
                b'"' => string(p, i).map(|(s, j)| (Some(Field::Str(Cow::Borrowed(s))), j)),
                b'n' => (p.get(i..i + 4)? == b"null").then_some((None, i + 4)),
                b'0' if p.get(i + 1).is_some_and(u8::is_ascii_digit) => None,
                b'0'..=b'9' => {
                    let mut n: u64 = 0;
                    let mut j = i;
                    while let Some(d) = p.get(j).filter(|d| d.is_ascii_digit()) {
                        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                        j += 1;
                    }
                    // A fraction or exponent follows as a byte the caller
                    // does not take after a value.
                    Some((Some(Field::Num(n)), j))
                }
                _ => None,
            }
        }

        pub(super) fn fields(p: &[u8]) -> Option<JsonFields<'_>> {
            let mut f = JsonFields::default();
            let mut seen = 0u8;
            let mut i = skip_ws(p, 0);
            if p.get(i) != Some(&b'{') {
                return None;
            }
            i = skip_ws(p, i + 1);
            if p.get(i) == Some(&b'}') {
                i += 1;
            } else {
                loop {
                    let (key, j) = string(p, i)?;
                    i = skip_ws(p, j);
                    if p.get(i) != Some(&b':') {
                        return None;
                    }
                    let (value, j) = value(p, skip_ws(p, i + 1))?;
                    let (bit, slot) = match key {
                        b"v" => (0, &mut f.v),
                        b"kid" => (1, &mut f.kid),
                        b"nonce" => (2, &mut f.nonce),
                        b"enc" => (3, &mut f.enc),
                        b"iv" => (4, &mut f.iv),
                        b"payload" => (5, &mut f.payload),
                        b"mac" => (6, &mut f.mac),
                        _ => return None,
                    };
                    if seen & (1 << bit) != 0 {
                        return None;
                    }
                    seen |= 1 << bit;
                    *slot = value;
                    i = skip_ws(p, j);
                    match p.get(i) {
                        Some(b',') => i = skip_ws(p, i + 1),
                        Some(b'}') => {
                            i += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            (skip_ws(p, i) == p.len()).then_some(f)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The field reader keeps every rule `serde_json::Value` gave:
        /// `null` is absent, escapes are read, anything but a non-negative
        /// integer or a string is the wrong type, duplicates are refused.
        #[test]
        fn reads_fields_as_the_value_reader_did() {
            let mac = "00".repeat(MAC_LEN);
            let env = |extra: &str| {
                alloc::format!(r#"{{"v":1,"nonce":5,"payload":"aGk=","mac":"{mac}"{extra}}}"#)
            };
            let ok = parse(env("").as_bytes()).unwrap();
            assert_eq!((ok.kid, ok.nonce, ok.body.as_slice()), (1, 5, &b"hi"[..]));
            assert_eq!(parse(env(r#","kid":null"#).as_bytes()).unwrap().kid, 1);
            assert_eq!(parse(env(r#","kid":7"#).as_bytes()).unwrap().kid, 7);
            let escaped = alloc::format!(
                r#"{{"v":1,"nonce":5,"payload":"aGs=","mac":"{mac}","enc":"none"}}"#
            );
            assert_eq!(parse(escaped.as_bytes()).unwrap().body, b"hk");
            for (extra, want) in [
                (r#","kid":-1"#, Malformed::Kid),
                (r#","kid":1.0"#, Malformed::Kid),
                (r#","kid":[1]"#, Malformed::Kid),
                (r#","kid":{"a":1}"#, Malformed::Kid),
                (r#","kid":"1""#, Malformed::Kid),
                (r#","kid":0"#, Malformed::Kid),
                (r#","kid":4294967296"#, Malformed::Kid),
                (r#","enc":true"#, Malformed::Enc),
                (r#","enc":"aes-128-cbc""#, Malformed::Iv),
                (r#","iv":"AAAAAAAAAAAAAAAAAAAAAA==""#, Malformed::Iv),
                (r#","nonce":6"#, Malformed::Json),
            ] {
                assert_eq!(parse(env(extra).as_bytes()).err(), Some(want), "{extra}");
            }
            let aes = |iv: &str| {
                alloc::format!(
                    r#"{{"v":1,"nonce":5,"enc":"aes-128-cbc","iv":"{iv}","payload":"aGk=","mac":"{mac}"}}"#
                )
            };
            assert!(parse(aes("AAAAAAAAAAAAAAAAAAAAAA==").as_bytes()).is_ok());
            assert_eq!(
                parse(aes("AAAAAAAAAAAAAAAAAAAA").as_bytes()).err(),
                Some(Malformed::Iv)
            );
            assert_eq!(
                parse(aes("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").as_bytes()).err(),
                Some(Malformed::Iv)
            );
            assert_eq!(parse(br#"{"v":1.0}"#).err(), Some(Malformed::Version));
            assert_eq!(parse(br#"{"v":null}"#).err(), Some(Malformed::Version));
            assert_eq!(
                parse(br#"{"v":1,"nonce":1.5}"#).err(),
                Some(Malformed::Nonce)
            );
        }

        /// The shortcut reads what every sealer writes, so the saving is
        /// real; and whatever it reads, serde reads the same.
        #[test]
        fn the_shortcut_reads_sealed_shapes_as_serde_does() {
            let mac = "aB".repeat(MAC_LEN);
            let seeds = [
                alloc::format!(
                    r#"{{"v":1,"kid":1,"nonce":10001,"enc":"aes-128-cbc","iv":"AAECAwQFBgcICQoLDA0ODw==","payload":"aGVsbG8gd29ybGQ=","mac":"{mac}"}}"#
                ),
                alloc::format!(
                    " {{ \"v\" : 1 ,\n\t\"nonce\":7, \"payload\":\"aGk=\",\"mac\":\"{mac}\",\"kid\":null }}\r\n"
                ),
                alloc::format!(r#"{{"mac":"{mac}","payload":"","nonce":18446744073709551615,"v":1}}"#),
                alloc::string::String::from("{}"),
            ];
            for seed in &seeds {
                assert!(plain::fields(seed.as_bytes()).is_some(), "{seed}");
                assert_eq!(parse(seed.as_bytes()), parse_json_by_serde(seed.as_bytes()));
            }
            // Every edit of a few bytes, from bytes JSON gives meaning to.
            let alphabet = b" \t\x0c\"\\{}[],:-+.eE0159nulltrfa\x00\x1f\x7f\xc3\xa9";
            let mut state = 0x9e37_79b9_7f4a_7c15_u64;
            let mut next = |n: usize| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % n as u64) as usize
            };
            let mut taken = 0;
            for round in 0..20_000 {
                let mut p = seeds[round % seeds.len()].clone().into_bytes();
                for _ in 0..1 + next(3) {
                    let at = next(p.len() + 1);
                    let b = alphabet[next(alphabet.len())];
                    match next(4) {
                        0 if at < p.len() => p[at] = b,
                        1 if at < p.len() => {
                            p.remove(at);
                        }
                        2 => {
                            let end = (at + next(12)).min(p.len());
                            let copy = p[at..end].to_vec();
                            p.splice(at..at, copy);
                        }
                        _ => p.insert(at, b),
                    }
                }
                if plain::fields(&p).is_some() {
                    taken += 1;
                }
                if p.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                    assert_eq!(
                        parse(&p),
                        parse_json_by_serde(&p),
                        "{}",
                        alloc::string::String::from_utf8_lossy(&p)
                    );
                }
            }
            assert!(
                taken > 1_000,
                "the edits must exercise the shortcut: {taken}"
            );
        }

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
