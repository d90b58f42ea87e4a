//! Imported legacy keys at rest. They cannot be derived from the master key
//! (the fleet's firmware has them hard-coded), so they are the one secret the
//! registry must store; this keeps them encrypted under keys derived from the
//! master key, bound to the device they belong to.
//!
//! Encrypt-then-MAC with the crates the envelope already uses: AES-128-CBC
//! under a random IV, then HMAC-SHA256 over the device id, the IV and the
//! ciphertext. A record copied to another device, or altered, does not open.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::device::SealedKeys;
use crate::envelope::legacy::LegacyKeys;
use crate::envelope::MasterKey;

const TAG_DOMAIN: &[u8] = b"sealgate/v1/stored-keys";

/// The keys that protect stored legacy keys. `Debug` prints nothing.
#[derive(Clone)]
pub struct Vault {
    enc: [u8; 16],
    mac: [u8; 32],
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

impl Vault {
    pub fn new(master: &MasterKey) -> Vault {
        let enc_full = master.derive(b"stored-keys/enc");
        let mut enc = [0u8; 16];
        enc.copy_from_slice(&enc_full[..16]);
        Vault {
            enc,
            mac: master.derive(b"stored-keys/mac"),
        }
    }

    fn tag(&self, device_id: &str, iv: &[u8], ct: &[u8]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.mac).expect("any key length");
        m.update(TAG_DOMAIN);
        m.update(&[0]);
        m.update(device_id.as_bytes());
        m.update(&[0]);
        m.update(iv);
        m.update(ct);
        m
    }

    /// A keyed fingerprint of a key pair: equal for devices that share
    /// their keys (as legacy fleets do), and useless without the master key.
    pub fn fingerprint(&self, keys: &LegacyKeys) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.mac).expect("any key length");
        m.update(b"sealgate/v1/key-fingerprint");
        m.update(&[0]);
        m.update(&keys.psk_aes);
        m.update(&keys.iv);
        m.update(&keys.psk_hmac);
        hex::encode(&m.finalize().into_bytes()[..16])
    }

    /// `base64(iv ‖ ciphertext ‖ tag)` of `psk_aes ‖ iv ‖ psk_hmac`.
    pub fn seal(&self, device_id: &str, keys: &LegacyKeys) -> SealedKeys {
        let mut plain = Vec::with_capacity(32 + keys.psk_hmac.len());
        plain.extend_from_slice(&keys.psk_aes);
        plain.extend_from_slice(&keys.iv);
        plain.extend_from_slice(&keys.psk_hmac);
        let mut iv = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut iv);
        let ct = cbc::Encryptor::<aes::Aes128>::new((&self.enc).into(), (&iv).into())
            .encrypt_padded_vec_mut::<Pkcs7>(&plain);
        plain.fill(0);
        let tag = self.tag(device_id, &iv, &ct).finalize().into_bytes();
        let mut out = Vec::with_capacity(16 + ct.len() + 32);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        SealedKeys(B64.encode(out))
    }

    /// The keys, or `None` if the record was altered, belongs to another
    /// device or was sealed under another master key.
    pub fn open(&self, device_id: &str, sealed: &SealedKeys) -> Option<LegacyKeys> {
        let raw = B64.decode(&sealed.0).ok()?;
        if raw.len() < 16 + 16 + 32 {
            return None;
        }
        let (iv, rest) = raw.split_at(16);
        let (ct, tag) = rest.split_at(rest.len() - 32);
        self.tag(device_id, iv, ct).verify_slice(tag).ok()?;
        let iv: [u8; 16] = iv.try_into().ok()?;
        let mut plain = cbc::Decryptor::<aes::Aes128>::new((&self.enc).into(), (&iv).into())
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .ok()?;
        if plain.len() < 32 {
            return None;
        }
        let keys = LegacyKeys {
            psk_aes: plain[..16].try_into().ok()?,
            iv: plain[16..32].try_into().ok()?,
            psk_hmac: plain[32..].to_vec(),
        };
        plain.fill(0);
        Some(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_for_its_device_and_master() {
        let keys = LegacyKeys {
            psk_hmac: vec![1; 32],
            psk_aes: [2; 16],
            iv: [3; 16],
        };
        let vault = Vault::new(&MasterKey::from_bytes([9; 32]));
        let sealed = vault.seal("dev-1", &keys);
        assert_eq!(vault.open("dev-1", &sealed), Some(keys.clone()));
        assert_eq!(vault.open("dev-2", &sealed), None);
        let other = Vault::new(&MasterKey::from_bytes([8; 32]));
        assert_eq!(other.open("dev-1", &sealed), None);
        let mut raw = B64.decode(&sealed.0).unwrap();
        raw[20] ^= 1;
        assert_eq!(vault.open("dev-1", &SealedKeys(B64.encode(raw))), None);
        // No key byte is readable in the record.
        let text = sealed.0.clone();
        assert!(!text.contains(&B64.encode([2u8; 16])));
        assert_ne!(vault.seal("dev-1", &keys), sealed, "a fresh IV every time");
    }
}
