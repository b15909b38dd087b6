//! Compute backends behind one trait: `cpu` (f32, rayon; the reference) and `cuda`.
//!
//! A backend owns the weights, gradients, optimiser moments and activations of one model, in
//! whatever memory suits it, and exposes whole training steps: that is the granularity at which a
//! GPU backend can keep everything on the device and replay a captured graph.

pub mod cpu;
pub mod cuda;
pub mod reduce;

use crate::dist::Group;
use crate::model::Batch;
use crate::model::{ModelConfig, ParamArena};
use anyhow::{bail, Result};
pub use cpu::LossSums;
pub use reduce::GradReduction;
use std::rc::Rc;

/// AdamW and clipping settings shared by every step of a run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay, applied to matrices (not to norm gains).
    pub weight_decay: f32,
    /// Global gradient-norm clip; 0 disables clipping.
    pub clip: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            clip: 1.0,
        }
    }
}

/// What one training step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy in nats per target token.
    pub ce: f32,
    /// Mean logsumexp^2 (multiply by the z-loss weight for its share of the loss).
    pub z: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

impl StepStats {
    pub fn from_sums(s: &LossSums, grad_norm: f32) -> Self {
        let n = s.rows.max(1) as f64;
        StepStats {
            ce: (s.ce / n) as f32,
            z: (s.z / n) as f32,
            grad_norm,
        }
    }
}

/// A training step's metrics and the optimiser step (from 1) they belong to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    pub step: u64,
    pub stats: StepStats,
}

/// One model on one device.
///
/// Training steps are submitted, and their metrics taken, separately: a GPU backend enqueues a
/// step and returns without waiting for the device, keeps each step's metrics in device memory
/// and copies them back in batches, so that the host prepares the next batch while the GPU runs
/// and never waits on a copy between steps. The weights change in submission order either way.
pub trait Backend {
    /// A human-readable description ("cpu (2 threads)", "cuda: NVIDIA H100 ...").
    fn name(&self) -> String;
    /// Where it runs: [`Device::Cpu`] or [`Device::Cuda`] (never `Auto`).
    fn device(&self) -> Device;
    /// Forward, backward, clipping and one AdamW update at learning rate `lr`; `step` counts
    /// optimiser steps from 1 (bias correction). The step may still be running on the device
    /// when this returns; its metrics arrive through [`take_step_stats`](Self::take_step_stats).
    fn submit_step(&mut self, batch: &Batch, lr: f32, step: u64, opt: &OptimConfig) -> Result<()>;
    /// The metrics of submitted steps not yet taken, oldest first. With `wait`, those of every
    /// submitted step (waiting for the device to finish them); without, only those already back
    /// on the host, possibly none. Errs when a step's gradient norm is not finite: its update
    /// has already been applied, so the run cannot go on.
    fn take_step_stats(&mut self, wait: bool) -> Result<Vec<StepReport>>;
    /// [`submit_step`](Self::submit_step), then that step's metrics (waiting for them);
    /// metrics of earlier steps not yet taken are dropped.
    fn train_step(
        &mut self,
        batch: &Batch,
        lr: f32,
        step: u64,
        opt: &OptimConfig,
    ) -> Result<StepStats> {
        self.submit_step(batch, lr, step, opt)?;
        let done = self.take_step_stats(true)?;
        match done.last() {
            Some(r) if r.step == step => Ok(r.stats),
            _ => bail!("the backend returned no metrics for step {step}"),
        }
    }
    /// Loss sums of the current weights on `batch`, without touching any state.
    fn eval_batch(&mut self, batch: &Batch) -> Result<LossSums>;
    /// A host copy of the current weights (after every submitted step).
    fn params(&self) -> Result<ParamArena>;
    /// Host copies of the AdamW moments (m, v), in the weights' layout.
    fn optimizer_state(&self) -> Result<(Vec<f32>, Vec<f32>)>;
    /// From the next step on, sums each step's gradient as `reduction` says, with each batch
    /// shared between the ranks of `group` (every rank passes the whole batch and computes its
    /// share) and each rank's share computed in `passes` passes (gradient accumulation: the
    /// memory of one pass). The CPU backend does all three, its sequence-by-sequence sum holding
    /// one sequence at a time whatever `passes` says; CUDA sums in its own order (by tolerance),
    /// and refuses a share that `passes` does not divide.
    fn share_steps(
        &mut self,
        reduction: GradReduction,
        passes: usize,
        group: Option<Rc<dyn Group>>,
    ) -> Result<()>;
}

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The GPU when one is usable, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// Whether `--device auto` may pick the CUDA training backend: set once `scripts/gpu-check.sh`
/// has passed on a GPU. A change to the kernels that only the CUDA emulator (`emu/`) has checked
/// clears it again until a GPU run passes: such a backend must be asked for by name. It passed on
/// an H200 on 2026-12-04; the attention, RMSNorm and ReLU-epilogue redesigns of 2026-12-05 have
/// passed only on the emulator, so it is clear.
pub const CUDA_VALIDATED: bool = false;

/// Whether `--device auto` may pick the CUDA backend for a run shared between MPI ranks: set once
/// a multi-GPU machine has run `tests/mpi.rs`'s GPU test on real GPUs, with NCCL and through the
/// host. Until then only the CUDA emulator (and its stand-in NCCL) has run the shared step, and
/// ranks on `auto` train on the CPU.
pub const MULTI_GPU_VALIDATED: bool = false;

/// Whether M1's int8 GPU kernels (`--gpu` coding) have passed their bit-for-bit tests on a GPU
/// since they last changed (an H200, 2026-12-04). Cleared, like [`CUDA_VALIDATED`], by a change
/// only the emulator has checked.
pub const GPU_M1_VALIDATED: bool = true;

/// Refuses `cuda` for quantisation-aware training: the simulation is the CPU backend's.
pub fn check_qat_device(device: Device) -> Result<()> {
    if device == Device::Cuda {
        bail!("--qat simulates M1's int8 arithmetic in the CPU backend's forward pass, so it runs on the CPU only: drop --device cuda (auto and cpu run it on the CPU)");
    }
    Ok(())
}

/// Builds the backend of quantisation-aware training ([`cpu::CpuBackend::with_qat`]): the CPU
/// for `auto` and `cpu`; `cuda` is refused (the simulation is the CPU backend's).
pub fn create_qat_backend(
    device: Device,
    cfg: &ModelConfig,
    params: ParamArena,
    moments: Option<(Vec<f32>, Vec<f32>)>,
) -> Result<(Box<dyn Backend>, String)> {
    check_qat_device(device)?;
    let be = cpu::CpuBackend::new(cfg, params, moments)?.with_qat()?;
    Ok((
        Box::new(be),
        "quantisation-aware (--qat) on the CPU".to_string(),
    ))
}

/// Builds the backend for `device`, with a note saying what was chosen and why.
///
/// - `cuda`: the CUDA backend ([`cuda::CudaBackend`], bf16 activations, fp32 master weights), or
///   an error saying why it cannot run here (no driver, no GPU, no embedded kernels, no
///   libcublasLt).
/// - `auto`: the CUDA backend when a GPU is usable, it starts and [`CUDA_VALIDATED`] is set;
///   else the CPU (the note says why).
/// - `cpu`: the CPU backend.
///
/// The CUDA backend has not yet been run on a GPU (it was written on machines without one).
pub fn create_backend(
    device: Device,
    cfg: &ModelConfig,
    params: ParamArena,
    moments: Option<(Vec<f32>, Vec<f32>)>,
) -> Result<(Box<dyn Backend>, String)> {
    match device {
        Device::Cuda => {
            if let Some(reason) = cuda::gpu_unavailable_reason() {
                bail!("--device cuda: no usable GPU: {reason}");
            }
            let be = cuda::CudaBackend::new(cfg, &params, moments)
                .map_err(|e| anyhow::anyhow!("--device cuda: {e:#}"))?;
            Ok((Box::new(be), "CUDA requested".to_string()))
        }
        Device::Auto => {
            if let Some(reason) = cuda::gpu_unavailable_reason() {
                let note = format!("no usable GPU ({reason}); using the CPU");
                return Ok((Box::new(cpu::CpuBackend::new(cfg, params, moments)?), note));
            }
            if !CUDA_VALIDATED {
                let note = "a GPU is present, but the CUDA backend has not yet passed its parity tests on a GPU; using the CPU (--device cuda to try it)".to_string();
                return Ok((Box::new(cpu::CpuBackend::new(cfg, params, moments)?), note));
            }
            match cuda::CudaBackend::new(cfg, &params, moments.clone()) {
                Ok(be) => Ok((Box::new(be), "GPU found; using CUDA".to_string())),
                Err(e) => {
                    let note = format!("the CUDA backend failed to start ({e:#}); using the CPU");
                    Ok((Box::new(cpu::CpuBackend::new(cfg, params, moments)?), note))
                }
            }
        }
        Device::Cpu => Ok((
            Box::new(cpu::CpuBackend::new(cfg, params, moments)?),
            "CPU requested".to_string(),
        )),
    }
}
