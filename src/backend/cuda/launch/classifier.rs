//! Launchers of `kernels/classifier.cu`: the fused softmax cross-entropy (with z-loss) forward and
//! backward, and the loss sums.

use super::{int, need};
use crate::backend::cuda::loader::{GpuFloat, GpuKernels};
use crate::backend::cuda::Entry;
use anyhow::{ensure, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// The widest vocabulary whose rows go a warp each (at most 8 bf16 packs per lane); wider rows
/// get a block each.
pub const WARP_ROWS_MAX_VOCAB: usize = 2048;

/// Per row of `logits[n, v]`: `ce[row] = lse - logit[target]`, `lse[row]`; when `dscale != 0`,
/// overwrites the row with `dscale * ((1 + 2 z_loss lse) softmax - onehot(target))`.
/// `dscale = 1 / rows_total` when training, 0 for evaluation.
/// Grid: a warp per row for v <= [`WARP_ROWS_MAX_VOCAB`] (ceil(n / 8) blocks of 256, 8 rows each),
/// else n blocks (a block per row) of 1024 threads when v >= 8192, else 256.
#[allow(clippy::too_many_arguments)]
pub fn classifier_forward_backward<T: GpuFloat>(
    k: &GpuKernels,
    logits: &mut impl DevicePtrMut<T>,
    ce: &mut impl DevicePtrMut<f32>,
    lse: &mut impl DevicePtrMut<f32>,
    targets: &impl DevicePtr<u32>,
    n: usize,
    v: usize,
    z_loss: f32,
    dscale: f32,
) -> Result<()> {
    need(logits.len(), n * v, "logits")?;
    need(ce.len(), n, "ce")?;
    need(lse.len(), n, "lse")?;
    need(targets.len(), n, "targets")?;
    ensure!(v > 0, "classifier: vocab 0");
    if n == 0 {
        return Ok(());
    }
    ensure!(
        n <= i32::MAX as usize,
        "classifier: {n} rows exceed the grid"
    );
    let (ni, vi) = (int(n, "n")?, int(v, "v")?);
    let s = k.stream();
    let (p_log, _g0) = logits.device_ptr_mut(s);
    let (p_ce, _g1) = ce.device_ptr_mut(s);
    let (p_lse, _g2) = lse.device_ptr_mut(s);
    let (p_tgt, _g3) = targets.device_ptr(s);
    let warp_rows = v <= WARP_ROWS_MAX_VOCAB;
    let entry = if warp_rows {
        T::pick(
            Entry::classifier_warp_rows_f32,
            Entry::classifier_warp_rows_bf16,
        )
    } else {
        T::pick(
            Entry::classifier_forward_backward_f32,
            Entry::classifier_forward_backward_bf16,
        )
    };
    let mut b = s.launch_builder(k.function(entry));
    b.arg(&p_log)
        .arg(&p_ce)
        .arg(&p_lse)
        .arg(&p_tgt)
        .arg(&ni)
        .arg(&vi)
        .arg(&z_loss)
        .arg(&dscale);
    let (grid, block) = if warp_rows {
        (n.div_ceil(8) as u32, 256)
    } else {
        (n as u32, if v >= 8192 { 1024 } else { 256 })
    };
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// `out[0] = sum ce`, `out[1] = sum lse^2` over `n` rows, in f64 and a fixed order.
/// Grid: 1 block of 1024.
pub fn loss_sums(
    k: &GpuKernels,
    out: &mut impl DevicePtrMut<f64>,
    ce: &impl DevicePtr<f32>,
    lse: &impl DevicePtr<f32>,
    n: usize,
) -> Result<()> {
    need(out.len(), 2, "loss sums out")?;
    need(ce.len(), n, "ce")?;
    need(lse.len(), n, "lse")?;
    let ni = int(n, "n")?;
    let s = k.stream();
    let (p_out, _g0) = out.device_ptr_mut(s);
    let (p_ce, _g1) = ce.device_ptr(s);
    let (p_lse, _g2) = lse.device_ptr(s);
    let mut b = s.launch_builder(k.function(Entry::loss_sums));
    b.arg(&p_out).arg(&p_ce).arg(&p_lse).arg(&ni);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }?;
    Ok(())
}
