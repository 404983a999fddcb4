//! Any bytes as a snapshot record and as a whole snapshot log: `decode_record` never panics and
//! an accepted record encodes back to its bytes; `Snapshots::open` refuses naming the file, or
//! every snapshot it lists reads back and a put survives a reopen. The checks are those of the
//! `decode_props` tests (`state_files.rs`, included here).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/engine/tests/decode_props/state_files.rs"]
#[allow(dead_code)]
mod state_files;

fuzz_target!(|data: &[u8]| {
    state_files::check_snapshot_log(data);
});
