//! The journal across crashes, failed syncs, torn writes and compactions.
//!
//! What its users (projections, persistent subscriptions) rely on: an acknowledged append is
//! there after any crash; an unacknowledged one leaves a prefix of its records, never a torn
//! one; a failed write or sync refuses every later write; a compaction cut short by a crash
//! leaves the old content or the new, never a mix.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use factstore_engine::EngineError;
use factstore_engine::io::FileSystem;
use factstore_engine::journal::Journal;
use factstore_testkit::faultfs::{CrashMode, FaultFs, Repeat};

const MAGIC: [u8; 8] = *b"FSTESTJR";

fn path() -> PathBuf {
    Path::new("/db/state").join("group.journal")
}

fn open(fs: &FaultFs) -> (Journal, Vec<Vec<u8>>) {
    let fs: Arc<dyn FileSystem> = Arc::new(fs.clone());
    Journal::open(fs, &path(), MAGIC).unwrap()
}

fn bodies(records: &[Vec<u8>]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect()
}

#[test]
fn acknowledged_appends_survive_a_crash_that_drops_unsynced_writes() {
    let fs = FaultFs::new();
    let (journal, _) = open(&fs);
    for i in 0..20 {
        journal.append(&[format!("ack {i}").as_bytes()]).unwrap();
    }
    drop(journal);
    fs.crash_with(CrashMode::DropUnsynced);
    let (_, records) = open(&fs);
    let expected: Vec<String> = (0..20).map(|i| format!("ack {i}")).collect();
    assert_eq!(bodies(&records), expected);
}

#[test]
fn a_power_loss_keeps_an_unacknowledged_append_whole_or_not_at_all() {
    for seed in 0..40 {
        let fs = FaultFs::new();
        let (journal, _) = open(&fs);
        journal.append(&[b"durable"]).unwrap();
        // The last append is written but its sync fails, so it was never acknowledged.
        fs.fail_sync_after(0, Repeat::Forever);
        let big = vec![b'x'; 3000];
        assert!(journal.append(&[&big, b"second", &big]).is_err());
        drop(journal);
        fs.clear_faults();
        fs.crash_with(CrashMode::PartialPersistence { seed });
        let (journal, records) = open(&fs);
        assert_eq!(records[0], b"durable");
        let written: Vec<Vec<u8>> = vec![big.clone(), b"second".to_vec(), big.clone()];
        assert!(
            records.len() == 1 || records[1..] == written[..],
            "seed {seed}: {} records",
            records.len()
        );
        journal.append(&[b"after"]).unwrap();
    }
}

#[test]
fn a_failed_sync_poisons_the_journal() {
    let fs = FaultFs::new();
    let (journal, _) = open(&fs);
    journal.append(&[b"one"]).unwrap();
    fs.fail_sync_after(0, Repeat::Once);
    assert!(matches!(journal.append(&[b"two"]), Err(EngineError::Io { .. })));
    // The disk works again, but the journal no longer knows what reached it.
    assert!(matches!(
        journal.append(&[b"three"]),
        Err(EngineError::Poisoned(_))
    ));
    assert!(matches!(
        journal.rewrite(&[b"image"]),
        Err(EngineError::Poisoned(_))
    ));
    assert!(journal.poisoned().is_some());
    drop(journal);
    fs.crash_with(CrashMode::DropUnsynced);
    let (journal, records) = open(&fs);
    assert_eq!(records[0], b"one");
    assert!(records.len() <= 2);
    assert!(records.len() == 1 || records[1] == b"two");
    journal.append(&[b"reopened"]).unwrap();
}

#[test]
fn a_torn_write_is_cut_at_the_next_open() {
    let fs = FaultFs::new();
    let (journal, _) = open(&fs);
    journal.append(&[b"whole"]).unwrap();
    fs.torn_write_after(0, 9);
    assert!(journal.append(&[b"torn record"]).is_err());
    drop(journal);
    fs.clear_faults();
    let (journal, records) = open(&fs);
    assert_eq!(bodies(&records), ["whole"]);
    journal.append(&[b"next"]).unwrap();
    drop(journal);
    assert_eq!(bodies(&open(&fs).1), ["whole", "next"]);
}

#[test]
fn a_crash_at_any_step_of_a_compaction_leaves_the_old_or_the_new_content() {
    // Count the syncs of a compaction, then crash after each number of them.
    let probe = FaultFs::new();
    let (journal, _) = open(&probe);
    journal.append(&[b"a", b"b"]).unwrap();
    let before = probe.stats().syncs();
    journal.rewrite(&[b"image"]).unwrap();
    let steps = probe.stats().syncs() - before;
    assert!(steps >= 2, "a compaction syncs the new file and the folder");
    for n in 0..=steps {
        let fs = FaultFs::new();
        let (journal, _) = open(&fs);
        journal.append(&[b"a", b"b"]).unwrap();
        fs.fail_sync_after(n, Repeat::Forever);
        let result = journal.rewrite(&[b"image"]);
        drop(journal);
        fs.clear_faults();
        fs.crash_with(CrashMode::DropUnsynced);
        let (_, records) = open(&fs);
        let got = bodies(&records);
        assert!(
            got == ["a", "b"] || got == ["image"],
            "crash after {n} syncs of a compaction left {got:?}"
        );
        if result.is_ok() {
            assert_eq!(got, ["image"]);
        }
    }
}
