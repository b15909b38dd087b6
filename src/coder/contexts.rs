//! [`Contexts`]: a chunk's own byte statistics beside M1 and its repeats. M1 was trained on
//! books; what a file says about itself (the bytes that follow each short context inside the
//! chunk so far, and its byte frequencies) corrects M1 where the file is unlike its training, web
//! pages and markup above all. The given CDF and each order's counts are each a distribution over
//! the next byte; they are mixed geometrically (`p(x) ∝ Π p_i(x)^{w_i}`), the weights learned
//! online by the coding cost's gradient. How, exactly, is a [`ContextsRecipe`]: each `.terse` format
//! names one, and a recipe never changes once a format has shipped with it.
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

/// Counted orders (context lengths) per recipe.
const ORDER_COUNT: usize = 5;
/// Mixer inputs: the given CDF, the byte frequencies (order 0), and each order.
const INPUTS: usize = 2 + ORDER_COUNT;
/// Each byte's prior count is `2^-PRIOR_SHIFT` in an order's context, `2^-ORDER0_PRIOR_SHIFT`
/// in the chunk's byte frequencies.
const PRIOR_SHIFT: u32 = 5;
const ORDER0_PRIOR_SHIFT: u32 = 1;
/// Fixed-point unit of a weight, and its bound.
const WEIGHT_ONE: i32 = 1 << 16;
const WEIGHT_MAX: i32 = 8 << 16;
/// A weight moves by `error (1/256 bit) x learn_mul >> LEARN_SHIFT` units per byte.
const LEARN_SHIFT: u32 = 5;
/// Specific weight sets: the highest order seen (or none) x how often it was seen (1, 2-3, 4 or
/// more) x the previous byte's kind ([`kind`]).
const CONFIDENCE: usize = 3;
const KINDS: usize = 5;
const SETS: usize = (ORDER_COUNT + 1) * CONFIDENCE * KINDS;
/// The frequencies every byte keeps (1 each) before the rest is shared out.
const FLOOR_TOTAL: u64 = 256;
/// Counts below this take their logarithm from a table.
const LOG_TABLE_LEN: usize = 4096;

/// How a [`Contexts`] counts and mixes: fixed for good once a `.terse` format names it, since
/// files written with it must decode the same forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextsRecipe {
    /// Format 5: orders 1, 2, 3, 4 and 6; counts kept whole; one weight set per byte, chosen
    /// by the specific context alone.
    Format5,
    /// Format 6: orders 1, 2, 3, 5 and 8 (an 8-byte context catches a web page's repeated
    /// markup); a context's counts halved once they pass 60, so they follow a chunk whose
    /// documents change; and three weight sets summed: the specific one, one per kind of the
    /// two previous bytes, and one shared by every byte, each moved by the same gradient (the
    /// shared ones learn from far more bytes than a specific set sees in a chunk).
    /// Chosen on text that is no evaluation file (1 MiB of the books' training split and 1 MiB
    /// of a Linux machine's package documentation: BENCHMARKS.md), where it codes 0.8% and 7.4%
    /// smaller than format 5's recipe.
    Format6,
}

impl ContextsRecipe {
    /// Context lengths of the counted orders.
    const fn orders(self) -> [usize; ORDER_COUNT] {
        match self {
            ContextsRecipe::Format5 => [1, 2, 3, 4, 6],
            ContextsRecipe::Format6 => [1, 2, 3, 5, 8],
        }
    }

    /// A context's counts are halved (rounding up) when their total passes this.
    const fn halve_above(self) -> Option<u32> {
        match self {
            ContextsRecipe::Format5 => None,
            ContextsRecipe::Format6 => Some(60),
        }
    }

    /// Whether the shared weight sets (by the previous two bytes' kinds, and one for all) are
    /// added to the specific one.
    const fn shared_sets(self) -> bool {
        matches!(self, ContextsRecipe::Format6)
    }

    /// The learning rate's multiplier: about 0.003 per nat for format 5.
    const fn learn_mul(self) -> i64 {
        match self {
            ContextsRecipe::Format5 => 17,
            ContextsRecipe::Format6 => 9,
        }
    }
}

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

    /// Counts `byte` after context `key`, then halves the context's counts (rounding up) if
    /// their total passes `halve_above`.
    fn count(&mut self, key: u64, byte: u8, halve_above: Option<u32>) {
        let fresh = self.nodes.len() as u32;
        let head = *self.heads.entry(key).or_insert(fresh);
        let (mut at, mut total, mut found) = (head, 0, false);
        while let Some(n) = self.nodes.get_mut(at as usize) {
            if n.byte == byte {
                n.count += 1;
                found = true;
                if halve_above.is_none() {
                    return;
                }
            }
            total += n.count;
            at = n.next;
        }
        if found {
            if halve_above.is_some_and(|limit| total > limit) {
                let mut at = head;
                while let Some(n) = self.nodes.get_mut(at as usize) {
                    n.count = n.count.div_ceil(2);
                    at = n.next;
                }
            }
            return;
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
    recipe: ContextsRecipe,
    order0: [u32; 256],
    /// Per order: the bytes seen after each context, with their counts.
    tables: [OrderCounts; ORDER_COUNT],
    /// The specific weight sets ([`SETS`]).
    weights: Vec<[i32; INPUTS]>,
    /// The shared sets, when the recipe has them: one per kind of the two previous bytes, and
    /// one for every byte.
    pair_weights: [[i32; INPUTS]; KINDS * KINDS],
    all_weights: [i32; INPUTS],
    /// The last prediction's inputs (1/256 bit, up to a constant per input), frequencies and
    /// weight set, for the update.
    logs: Box<[[i32; 256]; INPUTS]>,
    freqs: [u32; 256],
    /// The specific set and the pair set used.
    pending: Option<(usize, usize)>,
}

impl Contexts {
    /// An empty model, before a chunk's first byte: it starts by returning the given CDF's
    /// distribution (to the exponential table's rounding).
    pub fn new(recipe: ContextsRecipe) -> Self {
        let mut c = Contexts {
            recipe,
            pair_weights: [[0; INPUTS]; KINDS * KINDS],
            all_weights: [0; INPUTS],
            order0: [0; 256],
            tables: Default::default(),
            weights: vec![[0; INPUTS]; SETS],
            logs: Box::new([[0; 256]; INPUTS]),
            freqs: [0; 256],
            pending: None,
        };
        c.reset();
        c
    }

    /// Back to the empty model of [`new`](Contexts::new), keeping the memory its tables took:
    /// a coder that codes chunk after chunk takes memory once, not once a chunk.
    pub fn reset(&mut self) {
        let mut start = [0; INPUTS];
        start[0] = WEIGHT_ONE;
        self.weights.fill(start);
        self.pair_weights = [[0; INPUTS]; KINDS * KINDS];
        self.all_weights = [0; INPUTS];
        self.order0 = [0; 256];
        for t in &mut self.tables {
            t.heads.clear();
            t.nodes.clear();
        }
        self.pending = None;
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
        for (i, order) in self.recipe.orders().into_iter().enumerate() {
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
        let before_last = history.len().checked_sub(2).and_then(|i| history.get(i));
        let pair = kind(history.last()) * KINDS + kind(before_last);
        let mut w = self.weights[set];
        if self.recipe.shared_sets() {
            for (i, w) in w.iter_mut().enumerate() {
                *w += self.pair_weights[pair][i] + self.all_weights[i];
            }
        }
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
        self.pending = Some((set, pair));
        Cdf::from_frequencies(&self.freqs).expect("frequencies of at least 1 summing to 2^16")
    }

    /// Learns from the byte just coded (the last of `history`): the weight set of its prediction
    /// moves along the gradient of its cost, and the byte is counted in each order's context.
    pub fn update(&mut self, history: &[u8]) {
        let Some((&byte, before)) = history.split_last() else {
            return;
        };
        if let Some((set, pair)) = self.pending.take() {
            let logs = &*self.logs;
            let shared = self.recipe.shared_sets();
            for (i, input) in logs.iter().enumerate() {
                let expected: i64 = self
                    .freqs
                    .iter()
                    .zip(input)
                    .map(|(&f, &l)| f as i64 * l as i64)
                    .sum::<i64>()
                    >> DEFAULT_TOTAL_BITS;
                let err = input[byte as usize] as i64 - expected;
                let step = (err * self.recipe.learn_mul()) >> LEARN_SHIFT;
                let moved = |w: &mut i32| {
                    *w = (*w as i64 + step).clamp(-WEIGHT_MAX as i64, WEIGHT_MAX as i64) as i32;
                };
                moved(&mut self.weights[set][i]);
                if shared {
                    moved(&mut self.pair_weights[pair][i]);
                    moved(&mut self.all_weights[i]);
                }
            }
        }
        self.order0[byte as usize] += 1;
        let halve_above = self.recipe.halve_above();
        for (table, order) in self.tables.iter_mut().zip(self.recipe.orders()) {
            table.count(key(before, before.len(), order), byte, halve_above);
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
        for recipe in RECIPES {
            learns_the_text(recipe, &flat, &text);
        }
    }

    const RECIPES: [ContextsRecipe; 2] = [ContextsRecipe::Format5, ContextsRecipe::Format6];

    fn learns_the_text(recipe: ContextsRecipe, flat: &Cdf, text: &[u8]) {
        let mut c = Contexts::new(recipe);
        let (mut first, mut last) = (0.0, 0.0);
        for k in 0..text.len() {
            let cdf = c.predict(&text[..k], flat);
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
            "{recipe:?}: the first line costs about 8 bits a byte: {first}"
        );
        assert!(
            last < 45.0 * 0.5,
            "{recipe:?}: the fortieth costs under half a bit a byte: {last}"
        );
    }

    #[test]
    fn an_empty_model_returns_the_given_distribution() {
        let probs: Vec<f32> = (0..256).map(|i| (1 + i % 7) as f32).collect();
        let sum: f32 = probs.iter().sum();
        let cdf = CdfQuantizer::default()
            .quantize(&probs.iter().map(|p| p / sum).collect::<Vec<_>>())
            .unwrap();
        for recipe in RECIPES {
            let got = Contexts::new(recipe).predict(b"", &cdf);
            for b in 0..=255u8 {
                let (g, w) = (got.freq(b) as f64, cdf.freq(b) as f64);
                assert!(
                    (g - w).abs() <= 1.0 + w * 0.005,
                    "{recipe:?} byte {b}: {g} vs {w}"
                );
            }
        }
    }

    /// Format 6 halves a context's counts once their total passes 60, so a byte that takes over
    /// soon outweighs one that came before; format 5 keeps every count.
    #[test]
    fn format_6_halves_a_busy_contexts_counts() {
        let counts = |halve_above| {
            let mut t = OrderCounts::default();
            for byte in [b'x'; 61].into_iter().chain([b'y'; 40]) {
                t.count(7, byte, halve_above);
            }
            let mut seen: Vec<(u8, u32)> = t.seen(7).collect();
            seen.sort();
            seen
        };
        assert_eq!(counts(None), [(b'x', 61), (b'y', 40)]);
        // 61 x's: halved to 31; 30 y's more pass 60 again: 16 and 15; then 10 more y's.
        assert_eq!(counts(Some(60)), [(b'x', 16), (b'y', 25)]);
    }

    /// A recipe never changes once a format has shipped with it: a digest of everything format
    /// 5's recipe predicts over a fixed text and CDF, taken when format 5 was the one written.
    #[test]
    fn format_5s_recipe_predicts_as_it_always_did() {
        let probs: Vec<f32> = (0..256).map(|i| (1 + (i * 37) % 11) as f32).collect();
        let sum: f32 = probs.iter().sum();
        let cdf = CdfQuantizer::default()
            .quantize(&probs.iter().map(|p| p / sum).collect::<Vec<_>>())
            .unwrap();
        let text = &include_bytes!("../../data/sample-books.txt")[..20_000];
        let mut c = Contexts::new(ContextsRecipe::Format5);
        let mut digest = crc32fast::Hasher::new();
        for k in 0..text.len() {
            let got = c.predict(&text[..k], &cdf);
            for b in 0..=255u8 {
                digest.update(&got.freq(b).to_le_bytes());
            }
            c.update(&text[..=k]);
        }
        assert_eq!(digest.finalize(), 1_273_626_919);
    }
}
