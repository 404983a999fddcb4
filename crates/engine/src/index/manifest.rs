//! The index manifest: which run files make up the index, and where in the log the index ends.
//!
//! It is the index's checkpoint. Start-up reads it, opens the runs it names and replays only
//! the log after `resume`. It is replaced atomically: written to `MANIFEST.tmp`, synced, renamed
//! over `MANIFEST`, and the folder synced.
//!
//! ```text
//! 0   8  magic "FSTMANI1"
//! 8   4  length of the JSON body, u32 LE
//! 12  4  CRC32C of the JSON body, u32 LE
//! 16  …  JSON: {"format":1,"indexed_through":P,"resume":LOC,"next_run_id":N,
//!               "last_recorded_at":MICROS,"runs":[{"id":I,"level":L},…]}
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::io::{FileSystem, OpenMode};
use crate::log::format::le_u32;

const MAGIC: &[u8; 8] = b"FSTMANI1";
pub const FILE_NAME: &str = "MANIFEST";
const TMP_NAME: &str = "MANIFEST.tmp";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Every position up to and including this one is in the runs.
    pub indexed_through: u64,
    /// The log location of the first frame after `indexed_through` (a `Loc`), 0 when nothing
    /// is indexed yet.
    pub resume: u64,
    pub next_run_id: u64,
    /// `recorded_at` of the event at `indexed_through`, in microseconds.
    #[serde(default)]
    pub last_recorded_at: i64,
    pub runs: Vec<ManifestRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRun {
    pub id: u64,
    pub level: u32,
}

pub fn run_file_name(id: u64) -> String {
    format!("{id:012}.run")
}

pub fn parse_run_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".run")?;
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

impl Manifest {
    /// Reads the manifest of `dir`; `None` when there is none yet.
    pub fn load(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(FILE_NAME);
        if !fs.exists(&path).map_err(EngineError::io(&path))? {
            return Ok(None);
        }
        let file = fs.open(&path, OpenMode::Read).map_err(EngineError::io(&path))?;
        let len = file.len().map_err(EngineError::io(&path))?;
        let len =
            usize::try_from(len).map_err(|_| EngineError::corruption(&path, 0, "manifest too large"))?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, 0)
            .map_err(EngineError::io(&path))?;
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(EngineError::corruption(
                &path,
                0,
                "not a manifest (bad magic or too short)",
            ));
        }
        let body_len = le_u32(&bytes[8..12]) as usize;
        let body = bytes
            .get(16..16 + body_len)
            .ok_or_else(|| EngineError::corruption(&path, 8, "manifest body is truncated"))?;
        if crc32c::crc32c(body) != le_u32(&bytes[12..16]) {
            return Err(EngineError::corruption(&path, 12, "manifest checksum mismatch"));
        }
        let manifest: Manifest = serde_json::from_slice(body)
            .map_err(|e| EngineError::corruption(&path, 16, format!("manifest is not valid: {e}")))?;
        if manifest.format != 1 {
            return Err(EngineError::corruption(
                &path,
                16,
                format!("unsupported manifest format {}", manifest.format),
            ));
        }
        Ok(Some(manifest))
    }

    /// Replaces the manifest of `dir` atomically and durably.
    pub fn store(&self, fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        let tmp = dir.join(TMP_NAME);
        if fs.exists(&tmp).map_err(EngineError::io(&tmp))? {
            fs.remove_file(&tmp).map_err(EngineError::io(&tmp))?;
        }
        let body = serde_json::to_vec(self).map_err(|e| EngineError::Options(e.to_string()))?;
        let mut bytes = Vec::with_capacity(16 + body.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let file = fs
            .open(&tmp, OpenMode::CreateNew)
            .map_err(EngineError::io(&tmp))?;
        file.write_all_at(&bytes, 0).map_err(EngineError::io(&tmp))?;
        file.sync_data().map_err(EngineError::io(&tmp))?;
        let path = dir.join(FILE_NAME);
        fs.rename(&tmp, &path).map_err(EngineError::io(&path))?;
        fs.sync_dir(dir).map_err(EngineError::io(dir))?;
        Ok(())
    }
}
