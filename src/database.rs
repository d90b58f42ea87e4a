//! The one sled database, and what "flushed" means for it.
//!
//! Why this exists: sled 0.34 makes its log durable with `sync_file_range`
//! on Linux, not `fsync` (spacejam/sled#1452, open). That writes the pages
//! out but neither flushes the disk's volatile write cache nor commits the
//! file's size, and sled never syncs its blob files at all. It survives the
//! process dying (`kill -9`, OOM), which only needs the page cache; after a
//! power loss or a kernel crash, a flushed batch can be gone, and with it
//! messages the gateway acknowledged. With `durability = "power-loss"`
//! (the default) every flush here is followed by `fdatasync` of sled's log
//! and of any blob written since the last one, which is the promise a
//! PUBACK makes in `docs/architecture.md`.
//!
//! Every flush the gateway relies on goes through [`Database::flush`]; the
//! modules that keep trees hold a clone of this handle for that reason.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

/// What a flush survives (`database.durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// sled's flush, then `fdatasync`: the disk has the batch, cache and
    /// all, before anything is acknowledged.
    PowerLoss,
    /// sled's flush only: the batch survives the gateway process dying,
    /// not necessarily a power loss or a kernel crash.
    ProcessCrash,
}

/// The database handle every module shares. Dereferences to `sled::Db` for
/// opening trees; flushing goes through [`Database::flush`].
#[derive(Clone)]
pub struct Database {
    db: sled::Db,
    sync: Option<Arc<Syncer>>,
    syncs: Counter,
}

/// The files a power-loss-safe flush syncs after sled's own flush.
struct Syncer {
    log: File,
    blobs: PathBuf,
    /// The highest blob id already synced: sled names blobs by their log
    /// sequence number, so a newer blob has a larger name.
    synced_blob: Mutex<u64>,
}

/// sled's page cache would grow to 1 GiB by default: opening a registry of
/// a million devices reads every page once, and they would all stay
/// resident. The hot pages (windows of active devices, the outbox's head,
/// cached device records aside) fit in far less.
const SLED_CACHE_BYTES: u64 = 32 * 1024 * 1024;

impl Database {
    /// The one way the gateway opens its database (the registry scale
    /// example and the verify benchmark use it too, so they measure what the
    /// gateway runs). sled's own periodic flush is off: the commit stage
    /// flushes once per batch.
    pub fn open(path: &Path, durability: Durability) -> std::io::Result<Database> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(std::io::Error::other)?;
        let sync = match durability {
            Durability::ProcessCrash => None,
            Durability::PowerLoss => {
                // The directory entries of sled's files, made at creation.
                File::open(path)?.sync_all()?;
                Some(Arc::new(Syncer {
                    log: File::open(path.join("db"))?,
                    blobs: path.join("blobs"),
                    synced_blob: Mutex::new(0),
                }))
            }
        };
        Ok(Database {
            db,
            sync,
            syncs: Counter::default(),
        })
    }

    /// The gateway's default durability (`broker.toml`), for examples and
    /// benchmarks that must measure what the gateway runs.
    pub fn open_default(path: &Path) -> std::io::Result<Database> {
        Database::open(path, Durability::PowerLoss)
    }

    /// For tests: the default durability, and a panic on failure.
    #[doc(hidden)]
    pub fn for_tests(path: &Path) -> Database {
        Database::open_default(path).expect("open the test database")
    }

    /// Counts the disk syncs (`sealgate_database_syncs_total`).
    pub fn count_syncs(mut self, counter: Counter) -> Database {
        self.syncs = counter;
        self
    }

    /// The disk syncs counter, for the journal's own syncs.
    pub(crate) fn syncs(&self) -> &Counter {
        &self.syncs
    }

    /// Makes everything written so far durable, as `durability` says.
    pub fn flush(&self) -> sled::Result<()> {
        self.db.flush()?;
        if let Some(s) = &self.sync {
            s.sync()?;
            self.syncs.inc();
        }
        Ok(())
    }

    /// [`Database::flush`] off the async runtime's threads.
    pub async fn flush_async(&self) -> sled::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush())
            .await
            .map_err(|e| sled::Error::Io(std::io::Error::other(e)))?
    }
}

impl Syncer {
    fn sync(&self) -> std::io::Result<()> {
        self.log.sync_data()?;
        // Blobs are rare (a leaf larger than a quarter segment): listing an
        // empty or absent directory is the usual cost.
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self.synced_blob.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest = *synced;
        for entry in entries {
            let entry = entry?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if id > *synced {
                // A blob sled removed meanwhile needs no sync.
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                newest = newest.max(id);
            }
        }
        if newest > *synced {
            File::open(&self.blobs)?.sync_all()?;
            *synced = newest;
        }
        Ok(())
    }
}

impl std::ops::Deref for Database {
    type Target = sled::Db;

    fn deref(&self) -> &sled::Db {
        &self.db
    }
}
