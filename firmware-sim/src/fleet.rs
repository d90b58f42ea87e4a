//! Where the simulated devices' credentials come from: the admin API, or a
//! file written earlier by `sealgate device add-bulk --out FILE`.
//!
//! Everything here is blocking (the admin client is synchronous); callers run
//! it off the async runtime.

use std::path::{Path, PathBuf};

use sealgate_client::{bulk_device_id, AdminClient, BulkCredentials, Credentials};
use sealgate_envelope::{normalise_device_id, DeviceKeys};

use crate::c_sealer::CDevice;
use crate::message::{SealImpl, Sealer};

/// One simulated ESP32: what it would have in flash.
#[derive(Debug)]
pub struct SimDevice {
    pub id: String,
    pub kid: u32,
    /// Kept whatever seals: the attacks forge and check with raw keys.
    pub keys: DeviceKeys,
    pub sealer: Sealer,
    /// The registry's token, or the same one made by the C library.
    pub mqtt_password: String,
}

#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Admin {
        url: String,
        token: Option<String>,
        prefix: String,
        count: u32,
    },
}

/// The devices of the run, sealing with `imp`. `want` caps how many a file
/// contributes (attacks need exactly two); the admin API is asked for the
/// count in `source`.
pub fn provision(
    source: &Source,
    want: Option<usize>,
    imp: SealImpl,
) -> Result<Vec<SimDevice>, String> {
    let creds = match source {
        Source::File(path) => read_file(path)?,
        Source::Admin {
            url,
            token,
            prefix,
            count,
        } => {
            let token = token.as_deref().filter(|t| !t.is_empty()).ok_or(
                "an admin token is needed to provision devices: pass --admin-token \
                 (or set SEALGATE_ADMIN_TOKEN), or use --devices-file",
            )?;
            from_admin(&AdminClient::new(url, token), prefix, *count)?
        }
    };
    let mut creds = creds;
    if let Some(n) = want {
        if creds.len() < n {
            return Err(format!(
                "{n} devices are needed but only {} are available",
                creds.len()
            ));
        }
        creds.truncate(n);
    }
    if creds.is_empty() {
        return Err("no devices to simulate".into());
    }
    creds.iter().map(|c| to_device(c, imp)).collect()
}

fn read_file(path: &Path) -> Result<Vec<Credentials>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bulk: BulkCredentials = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not the JSON written by `sealgate device add-bulk --out`: {e}",
            path.display()
        )
    })?;
    Ok(bulk.devices)
}

/// Registers `count` devices; when they exist already (an earlier run with the
/// same prefix) their secrets are gone for good, so each key is rotated to get
/// fresh credentials instead.
fn from_admin(client: &AdminClient, prefix: &str, count: u32) -> Result<Vec<Credentials>, String> {
    match client.add_bulk(prefix, count) {
        Ok(bulk) => Ok(bulk.devices),
        Err(e) if e.status() == Some(409) => {
            tracing::info!(prefix, count, "Devices exist already; rotating their keys.");
            (1..=count)
                .map(|i| {
                    let id = bulk_device_id(prefix, i, count);
                    match client.rotate(&id) {
                        Ok(c) => Ok(c),
                        Err(e) if e.status() == Some(404) => client
                            .add(&id, None)
                            .map_err(|e| format!("cannot register device {id}: {e}")),
                        Err(e) => Err(format!("cannot rotate the key of device {id}: {e}")),
                    }
                })
                .collect()
        }
        Err(e) => Err(format!(
            "cannot register {count} devices with prefix {prefix:?}: {e}"
        )),
    }
}

fn to_device(c: &Credentials, imp: SealImpl) -> Result<SimDevice, String> {
    let id = normalise_device_id(&c.device_id)
        .map_err(|e| format!("device id {:?}: {e}", c.device_id))?;
    if id != c.device_id {
        return Err(format!(
            "device id {:?} is not in normal form (expected {id:?})",
            c.device_id
        ));
    }
    let mut secret = [0u8; 32];
    hex::decode_to_slice(c.secret.trim(), &mut secret)
        .map_err(|_| format!("device {id}: secret is not 64 hex digits"))?;
    if c.kid == 0 {
        return Err(format!("device {id}: kid must be at least 1"));
    }
    let (sealer, mqtt_password) = match imp {
        SealImpl::Rust => (Sealer::Rust, c.mqtt_password.clone()),
        SealImpl::C => {
            let dev = CDevice::new(&id, c.kid, &secret)?;
            // Expiry 0, as the token the registry issued: the device makes
            // its own password, as firmware does.
            let password = dev.connect_password(0)?;
            (Sealer::C(Box::new(dev)), password)
        }
    };
    let keys = DeviceKeys::from_secret(&secret);
    secret.fill(0);
    Ok(SimDevice {
        id,
        kid: c.kid,
        keys,
        sealer,
        mqtt_password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_ids_match_the_gateway_rule() {
        assert_eq!(bulk_device_id("sim-", 1, 10), "sim-0001");
        assert_eq!(bulk_device_id("sim-", 10, 10), "sim-0010");
        assert_eq!(bulk_device_id("sim-", 7, 123_456), "sim-000007");
    }

    fn creds(id: &str, secret: &str) -> Credentials {
        Credentials {
            device_id: id.into(),
            kid: 1,
            secret: secret.into(),
            mqtt_password: "v1:0:00".into(),
        }
    }

    #[test]
    fn file_devices_are_checked() {
        let good = "ab".repeat(32);
        let rust = SealImpl::Rust;
        assert!(to_device(&creds("sim-0001", &good), rust).is_ok());
        assert!(to_device(&creds("SIM-0001", &good), rust).is_err());
        assert!(to_device(&creds("sim-0001", "zz"), rust).is_err());
    }

    #[test]
    fn reads_bulk_file_and_caps_count() {
        let dir = std::env::temp_dir().join(format!("fwsim-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("devices.json");
        let bulk = BulkCredentials {
            devices: vec![
                creds("a1", &"01".repeat(32)),
                creds("a2", &"02".repeat(32)),
                creds("a3", &"03".repeat(32)),
            ],
        };
        std::fs::write(&path, serde_json::to_string(&bulk).expect("json")).expect("write");
        let all = provision(&Source::File(path.clone()), None, SealImpl::Rust).expect("all");
        assert_eq!(all.len(), 3);
        let two = provision(&Source::File(path.clone()), Some(2), SealImpl::Rust).expect("two");
        assert_eq!(
            two.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["a1", "a2"]
        );
        assert!(provision(&Source::File(path.clone()), Some(4), SealImpl::Rust).is_err());
        std::fs::write(&path, "{}").expect("write");
        assert!(provision(&Source::File(path), None, SealImpl::Rust).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn admin_without_token_is_a_clear_error() {
        let src = Source::Admin {
            url: "http://127.0.0.1:9".into(),
            token: None,
            prefix: "sim-".into(),
            count: 1,
        };
        let e = provision(&src, None, SealImpl::Rust).expect_err("no token");
        assert!(e.contains("--admin-token"), "{e}");
    }
}
