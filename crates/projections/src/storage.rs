//! Where projections are kept: a narrow [`ProjectionStorage`] trait of record logs, one log per
//! projection generation, and the records written to them.
//!
//! # Records
//! Every record is one JSON object with a `"type"` (layout in `docs/format.md`):
//! - `definition`: the definition the generation folds by; the first record of every log.
//! - `live`: the generation serves reads. Written with the definition for a new projection,
//!   and appended when a rebuild has caught up (the swap). Of the generations of one name,
//!   the newest with a `live` record is the projection; older ones are leftovers of a swap
//!   and a newer one without `live` is an unfinished rebuild (resumed at open).
//! - `batch`: the new states of the keys a batch of events changed, with the checkpoint (the
//!   position up to which events were considered) and the `unkeyed` count. ONE record per
//!   batch, appended and synced at once, so states and checkpoint are always consistent: after
//!   a crash the log holds every acknowledged batch whole and nothing of a torn one.
//! - `snapshot`: a key's state after one of its events (for `aggregate_id` keys, every
//!   `--snapshot-every` events of the aggregate), for time travel and `source=event_store`.
//!
//! A log is replayed in order at open: the last `batch` gives the checkpoint, and each key's
//! latest state wins. Compaction rewrites a log as an image: `definition`, `live` (if
//! live), one `batch` with every state, and every `snapshot`.
//!
//! # Implementations
//! [`JournalStorage`] keeps each log in a [`Journal`] file
//! `<root>/<encoded name>/gen-<generation>.journal`. [`MemoryStorage`] keeps them in memory
//! (for servers built in-process, e.g. tests): the same records, lost with the process.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use factstore_engine::backup::DurableFile;
use factstore_engine::io::FileSystem;
use factstore_engine::journal::Journal;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::ProjectionDefinition;
use crate::error::ProjectionError;

/// The magic of a projection journal file.
pub const JOURNAL_MAGIC: [u8; 8] = *b"FSPROJ01";

/// One generation's record log. Appends are atomic and durable when they return `Ok`; after
/// an error the log refuses every later write (it is poisoned).
#[expect(
    clippy::len_without_is_empty,
    reason = "the length decides compaction, nothing else"
)]
pub trait GenerationLog: Send + Sync + Debug {
    /// Appends the records, all or none, and makes them durable.
    fn append(&self, records: &[&[u8]]) -> Result<(), ProjectionError>;
    /// Replaces the whole log with `records`, atomically.
    fn rewrite(&self, records: &[&[u8]]) -> Result<(), ProjectionError>;
    /// Bytes the log takes now.
    fn len(&self) -> u64;
    /// The log's file and its synced length, for a backup; `None` for a log that is not a
    /// file of the data folder.
    fn durable(&self) -> Option<DurableFile> {
        None
    }
}

/// A generation found at open: its log and its records in order.
#[derive(Debug)]
pub struct StoredGeneration {
    pub name: String,
    pub generation: u64,
    pub log: Box<dyn GenerationLog>,
    pub records: Vec<Vec<u8>>,
}

/// Where projection generations are kept. Narrow on purpose: a PostgreSQL implementation is a
/// table of (name, generation, sequence, record).
pub trait ProjectionStorage: Send + Sync + Debug {
    /// Every stored generation with its records.
    fn open_all(&self) -> Result<Vec<StoredGeneration>, ProjectionError>;
    /// A new, empty log for a generation; its existence is durable when this returns.
    fn create(&self, name: &str, generation: u64) -> Result<Box<dyn GenerationLog>, ProjectionError>;
    /// Removes a generation's log, durably.
    fn remove(&self, name: &str, generation: u64) -> Result<(), ProjectionError>;
}

/// A key's durable entry: its state and what snapshots and time travel need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key: String,
    pub state: Value,
    /// Events folded into this key since its last snapshot.
    #[serde(default)]
    pub since_snapshot: u64,
    /// The largest `created_at` (µs) of the events folded into this key.
    #[serde(default)]
    pub max_created_at: i64,
}

/// A key's state after one of its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub key: String,
    /// The aggregate version of the event the state ends with.
    pub version: u64,
    /// Its global position.
    pub position: u64,
    /// Its `recorded_at` (µs): the snapshot serves `as_of` at or after this.
    pub recorded_at: i64,
    /// The largest `created_at` (µs) of the events folded into the state: it serves `until`
    /// at or after this.
    pub max_created_at: i64,
    pub state: Value,
}

/// The records, as written.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Definition {
        definition: ProjectionDefinition,
    },
    Live,
    Batch {
        /// Every event up to here is considered.
        position: u64,
        /// Events passed over for want of a key, in total.
        unkeyed: u64,
        states: Vec<KeyRecord>,
    },
    Snapshot(SnapshotRecord),
}

impl Record {
    pub fn encode(&self) -> Result<Vec<u8>, ProjectionError> {
        serde_json::to_vec(self).map_err(|e| ProjectionError::Internal(format!("encoding a record: {e}")))
    }
}

/// A batch record written from borrowed states, without cloning them.
#[derive(Serialize)]
struct BatchOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    position: u64,
    unkeyed: u64,
    states: &'a [KeyRecord],
}

/// Encodes a `batch` record.
pub fn encode_batch(position: u64, unkeyed: u64, states: &[KeyRecord]) -> Result<Vec<u8>, ProjectionError> {
    serde_json::to_vec(&BatchOut {
        kind: "batch",
        position,
        unkeyed,
        states,
    })
    .map_err(|e| ProjectionError::Internal(format!("encoding a batch record: {e}")))
}

/// A generation's content rebuilt from its records.
#[derive(Debug)]
pub struct Replayed {
    pub definition: ProjectionDefinition,
    pub live: bool,
    pub position: u64,
    pub unkeyed: u64,
    pub keys: BTreeMap<String, KeyRecord>,
    pub snapshots: HashMap<String, Vec<SnapshotRecord>>,
}

/// Replays a generation's records. `what` names the log in errors.
pub fn replay(records: &[Vec<u8>], what: &str) -> Result<Replayed, ProjectionError> {
    let mut iter = records.iter();
    let first = iter
        .next()
        .ok_or_else(|| ProjectionError::Internal(format!("{what} has no records")))?;
    let decode = |bytes: &[u8]| -> Result<Record, ProjectionError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ProjectionError::Internal(format!("{what}: a record does not decode: {e}")))
    };
    let Record::Definition { definition } = decode(first)? else {
        return Err(ProjectionError::Internal(format!(
            "{what} does not begin with its definition"
        )));
    };
    let mut out = Replayed {
        definition,
        live: false,
        position: 0,
        unkeyed: 0,
        keys: BTreeMap::new(),
        snapshots: HashMap::new(),
    };
    for bytes in iter {
        match decode(bytes)? {
            Record::Definition { .. } => {
                return Err(ProjectionError::Internal(format!(
                    "{what} has a second definition"
                )));
            }
            Record::Live => out.live = true,
            Record::Batch {
                position,
                unkeyed,
                states,
            } => {
                if position < out.position {
                    return Err(ProjectionError::Internal(format!(
                        "{what}: a checkpoint goes back from {} to {position}",
                        out.position
                    )));
                }
                out.position = position;
                out.unkeyed = unkeyed;
                for state in states {
                    out.keys.insert(state.key.clone(), state);
                }
            }
            Record::Snapshot(snapshot) => {
                out.snapshots
                    .entry(snapshot.key.clone())
                    .or_default()
                    .push(snapshot);
            }
        }
    }
    Ok(out)
}

/// Projection logs in [`Journal`] files under one folder.
#[derive(Debug)]
pub struct JournalStorage {
    fs: Arc<dyn FileSystem>,
    root: PathBuf,
}

impl JournalStorage {
    /// Uses `root` (created, and made durable, when missing).
    pub fn open(fs: Arc<dyn FileSystem>, root: &Path) -> Result<JournalStorage, ProjectionError> {
        let io = |e: std::io::Error| ProjectionError::Internal(format!("{}: {e}", root.display()));
        if !fs.exists(root).map_err(io)? {
            // Every folder made here is durable only once its parent is synced.
            let mut missing = vec![root];
            while let Some(parent) = missing
                .last()
                .and_then(|p| p.parent())
                .filter(|p| !p.as_os_str().is_empty())
            {
                if fs.exists(parent).map_err(io)? {
                    break;
                }
                missing.push(parent);
            }
            fs.create_dir_all(root).map_err(io)?;
            for made in missing.iter().rev() {
                if let Some(parent) = made.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs.sync_dir(parent).map_err(io)?;
                }
            }
        }
        Ok(JournalStorage {
            fs,
            root: root.to_owned(),
        })
    }

    fn folder(&self, name: &str) -> PathBuf {
        self.root.join(encode_name(name))
    }

    fn path(&self, name: &str, generation: u64) -> PathBuf {
        self.folder(name).join(format!("gen-{generation}.journal"))
    }
}

#[derive(Debug)]
struct JournalLog(Journal);

impl GenerationLog for JournalLog {
    fn append(&self, records: &[&[u8]]) -> Result<(), ProjectionError> {
        Ok(self.0.append(records)?)
    }

    fn rewrite(&self, records: &[&[u8]]) -> Result<(), ProjectionError> {
        Ok(self.0.rewrite(records)?)
    }

    fn len(&self) -> u64 {
        self.0.len()
    }

    fn durable(&self) -> Option<DurableFile> {
        Some(self.0.durable())
    }
}

impl ProjectionStorage for JournalStorage {
    fn open_all(&self) -> Result<Vec<StoredGeneration>, ProjectionError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |e: std::io::Error| ProjectionError::Internal(format!("{}: {e}", path.display()))
        };
        let mut out = Vec::new();
        let mut folders = self.fs.list_dir(&self.root).map_err(io(&self.root))?;
        folders.sort();
        for folder in folders {
            let Some(name) = decode_name(&folder) else {
                tracing::warn!(folder, "ignoring a folder that is not a projection's");
                continue;
            };
            let dir = self.root.join(&folder);
            let mut files = self.fs.list_dir(&dir).map_err(io(&dir))?;
            files.sort();
            for file in files {
                let Some(generation) = file
                    .strip_prefix("gen-")
                    .and_then(|f| f.strip_suffix(".journal"))
                    .and_then(|g| g.parse::<u64>().ok())
                else {
                    continue;
                };
                let path = dir.join(&file);
                let (journal, records) = Journal::open(self.fs.clone(), &path, JOURNAL_MAGIC)?;
                out.push(StoredGeneration {
                    name: name.clone(),
                    generation,
                    log: Box::new(JournalLog(journal)),
                    records,
                });
            }
        }
        Ok(out)
    }

    fn create(&self, name: &str, generation: u64) -> Result<Box<dyn GenerationLog>, ProjectionError> {
        let folder = self.folder(name);
        let io = |e: std::io::Error| ProjectionError::Unavailable(format!("{}: {e}", folder.display()));
        if !self.fs.exists(&folder).map_err(io)? {
            self.fs.create_dir_all(&folder).map_err(io)?;
            self.fs.sync_dir(&self.root).map_err(io)?;
        }
        let path = self.path(name, generation);
        if self.fs.exists(&path).map_err(io)? {
            // A leftover of a generation that was being removed: it is not live (the caller
            // picks numbers above every live one), so it is garbage.
            self.fs.remove_file(&path).map_err(io)?;
        }
        let (journal, records) = Journal::open(self.fs.clone(), &path, JOURNAL_MAGIC)?;
        if !records.is_empty() {
            return Err(ProjectionError::Internal(format!(
                "{} is not new",
                path.display()
            )));
        }
        Ok(Box::new(JournalLog(journal)))
    }

    fn remove(&self, name: &str, generation: u64) -> Result<(), ProjectionError> {
        let folder = self.folder(name);
        let path = self.path(name, generation);
        let io = |e: std::io::Error| ProjectionError::Unavailable(format!("{}: {e}", path.display()));
        // A compaction's leftover goes too, or nothing would ever remove it.
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut removed = false;
        for file in [&path, &tmp] {
            if self.fs.exists(file).map_err(io)? {
                self.fs.remove_file(file).map_err(io)?;
                removed = true;
            }
        }
        if removed {
            self.fs.sync_dir(&folder).map_err(io)?;
        }
        Ok(())
    }
}

/// The longest folder name the encoding produces: the common limit of a file name's length
/// (ext4, XFS, btrfs, APFS, NTFS all stop at 255 bytes).
pub const FOLDER_NAME_BYTES_MAX: usize = 255;

/// Starts a folder name in the long form (hex). Not a character of the short form, so the two
/// never meet.
const LONG_FORM_MARK: char = '=';

// Every valid name has a long form that fits: the mark and two hex digits per byte.
const _: () = assert!(2 * crate::definition::NAME_BYTES_MAX < FOLDER_NAME_BYTES_MAX);

/// A projection name as a folder name, never longer than [`FOLDER_NAME_BYTES_MAX`] for a valid
/// name, so that no name is `.`, `..` or holds a `/`:
/// - the short form: ASCII letters, digits, `_` and `-` as they are, every other byte as `%XX`
///   (upper-case hex), when that fits in [`FOLDER_NAME_BYTES_MAX`] bytes (`bank balances` →
///   `bank%20balances`). Every folder written before the long form existed is one of these.
/// - else the long form: `=` and the lower-case hex of every byte, at most 201 bytes for a
///   name of 100 (a name of dots or of non-ASCII characters takes three bytes per byte in
///   the short form, up to 300).
///
/// Each name has exactly one folder: [`decode_name`] refuses a long form whose name has a
/// short form that fits.
pub fn encode_name(name: &str) -> String {
    let short = short_form(name);
    if short.len() <= FOLDER_NAME_BYTES_MAX {
        return short;
    }
    let mut out = String::with_capacity(1 + 2 * name.len());
    out.push(LONG_FORM_MARK);
    for byte in name.bytes() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn short_form(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The name a folder stands for; `None` for a folder that is no encoded name.
pub fn decode_name(folder: &str) -> Option<String> {
    let out = match folder.strip_prefix(LONG_FORM_MARK) {
        Some(hex) => decode_long_form(hex)?,
        None => decode_short_form(folder)?,
    };
    let name = String::from_utf8(out).ok()?;
    (encode_name(&name) == folder && !name.is_empty()).then_some(name)
}

fn decode_long_form(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| hex.get(at..at + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

fn decode_short_form(folder: &str) -> Option<Vec<u8>> {
    let bytes = folder.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(byte);
            at += 1;
        }
    }
    Some(out)
}

/// The records of one log kept in memory.
type MemoryRecords = Arc<Mutex<Vec<Vec<u8>>>>;

/// Projection logs in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage {
    logs: Arc<Mutex<BTreeMap<(String, u64), MemoryRecords>>>,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }
}

#[derive(Debug)]
struct MemoryLog(MemoryRecords);

impl GenerationLog for MemoryLog {
    fn append(&self, records: &[&[u8]]) -> Result<(), ProjectionError> {
        self.0.lock().extend(records.iter().map(|r| r.to_vec()));
        Ok(())
    }

    fn rewrite(&self, records: &[&[u8]]) -> Result<(), ProjectionError> {
        *self.0.lock() = records.iter().map(|r| r.to_vec()).collect();
        Ok(())
    }

    fn len(&self) -> u64 {
        self.0.lock().iter().map(|r| r.len() as u64 + 4).sum()
    }
}

impl ProjectionStorage for MemoryStorage {
    fn open_all(&self) -> Result<Vec<StoredGeneration>, ProjectionError> {
        Ok(self
            .logs
            .lock()
            .iter()
            .map(|((name, generation), log)| StoredGeneration {
                name: name.clone(),
                generation: *generation,
                records: log.lock().clone(),
                log: Box::new(MemoryLog(log.clone())),
            })
            .collect())
    }

    fn create(&self, name: &str, generation: u64) -> Result<Box<dyn GenerationLog>, ProjectionError> {
        let log = Arc::new(Mutex::new(Vec::new()));
        self.logs
            .lock()
            .insert((name.to_owned(), generation), log.clone());
        Ok(Box::new(MemoryLog(log)))
    }

    fn remove(&self, name: &str, generation: u64) -> Result<(), ProjectionError> {
        self.logs.lock().remove(&(name.to_owned(), generation));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_to_safe_folders_and_back() {
        for name in ["balances", "a.b", "..", "x/y", "é", "%41", "with space"] {
            let folder = encode_name(name);
            assert!(
                folder
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-%".contains(&b)),
                "{folder}"
            );
            assert_eq!(decode_name(&folder).as_deref(), Some(name));
        }
        assert_eq!(decode_name("a.b"), None);
        assert_eq!(decode_name("%4"), None);
        assert_eq!(decode_name("%41"), None, "not the canonical encoding of 'A'");
    }

    /// A name of 100 dots was valid but its folder name took 300 bytes, which no common file
    /// system accepts: creating the projection failed.
    #[test]
    fn every_valid_name_fits_a_folder_name_and_comes_back() {
        use crate::definition::{NAME_BYTES_MAX, validate_name};
        let longest = [
            ".".repeat(NAME_BYTES_MAX),
            "%".repeat(NAME_BYTES_MAX),
            "é".repeat(NAME_BYTES_MAX / 2),
            "€".repeat(NAME_BYTES_MAX / 3),
            "x".repeat(NAME_BYTES_MAX),
            format!("{}{}", "a".repeat(NAME_BYTES_MAX - 85), ".".repeat(85)),
            format!("{}{}", "a".repeat(NAME_BYTES_MAX - 86), ".".repeat(86)),
        ];
        for name in &longest {
            validate_name(name).expect("a valid name");
            let folder = encode_name(name);
            assert!(
                folder.len() <= FOLDER_NAME_BYTES_MAX,
                "{} bytes: {folder}",
                folder.len()
            );
            assert!(
                !folder.contains('/') && folder != "." && folder != "..",
                "{folder}"
            );
            assert_eq!(decode_name(&folder).as_deref(), Some(name.as_str()), "{folder}");
        }
        // The short form stays what it always was, so the folders of existing stores open.
        assert_eq!(encode_name("bank balances"), "bank%20balances");
        let fits = format!("{}{}", "a".repeat(15), ".".repeat(80));
        assert_eq!(encode_name(&fits), short_form(&fits));
        assert!(encode_name(&".".repeat(100)).starts_with('='));
        // One folder per name: a long form of a name whose short form fits is no name's.
        assert_eq!(decode_name("=6162"), None, "'ab' is the folder 'ab'");
        assert_eq!(decode_name("=6"), None);
        assert_eq!(decode_name("=zz"), None);
    }
}
