//! Key derivation and the device connect token (spec sections 3 and 9).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

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

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
}

/// The three keys a device derives from its secret.
#[derive(Clone)]
pub struct DeviceKeys {
    pub mac: [u8; 32],
    pub enc: [u8; 16],
    pub auth: [u8; 32],
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// The MQTT password a device presents: `v1:{expiry}:{hex tag}`. `expiry` is a
/// Unix time in seconds, 0 for a token that never expires.
pub fn connect_token(keys: &DeviceKeys, device_id: &str, expiry: u64) -> String {
    format!(
        "v1:{expiry}:{}",
        hex::encode(token_tag(&keys.auth, device_id, expiry))
    )
}

/// Why a connect token was refused. Never carries the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not v1:<expiry>:<64 hex>")]
    Format,
    #[error("token does not match the device key")]
    BadTag,
    #[error("token has expired")]
    Expired,
    #[error("tokens without expiry are refused by configuration")]
    NoExpiry,
}

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
        let t = connect_token(&keys, "d1", 100);
        assert_eq!(verify_connect_token(&keys, "d1", &t, 99, false), Ok(()));
        assert_eq!(
            verify_connect_token(&keys, "d1", &t, 100, false),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_connect_token(&keys, "d2", &t, 0, false),
            Err(TokenError::BadTag)
        );
        let forever = connect_token(&keys, "d1", 0);
        assert_eq!(
            verify_connect_token(&keys, "d1", &forever, u64::MAX, true),
            Ok(())
        );
        assert_eq!(
            verify_connect_token(&keys, "d1", &forever, 1, false),
            Err(TokenError::NoExpiry)
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
