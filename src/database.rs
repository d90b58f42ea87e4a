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

use std::collections::HashSet;
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
    /// Blob files already synced. sled names a blob by the log sequence
    /// number of the page it belongs to, and ids do not come in the order
    /// their files are created, so no high-water mark will do.
    synced_blobs: Mutex<HashSet<u64>>,
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
                    synced_blobs: Mutex::new(HashSet::new()),
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
        let Some(s) = &self.sync else {
            self.db.flush()?;
            return Ok(());
        };
        let listed = s.list_blobs()?;
        self.db.flush()?;
        s.sync(listed)?;
        self.syncs.inc();
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
    /// The blob files present now. A blob is written while its page's log
    /// message is reserved, so one listed before a flush is complete once
    /// that flush has returned; one created during the flush waits for the
    /// next.
    fn list_blobs(&self) -> std::io::Result<Vec<(u64, PathBuf)>> {
        // Blobs are rare (a page larger than a quarter segment): listing an
        // empty or absent directory is the usual cost.
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push((id, entry.path()));
            }
        }
        Ok(out)
    }

    /// After sled's flush: the log, then the blobs listed before it that
    /// were not synced yet.
    fn sync(&self, listed: Vec<(u64, PathBuf)>) -> std::io::Result<()> {
        self.log.sync_data()?;
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        // Forget blobs sled has removed since.
        synced.retain(|id| listed.iter().any(|(l, _)| l == id));
        let mut new = false;
        for (id, path) in listed {
            if synced.contains(&id) {
                continue;
            }
            match File::open(&path) {
                Ok(f) => f.sync_data()?,
                // Removed by sled meanwhile: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            synced.insert(id);
            new = true;
        }
        if new {
            File::open(&self.blobs)?.sync_all()?;
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
