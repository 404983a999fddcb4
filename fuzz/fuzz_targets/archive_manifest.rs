//! Any bytes as the archive manifest (`archive/manifest.journal`) and as one of its records:
//! `ArchivedSegment::decode` and `check_sequence` never panic, and an accepted record encodes
//! back to its bytes. The checks are those of the `decode_props` tests (`state_files.rs`,
//! included here).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/engine/tests/decode_props/state_files.rs"]
#[allow(dead_code)]
mod state_files;

fuzz_target!(|data: &[u8]| {
    state_files::check_archive_record(data);
    state_files::check_archive_manifest(data);
});
