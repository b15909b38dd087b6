//! The output layer fused with its loss: logits = x W^T, cross-entropy + z-loss, and (when
//! training) dlogits, dx and dW, a block of rows at a time so that the `[N, V]` logits are never
//! held in full (at V = 65536 they would be the largest activation by far).

use super::matmul::{gemm, matmul_backward_weight, matmul_forward, StridedRef};
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
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|&l| (l - m).exp()).sum();
                let lse = m + sum.ln();
                let ce = lse - row[t as usize];
                if scale != 0.0 {
                    // d/dlogit of ce + z*lse^2 is p - onehot + 2 z lse p
                    let coef = scale * (1.0 + 2.0 * z_loss * lse);
                    for l in row.iter_mut() {
                        *l = (*l - lse).exp() * coef;
                    }
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
