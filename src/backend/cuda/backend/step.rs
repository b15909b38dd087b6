//! The training step's op sequence, the CPU model's order op for op: the forward pass through
//! the logits, and the whole step (zero grads, forward, classifier, backward, global norm, the
//! metrics record, AdamW) as it is enqueued eagerly or into a CUDA graph.

use super::acts::{Acts, EmbedGrad};
use super::allreduce::GradAllReduce;
use super::{CudaTrainer, PER_LAYER};
use crate::backend::cpu::attention::AttnShape;
use crate::backend::cuda::gemm::{DevicePtrDyn, Gemm};
use crate::backend::cuda::launch::{self, AttnKernels};
use crate::backend::cuda::loader::{GpuFloat, GpuKernels};
use crate::backend::cuda::nvtx;
use crate::backend::OptimConfig;
use crate::model::{ModelConfig, TensorSpec};
use anyhow::Result;
use cudarc::driver::CudaSlice;

/// Which of a step's accumulated passes a backward is: the first zeroes the gradient, the
/// others add to it, and the last sums the per-row losses of them all.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pass {
    pub(super) index: usize,
    pub(super) count: usize,
}

impl Pass {
    /// A step in one pass.
    pub(super) const WHOLE: Pass = Pass { index: 0, count: 1 };

    fn accumulates(self) -> bool {
        self.index > 0
    }

    fn last(self) -> bool {
        self.index + 1 == self.count
    }
}

impl<T: GpuFloat> CudaTrainer<T> {
    /// Forward pass of the current working weights over the uploaded batch in `a`, through the
    /// logits (the CPU model's order).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        k: &GpuKernels,
        gemm: &mut Gemm,
        attention: AttnKernels,
        cfg: &ModelConfig,
        specs: &[TensorSpec],
        work: &CudaSlice<T>,
        a: &mut Acts<T>,
    ) -> Result<()> {
        let (b, t) = (a.batch, a.seq);
        let (n, d, ff, v) = (b * t, cfg.d_model, cfg.d_ff, cfg.vocab);
        let (nd, nd3, nff) = (n * d, n * 3 * d, n * ff);
        let nlse = b * cfg.n_heads * t;
        let shape = AttnShape {
            batch: b,
            seq: t,
            heads: cfg.n_heads,
        };
        let w = |i: usize| work.slice(specs[i].range());
        let last = specs.len() - 1;
        let _range = nvtx::range("forward");
        launch::embed_forward(k, &mut a.x.slice_mut(..nd), &w(0), &a.inputs, n, d)?;
        for l in 0..cfg.n_layers {
            let _layer = nvtx::range_with(|| format!("layer {l} forward"));
            let base = 1 + PER_LAYER * l;
            let r = l * nd..(l + 1) * nd;
            launch::rmsnorm_forward(
                k,
                &mut a.xn1.slice_mut(r.clone()),
                &mut a.rstd1.slice_mut(l * n..(l + 1) * n),
                &a.x.slice(r.clone()),
                &w(base),
                n,
                d,
                cfg.norm_eps,
            )?;
            let r3 = l * nd3..(l + 1) * nd3;
            gemm.forward(
                &mut a.qkv.slice_mut(r3.clone()),
                &a.xn1.slice(r.clone()),
                &w(base + 1),
                None,
                n,
                d,
                3 * d,
            )?;
            launch::attention_forward(
                k,
                attention,
                &mut a.att.slice_mut(r.clone()),
                &mut a.lse.slice_mut(l * nlse..(l + 1) * nlse),
                &a.qkv.slice(r3),
                &a.rope.cos,
                &a.rope.sin,
                shape,
            )?;
            // xmid = x + att Wout^T (the residual add fused into the GEMM, beta = 1)
            let x_in = a.x.slice(r.clone());
            gemm.forward(
                &mut a.xmid.slice_mut(r.clone()),
                &a.att.slice(r.clone()),
                &w(base + 2),
                Some(&x_in as &dyn DevicePtrDyn<T>),
                n,
                d,
                d,
            )?;
            launch::rmsnorm_forward(
                k,
                &mut a.xn2.slice_mut(r.clone()),
                &mut a.rstd2.slice_mut(l * n..(l + 1) * n),
                &a.xmid.slice(r.clone()),
                &w(base + 3),
                n,
                d,
                cfg.norm_eps,
            )?;
            // h = relu(xn2 Wup^T), the ReLU (and its mask for the backward) in the GEMM's
            // epilogue where cuBLASLt offers it, else the ReLU kernel
            let rf = l * nff..(l + 1) * nff;
            let rm = l * a.relu_mask_stride..(l + 1) * a.relu_mask_stride;
            let (xn2, w_up) = (a.xn2.slice(r.clone()), w(base + 4));
            let mut mask = a.relu_mask.slice_mut(rm);
            let mut h = a.h.slice_mut(rf.clone());
            a.relu_masked = gemm.forward_relu_mask(&mut h, &mut mask, &xn2, &w_up, n, d, ff)?;
            if !a.relu_masked {
                gemm.forward(&mut h, &xn2, &w_up, None, n, d, ff)?;
                launch::relu_forward_inplace(k, &mut h, nff)?;
            }
            // x_next = xmid + h Wdown^T
            let xmid = a.xmid.slice(r.clone());
            gemm.forward(
                &mut a.x.slice_mut((l + 1) * nd..(l + 2) * nd),
                &a.h.slice(rf),
                &w(base + 5),
                Some(&xmid as &dyn DevicePtrDyn<T>),
                n,
                ff,
                d,
            )?;
        }
        let lx = cfg.n_layers * nd..(cfg.n_layers + 1) * nd;
        launch::rmsnorm_forward(
            k,
            &mut a.xf,
            &mut a.rstdf,
            &a.x.slice(lx),
            &w(last - 1),
            n,
            d,
            cfg.norm_eps,
        )?;
        gemm.forward(&mut a.logits, &a.xf, &w(last), None, n, d, v)?;
        Ok(())
    }

    /// Enqueues one whole training step on the stream (captured into a graph after warm-up):
    /// zero grads, forward, classifier, backward, global norm, the metrics record, AdamW. Reads
    /// the batch and the per-step scalars from their device buffers.
    pub(super) fn enqueue_step(&mut self, opt: &OptimConfig) -> Result<()> {
        let a = self
            .acts
            .as_ref()
            .expect("activations planned before a step");
        let rows = a.batch * a.seq;
        self.enqueue_gradients(rows, Pass::WHOLE, None)?;
        self.enqueue_update(opt, rows)
    }

    /// Enqueues the first part of a step: zero grads, forward, classifier, backward, the
    /// gradient being of the batch's summed loss over `rows_total` (its mean when that is the
    /// batch's own rows, its share of a larger batch's mean otherwise). The batch's loss sums
    /// land in the activations' `sums`. A `pass` after the first adds to the gradient the ones
    /// before left, and the last sums every pass's losses. With `sync` (the last pass only),
    /// each part of the gradient is handed to it as the backward finishes it, and the gradient
    /// and loss sums are every rank's sum when the stream reaches the end.
    pub(super) fn enqueue_gradients(
        &mut self,
        rows_total: usize,
        pass: Pass,
        mut sync: Option<&mut GradAllReduce>,
    ) -> Result<()> {
        let CudaTrainer {
            cfg,
            specs,
            k,
            gemm,
            work,
            grads,
            acts,
            attention,
            ..
        } = self;
        let a = acts.as_mut().expect("activations planned before a step");
        let s = k.stream().clone();
        let (b, t) = (a.batch, a.seq);
        let (n, d, ff, vocab) = (b * t, cfg.d_model, cfg.d_ff, cfg.vocab);
        let (nd, nd3, nff) = (n * d, n * 3 * d, n * ff);
        let nlse = b * cfg.n_heads * t;
        let shape = AttnShape {
            batch: b,
            seq: t,
            heads: cfg.n_heads,
        };
        let last = specs.len() - 1;

        if !pass.accumulates() {
            s.memset_zeros(grads)?;
        }
        s.memset_zeros(&mut a.dres)?;
        if let Some(sync) = sync.as_deref_mut() {
            sync.begin();
        }
        Self::forward(k, gemm, *attention, cfg, specs, work, a)?;

        // loss, dlogits in place
        let loss = nvtx::range("loss");
        let rows = pass.index * n..(pass.index + 1) * n;
        launch::classifier_forward_backward(
            k,
            &mut a.logits,
            &mut a.ce_row.slice_mut(rows.clone()),
            &mut a.lse_row.slice_mut(rows),
            &a.targets,
            n,
            vocab,
            cfg.z_loss,
            1.0 / rows_total as f32,
        )?;
        if pass.last() {
            let all = pass.count * n;
            launch::loss_sums(k, &mut a.sums, &a.ce_row, &a.lse_row, all)?;
        }
        drop(loss);

        let backward = nvtx::range("backward");
        // Passes after the first add their weight gradients to the ones before.
        let acc = pass.accumulates();
        let w = |i: usize| work.slice(specs[i].range());
        // lm_head: dxf = dlogits Whead, dWhead = dlogits^T xf
        gemm.linear_backward(
            &mut a.dxn,
            &mut grads.slice_mut(specs[last].range()),
            &a.logits,
            &a.xf,
            &w(last),
            n,
            d,
            vocab,
            acc,
        )?;
        let lx = cfg.n_layers * nd..(cfg.n_layers + 1) * nd;
        launch::rmsnorm_backward(
            k,
            &mut a.dres,
            &mut grads.slice_mut(specs[last - 1].range()),
            &mut a.norm_scratch,
            &a.dxn,
            &a.x.slice(lx),
            &w(last - 1),
            &a.rstdf,
            n,
            d,
        )?;
        if let Some(sync) = sync.as_deref_mut() {
            sync.ready(&s, grads, specs[last - 1].range().start)?;
        }
        for l in (0..cfg.n_layers).rev() {
            let _layer = nvtx::range_with(|| format!("layer {l} backward"));
            let base = 1 + PER_LAYER * l;
            let r = l * nd..(l + 1) * nd;
            let r3 = l * nd3..(l + 1) * nd3;
            let rf = l * nff..(l + 1) * nff;
            let rn = l * n..(l + 1) * n;
            // MLP: x_next = xmid + relu(xn2 Wup^T) Wdown^T; dh through the ReLU in the dgrad's
            // epilogue where the forward left its mask, else the ReLU kernel
            let rm = l * a.relu_mask_stride..(l + 1) * a.relu_mask_stride;
            let w_down = w(base + 5);
            let masked = a.relu_masked
                && gemm.dgrad_relu_mask(
                    &mut a.dh,
                    &a.relu_mask.slice(rm),
                    &a.dres,
                    &w_down,
                    n,
                    ff,
                    d,
                )?;
            if !masked {
                gemm.dgrad(&mut a.dh, &a.dres, &w_down, n, ff, d, false)?;
            }
            let h = a.h.slice(rf);
            gemm.wgrad(
                &mut grads.slice_mut(specs[base + 5].range()),
                &a.dres,
                &h,
                n,
                ff,
                d,
                acc,
            )?;
            if !masked {
                launch::relu_backward(k, &mut a.dh, &h, nff)?;
            }
            gemm.linear_backward(
                &mut a.dxn,
                &mut grads.slice_mut(specs[base + 4].range()),
                &a.dh,
                &a.xn2.slice(r.clone()),
                &w(base + 4),
                n,
                d,
                ff,
                acc,
            )?;
            launch::rmsnorm_backward(
                k,
                &mut a.dres,
                &mut grads.slice_mut(specs[base + 3].range()),
                &mut a.norm_scratch,
                &a.dxn,
                &a.xmid.slice(r.clone()),
                &w(base + 3),
                &a.rstd2.slice(rn.clone()),
                n,
                d,
            )?;
            // attention: xmid = x + attn(rope(xn1 Wqkv^T)) Wout^T
            gemm.linear_backward(
                &mut a.datt,
                &mut grads.slice_mut(specs[base + 2].range()),
                &a.dres,
                &a.att.slice(r.clone()),
                &w(base + 2),
                n,
                d,
                d,
                acc,
            )?;
            launch::attention_backward(
                k,
                *attention,
                &mut a.dqkv,
                &mut a.delta,
                &a.datt,
                &a.att.slice(r.clone()),
                &a.lse.slice(l * nlse..(l + 1) * nlse),
                &a.qkv.slice(r3),
                &a.rope.cos,
                &a.rope.sin,
                shape,
            )?;
            gemm.linear_backward(
                &mut a.dxn,
                &mut grads.slice_mut(specs[base + 1].range()),
                &a.dqkv,
                &a.xn1.slice(r.clone()),
                &w(base + 1),
                n,
                d,
                3 * d,
                acc,
            )?;
            launch::rmsnorm_backward(
                k,
                &mut a.dres,
                &mut grads.slice_mut(specs[base].range()),
                &mut a.norm_scratch,
                &a.dxn,
                &a.x.slice(r),
                &w(base),
                &a.rstd1.slice(rn),
                n,
                d,
            )?;
            if let Some(sync) = sync.as_deref_mut() {
                sync.ready(&s, grads, specs[base].range().start)?;
            }
        }
        // embedding: dtable += the positions' rows of dres, by token
        let dtable = &mut grads.slice_mut(specs[0].range());
        match a.embed_grad.as_mut().expect("training activations") {
            EmbedGrad::OneHot(onehot) => {
                launch::embed_onehot(k, onehot, &a.inputs, n, vocab)?;
                gemm.wgrad(dtable, &*onehot, &a.dres, n, d, vocab, true)?;
            }
            EmbedGrad::Buckets(p) => launch::embed_backward(
                k,
                dtable,
                &a.dres,
                &p.order,
                &p.bucket_start,
                &p.bucket_token,
                p.num_buckets,
                d,
            )?,
        }

        drop(backward);
        if let Some(sync) = sync {
            sync.finish(&s, grads, &mut a.sums)?;
        }
        Ok(())
    }

    /// Enqueues the rest of a step on the gradients in `grads`: global norm and clip scale on
    /// the device, the metrics record (the loss sums in `sums`, over `rows` rows), then AdamW per
    /// tensor (decay on matrices).
    pub(super) fn enqueue_update(&mut self, opt: &OptimConfig, rows: usize) -> Result<()> {
        let CudaTrainer {
            specs,
            k,
            master,
            work,
            grads,
            m,
            v,
            acts,
            metrics,
            ..
        } = self;
        let a = acts.as_mut().expect("activations planned before a step");
        let _optimizer = nvtx::range("optimizer");
        launch::global_norm_squared(k, &mut a.gn_partial, &*grads, grads.len(), false)?;
        launch::global_norm_finish(k, &mut a.gn_out, &a.gn_partial, opt.clip)?;
        metrics.record(k, &a.sums, &a.gn_out, rows)?;
        for spec in specs.iter() {
            let r = spec.range();
            let wd = if spec.shape.len() == 2 {
                opt.weight_decay
            } else {
                0.0
            };
            launch::adamw_dev(
                k,
                &mut master.slice_mut(r.clone()),
                &mut work.slice_mut(r.clone()),
                &grads.slice(r.clone()),
                &mut m.slice_mut(r.clone()),
                &mut v.slice_mut(r.clone()),
                &a.hyper,
                &a.gn_out,
                spec.len(),
                opt.beta1,
                opt.beta2,
                opt.eps,
                wd,
            )?;
        }
        Ok(())
    }
}
