//! Contract 3's attention: int8 q and key/value cache per (position, head), scores from i32 dot
//! products, attention weights as integers of 2^-14 and their weighted sum of values in i32.

use super::quantise::{dot_i8, int_or_zero, pow2, quantise_row, round_even};
use super::MAX_CONTEXT;
use crate::numerics::int8::I8Kernel;
use crate::numerics::{exp_contract, HEAD_DIM};
use std::ops::Range;

/// Attention weights are integers `P = round(p * 2^P_BITS)`, `p` in `[0, 1]`.
const P_BITS: i32 = 14;

/// `log2(1 / sqrt(HEAD_DIM))`: the score scale `0.125` as a power of two, folded into the
/// dequantisation.
const SCORE_SHIFT: i32 = -3;

/// One layer's cached keys and values, each position's `[d]` row quantised per head (one
/// exponent per head), `[position][d]`. Positions before `start` are gone
/// ([`forget_before`](Self::forget_before)), so a sliding window keeps memory bounded.
#[derive(Clone, Default)]
pub(super) struct QKvCache {
    d: usize,
    pub(super) start: usize,
    keys: Vec<i8>,
    key_e: Vec<i32>,
    values: Vec<i8>,
    value_e: Vec<i32>,
}

/// Appends `x` quantised per 64-wide head: its int8 values to `q`, one exponent per head to `e`.
#[inline(always)]
fn push_per_head(q: &mut Vec<i8>, e: &mut Vec<i32>, x: &[f32]) {
    for head in x.chunks_exact(HEAD_DIM) {
        let at = q.len();
        q.resize(at + HEAD_DIM, 0);
        e.push(quantise_row(head, &mut q[at..]));
    }
}

/// The fewest dead positions a cache drops at once.
const MIN_DROP: usize = 64;

impl QKvCache {
    pub(super) fn new(d: usize) -> Self {
        QKvCache {
            d,
            ..Default::default()
        }
    }

    /// Forgets every position, keeping the memory.
    pub(super) fn clear(&mut self) {
        self.start = 0;
        self.keys.clear();
        self.key_e.clear();
        self.values.clear();
        self.value_e.clear();
    }

    /// Appends the key and value (`[d]` each, f32, keys already rotated) of the next position.
    #[inline(always)]
    pub(super) fn push(&mut self, key: &[f32], value: &[f32]) {
        push_per_head(&mut self.keys, &mut self.key_e, key);
        push_per_head(&mut self.values, &mut self.value_e, value);
    }

    /// Lets go of the positions before `pos`, once at least [`MIN_DROP`] of them have piled up
    /// and they are as many as the live ones: a drop moves the live ones, so each moves no more
    /// than it frees, and a cache holds at most about twice the window (a stream of M1 with a
    /// 256-byte window keeps ~0.8 MB, where waiting for [`MAX_CONTEXT`] dead kept ~2 MB).
    pub(super) fn forget_before(&mut self, pos: usize) {
        let dead = pos - self.start;
        let live = self.values.len() / self.d - dead;
        if dead >= live.max(MIN_DROP) {
            let heads = self.d / HEAD_DIM;
            self.keys.drain(..dead * self.d);
            self.values.drain(..dead * self.d);
            self.key_e.drain(..dead * heads);
            self.value_e.drain(..dead * heads);
            self.start = pos;
        }
    }

    /// Position `j`'s int8 value of head `h` and its exponent.
    #[cfg(test)]
    fn value(&self, j: usize, h: usize) -> (&[i8], i32) {
        let (row, heads) = (j - self.start, self.d / HEAD_DIM);
        let at = row * self.d + h * HEAD_DIM;
        (
            &self.values[at..at + HEAD_DIM],
            self.value_e[row * heads + h],
        )
    }
}

/// Attention of one query (`q`, `[d]` f32, rotated) over the cached positions `span`, per head:
///
/// - `q`'s head is quantised (`qq`, exponent `eq`); score `s_j = (dot(qq, k_j) as f32) *
///   2^(eq + ek_j - 3)` (the dot in i32; `2^-3` is `1/sqrt(64)`);
/// - `m` = the max of the `s_j`; `p_j = exp_contract(s_j - m)` (in `[0, 1]`);
///   `P_j = round_half_even(p_j * 2^14)`; `sum` = the `P_j` added in i32;
/// - with `E` the largest value exponent `ev_j` in the span, each value enters on the common
///   scale `2^E` through its weight: `W_j = round_half_even(p_j * 2^(14 + ev_j - E))`;
///   `acc_c = sum_j W_j * v_j[c]` in i32;
/// - output channel `c` = `((acc_c as f32) * 2^E) / (sum as f32)`.
///
/// No-overflow bounds (`MAX_CONTEXT = 1024` positions at most, so `span.len() <= 1024`):
/// the dot has 64 terms of magnitude `<= 127 * 127`: `|dot| <= 1,032,256 < 2^24` (so `as f32` is
/// exact); `0 <= W_j <= P_j <= 2^14` (as `p_j <= 1` and `ev_j <= E`), so
/// `sum <= 2^14 * 1024 = 2^24` (exact as f32) and `|acc_c| <= 127 * 2^14 * 1024 =
/// 2,130,706,432 < i32::MAX = 2,147,483,647`, whatever the order of the additions.
/// (`attention_at_the_longest_context_does_not_overflow` runs it at the bound.) `sum >= 2^14`:
/// the maximal score has `p = 1`.
pub(super) fn attend(
    kernel: I8Kernel,
    out: &mut [f32],
    q: &[f32],
    cache: &QKvCache,
    span: Range<usize>,
) {
    for (h, o) in out.chunks_exact_mut(HEAD_DIM).enumerate() {
        attend_head(kernel, o, q, cache, span.clone(), h);
    }
}

/// Head `h` of [`attend`]: its 64 outputs `out` from `q` (`[d]`, all heads). Heads share
/// nothing, so they may run on different threads.
pub(super) fn attend_head(
    kernel: I8Kernel,
    out: &mut [f32],
    q: &[f32],
    cache: &QKvCache,
    span: Range<usize>,
    h: usize,
) {
    debug_assert!(span.len() <= MAX_CONTEXT && !span.is_empty());
    let d = cache.d;
    let heads = d / HEAD_DIM;
    let rows = span.start - cache.start..span.end - cache.start;
    let (keys, values) = (
        &cache.keys[rows.start * d..rows.end * d],
        &cache.values[rows.start * d..rows.end * d],
    );
    let (key_e, value_e) = (
        &cache.key_e[rows.start * heads..rows.end * heads],
        &cache.value_e[rows.start * heads..rows.end * heads],
    );
    let mut scores = vec![0f32; span.len()];
    let mut weights = vec![0i32; span.len()];
    kernel.vectorised(
        #[inline(always)]
        || {
            let mut qq = [0i8; HEAD_DIM];
            let head = h * HEAD_DIM..(h + 1) * HEAD_DIM;
            let eq = quantise_row(&q[head.clone()], &mut qq);
            for ((s, k), &ek) in scores
                .iter_mut()
                .zip(keys.chunks_exact(d))
                .zip(key_e.iter().skip(h).step_by(heads))
            {
                *s = dot_i8(&qq, &k[head.clone()]) as f32 * pow2(eq + ek + SCORE_SHIFT);
            }
            let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let ev = value_e.iter().skip(h).step_by(heads);
            let top = ev.clone().copied().max().expect("span");
            // Elementwise passes (each entry's operations as written, so no bit changes) that
            // vectorise; then the integer sums, exact in any order.
            scores.iter_mut().for_each(|s| *s = exp_contract(*s - m));
            let mut sum = 0i32;
            for ((w, &p), &ev) in weights.iter_mut().zip(&scores).zip(ev) {
                // `p` is in [0, 1] (or NaN after an infinite score): both are in 0..=2^14.
                sum += int_or_zero(round_even(p * pow2(P_BITS)));
                *w = int_or_zero(round_even(p * pow2(P_BITS + ev - top)));
            }
            let mut acc = [0i32; HEAD_DIM];
            for (&w, v) in weights.iter().zip(values.chunks_exact(d)) {
                for (a, &vc) in acc.iter_mut().zip(&v[head.clone()]) {
                    *a += w * vc as i32;
                }
            }
            let (scale, total) = (pow2(top), sum as f32);
            for (oc, a) in out.iter_mut().zip(acc) {
                *oc = (a as f32 * scale) / total;
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound above, run at it: [`MAX_CONTEXT`] positions whose keys are all equal (so every
    /// `p_j = 1` and `P_j = 2^14`) and whose values are ±127 at scale 1 sum to
    /// `±127 * 2^14 * 1024` in every channel, and the outputs are exactly ±127.
    #[test]
    fn attention_at_the_longest_context_does_not_overflow() {
        let d = 2 * HEAD_DIM;
        let mut cache = QKvCache::new(d);
        let key: Vec<f32> = (0..d).map(|i| (i % 7) as f32 - 3.0).collect();
        let value: Vec<f32> = (0..d)
            .map(|c| if c % 2 == 0 { 127.0 } else { -127.0 })
            .collect();
        for _ in 0..MAX_CONTEXT {
            cache.push(&key, &value);
        }
        assert_eq!(cache.value(0, 1), (&[127i8, -127].repeat(32)[..], 0));
        let bound = 127i64 * (1 << P_BITS) * MAX_CONTEXT as i64;
        assert!(bound <= i32::MAX as i64, "{bound}");
        let mut out = vec![0f32; d];
        attend(I8Kernel::best(), &mut out, &key, &cache, 0..MAX_CONTEXT);
        assert_eq!(out, value, "weighted sum of 1024 values, each 127 * 2^14");
    }

    /// Every kernel's attention (the vectorised copies) equals the plain code's bit for bit, for
    /// every span length from 1 to 70 (so every tail of an 8- or 16-lane loop) and spans that
    /// start past a dropped prefix, over keys and values whose heads have very different scales
    /// (so the weights `W_j` differ from the `P_j`), zero heads included.
    #[test]
    fn attention_on_every_kernel_equals_the_plain_code() {
        let d = 2 * HEAD_DIM;
        let mut rng = crate::rng::Rng::new(11);
        let mut row = |j: usize| -> Vec<f32> {
            let scale = [1.0, 3e-3, 40.0, 0.0, 0.7][j % 5];
            (0..d)
                .map(|_| (rng.below(2001) as f32 - 1000.0) / 1000.0 * scale)
                .collect()
        };
        let mut cache = QKvCache::new(d);
        for j in 0..70 {
            let (k, v) = (row(j), row(j + 2));
            cache.push(&k, &v);
        }
        let queries: Vec<Vec<f32>> = (0..4).map(&mut row).collect();
        for kernel in I8Kernel::available() {
            for end in 1..=70 {
                for start in [0, end / 3, end - 1] {
                    for q in &queries {
                        let (mut want, mut got) = (vec![0f32; d], vec![0f32; d]);
                        attend(I8Kernel::Portable, &mut want, q, &cache, start..end);
                        attend(kernel, &mut got, q, &cache, start..end);
                        let bits = |o: &[f32]| o.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "{} {start}..{end}", kernel.name());
                    }
                }
            }
        }
    }

    /// Values of different scales enter on the largest one through their weights: two positions
    /// of equal scores, computed by hand.
    #[test]
    fn values_of_different_scales_are_weighted_on_the_largest() {
        let d = HEAD_DIM;
        let mut cache = QKvCache::new(d);
        let key = vec![0f32; d];
        // Value a: 100 in every channel: e = 0 (100 <= 127), q = 100.
        // Value b: 1.5 in every channel: e = -6 (1.5 <= 127/64), q = 96.
        cache.push(&key, &vec![100.0; d]);
        cache.push(&key, &vec![1.5; d]);
        let mut out = vec![0f32; d];
        attend(I8Kernel::best(), &mut out, &vec![1.0; d], &cache, 0..2);
        // Scores 0 and 0: p = 1, P = 2^14 each, sum = 2^15. E = 0: W_a = 2^14, W_b = 2^(14-6)
        // = 256; acc = 2^14 * 100 + 256 * 96 = 1,662,976; out = acc / 2^15 = 50.75 = (100 + 1.5) / 2.
        assert!(out.iter().all(|&o| o == 50.75), "{out:?}");
    }
}
