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
//! Everything that reads windows reads through [`Windows::get`]: the
//! verifier when it first meets a device, the admin API for `show`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

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
    /// has them, so a failed checkpoint's writes go with the next one. A
    /// lock readers share with the checkpoint's writing them out, so a read
    /// never waits for that (nor, through `current`, does a commit).
    handed: RwLock<Writes>,
}

/// A poisoned lock here only means a thread panicked between two map
/// operations, each of which leaves the map whole.
fn lock(m: &Mutex<Writes>) -> MutexGuard<'_, Writes> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Windows {
    /// The view of `db`'s windows tree. One per database: the journal's
    /// ([`super::Journal::windows`]) is the one that sees deferred writes.
    pub fn open(db: &sled::Db) -> sled::Result<Windows> {
        Ok(Windows(Arc::new(Inner {
            tree: db.open_tree(super::Tree::Windows.name())?,
            current: Mutex::default(),
            handed: RwLock::default(),
        })))
    }

    /// A device's window as last written: here if not yet in sled. Each
    /// place is looked at under its own lock only, newest first; a write
    /// moves only towards sled (current, handed, tree) and is in the next
    /// place before it leaves one, so what is read was the last write at
    /// some instant of the call.
    pub fn get(&self, key: &[u8]) -> sled::Result<Option<sled::IVec>> {
        let latest = lock(&self.0.current).get(key).cloned();
        let latest = latest.or_else(|| {
            let handed = self.0.handed.read().unwrap_or_else(|p| p.into_inner());
            handed.get(key).cloned()
        });
        match latest {
            Some(w) => Ok(w.map(sled::IVec::from)),
            None => self.0.tree.get(key),
        }
    }

    /// Keeps a batch's window writes, in order, until the checkpoint.
    pub(super) fn defer<'a>(&self, writes: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>) {
        let mut current = lock(&self.0.current);
        for (key, value) in writes {
            match (current.get_mut(key), value) {
                (Some(Some(buf)), Some(v)) => {
                    buf.clear();
                    buf.extend_from_slice(v);
                }
                (Some(slot), v) => *slot = v.map(<[u8]>::to_vec),
                (None, v) => {
                    current.insert(key.to_vec(), v.map(<[u8]>::to_vec));
                }
            }
        }
    }

    /// At rotation: the current file's writes go to the checkpoint (over
    /// any a failed checkpoint left, which are older).
    pub(super) fn hand_over(&self) {
        let mut current = lock(&self.0.current);
        let mut handed = self.0.handed.write().unwrap_or_else(|p| p.into_inner());
        handed.extend(current.drain());
    }

    /// The checkpoint's part, before its flush: every handed write to sled.
    pub(super) fn write_handed(&self) -> sled::Result<()> {
        let handed = self.0.handed.read().unwrap_or_else(|p| p.into_inner());
        handed
            .iter()
            .try_for_each(|(key, value)| super::set(&self.0.tree, key, value.as_deref()))
    }

    /// After a checkpoint's flush: sled has every handed write for good.
    /// Nothing is handed over while a checkpoint runs (the journal starts
    /// no file until the checkpoint answered), so this forgets only what
    /// the flush covered.
    pub(super) fn forget_handed(&self) {
        self.0
            .handed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint that failed leaves its windows handed; the next one
    /// writes them, under whatever was written since.
    #[test]
    fn a_failed_checkpoint_s_windows_go_with_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::database::Database::for_tests(dir.path());
        let w = Windows::open(&db).unwrap();
        let write = |k: &'static [u8], v: Option<&'static [u8]>| w.defer([(k, v)].into_iter());
        write(b"a", Some(b"a1"));
        write(b"b", Some(b"b1"));
        write(b"c", Some(b"c1"));
        w.hand_over();
        // That checkpoint fails before its flush: nothing forgotten.
        write(b"a", Some(b"a2"));
        write(b"b", None);
        assert_eq!(w.get(b"a").unwrap().unwrap(), b"a2"[..]);
        assert_eq!(w.get(b"b").unwrap(), None);
        assert_eq!(w.get(b"c").unwrap().unwrap(), b"c1"[..]);
        w.hand_over();
        w.write_handed().unwrap();
        w.forget_handed();
        let tree = db.open_tree("windows").unwrap();
        assert_eq!(tree.get(b"a").unwrap().unwrap(), b"a2"[..]);
        assert_eq!(tree.get(b"b").unwrap(), None);
        assert_eq!(tree.get(b"c").unwrap().unwrap(), b"c1"[..]);
        assert_eq!(
            w.get(b"c").unwrap().unwrap(),
            b"c1"[..],
            "read from sled now"
        );
    }
}
