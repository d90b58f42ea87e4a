//! The two proofs of possession that bind a device to a tenant (spec
//! section 10). Both derive from the device secret, so a factory can compute
//! them offline and the gateway stores nothing new.

use subtle::ConstantTimeEq;

use crate::keys::hmac;

/// Characters in a claim code: 10 bytes in base32 without padding.
pub const CLAIM_CODE_LEN: usize = 16;

/// The MAC of a device-initiated claim, under the device's `K_auth`.
/// `device_id` is normalised; `pairing_code` is the exact string issued.
pub fn claim_mac(k_auth: &[u8; 32], device_id: &str, pairing_code: &str, nonce: u64) -> [u8; 32] {
    hmac(
        k_auth,
        &[
            b"sealgate/v1/claim",
            &[0],
            device_id.as_bytes(),
            &[0],
            pairing_code.as_bytes(),
            &[0],
            &nonce.to_be_bytes(),
        ],
    )
}

/// A printed claim code: 16 upper-case RFC 4648 base32 characters. `Debug`
/// does not print it: whoever holds it can claim the device.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClaimCode([u8; CLAIM_CODE_LEN]);

impl ClaimCode {
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl core::fmt::Debug for ClaimCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ClaimCode(..)")
    }
}

/// The claim code of a device, from its kid-1 secret (the one the factory
/// flashed, so the printed code survives key rotation).
pub fn claim_code(secret_kid1: &[u8; 32]) -> ClaimCode {
    let tag = hmac(secret_kid1, &[b"sealgate/v1/claim-code"]);
    let mut out = [0u8; CLAIM_CODE_LEN];
    data_encoding::BASE32_NOPAD.encode_mut(&tag[..10], &mut out);
    ClaimCode(out)
}

/// Whether `presented` is `expected` as people type it: any case, with spaces
/// and dashes anywhere. The comparison of the characters that count is
/// constant-time.
pub fn claim_code_matches(expected: &ClaimCode, presented: &str) -> bool {
    let mut got = [0u8; CLAIM_CODE_LEN];
    let mut n = 0usize;
    for b in presented.bytes().filter(|b| !matches!(b, b' ' | b'-')) {
        if n == CLAIM_CODE_LEN {
            return false;
        }
        got[n] = b.to_ascii_uppercase();
        n += 1;
    }
    n == CLAIM_CODE_LEN && bool::from(got.ct_eq(&expected.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_as_people_type_them() {
        let code = claim_code(&[9; 32]);
        let s = code.as_str();
        assert_eq!(s.len(), CLAIM_CODE_LEN);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        assert!(claim_code_matches(&code, s));
        // Lower case, a dash after 4 characters and a space after 8.
        let mut typed = [0u8; CLAIM_CODE_LEN + 2];
        let mut at = 0;
        for (i, b) in s.bytes().enumerate() {
            if i == 4 || i == 8 {
                typed[at] = if i == 4 { b'-' } else { b' ' };
                at += 1;
            }
            typed[at] = b.to_ascii_lowercase();
            at += 1;
        }
        let typed = core::str::from_utf8(&typed).unwrap();
        assert!(claim_code_matches(&code, typed), "{typed}");
        assert!(!claim_code_matches(&code, &s[..15]));
        let mut wrong = [0u8; CLAIM_CODE_LEN];
        wrong.copy_from_slice(s.as_bytes());
        wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
        assert!(!claim_code_matches(
            &code,
            core::str::from_utf8(&wrong).unwrap()
        ));
        assert!(!claim_code_matches(&code, ""));
    }
}
