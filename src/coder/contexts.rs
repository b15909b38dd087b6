//! [`Contexts`]: a chunk's own byte statistics beside M1 and its repeats. M1 was trained on
//! books; what a file says about itself (the bytes that follow each context of 1 to 6 bytes
//! inside the chunk so far, and its byte frequencies) corrects M1 where the file is unlike its
//! training, web pages above all. The given CDF and each order's counts are each a distribution
//! over the next byte; they are mixed geometrically (`p(x) ∝ Π p_i(x)^{w_i}`), the weights
//! learned online by the coding cost's gradient, one weight set per small context (the highest
//! order seen, how often, and the previous byte's kind).
//!
//! # What it guarantees
//!
//! - **Integers only.** Logarithms by integer squaring, the exponential by a table of integer
//!   constants, fixed-point weights: the same history and CDFs give the same CDFs on every
//!   machine, so an encoder and a decoder that make the same calls stay in step.
//! - **Its own state per chunk.** A `Contexts` starts empty and learns only from the chunk it
//!   codes, so chunks stay independent.
//! - **Every byte stays codable.** The CDF it returns has the total `2^16` and every frequency at
//!   least 1.
//!
//! # Use
//!
//! Before coding byte `k`: `cdf = contexts.predict(&history[..k], &cdf)`; after it:
//! `contexts.update(&history[..=k])`. Encoder and decoder make the same calls.

use super::{Cdf, DEFAULT_TOTAL_BITS};
use std::collections::HashMap;

/// Context lengths of the counted orders.
const ORDERS: [usize; 5] = [1, 2, 3, 4, 6];
/// Mixer inputs: the given CDF, the byte frequencies (order 0), and each order.
const INPUTS: usize = 2 + ORDERS.len();
/// Each byte's prior count is `2^-PRIOR_SHIFT` in an order's context, `2^-ORDER0_PRIOR_SHIFT`
/// in the chunk's byte frequencies.
const PRIOR_SHIFT: u32 = 5;
const ORDER0_PRIOR_SHIFT: u32 = 1;
/// Fixed-point unit of a weight, and its bound.
const WEIGHT_ONE: i32 = 1 << 16;
const WEIGHT_MAX: i32 = 8 << 16;
/// A weight moves by `error (1/256 bit) x LEARN_MUL >> LEARN_SHIFT` units per byte: a rate of
/// about 0.003 per nat, the best of those tried on a slice of web text.
const LEARN_MUL: i64 = 17;
const LEARN_SHIFT: u32 = 5;
/// Weight sets: the highest order seen (or none) x how often it was seen (1, 2-3, 4 or more)
/// x the previous byte's kind ([`kind`]).
const CONFIDENCE: usize = 3;
const KINDS: usize = 5;
const SETS: usize = (ORDERS.len() + 1) * CONFIDENCE * KINDS;
/// The frequencies every byte keeps (1 each) before the rest is shared out.
const FLOOR_TOTAL: u64 = 256;
/// Counts below this take their logarithm from a table.
const LOG_TABLE_LEN: usize = 4096;

/// `2^16 x 2^(-k/256)`, rounded, for `k = 0..256`.
const EXP2_FRAC: [u32; 256] = [
    65536, 65359, 65182, 65006, 64830, 64655, 64480, 64306, 64132, 63958, 63785, 63613, 63441,
    63269, 63098, 62928, 62757, 62588, 62419, 62250, 62081, 61914, 61746, 61579, 61413, 61247,
    61081, 60916, 60751, 60587, 60423, 60260, 60097, 59934, 59772, 59611, 59449, 59289, 59128,
    58968, 58809, 58650, 58491, 58333, 58176, 58018, 57861, 57705, 57549, 57393, 57238, 57083,
    56929, 56775, 56622, 56468, 56316, 56163, 56012, 55860, 55709, 55558, 55408, 55258, 55109,
    54960, 54811, 54663, 54515, 54368, 54221, 54074, 53928, 53782, 53637, 53492, 53347, 53203,
    53059, 52916, 52773, 52630, 52488, 52346, 52204, 52063, 51922, 51782, 51642, 51502, 51363,
    51224, 51085, 50947, 50810, 50672, 50535, 50399, 50262, 50126, 49991, 49856, 49721, 49586,
    49452, 49319, 49185, 49052, 48920, 48787, 48655, 48524, 48393, 48262, 48131, 48001, 47871,
    47742, 47613, 47484, 47356, 47228, 47100, 46973, 46846, 46719, 46593, 46467, 46341, 46216,
    46091, 45966, 45842, 45718, 45594, 45471, 45348, 45225, 45103, 44981, 44859, 44738, 44617,
    44497, 44376, 44256, 44137, 44017, 43898, 43780, 43661, 43543, 43425, 43308, 43191, 43074,
    42958, 42841, 42726, 42610, 42495, 42380, 42265, 42151, 42037, 41923, 41810, 41697, 41584,
    41472, 41360, 41248, 41136, 41025, 40914, 40804, 40693, 40583, 40473, 40364, 40255, 40146,
    40037, 39929, 39821, 39714, 39606, 39499, 39392, 39286, 39180, 39074, 38968, 38863, 38757,
    38653, 38548, 38444, 38340, 38236, 38133, 38030, 37927, 37824, 37722, 37620, 37518, 37417,
    37316, 37215, 37114, 37014, 36914, 36814, 36715, 36615, 36516, 36417, 36319, 36221, 36123,
    36025, 35928, 35831, 35734, 35637, 35541, 35445, 35349, 35253, 35158, 35063, 34968, 34874,
    34779, 34685, 34591, 34498, 34405, 34312, 34219, 34126, 34034, 33942, 33850, 33759, 33667,
    33576, 33486, 33395, 33305, 33215, 33125, 33035, 32946, 32857,
];

/// `log2(n)` in 1/256 bit, rounded down: the integer part from the leading bit, the fraction by
/// squaring the mantissa (30 fraction bits) eight times.
fn log2_q8(n: u64) -> i32 {
    debug_assert!(n > 0);
    let ip = 63 - n.leading_zeros();
    let mut m = if ip <= 30 {
        n << (30 - ip)
    } else {
        n >> (ip - 30)
    };
    let mut frac = 0;
    for _ in 0..8 {
        m = (m * m) >> 30;
        frac <<= 1;
        if m >= 1 << 31 {
            m >>= 1;
            frac |= 1;
        }
    }
    (ip as i32) * 256 + frac
}

/// `2^16 x 2^(-d/256)` for `d >= 0` (0 once it is below one unit's worth).
fn exp2_neg(d: u32) -> u32 {
    let shift = d >> 8;
    if shift >= 32 {
        return 0;
    }
    EXP2_FRAC[(d & 255) as usize] >> shift
}

/// `log2(c + 2^-shift)` in 1/256 bit, up to a constant: `log2(c 2^shift + 1)`.
fn log_count(c: u32, shift: u32) -> i32 {
    struct Tables([[i32; LOG_TABLE_LEN]; 2]);
    static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let mut t = [[0; LOG_TABLE_LEN]; 2];
        for (row, s) in t.iter_mut().zip([PRIOR_SHIFT, ORDER0_PRIOR_SHIFT]) {
            for (c, v) in row.iter_mut().enumerate() {
                *v = log2_q8(((c as u64) << s) + 1);
            }
        }
        Tables(t)
    });
    match (shift, c as usize) {
        (PRIOR_SHIFT, c) if c < LOG_TABLE_LEN => t.0[0][c],
        (ORDER0_PRIOR_SHIFT, c) if c < LOG_TABLE_LEN => t.0[1][c],
        _ => log2_q8(((c as u64) << shift) + 1),
    }
}

/// `log2(f)` in 1/256 bit for a CDF frequency `f` in `1..=2^16`.
fn log_freq(f: u32) -> i32 {
    static TABLE: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| (0..=1u64 << 16).map(|f| log2_q8(f.max(1))).collect());
    t[f as usize]
}

/// The kind of the byte before the one predicted: lower case, upper case, space, line feed,
/// anything else (also the chunk's first byte).
fn kind(prev: Option<&u8>) -> usize {
    match prev {
        Some(b'a'..=b'z') => 0,
        Some(b'A'..=b'Z') => 1,
        Some(b' ') => 2,
        Some(b'\n') => 3,
        _ => 4,
    }
}

/// The key of the `order` bytes before position `end` of `history` (fewer at its start).
fn key(history: &[u8], end: usize, order: usize) -> u64 {
    let from = end.saturating_sub(order);
    history[from..end]
        .iter()
        .fold((order as u64) << 56, |k, &b| (k << 8) | b as u64)
}

/// One order's counts: each context seen leads to a list of the bytes seen after it, kept in
/// one arena (12 bytes a byte seen, where a vector per context costs a heap block each).
#[derive(Default)]
struct OrderCounts {
    /// A context's key to its first node.
    heads: HashMap<u64, u32>,
    nodes: Vec<Node>,
}

struct Node {
    count: u32,
    /// The context's next node; `u32::MAX` ends its list.
    next: u32,
    byte: u8,
}

impl OrderCounts {
    /// The bytes seen after context `key`, with their counts.
    fn seen(&self, key: u64) -> impl Iterator<Item = (u8, u32)> + '_ {
        let mut at = self.heads.get(&key).copied().unwrap_or(u32::MAX);
        std::iter::from_fn(move || {
            let n = self.nodes.get(at as usize)?;
            at = n.next;
            Some((n.byte, n.count))
        })
    }

    /// Counts `byte` after context `key`.
    fn count(&mut self, key: u64, byte: u8) {
        let fresh = self.nodes.len() as u32;
        let head = *self.heads.entry(key).or_insert(fresh);
        let mut at = head;
        while let Some(n) = self.nodes.get_mut(at as usize) {
            if n.byte == byte {
                n.count += 1;
                return;
            }
            at = n.next;
        }
        // A new byte for this context goes first in its list.
        let next = if head == fresh { u32::MAX } else { head };
        self.nodes.push(Node {
            count: 1,
            next,
            byte,
        });
        self.heads.insert(key, fresh);
    }
}

/// A chunk's context statistics and mixer (module docs).
pub struct Contexts {
    order0: [u32; 256],
    /// Per order: the bytes seen after each context, with their counts.
    tables: [OrderCounts; ORDERS.len()],
    weights: Vec<[i32; INPUTS]>,
    /// The last prediction's inputs (1/256 bit, up to a constant per input), frequencies and
    /// weight set, for the update.
    logs: Box<[[i32; 256]; INPUTS]>,
    freqs: [u32; 256],
    pending: Option<usize>,
}

impl Default for Contexts {
    fn default() -> Self {
        Self::new()
    }
}

impl Contexts {
    /// An empty model, before a chunk's first byte: it starts by returning the given CDF's
    /// distribution (to the exponential table's rounding).
    pub fn new() -> Self {
        let mut start = [0; INPUTS];
        start[0] = WEIGHT_ONE;
        Contexts {
            order0: [0; 256],
            tables: Default::default(),
            weights: vec![start; SETS],
            logs: Box::new([[0; 256]; INPUTS]),
            freqs: [0; 256],
            pending: None,
        }
    }

    /// The CDF to code the byte after `history` with: `cdf` (total `2^16`) mixed with the
    /// chunk's statistics.
    pub fn predict(&mut self, history: &[u8], cdf: &Cdf) -> Cdf {
        debug_assert_eq!(cdf.total_bits(), DEFAULT_TOTAL_BITS);
        let logs = &mut *self.logs;
        for (x, l) in logs[0].iter_mut().enumerate() {
            *l = log_freq(cdf.freq(x as u8));
        }
        for (x, l) in logs[1].iter_mut().enumerate() {
            *l = log_count(self.order0[x], ORDER0_PRIOR_SHIFT);
        }
        let (mut highest, mut seen) = (0, 0);
        let unseen = log_count(0, PRIOR_SHIFT);
        for (i, &order) in ORDERS.iter().enumerate() {
            let row = &mut logs[2 + i];
            row.fill(unseen);
            let mut total = 0;
            for (b, c) in self.tables[i].seen(key(history, history.len(), order)) {
                row[b as usize] = log_count(c, PRIOR_SHIFT);
                total += c;
            }
            if total > 0 {
                highest = i + 1;
                seen = total;
            }
        }
        let confidence = match seen {
            0 | 1 => 0,
            2 | 3 => 1,
            _ => 2,
        };
        let set = (highest * CONFIDENCE + confidence) * KINDS + kind(history.last());
        let w = &self.weights[set];
        let mut mixed = [0i32; 256];
        for (x, m) in mixed.iter_mut().enumerate() {
            let dot: i64 = (0..INPUTS).map(|i| w[i] as i64 * logs[i][x] as i64).sum();
            *m = (dot >> 16) as i32;
        }
        let top = *mixed.iter().max().expect("256 bytes");
        let mut weight = [0u32; 256];
        let mut sum = 0u64;
        for (e, &m) in weight.iter_mut().zip(&mixed) {
            *e = exp2_neg((top - m) as u32);
            sum += *e as u64;
        }
        // Each byte's share rounded to nearest; the rounding's sum (at most 128 either way) is
        // settled on the likeliest byte, whose share is at least 255.
        let room = (1u64 << DEFAULT_TOTAL_BITS) - FLOOR_TOTAL;
        let mut used = 0i64;
        let mut best = 0;
        for (x, (f, &e)) in self.freqs.iter_mut().zip(&weight).enumerate() {
            *f = 1 + ((e as u64 * room + sum / 2) / sum) as u32;
            used += *f as i64;
            if e > weight[best] {
                best = x;
            }
        }
        let settle = (1i64 << DEFAULT_TOTAL_BITS) - used;
        self.freqs[best] = (self.freqs[best] as i64 + settle) as u32;
        self.pending = Some(set);
        Cdf::from_frequencies(&self.freqs).expect("frequencies of at least 1 summing to 2^16")
    }

    /// Learns from the byte just coded (the last of `history`): the weight set of its prediction
    /// moves along the gradient of its cost, and the byte is counted in each order's context.
    pub fn update(&mut self, history: &[u8]) {
        let Some((&byte, before)) = history.split_last() else {
            return;
        };
        if let Some(set) = self.pending.take() {
            let logs = &*self.logs;
            for (i, w) in self.weights[set].iter_mut().enumerate() {
                let expected: i64 = self
                    .freqs
                    .iter()
                    .zip(&logs[i])
                    .map(|(&f, &l)| f as i64 * l as i64)
                    .sum::<i64>()
                    >> DEFAULT_TOTAL_BITS;
                let err = logs[i][byte as usize] as i64 - expected;
                let step = (err * LEARN_MUL) >> LEARN_SHIFT;
                *w = (*w as i64 + step).clamp(-WEIGHT_MAX as i64, WEIGHT_MAX as i64) as i32;
            }
        }
        self.order0[byte as usize] += 1;
        for (table, &order) in self.tables.iter_mut().zip(&ORDERS) {
            table.count(key(before, before.len(), order), byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::CdfQuantizer;

    fn cost(cdf: &Cdf, byte: u8) -> f64 {
        (cdf.total() as f64 / cdf.freq(byte) as f64).log2()
    }

    #[test]
    fn logarithm_and_exponential_are_exact_where_they_must_be() {
        assert_eq!(log2_q8(1), 0);
        assert_eq!(log2_q8(2), 256);
        assert_eq!(log2_q8(1 << 40), 40 * 256);
        for n in [3u64, 5, 1000, 65535, 1 << 33 | 12345] {
            let want = ((n as f64).log2() * 256.0).floor() as i32;
            assert!((log2_q8(n) - want).abs() <= 1, "log2({n})");
        }
        assert_eq!(exp2_neg(0), 1 << 16);
        assert_eq!(exp2_neg(256), 1 << 15);
        assert_eq!(exp2_neg(32 * 256), 0);
        assert!((1..2000).all(|d| exp2_neg(d) <= exp2_neg(d - 1)));
    }

    #[test]
    fn learns_a_chunks_own_statistics_and_keeps_every_byte_codable() {
        // A flat CDF knows nothing; a text that repeats its few words soon costs far less.
        let flat = CdfQuantizer::default()
            .quantize(&[1.0 / 256.0; 256])
            .unwrap();
        let text = b"the cat sat on the mat; the cat ate the rat. ".repeat(40);
        let mut c = Contexts::new();
        let (mut first, mut last) = (0.0, 0.0);
        for k in 0..text.len() {
            let cdf = c.predict(&text[..k], &flat);
            assert_eq!(cdf.total(), 1 << 16);
            assert!((0..=255).all(|b| cdf.freq(b) >= 1));
            let bits = cost(&cdf, text[k]);
            if k < 45 {
                first += bits;
            } else if k >= text.len() - 45 {
                last += bits;
            }
            c.update(&text[..=k]);
        }
        assert!(
            first > 45.0 * 7.0,
            "the first line costs about 8 bits a byte: {first}"
        );
        assert!(
            last < 45.0 * 0.5,
            "the fortieth costs under half a bit a byte: {last}"
        );
    }

    #[test]
    fn an_empty_model_returns_the_given_distribution() {
        let probs: Vec<f32> = (0..256).map(|i| (1 + i % 7) as f32).collect();
        let sum: f32 = probs.iter().sum();
        let cdf = CdfQuantizer::default()
            .quantize(&probs.iter().map(|p| p / sum).collect::<Vec<_>>())
            .unwrap();
        let got = Contexts::new().predict(b"", &cdf);
        for b in 0..=255u8 {
            let (g, w) = (got.freq(b) as f64, cdf.freq(b) as f64);
            assert!((g - w).abs() <= 1.0 + w * 0.005, "byte {b}: {g} vs {w}");
        }
    }
}
