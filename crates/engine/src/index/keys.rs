//! How index entries are written as sorted keys in run files.
//!
//! ```text
//! aggregate      'A' | aggregate_id | 0x00           | version u64 BE   → position u64 LE | loc u64 LE
//! event id       'E' | uuid (16 bytes)                                 → position u64 LE | loc u64 LE
//! event type     'T' | len u16 BE | event_type     | position u64 BE  → loc u64 LE
//! correlation    'C' | len u16 BE | correlation_id | position u64 BE  → loc u64 LE
//! causation      'K' | len u16 BE | causation_id   | position u64 BE  → loc u64 LE
//! ```
//! Big-endian suffixes make byte order equal numeric order, so the versions of an aggregate and
//! the positions of a term are contiguous and ascending. Aggregate ids are not length-prefixed
//! but end with a 0x00 byte (an id holds no control characters), so the aggregates whose id
//! starts with a prefix are one key range: `aggregate_id_prefix` reads and conditions scan it. The bloom filter of a run holds every
//! key without its 8-byte suffix (the whole key for event ids), so "does this run know this
//! aggregate / term / id" costs no disk read when the answer is no.

use uuid::Uuid;

use crate::log::format::Loc;

pub const KIND_AGGREGATE: u8 = b'A';
pub const KIND_EVENT_ID: u8 = b'E';
pub const KIND_EVENT_TYPE: u8 = b'T';
pub const KIND_CORRELATION: u8 = b'C';
pub const KIND_CAUSATION: u8 = b'K';

/// A term index: the kinds whose entries are (term, position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TermKind {
    EventType,
    Correlation,
    Causation,
}

impl TermKind {
    pub const ALL: [TermKind; 3] = [TermKind::EventType, TermKind::Correlation, TermKind::Causation];

    /// A dense number for arrays indexed by kind.
    pub fn index(self) -> usize {
        match self {
            TermKind::EventType => 0,
            TermKind::Correlation => 1,
            TermKind::Causation => 2,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            TermKind::EventType => KIND_EVENT_TYPE,
            TermKind::Correlation => KIND_CORRELATION,
            TermKind::Causation => KIND_CAUSATION,
        }
    }
}

/// `kind | len | term`: the prefix shared by all entries of one aggregate or term.
pub fn term_prefix(kind: u8, term: &str) -> Vec<u8> {
    let len = u16::try_from(term.len()).expect("identifiers are at most 65535 bytes");
    let mut key = Vec::with_capacity(3 + term.len() + 8);
    key.push(kind);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(term.as_bytes());
    key
}

/// `'A' | aggregate_id | 0x00`: the prefix shared by all entries of one aggregate.
pub fn aggregate_prefix(aggregate_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(aggregate_id.len() + 10);
    key.push(KIND_AGGREGATE);
    key.extend_from_slice(aggregate_id.as_bytes());
    key.push(0);
    key
}

/// Writes `'A' | aggregate_id | 0x00 | version` into `key`, replacing what it held.
pub fn write_aggregate_key(key: &mut Vec<u8>, aggregate_id: &str, version: u64) {
    key.clear();
    key.push(KIND_AGGREGATE);
    key.extend_from_slice(aggregate_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
}

/// The key range `[from, to)` holding every aggregate whose id starts with `prefix`, or `None`
/// for an empty prefix (every aggregate: not a range worth scanning).
pub fn aggregate_prefix_range(prefix: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    if prefix.is_empty() {
        return None;
    }
    let mut from = Vec::with_capacity(prefix.len() + 1);
    from.push(KIND_AGGREGATE);
    from.extend_from_slice(prefix.as_bytes());
    // The first key past the range: the prefix with its last byte raised (a UTF-8 string
    // never holds 0xFF, so the byte can always be raised).
    let mut to = from.clone();
    let last = to.last_mut()?;
    *last = last.checked_add(1)?;
    Some((from, to))
}

/// The prefix with a big-endian suffix.
pub fn with_suffix(prefix: &[u8], suffix: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&suffix.to_be_bytes());
    key
}

/// Writes `kind | len | term | suffix` into `key`, replacing what it held.
pub fn write_term_key(key: &mut Vec<u8>, kind: u8, term: &str, suffix: u64) {
    let len = u16::try_from(term.len()).expect("identifiers are at most 65535 bytes");
    key.clear();
    key.push(kind);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(term.as_bytes());
    key.extend_from_slice(&suffix.to_be_bytes());
}

pub fn event_id_key(event_id: Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(KIND_EVENT_ID);
    key.extend_from_slice(event_id.as_bytes());
    key
}

/// The event id of an event-id key, as a number (`None` for any other key).
pub fn decode_event_id_key(key: &[u8]) -> Option<u128> {
    match key {
        [KIND_EVENT_ID, id @ ..] => Some(u128::from_be_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

/// The part of a key that goes into a run's bloom filter.
pub fn bloom_key(key: &[u8]) -> Option<&[u8]> {
    match key.first() {
        Some(&KIND_EVENT_ID) => Some(key),
        Some(_) if key.len() > 8 => key.get(..key.len() - 8),
        _ => None,
    }
}

/// The big-endian suffix of a key.
pub fn suffix(key: &[u8]) -> Option<u64> {
    let start = key.len().checked_sub(8)?;
    let raw: [u8; 8] = key.get(start..)?.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

/// `position | loc` as stored for aggregate and event-id entries.
pub fn position_loc_value(position: u64, loc: Loc) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&position.to_le_bytes());
    value[8..].copy_from_slice(&loc.0.to_le_bytes());
    value
}

pub fn decode_position_loc(value: &[u8]) -> Option<(u64, Loc)> {
    let position = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let loc = u64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
    Some((position, Loc(loc)))
}

pub fn decode_loc(value: &[u8]) -> Option<Loc> {
    Some(Loc(u64::from_le_bytes(value.get(..8)?.try_into().ok()?)))
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    #[test]
    fn aggregate_keys_sort_by_id_then_version_and_a_prefix_is_one_range() {
        let ids = ["ab", "a", "abc", "ab-1", "b", "ab\u{e9}", "aa"];
        let mut keys: Vec<(Vec<u8>, (&str, u64))> = Vec::new();
        for id in ids {
            for version in [1, 2, 300] {
                let mut key = Vec::new();
                write_aggregate_key(&mut key, id, version);
                assert!(key.starts_with(&aggregate_prefix(id)));
                keys.push((key, (id, version)));
            }
        }
        keys.sort();
        let order: Vec<(&str, u64)> = keys.iter().map(|(_, k)| *k).collect();
        let mut expected: Vec<(&str, u64)> = order.clone();
        expected.sort_by(|a, b| (a.0.as_bytes(), a.1).cmp(&(b.0.as_bytes(), b.1)));
        assert_eq!(order, expected, "key order is (id bytes, version)");

        for prefix in ["ab", "a", "abc", "b", "z", "ab-"] {
            let (from, to) = aggregate_prefix_range(prefix).expect("a range");
            let inside: Vec<&str> = keys
                .iter()
                .filter(|(key, _)| key.as_slice() >= from.as_slice() && key.as_slice() < to.as_slice())
                .map(|(_, (id, _))| *id)
                .collect();
            let wanted: Vec<&str> = order
                .iter()
                .map(|k| k.0)
                .filter(|id| id.starts_with(prefix))
                .collect();
            assert_eq!(inside, wanted, "prefix {prefix:?}");
        }
        assert_eq!(aggregate_prefix_range(""), None);
    }
}
