//! A journal: one append-only file of checksummed records, for state kept beside the event log
//! (projection checkpoints, persistent-subscription acks).
//!
//! Records are opaque byte bodies; their meaning belongs to the caller. What the journal
//! promises is what such state needs and no more:
//! - [`Journal::append`] returns only after its records are synced, and is atomic: after a
//!   crash all of its records are there or none (they go to disk as one checksummed frame).
//! - [`Journal::rewrite`] replaces the whole content atomically (compaction): a crash leaves
//!   either the old file or the new one.
//! - A failed write or sync poisons the journal. After a failed fsync Linux may forget the dirty
//!   pages, so nothing written since can be trusted; the owner must reopen it.
//!
//! The byte layout is in `docs/format.md` ("Journals"), the syncs in `docs/durability.md`.
//!
//! # What opening decides
//! Appends are serialized and each one is synced before the next starts, so at most the last
//! append can be partly on disk after a crash. Hence:
//! - a record that fails its checks with no valid record after it is a torn tail: it was never
//!   acknowledged, so the file is cut before it and the cut synced;
//! - a bad record followed by a valid one is corruption: the open fails naming the file and the
//!   offset, and never drops a record that may have been acknowledged;
//! - a file holding no more than a torn header was being created: it is written afresh.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backup::DurableFile;
use crate::error::{EngineError, Result};
use crate::io::{File, FileSystem, OpenMode};

/// The format of the file, in its header.
pub const JOURNAL_FORMAT: u32 = 1;
/// magic (8, the caller's) | format u32 | crc32c of the 12 bytes before u32.
pub const HEADER_LEN: u64 = 16;
/// `JREC`, little-endian: the first bytes of every frame (one append), so that a scan past a bad
/// frame can tell whether a valid one follows.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"JREC");
/// magic u32 | body length u32 | crc32c of the length and the body u32. The body is the
/// append's records, each as length u32 | bytes.
pub const RECORD_HEADER_LEN: usize = 12;
/// No frame body (the records of one append, with their lengths) is longer.
pub const BODY_LEN_MAX: usize = 256 << 20;

fn header_bytes(magic: [u8; 8]) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    out[0..8].copy_from_slice(&magic);
    out[8..12].copy_from_slice(&JOURNAL_FORMAT.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..12]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

fn record_crc(len: [u8; 4], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), body)
}

/// Appends one frame holding `records` to `out`.
fn encode_frame(out: &mut Vec<u8>, records: &[&[u8]]) -> Result<()> {
    let body_len: usize = records.iter().map(|r| 4 + r.len()).sum();
    if body_len > BODY_LEN_MAX {
        return Err(EngineError::Options(format!(
            "a journal append of {body_len} bytes is over the limit of {BODY_LEN_MAX}"
        )));
    }
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for record in records {
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(record);
    }
    let len = (body_len as u32).to_le_bytes();
    let crc = record_crc(len, &out[start + RECORD_HEADER_LEN..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The records of a valid frame body; `None` when their lengths do not add up.
fn split_frame(mut body: &[u8], records: &mut Vec<Vec<u8>>) -> Option<()> {
    while !body.is_empty() {
        let len = u32_at(body.get(..4)?, 0) as usize;
        records.push(body.get(4..4 + len)?.to_vec());
        body = &body[4 + len..];
    }
    Some(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The body length a record header declares, if the header is whole and plausible.
fn body_len_of(header: &[u8]) -> Option<usize> {
    if header.len() < RECORD_HEADER_LEN || u32_at(header, 0) != RECORD_MAGIC {
        return None;
    }
    let len = u32_at(header, 4) as usize;
    (len <= BODY_LEN_MAX).then_some(len)
}

/// Whether `record` (header and body, exactly) passes its checks.
fn record_is_valid(record: &[u8]) -> bool {
    body_len_of(record).is_some_and(|len| {
        record.len() == RECORD_HEADER_LEN + len
            && record_crc(
                [record[4], record[5], record[6], record[7]],
                &record[RECORD_HEADER_LEN..],
            ) == u32_at(record, 8)
    })
}

/// What appends change, under one mutex: appends are serialized, which is what makes a torn
/// record always the last one.
#[derive(Debug)]
struct Tail {
    file: Arc<dyn File>,
    /// Where the next record goes.
    end: u64,
    /// Why writes are refused, after a failed write or sync.
    poison: Option<String>,
}

/// The valid records of a journal file's bytes, repairing nothing (for offline checks): a torn
/// tail is left out; a bad header, or a bad record followed by a valid one, is an error.
pub fn decode_all(data: &[u8], magic: [u8; 8], path: &Path) -> Result<Vec<Vec<u8>>> {
    let Some(header) = data.get(..HEADER_LEN as usize) else {
        return Ok(Vec::new());
    };
    if header != header_bytes(magic) {
        return Err(EngineError::corruption(
            path,
            0,
            "bad journal header (another kind of file, or damaged)",
        ));
    }
    Ok(replay(&data[HEADER_LEN as usize..], path)?.0)
}

/// One journal file. See the module documentation.
#[derive(Debug)]
pub struct Journal {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    magic: [u8; 8],
    tail: Mutex<Tail>,
}

impl Journal {
    /// Opens `path` (creating it, and its folder, when missing) and returns every valid record
    /// body in order. `magic` names the kind of file; a file with another magic is refused.
    pub fn open(fs: Arc<dyn FileSystem>, path: &Path, magic: [u8; 8]) -> Result<(Journal, Vec<Vec<u8>>)> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        create_dir_durably(&*fs, dir)?;
        // A compaction that did not reach its rename: the old file is still the journal.
        let tmp = tmp_path(path);
        if fs.exists(&tmp).map_err(EngineError::io(&tmp))? {
            fs.remove_file(&tmp).map_err(EngineError::io(&tmp))?;
            fs.sync_dir(dir).map_err(EngineError::io(dir))?;
        }
        let file = if fs.exists(path).map_err(EngineError::io(path))? {
            fs.open(path, OpenMode::ReadWrite)
                .map_err(EngineError::io(path))?
        } else {
            let file = fs
                .open(path, OpenMode::CreateNew)
                .map_err(EngineError::io(path))?;
            write_header(&*file, path, magic)?;
            fs.sync_dir(dir).map_err(EngineError::io(dir))?;
            file
        };
        let mut len = file.len().map_err(EngineError::io(path))?;
        let mut header = [0u8; HEADER_LEN as usize];
        let whole_header = len >= HEADER_LEN && file.read_exact_at(&mut header, 0).is_ok();
        if whole_header && header != header_bytes(magic) {
            return Err(EngineError::corruption(
                path,
                0,
                "bad journal header (another kind of file, or damaged)",
            ));
        }
        if !whole_header {
            if len > HEADER_LEN {
                return Err(EngineError::corruption(path, 0, "unreadable journal header"));
            }
            // Created, then a crash before its header was synced: nothing was ever in it.
            file.set_len(0).map_err(EngineError::io(path))?;
            write_header(&*file, path, magic)?;
            len = HEADER_LEN;
        }
        let mut content = vec![0u8; (len - HEADER_LEN) as usize];
        file.read_exact_at(&mut content, HEADER_LEN)
            .map_err(EngineError::io(path))?;
        let (records, valid) = replay(&content, path)?;
        let end = HEADER_LEN + valid as u64;
        if end < len {
            tracing::warn!(path = %path.display(), offset = end, cut = len - end, "cutting a torn journal record");
            file.set_len(end).map_err(EngineError::io(path))?;
            file.sync_data().map_err(EngineError::io(path))?;
        }
        let journal = Journal {
            fs,
            path: path.to_owned(),
            magic,
            tail: Mutex::new(Tail {
                file,
                end,
                poison: None,
            }),
        };
        Ok((journal, records))
    }

    /// Appends the records in order, as one frame, and syncs once; `Ok` means every one is
    /// durable. After a crash all of them are there, or (if it was not acknowledged) none.
    pub fn append(&self, records: &[&[u8]]) -> Result<()> {
        let mut tail = self.tail.lock();
        if let Some(reason) = &tail.poison {
            return Err(EngineError::Poisoned(reason.clone()));
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut buf =
            Vec::with_capacity(RECORD_HEADER_LEN + records.iter().map(|r| r.len() + 4).sum::<usize>());
        encode_frame(&mut buf, records)?;
        let written = tail
            .file
            .write_all_at(&buf, tail.end)
            .and_then(|()| tail.file.sync_data());
        match written {
            Ok(()) => {
                tail.end += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let error = EngineError::io(&self.path)(e);
                tail.poison = Some(poison_reason(&error));
                // Best effort: a restart without a reboot would otherwise read the failed
                // frame back from the page cache as if it had been acknowledged.
                let _ = tail.file.set_len(tail.end);
                Err(error)
            }
        }
    }

    /// Replaces the whole content with `records`: writes `<path>.tmp`, syncs it, renames it over
    /// the journal and syncs the folder. A failure poisons the journal (the old file may or may
    /// not have been replaced once the rename was attempted).
    pub fn rewrite(&self, records: &[&[u8]]) -> Result<()> {
        let mut buf = Vec::with_capacity(
            HEADER_LEN as usize + RECORD_HEADER_LEN + records.iter().map(|r| r.len() + 4).sum::<usize>(),
        );
        buf.extend_from_slice(&header_bytes(self.magic));
        if !records.is_empty() {
            encode_frame(&mut buf, records)?;
        }
        let mut tail = self.tail.lock();
        if let Some(reason) = &tail.poison {
            return Err(EngineError::Poisoned(reason.clone()));
        }
        match self.replace_with(&buf) {
            Ok(file) => {
                tail.file = file;
                tail.end = buf.len() as u64;
                Ok(())
            }
            Err(error) => {
                tail.poison = Some(poison_reason(&error));
                Err(error)
            }
        }
    }

    fn replace_with(&self, content: &[u8]) -> Result<Arc<dyn File>> {
        let tmp = tmp_path(&self.path);
        if self.fs.exists(&tmp).map_err(EngineError::io(&tmp))? {
            self.fs.remove_file(&tmp).map_err(EngineError::io(&tmp))?;
        }
        let file = self
            .fs
            .open(&tmp, OpenMode::CreateNew)
            .map_err(EngineError::io(&tmp))?;
        file.write_all_at(content, 0).map_err(EngineError::io(&tmp))?;
        file.sync_data().map_err(EngineError::io(&tmp))?;
        self.fs
            .rename(&tmp, &self.path)
            .map_err(EngineError::io(&self.path))?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        self.fs.sync_dir(dir).map_err(EngineError::io(dir))?;
        Ok(file)
    }

    /// Bytes in the file now, header included (to decide when to compact).
    pub fn len(&self) -> u64 {
        self.tail.lock().end
    }

    /// Whether the journal holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == HEADER_LEN
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why writes are refused, if an earlier write or sync failed.
    pub fn poisoned(&self) -> Option<String> {
        self.tail.lock().poison.clone()
    }

    /// The open file and the length of its synced content, for a backup. The bytes below that
    /// length never change in this file: appends go past it, a failed append is cut back to
    /// it, and a compaction writes another file and renames it over this one (the handle keeps
    /// the old one readable).
    pub fn durable(&self) -> DurableFile {
        let tail = self.tail.lock();
        DurableFile {
            path: self.path.clone(),
            file: tail.file.clone(),
            len: tail.end,
        }
    }
}

/// Logs the failure that poisons a journal, and returns the public reason kept for the writes
/// refused from then on (no path: it may reach a client).
fn poison_reason(error: &EngineError) -> String {
    tracing::error!(%error, "a journal write failed; the journal refuses writes until it is reopened");
    format!("writing a journal failed: {}", error.public_reason())
}

/// Creates `dir` and its missing parents, syncing the parent of each one created so that the
/// folders outlive a crash (a synced file in a forgotten folder is lost with it).
fn create_dir_durably(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
        if fs.exists(d).map_err(EngineError::io(d))? {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(dir).map_err(EngineError::io(dir))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent).map_err(EngineError::io(parent))?;
        }
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn write_header(file: &dyn File, path: &Path, magic: [u8; 8]) -> Result<()> {
    file.write_all_at(&header_bytes(magic), 0)
        .map_err(EngineError::io(path))?;
    file.sync_data().map_err(EngineError::io(path))
}

/// The records of `content` (the file after its header) and the length of its valid prefix;
/// a bad frame that a valid one follows is corruption.
fn replay(content: &[u8], path: &Path) -> Result<(Vec<Vec<u8>>, usize)> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < content.len() {
        let whole = body_len_of(&content[at..])
            .and_then(|len| content.get(at..at + RECORD_HEADER_LEN + len))
            .filter(|record| record_is_valid(record));
        match whole {
            Some(frame) => {
                if split_frame(&frame[RECORD_HEADER_LEN..], &mut records).is_none() {
                    return Err(EngineError::corruption(
                        path,
                        HEADER_LEN + at as u64,
                        "journal frame whose record lengths do not add up",
                    ));
                }
                at += frame.len();
            }
            None => {
                if let Some(later) = valid_record_after(content, at) {
                    return Err(EngineError::corruption(
                        path,
                        HEADER_LEN + at as u64,
                        format!(
                            "bad journal record, and a valid record follows at offset {}",
                            HEADER_LEN + later as u64
                        ),
                    ));
                }
                return Ok((records, at));
            }
        }
    }
    Ok((records, at))
}

/// Where the first valid record that starts after `bad` is, if any.
fn valid_record_after(content: &[u8], bad: usize) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut at = bad + 1;
    while let Some(found) = memchr::memmem::find(&content[at.min(content.len())..], &magic) {
        let start = at + found;
        if let Some(len) = body_len_of(&content[start..])
            && let Some(record) = content.get(start..start + RECORD_HEADER_LEN + len)
            && record_is_valid(record)
        {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdFileSystem;

    const MAGIC: [u8; 8] = *b"FSTESTJR";

    fn open(path: &Path) -> (Journal, Vec<Vec<u8>>) {
        Journal::open(Arc::new(StdFileSystem), path, MAGIC).expect("open")
    }

    #[test]
    fn appended_records_come_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("state.journal");
        let (journal, records) = open(&path);
        assert!(records.is_empty());
        assert!(journal.is_empty());
        journal.append(&[b"one", b"", b"three"]).expect("append");
        journal.append(&[b"four"]).expect("append");
        drop(journal);
        let (_, records) = open(&path);
        assert_eq!(
            records,
            vec![b"one".to_vec(), vec![], b"three".to_vec(), b"four".to_vec()]
        );
    }

    #[test]
    fn a_torn_last_record_is_cut_and_appends_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let (journal, _) = open(&path);
        journal.append(&[b"kept"]).expect("append");
        journal.append(&[b"torn record body"]).expect("append");
        let full = journal.len();
        drop(journal);
        // Cut in the middle of the last record, as a crash during its write leaves it.
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..full as usize - 5]).expect("write");
        let (journal, records) = open(&path);
        assert_eq!(records, vec![b"kept".to_vec()]);
        journal.append(&[b"after"]).expect("append");
        drop(journal);
        assert_eq!(open(&path).1, vec![b"kept".to_vec(), b"after".to_vec()]);
    }

    #[test]
    fn a_bad_record_before_a_valid_one_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let (journal, _) = open(&path);
        journal.append(&[b"first record"]).expect("append");
        journal.append(&[b"second record"]).expect("append");
        drop(journal);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[HEADER_LEN as usize + RECORD_HEADER_LEN + 2] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        let error = Journal::open(Arc::new(StdFileSystem), &path, MAGIC).expect_err("corrupt");
        assert!(
            matches!(error, EngineError::Corruption { offset, .. } if offset == HEADER_LEN),
            "{error}"
        );
    }

    #[test]
    fn another_kind_of_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        drop(open(&path));
        let error = Journal::open(Arc::new(StdFileSystem), &path, *b"FSOTHER!").expect_err("magic");
        assert!(error.to_string().contains("bad journal header"), "{error}");
    }

    #[test]
    fn rewrite_replaces_the_content_and_appends_follow_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let (journal, _) = open(&path);
        journal.append(&[b"a", b"b", b"c"]).expect("append");
        journal.rewrite(&[b"image"]).expect("rewrite");
        journal.append(&[b"d"]).expect("append");
        drop(journal);
        assert_eq!(open(&path).1, vec![b"image".to_vec(), b"d".to_vec()]);
        assert!(!tmp_path(&path).exists());
    }

    #[test]
    fn a_leftover_compaction_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let (journal, _) = open(&path);
        journal.append(&[b"real"]).expect("append");
        drop(journal);
        std::fs::write(tmp_path(&path), b"half a compaction").expect("write");
        assert_eq!(open(&path).1, vec![b"real".to_vec()]);
        assert!(!tmp_path(&path).exists());
    }

    #[test]
    fn a_file_with_a_torn_header_starts_afresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        std::fs::write(&path, &header_bytes(MAGIC)[..7]).expect("write");
        let (journal, records) = open(&path);
        assert!(records.is_empty());
        journal.append(&[b"x"]).expect("append");
        drop(journal);
        assert_eq!(open(&path).1, vec![b"x".to_vec()]);
    }
}
