//! One registered device and the key-version rules applied to it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    Active,
    Revoked,
}

/// A legacy device's imported keys, encrypted under a key derived from the
/// master key ([`super::vault`]): the only secret a record holds, and useless
/// without the master key. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedKeys(pub String);

impl std::fmt::Debug for SealedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedKeys(..)")
    }
}

/// The envelope a device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    V1,
    LegacyEcowatt,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::V1 => "v1",
            Profile::LegacyEcowatt => "legacy-ecowatt",
        }
    }
}

/// A registry record. Holds no secret in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub device_id: String,
    #[serde(default)]
    pub label: String,
    pub state: DeviceState,
    /// Current key version.
    pub kid: u32,
    /// The key version before the last rotation, valid until
    /// `previous_kid_until_ms` so devices in the field can be re-flashed.
    #[serde(default)]
    pub previous_kid: Option<u32>,
    #[serde(default)]
    pub previous_kid_until_ms: Option<u64>,
    pub created_at_ms: u64,
    #[serde(default)]
    pub revoked_at_ms: Option<u64>,
    /// Registered by a valid MAC under a derived key, not by an operator.
    #[serde(default)]
    pub auto_registered: bool,
    /// Set for a device on the legacy profile: its imported keys, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<SealedKeys>,
    /// The keyed fingerprint of those keys (`vault::Vault::fingerprint`):
    /// devices that share a key pair can write in each other's names, so
    /// they may not belong to different tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_fingerprint: Option<String>,
    /// The tenant that owns the device; none until claimed or assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_since_ms: Option<u64>,
}

/// A device's key versions, as the key rules see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    pub revoked: bool,
    pub kid: u32,
    pub previous_kid: Option<u32>,
    pub previous_kid_until_ms: Option<u64>,
}

impl KeyState {
    /// Whether `kid` may be used at `now_ms`: the current one, or the
    /// previous one inside its grace period.
    pub fn check_kid(&self, kid: u32, now_ms: u64) -> KeyCheck {
        if self.revoked {
            return KeyCheck::Revoked;
        }
        if kid == self.kid {
            return KeyCheck::Valid;
        }
        match (self.previous_kid, self.previous_kid_until_ms) {
            (Some(prev), Some(until)) if prev == kid && now_ms < until => KeyCheck::Valid,
            _ => KeyCheck::UnknownKid,
        }
    }
}

/// What the registry says about a key version presented by a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    Valid,
    Revoked,
    UnknownKid,
}

impl Device {
    pub fn new(device_id: String, label: String, kid: u32, now_ms: u64) -> Device {
        Device {
            device_id,
            label,
            state: DeviceState::Active,
            kid,
            previous_kid: None,
            previous_kid_until_ms: None,
            created_at_ms: now_ms,
            revoked_at_ms: None,
            auto_registered: false,
            legacy: None,
            legacy_fingerprint: None,
            owner: None,
            owned_since_ms: None,
        }
    }

    /// Makes `owner` the device's owner (or none). Keeps the label unless
    /// `label_taken` says the new owner already uses it, then clears it:
    /// labels are unique per tenant, and an ownership change must not fail
    /// over a label.
    pub fn set_owner(&mut self, owner: Option<&str>, now_ms: u64, label_taken: bool) {
        if self.owner.as_deref() != owner {
            self.owner = owner.map(str::to_owned);
            self.owned_since_ms = owner.map(|_| now_ms);
            if label_taken {
                self.label.clear();
            }
        }
    }

    pub fn profile(&self) -> Profile {
        match self.legacy {
            None => Profile::V1,
            Some(_) => Profile::LegacyEcowatt,
        }
    }

    /// Whether `kid` may be used at `now_ms`: the current one, or the
    /// previous one inside its grace period.
    pub fn check_kid(&self, kid: u32, now_ms: u64) -> KeyCheck {
        self.key_state().check_kid(kid, now_ms)
    }

    /// What the key rules need, copied out: the verifier reads it once per
    /// message under the registry's lock.
    pub fn key_state(&self) -> KeyState {
        KeyState {
            revoked: self.state == DeviceState::Revoked,
            kid: self.kid,
            previous_kid: self.previous_kid,
            previous_kid_until_ms: self.previous_kid_until_ms,
        }
    }
}
