//! Launchers of the optimizer's kernels: the global gradient norm (`kernels/global_norm.cu`) and
//! AdamW (`kernels/adamw.cu`).

use super::{grid_1d, need};
use crate::backend::cpu::adamw::AdamWStep;
use crate::backend::cuda::loader::{Bf16, GpuFloat, GpuKernels};
use crate::backend::cuda::Entry;
use anyhow::Result;
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// Fixed stage-1 grid of the global norm; the partial buffer holds exactly this many f64.
pub const GLOBAL_NORM_BLOCKS: usize = 264;

// ---------------------------------------------------------------------------------------------
// global_norm.cu

/// Stage 1 of the global norm: `partial[k]` (`GLOBAL_NORM_BLOCKS` f64) = (or `+=` when
/// `accumulate`) block k's sum of squares of `x[..n]`.
/// Grid: exactly GLOBAL_NORM_BLOCKS blocks of 512 (fixed: the sum's bits never depend on the GPU).
pub fn global_norm_squared<T: GpuFloat>(
    k: &GpuKernels,
    partial: &mut impl DevicePtrMut<f64>,
    x: &impl DevicePtr<T>,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    need(partial.len(), GLOBAL_NORM_BLOCKS, "global norm partial")?;
    need(x.len(), n, "global norm x")?;
    let acc = accumulate as i32;
    let s = k.stream();
    let (p_part, _g0) = partial.device_ptr_mut(s);
    let (p_x, _g1) = x.device_ptr(s);
    let mut b = s.launch_builder(k.function(T::pick(
        Entry::global_norm_squared_f32,
        Entry::global_norm_squared_bf16,
    )));
    b.arg(&p_part).arg(&p_x).arg(&n).arg(&acc);
    let cfg = LaunchConfig {
        grid_dim: (GLOBAL_NORM_BLOCKS as u32, 1, 1),
        block_dim: (512, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Stage 2: `out[0] = sqrt(sum partial)`, `out[1] = clip scale` (`clip / norm` when
/// `clip > 0 && norm > clip`, else 1). Grid: 1 block of 256.
pub fn global_norm_finish(
    k: &GpuKernels,
    out: &mut impl DevicePtrMut<f32>,
    partial: &impl DevicePtr<f64>,
    clip: f32,
) -> Result<()> {
    need(out.len(), 2, "global norm out")?;
    need(partial.len(), GLOBAL_NORM_BLOCKS, "global norm partial")?;
    let np = GLOBAL_NORM_BLOCKS as i32;
    let s = k.stream();
    let (p_out, _g0) = out.device_ptr_mut(s);
    let (p_part, _g1) = partial.device_ptr(s);
    let mut b = s.launch_builder(k.function(Entry::global_norm_finish));
    b.arg(&p_out).arg(&p_part).arg(&np).arg(&clip);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// adamw.cu

/// One AdamW update of `n` fp32 master weights (and their bf16 working copy when given), the
/// formula of `backend::cpu::adamw::adamw`. Grid: ceil(n / 512) blocks of 512.
#[allow(clippy::too_many_arguments)]
pub fn adamw<P16: DevicePtrMut<Bf16>>(
    k: &GpuKernels,
    params: &mut impl DevicePtrMut<f32>,
    params_bf16: Option<&mut P16>,
    grads: &impl DevicePtr<f32>,
    m: &mut impl DevicePtrMut<f32>,
    v: &mut impl DevicePtrMut<f32>,
    n: usize,
    h: &AdamWStep,
) -> Result<()> {
    need(params.len(), n, "params")?;
    need(grads.len(), n, "grads")?;
    need(m.len(), n, "adam m")?;
    need(v.len(), n, "adam v")?;
    if n == 0 {
        return Ok(());
    }
    let s = k.stream();
    let (p_par, _g0) = params.device_ptr_mut(s);
    let (p16, _g1) = match params_bf16 {
        Some(p) => {
            need(p.len(), n, "params bf16")?;
            let (ptr, g) = p.device_ptr_mut(s);
            (ptr, Some(g))
        }
        None => (0, None),
    };
    let (p_g, _g2) = grads.device_ptr(s);
    let (p_m, _g3) = m.device_ptr_mut(s);
    let (p_v, _g4) = v.device_ptr_mut(s);
    let mut b = s.launch_builder(k.function(Entry::adamw));
    b.arg(&p_par)
        .arg(&p16)
        .arg(&p_g)
        .arg(&p_m)
        .arg(&p_v)
        .arg(&n)
        .arg(&h.lr)
        .arg(&h.beta1)
        .arg(&h.beta2)
        .arg(&h.eps)
        .arg(&h.weight_decay)
        .arg(&h.grad_scale)
        .arg(&h.bias_corr1)
        .arg(&h.bias_corr2);
    unsafe { b.launch(grid_1d(n, 512)) }?;
    Ok(())
}

/// The graph-replayable AdamW (`adamw_dev_*` in `kernels/adamw.cu`): `lr`, `bias_corr1`,
/// `bias_corr2` are read from `hyper[0..3]` and the clip scale from `norm[1]` (the output of
/// [`global_norm_finish`]) on the device, so a captured launch stays valid as they change.
/// `work` receives the updated weights in `T` (the forward pass's copy).
/// Grid: ceil(n / 512) blocks of 512.
#[allow(clippy::too_many_arguments)]
pub fn adamw_dev<T: GpuFloat>(
    k: &GpuKernels,
    params: &mut impl DevicePtrMut<f32>,
    work: &mut impl DevicePtrMut<T>,
    grads: &impl DevicePtr<f32>,
    m: &mut impl DevicePtrMut<f32>,
    v: &mut impl DevicePtrMut<f32>,
    hyper: &impl DevicePtr<f32>,
    norm: &impl DevicePtr<f32>,
    n: usize,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
) -> Result<()> {
    need(params.len(), n, "params")?;
    need(work.len(), n, "working params")?;
    need(grads.len(), n, "grads")?;
    need(m.len(), n, "adam m")?;
    need(v.len(), n, "adam v")?;
    need(hyper.len(), 3, "adamw hyper")?;
    need(norm.len(), 2, "global norm out")?;
    if n == 0 {
        return Ok(());
    }
    let s = k.stream();
    let (p_par, _g0) = params.device_ptr_mut(s);
    let (p_w, _g1) = work.device_ptr_mut(s);
    let (p_g, _g2) = grads.device_ptr(s);
    let (p_m, _g3) = m.device_ptr_mut(s);
    let (p_v, _g4) = v.device_ptr_mut(s);
    let (p_h, _g5) = hyper.device_ptr(s);
    let (p_n, _g6) = norm.device_ptr(s);
    let mut b = s.launch_builder(k.function(T::pick(Entry::adamw_dev_f32, Entry::adamw_dev_bf16)));
    b.arg(&p_par)
        .arg(&p_w)
        .arg(&p_g)
        .arg(&p_m)
        .arg(&p_v)
        .arg(&n)
        .arg(&p_h)
        .arg(&p_n)
        .arg(&beta1)
        .arg(&beta2)
        .arg(&eps)
        .arg(&weight_decay);
    unsafe { b.launch(grid_1d(n, 512)) }?;
    Ok(())
}
