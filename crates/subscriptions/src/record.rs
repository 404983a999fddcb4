//! The durable state of a group ([`Image`]) and the journal records that change it.
//!
//! A group's journal holds an image (written when the group is created, and again at every
//! compaction or change of definition) followed by records, each of which is a plain set
//! operation on the image, so replaying them needs no event from the store. Layouts (all
//! integers little-endian) are in `docs/format.md`:
//!
//! ```text
//! image       tag 1, name len u16, name, definition JSON len u32, definition JSON,
//!             checkpoint u64, acked: n u32 + n × u64, parked: n u32 + n × (u64, u32 attempts),
//!             replaying: n u32 + n × (u64, u32), attempts: n u32 + n × (u64, u32)
//! ack         tag 2, n u32, n × u64
//! park        tag 3, n u32, n × (u64 position, u32 attempts)
//! delivered   tag 4, n u32, n × u64
//! replay      tag 5, n u32, n × u64
//! checkpoint  tag 6, u64
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::definition::GroupDefinition;
use crate::error::SubscriptionError;

const TAG_IMAGE: u8 = 1;
const TAG_ACK: u8 = 2;
const TAG_PARK: u8 = 3;
const TAG_DELIVERED: u8 = 4;
const TAG_REPLAY: u8 = 5;
const TAG_CHECKPOINT: u8 = 6;

/// A group's durable state.
///
/// Invariants: `acked` and `attempts` hold positions above `checkpoint` only; a position is in
/// at most one of `acked`, `parked` and `replaying`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub definition: GroupDefinition,
    /// Every position up to it is acked, parked, or passed over by the filter (replayed
    /// events, in `replaying`, aside).
    pub checkpoint: u64,
    /// Acked positions above the checkpoint.
    pub acked: BTreeSet<u64>,
    /// Parked positions, with the deliveries each had.
    pub parked: BTreeMap<u64, u32>,
    /// Parked events put back into delivery and not yet acked or parked again, with their
    /// deliveries since. After a load, only those at or below the checkpoint (the others are
    /// read again from the store like any unacked event).
    pub replaying: BTreeMap<u64, u32>,
    /// Deliveries of unacked positions above the checkpoint.
    pub attempts: BTreeMap<u64, u32>,
}

/// One change to an [`Image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Image(Box<Image>),
    Ack(Vec<u64>),
    Park(Vec<(u64, u32)>),
    Delivered(Vec<u64>),
    Replay(Vec<u64>),
    Checkpoint(u64),
}

impl Image {
    /// A new group's image.
    pub fn new(name: &str, definition: GroupDefinition, checkpoint: u64) -> Image {
        Image {
            name: name.to_owned(),
            definition,
            checkpoint,
            acked: BTreeSet::new(),
            parked: BTreeMap::new(),
            replaying: BTreeMap::new(),
            attempts: BTreeMap::new(),
        }
    }

    /// Applies one record (not an image).
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Image(image) => *self = (**image).clone(),
            Record::Ack(positions) => {
                for &p in positions {
                    self.parked.remove(&p);
                    self.attempts.remove(&p);
                    self.replaying.remove(&p);
                    if p > self.checkpoint {
                        self.acked.insert(p);
                    }
                }
            }
            Record::Park(parked) => {
                for &(p, attempts) in parked {
                    self.replaying.remove(&p);
                    self.attempts.remove(&p);
                    self.acked.remove(&p);
                    self.parked.insert(p, attempts);
                }
            }
            Record::Delivered(positions) => {
                for &p in positions {
                    if let Some(n) = self.replaying.get_mut(&p) {
                        *n = n.saturating_add(1);
                    } else if p > self.checkpoint && !self.acked.contains(&p) && !self.parked.contains_key(&p)
                    {
                        let n = self.attempts.entry(p).or_insert(0);
                        *n = n.saturating_add(1);
                    }
                }
            }
            Record::Replay(positions) => {
                for &p in positions {
                    if self.parked.remove(&p).is_some() {
                        self.attempts.remove(&p);
                        self.replaying.insert(p, 0);
                    }
                }
            }
            Record::Checkpoint(c) => {
                if *c > self.checkpoint {
                    self.checkpoint = *c;
                    self.acked = self.acked.split_off(&(c + 1));
                    self.attempts = self.attempts.split_off(&(c + 1));
                }
            }
        }
    }

    /// The image as a group starts from it: replayed events above the checkpoint are dropped
    /// from `replaying`, since reading from the checkpoint finds them again (their attempts
    /// move to `attempts`).
    pub fn settle(&mut self) {
        let above = self.replaying.split_off(&(self.checkpoint + 1));
        for (p, n) in above {
            if n > 0 {
                self.attempts.insert(p, n);
            }
        }
    }

    /// Replays a journal: an image first, then records.
    pub fn replay(records: &[Vec<u8>]) -> Result<Image, SubscriptionError> {
        let mut records = records.iter().enumerate();
        let mut image = match records.next().map(|(_, bytes)| Record::decode(bytes)) {
            Some(Ok(Record::Image(image))) => *image,
            Some(Ok(_)) => {
                return Err(SubscriptionError::Internal(
                    "the journal does not begin with the group's image".to_owned(),
                ));
            }
            Some(Err(e)) => return Err(e),
            None => return Err(SubscriptionError::Internal("the journal is empty".to_owned())),
        };
        for (index, bytes) in records {
            let record = Record::decode(bytes)
                .map_err(|e| SubscriptionError::Internal(format!("record {index} of the journal: {e}")))?;
            image.apply(&record);
        }
        image.settle();
        Ok(image)
    }
}

impl Record {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Record::Image(image) => {
                out.push(TAG_IMAGE);
                let name = image.name.as_bytes();
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(name);
                // Serialising a plain struct into a Vec cannot fail.
                let definition = serde_json::to_vec(&image.definition).unwrap_or_default();
                out.extend_from_slice(&(definition.len() as u32).to_le_bytes());
                out.extend_from_slice(&definition);
                out.extend_from_slice(&image.checkpoint.to_le_bytes());
                put_positions(&mut out, image.acked.iter().copied(), image.acked.len());
                put_pairs(&mut out, &image.parked);
                put_pairs(&mut out, &image.replaying);
                put_pairs(&mut out, &image.attempts);
            }
            Record::Ack(positions) => {
                out.push(TAG_ACK);
                put_positions(&mut out, positions.iter().copied(), positions.len());
            }
            Record::Park(parked) => {
                out.push(TAG_PARK);
                out.extend_from_slice(&(parked.len() as u32).to_le_bytes());
                for (p, n) in parked {
                    out.extend_from_slice(&p.to_le_bytes());
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
            Record::Delivered(positions) => {
                out.push(TAG_DELIVERED);
                put_positions(&mut out, positions.iter().copied(), positions.len());
            }
            Record::Replay(positions) => {
                out.push(TAG_REPLAY);
                put_positions(&mut out, positions.iter().copied(), positions.len());
            }
            Record::Checkpoint(c) => {
                out.push(TAG_CHECKPOINT);
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        out
    }

    /// Reads a record, refusing any byte out of place.
    pub fn decode(bytes: &[u8]) -> Result<Record, SubscriptionError> {
        let mut r = Reader { bytes, at: 0 };
        let record = match r.u8()? {
            TAG_IMAGE => {
                let name_len = r.u16()? as usize;
                let name = std::str::from_utf8(r.take(name_len)?)
                    .map_err(|_| bad("the group name is not UTF-8"))?
                    .to_owned();
                let definition_len = r.u32()? as usize;
                let definition = serde_json::from_slice(r.take(definition_len)?)
                    .map_err(|e| bad(&format!("the definition does not parse: {e}")))?;
                let checkpoint = r.u64()?;
                let acked = r.positions()?.into_iter().collect();
                let parked = r.pairs()?.into_iter().collect();
                let replaying = r.pairs()?.into_iter().collect();
                let attempts = r.pairs()?.into_iter().collect();
                Record::Image(Box::new(Image {
                    name,
                    definition,
                    checkpoint,
                    acked,
                    parked,
                    replaying,
                    attempts,
                }))
            }
            TAG_ACK => Record::Ack(r.positions()?),
            TAG_PARK => Record::Park(r.pairs()?),
            TAG_DELIVERED => Record::Delivered(r.positions()?),
            TAG_REPLAY => Record::Replay(r.positions()?),
            TAG_CHECKPOINT => Record::Checkpoint(r.u64()?),
            tag => return Err(bad(&format!("unknown record tag {tag}"))),
        };
        if r.at != bytes.len() {
            return Err(bad("bytes after the end of the record"));
        }
        Ok(record)
    }
}

fn bad(reason: &str) -> SubscriptionError {
    SubscriptionError::Internal(format!("malformed subscription record: {reason}"))
}

fn put_positions(out: &mut Vec<u8>, positions: impl Iterator<Item = u64>, len: usize) {
    out.reserve(4 + 8 * len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    for p in positions {
        out.extend_from_slice(&p.to_le_bytes());
    }
}

fn put_pairs(out: &mut Vec<u8>, pairs: &BTreeMap<u64, u32>) {
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (p, n) in pairs {
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], SubscriptionError> {
        let end = self.at.checked_add(len).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(bad("the record ends early"));
        };
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| bad("the record ends early"))?;
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SubscriptionError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, SubscriptionError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, SubscriptionError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, SubscriptionError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, SubscriptionError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count, checked against the bytes left so a corrupt count cannot allocate much.
    fn count(&mut self, item_len: usize) -> Result<usize, SubscriptionError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_len) > self.bytes.len() - self.at {
            return Err(bad("a count runs past the end of the record"));
        }
        Ok(n)
    }

    fn positions(&mut self) -> Result<Vec<u64>, SubscriptionError> {
        let n = self.count(8)?;
        (0..n).map(|_| self.u64()).collect()
    }

    fn pairs(&mut self) -> Result<Vec<(u64, u32)>, SubscriptionError> {
        let n = self.count(12)?;
        (0..n).map(|_| Ok((self.u64()?, self.u32()?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{Ordering, Start};

    fn sample_image() -> Image {
        let mut image = Image::new(
            "billing",
            GroupDefinition {
                start: Start::After(3),
                ordering: Ordering::PerAggregate,
                ..GroupDefinition::default()
            },
            3,
        );
        image.acked.insert(9);
        image.parked.insert(2, 5);
        image.replaying.insert(1, 1);
        image.attempts.insert(5, 2);
        image
    }

    #[test]
    fn records_round_trip_and_refuse_truncation() {
        let records = [
            Record::Image(Box::new(sample_image())),
            Record::Ack(vec![4, 5]),
            Record::Park(vec![(7, 5)]),
            Record::Delivered(vec![6]),
            Record::Replay(vec![2]),
            Record::Checkpoint(8),
        ];
        for record in records {
            let bytes = record.encode();
            assert_eq!(Record::decode(&bytes).expect("decodes"), record);
            for cut in 0..bytes.len() {
                assert!(Record::decode(&bytes[..cut]).is_err(), "{record:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Record::decode(&longer).is_err());
        }
    }

    #[test]
    fn replaying_records_rebuilds_the_state() {
        let journal: Vec<Vec<u8>> = [
            Record::Image(Box::new(sample_image())),
            Record::Delivered(vec![4, 6, 1]),
            Record::Ack(vec![4, 1]),
            Record::Park(vec![(6, 1)]),
            Record::Replay(vec![2]),
            Record::Checkpoint(6),
            Record::Delivered(vec![2]),
        ]
        .iter()
        .map(Record::encode)
        .collect();
        let image = Image::replay(&journal).expect("replays");
        assert_eq!(image.checkpoint, 6);
        assert_eq!(image.acked, BTreeSet::from([9]));
        assert_eq!(image.parked, BTreeMap::from([(6, 1)]));
        // 1 was acked; 2 was replayed and delivered once since.
        assert_eq!(image.replaying, BTreeMap::from([(2, 1)]));
        assert!(image.attempts.is_empty());
    }
}
