//! The on-disk format, pinned. Each test writes a file byte by byte from `docs/format.md`,
//! with CRC32C computed here and no call to the engine's encoders, then opens it with the
//! engine's readers and requires every field back exactly.
//!
//! These bytes are what stores written by released versions hold. A change of an encoder or a
//! decoder that would no longer read them fails here; the fix is then a new format version
//! with a reader (or a migration) for this one, not an edit of these fixtures.
//!
//! Pinned: a segment (header, two frames, records and event bodies with every optional field
//! present and absent) opened by the engine and read by every read path; the index manifest;
//! an index run (blocks, block index, bloom filter, position table, footer) named by the
//! manifest, so that reads go through it; a journal (the framing of the projection,
//! subscription-group and schema journals); the archive manifest; the snapshot log.

use std::path::Path;
use std::sync::Arc;

use factstore_core::{
    AggregateQuery, Commit, Direction, EventFilter, EventQuery, ExpectedVersion, NewEvent, Snapshot,
    Timestamp,
};
use factstore_engine::archive::manifest::{ArchivedSegment, check_sequence};
use factstore_engine::index::manifest::{Manifest, ManifestRun};
use factstore_engine::io::StdFileSystem;
use factstore_engine::journal::{Journal, decode_all};
use factstore_engine::snapshots::Snapshots;
use factstore_engine::{Engine, EngineOptions};
use uuid::Uuid;

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn u16le(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn u32le(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn u64le(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn i64le(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Segment: header, frames, records, event bodies ("Segment files")

/// One event as the fixture writes it.
#[derive(Debug, Clone)]
struct Ev {
    position: u64,
    version: u64,
    event_id: Uuid,
    created_at: i64,
    recorded_at: i64,
    event_version: u32,
    aggregate_id: &'static str,
    aggregate_type: &'static str,
    event_type: &'static str,
    created_by: Option<&'static str>,
    correlation_id: Option<&'static str>,
    causation_id: Option<&'static str>,
    event_data: &'static str,
    metadata: Option<&'static str>,
}

/// "Event body": the 68-byte header, then the texts and payloads with no padding.
fn event_body(e: &Ev) -> Vec<u8> {
    let mut out = Vec::new();
    u64le(&mut out, e.position);
    u64le(&mut out, e.version);
    out.extend_from_slice(e.event_id.as_bytes()); // RFC 4122 byte order
    i64le(&mut out, e.created_at);
    i64le(&mut out, e.recorded_at);
    u32le(&mut out, e.event_version);
    u16le(&mut out, e.aggregate_id.len() as u16);
    out.push(e.aggregate_type.len() as u8);
    out.push(e.event_type.len() as u8);
    out.push(e.created_by.map_or(0, str::len) as u8);
    let flags = u8::from(e.created_by.is_some())
        | u8::from(e.metadata.is_some()) << 1
        | u8::from(e.correlation_id.is_some()) << 2
        | u8::from(e.causation_id.is_some()) << 3;
    out.push(flags);
    out.push(e.correlation_id.map_or(0, str::len) as u8);
    out.push(e.causation_id.map_or(0, str::len) as u8);
    u32le(&mut out, e.event_data.len() as u32);
    u32le(&mut out, e.metadata.map_or(0, str::len) as u32);
    assert_eq!(out.len(), 68, "the event header is 68 bytes");
    for text in [
        e.aggregate_id,
        e.aggregate_type,
        e.event_type,
        e.created_by.unwrap_or(""),
        e.correlation_id.unwrap_or(""),
        e.causation_id.unwrap_or(""),
        e.event_data,
        e.metadata.unwrap_or(""),
    ] {
        out.extend_from_slice(text.as_bytes());
    }
    out
}

/// "Record": body length, CRC32C of the body, the body.
fn record(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    u32le(&mut out, body.len() as u32);
    u32le(&mut out, crc(body));
    out.extend_from_slice(body);
    out
}

/// "Frame": the 32-byte header (CRC over header bytes 0..24 then the body), then the records.
fn frame(first_position: u64, events: &[&Ev], commits: u32) -> Vec<u8> {
    let body: Vec<u8> = events.iter().flat_map(|e| record(&event_body(e))).collect();
    let mut out = Vec::new();
    u32le(&mut out, 0xFAC7_F4A3);
    u32le(&mut out, body.len() as u32);
    u64le(&mut out, first_position);
    u32le(&mut out, events.len() as u32);
    u32le(&mut out, commits);
    let mut covered = out.clone();
    covered.extend_from_slice(&body);
    u32le(&mut out, crc(&covered));
    u32le(&mut out, 0);
    assert_eq!(out.len(), 32, "the frame header is 32 bytes");
    out.extend_from_slice(&body);
    out
}

/// "Segment header": magic, version 1, segment number, first position, reserved, CRC.
fn segment_header(segment_no: u32, first_position: u64) -> Vec<u8> {
    let mut out = b"FACTSEG\0".to_vec();
    u32le(&mut out, 1);
    u32le(&mut out, segment_no);
    u64le(&mut out, first_position);
    u32le(&mut out, 0);
    let sum = crc(&out);
    u32le(&mut out, sum);
    assert_eq!(out.len(), 32, "the segment header is 32 bytes");
    out
}

/// A `Loc`: segment number in the high 32 bits, the record's offset in the low 32.
fn loc(segment_no: u32, offset: usize) -> u64 {
    (u64::from(segment_no) << 32) | offset as u64
}

const T0: i64 = 1_700_000_000_000_000;

/// Three events of two aggregates: the first without any optional field, the second with
/// `created_by`, metadata and a correlation id, the third with every field (and text that is
/// not ASCII).
fn events() -> [Ev; 3] {
    let first = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    let second = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);
    let third = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0003);
    [
        Ev {
            position: 1,
            version: 1,
            event_id: first,
            created_at: T0,
            recorded_at: T0 + 10,
            event_version: 1,
            aggregate_id: "account:1",
            aggregate_type: "Account",
            event_type: "Opened",
            created_by: None,
            correlation_id: None,
            causation_id: None,
            event_data: r#"{"owner":"ann"}"#,
            metadata: None,
        },
        Ev {
            position: 2,
            version: 2,
            event_id: second,
            created_at: T0 + 1_000,
            recorded_at: T0 + 10,
            event_version: 2,
            aggregate_id: "account:1",
            aggregate_type: "Account",
            event_type: "Deposited",
            created_by: Some("teller"),
            correlation_id: Some("corr-1"),
            causation_id: None,
            event_data: r#"{"amount":5}"#,
            metadata: Some(r#"{"correlation_id":"corr-1"}"#),
        },
        Ev {
            position: 3,
            version: 1,
            event_id: third,
            created_at: T0 + 2_000,
            recorded_at: T0 + 3_000,
            event_version: 7,
            aggregate_id: "account:2",
            aggregate_type: "Account",
            event_type: "Opened",
            created_by: Some("opérateur"),
            correlation_id: Some("corr-1"),
            causation_id: Some("0190…0002"),
            event_data: r#"{"owner":"bé","tags":["a",1,null]}"#,
            metadata: Some(r#"{"correlation_id":"corr-1","causation_id":"0190…0002"}"#),
        },
    ]
}

/// Segment 1: its header, a frame with the first two events (one commit), a frame with the
/// third. Also returns the offset of the second frame (where the index resumes after 2).
fn segment_bytes(events: &[Ev; 3]) -> (Vec<u8>, usize) {
    let mut out = segment_header(1, 1);
    out.extend_from_slice(&frame(1, &[&events[0], &events[1]], 1));
    let second_frame = out.len();
    out.extend_from_slice(&frame(3, &[&events[2]], 1));
    (out, second_frame)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
    std::fs::write(path, bytes).expect("write fixture");
}

fn ts(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}

/// Every field of `got` is the fixture's, and its bytes are the fixture's body.
fn assert_event(got: &factstore_core::Event, want: &Ev) {
    assert_eq!(got.position(), want.position);
    assert_eq!(got.version(), want.version);
    assert_eq!(got.event_id(), want.event_id);
    assert_eq!(got.created_at(), ts(want.created_at));
    assert_eq!(got.recorded_at(), ts(want.recorded_at));
    assert_eq!(got.event_version(), want.event_version);
    assert_eq!(got.aggregate_id(), want.aggregate_id);
    assert_eq!(got.aggregate_type(), want.aggregate_type);
    assert_eq!(got.event_type(), want.event_type);
    assert_eq!(got.created_by(), want.created_by);
    assert_eq!(got.correlation_id(), want.correlation_id);
    assert_eq!(got.causation_id(), want.causation_id);
    assert_eq!(got.event_data(), want.event_data);
    assert_eq!(got.metadata(), want.metadata);
    assert_eq!(got.as_bytes().as_ref(), event_body(want).as_slice());
}

fn assert_events(got: &[factstore_core::Event], want: &[&Ev]) {
    let positions: Vec<u64> = got.iter().map(|e| e.position()).collect();
    let wanted: Vec<u64> = want.iter().map(|e| e.position).collect();
    assert_eq!(positions, wanted);
    for (got, want) in got.iter().zip(want) {
        assert_event(got, want);
    }
}

fn query(filter: EventFilter) -> EventQuery {
    EventQuery {
        filter,
        ..EventQuery::all(0, 100)
    }
}

/// Reads the three fixture events back by every read path of the engine.
fn read_back_everything(engine: &Engine, ev: &[Ev; 3]) {
    let all = engine.read_events(&EventQuery::all(0, 100)).expect("scan");
    assert_events(&all.events, &[&ev[0], &ev[1], &ev[2]]);
    assert_eq!(all.head_position, 3);
    let head = engine.head();
    assert_eq!(head.position, 3);
    assert_eq!(head.recorded_at, Some(ts(ev[2].recorded_at)));
    let page = engine.read_events(&EventQuery::all(1, 1)).expect("page");
    assert_events(&page.events, &[&ev[1]]);

    let by = |filter: EventFilter| engine.read_events(&query(filter)).expect("filtered read").events;
    let filter = EventFilter::default;
    assert_events(
        &by(EventFilter {
            event_types: vec!["Deposited".into()],
            ..filter()
        }),
        &[&ev[1]],
    );
    assert_events(
        &by(EventFilter {
            event_types: vec!["Opened".into()],
            ..filter()
        }),
        &[&ev[0], &ev[2]],
    );
    assert_events(
        &by(EventFilter {
            correlation_id: Some("corr-1".into()),
            ..filter()
        }),
        &[&ev[1], &ev[2]],
    );
    assert_events(
        &by(EventFilter {
            causation_id: Some("0190…0002".into()),
            ..filter()
        }),
        &[&ev[2]],
    );
    assert_events(
        &by(EventFilter {
            aggregate_id: Some("account:2".into()),
            ..filter()
        }),
        &[&ev[2]],
    );
    assert_events(
        &by(EventFilter {
            aggregate_id_prefix: Some("account:".into()),
            ..filter()
        }),
        &[&ev[0], &ev[1], &ev[2]],
    );
    assert_events(
        &by(EventFilter {
            aggregate_type: Some("Account".into()),
            created_by: Some("opérateur".into()),
            ..filter()
        }),
        &[&ev[2]],
    );
    let created = engine
        .read_events(&EventQuery {
            from: Some(ts(T0 + 500)),
            to: Some(ts(T0 + 1_500)),
            ..EventQuery::all(0, 100)
        })
        .expect("created_at bounds");
    assert_events(&created.events, &[&ev[1]]);
    let as_of = engine
        .read_events(&EventQuery {
            as_of: Some(ts(T0 + 10)),
            ..EventQuery::all(0, 100)
        })
        .expect("as_of");
    assert_events(&as_of.events, &[&ev[0], &ev[1]]);

    let account1 = engine
        .read_aggregate(&AggregateQuery::forward("account:1", 100))
        .expect("aggregate");
    assert_eq!(account1.version, 2);
    assert_eq!(account1.aggregate_type, "Account");
    assert_events(&account1.events, &[&ev[0], &ev[1]]);
    let backward = engine
        .read_aggregate(&AggregateQuery {
            direction: Direction::Backward,
            ..AggregateQuery::forward("account:1", 100)
        })
        .expect("backward");
    assert_events(&backward.events, &[&ev[1], &ev[0]]);
    let from_two = engine
        .read_aggregate(&AggregateQuery {
            from_version: Some(2),
            ..AggregateQuery::forward("account:1", 100)
        })
        .expect("from version");
    assert_events(&from_two.events, &[&ev[1]]);
    let account2 = engine
        .read_aggregate(&AggregateQuery::forward("account:2", 100))
        .expect("aggregate");
    assert_eq!(account2.version, 1);
    assert_events(&account2.events, &[&ev[2]]);

    for e in ev {
        assert_event(&engine.get_event(e.event_id).expect("by id"), e);
    }
}

/// The engine appends after the hand-written frames and leaves their bytes alone; the
/// version numbering continues from the fixture's.
fn commit_after_and_reopen(dir: &Path, engine: Engine, ev: &[Ev; 3], segment: &[u8]) {
    let prepared = Commit::single(
        "account:2",
        ExpectedVersion::Exact(1),
        vec![NewEvent::new("Account", "Closed", serde_json::json!({}))],
    )
    .prepare(engine.limits())
    .expect("valid");
    let outcome = engine
        .commit_blocking(prepared)
        .expect("commit after the fixture");
    assert_eq!(outcome.position, 4);
    engine.close();
    drop(engine);
    let on_disk = std::fs::read(dir.join("log/0000000001.seg")).expect("read segment");
    assert_eq!(
        &on_disk[..segment.len()],
        segment,
        "the fixture's bytes are untouched"
    );
    let engine = Engine::open(dir, EngineOptions::default()).expect("reopen");
    let all = engine.read_events(&EventQuery::all(0, 100)).expect("scan");
    assert_eq!(all.events.len(), 4);
    assert_events(&all.events[..3], &[&ev[0], &ev[1], &ev[2]]);
    assert_eq!(all.events[3].version(), 2);
    engine.close();
}

/// A data folder holding only `log/0000000001.seg`: recovery replays it whole.
#[test]
fn a_hand_written_segment_opens_and_reads_back_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ev = events();
    let (segment, _) = segment_bytes(&ev);
    write(&dir.path().join("log/0000000001.seg"), &segment);
    // The offline checker reads every header field (recovery does not check the first
    // segment's first position: the frames' own positions are checked instead).
    let report = factstore_engine::verify::verify(&StdFileSystem, dir.path()).expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.events, report.aggregates), (3, 2));
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open the fixture");
    read_back_everything(&engine, &ev);
    commit_after_and_reopen(dir.path(), engine, &ev, &segment);
}

// ---------------------------------------------------------------------------------------------
// Index manifest ("Index manifest")

fn manifest_bytes(json: &str) -> Vec<u8> {
    let mut out = b"FSTMANI1".to_vec();
    u32le(&mut out, json.len() as u32);
    u32le(&mut out, crc(json.as_bytes()));
    out.extend_from_slice(json.as_bytes());
    out
}

#[test]
fn a_hand_written_index_manifest_loads_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = r#"{"format":1,"indexed_through":2,"resume":4294967388,"next_run_id":8,"last_recorded_at":1700000000000010,"runs":[{"id":5,"level":1},{"id":7,"level":0}]}"#;
    write(&dir.path().join("MANIFEST"), &manifest_bytes(json));
    let manifest = Manifest::load(&StdFileSystem, dir.path())
        .expect("load")
        .expect("a manifest");
    assert_eq!(
        manifest,
        Manifest {
            format: 1,
            indexed_through: 2,
            resume: loc(1, 92),
            next_run_id: 8,
            last_recorded_at: T0 + 10,
            runs: vec![ManifestRun { id: 5, level: 1 }, ManifestRun { id: 7, level: 0 }],
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Index run ("Index run files", "Index keys", "Position table")

/// An index key and its value, before the run sorts them.
fn index_entries(ev: &[Ev; 3], locs: &[u64; 3]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for (e, &at) in ev.iter().zip(locs) {
        let pos_loc = {
            let mut v = Vec::new();
            u64le(&mut v, e.position);
            u64le(&mut v, at);
            v
        };
        let mut a = vec![b'A'];
        a.extend_from_slice(e.aggregate_id.as_bytes());
        a.push(0);
        a.extend_from_slice(&e.version.to_be_bytes());
        out.push((a, pos_loc.clone()));
        let mut id = vec![b'E'];
        id.extend_from_slice(e.event_id.as_bytes());
        out.push((id, pos_loc));
        let mut term = |tag: u8, text: &str| {
            let mut key = vec![tag];
            key.extend_from_slice(&(text.len() as u16).to_be_bytes());
            key.extend_from_slice(text.as_bytes());
            key.extend_from_slice(&e.position.to_be_bytes());
            out.push((key, at.to_le_bytes().to_vec()));
        };
        term(b'T', e.event_type);
        if let Some(c) = e.correlation_id {
            term(b'C', c);
        }
        if let Some(c) = e.causation_id {
            term(b'K', c);
        }
    }
    out.sort();
    out
}

/// The bloom key of an index key: without its 8-byte suffix, whole for event ids.
fn bloom_key(key: &[u8]) -> &[u8] {
    if key[0] == b'E' {
        key
    } else {
        &key[..key.len() - 8]
    }
}

/// "Bloom filter": k probes of xxh3-128 with fastrange into 64·w bits.
fn bloom(keys: &[&[u8]], words: usize) -> Vec<u8> {
    let k = 7u32;
    let mut bits = vec![0u64; words];
    let m = (64 * words) as u128;
    for key in keys {
        let h = xxhash_rust::xxh3::xxh3_128(key);
        let h1 = h as u64;
        let h2 = ((h >> 64) as u64) | 1;
        for i in 0..u64::from(k) {
            let probe = h1.wrapping_add(i.wrapping_mul(h2));
            let bit = ((u128::from(probe) * m) >> 64) as usize;
            bits[bit / 64] |= 1 << (bit % 64);
        }
    }
    let mut out = Vec::new();
    u32le(&mut out, k);
    u32le(&mut out, words as u32);
    for word in bits {
        u64le(&mut out, word);
    }
    out
}

/// A run file holding `entries` in two blocks (so the block index has two entries and the
/// second block's first key is stored whole), with `extra` as its position table.
fn run_bytes(entries: &[(Vec<u8>, Vec<u8>)], extra: &[u8]) -> Vec<u8> {
    let mut out = b"FACTRUN\0".to_vec();
    u32le(&mut out, 2);
    let sum = crc(&out);
    u32le(&mut out, sum);
    let split = entries.len() / 2;
    let mut index = Vec::new();
    for block_entries in [&entries[..split], &entries[split..]] {
        let start = out.len();
        let mut block = Vec::new();
        let mut previous: &[u8] = &[];
        for (key, value) in block_entries {
            let shared = previous
                .iter()
                .zip(key.iter())
                .take_while(|(a, b)| a == b)
                .count();
            u16le(&mut block, shared as u16);
            u32le(&mut block, (key.len() - shared) as u32);
            u32le(&mut block, value.len() as u32);
            block.extend_from_slice(&key[shared..]);
            block.extend_from_slice(value);
            previous = key;
        }
        u32le(&mut block, block_entries.len() as u32);
        let sum = crc(&block);
        u32le(&mut block, sum);
        out.extend_from_slice(&block);
        u64le(&mut index, start as u64);
        u32le(&mut index, block.len() as u32);
        u32le(&mut index, block_entries.len() as u32);
        u32le(&mut index, block_entries[0].0.len() as u32);
        index.extend_from_slice(&block_entries[0].0);
    }
    let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| bloom_key(k)).collect();
    let bloom = bloom(&keys, 2);
    let index_offset = out.len();
    out.extend_from_slice(&index);
    let bloom_offset = out.len();
    out.extend_from_slice(&bloom);
    let extra_offset = out.len();
    out.extend_from_slice(extra);
    let mut footer = Vec::new();
    for v in [
        entries.len(),
        2,
        index_offset,
        index.len(),
        bloom_offset,
        bloom.len(),
        extra_offset,
        extra.len(),
    ] {
        u64le(&mut footer, v as u64);
    }
    u32le(&mut footer, crc(&index));
    u32le(&mut footer, crc(&bloom));
    u32le(&mut footer, crc(extra));
    u32le(&mut footer, 0);
    u32le(&mut footer, 2);
    let sum = crc(&footer);
    u32le(&mut footer, sum);
    footer.extend_from_slice(b"FACTRUN\0");
    assert_eq!(footer.len(), 96, "the run footer is 96 bytes");
    out.extend_from_slice(&footer);
    out
}

/// "Position table" of positions 1..=2, one sample.
fn position_table(ev: &[Ev; 3], first_loc: u64) -> Vec<u8> {
    let mut out = Vec::new();
    u64le(&mut out, 3); // one past the last position covered
    u64le(&mut out, 1);
    u64le(&mut out, 1);
    u64le(&mut out, first_loc);
    i64le(&mut out, ev[0].created_at.min(ev[1].created_at));
    i64le(&mut out, ev[0].created_at.max(ev[1].created_at));
    i64le(&mut out, ev[0].recorded_at);
    out
}

/// A data folder with the segment, a manifest that says positions 1 and 2 are indexed, and
/// the run holding them: reads of the first two events go through the run (recovery replays
/// only the third), so the run's every part is read.
#[test]
fn a_hand_written_index_run_and_manifest_serve_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ev = events();
    let (segment, second_frame) = segment_bytes(&ev);
    write(&dir.path().join("log/0000000001.seg"), &segment);
    // The records of the first frame: after the segment header and the frame header.
    let first_record = 32 + 32;
    let second_record = first_record + 8 + event_body(&ev[0]).len();
    let locs = [loc(1, first_record), loc(1, second_record), 0];
    let entries: Vec<_> = index_entries(&ev, &locs)
        .into_iter()
        .filter(|(key, value)| {
            // Only positions 1 and 2 (the third event is after the checkpoint).
            let position_of = |v: &[u8]| u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
            match key[0] {
                b'A' | b'E' => position_of(value) <= 2,
                _ => u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8")) <= 2,
            }
        })
        .collect();
    // A, E and T of both events, and C of the second.
    assert_eq!(entries.len(), 7);
    let run = run_bytes(&entries, &position_table(&ev, locs[0]));
    write(&dir.path().join("index/000000000005.run"), &run);
    let json = format!(
        r#"{{"format":1,"indexed_through":2,"resume":{},"next_run_id":6,"last_recorded_at":{},"runs":[{{"id":5,"level":0}}]}}"#,
        loc(1, second_frame),
        ev[1].recorded_at
    );
    write(&dir.path().join("index/MANIFEST"), &manifest_bytes(&json));
    // The offline checker reads every block and compares the index with the log.
    let report = factstore_engine::verify::verify(&StdFileSystem, dir.path()).expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.events, report.runs, report.index_entries), (3, 1, 7));
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open the fixture");
    read_back_everything(&engine, &ev);
    commit_after_and_reopen(dir.path(), engine, &ev, &segment);
    assert_eq!(
        std::fs::read(dir.path().join("index/000000000005.run"))
            .ok()
            .as_deref(),
        Some(run.as_slice()),
        "runs are immutable"
    );
}

// ---------------------------------------------------------------------------------------------
// Journals ("Journals"): projection, subscription-group and schema journals share this framing

fn journal_header(magic: &[u8; 8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    u32le(&mut out, 1);
    let sum = crc(&out);
    u32le(&mut out, sum);
    out
}

/// One append: "JREC", body length, CRC32C of the length bytes and the body, the body (each
/// record as a length and its bytes).
fn journal_frame(records: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for r in records {
        u32le(&mut body, r.len() as u32);
        body.extend_from_slice(r);
    }
    let len = (body.len() as u32).to_le_bytes();
    let mut covered = len.to_vec();
    covered.extend_from_slice(&body);
    let mut out = b"JREC".to_vec();
    out.extend_from_slice(&len);
    u32le(&mut out, crc(&covered));
    out.extend_from_slice(&body);
    out
}

#[test]
fn a_hand_written_projection_journal_opens_with_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("projections/balances/gen-1.journal");
    let definition = br#"{"type":"definition","definition":{"name":"balances"}}"#;
    let live = br#"{"type":"live"}"#;
    let batch = br#"{"type":"batch","position":3,"unkeyed":0,"states":[]}"#;
    let mut bytes = journal_header(b"FSPROJ01");
    bytes.extend_from_slice(&journal_frame(&[definition, live]));
    bytes.extend_from_slice(&journal_frame(&[]));
    bytes.extend_from_slice(&journal_frame(&[batch, b""]));
    write(&path, &bytes);
    let want = vec![definition.to_vec(), live.to_vec(), batch.to_vec(), Vec::new()];
    assert_eq!(decode_all(&bytes, *b"FSPROJ01", &path).expect("decode"), want);
    let (journal, records) =
        Journal::open(Arc::new(StdFileSystem), &path, *b"FSPROJ01").expect("open the fixture");
    assert_eq!(records, want);
    assert_eq!(journal.len(), bytes.len() as u64, "nothing was cut");
    // An append goes after the fixture's frames and leaves them alone.
    journal.append(&[b"more"]).expect("append");
    drop(journal);
    let after = std::fs::read(&path).expect("read");
    assert_eq!(&after[..bytes.len()], bytes.as_slice());
    assert_eq!(&after[bytes.len()..], journal_frame(&[b"more"]).as_slice());
}

/// A subscription group's journal: the framing with its magic (the records' own layout is
/// pinned by the subscriptions crate).
#[test]
fn a_hand_written_group_journal_opens_with_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("subscriptions/6f7264657273.group");
    let ack = [2u8, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
    let mut bytes = journal_header(b"FSSUBGRP");
    bytes.extend_from_slice(&journal_frame(&[b"\x01image"]));
    bytes.extend_from_slice(&journal_frame(&[&ack]));
    write(&path, &bytes);
    let (_, records) = Journal::open(Arc::new(StdFileSystem), &path, *b"FSSUBGRP").expect("open the fixture");
    assert_eq!(records, vec![b"\x01image".to_vec(), ack.to_vec()]);
}

// ---------------------------------------------------------------------------------------------
// Archive manifest ("Archive manifest")

#[test]
fn a_hand_written_archive_manifest_decodes_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("archive/manifest.journal");
    let record = |no: u32, first: u64, last: u64, len: u64, packed: u64, xxh: u64, at: i64| {
        let mut out = vec![1, 0, 0, 0];
        u32le(&mut out, no);
        u64le(&mut out, first);
        u64le(&mut out, last);
        u64le(&mut out, len);
        u64le(&mut out, packed);
        u64le(&mut out, xxh);
        i64le(&mut out, at);
        assert_eq!(out.len(), 56, "an archive record is 56 bytes");
        out
    };
    let first = record(1, 1, 100, 65_536, 9_000, 0x0123_4567_89ab_cdef, T0);
    let second = record(2, 101, 150, 40_000, 5_000, 0xfedc_ba98_7654_3210, T0 + 99);
    let mut bytes = journal_header(b"FSARCHV1");
    bytes.extend_from_slice(&journal_frame(&[&first]));
    bytes.extend_from_slice(&journal_frame(&[&second]));
    write(&path, &bytes);
    let (_, records) = Journal::open(Arc::new(StdFileSystem), &path, *b"FSARCHV1").expect("open the fixture");
    let decoded: Vec<ArchivedSegment> = records
        .iter()
        .map(|r| ArchivedSegment::decode(r).expect("decode"))
        .collect();
    assert_eq!(
        decoded,
        vec![
            ArchivedSegment {
                segment_no: 1,
                first_position: 1,
                last_position: 100,
                len: 65_536,
                compressed_len: 9_000,
                checksum: 0x0123_4567_89ab_cdef,
                last_recorded_at: T0,
            },
            ArchivedSegment {
                segment_no: 2,
                first_position: 101,
                last_position: 150,
                len: 40_000,
                compressed_len: 5_000,
                checksum: 0xfedc_ba98_7654_3210,
                last_recorded_at: T0 + 99,
            },
        ]
    );
    assert_eq!(check_sequence(&decoded), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Snapshot log ("Snapshot log")

fn snapshot_record(
    version: u64,
    snapshot_version: u32,
    created_at: i64,
    id: &str,
    kind: &str,
    state: &str,
) -> Vec<u8> {
    let mut body = Vec::new();
    u64le(&mut body, version);
    u32le(&mut body, snapshot_version);
    i64le(&mut body, created_at);
    u16le(&mut body, id.len() as u16);
    body.push(kind.len() as u8);
    body.push(0);
    u32le(&mut body, state.len() as u32);
    assert_eq!(body.len(), 28, "the fixed part of a snapshot body is 28 bytes");
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(kind.as_bytes());
    body.extend_from_slice(state.as_bytes());
    let mut out = b"SNAP".to_vec();
    u32le(&mut out, body.len() as u32);
    u32le(&mut out, crc(&body));
    out.extend_from_slice(&body);
    out
}

#[test]
fn a_hand_written_snapshot_log_opens_with_its_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("snapshots");
    let mut bytes = b"FSSNAPLG".to_vec();
    u32le(&mut bytes, 1);
    let sum = crc(&bytes);
    u32le(&mut bytes, sum);
    bytes.extend_from_slice(&snapshot_record(
        2,
        1,
        T0,
        "account:1",
        "Balance",
        r#"{"total":5}"#,
    ));
    bytes.extend_from_slice(&snapshot_record(
        4,
        3,
        T0 + 7,
        "account:1",
        "Balance",
        r#"{"total":9}"#,
    ));
    bytes.extend_from_slice(&snapshot_record(1, 1, -5, "compte:é", "Solde", "{}"));
    write(&folder.join("snapshots.log"), &bytes);
    let snapshots = Snapshots::open(&StdFileSystem, &folder).expect("open the fixture");
    let snapshot = |id: &str, version: u64, kind: &str, sv: u32, state: &str, at: i64| Snapshot {
        aggregate_id: id.into(),
        version,
        snapshot_type: kind.into(),
        snapshot_version: sv,
        state: state.into(),
        created_at: ts(at),
    };
    assert_eq!(
        snapshots.latest("account:1", None).expect("latest"),
        Some(snapshot("account:1", 4, "Balance", 3, r#"{"total":9}"#, T0 + 7))
    );
    assert_eq!(
        snapshots.latest("account:1", Some(3)).expect("latest"),
        Some(snapshot("account:1", 2, "Balance", 1, r#"{"total":5}"#, T0))
    );
    assert_eq!(
        snapshots.latest("compte:é", None).expect("latest"),
        Some(snapshot("compte:é", 1, "Solde", 1, "{}", -5))
    );
    let listed: Vec<u64> = snapshots.list("account:1").iter().map(|s| s.version).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&2) && listed.contains(&4));
    drop(snapshots);
    assert_eq!(
        std::fs::read(folder.join("snapshots.log")).expect("read"),
        bytes,
        "nothing was cut"
    );
}
