//! Property tests of the decoders and of recovery: the checks of the fuzz targets in `fuzz/`,
//! run on stable with a bounded number of cases so that CI runs them on every change.
//!
//! - Events: any bytes, valid events, valid events with a flipped byte or cut short
//!   (`decode_props/decoders.rs`, shared with the `event_decode` fuzz target).
//! - Frames: the same for frames of records (shared with `frame_decode`).
//! - Journals, the snapshot log and the archive manifest: any bytes, files written by the
//!   engine with a flipped byte, cut short or followed by garbage
//!   (`decode_props/state_files.rs`, shared with `journal_decode`, `snapshot_log` and
//!   `archive_manifest`).
//! - Recovery: a data folder written by the engine, damaged, then opened
//!   (`decode_props/damage.rs`, shared with `recovery`): the store opens with a prefix of what
//!   was committed, byte for byte, or refuses with a `Corruption` error naming the file; a
//!   damaged last frame is a torn tail and is cut off, a damaged earlier frame is refused.

#[path = "decode_props/damage.rs"]
mod damage;
#[path = "decode_props/decoders.rs"]
mod decoders;
#[path = "decode_props/state_files.rs"]
mod state_files;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use damage::{Damage, Expect, Fixture, Kind};
use decoders::{check_event, check_frame, frame_is_valid};
use factstore_core::{Event, EventFields, Snapshot, Timestamp};
use factstore_engine::archive::manifest::{ArchivedSegment, check_sequence};
use factstore_engine::journal::Journal;
use factstore_engine::log::format::{FrameHeader, encode_record, split_records};
use factstore_engine::snapshots::{Snapshots, decode_record};
use factstore_testkit::faultfs::FaultFs;
use proptest::prelude::*;
use state_files::{
    JOURNAL_MAGIC, check_archive_manifest, check_archive_record, check_journal, check_snapshot_log,
};
use uuid::Uuid;

/// Cases per decoder property: cheap, so many.
const DECODER_CASES: u32 = 512;
/// Cases per recovery property: each opens the engine once or twice.
const RECOVERY_CASES: u32 = 48;

fn log_only() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture::build(Kind::LogOnly))
}

fn indexed() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture::build(Kind::Indexed))
}

// ---------------------------------------------------------------------------------------------
// Events

/// The fields of an event, owned, so that a strategy can make them.
#[derive(Debug, Clone)]
struct OwnedFields {
    numbers: (u64, u64, u128, i64, i64, u32),
    aggregate_id: String,
    aggregate_type: String,
    event_type: String,
    created_by: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    event_data: String,
    metadata: Option<String>,
}

impl OwnedFields {
    fn fields(&self) -> EventFields<'_> {
        let (position, version, id, created, recorded, event_version) = self.numbers;
        EventFields {
            position,
            version,
            event_id: Uuid::from_u128(id),
            created_at: Timestamp::from_micros(created),
            recorded_at: Timestamp::from_micros(recorded),
            event_version,
            aggregate_id: &self.aggregate_id,
            aggregate_type: &self.aggregate_type,
            event_type: &self.event_type,
            created_by: self.created_by.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            causation_id: self.causation_id.as_deref(),
            event_data: &self.event_data,
            metadata: self.metadata.as_deref(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.fields().encode_into(&mut out);
        out
    }
}

/// Any characters, control characters, quotes and backslashes included: at most 80 bytes, so
/// that it fits every length field.
fn text(chars_max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=chars_max.min(20)).prop_map(String::from_iter)
}

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        text(12).prop_map(serde_json::Value::from),
    ]
}

/// A compact JSON object, as the store keeps payloads.
fn json_object() -> impl Strategy<Value = String> {
    prop::collection::btree_map(text(6), json_leaf(), 0..4)
        .prop_map(|map| serde_json::to_string(&map).expect("a map of JSON values serialises"))
}

fn owned_fields() -> impl Strategy<Value = OwnedFields> {
    (
        (
            any::<u64>(),
            any::<u64>(),
            any::<u128>(),
            any::<i64>(),
            any::<i64>(),
            any::<u32>(),
        ),
        (text(20), text(20), text(20)),
        (
            prop::option::of(text(20)),
            prop::option::of(text(20)),
            prop::option::of(text(20)),
        ),
        (json_object(), prop::option::of(json_object())),
    )
        .prop_map(
            |(numbers, (aggregate_id, aggregate_type, event_type), links, (event_data, metadata))| {
                OwnedFields {
                    numbers,
                    aggregate_id,
                    aggregate_type,
                    event_type,
                    created_by: links.0,
                    correlation_id: links.1,
                    causation_id: links.2,
                    event_data,
                    metadata,
                }
            },
        )
}

/// A byte flip: an index (taken modulo the length) and a non-zero mask.
fn flip() -> impl Strategy<Value = (usize, u8)> {
    (any::<usize>(), 1u8..=255)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(DECODER_CASES))]

    #[test]
    fn event_decoder_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_event(&bytes);
    }

    /// A header with lengths that add up, followed by random bytes: reaches the UTF-8 and JSON
    /// checks far more often than uniformly random bytes do.
    #[test]
    fn event_decoder_survives_any_fields(
        fields in owned_fields(),
        tail in prop::collection::vec(any::<u8>(), 0..40),
        at in any::<usize>(),
    ) {
        let mut bytes = fields.encode();
        let from = factstore_core::event::HEADER_LEN + at % (bytes.len() - factstore_core::event::HEADER_LEN + 1);
        let end = (from + tail.len()).min(bytes.len());
        bytes[from..end].copy_from_slice(&tail[..end - from]);
        check_event(&bytes);
    }

    #[test]
    fn valid_events_round_trip(fields in owned_fields()) {
        let bytes = fields.encode();
        let event = check_event(&bytes).expect("a valid event decodes");
        prop_assert_eq!(event.as_bytes().as_ref(), &bytes[..]);
        prop_assert_eq!(event.aggregate_id(), fields.aggregate_id.as_str());
        prop_assert_eq!(event.event_data(), fields.event_data.as_str());
        prop_assert_eq!(event.metadata(), fields.metadata.as_deref());
        prop_assert_eq!(event.created_by(), fields.created_by.as_deref());
        prop_assert_eq!(event.correlation_id(), fields.correlation_id.as_deref());
        prop_assert_eq!(event.causation_id(), fields.causation_id.as_deref());
        let json: serde_json::Value = serde_json::from_str(&event.to_json()).expect("valid JSON");
        prop_assert_eq!(json["aggregate_id"].as_str(), Some(fields.aggregate_id.as_str()));
    }

    #[test]
    fn a_flipped_event_is_refused_or_well_formed(fields in owned_fields(), (at, mask) in flip()) {
        let mut bytes = fields.encode();
        let at = at % bytes.len();
        bytes[at] ^= mask;
        check_event(&bytes);
    }

    /// The header fixes the total length, so any shorter buffer is refused.
    #[test]
    fn a_truncated_event_is_refused(fields in owned_fields(), len in any::<usize>()) {
        let bytes = fields.encode();
        let len = len % bytes.len();
        prop_assert!(check_event(&bytes[..len]).is_none());
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// A frame as the writer builds it: header, then one record per event.
fn encode_frame(first_position: u64, events: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for event in events {
        encode_record(&mut body, event);
    }
    let count = u32::try_from(events.len()).expect("few events");
    let mut frame = FrameHeader::encode(first_position, count, 1, &body).to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn frame() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>)> {
    (any::<u64>(), prop::collection::vec(owned_fields(), 0..4)).prop_map(|(first, fields)| {
        let events: Vec<Vec<u8>> = fields.iter().map(OwnedFields::encode).collect();
        let frame = encode_frame(first, &events);
        (events, frame)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(DECODER_CASES))]

    #[test]
    fn frame_decoders_survive_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_frame(&bytes);
    }

    #[test]
    fn valid_frames_decode((events, frame) in frame()) {
        prop_assert!(frame_is_valid(&frame));
        let decoded = check_frame(&frame).expect("a valid frame decodes");
        let decoded: Vec<&[u8]> = decoded.iter().map(|e| e.as_bytes().as_ref()).collect();
        let events: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(decoded, events);
    }

    /// CRC32C catches every error burst up to 32 bits; the reserved bytes must be zero. So no
    /// single damaged byte anywhere in a frame goes unnoticed.
    #[test]
    fn a_flipped_byte_in_a_frame_is_always_detected((_, frame) in frame(), (at, mask) in flip()) {
        let mut frame = frame;
        let at = at % frame.len();
        frame[at] ^= mask;
        check_frame(&frame);
        prop_assert!(!frame_is_valid(&frame), "flip at {} went unnoticed", at);
    }

    #[test]
    fn a_truncated_frame_is_always_detected((_, frame) in frame(), len in any::<usize>()) {
        let len = len % frame.len();
        check_frame(&frame[..len]);
        prop_assert!(!frame_is_valid(&frame[..len]));
    }
}

/// `split_records` sized its output by the frame's `event_count` before looking at the body:
/// a count of `u32::MAX` (a corrupt header whose checksum happens to match, or a fuzzer's
/// input) asked for 64 GiB and aborted the process.
#[test]
fn split_records_does_not_allocate_what_the_event_count_claims() {
    assert!(split_records(&[], u32::MAX).is_err());
    let mut body = Vec::new();
    encode_record(&mut body, &[0u8; 100]);
    assert!(split_records(&body, u32::MAX).is_err());
    assert_eq!(split_records(&body, 1).map(|r| r.len()), Ok(1));
}

// ---------------------------------------------------------------------------------------------
// Journals, snapshot log, archive manifest

/// A journal file as the engine writes it: one append per element of `appends`. Returns the
/// bytes and the end offset of each frame.
fn journal_file(magic: [u8; 8], appends: &[Vec<Vec<u8>>]) -> (Vec<u8>, Vec<usize>) {
    let fs = Arc::new(FaultFs::new());
    let path = std::path::Path::new("/j/file.journal");
    let (journal, _) = Journal::open(fs.clone(), path, magic).expect("open");
    let mut ends = Vec::new();
    for append in appends {
        let records: Vec<&[u8]> = append.iter().map(Vec::as_slice).collect();
        journal.append(&records).expect("append");
        ends.push(usize::try_from(journal.len()).expect("small"));
    }
    drop(journal);
    (fs.read_file(path).expect("the journal"), ends)
}

/// Up to four appends of one to three records of up to 40 bytes (empty ones included).
fn appends() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    prop::collection::vec(
        // At least one record: an append of none writes nothing, so has no frame.
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..4),
        1..5,
    )
}

/// A flip or a cut: an index (modulo the length), and a mask (0 = cut there).
fn damage_at() -> impl Strategy<Value = (usize, u8)> {
    (any::<usize>(), any::<u8>())
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        any::<u64>(),
        1u32..=i32::MAX as u32,
        any::<i64>(),
        text(20),
        text(20),
        json_object(),
    )
        .prop_map(
            |(version, snapshot_version, created, aggregate_id, snapshot_type, state)| Snapshot {
                aggregate_id,
                version,
                snapshot_type,
                snapshot_version,
                state,
                created_at: Timestamp::from_micros(created),
            },
        )
}

fn snapshot_log(snapshots: &[Snapshot]) -> Vec<u8> {
    let fs = FaultFs::new();
    let dir = std::path::Path::new("/s");
    let log = Snapshots::open(&fs, dir).expect("open");
    for snapshot in snapshots {
        log.put(snapshot).expect("put");
    }
    drop(log);
    fs.read_file(dir.join(factstore_engine::snapshots::SNAPSHOT_LOG))
        .expect("the log")
}

fn archived_segment() -> impl Strategy<Value = ArchivedSegment> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<[u64; 3]>(),
        any::<i64>(),
    )
        .prop_map(
            |(segment_no, first_position, last_position, [len, compressed_len, checksum], at)| {
                ArchivedSegment {
                    segment_no,
                    first_position,
                    last_position,
                    len,
                    compressed_len,
                    checksum,
                    last_recorded_at: at,
                }
            },
        )
}

/// The records that `frame_ends` (ends of frames, as `journal_file` returns) keep when the
/// file is cut at `len`: the appends whose frames are whole.
fn whole_appends(appends: &[Vec<Vec<u8>>], frame_ends: &[usize], len: usize) -> Vec<Vec<u8>> {
    appends
        .iter()
        .zip(frame_ends)
        .filter(|(_, end)| **end <= len)
        .flat_map(|(append, _)| append.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(DECODER_CASES))]

    #[test]
    fn journal_reader_survives_any_bytes(
        header in any::<bool>(),
        tail in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = if header { journal_file(JOURNAL_MAGIC, &[]).0 } else { Vec::new() };
        bytes.extend_from_slice(&tail);
        check_journal(&bytes, JOURNAL_MAGIC);
    }

    #[test]
    fn valid_journals_read_back(appends in appends()) {
        let (bytes, _) = journal_file(JOURNAL_MAGIC, &appends);
        let want: Vec<Vec<u8>> = appends.concat();
        prop_assert_eq!(check_journal(&bytes, JOURNAL_MAGIC), Some(want));
    }

    /// A cut keeps exactly the whole appends before it; a flip in the last append drops it (a
    /// torn tail); a flip anywhere else is refused.
    #[test]
    fn a_damaged_journal_keeps_whole_appends_or_is_refused(appends in appends(), (at, mask) in damage_at()) {
        let (mut bytes, ends) = journal_file(JOURNAL_MAGIC, &appends);
        let header = factstore_engine::journal::HEADER_LEN as usize;
        let at = at % bytes.len();
        let last_start = ends.len().checked_sub(2).map_or(header, |i| ends[i]);
        if mask == 0 {
            bytes.truncate(at);
            let kept = check_journal(&bytes, JOURNAL_MAGIC);
            let want = if at < header { Vec::new() } else { whole_appends(&appends, &ends, at) };
            prop_assert_eq!(kept, Some(want));
        } else {
            bytes[at] ^= mask;
            let kept = check_journal(&bytes, JOURNAL_MAGIC);
            if at >= last_start {
                prop_assert_eq!(kept, Some(whole_appends(&appends, &ends, last_start)));
            } else {
                prop_assert_eq!(kept, None);
            }
        }
    }

    #[test]
    fn snapshot_reader_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check_snapshot_log(&bytes);
    }

    /// Valid records with a flipped byte or a cut, or garbage after them.
    #[test]
    fn a_damaged_snapshot_log_opens_or_is_refused(
        snapshots in prop::collection::vec(snapshot(), 0..4),
        (at, mask) in damage_at(),
        garbage in prop::collection::vec(any::<u8>(), 0..30),
    ) {
        let mut bytes = snapshot_log(&snapshots);
        for snapshot in &snapshots {
            let record = factstore_engine::snapshots::encode_record(snapshot);
            prop_assert_eq!(decode_record(&record), Ok(snapshot.clone()));
        }
        let at = at % bytes.len();
        if mask == 0 {
            bytes.truncate(at);
        } else {
            bytes[at] ^= mask;
        }
        let exact = garbage.is_empty();
        bytes.extend_from_slice(&garbage);
        let held = check_snapshot_log(&bytes);
        if exact {
            // Where each record ends: the header, then the records back to back.
            let mut ends = Vec::new();
            let mut end = factstore_engine::snapshots::LOG_HEADER_LEN as usize;
            for snapshot in &snapshots {
                end += factstore_engine::snapshots::encode_record(snapshot).len();
                ends.push(end);
            }
            let header = factstore_engine::snapshots::LOG_HEADER_LEN as usize;
            let last_start = ends.len().checked_sub(2).map_or(header, |i| ends[i]);
            // A cut keeps the whole records before it, and so does a flip in the last record
            // (a torn tail); a flip anywhere else is refused, but for a file that is no more
            // than a damaged header (a creation that did not finish: written afresh).
            let kept = if mask == 0 || (at < header && bytes.len() <= header) {
                Some(at)
            } else if at >= last_start {
                Some(last_start)
            } else {
                None
            };
            let want = kept.map(|len| {
                let mut pairs: Vec<(String, u64)> = snapshots
                    .iter()
                    .zip(&ends)
                    .filter(|(_, end)| **end <= len)
                    .map(|(s, _)| (s.aggregate_id.clone(), s.version))
                    .collect();
                pairs.sort();
                pairs.dedup();
                pairs
            });
            prop_assert_eq!(held, want);
        }
    }

    #[test]
    fn archive_records_round_trip_or_are_refused(
        segment in archived_segment(),
        (at, mask) in damage_at(),
    ) {
        let mut record = segment.encode();
        if let Some(decoded) = check_archive_record(&record) {
            prop_assert_eq!(decoded, segment);
        }
        record[at % record.len()] ^= mask;
        check_archive_record(&record);
    }

    /// A manifest journal of records in sequence, some changed: never a panic.
    #[test]
    fn archive_manifest_reader_survives_any_records(
        lens in prop::collection::vec(1u64..1000, 0..4),
        changed in prop::option::of((archived_segment(), any::<usize>())),
        tail in prop::collection::vec(any::<u8>(), 0..60),
    ) {
        let mut first = 1u64;
        let mut records: Vec<ArchivedSegment> = lens.iter().zip(1u32..).map(|(&n, segment_no)| {
            let record = ArchivedSegment {
                segment_no,
                first_position: first,
                last_position: first + n - 1,
                len: 4096,
                compressed_len: 100,
                checksum: n,
                last_recorded_at: 0,
            };
            first += n;
            record
        }).collect();
        prop_assert_eq!(check_sequence(&records), Ok(()));
        if let Some((other, at)) = changed {
            let at = at % (records.len() + 1);
            records.insert(at, other);
        }
        let appends: Vec<Vec<Vec<u8>>> = records.iter().map(|r| vec![r.encode().to_vec()]).collect();
        let (mut bytes, _) = journal_file(factstore_engine::archive::manifest::MAGIC, &appends);
        check_archive_manifest(&bytes);
        bytes.extend_from_slice(&tail);
        check_archive_manifest(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery

fn any_damage(files: usize) -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0..files, any::<usize>(), any::<u8>()).prop_map(|(file, offset, mask)| Damage::Flip {
            file,
            offset,
            mask
        }),
        (0..files, any::<usize>()).prop_map(|(file, len)| Damage::Truncate { file, len }),
        (0..files, prop::collection::vec(any::<u8>(), 1..80))
            .prop_map(|(file, bytes)| Damage::Append { file, bytes }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(RECOVERY_CASES))]

    /// The brief of recovery: a flipped byte or a cut anywhere in the last segment leaves a
    /// store that opens with a prefix of the committed events, byte for byte, or refuses with
    /// `Corruption` naming the segment.
    #[test]
    fn damage_to_the_last_segment_keeps_a_prefix_or_is_refused(
        damage in prop_oneof![
            (any::<usize>(), 1u8..=255).prop_map(|(offset, mask)| (offset, mask, true)),
            any::<usize>().prop_map(|len| (len, 0, false)),
        ]
    ) {
        let fixture = log_only();
        let file = fixture.last_segment().file;
        let (n, mask, is_flip) = damage;
        let damage = if is_flip {
            Damage::Flip { file, offset: n, mask }
        } else {
            Damage::Truncate { file, len: n }
        };
        let outcome = fixture.run(std::slice::from_ref(&damage));
        match outcome {
            damage::Outcome::Opened { head, .. } => prop_assert!(head <= fixture.committed.len() as u64),
            damage::Outcome::Refused(error) => {
                let named = matches!(
                    &error,
                    factstore_engine::EngineError::Corruption { path, .. }
                        if path.ends_with(&fixture.files[file].0)
                );
                prop_assert!(named, "refused with {}", error);
            }
        }
    }

    /// A damaged last frame is what a crash during its write leaves: never acknowledged, so
    /// it is cut off and the store opens with everything before it.
    #[test]
    fn a_flip_in_the_last_frame_is_a_torn_tail(pick in any::<usize>(), mask in 1u8..=255) {
        let fixture = log_only();
        let segment = fixture.last_segment();
        let last = *segment.frames.last().expect("the last segment has frames");
        let damage = Damage::Flip { file: segment.file, offset: last.start + pick % (last.end - last.start), mask };
        prop_assert_eq!(
            fixture.expect(&damage),
            Expect::Opens { events: fixture.committed.len() as u64 - last.events }
        );
        fixture.run(&[damage]);
    }

    /// A damaged frame with a valid frame after it cannot be a torn write: refusing is the only
    /// way not to drop the acknowledged frames after it.
    #[test]
    fn a_flip_in_an_earlier_frame_is_refused(pick in any::<usize>(), mask in 1u8..=255) {
        let fixture = log_only();
        let segment = fixture.last_segment();
        let frames = &segment.frames[..segment.frames.len() - 1];
        let span = frames[0].start..frames[frames.len() - 1].end;
        let damage = Damage::Flip { file: segment.file, offset: span.start + pick % span.len(), mask };
        prop_assert_eq!(
            fixture.expect(&damage),
            Expect::Refuses { file: Some(fixture.files[segment.file].0.clone()) }
        );
        fixture.run(&[damage]);
    }

    /// Cutting the last segment anywhere keeps exactly the frames that are still whole.
    #[test]
    fn truncating_the_last_segment_keeps_the_whole_frames(len in any::<usize>()) {
        let fixture = log_only();
        let damage = Damage::Truncate { file: fixture.last_segment().file, len };
        let expect = fixture.expect(&damage);
        prop_assert!(matches!(expect, Expect::Opens { .. }), "{:?}", expect);
        fixture.run(&[damage]);
    }

    /// Every segment but the last was complete before the next one was started: any damage
    /// there is corruption.
    #[test]
    fn damage_to_an_earlier_segment_is_refused(segment in any::<usize>(), at in any::<usize>(), mask in 1u8..=255) {
        let fixture = log_only();
        let segments = &fixture.segments[..fixture.segments.len() - 1];
        let file = segments[segment % segments.len()].file;
        let damage = Damage::Flip { file, offset: at, mask };
        let expect = fixture.expect(&damage);
        prop_assert!(matches!(expect, Expect::Refuses { .. }), "{:?}", expect);
        fixture.run(&[damage]);
    }

    /// Garbage after the last frame (a torn write of a frame that never got its header right)
    /// is cut off.
    #[test]
    fn garbage_after_the_last_frame_is_cut_off(bytes in prop::collection::vec(any::<u8>(), 1..200)) {
        let fixture = log_only();
        fixture.run(&[Damage::Append { file: fixture.last_segment().file, bytes }]);
    }

    /// With runs and a manifest, any one to three damages anywhere: the contract always, and
    /// the exact outcome for a single damage.
    #[test]
    fn any_damage_to_an_indexed_store_keeps_the_contract(
        damage in prop::collection::vec(any_damage(64), 1..=3)
    ) {
        indexed().run(&damage);
    }

    /// A single damage in the replayed tail of an indexed store, where recovery decides.
    #[test]
    fn damage_after_the_index_checkpoint_is_recovered_exactly(pick in any::<usize>(), mask in 1u8..=255) {
        let fixture = indexed();
        let segment = fixture.last_segment();
        let tail = fixture.resume.1..segment.frames.last().expect("frames").end;
        fixture.run(&[Damage::Flip { file: segment.file, offset: tail.start + pick % tail.len(), mask }]);
    }

    /// The fuzz target's decoding of raw bytes into damage, on stable.
    #[test]
    fn fuzzer_bytes_keep_the_contract(data in prop::collection::vec(any::<u8>(), 0..48)) {
        let (kind, damage) = Damage::parse(&data);
        let fixture = match kind {
            Kind::LogOnly => log_only(),
            Kind::Indexed => indexed(),
        };
        fixture.run(&damage);
    }
}

#[test]
fn fixtures_have_the_shape_the_properties_need() {
    for fixture in [log_only(), indexed()] {
        assert!(
            fixture.segments.len() >= 3,
            "{:?}: several segments",
            fixture.kind
        );
        assert!(
            fixture.last_segment().frames.len() >= 3,
            "{:?}: frames",
            fixture.kind
        );
        let undamaged = fixture.run(&[]);
        assert!(
            matches!(undamaged, damage::Outcome::Opened { head, reads_clean: true, verified: true }
                if head == fixture.committed.len() as u64),
            "{:?}: the undamaged fixture opens cleanly: {undamaged:?}",
            fixture.kind
        );
    }
    assert_eq!(
        log_only().resume.1,
        factstore_engine::log::format::SEGMENT_HEADER_LEN
    );
    assert!(indexed().files.iter().any(|(name, _)| name.ends_with(".run")));
}

/// What the engine wrote passes every check of the event decoder.
#[test]
fn committed_events_pass_the_decoder_checks() {
    for bytes in &log_only().committed {
        let event = Event::from_bytes(Bytes::clone(bytes)).expect("committed events decode");
        check_event(event.as_bytes());
    }
}

/// `Log::read_events` reads nearby records with one read that stops at the segment's durable
/// end, then sliced that chunk at each record's offset. When the index pointed past the end
/// of a segment (one cut short before the index checkpoint, which start-up does not read), an
/// aggregate read panicked with "range start index out of range" instead of reporting the
/// corruption.
#[test]
fn reading_a_segment_shorter_than_the_index_says_is_corruption_not_a_panic() {
    let fixture = indexed();
    let first = &fixture.segments[0];
    assert!(
        first.no < fixture.resume.0,
        "the first segment lies before the checkpoint"
    );
    let middle = first.frames[first.frames.len() / 2];
    let damage = Damage::Truncate {
        file: first.file,
        len: middle.start + 10,
    };
    let outcome = fixture.run(&[damage]);
    assert!(
        matches!(
            outcome,
            damage::Outcome::Opened {
                reads_clean: false,
                verified: false,
                ..
            }
        ),
        "{outcome:?}"
    );
}

/// Start-up replays the log from the manifest's checkpoint. When the segment holding the
/// checkpoint had been cut short below it, recovery read an empty tail and opened with the
/// head at the checkpoint: the indexed events were gone (every read of them failed), and the
/// writer would have written its next frame past the end of the file. It must refuse.
#[test]
fn a_segment_cut_below_the_index_checkpoint_is_refused() {
    let fixture = indexed();
    let segment = fixture.last_segment();
    assert_eq!(
        segment.no, fixture.resume.0,
        "the checkpoint is in the last segment"
    );
    let cut = segment
        .frames
        .iter()
        .rfind(|f| f.end <= fixture.resume.1)
        .expect("an indexed frame in the last segment")
        .start;
    let damage = Damage::Truncate {
        file: segment.file,
        len: cut,
    };
    assert_eq!(fixture.expect(&damage), damage::Expect::Refuses { file: None });
    let outcome = fixture.run(&[damage]);
    let damage::Outcome::Refused(factstore_engine::EngineError::Corruption { path, .. }) = &outcome else {
        panic!("expected a refusal, got {outcome:?}");
    };
    assert!(path.ends_with(&fixture.files[segment.file].0), "{outcome:?}");
}

/// Found by the `recovery` fuzz target. A scan starts at the location the index gives for its
/// first position and checked that each event follows the one before, but not the first one.
/// With the first segment cut short (before the index checkpoint, which start-up does not
/// read) that location lay past the segment's end, so the scan moved on to the next segment
/// and returned positions 21 onwards as if they were the start: a silent hole, no error.
#[test]
fn a_scan_that_starts_in_a_missing_part_of_the_log_is_corruption_not_a_hole() {
    let fixture = indexed();
    let first = &fixture.segments[0];
    // The fuzzer's input (bytes 01 01 00 ff 9c ce f7) cut the first segment to its header and
    // 7 bytes of its first frame.
    let damage = [Damage::Truncate {
        file: first.file,
        len: factstore_engine::log::format::SEGMENT_HEADER_LEN + 7,
    }];
    let outcome = fixture.run(&damage);
    assert!(
        matches!(
            outcome,
            damage::Outcome::Opened {
                reads_clean: false,
                verified: false,
                ..
            }
        ),
        "{outcome:?}"
    );
}

/// `check_sequence` computed the next expected position as `last_position + 1`, and
/// `ArchivedSegment::events` as `last_position + 1 - first_position`: a record whose last
/// position is `u64::MAX` (checksum-valid bytes that no writer makes) overflowed, a panic in a
/// debug build and a wrap to 0 in a release one. Such a record is refused when decoded.
#[test]
fn an_archive_record_ending_at_the_largest_position_is_refused_not_an_overflow() {
    let record = ArchivedSegment {
        segment_no: 1,
        first_position: 1,
        last_position: u64::MAX,
        len: 4096,
        compressed_len: 100,
        checksum: 0,
        last_recorded_at: 0,
    };
    assert!(check_archive_record(&record.encode()).is_none());
    let (bytes, _) = journal_file(
        factstore_engine::archive::manifest::MAGIC,
        &[vec![record.encode().to_vec()]],
    );
    check_archive_manifest(&bytes);
}
