//! The CUDA training backend: the CPU model's forward and backward (`backend/cpu/model.rs`), op
//! for op in the same order, on the GPU kernels of `kernels/` and cuBLASLt GEMMs ([`Gemm`]).
//!
//! Status: written on machines without a GPU; its parity tests in `tests/gpu_parity.rs` (one
//! step vs the CPU backend, graph replay vs eager, a GPU-trained checkpoint scored on the CPU,
//! the 200-step m1-3m loss curve) pass on the CUDA emulator (`emu/`, all but the loss curve) and
//! passed on an H200 on 2026-12-04 (BENCHMARKS.md has its speed).
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
//! lives in device memory at a fixed address, the replay stays valid. The step ends by appending
//! its loss and gradient norm to a ring in device memory (`metrics.rs`), copied back every 16
//! steps (`TERSE_CUDA_READBACK_EVERY`) without the host waiting for it: `submit_step` returns as
//! soon as the step is enqueued, and the host prepares the next batch while the GPU runs.
//!
//! Residual stream, activations and their gradients are `T` (bf16 when training, as in llm.c);
//! every reduction and every GEMM accumulates in fp32, weight gradients and optimizer state are
//! fp32.
//!
//! Files: this one holds the trainer (creation, upload, graph capture and replay, the `Backend`
//! methods); `acts.rs` the buffers of one (batch, seq) shape; `step.rs` the op sequence of the
//! forward pass and of a training step; `allreduce.rs` a shared step's bucketed NCCL sum;
//! `metrics.rs` the ring of step metrics.

mod acts;
mod allreduce;
mod metrics;
mod step;

use super::gemm::Gemm;
use super::graph::StepGraph;
use super::launch::{self, AttnKernels, EmbedBackwardPlan};
use super::loader::{gpu_unavailable_reason, Bf16, GpuFloat, GpuKernels};
use super::nccl::NcclComm;
use super::nvtx;
use crate::backend::reduce::{rank_share, sum_across_ranks};
use crate::backend::{Backend, GradReduction, LossSums, OptimConfig, StepReport};
use crate::dist::{Group, OnEveryRank};
use crate::model::Batch;
use crate::model::{ModelConfig, ParamArena, TensorSpec};
use acts::{Acts, EmbedGrad};
use allreduce::GradAllReduce;
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::CudaSlice;
use metrics::MetricsRing;
pub(crate) use metrics::DEFAULT_READBACK_EVERY;
use std::rc::Rc;
use step::Pass;

/// The training backend: bf16 activations and working weights, fp32 master weights.
pub type CudaBackend = CudaTrainer<Bf16>;

/// Tensors per layer in the parameter layout (`attn_norm, qkv, out, mlp_norm, up, down`).
const PER_LAYER: usize = 6;

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
    graph: StepGraph<GraphKey>,
    /// Which attention kernels the step runs (`TERSE_CUDA_ATTENTION`, read once here).
    attention: AttnKernels,
    metrics: MetricsRing,
    /// The ranks sharing each batch ([`Backend::share_steps`]).
    group: Option<Rc<dyn Group>>,
    /// Their gradient sum on the GPUs, where every rank has NCCL; through the host otherwise.
    allreduce: Option<GradAllReduce>,
    /// Passes each step's share is computed in (gradient accumulation).
    passes: usize,
}

impl<T: GpuFloat> CudaTrainer<T> {
    /// Uploads `params` (and the AdamW moments on resume) to GPU 0, or under an MPI launcher to
    /// GPU `local rank mod GPUs`.
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
            cfg.d_model.is_multiple_of(launch::HEAD_DIM)
                && cfg.n_heads * launch::HEAD_DIM == cfg.d_model,
            "the CUDA kernels need head width {} (d_model {} with {} heads)",
            launch::HEAD_DIM,
            cfg.d_model,
            cfg.n_heads
        );
        // Ranks of one node take its GPUs in turn (rank 0 alone, or a single process, GPU 0).
        let gpus = cudarc::driver::CudaContext::device_count()?.max(1) as usize;
        let ordinal = crate::dist::local_rank().map_or(0, |r| r % gpus);
        let k = GpuKernels::new(ordinal).context("loading the CUDA kernels")?;
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
            .and_then(|x| x.parse::<usize>().ok())
            .unwrap_or(DEFAULT_READBACK_EVERY);
        let metrics = MetricsRing::new(&k, readback_every)?;
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
            graph: StepGraph::new(use_graph),
            attention,
            metrics,
            group: None,
            allreduce: None,
            passes: 1,
        })
    }

    /// Copies the step metrics back every `n` steps (at least 1; default 16, or
    /// `TERSE_CUDA_READBACK_EVERY`). A new ring: metrics of steps not yet taken are dropped, and
    /// the step graph is captured again.
    pub fn set_readback_every(&mut self, n: usize) -> Result<()> {
        self.graph.clear();
        self.metrics = MetricsRing::new(&self.k, n)?;
        Ok(())
    }

    /// Turns CUDA-graph replay on or off (default on; `TERSE_CUDA_GRAPH=0` turns it off).
    pub fn set_use_graph(&mut self, on: bool) {
        self.graph.set_enabled(on);
    }

    /// Whether the last training step was a graph replay.
    pub fn graph_active(&self) -> bool {
        self.graph.active()
    }

    /// Why graph capture was abandoned (the backend then runs eagerly), if it was.
    pub fn graph_note(&self) -> Option<&str> {
        self.graph.note()
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
        let passes = self.passes;
        if !self
            .acts
            .as_ref()
            .is_some_and(|a| a.fits(batch, seq) && a.passes == passes)
        {
            self.graph.clear();
            self.acts = None; // free the old shape before allocating the new one
            self.acts = Some(Acts::new(&self.k, &self.cfg, batch, seq, passes, true)?);
        }
        Ok(())
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        batch.check(self.cfg.vocab)
    }

    /// Copies the batch (and, when training, the per-step scalars and, where the embedding
    /// backward is not a one-hot product, its buckets) through the pinned staging buffers into
    /// their fixed device buffers.
    fn upload(&mut self, batch: &Batch, hyper: Option<[f32; 3]>) -> Result<()> {
        let vocab = self.cfg.vocab;
        let a = self.acts_for_mut(batch, hyper.is_some())?;
        let s = a.1.stream().clone();
        let a = a.0;
        a.pin_inputs.send(&s, &batch.inputs, &mut a.inputs)?;
        a.pin_targets.send(&s, &batch.targets, &mut a.targets)?;
        if let Some(h) = hyper {
            if let Some(EmbedGrad::Buckets(p)) = a.embed_grad.as_mut() {
                let plan = EmbedBackwardPlan::new(&batch.inputs, vocab, p.num_buckets)?;
                p.pin_order.send(&s, &plan.order, &mut p.order)?;
                p.pin_bucket_start
                    .send(&s, &plan.bucket_start, &mut p.bucket_start)?;
                p.pin_bucket_token
                    .send(&s, &plan.bucket_token, &mut p.bucket_token)?;
            }
            a.pin_hyper.send(&s, &h, &mut a.hyper)?;
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
            self.eval_acts = Some(Acts::new(&self.k, &self.cfg, b, t, 1, false)?);
        }
        Ok((self.eval_acts.as_mut().expect("just set"), &self.k))
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
        let (s, ctx) = (self.k.stream().clone(), self.k.context().clone());
        let mut graph = std::mem::replace(&mut self.graph, StepGraph::new(false));
        let _range = nvtx::range("step");
        let ran = graph.run(&s, &ctx, key, || self.enqueue_step(opt));
        self.graph = graph;
        ran
    }
}

impl<T: GpuFloat> CudaTrainer<T> {
    /// One step in pieces, eagerly: this rank's share of the batch (all of it without a group),
    /// in `passes` passes whose gradients accumulate (each scaled to the whole batch's mean),
    /// then, shared by a group, the sum over the ranks, and the update every rank runs alike.
    /// The sum is NCCL's, bucket by bucket during the last pass's backward (`allreduce.rs`), or
    /// without NCCL the host's: the gradients go to the host, are summed by the halving tree
    /// (each rank adds one slice, and every rank gets the same sums: `backend::reduce`) and come
    /// back.
    fn split_step(&mut self, batch: &Batch, hyper: [f32; 3], opt: &OptimConfig) -> Result<()> {
        let group = self.group.clone();
        let share = rank_share(batch.batch, group.as_deref())?;
        let passes = self.passes;
        if !share.len().is_multiple_of(passes) {
            let e = format!(
                "--accum {passes} cannot split a share of {} sequences into equal passes on the GPU: make --batch a multiple of the rank count",
                share.len()
            );
            return Err(match group {
                Some(_) => OnEveryRank(e).into(),
                None => anyhow!(e),
            });
        }
        let (t, per_pass) = (batch.seq, share.len() / passes);
        let rows_total = batch.batch * t;
        for index in 0..passes {
            let first = share.start + index * per_pass;
            let rows = first * t..(first + per_pass) * t;
            let part = Batch {
                inputs: batch.inputs[rows.clone()].to_vec(),
                targets: batch.targets[rows].to_vec(),
                batch: per_pass,
                seq: t,
            };
            self.upload(&part, Some(hyper))?;
            let pass = Pass {
                index,
                count: passes,
            };
            // NCCL's buckets go during the last pass's backward.
            let mut sync = if index + 1 == passes {
                self.allreduce.take()
            } else {
                None
            };
            let enqueued = self.enqueue_gradients(rows_total, pass, sync.as_mut());
            if sync.is_some() {
                self.allreduce = sync;
            }
            enqueued?;
        }
        if let (Some(g), None) = (&group, &self.allreduce) {
            let s = self.k.stream().clone();
            let a = self.acts.as_mut().expect("planned by upload");
            a.pin_sums.download(&s, &a.sums)?;
            let device_sums = a.pin_sums.read()?;
            let mut grads = s.clone_dtoh(&self.grads)?;
            let mut sums = LossSums {
                ce: device_sums[0],
                z: device_sums[1],
                rows: share.len() * t,
            };
            sum_across_ranks(g.as_ref(), &mut grads, &mut sums)?;
            s.memcpy_htod(&grads, &mut self.grads)?;
            let a = self.acts.as_mut().expect("planned by upload");
            s.memcpy_htod(&[sums.ce, sums.z], &mut a.sums)?;
        }
        self.enqueue_update(opt, rows_total)
    }

    /// The offsets from which the backward pass has finished the gradient, in the order it
    /// reaches them (`step.rs` hands each to [`GradAllReduce::ready`]): the head and final norm,
    /// each layer from the last, and the embedding.
    fn backward_done_from(&self) -> Vec<usize> {
        let last = self.specs.len() - 1;
        let layers = (0..self.cfg.n_layers).rev().map(|l| 1 + PER_LAYER * l);
        std::iter::once(last - 1)
            .chain(layers)
            .chain(std::iter::once(0))
            .map(|i| self.specs[i].range().start)
            .collect()
    }
}

impl<T: GpuFloat> Backend for CudaTrainer<T> {
    fn name(&self) -> String {
        let mode = if let (Some(g), Some(sync)) = (&self.group, &self.allreduce) {
            format!(
                "eager, each step's gradients all-reduced over {} ranks by NCCL ({}) in {} buckets during the backward",
                g.size(),
                sync.library(),
                sync.buckets().len()
            )
        } else if let Some(g) = &self.group {
            format!(
                "eager, each step's gradients summed over {} ranks through the host",
                g.size()
            )
        } else if self.passes > 1 {
            "eager".to_string()
        } else if self.graph.active() {
            "graph replay".to_string()
        } else if let Some(n) = self.graph.note() {
            format!("eager; graph capture failed: {n}")
        } else if self.graph.enabled() {
            "eager until captured".to_string()
        } else {
            "eager".to_string()
        };
        let mode = match self.passes {
            1 => mode,
            p => format!("{mode}, each step's share in {p} accumulated passes"),
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

    fn submit_step(&mut self, batch: &Batch, lr: f32, step: u64, opt: &OptimConfig) -> Result<()> {
        self.check_batch(batch)?;
        ensure!(step >= 1, "optimizer steps count from 1");
        let _range = nvtx::range("submit_step");
        // Bias corrections exactly as the CPU backend computes them (f32 powi).
        let hyper = [
            lr,
            1.0 - opt.beta1.powi(step as i32),
            1.0 - opt.beta2.powi(step as i32),
        ];
        if self.group.is_some() || self.passes > 1 {
            self.split_step(batch, hyper, opt)?;
            return self.metrics.submitted(&self.k, step);
        }
        {
            let _upload = nvtx::range("upload");
            self.upload(batch, Some(hyper))?;
        }
        self.run_step(opt)?;
        self.metrics.submitted(&self.k, step)
    }

    fn take_step_stats(&mut self, wait: bool) -> Result<Vec<StepReport>> {
        let _range = wait.then(|| nvtx::range("read_stats"));
        self.metrics.take(&self.k, wait)
    }

    fn eval_batch(&mut self, batch: &Batch) -> Result<LossSums> {
        self.check_batch(batch)?;
        let _range = nvtx::range("eval_batch");
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
        a.pin_sums.download(&s, &a.sums)?;
        let sums = a.pin_sums.read()?;
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

    fn share_steps(
        &mut self,
        _reduction: GradReduction,
        passes: usize,
        group: Option<Rc<dyn Group>>,
    ) -> Result<()> {
        // A rank's share runs in one pass whatever the reduction asks: GPU steps are checked
        // against the CPU by tolerance, not bit for bit.
        ensure!(passes >= 1, "a step needs at least one pass");
        self.passes = passes;
        self.allreduce = None;
        if let Some(g) = group.as_deref().filter(|g| g.size() > 1) {
            if let Some(nccl) = super::nccl::choose(g)? {
                let comm = NcclComm::join(nccl, g, self.k.context())?;
                self.allreduce = Some(GradAllReduce::new(
                    comm,
                    self.k.context(),
                    &self.backward_done_from(),
                    self.grads.len(),
                )?);
            }
        }
        self.group = group;
        Ok(())
    }
}
