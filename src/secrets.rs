//! The master key and the admin token at rest: created once in the data
//! directory, owner-only, and refused when anyone else could read them.
//!
//! A key file other users can read is already a leak, and starting on it
//! would hide that; like ssh with a private key, the gateway refuses and
//! tells the operator how to fix the mode. Values given by environment
//! (`SEALGATE_MASTER_KEY`, `SEALGATE_ADMIN_TOKEN`) skip the files entirely.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::envelope::MasterKey;

/// The shortest admin token accepted, from a file or the environment.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{what} file {path}: {reason}")]
    Io {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{what} file {path} can be read by group or others (mode {mode:04o}); run `chmod 600 {path}` and start again")]
    Exposed {
        what: &'static str,
        path: String,
        mode: u32,
    },
    #[error("{what} file {path} {reason}")]
    Invalid {
        what: &'static str,
        path: String,
        reason: &'static str,
    },
}

/// The admin bearer token. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// `None` when shorter than [`MIN_ADMIN_TOKEN_LEN`] after trimming.
    pub fn new(token: &str) -> Option<AdminToken> {
        let t = token.trim();
        (t.len() >= MIN_ADMIN_TOKEN_LEN).then(|| AdminToken(t.to_owned()))
    }

    /// The token itself, for hashing into the admin API's digest only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// The secrets a gateway runs with.
#[derive(Debug)]
pub struct Secrets {
    pub master: MasterKey,
    pub admin_token: AdminToken,
}

/// Path of the master key file in a data directory.
pub fn master_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("master.key")
}

/// Path of the admin token file in a data directory (the CLI reads it).
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// The environment's values, else the files in the data directory (which
/// must exist), created on first start. The caller creates the directory.
pub fn load(config: &Config) -> Result<Secrets, SecretsError> {
    let dir = &config.data_dir;
    let mut created = false;
    let master = match &config.master_key {
        Some(k) => k.clone(),
        None => {
            let path = master_key_path(dir);
            let hex = load_or_create(&path, 32, "master key", &mut created)?;
            MasterKey::from_hex(&hex)
                .ok_or_else(|| invalid(&path, "master key", "does not hold 64 hex digits"))?
        }
    };
    let admin_token = match &config.admin_token {
        Some(t) => t.clone(),
        None => {
            let path = admin_token_path(dir);
            let text = load_or_create(&path, 24, "admin token", &mut created)?;
            AdminToken::new(&text)
                .ok_or_else(|| invalid(&path, "admin token", "holds fewer than 16 characters"))?
        }
    };
    if created {
        // The new files' directory entries are durable only once the
        // directory itself is synced: a crash must not lose a key that
        // devices were already provisioned from.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| SecretsError::Io {
                what: "data directory",
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
    }
    Ok(Secrets {
        master,
        admin_token,
    })
}

fn invalid(path: &Path, what: &'static str, reason: &'static str) -> SecretsError {
    SecretsError::Invalid {
        what,
        path: path.display().to_string(),
        reason,
    }
}

/// Reads the secret at `path` (owner-only, or refused), or creates one of
/// `len` random bytes, hex encoded, with mode 0600 and sets `created`.
fn load_or_create(
    path: &Path,
    len: usize,
    what: &'static str,
    created: &mut bool,
) -> Result<String, SecretsError> {
    let io = |e: std::io::Error| SecretsError::Io {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut bytes = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let hex = hex::encode(bytes);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(mut f) => {
            f.write_all(hex.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(io)?;
            *created = true;
            tracing::info!(path = %path.display(), "Created {what} file (mode 0600). Back it up with the data directory.");
            Ok(hex)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_private(path, what),
        Err(e) => Err(io(e)),
    }
}

/// Reads a secret file, refusing it if group or others have any access.
/// The mode is taken from the open file, so it is the file that was read.
fn read_private(path: &Path, what: &'static str) -> Result<String, SecretsError> {
    let io = |e: std::io::Error| SecretsError::Io {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut f = File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(invalid(path, what, "is not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::Exposed {
                what,
                path: path.display().to_string(),
                mode,
            });
        }
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io)?;
    Ok(text.trim().to_owned())
}
