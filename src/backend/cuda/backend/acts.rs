//! The activations, backward scratch and host staging buffers of one (batch, seq) shape.

use crate::backend::cuda::gemm::relu_mask_bytes;
use crate::backend::cuda::launch::{self, EmbedBackwardPlan};
use crate::backend::cuda::loader::{GpuFloat, GpuKernels};
use crate::backend::cuda::rope::DevRope;
use crate::backend::cuda::staging::Staged;
use crate::model::ModelConfig;
use crate::numerics::RopeTables;
use anyhow::Result;
use cudarc::driver::CudaSlice;

/// How a training step's embedding backward runs, with the buffers it needs.
pub(super) enum EmbedGrad<T> {
    /// One product `dtable += onehotᵀ dres` over `[N, V]` one-hot rows of the inputs (built on
    /// the device), where the vocabulary is small enough (`EMBED_ONEHOT_MAX_VOCAB`).
    OneHot(CudaSlice<T>),
    /// The host's bucket plan (`EmbedBackwardPlan`) uploaded each step through pinned copies.
    Buckets(Box<BucketPlanBufs>),
}

/// The device buffers of an embedding-backward bucket plan and their pinned staging copies.
pub(super) struct BucketPlanBufs {
    pub(super) num_buckets: usize,
    pub(super) order: CudaSlice<i32>,
    pub(super) bucket_start: CudaSlice<i32>,
    pub(super) bucket_token: CudaSlice<i32>,
    pub(super) pin_order: Staged<i32>,
    pub(super) pin_bucket_start: Staged<i32>,
    pub(super) pin_bucket_token: Staged<i32>,
}

/// Activations, scratch and staging for one (batch, seq) shape.
pub(super) struct Acts<T: GpuFloat> {
    pub(super) batch: usize,
    pub(super) seq: usize,
    /// Passes of this shape a training step accumulates (1 for evaluation).
    pub(super) passes: usize,
    /// The embedding backward's buffers; `None` for a set that only evaluates.
    pub(super) embed_grad: Option<EmbedGrad<T>>,
    // the batch on the device and its pinned staging copies
    pub(super) inputs: CudaSlice<u32>,
    pub(super) targets: CudaSlice<u32>,
    /// lr, bias_corr1, bias_corr2 (read by `adamw_dev`).
    pub(super) hyper: CudaSlice<f32>,
    pub(super) pin_inputs: Staged<u32>,
    pub(super) pin_targets: Staged<u32>,
    pub(super) pin_hyper: Staged<f32>,
    pub(super) pin_sums: Staged<f64>,
    pub(super) rope: DevRope,
    // saved forward tensors, stacked [L, ...] as in the CPU model
    pub(super) x: CudaSlice<T>,    // [L+1, N, d]
    pub(super) xmid: CudaSlice<T>, // [L, N, d]
    pub(super) xn1: CudaSlice<T>,  // [L, N, d]
    pub(super) qkv: CudaSlice<T>,  // [L, N, 3d]
    pub(super) att: CudaSlice<T>,  // [L, N, d]
    pub(super) xn2: CudaSlice<T>,  // [L, N, d]
    pub(super) h: CudaSlice<T>,    // [L, N, ff]
    /// [L, relu_mask_stride]: which elements of h are positive, one bit each, in cuBLASLt's
    /// layout (written by the up projection's epilogue, read by the down projection's dgrad).
    pub(super) relu_mask: CudaSlice<u8>,
    /// Bytes per layer of `relu_mask`: relu_mask_bytes(N, ff) rounded up to 256 (every layer's
    /// mask as aligned as an allocation); 0 where cuBLASLt takes no mask for ff.
    pub(super) relu_mask_stride: usize,
    /// Whether the last forward wrote `relu_mask`, so that the backward may read it.
    pub(super) relu_masked: bool,
    pub(super) xf: CudaSlice<T>,        // [N, d]
    pub(super) logits: CudaSlice<T>,    // [N, V]; dlogits in place
    pub(super) rstd1: CudaSlice<f32>,   // [L, N]
    pub(super) rstd2: CudaSlice<f32>,   // [L, N]
    pub(super) rstdf: CudaSlice<f32>,   // [N]
    pub(super) lse: CudaSlice<f32>,     // [L, B, H, T]
    pub(super) ce_row: CudaSlice<f32>,  // [passes N]
    pub(super) lse_row: CudaSlice<f32>, // [passes N]
    // backward scratch
    pub(super) dres: CudaSlice<T>,           // [N, d]
    pub(super) dxn: CudaSlice<T>,            // [N, d]
    pub(super) datt: CudaSlice<T>,           // [N, d]
    pub(super) dqkv: CudaSlice<T>,           // [N, 3d]
    pub(super) dh: CudaSlice<T>,             // [N, ff]
    pub(super) delta: CudaSlice<f32>,        // [B, H, T]
    pub(super) norm_scratch: CudaSlice<f32>, // rmsnorm_backward_scratch_len(N, d)
    pub(super) gn_partial: CudaSlice<f64>,   // GLOBAL_NORM_BLOCKS
    pub(super) gn_out: CudaSlice<f32>,       // [norm, clip scale]
    pub(super) sums: CudaSlice<f64>,         // [sum ce, sum lse^2]
}

impl<T: GpuFloat> Acts<T> {
    /// The buffers of one shape; `train` adds the embedding backward's. The per-row losses
    /// hold `passes` passes of the shape, so that a step accumulated over several passes sums
    /// them in one fixed order at its end.
    pub(super) fn new(
        k: &GpuKernels,
        cfg: &ModelConfig,
        batch: usize,
        seq: usize,
        passes: usize,
        train: bool,
    ) -> Result<Self> {
        let s = k.stream();
        let ctx = k.context();
        let (n, d, l, ff, v) = (batch * seq, cfg.d_model, cfg.n_layers, cfg.d_ff, cfg.vocab);
        let nlse = batch * cfg.n_heads * seq;
        let t = |len: usize| s.alloc_zeros::<T>(len.max(1));
        let embed_grad = match (
            train,
            launch::embed_onehot_fits(v, std::mem::size_of::<T>()),
        ) {
            (false, _) => None,
            (true, true) => Some(EmbedGrad::OneHot(t(n * v)?)),
            (true, false) => {
                let num_buckets = EmbedBackwardPlan::max_buckets(n, v);
                Some(EmbedGrad::Buckets(Box::new(BucketPlanBufs {
                    num_buckets,
                    order: s.alloc_zeros::<i32>(n)?,
                    bucket_start: s.alloc_zeros::<i32>(num_buckets + 1)?,
                    bucket_token: s.alloc_zeros::<i32>(num_buckets)?,
                    pin_order: Staged::for_upload(ctx, n)?,
                    pin_bucket_start: Staged::for_upload(ctx, num_buckets + 1)?,
                    pin_bucket_token: Staged::for_upload(ctx, num_buckets)?,
                })))
            }
        };
        let f = |len: usize| s.alloc_zeros::<f32>(len.max(1));
        let rope = RopeTables::new(seq, cfg.rope_theta);
        let relu_mask_stride = relu_mask_bytes(n, ff).map_or(0, |b| b.next_multiple_of(256));
        Ok(Acts {
            batch,
            seq,
            passes,
            embed_grad,
            inputs: s.alloc_zeros::<u32>(n)?,
            targets: s.alloc_zeros::<u32>(n)?,
            hyper: f(3)?,
            pin_inputs: Staged::for_upload(ctx, n)?,
            pin_targets: Staged::for_upload(ctx, n)?,
            pin_hyper: Staged::for_upload(ctx, 3)?,
            pin_sums: Staged::for_download(ctx, 2)?,
            rope: DevRope::upload(s, &rope)?,
            x: t((l + 1) * n * d)?,
            xmid: t(l * n * d)?,
            xn1: t(l * n * d)?,
            qkv: t(l * n * 3 * d)?,
            att: t(l * n * d)?,
            xn2: t(l * n * d)?,
            h: t(l * n * ff)?,
            relu_mask: s.alloc_zeros::<u8>((l * relu_mask_stride).max(1))?,
            relu_mask_stride,
            relu_masked: false,
            xf: t(n * d)?,
            logits: t(n * v)?,
            rstd1: f(l * n)?,
            rstd2: f(l * n)?,
            rstdf: f(n)?,
            lse: f(l * nlse)?,
            ce_row: f(n * passes)?,
            lse_row: f(n * passes)?,
            dres: t(n * d)?,
            dxn: t(n * d)?,
            datt: t(n * d)?,
            dqkv: t(n * 3 * d)?,
            dh: t(n * ff)?,
            delta: f(nlse)?,
            norm_scratch: f(launch::rmsnorm_backward_scratch_len(n, d))?,
            gn_partial: s.alloc_zeros::<f64>(launch::GLOBAL_NORM_BLOCKS)?,
            gn_out: f(2)?,
            sums: s.alloc_zeros::<f64>(2)?,
        })
    }

    pub(super) fn fits(&self, batch: usize, seq: usize) -> bool {
        self.batch == batch && self.seq == seq
    }

    /// Fills every activation and scratch buffer with NaN (tests: a kernel that fails to write
    /// its output then shows up as NaN instead of passing on stale values).
    pub(super) fn poison(&mut self, k: &GpuKernels) -> Result<()> {
        let s = k.stream();
        let nan_t = T::from_f32(f32::NAN);
        for b in [
            &mut self.x,
            &mut self.xmid,
            &mut self.xn1,
            &mut self.qkv,
            &mut self.att,
            &mut self.xn2,
            &mut self.h,
            &mut self.xf,
            &mut self.logits,
            &mut self.dres,
            &mut self.dxn,
            &mut self.datt,
            &mut self.dqkv,
            &mut self.dh,
        ]
        .into_iter()
        .chain(match self.embed_grad.as_mut() {
            Some(EmbedGrad::OneHot(rows)) => Some(rows),
            _ => None,
        }) {
            let host = vec![nan_t; b.len()];
            s.memcpy_htod(&host, b)?;
        }
        for b in [
            &mut self.rstd1,
            &mut self.rstd2,
            &mut self.rstdf,
            &mut self.lse,
            &mut self.ce_row,
            &mut self.lse_row,
            &mut self.delta,
            &mut self.norm_scratch,
            &mut self.gn_out,
        ] {
            let host = vec![f32::NAN; b.len()];
            s.memcpy_htod(&host, b)?;
        }
        for b in [&mut self.gn_partial, &mut self.sums] {
            let host = vec![f64::NAN; b.len()];
            s.memcpy_htod(&host, b)?;
        }
        Ok(())
    }
}
