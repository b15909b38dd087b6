//! GPU parity: every CUDA kernel against its CPU twin (`terse::backend::cpu`) on fresh random
//! inputs, for both storage types: f32 within 1e-4 relative, bf16 within 1e-2 relative.
//!
//! Each GPU output buffer that the kernel only writes is filled with NaN before the launch, so an
//! element the kernel forgets to write fails the comparison. In-place and accumulating outputs
//! start from random values, so the accumulation itself is checked. bf16 cases round the inputs
//! to bf16 first and give the CPU twin those same (exactly representable) values.
//!
//! Relative error of an element is `|gpu - cpu| / max(|cpu|, rms(cpu))`: plain relative error for
//! typical and large values, error relative to the tensor's scale for values near zero (where a
//! different but equally valid summation order dominates).
//!
//! Without a GPU (no libcuda, no device, or a binary built without nvcc) every test prints
//! `SKIPPED (no GPU): <test>: <reason>` straight to stderr (visible without `--nocapture`) and
//! passes. With a GPU, a failure to load the kernels is a test failure, not a skip.

use cudarc::driver::CudaSlice;
use std::io::Write;
use terse::backend::cpu;
use terse::backend::cpu::attention::AttnShape;
use terse::backend::cuda::launch::{self, EmbedBackwardPlan, GLOBAL_NORM_BLOCKS};
use terse::backend::cuda::{self, Bf16, GpuFloat, GpuKernels, KernelSource};
use terse::rng::Rng;

const TOL_F32: f32 = 1e-4;
const TOL_BF16: f32 = 1e-2;

// ---------------------------------------------------------------------------------------------
// harness

/// Written to the process's stderr directly, past the test harness's output capture.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The kernels on GPU 0, or `None` after printing why this test is skipped.
fn gpu(test: &str) -> Option<GpuKernels> {
    if let Some(reason) = cuda::gpu_unavailable_reason() {
        note(&format!("SKIPPED (no GPU): {test}: {reason}"));
        return None;
    }
    let k = GpuKernels::new(0).unwrap_or_else(|e| {
        panic!("{test}: a GPU is present but the kernels failed to load: {e:#}")
    });
    note(&format!(
        "{test}: running on {} (sm_{}{}, {:?})",
        k.device_name(),
        k.compute_capability().0,
        k.compute_capability().1,
        k.source()
    ));
    Some(k)
}

fn tol<T: GpuFloat>() -> f32 {
    if T::SUFFIX == "f32" {
        TOL_F32
    } else {
        TOL_BF16
    }
}

fn randn(r: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.normal() as f32 * scale).collect()
}

/// The values `T` can hold: identity for f32, round-to-nearest-even bf16 for Bf16.
fn quant<T: GpuFloat>(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| T::from_f32(v).to_f32()).collect()
}

fn up<T: GpuFloat>(k: &GpuKernels, x: &[f32]) -> CudaSlice<T> {
    let host: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    k.stream().clone_htod(&host).expect("upload")
}

fn up_raw<T: cudarc::driver::DeviceRepr>(k: &GpuKernels, x: &[T]) -> CudaSlice<T> {
    k.stream().clone_htod(x).expect("upload")
}

/// A device buffer of `n` NaNs (poison: any element the kernel does not write stays NaN).
fn poison<T: GpuFloat>(k: &GpuKernels, n: usize) -> CudaSlice<T> {
    up::<T>(k, &vec![f32::NAN; n])
}

fn down<T: GpuFloat>(k: &GpuKernels, x: &CudaSlice<T>) -> Vec<f32> {
    let host: Vec<T> = k.stream().clone_dtoh(x).expect("download");
    host.into_iter().map(|v| v.to_f32()).collect()
}

fn down_raw<T: cudarc::driver::DeviceRepr>(k: &GpuKernels, x: &CudaSlice<T>) -> Vec<T> {
    k.stream().clone_dtoh(x).expect("download")
}

/// Asserts every element is within `tol` (relative, see the file header); prints the worst.
fn compare(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let n = want.len().max(1);
    let rms = (want.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / n as f64).sqrt();
    let floor = (rms as f32).max(f32::MIN_POSITIVE);
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(floor);
        if err.is_nan() || err > tol {
            panic!(
                "{what}: element {i}: gpu {g} vs cpu {w} (relative error {err:e} > {tol:e}; \
                 tensor rms {rms:e})"
            );
        }
        if err > worst.1 {
            worst = (i, err);
        }
    }
    note(&format!(
        "  {what}: {} values, max relative error {:.2e} at {} (tol {tol:e})",
        want.len(),
        worst.1,
        worst.0
    ));
}

// ---------------------------------------------------------------------------------------------
// cast

#[test]
fn cast_matches_host_rounding() {
    let Some(k) = gpu("cast") else { return };
    let mut r = Rng::new(1);
    let mut x = randn(&mut r, 100_003, 3.0);
    x[..6].copy_from_slice(&[0.0, -0.0, 1e-40, f32::INFINITY, -f32::INFINITY, 65504.0]);
    let dx = up_raw(&k, &x);
    let mut d16 = up_raw(&k, &vec![Bf16(0x7fc1); x.len()]);
    launch::cast_f32_to_bf16(&k, &mut d16, &dx, x.len()).unwrap();
    let got16 = down_raw(&k, &d16);
    for (i, (&g, &v)) in got16.iter().zip(&x).enumerate() {
        // bit-exact, except that the device may flush a subnormal input to zero
        let want = Bf16::from_f32(v);
        assert!(
            g == want || (v.abs() < f32::MIN_POSITIVE && g.to_f32() == 0.0),
            "cast f32->bf16 [{i}]: {v} -> {:#06x}, host {:#06x}",
            g.0,
            want.0
        );
    }
    let mut back = poison::<f32>(&k, x.len());
    launch::cast_bf16_to_f32(&k, &mut back, &d16, x.len()).unwrap();
    let back = down(&k, &back);
    for (i, (&b, &g)) in back.iter().zip(&got16).enumerate() {
        assert_eq!(b.to_bits(), g.to_f32().to_bits(), "cast bf16->f32 [{i}]");
    }
    note("  cast: bit-exact both ways");
}

// ---------------------------------------------------------------------------------------------
// relu

fn relu_case<T: GpuFloat>(k: &GpuKernels) {
    let mut r = Rng::new(2);
    let n = 70_001;
    let x = quant::<T>(&randn(&mut r, n, 1.0));
    let want: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
    let dx = up::<T>(k, &x);
    let mut out = poison::<T>(k, n);
    launch::relu_forward::<T>(k, &mut out, &dx, n).unwrap();
    compare(
        &format!("relu forward {}", T::SUFFIX),
        &down(k, &out),
        &want,
        tol::<T>(),
    );

    let mut inplace = up::<T>(k, &x);
    launch::relu_forward_inplace::<T>(k, &mut inplace, n).unwrap();
    compare(
        &format!("relu forward in place {}", T::SUFFIX),
        &down(k, &inplace),
        &want,
        0.0,
    );

    let g = quant::<T>(&randn(&mut r, n, 1.0));
    let want_g: Vec<f32> = g
        .iter()
        .zip(&want)
        .map(|(&g, &h)| if h <= 0.0 { 0.0 } else { g })
        .collect();
    let mut dg = up::<T>(k, &g);
    launch::relu_backward::<T>(k, &mut dg, &out, n).unwrap();
    compare(
        &format!("relu backward {}", T::SUFFIX),
        &down(k, &dg),
        &want_g,
        0.0,
    );
}

#[test]
fn relu_matches_cpu() {
    let Some(k) = gpu("relu") else { return };
    relu_case::<f32>(&k);
    relu_case::<Bf16>(&k);
}

// ---------------------------------------------------------------------------------------------
// embed

fn embed_case<T: GpuFloat>(k: &GpuKernels, vocab: usize, n: usize, d: usize, seed: u64) {
    let mut r = Rng::new(seed);
    let table = quant::<T>(&randn(&mut r, vocab * d, 0.5));
    // Skewed tokens: many repeats of a few ids, plus a spread over the whole vocabulary.
    let tokens: Vec<u32> = (0..n)
        .map(|_| {
            if r.below(2) == 0 {
                r.below(5.min(vocab as u64)) as u32
            } else {
                r.below(vocab as u64) as u32
            }
        })
        .collect();
    let mut want = vec![0f32; n * d];
    cpu::embed::embed_forward(&mut want, &table, &tokens, d);
    let (dtab, dtok) = (up::<T>(k, &table), up_raw(k, &tokens));
    let mut out = poison::<T>(k, n * d);
    launch::embed_forward::<T>(k, &mut out, &dtab, &dtok, n, d).unwrap();
    let what = format!("embed forward {} V{vocab} N{n} d{d}", T::SUFFIX);
    compare(&what, &down(k, &out), &want, tol::<T>());

    let dout = quant::<T>(&randn(&mut r, n * d, 1.0));
    let dtable0 = randn(&mut r, vocab * d, 0.1);
    let mut want_dt = dtable0.clone();
    cpu::embed::embed_backward(&mut want_dt, &dout, &tokens, d);
    let plan =
        EmbedBackwardPlan::new(&tokens, vocab, EmbedBackwardPlan::max_buckets(n, vocab)).unwrap();
    let (d_ord, d_start, d_tok) = (
        up_raw(k, &plan.order),
        up_raw(k, &plan.bucket_start),
        up_raw(k, &plan.bucket_token),
    );
    let mut dtable = up_raw(k, &dtable0);
    let ddout = up::<T>(k, &dout);
    launch::embed_backward::<T>(
        k,
        &mut dtable,
        &ddout,
        &d_ord,
        &d_start,
        &d_tok,
        plan.num_buckets(),
        d,
    )
    .unwrap();
    // dtable is fp32 for both storage types: the f32 tolerance applies.
    let what = format!("embed backward {} V{vocab} N{n} d{d}", T::SUFFIX);
    compare(&what, &down(k, &dtable), &want_dt, TOL_F32);
}

#[test]
fn embed_matches_cpu() {
    let Some(k) = gpu("embed") else { return };
    embed_case::<f32>(&k, 300, 500, 128, 3);
    embed_case::<Bf16>(&k, 300, 500, 128, 4);
    embed_case::<f32>(&k, 65536, 256, 64, 5);
    embed_case::<Bf16>(&k, 65536, 256, 64, 6);
}

// ---------------------------------------------------------------------------------------------
// rmsnorm

fn rmsnorm_case<T: GpuFloat>(k: &GpuKernels, n: usize, d: usize, seed: u64) {
    let eps = 1e-5f32;
    let mut r = Rng::new(seed);
    let x = quant::<T>(&randn(&mut r, n * d, 1.5));
    let g = quant::<T>(
        &randn(&mut r, d, 1.0)
            .iter()
            .map(|v| 1.0 + 0.2 * v)
            .collect::<Vec<_>>(),
    );
    let mut want = vec![0f32; n * d];
    let mut want_rstd = vec![0f32; n];
    cpu::norm::rmsnorm_forward(&mut want, &mut want_rstd, &x, &g, d, eps);
    let (dx, dg) = (up::<T>(k, &x), up::<T>(k, &g));
    let mut out = poison::<T>(k, n * d);
    let mut rstd = poison::<f32>(k, n);
    launch::rmsnorm_forward::<T>(k, &mut out, &mut rstd, &dx, &dg, n, d, eps).unwrap();
    let tag = format!("{} N{n} d{d}", T::SUFFIX);
    compare(
        &format!("rmsnorm forward out {tag}"),
        &down(k, &out),
        &want,
        tol::<T>(),
    );
    compare(
        &format!("rmsnorm forward rstd {tag}"),
        &down(k, &rstd),
        &want_rstd,
        TOL_F32,
    );

    // Backward from the CPU's rstd (the same saved statistics for both).
    let dy = quant::<T>(&randn(&mut r, n * d, 1.0));
    let dinp0 = quant::<T>(&randn(&mut r, n * d, 0.5));
    let dgain0 = randn(&mut r, d, 0.5);
    let (mut want_dinp, mut want_dgain) = (dinp0.clone(), dgain0.clone());
    cpu::norm::rmsnorm_backward(&mut want_dinp, &mut want_dgain, &dy, &x, &g, &want_rstd, d);
    let mut dinp = up::<T>(k, &dinp0);
    let mut dgain = up_raw(k, &dgain0);
    let mut scratch = poison::<f32>(k, launch::rmsnorm_backward_scratch_len(n, d));
    let (ddy, drstd) = (up::<T>(k, &dy), up_raw(k, &want_rstd));
    launch::rmsnorm_backward::<T>(
        k,
        &mut dinp,
        &mut dgain,
        &mut scratch,
        &ddy,
        &dx,
        &dg,
        &drstd,
        n,
        d,
    )
    .unwrap();
    compare(
        &format!("rmsnorm backward dx {tag}"),
        &down(k, &dinp),
        &want_dinp,
        tol::<T>(),
    );
    // dgain is fp32 but sums bf16-rounded inputs identically: f32-level agreement expected,
    // bounded by the bf16 tolerance for the bf16 case to allow for the inputs' dynamic range.
    compare(
        &format!("rmsnorm backward dgain {tag}"),
        &down(k, &dgain),
        &want_dgain,
        tol::<T>(),
    );
}

#[test]
fn rmsnorm_matches_cpu() {
    let Some(k) = gpu("rmsnorm") else { return };
    rmsnorm_case::<f32>(&k, 600, 256, 7);
    rmsnorm_case::<Bf16>(&k, 600, 256, 8);
    rmsnorm_case::<f32>(&k, 37, 96, 9);
    rmsnorm_case::<Bf16>(&k, 37, 96, 10);
    rmsnorm_case::<f32>(&k, 300, 1024, 11);
}

fn fused_residual_case<T: GpuFloat>(k: &GpuKernels, n: usize, d: usize, seed: u64) {
    let eps = 1e-5f32;
    let mut r = Rng::new(seed);
    let a = quant::<T>(&randn(&mut r, n * d, 1.0));
    let b = quant::<T>(&randn(&mut r, n * d, 1.0));
    let g = quant::<T>(
        &randn(&mut r, d, 0.3)
            .iter()
            .map(|v| 1.0 + v)
            .collect::<Vec<_>>(),
    );
    // The CPU model's sequence: xmid = x + branch; xn2 = rmsnorm(xmid).
    let xmid: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let mut want = vec![0f32; n * d];
    let mut want_rstd = vec![0f32; n];
    cpu::norm::rmsnorm_forward(&mut want, &mut want_rstd, &xmid, &g, d, eps);
    let (da, db, dg) = (up::<T>(k, &a), up::<T>(k, &b), up::<T>(k, &g));
    let mut res = poison::<T>(k, n * d);
    let mut out = poison::<T>(k, n * d);
    let mut rstd = poison::<f32>(k, n);
    launch::fused_residual_rmsnorm_forward::<T>(
        k, &mut res, &mut out, &mut rstd, &da, &db, &dg, n, d, eps,
    )
    .unwrap();
    let tag = format!("{} N{n} d{d}", T::SUFFIX);
    compare(
        &format!("fused residual sum {tag}"),
        &down(k, &res),
        &xmid,
        tol::<T>(),
    );
    compare(
        &format!("fused residual norm {tag}"),
        &down(k, &out),
        &want,
        tol::<T>(),
    );
    compare(
        &format!("fused residual rstd {tag}"),
        &down(k, &rstd),
        &want_rstd,
        tol::<T>(),
    );
}

#[test]
fn fused_residual_rmsnorm_matches_cpu() {
    let Some(k) = gpu("fused_residual_rmsnorm") else {
        return;
    };
    fused_residual_case::<f32>(&k, 300, 512, 12);
    fused_residual_case::<Bf16>(&k, 300, 512, 13);
}

// ---------------------------------------------------------------------------------------------
// rope

fn rope_case<T: GpuFloat>(k: &GpuKernels, batch: usize, seq: usize, d: usize, seed: u64) {
    let mut r = Rng::new(seed);
    let n = batch * seq;
    let tables = cpu::rope::RopeTables::new(seq, 10_000.0);
    let qkv = quant::<T>(&randn(&mut r, n * 3 * d, 1.0));
    let (dcos, dsin) = (up_raw(k, &tables.cos), up_raw(k, &tables.sin));
    for inverse in [false, true] {
        let mut want = qkv.clone();
        cpu::rope::rope_apply(&mut want, &tables, d, inverse);
        let mut dq = up::<T>(k, &qkv);
        launch::rope::<T>(k, &mut dq, &dcos, &dsin, n, seq, d, inverse).unwrap();
        let what = format!("rope {} inverse={inverse} B{batch} T{seq} d{d}", T::SUFFIX);
        compare(&what, &down(k, &dq), &want, tol::<T>());
    }
}

#[test]
fn rope_matches_cpu() {
    let Some(k) = gpu("rope") else { return };
    rope_case::<f32>(&k, 2, 50, 128, 14);
    rope_case::<Bf16>(&k, 2, 50, 128, 15);
    rope_case::<f32>(&k, 1, 1024, 256, 16);
}

// ---------------------------------------------------------------------------------------------
// attention

fn attention_case<T: GpuFloat>(k: &GpuKernels, sh: AttnShape, seed: u64) {
    let mut r = Rng::new(seed);
    let (n, d) = (sh.batch * sh.seq, sh.heads * 64);
    let rows = sh.batch * sh.heads * sh.seq;
    let qkv = quant::<T>(&randn(&mut r, n * 3 * d, 1.0));
    let mut want = vec![0f32; n * d];
    let mut want_lse = vec![0f32; rows];
    cpu::attention::attention_forward(&mut want, &mut want_lse, &qkv, sh);
    let dqkv_in = up::<T>(k, &qkv);
    let mut out = poison::<T>(k, n * d);
    let mut lse = poison::<f32>(k, rows);
    launch::attention_forward::<T>(k, &mut out, &mut lse, &dqkv_in, sh).unwrap();
    let tag = format!("{} B{} T{} H{}", T::SUFFIX, sh.batch, sh.seq, sh.heads);
    compare(
        &format!("attention forward out {tag}"),
        &down(k, &out),
        &want,
        tol::<T>(),
    );
    compare(
        &format!("attention forward lse {tag}"),
        &down(k, &lse),
        &want_lse,
        TOL_F32,
    );

    // Backward from the CPU forward's out/lse (rounded to T), the same inputs for both.
    let out_q = quant::<T>(&want);
    let dout = quant::<T>(&randn(&mut r, n * d, 1.0));
    let mut want_d = vec![0f32; n * 3 * d];
    cpu::attention::attention_backward(&mut want_d, &dout, &out_q, &want_lse, &qkv, sh);
    let (d_out, d_dout, d_lse) = (up::<T>(k, &out_q), up::<T>(k, &dout), up_raw(k, &want_lse));
    let mut dqkv = poison::<T>(k, n * 3 * d);
    let mut delta = poison::<f32>(k, rows);
    launch::attention_backward::<T>(
        k, &mut dqkv, &mut delta, &d_dout, &d_out, &d_lse, &dqkv_in, sh,
    )
    .unwrap();
    let got = down(k, &dqkv);
    for (part, name) in ["dq", "dk", "dv"].iter().enumerate() {
        let pick = |v: &[f32]| -> Vec<f32> {
            v.chunks(3 * d)
                .flat_map(|row| row[part * d..(part + 1) * d].to_vec())
                .collect()
        };
        let what = format!("attention backward {name} {tag}");
        compare(&what, &pick(&got), &pick(&want_d), tol::<T>());
    }
}

#[test]
fn attention_matches_cpu() {
    let Some(k) = gpu("attention") else { return };
    for (i, sh) in [
        AttnShape {
            batch: 2,
            seq: 77,
            heads: 2,
        },
        AttnShape {
            batch: 1,
            seq: 200,
            heads: 3,
        },
        AttnShape {
            batch: 2,
            seq: 64,
            heads: 1,
        },
        AttnShape {
            batch: 1,
            seq: 1,
            heads: 2,
        },
    ]
    .into_iter()
    .enumerate()
    {
        attention_case::<f32>(&k, sh, 20 + i as u64);
        attention_case::<Bf16>(&k, sh, 30 + i as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// classifier

/// Per-row reference of the fused classifier from given logits, in f64: (ce, lse, dlogits).
fn classifier_reference(
    logits: &[f32],
    targets: &[u32],
    v: usize,
    z_loss: f32,
    dscale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut ce, mut lse, mut dl) = (Vec::new(), Vec::new(), Vec::with_capacity(logits.len()));
    for (row, &t) in logits.chunks(v).zip(targets) {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        let l = m + s.ln();
        ce.push((l - row[t as usize] as f64) as f32);
        lse.push(l as f32);
        let coef = dscale as f64 * (1.0 + 2.0 * z_loss as f64 * l);
        for (j, &x) in row.iter().enumerate() {
            let mut g = (x as f64 - l).exp() * coef;
            if j == t as usize {
                g -= dscale as f64;
            }
            dl.push(g as f32);
        }
    }
    (ce, lse, dl)
}

fn classifier_case<T: GpuFloat>(k: &GpuKernels, n: usize, d: usize, v: usize, seed: u64) {
    let z_loss = 1e-4f32;
    let mut r = Rng::new(seed);
    let x = randn(&mut r, n * d, 1.0);
    let w = randn(&mut r, v * d, 0.3);
    let targets: Vec<u32> = (0..n).map(|_| r.below(v as u64) as u32).collect();
    let mut logits = vec![0f32; n * v];
    cpu::matmul::matmul_forward(&mut logits, &x, &w, n, d, v);
    let logits = quant::<T>(&logits);
    let dscale = 1.0 / n as f32;
    let tag = format!("{} N{n} V{v}", T::SUFFIX);

    let (want_ce, want_lse, want_dl) = classifier_reference(&logits, &targets, v, z_loss, dscale);
    let dtgt = up_raw(k, &targets);
    let mut dlog = up::<T>(k, &logits);
    let mut ce = poison::<f32>(k, n);
    let mut lse = poison::<f32>(k, n);
    launch::classifier_forward_backward::<T>(
        k, &mut dlog, &mut ce, &mut lse, &dtgt, n, v, z_loss, dscale,
    )
    .unwrap();
    let got_dl = down(k, &dlog);
    compare(
        &format!("classifier ce {tag}"),
        &down(k, &ce),
        &want_ce,
        TOL_F32,
    );
    compare(
        &format!("classifier lse {tag}"),
        &down(k, &lse),
        &want_lse,
        TOL_F32,
    );
    compare(
        &format!("classifier dlogits {tag}"),
        &got_dl,
        &want_dl,
        tol::<T>(),
    );

    let mut sums = up_raw(k, &[f64::NAN; 2]);
    launch::loss_sums(k, &mut sums, &ce, &lse, n).unwrap();
    let sums = down_raw(k, &sums);
    let want_sums = [
        want_ce.iter().map(|&c| c as f64).sum::<f64>(),
        want_lse
            .iter()
            .map(|&l| (l as f64) * (l as f64))
            .sum::<f64>(),
    ];
    let got_sums = [sums[0] as f32, sums[1] as f32];
    let want_sums = [want_sums[0] as f32, want_sums[1] as f32];
    compare(&format!("loss sums {tag}"), &got_sums, &want_sums, TOL_F32);

    // The CPU twin end to end (f32 only: it computes its own f32 logits): its loss sums, and its
    // dx and dW against the same GEMMs applied to the GPU's dlogits.
    if T::SUFFIX == "f32" {
        let mut dx_cpu = vec![0f32; n * d];
        let mut dw_cpu = vec![0f32; v * d];
        let mut scratch = Vec::new();
        let twin = cpu::classifier::classifier_forward_backward(
            &x,
            &w,
            &targets,
            d,
            v,
            z_loss,
            Some(cpu::classifier::ClassifierGrads {
                dx: &mut dx_cpu,
                dw: &mut dw_cpu,
                rows_total: n,
            }),
            &mut scratch,
        );
        compare(
            &format!("classifier sums vs CPU twin {tag}"),
            &got_sums,
            &[twin.ce as f32, twin.z as f32],
            TOL_F32,
        );
        let mut dx_gpu = vec![0f32; n * d];
        let mut dw_gpu = vec![0f32; v * d];
        cpu::matmul::matmul_backward(&mut dx_gpu, &mut dw_gpu, &got_dl, &x, &w, n, d, v, false);
        compare(
            &format!("classifier dx vs CPU twin {tag}"),
            &dx_gpu,
            &dx_cpu,
            TOL_F32,
        );
        compare(
            &format!("classifier dW vs CPU twin {tag}"),
            &dw_gpu,
            &dw_cpu,
            TOL_F32,
        );
    }

    // Evaluation (dscale = 0): the loss only, logits untouched.
    let mut dlog = up::<T>(k, &logits);
    let mut ce = poison::<f32>(k, n);
    let mut lse = poison::<f32>(k, n);
    launch::classifier_forward_backward::<T>(
        k, &mut dlog, &mut ce, &mut lse, &dtgt, n, v, z_loss, 0.0,
    )
    .unwrap();
    compare(
        &format!("classifier eval ce {tag}"),
        &down(k, &ce),
        &want_ce,
        TOL_F32,
    );
    assert_eq!(
        down(k, &dlog),
        logits,
        "evaluation must leave the logits untouched"
    );
}

#[test]
fn classifier_matches_cpu() {
    let Some(k) = gpu("classifier") else { return };
    classifier_case::<f32>(&k, 48, 64, 1000, 40);
    classifier_case::<Bf16>(&k, 48, 64, 1000, 41);
    classifier_case::<f32>(&k, 4, 64, 65536, 42);
    classifier_case::<Bf16>(&k, 4, 64, 65536, 43);
    classifier_case::<f32>(&k, 33, 32, 256, 44);
}

// ---------------------------------------------------------------------------------------------
// global norm

fn global_norm_case<T: GpuFloat>(k: &GpuKernels, n1: usize, n2: usize, seed: u64) {
    let mut r = Rng::new(seed);
    let a = quant::<T>(&randn(&mut r, n1, 0.01));
    let b = quant::<T>(&randn(&mut r, n2, 0.02));
    let ss: f64 = a.iter().chain(&b).map(|&x| (x as f64) * (x as f64)).sum();
    let norm = ss.sqrt() as f32;
    let (da, db) = (up::<T>(k, &a), up::<T>(k, &b));
    let mut partial = up_raw(k, &vec![f64::NAN; GLOBAL_NORM_BLOCKS]);
    launch::global_norm_squared::<T>(k, &mut partial, &da, n1, false).unwrap();
    launch::global_norm_squared::<T>(k, &mut partial, &db, n2, true).unwrap();
    for (clip, want_scale) in [(0.0f32, 1.0f32), (norm * 2.0, 1.0), (norm / 2.0, 0.5)] {
        let mut out = poison::<f32>(k, 2);
        launch::global_norm_finish(k, &mut out, &partial, clip).unwrap();
        let got = down(k, &out);
        let what = format!("global norm {} n{} clip {clip}", T::SUFFIX, n1 + n2);
        compare(&what, &got, &[norm, want_scale], TOL_F32);
    }
}

#[test]
fn global_norm_matches_cpu() {
    let Some(k) = gpu("global_norm") else { return };
    global_norm_case::<f32>(&k, 1_000_003, 77, 50);
    global_norm_case::<Bf16>(&k, 123_457, 1, 51);
    global_norm_case::<f32>(&k, 5, 1, 52);
}

// ---------------------------------------------------------------------------------------------
// adamw

#[test]
fn adamw_matches_cpu() {
    let Some(k) = gpu("adamw") else { return };
    let mut r = Rng::new(60);
    let n = 200_003;
    let p0 = randn(&mut r, n, 0.05);
    let g = randn(&mut r, n, 0.01);
    let m0 = randn(&mut r, n, 0.001);
    let v0: Vec<f32> = randn(&mut r, n, 1e-3).iter().map(|x| x * x).collect();
    let h = cpu::adamw::AdamWStep {
        lr: 3e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_scale: 0.7,
        bias_corr1: 1.0 - 0.9f32.powi(5),
        bias_corr2: 1.0 - 0.95f32.powi(5),
    };
    let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
    cpu::adamw::adamw(&mut p, &g, &mut m, &mut v, &h);
    let mut dp = up_raw(&k, &p0);
    let mut dp16 = up_raw(&k, &vec![Bf16(0x7fc1); n]);
    let dg = up_raw(&k, &g);
    let (mut dm, mut dv) = (up_raw(&k, &m0), up_raw(&k, &v0));
    launch::adamw(&k, &mut dp, Some(&mut dp16), &dg, &mut dm, &mut dv, n, &h).unwrap();
    let got_p = down(&k, &dp);
    compare("adamw params", &got_p, &p, TOL_F32);
    compare("adamw m", &down(&k, &dm), &m, TOL_F32);
    compare("adamw v", &down(&k, &dv), &v, TOL_F32);
    let p16 = down_raw(&k, &dp16);
    for i in 0..n {
        assert_eq!(p16[i], Bf16::from_f32(got_p[i]), "adamw bf16 copy [{i}]");
    }
    // Without the bf16 copy (null pointer).
    let mut dp = up_raw(&k, &p0);
    let (mut dm, mut dv) = (up_raw(&k, &m0), up_raw(&k, &v0));
    launch::adamw(
        &k,
        &mut dp,
        None::<&mut CudaSlice<Bf16>>,
        &dg,
        &mut dm,
        &mut dv,
        n,
        &h,
    )
    .unwrap();
    compare("adamw params (no bf16 copy)", &down(&k, &dp), &p, TOL_F32);
}

// ---------------------------------------------------------------------------------------------
// determinism and the PTX path

/// The backward kernels that reduce (embedding, RMSNorm gain, attention, global norm) give the
/// same bits on every run.
#[test]
fn reductions_are_deterministic() {
    let Some(k) = gpu("determinism") else { return };
    let mut r = Rng::new(70);
    let (vocab, n, d) = (64usize, 4096usize, 256usize);
    let tokens: Vec<u32> = (0..n).map(|_| r.below(vocab as u64) as u32).collect();
    let dout = randn(&mut r, n * d, 1.0);
    let x = randn(&mut r, n * d, 1.0);
    let g = randn(&mut r, d, 1.0);
    let rstd = vec![0.7f32; n];
    let sh = AttnShape {
        batch: 2,
        seq: 256,
        heads: 2,
    };
    let qkv = randn(&mut r, sh.batch * sh.seq * 3 * 128, 1.0);
    let run = || -> Vec<Vec<f32>> {
        let plan = EmbedBackwardPlan::new(&tokens, vocab, EmbedBackwardPlan::max_buckets(n, vocab))
            .unwrap();
        let mut dtable = up_raw(&k, &vec![0f32; vocab * d]);
        let ddout = up::<Bf16>(&k, &dout);
        launch::embed_backward::<Bf16>(
            &k,
            &mut dtable,
            &ddout,
            &up_raw(&k, &plan.order),
            &up_raw(&k, &plan.bucket_start),
            &up_raw(&k, &plan.bucket_token),
            plan.num_buckets(),
            d,
        )
        .unwrap();
        let mut dinp = up::<Bf16>(&k, &vec![0.0; n * d]);
        let mut dgain = up_raw(&k, &vec![0f32; d]);
        let mut scratch = poison::<f32>(&k, launch::rmsnorm_backward_scratch_len(n, d));
        let (dx, dg, dr) = (up::<Bf16>(&k, &x), up::<Bf16>(&k, &g), up_raw(&k, &rstd));
        launch::rmsnorm_backward::<Bf16>(
            &k,
            &mut dinp,
            &mut dgain,
            &mut scratch,
            &ddout,
            &dx,
            &dg,
            &dr,
            n,
            d,
        )
        .unwrap();
        let rows = sh.batch * sh.heads * sh.seq;
        let dq = up::<Bf16>(&k, &qkv);
        let mut out = poison::<Bf16>(&k, sh.batch * sh.seq * 128);
        let mut lse = poison::<f32>(&k, rows);
        launch::attention_forward::<Bf16>(&k, &mut out, &mut lse, &dq, sh).unwrap();
        let mut dqkv = poison::<Bf16>(&k, qkv.len());
        let mut delta = poison::<f32>(&k, rows);
        let datt = up::<Bf16>(&k, &dout[..sh.batch * sh.seq * 128]);
        launch::attention_backward::<Bf16>(&k, &mut dqkv, &mut delta, &datt, &out, &lse, &dq, sh)
            .unwrap();
        let mut partial = up_raw(&k, &vec![0f64; GLOBAL_NORM_BLOCKS]);
        launch::global_norm_squared::<Bf16>(&k, &mut partial, &ddout, n * d, false).unwrap();
        let mut norm = poison::<f32>(&k, 2);
        launch::global_norm_finish(&k, &mut norm, &partial, 1.0).unwrap();
        vec![
            down(&k, &dtable),
            down(&k, &dgain),
            down(&k, &dinp),
            down(&k, &dqkv),
            down(&k, &norm),
        ]
    };
    let (a, b) = (run(), run());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "output {i} differs between two identical runs");
    }
    note("  determinism: embed/rmsnorm/attention backward and global norm bit-identical");
}

/// The compute_80 PTX (what non-sm_90 GPUs get) loads through the driver JIT and computes the
/// same thing.
#[test]
fn ptx_path_loads_and_runs() {
    let Some(_) = gpu("ptx path") else { return };
    let k = GpuKernels::with_source(0, Some(KernelSource::Ptx)).expect("PTX modules load");
    assert_eq!(k.source(), KernelSource::Ptx);
    rope_case::<f32>(&k, 2, 33, 128, 80);
    attention_case::<Bf16>(
        &k,
        AttnShape {
            batch: 1,
            seq: 70,
            heads: 2,
        },
        81,
    );
    classifier_case::<Bf16>(&k, 8, 64, 1000, 82);
}
