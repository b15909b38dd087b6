//! The training step's metrics on their way back to the host: a ring on the device that each
//! step appends to (`kernels/step_stats.cu`, inside the captured graph), copied back in batches.
//!
//! The host counts the steps it submits, so it knows which slot holds which step: slot
//! `k % len` holds the k-th recorded step. When `len` steps wait on the device, a copy of the
//! whole ring into a pinned buffer is enqueued behind them and the host moves on; the buffer is
//! read once that copy has landed (asked without waiting), when the next batch of `len` is due,
//! or when metrics are asked for with `wait`. A slot is rewritten only after the copy that reads it, in stream order.

use crate::backend::cuda::launch::{self, STEP_STATS_FLOATS};
use crate::backend::cuda::loader::GpuKernels;
use crate::backend::cuda::staging::Staged;
use crate::backend::{StepReport, StepStats};
use anyhow::{ensure, Result};
use cudarc::driver::{CudaSlice, DevicePtr};

/// Slots in the ring, and so steps per copy back, unless `TERSE_CUDA_READBACK_EVERY` says.
pub(crate) const DEFAULT_READBACK_EVERY: usize = 16;

/// The device ring of step metrics and the host's account of it.
pub(super) struct MetricsRing {
    /// `[len, STEP_STATS_FLOATS]` (ce, z, gradient norm per slot).
    ring: CudaSlice<f32>,
    /// Steps recorded so far (the device's count; the host's `recorded` mirrors it).
    cursor: CudaSlice<u64>,
    len: usize,
    recorded: u64,
    /// Steps recorded on the device since the last copy was enqueued, oldest first.
    on_device: Vec<u64>,
    /// Steps, with their slots, whose copy into `stage` is enqueued but not yet read.
    in_stage: Vec<(u64, usize)>,
    stage: Staged<f32>,
    /// Metrics read back and not yet taken.
    ready: Vec<StepReport>,
}

impl MetricsRing {
    /// A ring of `len` slots (at least 1).
    pub(super) fn new(k: &GpuKernels, len: usize) -> Result<Self> {
        let len = len.max(1);
        let s = k.stream();
        Ok(MetricsRing {
            ring: s.alloc_zeros::<f32>(len * STEP_STATS_FLOATS)?,
            cursor: s.alloc_zeros::<u64>(1)?,
            len,
            recorded: 0,
            on_device: Vec::with_capacity(len),
            in_stage: Vec::with_capacity(len),
            stage: Staged::for_download(k.context(), len * STEP_STATS_FLOATS)?,
            ready: Vec::new(),
        })
    }

    /// Enqueues the kernel that appends a step's metrics (`sums` over `rows` rows, `norm[0]`).
    pub(super) fn record(
        &mut self,
        k: &GpuKernels,
        sums: &impl DevicePtr<f64>,
        norm: &impl DevicePtr<f32>,
        rows: usize,
    ) -> Result<()> {
        launch::step_stats_record(
            k,
            &mut self.ring,
            &mut self.cursor,
            sums,
            norm,
            rows,
            self.len,
        )
    }

    /// Notes that `step` was enqueued (its graph or launches include [`record`](Self::record));
    /// once `len` steps wait on the device, enqueues their copy back without waiting for it.
    pub(super) fn submitted(&mut self, k: &GpuKernels, step: u64) -> Result<()> {
        self.on_device.push(step);
        self.recorded += 1;
        if self.on_device.len() == self.len {
            self.read_stage()?;
            self.enqueue_copy(k)?;
        }
        Ok(())
    }

    /// Metrics back on the host and not yet taken, oldest first (never waiting: a copy still in
    /// flight is left for later); with `wait`, those of every submitted step (waiting for the
    /// device). Errs at the first step whose gradient norm is not finite.
    pub(super) fn take(&mut self, k: &GpuKernels, wait: bool) -> Result<Vec<StepReport>> {
        if wait || self.stage.landed()? {
            self.read_stage()?;
        }
        if wait && !self.on_device.is_empty() {
            self.enqueue_copy(k)?;
            self.read_stage()?;
        }
        let ready = std::mem::take(&mut self.ready);
        if let Some(bad) = ready.iter().find(|r| !r.stats.grad_norm.is_finite()) {
            anyhow::bail!(
                "gradient norm is not finite at step {} (loss {}); the weights were already \
                 updated on the device, so this run cannot continue",
                bad.step,
                bad.stats.ce
            );
        }
        Ok(ready)
    }

    /// Enqueues the copy of the whole ring into the stage for the steps on the device.
    fn enqueue_copy(&mut self, k: &GpuKernels) -> Result<()> {
        ensure!(self.in_stage.is_empty(), "the metrics stage was not read");
        let first = self.recorded - self.on_device.len() as u64;
        for (i, step) in self.on_device.drain(..).enumerate() {
            self.in_stage
                .push((step, ((first + i as u64) % self.len as u64) as usize));
        }
        self.stage.download(k.stream(), &self.ring)
    }

    /// Reads the stage (waiting for its copy) into `ready`.
    fn read_stage(&mut self) -> Result<()> {
        if self.in_stage.is_empty() {
            return Ok(());
        }
        let host = self.stage.read()?;
        for (step, slot) in self.in_stage.drain(..) {
            let v = &host[slot * STEP_STATS_FLOATS..(slot + 1) * STEP_STATS_FLOATS];
            self.ready.push(StepReport {
                step,
                stats: StepStats {
                    ce: v[0],
                    z: v[1],
                    grad_norm: v[2],
                },
            });
        }
        Ok(())
    }
}
