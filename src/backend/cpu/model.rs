//! The transformer forward and backward pass on the CPU, written as one readable sequence of the
//! ops in this directory. Activations needed by the backward pass live in one `Activations`
//! struct sized once per (batch, seq) shape.

use super::attention::{attention_backward, attention_forward, AttnShape};
use super::classifier::{classifier_forward_backward, ClassifierGrads, LossSums};
use super::embed::{embed_backward, embed_forward};
use super::matmul::{matmul_backward, matmul_forward};
use super::norm::{rmsnorm_backward, rmsnorm_forward};
use super::rope::rope_apply;
use crate::model::{ModelConfig, ParamArena};
use crate::numerics::RopeTables;

/// Splits an arena buffer into one slice per tensor, in layout order: `tok_emb`, then per layer
/// `attn_norm, qkv, out, mlp_norm, up, down`, then `final_norm`, `lm_head`.
fn split_tensors<'a>(mut data: &'a mut [f32], cfg: &ModelConfig) -> Vec<&'a mut [f32]> {
    ParamArena::layout(cfg)
        .iter()
        .map(|s| {
            let (head, rest) = std::mem::take(&mut data).split_at_mut(s.len());
            data = rest;
            head
        })
        .collect()
}

/// Number of tensors per layer in the layout.
const PER_LAYER: usize = 6;

/// Saved activations for one (batch, seq) shape; per-layer buffers are stacked `[L, ...]`.
pub(crate) struct Activations {
    batch: usize,
    seq: usize,
    rope: RopeTables,
    x: Vec<f32>,     // residual stream entering each layer, [L+1, N, d]
    xmid: Vec<f32>,  // residual after attention, [L, N, d]
    xn1: Vec<f32>,   // [L, N, d]
    rstd1: Vec<f32>, // [L, N]
    qkv: Vec<f32>,   // after rotary, [L, N, 3d]
    att: Vec<f32>,   // attention output before projection, [L, N, d]
    lse: Vec<f32>,   // [L, B, H, T]
    xn2: Vec<f32>,   // [L, N, d]
    rstd2: Vec<f32>, // [L, N]
    h: Vec<f32>,     // ReLU output, [L, N, ff]
    xf: Vec<f32>,    // final norm output, [N, d]
    rstdf: Vec<f32>, // [N]
    tmp: Vec<f32>,   // projection scratch, [N, d]
    logits: Vec<f32>,
    // backward scratch
    dres: Vec<f32>,
    dxn: Vec<f32>,
    datt: Vec<f32>,
    dqkv: Vec<f32>,
    dh: Vec<f32>,
}

impl Activations {
    pub(crate) fn new(cfg: &ModelConfig, batch: usize, seq: usize) -> Self {
        let (n, d, l, ff) = (batch * seq, cfg.d_model, cfg.n_layers, cfg.d_ff);
        let z = |len: usize| vec![0f32; len];
        Activations {
            batch,
            seq,
            rope: RopeTables::new(seq, cfg.rope_theta),
            x: z((l + 1) * n * d),
            xmid: z(l * n * d),
            xn1: z(l * n * d),
            rstd1: z(l * n),
            qkv: z(l * n * 3 * d),
            att: z(l * n * d),
            lse: z(l * batch * cfg.n_heads * seq),
            xn2: z(l * n * d),
            rstd2: z(l * n),
            h: z(l * n * ff),
            xf: z(n * d),
            rstdf: z(n),
            tmp: z(n * d),
            logits: Vec::new(),
            dres: z(n * d),
            dxn: z(n * d),
            datt: z(n * d),
            dqkv: z(n * 3 * d),
            dh: z(n * ff),
        }
    }

    /// The floats [`Activations::new`] allocates for this shape, with the classifier's logits
    /// block and the rotary tables (u128: a hostile shape must not overflow the count).
    pub(crate) fn floats(cfg: &ModelConfig, batch: usize, seq: usize) -> u128 {
        let w = |x: usize| x as u128;
        let (n, d, l, ff) = (
            w(batch) * w(seq),
            w(cfg.d_model),
            w(cfg.n_layers),
            w(cfg.d_ff),
        );
        let per_layer = n * (8 * d + ff + 2) + w(batch) * w(cfg.n_heads) * w(seq);
        let logits = w(super::classifier::logits_floats(
            batch.saturating_mul(seq),
            cfg.vocab,
        ));
        let rope = w(seq) * w(crate::numerics::HEAD_DIM);
        l * per_layer + n * (d * 9 + ff + 1) + logits + rope
    }

    pub(crate) fn fits(&self, batch: usize, seq: usize) -> bool {
        self.batch == batch && self.seq == seq
    }
}

/// Forward pass over `inputs[B*T]` scoring `targets[B*T]`; when `grads` is given, also the full
/// backward pass, accumulating into `grads` (same layout as `params`) the gradient of the mean
/// loss `mean(ce) + z_loss * mean(lse^2)`.
pub(crate) fn forward_backward(
    cfg: &ModelConfig,
    params: &[f32],
    inputs: &[u32],
    targets: &[u32],
    a: &mut Activations,
    grads: Option<&mut [f32]>,
) -> LossSums {
    let (b, t) = (a.batch, a.seq);
    let (n, d, ff, v) = (b * t, cfg.d_model, cfg.d_ff, cfg.vocab);
    let shape = AttnShape {
        batch: b,
        seq: t,
        heads: cfg.n_heads,
    };
    let (nd, nd3, nff, nlse) = (n * d, n * 3 * d, n * ff, b * cfg.n_heads * t);
    let w: Vec<&[f32]> = {
        let mut rest = params;
        ParamArena::layout(cfg)
            .iter()
            .map(|s| {
                let (head, tail) = rest.split_at(s.len());
                rest = tail;
                head
            })
            .collect()
    };
    let last = w.len() - 1;
    let (tok_emb, final_norm, lm_head) = (w[0], w[last - 1], w[last]);

    embed_forward(&mut a.x[..nd], tok_emb, inputs, d);
    for l in 0..cfg.n_layers {
        let [attn_norm, w_qkv, w_out, mlp_norm, w_up, w_down] =
            w[1 + PER_LAYER * l..1 + PER_LAYER * (l + 1)]
        else {
            unreachable!()
        };
        let (x_in, x_next) = a.x[l * nd..(l + 2) * nd].split_at_mut(nd);
        let xn1 = &mut a.xn1[l * nd..(l + 1) * nd];
        rmsnorm_forward(
            xn1,
            &mut a.rstd1[l * n..(l + 1) * n],
            x_in,
            attn_norm,
            d,
            cfg.norm_eps,
        );
        let qkv = &mut a.qkv[l * nd3..(l + 1) * nd3];
        matmul_forward(qkv, xn1, w_qkv, n, d, 3 * d);
        rope_apply(qkv, &a.rope, d, false);
        let att = &mut a.att[l * nd..(l + 1) * nd];
        attention_forward(att, &mut a.lse[l * nlse..(l + 1) * nlse], qkv, shape);
        matmul_forward(&mut a.tmp, att, w_out, n, d, d);
        let xmid = &mut a.xmid[l * nd..(l + 1) * nd];
        for i in 0..nd {
            xmid[i] = x_in[i] + a.tmp[i];
        }
        let xn2 = &mut a.xn2[l * nd..(l + 1) * nd];
        rmsnorm_forward(
            xn2,
            &mut a.rstd2[l * n..(l + 1) * n],
            xmid,
            mlp_norm,
            d,
            cfg.norm_eps,
        );
        let h = &mut a.h[l * nff..(l + 1) * nff];
        matmul_forward(h, xn2, w_up, n, d, ff);
        h.iter_mut().for_each(|x| *x = x.max(0.0));
        matmul_forward(&mut a.tmp, h, w_down, n, ff, d);
        for i in 0..nd {
            x_next[i] = xmid[i] + a.tmp[i];
        }
    }
    let x_last = &a.x[cfg.n_layers * nd..(cfg.n_layers + 1) * nd];
    rmsnorm_forward(&mut a.xf, &mut a.rstdf, x_last, final_norm, d, cfg.norm_eps);

    let Some(grads) = grads else {
        return classifier_forward_backward(
            &a.xf,
            lm_head,
            targets,
            d,
            v,
            cfg.z_loss,
            None,
            &mut a.logits,
        );
    };

    // ---- backward: dres accumulates the residual stream's gradient from every branch ----
    let mut g = split_tensors(grads, cfg);
    let sums = classifier_forward_backward(
        &a.xf,
        lm_head,
        targets,
        d,
        v,
        cfg.z_loss,
        Some(ClassifierGrads {
            dx: &mut a.dxn,
            dw: g[last],
            rows_total: n,
        }),
        &mut a.logits,
    );
    a.dres.fill(0.0);
    rmsnorm_backward(
        &mut a.dres,
        g[last - 1],
        &a.dxn,
        x_last,
        final_norm,
        &a.rstdf,
        d,
    );
    for l in (0..cfg.n_layers).rev() {
        let [attn_norm, w_qkv, w_out, mlp_norm, w_up, w_down] =
            w[1 + PER_LAYER * l..1 + PER_LAYER * (l + 1)]
        else {
            unreachable!()
        };
        let [g_norm1, g_qkv, g_out, g_norm2, g_up, g_down] =
            &mut g[1 + PER_LAYER * l..1 + PER_LAYER * (l + 1)]
        else {
            unreachable!()
        };
        let x_in = &a.x[l * nd..(l + 1) * nd];
        let xmid = &a.xmid[l * nd..(l + 1) * nd];
        let h = &a.h[l * nff..(l + 1) * nff];
        // MLP: x_next = xmid + relu(xn2 Wup^T) Wdown^T
        matmul_backward(&mut a.dh, g_down, &a.dres, h, w_down, n, ff, d, false);
        for (dh, &hv) in a.dh.iter_mut().zip(h) {
            if hv <= 0.0 {
                *dh = 0.0;
            }
        }
        let xn2 = &a.xn2[l * nd..(l + 1) * nd];
        matmul_backward(&mut a.dxn, g_up, &a.dh, xn2, w_up, n, d, ff, false);
        rmsnorm_backward(
            &mut a.dres,
            g_norm2,
            &a.dxn,
            xmid,
            mlp_norm,
            &a.rstd2[l * n..(l + 1) * n],
            d,
        );
        // Attention: xmid = x_in + attn(rope(xn1 Wqkv^T)) Wout^T
        let att = &a.att[l * nd..(l + 1) * nd];
        matmul_backward(&mut a.datt, g_out, &a.dres, att, w_out, n, d, d, false);
        let qkv = &a.qkv[l * nd3..(l + 1) * nd3];
        attention_backward(
            &mut a.dqkv,
            &a.datt,
            att,
            &a.lse[l * nlse..(l + 1) * nlse],
            qkv,
            shape,
        );
        rope_apply(&mut a.dqkv, &a.rope, d, true);
        let xn1 = &a.xn1[l * nd..(l + 1) * nd];
        matmul_backward(&mut a.dxn, g_qkv, &a.dqkv, xn1, w_qkv, n, d, 3 * d, false);
        rmsnorm_backward(
            &mut a.dres,
            g_norm1,
            &a.dxn,
            x_in,
            attn_norm,
            &a.rstd1[l * n..(l + 1) * n],
            d,
        );
    }
    embed_backward(g[0], &a.dres, inputs, d);
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory estimate `terse train` checks before allocating counts exactly what
    /// `Activations::new` and the classifier allocate.
    #[test]
    fn activation_floats_match_what_is_allocated() {
        for (preset, batch, seq) in [("tiny", 3, 16), ("m1-3m", 2, 40), ("tiny", 1, 1)] {
            let cfg = ModelConfig::preset(preset, None).unwrap();
            let a = Activations::new(&cfg, batch, seq);
            let bufs = [
                &a.x,
                &a.xmid,
                &a.xn1,
                &a.rstd1,
                &a.qkv,
                &a.att,
                &a.lse,
                &a.xn2,
                &a.rstd2,
                &a.h,
                &a.xf,
                &a.rstdf,
                &a.tmp,
                &a.dres,
                &a.dxn,
                &a.datt,
                &a.dqkv,
                &a.dh,
                &a.rope.cos,
                &a.rope.sin,
            ];
            let held: usize = bufs.iter().map(|b| b.len()).sum::<usize>()
                + super::super::classifier::logits_floats(batch * seq, cfg.vocab);
            assert_eq!(
                Activations::floats(&cfg, batch, seq),
                held as u128,
                "{preset}"
            );
        }
    }
}
