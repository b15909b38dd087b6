//! Causal self-attention over the fused `qkv` activation (`[B*T, 3d]`: q | k | v, heads of 64).
//!
//! One task per (batch, head). Queries go in blocks of 64: a block's scores against the keys it
//! may see are one small GEMM, softmax runs row by row, and the output is a second GEMM. Forward
//! keeps only the output and each row's log-sum-exp (`lse`, `[B, H, T]`); the backward pass
//! recomputes the probabilities from `lse`, as flash attention does, so the `T x T` matrix is
//! never stored (a task holds at most `64 x T` scores). Blocks run in order inside a task, so
//! results are reproducible.

use super::matmul::{gemm_serial, StridedRef};
use super::vecops::dot;
use crate::numerics::HEAD_DIM;
use rayon::prelude::*;

/// Query rows per block.
const QBLOCK: usize = 64;

/// Shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
}

impl AttnShape {
    fn d(&self) -> usize {
        self.heads * HEAD_DIM
    }
    fn head_ptr(&self, b: usize, t: usize, part: usize, h: usize) -> usize {
        (b * self.seq + t) * 3 * self.d() + part * self.d() + h * HEAD_DIM
    }
    /// Rows `t..` of q (part 0), k (1) or v (2) of head `h` in batch row `b`, as a `[*, 64]` view.
    fn view<'a>(
        &self,
        qkv: &'a [f32],
        b: usize,
        t: usize,
        part: usize,
        h: usize,
    ) -> StridedRef<'a> {
        StridedRef {
            data: &qkv[self.head_ptr(b, t, part, h)..],
            rs: 3 * self.d(),
            cs: 1,
        }
    }
    /// The same rows, transposed: a `[64, *]` view.
    fn view_t<'a>(
        &self,
        qkv: &'a [f32],
        b: usize,
        t: usize,
        part: usize,
        h: usize,
    ) -> StridedRef<'a> {
        StridedRef {
            data: &qkv[self.head_ptr(b, t, part, h)..],
            rs: 1,
            cs: 3 * self.d(),
        }
    }
}

/// `scores[r, j] = q_{i0+r} . k_j` for the `rows` queries from `i0` and keys `0..i0+rows`.
fn block_scores(
    qkv: &[f32],
    s: AttnShape,
    b: usize,
    h: usize,
    i0: usize,
    rows: usize,
    out: &mut [f32],
) {
    let keys = i0 + rows;
    gemm_serial(
        rows,
        HEAD_DIM,
        keys,
        s.view(qkv, b, i0, 0, h),
        s.view_t(qkv, b, 0, 1, h),
        0.0,
        out,
        keys,
    );
}

/// Writes `out[B*T, d]` (heads side by side) and `lse[B, H, T]`.
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], s: AttnShape) {
    let (t_len, d) = (s.seq, s.d());
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let per_head: Vec<(Vec<f32>, Vec<f32>)> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let mut o = vec![0f32; t_len * HEAD_DIM];
            let mut l = vec![0f32; t_len];
            let mut p = vec![0f32; QBLOCK.min(t_len) * t_len];
            for i0 in (0..t_len).step_by(QBLOCK) {
                let rows = QBLOCK.min(t_len - i0);
                let keys = i0 + rows;
                block_scores(qkv, s, b, h, i0, rows, &mut p);
                for (r, row) in p[..rows * keys].chunks_mut(keys).enumerate() {
                    let visible = i0 + r + 1;
                    let m = row[..visible]
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
                    let mut sum = 0f32;
                    for x in &mut row[..visible] {
                        *x = (*x * scale - m).exp();
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    row[..visible].iter_mut().for_each(|x| *x *= inv);
                    row[visible..].fill(0.0);
                    l[i0 + r] = m + sum.ln();
                }
                let probs = StridedRef {
                    data: &p,
                    rs: keys,
                    cs: 1,
                };
                gemm_serial(
                    rows,
                    keys,
                    HEAD_DIM,
                    probs,
                    s.view(qkv, b, 0, 2, h),
                    0.0,
                    &mut o[i0 * HEAD_DIM..],
                    HEAD_DIM,
                );
            }
            (o, l)
        })
        .collect();
    for (bh, (o, l)) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / s.heads, bh % s.heads);
        for i in 0..t_len {
            let dst = (b * t_len + i) * d + h * HEAD_DIM;
            out[dst..dst + HEAD_DIM].copy_from_slice(&o[i * HEAD_DIM..(i + 1) * HEAD_DIM]);
        }
        lse[bh * t_len..(bh + 1) * t_len].copy_from_slice(&l);
    }
}

/// Overwrites `dqkv[B*T, 3d]` with the gradient of the attention output `dout[B*T, d]`.
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    out: &[f32],
    lse: &[f32],
    qkv: &[f32],
    s: AttnShape,
) {
    let (t_len, d) = (s.seq, s.d());
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    const G: usize = 3 * HEAD_DIM; // row stride of the per-head gradient: dq | dk | dv
    let per_head: Vec<Vec<f32>> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let mut g = vec![0f32; t_len * G];
            let mut p = vec![0f32; QBLOCK.min(t_len) * t_len];
            let mut ds = vec![0f32; QBLOCK.min(t_len) * t_len];
            let row0 = b * t_len * d + h * HEAD_DIM;
            for i0 in (0..t_len).step_by(QBLOCK) {
                let rows = QBLOCK.min(t_len - i0);
                let keys = i0 + rows;
                let d_o = StridedRef {
                    data: &dout[row0 + i0 * d..],
                    rs: d,
                    cs: 1,
                };
                block_scores(qkv, s, b, h, i0, rows, &mut p);
                // dP = dO V^T, into ds
                gemm_serial(
                    rows,
                    HEAD_DIM,
                    keys,
                    d_o,
                    s.view_t(qkv, b, 0, 2, h),
                    0.0,
                    &mut ds,
                    keys,
                );
                for r in 0..rows {
                    let i = i0 + r;
                    let at = row0 + i * d;
                    let delta = dot(&dout[at..at + HEAD_DIM], &out[at..at + HEAD_DIM]);
                    let (pr, dr) = (
                        &mut p[r * keys..(r + 1) * keys],
                        &mut ds[r * keys..(r + 1) * keys],
                    );
                    let lse_i = lse[bh * t_len + i];
                    for j in 0..=i {
                        pr[j] = (pr[j] * scale - lse_i).exp();
                        dr[j] = pr[j] * (dr[j] - delta) * scale;
                    }
                    pr[i + 1..].fill(0.0);
                    dr[i + 1..].fill(0.0);
                }
                let ds_v = StridedRef {
                    data: &ds,
                    rs: keys,
                    cs: 1,
                };
                let ds_t = StridedRef {
                    data: &ds,
                    rs: 1,
                    cs: keys,
                };
                let p_t = StridedRef {
                    data: &p,
                    rs: 1,
                    cs: keys,
                };
                // dQ = dS K ; dK += dS^T Q ; dV += P^T dO
                gemm_serial(
                    rows,
                    keys,
                    HEAD_DIM,
                    ds_v,
                    s.view(qkv, b, 0, 1, h),
                    0.0,
                    &mut g[i0 * G..],
                    G,
                );
                gemm_serial(
                    keys,
                    rows,
                    HEAD_DIM,
                    ds_t,
                    s.view(qkv, b, i0, 0, h),
                    1.0,
                    &mut g[HEAD_DIM..],
                    G,
                );
                gemm_serial(
                    keys,
                    rows,
                    HEAD_DIM,
                    p_t,
                    d_o,
                    1.0,
                    &mut g[2 * HEAD_DIM..],
                    G,
                );
            }
            g
        })
        .collect();
    for (bh, g) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / s.heads, bh % s.heads);
        for i in 0..t_len {
            for part in 0..3 {
                let dst = s.head_ptr(b, i, part, h);
                let src = i * G + part * HEAD_DIM;
                dqkv[dst..dst + HEAD_DIM].copy_from_slice(&g[src..src + HEAD_DIM]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Plain materialised softmax attention in f64: the reference.
    fn naive(qkv: &[f32], s: AttnShape) -> Vec<f64> {
        let d = s.d();
        let mut out = vec![0f64; s.batch * s.seq * d];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.seq {
                    let q = &qkv[s.head_ptr(b, i, 0, h)..][..HEAD_DIM];
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| {
                            let k = &qkv[s.head_ptr(b, j, 1, h)..][..HEAD_DIM];
                            q.iter()
                                .zip(k)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                                / 8.0
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                    for (j, x) in sc.iter().enumerate() {
                        let p = (x - m).exp() / z;
                        let v = &qkv[s.head_ptr(b, j, 2, h)..][..HEAD_DIM];
                        for c in 0..HEAD_DIM {
                            out[(b * s.seq + i) * d + h * HEAD_DIM + c] += p * v[c] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_naive_and_backward_matches_finite_differences() {
        let s = AttnShape {
            batch: 2,
            seq: 7,
            heads: 2,
        };
        let d = s.d();
        let mut r = Rng::new(9);
        let qkv: Vec<f32> = (0..s.batch * s.seq * 3 * d)
            .map(|_| r.normal() as f32)
            .collect();
        let mut out = vec![f32::NAN; s.batch * s.seq * d];
        let mut lse = vec![f32::NAN; s.batch * s.heads * s.seq];
        attention_forward(&mut out, &mut lse, &qkv, s);
        for (a, b) in out.iter().zip(naive(&qkv, s)) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
        // L = sum(w * out) for random w; check dL/dqkv against central differences in f64.
        let w: Vec<f32> = (0..out.len()).map(|_| r.normal() as f32).collect();
        let mut dqkv = vec![f32::NAN; qkv.len()];
        attention_backward(&mut dqkv, &w, &out, &lse, &qkv, s);
        let loss =
            |x: &[f32]| -> f64 { naive(x, s).iter().zip(&w).map(|(o, w)| o * *w as f64).sum() };
        for idx in (0..qkv.len()).step_by(97) {
            let mut p = qkv.clone();
            let eps = 1e-2f32;
            p[idx] += eps;
            let lp = loss(&p);
            p[idx] -= 2.0 * eps;
            let lm = loss(&p);
            let fd = (lp - lm) / (2.0 * eps as f64);
            assert!(
                (fd - dqkv[idx] as f64).abs() < 2e-3 * (1.0 + fd.abs()),
                "idx {idx}: fd {fd} vs {}",
                dqkv[idx]
            );
        }
    }
}
