//! [`Repeats`]: a chunk's long-range memory beside M1. M1 sees only its last `context` bytes (256
//! for the built-in M1); text repeats itself over longer ranges (names, phrases, boilerplate,
//! source code). `Repeats` finds the last place the current context occurred in the chunk so far
//! and predicts the byte that followed it; a small online logistic mixer weighs that prediction
//! against M1's own probability of the same byte, and the CDF is reshaped to carry the mixed
//! probability.
//!
//! # What it guarantees
//!
//! - **Integers only.** Hashing, match search, the mixer (fixed-point weights, a squash table
//!   interpolated from 33 integer knots, its inverse found by integer search) and the reshaping of
//!   the CDF use integer arithmetic: the same history and CDFs give the same CDFs on every machine,
//!   so an encoder and a decoder that feed it the same bytes stay in step.
//! - **Its own state per chunk.** A `Repeats` starts empty and learns only from the chunk it
//!   codes, so chunks stay independent.
//! - **Every byte stays codable.** The reshaped CDF has the same total and every frequency at least
//!   1; with no match in force it is M1's CDF unchanged.
//!
//! # Use
//!
//! Before coding byte `k`: `cdf = repeats.predict(&history[..k], &m1_cdf)`; after it:
//! `repeats.update(&history[..=k])`. Encoder and decoder make the same calls.

use super::{Cdf, DEFAULT_TOTAL_BITS};
use std::borrow::Cow;

/// Bytes of context a match must share before it predicts.
const MIN_MATCH: usize = 4;
/// The hash table holds about one entry per byte of the chunk, within these bounds.
const HASH_BITS: std::ops::RangeInclusive<u32> = 10..=20;
/// Longest match length measured backwards when a match is found (longer ones count as this).
const MAX_VERIFY: usize = 255;
/// Mixer contexts by match length ([`bucket`]).
const BUCKETS: usize = 16;
/// Mixer learning rate: a weight moves by input x error / 2^LEARN_SHIFT per byte.
const LEARN_SHIFT: u32 = 10;
/// Fixed-point unit of a mixer weight.
const WEIGHT_ONE: i32 = 1 << 16;
/// The smallest frequency the predicted byte may get: the other 255 bytes' floors of 1 can take
/// at most 255 counts from it.
const MIN_PREDICTED: u32 = 256;

/// Logistic `4096 / (1 + e^(-x))` at `x = -8, -7.5, .., 8`, rounded into `1..=4095`.
const SQUASH_KNOTS: [i32; 33] = [
    1, 2, 4, 6, 10, 17, 27, 45, 74, 120, 194, 311, 488, 747, 1102, 1546, 2048, 2550, 2994, 3349,
    3608, 3785, 3902, 3976, 4022, 4051, 4069, 4079, 4086, 4090, 4092, 4094, 4095,
];

/// The probability (12 bits) of a logit `d` in 1/256 units, `-2047..=2047`, interpolated
/// between the knots.
fn squash(d: i32) -> i32 {
    let d = d.clamp(-2047, 2047) + 2048;
    let (i, frac) = ((d >> 7) as usize, d & 127);
    (SQUASH_KNOTS[i] * (128 - frac) + SQUASH_KNOTS[i + 1] * frac + 64) >> 7
}

/// The logit (1/256 units) of a 12-bit probability: the smallest `d` whose [`squash`] reaches it.
fn stretch(p: i32) -> i32 {
    static TABLE: std::sync::OnceLock<Vec<i16>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = vec![0i16; 4096];
        let mut d = -2047;
        for (p, slot) in t.iter_mut().enumerate() {
            while d < 2047 && squash(d) < p as i32 {
                d += 1;
            }
            *slot = d as i16;
        }
        t
    });
    table[p.clamp(1, 4095) as usize] as i32
}

/// A chunk's match model and mixer (module docs).
pub struct Repeats {
    /// Hash of the `MIN_MATCH` bytes ending at a position -> that position + 1 (0: none).
    table: Vec<u32>,
    /// The table's size: 2^hash_bits entries.
    hash_bits: u32,
    /// Index in the history of the byte the match predicts next (valid while `len > 0`).
    ptr: usize,
    /// Length of the match in force, 0 for none.
    len: usize,
    /// Per bucket: how often the predicted byte came (16-bit probability) and how many times
    /// it was tried (capped), so early estimates move fast.
    hits: [(u32, u32); BUCKETS],
    /// Per bucket: weights of M1's logit, the hit rate's logit and a bias.
    weights: [[i32; 3]; BUCKETS],
    /// The prediction made for the next byte, to learn from once it is known.
    pending: Option<Prediction>,
}

/// What [`Repeats::predict`] used, for [`Repeats::update`] to learn from.
#[derive(Clone, Copy)]
struct Prediction {
    byte: u8,
    bucket: usize,
    inputs: [i32; 3],
    p: i32,
}

impl Repeats {
    /// An empty model for a chunk of `chunk_len` bytes (which sizes its table), before its
    /// first byte.
    pub fn new(chunk_len: usize) -> Self {
        let mut r = Repeats {
            table: Vec::new(),
            hash_bits: 0,
            ptr: 0,
            len: 0,
            hits: [(0, 0); BUCKETS],
            weights: [[0; 3]; BUCKETS],
            pending: None,
        };
        r.reset(chunk_len);
        r
    }

    /// Back to the empty model of [`new`](Repeats::new) for a chunk of `chunk_len` bytes,
    /// keeping its table's memory.
    pub fn reset(&mut self, chunk_len: usize) {
        self.hash_bits = chunk_len
            .next_power_of_two()
            .ilog2()
            .clamp(*HASH_BITS.start(), *HASH_BITS.end());
        self.table.clear();
        self.table.resize(1 << self.hash_bits, 0);
        self.ptr = 0;
        self.len = 0;
        self.hits = [(1 << 15, 0); BUCKETS];
        self.weights = [[WEIGHT_ONE * 3 / 10, WEIGHT_ONE * 7 / 10, 0]; BUCKETS];
        self.pending = None;
    }

    /// The CDF to code the byte after `history` with: `cdf` (M1's) reshaped so that the byte the
    /// match in force predicts gets the mixed probability, the others keeping their proportions;
    /// `cdf` itself when no match is in force. `cdf` must have the default total (`2^16`).
    pub fn predict<'c>(&mut self, history: &[u8], cdf: &'c Cdf) -> Cow<'c, Cdf> {
        self.pending = None;
        if self.len == 0 {
            return Cow::Borrowed(cdf);
        }
        debug_assert_eq!(cdf.total_bits(), DEFAULT_TOTAL_BITS);
        let byte = history[self.ptr];
        let bucket = bucket(self.len);
        let m1 = (cdf.freq(byte) >> 4) as i32;
        let hit = (self.hits[bucket].0 >> 4) as i32;
        let inputs = [stretch(m1), stretch(hit), 256];
        let w = &self.weights[bucket];
        let dot: i64 = (0..3).map(|i| w[i] as i64 * inputs[i] as i64).sum();
        let p = squash((dot >> 16) as i32);
        self.pending = Some(Prediction {
            byte,
            bucket,
            inputs,
            p,
        });
        Cow::Owned(reshape(cdf, byte, (p as u32) << 4))
    }

    /// Learns from the byte just coded (the last of `history`), then moves the match on: it
    /// extends when the byte was the predicted one, and otherwise ends; with none in force, the
    /// last `MIN_MATCH` bytes are looked up for a new one.
    pub fn update(&mut self, history: &[u8]) {
        let n = history.len();
        let Some(&byte) = history.last() else { return };
        if let Some(pred) = self.pending.take() {
            let hit = (byte == pred.byte) as i32;
            // Gradient step of the coding cost: error (12 bits) times each input.
            let err = (hit << 12) - pred.p;
            for (w, x) in self.weights[pred.bucket].iter_mut().zip(pred.inputs) {
                *w += (x * err) >> LEARN_SHIFT;
            }
            let (rate, tries) = &mut self.hits[pred.bucket];
            let target = (hit as u32) << 16;
            let step = (target as i64 - *rate as i64) / (*tries as i64 + 2);
            *rate = (*rate as i64 + step).clamp(1 << 4, (1 << 16) - (1 << 4)) as u32;
            *tries = (*tries + 1).min(254);
        }
        if self.len > 0 && history[self.ptr] == byte {
            self.len += 1;
            self.ptr += 1;
        } else {
            self.len = 0;
        }
        if n < MIN_MATCH {
            return;
        }
        let h = hash(&history[n - MIN_MATCH..], self.hash_bits);
        if self.len == 0 {
            let found = self.table[h] as usize;
            if found > 0 {
                let len = (0..MAX_VERIFY.min(found))
                    .take_while(|&l| history[found - 1 - l] == history[n - 1 - l])
                    .count();
                if len >= MIN_MATCH {
                    self.len = len;
                    self.ptr = found;
                }
            }
        }
        self.table[h] = n as u32;
    }
}

/// The mixer context of a match of `len` bytes: one per length below 16, then one per doubling
/// (long matches are the surest).
fn bucket(len: usize) -> usize {
    match len {
        ..16 => len - MIN_MATCH,
        _ => (16 - MIN_MATCH + (len / 16).ilog2() as usize).min(BUCKETS - 1),
    }
}

/// Hash of `MIN_MATCH` bytes into `bits` bits.
fn hash(bytes: &[u8], bits: u32) -> usize {
    let h = bytes.iter().fold(0u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x9E37_79B1).rotate_left(5)
    });
    (h.wrapping_mul(0x85EB_CA6B) >> (32 - bits)) as usize
}

/// `cdf` with `byte`'s frequency set near `target` (clamped so every byte keeps at least 1) and
/// the others scaled to fill the rest in proportion.
fn reshape(cdf: &Cdf, byte: u8, target: u32) -> Cdf {
    let total = cdf.total();
    let target = target.clamp(MIN_PREDICTED, total - 255);
    let others = (total - cdf.freq(byte)) as u64;
    let room = (total - target) as u64;
    let mut freqs = [0u32; 256];
    let mut used = 0;
    for (s, f) in freqs.iter_mut().enumerate() {
        if s != byte as usize {
            *f = ((cdf.freq(s as u8) as u64 * room / others) as u32).max(1);
            used += *f;
        }
    }
    freqs[byte as usize] = total - used;
    Cdf::from_frequencies(&freqs).expect("frequencies of at least 1 summing to the total")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::CdfQuantizer;

    #[test]
    fn squash_and_stretch_are_monotone_inverses() {
        assert_eq!(squash(0), 2048);
        assert!((1..4096).all(|p| squash(stretch(p)) >= p));
        assert!((-2047..2047).all(|d| squash(d) <= squash(d + 1)));
        assert!((2..4095).all(|p| stretch(p - 1) <= stretch(p)));
    }

    /// Without a match the CDF is M1's; once the chunk repeats, the repeated bytes get more
    /// mass than M1 gives them, and every CDF keeps the total and the floor.
    #[test]
    fn repeats_sharpen_a_repeated_passage_and_only_then() {
        let flat = CdfQuantizer::default().quantize(&[1.0; 256]).unwrap();
        let phrase = b"a passage of text long enough to repeat, ";
        let text: Vec<u8> = phrase.iter().chain(phrase).chain(phrase).copied().collect();
        let mut r = Repeats::new(text.len());
        let mut gained = 0;
        for k in 0..text.len() {
            let cdf = r.predict(&text[..k], &flat);
            assert_eq!(cdf.total(), flat.total());
            assert!((0..=255).all(|s| cdf.freq(s) >= 1));
            if k < phrase.len() + MIN_MATCH {
                assert_eq!(*cdf, flat, "no match before the first repeat, at byte {k}");
            } else if cdf.freq(text[k]) > flat.freq(text[k]) {
                gained += 1;
            }
            r.update(&text[..=k]);
        }
        assert!(gained > phrase.len(), "only {gained} bytes sharpened");
    }

    #[test]
    fn reshape_keeps_the_total_and_floor_at_any_target() {
        let cdf = CdfQuantizer::default()
            .quantize(&std::array::from_fn::<f32, 256, _>(|i| (i * i) as f32))
            .unwrap();
        for target in [0, 1, 255, 256, 4096, 65_000, 65_535, 65_536] {
            for byte in [0u8, 1, 200, 255] {
                let c = reshape(&cdf, byte, target);
                assert_eq!(c.total(), 1 << 16);
                assert!((0..=255).all(|s| c.freq(s) >= 1));
            }
        }
    }
}
