//! The device registry: who may connect and seal, under which key version.
//!
//! Records live in sled. The verifier and the front door consult them for
//! every message and every CONNECT, so the records of devices that are seen
//! are cached in memory, up to `registry.cache_devices` of them; the rest
//! stay on disk, because a fleet registers far more devices than are active
//! at once (a million registered, ten thousand active, must not cost a
//! million records of memory). What the rules need across all records
//! (labels per tenant, legacy key sharing, counts) is a small [`Summary`]
//! built at open and kept exact by every write.
//!
//! Every change is a compare-and-swap on the stored record (or one
//! transaction), and the cache and summary are refreshed from sled after
//! each write, so concurrent admin calls cannot lose an update or undo a
//! revocation. A reader that misses the cache loads the record and caches it
//! only if no write refreshed the registry meanwhile, so a revoked device can
//! never come back as active from a load that raced its revocation.
//! The registry stores no secret in the clear: v1 device keys are derived
//! from the master key on demand (spec section 3); the imported keys of
//! legacy devices are kept sealed by [`vault`].

mod device;
mod summary;
pub mod vault;

pub use device::{Device, DeviceState, KeyCheck, Profile, SealedKeys};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::envelope::{normalise_device_id, Malformed};
use summary::Summary;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("device id is not valid: {0}")]
    InvalidId(#[from] Malformed),
    #[error("device already exists")]
    Exists,
    #[error("no such device")]
    NotFound,
    #[error("device id is taken by a subscriber account")]
    Reserved,
    #[error("device is revoked")]
    Revoked,
    #[error("device is not on the legacy profile")]
    NotLegacy,
    #[error("the tenant already has a device with this label")]
    LabelTaken,
    #[error("the device shares its legacy keys with a device another tenant owns")]
    SharedKeys,
    #[error("label is longer than 200 bytes")]
    LabelTooLong,
    #[error("registry store unavailable")]
    Store(#[from] sled::Error),
}

/// Whose devices a call may touch: the operator's (all), or one tenant's.
/// A device outside the scope is `NotFound`, checked on the stored record
/// inside the compare-and-swap, so an ownership change racing the call
/// cannot let it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    All,
    Tenant(&'a str),
}

impl Scope<'_> {
    pub fn sees(&self, d: &Device) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => d.owner.as_deref() == Some(*t),
        }
    }
}

/// Shared handle; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    tree: sled::Tree,
    database: crate::database::Database,
    /// Subscriber account names (normalised): the front door matches
    /// usernames against accounts first, so a device with such an id could
    /// never log in. Its lock is the namespace lock: a device insert holds
    /// it for reading through its compare-and-swap, an account reservation
    /// for writing while it checks the tree, so the two cannot both win.
    reserved: RwLock<std::collections::HashSet<String>>,
    /// The records of devices seen lately (bounded; S3-FIFO eviction).
    cache: quick_cache::sync::Cache<String, Arc<Device>>,
    /// What the rules need from all records. Its write lock is also the
    /// refresh lock: a refresh bumps `generation` and fixes the cache under
    /// it, and a reader caches what it loaded under the read lock only if
    /// `generation` has not moved since before its load.
    summary: RwLock<Summary>,
    /// Bumped by every write, so readers that derive something from all
    /// records (the ingest's key pairs) know when to derive it again.
    generation: AtomicU64,
    /// Held while a label or an owner changes: labels are unique per
    /// tenant, across records, which no single compare-and-swap can check.
    labels: std::sync::Mutex<()>,
}

const MAX_LABEL: usize = 200;

/// How many device records stay cached when the configuration does not say.
pub const DEFAULT_CACHE_DEVICES: usize = 100_000;

impl Registry {
    pub const TREE: &'static str = "devices";

    /// Opens the registry (reads every record once, for the summary).
    pub fn open(db: &crate::database::Database) -> Result<Registry, RegistryError> {
        Self::open_reserving(db, std::iter::empty::<&str>(), DEFAULT_CACHE_DEVICES)
    }

    /// Like [`Registry::open`], refusing device ids equal to `reserved`
    /// (normalised subscriber account names), caching up to `cache_devices`
    /// records.
    pub fn open_reserving<'a>(
        db: &crate::database::Database,
        reserved: impl IntoIterator<Item = &'a str>,
        cache_devices: usize,
    ) -> Result<Registry, RegistryError> {
        let reserved = reserved
            .into_iter()
            .filter_map(|n| normalise_device_id(n).ok())
            .collect();
        let tree = db.open_tree(Self::TREE)?;
        let summary = Summary::load(&tree)?;
        Ok(Registry {
            inner: Arc::new(Inner {
                reserved: RwLock::new(reserved),
                tree,
                database: db.clone(),
                cache: quick_cache::sync::Cache::new(cache_devices.max(1)),
                summary: RwLock::new(summary),
                generation: Default::default(),
                labels: Default::default(),
            }),
        })
    }

    /// How many device records the registry keeps in memory
    /// (`registry.cache_devices`): per-device state elsewhere (the
    /// verifier's derived keys) is bounded by the same figure.
    pub fn cache_devices(&self) -> usize {
        self.inner.cache.capacity() as usize
    }

    fn reserved(&self) -> std::sync::RwLockReadGuard<'_, std::collections::HashSet<String>> {
        self.inner
            .reserved
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn reserved_mut(&self) -> std::sync::RwLockWriteGuard<'_, std::collections::HashSet<String>> {
        self.inner
            .reserved
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps devices off an account's name (one loaded at startup).
    pub fn reserve(&self, account: &str) {
        if let Ok(id) = normalise_device_id(account) {
            self.reserved_mut().insert(id);
        }
    }

    /// Reserves an account's name unless a device has it; `false` then.
    pub fn reserve_unless_device(&self, account: &str) -> bool {
        let Ok(id) = normalise_device_id(account) else {
            // Not a possible device id: nothing to keep devices off.
            return true;
        };
        let mut reserved = self.reserved_mut();
        if reserved.contains(&id) || self.inner.tree.get(id.as_bytes()).ok().flatten().is_some() {
            return false;
        }
        reserved.insert(id);
        true
    }

    /// Frees a deleted account's name for devices.
    pub fn unreserve(&self, account: &str) {
        if let Ok(id) = normalise_device_id(account) {
            self.reserved_mut().remove(&id);
        }
    }

    fn summary(&self) -> std::sync::RwLockReadGuard<'_, Summary> {
        self.inner.summary.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The record of an already normalised id: from the cache, or loaded
    /// from sled and cached. A store error reads as "no such device", which
    /// every caller refuses (fail closed).
    fn load(&self, device_id: &str) -> Option<Arc<Device>> {
        if let Some(d) = self.inner.cache.get(device_id) {
            return Some(d);
        }
        let before = self.generation();
        let bytes = match self.inner.tree.get(device_id.as_bytes()) {
            Ok(b) => b?,
            Err(e) => {
                tracing::error!(error = %e, "Device record unreadable: store unavailable.");
                return None;
            }
        };
        #[cfg(test)]
        if let Some(between) = races::AFTER_LOAD.with(|h| h.borrow_mut().take()) {
            between();
        }
        let device = match serde_json::from_slice::<Device>(&bytes) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                tracing::error!(error = %e, "Skipping unreadable device record.");
                return None;
            }
        };
        let _refreshes = self.summary();
        if self.generation() == before {
            self.inner
                .cache
                .insert(device.device_id.clone(), device.clone());
        }
        Some(device)
    }

    /// Looks a device up by an already normalised id.
    pub fn get(&self, device_id: &str) -> Option<Device> {
        self.load(device_id).map(|d| Device::clone(&d))
    }

    /// Runs `f` on the record without cloning it (hot path).
    pub fn with<R>(&self, device_id: &str, f: impl FnOnce(Option<&Device>) -> R) -> R {
        f(self.load(device_id).as_deref())
    }

    /// Changes whenever a record may have changed.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Every record, read from sled in id order (an admin listing, not a
    /// hot path).
    pub fn list(&self) -> Vec<Device> {
        self.inner
            .tree
            .iter()
            .values()
            .filter_map(|v| {
                let v = v
                    .map_err(|e| tracing::error!(error = %e, "Device listing cut short."))
                    .ok()?;
                serde_json::from_slice::<Device>(&v).ok()
            })
            .collect()
    }

    /// The records of devices on the legacy profile.
    pub fn legacy_devices(&self) -> Vec<Device> {
        let ids = self.summary().legacy_ids();
        ids.iter().filter_map(|id| self.get(id)).collect()
    }

    pub fn count_by_state(&self) -> (u64, u64) {
        self.summary().counts()
    }

    /// Makes the cache and the summary show what sled now holds for `ids`.
    /// Run after every successful write, under the summary's write lock, so
    /// when writers race the last refresh reads the last write: the cache can
    /// never keep an older record than the store (a stale "active" would let
    /// a revoked device in). `inserted` counts the ids that are new records.
    fn refresh(&self, ids: &[&str], inserted: u64) -> Result<(), RegistryError> {
        let mut summary = self
            .inner
            .summary
            .write()
            .unwrap_or_else(|e| e.into_inner());
        self.inner.generation.fetch_add(1, Ordering::Release);
        summary.inserted(inserted);
        for id in ids {
            let stored = match self.inner.tree.get(id.as_bytes()) {
                Ok(Some(bytes)) => serde_json::from_slice::<Device>(&bytes)
                    .map_err(
                        |e| tracing::error!(error = %e, "Unreadable device record after a write."),
                    )
                    .ok(),
                Ok(None) => None,
                Err(e) => {
                    // The cache must not outlive what we could not read.
                    self.inner.cache.remove(*id);
                    return Err(e.into());
                }
            };
            summary.update(id, stored.as_ref());
            match stored {
                Some(d) if self.inner.cache.contains_key(*id) => {
                    self.inner.cache.insert(d.device_id.clone(), Arc::new(d));
                }
                Some(_) => {}
                None => {
                    self.inner.cache.remove(*id);
                }
            }
        }
        Ok(())
    }

    /// Registers a device at kid 1, without owner. `raw_id` is normalised first.
    pub fn add(
        &self,
        raw_id: &str,
        label: Option<String>,
        now_ms: u64,
    ) -> Result<Device, RegistryError> {
        self.add_with(raw_id, label, now_ms, |_| None)
    }

    /// Registers a device at kid 1, without owner (only the operator
    /// registers), on the legacy profile when `legacy` gives sealed keys and
    /// their fingerprint for the normalised id (the keys are bound to it).
    pub fn add_with(
        &self,
        raw_id: &str,
        label: Option<String>,
        now_ms: u64,
        legacy: impl FnOnce(&str) -> Option<(SealedKeys, String)>,
    ) -> Result<Device, RegistryError> {
        let id = normalise_device_id(raw_id)?;
        let label = label.unwrap_or_default();
        if label.len() > MAX_LABEL {
            return Err(RegistryError::LabelTooLong);
        }
        let mut device = Device::new(id, label, 1, now_ms);
        if let Some((sealed, fingerprint)) = legacy(&device.device_id) {
            device.legacy = Some(sealed);
            device.legacy_fingerprint = Some(fingerprint);
        }
        self.insert_new(device)
    }

    fn label_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.labels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether another device of `owner` has the non-empty `label`. Devices
    /// without owner (the operator's) have no such rule.
    fn label_taken(&self, owner: Option<&str>, label: &str, except: &str) -> bool {
        match owner {
            Some(owner) if !label.is_empty() => self.summary().label_taken(owner, label, except),
            _ => false,
        }
    }

    /// Whether `d` shares its legacy keys with a device of a tenant other
    /// than `owner`: anyone with a fleet's keys can seal as any device of it,
    /// so such devices must not be split between tenants.
    pub(crate) fn keys_shared_elsewhere(&self, d: &Device, owner: &str) -> bool {
        let Some(fp) = &d.legacy_fingerprint else {
            return false;
        };
        self.summary()
            .shares_keys_elsewhere(&d.device_id, fp, owner)
    }

    /// Gives the device to `owner`, or takes it from its owner (`None`).
    /// A label the new owner already uses is cleared.
    pub fn set_owner(
        &self,
        raw_id: &str,
        owner: Option<&str>,
        now_ms: u64,
    ) -> Result<Device, RegistryError> {
        let _labels = self.label_lock();
        self.update(raw_id, |d| {
            if owner.is_some_and(|o| self.keys_shared_elsewhere(d, o)) {
                return Err(RegistryError::SharedKeys);
            }
            let taken = self.label_taken(owner, &d.label, &d.device_id);
            d.set_owner(owner, now_ms, taken);
            Ok(())
        })
    }

    /// Gives an unowned device to `owner`; `None` if it has an owner by
    /// the time the write happens (a racing claim won).
    pub fn set_owner_if_unowned(
        &self,
        raw_id: &str,
        owner: &str,
        now_ms: u64,
    ) -> Result<Option<Device>, RegistryError> {
        let _labels = self.label_lock();
        let mut won = false;
        let d = self.update(raw_id, |d| {
            if self.keys_shared_elsewhere(d, owner) {
                return Err(RegistryError::SharedKeys);
            }
            won = d.owner.is_none();
            if won {
                let taken = self.label_taken(Some(owner), &d.label, &d.device_id);
                d.set_owner(Some(owner), now_ms, taken);
            }
            Ok(())
        })?;
        Ok(won.then_some(d))
    }

    /// For the claim transaction (`crate::claims`), which writes a device
    /// record together with other trees: the tree, the label rule and the
    /// lock that must be held around it, and the cache refresh after it.
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.inner.tree
    }

    pub(crate) fn hold_labels(&self) -> std::sync::MutexGuard<'_, ()> {
        self.label_lock()
    }

    pub(crate) fn owner_uses_label(&self, owner: &str, label: &str, except: &str) -> bool {
        self.label_taken(Some(owner), label, except)
    }

    /// `inserted`: the transaction created the record (auto-register).
    pub(crate) fn refreshed(&self, id: &str, inserted: bool) -> Result<(), RegistryError> {
        self.refresh(&[id], inserted as u64)
    }

    /// Moves a legacy device to v1: its imported keys are deleted from the
    /// record, and from now on it must send v1 envelopes under its derived
    /// key. Its nonce window is untouched, so nothing it sent before can be
    /// replayed after.
    pub fn migrate(&self, scope: Scope<'_>, raw_id: &str) -> Result<Device, RegistryError> {
        self.update_in(scope, raw_id, |d| {
            if d.state == DeviceState::Revoked {
                return Err(RegistryError::Revoked);
            }
            if d.legacy.take().is_none() {
                return Err(RegistryError::NotLegacy);
            }
            d.legacy_fingerprint = None;
            Ok(())
        })
    }

    /// Registers many devices at kid 1 with one flush. Refuses the whole set,
    /// creating nothing, if any id is invalid or taken: one sled transaction,
    /// so a concurrent add of one of the ids cannot slip in between.
    pub fn add_many(&self, raw_ids: &[String], now_ms: u64) -> Result<Vec<Device>, RegistryError> {
        let mut records = Vec::with_capacity(raw_ids.len());
        let reserved = self.reserved();
        for raw in raw_ids {
            let id = normalise_device_id(raw)?;
            if reserved.contains(&id) {
                return Err(RegistryError::Reserved);
            }
            let device = Device::new(id, String::new(), 1, now_ms);
            let bytes = serde_json::to_vec(&device).expect("device serialises");
            records.push((device, bytes));
        }
        self.inner
            .tree
            .transaction(|tx| {
                for (device, bytes) in &records {
                    let key = device.device_id.as_bytes();
                    if tx.get(key)?.is_some() {
                        return Err(ConflictableTransactionError::Abort(RegistryError::Exists));
                    }
                    tx.insert(key, bytes.as_slice())?;
                }
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => RegistryError::Store(e),
            })?;
        self.inner.database.flush()?;
        let ids: Vec<&str> = records.iter().map(|(d, _)| d.device_id.as_str()).collect();
        self.refresh(&ids, ids.len() as u64)?;
        Ok(records.into_iter().map(|(d, _)| d).collect())
    }

    /// Registers a device first seen with a valid MAC under the key derived
    /// for `kid` (auto-register). Only the master key can make such a MAC.
    pub fn auto_register(
        &self,
        device_id: &str,
        kid: u32,
        now_ms: u64,
    ) -> Result<Device, RegistryError> {
        let mut device = Device::new(normalise_device_id(device_id)?, String::new(), kid, now_ms);
        device.auto_registered = true;
        self.insert_new(device)
    }

    /// Inserts a record only if the id is free: sled's compare-and-swap makes
    /// two concurrent adds of one id impossible.
    fn insert_new(&self, device: Device) -> Result<Device, RegistryError> {
        let reserved = self.reserved();
        if reserved.contains(&device.device_id) {
            return Err(RegistryError::Reserved);
        }
        let bytes = serde_json::to_vec(&device).expect("device serialises");
        let swapped = self.inner.tree.compare_and_swap(
            device.device_id.as_bytes(),
            None as Option<&[u8]>,
            Some(bytes),
        )?;
        drop(reserved);
        if swapped.is_err() {
            return Err(RegistryError::Exists);
        }
        self.inner.database.flush()?;
        self.refresh(&[&device.device_id], 1)?;
        Ok(device)
    }

    /// Applies `f` to the stored record atomically: read from sled (not the
    /// cache, which may lag a concurrent writer), change, compare-and-swap,
    /// and on a lost race start again from what the winner stored. So `f`
    /// always sees the latest record, and a rename racing a revoke can never
    /// store the device as active again. `f` may run more than once.
    fn update(
        &self,
        raw_id: &str,
        f: impl FnMut(&mut Device) -> Result<(), RegistryError>,
    ) -> Result<Device, RegistryError> {
        self.update_in(Scope::All, raw_id, f)
    }

    fn update_in(
        &self,
        scope: Scope<'_>,
        raw_id: &str,
        mut f: impl FnMut(&mut Device) -> Result<(), RegistryError>,
    ) -> Result<Device, RegistryError> {
        let id = normalise_device_id(raw_id)?;
        let key = id.as_bytes();
        let device = loop {
            let current = self.inner.tree.get(key)?.ok_or(RegistryError::NotFound)?;
            let mut device = match serde_json::from_slice::<Device>(&current) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "Unreadable device record; not updated.");
                    return Err(RegistryError::NotFound);
                }
            };
            if !scope.sees(&device) {
                return Err(RegistryError::NotFound);
            }
            f(&mut device)?;
            let bytes = serde_json::to_vec(&device).expect("device serialises");
            if self
                .inner
                .tree
                .compare_and_swap(key, Some(&current), Some(bytes))?
                .is_ok()
            {
                break device;
            }
        };
        self.inner.database.flush()?;
        self.refresh(&[&id], 0)?;
        Ok(device)
    }

    pub fn rename(
        &self,
        scope: Scope<'_>,
        raw_id: &str,
        label: String,
    ) -> Result<Device, RegistryError> {
        if label.len() > MAX_LABEL {
            return Err(RegistryError::LabelTooLong);
        }
        let _labels = self.label_lock();
        self.update_in(scope, raw_id, |d| {
            if self.label_taken(d.owner.as_deref(), &label, &d.device_id) {
                return Err(RegistryError::LabelTaken);
            }
            d.label.clone_from(&label);
            Ok(())
        })
    }

    pub fn revoke(
        &self,
        scope: Scope<'_>,
        raw_id: &str,
        now_ms: u64,
    ) -> Result<Device, RegistryError> {
        self.update_in(scope, raw_id, |d| {
            if d.state != DeviceState::Revoked {
                d.state = DeviceState::Revoked;
                d.revoked_at_ms = Some(now_ms);
            }
            Ok(())
        })
    }

    /// Bumps the kid; the previous kid stays valid for `grace_ms`.
    pub fn rotate(
        &self,
        scope: Scope<'_>,
        raw_id: &str,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Device, RegistryError> {
        self.update_in(scope, raw_id, |d| {
            if d.state == DeviceState::Revoked {
                return Err(RegistryError::Revoked);
            }
            d.previous_kid = Some(d.kid);
            d.previous_kid_until_ms = Some(now_ms.saturating_add(grace_ms));
            d.kid += 1;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let r = Registry::open(&db).unwrap();
        let d = r.add("ESP32-A1", None, 1).unwrap();
        assert_eq!(d.device_id, "esp32-a1");
        assert!(matches!(
            r.add("esp32-a1", None, 1),
            Err(RegistryError::Exists)
        ));
        assert!(matches!(
            r.add("bad id!", None, 1),
            Err(RegistryError::InvalidId(_))
        ));
        let d = r.rotate(Scope::All, "esp32-a1", 1000, 500).unwrap();
        assert_eq!(d.kid, 2);
        assert_eq!(d.check_kid(1, 1499), KeyCheck::Valid);
        assert_eq!(d.check_kid(1, 1500), KeyCheck::UnknownKid);
        assert_eq!(d.check_kid(2, 9999), KeyCheck::Valid);
        assert_eq!(d.check_kid(3, 0), KeyCheck::UnknownKid);
        r.rename(Scope::All, "esp32-a1", "roof".into()).unwrap();
        let reserving = Registry::open_reserving(&db, ["Dash"], 10).unwrap();
        assert!(matches!(
            reserving.add("dash", None, 1),
            Err(RegistryError::Reserved)
        ));
        assert!(matches!(
            reserving.add_many(&["x1".into(), "DASH".into()], 1),
            Err(RegistryError::Reserved)
        ));
        assert!(reserving.get("x1").is_none());
        r.revoke(Scope::All, "esp32-a1", 5).unwrap();
        assert!(matches!(
            r.rotate(Scope::All, "esp32-a1", 6, 1),
            Err(RegistryError::Revoked)
        ));
        drop(r);
        let r = Registry::open(&db).unwrap();
        let d = r.get("esp32-a1").unwrap();
        assert_eq!(
            (d.label.as_str(), d.state, d.kid),
            ("roof", DeviceState::Revoked, 2)
        );
        assert_eq!(d.check_kid(2, 0), KeyCheck::Revoked);
        assert_eq!(r.count_by_state(), (0, 1));
    }
}

#[cfg(test)]
mod large {
    use super::*;

    /// With far more devices than cached records, lookups, counts and the
    /// per-tenant label rule still see every record, before and after a
    /// reopen (which rebuilds the summary from sled).
    #[test]
    fn a_registry_larger_than_its_cache_keeps_every_rule() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let ids: Vec<String> = (0..500).map(|i| format!("d{i:03}")).collect();
        {
            let r = Registry::open_reserving(&db, std::iter::empty::<&str>(), 8).unwrap();
            r.add_many(&ids, 1).unwrap();
            r.set_owner("d001", Some("acme"), 2).unwrap();
            r.rename(Scope::All, "d001", "roof".into()).unwrap();
            r.set_owner("d002", Some("acme"), 2).unwrap();
            assert!(matches!(
                r.rename(Scope::Tenant("acme"), "d002", "roof".into()),
                Err(RegistryError::LabelTaken)
            ));
            r.revoke(Scope::All, "d499", 3).unwrap();
            assert_eq!(r.count_by_state(), (499, 1));
        }
        let r = Registry::open_reserving(&db, std::iter::empty::<&str>(), 8).unwrap();
        assert_eq!(r.count_by_state(), (499, 1));
        for id in &ids {
            assert_eq!(r.get(id).unwrap().device_id, *id);
        }
        assert!(r.get("d500").is_none());
        assert!(matches!(
            r.rename(Scope::Tenant("acme"), "d002", "roof".into()),
            Err(RegistryError::LabelTaken)
        ));
        // The label is free again once its holder changes hands.
        r.set_owner("d001", None, 4).unwrap();
        r.rename(Scope::Tenant("acme"), "d002", "roof".into())
            .unwrap();
        assert_eq!(r.list().len(), 500);
        assert_eq!(r.get("d499").unwrap().state, DeviceState::Revoked);
    }
}

#[cfg(test)]
mod races {
    use super::*;
    use std::sync::Barrier;

    thread_local! {
        /// Runs once inside the next cache miss, between reading the record
        /// and caching it.
        pub(super) static AFTER_LOAD: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Runs `a` and `b` on two threads released together, `rounds` times,
    /// each round on a fresh device, then checks the stored record (read
    /// back by a second handle, which loads from sled) and the cache.
    fn race(
        rounds: u32,
        a: impl Fn(&Registry, &str) + Sync,
        b: impl Fn(&Registry, &str) + Sync,
        check: impl Fn(&Device),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let r = Registry::open(&db).unwrap();
        let barrier = Barrier::new(2);
        for i in 0..rounds {
            let id = format!("d{i}");
            r.add(&id, Some("old".into()), 1).unwrap();
            std::thread::scope(|s| {
                s.spawn(|| {
                    barrier.wait();
                    a(&r, &id);
                });
                s.spawn(|| {
                    barrier.wait();
                    b(&r, &id);
                });
            });
            check(&r.get(&id).unwrap());
        }
        let stored = Registry::open(&db).unwrap();
        for i in 0..rounds {
            let id = format!("d{i}");
            assert_eq!(stored.get(&id), r.get(&id), "cache and store differ");
            check(&stored.get(&id).unwrap());
        }
    }

    #[test]
    fn a_rename_racing_a_revoke_never_resurrects_the_device() {
        race(
            200,
            |r, id| {
                r.rename(Scope::All, id, "new".into()).unwrap();
            },
            |r, id| {
                r.revoke(Scope::All, id, 5).unwrap();
            },
            |d| {
                assert_eq!(d.state, DeviceState::Revoked, "{d:?}");
                assert_eq!(d.label, "new", "a rename was lost: {d:?}");
            },
        );
    }

    #[test]
    fn a_rotate_racing_a_revoke_never_resurrects_the_device() {
        race(
            200,
            |r, id| match r.rotate(Scope::All, id, 1, 1) {
                Ok(_) | Err(RegistryError::Revoked) => {}
                Err(e) => panic!("{e}"),
            },
            |r, id| {
                r.revoke(Scope::All, id, 5).unwrap();
            },
            |d| {
                assert_eq!(d.state, DeviceState::Revoked, "{d:?}");
                assert_eq!(d.revoked_at_ms, Some(5));
            },
        );
    }

    /// A reader that loaded the record just before it was revoked must not
    /// cache the active record it read: the revocation runs between the
    /// load and the caching.
    #[test]
    fn a_load_racing_a_revoke_never_caches_the_device_as_active() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let r = Registry::open(&db).unwrap();
        r.add("d1", None, 1).unwrap();
        let revoker = r.clone();
        AFTER_LOAD.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                revoker.revoke(Scope::All, "d1", 5).unwrap();
            }))
        });
        // This read saw the record from before the revocation; fine for it.
        assert_eq!(r.get("d1").unwrap().state, DeviceState::Active);
        assert_eq!(r.get("d1").unwrap().state, DeviceState::Revoked);
        assert_eq!(r.count_by_state(), (0, 1));
    }

    #[test]
    fn two_rotations_both_count() {
        race(
            200,
            |r, id| {
                r.rotate(Scope::All, id, 1, 1).unwrap();
            },
            |r, id| {
                r.rotate(Scope::All, id, 1, 1).unwrap();
            },
            |d| assert_eq!((d.kid, d.previous_kid), (3, Some(2)), "{d:?}"),
        );
    }
}
