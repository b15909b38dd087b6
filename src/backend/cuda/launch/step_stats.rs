//! Launcher of the device-side step metrics (`kernels/step_stats.cu`).

use super::{int, need};
use crate::backend::cuda::loader::GpuKernels;
use crate::backend::cuda::Entry;
use anyhow::{ensure, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// Floats per step in the metrics ring: mean cross-entropy, mean lse^2, gradient norm.
pub const STEP_STATS_FLOATS: usize = 3;

/// Appends a step's metrics to `ring` (`ring_len` slots of [`STEP_STATS_FLOATS`]) at slot
/// `cursor[0] % ring_len` and advances `cursor[0]`: `sums` is [`super::loss_sums`]' output over
/// `rows` rows and `norm[0]` the global norm of [`super::global_norm_finish`].
/// Grid: 1 block of 1 thread.
pub fn step_stats_record(
    k: &GpuKernels,
    ring: &mut impl DevicePtrMut<f32>,
    cursor: &mut impl DevicePtrMut<u64>,
    sums: &impl DevicePtr<f64>,
    norm: &impl DevicePtr<f32>,
    rows: usize,
    ring_len: usize,
) -> Result<()> {
    ensure!(ring_len > 0, "the metrics ring needs at least one slot");
    need(ring.len(), ring_len * STEP_STATS_FLOATS, "metrics ring")?;
    need(cursor.len(), 1, "metrics cursor")?;
    need(sums.len(), 2, "loss sums")?;
    need(norm.len(), 1, "global norm out")?;
    let (rows_i, len_i) = (int(rows, "rows")?, int(ring_len, "ring_len")?);
    let s = k.stream();
    let (p_ring, _g0) = ring.device_ptr_mut(s);
    let (p_cur, _g1) = cursor.device_ptr_mut(s);
    let (p_sums, _g2) = sums.device_ptr(s);
    let (p_norm, _g3) = norm.device_ptr(s);
    let mut b = s.launch_builder(k.function(Entry::step_stats_record));
    b.arg(&p_ring)
        .arg(&p_cur)
        .arg(&p_sums)
        .arg(&p_norm)
        .arg(&rows_i)
        .arg(&len_i);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }?;
    Ok(())
}
