//! What the registry's rules need from every record, without holding every
//! record: the labels of owned devices (unique per tenant), the legacy
//! devices' key fingerprints and owners (key sharing across tenants), and
//! the counts the metrics report. Its memory grows with labelled owned
//! devices and legacy devices only, not with the fleet.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::{Device, DeviceState};

/// The fields of a stored record the summary reads at open; serde skips the
/// rest, so opening a large registry parses little.
#[derive(Deserialize)]
struct Fields {
    device_id: String,
    #[serde(default)]
    label: String,
    state: DeviceState,
    #[serde(default)]
    legacy_fingerprint: Option<String>,
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Default)]
pub(super) struct Summary {
    total: u64,
    revoked: HashSet<String>,
    /// (owner, label) -> device, for owned devices with a label.
    labels: HashMap<(String, String), String>,
    /// device -> (owner, label), to undo the entry above when it changes.
    label_of: HashMap<String, (String, String)>,
    /// Legacy devices: id -> (key fingerprint, owner).
    legacy: HashMap<String, (String, Option<String>)>,
}

impl Summary {
    pub(super) fn load(tree: &sled::Tree) -> sled::Result<Summary> {
        let mut s = Summary::default();
        for item in tree.iter() {
            let (_, v) = item?;
            match serde_json::from_slice::<Fields>(&v) {
                Ok(f) => {
                    s.total += 1;
                    s.set(f);
                }
                Err(e) => tracing::error!(error = %e, "Skipping unreadable device record."),
            }
        }
        Ok(s)
    }

    pub(super) fn inserted(&mut self, n: u64) {
        self.total += n;
    }

    /// Records what sled now holds for `id` (`None`: no record).
    pub(super) fn update(&mut self, id: &str, stored: Option<&Device>) {
        self.revoked.remove(id);
        if let Some(key) = self.label_of.remove(id) {
            if self.labels.get(&key).is_some_and(|holder| holder == id) {
                self.labels.remove(&key);
            }
        }
        self.legacy.remove(id);
        if let Some(d) = stored {
            self.set(Fields {
                device_id: d.device_id.clone(),
                label: d.label.clone(),
                state: d.state,
                legacy_fingerprint: d.legacy_fingerprint.clone(),
                owner: d.owner.clone(),
            });
        }
    }

    fn set(&mut self, f: Fields) {
        if f.state == DeviceState::Revoked {
            self.revoked.insert(f.device_id.clone());
        }
        if let Some(fp) = f.legacy_fingerprint {
            self.legacy
                .insert(f.device_id.clone(), (fp, f.owner.clone()));
        }
        if let Some(owner) = f.owner {
            if !f.label.is_empty() {
                let key = (owner, f.label);
                self.labels.insert(key.clone(), f.device_id.clone());
                self.label_of.insert(f.device_id, key);
            }
        }
    }

    /// (active, revoked).
    pub(super) fn counts(&self) -> (u64, u64) {
        let revoked = self.revoked.len() as u64;
        (self.total.saturating_sub(revoked), revoked)
    }

    pub(super) fn label_taken(&self, owner: &str, label: &str, except: &str) -> bool {
        self.labels
            .get(&(owner.to_owned(), label.to_owned()))
            .is_some_and(|holder| holder != except)
    }

    pub(super) fn shares_keys_elsewhere(&self, id: &str, fp: &str, owner: &str) -> bool {
        self.legacy.iter().any(|(other, (other_fp, other_owner))| {
            other != id && other_fp == fp && other_owner.as_deref().is_some_and(|t| t != owner)
        })
    }

    pub(super) fn legacy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.legacy.keys().cloned().collect();
        ids.sort();
        ids
    }
}
