//! `terse bench kernels`: every training kernel and GEMM at one preset's shapes, each timed with
//! CUDA events (median of `reps` launches after one warm-up), with the bytes it moves or the
//! FLOPs it does, and the fraction of the device's measured ceiling that achieves.
//!
//! What each kernel must move and do, its launches per step and its predicted time come from
//! the cost model (`cost.rs`), at the ceilings of the card that runs (`Card::for_device`; the
//! H100's for a GPU without measured ceilings, which the report names). `measure_ceilings`
//! measures a card's ceilings (`terse bench ceilings`).

use super::backend::DEFAULT_READBACK_EVERY;
use super::cost::{gemm_shapes, predicted_step_ms, step_costs, Card, KernelCost};
use super::gemm::{relu_mask_bytes, Gemm};
use super::launch::{self, EmbedBackwardPlan, STEP_STATS_FLOATS};
use super::loader::{gpu_unavailable_reason, Bf16, GpuFloat, GpuKernels};
use crate::backend::cpu::attention::AttnShape;
use crate::model::ModelConfig;
use crate::numerics::RopeTables;
use crate::rng::Rng;
use anyhow::{bail, Result};
use cudarc::driver::{sys, CudaSlice};
use serde::Serialize;

/// One timed kernel.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTiming {
    pub kernel: String,
    /// The shape it ran at, in words.
    pub shape: String,
    /// Median over the timed launches, milliseconds.
    pub ms: f64,
    /// The cost model's roofline time on the report's card, milliseconds.
    pub predicted_ms: f64,
    /// Launches per training step (0: a comparison, not part of the step).
    pub per_step: usize,
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
    /// The card whose ceilings the predictions and percentages use.
    pub card: Card,
    pub kernels: Vec<KernelTiming>,
    /// Sum over the step of launches x predicted time, milliseconds.
    pub predicted_step_ms: f64,
    /// Sum over the step of launches x measured median, milliseconds.
    pub measured_step_ms: f64,
}

struct Timer {
    k: GpuKernels,
    reps: usize,
    card: Card,
    costs: Vec<KernelCost>,
    out: Vec<KernelTiming>,
}

impl Timer {
    /// Runs `f` once to warm up, then `reps` times between two events each; records the median
    /// beside `kernel`'s cost.
    fn time(&mut self, kernel: &str, mut f: impl FnMut(&GpuKernels) -> Result<()>) -> Result<()> {
        let Some(cost) = self.costs.iter().find(|c| c.kernel == kernel).cloned() else {
            bail!("no cost model for kernel {kernel}");
        };
        let (bytes, flops, card) = (cost.bytes, cost.flops, self.card);
        let k = &self.k;
        let _range = super::nvtx::range(kernel);
        let med = median_event_ms(k, self.reps, || f(k))?;
        let s = med / 1e3;
        let compute = flops > 0.0;
        let (gbps, tflops) = (bytes / s / 1e9, flops / s / 1e12);
        self.out.push(KernelTiming {
            kernel: cost.kernel,
            shape: cost.shape,
            ms: med,
            predicted_ms: card.predicted_ms(bytes, flops),
            per_step: cost.per_step,
            bytes,
            flops,
            gb_per_s: gbps,
            tflop_per_s: tflops,
            bound: if compute { "compute" } else { "memory" },
            pct_of_ceiling: if compute {
                100.0 * flops / s / card.gemm_flops
            } else {
                100.0 * bytes / s / card.copy_bytes_per_s
            },
        });
        Ok(())
    }
}

/// Runs `f` once to warm up, then `reps` times between two CUDA events each on `k`'s stream;
/// the median in milliseconds.
fn median_event_ms(k: &GpuKernels, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let (start, end) = (k.context().new_event(flags)?, k.context().new_event(flags)?);
    f()?;
    k.synchronize()?;
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        start.record(k.stream())?;
        f()?;
        end.record(k.stream())?;
        ms.push(start.elapsed_ms(&end)? as f64);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms[ms.len() / 2])
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
    let card = Card::for_device(&device);
    let mut g = Gemm::new(k.stream().clone())?;
    let mut t = Timer {
        k,
        reps,
        card,
        costs: step_costs(cfg, batch, seq),
        out: Vec::new(),
    };
    let mut r = Rng::new(5);
    let (n, d, ff, v, h) = (batch * seq, cfg.d_model, cfg.d_ff, cfg.vocab, cfg.n_heads);
    let total = cfg.total_params();
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
    let w_out = rand_dev::<B>(kk, &mut r, d * d, 0.02)?;
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
    let onehot_fits = launch::embed_onehot_fits(v, std::mem::size_of::<B>());
    let mut onehot = rand_dev::<B>(kk, &mut r, if onehot_fits { n * v } else { 1 }, 0.0)?;
    let mut master = rand_dev::<f32>(kk, &mut r, total, 0.02)?;
    let mut work = rand_dev::<B>(kk, &mut r, total, 0.02)?;
    let grads = rand_dev::<f32>(kk, &mut r, total, 1e-3)?;
    let mut m = rand_dev::<f32>(kk, &mut r, total, 1e-4)?;
    let mut vv = rand_dev::<f32>(kk, &mut r, total, 1e-4)?;
    let mut partial = kk.stream().alloc_zeros::<f64>(launch::GLOBAL_NORM_BLOCKS)?;
    let mut gn_out = kk.stream().clone_htod(&[0.0f32, 1.0])?;
    let mut sums = kk.stream().alloc_zeros::<f64>(2)?;
    let mut ring = kk
        .stream()
        .alloc_zeros::<f32>(DEFAULT_READBACK_EVERY * STEP_STATS_FLOATS)?;
    let mut cursor = kk.stream().alloc_zeros::<u64>(1)?;
    let hyper = kk.stream().clone_htod(&[1e-4f32, 0.1, 0.05])?;
    let sh = AttnShape {
        batch,
        seq,
        heads: h,
    };
    t.time("embed_forward", |k| {
        launch::embed_forward(k, &mut x, &table, &d_tokens, n, d)
    })?;
    t.time("rmsnorm_forward", |k| {
        launch::rmsnorm_forward(k, &mut y, &mut rstd, &x, &gain, n, d, cfg.norm_eps)
    })?;
    t.time("fused_residual_rmsnorm_forward", |k| {
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
    })?;
    t.time("rmsnorm_backward", |k| {
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
    })?;
    // GEMMs of one layer and the head; the up projection's forward and the down projection's
    // dgrad carry the MLP's ReLU and its mask in their epilogues, as the step runs them
    let mask_len = relu_mask_bytes(n, ff).unwrap_or(0).max(1);
    let mut mask = t.k.stream().alloc_zeros::<u8>(mask_len)?;
    for (name, din, dout, _) in gemm_shapes(cfg) {
        let (inp, w, out): (&CudaSlice<B>, &CudaSlice<B>, &mut CudaSlice<B>) = match name {
            "qkv" => (&x, &w_qkv, &mut qkv),
            "out" => (&x, &w_out, &mut res),
            "up" => (&x, &w_up, &mut hbuf),
            "down" => (&dh, &w_down, &mut y),
            _ => (&x, &w_head, &mut logits),
        };
        t.time(&format!("gemm_forward_{name}"), |_| {
            if name == "up" && g.forward_relu_mask(out, &mut mask, inp, w, n, din, dout)? {
                return Ok(());
            }
            g.forward(out, inp, w, None, n, din, dout)
        })?;
        // dgrad into a scratch of the input's shape; wgrad into fp32
        let mut dx = rand_dev::<B>(&t.k, &mut r, n * din, 0.0)?;
        let out_ro: &CudaSlice<B> = out;
        t.time(&format!("gemm_dgrad_{name}"), |_| {
            if name == "down" && g.dgrad_relu_mask(&mut dx, &mask, out_ro, w, n, din, dout)? {
                return Ok(());
            }
            g.dgrad(&mut dx, out_ro, w, n, din, dout, false)
        })?;
        t.time(&format!("gemm_wgrad_{name}"), |_| {
            g.wgrad(&mut dw, out_ro, inp, n, din, dout, false)
        })?;
    }
    // Training's tensor-core kernels, then attention.cu's CUDA-core ones for comparison.
    for (suffix, kernels) in [
        ("", launch::AttnKernels::TensorCore),
        ("_cudacore", launch::AttnKernels::CudaCore),
    ] {
        t.time(&format!("attention_forward{suffix}"), |k| {
            launch::attention_forward(k, kernels, &mut y, &mut lse, &qkv, &cos, &sin, sh)
        })?;
        t.time(&format!("attention_backward{suffix}"), |k| {
            launch::attention_backward(
                k, kernels, &mut dqkv, &mut delta, &x, &y, &lse, &qkv, &cos, &sin, sh,
            )
        })?;
    }
    t.time("relu_forward", |k| {
        launch::relu_forward_inplace(k, &mut hbuf, n * ff)
    })?;
    t.time("relu_backward", |k| {
        launch::relu_backward(k, &mut dh, &hbuf, n * ff)
    })?;
    // The classifier overwrites logits with dlogits; timing repeated launches on the same buffer
    // is fine (the values stay finite: dlogits are small).
    t.time("classifier_forward_backward", |k| {
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
    })?;
    t.time("loss_sums", |k| {
        launch::loss_sums(k, &mut sums, &ce, &lse_row, n)
    })?;
    t.time("embed_backward", |k| {
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
    })?;
    if onehot_fits {
        t.time("embed_onehot", |k| {
            launch::embed_onehot(k, &mut onehot, &d_tokens, n, v)
        })?;
        t.time("gemm_wgrad_embed", |_| {
            g.wgrad(&mut dtable, &onehot, &x, n, d, v, true)
        })?;
    }
    t.time("global_norm", |k| {
        launch::global_norm_squared(k, &mut partial, &grads, total, false)?;
        launch::global_norm_finish(k, &mut gn_out, &partial, 1.0)
    })?;
    t.time("adamw_dev", |k| {
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
    })?;
    t.time("step_stats_record", |k| {
        launch::step_stats_record(
            k,
            &mut ring,
            &mut cursor,
            &sums,
            &gn_out,
            n,
            DEFAULT_READBACK_EVERY,
        )
    })?;
    let predicted_step_ms = predicted_step_ms(&t.costs, &card);
    let measured_step_ms = t.out.iter().map(|k| k.per_step as f64 * k.ms).sum();
    Ok(KernelReport {
        device,
        preset: cfg.preset.clone(),
        vocab: v,
        batch,
        seq,
        reps,
        card,
        kernels: t.out,
        predicted_step_ms,
        measured_step_ms,
    })
}

/// A card's ceilings as measured here: a device-to-device copy of 2 GiB (read + write) and a
/// cuBLASLt bf16 GEMM at 8192^3, each the median of `reps` after one warm-up.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    pub device: String,
    pub copy_bytes_per_s: f64,
    pub gemm_flops: f64,
}

/// Measures the ceilings the cost model's [`Card`]s hold (`terse bench ceilings`).
pub fn measure_ceilings(reps: usize) -> Result<Ceilings> {
    if let Some(reason) = gpu_unavailable_reason() {
        bail!("bench ceilings needs a GPU: {reason}");
    }
    if reps == 0 {
        bail!("--reps must be positive");
    }
    let k = GpuKernels::new(0)?;
    let s = k.stream().clone();
    let words = 1usize << 29; // 2 GiB of f32
    let src = s.alloc_zeros::<f32>(words)?;
    let mut dst = s.alloc_zeros::<f32>(words)?;
    let copy_ms = median_event_ms(&k, reps, || Ok(s.memcpy_dtod(&src, &mut dst)?))?;
    drop((src, dst));
    let n = 8192;
    let mut r = Rng::new(9);
    let a = rand_dev::<Bf16>(&k, &mut r, n * n, 1.0)?;
    let w = rand_dev::<Bf16>(&k, &mut r, n * n, 0.01)?;
    let mut out = rand_dev::<Bf16>(&k, &mut r, n * n, 0.0)?;
    let mut g = Gemm::new(s.clone())?;
    let gemm_ms = median_event_ms(&k, reps, || g.forward(&mut out, &a, &w, None, n, n, n))?;
    Ok(Ceilings {
        device: k.device_name().to_string(),
        copy_bytes_per_s: 2.0 * 4.0 * words as f64 / (copy_ms / 1e3),
        gemm_flops: 2.0 * (n as f64).powi(3) / (gemm_ms / 1e3),
    })
}

/// The report as an aligned text table: each kernel's measured median beside the cost model's
/// prediction, then the step's measured and predicted sums.
pub fn format_report(r: &KernelReport) -> String {
    let mut s = format!(
        "{} on {}: {} x {} tokens, vocab {}, median of {} (predictions and % at the {}'s ceilings: copy {:.2} TB/s, bf16 GEMM {:.0} TFLOP/s)\n",
        r.preset,
        r.device,
        r.batch,
        r.seq,
        r.vocab,
        r.reps,
        r.card.name,
        r.card.copy_bytes_per_s / 1e12,
        r.card.gemm_flops / 1e12
    );
    s += &format!(
        "{:<32} {:>9} {:>9} {:>6} {:>9} {:>8} {:>7}  shape\n",
        "kernel", "ms", "pred ms", "/step", "GB/s", "TFLOP/s", "% ceil"
    );
    for k in &r.kernels {
        s += &format!(
            "{:<32} {:>9.4} {:>9.4} {:>6} {:>9.1} {:>8.2} {:>6.1}%  {}\n",
            k.kernel,
            k.ms,
            k.predicted_ms,
            k.per_step,
            k.gb_per_s,
            k.tflop_per_s,
            k.pct_of_ceiling,
            k.shape
        );
    }
    s += &format!(
        "one step (launches x median, /step 0 rows excluded): measured {:.3} ms, predicted floor {:.3} ms\n",
        r.measured_step_ms, r.predicted_step_ms
    );
    s
}
