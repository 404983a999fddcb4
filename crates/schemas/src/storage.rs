//! Where the registry keeps its changes: one record per change, replayed in order at start.
//!
//! The trait is the seam for other backends (a PostgreSQL table shared by several servers,
//! which is why it can refuse an append on a stale view and hand over records appended
//! elsewhere: [`SchemaStorage::load_new`]); the embedded server uses
//! [`JournalStorage`], a journal of the engine (`schemas/registry.journal`, one JSON record per
//! change, each synced before the change is visible). Changes are rare and small, so the file is
//! never compacted.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use factstore_core::Timestamp;
use factstore_engine::backup::DurableFile;
use factstore_engine::io::FileSystem;
use factstore_engine::journal::Journal;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::SchemaError;
use crate::upcast::UpcastOp;

/// One change of the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    Schema {
        event_type: String,
        version: u32,
        schema: Value,
        registered_at: Timestamp,
    },
    Upcaster {
        event_type: String,
        from_version: u32,
        to_version: u32,
        ops: Vec<UpcastOp>,
        registered_at: Timestamp,
    },
}

/// The registry's persistence.
pub trait SchemaStorage: Send + Sync + Debug {
    /// Every record stored, in the order they were appended.
    fn load(&self) -> Result<Vec<Record>, SchemaError>;
    /// Appends a record durably: `Ok` means it survives a crash. Blocking. A storage shared
    /// by several servers refuses with [`SchemaError::Stale`], writing nothing, when records
    /// were appended elsewhere since it last read ([`SchemaStorage::load`],
    /// [`SchemaStorage::load_new`] or an append of its own).
    fn append(&self, record: &Record) -> Result<(), SchemaError>;
    /// The records appended elsewhere since this storage last read or appended, in order.
    /// A storage that only this registry writes has none.
    fn load_new(&self) -> Result<Vec<Record>, SchemaError> {
        Ok(Vec::new())
    }
    /// The file and its synced length, for a backup; `None` for a storage that is not a file
    /// of the data folder.
    fn durable(&self) -> Option<DurableFile> {
        None
    }
}

/// Records in memory only (tests, and servers built without a data folder).
#[derive(Debug, Default)]
pub struct MemoryStorage(Mutex<Vec<Record>>);

impl SchemaStorage for MemoryStorage {
    fn load(&self) -> Result<Vec<Record>, SchemaError> {
        Ok(self.0.lock().clone())
    }

    fn append(&self, record: &Record) -> Result<(), SchemaError> {
        self.0.lock().push(record.clone());
        Ok(())
    }
}

/// `FSSCHEMA`: the magic of the registry's journal.
pub const JOURNAL_MAGIC: [u8; 8] = *b"FSSCHEMA";
/// The journal's name in its folder.
pub const JOURNAL_FILE: &str = "registry.journal";

/// The registry in a journal of the engine, in `dir`.
#[derive(Debug)]
pub struct JournalStorage {
    journal: Journal,
    /// The records read at open, handed to the registry once.
    opened: Mutex<Option<Vec<Record>>>,
}

impl JournalStorage {
    /// Opens (creating when missing) the journal in `dir` and reads its records.
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path) -> Result<JournalStorage, SchemaError> {
        let path = dir.join(JOURNAL_FILE);
        let (journal, bodies) =
            Journal::open(fs, &path, JOURNAL_MAGIC).map_err(|e| SchemaError::Unavailable(e.to_string()))?;
        let records = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                serde_json::from_slice(body).map_err(|e| {
                    SchemaError::Unavailable(format!(
                        "record {i} of {} is not a registry record: {e}",
                        path.display()
                    ))
                })
            })
            .collect::<Result<Vec<Record>, _>>()?;
        Ok(JournalStorage {
            journal,
            opened: Mutex::new(Some(records)),
        })
    }
}

impl SchemaStorage for JournalStorage {
    fn load(&self) -> Result<Vec<Record>, SchemaError> {
        Ok(self.opened.lock().take().unwrap_or_default())
    }

    fn append(&self, record: &Record) -> Result<(), SchemaError> {
        let body = serde_json::to_vec(record).map_err(|e| SchemaError::Unavailable(e.to_string()))?;
        self.journal
            .append(&[&body])
            .map_err(|e| SchemaError::Unavailable(e.to_string()))
    }

    fn durable(&self) -> Option<DurableFile> {
        Some(self.journal.durable())
    }
}
