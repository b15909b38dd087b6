//! Typed launchers, one per kernel in `kernels/*.cu`, each stating its grid maths.
//!
//! Every launcher takes the [`GpuKernels`] to launch with (its stream orders all work), device
//! buffers as anything cudarc can hand a pointer for (`CudaSlice`, `CudaView`, `CudaViewMut`, so
//! arena views work), and the shape. It checks each buffer holds at least what the shape needs and
//! that the shape fits the kernel's `int` arguments, then enqueues; nothing synchronises. A
//! launcher generic over `T: GpuFloat` picks the `_f32` or `_bf16` entry point. Token ids are not
//! range-checked on the device: the caller validates batches on the host (as `CpuBackend` does).
//!
//! Layouts are the CPU backend's (`backend::cpu`): activations row-major `[N = B*T, d]`, the fused
//! `qkv` `[N, 3d]` (q | k | v, heads of 64), weights `[out, in]`, attention `lse` `[B, H, T]`.
//! Weight gradients are fp32 (`adamw` reads fp32 gradients); activations and their gradients are
//! `T`.
//!
//! ## Where the GEMMs go (cuBLASLt, not hand-written)
//!
//! One layer of the training step, with the kernel or GEMM for each line (`W` is `[out, in]`, so
//! every forward GEMM is `y = x W^T`: cuBLASLt with A = W transposed, column-major view):
//!
//! ```text
//! forward                                         backward (reverse order)
//! xn1  = rmsnorm(x)               rmsnorm_forward   dx  += rmsnorm_bwd(dxn1)   rmsnorm_backward
//! qkv  = xn1 Wqkv^T               cuBLASLt          dxn1 = dqkv Wqkv; dWqkv += dqkv^T xn1  (2 GEMMs)
//! qkv  = rope(qkv)                rope              dqkv = rope^-1(dqkv)       rope (inverse)
//! att  = attention(qkv)           attention_forward dqkv = attn_bwd(datt)      attention_backward
//! xmid = x + att Wout^T           cuBLASLt +        datt = dx Wout; dWout += dx^T att     (2 GEMMs)
//! xn2  = rmsnorm(xmid)            fused_residual_rmsnorm_forward   (dres accumulates in place)
//! h    = relu(xn2 Wup^T)          cuBLASLt (+RELU epilogue, or relu_forward)
//!                                                   dh = (dx Wdown) * (h > 0)  GEMM + relu_backward
//! x'   = xmid + h Wdown^T         cuBLASLt (beta=1 into a copy of xmid, or the fused residual)
//! ```
//!
//! Then `rmsnorm` (final), `logits = xf Whead^T` (cuBLASLt), [`classifier_forward_backward`]
//! (dlogits in place), `dxf = dlogits Whead` and `dWhead += dlogits^T xf` (cuBLASLt), and at the
//! bottom [`embed_backward`]. Weight-gradient GEMMs take bf16 A/B and accumulate into fp32 C with
//! beta = 1, which cudarc's `Matmul` trait cannot express (one dtype for A, B and C): use
//! `cudarc::cublaslt::result` with cached descriptors and algorithms per shape.

use super::loader::{Bf16, GpuFloat, GpuKernels};
use super::Entry;
use crate::backend::cpu::adamw::AdamWStep;
use crate::backend::cpu::attention::AttnShape;
use anyhow::{anyhow, bail, ensure, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// Attention head width (the kernels are written for exactly this).
pub const HEAD_DIM: usize = 64;
/// Rows per block in the RMSNorm backward (also the CPU twin's reduction chunk).
pub const NORM_ROWS_PER_CHUNK: usize = 256;
/// Fixed stage-1 grid of the global norm; the partial buffer holds exactly this many f64.
pub const GLOBAL_NORM_BLOCKS: usize = 264;

fn int(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| anyhow!("{what} = {x} does not fit the kernel's int argument"))
}

fn need(len: usize, want: usize, what: &str) -> Result<()> {
    ensure!(
        len >= want,
        "{what}: the buffer holds {len} elements, the shape needs {want}"
    );
    Ok(())
}

/// `ceil(n / block)` blocks of `block` threads (1D); the kernels using it are grid-stride loops
/// or guard `idx < n`, so the cap at 2^31 - 1 blocks is always correct.
fn grid_1d(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            n.div_ceil(block as usize).clamp(1, i32::MAX as usize) as u32,
            1,
            1,
        ),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check_heads(d: usize) -> Result<usize> {
    ensure!(
        d > 0 && d % HEAD_DIM == 0,
        "d = {d} is not a positive multiple of the head width {HEAD_DIM}"
    );
    Ok(d / HEAD_DIM)
}

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

// ---------------------------------------------------------------------------------------------
// embed.cu

/// `out[n, d] = table[tokens[n]]`. Grid: ceil(n * d / 256) blocks of 256, a thread per element.
pub fn embed_forward<T: GpuFloat>(
    k: &GpuKernels,
    out: &mut impl DevicePtrMut<T>,
    table: &impl DevicePtr<T>,
    tokens: &impl DevicePtr<u32>,
    n: usize,
    d: usize,
) -> Result<()> {
    need(out.len(), n * d, "embed out")?;
    need(tokens.len(), n, "tokens")?;
    ensure!(
        d > 0 && table.len() % d == 0,
        "embedding table of {} is not [V, {d}]",
        table.len()
    );
    if n == 0 {
        return Ok(());
    }
    let (ni, di) = (int(n, "n")?, int(d, "d")?);
    int(n * d, "n * d")?;
    let s = k.stream();
    let (p_out, _g0) = out.device_ptr_mut(s);
    let (p_tab, _g1) = table.device_ptr(s);
    let (p_tok, _g2) = tokens.device_ptr(s);
    let mut b =
        s.launch_builder(k.function(T::pick(Entry::embed_forward_f32, Entry::embed_forward_bf16)));
    b.arg(&p_out).arg(&p_tab).arg(&p_tok).arg(&ni).arg(&di);
    unsafe { b.launch(grid_1d(n * d, 256)) }?;
    Ok(())
}

/// Host-side bucketing of positions by token for [`embed_backward`] (a counting sort, as the CPU
/// twin does): upload the three arrays, then launch with `num_buckets()` blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedBackwardPlan {
    /// Positions grouped by bucket, ascending within each bucket.
    pub order: Vec<i32>,
    /// `num_buckets + 1` offsets into `order`.
    pub bucket_start: Vec<i32>,
    /// The table row of each bucket (0 for empty padding buckets).
    pub bucket_token: Vec<i32>,
}

impl EmbedBackwardPlan {
    /// The bucket count that fits every batch of `n` positions over `vocab` tokens: a fixed
    /// launch shape (for CUDA graphs) whatever the batch holds.
    pub fn max_buckets(n: usize, vocab: usize) -> usize {
        n.min(vocab).max(1)
    }

    /// Buckets `tokens`, largest bucket first (ties by token id), padded with empty buckets to
    /// `num_buckets`. Errors if a token is `>= vocab` or there are more distinct tokens than
    /// `num_buckets`.
    pub fn new(tokens: &[u32], vocab: usize, num_buckets: usize) -> Result<Self> {
        int(tokens.len(), "positions")?;
        let mut count = vec![0u32; vocab];
        for &t in tokens {
            ensure!(
                (t as usize) < vocab,
                "token {t} out of range for vocab {vocab}"
            );
            count[t as usize] += 1;
        }
        let mut used: Vec<u32> = (0..vocab as u32)
            .filter(|&t| count[t as usize] > 0)
            .collect();
        ensure!(
            used.len() <= num_buckets,
            "{} distinct tokens do not fit {num_buckets} buckets",
            used.len()
        );
        used.sort_by(|&a, &b| count[b as usize].cmp(&count[a as usize]).then(a.cmp(&b)));
        // Offsets per token in bucket order, then a stable scatter keeps positions ascending.
        let mut next = vec![0i32; vocab];
        let mut bucket_start = Vec::with_capacity(num_buckets + 1);
        let mut bucket_token = Vec::with_capacity(num_buckets);
        let mut off = 0i32;
        for &t in &used {
            bucket_start.push(off);
            bucket_token.push(t as i32);
            next[t as usize] = off;
            off += count[t as usize] as i32;
        }
        while bucket_token.len() < num_buckets {
            bucket_start.push(off);
            bucket_token.push(0);
        }
        bucket_start.push(off);
        let mut order = vec![0i32; tokens.len()];
        for (n, &t) in tokens.iter().enumerate() {
            order[next[t as usize] as usize] = n as i32;
            next[t as usize] += 1;
        }
        Ok(EmbedBackwardPlan {
            order,
            bucket_start,
            bucket_token,
        })
    }

    pub fn num_buckets(&self) -> usize {
        self.bucket_token.len()
    }
}

/// `dtable[t] += sum of dout[n] over positions n with token t` (ascending n; deterministic, no
/// atomics). `order`, `bucket_start`, `bucket_token` are an [`EmbedBackwardPlan`] on the device.
/// Grid: `num_buckets` blocks of 256 threads (a block per table row, threads over channels).
#[allow(clippy::too_many_arguments)]
pub fn embed_backward<T: GpuFloat>(
    k: &GpuKernels,
    dtable: &mut impl DevicePtrMut<f32>,
    dout: &impl DevicePtr<T>,
    order: &impl DevicePtr<i32>,
    bucket_start: &impl DevicePtr<i32>,
    bucket_token: &impl DevicePtr<i32>,
    num_buckets: usize,
    d: usize,
) -> Result<()> {
    need(bucket_start.len(), num_buckets + 1, "bucket_start")?;
    need(bucket_token.len(), num_buckets, "bucket_token")?;
    need(dout.len(), order.len() * d, "embed dout")?;
    ensure!(
        d > 0 && dtable.len() % d == 0,
        "dtable of {} is not [V, {d}]",
        dtable.len()
    );
    if num_buckets == 0 {
        return Ok(());
    }
    let di = int(d, "d")?;
    int(num_buckets, "num_buckets")?;
    let s = k.stream();
    let (p_dt, _g0) = dtable.device_ptr_mut(s);
    let (p_dout, _g1) = dout.device_ptr(s);
    let (p_ord, _g2) = order.device_ptr(s);
    let (p_start, _g3) = bucket_start.device_ptr(s);
    let (p_tok, _g4) = bucket_token.device_ptr(s);
    let mut b = s.launch_builder(k.function(T::pick(
        Entry::embed_backward_f32,
        Entry::embed_backward_bf16,
    )));
    b.arg(&p_dt)
        .arg(&p_dout)
        .arg(&p_ord)
        .arg(&p_start)
        .arg(&p_tok)
        .arg(&di);
    let cfg = LaunchConfig {
        grid_dim: (num_buckets as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { b.launch(cfg) }?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// norm.cu

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
    n.div_ceil(NORM_ROWS_PER_CHUNK) * d
}

/// Backward of [`rmsnorm_forward`]: `dinp += dL/dx` and `dgain += sum_rows dout * x * rstd`
/// (deterministic two-stage reduction through `scratch`, see [`rmsnorm_backward_scratch_len`]).
///
/// Grid: stage 1 ceil(n / 256) blocks of 32 W threads, W = clamp(8192 / d, 1, 8), with W d 4
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
    let chunks = n.div_ceil(NORM_ROWS_PER_CHUNK);
    let (chunks_i, rows_i) = (int(chunks, "chunks")?, NORM_ROWS_PER_CHUNK as i32);
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

// ---------------------------------------------------------------------------------------------
// rope.cu

/// Rotates q and k of `qkv[n, 3d]` in place (row r is position r % seq); `inverse` is the
/// backward. `cos`, `sin`: `[seq, 32]` device copies of `RopeTables`.
/// Grid: ceil(n * d / 256) blocks of 256, a thread per rotated pair.
#[allow(clippy::too_many_arguments)]
pub fn rope<T: GpuFloat>(
    k: &GpuKernels,
    qkv: &mut impl DevicePtrMut<T>,
    cos: &impl DevicePtr<f32>,
    sin: &impl DevicePtr<f32>,
    n: usize,
    seq: usize,
    d: usize,
    inverse: bool,
) -> Result<()> {
    check_heads(d)?;
    need(qkv.len(), n * 3 * d, "qkv")?;
    need(cos.len(), seq * HEAD_DIM / 2, "rope cos")?;
    need(sin.len(), seq * HEAD_DIM / 2, "rope sin")?;
    ensure!(seq > 0, "rope: seq = 0");
    if n == 0 {
        return Ok(());
    }
    let (ni, seqi, di) = (int(n, "n")?, int(seq, "seq")?, int(d, "d")?);
    int(n * d, "n * d")?;
    let inv = inverse as i32;
    let s = k.stream();
    let (p_qkv, _g0) = qkv.device_ptr_mut(s);
    let (p_cos, _g1) = cos.device_ptr(s);
    let (p_sin, _g2) = sin.device_ptr(s);
    let mut b = s.launch_builder(k.function(T::pick(Entry::rope_f32, Entry::rope_bf16)));
    b.arg(&p_qkv)
        .arg(&p_cos)
        .arg(&p_sin)
        .arg(&ni)
        .arg(&seqi)
        .arg(&di)
        .arg(&inv);
    unsafe { b.launch(grid_1d(n * d, 256)) }?;
    Ok(())
}

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

/// Causal attention: `out[B*T, d]` and `lse[B, H, T]` from `qkv[B*T, 3d]` on the given kernels
/// (training passes [`AttnKernels::for_storage`]). Grid: (ceil(T / 64), H, B) blocks of 64
/// threads (CUDA cores: a thread per query) or 128 (tensor cores: a warp per 16 queries).
pub fn attention_forward<T: GpuFloat>(
    k: &GpuKernels,
    kernels: AttnKernels,
    out: &mut impl DevicePtrMut<T>,
    lse: &mut impl DevicePtrMut<f32>,
    qkv: &impl DevicePtr<T>,
    sh: AttnShape,
) -> Result<()> {
    let (bi, ti, hi, cfg) = attn_dims(sh, kernels)?;
    let (n, d) = (sh.batch * sh.seq, sh.heads * HEAD_DIM);
    need(out.len(), n * d, "attention out")?;
    need(lse.len(), sh.batch * sh.heads * sh.seq, "attention lse")?;
    need(qkv.len(), n * 3 * d, "attention qkv")?;
    let s = k.stream();
    let (p_out, _g0) = out.device_ptr_mut(s);
    let (p_lse, _g1) = lse.device_ptr_mut(s);
    let (p_qkv, _g2) = qkv.device_ptr(s);
    kernels.check::<T>(&[p_out, p_qkv])?;
    let mut b = s.launch_builder(k.function(kernels.entry::<T>(
        Entry::attention_forward_f32,
        Entry::attention_forward_bf16,
        Entry::attention_forward_tc_bf16,
    )));
    b.arg(&p_out)
        .arg(&p_lse)
        .arg(&p_qkv)
        .arg(&bi)
        .arg(&ti)
        .arg(&hi);
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Backward of [`attention_forward`] on the given kernels: overwrites `dqkv[B*T, 3d]`. `delta`
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
    let s = k.stream();
    let (p_dqkv, _g0) = dqkv.device_ptr_mut(s);
    let (p_delta, _g1) = delta.device_ptr_mut(s);
    let (p_dout, _g2) = dout.device_ptr(s);
    let (p_out, _g3) = out.device_ptr(s);
    let (p_lse, _g4) = lse.device_ptr(s);
    let (p_qkv, _g5) = qkv.device_ptr(s);
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
            .arg(&bi)
            .arg(&ti)
            .arg(&hi);
        unsafe { b.launch(cfg) }?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// classifier.cu

/// Per row of `logits[n, v]`: `ce[row] = lse - logit[target]`, `lse[row]`; when `dscale != 0`,
/// overwrites the row with `dscale * ((1 + 2 z_loss lse) softmax - onehot(target))`.
/// `dscale = 1 / rows_total` when training, 0 for evaluation.
/// Grid: n blocks (a block per row) of 1024 threads when v >= 8192, else 256.
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
    let mut b = s.launch_builder(k.function(T::pick(
        Entry::classifier_forward_backward_f32,
        Entry::classifier_forward_backward_bf16,
    )));
    b.arg(&p_log)
        .arg(&p_ce)
        .arg(&p_lse)
        .arg(&p_tgt)
        .arg(&ni)
        .arg(&vi)
        .arg(&z_loss)
        .arg(&dscale);
    let cfg = LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (if v >= 8192 { 1024 } else { 256 }, 1, 1),
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn embed_plan_buckets_like_the_cpu_twin() {
        let tokens = [3u32, 1, 3, 0, 3, 1, 7];
        let p = EmbedBackwardPlan::new(&tokens, 8, EmbedBackwardPlan::max_buckets(7, 8)).unwrap();
        assert_eq!(p.num_buckets(), 7);
        // largest first: token 3 (3 positions), then 1 (2), then 0 and 7 (1 each, by id)
        assert_eq!(&p.bucket_token[..4], &[3, 1, 0, 7]);
        assert_eq!(&p.bucket_start[..5], &[0, 3, 5, 6, 7]);
        assert!(
            p.bucket_start[4..].iter().all(|&s| s == 7),
            "padding is empty"
        );
        assert_eq!(p.order, vec![0, 2, 4, 1, 5, 3, 6]);
        assert!(
            EmbedBackwardPlan::new(&tokens, 7, 7).is_err(),
            "token 7 >= vocab 7"
        );
        assert!(
            EmbedBackwardPlan::new(&tokens, 8, 3).is_err(),
            "4 distinct > 3 buckets"
        );
    }
}
