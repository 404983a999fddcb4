//! The position table of a run: where every 64th position is in the log, and what times the
//! positions around it carry.
//!
//! A run covers a contiguous range of positions. Its table holds one sample per block of up to
//! [`SAMPLE_EVERY`] positions: the block's first position and location, the least and greatest
//! `created_at` in the block (a zone map, so a time-bounded scan skips blocks without reading
//! them), and the block's first `recorded_at` (which never decreases along positions). Memory:
//! 40 bytes per 64 events.

use crate::log::format::{Loc, le_u64};

pub const SAMPLE_EVERY: usize = 64;
const SAMPLE_LEN: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub position: u64,
    pub loc: Loc,
    pub min_created: i64,
    pub max_created: i64,
    pub first_recorded: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PositionTable {
    pub samples: Vec<Sample>,
    /// One past the last position covered.
    pub end_position: u64,
}

impl PositionTable {
    /// Samples dense per-position columns starting at `first_position`.
    pub fn build(first_position: u64, locs: &[Loc], created: &[i64], recorded: &[i64]) -> PositionTable {
        let mut samples = Vec::with_capacity(locs.len().div_ceil(SAMPLE_EVERY));
        for (block, chunk) in created.chunks(SAMPLE_EVERY).enumerate() {
            let at = block * SAMPLE_EVERY;
            samples.push(Sample {
                position: first_position + at as u64,
                loc: locs[at],
                min_created: chunk.iter().copied().min().unwrap_or(i64::MIN),
                max_created: chunk.iter().copied().max().unwrap_or(i64::MAX),
                first_recorded: recorded[at],
            });
        }
        PositionTable {
            samples,
            end_position: first_position + locs.len() as u64,
        }
    }

    pub fn first_position(&self) -> Option<u64> {
        self.samples.first().map(|s| s.position)
    }

    /// The index of the sample whose block holds `position`.
    pub fn block_of(&self, position: u64) -> Option<usize> {
        if position >= self.end_position {
            return None;
        }
        self.samples
            .partition_point(|s| s.position <= position)
            .checked_sub(1)
    }

    /// One past the last position of block `index`.
    pub fn block_end(&self, index: usize) -> u64 {
        self.samples
            .get(index + 1)
            .map_or(self.end_position, |s| s.position)
    }

    /// Appends another table that continues this one.
    pub fn extend(&mut self, next: &PositionTable) {
        debug_assert!(self.samples.is_empty() || next.first_position() == Some(self.end_position));
        self.samples.extend_from_slice(&next.samples);
        self.end_position = next.end_position;
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.samples.len() * SAMPLE_LEN);
        out.extend_from_slice(&self.end_position.to_le_bytes());
        out.extend_from_slice(&(self.samples.len() as u64).to_le_bytes());
        for s in &self.samples {
            out.extend_from_slice(&s.position.to_le_bytes());
            out.extend_from_slice(&s.loc.0.to_le_bytes());
            out.extend_from_slice(&s.min_created.to_le_bytes());
            out.extend_from_slice(&s.max_created.to_le_bytes());
            out.extend_from_slice(&s.first_recorded.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<PositionTable, &'static str> {
        let head = bytes.get(..16).ok_or("position table is truncated")?;
        let end_position = le_u64(&head[..8]);
        let count = usize::try_from(le_u64(&head[8..16])).map_err(|_| "position table count overflows")?;
        let body = &bytes[16..];
        if Some(body.len()) != count.checked_mul(SAMPLE_LEN) {
            return Err("position table length does not match its count");
        }
        let samples: Vec<Sample> = body
            .chunks_exact(SAMPLE_LEN)
            .map(|c| Sample {
                position: le_u64(&c[0..8]),
                loc: Loc(le_u64(&c[8..16])),
                min_created: le_u64(&c[16..24]) as i64,
                max_created: le_u64(&c[24..32]) as i64,
                first_recorded: le_u64(&c[32..40]) as i64,
            })
            .collect();
        if samples.windows(2).any(|w| w[0].position >= w[1].position)
            || samples.last().is_some_and(|s| s.position >= end_position)
        {
            return Err("position table is not ascending");
        }
        Ok(PositionTable {
            samples,
            end_position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_locates_and_round_trips() {
        let locs: Vec<Loc> = (0..150).map(|i| Loc::new(1, 32 + i * 100)).collect();
        let created: Vec<i64> = (0..150).map(|i| 1000 - i).collect();
        let recorded: Vec<i64> = (0..150).map(|i| i * 10).collect();
        let table = PositionTable::build(11, &locs, &created, &recorded);
        assert_eq!(table.samples.len(), 3);
        assert_eq!(table.block_of(10), None);
        assert_eq!(table.block_of(11), Some(0));
        assert_eq!(table.block_of(75), Some(1));
        assert_eq!(table.block_of(160), Some(2));
        assert_eq!(table.block_of(161), None);
        assert_eq!(table.block_end(2), 161);
        assert_eq!(table.samples[1].min_created, 1000 - 127);
        assert_eq!(PositionTable::decode(&table.encode()), Ok(table));
    }
}
