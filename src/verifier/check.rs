//! The spec's verification order for one message, as a pure decision over
//! the registry and the replay windows: parse, device and kid, MAC (constant
//! time), nonce window, decrypt. Nothing is published or made durable here.
//!
//! A device on the legacy profile is opened by the legacy rules instead
//! (parse, revoked, decrypt and MAC as one step that cannot tell a bad
//! padding from a bad MAC, nonce window) and shares everything after: the
//! window, the verdicts, the events and the clean output.

use std::collections::HashMap;
use std::sync::Arc;

use crate::envelope::legacy::{self, LegacyKeys};
use crate::envelope::{self, DecKey, MacKey, Malformed, MasterKey, SealedTopic};
use crate::events::RejectReason;
use crate::metrics::Metrics;
use crate::registry::vault::Vault;
use crate::registry::{KeyCheck, Registry, SealedKeys};
use crate::replay::{ReplayStore, StoreError, WindowVerdict};

/// Outcome of checking one message.
#[derive(Debug)]
pub enum Checked {
    /// Verified: deliver `plaintext` on the clean topic once the window
    /// update is durable.
    Accept {
        topic: SealedTopic,
        /// The key version the message was sealed under; 0 for a legacy
        /// device, whose keys have no version.
        kid: u32,
        nonce: u64,
        mac: [u8; 32],
        plaintext: Vec<u8>,
    },
    /// Not an envelope, from a registered device, with unsealed traffic
    /// allowed: deliver on `unverified/`, never on `clean/`.
    Unsealed { topic: SealedTopic },
    Reject {
        reason: RejectReason,
        /// Empty when the device id itself is malformed.
        device_id: String,
        stream: Option<String>,
        nonce: Option<u64>,
        /// Which rule a `malformed` broke; for the log line only.
        detail: Option<Malformed>,
    },
}

pub struct Checker {
    pub master: MasterKey,
    pub registry: Registry,
    pub sealed_prefix: String,
    pub auto_register: bool,
    pub allow_unsealed: bool,
    pub metrics: Arc<Metrics>,
    /// Derived keys by (device, kid): derivation is four HMACs, the cache
    /// makes it one lookup. Keys are a pure function of the master key, so
    /// the cache never goes stale. Bounded like the registry's cache
    /// (`registry.cache_devices`, devices seen lately): a fleet that cycles
    /// through every device of a large registry must not keep them all.
    /// Keyed by device, then by kid (a device has one or two live kids), so
    /// a hit costs no allocation.
    keys: quick_cache::unsync::Cache<String, Vec<(u32, Arc<Opening>)>>,
    /// Opens the stored keys of legacy devices.
    vault: Vault,
    /// Opened legacy keys by device, with the sealed record they came from:
    /// a changed record is opened again.
    legacy_keys: HashMap<String, (SealedKeys, LegacyKeys)>,
}

/// What opens a device's messages under one kid: its MAC and decryption
/// keys with HMAC's and AES's key schedules already run, which together
/// cost about as much as checking and opening a 128-byte message.
struct Opening {
    mac: MacKey,
    dec: DecKey,
}

fn reject(reason: RejectReason, t: &SealedTopic, nonce: Option<u64>) -> Checked {
    Checked::Reject {
        reason,
        device_id: t.device_id.clone(),
        stream: Some(t.stream.clone()),
        nonce,
        detail: None,
    }
}

/// A payload of a valid topic that is not an envelope (of the device's
/// profile); `detail` names the broken rule for the log.
fn malformed(t: SealedTopic, detail: Malformed) -> Checked {
    Checked::Reject {
        reason: RejectReason::Malformed,
        device_id: t.device_id,
        stream: Some(t.stream),
        nonce: None,
        detail: Some(detail),
    }
}

impl Checker {
    pub fn new(
        master: MasterKey,
        registry: Registry,
        sealed_prefix: String,
        auto_register: bool,
        allow_unsealed: bool,
        metrics: Arc<Metrics>,
    ) -> Checker {
        let registry_capacity = registry.cache_devices();
        Checker {
            metrics,
            vault: Vault::new(&master),
            legacy_keys: HashMap::new(),
            master,
            registry,
            sealed_prefix,
            auto_register,
            allow_unsealed,
            keys: quick_cache::unsync::Cache::new(registry_capacity),
        }
    }

    /// What opens the device's messages under `kid`.
    fn keys(&mut self, device_id: &str, kid: u32) -> Arc<Opening> {
        if let Some((_, opening)) = self
            .keys
            .get(device_id)
            .and_then(|v| v.iter().find(|(k, _)| *k == kid))
        {
            return opening.clone();
        }
        let derived = self.master.device_keys(device_id, kid);
        let opening = Arc::new(Opening {
            mac: MacKey::new(&derived.mac),
            dec: DecKey::new(&derived.enc),
        });
        let mut per_device = self.keys.get(device_id).cloned().unwrap_or_default();
        // Keep the newest few kids: rotation leaves at most two in use.
        if per_device.len() >= 4 {
            per_device.remove(0);
        }
        per_device.push((kid, opening.clone()));
        self.keys.insert(device_id.to_owned(), per_device);
        opening
    }

    /// Checks one message against the registry and `store`'s windows,
    /// recording nothing. A store read error is `store_unavailable`.
    pub fn check(
        &mut self,
        topic: &str,
        payload: &[u8],
        store: &mut ReplayStore,
        now_ms: u64,
    ) -> Result<Checked, StoreError> {
        let t = match SealedTopic::parse(&self.sealed_prefix, topic) {
            Ok(t) => t,
            Err(detail) => {
                let stream = topic.splitn(3, '/').nth(2).map(str::to_owned);
                return Ok(Checked::Reject {
                    reason: RejectReason::Malformed,
                    device_id: String::new(),
                    stream: stream.filter(|s| s.len() <= envelope::MAX_STREAM_LEN),
                    nonce: None,
                    detail: Some(detail),
                });
            }
        };
        // One registry read per message: the key state, and the sealed keys
        // of a legacy device (cloned only then).
        let (key_state, legacy) = self.registry.with(&t.device_id, |d| match d {
            None => (None, None),
            Some(d) => (Some(d.key_state()), d.legacy.clone()),
        });
        if let (Some(sealed), Some(k)) = (legacy, key_state) {
            return self.check_legacy(t, payload, &sealed, k.revoked, store);
        }
        let parsed = match envelope::parse(payload) {
            Ok(p) => p,
            Err(detail) => {
                let active =
                    key_state.is_some_and(|k| k.check_kid(k.kid, now_ms) == KeyCheck::Valid);
                if self.allow_unsealed && active && !envelope::looks_sealed(payload) {
                    return Ok(Checked::Unsealed { topic: t });
                }
                return Ok(malformed(t, detail));
            }
        };
        let nonce = Some(parsed.nonce);
        let key_check = key_state.map(|k| k.check_kid(parsed.kid, now_ms));
        match key_check {
            Some(KeyCheck::Valid) => {}
            Some(KeyCheck::Revoked) => return Ok(reject(RejectReason::Revoked, &t, nonce)),
            Some(KeyCheck::UnknownKid) => return Ok(reject(RejectReason::UnknownKid, &t, nonce)),
            None if self.auto_register => {}
            None => return Ok(reject(RejectReason::UnknownDevice, &t, nonce)),
        }
        let keys = self.keys(&t.device_id, parsed.kid);
        if !parsed.mac_matches_key(&keys.mac, &t.device_id, &t.stream) {
            // An unknown device with a bad MAC stays `unknown_device`: auto-
            // register must not turn the registry into a MAC oracle.
            let reason = if key_check.is_none() {
                RejectReason::UnknownDevice
            } else {
                RejectReason::BadMac
            };
            return Ok(reject(reason, &t, nonce));
        }
        if key_check.is_none() {
            // Only the master key can make this MAC: register the device.
            if let Err(e) = self
                .registry
                .auto_register(&t.device_id, parsed.kid, now_ms)
            {
                tracing::error!(device_id = %t.device_id, error = %e, "Auto-register failed.");
                return Ok(reject(RejectReason::StoreUnavailable, &t, nonce));
            }
            self.metrics.auto_registered.inc();
            tracing::info!(device_id = %t.device_id, kid = parsed.kid, "Auto-registered device.");
        }
        if let WindowVerdict::Reject(reason) =
            store.window(&t.device_id)?.check(parsed.nonce, &parsed.mac)
        {
            return Ok(reject(reason, &t, nonce));
        }
        let mac = parsed.mac;
        let nonce_v = parsed.nonce;
        let kid = parsed.kid;
        match envelope::open_body_keyed(parsed, &keys.dec) {
            Some(plaintext) => Ok(Checked::Accept {
                topic: t,
                kid,
                nonce: nonce_v,
                mac,
                plaintext,
            }),
            None => Ok(reject(RejectReason::DecryptFailed, &t, nonce)),
        }
    }

    /// The legacy rules for a device registered with imported keys.
    fn check_legacy(
        &mut self,
        t: SealedTopic,
        payload: &[u8],
        sealed: &SealedKeys,
        revoked: bool,
        store: &mut ReplayStore,
    ) -> Result<Checked, StoreError> {
        let env = match legacy::parse(payload) {
            Ok(env) => env,
            Err(detail) => return Ok(malformed(t, detail)),
        };
        let nonce = u64::from(env.nonce);
        if revoked {
            return Ok(reject(RejectReason::Revoked, &t, Some(nonce)));
        }
        let Some(keys) = self.legacy_keys(&t.device_id, sealed) else {
            // Altered, or sealed under another master key: fail closed for
            // this device only.
            tracing::error!(device_id = %t.device_id, "Stored legacy keys do not open.");
            return Ok(reject(RejectReason::StoreUnavailable, &t, Some(nonce)));
        };
        let Some(plaintext) = legacy::open(&env, &keys) else {
            return Ok(reject(RejectReason::BadMac, &t, Some(nonce)));
        };
        if let WindowVerdict::Reject(reason) = store.window(&t.device_id)?.check(nonce, &env.mac) {
            return Ok(reject(reason, &t, Some(nonce)));
        }
        Ok(Checked::Accept {
            topic: t,
            kid: 0,
            nonce,
            mac: env.mac,
            plaintext,
        })
    }

    fn legacy_keys(&mut self, device_id: &str, sealed: &SealedKeys) -> Option<LegacyKeys> {
        if let Some((s, k)) = self.legacy_keys.get(device_id) {
            if s == sealed {
                return Some(k.clone());
            }
        }
        let keys = self.vault.open(device_id, sealed)?;
        self.legacy_keys
            .insert(device_id.to_owned(), (sealed.clone(), keys.clone()));
        Some(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{seal, SealInput};

    /// The derived keys of every device ever seen would grow with the
    /// registry; they are bounded by `registry.cache_devices`.
    #[test]
    fn derived_keys_are_kept_for_the_devices_seen_lately_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let registry = Registry::open_reserving(&db, [], 4).unwrap();
        let master = MasterKey::from_bytes([9; 32]);
        let mut store = ReplayStore::new(crate::journal::Windows::open(&db).unwrap(), 64);
        let mut checker = Checker::new(
            master.clone(),
            registry.clone(),
            "sealed".into(),
            false,
            false,
            Default::default(),
        );
        for i in 0..50 {
            let id = format!("dev-{i}");
            registry.add(&id, None, 0).unwrap();
            let keys = master.device_keys(&id, 1);
            let m = SealInput {
                device_id: &id,
                stream: "t",
                kid: 1,
                nonce: 1,
                iv: None,
                plaintext: b"x",
                binary: false,
            };
            let topic = format!("sealed/{id}/t");
            let payload = seal(&keys, &m).unwrap();
            let checked = checker.check(&topic, &payload, &mut store, 1).unwrap();
            assert!(matches!(checked, Checked::Accept { .. }), "{id}");
        }
        assert!(checker.keys.len() <= 4, "{} kept", checker.keys.len());
    }
}
