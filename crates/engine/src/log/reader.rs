//! The segments of the log, and reading events from them by location or in sequence.
//!
//! Readers never go past a segment's `durable_len`: the writer raises it only after the bytes
//! below it are synced, so a reader can never return an event that is not durable.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use factstore_core::Event;
use parking_lot::RwLock;

use crate::error::{EngineError, Result};
use crate::io::File;
use crate::log::format::{
    FRAME_HEADER_LEN, Loc, RECORD_HEADER_LEN, RecordHead, SEGMENT_HEADER_LEN, record_head,
};

/// Bytes read at a time by sequential scans, at most.
const SCAN_CHUNK_BYTES: u64 = 1 << 20;
/// Bytes of a scan's first read, at least. A scan that wants few events starts small and
/// doubles its reads up to [`SCAN_CHUNK_BYTES`]: the events it returns are slices of its read
/// buffer, so a read of 16 events must not take (and keep alive) a whole MiB, a thousand times
/// over when a thousand subscribers catch up at once.
const SCAN_FIRST_BYTES_MIN: u64 = 64 << 10;
/// Records closer than this are read with one read instead of two.
const COALESCE_GAP_BYTES: u64 = 64 << 10;
/// A first guess at a record's size, so most single reads take one system call.
const RECORD_GUESS_BYTES: u64 = 2048;

#[derive(Debug)]
pub struct Segment {
    pub no: u32,
    pub first_position: u64,
    pub path: PathBuf,
    pub file: Arc<dyn File>,
    /// Bytes known durable; readers stop here.
    pub durable_len: AtomicU64,
}

impl Segment {
    pub fn durable_len(&self) -> u64 {
        self.durable_len.load(Ordering::Acquire)
    }

    fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(EngineError::io(&self.path))?;
        Ok(Bytes::from(buf))
    }
}

/// The segments of the log, by number.
#[derive(Debug, Default)]
pub struct Log {
    segments: RwLock<Vec<Arc<Segment>>>,
}

impl Log {
    pub fn new(segments: Vec<Arc<Segment>>) -> Log {
        Log {
            segments: RwLock::new(segments),
        }
    }

    pub fn push(&self, segment: Arc<Segment>) {
        self.segments.write().push(segment);
    }

    /// Replaces the entry of `segment.no` (an archived segment takes its local one's place),
    /// so a segment number never has two entries and no event is readable twice.
    pub fn replace(&self, segment: Arc<Segment>) {
        let mut segments = self.segments.write();
        if let Some(entry) = segments.iter_mut().find(|s| s.no == segment.no) {
            *entry = segment;
        }
    }

    pub fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments.read().clone()
    }

    pub fn segment(&self, no: u32) -> Option<Arc<Segment>> {
        let segments = self.segments.read();
        let first = segments.first()?.no;
        segments.get(no.checked_sub(first)? as usize).cloned()
    }

    /// Decodes the record at `at` in `chunk`, read from `segment` at `base`.
    fn decode(segment: &Segment, chunk: &Bytes, at: usize, base: u64) -> Result<Option<(Event, usize)>> {
        let offset = base + at as u64;
        // A location past the chunk (the chunk stops at the durable end) is read alone.
        let Some(rest) = chunk.get(at..) else {
            return Ok(None);
        };
        match record_head(rest) {
            RecordHead::Record { len, crc } => {
                let end = at + RECORD_HEADER_LEN + len;
                if end > chunk.len() {
                    return Ok(None);
                }
                let body = chunk.slice(at + RECORD_HEADER_LEN..end);
                if crc32c::crc32c(&body) != crc {
                    return Err(EngineError::corruption(
                        &segment.path,
                        offset,
                        "record checksum mismatch",
                    ));
                }
                let event = Event::from_checked_bytes(body)
                    .map_err(|e| EngineError::corruption(&segment.path, offset, e.to_string()))?;
                Ok(Some((event, end - at)))
            }
            RecordHead::Truncated => Ok(None),
            RecordHead::Frame => Err(EngineError::corruption(
                &segment.path,
                offset,
                "expected a record, found a frame",
            )),
            RecordHead::Invalid => Err(EngineError::corruption(
                &segment.path,
                offset,
                "invalid record length",
            )),
        }
    }

    /// Reads one event.
    pub fn read_event(&self, loc: Loc) -> Result<Event> {
        let mut events = self.read_events(&[loc])?;
        events.pop().ok_or(EngineError::Closed)
    }

    /// Reads events at ascending locations, with one read for records that lie close together.
    pub fn read_events(&self, locs: &[Loc]) -> Result<Vec<Event>> {
        let mut out = Vec::with_capacity(locs.len());
        let mut i = 0;
        while i < locs.len() {
            let first = locs[i];
            let segment = self.segment(first.segment_no()).ok_or_else(|| {
                EngineError::corruption(
                    &PathBuf::from("log"),
                    u64::from(first.offset()),
                    "index points to a missing segment",
                )
            })?;
            let mut j = i + 1;
            while j < locs.len()
                && locs[j].segment_no() == first.segment_no()
                && u64::from(locs[j].offset()) >= u64::from(locs[j - 1].offset())
                && u64::from(locs[j].offset()) - u64::from(locs[j - 1].offset()) <= COALESCE_GAP_BYTES
            {
                j += 1;
            }
            let base = u64::from(first.offset());
            let durable = segment.durable_len();
            let want_end = (u64::from(locs[j - 1].offset()) + RECORD_GUESS_BYTES).min(durable);
            if want_end <= base {
                return Err(EngineError::corruption(
                    &segment.path,
                    base,
                    "index points past the durable end of the segment",
                ));
            }
            let mut chunk = segment.read(base, want_end - base)?;
            for loc in &locs[i..j] {
                let at = (u64::from(loc.offset()) - base) as usize;
                match Self::decode(&segment, &chunk, at, base)? {
                    Some((event, _)) => out.push(event),
                    None => {
                        // The record runs past what was read: read it alone, at its full size.
                        let offset = u64::from(loc.offset());
                        if offset + RECORD_HEADER_LEN as u64 > durable {
                            return Err(EngineError::corruption(
                                &segment.path,
                                offset,
                                "index points past the durable end of the segment",
                            ));
                        }
                        let head = segment.read(offset, RECORD_HEADER_LEN as u64)?;
                        let len = match record_head(&head) {
                            RecordHead::Record { len, .. } => len as u64,
                            _ => {
                                return Err(EngineError::corruption(
                                    &segment.path,
                                    offset,
                                    "invalid record length",
                                ));
                            }
                        };
                        if offset + RECORD_HEADER_LEN as u64 + len > durable {
                            return Err(EngineError::corruption(
                                &segment.path,
                                offset,
                                "record runs past the durable end",
                            ));
                        }
                        chunk = segment.read(offset, RECORD_HEADER_LEN as u64 + len)?;
                        match Self::decode(&segment, &chunk, 0, offset)? {
                            Some((event, _)) => out.push(event),
                            None => {
                                return Err(EngineError::corruption(
                                    &segment.path,
                                    offset,
                                    "record is truncated",
                                ));
                            }
                        }
                        // Later locations of this group are read again relative to a new chunk.
                        let rest: Vec<Loc> = locs[i..j]
                            .iter()
                            .copied()
                            .filter(|l| l.offset() > loc.offset())
                            .collect();
                        out.extend(self.read_events(&rest)?);
                        break;
                    }
                }
            }
            i = j;
        }
        Ok(out)
    }

    /// Visits events in position order, starting at `start` (a record or frame boundary), from
    /// `from_position` through `to_position`, until the visitor breaks. `events_wanted` (a
    /// guess: the visitor may break sooner or later) sizes the first read.
    pub fn scan(
        &self,
        start: Loc,
        from_position: u64,
        to_position: u64,
        events_wanted: usize,
        mut visit: impl FnMut(Event) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let mut segment_no = start.segment_no();
        let mut offset = u64::from(start.offset());
        let mut expected: Option<u64> = None;
        let mut chunk_bytes = (events_wanted as u64)
            .saturating_mul(RECORD_GUESS_BYTES)
            .clamp(SCAN_FIRST_BYTES_MIN, SCAN_CHUNK_BYTES);
        let mut want = chunk_bytes;
        while let Some(segment) = self.segment(segment_no) {
            let durable = segment.durable_len();
            if offset >= durable {
                segment_no += 1;
                offset = SEGMENT_HEADER_LEN as u64;
                continue;
            }
            let chunk = segment.read(offset, want.min(durable - offset))?;
            let mut at = 0usize;
            while at < chunk.len() {
                if record_head(&chunk[at..]) == RecordHead::Frame {
                    if chunk.len() - at < FRAME_HEADER_LEN {
                        break;
                    }
                    at += FRAME_HEADER_LEN;
                    continue;
                }
                let Some((event, used)) = Self::decode(&segment, &chunk, at, offset)? else {
                    break;
                };
                let position = event.position();
                let hole = match expected {
                    Some(expected) => position != expected,
                    // A scan starts at or before `from_position`; a later first event means
                    // the events from the start on are missing (e.g. a segment cut short).
                    None => position > from_position,
                };
                if hole {
                    let expected = expected.unwrap_or(from_position);
                    return Err(EngineError::corruption(
                        &segment.path,
                        offset + at as u64,
                        format!("expected position {expected}, found {position}"),
                    ));
                }
                expected = Some(position + 1);
                at += used;
                if position > to_position {
                    return Ok(());
                }
                if position >= from_position && visit(event)?.is_break() {
                    return Ok(());
                }
            }
            if at == 0 {
                if chunk.len() as u64 >= durable - offset {
                    return Err(EngineError::corruption(
                        &segment.path,
                        offset,
                        "truncated record below the durable end",
                    ));
                }
                // One record larger than the chunk: read enough for it.
                want = want.saturating_mul(2);
                continue;
            }
            chunk_bytes = chunk_bytes.saturating_mul(2).min(SCAN_CHUNK_BYTES);
            want = chunk_bytes;
            offset += at as u64;
        }
        Ok(())
    }
}
