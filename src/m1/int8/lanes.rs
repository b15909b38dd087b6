//! Contract 3's order for the two long f32 sums of a row, RMSNorm's sum of squares and the
//! softmax's sum of exponentials: [`LANES`] lanes, lane `i` a chain over `k = i, i + 16, ...`
//! ascending, then the lanes added by a fixed pairwise tree (`l[i] += l[i + 8]`, then `+ 4`,
//! `+ 2`, `+ 1`). Sixteen chains run side by side (one AVX-512 register, two AVX2 ones, or 16
//! GPU threads and a shuffle reduction), where version 2's single chain waits on each addition.

use crate::numerics::exp_contract;

/// The chains of a row's sum.
pub(super) const LANES: usize = 16;

/// The lanes of `x` under `step` (an accumulator and the next value to the new accumulator),
/// combined by the tree.
#[inline(always)]
fn sum_lanes(x: &[f32], step: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = step(*l, v);
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l = step(*l, v);
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
    }
    lanes[0]
}

/// RMSNorm's factor under contract 3: `ss` the lanes of fma chains `ss_i = fma(x_k, x_k, ss_i)`,
/// `r = 1 / sqrt(ss / d + eps)`.
#[inline(always)]
pub(super) fn rms_factor(x: &[f32], eps: f32) -> f32 {
    let ss = sum_lanes(x, |acc, v| v.mul_add(v, acc));
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

/// Softmax in place under contract 3: the max, `exp_contract(l - max)` per entry, their sum in
/// lanes, one division per entry.
#[inline(always)]
pub(super) fn softmax(p: &mut [f32]) {
    let m = p.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    p.iter_mut().for_each(|x| *x = exp_contract(*x - m));
    let sum = sum_lanes(p, |acc, v| acc + v);
    p.iter_mut().for_each(|x| *x /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::int8::I8Kernel;

    /// The definition, written out by index: lane `i` over `k = i, i + 16, ...`, then the tree.
    fn reference(x: &[f32], step: fn(f32, f32) -> f32) -> f32 {
        let mut l: Vec<f32> = (0..16)
            .map(|i| (i..x.len()).step_by(16).fold(0.0, |a, k| step(a, x[k])))
            .collect();
        for w in [8, 4, 2, 1] {
            for i in 0..w {
                l[i] += l[i + w];
            }
        }
        l[0]
    }

    /// On every kernel (the vectorised copies and the plain code), the RMSNorm factor and the
    /// softmax equal the definition written out by index, bit for bit, for every row length
    /// from 1 to 300 (every tail of the lanes); values of mixed magnitude make any other order
    /// or lane assignment round differently.
    #[test]
    fn lane_sums_on_every_kernel_equal_the_definition() {
        let mut rng = crate::rng::Rng::new(9);
        for len in 1..=300 {
            let x: Vec<f32> = (0..len)
                .map(|k| (rng.below(20001) as f32 - 10000.0) * [1e-4, 1.0, 37.0][k % 3])
                .collect();
            let eps = 1e-5;
            let ss = reference(&x, |a, v| v.mul_add(v, a));
            let want_r = 1.0 / (ss / len as f32 + eps).sqrt();
            let logits: Vec<f32> = x.iter().map(|&l| l * 1e-2).collect();
            let m = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
            let e: Vec<f32> = logits.iter().map(|&l| exp_contract(l - m)).collect();
            let sum = reference(&e, |a, v| a + v);
            let want_p: Vec<u32> = e.iter().map(|&v| (v / sum).to_bits()).collect();
            for kernel in I8Kernel::available() {
                let r = kernel.vectorised(
                    #[inline(always)]
                    || rms_factor(&x, eps),
                );
                assert_eq!(r.to_bits(), want_r.to_bits(), "{} rms {len}", kernel.name());
                let mut p = logits.clone();
                kernel.vectorised(
                    #[inline(always)]
                    || softmax(&mut p),
                );
                let got: Vec<u32> = p.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want_p, "{} softmax {len}", kernel.name());
            }
        }
    }
}
