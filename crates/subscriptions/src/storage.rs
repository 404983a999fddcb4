//! Where groups keep their journals, behind [`Storage`] and [`GroupLog`], so that another
//! backend (PostgreSQL) can hold them later.
//!
//! - [`FileStorage`]: one [`Journal`] file per group, `<dir>/<hex of the name>.group`, through
//!   the engine's [`FileSystem`] (so tests inject faults with `FaultFs`).
//! - [`MemoryStorage`]: records in memory, for servers built by `app(store)` and for tests.
//!
//! All methods block (file I/O): call them from `spawn_blocking`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use factstore_engine::backup::DurableFile;
use factstore_engine::io::FileSystem;
use factstore_engine::journal::Journal;
use parking_lot::Mutex;

use crate::error::SubscriptionError;

/// The 8 bytes that open a group's journal file.
pub const GROUP_JOURNAL_MAGIC: [u8; 8] = *b"FSSUBGRP";
const EXTENSION: &str = ".group";

/// One group's journal.
pub trait GroupLog: Send + Sync + Debug {
    /// Appends the records and makes them durable; all of them or, after a crash, none.
    fn append(&self, records: &[&[u8]]) -> Result<(), SubscriptionError>;
    /// Replaces the whole journal with `records`, atomically.
    fn rewrite(&self, records: &[&[u8]]) -> Result<(), SubscriptionError>;
    /// Bytes held now, to decide when to compact.
    fn len(&self) -> u64;
    /// Whether it holds nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The journal's file and its synced length, for a backup; `None` for a journal that is
    /// not a file of the data folder.
    fn durable(&self) -> Option<DurableFile> {
        None
    }
}

/// Every group's journal.
pub trait Storage: Send + Sync + Debug {
    /// Every stored group: its name, its journal and the journal's records. Groups whose
    /// creation did not complete (no record) are removed.
    #[expect(clippy::type_complexity, reason = "a list of triples, read once at start")]
    fn load(&self) -> Result<Vec<(String, Arc<dyn GroupLog>, Vec<Vec<u8>>)>, SubscriptionError>;
    /// Creates a group's journal holding `records`, durably. The group must not exist.
    fn create(&self, group: &str, records: &[&[u8]]) -> Result<Arc<dyn GroupLog>, SubscriptionError>;
    /// Removes a group's journal, durably.
    fn delete(&self, group: &str) -> Result<(), SubscriptionError>;
}

/// Journals as files in one folder.
#[derive(Debug)]
pub struct FileStorage {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
}

impl FileStorage {
    /// The journals in `dir` (created, with its parents, when missing).
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path) -> Result<FileStorage, SubscriptionError> {
        fs.create_dir_all(dir)
            .map_err(|e| SubscriptionError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        // The folder (and any parent just created) must survive a crash before a journal in
        // it is trusted: sync every folder up the path, once at start.
        for folder in dir.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(folder).map_err(|e| {
                SubscriptionError::Unavailable(format!("cannot sync {}: {e}", folder.display()))
            })?;
        }
        Ok(FileStorage {
            fs,
            dir: dir.to_owned(),
        })
    }

    fn path(&self, group: &str) -> PathBuf {
        let mut name = String::with_capacity(group.len() * 2 + EXTENSION.len());
        for byte in group.bytes() {
            name.push_str(&format!("{byte:02x}"));
        }
        name.push_str(EXTENSION);
        self.dir.join(name)
    }
}

/// The group name of a journal file name, if it is one.
fn group_of_file(file: &str) -> Option<String> {
    let hex = file.strip_suffix(EXTENSION)?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

#[derive(Debug)]
struct FileLog(Journal);

impl GroupLog for FileLog {
    fn append(&self, records: &[&[u8]]) -> Result<(), SubscriptionError> {
        Ok(self.0.append(records)?)
    }

    fn rewrite(&self, records: &[&[u8]]) -> Result<(), SubscriptionError> {
        Ok(self.0.rewrite(records)?)
    }

    fn len(&self) -> u64 {
        self.0.len()
    }

    fn durable(&self) -> Option<DurableFile> {
        Some(self.0.durable())
    }
}

impl Storage for FileStorage {
    fn load(&self) -> Result<Vec<(String, Arc<dyn GroupLog>, Vec<Vec<u8>>)>, SubscriptionError> {
        let mut names = self.fs.list_dir(&self.dir).map_err(|e| {
            SubscriptionError::Unavailable(format!("cannot list {}: {e}", self.dir.display()))
        })?;
        names.sort();
        let mut out = Vec::new();
        for file in names {
            let Some(group) = group_of_file(&file) else {
                continue;
            };
            let path = self.dir.join(&file);
            let (journal, records) = Journal::open(self.fs.clone(), &path, GROUP_JOURNAL_MAGIC)?;
            if records.is_empty() {
                // Created, then the process died before the group's first record was synced:
                // the creation was never acknowledged.
                drop(journal);
                self.delete(&group)?;
                continue;
            }
            out.push((group, Arc::new(FileLog(journal)) as Arc<dyn GroupLog>, records));
        }
        Ok(out)
    }

    fn create(&self, group: &str, records: &[&[u8]]) -> Result<Arc<dyn GroupLog>, SubscriptionError> {
        let path = self.path(group);
        let (journal, existing) = Journal::open(self.fs.clone(), &path, GROUP_JOURNAL_MAGIC)?;
        if !existing.is_empty() {
            return Err(SubscriptionError::Internal(format!(
                "{} already holds a group",
                path.display()
            )));
        }
        journal.append(records)?;
        Ok(Arc::new(FileLog(journal)))
    }

    fn delete(&self, group: &str) -> Result<(), SubscriptionError> {
        let path = self.path(group);
        let unavailable = |e: std::io::Error| {
            SubscriptionError::Unavailable(format!("cannot remove {}: {e}", path.display()))
        };
        if self.fs.exists(&path).map_err(unavailable)? {
            self.fs.remove_file(&path).map_err(unavailable)?;
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| SubscriptionError::Unavailable(format!("cannot sync {}: {e}", self.dir.display())))
    }
}

/// Journals in memory: what a [`FileStorage`] would hold, without the files.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    groups: Mutex<BTreeMap<String, Arc<MemoryLog>>>,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }
}

#[derive(Debug, Default)]
struct MemoryLog {
    records: Mutex<Vec<Vec<u8>>>,
}

impl GroupLog for MemoryLog {
    fn append(&self, records: &[&[u8]]) -> Result<(), SubscriptionError> {
        self.records.lock().extend(records.iter().map(|r| r.to_vec()));
        Ok(())
    }

    fn rewrite(&self, records: &[&[u8]]) -> Result<(), SubscriptionError> {
        *self.records.lock() = records.iter().map(|r| r.to_vec()).collect();
        Ok(())
    }

    fn len(&self) -> u64 {
        self.records.lock().iter().map(|r| r.len() as u64 + 8).sum()
    }
}

impl Storage for MemoryStorage {
    fn load(&self) -> Result<Vec<(String, Arc<dyn GroupLog>, Vec<Vec<u8>>)>, SubscriptionError> {
        Ok(self
            .groups
            .lock()
            .iter()
            .map(|(name, log)| {
                let records = log.records.lock().clone();
                (name.clone(), log.clone() as Arc<dyn GroupLog>, records)
            })
            .collect())
    }

    fn create(&self, group: &str, records: &[&[u8]]) -> Result<Arc<dyn GroupLog>, SubscriptionError> {
        let log = Arc::new(MemoryLog::default());
        log.append(records)?;
        self.groups.lock().insert(group.to_owned(), log.clone());
        Ok(log)
    }

    fn delete(&self, group: &str) -> Result<(), SubscriptionError> {
        self.groups.lock().remove(group);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        for name in ["a", "orders-v2.billing:eu", "X_1"] {
            let storage = FileStorage {
                fs: Arc::new(factstore_engine::io::StdFileSystem),
                dir: PathBuf::from("/x"),
            };
            let path = storage.path(name);
            let file = path.file_name().and_then(|f| f.to_str()).expect("a name");
            assert_eq!(group_of_file(file).as_deref(), Some(name));
        }
        assert_eq!(group_of_file("6a.group.tmp"), None);
        assert_eq!(group_of_file("zz.group"), None);
    }

    /// The longest valid group name makes a file name (and its compaction's `.tmp`) that every
    /// common file system takes: at most 255 bytes.
    #[test]
    fn the_longest_group_name_fits_a_file_name() {
        let storage = FileStorage {
            fs: Arc::new(factstore_engine::io::StdFileSystem),
            dir: PathBuf::from("/x"),
        };
        let name = ".".repeat(crate::definition::GROUP_NAME_BYTES_MAX);
        crate::definition::validate_group_name(&name).expect("valid");
        let path = storage.path(&name);
        let file = path.file_name().and_then(|f| f.to_str()).expect("a name");
        assert!(file.len() + ".tmp".len() <= 255, "{} bytes", file.len());
        assert_eq!(group_of_file(file).as_deref(), Some(name.as_str()));
    }
}
