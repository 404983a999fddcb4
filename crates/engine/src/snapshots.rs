//! Snapshot storage: an append-only, checksummed log of snapshot records in `snapshots/`, and
//! an in-memory map (aggregate → version → record offset) rebuilt from it at open.
//!
//! Snapshots are a cache beside the event log, not part of it: they take no position and are
//! written by the caller's thread (the blocking pool), never by the event writer thread. One
//! mutex orders the appends; each is synced before it is acknowledged and before it enters the
//! map, so a reader only ever finds durable records. A put at a version that has a snapshot
//! appends a new record, and the map points at the newer one (replay at open keeps the last
//! record of each version, which is the same one).
//!
//! The byte layout is in `docs/format.md` ("Snapshot log"), the syncs and what a crash leaves
//! in `docs/durability.md` ("Snapshots").
//!
//! # What opening decides
//! - A record that fails its checks with no valid record after it is a torn tail: it was never
//!   acknowledged, so the file is truncated before it and the truncation synced.
//! - A bad record followed by a valid one is corruption: the open fails naming the file and the
//!   offset, and never drops a snapshot that may have been acknowledged.
//! - A file holding no more than a torn header was being created: it is written afresh.
//!
//! # Failures
//! A failed write or sync poisons snapshot writes until the engine is reopened (after a failed
//! fsync Linux forgets the dirty pages, so nothing written since can be trusted). Reads go on
//! from the records already synced.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use factstore_core::{Limits, Snapshot, SnapshotInfo, Timestamp};
use parking_lot::{Mutex, RwLock};

use crate::backup::DurableFile;
use crate::error::{EngineError, Result};
use crate::io::{File, FileSystem, OpenMode};

/// The one file of the snapshot folder.
pub const SNAPSHOT_LOG: &str = "snapshots.log";
/// `FSSNAPLG`: the first bytes of the file.
pub const LOG_MAGIC: [u8; 8] = *b"FSSNAPLG";
/// The format of the file, in its header.
pub const LOG_FORMAT: u32 = 1;
/// magic (8) | format u32 | crc32c of the 12 bytes before u32.
pub const LOG_HEADER_LEN: u64 = 16;
/// `SNAP`, little-endian: the first bytes of every record, so that a scan past a bad record
/// can tell whether a valid one follows.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SNAP");
/// magic u32 | body length u32 | crc32c of the body u32.
pub const RECORD_HEADER_LEN: usize = 12;
/// version u64 | snapshot_version u32 | created_at i64 | aggregate_id length u16 |
/// snapshot_type length u8 | reserved u8 (0) | state length u32.
pub const BODY_FIXED_LEN: usize = 28;
/// No body is longer: the ceilings of the identifiers and of the state.
pub const BODY_LEN_MAX: usize =
    BODY_FIXED_LEN + u16::MAX as usize + u8::MAX as usize + Limits::CEILING.event_payload_bytes_max;

fn header_bytes() -> [u8; LOG_HEADER_LEN as usize] {
    let mut out = [0u8; LOG_HEADER_LEN as usize];
    out[0..8].copy_from_slice(&LOG_MAGIC);
    out[8..12].copy_from_slice(&LOG_FORMAT.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..12]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// One snapshot as a record: header and body.
pub fn encode_record(snapshot: &Snapshot) -> Vec<u8> {
    let id = snapshot.aggregate_id.as_bytes();
    let kind = snapshot.snapshot_type.as_bytes();
    let state = snapshot.state.as_bytes();
    let body_len = BODY_FIXED_LEN + id.len() + kind.len() + state.len();
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + body_len);
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&snapshot.version.to_le_bytes());
    out.extend_from_slice(&snapshot.snapshot_version.to_le_bytes());
    out.extend_from_slice(&snapshot.created_at.as_micros().to_le_bytes());
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.push(kind.len() as u8);
    out.push(0);
    out.extend_from_slice(&(state.len() as u32).to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(kind);
    out.extend_from_slice(state);
    let crc = crc32c::crc32c(&out[RECORD_HEADER_LEN..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// The body length a record header declares, if the header is whole and plausible.
fn body_len_of(header: &[u8]) -> Option<usize> {
    if header.len() < RECORD_HEADER_LEN || u32_at(header, 0) != RECORD_MAGIC {
        return None;
    }
    let len = u32_at(header, 4) as usize;
    (BODY_FIXED_LEN..=BODY_LEN_MAX).contains(&len).then_some(len)
}

/// Decodes and checks a record (header and body, exactly); `Err` says what is wrong.
pub fn decode_record(record: &[u8]) -> std::result::Result<Snapshot, String> {
    let body_len = body_len_of(record).ok_or("bad record header")?;
    if record.len() != RECORD_HEADER_LEN + body_len {
        return Err("record length differs from its header".into());
    }
    let body = &record[RECORD_HEADER_LEN..];
    if crc32c::crc32c(body) != u32_at(record, 8) {
        return Err("record checksum mismatch".into());
    }
    let id_len = usize::from(u16_at(body, 20));
    let kind_len = usize::from(body[22]);
    let state_len = u32_at(body, 24) as usize;
    if body[23] != 0 || BODY_FIXED_LEN + id_len + kind_len + state_len != body_len {
        return Err("record field lengths do not add up".into());
    }
    let text = |from: usize, len: usize, what: &str| {
        std::str::from_utf8(&body[from..from + len])
            .map(str::to_owned)
            .map_err(|_| format!("{what} is not UTF-8"))
    };
    let aggregate_id = text(BODY_FIXED_LEN, id_len, "aggregate_id")?;
    let snapshot_type = text(BODY_FIXED_LEN + id_len, kind_len, "snapshot_type")?;
    let state = text(BODY_FIXED_LEN + id_len + kind_len, state_len, "state")?;
    Ok(Snapshot {
        aggregate_id,
        version: u64_at(body, 0),
        snapshot_type,
        snapshot_version: u32_at(body, 8),
        state,
        created_at: Timestamp::from_micros(u64_at(body, 12) as i64),
    })
}

/// Where a snapshot's record is, and what a listing shows of it.
#[derive(Debug, Clone)]
struct Entry {
    offset: u64,
    len: usize,
    info: SnapshotInfo,
}

/// The snapshot log of one engine.
#[derive(Debug)]
pub struct Snapshots {
    path: PathBuf,
    file: Arc<dyn File>,
    /// The end of the log: where the next record goes. Held for the whole of an append, so
    /// appends (and their entries in the map) are in log order.
    end: Mutex<u64>,
    /// Why writes are refused, after a failed write or sync.
    poison: Mutex<Option<String>>,
    /// Aggregate → version → the durable record of its snapshot.
    map: RwLock<HashMap<String, BTreeMap<u64, Entry>>>,
}

impl Snapshots {
    /// Opens (creating when missing) the snapshot log in `dir` and rebuilds the map.
    pub fn open(fs: &dyn FileSystem, dir: &Path) -> Result<Snapshots> {
        if !fs.exists(dir).map_err(EngineError::io(dir))? {
            fs.create_dir_all(dir).map_err(EngineError::io(dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent).map_err(EngineError::io(parent))?;
            }
        }
        let path = dir.join(SNAPSHOT_LOG);
        let file = if fs.exists(&path).map_err(EngineError::io(&path))? {
            fs.open(&path, OpenMode::ReadWrite)
                .map_err(EngineError::io(&path))?
        } else {
            let file = fs
                .open(&path, OpenMode::CreateNew)
                .map_err(EngineError::io(&path))?;
            Self::write_header(&*file, &path)?;
            fs.sync_dir(dir).map_err(EngineError::io(dir))?;
            file
        };
        let mut len = file.len().map_err(EngineError::io(&path))?;
        let mut header = [0u8; LOG_HEADER_LEN as usize];
        let whole_header =
            len >= LOG_HEADER_LEN && file.read_exact_at(&mut header, 0).is_ok() && header == header_bytes();
        if !whole_header {
            if len > LOG_HEADER_LEN {
                return Err(EngineError::corruption(&path, 0, "bad snapshot log header"));
            }
            // Created, then a crash before its header was synced: nothing was ever in it.
            file.set_len(0).map_err(EngineError::io(&path))?;
            Self::write_header(&*file, &path)?;
            len = LOG_HEADER_LEN;
        }
        let (map, end) = Self::replay(&*file, &path, len)?;
        if end < len {
            tracing::warn!(path = %path.display(), offset = end, cut = len - end, "cutting a torn snapshot record");
            file.set_len(end).map_err(EngineError::io(&path))?;
            file.sync_data().map_err(EngineError::io(&path))?;
        }
        Ok(Snapshots {
            path,
            file,
            end: Mutex::new(end),
            poison: Mutex::new(None),
            map: RwLock::new(map),
        })
    }

    fn write_header(file: &dyn File, path: &Path) -> Result<()> {
        file.write_all_at(&header_bytes(), 0)
            .map_err(EngineError::io(path))?;
        file.sync_data().map_err(EngineError::io(path))
    }

    /// Reads every record from the header on; returns the map and the end of the last valid
    /// record, erring on a bad record that a valid one follows.
    #[expect(clippy::type_complexity, reason = "the map and the end, once")]
    fn replay(
        file: &dyn File,
        path: &Path,
        len: u64,
    ) -> Result<(HashMap<String, BTreeMap<u64, Entry>>, u64)> {
        let mut map: HashMap<String, BTreeMap<u64, Entry>> = HashMap::new();
        let mut offset = LOG_HEADER_LEN;
        let mut header = [0u8; RECORD_HEADER_LEN];
        while offset < len {
            let whole = match Self::read_record(file, path, offset, len, &mut header)? {
                Some(record) => decode_record(&record).map(|s| (s, record.len())),
                None => Err("incomplete record".to_owned()),
            };
            match whole {
                Ok((snapshot, record_len)) => {
                    let entry = Entry {
                        offset,
                        len: record_len,
                        info: snapshot.info(),
                    };
                    map.entry(snapshot.aggregate_id)
                        .or_default()
                        .insert(snapshot.version, entry);
                    offset += record_len as u64;
                }
                Err(reason) => {
                    if let Some(later) = Self::valid_record_after(file, path, offset, len)? {
                        return Err(EngineError::corruption(
                            path,
                            offset,
                            format!("{reason}, and a valid record follows at offset {later}"),
                        ));
                    }
                    return Ok((map, offset));
                }
            }
        }
        Ok((map, offset))
    }

    /// The record at `offset`, if its header is plausible and the whole of it is in the file.
    fn read_record(
        file: &dyn File,
        path: &Path,
        offset: u64,
        len: u64,
        header: &mut [u8; RECORD_HEADER_LEN],
    ) -> Result<Option<Vec<u8>>> {
        if len - offset < RECORD_HEADER_LEN as u64 {
            return Ok(None);
        }
        file.read_exact_at(header, offset)
            .map_err(EngineError::io(path))?;
        let Some(body_len) = body_len_of(header) else {
            return Ok(None);
        };
        let total = (RECORD_HEADER_LEN + body_len) as u64;
        if len - offset < total {
            return Ok(None);
        }
        let mut record = vec![0u8; total as usize];
        file.read_exact_at(&mut record, offset)
            .map_err(EngineError::io(path))?;
        Ok(Some(record))
    }

    /// The offset of the first valid record that starts after `bad`, if any.
    fn valid_record_after(file: &dyn File, path: &Path, bad: u64, len: u64) -> Result<Option<u64>> {
        let start = bad + 1;
        if start >= len {
            return Ok(None);
        }
        let mut rest = vec![0u8; (len - start) as usize];
        file.read_exact_at(&mut rest, start)
            .map_err(EngineError::io(path))?;
        let magic = RECORD_MAGIC.to_le_bytes();
        for at in 0..rest.len().saturating_sub(RECORD_HEADER_LEN - 1) {
            if rest[at..at + 4] != magic {
                continue;
            }
            if let Some(body_len) = body_len_of(&rest[at..])
                && let Some(record) = rest.get(at..at + RECORD_HEADER_LEN + body_len)
                && decode_record(record).is_ok()
            {
                return Ok(Some(start + at as u64));
            }
        }
        Ok(None)
    }

    /// Checks the snapshot log in `dir` without changing it (for `factstore verify`): the
    /// header, every record's checksum and body, and that each snapshot's aggregate reached
    /// its version according to `version_of`. Returns the number of records and the problems.
    /// A torn last record is not a problem: the next open cuts it, as a crash leaves it.
    pub fn verify(
        fs: &dyn FileSystem,
        dir: &Path,
        version_of: impl Fn(&str) -> u64,
    ) -> Result<(u64, Vec<String>)> {
        let path = dir.join(SNAPSHOT_LOG);
        if !fs.exists(&path).map_err(EngineError::io(&path))? {
            return Ok((0, Vec::new()));
        }
        let file = fs.open(&path, OpenMode::Read).map_err(EngineError::io(&path))?;
        let len = file.len().map_err(EngineError::io(&path))?;
        let mut header = [0u8; LOG_HEADER_LEN as usize];
        if len < LOG_HEADER_LEN {
            return Ok((0, Vec::new()));
        }
        file.read_exact_at(&mut header, 0)
            .map_err(EngineError::io(&path))?;
        if header != header_bytes() {
            return Ok((0, vec![format!("{}: bad snapshot log header", path.display())]));
        }
        let (mut records, mut problems) = (0u64, Vec::new());
        let mut offset = LOG_HEADER_LEN;
        let mut record_header = [0u8; RECORD_HEADER_LEN];
        while offset < len {
            let decoded = match Self::read_record(&*file, &path, offset, len, &mut record_header)? {
                Some(record) => decode_record(&record).map(|s| (s, record.len())),
                None => Err("incomplete record".to_owned()),
            };
            match decoded {
                Ok((snapshot, record_len)) => {
                    records += 1;
                    let reached = version_of(&snapshot.aggregate_id);
                    if snapshot.version > reached {
                        problems.push(format!(
                            "{} at offset {offset}: a snapshot of '{}' at version {}, which the log never reached (it ends at version {reached})",
                            path.display(),
                            snapshot.aggregate_id,
                            snapshot.version
                        ));
                    }
                    offset += record_len as u64;
                }
                Err(reason) => {
                    if let Some(later) = Self::valid_record_after(&*file, &path, offset, len)? {
                        problems.push(format!(
                            "{} at offset {offset}: {reason}, and a valid record follows at offset {later}",
                            path.display()
                        ));
                    }
                    break;
                }
            }
        }
        Ok((records, problems))
    }

    /// Why writes are refused, when they are.
    pub fn poisoned(&self) -> Option<String> {
        self.poison.lock().clone()
    }

    /// The log and the length of its synced records, for a backup: `end` moves only after a
    /// record is synced, a failed put is cut back to it, and the file is never rewritten.
    pub fn durable(&self) -> DurableFile {
        let end = self.end.lock();
        DurableFile {
            path: self.path.clone(),
            file: self.file.clone(),
            len: *end,
        }
    }

    /// Appends a snapshot and syncs it; then it is in the map. Returns whether it replaced
    /// one at the same version.
    pub fn put(&self, snapshot: &Snapshot) -> Result<bool> {
        let record = encode_record(snapshot);
        let mut end = self.end.lock();
        if let Some(reason) = self.poisoned() {
            return Err(EngineError::Poisoned(reason));
        }
        let offset = *end;
        let written = self
            .file
            .write_all_at(&record, offset)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            tracing::error!(
                %error,
                file = %self.path.display(),
                "a snapshot write or sync failed; snapshot writes are refused until the store is reopened"
            );
            let reason = format!(
                "writing the snapshot log failed: {}",
                crate::error::describe_io(&error)
            );
            *self.poison.lock() = Some(reason.clone());
            // Best effort: take the unacknowledged bytes out of the page cache, so that a
            // restart without a power loss does not read a record the disk may not hold.
            let _ = self.file.set_len(offset);
            return Err(EngineError::Poisoned(reason));
        }
        *end = offset + record.len() as u64;
        let entry = Entry {
            offset,
            len: record.len(),
            info: snapshot.info(),
        };
        let replaced = self
            .map
            .write()
            .entry(snapshot.aggregate_id.clone())
            .or_default()
            .insert(snapshot.version, entry)
            .is_some();
        Ok(replaced)
    }

    /// The snapshot with the highest version at or below `max_version`, read from the log and
    /// checked again.
    pub fn latest(&self, aggregate_id: &str, max_version: Option<u64>) -> Result<Option<Snapshot>> {
        let entry = {
            let map = self.map.read();
            map.get(aggregate_id)
                .and_then(|versions| versions.range(..=max_version.unwrap_or(u64::MAX)).next_back())
                .map(|(_, entry)| entry.clone())
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        let mut record = vec![0u8; entry.len];
        self.file
            .read_exact_at(&mut record, entry.offset)
            .map_err(EngineError::io(&self.path))?;
        let snapshot =
            decode_record(&record).map_err(|r| EngineError::corruption(&self.path, entry.offset, r))?;
        if snapshot.aggregate_id != aggregate_id || snapshot.version != entry.info.version {
            return Err(EngineError::corruption(
                &self.path,
                entry.offset,
                "the record is not the snapshot the map points at",
            ));
        }
        Ok(Some(snapshot))
    }

    /// Every snapshot of an aggregate, by increasing version.
    pub fn list(&self, aggregate_id: &str) -> Vec<SnapshotInfo> {
        self.map
            .read()
            .get(aggregate_id)
            .map(|versions| versions.values().map(|e| e.info.clone()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(state: &str) -> Snapshot {
        Snapshot {
            aggregate_id: "account:Zoë".into(),
            version: 42,
            snapshot_type: "Account".into(),
            snapshot_version: 3,
            state: state.into(),
            created_at: Timestamp::from_micros(1_700_000_000_123_456),
        }
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let s = snapshot(r#"{"balance":1}"#);
        let record = encode_record(&s);
        assert_eq!(record.len(), RECORD_HEADER_LEN + BODY_FIXED_LEN + 12 + 7 + 13);
        assert_eq!(decode_record(&record), Ok(s));
    }

    #[test]
    fn every_damaged_byte_or_short_record_is_refused() {
        let record = encode_record(&snapshot(r#"{"a":[1,2,3]}"#));
        for at in 0..record.len() {
            let mut bad = record.clone();
            bad[at] ^= 0x40;
            assert!(
                decode_record(&bad).is_err(),
                "a flipped byte at {at} went unnoticed"
            );
        }
        for cut in 0..record.len() {
            assert!(decode_record(&record[..cut]).is_err(), "a record cut at {cut}");
        }
    }
}
