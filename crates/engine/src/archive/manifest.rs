//! The archive manifest: one record per archived segment, in a [`Journal`](crate::journal::Journal)
//! at `archive/manifest.journal`. A segment is archived exactly when its record is durable; the
//! byte layout is in `docs/format.md` ("Archive manifest").
//!
//! ```text
//! 0   1  kind: 1 = a segment archived
//! 1   3  zero
//! 4   4  segment number, u32 LE
//! 8   8  first position, u64 LE
//! 16  8  last position, u64 LE
//! 24  8  length of the segment file (uncompressed), u64 LE
//! 32  8  length of the object in cold storage (zstd), u64 LE
//! 40  8  xxh3-64 of the uncompressed segment, u64 LE
//! 48  8  recorded_at of the last event, microseconds, i64 LE
//! ```

use crate::log::format::{le_u32, le_u64};

/// The journal's magic: names the file's kind.
pub const MAGIC: [u8; 8] = *b"FSARCHV1";
/// The journal's path under the data folder.
pub const FILE_NAME: &str = "archive/manifest.journal";
const KIND_SEGMENT: u8 = 1;
pub const RECORD_LEN: usize = 56;

/// One archived segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchivedSegment {
    pub segment_no: u32,
    pub first_position: u64,
    pub last_position: u64,
    /// Bytes of the segment file, which the object decompresses to.
    pub len: u64,
    /// Bytes of the object in cold storage.
    pub compressed_len: u64,
    /// xxh3-64 of the uncompressed bytes.
    pub checksum: u64,
    pub last_recorded_at: i64,
}

impl ArchivedSegment {
    /// Events the segment holds.
    pub fn events(&self) -> u64 {
        self.last_position + 1 - self.first_position
    }

    /// The object's key in cold storage.
    pub fn key(&self) -> String {
        object_key(self.segment_no)
    }

    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0] = KIND_SEGMENT;
        out[4..8].copy_from_slice(&self.segment_no.to_le_bytes());
        out[8..16].copy_from_slice(&self.first_position.to_le_bytes());
        out[16..24].copy_from_slice(&self.last_position.to_le_bytes());
        out[24..32].copy_from_slice(&self.len.to_le_bytes());
        out[32..40].copy_from_slice(&self.compressed_len.to_le_bytes());
        out[40..48].copy_from_slice(&self.checksum.to_le_bytes());
        out[48..56].copy_from_slice(&self.last_recorded_at.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ArchivedSegment, String> {
        if bytes.len() != RECORD_LEN {
            return Err(format!(
                "an archive record of {} bytes (expected {RECORD_LEN})",
                bytes.len()
            ));
        }
        if bytes[0] != KIND_SEGMENT || bytes[1..4] != [0, 0, 0] {
            return Err(format!("unknown archive record kind {}", bytes[0]));
        }
        let record = ArchivedSegment {
            segment_no: le_u32(&bytes[4..8]),
            first_position: le_u64(&bytes[8..16]),
            last_position: le_u64(&bytes[16..24]),
            len: le_u64(&bytes[24..32]),
            compressed_len: le_u64(&bytes[32..40]),
            checksum: le_u64(&bytes[40..48]),
            last_recorded_at: le_u64(&bytes[48..56]) as i64,
        };
        // A last position of u64::MAX leaves no next position (and no event count that
        // fits): no writer makes one, and the arithmetic over records must not overflow.
        if record.last_position < record.first_position
            || record.last_position == u64::MAX
            || record.segment_no == 0
        {
            return Err(format!(
                "archive record of segment {} holds positions {}..={}",
                record.segment_no, record.first_position, record.last_position
            ));
        }
        Ok(record)
    }
}

/// `segments/NNNNNNNNNN.seg.zst`.
pub fn object_key(segment_no: u32) -> String {
    format!("segments/{segment_no:010}.seg.zst")
}

/// Checks that the records follow each other: segments 1, 2, 3, … with contiguous positions
/// from 1. Returns the reason when they do not.
pub fn check_sequence(records: &[ArchivedSegment]) -> Result<(), String> {
    let mut next_position = 1u64;
    for (next_no, record) in (1u32..).zip(records) {
        if record.segment_no != next_no {
            return Err(format!(
                "archive record of segment {} where segment {next_no} was expected",
                record.segment_no
            ));
        }
        if record.first_position != next_position {
            return Err(format!(
                "archived segment {} starts at position {} where {next_position} was expected",
                record.segment_no, record.first_position
            ));
        }
        next_position = record.last_position + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let record = ArchivedSegment {
            segment_no: 3,
            first_position: 100,
            last_position: 199,
            len: 4096,
            compressed_len: 1000,
            checksum: 0xdead_beef_f00d,
            last_recorded_at: -5,
        };
        assert_eq!(ArchivedSegment::decode(&record.encode()), Ok(record));
        assert_eq!(record.events(), 100);
        let mut bad = record.encode();
        bad[0] = 9;
        assert!(ArchivedSegment::decode(&bad).is_err());
        assert!(ArchivedSegment::decode(&bad[..10]).is_err());
    }

    #[test]
    fn a_gap_in_the_sequence_is_named() {
        let a = ArchivedSegment {
            segment_no: 1,
            first_position: 1,
            last_position: 10,
            len: 1,
            compressed_len: 1,
            checksum: 0,
            last_recorded_at: 0,
        };
        let b = ArchivedSegment {
            segment_no: 2,
            first_position: 12,
            ..a
        };
        assert!(check_sequence(&[a]).is_ok());
        let reason = check_sequence(&[a, b]).expect_err("a gap of one position");
        assert!(reason.contains("where 11 was expected"), "{reason}");
    }
}
