//! What the readers of the files beside the event log must do with any bytes: the checks
//! shared by the `decode_props` property tests and the `journal_decode`, `snapshot_log` and
//! `archive_manifest` fuzz targets (`fuzz/`, which include this file by path).
//!
//! - [`check_journal`]: the bytes as a journal file. `journal::decode_all` never panics;
//!   `Journal::open` on the same bytes agrees with it (the same records, or a refusal naming
//!   the file), cuts exactly the torn tail, and then takes an append that a reopen returns.
//! - [`check_snapshot_log`]: the bytes as one snapshot record (`decode_record`; an accepted
//!   record encodes back to the same bytes), then as a whole snapshot log opened by
//!   `Snapshots::open`: refused naming the file, or every snapshot it lists reads back, and a
//!   put after them survives a reopen.
//! - [`check_archive_manifest`]: the bytes as the archive manifest's journal: every record
//!   either refused by `ArchivedSegment::decode` or encoding back to its bytes, and
//!   `check_sequence` (which start-up runs over them) never panics.

use std::path::Path;
use std::sync::Arc;

use factstore_core::{Snapshot, Timestamp};
use factstore_engine::EngineError;
use factstore_engine::archive::manifest::{self, ArchivedSegment};
use factstore_engine::io::FileSystem;
use factstore_engine::journal::{self, Journal};
use factstore_engine::snapshots::{self, Snapshots};
use factstore_testkit::faultfs::FaultFs;

/// The journal magic the checks use (a projection journal's).
pub const JOURNAL_MAGIC: [u8; 8] = *b"FSPROJ01";

/// A refusal must be corruption naming the file (never a panic, never an I/O error from an
/// in-memory disk).
fn assert_names(error: &EngineError, path: &Path) {
    assert!(
        matches!(error, EngineError::Corruption { path: named, .. } if named == path),
        "refused without naming {}: {error}",
        path.display()
    );
}

/// `data` as a journal with `magic`: see the module documentation. Returns the records when
/// the file opens.
pub fn check_journal(data: &[u8], magic: [u8; 8]) -> Option<Vec<Vec<u8>>> {
    let path = Path::new("/data/state.journal");
    let decoded = journal::decode_all(data, magic, path);
    if let Ok(records) = &decoded {
        let framing: usize = records.iter().map(|r| 4 + r.len()).sum();
        assert!(framing <= data.len(), "records longer than the file");
    }
    let fs = FaultFs::new();
    fs.install_file(path, data).expect("install the journal");
    let fs: Arc<dyn FileSystem> = Arc::new(fs);
    let opened = Journal::open(fs.clone(), path, magic);
    let (journal, records) = match (opened, decoded) {
        (Ok(opened), Ok(decoded)) => {
            assert_eq!(opened.1, decoded, "open and decode_all disagree");
            opened
        }
        (Err(error), Err(_)) => {
            assert_names(&error, path);
            return None;
        }
        (opened, decoded) => panic!(
            "open and decode_all disagree: {:?} / {:?}",
            opened.map(|(_, r)| r),
            decoded
        ),
    };
    // What open kept is the header and whole frames: a prefix of the file (or a new header
    // when the file held less than one).
    let kept = usize::try_from(journal.len()).expect("small");
    if data.len() >= journal::HEADER_LEN as usize {
        assert!(kept <= data.len());
    }
    journal.append(&[b"after", b""]).expect("an append after open");
    drop(journal);
    let (_, again) = Journal::open(fs, path, magic).expect("reopen after an append");
    let mut want = records.clone();
    want.extend([b"after".to_vec(), Vec::new()]);
    assert_eq!(again, want, "a reopen lost or changed records");
    Some(records)
}

/// `data` as one snapshot record, then as a snapshot log: see the module documentation.
/// Returns the (aggregate, version) pairs the opened log holds, sorted, when it opens.
pub fn check_snapshot_log(data: &[u8]) -> Option<Vec<(String, u64)>> {
    if let Ok(snapshot) = snapshots::decode_record(data) {
        assert_eq!(
            snapshots::encode_record(&snapshot),
            data,
            "an accepted snapshot record does not encode back to its bytes"
        );
    }
    let dir = Path::new("/data/snapshots");
    let path = dir.join(snapshots::SNAPSHOT_LOG);
    let fs = FaultFs::new();
    fs.install_file(&path, data).expect("install the log");
    let opened = match Snapshots::open(&fs, dir) {
        Ok(opened) => opened,
        Err(error) => {
            assert_names(&error, &path);
            return None;
        }
    };
    // Every listed snapshot reads back, checked again from its record.
    let ids = aggregate_ids(data);
    let mut held = Vec::new();
    for id in &ids {
        for info in opened.list(id) {
            held.push((id.clone(), info.version));
            let got = opened
                .latest(id, Some(info.version))
                .expect("a listed snapshot reads")
                .expect("a listed snapshot is there");
            assert_eq!((got.version, &got.aggregate_id), (info.version, id));
        }
    }
    let new = Snapshot {
        aggregate_id: "after".into(),
        version: 1,
        snapshot_type: "T".into(),
        snapshot_version: 1,
        state: "{}".into(),
        created_at: Timestamp::from_micros(0),
    };
    opened.put(&new).expect("a put after open");
    drop(opened);
    let reopened = Snapshots::open(&fs, dir).expect("reopen after a put");
    assert_eq!(
        reopened.latest("after", None).expect("read"),
        Some(new),
        "a reopen lost the put"
    );
    held.sort();
    Some(held)
}

/// The aggregate ids of the records that decode anywhere in `data` (to ask the map for them).
fn aggregate_ids(data: &[u8]) -> Vec<String> {
    let magic = snapshots::RECORD_MAGIC.to_le_bytes();
    let mut ids = Vec::new();
    for at in find_all(data, &magic) {
        let rest = &data[at..];
        let Some(len) = rest
            .get(4..8)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        else {
            continue;
        };
        let end = snapshots::RECORD_HEADER_LEN.saturating_add(len as usize);
        if let Some(record) = rest.get(..end)
            && let Ok(snapshot) = snapshots::decode_record(record)
        {
            ids.push(snapshot.aggregate_id);
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

fn find_all(data: &[u8], needle: &[u8]) -> Vec<usize> {
    data.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at)
        .collect()
}

/// `data` as the archive manifest's journal: see the module documentation.
pub fn check_archive_manifest(data: &[u8]) {
    let path = Path::new("/data/archive/manifest.journal");
    let Ok(records) = journal::decode_all(data, manifest::MAGIC, path) else {
        return;
    };
    let mut decoded = Vec::new();
    for record in &records {
        check_archive_record(record);
        match ArchivedSegment::decode(record) {
            Ok(segment) => decoded.push(segment),
            Err(_) => return,
        }
    }
    if manifest::check_sequence(&decoded).is_ok() {
        for segment in &decoded {
            assert!(segment.events() >= 1);
            let _ = segment.key();
        }
    }
}

/// `record` as one archive manifest record: refused, or it encodes back to its bytes.
pub fn check_archive_record(record: &[u8]) -> Option<ArchivedSegment> {
    let segment = ArchivedSegment::decode(record).ok()?;
    assert_eq!(
        segment.encode().as_slice(),
        record,
        "an accepted archive record does not encode back to its bytes"
    );
    let _ = manifest::check_sequence(&[segment]);
    Some(segment)
}
