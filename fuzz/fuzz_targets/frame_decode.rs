//! `FrameHeader::decode`, `check_body`, `record_head` and `split_records` on any bytes: no
//! panic, no allocation sized by a length field, and records that lie where they must. The
//! events of a frame that passes its checksum go through the event checks too. The checks are
//! those of the `decode_props` tests (`decoders.rs`, included here).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/engine/tests/decode_props/decoders.rs"]
#[allow(dead_code)]
mod decoders;

fuzz_target!(|data: &[u8]| {
    decoders::check_frame(data);
});
