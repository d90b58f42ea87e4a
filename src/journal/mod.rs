//! The commit journal: how a batch becomes durable without a sled flush.
//!
//! Why: at fleet rates most batches hold one message, and a sled 0.34 flush
//! per batch costs far more than the disk sync it ends with. Its I/O
//! threadpool wakes all seven of its idle threads for every write
//! (`docs/upstream/sled-threadpool-notify-all.md`), and the write still has
//! to be followed by our own `fdatasync` (`crate::database`). So the commit
//! stage appends the batch's writes (its outbox records, retained messages
//! and windows, encoded by the verifier) to this journal as one record,
//! syncs that one file, and only then writes them to sled, where readers
//! see them; windows wait for the checkpoint instead ([`Windows`]). sled's
//! own state reaches the disk at a checkpoint, about once a second, on a
//! thread of its own; sled therefore never holds a write whose record is
//! not durable.
//!
//! Why replaying it is exact: the journal holds every write to the three
//! trees it covers, in the order they are applied (one writer, the commit
//! thread; a window reset is journaled like the rest). A write sets a key
//! to a value or removes it, so replaying the journal from its oldest file
//! gives every key it touched its last value; a key it does not touch had
//! its last write before that file, made durable by the checkpoint that
//! deleted the older files. The one other writer to these trees is outbox
//! trimming, which only removes records below its marker; replay skips
//! records below the marker sled has.
//!
//! Layout: files `journal/{n:020}` in the data directory, owner-only (they
//! hold plaintext). A record is `len: u32 | crc32(body): u32 | body`, all
//! little-endian, `len` above 0; a body is a run of writes `tree: u8 |
//! key_len: u32 | key | 0 (remove) or 1 | value_len: u32 | value`. Zeros
//! after a file's last record are space it was given ahead of its writes
//! (`create`, [`prepare_spare`]). `journal/spare`, when present, is the next
//! file made ready ahead of time; replay never reads it. A record that does
//! not check is a crash's torn write only at the end of the last file that
//! holds any (newer files, if any, hold only zeros: a spare renamed into
//! place, or a file a failed rotation left); anywhere else it is corruption
//! and the start is refused.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::database::{Database, Durability};

mod windows;
pub use windows::Windows;

/// The trees the journal covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tree {
    Windows = 0,
    Outbox = 1,
    Retained = 2,
}

impl Tree {
    const ALL: [Tree; 3] = [Tree::Windows, Tree::Outbox, Tree::Retained];

    fn name(self) -> &'static str {
        match self {
            Tree::Windows => crate::replay::ReplayStore::TREE,
            Tree::Outbox => crate::outbox::Outbox::TREE,
            Tree::Retained => crate::outbox::Outbox::RETAINED_TREE,
        }
    }
}

/// The writes of one batch, encoded for the journal as they are made.
/// The buffer is the whole record: its first [`HEADER`] bytes are left for
/// the length and checksum the journal fills in, so appending it is one
/// write of one buffer.
#[derive(Debug, Default)]
pub struct Ops {
    buf: Vec<u8>,
}

/// A record's header: body length and CRC-32 of the body, little-endian.
const HEADER: usize = 8;

impl Ops {
    pub fn insert(&mut self, tree: Tree, key: &[u8], value: &[u8]) {
        self.head(tree, key);
        self.buf.push(1);
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    pub fn remove(&mut self, tree: Tree, key: &[u8]) {
        self.head(tree, key);
        self.buf.push(0);
    }

    fn head(&mut self, tree: Tree, key: &[u8]) {
        if self.buf.is_empty() {
            self.buf.extend_from_slice(&[0; HEADER]);
        }
        self.buf.push(tree as u8);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
    }

    /// Appends `other`'s writes after these.
    pub fn append(&mut self, other: Ops) {
        if self.buf.is_empty() {
            self.buf = other.buf;
        } else {
            self.buf.extend_from_slice(other.body());
        }
    }

    fn body(&self) -> &[u8] {
        self.buf.get(HEADER..).unwrap_or_default()
    }

    /// The record, its header filled in.
    fn record(&mut self) -> std::io::Result<&[u8]> {
        let len = u32::try_from(self.body().len())
            .map_err(|_| std::io::Error::other("a batch too large for one journal record"))?;
        let crc = crc32fast::hash(self.body());
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        Ok(&self.buf)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Applies the writes to sled in order, with plain inserts and
    /// removals. Not a sled batch or transaction: each of those makes sled
    /// 0.34 roll and write its log buffer through its I/O threadpool
    /// (`PageCache::pin_log`), which costs as much as the flush the journal
    /// replaces. The batch is atomic through the journal instead: it is
    /// applied only once its record is durable, and replayed whole.
    pub fn apply<'t>(&self, tree: impl Fn(Tree) -> &'t sled::Tree) -> sled::Result<()> {
        self.each(|w| w.write_to(tree(w.tree)))
    }

    /// Runs `f` on every write, in order; a write this build cannot read
    /// stops it with an error.
    fn each(&self, mut f: impl FnMut(Logged<'_>) -> sled::Result<()>) -> sled::Result<()> {
        for w in writes(self.body()) {
            f(w.ok_or_else(|| {
                sled::Error::Unsupported("a journal record this build cannot read".into())
            })?)?;
        }
        Ok(())
    }
}

/// The trees the journal covers, opened once.
pub struct Trees([sled::Tree; 3]);

impl Trees {
    pub fn open(db: &sled::Db) -> sled::Result<Trees> {
        Ok(Trees([
            db.open_tree(Tree::Windows.name())?,
            db.open_tree(Tree::Outbox.name())?,
            db.open_tree(Tree::Retained.name())?,
        ]))
    }

    pub fn get(&self, t: Tree) -> &sled::Tree {
        &self.0[t as usize]
    }
}

/// One decoded write.
struct Logged<'a> {
    tree: Tree,
    key: &'a [u8],
    value: Option<&'a [u8]>,
}

impl Logged<'_> {
    fn write_to(&self, t: &sled::Tree) -> sled::Result<()> {
        set(t, self.key, self.value)
    }
}

/// Sets `key` to `value` in `t`, or removes it for `None`: what every
/// journaled write is.
fn set(t: &sled::Tree, key: &[u8], value: Option<&[u8]>) -> sled::Result<()> {
    match value {
        Some(v) => t.insert(key, v).map(|_| ()),
        None => t.remove(key).map(|_| ()),
    }
}

/// The writes of a record's body, in order; `None` where the body stops
/// making sense (then nothing follows).
fn writes(mut body: &[u8]) -> impl Iterator<Item = Option<Logged<'_>>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = b.split_at_checked(n)?;
        *b = rest;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    fn next<'a>(body: &mut &'a [u8]) -> Option<Logged<'a>> {
        let tree = *Tree::ALL.get(usize::from(take(body, 1)?[0]))?;
        let n = len(body)?;
        let key = take(body, n)?;
        let value = match take(body, 1)?[0] {
            0 => None,
            1 => {
                let n = len(body)?;
                Some(take(body, n)?)
            }
            _ => return None,
        };
        Some(Logged { tree, key, value })
    }
    let mut broken = false;
    std::iter::from_fn(move || {
        if body.is_empty() || broken {
            return None;
        }
        let w = next(&mut body);
        broken = w.is_none();
        Some(w)
    })
}

/// A checkpoint is started once the current file is this old or this large.
const CHECKPOINT_AFTER: Duration = Duration::from_secs(1);
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// The least a new file is given ahead of its writes (power-loss mode).
const PREALLOCATE_MIN: u64 = 1024 * 1024;
/// A file is replaced after this long even with space left.
const KEEP_FILE_AT_MOST: Duration = Duration::from_secs(30);

/// The space a file of `size` was given ahead of its writes.
fn reserved(durability: Durability, size: u64) -> u64 {
    match durability {
        Durability::PowerLoss => size,
        Durability::ProcessCrash => 0,
    }
}

/// The journal's writer; lives on the commit thread.
pub struct Journal {
    dir: PathBuf,
    durability: Durability,
    /// `sealgate_database_syncs_total`, shared with the database's syncs.
    syncs: prometheus_client::metrics::counter::Counter,
    file: File,
    number: u64,
    bytes: u64,
    /// The current file's space given ahead of its writes (0: none).
    reserved: u64,
    opened: Instant,
    /// Set by a failed write or sync: what reached the file after it is
    /// unknown (a later sync can report success for pages the failed one
    /// dropped), so nothing more is appended until a restart replays what
    /// checks.
    poisoned: bool,
    /// Files handed to the checkpointer (with the size of the spare to
    /// prepare after it, if any), and its answers.
    checkpoints: mpsc::Sender<(u64, Option<u64>)>,
    done: mpsc::Receiver<Checkpointed>,
    /// The next file, written with zeros ahead of time, and its size.
    spare: Option<(File, u64)>,
    /// A checkpoint is running (at most one at a time).
    checkpointing: bool,
    /// The checkpointer thread, joined by [`Journal::close`].
    checkpointer: Option<std::thread::JoinHandle<()>>,
    /// Window writes of the files not yet checkpointed.
    windows: Windows,
}

/// What recovery found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub records: u64,
    pub writes: u64,
}

/// The checkpointer's answer: the checkpoint's result, and the spare file
/// it prepared after it, if asked and it could.
type Checkpointed = (std::io::Result<u64>, Option<(File, u64)>);

/// Where the next file is prepared; not a number, so replay skips it.
const SPARE: &str = "spare";

fn file_name(number: u64) -> String {
    format!("{number:020}")
}

/// The journal files in `dir`, oldest first.
fn files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Replays what a crash left in `dir` into `db`, makes that durable,
    /// and starts an empty journal. Must run before anything reads the
    /// trees it covers.
    pub fn open(
        dir: &Path,
        db: &Database,
        durability: Durability,
    ) -> std::io::Result<(Journal, Recovered)> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if let (Durability::PowerLoss, Some(parent)) = (durability, dir.parent()) {
                sync_dir(parent)?;
            }
        }
        // A spare left by the last run holds no record; on a full disk its
        // space is what the replay's flush may need.
        remove_spare(dir)?;
        let found = files(dir)?;
        let recovered = replay(&found, db)?;
        if !found.is_empty() {
            // Removed oldest first, once sled has them: whatever a crash
            // interrupts, what is left is a suffix and replays again.
            db.flush().map_err(std::io::Error::other)?;
            for (_, path) in &found {
                std::fs::remove_file(path)?;
            }
        }
        let number = found.last().map_or(1, |(n, _)| n + 1);
        // Power-loss: the first file and the next are written with zeros
        // here, off the commit path; from then on the checkpointer prepares
        // each next one. Best effort, as preallocating is.
        let (file, spare) = match durability {
            Durability::PowerLoss => {
                let first = prepare_spare(dir, PREALLOCATE_MIN)
                    .and_then(|f| take_spare(dir, f, number))
                    .or_else(|e| {
                        tracing::warn!(error = %e, "Could not prepare the first journal file; preallocating it instead.");
                        create(dir, number, durability, PREALLOCATE_MIN)
                    })?;
                (first, spare_or_none(dir, PREALLOCATE_MIN))
            }
            Durability::ProcessCrash => (create(dir, number, durability, 0)?, None),
        };
        let (checkpoints, todo) = mpsc::channel::<(u64, Option<u64>)>();
        let (report, done) = mpsc::channel();
        let syncs = db.syncs().clone();
        let windows = Windows::open(db).map_err(std::io::Error::other)?;
        let (db, dir_, windows_) = (db.clone(), dir.to_path_buf(), windows.clone());
        let checkpointer = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || checkpoint_loop(&db, &dir_, &windows_, &todo, &report))?;
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                durability,
                syncs,
                file,
                number,
                bytes: 0,
                reserved: reserved(durability, PREALLOCATE_MIN),
                opened: Instant::now(),
                poisoned: false,
                checkpoints,
                done,
                spare,
                checkpointing: false,
                checkpointer: Some(checkpointer),
                windows,
            },
            recovered,
        ))
    }

    /// Appends one batch's writes and makes them durable as `durability`
    /// says (power-loss: `fdatasync`; process-crash: in the page cache,
    /// which outlives the process but not the machine).
    pub fn append(&mut self, ops: &mut Ops) -> std::io::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.poisoned {
            return Err(std::io::Error::other(
                "an earlier journal write failed; restart to recover",
            ));
        }
        self.poll_checkpoint()?;
        if !self.checkpointing && self.rotation_due() {
            // Before this batch's record, never after: a file is handed over
            // only once every batch in it is in sled (the commit applies a
            // batch right after its append), so the checkpoint's flush has
            // them all. A file that cannot be started now is tried again at
            // the next batch; this one goes to the current file.
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, "Could not start a new journal file; retrying.");
            }
        }
        let record = ops.record()?;
        let bytes = record.len() as u64;
        let written = self.file.write_all_at(record, self.bytes).and_then(|()| {
            if self.durability == Durability::PowerLoss {
                self.file.sync_data()?;
                self.syncs.inc();
            }
            Ok(())
        });
        if let Err(e) = written {
            self.poisoned = true;
            return Err(e);
        }
        self.bytes += bytes;
        Ok(())
    }

    /// Writes a batch whose record is durable to sled, except its windows,
    /// which wait for the checkpoint ([`Windows`]).
    pub fn apply(&self, ops: &Ops, trees: &Trees) -> sled::Result<()> {
        ops.each(|w| match w.tree {
            Tree::Windows => Ok(()),
            t => w.write_to(trees.get(t)),
        })?;
        self.windows.defer(
            writes(ops.body())
                .flatten()
                .filter(|w| w.tree == Tree::Windows)
                .map(|w| (w.key, w.value)),
        );
        Ok(())
    }

    /// The windows tree with the writes sled does not have yet.
    pub fn windows(&self) -> Windows {
        self.windows.clone()
    }

    /// Whether to start a new file: at [`CHECKPOINT_BYTES`], or once the file
    /// is [`CHECKPOINT_AFTER`] old and has used the space it was given (a
    /// slow fleet would otherwise pay a new file's syncs every second)
    /// or is [`KEEP_FILE_AT_MOST`] old (how much a start may have to replay).
    fn rotation_due(&self) -> bool {
        let age = self.opened.elapsed();
        self.bytes >= CHECKPOINT_BYTES
            || (age >= CHECKPOINT_AFTER
                && (self.bytes >= self.reserved || age >= KEEP_FILE_AT_MOST))
    }

    /// Starts a new file and hands the old one to the checkpointer, which
    /// deletes it (and any older one a failed checkpoint left) once sled's
    /// state, which holds everything journaled before it, is durable.
    ///
    /// The new file is the spare the checkpointer prepared after its last
    /// checkpoint, when there is one: its space was written with zeros, so
    /// a record's `fdatasync` is only the data and the disk's cache flush
    /// (no extent to convert, no file system journal commit): in a C loop
    /// on this project's benchmark machine (ext4), 12 to 34 % less CPU and
    /// 20 to 39 % less time per sync than a file given its space by
    /// `fallocate` (`benches/sync_cost.c`, docs/benchmarks.md).
    /// Writing those zeros takes the disk for milliseconds, which is why it
    /// is not done here, on the commit path.
    fn rotate(&mut self) -> std::io::Result<()> {
        let next = self.number + 1;
        // About a second and a quarter of the current rate.
        let per_sec = self.bytes as f64 / self.opened.elapsed().as_secs_f64().max(1e-3);
        let size = ((per_sec * 1.25) as u64).clamp(PREALLOCATE_MIN, CHECKPOINT_BYTES);
        let (file, given) = match self.spare.take() {
            Some((file, given)) => (take_spare(&self.dir, file, next)?, given),
            None => (create(&self.dir, next, self.durability, size)?, size),
        };
        self.windows.hand_over();
        let spare = (self.durability == Durability::PowerLoss).then_some(size);
        self.checkpoints
            .send((self.number, spare))
            .map_err(|_| std::io::Error::other("the checkpoint thread is gone"))?;
        self.file = file;
        self.reserved = reserved(self.durability, given);
        self.number = next;
        self.bytes = 0;
        self.opened = Instant::now();
        self.checkpointing = true;
        Ok(())
    }

    /// Takes the checkpointer's answer, if any. A failed checkpoint fails
    /// the next commit (the gateway then fails closed); its files stay until
    /// a later checkpoint succeeds, which removes every file up to its own.
    fn poll_checkpoint(&mut self) -> std::io::Result<()> {
        match self.done.try_recv() {
            Ok((r, spare)) => {
                self.checkpointing = false;
                self.spare = spare;
                r.map(|_| ())
            }
            Err(mpsc::TryRecvError::Empty) => Ok(()),
            // Without checkpoints sled is never flushed and the journal
            // grows for ever: fail closed.
            Err(mpsc::TryRecvError::Disconnected) => {
                Err(std::io::Error::other("the checkpoint thread is gone"))
            }
        }
    }

    /// After a batch's record was appended but could not be written to
    /// sled in full: sled now holds part of it, so no checkpoint may delete
    /// the record; the next start replays it whole.
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// At shutdown: a last checkpoint, after which the journal is empty;
    /// none for a poisoned journal, which the next start replays.
    pub fn close(mut self) -> std::io::Result<()> {
        if self.poisoned {
            drop(self.checkpoints);
            if let Some(t) = self.checkpointer.take() {
                let _ = t.join();
            }
            return Err(std::io::Error::other(
                "the journal was poisoned by a failed write",
            ));
        }
        if self.checkpointing {
            if let Ok((r, spare)) = self.done.recv() {
                self.spare = spare;
                r?;
            }
        }
        self.windows.hand_over();
        self.checkpoints
            .send((self.number, None))
            .map_err(|_| std::io::Error::other("the checkpoint thread is gone"))?;
        let (last, _) = self.done.recv().map_err(std::io::Error::other)?;
        drop(self.checkpoints);
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
        last?;
        // Also one a failed rotation or a discarded answer left: a clean
        // stop leaves nothing to replay or remove. Not a failed checkpoint.
        self.spare = None;
        if let Err(e) = remove_spare(&self.dir) {
            tracing::warn!(error = %e, "Could not remove the spare journal file; the next start removes it.");
        }
        Ok(())
    }
}

/// The checkpoint thread: writes the windows the files handed over hold
/// ([`Windows`]); once a sled flush that started after that has succeeded,
/// every file up to `n` is deleted (older
/// ones too: a checkpoint that failed leaves its file, and replaying it
/// after newer ones were deleted would bring old windows back). Between
/// files, sled is flushed every [`CHECKPOINT_AFTER`] anyway: what is written
/// to sled outside the journal (persistent sessions' positions, trimming)
/// is then durable within that time even when no batch rotates a file.
fn checkpoint_loop(
    db: &Database,
    dir: &Path,
    windows: &Windows,
    todo: &mpsc::Receiver<(u64, Option<u64>)>,
    report: &mpsc::Sender<Checkpointed>,
) {
    crate::sched::pipeline_thread();
    loop {
        match todo.recv_timeout(CHECKPOINT_AFTER) {
            Ok((number, spare)) => {
                let r = windows
                    .write_handed()
                    .and_then(|()| db.flush())
                    .map_err(std::io::Error::other)
                    .and_then(|()| {
                        windows.forget_handed();
                        remove_up_to(dir, number)
                    })
                    .map(|()| number);
                if let Err(e) = &r {
                    tracing::error!(error = %e, "Journal checkpoint failed; sealed traffic is refused until it succeeds or the gateway restarts.");
                }
                // After the checkpoint, which the commit waits on to rotate
                // again; without a spare the next rotation creates a file
                // itself. None after a failed checkpoint, most often a full
                // disk, which zeros would only fill further.
                let spare = spare
                    .filter(|_| r.is_ok())
                    .and_then(|size| spare_or_none(dir, size));
                if report.send((r, spare)).is_err() {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A failure here loses nothing (the journal still holds
                // every batch); the next handed-over file reports it.
                if let Err(e) = db.flush() {
                    tracing::warn!(error = %e, "Periodic database flush failed.");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Deletes the journal files numbered up to `number`, oldest first, and
/// makes that durable.
fn remove_up_to(dir: &Path, number: u64) -> std::io::Result<()> {
    for (n, path) in files(dir)? {
        if n <= number {
            std::fs::remove_file(path)?;
        }
    }
    sync_dir(dir)
}

/// A new journal file, owner-only (it holds plaintext), made on the commit
/// path when no spare is ready (process-crash mode, or a spare that could
/// not be prepared); one a failed rotation left behind never got a record,
/// and is emptied.
///
/// In power-loss mode it is first given `size` bytes of disk (reading as
/// zeros, fast to reserve), and that is made durable: a record's
/// `fdatasync` then has no file size to commit, which on ext4 makes it
/// about a third cheaper in CPU and latency than syncing an append
/// (measured in docs/benchmarks.md), though dearer than a spare's written
/// zeros. Where the file system cannot preallocate, records are appended
/// as usual.
fn create(dir: &Path, number: u64, durability: Durability, size: u64) -> std::io::Result<File> {
    let file = owner_only(&dir.join(file_name(number)))?;
    if durability == Durability::PowerLoss {
        preallocate(&file, size);
        file.sync_all()?;
        sync_dir(dir)?;
    }
    Ok(file)
}

/// The next journal file, `journal/spare`, its `size` bytes written with
/// zeros and durable (see [`Journal::rotate`] for why). The zeros go out in
/// slices, each written back before the next, so a commit's sync never
/// waits behind more than one slice; the one `sync_all` at the end then
/// only commits the file's size and extents. A spare that could not be
/// finished is removed (best effort): on a full disk its space is better
/// left to the journal.
fn prepare_spare(dir: &Path, size: u64) -> std::io::Result<File> {
    fill_spare(dir, size).inspect_err(|_| {
        let _ = remove_spare(dir);
    })
}

/// Whether the last spare could not be prepared. A file system that cannot
/// (one without `sync_file_range`, say) fails at every checkpoint, about
/// once a second: it is said once, and again only after a success.
static SPARE_FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// [`prepare_spare`] for a caller that can do without one: the next
/// rotation then creates its file itself.
fn spare_or_none(dir: &Path, size: u64) -> Option<(File, u64)> {
    use std::sync::atomic::Ordering::Relaxed;
    match prepare_spare(dir, size) {
        Ok(file) => {
            if SPARE_FAILING.swap(false, Relaxed) {
                tracing::info!("The next journal file is prepared ahead again.");
            }
            Some((file, size))
        }
        Err(e) if SPARE_FAILING.swap(true, Relaxed) => {
            tracing::debug!(error = %e, "Could not prepare the next journal file.");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "Could not prepare the next journal file; the commit will create it. Said once until it works again.");
            None
        }
    }
}

/// Removes `journal/spare`, if there is one.
fn remove_spare(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(SPARE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Opens `path` for writing, emptied, owner-only: journal files hold
/// plaintext.
fn owner_only(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn fill_spare(dir: &Path, size: u64) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    const SLICE: usize = 256 * 1024;
    let file = owner_only(&dir.join(SPARE))?;
    let zeros = vec![0u8; SLICE];
    let mut at = 0u64;
    while at < size {
        let n = usize::try_from(size - at).map_or(SLICE, |left| left.min(SLICE));
        file.write_all_at(&zeros[..n], at)?;
        let (Ok(off), Ok(len)) = (at.try_into(), n.try_into()) else {
            return Err(std::io::Error::other("journal file size out of range"));
        };
        let how = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: the descriptor is `file`'s own and open for the call;
        // sync_file_range only reads its integer arguments.
        if unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, how) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        at += n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// The prepared spare as file `number`, durable under that name before any
/// record relies on it.
fn take_spare(dir: &Path, spare: File, number: u64) -> std::io::Result<File> {
    std::fs::rename(dir.join(SPARE), dir.join(file_name(number)))?;
    sync_dir(dir)?;
    Ok(spare)
}

/// Gives `file` its first `size` bytes of disk, best effort.
fn preallocate(file: &File, size: u64) {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(size) else {
        return;
    };
    // SAFETY: the descriptor is `file`'s own and open for as long as the
    // call; fallocate only reads its integer arguments.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "Journal files cannot be preallocated here; appending.");
    }
}

/// Applies every record, file by file, oldest first. Nothing but zeros
/// after a file's last record is space it was given ahead of its writes,
/// in any file. A record that does not check ends the replay only where a
/// crash can leave one: at the end of the last file written to, followed by
/// nothing but zeros, in it and in any newer file. Anywhere else it is
/// corruption, and the gateway refuses to start rather than lose or reorder
/// what follows.
fn replay(files: &[(u64, PathBuf)], db: &Database) -> std::io::Result<Recovered> {
    let mut out = Recovered::default();
    if files.is_empty() {
        return Ok(out);
    }
    let trees = Trees::open(db).map_err(std::io::Error::other)?;
    let trimmed_to =
        crate::outbox::trimmed_to(trees.get(Tree::Outbox)).map_err(std::io::Error::other)?;
    for (i, (_, path)) in files.iter().enumerate() {
        let bytes = std::fs::read(path)?;
        let mut at = 0;
        while at < bytes.len() {
            let Some(body) = record_at(&bytes, at) else {
                if bytes[at..].iter().all(|b| *b == 0)
                    || (torn_tail(&bytes, at) && only_zeros(&files[i + 1..])?)
                {
                    break;
                }
                return Err(std::io::Error::other(format!(
                    "journal file {} is corrupt at byte {at}: not a crash's torn tail; \
                     refusing to start (see docs/operations.md, \"The data directory\")",
                    path.display()
                )));
            };
            if writes(body).any(|w| w.is_none()) {
                return Err(std::io::Error::other(format!(
                    "journal file {} holds a record this build cannot read at byte {at}",
                    path.display()
                )));
            }
            for w in writes(body).flatten() {
                if w.tree == Tree::Outbox && crate::outbox::below(w.key, trimmed_to) {
                    continue;
                }
                w.write_to(trees.get(w.tree))
                    .map_err(std::io::Error::other)?;
            }
            out.records += 1;
            out.writes += writes(body).count() as u64;
            at += HEADER + body.len();
        }
    }
    Ok(out)
}

/// Whether `files` hold nothing but zeros: no record was ever written to
/// them, so a torn record before them was the last write.
fn only_zeros(files: &[(u64, PathBuf)]) -> std::io::Result<bool> {
    for (_, path) in files {
        if std::fs::read(path)?.iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The body of a whole, checked, non-empty record at `at`.
fn record_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let head = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    let body = bytes.get(at + HEADER..at.checked_add(HEADER)?.checked_add(len)?)?;
    (len > 0 && crc32fast::hash(body) == crc).then_some(body)
}

/// Whether a record that does not check at `at` can be the last write,
/// cut short by a crash: nothing but zeros after where it claims to end
/// (or from `at` on, when its length is zeros too).
fn torn_tail(bytes: &[u8], at: usize) -> bool {
    let zeros = |from: usize| bytes.get(from..).is_none_or(|r| r.iter().all(|b| *b == 0));
    match bytes.get(at..at + 4) {
        None => true,
        Some(len) => {
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            zeros(at) || zeros(at.saturating_add(HEADER).saturating_add(len))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Database, Journal, Recovered) {
        let db = crate::test_support::reopen(&dir.join("db"));
        let (j, r) = Journal::open(&dir.join("journal"), &db, Durability::PowerLoss).unwrap();
        (db, j, r)
    }

    /// What sled never flushed comes back from the journal, in order, and
    /// a torn last record is ignored.
    #[test]
    fn unflushed_writes_come_back_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, mut j, r) = open(dir.path());
            assert_eq!(r, Recovered::default());
            let mut ops = Ops::default();
            ops.insert(Tree::Windows, b"dev-1", b"w1");
            ops.insert(Tree::Retained, b"clean/a", b"r1");
            j.append(&mut ops).unwrap();
            let mut ops = Ops::default();
            ops.insert(Tree::Windows, b"dev-1", b"w2");
            ops.remove(Tree::Retained, b"clean/a");
            ops.insert(Tree::Outbox, &5u64.to_be_bytes(), b"record");
            j.append(&mut ops).unwrap();
            cut_short(&j);
            // No checkpoint: dropped as a crash would leave it.
            drop(j);
        }
        let (db, _j, r) = open(dir.path());
        assert_eq!(
            r,
            Recovered {
                records: 2,
                writes: 5
            }
        );
        let windows = db.open_tree(Tree::Windows.name()).unwrap();
        assert_eq!(windows.get(b"dev-1").unwrap().unwrap(), b"w2"[..]);
        let retained = db.open_tree(Tree::Retained.name()).unwrap();
        assert_eq!(retained.get(b"clean/a").unwrap(), None);
        let outbox = db.open_tree(Tree::Outbox.name()).unwrap();
        assert_eq!(
            outbox.get(5u64.to_be_bytes()).unwrap().unwrap(),
            b"record"[..]
        );
        let left = files(&dir.path().join("journal")).unwrap();
        assert_eq!(left.len(), 1, "only the new, empty file: {left:?}");
    }

    /// A closed journal leaves nothing to replay: the last checkpoint made
    /// sled's state durable and removed the files.
    #[test]
    fn close_checkpoints_and_empties_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, mut j, _) = open(dir.path());
            let mut ops = Ops::default();
            ops.insert(Tree::Windows, b"dev-1", b"w1");
            j.append(&mut ops).unwrap();
            j.apply(&ops, &Trees::open(&db).unwrap()).unwrap();
            j.close().unwrap();
        }
        assert!(files(&dir.path().join("journal")).unwrap().is_empty());
        let (db, _j, r) = open(dir.path());
        assert_eq!(r, Recovered::default());
        let windows = db.open_tree(Tree::Windows.name()).unwrap();
        assert_eq!(windows.get(b"dev-1").unwrap().unwrap(), b"w1"[..]);
    }

    /// A window waits for the checkpoint: readable through [`Windows`] at
    /// once, in sled once a checkpoint wrote it before its flush, and not
    /// lost in between: a crash replays it from the journal.
    #[test]
    fn windows_reach_sled_at_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let commit = |j: &mut Journal, trees: &Trees, ops: &mut Ops| {
            j.append(ops).unwrap();
            j.apply(ops, trees).unwrap();
        };
        {
            let (db, mut j, _) = open(dir.path());
            let trees = Trees::open(&db).unwrap();
            let in_sled = |key: &[u8]| trees.get(Tree::Windows).get(key).unwrap();
            let mut ops = Ops::default();
            ops.insert(Tree::Windows, b"dev-1", b"w1");
            ops.insert(Tree::Retained, b"clean/a", b"r1");
            commit(&mut j, &trees, &mut ops);
            let mut ops = Ops::default();
            ops.insert(Tree::Windows, b"dev-1", b"w2");
            ops.insert(Tree::Windows, b"dev-2", b"x1");
            ops.remove(Tree::Windows, b"dev-2");
            commit(&mut j, &trees, &mut ops);
            assert!(trees.get(Tree::Retained).get(b"clean/a").unwrap().is_some());
            assert_eq!(in_sled(b"dev-1"), None, "not before the checkpoint");
            let windows = j.windows();
            assert_eq!(windows.get(b"dev-1").unwrap().unwrap(), b"w2"[..]);
            assert_eq!(windows.get(b"dev-2").unwrap(), None, "a reset is kept too");

            j.rotate().unwrap();
            j.done.recv().unwrap().0.unwrap();
            j.checkpointing = false;
            assert_eq!(in_sled(b"dev-1").unwrap(), b"w2"[..]);
            assert_eq!(files(&dir.path().join("journal")).unwrap().len(), 1);

            let mut ops = Ops::default();
            ops.remove(Tree::Windows, b"dev-1");
            ops.insert(Tree::Windows, b"dev-3", b"y1");
            commit(&mut j, &trees, &mut ops);
            assert_eq!(windows.get(b"dev-1").unwrap(), None);
            assert_eq!(in_sled(b"dev-1").unwrap(), b"w2"[..]);
            // A crash: no checkpoint.
            drop(j);
        }
        let (db, mut j, r) = open(dir.path());
        assert_eq!(r.records, 1);
        let trees = Trees::open(&db).unwrap();
        let in_sled = |key: &[u8]| trees.get(Tree::Windows).get(key).unwrap();
        assert_eq!(in_sled(b"dev-1"), None);
        assert_eq!(in_sled(b"dev-3").unwrap(), b"y1"[..]);

        let mut ops = Ops::default();
        ops.insert(Tree::Windows, b"dev-4", b"z1");
        commit(&mut j, &trees, &mut ops);
        j.close().unwrap();
        assert_eq!(
            in_sled(b"dev-4").unwrap(),
            b"z1"[..],
            "close checkpoints them"
        );
    }

    /// A record the crash cut short, after the last one.
    fn cut_short(j: &Journal) {
        j.file
            .write_all_at(&[200, 0, 0, 0, 1, 2, 3], j.bytes)
            .unwrap();
    }

    fn record(key: &[u8]) -> Ops {
        let mut ops = Ops::default();
        ops.insert(Tree::Windows, key, b"w");
        ops
    }

    fn journal_file(dir: &Path) -> PathBuf {
        files(&dir.join("journal")).unwrap().pop().unwrap().1
    }

    /// Only the end of the newest file can hold a crash's torn write (and
    /// zeros where the file's size got ahead of its data); bytes that do
    /// not check anywhere else stop the gateway with a reason instead of
    /// silently dropping what follows.
    #[test]
    fn a_torn_tail_is_skipped_but_corruption_before_good_records_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, mut j, _) = open(dir.path());
            j.append(&mut record(b"a")).unwrap();
            j.append(&mut record(b"b")).unwrap();
            j.file.write_all_at(&[0; 64], j.bytes).unwrap();
        }
        let (_, _, r) = open(dir.path());
        assert_eq!(r.records, 2, "zeros after the last record are a torn tail");

        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, mut j, _) = open(dir.path());
            j.append(&mut record(b"a")).unwrap();
            j.append(&mut record(b"b")).unwrap();
        }
        let path2 = journal_file(dir.path());
        let mut bytes = std::fs::read(&path2).unwrap();
        bytes[10] ^= 0xff; // inside the first record's body
        std::fs::write(&path2, bytes).unwrap();
        let db = crate::test_support::reopen(&dir.path().join("db"));
        let err = Journal::open(&dir.path().join("journal"), &db, Durability::PowerLoss)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("is corrupt at byte 0"), "{err}");
    }

    /// A rotation that fails after naming the new file (its directory sync,
    /// say) leaves a file of zeros after the one still written to; a torn
    /// last record there is still a crash's last write, not corruption. A
    /// newer file holding a record makes it corruption again.
    #[test]
    fn a_torn_tail_before_files_of_zeros_is_the_last_write() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        {
            let (_db, mut j, _) = open(dir.path());
            j.append(&mut record(b"a")).unwrap();
            cut_short(&j);
        }
        let n = files(&journal).unwrap().last().unwrap().0;
        std::fs::write(journal.join(file_name(n + 1)), [0u8; 4096]).unwrap();
        let torn = std::fs::read(journal.join(file_name(n))).unwrap();
        let (_, _, r) = open(dir.path());
        assert_eq!(r.records, 1, "{r:?}");

        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        std::fs::create_dir_all(&journal).unwrap();
        std::fs::write(journal.join(file_name(1)), &torn).unwrap();
        let mut newer = vec![0u8; 4096];
        newer[..torn.len().min(64)].copy_from_slice(&torn[..torn.len().min(64)]);
        std::fs::write(journal.join(file_name(2)), &newer).unwrap();
        let db = crate::test_support::reopen(&dir.path().join("db"));
        let err = Journal::open(&journal, &db, Durability::PowerLoss)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("is corrupt"), "{err}");
    }

    /// A file goes to a checkpoint only with batches sled already has: the
    /// batch that finds a rotation due is written to the new file. Were it
    /// written to the old one, the checkpoint (whose flush can run before
    /// the commit applies the batch to sled) could delete its only durable
    /// copy: a crash then loses an acknowledged batch.
    #[test]
    fn the_batch_that_rotates_goes_to_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, mut j, _) = open(dir.path());
            let windows = db.open_tree(Tree::Windows.name()).unwrap();
            j.append(&mut record(b"a")).unwrap();
            windows.insert(b"a", b"w".to_vec()).unwrap();
            j.opened = Instant::now()
                .checked_sub(KEEP_FILE_AT_MOST)
                .expect("a clock older than that");
            // Not applied to sled: the crash comes first.
            j.append(&mut record(b"b")).unwrap();
            assert_eq!(j.done.recv().unwrap().0.unwrap(), 1, "file 1 checkpointed");
        }
        let (db, _j, r) = open(dir.path());
        assert_eq!(r.records, 1, "b, from file 2");
        let windows = db.open_tree(Tree::Windows.name()).unwrap();
        assert!(windows.get(b"a").unwrap().is_some());
        assert!(windows.get(b"b").unwrap().is_some(), "the batch survived");
    }

    /// A file's preallocated space reads as zeros after its last record,
    /// in older files too, and is no corruption.
    #[test]
    fn zeros_after_the_last_record_of_any_file_are_unused_space() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        {
            let (_db, mut j, _) = open(dir.path());
            j.append(&mut record(b"a")).unwrap();
            j.append(&mut record(b"b")).unwrap();
        }
        let first = journal_file(dir.path());
        let mut next = std::fs::read(&first).unwrap();
        next.truncate(64);
        next.resize(4096, 0);
        assert_eq!(std::fs::metadata(&first).unwrap().len(), PREALLOCATE_MIN);
        // A newer file after it, as a rotation leaves.
        let n = files(&journal).unwrap().last().unwrap().0;
        std::fs::write(journal.join(file_name(n + 1)), &next).unwrap();
        let (_, _, r) = open(dir.path());
        assert!(r.records >= 3, "both files replayed: {r:?}");
    }

    /// After a write fails, what reached the file is unknown: no later
    /// batch may be acknowledged from it, even if writing works again.
    #[test]
    fn a_failed_write_poisons_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, mut j, _) = open(dir.path());
        let path = journal_file(dir.path());
        let writable = std::mem::replace(&mut j.file, File::open(&path).unwrap());
        assert!(j.append(&mut record(b"a")).is_err());
        j.file = writable;
        let err = j.append(&mut record(b"b")).unwrap_err();
        assert!(err.to_string().contains("restart"), "{err}");
    }

    /// A file with space left is kept past a second (a slow fleet would pay
    /// a new file's syncs every second), but not for ever.
    #[test]
    fn a_file_is_replaced_once_its_space_is_used_or_it_is_old() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, mut j, _) = open(dir.path());
        let ago = |d| Instant::now().checked_sub(d).expect("an old enough clock");
        j.opened = ago(CHECKPOINT_AFTER);
        assert!(!j.rotation_due());
        j.bytes = j.reserved;
        assert!(j.rotation_due());
        j.bytes = 1;
        j.opened = ago(KEEP_FILE_AT_MOST);
        assert!(j.rotation_due());
    }

    /// A batch whose writes reached sled only in part poisons the journal,
    /// and closing it then keeps the record for the next start.
    #[test]
    fn a_poisoned_journal_is_not_checkpointed_at_close() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, mut j, _) = open(dir.path());
            j.append(&mut record(b"a")).unwrap();
            j.poison();
            assert!(j.close().is_err());
        }
        let (db, _j, r) = open(dir.path());
        assert_eq!(r.records, 1);
        let windows = db.open_tree(Tree::Windows.name()).unwrap();
        assert!(windows.get(b"a").unwrap().is_some());
    }

    /// Takes the checkpointer's answer as `poll_checkpoint` would, waiting.
    fn settle(j: &mut Journal) {
        let (r, spare) = j.done.recv().unwrap();
        r.unwrap();
        j.spare = spare;
        j.checkpointing = false;
    }

    /// After a checkpoint the next file waits as `spare`, written with
    /// zeros; the next rotation takes that very file under its number,
    /// records in it replay after a crash, and replay never reads the spare
    /// itself, which a start and a clean close remove.
    #[test]
    fn a_rotation_takes_the_spare_the_checkpoint_prepared() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        let spare_inode = |what: &str| {
            let spare = std::fs::read(journal.join(SPARE)).expect(what);
            assert_eq!(spare.len() as u64, PREALLOCATE_MIN);
            assert!(spare.iter().all(|b| *b == 0), "{what}: zeros only");
            std::fs::metadata(journal.join(SPARE)).unwrap().ino()
        };
        {
            let (_db, mut j, _) = open(dir.path());
            let first = spare_inode("a spare from the start");
            j.append(&mut record(b"a")).unwrap();
            j.rotate().unwrap();
            let in_use = |j: &Journal| {
                std::fs::metadata(journal.join(file_name(j.number)))
                    .unwrap()
                    .ino()
            };
            assert_eq!(in_use(&j), first, "file 2 is the spare from the start");
            settle(&mut j);
            let second = spare_inode("a spare after the checkpoint");
            j.rotate().unwrap();
            assert_eq!(in_use(&j), second, "file 3 is the checkpoint's spare");
            j.append(&mut record(b"b")).unwrap();
            settle(&mut j);
            // A crash: the spare stays, with bytes replay must not read.
            std::fs::write(journal.join(SPARE), b"not a journal file").unwrap();
        }
        let (db, j, r) = open(dir.path());
        assert_eq!(r.records, 1, "b, from the spare's space: {r:?}");
        spare_inode("a new spare");
        j.close().unwrap();
        assert!(!journal.join(SPARE).exists(), "removed by a clean close");
        assert!(files(&journal).unwrap().is_empty());

        // Process-crash mode prepares none, and its start removes one a
        // power-loss run left.
        std::fs::write(journal.join(SPARE), [0u8; 16]).unwrap();
        let (j, _) = Journal::open(&journal, &db, Durability::ProcessCrash).unwrap();
        assert!(!journal.join(SPARE).exists());
        assert!(j.spare.is_none());
    }

    /// A successful checkpoint removes older files a failed one left, so
    /// they cannot be replayed over newer state.
    #[test]
    fn a_checkpoint_removes_every_older_file() {
        let dir = tempfile::tempdir().unwrap();
        for n in [3u64, 5, 8] {
            std::fs::write(dir.path().join(file_name(n)), b"").unwrap();
        }
        remove_up_to(dir.path(), 5).unwrap();
        let left: Vec<u64> = files(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(left, [8]);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let mut ops = Ops::default();
        ops.insert(Tree::Outbox, b"k", b"v");
        let whole = |b: &[u8]| writes(b).all(|w| w.is_some());
        assert!(whole(ops.body()));
        for cut in 1..ops.body().len() {
            assert!(!whole(&ops.body()[..cut]), "cut at {cut}");
        }
        assert!(!whole(&[9, 0, 0, 0, 0, 0]), "unknown tree");
        assert!(!whole(&[0, 0, 0, 0, 0, 7]), "unknown kind");
    }
}
