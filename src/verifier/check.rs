//! The spec's verification order for one message, as a pure decision over
//! the registry and the replay windows: parse, device and kid, MAC (constant
//! time), nonce window, decrypt. Nothing is published or made durable here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::envelope::{self, DeviceKeys, Malformed, MasterKey, SealedTopic};
use crate::events::RejectReason;
use crate::metrics::Metrics;
use crate::registry::{KeyCheck, Registry};
use crate::replay::{ReplayStore, StoreError, WindowVerdict};

/// Outcome of checking one message.
#[derive(Debug)]
pub enum Checked {
    /// Verified: deliver `plaintext` on the clean topic once the window
    /// update is durable.
    Accept {
        topic: SealedTopic,
        /// The key version the message was sealed under.
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
    /// the cache never goes stale.
    /// Keyed by device, then by kid (a device has one or two live kids), so
    /// a hit costs no allocation.
    keys: HashMap<String, Vec<(u32, DeviceKeys)>>,
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

impl Checker {
    pub fn new(
        master: MasterKey,
        registry: Registry,
        sealed_prefix: String,
        auto_register: bool,
        allow_unsealed: bool,
        metrics: Arc<Metrics>,
    ) -> Checker {
        Checker {
            metrics,
            master,
            registry,
            sealed_prefix,
            auto_register,
            allow_unsealed,
            keys: HashMap::new(),
        }
    }

    fn keys(&mut self, device_id: &str, kid: u32) -> DeviceKeys {
        if let Some(k) = self
            .keys
            .get(device_id)
            .and_then(|v| v.iter().find(|(k, _)| *k == kid))
        {
            return k.1.clone();
        }
        let derived = self.master.device_keys(device_id, kid);
        let per_device = self.keys.entry(device_id.to_owned()).or_default();
        // Keep the newest few kids: rotation leaves at most two in use.
        if per_device.len() >= 4 {
            per_device.remove(0);
        }
        per_device.push((kid, derived.clone()));
        derived
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
        let parsed = match envelope::parse(payload) {
            Ok(p) => p,
            Err(detail) => {
                let active = self.registry.with(&t.device_id, |d| {
                    d.is_some_and(|d| d.check_kid(d.kid, now_ms) == KeyCheck::Valid)
                });
                if self.allow_unsealed && active && !envelope::looks_sealed(payload) {
                    return Ok(Checked::Unsealed { topic: t });
                }
                return Ok(Checked::Reject {
                    reason: RejectReason::Malformed,
                    device_id: t.device_id,
                    stream: Some(t.stream),
                    nonce: None,
                    detail: Some(detail),
                });
            }
        };
        let nonce = Some(parsed.nonce);
        let key_check = self
            .registry
            .with(&t.device_id, |d| d.map(|d| d.check_kid(parsed.kid, now_ms)));
        match key_check {
            Some(KeyCheck::Valid) => {}
            Some(KeyCheck::Revoked) => return Ok(reject(RejectReason::Revoked, &t, nonce)),
            Some(KeyCheck::UnknownKid) => return Ok(reject(RejectReason::UnknownKid, &t, nonce)),
            None if self.auto_register => {}
            None => return Ok(reject(RejectReason::UnknownDevice, &t, nonce)),
        }
        let keys = self.keys(&t.device_id, parsed.kid);
        if !parsed.mac_matches(&keys.mac, &t.device_id, &t.stream) {
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
        match envelope::open_body(parsed, &keys.enc) {
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
}
