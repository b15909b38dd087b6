//! `terse bench kernels`: every training kernel and GEMM at one preset's shapes, each timed with
//! CUDA events (median of `reps` launches after one warm-up), with the bytes it moves or the
//! FLOPs it does, and the fraction of the device's measured ceiling that achieves.
//!
//! Ceilings are the H100 figures measured for this project: a copy kernel moves
//! 2.85 TB/s (read + write), cuBLASLt bf16 reaches 805 TFLOP/s at 8192^3. On another GPU the
//! percentages are relative to those H100 numbers (the report says which GPU ran).
//!
//! Byte counts are the minimum traffic (each input read once, each output written once); FLOP
//! counts are `2 m n k` for GEMMs and, for causal attention, half the dense `4 B H T^2 64`
//! (forward) and 2.5 times the forward (backward).
//!
//! Not yet run on a GPU: written on a machine without one and run only on the CUDA emulator
//! (`emu/`), whose times mean nothing.

use super::gemm::Gemm;
use super::launch::{self, EmbedBackwardPlan};
use super::loader::{gpu_unavailable_reason, Bf16, GpuFloat, GpuKernels};
use crate::backend::cpu::attention::AttnShape;
use crate::model::ModelConfig;
use crate::numerics::RopeTables;
use crate::rng::Rng;
use anyhow::{bail, Result};
use cudarc::driver::{sys, CudaSlice};
use serde::Serialize;

/// Measured H100 copy bandwidth, bytes/s (read + write).
pub const COPY_CEILING_BYTES_PER_S: f64 = 2.85e12;
/// Measured H100 cuBLASLt bf16 GEMM throughput at 8192^3, FLOP/s.
pub const GEMM_CEILING_FLOPS: f64 = 805e12;

/// One timed kernel.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTiming {
    pub kernel: String,
    /// The shape it ran at, in words.
    pub shape: String,
    /// Median over the timed launches, milliseconds.
    pub ms: f64,
    pub bytes: f64,
    pub flops: f64,
    pub gb_per_s: f64,
    pub tflop_per_s: f64,
    /// `"memory"` (compared with the copy ceiling) or `"compute"` (with the GEMM ceiling).
    pub bound: &'static str,
    /// Percent of the relevant ceiling.
    pub pct_of_ceiling: f64,
}

/// Everything `terse bench kernels` reports.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub device: String,
    pub preset: String,
    pub vocab: usize,
    pub batch: usize,
    pub seq: usize,
    pub reps: usize,
    pub copy_ceiling_tb_per_s: f64,
    pub gemm_ceiling_tflop_per_s: f64,
    pub kernels: Vec<KernelTiming>,
}

struct Timer {
    k: GpuKernels,
    reps: usize,
    out: Vec<KernelTiming>,
}

impl Timer {
    /// Runs `f` once to warm up, then `reps` times between two events each; records the median.
    fn time(
        &mut self,
        kernel: &str,
        shape: String,
        bytes: f64,
        flops: f64,
        mut f: impl FnMut(&GpuKernels) -> Result<()>,
    ) -> Result<()> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let ctx = self.k.context().clone();
        let (start, end) = (ctx.new_event(flags)?, ctx.new_event(flags)?);
        f(&self.k)?;
        self.k.synchronize()?;
        let mut ms = Vec::with_capacity(self.reps);
        for _ in 0..self.reps {
            start.record(self.k.stream())?;
            f(&self.k)?;
            end.record(self.k.stream())?;
            ms.push(start.elapsed_ms(&end)? as f64);
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let med = ms[ms.len() / 2];
        let s = med / 1e3;
        let compute = flops > 0.0;
        let (gbps, tflops) = (bytes / s / 1e9, flops / s / 1e12);
        self.out.push(KernelTiming {
            kernel: kernel.to_string(),
            shape,
            ms: med,
            bytes,
            flops,
            gb_per_s: gbps,
            tflop_per_s: tflops,
            bound: if compute { "compute" } else { "memory" },
            pct_of_ceiling: if compute {
                100.0 * flops / s / GEMM_CEILING_FLOPS
            } else {
                100.0 * bytes / s / COPY_CEILING_BYTES_PER_S
            },
        });
        Ok(())
    }
}

/// A device buffer of `n` values: one block of up to 2^20 seeded normals (times `scale`) tiled
/// over the buffer (the figures do not depend on the values; generating gigabytes on the host
/// would take longer than the benchmark).
fn rand_dev<T: GpuFloat>(
    k: &GpuKernels,
    r: &mut Rng,
    n: usize,
    scale: f32,
) -> Result<CudaSlice<T>> {
    let n = n.max(1);
    let block = n.min(1 << 20);
    let host: Vec<T> = (0..block)
        .map(|_| T::from_f32(r.normal() as f32 * scale))
        .collect();
    let s = k.stream();
    let mut d = s.alloc_zeros::<T>(n)?;
    let mut off = 0;
    while off < n {
        let len = block.min(n - off);
        s.memcpy_htod(&host[..len], &mut d.slice_mut(off..off + len))?;
        off += len;
    }
    Ok(d)
}

/// Times every kernel of a bf16 training step at `cfg`'s shapes for a `batch x seq` step.
/// Errors (with the reason) where no GPU is usable.
pub fn bench_kernels(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    reps: usize,
) -> Result<KernelReport> {
    if let Some(reason) = gpu_unavailable_reason() {
        bail!("bench kernels needs a GPU: {reason}");
    }
    if batch == 0 || seq == 0 || reps == 0 {
        bail!("--batch, --seq and --reps must be positive");
    }
    let k = GpuKernels::new(0)?;
    let device = k.device_name().to_string();
    let mut g = Gemm::new(k.stream().clone())?;
    let mut t = Timer {
        k,
        reps,
        out: Vec::new(),
    };
    let mut r = Rng::new(5);
    let (n, d, ff, v, h) = (batch * seq, cfg.d_model, cfg.d_ff, cfg.vocab, cfg.n_heads);
    let total = cfg.total_params();
    let b2 = 2.0; // bytes per bf16
    type B = Bf16;

    let kk = &t.k;
    let tokens: Vec<u32> = (0..n).map(|_| r.below(v as u64) as u32).collect();
    let d_tokens = kk.stream().clone_htod(&tokens)?;
    let table = rand_dev::<B>(kk, &mut r, v * d, 0.02)?;
    let mut x = rand_dev::<B>(kk, &mut r, n * d, 1.0)?;
    let mut y = rand_dev::<B>(kk, &mut r, n * d, 1.0)?;
    let mut res = rand_dev::<B>(kk, &mut r, n * d, 1.0)?;
    let gain = rand_dev::<B>(kk, &mut r, d, 1.0)?;
    let mut rstd = rand_dev::<f32>(kk, &mut r, n, 1.0)?;
    let mut qkv = rand_dev::<B>(kk, &mut r, n * 3 * d, 0.5)?;
    let mut dqkv = rand_dev::<B>(kk, &mut r, n * 3 * d, 0.5)?;
    let mut hbuf = rand_dev::<B>(kk, &mut r, n * ff, 1.0)?;
    let mut dh = rand_dev::<B>(kk, &mut r, n * ff, 1.0)?;
    let w_qkv = rand_dev::<B>(kk, &mut r, 3 * d * d, 0.02)?;
    let w_up = rand_dev::<B>(kk, &mut r, ff * d, 0.02)?;
    let w_down = rand_dev::<B>(kk, &mut r, d * ff, 0.02)?;
    let w_head = rand_dev::<B>(kk, &mut r, v * d, 0.02)?;
    let mut logits = rand_dev::<B>(kk, &mut r, n * v, 1.0)?;
    let mut dw = rand_dev::<f32>(kk, &mut r, (v * d).max(ff * d).max(3 * d * d), 0.0)?;
    let mut lse = rand_dev::<f32>(kk, &mut r, batch * h * seq, 1.0)?;
    let mut delta = rand_dev::<f32>(kk, &mut r, batch * h * seq, 1.0)?;
    let mut ce = rand_dev::<f32>(kk, &mut r, n, 1.0)?;
    let mut lse_row = rand_dev::<f32>(kk, &mut r, n, 1.0)?;
    let mut scratch = rand_dev::<f32>(kk, &mut r, launch::rmsnorm_backward_scratch_len(n, d), 0.0)?;
    let mut dgain = rand_dev::<f32>(kk, &mut r, d, 0.0)?;
    let rope = RopeTables::new(seq, cfg.rope_theta);
    let (cos, sin) = (
        kk.stream().clone_htod(&rope.cos)?,
        kk.stream().clone_htod(&rope.sin)?,
    );
    let plan = EmbedBackwardPlan::new(&tokens, v, EmbedBackwardPlan::max_buckets(n, v))?;
    let order = kk.stream().clone_htod(&plan.order)?;
    let bstart = kk.stream().clone_htod(&plan.bucket_start)?;
    let btok = kk.stream().clone_htod(&plan.bucket_token)?;
    let mut dtable = rand_dev::<f32>(kk, &mut r, v * d, 0.0)?;
    let mut master = rand_dev::<f32>(kk, &mut r, total, 0.02)?;
    let mut work = rand_dev::<B>(kk, &mut r, total, 0.02)?;
    let grads = rand_dev::<f32>(kk, &mut r, total, 1e-3)?;
    let mut m = rand_dev::<f32>(kk, &mut r, total, 1e-4)?;
    let mut vv = rand_dev::<f32>(kk, &mut r, total, 1e-4)?;
    let mut partial = kk.stream().alloc_zeros::<f64>(launch::GLOBAL_NORM_BLOCKS)?;
    let mut gn_out = kk.stream().clone_htod(&[0.0f32, 1.0])?;
    let hyper = kk.stream().clone_htod(&[1e-4f32, 0.1, 0.05])?;
    let sh = AttnShape {
        batch,
        seq,
        heads: h,
    };
    let nd = (n * d) as f64;
    let shp = |s: &str| format!("{s} (N={n})");

    t.time(
        "embed_forward",
        shp(&format!("[{v},{d}] gather")),
        2.0 * nd * b2 + 4.0 * n as f64,
        0.0,
        |k| launch::embed_forward(k, &mut x, &table, &d_tokens, n, d),
    )?;
    t.time(
        "rmsnorm_forward",
        shp(&format!("d={d}")),
        2.0 * nd * b2,
        0.0,
        |k| launch::rmsnorm_forward(k, &mut y, &mut rstd, &x, &gain, n, d, cfg.norm_eps),
    )?;
    t.time(
        "fused_residual_rmsnorm_forward",
        shp(&format!("d={d}")),
        4.0 * nd * b2,
        0.0,
        |k| {
            launch::fused_residual_rmsnorm_forward(
                k,
                &mut res,
                &mut y,
                &mut rstd,
                &x,
                &x,
                &gain,
                n,
                d,
                cfg.norm_eps,
            )
        },
    )?;
    t.time(
        "rmsnorm_backward",
        shp(&format!("d={d}")),
        4.0 * nd * b2,
        0.0,
        |k| {
            launch::rmsnorm_backward(
                k,
                &mut res,
                &mut dgain,
                &mut scratch,
                &y,
                &x,
                &gain,
                &rstd,
                n,
                d,
            )
        },
    )?;
    // GEMMs of one layer and the head
    let gemms: [(&str, usize, usize); 4] = [
        ("qkv", d, 3 * d),
        ("up", d, ff),
        ("down", ff, d),
        ("lm_head", d, v),
    ];
    for (name, din, dout) in gemms {
        let flops = 2.0 * n as f64 * din as f64 * dout as f64;
        let bytes = b2 * (n * din + din * dout + n * dout) as f64;
        let shape = format!("{n}x{din} . [{dout},{din}]^T");
        let (inp, w, out): (&CudaSlice<B>, &CudaSlice<B>, &mut CudaSlice<B>) = match name {
            "qkv" => (&x, &w_qkv, &mut qkv),
            "up" => (&x, &w_up, &mut hbuf),
            "down" => (&dh, &w_down, &mut y),
            _ => (&x, &w_head, &mut logits),
        };
        t.time(
            &format!("gemm_forward_{name}"),
            shape.clone(),
            bytes,
            flops,
            |_| g.forward(out, inp, w, None, n, din, dout),
        )?;
        // dgrad into a scratch of the input's shape; wgrad into fp32
        let mut dx = rand_dev::<B>(&t.k, &mut r, n * din, 0.0)?;
        let out_ro: &CudaSlice<B> = out;
        t.time(
            &format!("gemm_dgrad_{name}"),
            shape.clone(),
            bytes,
            flops,
            |_| g.dgrad(&mut dx, out_ro, w, n, din, dout, false),
        )?;
        let wbytes = b2 * (n * din + n * dout) as f64 + 4.0 * (din * dout) as f64;
        t.time(&format!("gemm_wgrad_{name}"), shape, wbytes, flops, |_| {
            g.wgrad(&mut dw, out_ro, inp, n, din, dout, false)
        })?;
    }
    t.time(
        "rope",
        shp(&format!("d={d}")),
        2.0 * 2.0 * nd * b2,
        0.0,
        |k| launch::rope(k, &mut qkv, &cos, &sin, n, seq, d, false),
    )?;
    let att_flops = 4.0 * (batch * h) as f64 * (seq as f64).powi(2) * 64.0 / 2.0;
    // Training's tensor-core kernels, then attention.cu's CUDA-core ones for comparison.
    for (suffix, kernels) in [
        ("", launch::AttnKernels::TensorCore),
        ("_cudacore", launch::AttnKernels::CudaCore),
    ] {
        t.time(
            &format!("attention_forward{suffix}"),
            format!("B={batch} H={h} T={seq} hd=64 causal"),
            b2 * (3.0 * nd + nd),
            att_flops,
            |k| launch::attention_forward(k, kernels, &mut y, &mut lse, &qkv, sh),
        )?;
        t.time(
            &format!("attention_backward{suffix}"),
            format!("B={batch} H={h} T={seq} hd=64 causal"),
            b2 * (3.0 * nd * 2.0 + 2.0 * nd),
            2.5 * att_flops,
            |k| {
                launch::attention_backward(
                    k, kernels, &mut dqkv, &mut delta, &x, &y, &lse, &qkv, sh,
                )
            },
        )?;
    }
    t.time(
        "relu_forward",
        shp(&format!("ff={ff}")),
        2.0 * b2 * (n * ff) as f64,
        0.0,
        |k| launch::relu_forward_inplace(k, &mut hbuf, n * ff),
    )?;
    t.time(
        "relu_backward",
        shp(&format!("ff={ff}")),
        3.0 * b2 * (n * ff) as f64,
        0.0,
        |k| launch::relu_backward(k, &mut dh, &hbuf, n * ff),
    )?;
    // The classifier overwrites logits with dlogits; timing repeated launches on the same buffer
    // is fine (the values stay finite: dlogits are small).
    t.time(
        "classifier_forward_backward",
        format!("N={n} V={v}"),
        3.0 * b2 * (n * v) as f64,
        0.0,
        |k| {
            launch::classifier_forward_backward(
                k,
                &mut logits,
                &mut ce,
                &mut lse_row,
                &d_tokens,
                n,
                v,
                cfg.z_loss,
                1.0 / n as f32,
            )
        },
    )?;
    t.time(
        "embed_backward",
        format!("N={n} V={v} d={d} ({} buckets)", plan.num_buckets()),
        nd * b2 + 2.0 * 4.0 * (v * d) as f64,
        0.0,
        |k| {
            launch::embed_backward(
                k,
                &mut dtable,
                &x,
                &order,
                &bstart,
                &btok,
                plan.num_buckets(),
                d,
            )
        },
    )?;
    t.time(
        "global_norm",
        format!("{total} fp32 grads"),
        4.0 * total as f64,
        0.0,
        |k| {
            launch::global_norm_squared(k, &mut partial, &grads, total, false)?;
            launch::global_norm_finish(k, &mut gn_out, &partial, 1.0)
        },
    )?;
    t.time(
        "adamw_dev",
        format!("{total} params, bf16 working copy"),
        (16 + 12 + 2) as f64 * total as f64,
        0.0,
        |k| {
            launch::adamw_dev(
                k,
                &mut master,
                &mut work,
                &grads,
                &mut m,
                &mut vv,
                &hyper,
                &gn_out,
                total,
                0.9,
                0.95,
                1e-8,
                0.1,
            )
        },
    )?;
    Ok(KernelReport {
        device,
        preset: cfg.preset.clone(),
        vocab: v,
        batch,
        seq,
        reps,
        copy_ceiling_tb_per_s: COPY_CEILING_BYTES_PER_S / 1e12,
        gemm_ceiling_tflop_per_s: GEMM_CEILING_FLOPS / 1e12,
        kernels: t.out,
    })
}

/// The report as an aligned text table.
pub fn format_report(r: &KernelReport) -> String {
    let mut s = format!(
        "{} on {}: {} x {} tokens, vocab {}, median of {} (ceilings: copy {:.2} TB/s, bf16 GEMM {:.0} TFLOP/s)\n",
        r.preset,
        r.device,
        r.batch,
        r.seq,
        r.vocab,
        r.reps,
        r.copy_ceiling_tb_per_s,
        r.gemm_ceiling_tflop_per_s
    );
    s += &format!(
        "{:<32} {:>10} {:>10} {:>10} {:>7}  shape\n",
        "kernel", "ms", "GB/s", "TFLOP/s", "% ceil"
    );
    for k in &r.kernels {
        s += &format!(
            "{:<32} {:>10.4} {:>10.1} {:>10.2} {:>6.1}%  {}\n",
            k.kernel, k.ms, k.gb_per_s, k.tflop_per_s, k.pct_of_ceiling, k.shape
        );
    }
    // The `_cudacore` rows are a comparison, not part of a training step.
    let total: f64 = r
        .kernels
        .iter()
        .filter(|k| !k.kernel.ends_with("_cudacore"))
        .map(|k| k.ms)
        .sum();
    s += &format!(
        "sum of medians (one of each, _cudacore rows excluded; a step runs most of them once per \
         layer): {total:.3} ms\n"
    );
    s
}
