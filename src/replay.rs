//! The per-device nonce window (spec section 6) and its durable home in sled.
//!
//! [`Window`] is pure: it decides a verdict and records an acceptance in
//! memory. [`ReplayStore`] owns every device's window and stages the ones a
//! batch touched for the commit journal (`crate::journal`), which makes them
//! durable with the batch (group commit) and writes them to sled at its
//! checkpoint. The verifier publishes nothing from a batch until its record
//! is durable, so no crash can let a replay through.

use std::collections::{HashMap, HashSet};

use crate::events::RejectReason;

/// What the window says about a nonce whose MAC is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowVerdict {
    Accept,
    Reject(RejectReason),
}

/// Sliding replay window of `size` nonces ending at the highest accepted one.
///
/// Bit `i` of `seen` says whether nonce `highest - i` was accepted. `macs`
/// holds the first 8 bytes of each accepted MAC by slot (`nonce % size`) so a
/// retransmission (`duplicate`) can be told from a counter reused for other
/// content (`nonce_reuse`). They live in memory only: after a restart a seen
/// nonce is still refused, as `duplicate`, because the gateway cannot know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    highest: u64,
    seen: Vec<u64>,
    macs: Vec<u64>,
    size: u32,
}

/// An unknown MAC fingerprint (after restart or reset). A real fingerprint
/// of zero is possible with probability 2^-64 and only softens a
/// `nonce_reuse` into `duplicate`.
const MAC_UNKNOWN: u64 = 0;

fn mac_fingerprint(mac: &[u8; 32]) -> u64 {
    u64::from_be_bytes(mac[..8].try_into().expect("8 bytes"))
}

impl Window {
    pub fn new(size: u32) -> Window {
        let size = size.max(1);
        Window {
            highest: 0,
            seen: vec![0; size.div_ceil(64) as usize],
            macs: vec![MAC_UNKNOWN; size as usize],
            size,
        }
    }

    pub fn highest(&self) -> u64 {
        self.highest
    }

    fn bit(&self, i: u64) -> bool {
        self.seen[(i / 64) as usize] >> (i % 64) & 1 == 1
    }

    fn set_bit(&mut self, i: u64) {
        self.seen[(i / 64) as usize] |= 1 << (i % 64);
    }

    /// Shifts the bitmap so that bit 0 stands for `highest + by`.
    fn slide(&mut self, by: u64) {
        if by >= u64::from(self.size) {
            self.seen.iter_mut().for_each(|w| *w = 0);
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        let n = self.seen.len();
        for idx in (0..n).rev() {
            let lo = idx.checked_sub(words).map_or(0, |s| self.seen[s]);
            let carry = match idx.checked_sub(words + 1) {
                Some(s) if bits > 0 => self.seen[s] >> (64 - bits),
                _ => 0,
            };
            self.seen[idx] = if bits == 0 { lo } else { lo << bits | carry };
        }
        let tail = self.size % 64;
        if tail != 0 {
            self.seen[n - 1] &= (1u64 << tail) - 1;
        }
    }

    /// Decides a verdict without changing anything.
    pub fn check(&self, nonce: u64, mac: &[u8; 32]) -> WindowVerdict {
        if nonce > self.highest {
            return WindowVerdict::Accept;
        }
        let back = self.highest - nonce;
        if back >= u64::from(self.size) {
            return WindowVerdict::Reject(RejectReason::StaleNonce);
        }
        if !self.bit(back) {
            return WindowVerdict::Accept;
        }
        let known = self.macs[(nonce % u64::from(self.size)) as usize];
        if known == MAC_UNKNOWN || known == mac_fingerprint(mac) {
            WindowVerdict::Reject(RejectReason::Duplicate)
        } else {
            WindowVerdict::Reject(RejectReason::NonceReuse)
        }
    }

    /// Records an accepted nonce. Callers check first; recording a nonce the
    /// window would refuse is a bug and is ignored.
    pub fn accept(&mut self, nonce: u64, mac: &[u8; 32]) {
        if self.check(nonce, mac) != WindowVerdict::Accept {
            return;
        }
        if nonce > self.highest {
            self.slide(nonce - self.highest);
            self.highest = nonce;
        }
        self.set_bit(self.highest - nonce);
        self.macs[(nonce % u64::from(self.size)) as usize] = mac_fingerprint(mac);
    }

    /// Durable form: `highest` then the bitmap words, all big-endian.
    fn encode(&self, last_seen_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * self.seen.len());
        out.extend_from_slice(&self.highest.to_be_bytes());
        out.extend_from_slice(&last_seen_ms.to_be_bytes());
        for w in &self.seen {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// Reads the durable form written with any window size. Nonces the stored
    /// bitmap does not cover (the window grew) are taken as seen: refusing a
    /// fresh message is recoverable, delivering a replay is not.
    fn decode(bytes: &[u8], size: u32) -> Option<(Window, u64)> {
        if bytes.len() < 16 || (bytes.len() - 16) % 8 != 0 {
            return None;
        }
        let word = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let mut w = Window::new(size);
        w.highest = word(0);
        let last_seen = word(8);
        let stored_words = (bytes.len() - 16) / 8;
        for (idx, slot) in w.seen.iter_mut().enumerate() {
            *slot = if idx < stored_words {
                word(16 + idx * 8)
            } else {
                0
            };
        }
        for i in (stored_words as u64 * 64)..u64::from(size).min(w.highest) {
            w.set_bit(i);
        }
        let tail = size % 64;
        if tail != 0 {
            let n = w.seen.len();
            w.seen[n - 1] &= (1u64 << tail) - 1;
        }
        Some((w, last_seen))
    }
}

/// Persisted state of one device's window, as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSummary {
    pub highest_nonce: u64,
    pub last_seen_ms: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("replay store unavailable: {0}")]
pub struct StoreError(#[from] sled::Error);

/// Every device's window, cached in memory and persisted in one sled tree.
pub struct ReplayStore {
    /// Read through the journal's view: sled lags it until a checkpoint.
    tree: crate::journal::Windows,
    size: u32,
    windows: HashMap<String, (Window, u64)>,
    dirty: HashSet<String>,
    /// Writes made since the last stage that the journal has not seen (a
    /// reset's removal), ahead of the next batch's.
    ops: crate::journal::Ops,
}

impl ReplayStore {
    pub const TREE: &'static str = "windows";

    /// Over the journal's view of the windows ([`crate::journal::Windows`]),
    /// never sled's tree alone: that lags until a checkpoint.
    pub fn new(windows: crate::journal::Windows, size: u32) -> ReplayStore {
        ReplayStore {
            tree: windows,
            size,
            windows: HashMap::new(),
            dirty: HashSet::new(),
            ops: Default::default(),
        }
    }

    /// Reads a device's persisted window summary without loading it.
    pub fn summary(windows: &crate::journal::Windows, device_id: &str) -> Option<WindowSummary> {
        let bytes = windows.get(device_id.as_bytes()).ok()??;
        let words = bytes.len().saturating_sub(16) / 8;
        let (w, last_seen_ms) = Window::decode(&bytes, (words as u32 * 64).max(1))?;
        Some(WindowSummary {
            highest_nonce: w.highest,
            last_seen_ms,
        })
    }

    /// The window of `device_id`, loaded from sled on first use.
    pub fn window(&mut self, device_id: &str) -> Result<&Window, StoreError> {
        self.load(device_id)?;
        Ok(&self.windows[device_id].0)
    }

    fn load(&mut self, device_id: &str) -> Result<(), StoreError> {
        if !self.windows.contains_key(device_id) {
            let loaded = match self.tree.get(device_id.as_bytes())? {
                Some(bytes) => {
                    Window::decode(&bytes, self.size).unwrap_or_else(|| (Window::new(self.size), 0))
                }
                None => (Window::new(self.size), 0),
            };
            self.windows.insert(device_id.to_owned(), loaded);
        }
        Ok(())
    }

    /// Records an acceptance in memory; durable after the next `commit`.
    pub fn accept(
        &mut self,
        device_id: &str,
        nonce: u64,
        mac: &[u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.load(device_id)?;
        let entry = self.windows.get_mut(device_id).expect("loaded above");
        entry.0.accept(nonce, mac);
        entry.1 = now_ms;
        self.dirty.insert(device_id.to_owned());
        Ok(())
    }

    /// The batch's writes, in the order they are to be made: its outbox
    /// records and retained messages (`pending`), then every window touched
    /// since the last stage. Nothing is written to sled here: the commit
    /// stage journals them as one record and applies them to sled only once
    /// that record is durable (`crate::journal`), so sled never holds a
    /// window update whose message could still be lost (a resend would then
    /// be judged `duplicate`, acknowledged, and lost). The windows
    /// themselves are read from memory meanwhile.
    pub fn stage(&mut self, pending: Option<&mut crate::outbox::Pending>) -> crate::journal::Ops {
        // A reset's removal comes first, as it happened.
        let mut ops = std::mem::take(&mut self.ops);
        if let Some(p) = pending {
            ops.append(std::mem::take(&mut p.ops));
        }
        for id in self.dirty.drain() {
            let (w, last_seen) = &self.windows[&id];
            ops.insert(
                crate::journal::Tree::Windows,
                id.as_bytes(),
                &w.encode(*last_seen),
            );
        }
        ops
    }

    /// Forgets a device's window (operator reset after a flash wipe): at
    /// once in memory, and in sled with the next batch's commit, in journal
    /// order, so a replay after a crash cannot bring the old window back.
    pub fn reset(&mut self, device_id: &str) {
        self.windows
            .insert(device_id.to_owned(), (Window::new(self.size), 0));
        self.dirty.remove(device_id);
        self.ops
            .remove(crate::journal::Tree::Windows, device_id.as_bytes());
    }

    /// Whether a write waits for the next stage although no message did.
    pub fn has_pending(&self) -> bool {
        !self.ops.is_empty() || !self.dirty.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn run(w: &mut Window, nonce: u64, m: u8) -> WindowVerdict {
        let v = w.check(nonce, &mac(m));
        if v == WindowVerdict::Accept {
            w.accept(nonce, &mac(m));
        }
        v
    }

    #[test]
    fn spec_table() {
        use RejectReason::*;
        let mut w = Window::new(64);
        assert_eq!(run(&mut w, 100, 1), WindowVerdict::Accept);
        assert_eq!(run(&mut w, 99, 2), WindowVerdict::Accept);
        assert_eq!(run(&mut w, 99, 2), WindowVerdict::Reject(Duplicate));
        assert_eq!(run(&mut w, 99, 3), WindowVerdict::Reject(NonceReuse));
        assert_eq!(run(&mut w, 36, 4), WindowVerdict::Reject(StaleNonce));
        assert_eq!(run(&mut w, 37, 4), WindowVerdict::Accept);
        assert_eq!(run(&mut w, 164, 5), WindowVerdict::Accept);
        assert_eq!(run(&mut w, 100, 1), WindowVerdict::Reject(StaleNonce));
        assert_eq!(run(&mut w, 101, 6), WindowVerdict::Accept);
        assert_eq!(run(&mut w, 101, 6), WindowVerdict::Reject(Duplicate));
    }

    #[test]
    fn wide_windows_slide_across_words() {
        for size in [1u32, 63, 64, 65, 128, 200, 1000] {
            let mut w = Window::new(size);
            for n in (1..=3000u64).step_by(3) {
                assert_eq!(
                    run(&mut w, n, 1),
                    WindowVerdict::Accept,
                    "size {size} nonce {n}"
                );
            }
            for n in (1..=3000u64).step_by(3) {
                let back = w.highest() - n;
                let expect = if back >= u64::from(size) {
                    WindowVerdict::Reject(RejectReason::StaleNonce)
                } else {
                    WindowVerdict::Reject(RejectReason::Duplicate)
                };
                assert_eq!(w.check(n, &mac(1)), expect, "size {size} nonce {n}");
            }
            // Unseen nonces inside the window are still accepted.
            let top = w.highest();
            if size > 2 {
                assert_eq!(w.check(top - 1, &mac(1)), WindowVerdict::Accept);
            }
        }
    }

    #[test]
    fn durable_form_round_trips_and_forgets_macs() {
        let mut w = Window::new(64);
        for n in [5u64, 7, 9, 70] {
            w.accept(n, &mac(9));
        }
        let (back, seen) = Window::decode(&w.encode(42), 64).unwrap();
        assert_eq!(seen, 42);
        assert_eq!(back.highest(), 70);
        assert_eq!(
            back.check(9, &mac(1)),
            WindowVerdict::Reject(RejectReason::Duplicate)
        );
        assert_eq!(back.check(8, &mac(1)), WindowVerdict::Accept);
        assert_eq!(
            back.check(6, &mac(1)),
            WindowVerdict::Reject(RejectReason::StaleNonce)
        );
    }

    #[test]
    fn growing_the_window_treats_uncovered_nonces_as_seen() {
        let mut w = Window::new(64);
        w.accept(1000, &mac(1));
        let (big, _) = Window::decode(&w.encode(0), 128).unwrap();
        assert_eq!(big.check(999, &mac(1)), WindowVerdict::Accept);
        assert_eq!(
            big.check(900, &mac(1)),
            WindowVerdict::Reject(RejectReason::Duplicate)
        );
        assert_eq!(big.check(1001, &mac(1)), WindowVerdict::Accept);
    }

    #[test]
    fn store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::database::Database::for_tests(dir.path());
            let mut s = ReplayStore::new(crate::journal::Windows::open(&db).unwrap(), 64);
            s.accept("d", 10, &mac(1), 5).unwrap();
            let tree = db.open_tree(ReplayStore::TREE).unwrap();
            s.stage(None).apply(|_| &tree).unwrap();
            db.flush().unwrap();
        }
        let db = crate::test_support::reopen(dir.path());
        let windows = crate::journal::Windows::open(&db).unwrap();
        let mut s = ReplayStore::new(windows.clone(), 64);
        assert_eq!(
            s.window("d").unwrap().check(10, &mac(2)),
            WindowVerdict::Reject(RejectReason::Duplicate)
        );
        assert_eq!(
            ReplayStore::summary(&windows, "d"),
            Some(WindowSummary {
                highest_nonce: 10,
                last_seen_ms: 5
            })
        );
        s.reset("d");
        assert_eq!(
            s.window("d").unwrap().check(10, &mac(2)),
            WindowVerdict::Accept
        );
    }
}
