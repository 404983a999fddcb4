//! Recovery of a damaged data folder. The input picks a fixture (a store the engine wrote: log
//! only, or with index runs and a manifest) and up to four damages: byte flips, truncations,
//! appended garbage, in any of its files (see `Damage::parse`). `Engine::open` must then refuse
//! with a `Corruption` or `Io` error naming a file, or open a store whose every read returns a
//! prefix of the committed events byte for byte (or a clean error that `verify` also reports),
//! and which takes a new commit and keeps it across a reopen. A single damage must lead to the
//! exact outcome `Fixture::expect` gives: a torn tail is cut off, anything else refused. The
//! checks are those of the `decode_props` tests (`damage.rs`, included here).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/engine/tests/decode_props/damage.rs"]
#[allow(dead_code)]
mod damage;

use damage::{Damage, Fixture, Kind};

fn fixture(kind: Kind) -> &'static Fixture {
    static LOG_ONLY: OnceLock<Fixture> = OnceLock::new();
    static INDEXED: OnceLock<Fixture> = OnceLock::new();
    match kind {
        Kind::LogOnly => LOG_ONLY.get_or_init(|| Fixture::build(Kind::LogOnly)),
        Kind::Indexed => INDEXED.get_or_init(|| Fixture::build(Kind::Indexed)),
    }
}

fuzz_target!(|data: &[u8]| {
    let (kind, damage) = Damage::parse(data);
    fixture(kind).run(&damage);
});
