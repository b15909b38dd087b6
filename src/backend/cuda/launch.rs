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
//! att  = attention(rope(qkv))     attention_forward dqkv = rope^-1(attn_bwd(datt)) attention_backward
//!      (the rotary inside the attention kernels: q and k rotated as loaded, dq and dk back as stored)
//! xmid = x + att Wout^T           cuBLASLt +        datt = dx Wout; dWout += dx^T att     (2 GEMMs)
//! xn2  = rmsnorm(xmid)            fused_residual_rmsnorm_forward   (dres accumulates in place)
//! h    = relu(xn2 Wup^T)          cuBLASLt (+RELU_AUX epilogue and mask, or relu_forward)
//!                                                   dh = (dx Wdown) * (h > 0)  GEMM + DRELU epilogue,
//!                                                                              or + relu_backward
//! x'   = xmid + h Wdown^T         cuBLASLt (beta=1 into a copy of xmid, or the fused residual)
//! ```
//!
//! Then `rmsnorm` (final), `logits = xf Whead^T` (cuBLASLt), [`classifier_forward_backward`]
//! (dlogits in place), `dxf = dlogits Whead` and `dWhead += dlogits^T xf` (cuBLASLt), and at the
//! bottom the embedding backward: [`embed_onehot`] and `dtable += onehot^T dres` (cuBLASLt) for a
//! vocabulary of at most [`EMBED_ONEHOT_MAX_VOCAB`], else [`embed_backward`] on host-planned buckets. Weight-gradient GEMMs take bf16 A/B and accumulate into fp32 C with
//! beta = 1, which cudarc's `Matmul` trait cannot express (one dtype for A, B and C): use
//! `cudarc::cublaslt::result` with cached descriptors and algorithms per shape.
//!
//! The launchers live in one file per op family (as llm.c's kernels do): `elementwise` (cast,
//! ReLU), `embed`, `norm`, `attention` (attention with the rotary fused in), `classifier`, `optimizer` (global
//! norm, AdamW), `step_stats` (the step's metrics kept on the device); every one is re-exported here. The checks and grid helpers they share are below.

mod attention;
mod classifier;
mod elementwise;
mod embed;
mod norm;
mod optimizer;
mod step_stats;

pub use attention::{attention_backward, attention_forward, AttnKernels};
pub use classifier::{classifier_forward_backward, loss_sums};
pub use elementwise::{
    cast_bf16_to_f32, cast_f32_to_bf16, relu_backward, relu_forward, relu_forward_inplace,
};
pub use embed::{
    embed_backward, embed_forward, embed_onehot, embed_onehot_fits, EmbedBackwardPlan,
    EMBED_ONEHOT_MAX_VOCAB,
};
pub use norm::{
    fused_residual_rmsnorm_forward, norm_rows_per_chunk, rmsnorm_backward,
    rmsnorm_backward_scratch_len, rmsnorm_forward,
};
pub use optimizer::{
    adamw, adamw_dev, global_norm_finish, global_norm_squared, GLOBAL_NORM_BLOCKS,
};
pub use step_stats::{step_stats_record, STEP_STATS_FLOATS};

use anyhow::{anyhow, ensure, Result};
use cudarc::driver::LaunchConfig;

/// Attention head width: the contract's, which the kernels are written for exactly.
pub use crate::numerics::HEAD_DIM;

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
