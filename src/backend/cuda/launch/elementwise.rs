//! Launchers of the elementwise kernels: `kernels/cast.cu` and `kernels/relu.cu`.

use super::{grid_1d, need};
use crate::backend::cuda::loader::{Bf16, GpuFloat, GpuKernels};
use crate::backend::cuda::Entry;
use anyhow::Result;
use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};

/// Launches an elementwise kernel `entry(out, inp, n)` after checking both lengths.
/// Grid: ceil(n / 512) blocks of 512.
fn launch_elementwise<O, I>(
    k: &GpuKernels,
    entry: Entry,
    out: &mut impl DevicePtrMut<O>,
    inp: &impl DevicePtr<I>,
    n: usize,
) -> Result<()> {
    let name = entry.name();
    need(out.len(), n, &format!("{name} out"))?;
    need(inp.len(), n, &format!("{name} inp"))?;
    if n == 0 {
        return Ok(());
    }
    let s = k.stream();
    let (p_out, _g0) = out.device_ptr_mut(s);
    let (p_inp, _g1) = inp.device_ptr(s);
    let mut b = s.launch_builder(k.function(entry));
    b.arg(&p_out).arg(&p_inp).arg(&n);
    unsafe { b.launch(grid_1d(n, 512)) }?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// cast.cu

/// `out = bf16(inp)`, round to nearest even. Grid: ceil(n / 512) blocks of 512.
pub fn cast_f32_to_bf16(
    k: &GpuKernels,
    out: &mut impl DevicePtrMut<Bf16>,
    inp: &impl DevicePtr<f32>,
    n: usize,
) -> Result<()> {
    launch_elementwise(k, Entry::cast_f32_to_bf16, out, inp, n)
}

/// `out = f32(inp)` (exact). Grid: ceil(n / 512) blocks of 512.
pub fn cast_bf16_to_f32(
    k: &GpuKernels,
    out: &mut impl DevicePtrMut<f32>,
    inp: &impl DevicePtr<Bf16>,
    n: usize,
) -> Result<()> {
    launch_elementwise(k, Entry::cast_bf16_to_f32, out, inp, n)
}

// ---------------------------------------------------------------------------------------------
// relu.cu

/// `out = max(inp, 0)` over `n` elements. Grid: ceil(n / 512) blocks of 512.
pub fn relu_forward<T: GpuFloat>(
    k: &GpuKernels,
    out: &mut impl DevicePtrMut<T>,
    inp: &impl DevicePtr<T>,
    n: usize,
) -> Result<()> {
    launch_elementwise(
        k,
        T::pick(Entry::relu_forward_f32, Entry::relu_forward_bf16),
        out,
        inp,
        n,
    )
}

/// `x = max(x, 0)` in place (the CPU model's form). Grid: ceil(n / 512) blocks of 512.
pub fn relu_forward_inplace<T: GpuFloat>(
    k: &GpuKernels,
    x: &mut impl DevicePtrMut<T>,
    n: usize,
) -> Result<()> {
    need(x.len(), n, "relu x")?;
    if n == 0 {
        return Ok(());
    }
    let s = k.stream();
    let (p_x, _g0) = x.device_ptr_mut(s);
    let mut b =
        s.launch_builder(k.function(T::pick(Entry::relu_forward_f32, Entry::relu_forward_bf16)));
    b.arg(&p_x).arg(&p_x).arg(&n);
    unsafe { b.launch(grid_1d(n, 512)) }?;
    Ok(())
}

/// `dh = 0 where h <= 0` in place (`h` is the saved ReLU output). Grid: ceil(n / 512) x 512.
pub fn relu_backward<T: GpuFloat>(
    k: &GpuKernels,
    dh: &mut impl DevicePtrMut<T>,
    h: &impl DevicePtr<T>,
    n: usize,
) -> Result<()> {
    launch_elementwise(
        k,
        T::pick(Entry::relu_backward_f32, Entry::relu_backward_bf16),
        dh,
        h,
        n,
    )
}
