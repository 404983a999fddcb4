//! `FaultFs`: an in-memory [`FileSystem`] that simulates a disk exactly enough to test crash
//! safety, and fails on command.
//!
//! # The model
//! - Every file (an inode) has a **live** image, what reads see, and a **durable** image, what
//!   survives a crash. `write_all_at` and `set_len` change the live image; `sync_data` copies
//!   it to the durable one.
//! - Every folder has **live** entries (names to files and folders) and **durable** entries.
//!   Creating a file (`OpenMode::CreateNew`), `rename`, `remove_file` and `create_dir_all`
//!   change the live entries of a folder; `sync_dir` on that folder makes them durable. So a
//!   file whose folder was never synced after its creation is gone after a crash, even if its
//!   data was synced, and a folder is gone unless its parent was synced after it was made.
//!   The root folder always exists.
//! - [`FaultFs::crash`] turns every live image and entry into its durable one: every byte and
//!   entry that was not synced is lost. Handles opened before the crash fail from then on
//!   (`ErrorKind::Other`, "handle from before the crash"), so a test that forgets to reopen
//!   fails loudly instead of reading a world that no longer exists.
//! - [`FaultFs::crash_with`] `CrashMode::PartialPersistence` models a power loss in the middle
//!   of writing back: for each file, every 512-byte sector where the live image differs from
//!   the durable one reaches the disk or not by the toss of a seeded coin (a torn write), and
//!   the file keeps either its live or its durable length. Folder entries are all kept or all
//!   lost (one toss), because journaled file systems commit metadata atomically and in order:
//!   a rename is never half done. The same seed gives the same outcome, so any failure replays.
//! - A failed `sync_data` (injected) behaves like Linux: the dirty pages are marked clean
//!   although they never reached the disk, so a later successful `sync_data` does not persist
//!   them. An engine that retries fsync and trusts the second answer loses data here, as it
//!   would in production (see `docs/durability.md`).
//!
//! # Faults
//! Set at any time through the handle the test keeps (`FaultFs` is a cheap `Clone`):
//! [`FaultFs::fail_write_after`], [`FaultFs::fail_sync_after`], [`FaultFs::torn_write_after`],
//! [`FaultFs::disk_full_after_bytes`]; [`FaultFs::clear_faults`] removes them all.
//! [`FaultFs::stats`] counts the operations.
//!
//! Paths are taken as plain names: `/data/a`, `data/a` and `data/./a` are the same file, since
//! there is no working folder to be relative to.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use factstore_engine::io::{File, FileSystem, OpenMode};
use parking_lot::Mutex;

/// The unit in which a power loss persists or drops unsynced data.
pub const SECTOR_BYTES: usize = 512;

/// No file may grow beyond this: a write at an absurd offset (an engine bug) fails instead of
/// exhausting the memory of the test.
pub const FILE_BYTES_MAX: u64 = 1 << 30;

/// Whether an injected fault fires once or for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Only the one operation fails; later ones succeed.
    Once,
    /// That operation and every later one fail, until [`FaultFs::clear_faults`].
    Forever,
}

/// How a crash treats what was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Everything not synced is lost: a process crash followed by a clean power-off of a disk
    /// that had written back nothing.
    DropUnsynced,
    /// A power loss during write-back: each unsynced sector of each file is kept or dropped,
    /// and the unsynced folder entries are all kept or all dropped, decided by a generator
    /// seeded with `seed`.
    PartialPersistence { seed: u64 },
}

/// What a crash kept, so that a test can check the seed it uses really tears something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced sectors that reached the disk.
    pub sectors_kept: u64,
    /// Unsynced sectors that were lost.
    pub sectors_dropped: u64,
    /// Whether the unsynced folder entries survived.
    pub entries_kept: bool,
}

/// Operation counts since the file system was made. Calls are counted whether they succeed
/// or fail (an injected fault still counts as an attempt).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Calls of `write_all_at` on writable handles.
    pub writes: u64,
    /// Bytes that reached the live images (a torn or short write counts what it wrote).
    pub bytes_written: u64,
    /// Calls of `sync_data`.
    pub data_syncs: u64,
    /// Calls of `sync_dir`.
    pub dir_syncs: u64,
    /// Crashes simulated.
    pub crashes: u64,
}

impl FaultStats {
    /// `sync_data` and `sync_dir` calls together.
    pub fn syncs(&self) -> u64 {
        self.data_syncs + self.dir_syncs
    }
}

/// An in-memory file system with separate live and durable images, crashes and faults.
/// Clones share the same disk.
#[derive(Clone, Default)]
pub struct FaultFs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct Inode {
    /// What reads see.
    live: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// What the "page cache" believes is on disk: equal to `durable` except after a failed
    /// sync, which marks the live pages clean without persisting them.
    clean: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

#[derive(Debug, Default)]
struct Dir {
    live: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
}

/// A fault that fires after `remaining` more operations.
#[derive(Debug, Clone, Copy)]
struct Countdown {
    remaining: u64,
    repeat: Repeat,
}

/// Counts one operation down; true when this one must fail.
fn fires(slot: &mut Option<Countdown>) -> bool {
    match slot {
        None => false,
        Some(countdown) if countdown.remaining > 0 => {
            countdown.remaining -= 1;
            false
        }
        Some(countdown) => {
            if countdown.repeat == Repeat::Once {
                *slot = None;
            }
            true
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    write: Option<Countdown>,
    sync: Option<Countdown>,
    /// Writes to let through, then how many bytes of the torn one to write.
    torn: Option<(u64, usize)>,
    /// Bytes that may still be written.
    disk_budget: Option<u64>,
}

#[derive(Debug)]
struct State {
    /// Bumped by every crash; a handle of an older generation is dead.
    generation: u64,
    next_inode: u64,
    /// Ordered maps, so that a seeded crash visits files in the same order every run.
    inodes: BTreeMap<u64, Inode>,
    /// Every folder that exists (live), by normalised path; the root is the empty path.
    /// Invariant: a folder is here exactly when it is reachable from the root through live
    /// entries (there is no way to remove or rename a folder).
    dirs: BTreeMap<PathBuf, Dir>,
    /// Folders locked by `lock_dir`.
    locks: BTreeSet<PathBuf>,
    faults: Faults,
    stats: FaultStats,
}

impl Default for State {
    fn default() -> State {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::new(), Dir::default());
        State {
            generation: 0,
            next_inode: 1,
            inodes: BTreeMap::new(),
            dirs,
            locks: BTreeSet::new(),
            faults: Faults::default(),
            stats: FaultStats::default(),
        }
    }
}

/// SplitMix64: a tiny, well-mixed generator, enough to toss coins reproducibly.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// The path without root, `.` and `..`: the key of a file or folder.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The folder and the name of an entry.
fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let normal = normalize(path);
    let name = normal
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the root folder is not a file"))?
        .to_string_lossy()
        .into_owned();
    let parent = normal.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((parent, name))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or folder", path.display()),
    )
}

fn stale_handle() -> io::Error {
    io::Error::other("handle from before the crash: reopen the file")
}

fn lost_inode() -> io::Error {
    io::Error::other("FaultFs bug: a live handle's inode is missing")
}

/// The bytes `start..end` of `image`, zero beyond its end.
fn padded(image: &[u8], start: usize, end: usize) -> Vec<u8> {
    let mut out = vec![0u8; end - start];
    if let Some(available) = image.get(start..end.min(image.len())) {
        out[..available.len()].copy_from_slice(available);
    }
    out
}

impl Inode {
    fn new() -> Inode {
        Inode::default()
    }

    /// A successful `sync_data`: the sectors the page cache holds dirty reach the disk.
    fn persist(&mut self) {
        let len = self.live.len();
        let mut durable = std::mem::take(&mut self.durable);
        durable.resize(len, 0);
        for start in (0..len).step_by(SECTOR_BYTES) {
            let end = (start + SECTOR_BYTES).min(len);
            let live = &self.live[start..end];
            // A sector absent from the clean image was written after it: dirty.
            if self.clean.get(start..end) != Some(live) {
                durable[start..end].copy_from_slice(live);
            }
        }
        self.durable = durable;
        self.clean = self.live.clone();
    }

    /// After a crash the live image is whatever was on disk.
    fn settle(&mut self, image: Vec<u8>) {
        self.live = image.clone();
        self.clean = image.clone();
        self.durable = image;
    }

    /// The image after a power loss during write-back.
    fn torn_image(&self, rng: &mut SplitMix64, report: &mut CrashReport) -> Vec<u8> {
        let len = if self.live.len() == self.durable.len() || rng.coin() {
            self.live.len()
        } else {
            self.durable.len()
        };
        let mut out = Vec::with_capacity(len);
        for start in (0..len).step_by(SECTOR_BYTES) {
            let end = (start + SECTOR_BYTES).min(len);
            let live = padded(&self.live, start, end);
            let durable = padded(&self.durable, start, end);
            if live == durable {
                out.extend_from_slice(&durable);
            } else if rng.coin() {
                report.sectors_kept += 1;
                out.extend_from_slice(&live);
            } else {
                report.sectors_dropped += 1;
                out.extend_from_slice(&durable);
            }
        }
        out
    }
}

impl State {
    /// The live entry at `path`; the root is a folder.
    fn live_node(&self, path: &Path) -> io::Result<Node> {
        if normalize(path).as_os_str().is_empty() {
            return Ok(Node::Dir);
        }
        let (parent, name) = split(path)?;
        self.dirs
            .get(&parent)
            .and_then(|dir| dir.live.get(&name))
            .copied()
            .ok_or_else(|| not_found(path))
    }

    /// The live file at `path`.
    fn live_file(&self, path: &Path) -> io::Result<u64> {
        match self.live_node(path)? {
            Node::File(id) => Ok(id),
            Node::Dir => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a folder", path.display()),
            )),
        }
    }

    /// The durable entry at `path`, following durable entries from the root: what a crash
    /// would leave.
    fn durable_node(&self, path: &Path) -> Option<Node> {
        let normal = normalize(path);
        let mut dir_path = PathBuf::new();
        let mut node = Node::Dir;
        for component in normal.components() {
            if node != Node::Dir {
                return None;
            }
            let name = component.as_os_str().to_string_lossy().into_owned();
            node = *self.dirs.get(&dir_path)?.durable.get(&name)?;
            dir_path.push(&name);
        }
        Some(node)
    }

    fn inode(&mut self, id: u64) -> io::Result<&mut Inode> {
        self.inodes.get_mut(&id).ok_or_else(lost_inode)
    }

    fn crash(&mut self, mode: CrashMode) -> CrashReport {
        self.generation += 1;
        self.stats.crashes += 1;
        self.locks.clear();
        let mut report = CrashReport::default();
        match mode {
            CrashMode::DropUnsynced => {
                for inode in self.inodes.values_mut() {
                    let image = inode.durable.clone();
                    inode.settle(image);
                }
                for dir in self.dirs.values_mut() {
                    dir.live = dir.durable.clone();
                }
            }
            CrashMode::PartialPersistence { seed } => {
                let mut rng = SplitMix64(seed);
                report.entries_kept = rng.coin();
                for dir in self.dirs.values_mut() {
                    if report.entries_kept {
                        dir.durable = dir.live.clone();
                    } else {
                        dir.live = dir.durable.clone();
                    }
                }
                for inode in self.inodes.values_mut() {
                    let image = inode.torn_image(&mut rng, &mut report);
                    inode.settle(image);
                }
            }
        }
        self.prune();
        report
    }

    /// Drops the folders no longer reachable from the root and the files no entry names.
    fn prune(&mut self) {
        let mut reachable = BTreeSet::new();
        let mut pending = vec![PathBuf::new()];
        let mut files = BTreeSet::new();
        while let Some(path) = pending.pop() {
            if let Some(dir) = self.dirs.get(&path) {
                for (name, node) in &dir.live {
                    match node {
                        Node::Dir => pending.push(path.join(name)),
                        Node::File(id) => {
                            files.insert(*id);
                        }
                    }
                }
                reachable.insert(path);
            }
        }
        self.dirs.retain(|path, _| reachable.contains(path));
        self.inodes.retain(|id, _| files.contains(id));
    }
}

impl FaultFs {
    /// An empty disk holding only the root folder.
    pub fn new() -> FaultFs {
        FaultFs::default()
    }

    /// A crash that loses everything not synced. Handles opened before it fail afterwards.
    pub fn crash(&self) {
        self.state.lock().crash(CrashMode::DropUnsynced);
    }

    /// A crash in the given mode; see [`CrashMode`].
    pub fn crash_with(&self, mode: CrashMode) -> CrashReport {
        self.state.lock().crash(mode)
    }

    /// Lets `n` more `write_all_at` calls through, then fails the next one with an I/O error
    /// (writing nothing), and with `Repeat::Forever` every later one too.
    pub fn fail_write_after(&self, n: u64, repeat: Repeat) {
        self.state.lock().faults.write = Some(Countdown { remaining: n, repeat });
    }

    /// Lets `n` more syncs (`sync_data` and `sync_dir` together) through, then fails the next
    /// one, and with `Repeat::Forever` every later one too. A failed `sync_data` persists
    /// nothing and marks the file's pages clean, as Linux does.
    pub fn fail_sync_after(&self, n: u64, repeat: Repeat) {
        self.state.lock().faults.sync = Some(Countdown { remaining: n, repeat });
    }

    /// Lets `n` more `write_all_at` calls through; the next one writes only the first
    /// `prefix_bytes` of its buffer (at most all of it) and then fails. Fires once.
    pub fn torn_write_after(&self, n: u64, prefix_bytes: usize) {
        self.state.lock().faults.torn = Some((n, prefix_bytes));
    }

    /// From now on at most `n` more bytes can be written: the write that would exceed them
    /// writes what fits and fails with `ErrorKind::StorageFull`, and so does every later
    /// non-empty write. (`set_len` is not limited.)
    pub fn disk_full_after_bytes(&self, n: u64) {
        self.state.lock().faults.disk_budget = Some(n);
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        self.state.lock().faults = Faults::default();
    }

    /// Operation counts so far.
    pub fn stats(&self) -> FaultStats {
        self.state.lock().stats
    }

    /// The live content of a file (what a read sees now), or `None` if there is no file there.
    pub fn read_file(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        let state = self.state.lock();
        let id = state.live_file(path.as_ref()).ok()?;
        state.inodes.get(&id).map(|inode| inode.live.clone())
    }

    /// What a crash now would leave at `path` (durable entries, durable image), or `None` if a
    /// crash would leave no file there.
    pub fn durable_file(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        let state = self.state.lock();
        match state.durable_node(path.as_ref())? {
            Node::File(id) => state.inodes.get(&id).map(|inode| inode.durable.clone()),
            Node::Dir => None,
        }
    }

    /// The live names in a folder, sorted; empty when the folder does not exist.
    pub fn file_names(&self, dir: impl AsRef<Path>) -> Vec<String> {
        let state = self.state.lock();
        state
            .dirs
            .get(&normalize(dir.as_ref()))
            .map(|dir| dir.live.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The names a crash now would leave in a folder, sorted.
    pub fn durable_file_names(&self, dir: impl AsRef<Path>) -> Vec<String> {
        let state = self.state.lock();
        match state.durable_node(dir.as_ref()) {
            Some(Node::Dir) => state
                .dirs
                .get(&normalize(dir.as_ref()))
                .map(|dir| dir.durable.keys().cloned().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Flips bits of the byte at `offset` of a live file (XOR with `xor`, which must not be 0)
    /// in both its live and its durable image: silent corruption on the medium, for testing
    /// that checksums catch it.
    pub fn corrupt(&self, path: impl AsRef<Path>, offset: u64, xor: u8) -> io::Result<()> {
        let path = path.as_ref();
        if xor == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an XOR mask of 0 changes nothing",
            ));
        }
        let mut state = self.state.lock();
        let id = state.live_file(path)?;
        let inode = state.inode(id)?;
        let at = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut hit = false;
        for image in [&mut inode.live, &mut inode.durable, &mut inode.clean] {
            if let Some(byte) = image.get_mut(at) {
                *byte ^= xor;
                hit = true;
            }
        }
        if hit {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} has no byte at offset {offset}", path.display()),
            ))
        }
    }

    /// Puts a file with `bytes` at `path`, durably, creating (durably) the folders on the way
    /// and replacing any file there: a fixture, e.g. a data folder written by an older version.
    pub fn install_file(&self, path: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
        let path = path.as_ref();
        let (parent, name) = split(path)?;
        self.install_dir(&parent)?;
        let mut state = self.state.lock();
        let id = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(
            id,
            Inode {
                live: bytes.to_vec(),
                durable: bytes.to_vec(),
                clean: bytes.to_vec(),
            },
        );
        let dir = state.dirs.get_mut(&parent).ok_or_else(|| not_found(&parent))?;
        if dir.live.get(&name) == Some(&Node::Dir) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a folder", path.display()),
            ));
        }
        dir.live.insert(name.clone(), Node::File(id));
        dir.durable.insert(name, Node::File(id));
        Ok(())
    }

    /// Creates a folder and its parents durably (as `create_dir_all` followed by `sync_dir` of
    /// every parent), without counting syncs or firing faults: test setup.
    pub fn install_dir(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        self.state.lock().create_dir_all(path, true)
    }
}

impl State {
    fn create_dir_all(&mut self, path: &Path, durably: bool) -> io::Result<()> {
        let normal = normalize(path);
        let mut parent = PathBuf::new();
        for component in normal.components() {
            let name = component.as_os_str().to_string_lossy().into_owned();
            let here = parent.join(&name);
            let dir = self.dirs.get_mut(&parent).ok_or_else(|| not_found(&parent))?;
            match dir.live.get(&name) {
                Some(Node::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} is a file, not a folder", here.display()),
                    ));
                }
                Some(Node::Dir) => {}
                None => {
                    dir.live.insert(name.clone(), Node::Dir);
                    self.dirs.insert(here.clone(), Dir::default());
                }
            }
            if durably && let Some(dir) = self.dirs.get_mut(&parent) {
                dir.durable.insert(name, Node::Dir);
            }
            parent = here;
        }
        Ok(())
    }
}

impl fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // try_lock: Debug must never deadlock, even if called while the state is held.
        match self.state.try_lock() {
            Some(state) => f
                .debug_struct("FaultFs")
                .field("files", &state.inodes.len())
                .field("folders", &state.dirs.len())
                .field("generation", &state.generation)
                .field("stats", &state.stats)
                .finish(),
            None => f.write_str("FaultFs { <busy> }"),
        }
    }
}

/// An open file of a [`FaultFs`].
struct FaultFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    /// The crash generation it was opened in; it is dead in any other.
    generation: u64,
    writable: bool,
    path: PathBuf,
}

impl fmt::Debug for FaultFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultFile")
            .field("path", &self.path)
            .field("inode", &self.inode)
            .field("generation", &self.generation)
            .field("writable", &self.writable)
            .finish()
    }
}

impl FaultFile {
    /// Runs `op` on the state if the handle is still alive.
    fn with_state<R>(&self, op: impl FnOnce(&mut State) -> io::Result<R>) -> io::Result<R> {
        let mut state = self.state.lock();
        if state.generation != self.generation {
            return Err(stale_handle());
        }
        op(&mut state)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} was opened read-only", self.path.display()),
            ))
        }
    }
}

/// The end of a range in a file, refused when past [`FILE_BYTES_MAX`].
fn end_of(offset: u64, len: usize) -> io::Result<usize> {
    offset
        .checked_add(len as u64)
        .filter(|end| *end <= FILE_BYTES_MAX)
        .and_then(|end| usize::try_from(end).ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {offset} + {len} bytes is past the FaultFs limit of {FILE_BYTES_MAX} bytes"),
            )
        })
}

impl File for FaultFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with_state(|state| {
            let inode = state.inode(self.inode)?;
            let range = usize::try_from(offset)
                .ok()
                .and_then(|start| Some(start..start.checked_add(buf.len())?))
                .and_then(|range| inode.live.get(range))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{}: read past the end of the file", self.path.display()),
                    )
                })?;
            buf.copy_from_slice(range);
            Ok(())
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with_state(|state| {
            self.check_writable()?;
            state.stats.writes += 1;
            let end = end_of(offset, buf.len())?;
            let start = end - buf.len();
            if fires(&mut state.faults.write) {
                return Err(io::Error::other("injected write failure"));
            }
            let mut len = buf.len();
            let mut outcome = Ok(());
            if let Some((remaining, prefix)) = &mut state.faults.torn {
                if *remaining == 0 {
                    len = len.min(*prefix);
                    outcome = Err(io::Error::other("injected torn write"));
                    state.faults.torn = None;
                } else {
                    *remaining -= 1;
                }
            }
            if let Some(budget) = &mut state.faults.disk_budget {
                if len as u64 > *budget {
                    len = usize::try_from(*budget).unwrap_or(len);
                    outcome = Err(io::Error::new(io::ErrorKind::StorageFull, "injected disk full"));
                }
                *budget -= len as u64;
            }
            if len > 0 {
                let inode = state.inode(self.inode)?;
                if inode.live.len() < start + len {
                    inode.live.resize(start + len, 0);
                }
                inode.live[start..start + len].copy_from_slice(&buf[..len]);
            }
            state.stats.bytes_written += len as u64;
            outcome
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with_state(|state| Ok(state.inode(self.inode)?.live.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with_state(|state| {
            self.check_writable()?;
            let len = end_of(len, 0)?;
            state.inode(self.inode)?.live.resize(len, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with_state(|state| {
            state.stats.data_syncs += 1;
            let failed = fires(&mut state.faults.sync);
            let inode = state.inode(self.inode)?;
            if failed {
                // Linux marks the pages clean although they never reached the disk.
                inode.clean = inode.live.clone();
                return Err(io::Error::other("injected sync_data failure"));
            }
            inode.persist();
            Ok(())
        })
    }
}

/// The guard of [`FileSystem::lock_dir`]: the lock is released when it is dropped, or by a
/// crash (the process that held it is gone).
struct DirLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    generation: u64,
}

impl fmt::Debug for DirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirLock").field("path", &self.path).finish()
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let mut state = self.state.lock();
        if state.generation == self.generation {
            state.locks.remove(&self.path);
        }
    }
}

impl FileSystem for FaultFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        let mut state = self.state.lock();
        let inode = match mode {
            OpenMode::Read | OpenMode::ReadWrite => state.live_file(path)?,
            OpenMode::CreateNew => {
                let (parent, name) = split(path)?;
                let id = state.next_inode;
                let dir = state.dirs.get_mut(&parent).ok_or_else(|| not_found(&parent))?;
                if dir.live.contains_key(&name) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} already exists", path.display()),
                    ));
                }
                dir.live.insert(name, Node::File(id));
                state.next_inode += 1;
                state.inodes.insert(id, Inode::new());
                id
            }
        };
        Ok(Arc::new(FaultFile {
            state: Arc::clone(&self.state),
            inode,
            generation: state.generation,
            writable: mode != OpenMode::Read,
            path: normalize(path),
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.state.lock().create_dir_all(path, false)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        match state.live_node(path)? {
            Node::Dir => Ok(state
                .dirs
                .get(&normalize(path))
                .map(|dir| dir.live.keys().cloned().collect())
                .unwrap_or_default()),
            Node::File(_) => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is a file", path.display()),
            )),
        }
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        match self.state.lock().live_node(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.live_file(path)?;
        let (parent, name) = split(path)?;
        if let Some(dir) = state.dirs.get_mut(&parent) {
            dir.live.remove(&name);
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        let id = state.live_file(from)?;
        let (from_parent, from_name) = split(from)?;
        let (to_parent, to_name) = split(to)?;
        match state.dirs.get(&to_parent).map(|dir| dir.live.get(&to_name)) {
            None => return Err(not_found(&to_parent)),
            Some(Some(Node::Dir)) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a folder", to.display()),
                ));
            }
            Some(_) => {}
        }
        if let Some(dir) = state.dirs.get_mut(&from_parent) {
            dir.live.remove(&from_name);
        }
        if let Some(dir) = state.dirs.get_mut(&to_parent) {
            dir.live.insert(to_name, Node::File(id));
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.stats.dir_syncs += 1;
        if fires(&mut state.faults.sync) {
            return Err(io::Error::other("injected sync_dir failure"));
        }
        let dir = state
            .dirs
            .get_mut(&normalize(path))
            .ok_or_else(|| not_found(path))?;
        dir.durable = dir.live.clone();
        Ok(())
    }

    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        let mut state = self.state.lock();
        let normal = normalize(path);
        if !state.dirs.contains_key(&normal) {
            return Err(not_found(path));
        }
        if !state.locks.insert(normal.clone()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another factstore process", path.display()),
            ));
        }
        Ok(Box::new(DirLock {
            state: Arc::clone(&self.state),
            path: normal,
            generation: state.generation,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/data";

    /// A file system with a durable `/data` folder.
    fn fs() -> FaultFs {
        let fs = FaultFs::new();
        fs.install_dir(DIR).expect("install /data");
        fs
    }

    fn path(name: &str) -> PathBuf {
        Path::new(DIR).join(name)
    }

    /// Creates `/data/<name>` with `bytes`, synced, and its folder synced.
    fn durable(fs: &FaultFs, name: &str, bytes: &[u8]) -> Arc<dyn File> {
        let file = fs.open(&path(name), OpenMode::CreateNew).expect("create");
        file.write_all_at(bytes, 0).expect("write");
        file.sync_data().expect("sync data");
        fs.sync_dir(Path::new(DIR)).expect("sync dir");
        file
    }

    fn read_all(file: &dyn File) -> Vec<u8> {
        let len = usize::try_from(file.len().expect("len")).expect("fits");
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0).expect("read");
        buf
    }

    #[test]
    fn reads_what_was_written_and_not_past_the_end() {
        let fs = fs();
        let file = fs.open(&path("a"), OpenMode::CreateNew).expect("create");
        file.write_all_at(b"hello", 0).expect("write");
        file.write_all_at(b"!", 7).expect("write with a hole");
        assert_eq!(read_all(file.as_ref()), b"hello\0\0!");
        let mut buf = [0u8; 4];
        let err = file.read_exact_at(&mut buf, 6).expect_err("past the end");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        file.set_len(2).expect("truncate");
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&b"he"[..]));
    }

    #[test]
    fn open_modes_are_enforced() {
        let fs = fs();
        let err = fs.open(&path("missing"), OpenMode::Read).expect_err("missing");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = fs
            .open(&path("missing"), OpenMode::ReadWrite)
            .expect_err("missing");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        durable(&fs, "a", b"x");
        let err = fs.open(&path("a"), OpenMode::CreateNew).expect_err("exists");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let err = fs
            .open(Path::new("/nowhere/a"), OpenMode::CreateNew)
            .expect_err("no folder");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let read_only = fs.open(&path("a"), OpenMode::Read).expect("open");
        let err = read_only.write_all_at(b"y", 0).expect_err("read-only");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(fs.exists(&path("a")).expect("exists"));
        assert!(
            fs.exists(Path::new("data"))
                .expect("the same folder, spelled relative")
        );
        assert_eq!(fs.list_dir(Path::new(DIR)).expect("list"), vec!["a".to_owned()]);
    }

    #[test]
    fn crash_drops_unsynced_data() {
        let fs = fs();
        let file = durable(&fs, "a", b"synced");
        file.write_all_at(b" and not", 6).expect("write");
        file.write_all_at(b"S", 0).expect("overwrite");
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&b"Synced and not"[..]));
        assert_eq!(fs.durable_file(path("a")).as_deref(), Some(&b"synced"[..]));
        fs.crash();
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&b"synced"[..]));
        let file = fs.open(&path("a"), OpenMode::ReadWrite).expect("reopen");
        assert_eq!(read_all(file.as_ref()), b"synced");
    }

    #[test]
    fn crash_drops_unsynced_truncation() {
        let fs = fs();
        let file = durable(&fs, "a", b"0123456789");
        file.set_len(3).expect("truncate");
        fs.crash();
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&b"0123456789"[..]));
        let file = fs.open(&path("a"), OpenMode::ReadWrite).expect("reopen");
        file.set_len(3).expect("truncate");
        file.sync_data().expect("sync");
        fs.crash();
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&b"012"[..]));
    }

    #[test]
    fn crash_drops_unsynced_creation_even_with_synced_data() {
        let fs = fs();
        let file = fs.open(&path("new"), OpenMode::CreateNew).expect("create");
        file.write_all_at(b"data", 0).expect("write");
        file.sync_data().expect("sync data, but not the folder");
        assert!(fs.durable_file(path("new")).is_none());
        fs.crash();
        assert!(!fs.exists(&path("new")).expect("exists"));
        assert!(fs.file_names(DIR).is_empty());

        let file = fs.open(&path("new"), OpenMode::CreateNew).expect("create again");
        file.write_all_at(b"data", 0).expect("write");
        fs.sync_dir(Path::new(DIR))
            .expect("sync the folder, but not the data");
        fs.crash();
        assert_eq!(
            fs.read_file(path("new")).as_deref(),
            Some(&b""[..]),
            "the entry, empty"
        );
    }

    #[test]
    fn crash_drops_unsynced_folders() {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/a/b/c")).expect("mkdir");
        fs.sync_dir(Path::new("/a/b/c")).expect("sync c");
        fs.sync_dir(Path::new("/a"))
            .expect("sync a: b is durable in a, but a is not in the root");
        fs.crash();
        assert!(!fs.exists(Path::new("/a")).expect("exists"));

        fs.create_dir_all(Path::new("/a/b/c")).expect("mkdir");
        fs.sync_dir(Path::new("/")).expect("sync root");
        fs.sync_dir(Path::new("/a")).expect("sync a");
        fs.crash();
        assert!(fs.exists(Path::new("/a/b")).expect("exists"));
        assert!(!fs.exists(Path::new("/a/b/c")).expect("b was not synced"));
    }

    #[test]
    fn rename_is_durable_only_after_the_folder_sync() {
        let fs = fs();
        durable(&fs, "old", b"old content");
        let tmp = durable(&fs, "tmp", b"new content");
        drop(tmp);
        fs.rename(&path("tmp"), &path("old")).expect("rename over");
        assert_eq!(fs.read_file(path("old")).as_deref(), Some(&b"new content"[..]));
        assert_eq!(fs.file_names(DIR), vec!["old".to_owned()]);
        fs.crash();
        assert_eq!(fs.read_file(path("old")).as_deref(), Some(&b"old content"[..]));
        assert_eq!(fs.read_file(path("tmp")).as_deref(), Some(&b"new content"[..]));

        fs.rename(&path("tmp"), &path("old")).expect("rename over");
        fs.sync_dir(Path::new(DIR)).expect("sync dir");
        fs.crash();
        assert_eq!(fs.read_file(path("old")).as_deref(), Some(&b"new content"[..]));
        assert!(fs.read_file(path("tmp")).is_none());
    }

    #[test]
    fn removal_is_durable_only_after_the_folder_sync() {
        let fs = fs();
        durable(&fs, "a", b"a");
        fs.remove_file(&path("a")).expect("remove");
        assert!(!fs.exists(&path("a")).expect("exists"));
        assert_eq!(fs.durable_file_names(DIR), vec!["a".to_owned()]);
        fs.crash();
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&b"a"[..]));
        fs.remove_file(&path("a")).expect("remove");
        fs.sync_dir(Path::new(DIR)).expect("sync dir");
        fs.crash();
        assert!(fs.read_file(path("a")).is_none());
    }

    #[test]
    fn handles_from_before_a_crash_fail() {
        let fs = fs();
        let file = durable(&fs, "a", b"abc");
        fs.crash();
        let mut buf = [0u8; 1];
        let err = file.read_exact_at(&mut buf, 0).expect_err("stale read");
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert!(err.to_string().contains("before the crash"));
        assert!(file.write_all_at(b"x", 0).is_err());
        assert!(file.len().is_err());
        assert!(file.set_len(0).is_err());
        assert!(file.sync_data().is_err());
    }

    #[test]
    fn fail_write_after_fires_once_or_forever() {
        let fs = fs();
        let file = fs.open(&path("a"), OpenMode::CreateNew).expect("create");
        fs.fail_write_after(1, Repeat::Once);
        file.write_all_at(b"1", 0).expect("first passes");
        let err = file.write_all_at(b"2", 1).expect_err("second fails");
        assert!(err.to_string().contains("injected"));
        file.write_all_at(b"3", 1).expect("third passes");
        assert_eq!(
            fs.read_file(path("a")).as_deref(),
            Some(&b"13"[..]),
            "the failed write wrote nothing"
        );

        fs.fail_write_after(0, Repeat::Forever);
        assert!(file.write_all_at(b"4", 2).is_err());
        assert!(file.write_all_at(b"5", 2).is_err());
        fs.clear_faults();
        file.write_all_at(b"6", 2).expect("cleared");
        assert_eq!(fs.stats().writes, 6);
    }

    #[test]
    fn fail_sync_after_counts_data_and_folder_syncs() {
        let fs = fs();
        let file = fs.open(&path("a"), OpenMode::CreateNew).expect("create");
        file.write_all_at(b"abc", 0).expect("write");
        fs.fail_sync_after(1, Repeat::Forever);
        fs.sync_dir(Path::new(DIR)).expect("first sync passes");
        assert!(file.sync_data().is_err());
        assert!(fs.sync_dir(Path::new(DIR)).is_err());
        assert_eq!(fs.durable_file(path("a")).as_deref(), Some(&b""[..]));
        let stats = fs.stats();
        assert_eq!((stats.data_syncs, stats.dir_syncs, stats.syncs()), (1, 2, 3));
    }

    #[test]
    fn a_failed_sync_forgets_the_dirty_pages_like_linux() {
        let fs = fs();
        let file = durable(&fs, "a", &[0u8; 2 * SECTOR_BYTES]);
        file.write_all_at(&[1u8; SECTOR_BYTES], 0)
            .expect("write sector 0");
        fs.fail_sync_after(0, Repeat::Once);
        assert!(file.sync_data().is_err());
        file.write_all_at(&[2u8; SECTOR_BYTES], SECTOR_BYTES as u64)
            .expect("write sector 1");
        file.sync_data().expect("the retry succeeds...");
        let on_disk = fs.durable_file(path("a")).expect("durable");
        assert_eq!(on_disk[0], 0, "...but sector 0 never reached the disk");
        assert_eq!(on_disk[SECTOR_BYTES], 2, "sector 1, written after, did");
    }

    #[test]
    fn torn_write_writes_a_prefix_and_fails() {
        let fs = fs();
        let file = fs.open(&path("a"), OpenMode::CreateNew).expect("create");
        fs.torn_write_after(1, 3);
        file.write_all_at(b"ok", 0).expect("first passes");
        let err = file.write_all_at(b"abcdef", 2).expect_err("torn");
        assert!(err.to_string().contains("torn"));
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&b"okabc"[..]));
        file.write_all_at(b"def", 5).expect("fires once");
        assert_eq!(fs.stats().bytes_written, 2 + 3 + 3);
    }

    #[test]
    fn disk_full_writes_what_fits() {
        let fs = fs();
        let file = fs.open(&path("a"), OpenMode::CreateNew).expect("create");
        fs.disk_full_after_bytes(5);
        file.write_all_at(b"abc", 0).expect("fits");
        let err = file.write_all_at(b"defg", 3).expect_err("full");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&b"abcde"[..]));
        let err = file.write_all_at(b"h", 5).expect_err("still full");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        file.write_all_at(b"", 5).expect("an empty write needs no space");
        fs.clear_faults();
        file.write_all_at(b"h", 5).expect("space again");
    }

    #[test]
    fn partial_persistence_keeps_whole_sectors_and_replays_by_seed() {
        let sectors = 64;
        let run = |seed: u64| -> (Vec<u8>, CrashReport) {
            let fs = fs();
            let file = durable(&fs, "a", &vec![0xAAu8; sectors * SECTOR_BYTES]);
            file.write_all_at(&vec![0xBBu8; sectors * SECTOR_BYTES], 0)
                .expect("overwrite all");
            let report = fs.crash_with(CrashMode::PartialPersistence { seed });
            (fs.read_file(path("a")).expect("the file was durable"), report)
        };
        let (image, report) = run(7);
        assert_eq!(image.len(), sectors * SECTOR_BYTES);
        let mut kept = 0;
        for sector in image.chunks(SECTOR_BYTES) {
            let first = sector[0];
            assert!(
                sector.iter().all(|b| *b == first),
                "a sector is kept or dropped whole"
            );
            kept += u64::from(first == 0xBB);
        }
        assert_eq!(kept, report.sectors_kept);
        assert_eq!(report.sectors_kept + report.sectors_dropped, sectors as u64);
        assert!(
            report.sectors_kept > 0 && report.sectors_dropped > 0,
            "64 coins: some of each"
        );
        assert_eq!(run(7), (image, report), "the same seed, the same outcome");
    }

    #[test]
    fn partial_persistence_keeps_or_drops_all_unsynced_entries() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..16 {
            let fs = fs();
            durable(&fs, "old", b"x");
            let file = fs.open(&path("new"), OpenMode::CreateNew).expect("create");
            file.write_all_at(b"y", 0).expect("write");
            fs.rename(&path("old"), &path("renamed")).expect("rename");
            let report = fs.crash_with(CrashMode::PartialPersistence { seed });
            let names = fs.file_names(DIR);
            if report.entries_kept {
                assert_eq!(names, vec!["new".to_owned(), "renamed".to_owned()]);
            } else {
                assert_eq!(names, vec!["old".to_owned()]);
            }
            outcomes.insert(report.entries_kept);
        }
        assert_eq!(outcomes.len(), 2, "16 seeds see both outcomes");
    }

    #[test]
    fn corrupt_flips_a_byte_in_both_images() {
        let fs = fs();
        durable(&fs, "a", b"abc");
        fs.corrupt(path("a"), 1, 0xFF).expect("corrupt");
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&[b'a', !b'b', b'c'][..]));
        fs.crash();
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&[b'a', !b'b', b'c'][..]));
        assert!(fs.corrupt(path("a"), 3, 1).is_err());
        assert!(fs.corrupt(path("a"), 0, 0).is_err());
    }

    #[test]
    fn install_file_is_durable() {
        let fs = FaultFs::new();
        fs.install_file("/fixtures/v1/segment", b"old format")
            .expect("install");
        fs.crash();
        assert_eq!(
            fs.read_file("/fixtures/v1/segment").as_deref(),
            Some(&b"old format"[..])
        );
    }

    #[test]
    fn lock_dir_is_exclusive_until_dropped_or_crashed() {
        let fs = fs();
        let guard = fs.lock_dir(Path::new(DIR)).expect("lock");
        let err = fs.lock_dir(Path::new(DIR)).expect_err("held");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(guard);
        let guard = fs.lock_dir(Path::new(DIR)).expect("released by drop");
        fs.crash();
        let again = fs.lock_dir(Path::new(DIR)).expect("released by the crash");
        drop(guard);
        let err = fs
            .lock_dir(Path::new(DIR))
            .expect_err("the old guard must not release the new lock");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(again);
    }

    #[test]
    fn is_send_sync_clone_debug() {
        fn check<T: Send + Sync + Clone + fmt::Debug + FileSystem>() {}
        check::<FaultFs>();
        let fs = fs();
        let other = fs.clone();
        durable(&other, "a", b"shared");
        assert_eq!(fs.read_file(path("a")).as_deref(), Some(&b"shared"[..]));
        assert!(format!("{fs:?}").contains("files: 1"));
    }
}
