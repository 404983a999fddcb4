//! Immutable sorted runs: files of `(key, value)` byte-string pairs in strictly increasing key
//! order, written once by [`RunWriter`] (or [`merge_runs`]) and then only read, by any number of
//! threads at once, through [`Run`].
//!
//! # Layout (byte by byte in `docs/format-runs.md`)
//! ```text
//! header (16) | block 0 | block 1 | … | block index | bloom filter | extra | footer (96)
//! ```
//! - Blocks hold about [`BLOCK_TARGET_BYTES`] of entries each, prefix-compressed against the
//!   previous key of the same block (the first key of a block is stored whole, so every block
//!   decodes on its own), and end with their entry count and a CRC32C.
//! - The block index lists every block's offset, length, entry count and first key. [`Run::open`]
//!   keeps it in memory (one small entry per block, not per key), so a point lookup is a binary
//!   search in memory plus one block read, and a range scan reads blocks in order.
//! - The bloom filter holds the part of every key chosen by a [`BloomKeyFn`], so the index layer
//!   can skip a run without reading it. `extra` is opaque bytes of the index layer.
//! - The footer locates the three sections, carries their CRC32Cs and the entry count, and is
//!   itself covered by a CRC32C. Magic and format version open and close the file.
//!
//! Every byte of a run is covered by a checksum or compared to a constant, so a flipped bit,
//! a truncation or garbage is reported as [`EngineError::Corruption`] naming the file and an
//! offset, never as a panic or a wrong answer. Metadata is checked at open; a block is checked
//! each time it is read; [`Run::verify`] checks everything, including key order.
//!
//! # Durability
//! [`RunWriter::finish`] ends with `sync_data` of the file; the caller then fsyncs the folder
//! (typically after renaming the file into place). A writer dropped before `finish`, or one
//! that failed, leaves a file without a valid footer: [`Run::open`] refuses it and the caller
//! deletes it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::index::bloom::{self, Bloom};
use crate::io::{File, FileSystem, OpenMode};

/// Opens and closes every run file.
pub const MAGIC: [u8; 8] = *b"FACTRUN\0";
/// The run format this code writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// The header: magic, version, CRC32C of both.
pub const HEADER_LEN: usize = 16;
/// The fixed-size footer at the end of the file.
pub const FOOTER_LEN: usize = 96;
/// A block is closed once its entries reach this many bytes: big enough that the per-block
/// index entry and read are amortized over tens of entries, small enough that a point lookup
/// reads one page.
pub const BLOCK_TARGET_BYTES: usize = 4096;
/// The longest key: 64 KiB plus room for the index layer's framing around a 64 KiB term.
pub const MAX_KEY_LEN: usize = 65_536 + 64;
/// The longest value.
pub const MAX_VALUE_LEN: usize = 65_536;
/// The most `extra` bytes a run carries; they are held in memory while the run is open.
pub const MAX_EXTRA_LEN: usize = 256 << 20;
/// The longest block a reader accepts: a format constant, independent of the writer's target,
/// so that a corrupt length can never make a reader allocate much.
pub const MAX_BLOCK_LEN: usize = 256 << 10;

/// Entry header: shared prefix length u16, suffix length u32, value length u32.
const ENTRY_HEADER_LEN: usize = 10;
/// Block trailer: entry count u32, CRC32C u32.
const BLOCK_TRAILER_LEN: usize = 8;
/// Index entry before the first key: offset u64, length u32, entries u32, key length u32.
const INDEX_ENTRY_FIXED_LEN: usize = 20;
/// The bloom section is at most this long (its header plus `MAX_WORDS` words).
const MAX_BLOOM_LEN: u64 = 8 + 8 * bloom::MAX_WORDS as u64;
/// Finished blocks are written in batches of about this size, to make few system calls.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// How much of a key an error message shows.
const KEY_IN_MESSAGE_MAX: usize = 64;

// The biggest block a writer can produce (entries just under the target, then one maximal
// entry, then the trailer) must be readable.
const _: () = assert!(
    BLOCK_TARGET_BYTES - 1 + ENTRY_HEADER_LEN + MAX_KEY_LEN + MAX_VALUE_LEN + BLOCK_TRAILER_LEN
        <= MAX_BLOCK_LEN
);
// Block lengths and counts are stored as u32.
const _: () = assert!(MAX_BLOCK_LEN <= u32::MAX as usize);

/// Chooses the part of a key that goes into a run's bloom filter; `None` adds nothing for that
/// key. Consecutive keys with the same bloom key are inserted once.
pub type BloomKeyFn = fn(&[u8]) -> Option<&[u8]>;

/// What [`RunWriter::finish`] and [`merge_runs`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunInfo {
    pub entries: u64,
    pub file_bytes: u64,
}

/// Writes a new run file from keys given in strictly increasing order.
pub struct RunWriter {
    path: PathBuf,
    file: Arc<dyn File>,
    /// Bytes already written to the file; `out` continues from here.
    written: u64,
    /// Encoded bytes not written yet: the header, finished blocks and the open block, which
    /// starts at `block_start`. Written out (between blocks) once it reaches
    /// `WRITE_BUFFER_BYTES`.
    out: Vec<u8>,
    block_start: usize,
    /// Entries in the open block; 0 means no block is open.
    block_entries: u32,
    block_first_key: Vec<u8>,
    /// Close a block once its entries reach this many bytes (`BLOCK_TARGET_BYTES`, smaller in
    /// tests to exercise block boundaries).
    block_target_bytes: usize,
    /// The last key added; meaningful when `entries > 0`.
    last_key: Vec<u8>,
    entries: u64,
    /// The encoded block index, written by `finish`.
    index: Vec<u8>,
    block_count: u64,
    bloom: Bloom,
    bloom_key: BloomKeyFn,
    last_bloom_key: Option<Vec<u8>>,
    /// Set when a write failed: the file's contents are then unknown, so nothing more is
    /// written and `finish` refuses.
    failed: bool,
}

impl RunWriter {
    /// Creates `path` (must not exist). `expected_keys` sizes the bloom filter.
    pub fn create(
        fs: &dyn FileSystem,
        path: &Path,
        expected_keys: usize,
        bloom_key: BloomKeyFn,
    ) -> Result<RunWriter> {
        let file = fs
            .open(path, OpenMode::CreateNew)
            .map_err(EngineError::io(path))?;
        let mut out = Vec::with_capacity(WRITE_BUFFER_BYTES + BLOCK_TARGET_BYTES);
        out.extend_from_slice(&encode_header());
        let block_start = out.len();
        Ok(RunWriter {
            path: path.to_owned(),
            file,
            written: 0,
            out,
            block_start,
            block_entries: 0,
            block_first_key: Vec::new(),
            block_target_bytes: BLOCK_TARGET_BYTES,
            last_key: Vec::new(),
            entries: 0,
            index: Vec::new(),
            block_count: 0,
            bloom: Bloom::with_capacity(expected_keys),
            bloom_key,
            last_bloom_key: None,
            failed: false,
        })
    }

    /// Appends an entry. Keys must be strictly increasing (bytewise): a key out of order, or a
    /// key or value over [`MAX_KEY_LEN`] / [`MAX_VALUE_LEN`], is refused with
    /// [`EngineError::Options`] and nothing is written, so the file stays valid.
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_usable()?;
        if key.len() > MAX_KEY_LEN || value.len() > MAX_VALUE_LEN {
            return Err(EngineError::Options(format!(
                "run {}: entry too large (key {} bytes, value {} bytes; at most {MAX_KEY_LEN} and \
                 {MAX_VALUE_LEN})",
                self.path.display(),
                key.len(),
                value.len()
            )));
        }
        if self.entries > 0 && key <= self.last_key.as_slice() {
            return Err(EngineError::Options(format!(
                "run {}: key {} added after {}; keys must be strictly increasing",
                self.path.display(),
                show_key(key),
                show_key(&self.last_key)
            )));
        }

        let shared = if self.block_entries == 0 {
            self.block_first_key.clear();
            self.block_first_key.extend_from_slice(key);
            0
        } else {
            common_prefix_len(&self.last_key, key).min(usize::from(u16::MAX))
        };
        let suffix = key
            .get(shared..)
            .expect("the shared prefix is no longer than the key");
        let shared = u16::try_from(shared).expect("shared is capped at u16::MAX");
        let suffix_len = u32::try_from(suffix.len()).expect("keys are at most MAX_KEY_LEN");
        let value_len = u32::try_from(value.len()).expect("values are at most MAX_VALUE_LEN");
        self.out.extend_from_slice(&shared.to_le_bytes());
        self.out.extend_from_slice(&suffix_len.to_le_bytes());
        self.out.extend_from_slice(&value_len.to_le_bytes());
        self.out.extend_from_slice(suffix);
        self.out.extend_from_slice(value);
        self.block_entries += 1;
        self.entries += 1;
        self.last_key.clear();
        self.last_key.extend_from_slice(key);

        if let Some(bloom_key) = (self.bloom_key)(key) {
            // Index keys share their bloom key across long stretches (one term, many
            // positions): hashing it once per stretch saves most of the hashing.
            if self.last_bloom_key.as_deref() != Some(bloom_key) {
                self.bloom.insert(bloom_key);
                let last = self.last_bloom_key.get_or_insert_with(Vec::new);
                last.clear();
                last.extend_from_slice(bloom_key);
            }
        }

        if self.out.len() - self.block_start >= self.block_target_bytes {
            self.close_block()?;
        }
        Ok(())
    }

    /// Writes the last block, the block index, the bloom filter, `extra` and the footer, then
    /// `sync_data`. The caller fsyncs the folder.
    pub fn finish(mut self, extra: &[u8]) -> Result<RunInfo> {
        self.check_usable()?;
        if extra.len() > MAX_EXTRA_LEN {
            return Err(EngineError::Options(format!(
                "run {}: {} extra bytes, at most {MAX_EXTRA_LEN}",
                self.path.display(),
                extra.len()
            )));
        }
        if self.block_entries > 0 {
            self.close_block()?;
        }
        assert_eq!(self.block_start, self.out.len(), "no block is open");

        let index_offset = self.position();
        let bloom_bytes = self.bloom.to_bytes();
        let index = std::mem::take(&mut self.index);
        self.out.extend_from_slice(&index);
        let bloom_offset = self.position();
        self.out.extend_from_slice(&bloom_bytes);
        let extra_offset = self.position();
        self.out.extend_from_slice(extra);
        let footer = Footer {
            entries: self.entries,
            block_count: self.block_count,
            index_offset,
            index_len: len_u64(&index),
            bloom_offset,
            bloom_len: len_u64(&bloom_bytes),
            extra_offset,
            extra_len: len_u64(extra),
            index_crc: crc32c::crc32c(&index),
            bloom_crc: crc32c::crc32c(&bloom_bytes),
            extra_crc: crc32c::crc32c(extra),
        };
        self.out.extend_from_slice(&footer.encode());
        let file_bytes = self.position();
        self.write_out()?;
        self.file.sync_data().map_err(EngineError::io(&self.path))?;
        // Check what was written against what a reader will check, before anyone relies on it.
        debug_assert_eq!(footer.validate_layout(file_bytes, &self.path).ok(), Some(()));
        Ok(RunInfo {
            entries: self.entries,
            file_bytes,
        })
    }

    /// Keys added so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Uses blocks of about `bytes` instead of [`BLOCK_TARGET_BYTES`], so small tests cross
    /// many block boundaries.
    #[cfg(test)]
    fn with_block_target(mut self, bytes: usize) -> RunWriter {
        assert!((1..=BLOCK_TARGET_BYTES).contains(&bytes));
        self.block_target_bytes = bytes;
        self
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(EngineError::Poisoned(
                "an earlier write to an index run failed".to_owned(),
            ));
        }
        Ok(())
    }

    /// The file offset of the next byte appended to `out`.
    fn position(&self) -> u64 {
        self.written + len_u64(&self.out)
    }

    /// Ends the open block with its trailer and records it in the index.
    fn close_block(&mut self) -> Result<()> {
        assert!(self.block_entries > 0, "a block holds at least one entry");
        let offset = self.written + self.block_start as u64;
        self.out.extend_from_slice(&self.block_entries.to_le_bytes());
        let body = self
            .out
            .get(self.block_start..)
            .expect("block_start is within out");
        let crc = crc32c::crc32c(body);
        self.out.extend_from_slice(&crc.to_le_bytes());
        let len = self.out.len() - self.block_start;
        assert!(len <= MAX_BLOCK_LEN, "block of {len} bytes exceeds MAX_BLOCK_LEN");

        self.index.extend_from_slice(&offset.to_le_bytes());
        self.index
            .extend_from_slice(&u32::try_from(len).expect("len <= MAX_BLOCK_LEN").to_le_bytes());
        self.index.extend_from_slice(&self.block_entries.to_le_bytes());
        let key_len = u32::try_from(self.block_first_key.len()).expect("keys are at most MAX_KEY_LEN");
        self.index.extend_from_slice(&key_len.to_le_bytes());
        self.index.extend_from_slice(&self.block_first_key);
        self.block_count += 1;
        self.block_entries = 0;

        if self.out.len() >= WRITE_BUFFER_BYTES {
            self.write_out()?;
        }
        self.block_start = self.out.len();
        Ok(())
    }

    fn write_out(&mut self) -> Result<()> {
        if let Err(source) = self.file.write_all_at(&self.out, self.written) {
            self.failed = true;
            return Err(EngineError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.written += len_u64(&self.out);
        self.out.clear();
        Ok(())
    }
}

impl fmt::Debug for RunWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunWriter")
            .field("path", &self.path)
            .field("entries", &self.entries)
            .field("blocks", &self.block_count)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// An open run: its metadata in memory, its blocks read on demand. `Send + Sync`; reads take
/// `&self` and use positional I/O, so any number of threads may read at once.
pub struct Run {
    path: PathBuf,
    file: Arc<dyn File>,
    file_bytes: u64,
    meta: Meta,
}

/// What [`Run::open`] reads and checks, and keeps.
#[derive(PartialEq, Eq)]
struct Meta {
    footer: Footer,
    /// Invariant (checked at open): contiguous from `HEADER_LEN` to `footer.index_offset`, each
    /// with at least one entry and a length within bounds, first keys strictly increasing.
    blocks: Vec<BlockHandle>,
    /// The first keys of all blocks, concatenated; `BlockHandle::key` indexes into it.
    first_keys: Vec<u8>,
    bloom: Bloom,
    extra: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockHandle {
    offset: u64,
    len: u32,
    entries: u32,
    key: Range<usize>,
}

impl Run {
    /// Opens `path` and checks its header, footer, block index, bloom filter and extra bytes
    /// (layout and checksums). Keeps those in memory; reads no block.
    pub fn open(fs: &dyn FileSystem, path: &Path) -> Result<Run> {
        let file = fs.open(path, OpenMode::Read).map_err(EngineError::io(path))?;
        let file_bytes = file.len().map_err(EngineError::io(path))?;
        let meta = Meta::read(file.as_ref(), path, file_bytes)?;
        Ok(Run {
            path: path.to_owned(),
            file,
            file_bytes,
            meta,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> u64 {
        self.meta.footer.entries
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// The number of blocks.
    pub fn block_count(&self) -> usize {
        self.meta.blocks.len()
    }

    /// The opaque bytes given to [`RunWriter::finish`].
    pub fn extra(&self) -> &[u8] {
        &self.meta.extra
    }

    /// False if no key of the run has this bloom key (as chosen by the writer's
    /// [`BloomKeyFn`]); true if one probably has.
    /// About how many distinct keys the bloom filter holds.
    pub fn bloom_items(&self) -> u64 {
        self.meta.bloom.estimated_items()
    }

    pub fn may_contain(&self, bloom_key: &[u8]) -> bool {
        self.meta.bloom.may_contain(bloom_key)
    }

    /// The value of `key`: one binary search in memory and at most one block read.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        // The block that would hold `key` is the last one whose first key is <= key.
        let Some(index) = self.blocks_starting_at_or_before(key).checked_sub(1) else {
            return Ok(None);
        };
        let mut block = self.read_block(index)?;
        let value = block.find(key, &self.path)?;
        Ok(value.map(|value| {
            block
                .data
                .get(value)
                .expect("find checked the value's range")
                .to_vec()
        }))
    }

    /// Entries with `from <= key < to`, ascending. Lazy: reads one block at a time.
    pub fn range(&self, from: &[u8], to: &[u8]) -> RunRange<'_> {
        let mut range = RunRange::new(self, from, Some(to.to_vec()));
        if from >= to {
            range.done = true;
        }
        range
    }

    /// Every entry, ascending. Lazy: reads one block at a time.
    pub fn iter(&self) -> RunRange<'_> {
        RunRange::new(self, &[], None)
    }

    /// Entries with `from <= key < to`, descending. Lazy: reads one block at a time.
    pub fn range_rev(&self, from: &[u8], to: &[u8]) -> RunRangeRev<'_> {
        // The last block that may hold a key < to is the last one whose first key is < to.
        let blocks_left = if from < to {
            self.meta.blocks.partition_point(|b| self.first_key(b) < to)
        } else {
            0
        };
        RunRangeRev {
            run: self,
            from: from.to_vec(),
            to: to.to_vec(),
            blocks_left,
            block: None,
            keys: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Rereads the header, footer and metadata and compares them with what was read at open,
    /// then reads every block, checking its checksum, its entry count, its first key against
    /// the index, and that keys are strictly increasing across the whole file. Returns the
    /// entry count, which must match the footer.
    pub fn verify(&self) -> Result<u64> {
        let file_bytes = self.file.len().map_err(EngineError::io(&self.path))?;
        if file_bytes != self.file_bytes {
            return Err(EngineError::corruption(
                &self.path,
                file_bytes.min(self.file_bytes),
                format!(
                    "the file is {file_bytes} bytes long, it was {} bytes when opened",
                    self.file_bytes
                ),
            ));
        }
        let meta = Meta::read(self.file.as_ref(), &self.path, file_bytes)?;
        if meta != self.meta {
            return Err(EngineError::corruption(
                &self.path,
                self.meta.footer.index_offset,
                "the run's metadata changed since it was opened",
            ));
        }

        let mut previous: Option<Vec<u8>> = None;
        let mut total: u64 = 0;
        for (index, handle) in self.meta.blocks.iter().enumerate() {
            let mut block = self.read_block(index)?;
            let mut first = true;
            while block.advance(&self.path)? {
                if first && block.key.as_slice() != self.first_key(handle) {
                    return Err(EngineError::corruption(
                        &self.path,
                        handle.offset,
                        "the block's first key differs from the block index",
                    ));
                }
                first = false;
                if let Some(previous) = &previous
                    && block.key <= *previous
                {
                    return Err(EngineError::corruption(
                        &self.path,
                        handle.offset,
                        format!(
                            "key {} follows {}: keys are not strictly increasing",
                            show_key(&block.key),
                            show_key(previous)
                        ),
                    ));
                }
                let last = previous.get_or_insert_with(Vec::new);
                last.clear();
                last.extend_from_slice(&block.key);
                total += 1;
            }
        }
        if total != self.meta.footer.entries {
            return Err(EngineError::corruption(
                &self.path,
                self.file_bytes - FOOTER_LEN as u64,
                format!(
                    "the blocks hold {total} entries, the footer says {}",
                    self.meta.footer.entries
                ),
            ));
        }
        Ok(total)
    }

    fn first_key(&self, handle: &BlockHandle) -> &[u8] {
        self.meta
            .first_keys
            .get(handle.key.clone())
            .expect("first key ranges are checked at open")
    }

    /// How many blocks have a first key <= `key`.
    fn blocks_starting_at_or_before(&self, key: &[u8]) -> usize {
        self.meta.blocks.partition_point(|b| self.first_key(b) <= key)
    }

    /// Reads block `index` and checks its checksum and entry count.
    fn read_block(&self, index: usize) -> Result<BlockCursor> {
        let handle = self
            .meta
            .blocks
            .get(index)
            .expect("callers pass a block index below the block count");
        let mut data = vec![0; handle.len as usize];
        self.file
            .read_exact_at(&mut data, handle.offset)
            .map_err(EngineError::io(&self.path))?;
        let corrupt = |reason: &str| EngineError::corruption(&self.path, handle.offset, reason);
        let (body, stored_crc) = data
            .split_last_chunk::<4>()
            .ok_or_else(|| corrupt("block shorter than its trailer"))?;
        if crc32c::crc32c(body) != u32::from_le_bytes(*stored_crc) {
            return Err(corrupt("block checksum mismatch"));
        }
        let (_, count) = body
            .split_last_chunk::<4>()
            .ok_or_else(|| corrupt("block shorter than its trailer"))?;
        if u32::from_le_bytes(*count) != handle.entries {
            return Err(corrupt("the block's entry count differs from the block index"));
        }
        Ok(BlockCursor {
            entries_end: data.len() - BLOCK_TRAILER_LEN,
            data,
            offset: handle.offset,
            pos: 0,
            remaining: handle.entries,
            key: Vec::new(),
            value: 0..0,
        })
    }
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Run")
            .field("path", &self.path)
            .field("entries", &self.meta.footer.entries)
            .field("blocks", &self.meta.blocks.len())
            .field("file_bytes", &self.file_bytes)
            .finish_non_exhaustive()
    }
}

/// The entries of one block, decoded one at a time.
struct BlockCursor {
    /// The whole block, trailer included, checksum verified.
    data: Vec<u8>,
    /// The block's file offset, for error messages.
    offset: u64,
    /// Where the trailer starts.
    entries_end: usize,
    /// Where the next entry starts.
    pos: usize,
    /// Entries not decoded yet.
    remaining: u32,
    /// The current key (after `advance` returned true).
    key: Vec<u8>,
    /// The current value's range in `data`.
    value: Range<usize>,
}

impl BlockCursor {
    /// Decodes the next entry into `key` and `value`; false after the last one.
    fn advance(&mut self, path: &Path) -> Result<bool> {
        let Some(entry) = self.next_raw(self.key.len(), path)? else {
            return Ok(false);
        };
        let suffix = self
            .data
            .get(entry.suffix)
            .expect("next_raw checked the suffix's range");
        self.key.truncate(entry.shared);
        self.key.extend_from_slice(suffix);
        self.value = entry.value;
        Ok(true)
    }

    /// The value of `target` in the rest of the block, without rebuilding keys: every entry is
    /// compared through its shared prefix length, and most are decided without looking at
    /// their bytes. Leaves `key` stale.
    fn find(&mut self, target: &[u8], path: &Path) -> Result<Option<Range<usize>>> {
        // Invariant: the previous key is below `target`, equals it on its first `matched`
        // bytes, and is either `matched` long or has a smaller byte than `target` at `matched`.
        let mut matched = 0;
        let mut previous_len = 0;
        while let Some(entry) = self.next_raw(previous_len, path)? {
            previous_len = entry.shared + entry.suffix.len();
            if entry.shared > matched {
                // Equal to the previous key at `matched`, so still below `target`.
                continue;
            }
            if entry.shared < matched && entry.shared < usize::from(u16::MAX) {
                // A shared length that is not capped is exact: this key differs from the
                // previous one at `shared`, upwards, where the previous one equalled `target`.
                return Ok(None);
            }
            // The key equals `target` on its first `shared` bytes: compare the rest.
            let suffix = self
                .data
                .get(entry.suffix)
                .expect("next_raw checked the suffix's range");
            let rest = target.get(entry.shared..).unwrap_or_default();
            let common = common_prefix_len(suffix, rest);
            match (suffix.get(common), rest.get(common)) {
                (None, None) => return Ok(Some(entry.value)),
                // The key is a proper prefix of `target`, or smaller at `common`.
                (None, Some(_)) => matched = entry.shared + common,
                (Some(key_byte), Some(target_byte)) if key_byte < target_byte => {
                    matched = entry.shared + common;
                }
                // `target` is a proper prefix of the key, or the key is larger at `common`.
                (Some(_), _) => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Decodes the next entry's header and checks its ranges; `previous_len` is the length of
    /// the previous key of the block (0 before the first). `None` after the last entry. The
    /// block's checksum already matched, so an error here means a writer bug or a CRC
    /// collision; the checks are there so that even then nothing panics.
    // Always inlined: it is the per-entry step of every read, and inlining it into `find` and
    // `advance` measurably speeds up lookups and scans.
    #[inline(always)]
    fn next_raw(&mut self, previous_len: usize, path: &Path) -> Result<Option<RawEntry>> {
        let corrupt =
            |pos: usize, reason: &str| EngineError::corruption(path, self.offset + pos as u64, reason);
        if self.remaining == 0 {
            if self.pos != self.entries_end {
                return Err(corrupt(self.pos, "bytes after the block's last entry"));
            }
            return Ok(None);
        }
        let header: &[u8; ENTRY_HEADER_LEN] = self
            .data
            .get(self.pos..self.pos + ENTRY_HEADER_LEN)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| corrupt(self.pos, "entry header runs past the block"))?;
        let shared = usize::from(u16::from_le_bytes([header[0], header[1]]));
        let suffix_len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
        let value_len = u32::from_le_bytes([header[6], header[7], header[8], header[9]]) as usize;
        // previous_len is 0 before the first entry, so this also requires shared == 0 there.
        if shared > previous_len {
            return Err(corrupt(self.pos, "shared prefix longer than the previous key"));
        }
        if suffix_len > MAX_KEY_LEN - shared || value_len > MAX_VALUE_LEN {
            return Err(corrupt(self.pos, "entry longer than the format allows"));
        }
        // No overflow: every term is bounded by MAX_BLOCK_LEN or the key and value limits.
        let suffix_start = self.pos + ENTRY_HEADER_LEN;
        let value_start = suffix_start + suffix_len;
        let end = value_start + value_len;
        if end > self.entries_end {
            return Err(corrupt(self.pos, "entry runs past the block"));
        }
        self.pos = end;
        self.remaining -= 1;
        Ok(Some(RawEntry {
            shared,
            suffix: suffix_start..value_start,
            value: value_start..end,
        }))
    }

    fn value(&self) -> &[u8] {
        self.data
            .get(self.value.clone())
            .expect("advance checked the value's range")
    }
}

/// An entry's header, decoded and checked against the block's bounds.
struct RawEntry {
    /// Bytes shared with the previous key of the block.
    shared: usize,
    /// The rest of the key, in the block's data.
    suffix: Range<usize>,
    value: Range<usize>,
}

/// Entries of a run in a key range, ascending; see [`Run::range`]. After an error it ends.
pub struct RunRange<'a> {
    run: &'a Run,
    /// Skip keys below `from` (only the first block read can hold any).
    from: Vec<u8>,
    /// Stop at the first key >= `to`; `None`: at the end of the run.
    to: Option<Vec<u8>>,
    /// The next block to read.
    next_block: usize,
    block: Option<BlockCursor>,
    done: bool,
}

impl<'a> RunRange<'a> {
    fn new(run: &'a Run, from: &[u8], to: Option<Vec<u8>>) -> RunRange<'a> {
        // Start in the last block whose first key is <= from: earlier blocks only hold smaller
        // keys. When from precedes every key, start at block 0.
        let next_block = run.blocks_starting_at_or_before(from).saturating_sub(1);
        RunRange {
            run,
            from: from.to_vec(),
            to,
            next_block,
            block: None,
            done: false,
        }
    }

    /// The file offset of the block the last entry came from (for error messages).
    fn block_offset(&self) -> u64 {
        self.block.as_ref().map_or(0, |block| block.offset)
    }

    fn next_entry(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            if let Some(block) = &mut self.block
                && block.advance(&self.run.path)?
            {
                if !self.from.is_empty() {
                    if block.key < self.from {
                        continue;
                    }
                    // Keys only grow from here: stop comparing.
                    self.from.clear();
                }
                if let Some(to) = &self.to
                    && block.key >= *to
                {
                    return Ok(None);
                }
                return Ok(Some((block.key.clone(), block.value().to_vec())));
            }
            let Some(handle) = self.run.meta.blocks.get(self.next_block) else {
                return Ok(None);
            };
            if let Some(to) = &self.to
                && self.run.first_key(handle) >= to.as_slice()
            {
                return Ok(None);
            }
            self.block = Some(self.run.read_block(self.next_block)?);
            self.next_block += 1;
        }
    }
}

impl Iterator for RunRange<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_entry();
        if !matches!(next, Ok(Some(_))) {
            self.done = true;
        }
        next.transpose()
    }
}

impl fmt::Debug for RunRange<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunRange")
            .field("run", &self.run.path)
            .field("next_block", &self.next_block)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Entries of a run in a key range, descending; see [`Run::range_rev`]. After an error it ends.
pub struct RunRangeRev<'a> {
    run: &'a Run,
    from: Vec<u8>,
    to: Vec<u8>,
    /// Blocks `0..blocks_left` may still hold entries of the range; the next one read is
    /// `blocks_left - 1`.
    blocks_left: usize,
    /// The current block; its values are yielded from its data.
    block: Option<BlockCursor>,
    /// The keys of the current block's entries within the range, concatenated (prefix
    /// compression only decodes forwards, so a block is decoded whole before going backwards).
    keys: Vec<u8>,
    /// Those entries, ascending, as ranges of `keys` and of the block's data; popped from the
    /// end.
    pending: Vec<(Range<usize>, Range<usize>)>,
}

impl RunRangeRev<'_> {
    /// Decodes the next block down into `pending`.
    fn load_previous_block(&mut self) -> Result<()> {
        let index = self.blocks_left - 1;
        let run = self.run;
        let handle = run
            .meta
            .blocks
            .get(index)
            .expect("blocks_left never exceeds the block count");
        // A block starting at or before `from` is the last one that can hold the range.
        self.blocks_left = if run.first_key(handle) <= self.from.as_slice() {
            0
        } else {
            index
        };
        let mut block = run.read_block(index)?;
        self.keys.clear();
        self.pending.clear();
        while block.advance(&run.path)? {
            if block.key >= self.to {
                break;
            }
            if block.key >= self.from {
                let start = self.keys.len();
                self.keys.extend_from_slice(&block.key);
                self.pending.push((start..self.keys.len(), block.value.clone()));
            }
        }
        self.block = Some(block);
        Ok(())
    }
}

impl Iterator for RunRangeRev<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((key, value)) = self.pending.pop()
                && let Some(block) = &self.block
            {
                let key = self.keys.get(key).expect("pending ranges lie within keys");
                let value = block.data.get(value).expect("advance checked the value's range");
                return Some(Ok((key.to_vec(), value.to_vec())));
            }
            if self.blocks_left == 0 {
                return None;
            }
            if let Err(error) = self.load_previous_block() {
                self.blocks_left = 0;
                self.pending.clear();
                return Some(Err(error));
            }
        }
    }
}

impl fmt::Debug for RunRangeRev<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunRangeRev")
            .field("run", &self.run.path)
            .field("blocks_left", &self.blocks_left)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// Merges runs whose key sets are disjoint into a new run at `path` (which must not exist),
/// with `extra` as its extra bytes. An equal key in two inputs is a corruption error naming
/// both files. On any error the partly written output is removed (best effort).
pub fn merge_runs(
    fs: &dyn FileSystem,
    inputs: &[&Run],
    path: &Path,
    bloom_key: BloomKeyFn,
    extra: &[u8],
) -> Result<RunInfo> {
    let expected: u64 = inputs.iter().map(|run| run.entries()).sum();
    // Size the filter by the distinct bloom keys of the inputs, not by their entries: an
    // aggregate or a term has many entries but one bloom key.
    let bloom_items: u64 = inputs.iter().map(|run| run.bloom_items()).sum();
    let expected_keys = usize::try_from(bloom_items.min(expected)).unwrap_or(usize::MAX);
    let mut writer = RunWriter::create(fs, path, expected_keys, bloom_key)?;
    let result = merge_into(&mut writer, inputs).and_then(|()| writer.finish(extra));
    match result {
        Ok(info) => {
            assert_eq!(
                info.entries, expected,
                "a merge of disjoint runs keeps every entry"
            );
            Ok(info)
        }
        Err(error) => {
            if let Err(remove_error) = fs.remove_file(path) {
                tracing::warn!(path = %path.display(), %remove_error, "could not remove a failed merge output");
            }
            Err(error)
        }
    }
}

/// The smallest pending entry of one merge input.
struct Head {
    key: Vec<u8>,
    value: Vec<u8>,
    input: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Head) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Head) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the smallest key first.
    fn cmp(&self, other: &Head) -> Ordering {
        other
            .key
            .cmp(&self.key)
            .then_with(|| other.input.cmp(&self.input))
    }
}

fn merge_into(writer: &mut RunWriter, inputs: &[&Run]) -> Result<()> {
    let mut ranges: Vec<RunRange<'_>> = inputs.iter().map(|run| run.iter()).collect();
    let mut heap = BinaryHeap::with_capacity(ranges.len());
    for (input, range) in ranges.iter_mut().enumerate() {
        if let Some(entry) = range.next() {
            let (key, value) = entry?;
            heap.push(Head { key, value, input });
        }
    }
    while let Some(head) = heap.pop() {
        // The heap holds at most one entry per input, so an equal key is from another input.
        if let Some(other) = heap.peek()
            && other.key == head.key
        {
            let (first, second) = (head.input.min(other.input), head.input.max(other.input));
            let first_run = inputs.get(first).expect("heads come from the inputs");
            let second_run = inputs.get(second).expect("heads come from the inputs");
            let offset = ranges.get(first).map_or(0, RunRange::block_offset);
            return Err(EngineError::corruption(
                first_run.path(),
                offset,
                format!(
                    "key {} is also in {}; merged runs must hold disjoint keys",
                    show_key(&head.key),
                    second_run.path().display()
                ),
            ));
        }
        writer.add(&head.key, &head.value)?;
        let range = ranges.get_mut(head.input).expect("heads come from the inputs");
        if let Some(entry) = range.next() {
            let (key, value) = entry?;
            heap.push(Head {
                key,
                value,
                input: head.input,
            });
        }
    }
    Ok(())
}

/// The footer's fields (layout in `Footer::encode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footer {
    entries: u64,
    block_count: u64,
    index_offset: u64,
    index_len: u64,
    bloom_offset: u64,
    bloom_len: u64,
    extra_offset: u64,
    extra_len: u64,
    index_crc: u32,
    bloom_crc: u32,
    extra_crc: u32,
}

impl Footer {
    /// ```text
    /// 0  entries u64      8  block_count u64   16 index_offset u64  24 index_len u64
    /// 32 bloom_offset u64 40 bloom_len u64     48 extra_offset u64  56 extra_len u64
    /// 64 index_crc u32    68 bloom_crc u32     72 extra_crc u32     76 reserved u32 (0)
    /// 80 version u32      84 crc32c of bytes 0..84                  88 magic [8]
    /// ```
    fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut out = [0; FOOTER_LEN];
        let fields = [
            self.entries,
            self.block_count,
            self.index_offset,
            self.index_len,
            self.bloom_offset,
            self.bloom_len,
            self.extra_offset,
            self.extra_len,
        ];
        let mut bytes = Vec::with_capacity(FOOTER_LEN);
        for field in fields {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        for field in [self.index_crc, self.bloom_crc, self.extra_crc, 0, FORMAT_VERSION] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(&MAGIC);
        out.copy_from_slice(&bytes);
        out
    }

    /// Parses and checks the footer at `offset` (its magic, version, reserved field and CRC).
    fn decode(bytes: &[u8; FOOTER_LEN], path: &Path, offset: u64) -> Result<Footer> {
        let corrupt = |reason: String| EngineError::corruption(path, offset, reason);
        let mut fields = Fields::new(bytes);
        let mut u64_field = || fields.u64().expect("the footer has a fixed size");
        let (entries, block_count, index_offset, index_len) =
            (u64_field(), u64_field(), u64_field(), u64_field());
        let (bloom_offset, bloom_len, extra_offset, extra_len) =
            (u64_field(), u64_field(), u64_field(), u64_field());
        let mut u32_field = || fields.u32().expect("the footer has a fixed size");
        let (index_crc, bloom_crc, extra_crc) = (u32_field(), u32_field(), u32_field());
        let (reserved, version, stored_crc) = (u32_field(), u32_field(), u32_field());
        let magic = fields.take(8).expect("the footer has a fixed size");
        if magic != MAGIC {
            return Err(corrupt(
                "not a run file: bad magic at the end (truncated or overwritten?)".into(),
            ));
        }
        let covered = bytes.get(..84).expect("the footer has a fixed size");
        if crc32c::crc32c(covered) != stored_crc {
            return Err(corrupt("footer checksum mismatch".into()));
        }
        if version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "unsupported run format version {version} (expected {FORMAT_VERSION})"
            )));
        }
        if reserved != 0 {
            return Err(corrupt(format!(
                "reserved footer field is {reserved}, expected 0"
            )));
        }
        Ok(Footer {
            entries,
            block_count,
            index_offset,
            index_len,
            bloom_offset,
            bloom_len,
            extra_offset,
            extra_len,
            index_crc,
            bloom_crc,
            extra_crc,
        })
    }

    /// Checks that the sections are contiguous, in order, within bounds, and end where the
    /// footer starts in a file of `file_bytes`.
    fn validate_layout(&self, file_bytes: u64, path: &Path) -> Result<()> {
        let footer_offset = file_bytes - FOOTER_LEN as u64;
        let corrupt = |reason: &str| EngineError::corruption(path, footer_offset, reason);
        let index_end = self.index_offset.checked_add(self.index_len);
        let bloom_end = self.bloom_offset.checked_add(self.bloom_len);
        let extra_end = self.extra_offset.checked_add(self.extra_len);
        if self.index_offset < HEADER_LEN as u64
            || index_end != Some(self.bloom_offset)
            || bloom_end != Some(self.extra_offset)
            || extra_end != Some(footer_offset)
        {
            return Err(corrupt("the footer's section offsets do not tile the file"));
        }
        if self.bloom_len > MAX_BLOOM_LEN || self.extra_len > MAX_EXTRA_LEN as u64 {
            return Err(corrupt(
                "the footer's bloom or extra length exceeds the format's bounds",
            ));
        }
        // Every block needs an index entry, and every entry a block.
        if self.block_count > self.index_len / INDEX_ENTRY_FIXED_LEN as u64 || self.entries < self.block_count
        {
            return Err(corrupt("the footer's block or entry count is impossible"));
        }
        Ok(())
    }
}

impl Meta {
    /// Reads and checks everything but the blocks: header, footer, block index, bloom, extra.
    fn read(file: &dyn File, path: &Path, file_bytes: u64) -> Result<Meta> {
        if file_bytes < (HEADER_LEN + FOOTER_LEN) as u64 {
            return Err(EngineError::corruption(
                path,
                0,
                format!("{file_bytes} bytes is too short for a run file (truncated?)"),
            ));
        }
        let mut header = [0; HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(EngineError::io(path))?;
        check_header(&header, path)?;

        let footer_offset = file_bytes - FOOTER_LEN as u64;
        let mut footer = [0; FOOTER_LEN];
        file.read_exact_at(&mut footer, footer_offset)
            .map_err(EngineError::io(path))?;
        let footer = Footer::decode(&footer, path, footer_offset)?;
        footer.validate_layout(file_bytes, path)?;

        // The three sections are contiguous: one read. validate_layout bounded them by the
        // file's length.
        let meta_len = usize::try_from(footer_offset - footer.index_offset).map_err(|_| {
            EngineError::corruption(path, footer.index_offset, "metadata too large for this machine")
        })?;
        let mut meta = vec![0; meta_len];
        file.read_exact_at(&mut meta, footer.index_offset)
            .map_err(EngineError::io(path))?;
        let mut sections = Fields::new(&meta);
        let index = checked_section(
            &mut sections,
            footer.index_offset,
            footer.index_len,
            footer.index_crc,
            (path, "block index"),
        )?;
        let bloom = checked_section(
            &mut sections,
            footer.bloom_offset,
            footer.bloom_len,
            footer.bloom_crc,
            (path, "bloom filter"),
        )?;
        let extra = checked_section(
            &mut sections,
            footer.extra_offset,
            footer.extra_len,
            footer.extra_crc,
            (path, "extra bytes"),
        )?;

        let bloom = Bloom::from_bytes(bloom)
            .ok_or_else(|| EngineError::corruption(path, footer.bloom_offset, "malformed bloom filter"))?;
        let (blocks, first_keys) = decode_index(index, &footer, path)?;
        Ok(Meta {
            footer,
            blocks,
            first_keys,
            bloom,
            extra: extra.to_vec(),
        })
    }
}

/// The next `len` bytes of the metadata, which must match `crc`; `offset` is their file offset.
fn checked_section<'a>(
    sections: &mut Fields<'a>,
    offset: u64,
    len: u64,
    crc: u32,
    (path, name): (&Path, &str),
) -> Result<&'a [u8]> {
    let bytes = usize::try_from(len).ok().and_then(|len| sections.take(len));
    let bytes = bytes.expect("validate_layout made the sections tile the metadata");
    if crc32c::crc32c(bytes) != crc {
        return Err(EngineError::corruption(
            path,
            offset,
            format!("{name} checksum mismatch"),
        ));
    }
    Ok(bytes)
}

fn encode_header() -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    header.copy_from_slice(&bytes);
    header
}

fn check_header(header: &[u8; HEADER_LEN], path: &Path) -> Result<()> {
    let corrupt = |reason: String| EngineError::corruption(path, 0, reason);
    let mut fields = Fields::new(header);
    let magic = fields.take(8).expect("the header has a fixed size");
    let version = fields.u32().expect("the header has a fixed size");
    let stored_crc = fields.u32().expect("the header has a fixed size");
    if magic != MAGIC {
        return Err(corrupt("not a run file: bad magic at the start".into()));
    }
    if crc32c::crc32c(header.get(..12).expect("the header has a fixed size")) != stored_crc {
        return Err(corrupt("header checksum mismatch".into()));
    }
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "unsupported run format version {version} (expected {FORMAT_VERSION})"
        )));
    }
    Ok(())
}

/// Decodes the block index and checks its invariants (see `Meta::blocks`).
fn decode_index(index: &[u8], footer: &Footer, path: &Path) -> Result<(Vec<BlockHandle>, Vec<u8>)> {
    let mut fields = Fields::new(index);
    let block_count = usize::try_from(footer.block_count).expect("bounded by the index length");
    let mut blocks = Vec::with_capacity(block_count);
    let mut first_keys = Vec::with_capacity(index.len().saturating_sub(block_count * INDEX_ENTRY_FIXED_LEN));
    let mut expected_offset = HEADER_LEN as u64;
    let mut entries: u64 = 0;
    for _ in 0..block_count {
        let at = footer.index_offset + fields.pos as u64;
        let corrupt = |reason: &str| EngineError::corruption(path, at, format!("block index: {reason}"));
        let truncated = || corrupt("entry runs past the end of the index");
        let offset = fields.u64().ok_or_else(truncated)?;
        let len = fields.u32().ok_or_else(truncated)?;
        let block_entries = fields.u32().ok_or_else(truncated)?;
        let key_len = fields.u32().ok_or_else(truncated)? as usize;
        if key_len > MAX_KEY_LEN {
            return Err(corrupt("first key longer than the format allows"));
        }
        let key = fields.take(key_len).ok_or_else(truncated)?;
        if offset != expected_offset {
            return Err(corrupt("blocks are not contiguous"));
        }
        let min_len = ENTRY_HEADER_LEN + key_len + BLOCK_TRAILER_LEN;
        if (len as usize) < min_len || len as usize > MAX_BLOCK_LEN || block_entries == 0 {
            return Err(corrupt("impossible block length or entry count"));
        }
        if let Some(previous) = blocks.last().map(|b: &BlockHandle| b.key.clone())
            && first_keys
                .get(previous)
                .is_none_or(|previous: &[u8]| previous >= key)
        {
            return Err(corrupt("first keys are not strictly increasing"));
        }
        let key_start = first_keys.len();
        first_keys.extend_from_slice(key);
        blocks.push(BlockHandle {
            offset,
            len,
            entries: block_entries,
            key: key_start..first_keys.len(),
        });
        expected_offset = offset + u64::from(len);
        entries += u64::from(block_entries);
    }
    let corrupt =
        |reason: &str| EngineError::corruption(path, footer.index_offset, format!("block index: {reason}"));
    if fields.pos != index.len() {
        return Err(corrupt("bytes after the last entry"));
    }
    if expected_offset != footer.index_offset {
        return Err(corrupt("the blocks do not end where the index starts"));
    }
    if entries != footer.entries {
        return Err(corrupt("the blocks' entry counts do not add up to the footer's"));
    }
    Ok((blocks, first_keys))
}

/// Reads fixed-width little-endian fields from a byte slice; `None` instead of reading past
/// its end.
struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Fields<'a> {
        Fields { bytes, pos: 0 }
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let bytes = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn len_u64(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

/// A key for an error message: escaped, and cut after `KEY_IN_MESSAGE_MAX` bytes.
fn show_key(key: &[u8]) -> String {
    let shown = key.get(..KEY_IN_MESSAGE_MAX).unwrap_or(key);
    let ellipsis = if shown.len() < key.len() { "…" } else { "" };
    format!("\"{}{ellipsis}\" ({} bytes)", shown.escape_ascii(), key.len())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::io::StdFileSystem;

    type Model = BTreeMap<Vec<u8>, Vec<u8>>;

    /// The bloom key of the tests: the key up to its first `/`, or the whole key.
    fn prefix_bloom_key(key: &[u8]) -> Option<&[u8]> {
        Some(key.split(|&b| b == b'/').next().unwrap_or(key))
    }

    fn write_run(path: &Path, entries: &Model, block_target: usize, extra: &[u8]) -> RunInfo {
        let mut writer = RunWriter::create(&StdFileSystem, path, entries.len(), prefix_bloom_key)
            .expect("create")
            .with_block_target(block_target);
        for (key, value) in entries {
            writer.add(key, value).expect("add");
        }
        writer.finish(extra).expect("finish")
    }

    fn numbered(range: std::ops::Range<u64>) -> Model {
        range
            .map(|i| {
                (
                    format!("term-{:03}/{i:010}", i % 7).into_bytes(),
                    i.to_le_bytes().to_vec(),
                )
            })
            .collect()
    }

    fn collect(iter: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>) -> Vec<(Vec<u8>, Vec<u8>)> {
        iter.collect::<Result<Vec<_>>>().expect("read")
    }

    fn expect_corruption(result: Result<impl fmt::Debug>, path: &Path) -> (u64, String) {
        match result {
            Err(EngineError::Corruption {
                path: named,
                offset,
                reason,
            }) => {
                assert_eq!(named, path, "the error names the file");
                (offset, reason)
            }
            other => panic!("expected a corruption error, got {other:?}"),
        }
    }

    fn flip_byte(path: &Path, offset: u64) {
        let file = StdFileSystem.open(path, OpenMode::ReadWrite).expect("open");
        let mut byte = [0];
        file.read_exact_at(&mut byte, offset).expect("read");
        byte[0] ^= 0x40;
        file.write_all_at(&byte, offset).expect("write");
    }

    #[test]
    fn round_trip_of_many_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.run");
        let model: Model = numbered(0..20_000)
            .into_iter()
            .filter(|(k, _)| k.last() != Some(&b'5'))
            .collect();
        let info = write_run(&path, &model, BLOCK_TARGET_BYTES, b"the extra");
        let run = Run::open(&StdFileSystem, &path).expect("open");
        assert_eq!(info.entries, model.len() as u64);
        assert_eq!(run.entries(), info.entries);
        assert_eq!(run.file_bytes(), info.file_bytes);
        assert_eq!(run.extra(), b"the extra");
        assert!(run.block_count() > 10);

        for (key, value) in model.iter().step_by(97) {
            assert_eq!(run.get(key).expect("get").as_ref(), Some(value));
        }
        for i in (5..20_000).step_by(10 * 31) {
            let absent = format!("term-{:03}/{i:010}", i % 7).into_bytes();
            assert_eq!(run.get(&absent).expect("get"), None);
        }
        assert_eq!(run.get(b"").expect("get"), None);
        assert_eq!(run.get(b"zzz").expect("get"), None);

        let all = collect(run.iter());
        assert_eq!(all, model.clone().into_iter().collect::<Vec<_>>());
        let mut reversed = collect(run.range_rev(b"", b"\xff"));
        reversed.reverse();
        assert_eq!(reversed, all);
        assert_eq!(run.verify().expect("verify"), model.len() as u64);

        for term in 0..7 {
            assert!(run.may_contain(format!("term-{term:03}").as_bytes()));
        }
        assert!(!run.may_contain(b"term-007"));
    }

    #[test]
    fn empty_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.run");
        let info = write_run(&path, &Model::new(), BLOCK_TARGET_BYTES, b"");
        assert_eq!(info.entries, 0);
        let run = Run::open(&StdFileSystem, &path).expect("open");
        assert_eq!(run.entries(), 0);
        assert_eq!(run.block_count(), 0);
        assert_eq!(run.file_bytes(), info.file_bytes);
        assert_eq!(run.extra(), b"");
        assert_eq!(run.get(b"").expect("get"), None);
        assert_eq!(run.get(b"x").expect("get"), None);
        assert!(collect(run.iter()).is_empty());
        assert!(collect(run.range(b"", b"\xff")).is_empty());
        assert!(collect(run.range_rev(b"", b"\xff")).is_empty());
        assert!(!run.may_contain(b"x"));
        assert_eq!(run.verify().expect("verify"), 0);
    }

    #[test]
    fn the_empty_key_and_large_entries_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.run");
        let mut model = Model::new();
        model.insert(Vec::new(), b"empty key".to_vec());
        model.insert(vec![b'a'; MAX_KEY_LEN], vec![1; MAX_VALUE_LEN]);
        // Keys sharing more than u16::MAX bytes: the stored shared length is capped.
        let long = |last: &[u8]| [&vec![b'a'; MAX_KEY_LEN - 1], last].concat();
        model.insert(long(b"b"), Vec::new());
        model.insert(long(b"c"), b"c".to_vec());
        model.insert(b"b".to_vec(), vec![2; 100]);
        write_run(&path, &model, BLOCK_TARGET_BYTES, b"");
        let run = Run::open(&StdFileSystem, &path).expect("open");
        for (key, value) in &model {
            assert_eq!(run.get(key).expect("get").as_ref(), Some(value));
        }
        for absent in [
            long(b"bb"),
            long(b"d"),
            long(b""),
            vec![b'a'; 65_535],
            vec![b'a'; 65_536],
            b"c".to_vec(),
        ] {
            assert_eq!(run.get(&absent).expect("get"), None);
        }
        assert_eq!(collect(run.iter()), model.clone().into_iter().collect::<Vec<_>>());
        assert_eq!(run.verify().expect("verify"), 5);
    }

    #[test]
    fn writer_refuses_bad_keys_and_stays_usable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.run");
        let mut writer = RunWriter::create(&StdFileSystem, &path, 10, prefix_bloom_key).expect("create");
        writer.add(b"b", b"1").expect("add");
        assert!(
            matches!(writer.add(b"b", b"2"), Err(EngineError::Options(_))),
            "equal key"
        );
        assert!(
            matches!(writer.add(b"a", b"2"), Err(EngineError::Options(_))),
            "smaller key"
        );
        let too_long = vec![b'c'; MAX_KEY_LEN + 1];
        assert!(matches!(writer.add(&too_long, b""), Err(EngineError::Options(_))));
        assert!(matches!(
            writer.add(b"c", &vec![0; MAX_VALUE_LEN + 1]),
            Err(EngineError::Options(_))
        ));
        writer.add(b"c", b"3").expect("add");
        assert_eq!(writer.entries(), 2);
        writer.finish(b"").expect("finish");
        let run = Run::open(&StdFileSystem, &path).expect("open");
        assert_eq!(
            collect(run.iter()),
            vec![(b"b".to_vec(), b"1".to_vec()), (b"c".to_vec(), b"3".to_vec())]
        );
        assert_eq!(run.verify().expect("verify"), 2);

        // The file exists now: creating it again is an I/O error, and it is left alone.
        let again = RunWriter::create(&StdFileSystem, &path, 10, prefix_bloom_key);
        assert!(matches!(again, Err(EngineError::Io { .. })));
        assert_eq!(Run::open(&StdFileSystem, &path).expect("open").entries(), 2);
    }

    #[test]
    fn merge_equals_the_union() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = StdFileSystem;
        let mut union = Model::new();
        let mut runs = Vec::new();
        for input in 0..4u64 {
            // Interleaved keys: input n holds the numbers congruent to n mod 4, plus a stretch
            // of its own, so the merge alternates between inputs and also runs long in one.
            let mut model: Model = numbered(0..3000)
                .into_iter()
                .skip(input as usize)
                .step_by(4)
                .collect();
            model.extend(numbered(10_000 * (input + 1)..10_000 * (input + 1) + 500));
            union.extend(model.clone());
            let path = dir.path().join(format!("in-{input}.run"));
            write_run(&path, &model, 256, b"");
            runs.push(Run::open(&fs, &path).expect("open"));
        }
        runs.push({
            let path = dir.path().join("in-empty.run");
            write_run(&path, &Model::new(), 256, b"");
            Run::open(&fs, &path).expect("open")
        });
        let inputs: Vec<&Run> = runs.iter().collect();
        let out = dir.path().join("merged.run");
        let info = merge_runs(&fs, &inputs, &out, prefix_bloom_key, b"merged extra").expect("merge");
        assert_eq!(info.entries, union.len() as u64);
        let merged = Run::open(&fs, &out).expect("open");
        assert_eq!(merged.extra(), b"merged extra");
        assert_eq!(merged.file_bytes(), info.file_bytes);
        assert_eq!(collect(merged.iter()), union.into_iter().collect::<Vec<_>>());
        assert_eq!(merged.verify().expect("verify"), info.entries);
        assert!(merged.may_contain(b"term-003"));

        let none =
            merge_runs(&fs, &[], &dir.path().join("nothing.run"), prefix_bloom_key, b"").expect("merge");
        assert_eq!(none.entries, 0);
    }

    #[test]
    fn merge_refuses_overlapping_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = StdFileSystem;
        let first_path = dir.path().join("first.run");
        let second_path = dir.path().join("second.run");
        write_run(&first_path, &numbered(0..1000), 256, b"");
        write_run(&second_path, &numbered(999..1500), 256, b"");
        let first = Run::open(&fs, &first_path).expect("open");
        let second = Run::open(&fs, &second_path).expect("open");
        let out = dir.path().join("merged.run");
        let result = merge_runs(&fs, &[&second, &first], &out, prefix_bloom_key, b"");
        // The error is about the first input holding the key, and names the other one.
        let (_, reason) = expect_corruption(result, &second_path);
        assert!(
            reason.contains(&first_path.display().to_string()),
            "names both files: {reason}"
        );
        assert!(reason.contains("0000000999"), "names the key: {reason}");
        assert!(!fs.exists(&out).expect("exists"), "the failed output is removed");
    }

    #[test]
    fn verify_detects_a_flipped_byte_in_a_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.run");
        let model = numbered(0..2000);
        write_run(&path, &model, BLOCK_TARGET_BYTES, b"");
        let run = Run::open(&StdFileSystem, &path).expect("open");
        let second_block = run.meta.blocks[1].clone();
        flip_byte(&path, second_block.offset + 30);

        let (offset, reason) = expect_corruption(run.verify(), &path);
        assert_eq!(offset, second_block.offset);
        assert!(reason.contains("checksum"), "{reason}");
        // Lookups and scans touching the block refuse it too; others still work.
        let key_in_block = run.first_key(&second_block).to_vec();
        expect_corruption(run.get(&key_in_block), &path);
        let scan: Vec<_> = run.iter().collect();
        assert!(matches!(scan.last(), Some(Err(EngineError::Corruption { .. }))));
        assert_eq!(
            run.get(model.keys().next().expect("a key"))
                .expect("get")
                .as_ref(),
            model.values().next()
        );
        let reopened = Run::open(&StdFileSystem, &path).expect("metadata is intact");
        expect_corruption(reopened.verify(), &path);
    }

    #[test]
    fn a_flipped_footer_byte_is_refused_at_open_and_by_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.run");
        let info = write_run(&path, &numbered(0..500), BLOCK_TARGET_BYTES, b"x");
        let run = Run::open(&StdFileSystem, &path).expect("open");
        let footer_offset = info.file_bytes - FOOTER_LEN as u64;
        flip_byte(&path, footer_offset + 3);
        let (offset, reason) = expect_corruption(Run::open(&StdFileSystem, &path), &path);
        assert_eq!(offset, footer_offset);
        assert!(reason.contains("footer checksum"), "{reason}");
        expect_corruption(run.verify(), &path);
    }

    /// Every byte of a run is covered by a checksum or compared with a constant, so flipping
    /// any one of them is caught by `open` or `verify`.
    #[test]
    fn every_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.run");
        let info = write_run(&path, &numbered(0..60), 200, b"extra bytes");
        let pristine = std::fs::read(&path).expect("read");
        assert_eq!(pristine.len() as u64, info.file_bytes);
        for offset in 0..info.file_bytes {
            flip_byte(&path, offset);
            let detected = match Run::open(&StdFileSystem, &path) {
                Err(EngineError::Corruption { .. }) => true,
                Err(other) => panic!("flip at {offset}: unexpected error {other}"),
                Ok(run) => matches!(run.verify(), Err(EngineError::Corruption { .. })),
            };
            assert!(detected, "a flipped byte at offset {offset} went unnoticed");
            flip_byte(&path, offset);
        }
        assert_eq!(std::fs::read(&path).expect("read"), pristine);
    }

    #[test]
    fn truncated_and_garbage_files_are_refused_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.run");
        let info = write_run(&path, &numbered(0..100), 300, b"extra");
        let bytes = std::fs::read(&path).expect("read");
        for len in 0..info.file_bytes {
            let cut = dir.path().join(format!("cut-{len}.run"));
            std::fs::write(&cut, &bytes[..len as usize]).expect("write");
            expect_corruption(Run::open(&StdFileSystem, &cut), &cut);
            std::fs::remove_file(&cut).expect("remove");
        }
        // Garbage of various lengths, including one with valid magics at both ends.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in [0usize, 1, 16, 111, 112, 113, 4096, 100_000] {
            let mut garbage: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            if len >= HEADER_LEN + FOOTER_LEN {
                garbage[..8].copy_from_slice(&MAGIC);
                garbage[len - 8..].copy_from_slice(&MAGIC);
            }
            let path = dir.path().join(format!("garbage-{len}.run"));
            std::fs::write(&path, &garbage).expect("write");
            expect_corruption(Run::open(&StdFileSystem, &path), &path);
        }
    }

    #[test]
    fn run_is_send_and_sync_and_reads_concurrently() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Run>();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.run");
        let model = numbered(0..3000);
        write_run(&path, &model, 512, b"");
        let run = Run::open(&StdFileSystem, &path).expect("open");
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let (run, model) = (&run, &model);
                scope.spawn(move || {
                    for (key, value) in model.iter().skip(thread).step_by(7) {
                        assert_eq!(run.get(key).expect("get").as_ref(), Some(value));
                    }
                });
            }
        });
    }

    fn arb_key() -> impl Strategy<Value = Vec<u8>> {
        // A tiny alphabet, so keys share long prefixes and collide with the bounds.
        prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', b'b', 0xff]), 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn reads_match_a_btreemap(
            model in prop::collection::btree_map(arb_key(), prop::collection::vec(any::<u8>(), 0..24), 0..300),
            block_target in prop::sample::select(vec![1usize, 16, 64, 300, BLOCK_TARGET_BYTES]),
            bounds in prop::collection::vec((arb_key(), arb_key()), 1..8),
            probes in prop::collection::vec(arb_key(), 1..64),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("p.run");
            write_run(&path, &model, block_target, b"");
            let run = Run::open(&StdFileSystem, &path).expect("open");
            prop_assert_eq!(run.verify().expect("verify"), model.len() as u64);
            for key in model.keys().chain(&probes) {
                prop_assert_eq!(run.get(key).expect("get"), model.get(key).cloned());
            }
            for (from, to) in bounds {
                let expected: Vec<_> = if from < to {
                    model.range(from.clone()..to.clone()).map(|(k, v)| (k.clone(), v.clone())).collect()
                } else {
                    Vec::new()
                };
                prop_assert_eq!(&collect(run.range(&from, &to)), &expected);
                let mut backwards = collect(run.range_rev(&from, &to));
                backwards.reverse();
                prop_assert_eq!(&backwards, &expected);
            }
        }
    }

    /// Timings on a realistic run; `cargo test --release -- --ignored --nocapture speed`.
    /// Prints wall time and this thread's CPU time (they differ on a busy machine).
    #[test]
    #[ignore = "a measurement, not a check; run in release mode"]
    fn speed() {
        use std::time::{Duration, Instant};

        /// This thread's time on a CPU so far, from Linux's schedstat (zero elsewhere).
        fn cpu_time() -> Duration {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
            Duration::from_nanos(stat.split(' ').next().and_then(|ns| ns.parse().ok()).unwrap_or(0))
        }
        fn timed<T>(what: &str, per: u64, f: impl FnOnce() -> T) -> T {
            let (wall, cpu) = (Instant::now(), cpu_time());
            let result = f();
            let (wall, cpu) = (wall.elapsed(), cpu_time() - cpu);
            let rate = per as f64 / cpu.as_secs_f64() / 1e6;
            println!("{what:<16} wall {wall:>12.3?}  cpu {cpu:>12.3?}  ({rate:.2} M/s cpu)");
            result
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("speed.run");
        let count: u64 = 1_000_000;
        // ~40-byte keys: kind, a 2-byte length, a 25-byte term (10 positions per term), an
        // 8-byte position; 12-byte values.
        let keys: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let mut key = vec![1, 0, 25];
                key.extend_from_slice(format!("stream-{:018}", i / 10).as_bytes());
                key.extend_from_slice(&i.to_be_bytes());
                key
            })
            .collect();
        let bloom_key: BloomKeyFn = |key| key.get(..28);
        let info = timed("write+sync", count, || {
            let mut writer = RunWriter::create(&StdFileSystem, &path, keys.len(), bloom_key).expect("create");
            for key in &keys {
                writer.add(key, &[7; 12]).expect("add");
            }
            writer.finish(b"").expect("finish")
        });
        let run = timed("open", 1, || Run::open(&StdFileSystem, &path).expect("open"));
        fn read_all(entries: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>) -> u64 {
            entries.fold(0, |read, entry| {
                entry.expect("read");
                read + 1
            })
        }
        assert_eq!(timed("scan", count, || read_all(run.iter())), count);
        assert_eq!(
            timed("scan backwards", count, || read_all(run.range_rev(b"", b"\xff"))),
            count
        );
        let lookups = 200_000u64;
        timed("get", lookups, || {
            for i in 0..lookups {
                let key = &keys[(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % count) as usize];
                assert!(run.get(key).expect("get").is_some());
            }
        });
        timed("may_contain", lookups, || {
            for key in keys.iter().take(lookups as usize) {
                assert!(run.may_contain(&key[..28]));
            }
        });
        timed("verify", count, || run.verify().expect("verify"));
        println!(
            "{count} entries, {} bytes ({:.1} bytes/entry), {} blocks",
            info.file_bytes,
            info.file_bytes as f64 / count as f64,
            run.block_count()
        );
    }
}
