//! CONNECT authentication (spec section 9): devices present a `v1:` token
//! derived from their key, dashboards a username and password. Anonymous
//! connections are refused.

use crate::accounts::Accounts;
use crate::envelope::{normalise_device_id, verify_connect_token, MasterKey};
use crate::events::ConnectRefusal;
use crate::registry::{DeviceState, Registry};

/// Who a connection is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A device, by normalised id.
    Device(String),
    /// A subscriber account (`crate::accounts`): configured, or made by a
    /// tenant. Whether it is confined to a tenant's mount is the session's
    /// `Login::mount`.
    Subscriber(String),
}

pub struct Authenticator {
    master: MasterKey,
    registry: Registry,
    /// Subscriber accounts, configured and API-made.
    accounts: Accounts,
    allow_no_expiry: bool,
    auto_register: bool,
}

impl Authenticator {
    pub fn new(
        master: MasterKey,
        registry: Registry,
        accounts: Accounts,
        allow_no_expiry: bool,
        auto_register: bool,
    ) -> Authenticator {
        Authenticator {
            master,
            registry,
            accounts,
            allow_no_expiry,
            auto_register,
        }
    }

    /// Whether a registered device is revoked now.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Whether a connected client may stay: a device not revoked, an
    /// account not deleted.
    pub fn is_gone(&self, role: &Role) -> bool {
        match role {
            Role::Device(id) => self.is_revoked(id),
            Role::Subscriber(name) => !self.accounts.is_account(name),
        }
    }

    pub fn is_revoked(&self, device_id: &str) -> bool {
        self.registry.with(device_id, |d| {
            d.is_some_and(|d| d.state == DeviceState::Revoked)
        })
    }

    /// Decides a CONNECT. Subscriber accounts are matched by username first;
    /// any other username is taken as a device id.
    pub fn authenticate(
        &self,
        client_id: &str,
        login: Option<(&str, &str)>,
        now_s: u64,
        now_ms: u64,
    ) -> Result<Role, ConnectRefusal> {
        let Some((username, password)) = login else {
            return Err(ConnectRefusal::NoCredentials);
        };
        if self.accounts.is_account(username) {
            return match self.accounts.check(username, password) {
                Some(a) => Ok(Role::Subscriber(a.name)),
                None => Err(ConnectRefusal::BadPassword),
            };
        }
        let device_id = normalise_device_id(username).map_err(|_| ConnectRefusal::UnknownDevice)?;
        if normalise_device_id(client_id).ok().as_deref() != Some(device_id.as_str()) {
            return Err(ConnectRefusal::ClientIdMismatch);
        }
        let kids: Vec<u32> = match self.registry.get(&device_id) {
            Some(d) if d.state == DeviceState::Revoked => return Err(ConnectRefusal::Revoked),
            Some(d) => std::iter::once(d.kid)
                .chain(
                    d.previous_kid
                        .filter(|_| d.previous_kid_until_ms.is_some_and(|u| now_ms < u)),
                )
                .collect(),
            // With auto-register on, a token under the kid 1 key proves the
            // master key made it; the device registers on its first message.
            None if self.auto_register => vec![1],
            None => return Err(ConnectRefusal::UnknownDevice),
        };
        let mut refused = ConnectRefusal::BadToken;
        for kid in kids {
            let keys = self.master.device_keys(&device_id, kid);
            match verify_connect_token(&keys, &device_id, password, now_s, self.allow_no_expiry) {
                Ok(()) => return Ok(Role::Device(device_id)),
                Err(crate::envelope::TokenError::Expired) => refused = ConnectRefusal::ExpiredToken,
                Err(_) => {}
            }
        }
        Err(refused)
    }
}
