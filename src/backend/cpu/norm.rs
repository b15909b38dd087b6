//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * g`, forward and backward.

use super::vecops::sum_sq_f64;
use rayon::prelude::*;

/// Rows per task for the gain-gradient partial sums (fixed, for reproducible reduction order).
const ROWS_PER_TASK: usize = 256;

/// Writes `out[n, d]` and the per-row reciprocal RMS `rstd[n]` (kept for the backward pass).
pub fn rmsnorm_forward(
    out: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    g: &[f32],
    d: usize,
    eps: f32,
) {
    out.par_chunks_mut(d)
        .zip(rstd.par_iter_mut())
        .zip(inp.par_chunks(d))
        .for_each(|((o, r), x)| {
            let ms = (sum_sq_f64(x) / d as f64) as f32;
            let rs = 1.0 / (ms + eps).sqrt();
            *r = rs;
            for i in 0..d {
                o[i] = x[i] * rs * g[i];
            }
        });
}

/// Backward: `dinp += dL/dx` (the residual stream's gradient is accumulated into) and
/// `dg += sum_rows dout * x * rstd`.
pub fn rmsnorm_backward(
    dinp: &mut [f32],
    dg: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    g: &[f32],
    rstd: &[f32],
    d: usize,
) {
    let n = rstd.len();
    dinp.par_chunks_mut(d)
        .zip(dout.par_chunks(d))
        .zip(inp.par_chunks(d))
        .zip(rstd.par_iter())
        .for_each(|(((dx, dy), x), &rs)| {
            // a = dy * g;  dx = rs * a - x * rs^3 * mean(a * x)
            let mut ax = 0.0f32;
            for i in 0..d {
                ax += dy[i] * g[i] * x[i];
            }
            let coef = rs * rs * rs * ax / d as f32;
            for i in 0..d {
                dx[i] += rs * dy[i] * g[i] - coef * x[i];
            }
        });
    let partials: Vec<Vec<f32>> = (0..n.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; d];
            for r in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n) {
                let (dy, x) = (&dout[r * d..(r + 1) * d], &inp[r * d..(r + 1) * d]);
                for i in 0..d {
                    acc[i] += dy[i] * x[i] * rstd[r];
                }
            }
            acc
        })
        .collect();
    for p in &partials {
        for i in 0..d {
            dg[i] += p[i];
        }
    }
}
