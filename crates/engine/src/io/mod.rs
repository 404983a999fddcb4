//! All disk I/O of the engine goes through [`FileSystem`] and [`File`].
//!
//! The traits are deliberately narrow: positional reads and writes, length, truncation, a data
//! sync, and the directory operations the engine needs. Nothing else touches the disk, so a test
//! can swap in a file system that fails the Nth write or sync, tears a write, or forgets every
//! byte that was not synced (`factstore_testkit::faultfs`).
//!
//! # Contract
//! - `write_at` either writes all of `buf` or returns an error; after an error the bytes in the
//!   range are unspecified (some may have been written).
//! - Data written is durable only after `sync_data` returns `Ok` on that file; a file's
//!   existence (creation, rename, removal) is durable only after `sync_dir` on its folder.
//! - After `sync_data` fails, the engine assumes nothing about what reached the disk and stops
//!   writing (see `docs/durability.md`).

mod std_fs;

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use std_fs::StdFileSystem;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write; the file must not exist yet.
    CreateNew,
}

/// A file, read and written at explicit offsets. Shared between threads.
#[expect(
    clippy::len_without_is_empty,
    reason = "a file's length is all the engine asks of it"
)]
pub trait File: Send + Sync + Debug {
    /// Reads exactly `buf.len()` bytes at `offset`; fails with `UnexpectedEof` past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and its length) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
}

/// The folder operations of the engine, and opening files.
pub trait FileSystem: Send + Sync + Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>>;
    /// Creates a folder and its parents when missing.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of a folder (files and folders), in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> io::Result<bool>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the folder's entries durable: `fsync` of the folder.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes `to` a second name of the file `from` (a hard link), when the file system can:
    /// a backup shares the immutable files of the store this way instead of copying them.
    /// The default has no links; callers copy instead, as they do when the two paths are on
    /// different file systems (`EXDEV`).
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let _ = (from, to);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this file system has no hard links",
        ))
    }
    /// Takes an exclusive lock on the data folder for the life of the returned guard, so that
    /// two processes never write the same store. A file system without processes may no-op.
    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn Debug + Send + Sync>>;
}
