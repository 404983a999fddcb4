//! Any bytes as a journal file (the projection, subscription-group, schema and archive journals
//! share its framing): `journal::decode_all` and `Journal::open` never panic and agree, and a
//! journal that opens takes an append that a reopen returns. The checks are those of the
//! `decode_props` tests (`state_files.rs`, included here).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/engine/tests/decode_props/state_files.rs"]
#[allow(dead_code)]
mod state_files;

fuzz_target!(|data: &[u8]| {
    state_files::check_journal(data, state_files::JOURNAL_MAGIC);
});
