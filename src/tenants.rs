//! Tenants: the owners that share one gateway. Each has an API key, shown
//! once and stored only as its SHA-256, used as a bearer token on the admin
//! API to see and change that tenant's devices only.
//!
//! Records live in sled (tree `tenants`) and are cached in memory with an
//! index from key digest to tenant, because every API request authenticates.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant name must match [a-z0-9][a-z0-9-]{{0,63}}")]
    InvalidName,
    #[error("tenant already exists")]
    Exists,
    #[error("no such tenant")]
    NotFound,
    #[error("tenant store unavailable")]
    Store(#[from] sled::Error),
}

/// A stored tenant. Holds the digest of its key, never the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    /// SHA-256 of the API key, hex.
    key_sha256: String,
    pub created_at_ms: u64,
    pub key_rotated_at_ms: Option<u64>,
}

#[derive(Clone)]
pub struct Tenants {
    inner: Arc<Inner>,
}

struct Inner {
    tree: sled::Tree,
    database: crate::database::Database,
    cache: RwLock<Cache>,
}

#[derive(Default)]
struct Cache {
    by_name: HashMap<String, Tenant>,
    /// Key digest to tenant name.
    by_key: HashMap<[u8; 32], String>,
}

/// An API key as handed out: `sgt_` and 64 hex digits. `Debug` hides it.
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// A bearer token's SHA-256 (the admin token's too). Keys are 256 random
/// bits, so a lookup by digest is as good as a constant-time comparison:
/// learning a digest's prefix by timing tells nothing about a key.
pub use crate::admin::digest;

fn new_key() -> ApiKey {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    ApiKey(format!("sgt_{}", hex::encode(raw)))
}

/// `[a-z0-9][a-z0-9-]{0,63}`: safe in URLs, logs and topic levels.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl Tenants {
    pub const TREE: &'static str = "tenants";

    pub fn open(db: &crate::database::Database) -> Result<Tenants, TenantError> {
        let tree = db.open_tree(Self::TREE)?;
        let mut cache = Cache::default();
        for item in tree.iter() {
            let (_, v) = item?;
            match serde_json::from_slice::<Tenant>(&v) {
                Ok(t) => cache.insert(t),
                Err(e) => tracing::error!(error = %e, "Skipping unreadable tenant record."),
            }
        }
        Ok(Tenants {
            inner: Arc::new(Inner {
                tree,
                database: db.clone(),
                cache: RwLock::new(cache),
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.inner.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant whose API key `token` is.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        self.read().by_key.get(&digest(token)).cloned()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.read().by_name.contains_key(name)
    }

    pub fn list(&self) -> Vec<Tenant> {
        let mut all: Vec<Tenant> = self.read().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Creates a tenant; its key is returned once.
    pub fn add(&self, name: &str, now_ms: u64) -> Result<(Tenant, ApiKey), TenantError> {
        if !valid_name(name) {
            return Err(TenantError::InvalidName);
        }
        let key = new_key();
        let t = Tenant {
            name: name.to_owned(),
            key_sha256: hex::encode(digest(&key.0)),
            created_at_ms: now_ms,
            key_rotated_at_ms: None,
        };
        let bytes = serde_json::to_vec(&t).expect("tenant serialises");
        let swapped = self.inner.tree.compare_and_swap(
            name.as_bytes(),
            None as Option<&[u8]>,
            Some(bytes),
        )?;
        if swapped.is_err() {
            return Err(TenantError::Exists);
        }
        self.inner.database.flush()?;
        self.write_cache(t.clone());
        Ok((t, key))
    }

    /// A new key; the old one stops working at once.
    pub fn rotate_key(&self, name: &str, now_ms: u64) -> Result<(Tenant, ApiKey), TenantError> {
        let key = new_key();
        loop {
            let current = self
                .inner
                .tree
                .get(name.as_bytes())?
                .ok_or(TenantError::NotFound)?;
            let mut t: Tenant =
                serde_json::from_slice(&current).map_err(|_| TenantError::NotFound)?;
            t.key_sha256 = hex::encode(digest(&key.0));
            t.key_rotated_at_ms = Some(now_ms);
            let bytes = serde_json::to_vec(&t).expect("tenant serialises");
            if self
                .inner
                .tree
                .compare_and_swap(name.as_bytes(), Some(current), Some(bytes))?
                .is_ok()
            {
                self.inner.database.flush()?;
                self.write_cache(t.clone());
                return Ok((t, key));
            }
        }
    }

    fn write_cache(&self, t: Tenant) {
        let mut cache = self.inner.cache.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = cache.by_name.remove(&t.name) {
            if let Some(d) = parse_digest(&old.key_sha256) {
                cache.by_key.remove(&d);
            }
        }
        cache.insert(t);
    }
}

fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut d).ok()?;
    Some(d)
}

impl Cache {
    fn insert(&mut self, t: Tenant) {
        if let Some(d) = parse_digest(&t.key_sha256) {
            self.by_key.insert(d, t.name.clone());
        }
        self.by_name.insert(t.name.clone(), t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_authenticate_until_rotated_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let t = Tenants::open(&db).unwrap();
        let (acme, key) = t.add("acme", 1).unwrap();
        assert_eq!(acme.name, "acme");
        assert!(key.0.starts_with("sgt_") && key.0.len() == 68);
        assert_eq!(t.authenticate(&key.0).as_deref(), Some("acme"));
        assert!(matches!(t.add("acme", 2), Err(TenantError::Exists)));
        for bad in ["", "Acme", "-a", "a b", "a/b", &"a".repeat(65)] {
            assert!(
                matches!(t.add(bad, 1), Err(TenantError::InvalidName)),
                "{bad}"
            );
        }
        let (_, new) = t.rotate_key("acme", 3).unwrap();
        assert_eq!(t.authenticate(&key.0), None);
        assert_eq!(t.authenticate(&new.0).as_deref(), Some("acme"));
        assert!(matches!(
            t.rotate_key("nobody", 3),
            Err(TenantError::NotFound)
        ));
        drop(t);
        let again = Tenants::open(&db).unwrap();
        assert_eq!(again.authenticate(&new.0).as_deref(), Some("acme"));
        let stored = String::from_utf8(
            db.open_tree("tenants")
                .unwrap()
                .get("acme")
                .unwrap()
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(
            !stored.contains(&new.0[4..]),
            "the key itself is never stored"
        );
    }
}
