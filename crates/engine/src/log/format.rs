//! The byte layout of segment files: the segment header, frames and records (see
//! `docs/format.md`). Pure functions, no I/O, so the decoder can be fuzzed and property-tested.
//!
//! A *frame* is what one group commit writes: a header, then the records of every event of every
//! commit in the group. Its CRC32C covers the header and the whole body, so a frame is either
//! entirely valid or entirely refused; that is what makes a commit atomic on disk. Each record
//! also carries its own length and CRC32C, so that a single event can be read and checked
//! without reading its frame.

/// Bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FACTSEG\0";
/// The segment format this code writes and reads.
pub const SEGMENT_FORMAT: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 32;

/// The first four bytes of a frame, as a little-endian u32. Larger than any record length
/// (records are below 2^28 bytes), so a reader at a record boundary can tell a frame header from
/// a record by its first word.
pub const FRAME_MAGIC: u32 = 0xFAC7_F4A3;
pub const FRAME_HEADER_LEN: usize = 32;
/// The framing of one record: its length and its CRC32C.
pub const RECORD_HEADER_LEN: usize = 8;
/// No record is this large or larger; keeps lengths apart from [`FRAME_MAGIC`].
pub const RECORD_LEN_LIMIT: usize = 1 << 28;

/// The header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment_no: u32,
    /// The position of the first event this segment holds (or will hold).
    pub first_position: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
        out[12..16].copy_from_slice(&self.segment_no.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_position.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, &'static str> {
        let bytes: &[u8; SEGMENT_HEADER_LEN] = bytes
            .get(..SEGMENT_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or("segment header is truncated")?;
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err("not a segment file (bad magic)");
        }
        if crc32c::crc32c(&bytes[0..28]) != le_u32(&bytes[28..32]) {
            return Err("segment header checksum mismatch");
        }
        let format = le_u32(&bytes[8..12]);
        if format != SEGMENT_FORMAT {
            return Err("unsupported segment format version");
        }
        Ok(SegmentHeader {
            segment_no: le_u32(&bytes[12..16]),
            first_position: le_u64(&bytes[16..24]),
        })
    }
}

/// The fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of records after the header.
    pub body_len: u32,
    pub first_position: u64,
    pub event_count: u32,
    /// How many commits the group holds (informational).
    pub commit_count: u32,
    /// CRC32C of header bytes 0..24 followed by the body.
    pub crc: u32,
}

impl FrameHeader {
    /// Header bytes with the CRC computed over them and `body`.
    pub fn encode(
        first_position: u64,
        event_count: u32,
        commit_count: u32,
        body: &[u8],
    ) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        let body_len = u32::try_from(body.len()).expect("frames are bounded far below 4 GiB");
        out[4..8].copy_from_slice(&body_len.to_le_bytes());
        out[8..16].copy_from_slice(&first_position.to_le_bytes());
        out[16..20].copy_from_slice(&event_count.to_le_bytes());
        out[20..24].copy_from_slice(&commit_count.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[0..24]), body);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a header; does not check the CRC (that needs the body: [`FrameHeader::check_body`]).
    pub fn decode(bytes: &[u8]) -> Result<FrameHeader, &'static str> {
        let bytes: &[u8; FRAME_HEADER_LEN] = bytes
            .get(..FRAME_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or("frame header is truncated")?;
        if le_u32(&bytes[0..4]) != FRAME_MAGIC {
            return Err("bad frame magic");
        }
        if bytes[28..32] != [0, 0, 0, 0] {
            return Err("reserved frame bytes are not zero");
        }
        Ok(FrameHeader {
            body_len: le_u32(&bytes[4..8]),
            first_position: le_u64(&bytes[8..16]),
            event_count: le_u32(&bytes[16..20]),
            commit_count: le_u32(&bytes[20..24]),
            crc: le_u32(&bytes[24..28]),
        })
    }

    /// Checks the CRC over `header` (the 32 encoded bytes) and `body`.
    pub fn check_body(&self, header: &[u8], body: &[u8]) -> bool {
        header.len() >= 24
            && crc32c::crc32c_append(crc32c::crc32c(&header[0..24]), body) == self.crc
            && body.len() == self.body_len as usize
    }
}

/// Appends one record (length, CRC32C, body) to `out`.
pub fn encode_record(out: &mut Vec<u8>, body: &[u8]) {
    let len = u32::try_from(body.len()).expect("records are bounded far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// What the framing of a record at the start of `bytes` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordHead {
    /// A record of `len` body bytes with checksum `crc`.
    Record { len: usize, crc: u32 },
    /// A frame header starts here.
    Frame,
    /// Fewer than eight bytes.
    Truncated,
    /// A length no record can have.
    Invalid,
}

pub fn record_head(bytes: &[u8]) -> RecordHead {
    let Some(head) = bytes.get(..RECORD_HEADER_LEN) else {
        return RecordHead::Truncated;
    };
    let len = le_u32(&head[0..4]);
    if len == FRAME_MAGIC {
        return RecordHead::Frame;
    }
    if len as usize >= RECORD_LEN_LIMIT || (len as usize) < factstore_core::event::HEADER_LEN {
        return RecordHead::Invalid;
    }
    RecordHead::Record {
        len: len as usize,
        crc: le_u32(&head[4..8]),
    }
}

/// Splits a frame body into its record bodies, checking every record's length and CRC.
pub fn split_records(body: &[u8], expected: u32) -> Result<Vec<std::ops::Range<usize>>, &'static str> {
    // `expected` comes from the frame header: reserve no more than the body can hold, so that
    // a corrupt count cannot ask for gigabytes.
    let fits = body.len() / (RECORD_HEADER_LEN + factstore_core::event::HEADER_LEN);
    let mut ranges = Vec::with_capacity((expected as usize).min(fits));
    let mut at = 0usize;
    while at < body.len() {
        match record_head(&body[at..]) {
            RecordHead::Record { len, crc } => {
                let start = at + RECORD_HEADER_LEN;
                let end = start.checked_add(len).ok_or("record length overflows")?;
                let record = body
                    .get(start..end)
                    .ok_or("record runs past the end of its frame")?;
                if crc32c::crc32c(record) != crc {
                    return Err("record checksum mismatch");
                }
                ranges.push(start..end);
                at = end;
            }
            RecordHead::Frame | RecordHead::Invalid => return Err("bad record length"),
            RecordHead::Truncated => return Err("record header runs past the end of its frame"),
        }
    }
    if ranges.len() != expected as usize {
        return Err("frame event count does not match its records");
    }
    Ok(ranges)
}

pub fn le_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(raw)
}

pub fn le_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(raw)
}

/// The file name of segment `segment_no`: 10 decimal digits and `.seg`.
pub fn segment_file_name(segment_no: u32) -> String {
    format!("{segment_no:010}.seg")
}

/// The segment number in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A record's place in the log: segment number in the high 32 bits, byte offset of the record's
/// framing in the low 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Loc(pub u64);

impl Loc {
    pub fn new(segment_no: u32, offset: u32) -> Loc {
        Loc((u64::from(segment_no) << 32) | u64::from(offset))
    }

    pub fn segment_no(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn offset(self) -> u32 {
        self.0 as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let header = SegmentHeader {
            segment_no: 7,
            first_position: 1234,
        };
        let mut bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        bytes[17] ^= 1;
        assert!(SegmentHeader::decode(&bytes).is_err());
        assert!(SegmentHeader::decode(&bytes[..10]).is_err());
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(42), "0000000042.seg");
        assert_eq!(parse_segment_file_name("0000000042.seg"), Some(42));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("000000004x.seg"), None);
    }

    proptest::proptest! {
        #[test]
        fn split_records_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400), n in 0u32..5) {
            let _ = split_records(&body, n);
        }

        #[test]
        fn frame_header_decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            if let Ok(header) = FrameHeader::decode(&bytes) {
                let _ = header.check_body(&bytes, &[]);
            }
        }
    }
}
