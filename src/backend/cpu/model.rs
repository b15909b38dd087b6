//! The transformer forward and backward pass on the CPU, written as one readable sequence of the
//! ops in this directory. Activations needed by the backward pass live in one `Activations`
//! struct sized once per (batch, seq) shape.

use super::attention::{attention_backward, attention_forward, AttnShape};
use super::classifier::{classifier_forward_backward, ClassifierGrads, LossSums};
use super::embed::{embed_backward, embed_forward};
use super::matmul::{matmul_backward, matmul_forward};
use super::norm::{rmsnorm_backward, rmsnorm_forward};
use super::rope::rope_apply;
use crate::m1::int8::{fake_quantise_rows, QMatrix};
use crate::model::{ModelConfig, ParamArena};
use crate::numerics::{RopeTables, HEAD_DIM};

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
    /// Quantisation-aware training's weights and buffers (`None`: the float model).
    qat: Option<Qat>,
}

impl Activations {
    /// Buffers for one shape; with `qat`, the pass simulates contract 3 (see [`Qat`]).
    pub(crate) fn new(cfg: &ModelConfig, batch: usize, seq: usize, qat: bool) -> Self {
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
            qat: qat.then(|| Qat {
                eff: z(cfg.total_params()),
                geff: z(cfg.total_params()),
                att: z(l * n * d),
                h: z(l * n * ff),
            }),
        }
    }

    /// The floats [`Activations::new`] allocates for this shape, with the classifier's logits
    /// block and the rotary tables (u128: a hostile shape must not overflow the count).
    pub(crate) fn floats(cfg: &ModelConfig, batch: usize, seq: usize, qat: bool) -> u128 {
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
        let rope = w(seq) * w(HEAD_DIM);
        let qat = if qat {
            2 * w(cfg.total_params()) + l * n * (d + ff)
        } else {
            0
        };
        l * per_layer + n * (d * 9 + ff + 1) + logits + rope + qat
    }

    pub(crate) fn fits(&self, batch: usize, seq: usize, qat: bool) -> bool {
        self.batch == batch && self.seq == seq && self.qat.is_some() == qat
    }
}

/// Quantisation-aware training: the pass runs on contract 3's numbers (docs/numeric-contract.md,
/// "Contract 3"), each quantised tensor replaced by its dequantised int8 value (fake
/// quantisation), with gradients passed straight through the rounding. Simulated: every linear
/// layer's weights (per output row, the RMSNorm gain before it folded in: exactly what `Int8M1`
/// reads) and its input rows (per row), and the rotated query, key and value per head of 64.
/// Not simulated: the attention weights' integers of 2^-14 and the 16-lane sums.
struct Qat {
    /// The weights the pass runs on: each linear's as `Int8M1` quantises it (gain folded in,
    /// dequantised), every RMSNorm gain 1 (folded away), the embedding as it is.
    eff: Vec<f32>,
    /// The gradient with respect to `eff`, mapped back onto the float weights by
    /// [`Qat::fold_back`].
    geff: Vec<f32>,
    /// The quantised inputs of `out` and `down`, `[L, N, d]` and `[L, N, ff]` (the attention
    /// output and the ReLU output stay float for the backward pass).
    att: Vec<f32>,
    h: Vec<f32>,
}

/// A linear layer in the arena's tensor order: its weight tensor, `[outputs, inputs]`, and the
/// RMSNorm gain contract 3 folds into it (`qkv`: `attn_norm`, `up`: `mlp_norm`, `lm_head`:
/// `final_norm`; `out` and `down` have none).
struct Linear {
    weight: usize,
    gain: Option<usize>,
}

fn linears(cfg: &ModelConfig) -> Vec<Linear> {
    let last = 2 + PER_LAYER * cfg.n_layers;
    let mut v: Vec<Linear> = (0..cfg.n_layers)
        .flat_map(|l| {
            let t = 1 + PER_LAYER * l;
            [(1, Some(0)), (2, None), (4, Some(3)), (5, None)].map(|(w, g)| Linear {
                weight: t + w,
                gain: g.map(|g| t + g),
            })
        })
        .collect();
    v.push(Linear {
        weight: last,
        gain: Some(last - 1),
    });
    v
}

impl Qat {
    /// Fills `eff` from the float weights `params`: the quantiser is `Int8M1`'s own
    /// (`QMatrix::from_rows`), so the simulated weights are its weights bit for bit.
    fn simulate(&mut self, cfg: &ModelConfig, params: &[f32]) {
        let specs = ParamArena::layout(cfg);
        self.eff.copy_from_slice(params);
        for lin in linears(cfg) {
            let s = &specs[lin.weight];
            let gain = lin.gain.map(|g| &params[specs[g].range()]);
            let q = QMatrix::from_rows(&params[s.range()], s.shape[0], s.shape[1], gain);
            self.eff[s.range()].copy_from_slice(&q.dequantised());
            if let Some(g) = lin.gain {
                self.eff[specs[g].range()].fill(1.0);
            }
        }
    }

    /// Adds to `grads` the gradient with respect to the float weights `params`, from `geff`
    /// (straight through the quantiser): a folded weight `W[o][k] * g[k]` gives `W[o][k]` its
    /// gradient times `g[k]`, and `g[k]` the sum over outputs of its gradient times `W[o][k]`
    /// (a fixed, serial order); every other tensor takes `geff` as it is.
    fn fold_back(&self, cfg: &ModelConfig, params: &[f32], grads: &mut [f32]) {
        let specs = ParamArena::layout(cfg);
        let mut folded = vec![false; specs.len()];
        for lin in linears(cfg) {
            let Some(gi) = lin.gain else { continue };
            let (ws, gs) = (&specs[lin.weight], &specs[gi]);
            let (w, gain, inp) = (&params[ws.range()], &params[gs.range()], ws.shape[1]);
            let mut dg = vec![0f32; inp];
            for ((dw, ge), w) in grads[ws.range()]
                .chunks_exact_mut(inp)
                .zip(self.geff[ws.range()].chunks_exact(inp))
                .zip(w.chunks_exact(inp))
            {
                for k in 0..inp {
                    dw[k] += ge[k] * gain[k];
                    dg[k] += ge[k] * w[k];
                }
            }
            grads[gs.range()]
                .iter_mut()
                .zip(&dg)
                .for_each(|(g, &d)| *g += d);
            folded[lin.weight] = true;
            folded[gi] = true;
        }
        for (s, _) in specs.iter().zip(&folded).filter(|(_, &f)| !f) {
            let r = s.range();
            grads[r.clone()]
                .iter_mut()
                .zip(&self.geff[r])
                .for_each(|(g, &e)| *g += e);
        }
    }
}

/// Forward pass over `inputs[B*T]` scoring `targets[B*T]`; when `grads` is given, also the full
/// backward pass, accumulating into `grads` (same layout as `params`) the gradient of
/// `(sum(ce) + z_loss * sum(lse^2)) / rows_total`: the mean loss when `rows_total` is `B*T`, this
/// batch's share of a larger batch's mean otherwise.
/// With [`Qat`] buffers in `a`, the pass runs on contract 3's simulated numbers and the gradient
/// is taken straight through the quantiser back onto `params`.
pub(crate) fn forward_backward(
    cfg: &ModelConfig,
    params: &[f32],
    inputs: &[u32],
    targets: &[u32],
    a: &mut Activations,
    grads: Option<&mut [f32]>,
    rows_total: usize,
) -> LossSums {
    let Some(mut q) = a.qat.take() else {
        return pass(cfg, params, inputs, targets, a, grads, rows_total, None);
    };
    q.simulate(cfg, params);
    q.geff.fill(0.0);
    let Qat { eff, geff, att, h } = &mut q;
    let want_grads = grads.is_some();
    let sums = pass(
        cfg,
        eff,
        inputs,
        targets,
        a,
        want_grads.then_some(&mut geff[..]),
        rows_total,
        Some(QuantisedInputs { att, h }),
    );
    if let Some(grads) = grads {
        q.fold_back(cfg, params, grads);
    }
    a.qat = Some(q);
    sums
}

/// Where a simulated-contract-3 pass keeps the quantised inputs of `out` and `down`.
struct QuantisedInputs<'a> {
    att: &'a mut [f32],
    h: &'a mut [f32],
}

/// `x`, or with `store` its rows of `width` fake-quantised there: a linear layer's input.
fn linear_input<'a>(x: &'a [f32], store: Option<&'a mut [f32]>, width: usize) -> &'a [f32] {
    match store {
        None => x,
        Some(q) => {
            q.copy_from_slice(x);
            fake_quantise_rows(q, width);
            q
        }
    }
}

/// The forward pass, and with `grads` the backward pass, on weights `params`. With `qin`, every
/// linear layer's input rows and the rotated q, k, v heads are fake-quantised (contract 3; the
/// weights are then [`Qat`]'s, quantised already and with unit gains).
#[allow(clippy::too_many_arguments)]
fn pass(
    cfg: &ModelConfig,
    params: &[f32],
    inputs: &[u32],
    targets: &[u32],
    a: &mut Activations,
    grads: Option<&mut [f32]>,
    rows_total: usize,
    mut qin: Option<QuantisedInputs>,
) -> LossSums {
    let quantise = qin.is_some();
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
        if quantise {
            fake_quantise_rows(xn1, d);
        }
        let qkv = &mut a.qkv[l * nd3..(l + 1) * nd3];
        matmul_forward(qkv, xn1, w_qkv, n, d, 3 * d);
        rope_apply(qkv, &a.rope, d, false);
        if quantise {
            // q, k and v, head by head: every 64 values of a row are one head of one of them.
            fake_quantise_rows(qkv, HEAD_DIM);
        }
        let att = &mut a.att[l * nd..(l + 1) * nd];
        attention_forward(att, &mut a.lse[l * nlse..(l + 1) * nlse], qkv, shape);
        let att_in = linear_input(
            att,
            qin.as_mut().map(|q| &mut q.att[l * nd..(l + 1) * nd]),
            d,
        );
        matmul_forward(&mut a.tmp, att_in, w_out, n, d, d);
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
        if quantise {
            fake_quantise_rows(xn2, d);
        }
        let h = &mut a.h[l * nff..(l + 1) * nff];
        matmul_forward(h, xn2, w_up, n, d, ff);
        h.iter_mut().for_each(|x| *x = x.max(0.0));
        let h_in = linear_input(
            h,
            qin.as_mut().map(|q| &mut q.h[l * nff..(l + 1) * nff]),
            ff,
        );
        matmul_forward(&mut a.tmp, h_in, w_down, n, ff, d);
        for i in 0..nd {
            x_next[i] = xmid[i] + a.tmp[i];
        }
    }
    let x_last = &a.x[cfg.n_layers * nd..(cfg.n_layers + 1) * nd];
    rmsnorm_forward(&mut a.xf, &mut a.rstdf, x_last, final_norm, d, cfg.norm_eps);
    if quantise {
        fake_quantise_rows(&mut a.xf, d);
    }

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
            rows_total,
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
        let h_in = qin.as_ref().map_or(h, |q| &q.h[l * nff..(l + 1) * nff]);
        // MLP: x_next = xmid + relu(xn2 Wup^T) Wdown^T
        matmul_backward(&mut a.dh, g_down, &a.dres, h_in, w_down, n, ff, d, false);
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
        let att_in = qin.as_ref().map_or(att, |q| &q.att[l * nd..(l + 1) * nd]);
        matmul_backward(&mut a.datt, g_out, &a.dres, att_in, w_out, n, d, d, false);
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
    use crate::m1::int8::Int8M1;
    use crate::m1::{ExactM1, Probs, WINDOW_START};
    use crate::model::Batch;

    /// A tiny M1 whose weights are doubled and whose every linear row has one outlier (its first
    /// weight times 30), so per-row int8 quantisation rounds the rest of the row coarsely and
    /// changes the predictions measurably (by 0.2 bits/byte here).
    fn m1_hurt_by_int8(context: usize) -> (ModelConfig, ParamArena) {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(context);
        let mut p = ParamArena::init(&cfg, 11);
        p.data.iter_mut().for_each(|x| *x *= 2.0);
        for s in ParamArena::layout(&cfg) {
            if s.shape.len() == 2 && s.name != "tok_emb.weight" {
                for row in p.data[s.range()].chunks_exact_mut(s.shape[1]) {
                    row[0] *= 30.0;
                }
            }
        }
        (cfg, p)
    }

    /// Mean bits per byte of `windows` under a model's per-window distributions.
    fn exact_bits(windows: &[&[u8]], probs: impl Fn(&[u8]) -> Vec<Probs>) -> f64 {
        let (mut sum, mut n) = (0f64, 0usize);
        for w in windows {
            let p = probs(w);
            sum += w
                .iter()
                .zip(&p)
                .map(|(&b, p)| -(p[b as usize] as f64).log2())
                .sum::<f64>();
            n += w.len();
        }
        sum / n as f64
    }

    /// Mean bits per byte of the training pass on `windows` (each from the window-start byte).
    fn pass_bits(cfg: &ModelConfig, p: &ParamArena, windows: &[&[u8]], qat: bool) -> f64 {
        let batch = Batch::from_windows(windows, WINDOW_START as u32);
        let mut a = Activations::new(cfg, batch.batch, batch.seq, qat);
        let n = batch.inputs.len();
        let s = forward_backward(cfg, &p.data, &batch.inputs, &batch.targets, &mut a, None, n);
        s.ce / s.rows as f64 / std::f64::consts::LN_2
    }

    /// The quantisation-aware pass scores text as the int8 model (`Int8M1`, contract 3) does,
    /// within 0.02 bits/byte (0.007 here), on a model where int8 and float differ by more than
    /// 0.1 (0.21 here), while the float pass scores as the float model: what fine-tuning with
    /// it optimises is the model that will code.
    #[test]
    fn qat_pass_scores_like_the_int8_model_not_the_float_one() {
        let (cfg, p) = m1_hurt_by_int8(64);
        let text = include_bytes!("../../../README.md");
        let windows: Vec<&[u8]> = text.chunks_exact(64).take(24).collect();
        let int8 = Int8M1::new(&cfg, &p).unwrap();
        let float = ExactM1::new(&cfg, &p).unwrap();
        let int8_bits = exact_bits(&windows, |w| int8.window_probs(w));
        let float_bits = exact_bits(&windows, |w| float.window_probs(w));
        let qat_bits = pass_bits(&cfg, &p, &windows, true);
        let train_bits = pass_bits(&cfg, &p, &windows, false);
        assert!((train_bits - float_bits).abs() < 0.01, "the float pass");
        assert!(
            (int8_bits - float_bits).abs() > 0.1,
            "quantisation must matter here: int8 {int8_bits}, float {float_bits}"
        );
        assert!(
            (qat_bits - int8_bits).abs() < 0.02,
            "qat {qat_bits} vs int8 {int8_bits} (float {float_bits})"
        );
    }

    /// `fold_back` is the chain rule of the fold: for any direction `δ` of the float weights,
    /// `<grads, δ>` equals `<geff, dF(δ)>`, where `F` maps the float weights to the pass's
    /// (before rounding): a folded weight `W[o][k] g[k]` moves by `δW[o][k] g[k] + W[o][k] δg[k]`,
    /// a unit gain not at all, every other weight by its own `δ`.
    #[test]
    fn fold_back_is_the_chain_rule_of_folding_gains_into_weights() {
        let (cfg, p) = m1_hurt_by_int8(16);
        let mut a = Activations::new(&cfg, 1, 4, true);
        let q = a.qat.as_mut().unwrap();
        let mut rng = crate::rng::Rng::new(3);
        let mut random = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| rng.below(2001) as f32 / 1000.0 - 1.0)
                .collect()
        };
        q.geff = random(p.len());
        let delta = random(p.len());
        let mut grads = vec![0f32; p.len()];
        q.fold_back(&cfg, &p.data, &mut grads);
        let specs = ParamArena::layout(&cfg);
        let mut moved: Vec<f64> = delta.iter().map(|&d| d as f64).collect();
        for lin in linears(&cfg) {
            let Some(gi) = lin.gain else { continue };
            let (ws, gs) = (&specs[lin.weight], &specs[gi]);
            let inp = ws.shape[1];
            for i in ws.range() {
                let k = gs.offset + (i - ws.offset) % inp;
                moved[i] = delta[i] as f64 * p.data[k] as f64 + p.data[i] as f64 * delta[k] as f64;
            }
            gs.range().for_each(|k| moved[k] = 0.0);
        }
        let dot = |a: &[f32], b: &[f64]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y).sum::<f64>();
        let deltas: Vec<f64> = delta.iter().map(|&d| d as f64).collect();
        let (lhs, rhs) = (dot(&grads, &deltas), dot(&q.geff, &moved));
        assert!(
            (lhs - rhs).abs() <= 1e-5 * rhs.abs().max(1.0),
            "<grads, δ> {lhs} vs <geff, dF(δ)> {rhs}"
        );
    }

    /// The weights the quantisation-aware pass runs on are `Int8M1`'s, bit for bit: each
    /// linear layer dequantised with its RMSNorm gain folded in, and every gain 1.
    #[test]
    fn qat_weights_are_the_int8_models_bit_for_bit() {
        let (cfg, p) = m1_hurt_by_int8(32);
        let mut a = Activations::new(&cfg, 1, 4, true);
        let q = a.qat.as_mut().unwrap();
        q.simulate(&cfg, &p.data);
        let m1 = Int8M1::new(&cfg, &p).unwrap();
        let int8 = m1.lm();
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let specs = ParamArena::layout(&cfg);
        let eff = |name: &str| {
            let s = specs.iter().find(|s| s.name == name).unwrap();
            bits(&q.eff[s.range()])
        };
        for l in 0..cfg.n_layers {
            let names = ["attn.qkv", "attn.out", "mlp.up", "mlp.down"];
            for (m, name) in int8.layer_matrices(l).unwrap().iter().zip(names) {
                assert_eq!(
                    eff(&format!("layers.{l}.{name}.weight")),
                    bits(&m.dequantised())
                );
            }
            for norm in ["attn_norm", "mlp_norm"] {
                let g = eff(&format!("layers.{l}.{norm}.weight"));
                assert!(g.iter().all(|&b| b == 1f32.to_bits()), "{norm}");
            }
        }
        assert_eq!(
            eff("lm_head.weight"),
            bits(&int8.head().unwrap().dequantised())
        );
        assert_eq!(eff("tok_emb.weight"), bits(p.tensor("tok_emb.weight")));
    }

    /// The memory estimate `terse train` checks before allocating counts exactly what
    /// `Activations::new` and the classifier allocate.
    #[test]
    fn activation_floats_match_what_is_allocated() {
        for (preset, batch, seq, qat) in [
            ("tiny", 3, 16, false),
            ("m1-3m", 2, 40, false),
            ("tiny", 1, 1, false),
            ("tiny", 3, 16, true),
            ("m1-3m", 2, 40, true),
        ] {
            let cfg = ModelConfig::preset(preset, None).unwrap();
            let a = Activations::new(&cfg, batch, seq, qat);
            let q = a.qat.as_ref();
            let qat_held = q.map_or(0, |q| q.eff.len() + q.geff.len() + q.att.len() + q.h.len());
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
                + super::super::classifier::logits_floats(batch * seq, cfg.vocab)
                + qat_held;
            assert_eq!(
                Activations::floats(&cfg, batch, seq, qat),
                held as u128,
                "{preset} qat {qat}"
            );
        }
    }
}
