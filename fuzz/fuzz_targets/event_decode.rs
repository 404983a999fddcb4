//! `Event::from_bytes` on any bytes. An event it accepts must answer every accessor without
//! panicking, encode back to the same bytes, and render JSON that parses whenever its payloads
//! are JSON. The checks are those of the `decode_props` tests (`decoders.rs`, included here).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/engine/tests/decode_props/decoders.rs"]
#[allow(dead_code)]
mod decoders;

fuzz_target!(|data: &[u8]| {
    decoders::check_event(data);
});
