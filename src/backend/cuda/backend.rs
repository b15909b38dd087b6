//! The CUDA training backend: the CPU model's forward and backward (`backend/cpu/model.rs`), op
//! for op in the same order, on the GPU kernels of `kernels/` and cuBLASLt GEMMs ([`Gemm`]).
//!
//! **Status: written on machines without a GPU; it has never run on one.** Its parity tests in
//! `tests/gpu_parity.rs` (one step vs the CPU backend, graph replay vs eager, a GPU-trained
//! checkpoint scored on the CPU) pass on the CUDA emulator (`emu/`); those and the 200-step loss
//! curve are still to run on a GPU.
//!
//! Memory, planned once per (config, batch, seq), nothing allocated inside a step:
//! - one fp32 buffer each for the master weights, the gradients and the AdamW moments m and v,
//!   all in the [`ParamArena`] layout (so checkpoints are the CPU backend's format);
//! - one buffer of `T` for the working weights the forward pass reads (bf16 for training; the
//!   f32 instantiation exists for the parity tests), rewritten by AdamW each step;
//! - the activations ([`Acts`]): the CPU model's saved tensors stacked per layer, backward
//!   scratch, attention/norm statistics, the batch on the device, and pinned host staging buffers.
//!
//! A step is: the host copies the batch, the embedding-backward bucketing and the per-step scalars
//! (lr, bias corrections) into pinned buffers and enqueues their uploads; then the step itself
//! (zero grads, forward, fused classifier, backward, global norm and clip scale, AdamW on every
//! tensor) is enqueued, eagerly for the first step of a shape (which also plans every GEMM), and
//! from the second on as one CUDA graph captured once and replayed. Because every per-step value
//! lives in device memory at a fixed address, the replay stays valid. The loss sums and the
//! gradient norm are copied back every `readback_every` steps (default every step, the trainer
//! logs each one); steps in between return the last values read back.
//!
//! Residual stream, activations and their gradients are `T` (bf16 when training, as in llm.c);
//! every reduction and every GEMM accumulates in fp32, weight gradients and optimizer state are
//! fp32.

use super::gemm::{DevicePtrDyn, Gemm};
use super::launch::{self, AttnKernels, EmbedBackwardPlan};
use super::loader::{gpu_unavailable_reason, Bf16, GpuFloat, GpuKernels};
use crate::backend::cpu::attention::AttnShape;
use crate::backend::{Backend, LossSums, OptimConfig, StepStats};
use crate::model::Batch;
use crate::model::{ModelConfig, ParamArena, TensorSpec};
use crate::numerics::RopeTables;
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{sys, CudaGraph, CudaSlice, PinnedHostSlice};

/// The training backend: bf16 activations and working weights, fp32 master weights.
pub type CudaBackend = CudaTrainer<Bf16>;

/// Tensors per layer in the parameter layout (`attn_norm, qkv, out, mlp_norm, up, down`).
const PER_LAYER: usize = 6;

/// Activations, scratch and staging for one (batch, seq) shape.
struct Acts<T: GpuFloat> {
    batch: usize,
    seq: usize,
    num_buckets: usize,
    // the batch on the device and its pinned staging copies
    inputs: CudaSlice<u32>,
    targets: CudaSlice<u32>,
    order: CudaSlice<i32>,
    bucket_start: CudaSlice<i32>,
    bucket_token: CudaSlice<i32>,
    /// lr, bias_corr1, bias_corr2 (read by `adamw_dev`).
    hyper: CudaSlice<f32>,
    pin_inputs: PinnedHostSlice<u32>,
    pin_targets: PinnedHostSlice<u32>,
    pin_order: PinnedHostSlice<i32>,
    pin_bucket_start: PinnedHostSlice<i32>,
    pin_bucket_token: PinnedHostSlice<i32>,
    pin_hyper: PinnedHostSlice<f32>,
    pin_sums: PinnedHostSlice<f64>,
    pin_norm: PinnedHostSlice<f32>,
    rope_cos: CudaSlice<f32>,
    rope_sin: CudaSlice<f32>,
    // saved forward tensors, stacked [L, ...] as in the CPU model
    x: CudaSlice<T>,         // [L+1, N, d]
    xmid: CudaSlice<T>,      // [L, N, d]
    xn1: CudaSlice<T>,       // [L, N, d]
    qkv: CudaSlice<T>,       // [L, N, 3d]
    att: CudaSlice<T>,       // [L, N, d]
    xn2: CudaSlice<T>,       // [L, N, d]
    h: CudaSlice<T>,         // [L, N, ff]
    xf: CudaSlice<T>,        // [N, d]
    logits: CudaSlice<T>,    // [N, V]; dlogits in place
    rstd1: CudaSlice<f32>,   // [L, N]
    rstd2: CudaSlice<f32>,   // [L, N]
    rstdf: CudaSlice<f32>,   // [N]
    lse: CudaSlice<f32>,     // [L, B, H, T]
    ce_row: CudaSlice<f32>,  // [N]
    lse_row: CudaSlice<f32>, // [N]
    // backward scratch
    dres: CudaSlice<T>,           // [N, d]
    dxn: CudaSlice<T>,            // [N, d]
    datt: CudaSlice<T>,           // [N, d]
    dqkv: CudaSlice<T>,           // [N, 3d]
    dh: CudaSlice<T>,             // [N, ff]
    delta: CudaSlice<f32>,        // [B, H, T]
    norm_scratch: CudaSlice<f32>, // rmsnorm_backward_scratch_len(N, d)
    gn_partial: CudaSlice<f64>,   // GLOBAL_NORM_BLOCKS
    gn_out: CudaSlice<f32>,       // [norm, clip scale]
    sums: CudaSlice<f64>,         // [sum ce, sum lse^2]
}

impl<T: GpuFloat> Acts<T> {
    fn new(k: &GpuKernels, cfg: &ModelConfig, batch: usize, seq: usize) -> Result<Self> {
        let s = k.stream();
        let ctx = k.context();
        let (n, d, l, ff, v) = (batch * seq, cfg.d_model, cfg.n_layers, cfg.d_ff, cfg.vocab);
        let nlse = batch * cfg.n_heads * seq;
        let num_buckets = EmbedBackwardPlan::max_buckets(n, v);
        let t = |len: usize| s.alloc_zeros::<T>(len.max(1));
        let f = |len: usize| s.alloc_zeros::<f32>(len.max(1));
        let rope = RopeTables::new(seq, cfg.rope_theta);
        // SAFETY (alloc_pinned): the staging buffers are always fully written before they are read.
        let acts = unsafe {
            Acts {
                batch,
                seq,
                num_buckets,
                inputs: s.alloc_zeros::<u32>(n)?,
                targets: s.alloc_zeros::<u32>(n)?,
                order: s.alloc_zeros::<i32>(n)?,
                bucket_start: s.alloc_zeros::<i32>(num_buckets + 1)?,
                bucket_token: s.alloc_zeros::<i32>(num_buckets)?,
                hyper: f(3)?,
                pin_inputs: ctx.alloc_pinned::<u32>(n)?,
                pin_targets: ctx.alloc_pinned::<u32>(n)?,
                pin_order: ctx.alloc_pinned::<i32>(n)?,
                pin_bucket_start: ctx.alloc_pinned::<i32>(num_buckets + 1)?,
                pin_bucket_token: ctx.alloc_pinned::<i32>(num_buckets)?,
                pin_hyper: ctx.alloc_pinned::<f32>(3)?,
                pin_sums: ctx.alloc_pinned::<f64>(2)?,
                pin_norm: ctx.alloc_pinned::<f32>(2)?,
                rope_cos: s.clone_htod(&rope.cos)?,
                rope_sin: s.clone_htod(&rope.sin)?,
                x: t((l + 1) * n * d)?,
                xmid: t(l * n * d)?,
                xn1: t(l * n * d)?,
                qkv: t(l * n * 3 * d)?,
                att: t(l * n * d)?,
                xn2: t(l * n * d)?,
                h: t(l * n * ff)?,
                xf: t(n * d)?,
                logits: t(n * v)?,
                rstd1: f(l * n)?,
                rstd2: f(l * n)?,
                rstdf: f(n)?,
                lse: f(l * nlse)?,
                ce_row: f(n)?,
                lse_row: f(n)?,
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
            }
        };
        Ok(acts)
    }

    fn fits(&self, batch: usize, seq: usize) -> bool {
        self.batch == batch && self.seq == seq
    }

    /// Fills every activation and scratch buffer with NaN (tests: a kernel that fails to write
    /// its output then shows up as NaN instead of passing on stale values).
    fn poison(&mut self, k: &GpuKernels) -> Result<()> {
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
        ] {
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

/// What a captured graph was captured for; a change means a new capture.
#[derive(Clone, Copy, PartialEq, Debug)]
struct GraphKey {
    batch: usize,
    seq: usize,
    opt: [u32; 5],
}

/// One model on one GPU, generic over the activation and working-weight type `T` (see
/// [`CudaBackend`] for the training instantiation).
pub struct CudaTrainer<T: GpuFloat> {
    cfg: ModelConfig,
    specs: Vec<TensorSpec>,
    k: GpuKernels,
    gemm: Gemm,
    master: CudaSlice<f32>,
    work: CudaSlice<T>,
    grads: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    acts: Option<Acts<T>>,
    eval_acts: Option<Acts<T>>,
    graph: Option<(CudaGraph, GraphKey)>,
    use_graph: bool,
    /// Which attention kernels the step runs (`TERSE_CUDA_ATTENTION`, read once here).
    attention: AttnKernels,
    graph_note: Option<String>,
    /// Shape of the last eager step (the warm-up that planned every GEMM for that shape).
    warmed: Option<GraphKey>,
    readback_every: u64,
    steps_since_readback: u64,
    last: StepStats,
}

impl<T: GpuFloat> CudaTrainer<T> {
    /// Uploads `params` (and the AdamW moments on resume) to GPU 0.
    ///
    /// Errors with the reason when no GPU is usable, the kernels are not embedded, or libcublasLt
    /// is missing; never panics for want of CUDA.
    pub fn new(
        cfg: &ModelConfig,
        params: &ParamArena,
        moments: Option<(Vec<f32>, Vec<f32>)>,
    ) -> Result<Self> {
        if let Some(reason) = gpu_unavailable_reason() {
            bail!("the CUDA backend cannot run here: {reason}");
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::build(cfg, params, moments)
        })) {
            Ok(r) => r,
            Err(p) => Err(anyhow!(
                "creating the CUDA backend panicked: {}",
                super::panic_message(p.as_ref())
            )),
        }
    }

    fn build(
        cfg: &ModelConfig,
        params: &ParamArena,
        moments: Option<(Vec<f32>, Vec<f32>)>,
    ) -> Result<Self> {
        let total = params.len();
        ensure!(
            total == cfg.total_params(),
            "weights hold {total} values, config expects {}",
            cfg.total_params()
        );
        ensure!(
            cfg.d_model % launch::HEAD_DIM == 0 && cfg.n_heads * launch::HEAD_DIM == cfg.d_model,
            "the CUDA kernels need head width {} (d_model {} with {} heads)",
            launch::HEAD_DIM,
            cfg.d_model,
            cfg.n_heads
        );
        let k = GpuKernels::new(0).context("loading the CUDA kernels")?;
        let gemm = Gemm::new(k.stream().clone())?;
        let s = k.stream().clone();
        let master = s.clone_htod(&params.data)?;
        let host_work: Vec<T> = params.data.iter().map(|&x| T::from_f32(x)).collect();
        let work = s.clone_htod(&host_work)?;
        let (m, v) = match moments {
            Some((m, v)) => {
                ensure!(
                    m.len() == total && v.len() == total,
                    "optimizer state does not match the weights"
                );
                (s.clone_htod(&m)?, s.clone_htod(&v)?)
            }
            None => (s.alloc_zeros::<f32>(total)?, s.alloc_zeros::<f32>(total)?),
        };
        let grads = s.alloc_zeros::<f32>(total)?;
        let readback_every = std::env::var("TERSE_CUDA_READBACK_EVERY")
            .ok()
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(1)
            .max(1);
        let use_graph = std::env::var("TERSE_CUDA_GRAPH").map_or(true, |x| x != "0");
        let choice = std::env::var("TERSE_CUDA_ATTENTION").ok();
        let attention = AttnKernels::for_storage::<T>(choice.as_deref())?;
        s.synchronize()?;
        Ok(CudaTrainer {
            cfg: cfg.clone(),
            specs: params.specs.clone(),
            k,
            gemm,
            master,
            work,
            grads,
            m,
            v,
            acts: None,
            eval_acts: None,
            graph: None,
            use_graph,
            attention,
            graph_note: None,
            warmed: None,
            readback_every,
            steps_since_readback: 0,
            last: StepStats {
                ce: f32::NAN,
                z: f32::NAN,
                grad_norm: f32::NAN,
            },
        })
    }

    /// Copy the loss and gradient norm back every `n` steps (1 = every step, the default; also
    /// `TERSE_CUDA_READBACK_EVERY`). Steps in between return the last values read back.
    pub fn set_readback_every(&mut self, n: u64) {
        self.readback_every = n.max(1);
    }

    /// Turns CUDA-graph replay on or off (default on; `TERSE_CUDA_GRAPH=0` turns it off).
    pub fn set_use_graph(&mut self, on: bool) {
        self.use_graph = on;
        if !on {
            self.graph = None;
        }
    }

    /// Whether the last training step was a graph replay.
    pub fn graph_active(&self) -> bool {
        self.graph.is_some()
    }

    /// Why graph capture was abandoned (the backend then runs eagerly), if it was.
    pub fn graph_note(&self) -> Option<&str> {
        self.graph_note.as_deref()
    }

    pub fn kernels(&self) -> &GpuKernels {
        &self.k
    }

    /// Fills the activations for the (batch, seq) shape with NaN, allocating them first if needed
    /// (parity tests: every output must be written by its kernel).
    pub fn poison_activations(&mut self, batch: usize, seq: usize) -> Result<()> {
        self.ensure_acts(batch, seq)?;
        let a = self.acts.as_mut().expect("just planned");
        a.poison(&self.k)?;
        let nan = vec![f32::NAN; self.grads.len()];
        self.k.stream().memcpy_htod(&nan, &mut self.grads)?;
        self.k.synchronize()
    }

    /// The gradients of the last training step (fp32, the weights' layout): read after a step
    /// for parity tests. Note that AdamW has already applied them.
    pub fn last_grads(&self) -> Result<Vec<f32>> {
        Ok(self.k.stream().clone_dtoh(&self.grads)?)
    }

    fn ensure_acts(&mut self, batch: usize, seq: usize) -> Result<()> {
        if !self.acts.as_ref().is_some_and(|a| a.fits(batch, seq)) {
            self.graph = None;
            self.warmed = None;
            self.acts = None; // free the old shape before allocating the new one
            self.acts = Some(Acts::new(&self.k, &self.cfg, batch, seq)?);
        }
        Ok(())
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        batch.check(self.cfg.vocab)
    }

    /// Forward pass of the current working weights over the uploaded batch in `a`, through the
    /// logits (the CPU model's order).
    #[allow(clippy::too_many_arguments)]
    fn forward(
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
        launch::embed_forward(k, &mut a.x.slice_mut(..nd), &w(0), &a.inputs, n, d)?;
        for l in 0..cfg.n_layers {
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
            launch::rope(
                k,
                &mut a.qkv.slice_mut(r3.clone()),
                &a.rope_cos,
                &a.rope_sin,
                n,
                t,
                d,
                false,
            )?;
            launch::attention_forward(
                k,
                attention,
                &mut a.att.slice_mut(r.clone()),
                &mut a.lse.slice_mut(l * nlse..(l + 1) * nlse),
                &a.qkv.slice(r3),
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
            let rf = l * nff..(l + 1) * nff;
            gemm.forward(
                &mut a.h.slice_mut(rf.clone()),
                &a.xn2.slice(r.clone()),
                &w(base + 4),
                None,
                n,
                d,
                ff,
            )?;
            launch::relu_forward_inplace(k, &mut a.h.slice_mut(rf.clone()), nff)?;
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
    /// zero grads, forward, classifier, backward, global norm, AdamW. Reads the batch and the
    /// per-step scalars from their device buffers.
    fn enqueue_step(&mut self, opt: &OptimConfig) -> Result<()> {
        let CudaTrainer {
            cfg,
            specs,
            k,
            gemm,
            master,
            work,
            grads,
            m,
            v,
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

        s.memset_zeros(grads)?;
        s.memset_zeros(&mut a.dres)?;
        Self::forward(k, gemm, *attention, cfg, specs, work, a)?;

        // loss, dlogits in place
        launch::classifier_forward_backward(
            k,
            &mut a.logits,
            &mut a.ce_row,
            &mut a.lse_row,
            &a.targets,
            n,
            vocab,
            cfg.z_loss,
            1.0 / n as f32,
        )?;
        launch::loss_sums(k, &mut a.sums, &a.ce_row, &a.lse_row, n)?;

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
        for l in (0..cfg.n_layers).rev() {
            let base = 1 + PER_LAYER * l;
            let r = l * nd..(l + 1) * nd;
            let r3 = l * nd3..(l + 1) * nd3;
            let rf = l * nff..(l + 1) * nff;
            let rn = l * n..(l + 1) * n;
            // MLP: x_next = xmid + relu(xn2 Wup^T) Wdown^T
            gemm.linear_backward(
                &mut a.dh,
                &mut grads.slice_mut(specs[base + 5].range()),
                &a.dres,
                &a.h.slice(rf.clone()),
                &w(base + 5),
                n,
                ff,
                d,
            )?;
            launch::relu_backward(k, &mut a.dh, &a.h.slice(rf), nff)?;
            gemm.linear_backward(
                &mut a.dxn,
                &mut grads.slice_mut(specs[base + 4].range()),
                &a.dh,
                &a.xn2.slice(r.clone()),
                &w(base + 4),
                n,
                d,
                ff,
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
                shape,
            )?;
            launch::rope(k, &mut a.dqkv, &a.rope_cos, &a.rope_sin, n, t, d, true)?;
            gemm.linear_backward(
                &mut a.dxn,
                &mut grads.slice_mut(specs[base + 1].range()),
                &a.dqkv,
                &a.xn1.slice(r.clone()),
                &w(base + 1),
                n,
                d,
                3 * d,
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
        }
        launch::embed_backward(
            k,
            &mut grads.slice_mut(specs[0].range()),
            &a.dres,
            &a.order,
            &a.bucket_start,
            &a.bucket_token,
            a.num_buckets,
            d,
        )?;

        // global norm and clip scale on the device, then AdamW per tensor (decay on matrices)
        launch::global_norm_squared(k, &mut a.gn_partial, &*grads, grads.len(), false)?;
        launch::global_norm_finish(k, &mut a.gn_out, &a.gn_partial, opt.clip)?;
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

    /// Copies the batch (and, when training, the embedding-backward buckets and the per-step
    /// scalars) through the pinned staging buffers into their fixed device buffers.
    fn upload(&mut self, batch: &Batch, hyper: Option<[f32; 3]>) -> Result<()> {
        let vocab = self.cfg.vocab;
        let a = self.acts_for_mut(batch, hyper.is_some())?;
        let s = a.1.stream().clone();
        let a = a.0;
        a.pin_inputs.as_mut_slice()?.copy_from_slice(&batch.inputs);
        s.memcpy_htod(&a.pin_inputs, &mut a.inputs)?;
        a.pin_targets
            .as_mut_slice()?
            .copy_from_slice(&batch.targets);
        s.memcpy_htod(&a.pin_targets, &mut a.targets)?;
        if let Some(h) = hyper {
            let plan = EmbedBackwardPlan::new(&batch.inputs, vocab, a.num_buckets)?;
            a.pin_order.as_mut_slice()?.copy_from_slice(&plan.order);
            s.memcpy_htod(&a.pin_order, &mut a.order)?;
            a.pin_bucket_start
                .as_mut_slice()?
                .copy_from_slice(&plan.bucket_start);
            s.memcpy_htod(&a.pin_bucket_start, &mut a.bucket_start)?;
            a.pin_bucket_token
                .as_mut_slice()?
                .copy_from_slice(&plan.bucket_token);
            s.memcpy_htod(&a.pin_bucket_token, &mut a.bucket_token)?;
            a.pin_hyper.as_mut_slice()?.copy_from_slice(&h);
            s.memcpy_htod(&a.pin_hyper, &mut a.hyper)?;
        }
        Ok(())
    }

    /// The activations for `batch`'s shape: the training set (planned here when `train`), or for
    /// evaluation the training set when the shape matches, else a separate evaluation set.
    fn acts_for_mut(&mut self, batch: &Batch, train: bool) -> Result<(&mut Acts<T>, &GpuKernels)> {
        let (b, t) = (batch.batch, batch.seq);
        if train {
            self.ensure_acts(b, t)?;
        }
        if self.acts.as_ref().is_some_and(|a| a.fits(b, t)) {
            return Ok((self.acts.as_mut().expect("checked"), &self.k));
        }
        if !self.eval_acts.as_ref().is_some_and(|a| a.fits(b, t)) {
            self.eval_acts = None;
            self.eval_acts = Some(Acts::new(&self.k, &self.cfg, b, t)?);
        }
        Ok((self.eval_acts.as_mut().expect("just set"), &self.k))
    }

    fn read_stats(&mut self, step: u64) -> Result<StepStats> {
        let s = self.k.stream().clone();
        let a = self.acts.as_mut().expect("planned");
        s.memcpy_dtoh(&a.sums, &mut a.pin_sums)?;
        s.memcpy_dtoh(&a.gn_out, &mut a.pin_norm)?;
        let sums = a.pin_sums.as_slice()?.to_vec();
        let norm = a.pin_norm.as_slice()?[0];
        let n = (a.batch * a.seq) as f64;
        let st = StepStats {
            ce: (sums[0] / n) as f32,
            z: (sums[1] / n) as f32,
            grad_norm: norm,
        };
        ensure!(
            norm.is_finite(),
            "gradient norm is not finite at step {step} (loss {}); the weights were already \
             updated on the device, so this run cannot continue",
            st.ce
        );
        Ok(st)
    }

    fn graph_key(&self, opt: &OptimConfig) -> GraphKey {
        let a = self.acts.as_ref().expect("planned");
        GraphKey {
            batch: a.batch,
            seq: a.seq,
            opt: [
                opt.beta1.to_bits(),
                opt.beta2.to_bits(),
                opt.eps.to_bits(),
                opt.weight_decay.to_bits(),
                opt.clip.to_bits(),
            ],
        }
    }

    /// Runs the step: replays the graph for this key, captures one (after an eager warm-up of
    /// the same key), or runs eagerly.
    fn run_step(&mut self, opt: &OptimConfig) -> Result<()> {
        let key = self.graph_key(opt);
        if let Some((g, gk)) = &self.graph {
            if *gk == key {
                g.launch()?;
                return Ok(());
            }
            self.graph = None;
        }
        if !self.use_graph || self.warmed != Some(key) {
            self.enqueue_step(opt)?;
            self.warmed = Some(key);
            return Ok(());
        }
        let s = self.k.stream().clone();
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let enq = self.enqueue_step(opt);
        let captured = s.end_capture(sys::CUgraphInstantiate_flags(0));
        match (enq, captured) {
            (Ok(()), Ok(Some(g))) => {
                g.upload()?;
                g.launch()?;
                self.graph = Some((g, key));
            }
            (enq, cap) => {
                // Capture failed: note why, and run this step (and later ones) eagerly.
                let why = match (enq, cap) {
                    (Err(e), _) => format!("enqueue during capture failed: {e:#}"),
                    (_, Err(e)) => format!("end_capture failed: {e}"),
                    _ => "end_capture returned no graph".to_string(),
                };
                self.graph_note = Some(why);
                self.use_graph = false;
                self.k.context().check_err().ok();
                self.enqueue_step(opt)?;
            }
        }
        Ok(())
    }
}

impl<T: GpuFloat> Backend for CudaTrainer<T> {
    fn name(&self) -> String {
        let mode = if self.graph.is_some() {
            "graph replay".to_string()
        } else if let Some(n) = &self.graph_note {
            format!("eager; graph capture failed: {n}")
        } else if self.use_graph {
            "eager until captured".to_string()
        } else {
            "eager".to_string()
        };
        let attention = match self.attention {
            AttnKernels::TensorCore => "tensor-core attention",
            AttnKernels::CudaCore => "CUDA-core attention",
        };
        format!(
            "cuda: {} ({:?} kernels, {} activations, {attention}, {mode})",
            self.k.device_name(),
            self.k.source(),
            T::SUFFIX
        )
    }

    fn device(&self) -> crate::backend::Device {
        crate::backend::Device::Cuda
    }

    fn train_step(
        &mut self,
        batch: &Batch,
        lr: f32,
        step: u64,
        opt: &OptimConfig,
    ) -> Result<StepStats> {
        self.check_batch(batch)?;
        ensure!(step >= 1, "optimizer steps count from 1");
        // Bias corrections exactly as the CPU backend computes them (f32 powi).
        let hyper = [
            lr,
            1.0 - opt.beta1.powi(step as i32),
            1.0 - opt.beta2.powi(step as i32),
        ];
        self.upload(batch, Some(hyper))?;
        self.run_step(opt)?;
        self.steps_since_readback += 1;
        if self.steps_since_readback >= self.readback_every || self.last.ce.is_nan() {
            self.steps_since_readback = 0;
            self.last = self.read_stats(step)?;
        }
        Ok(self.last)
    }

    fn eval_batch(&mut self, batch: &Batch) -> Result<LossSums> {
        self.check_batch(batch)?;
        self.upload(batch, None)?;
        let CudaTrainer {
            cfg,
            specs,
            k,
            gemm,
            work,
            acts,
            eval_acts,
            attention,
            ..
        } = self;
        let a = match acts {
            Some(a) if a.fits(batch.batch, batch.seq) => a,
            _ => eval_acts.as_mut().expect("planned by upload"),
        };
        let n = batch.batch * batch.seq;
        Self::forward(k, gemm, *attention, cfg, specs, work, a)?;
        launch::classifier_forward_backward(
            k,
            &mut a.logits,
            &mut a.ce_row,
            &mut a.lse_row,
            &a.targets,
            n,
            cfg.vocab,
            cfg.z_loss,
            0.0,
        )?;
        launch::loss_sums(k, &mut a.sums, &a.ce_row, &a.lse_row, n)?;
        let s = k.stream().clone();
        s.memcpy_dtoh(&a.sums, &mut a.pin_sums)?;
        let sums = a.pin_sums.as_slice()?;
        Ok(LossSums {
            ce: sums[0],
            z: sums[1],
            rows: n,
        })
    }

    fn params(&self) -> Result<ParamArena> {
        Ok(ParamArena {
            specs: self.specs.clone(),
            data: self.k.stream().clone_dtoh(&self.master)?,
        })
    }

    fn optimizer_state(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = self.k.stream();
        Ok((s.clone_dtoh(&self.m)?, s.clone_dtoh(&self.v)?))
    }
}
