//! The quantiser of 4-bit weights for M2's decoding (`--weights int4`), and their product:
//! each weight matrix row `o` is
//! `S[o] · s[o][g] · w[o][k]`, with `w` in `-8..=7`, one 8-bit sub-scale `s` per group of 32
//! inputs and one f32 row scale `S`; 4.25 bits per weight, about half of int8's bytes. The
//! inputs are contract 3's int8 rows, and the product is an exact integer sum
//! ([`crate::numerics::int4`]), so every kernel gives the same bits. It is not part of any
//! coding contract: M1 always codes in int8, and the GPU decodes int8 only.
//!
//! The quantiser picks each group's step by search (the one of 13 candidate steps between
//! `max / 9` and `max / 6`, then its least-squares refinement, with the smallest squared error),
//! puts the row's largest step at sub-scale 255, and then picks each group's sub-scale among its
//! five nearest by the squared error of the codes it gives.

use super::quantise::{pow2, quantise_rows, round_even};
use crate::numerics::int4::{matmul_i4_with, I4Matrix, GROUP, MAX_INPUTS, W_MAX, W_MIN};
use crate::numerics::int8::I8Kernel;
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// `v · inv` (`inv` the inverse step) rounded to the nearest code (ties to even), clamped to
/// `-8..=7`, as an f32.
#[inline(always)]
fn code(v: f32, inv: f32) -> f32 {
    round_even(v * inv).clamp(W_MIN as f32, W_MAX as f32)
}

/// `1 / step`, 0 for a zero step (every code 0).
#[inline(always)]
fn inverse(step: f32) -> f32 {
    if step == 0.0 {
        0.0
    } else {
        1.0 / step
    }
}

/// One group's weights, padded with zeros (which round to code 0 at any step, so change
/// neither its largest magnitude nor any error).
type Group = [f32; GROUP];

/// `Σ a_k b_k` in 8 lanes added at the end: fixed sizes and independent lanes vectorise, and
/// the order is fixed, so the result is the same on every machine.
#[inline(always)]
fn dot(a: &Group, b: &Group) -> f32 {
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    acc.iter().sum()
}

// Plain index loops below, not iterator adaptors: those are separate functions that
// `I8Kernel::vectorised` would not compile for AVX2.

/// The codes of `g` at `step`.
#[inline(always)]
fn codes(g: &Group, step: f32) -> Group {
    let inv = inverse(step);
    let mut q = [0f32; GROUP];
    for k in 0..GROUP {
        q[k] = code(g[k], inv);
    }
    q
}

/// Squared error of `g` in steps of `step`.
#[inline(always)]
fn error(g: &Group, step: f32) -> f32 {
    let q = codes(g, step);
    let mut e = [0f32; GROUP];
    for k in 0..GROUP {
        e[k] = g[k] - step * q[k];
    }
    dot(&e, &e)
}

/// The step with the smallest squared error for one group (0 for an all-zero group).
#[inline(always)]
fn group_step(g: &Group) -> f32 {
    let mut m = 0f32;
    for v in g {
        m = m.max(v.abs());
    }
    if m == 0.0 {
        return 0.0;
    }
    let mut best = (f32::INFINITY, 0f32);
    for i in 0..=12 {
        let step = m / (6.0 + 0.25 * i as f32);
        // Also the least-squares step for the codes this one gives.
        let q = codes(g, step);
        let qq = dot(&q, &q);
        let fitted = if qq > 0.0 { dot(g, &q) / qq } else { step };
        for step in [step, fitted] {
            let e = error(g, step);
            if e < best.0 {
                best = (e, step);
            }
        }
    }
    best.1
}

/// One row's codes (into `codes`), sub-scales (into `subs`) and row scale.
#[inline(always)]
fn quantise_row4(row: &[f32], out: &mut [i8], subs: &mut [u8]) -> f32 {
    let n = subs.len();
    let mut groups = vec![[0f32; GROUP]; n];
    let mut steps = vec![0f32; n];
    let mut largest = 0f32;
    for i in 0..n {
        let c = &row[i * GROUP..row.len().min((i + 1) * GROUP)];
        groups[i][..c.len()].copy_from_slice(c);
        steps[i] = group_step(&groups[i]);
        largest = largest.max(steps[i]);
    }
    let scale = largest / 255.0;
    for i in 0..n {
        let g = &groups[i];
        subs[i] = 0;
        if steps[i] > 0.0 && scale > 0.0 {
            // The sub-scale, among the five nearest the group's step, with the least error.
            let nearest = (steps[i] / scale).round() as i32;
            let mut best = f32::INFINITY;
            for s in (nearest - 2).max(1)..=(nearest + 2).min(255) {
                let e = error(g, scale * s as f32);
                if e < best {
                    (best, subs[i]) = (e, s as u8);
                }
            }
        }
        let q = codes(g, scale * subs[i] as f32);
        let c = &mut out[i * GROUP..row.len().min((i + 1) * GROUP)];
        for k in 0..c.len() {
            c[k] = q[k] as i8;
        }
    }
    scale
}

/// Quantises the model's `[n, inp]` layout row by row (rows in parallel); with `gain` (the
/// RMSNorm before the product), each weight is first multiplied by its input's gain. Refuses an
/// `inp` above [`MAX_INPUTS`] (where the integer sums could overflow).
pub(crate) fn quantise_int4(
    w: &[f32],
    n: usize,
    inp: usize,
    gain: Option<&[f32]>,
) -> Result<I4Matrix> {
    ensure!(
        inp <= MAX_INPUTS,
        "4-bit weights take at most {MAX_INPUTS} inputs per product; this matrix has {inp}"
    );
    assert_eq!(w.len(), n * inp, "weight shape");
    let groups = inp.div_ceil(GROUP);
    let mut codes = vec![0i8; n * inp];
    let mut subs = vec![0u8; n * groups];
    let scale: Vec<f32> = codes
        .par_chunks_exact_mut(inp)
        .zip(subs.par_chunks_exact_mut(groups))
        .enumerate()
        .map(|(o, (c, s))| {
            let mut row = w[o * inp..(o + 1) * inp].to_vec();
            if let Some(g) = gain {
                row.iter_mut().zip(g).for_each(|(x, &g)| *x *= g);
            }
            // Compiled for AVX2 and FMA where the machine has them (the same bits).
            I8Kernel::best().vectorised(
                #[inline(always)]
                || quantise_row4(&row, c, s),
            )
        })
        .collect();
    I4Matrix::from_rows(&codes, &subs, &scale, n, inp)
}

/// The weights `w` stands for, `S[o] · s[o][g] · w[o][k]`, `[n, inp]`.
#[cfg(test)]
fn dequantised(w: &I4Matrix) -> Vec<f32> {
    (0..w.outputs())
        .flat_map(|o| {
            let subs = w.sub_scales(o);
            let s = w.scales()[o];
            w.row(o)
                .into_iter()
                .enumerate()
                .map(move |(k, q)| s * subs[k / GROUP] as f32 * q as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `x · Wᵀ` for every row of `x`, each quantised by contract 3 ([`quantise_rows`]): `acc ·
/// (2^ex_r · S[o])` with `acc` the exact integer sum ([`matmul_i4_with`]); the same bits on
/// every kernel.
pub(crate) fn q4matmul(kernel: I8Kernel, out: &mut [f32], x: &[f32], w: &I4Matrix) {
    let inp = w.inputs();
    assert!(
        x.len().is_multiple_of(inp) && out.len() == x.len() / inp * w.outputs(),
        "q4matmul shapes"
    );
    let (xq, ex) = quantise_rows(kernel, x, inp);
    let xs: Vec<f32> = ex.into_iter().map(pow2).collect();
    matmul_i4_with(kernel, out, &xq, &xs, w);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, len: usize, s: f32) -> Vec<f32> {
        (0..len)
            .map(|_| (rng.below(20001) as f32 - 10000.0) * 1e-4 * s)
            .collect()
    }

    /// Every weight lands within half a step of its value or is clipped at the code range's
    /// end, and the searched steps beat plain `max / 7` rounding's squared error by 10% or more.
    #[test]
    fn weights_land_within_half_a_step_and_the_search_beats_plain_rounding() {
        let (n, inp) = (24, 200);
        let mut rng = Rng::new(3);
        // Rows of different sizes, and heavy tails: a few large weights per row.
        let mut w: Vec<f32> = (0..n)
            .flat_map(|o| random(&mut rng, inp, 0.1 + o as f32))
            .collect();
        for i in (0..w.len()).step_by(37) {
            w[i] *= 6.0;
        }
        let q = quantise_int4(&w, n, inp, None).unwrap();
        let deq = dequantised(&q);
        let (mut err, mut plain) = (0f64, 0f64);
        for o in 0..n {
            let subs = q.sub_scales(o);
            for k in 0..inp {
                let step = q.scales()[o] * subs[k / GROUP] as f32;
                let (v, d) = (w[o * inp + k], deq[o * inp + k]);
                let clipped = d == step * W_MIN as f32 || d == step * W_MAX as f32;
                assert!(
                    (v - d).abs() <= 0.5 * step * 1.0001 || clipped,
                    "row {o} input {k}: {v} became {d} (step {step})"
                );
                err += ((v - d) as f64).powi(2);
            }
            for c in w[o * inp..(o + 1) * inp].chunks(GROUP) {
                let g: Group = std::array::from_fn(|k| c.get(k).copied().unwrap_or(0.0));
                let m = g.iter().fold(0f32, |m, v| m.max(v.abs()));
                plain += error(&g, m / 7.0) as f64;
            }
        }
        assert!(err < 0.9 * plain, "search {err} against plain {plain}");
    }

    /// The product equals the dequantised weights times the fake-quantised inputs (checked in
    /// f64, to f32's rounding of the result), on every kernel, with a folded gain; all-zero
    /// rows and groups give zeros.
    #[test]
    fn the_product_is_the_dequantised_weights_times_the_quantised_inputs() {
        let (n, inp, rows) = (19, 70, 6);
        let mut rng = Rng::new(8);
        let mut w = random(&mut rng, n * inp, 1.0);
        w[..inp].fill(0.0); // row 0 all zero
        w[inp..inp + GROUP].fill(0.0); // row 1's first group
        let gain: Vec<f32> = random(&mut rng, inp, 0.5).iter().map(|g| 1.0 + g).collect();
        let x = random(&mut rng, rows * inp, 3.0);
        let q = quantise_int4(&w, n, inp, Some(&gain)).unwrap();
        let deq = dequantised(&q);
        let mut xq = x.clone();
        super::super::fake_quantise_rows(&mut xq, inp);
        // Each exact sum, and the sum of its terms' magnitudes (what f32 rounding scales with).
        let want: Vec<(f64, f64)> = (0..rows * n)
            .map(|i| {
                let (r, o) = (i / n, i % n);
                (0..inp)
                    .map(|k| xq[r * inp + k] as f64 * deq[o * inp + k] as f64)
                    .fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()))
            })
            .collect();
        assert!(
            want.iter().step_by(n).all(|&v| v.1 == 0.0),
            "output 0 is zero"
        );
        for kernel in I8Kernel::available() {
            let mut out = vec![f32::NAN; rows * n];
            q4matmul(kernel, &mut out, &x, &q);
            for (i, (&got, &(want, size))) in out.iter().zip(&want).enumerate() {
                let ok = (got as f64 - want).abs() <= 1e-6 * size;
                assert!(ok, "{} [{i}]: {got} vs {want}", kernel.name());
            }
        }
    }

    #[test]
    fn refuses_inputs_past_the_bound() {
        let inp = MAX_INPUTS + 1;
        assert!(quantise_int4(&vec![0.0; inp], 1, inp, None).is_err());
    }
}
