//! Launchers of causal attention with the rotary embedding fused in, on CUDA cores
//! (`kernels/attention.cu`) or tensor cores (`kernels/attention_tc.cu`).

use super::{grid_1d, int, need, HEAD_DIM};
use crate::backend::cpu::attention::AttnShape;
use crate::backend::cuda::loader::{GpuFloat, GpuKernels};
use crate::backend::cuda::Entry;
use anyhow::{bail, ensure, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

// ---------------------------------------------------------------------------------------------
// attention.cu

/// Which attention kernels run: attention.cu's CUDA-core kernels (exact to fp32 rounding; the
/// only ones for f32 storage) or attention_tc.cu's tensor-core kernels (bf16 storage only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernels {
    /// `attention_*_{f32,bf16}`: a thread per row, grid (ceil(T / 64), H, B) blocks of 64.
    CudaCore,
    /// `attention_*_tc_bf16`: mma.sync m16n8k16, a warp per 16 rows, grid (ceil(T / 64), H, B)
    /// blocks of 128; qkv, out and dout 16-byte aligned.
    TensorCore,
}

impl AttnKernels {
    /// What training uses for storage type `T`: the tensor cores for bf16, unless `choice` (the
    /// value of `TERSE_CUDA_ATTENTION`) is `cudacore`, which asks for the CUDA-core kernels (to
    /// compare, or to train on a GPU where the tensor-core kernels misbehave). `tensorcore` or
    /// no value is the default; any other value is refused.
    pub fn for_storage<T: GpuFloat>(choice: Option<&str>) -> Result<Self> {
        let forced = match choice {
            None | Some("tensorcore") => false,
            Some("cudacore") => true,
            Some(other) => {
                bail!("TERSE_CUDA_ATTENTION={other:?}: expected \"cudacore\" or \"tensorcore\"")
            }
        };
        Ok(if T::SUFFIX == "bf16" && !forced {
            AttnKernels::TensorCore
        } else {
            AttnKernels::CudaCore
        })
    }

    fn check<T: GpuFloat>(self, ptrs: &[u64]) -> Result<()> {
        if self == AttnKernels::TensorCore {
            ensure!(
                T::SUFFIX == "bf16",
                "the tensor-core attention kernels take bf16 storage, not {}",
                T::SUFFIX
            );
            ensure!(
                ptrs.iter().all(|p| p % 16 == 0),
                "the tensor-core attention kernels need 16-byte aligned qkv, out and dout"
            );
        }
        Ok(())
    }

    fn block(self) -> u32 {
        match self {
            AttnKernels::CudaCore => 64,
            AttnKernels::TensorCore => 128,
        }
    }

    fn entry<T: GpuFloat>(self, f32_entry: Entry, bf16_entry: Entry, tc: Entry) -> Entry {
        match self {
            AttnKernels::CudaCore => T::pick(f32_entry, bf16_entry),
            AttnKernels::TensorCore => tc,
        }
    }
}

/// The rotary tables' lengths: `[seq, 32]` each, device copies of `RopeTables`.
fn check_rope(cos: &impl DevicePtr<f32>, sin: &impl DevicePtr<f32>, seq: usize) -> Result<()> {
    need(cos.len(), seq * HEAD_DIM / 2, "rope cos")?;
    need(sin.len(), seq * HEAD_DIM / 2, "rope sin")
}

fn attn_dims(sh: AttnShape, kernels: AttnKernels) -> Result<(i32, i32, i32, LaunchConfig)> {
    ensure!(
        sh.batch > 0 && sh.seq > 0 && sh.heads > 0,
        "empty attention shape {sh:?}"
    );
    ensure!(
        sh.heads <= 65535 && sh.batch <= 65535,
        "attention grid: {sh:?} exceeds 65535 heads or batches"
    );
    int(sh.batch * sh.seq * 3 * sh.heads * HEAD_DIM, "qkv elements")?;
    let cfg = LaunchConfig {
        grid_dim: (sh.seq.div_ceil(64) as u32, sh.heads as u32, sh.batch as u32),
        block_dim: (kernels.block(), 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((
        int(sh.batch, "batch")?,
        int(sh.seq, "seq")?,
        int(sh.heads, "heads")?,
        cfg,
    ))
}

/// Causal attention: `out[B*T, d]` and `lse[B, H, T]` from `qkv[B*T, 3d]`, whose q and k the
/// kernels rotate by the rotary tables `cos`, `sin` (`[T, 32]`) as they load them, on the given
/// kernels (training passes [`AttnKernels::for_storage`]). Grid: (ceil(T / 64), H, B) blocks of
/// 64 threads (CUDA cores: a thread per query) or 128 (tensor cores: a warp per 16 queries).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: GpuFloat>(
    k: &GpuKernels,
    kernels: AttnKernels,
    out: &mut impl DevicePtrMut<T>,
    lse: &mut impl DevicePtrMut<f32>,
    qkv: &impl DevicePtr<T>,
    cos: &impl DevicePtr<f32>,
    sin: &impl DevicePtr<f32>,
    sh: AttnShape,
) -> Result<()> {
    let (bi, ti, hi, cfg) = attn_dims(sh, kernels)?;
    let (n, d) = (sh.batch * sh.seq, sh.heads * HEAD_DIM);
    need(out.len(), n * d, "attention out")?;
    need(lse.len(), sh.batch * sh.heads * sh.seq, "attention lse")?;
    need(qkv.len(), n * 3 * d, "attention qkv")?;
    check_rope(cos, sin, sh.seq)?;
    let s = k.stream();
    let (p_out, _g0) = out.device_ptr_mut(s);
    let (p_lse, _g1) = lse.device_ptr_mut(s);
    let (p_qkv, _g2) = qkv.device_ptr(s);
    let (p_cos, _g3) = cos.device_ptr(s);
    let (p_sin, _g4) = sin.device_ptr(s);
    kernels.check::<T>(&[p_out, p_qkv])?;
    let mut b = s.launch_builder(k.function(kernels.entry::<T>(
        Entry::attention_forward_f32,
        Entry::attention_forward_bf16,
        Entry::attention_forward_tc_bf16,
    )));
    b.arg(&p_out)
        .arg(&p_lse)
        .arg(&p_qkv)
        .arg(&p_cos)
        .arg(&p_sin)
        .arg(&bi)
        .arg(&ti)
        .arg(&hi);
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Backward of [`attention_forward`] on the given kernels: overwrites `dqkv[B*T, 3d]` with the
/// gradient of the stored (unrotated) `qkv`, dq and dk rotated back as they are stored. `delta`
/// is `[B, H, T]` fp32 scratch. Three launches: preprocess (ceil(B H T / 8) blocks of 256, a warp
/// per row), dk/dv and dq (each (ceil(T / 64), H, B) blocks of 64 on CUDA cores, 128 on tensor
/// cores).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: GpuFloat>(
    k: &GpuKernels,
    kernels: AttnKernels,
    dqkv: &mut impl DevicePtrMut<T>,
    delta: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    out: &impl DevicePtr<T>,
    lse: &impl DevicePtr<f32>,
    qkv: &impl DevicePtr<T>,
    cos: &impl DevicePtr<f32>,
    sin: &impl DevicePtr<f32>,
    sh: AttnShape,
) -> Result<()> {
    let (bi, ti, hi, cfg) = attn_dims(sh, kernels)?;
    let (n, d, rows) = (
        sh.batch * sh.seq,
        sh.heads * HEAD_DIM,
        sh.batch * sh.heads * sh.seq,
    );
    need(dqkv.len(), n * 3 * d, "attention dqkv")?;
    need(delta.len(), rows, "attention delta")?;
    need(dout.len(), n * d, "attention dout")?;
    need(out.len(), n * d, "attention out")?;
    need(lse.len(), rows, "attention lse")?;
    need(qkv.len(), n * 3 * d, "attention qkv")?;
    check_rope(cos, sin, sh.seq)?;
    let s = k.stream();
    let (p_dqkv, _g0) = dqkv.device_ptr_mut(s);
    let (p_delta, _g1) = delta.device_ptr_mut(s);
    let (p_dout, _g2) = dout.device_ptr(s);
    let (p_out, _g3) = out.device_ptr(s);
    let (p_lse, _g4) = lse.device_ptr(s);
    let (p_qkv, _g5) = qkv.device_ptr(s);
    let (p_cos, _g6) = cos.device_ptr(s);
    let (p_sin, _g7) = sin.device_ptr(s);
    kernels.check::<T>(&[p_dqkv, p_dout, p_qkv])?;

    let mut b = s.launch_builder(k.function(T::pick(
        Entry::attention_backward_preprocess_f32,
        Entry::attention_backward_preprocess_bf16,
    )));
    b.arg(&p_delta)
        .arg(&p_dout)
        .arg(&p_out)
        .arg(&bi)
        .arg(&ti)
        .arg(&hi);
    unsafe { b.launch(grid_1d(rows * 32, 256)) }?;

    for entry in [
        kernels.entry::<T>(
            Entry::attention_backward_dkdv_f32,
            Entry::attention_backward_dkdv_bf16,
            Entry::attention_backward_dkdv_tc_bf16,
        ),
        kernels.entry::<T>(
            Entry::attention_backward_dq_f32,
            Entry::attention_backward_dq_bf16,
            Entry::attention_backward_dq_tc_bf16,
        ),
    ] {
        let mut b = s.launch_builder(k.function(entry));
        b.arg(&p_dqkv)
            .arg(&p_qkv)
            .arg(&p_dout)
            .arg(&p_lse)
            .arg(&p_delta)
            .arg(&p_cos)
            .arg(&p_sin)
            .arg(&bi)
            .arg(&ti)
            .arg(&hi);
        unsafe { b.launch(cfg) }?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::Bf16;

    #[test]
    fn attention_choice_is_parsed_or_refused() {
        use super::AttnKernels::*;
        assert_eq!(AttnKernels::for_storage::<Bf16>(None).unwrap(), TensorCore);
        assert_eq!(
            AttnKernels::for_storage::<Bf16>(Some("tensorcore")).unwrap(),
            TensorCore
        );
        assert_eq!(
            AttnKernels::for_storage::<Bf16>(Some("cudacore")).unwrap(),
            CudaCore
        );
        assert_eq!(AttnKernels::for_storage::<f32>(None).unwrap(), CudaCore);
        for garbage in ["", "CudaCore", "tensor-core", "\u{0}"] {
            let e = AttnKernels::for_storage::<Bf16>(Some(garbage)).unwrap_err();
            assert!(
                e.to_string().contains("TERSE_CUDA_ATTENTION"),
                "{garbage:?}: {e}"
            );
        }
    }
}
