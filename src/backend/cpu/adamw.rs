//! AdamW on fp32 weights: the CPU twin of `kernels/adamw.cu` (same formula, same argument order).

use rayon::prelude::*;

/// Hyper-parameters of one AdamW update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay; the caller passes 0 for tensors that are not decayed.
    pub weight_decay: f32,
    /// Multiplies every gradient first (global-norm clipping).
    pub grad_scale: f32,
    /// 1 - beta1^t and 1 - beta2^t for step t (1-based).
    pub bias_corr1: f32,
    pub bias_corr2: f32,
}

/// Updates `params`, `m` and `v` in place from `grads`.
pub fn adamw(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamWStep) {
    const CHUNK: usize = 1 << 14;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                let g = g[i] * h.grad_scale;
                m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g;
                v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
                let mhat = m[i] / h.bias_corr1;
                let vhat = v[i] / h.bias_corr2;
                p[i] -= h.lr * (mhat / (vhat.sqrt() + h.eps) + h.weight_decay * p[i]);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_about_lr() {
        let mut p = vec![1.0f32, -2.0, 0.5];
        let g = vec![0.3f32, -4.0, 1e-3];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        let h = AdamWStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_scale: 1.0,
            bias_corr1: 0.1,
            bias_corr2: 0.05,
        };
        adamw(&mut p, &g, &mut m, &mut v, &h);
        // With bias correction the first update is lr * sign(g).
        assert!(
            (p[0] - 0.99).abs() < 1e-6 && (p[1] + 1.99).abs() < 1e-6 && (p[2] - 0.49).abs() < 1e-4,
            "{p:?}"
        );
    }
}
