//! The output layer fused with its loss: logits = x W^T, cross-entropy + z-loss, and (when
//! training) dlogits, dx and dW, a block of rows at a time so that the `[N, V]` logits are never
//! held in full (at V = 65536 they would be the largest activation by far).

use super::matmul::{gemm, matmul_backward_weight, matmul_forward, StridedRef};
use crate::m1::exp_contract;
use rayon::prelude::*;

/// Logit floats per row block (16 MiB).
const BLOCK_FLOATS: usize = 1 << 22;

/// Sums over the rows of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossSums {
    /// Sum of cross-entropy in nats.
    pub ce: f64,
    /// Sum of logsumexp(logits)^2 (the z-loss before its weight).
    pub z: f64,
    pub rows: usize,
}

/// Gradient outputs of the classifier: `dx` is overwritten, `dw` accumulated. Gradients are of
/// the mean loss `(1/rows_total) * sum(ce + z_loss * lse^2)`.
pub struct ClassifierGrads<'a> {
    pub dx: &'a mut [f32],
    pub dw: &'a mut [f32],
    pub rows_total: usize,
}

/// Runs the classifier over `x[n, d]` with `w[v, d]` and integer `targets[n]`.
#[allow(clippy::too_many_arguments)]
pub fn classifier_forward_backward(
    x: &[f32],
    w: &[f32],
    targets: &[u32],
    d: usize,
    v: usize,
    z_loss: f32,
    mut grads: Option<ClassifierGrads>,
    logits: &mut Vec<f32>,
) -> LossSums {
    let n = targets.len();
    let rows_per_block = (BLOCK_FLOATS / v).clamp(1, n.max(1));
    logits.resize(rows_per_block * v, 0.0);
    let mut sums = LossSums::default();
    for r0 in (0..n).step_by(rows_per_block) {
        let rows = rows_per_block.min(n - r0);
        let lg = &mut logits[..rows * v];
        let xb = &x[r0 * d..(r0 + rows) * d];
        matmul_forward(lg, xb, w, rows, d, v);
        let scale = grads.as_ref().map_or(0.0, |g| 1.0 / g.rows_total as f32);
        let per_row: Vec<(f64, f64)> = lg
            .par_chunks_mut(v)
            .zip(&targets[r0..r0 + rows])
            .map(|(row, &t)| {
                let target_logit = row[t as usize];
                let (m, sum) = exp_shifted(row);
                let lse = m + sum.ln();
                let ce = lse - target_logit;
                if scale != 0.0 {
                    // d/dlogit of ce + z*lse^2 is p - onehot + 2 z lse p, with p = e / sum
                    let c = scale * (1.0 + 2.0 * z_loss * lse) / sum;
                    row.iter_mut().for_each(|e| *e *= c);
                    row[t as usize] -= scale;
                }
                (ce as f64, (lse as f64) * (lse as f64))
            })
            .collect();
        for (ce, z) in per_row {
            sums.ce += ce;
            sums.z += z;
        }
        if let Some(g) = grads.as_mut() {
            // dx = dlogits W ; dW += dlogits^T x
            gemm(
                rows,
                v,
                d,
                StridedRef {
                    data: lg,
                    rs: v,
                    cs: 1,
                },
                StridedRef {
                    data: w,
                    rs: d,
                    cs: 1,
                },
                0.0,
                &mut g.dx[r0 * d..(r0 + rows) * d],
            );
            matmul_backward_weight(g.dw, lg, xb, rows, d, v);
        }
    }
    sums.rows = n;
    sums
}

/// Overwrites a row of logits with `e^(l - max)` and returns `(max, sum of them)`. The
/// exponential is the contract's polynomial (within 4e-7 of `exp`), which vectorises where libm's
/// does not: at vocab 65,536 the exponentials would otherwise cost more than the GEMMs. The sum
/// runs in 8 interleaved partial sums, a fixed order whatever the thread count.
fn exp_shifted(row: &mut [f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features the function is compiled for were just detected.
        return unsafe { exp_shifted_avx2(row) };
    }
    exp_shifted_portable(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(row: &mut [f32]) -> (f32, f32) {
    exp_shifted_portable(row)
}

#[inline(always)]
fn exp_shifted_portable(row: &mut [f32]) -> (f32, f32) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    row.iter_mut().for_each(|x| *x = exp_contract(*x - m));
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (s, &x) in sums.iter_mut().zip(c) {
            *s += x;
        }
    }
    let sum = sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    (m, sum)
}
