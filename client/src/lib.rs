//! A small blocking client for sealgate's admin API and the API's request
//! and answer types, shared by the gateway, the `sealgate device` CLI and
//! firmware-sim, so the API is spoken in one place and firmware-sim needs
//! nothing of the server.

use serde::{Deserialize, Serialize};

/// The id the bulk endpoint gives device `i` (from 1) of `count`: the prefix
/// and the index zero-padded to at least four digits. Part of the API: a
/// client that must name the devices a bulk call created uses this.
pub fn bulk_device_id(prefix: &str, i: u32, count: u32) -> String {
    let width = count.to_string().len().max(4);
    format!("{prefix}{i:0width$}")
}

/// The one response that carries a device secret: `add`, `rotate` and
/// `migrate` only. `Debug` shows neither the secret nor the connect token.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credentials {
    pub device_id: String,
    pub kid: u32,
    /// The device secret `S`, 64 hex digits. Shown once. Absent for a device
    /// added on the legacy profile: it seals with its imported keys, and gets
    /// a v1 secret only when migrated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
    /// A connect token that never expires, ready to use as MQTT password.
    pub mqtt_password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("device_id", &self.device_id)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A device as the API shows it (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceView {
    pub device_id: String,
    pub label: String,
    /// `v1` or `legacy-ecowatt`.
    #[serde(default = "v1")]
    pub profile: String,
    pub state: String,
    pub kid: u32,
    pub previous_kid: Option<u32>,
    pub previous_kid_valid_until: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    pub last_seen: Option<String>,
    pub highest_nonce: u64,
    pub auto_registered: bool,
    /// The owning tenant; absent for a device no tenant owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

fn v1() -> String {
    "v1".into()
}

/// The imported keys of a device on the legacy profile, as hex. Sent once,
/// at registration; the gateway stores them encrypted and never returns them.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LegacyKeysHex {
    pub psk_hmac: String,
    pub psk_aes: String,
    pub iv: String,
}

impl std::fmt::Debug for LegacyKeysHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LegacyKeysHex(..)")
    }
}

/// A tenant's API key, shown once (`tenant add`, `tenant rotate-key`).
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantKey {
    pub name: String,
    pub api_key: String,
    #[serde(default)]
    pub created_at: Option<String>,
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantView {
    pub name: String,
    pub created_at: String,
    pub key_rotated_at: Option<String>,
    /// How many devices it owns.
    pub devices: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantList {
    pub tenants: Vec<TenantView>,
}

/// A one-time code a device presents to claim itself for `tenant`.
/// `Debug` does not show the code: whoever holds a random one holds the
/// claim, as far as the device's MAC goes.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PairingCode {
    pub pairing_code: String,
    pub tenant: String,
    pub expires_at: String,
}

impl std::fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingCode")
            .field("tenant", &self.tenant)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A tenant's dashboard account; `password` only in the answer that made it.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserAccount {
    pub name: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

impl std::fmt::Debug for UserAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserAccount")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserList {
    pub users: Vec<UserAccount>,
}

/// A successful claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Claimed {
    pub device_id: String,
    pub tenant: String,
    pub claimed_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkCredentials {
    pub devices: Vec<Credentials>,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub error: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status} {}: {}", body.error, body.message)]
    Api { status: u16, body: ApiError },
    #[error("cannot reach the admin API at {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("unexpected answer from the admin API: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub struct AdminClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl AdminClient {
    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token this client sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `base` is like `http://127.0.0.1:8080`.
    pub fn new(base: &str, token: &str) -> AdminClient {
        AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(30))
                .build(),
        }
    }

    fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let url = format!("{}/api/v1/{}", self.base, path);
        let req = self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token));
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => r
                .into_json::<T>()
                .map_err(|e| ClientError::Decode(e.to_string())),
            Err(ureq::Error::Status(status, r)) => {
                let body = r.into_json::<ApiError>().unwrap_or(ApiError {
                    error: "http".into(),
                    message: format!("HTTP {status}"),
                });
                Err(ClientError::Api { status, body })
            }
            Err(e) => Err(ClientError::Transport {
                url,
                reason: e.to_string(),
            }),
        }
    }

    pub fn add(&self, device_id: &str, label: Option<&str>) -> Result<Credentials, ClientError> {
        self.call(
            "POST",
            "devices",
            Some(serde_json::json!({ "device_id": device_id, "label": label })),
        )
    }

    /// Registers a device on the legacy EcoWatt profile with its imported keys.
    pub fn add_legacy(
        &self,
        device_id: &str,
        label: Option<&str>,
        keys: &LegacyKeysHex,
    ) -> Result<Credentials, ClientError> {
        self.call(
            "POST",
            "devices",
            Some(serde_json::json!({
                "device_id": device_id,
                "label": label,
                "profile": "legacy-ecowatt",
                "psk_hmac": keys.psk_hmac,
                "psk_aes": keys.psk_aes,
                "iv": keys.iv,
            })),
        )
    }

    /// Moves a legacy device to v1; the answer carries its v1 secret, once.
    pub fn migrate(&self, device_id: &str) -> Result<Credentials, ClientError> {
        self.call("POST", &format!("devices/{}/migrate", enc(device_id)), None)
    }

    pub fn add_tenant(&self, name: &str) -> Result<TenantKey, ClientError> {
        self.call("POST", "tenants", Some(serde_json::json!({ "name": name })))
    }

    pub fn list_tenants(&self) -> Result<TenantList, ClientError> {
        self.call("GET", "tenants", None)
    }

    pub fn rotate_tenant_key(&self, name: &str) -> Result<TenantKey, ClientError> {
        self.call("POST", &format!("tenants/{}/rotate-key", enc(name)), None)
    }

    /// Operator only: gives the device to `tenant`.
    pub fn assign(&self, device_id: &str, tenant: &str) -> Result<DeviceView, ClientError> {
        self.call(
            "POST",
            &format!("devices/{}/assign", enc(device_id)),
            Some(serde_json::json!({ "tenant": tenant })),
        )
    }

    /// Operator only: the device has no owner afterwards.
    pub fn release(&self, device_id: &str) -> Result<DeviceView, ClientError> {
        self.call("POST", &format!("devices/{}/release", enc(device_id)), None)
    }

    /// A pairing code: a tenant's own (`tenant` None), or, for the
    /// operator, one for `tenant`.
    pub fn pairing_code(&self, tenant: Option<&str>) -> Result<PairingCode, ClientError> {
        self.pairing_code_chosen(tenant, None)
    }

    /// A pairing code the caller chose (`code`), or a random one.
    pub fn pairing_code_chosen(
        &self,
        tenant: Option<&str>,
        code: Option<&str>,
    ) -> Result<PairingCode, ClientError> {
        let mut body = serde_json::json!({});
        if let Some(t) = tenant {
            body["tenant"] = t.into();
        }
        if let Some(c) = code {
            body["pairing_code"] = c.into();
        }
        self.call("POST", "pairing-codes", Some(body))
    }

    /// A dashboard account of a tenant (the caller's own tenant, or, for the
    /// operator, `tenant`); the answer carries its password, once.
    pub fn add_user(&self, name: &str, tenant: Option<&str>) -> Result<UserAccount, ClientError> {
        let body = match tenant {
            Some(t) => serde_json::json!({ "name": name, "tenant": t }),
            None => serde_json::json!({ "name": name }),
        };
        self.call("POST", "users", Some(body))
    }

    pub fn list_users(&self) -> Result<UserList, ClientError> {
        self.call("GET", "users", None)
    }

    /// Deletes an account; its connections are closed.
    pub fn remove_user(&self, name: &str) -> Result<UserAccount, ClientError> {
        self.call("DELETE", &format!("users/{}", enc(name)), None)
    }

    /// A tenant claims a device with the code printed on it.
    pub fn claim_with_code(
        &self,
        device_id: &str,
        claim_code: &str,
    ) -> Result<Claimed, ClientError> {
        self.call(
            "POST",
            &format!("devices/{}/claim", enc(device_id)),
            Some(serde_json::json!({ "claim_code": claim_code })),
        )
    }

    /// What a device sends to claim itself (no bearer token is needed).
    pub fn claim(
        &self,
        device_id: &str,
        pairing_code: &str,
        nonce: u64,
        mac_hex: &str,
    ) -> Result<Claimed, ClientError> {
        self.call(
            "POST",
            "claim",
            Some(serde_json::json!({
                "device_id": device_id,
                "pairing_code": pairing_code,
                "nonce": nonce,
                "mac": mac_hex,
            })),
        )
    }

    pub fn add_bulk(&self, prefix: &str, count: u32) -> Result<BulkCredentials, ClientError> {
        self.call(
            "POST",
            "devices/bulk",
            Some(serde_json::json!({ "prefix": prefix, "count": count })),
        )
    }

    pub fn list(&self) -> Result<DeviceList, ClientError> {
        self.call("GET", "devices", None)
    }

    pub fn show(&self, device_id: &str) -> Result<DeviceView, ClientError> {
        self.call("GET", &format!("devices/{}", enc(device_id)), None)
    }

    pub fn rename(&self, device_id: &str, label: &str) -> Result<DeviceView, ClientError> {
        self.call(
            "PATCH",
            &format!("devices/{}", enc(device_id)),
            Some(serde_json::json!({ "label": label })),
        )
    }

    pub fn revoke(&self, device_id: &str) -> Result<DeviceView, ClientError> {
        self.call("POST", &format!("devices/{}/revoke", enc(device_id)), None)
    }

    pub fn rotate(&self, device_id: &str) -> Result<Credentials, ClientError> {
        self.call("POST", &format!("devices/{}/rotate", enc(device_id)), None)
    }

    pub fn reset_nonce(&self, device_id: &str) -> Result<DeviceView, ClientError> {
        self.call(
            "POST",
            &format!("devices/{}/reset-nonce", enc(device_id)),
            None,
        )
    }
}

/// Device ids may hold `:`; keep path segments unambiguous.
fn enc(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debug output ends up in panics and logs; sockets cannot reach it.
    #[test]
    fn debug_shows_no_secret_token_or_code() {
        let c = Credentials {
            device_id: "d1".into(),
            kid: 2,
            secret: "5ec2e7".repeat(10),
            mqtt_password: "v1:0:70ce4a".into(),
        };
        let shown = format!(
            "{c:?} {:?}",
            BulkCredentials {
                devices: vec![c.clone()]
            }
        );
        assert!(shown.contains("d1"), "{shown}");
        assert!(
            !shown.contains("5ec2e7") && !shown.contains("70ce4a"),
            "{shown}"
        );
        let p = PairingCode {
            pairing_code: "QX7P-2KFA".into(),
            tenant: "acme".into(),
            expires_at: "2026-01-01T00:00:00Z".into(),
        };
        let shown = format!("{p:?}");
        assert!(shown.contains("acme") && !shown.contains("QX7P"), "{shown}");
    }
}
