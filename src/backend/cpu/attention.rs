//! Causal self-attention over the fused `qkv` activation (`[B*T, 3d]`: q | k | v, heads of 64).
//!
//! Forward keeps only the output and each row's log-sum-exp (`lse`, `[B, H, T]`); the backward
//! pass recomputes the probabilities from `lse`, as flash attention does, so the `T x T` matrix is
//! never stored. One task per (batch, head); each walks its rows in order, so results are
//! reproducible.

use super::rope::HEAD_DIM;
use super::vecops::{axpy, dot};
use rayon::prelude::*;

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
            let mut scores = vec![0f32; t_len];
            for i in 0..t_len {
                let q = &qkv[s.head_ptr(b, i, 0, h)..][..HEAD_DIM];
                let mut m = f32::NEG_INFINITY;
                for j in 0..=i {
                    let k = &qkv[s.head_ptr(b, j, 1, h)..][..HEAD_DIM];
                    scores[j] = dot(q, k) * scale;
                    m = m.max(scores[j]);
                }
                let oi = &mut o[i * HEAD_DIM..(i + 1) * HEAD_DIM];
                let mut sum = 0f32;
                for j in 0..=i {
                    let p = (scores[j] - m).exp();
                    sum += p;
                    axpy(p, &qkv[s.head_ptr(b, j, 2, h)..][..HEAD_DIM], oi);
                }
                let inv = 1.0 / sum;
                oi.iter_mut().for_each(|x| *x *= inv);
                l[i] = m + sum.ln();
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
    let per_head: Vec<Vec<f32>> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            // [T, 3, 64]: dq | dk | dv of this head
            let mut g = vec![0f32; t_len * 3 * HEAD_DIM];
            for i in 0..t_len {
                let row = (b * t_len + i) * d + h * HEAD_DIM;
                let (doi, oi) = (&dout[row..row + HEAD_DIM], &out[row..row + HEAD_DIM]);
                let delta = dot(doi, oi);
                let q = &qkv[s.head_ptr(b, i, 0, h)..][..HEAD_DIM];
                let lse_i = lse[bh * t_len + i];
                let mut dq = [0f32; HEAD_DIM];
                for j in 0..=i {
                    let k = &qkv[s.head_ptr(b, j, 1, h)..][..HEAD_DIM];
                    let v = &qkv[s.head_ptr(b, j, 2, h)..][..HEAD_DIM];
                    let p = (dot(q, k) * scale - lse_i).exp();
                    let ds = p * (dot(doi, v) - delta) * scale;
                    axpy(ds, k, &mut dq);
                    let gj = &mut g[j * 3 * HEAD_DIM..(j + 1) * 3 * HEAD_DIM];
                    axpy(ds, q, &mut gj[HEAD_DIM..2 * HEAD_DIM]);
                    axpy(p, doi, &mut gj[2 * HEAD_DIM..]);
                }
                g[i * 3 * HEAD_DIM..i * 3 * HEAD_DIM + HEAD_DIM].copy_from_slice(&dq);
            }
            g
        })
        .collect();
    for (bh, g) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / s.heads, bh % s.heads);
        for i in 0..t_len {
            for part in 0..3 {
                let dst = s.head_ptr(b, i, part, h);
                let src = (i * 3 + part) * HEAD_DIM;
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
        for idx in (0..qkv.len()).step_by(13) {
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
