//! Subscriber accounts and the tenants they belong to.
//!
//! Two sources: `[[users]]` in the configuration (optionally with
//! `tenant = "..."`), and accounts a tenant creates through the admin API
//! (`POST /api/v1/users`), kept in sled (tree `accounts`) with the SHA-256 of
//! a password the gateway generated and showed once. Account names and
//! device ids share one namespace: a name taken either way is refused.
//!
//! An account of a tenant is confined to that tenant's mount by the front
//! door (`topics.tenants`): it sees its tenant's devices only, whatever
//! filter it uses.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::admin::digest;
use crate::config::User;
use crate::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("account name must be 1 to 64 characters (with \"@tenant\") without '+', '#', '/', '$', '@', spaces or control characters")]
    InvalidName,
    #[error("the name is taken by a device or another account")]
    Taken,
    #[error("no such account")]
    NotFound,
    #[error("the tenant has the most accounts allowed (100)")]
    TooMany,
    #[error("account store unavailable")]
    Store(#[from] sled::Error),
}

/// A stored account (API-made).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAccount {
    pub name: String,
    pub tenant: String,
    password_sha256: String,
    pub created_at_ms: u64,
}

/// What the front door needs to know of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    /// The tenant it belongs to; `None` for an operator's global account.
    pub tenant: Option<String>,
}

#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    tree: sled::Tree,
    database: crate::database::Database,
    registry: Registry,
    /// Configured accounts: password digests, fixed at startup.
    configured: HashMap<String, ([u8; 32], Option<String>)>,
    stored: RwLock<HashMap<String, StoredAccount>>,
}

/// Accounts one tenant may make: each is a login and router state, and a
/// tenant's key must not be able to grow them without bound.
pub const MAX_ACCOUNTS_PER_TENANT: usize = 100;

/// A generated password, shown once. `Debug` hides it.
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// Account names go into router client ids and shared-group names (the
/// router refuses `+ $ # /` there), and a control character would reach
/// its log lines.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.chars().count())
        && !name.contains(['+', '#', '/', '$'])
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

impl Accounts {
    pub const TREE: &'static str = "accounts";

    pub fn open(
        db: &crate::database::Database,
        registry: Registry,
        users: &[User],
    ) -> Result<Accounts, AccountError> {
        let tree = db.open_tree(Self::TREE)?;
        let configured = users
            .iter()
            .map(|u| (u.name.clone(), (digest(&u.password), u.tenant.clone())))
            .collect();
        let mut stored = HashMap::new();
        for item in tree.iter() {
            let (_, v) = item?;
            match serde_json::from_slice::<StoredAccount>(&v) {
                Ok(a) => {
                    registry.reserve(&a.name);
                    stored.insert(a.name.clone(), a);
                }
                Err(e) => tracing::error!(error = %e, "Skipping unreadable account record."),
            }
        }
        Ok(Accounts {
            inner: Arc::new(Inner {
                tree,
                database: db.clone(),
                registry,
                configured,
                stored: RwLock::new(stored),
            }),
        })
    }

    fn stored(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, StoredAccount>> {
        self.inner.stored.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `name` is an account at all (then a CONNECT with it is judged
    /// as an account, never as a device).
    pub fn is_account(&self, name: &str) -> bool {
        self.inner.configured.contains_key(name) || self.stored().contains_key(name)
    }

    /// The account if `password` is its password; compared in constant time
    /// on digests, so independent of the password's length.
    pub fn check(&self, name: &str, password: &str) -> Option<Account> {
        let presented = digest(password);
        if let Some((d, tenant)) = self.inner.configured.get(name) {
            return bool::from(d.ct_eq(&presented)).then(|| Account {
                name: name.to_owned(),
                tenant: tenant.clone(),
            });
        }
        let stored = self.stored();
        let a = stored.get(name)?;
        let mut d = [0u8; 32];
        hex::decode_to_slice(&a.password_sha256, &mut d).ok()?;
        bool::from(d.ct_eq(&presented)).then(|| Account {
            name: a.name.clone(),
            tenant: Some(a.tenant.clone()),
        })
    }

    /// The tenant of a connected account, read again on every use so a
    /// deleted account's sessions can be told apart.
    pub fn tenant_of(&self, name: &str) -> Option<String> {
        if let Some((_, t)) = self.inner.configured.get(name) {
            return t.clone();
        }
        self.stored().get(name).map(|a| a.tenant.clone())
    }

    /// API-made accounts of `tenant` (all, for `None`).
    pub fn list(&self, tenant: Option<&str>) -> Vec<StoredAccount> {
        let mut v: Vec<StoredAccount> = self
            .stored()
            .values()
            .filter(|a| tenant.is_none_or(|t| a.tenant == t))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Creates an account of `tenant`; its password is returned once.
    /// The account is named `{name}@{tenant}`: device ids cannot contain
    /// `@`, so a tenant's account can neither clash with a device (which
    /// would tell the tenant that a device id exists, or squat one not yet
    /// registered) nor with another tenant's account.
    pub fn add(
        &self,
        name: &str,
        tenant: &str,
        now_ms: u64,
    ) -> Result<(StoredAccount, Password), AccountError> {
        if name.contains('@') {
            return Err(AccountError::InvalidName);
        }
        let full = format!("{name}@{tenant}");
        let name = full.as_str();
        if !valid_name(name) {
            return Err(AccountError::InvalidName);
        }
        if self.inner.configured.contains_key(name) {
            return Err(AccountError::Taken);
        }
        if self.list(Some(tenant)).len() >= MAX_ACCOUNTS_PER_TENANT {
            return Err(AccountError::TooMany);
        }
        // Devices and accounts share the namespace: reserve the name in the
        // registry first (refused if a device has it), release it on failure.
        if !self.inner.registry.reserve_unless_device(name) {
            return Err(AccountError::Taken);
        }
        let mut raw = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut raw);
        let password = Password(hex::encode(raw));
        let a = StoredAccount {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            password_sha256: hex::encode(digest(&password.0)),
            created_at_ms: now_ms,
        };
        let bytes = serde_json::to_vec(&a).expect("account serialises");
        let swapped =
            self.inner
                .tree
                .compare_and_swap(name.as_bytes(), None as Option<&[u8]>, Some(bytes));
        match swapped {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(AccountError::Taken),
            Err(e) => {
                self.inner.registry.unreserve(name);
                return Err(e.into());
            }
        }
        self.inner.database.flush()?;
        self.inner
            .stored
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a.name.clone(), a.clone());
        Ok((a, password))
    }

    /// Deletes an API-made account of `tenant` (any tenant's, for `None`).
    pub fn remove(&self, name: &str, tenant: Option<&str>) -> Result<StoredAccount, AccountError> {
        let a = self
            .stored()
            .get(name)
            .filter(|a| tenant.is_none_or(|t| a.tenant == t))
            .cloned()
            .ok_or(AccountError::NotFound)?;
        self.inner.tree.remove(name.as_bytes())?;
        self.inner.database.flush()?;
        self.inner
            .stored
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.inner.registry.unreserve(name);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, tenant: Option<&str>) -> User {
        let mut u = crate::config::parse_users(&format!("{name}:pw-{name}"))
            .unwrap()
            .remove(0);
        u.tenant = tenant.map(str::to_owned);
        u
    }

    #[test]
    fn accounts_and_devices_share_one_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let registry = Registry::open_reserving(&db, ["dash"], 10).unwrap();
        let accounts = Accounts::open(
            &db,
            registry.clone(),
            &[user("dash", None), user("acme-dash", Some("acme"))],
        )
        .unwrap();
        assert_eq!(accounts.check("dash", "pw-dash").unwrap().tenant, None);
        assert_eq!(
            accounts
                .check("acme-dash", "pw-acme-dash")
                .unwrap()
                .tenant
                .as_deref(),
            Some("acme")
        );
        assert!(accounts.check("dash", "wrong").is_none());

        // A tenant's accounts are `name@tenant`: no clash with a device id
        // (which could not hold '@'), nor with another tenant's account.
        registry.add("dev-1", None, 0).unwrap();
        let (a, pw) = accounts.add("dev-1", "acme", 5).unwrap();
        assert_eq!((a.name.as_str(), a.tenant.as_str()), ("dev-1@acme", "acme"));
        let tenant = accounts.check("dev-1@acme", &pw.0).unwrap().tenant;
        assert_eq!(tenant.as_deref(), Some("acme"));
        assert!(accounts.check("dev-1", &pw.0).is_none());
        assert!(matches!(
            accounts.add("dev-1", "acme", 0),
            Err(AccountError::Taken)
        ));
        assert!(accounts.add("dev-1", "globex", 0).is_ok());
        assert!(matches!(
            accounts.add("a/b", "acme", 0),
            Err(AccountError::InvalidName)
        ));
        assert!(matches!(
            accounts.add("a@b", "acme", 0),
            Err(AccountError::InvalidName)
        ));
        assert_eq!(accounts.list(Some("globex")).len(), 1);
        assert!(matches!(
            accounts.remove("dev-1@acme", Some("globex")),
            Err(AccountError::NotFound)
        ));
        // A configured name is taken.
        let configured = Accounts::open(&db, registry.clone(), &[user("wall@acme", None)]).unwrap();
        assert!(matches!(
            configured.add("wall", "acme", 0),
            Err(AccountError::Taken)
        ));

        // Across a restart the account still logs in.
        drop(accounts);
        drop(configured);
        let again = Accounts::open(&db, registry.clone(), &[]).unwrap();
        assert!(again.check("dev-1@acme", &pw.0).is_some());
        again.remove("dev-1@acme", Some("acme")).unwrap();
        assert!(again.check("dev-1@acme", &pw.0).is_none());
        // A tenant's accounts are bounded.
        for i in 0..MAX_ACCOUNTS_PER_TENANT {
            again.add(&format!("a{i}"), "big", 0).unwrap();
        }
        assert!(matches!(
            again.add("one-more", "big", 0),
            Err(AccountError::TooMany)
        ));
        assert!(again.add("one-more", "small", 0).is_ok());
    }
}
