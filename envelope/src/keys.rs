//! Key derivation and the device connect token (spec sections 3 and 9).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The gateway's 32-byte master key. Every device key derives from it, so it
/// is the one secret to protect and back up. `Debug` never prints it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl core::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(hex_str: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str.trim(), &mut out).ok()?;
        Some(MasterKey(out))
    }

    /// The device secret `S` for `device_id` (already normalised) at `kid`.
    pub fn device_secret(&self, device_id: &str, kid: u32) -> [u8; 32] {
        hmac(
            &self.0,
            &[
                b"sealgate/v1/device",
                &[0],
                device_id.as_bytes(),
                &[0],
                &kid.to_be_bytes(),
            ],
        )
    }

    pub fn device_keys(&self, device_id: &str, kid: u32) -> DeviceKeys {
        DeviceKeys::from_secret(&self.device_secret(device_id, kid))
    }

    /// A key for `purpose`, independent of every device key: the gateway
    /// derives what it keeps at rest from here rather than from new secrets.
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        hmac(&self.0, &[b"sealgate/v1/gateway", &[0], purpose])
    }
}

/// The three keys a device derives from its secret.
#[derive(Clone)]
pub struct DeviceKeys {
    pub mac: [u8; 32],
    pub enc: [u8; 16],
    pub auth: [u8; 32],
}

impl core::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DeviceKeys(..)")
    }
}

impl DeviceKeys {
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let enc_full = hmac(secret, &[b"sealgate/v1/enc"]);
        let mut enc = [0u8; 16];
        enc.copy_from_slice(&enc_full[..16]);
        DeviceKeys {
            mac: hmac(secret, &[b"sealgate/v1/mac"]),
            enc,
            auth: hmac(secret, &[b"sealgate/v1/auth"]),
        }
    }
}

fn token_tag(k_auth: &[u8; 32], device_id: &str, expiry: u64) -> [u8; 32] {
    hmac(k_auth, &[device_id.as_bytes(), &[0], &expiry.to_be_bytes()])
}

/// `v1:` + up to 20 digits + `:` + 64 hex digits.
const TOKEN_MAX: usize = 3 + 20 + 1 + 64;

/// The MQTT password a device presents, `v1:{expiry}:{hex tag}`, built
/// without a heap. `expiry` is a Unix time in seconds, 0 for a token that
/// never expires. `Debug` does not print it: it is a credential.
#[derive(Clone)]
pub struct ConnectToken {
    buf: [u8; TOKEN_MAX],
    len: usize,
}

impl ConnectToken {
    pub fn new(keys: &DeviceKeys, device_id: &str, expiry: u64) -> ConnectToken {
        let mut buf = [0u8; TOKEN_MAX];
        buf[..3].copy_from_slice(b"v1:");
        let mut len = 3;
        let mut digits = [0u8; 20];
        let mut n = expiry;
        let mut d = digits.len();
        loop {
            d -= 1;
            digits[d] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        buf[len..len + digits.len() - d].copy_from_slice(&digits[d..]);
        len += digits.len() - d;
        buf[len] = b':';
        len += 1;
        hex::encode_to_slice(
            token_tag(&keys.auth, device_id, expiry),
            &mut buf[len..len + 64],
        )
        .expect("64 bytes for 32");
        ConnectToken { buf, len: len + 64 }
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl core::fmt::Debug for ConnectToken {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ConnectToken(..)")
    }
}

/// [`ConnectToken`] as a `String`.
#[cfg(feature = "alloc")]
pub fn connect_token(keys: &DeviceKeys, device_id: &str, expiry: u64) -> alloc::string::String {
    alloc::string::String::from(ConnectToken::new(keys, device_id, expiry).as_str())
}

/// Why a connect token was refused. Never carries the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Format,
    BadTag,
    Expired,
    NoExpiry,
}

impl core::fmt::Display for TokenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TokenError::Format => "token is not v1:<expiry>:<64 hex>",
            TokenError::BadTag => "token does not match the device key",
            TokenError::Expired => "token has expired",
            TokenError::NoExpiry => "tokens without expiry are refused by configuration",
        })
    }
}

impl core::error::Error for TokenError {}

/// Checks a connect token in constant time. `now` is Unix seconds. The tag is
/// checked before the expiry so a forged token never learns anything more
/// specific than `BadTag`.
pub fn verify_connect_token(
    keys: &DeviceKeys,
    device_id: &str,
    token: &str,
    now: u64,
    allow_no_expiry: bool,
) -> Result<(), TokenError> {
    let mut parts = token.splitn(3, ':');
    let (Some("v1"), Some(expiry), Some(tag_hex)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Format);
    };
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::Format);
    }
    let expiry: u64 = expiry.parse().map_err(|_| TokenError::Format)?;
    let mut tag = [0u8; 32];
    hex::decode_to_slice(tag_hex, &mut tag).map_err(|_| TokenError::Format)?;
    let expected = token_tag(&keys.auth, device_id, expiry);
    if !bool::from(expected.ct_eq(&tag)) {
        return Err(TokenError::BadTag);
    }
    match expiry {
        0 if !allow_no_expiry => Err(TokenError::NoExpiry),
        0 => Ok(()),
        e if e <= now => Err(TokenError::Expired),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_refusals() {
        let keys = MasterKey::from_bytes([7; 32]).device_keys("d1", 1);
        let t = ConnectToken::new(&keys, "d1", 100);
        let t = t.as_str();
        assert!(t.starts_with("v1:100:"), "{t}");
        assert_eq!(verify_connect_token(&keys, "d1", t, 99, false), Ok(()));
        assert_eq!(
            verify_connect_token(&keys, "d1", t, 100, false),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_connect_token(&keys, "d2", t, 0, false),
            Err(TokenError::BadTag)
        );
        let forever = ConnectToken::new(&keys, "d1", 0);
        assert!(forever.as_str().starts_with("v1:0:"));
        assert_eq!(
            verify_connect_token(&keys, "d1", forever.as_str(), u64::MAX, true),
            Ok(())
        );
        assert_eq!(
            verify_connect_token(&keys, "d1", forever.as_str(), 1, false),
            Err(TokenError::NoExpiry)
        );
        let max = ConnectToken::new(&keys, "d1", u64::MAX);
        assert_eq!(max.as_str().len(), TOKEN_MAX);
        assert_eq!(
            verify_connect_token(&keys, "d1", max.as_str(), 1, false),
            Ok(())
        );
        for bad in [
            "", "v1", "v2:0:00", "v1::00", "v1:-1:00", "v1:0:zz", "v1:0:00",
        ] {
            assert_eq!(
                verify_connect_token(&keys, "d1", bad, 0, true),
                Err(TokenError::Format),
                "{bad}"
            );
        }
    }
}
