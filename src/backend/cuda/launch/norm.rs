//! Launchers of `kernels/norm.cu`: RMSNorm forward (plain and fused with the residual add) and
//! backward.

use super::{grid_1d, int, need};
use crate::backend::cuda::loader::{GpuFloat, GpuKernels};
use crate::backend::cuda::Entry;
use anyhow::{ensure, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// Rows per block in the RMSNorm backward for `n` rows: the power of two that makes about 512
/// blocks, within 64..=256. Measured on the H200 (2026-12-04): at N = 32,768 a fixed 256 made
/// 128 blocks of 8 warps on 132 SMs and ran at 13% of the copy ceiling, 64 at 24%; at
/// N = 131,072, 256 (41%) beat 64 (24%), whose dgain partials add N / 64 rows of d.
pub fn norm_rows_per_chunk(n: usize) -> usize {
    (n / 512).next_power_of_two().clamp(64, 256)
}

fn norm_rows_cfg(n: usize) -> LaunchConfig {
    // 8 warps of 32 per block, one row per warp: ceil(n / 8) blocks of 256.
    grid_1d(n * 32, 256)
}

/// `out = inp / sqrt(mean(inp^2) + eps) * gain` per row of `[n, d]`; `rstd[n]` saved.
/// Grid: ceil(n / 8) blocks of 256 (a warp per row).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward<T: GpuFloat>(
    k: &GpuKernels,
    out: &mut impl DevicePtrMut<T>,
    rstd: &mut impl DevicePtrMut<f32>,
    inp: &impl DevicePtr<T>,
    gain: &impl DevicePtr<T>,
    n: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    need(out.len(), n * d, "rmsnorm out")?;
    need(rstd.len(), n, "rmsnorm rstd")?;
    need(inp.len(), n * d, "rmsnorm inp")?;
    need(gain.len(), d, "rmsnorm gain")?;
    if n == 0 {
        return Ok(());
    }
    let (ni, di) = (int(n, "n")?, int(d, "d")?);
    let s = k.stream();
    let (p_out, _g0) = out.device_ptr_mut(s);
    let (p_rstd, _g1) = rstd.device_ptr_mut(s);
    let (p_inp, _g2) = inp.device_ptr(s);
    let (p_gain, _g3) = gain.device_ptr(s);
    let mut b = s.launch_builder(k.function(T::pick(
        Entry::rmsnorm_forward_f32,
        Entry::rmsnorm_forward_bf16,
    )));
    b.arg(&p_out)
        .arg(&p_rstd)
        .arg(&p_inp)
        .arg(&p_gain)
        .arg(&ni)
        .arg(&di)
        .arg(&eps);
    unsafe { b.launch(norm_rows_cfg(n)) }?;
    Ok(())
}

/// `residual = inp1 + inp2` (stored as T), then `out = rmsnorm(residual)` and `rstd`, in one pass.
/// Grid: ceil(n / 8) blocks of 256 (a warp per row).
#[allow(clippy::too_many_arguments)]
pub fn fused_residual_rmsnorm_forward<T: GpuFloat>(
    k: &GpuKernels,
    residual: &mut impl DevicePtrMut<T>,
    out: &mut impl DevicePtrMut<T>,
    rstd: &mut impl DevicePtrMut<f32>,
    inp1: &impl DevicePtr<T>,
    inp2: &impl DevicePtr<T>,
    gain: &impl DevicePtr<T>,
    n: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    need(residual.len(), n * d, "residual")?;
    need(out.len(), n * d, "rmsnorm out")?;
    need(rstd.len(), n, "rmsnorm rstd")?;
    need(inp1.len(), n * d, "inp1")?;
    need(inp2.len(), n * d, "inp2")?;
    need(gain.len(), d, "rmsnorm gain")?;
    if n == 0 {
        return Ok(());
    }
    let (ni, di) = (int(n, "n")?, int(d, "d")?);
    let s = k.stream();
    let (p_res, _g0) = residual.device_ptr_mut(s);
    let (p_out, _g1) = out.device_ptr_mut(s);
    let (p_rstd, _g2) = rstd.device_ptr_mut(s);
    let (p_in1, _g3) = inp1.device_ptr(s);
    let (p_in2, _g4) = inp2.device_ptr(s);
    let (p_gain, _g5) = gain.device_ptr(s);
    let mut b = s.launch_builder(k.function(T::pick(
        Entry::fused_residual_rmsnorm_forward_f32,
        Entry::fused_residual_rmsnorm_forward_bf16,
    )));
    b.arg(&p_res)
        .arg(&p_out)
        .arg(&p_rstd)
        .arg(&p_in1)
        .arg(&p_in2)
        .arg(&p_gain)
        .arg(&ni)
        .arg(&di)
        .arg(&eps);
    unsafe { b.launch(norm_rows_cfg(n)) }?;
    Ok(())
}

/// Length of the fp32 scratch [`rmsnorm_backward`] needs: one `[d]` partial per row chunk.
pub fn rmsnorm_backward_scratch_len(n: usize, d: usize) -> usize {
    n.div_ceil(norm_rows_per_chunk(n)) * d
}

/// Backward of [`rmsnorm_forward`]: `dinp += dL/dx` and `dgain += sum_rows dout * x * rstd`
/// (deterministic two-stage reduction through `scratch`, see [`rmsnorm_backward_scratch_len`]).
///
/// Grid: stage 1 ceil(n / norm_rows_per_chunk(n)) blocks of 32 W threads, W = clamp(8192 / d, 1, 8), with W d 4
/// bytes of dynamic shared memory; stage 2 ceil(d / 32) blocks of (32, 8).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<T: GpuFloat>(
    k: &GpuKernels,
    dinp: &mut impl DevicePtrMut<T>,
    dgain: &mut impl DevicePtrMut<f32>,
    scratch: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    inp: &impl DevicePtr<T>,
    gain: &impl DevicePtr<T>,
    rstd: &impl DevicePtr<f32>,
    n: usize,
    d: usize,
) -> Result<()> {
    need(dinp.len(), n * d, "rmsnorm dinp")?;
    need(dgain.len(), d, "rmsnorm dgain")?;
    need(
        scratch.len(),
        rmsnorm_backward_scratch_len(n, d),
        "rmsnorm scratch",
    )?;
    need(dout.len(), n * d, "rmsnorm dout")?;
    need(inp.len(), n * d, "rmsnorm inp")?;
    need(gain.len(), d, "rmsnorm gain")?;
    need(rstd.len(), n, "rmsnorm rstd")?;
    if n == 0 || d == 0 {
        return Ok(());
    }
    let (ni, di) = (int(n, "n")?, int(d, "d")?);
    let rows_per_chunk = norm_rows_per_chunk(n);
    let chunks = n.div_ceil(rows_per_chunk);
    let (chunks_i, rows_i) = (int(chunks, "chunks")?, rows_per_chunk as i32);
    let warps = (8192 / d).clamp(1, 8);
    let smem = warps * d * 4;
    ensure!(
        smem <= 48 * 1024,
        "rmsnorm backward: d = {d} needs {smem} bytes of shared memory (> 48 KiB)"
    );
    let s = k.stream();
    let (p_dinp, _g0) = dinp.device_ptr_mut(s);
    let (p_dgain, _g1) = dgain.device_ptr_mut(s);
    let (p_scr, _g2) = scratch.device_ptr_mut(s);
    let (p_dout, _g3) = dout.device_ptr(s);
    let (p_inp, _g4) = inp.device_ptr(s);
    let (p_gain, _g5) = gain.device_ptr(s);
    let (p_rstd, _g6) = rstd.device_ptr(s);
    let mut b = s.launch_builder(k.function(T::pick(
        Entry::rmsnorm_backward_f32,
        Entry::rmsnorm_backward_bf16,
    )));
    b.arg(&p_dinp)
        .arg(&p_scr)
        .arg(&p_dout)
        .arg(&p_inp)
        .arg(&p_gain)
        .arg(&p_rstd)
        .arg(&ni)
        .arg(&di)
        .arg(&rows_i);
    let cfg = LaunchConfig {
        grid_dim: (chunks as u32, 1, 1),
        block_dim: (32 * warps as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    unsafe { b.launch(cfg) }?;
    let mut b = s.launch_builder(k.function(Entry::rmsnorm_dgain_reduce));
    b.arg(&p_dgain).arg(&p_scr).arg(&chunks_i).arg(&di);
    let cfg = LaunchConfig {
        grid_dim: (d.div_ceil(32) as u32, 1, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::norm_rows_per_chunk;

    /// The two shapes measured on the H200 get the chunk that measured faster there.
    #[test]
    fn rows_per_chunk_makes_about_512_blocks() {
        assert_eq!(norm_rows_per_chunk(32_768), 64);
        assert_eq!(norm_rows_per_chunk(131_072), 256);
        assert_eq!(norm_rows_per_chunk(65_536), 128);
        for n in [1, 300, 1024, 1 << 24] {
            assert!((64..=256).contains(&norm_rows_per_chunk(n)), "{n}");
        }
    }
}
