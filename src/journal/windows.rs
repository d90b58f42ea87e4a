//! Window writes the journal holds and sled does not yet.
//!
//! Why: a device's window is rewritten by every batch it has a message in,
//! which at fleet rates is nearly one sled insert per message, the largest
//! cost of a commit after its sync. The journal record already makes each
//! of those writes durable, and sled only has to hold a window by the time
//! the checkpoint deletes the journal file that has it. So the commit
//! stage keeps each device's last window here, and the checkpoint writes
//! them to sled, one per device, before the flush that lets it delete the
//! file: a window is written to sled about once a second instead of once
//! per batch.
//!
//! The verifier never reads them back (it keeps every window it has loaded
//! in memory); the admin API does, through [`Windows::get`], so `show`
//! stays current.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A window's last write: its durable form, or `None` for a reset.
type Writes = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// The windows tree as the journal sees it: sled, under the writes not yet
/// in sled. Cheap to clone; every clone is the same state.
#[derive(Clone)]
pub struct Windows(Arc<Inner>);

struct Inner {
    tree: sled::Tree,
    /// Written by batches of the current journal file.
    current: Mutex<Writes>,
    /// Of files handed to the checkpoint: kept until a checkpoint's flush
    /// has them, so a failed checkpoint's writes go with the next one.
    handed: Mutex<Writes>,
}

/// A poisoned lock here only means a thread panicked between two map
/// operations, each of which leaves the map whole.
fn lock(m: &Mutex<Writes>) -> MutexGuard<'_, Writes> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Windows {
    pub fn new(tree: sled::Tree) -> Windows {
        Windows(Arc::new(Inner {
            tree,
            current: Mutex::default(),
            handed: Mutex::default(),
        }))
    }

    /// A device's window as last written: here if not yet in sled.
    pub fn get(&self, key: &[u8]) -> sled::Result<Option<sled::IVec>> {
        let current = lock(&self.0.current);
        let latest = match current.get(key) {
            Some(w) => Some(w.clone()),
            None => lock(&self.0.handed).get(key).cloned(),
        };
        match latest {
            Some(w) => Ok(w.map(sled::IVec::from)),
            // Still under `current`'s lock: a rotation cannot move a write
            // past this read.
            None => self.0.tree.get(key),
        }
    }

    /// Keeps a batch's window writes, in order, until the checkpoint.
    pub(super) fn defer<'a>(&self, writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>) {
        let mut current = lock(&self.0.current);
        for (key, value) in writes {
            let value = value.map(<[u8]>::to_vec);
            match current.get_mut(key) {
                Some(slot) => *slot = value,
                None => {
                    current.insert(key.to_vec(), value);
                }
            }
        }
    }

    /// At rotation: the current file's writes go to the checkpoint (over
    /// any a failed checkpoint left, which are older).
    pub(super) fn hand_over(&self) {
        let mut current = lock(&self.0.current);
        lock(&self.0.handed).extend(current.drain());
    }

    /// The checkpoint's part, before its flush: every handed write to sled.
    pub(super) fn write_handed(&self) -> sled::Result<()> {
        let handed = lock(&self.0.handed);
        for (key, value) in handed.iter() {
            match value {
                Some(v) => self.0.tree.insert(key.as_slice(), v.as_slice())?,
                None => self.0.tree.remove(key)?,
            };
        }
        Ok(())
    }

    /// After a checkpoint's flush: sled has every handed write for good.
    pub(super) fn forget_handed(&self) {
        lock(&self.0.handed).clear();
    }
}
