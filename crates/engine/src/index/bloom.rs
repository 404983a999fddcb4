//! A standard bloom filter, stored inside every run file.
//!
//! The filter answers "is this key possibly in the run?" so that a lookup can skip runs that
//! certainly do not hold it, without reading a block. It is sized for about 1% false positives
//! at the expected item count ([`BITS_PER_ITEM_TENTHS`], [`HASH_COUNT`]); inserting more items
//! than expected only raises that rate, it never causes a false negative.
//!
//! # Hashing (on disk: must never change)
//! A key is hashed once with `xxh3_128` (seed 0). The low 64 bits are `h1`, the high 64 bits
//! ORed with 1 are `h2` (odd, so the probe sequence never collapses). Probe `i` (for
//! `i in 0..k`) sets or tests bit `fastrange(h1 + i * h2, m)`, with wrapping `u64`
//! arithmetic, where `fastrange(x, m) = (x as u128 * m as u128) >> 64` maps `x` onto `0..m`
//! without a division. Bit `b` is bit `b % 64` (least significant first) of word `b / 64`.
//! This is the "double hashing" scheme of Kirsch and Mitzenmacher.
//!
//! # Serialized form ([`Bloom::to_bytes`])
//! ```text
//! offset  size  field
//! 0       4     k: hash count, u32 LE, 1..=MAX_HASH_COUNT
//! 4       4     w: word count, u32 LE, 1..=MAX_WORDS
//! 8       8*w   the bit words, each u64 LE; m = 64 * w bits
//! ```
//! The bytes carry no checksum of their own: the run footer covers them with a CRC32C.

use std::fmt;

use xxhash_rust::xxh3::xxh3_128;

/// Bits per expected item, in tenths: 9.6 bits and 7 probes give a 1.0% false-positive rate.
pub const BITS_PER_ITEM_TENTHS: u64 = 96;
/// Probes per key; `round(9.6 * ln 2) = 7` is optimal for 9.6 bits per item.
pub const HASH_COUNT: u32 = 7;
/// The largest hash count [`Bloom::from_bytes`] accepts; more is never useful.
pub const MAX_HASH_COUNT: u32 = 32;
/// The most words a filter may have: 2^25 words = 256 MiB of bits, enough for about 220
/// million items at 1%. Larger expectations are clamped (the rate then rises gracefully), so a
/// filter's memory is bounded no matter what a caller asks for or what a file claims.
pub const MAX_WORDS: u32 = 1 << 25;

/// The header before the words: hash count and word count.
const HEADER_LEN: usize = 8;

/// A bloom filter over byte strings. See the module docs for the exact, stable scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct Bloom {
    /// Invariant: `1 <= words.len() <= MAX_WORDS`.
    words: Vec<u64>,
    /// Invariant: `1 <= hash_count <= MAX_HASH_COUNT`.
    hash_count: u32,
}

impl Bloom {
    /// An empty filter sized for ~1% false positives once `expected_items` are inserted.
    /// At least one word, at most [`MAX_WORDS`].
    pub fn with_capacity(expected_items: usize) -> Bloom {
        let items = u64::try_from(expected_items).unwrap_or(u64::MAX);
        let bits = items.saturating_mul(BITS_PER_ITEM_TENTHS) / 10;
        let words = bits.div_ceil(64).clamp(1, u64::from(MAX_WORDS));
        let words = usize::try_from(words).expect("MAX_WORDS fits in usize");
        Bloom {
            words: vec![0; words],
            hash_count: HASH_COUNT,
        }
    }

    /// Adds `key`.
    pub fn insert(&mut self, key: &[u8]) {
        let bits = self.bit_count();
        let (mut probe, step) = hashes(key);
        for _ in 0..self.hash_count {
            let bit = fastrange(probe, bits);
            let word = self
                .words
                .get_mut(word_index(bit))
                .expect("fastrange stays below the bit count");
            *word |= 1 << (bit % 64);
            probe = probe.wrapping_add(step);
        }
    }

    /// False if `key` was certainly never inserted; true if it probably was.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        let bits = self.bit_count();
        let (mut probe, step) = hashes(key);
        for _ in 0..self.hash_count {
            let bit = fastrange(probe, bits);
            let word = self
                .words
                .get(word_index(bit))
                .expect("fastrange stays below the bit count");
            if word & (1 << (bit % 64)) == 0 {
                return false;
            }
            probe = probe.wrapping_add(step);
        }
        true
    }

    /// The number of bits, `m`.
    pub fn bit_count(&self) -> u64 {
        // At most 2^25 * 64 = 2^31: no overflow.
        self.words.len() as u64 * 64
    }

    /// The number of probes per key, `k`.
    /// An estimate of how many distinct keys were inserted, from the share of bits set
    /// (n ≈ −m/k · ln(1 − X/m)); used to size the filter of a merged run.
    pub fn estimated_items(&self) -> u64 {
        let m = self.bit_count() as f64;
        let set: u64 = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
        let fraction = (set as f64 / m).min(1.0 - 1e-9);
        let k = f64::from(self.hash_count.max(1));
        (-(m / k) * (1.0 - fraction).ln()).ceil() as u64
    }

    pub fn hash_count(&self) -> u32 {
        self.hash_count
    }

    /// The length of [`Bloom::to_bytes`] without building it.
    pub fn serialized_len(&self) -> usize {
        HEADER_LEN + self.words.len() * 8
    }

    /// The stable serialized form (module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.serialized_len());
        let word_count = u32::try_from(self.words.len()).expect("word count is at most MAX_WORDS");
        out.extend_from_slice(&self.hash_count.to_le_bytes());
        out.extend_from_slice(&word_count.to_le_bytes());
        for word in &self.words {
            out.extend_from_slice(&word.to_le_bytes());
        }
        debug_assert_eq!(out.len(), self.serialized_len());
        out
    }

    /// Parses [`Bloom::to_bytes`]; `None` when the length, the hash count or the word count is
    /// out of range. Never panics, whatever the input.
    pub fn from_bytes(bytes: &[u8]) -> Option<Bloom> {
        let (header, body) = bytes.split_first_chunk::<HEADER_LEN>()?;
        let (hash_count, word_count) = header.split_at(4);
        let hash_count = u32::from_le_bytes(hash_count.try_into().ok()?);
        let word_count = u32::from_le_bytes(word_count.try_into().ok()?);
        if !(1..=MAX_HASH_COUNT).contains(&hash_count) || !(1..=MAX_WORDS).contains(&word_count) {
            return None;
        }
        if body.len() != usize::try_from(word_count).ok()?.checked_mul(8)? {
            return None;
        }
        let words = body
            .chunks_exact(8)
            .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("chunks_exact yields 8 bytes")))
            .collect();
        Some(Bloom { words, hash_count })
    }
}

impl fmt::Debug for Bloom {
    // The bit words are noise in a debug print; their count and the probe count are not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bloom")
            .field("bits", &self.bit_count())
            .field("hash_count", &self.hash_count)
            .finish()
    }
}

/// `(h1, h2)` of the module docs.
fn hashes(key: &[u8]) -> (u64, u64) {
    let hash = xxh3_128(key);
    let low = hash as u64;
    let high = (hash >> 64) as u64;
    (low, high | 1)
}

/// Maps `x` uniformly onto `0..range` (Lemire's multiply-shift), without a division.
fn fastrange(x: u64, range: u64) -> u64 {
    ((u128::from(x) * u128::from(range)) >> 64) as u64
}

fn word_index(bit: u64) -> usize {
    // bit < 2^31, so this never truncates.
    (bit / 64) as usize
}

#[cfg(test)]
mod tests {

    #[test]
    fn estimates_how_many_keys_it_holds() {
        for (capacity, inserted) in [(10_000usize, 10_000u64), (30_000, 10_000), (1_000, 100)] {
            let mut bloom = Bloom::with_capacity(capacity);
            for i in 0..inserted {
                bloom.insert(&i.to_le_bytes());
                // Inserting a key twice does not count it twice.
                bloom.insert(&i.to_le_bytes());
            }
            let estimate = bloom.estimated_items();
            assert!(
                estimate.abs_diff(inserted) * 20 <= inserted,
                "{estimate} for {inserted} keys"
            );
        }
    }

    use super::*;

    fn key(i: u64) -> Vec<u8> {
        format!("key-{i}").into_bytes()
    }

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let n = 20_000;
        let mut bloom = Bloom::with_capacity(n as usize);
        for i in 0..n {
            bloom.insert(&key(i));
        }
        for i in 0..n {
            assert!(bloom.may_contain(&key(i)), "false negative for {i}");
        }
        let probes = 100_000;
        let false_positives = (n..n + probes).filter(|&i| bloom.may_contain(&key(i))).count();
        let rate = false_positives as f64 / probes as f64;
        assert!(rate < 0.015, "false-positive rate {rate}");
        assert!(
            rate > 0.005,
            "false-positive rate {rate} is suspiciously low: is the filter oversized?"
        );
    }

    #[test]
    fn round_trips_through_bytes() {
        let mut bloom = Bloom::with_capacity(1000);
        for i in 0..1000 {
            bloom.insert(&key(i));
        }
        let bytes = bloom.to_bytes();
        assert_eq!(bytes.len(), bloom.serialized_len());
        let back = Bloom::from_bytes(&bytes).expect("valid bytes");
        assert_eq!(back, bloom);
        assert!((0..1000).all(|i| back.may_contain(&key(i))));
    }

    #[test]
    fn empty_filter_contains_nothing() {
        let bloom = Bloom::with_capacity(0);
        assert_eq!(bloom.bit_count(), 64);
        assert!(!bloom.may_contain(b"anything"));
        assert!(!bloom.may_contain(b""));
    }

    #[test]
    fn huge_capacity_is_clamped() {
        // Only computes the size; does not allocate beyond MAX_WORDS.
        let words = (u64::MAX / 10).div_ceil(64).clamp(1, u64::from(MAX_WORDS));
        assert_eq!(words, u64::from(MAX_WORDS));
    }

    #[test]
    fn malformed_bytes_are_refused() {
        let good = Bloom::with_capacity(100).to_bytes();
        assert!(Bloom::from_bytes(&[]).is_none());
        assert!(Bloom::from_bytes(&good[..7]).is_none());
        assert!(Bloom::from_bytes(&good[..good.len() - 1]).is_none());
        let mut longer = good.clone();
        longer.push(0);
        assert!(Bloom::from_bytes(&longer).is_none());
        let mut zero_hashes = good.clone();
        zero_hashes[..4].copy_from_slice(&0u32.to_le_bytes());
        assert!(Bloom::from_bytes(&zero_hashes).is_none());
        let mut too_many_hashes = good.clone();
        too_many_hashes[..4].copy_from_slice(&(MAX_HASH_COUNT + 1).to_le_bytes());
        assert!(Bloom::from_bytes(&too_many_hashes).is_none());
        let mut zero_words = good.clone();
        zero_words[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(Bloom::from_bytes(&zero_words[..8]).is_none());
        let mut huge_words = good;
        huge_words[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Bloom::from_bytes(&huge_words).is_none());
    }

    /// The hash is on disk: a change to it would make every existing run lie. These values were
    /// computed once with the scheme in the module docs and must never change.
    #[test]
    fn hash_scheme_is_stable() {
        let mut bloom = Bloom::with_capacity(10);
        bloom.insert(b"factstore");
        let set: Vec<u64> = (0..bloom.bit_count())
            .filter(|&bit| bloom.words[word_index(bit)] & (1 << (bit % 64)) != 0)
            .collect();
        assert_eq!(bloom.bit_count(), 128);
        assert_eq!(set, STABLE_BITS);
        // The published XXH3-128 of the empty input, to catch a change in the library.
        assert_eq!(xxh3_128(b""), 0x99aa_06d3_0147_98d8_6001_c324_468d_497f);
    }

    const STABLE_BITS: &[u64] = &[16, 35, 55, 75, 94, 114, 124];
}
