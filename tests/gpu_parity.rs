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
use terse::backend::cuda::launch::{self, AttnKernels, EmbedBackwardPlan, GLOBAL_NORM_BLOCKS};
use terse::backend::cuda::{self, Bf16, GpuFloat, GpuKernels, KernelSource};
use terse::coder::{Cdf, CdfQuantizer};
use terse::rng::Rng;

const TOL_F32: f32 = 1e-4;
const TOL_BF16: f32 = 1e-2;
/// The tensor-core attention kernels round P and dS to bf16 before their second products
/// (FlashAttention-2's precision, `kernels/attention_tc.cu`): each term of dq = dS K and
/// dk = dS^T Q carries a relative error up to 2^-9, and those terms cancel (a row of dS sums to
/// zero), so an element's error is 2^-9 of the sum of its terms' magnitudes, several times the
/// element itself. Elements are held to 5e-2 (the worst on the emulator's test shapes: 2.3e-2,
/// dv at T = 77); the tensor as a whole to an rms error of 5e-3 of its rms (the emulator: 2.4e-3;
/// the CUDA-core kernels, which round only their bf16 outputs: 1.7e-3), which a wrong tile, mask or
/// scale exceeds many times over.
const TOL_ATTN_TC: f32 = 5e-2;
const TOL_ATTN_TC_RMS: f32 = 5e-3;

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
    compare_above(what, got, want, tol, f32::MIN_POSITIVE);
}

/// [`compare`] with errors measured against at least `floor`: for a tensor that is zero in exact
/// arithmetic (attention's dq and dk with one key), where both sides hold rounding noise.
/// Returns the rms of the errors over max(rms(cpu), floor).
fn compare_above(what: &str, got: &[f32], want: &[f32], tol: f32, floor: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let n = want.len().max(1);
    let rms = (want.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / n as f64).sqrt();
    let floor = (rms as f32).max(floor);
    let mut worst = (0usize, 0f32);
    let mut sq = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        sq += ((g - w) as f64).powi(2);
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
    let rms_err = ((sq / n as f64).sqrt() / floor as f64) as f32;
    note(&format!(
        "  {what}: {} values, max relative error {:.2e} at {} (tol {tol:e}), rms {rms_err:.2e}",
        want.len(),
        worst.1,
        worst.0
    ));
    rms_err
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
    let mut d16 = up_raw(&k, &vec![Bf16::from_bits(0x7fc1); x.len()]);
    launch::cast_f32_to_bf16(&k, &mut d16, &dx, x.len()).unwrap();
    let got16 = down_raw(&k, &d16);
    for (i, (&g, &v)) in got16.iter().zip(&x).enumerate() {
        // bit-exact, except that the device may flush a subnormal input to zero
        let want = Bf16::from_f32(v);
        assert!(
            g.to_bits() == want.to_bits() || (v.abs() < f32::MIN_POSITIVE && g.to_f32() == 0.0),
            "cast f32->bf16 [{i}]: {v} -> {:#06x}, host {:#06x}",
            g.to_bits(),
            want.to_bits()
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

/// The one-hot backward of a byte vocabulary (M1's), as the step runs it: one-hot rows, then
/// `dtable += onehot^T dout` in one product. A sixth of the positions hold one token (the space
/// byte of text), which the bucket kernel would sum in one block.
fn embed_onehot_case<T: GpuFloat>(k: &GpuKernels, n: usize, d: usize, seed: u64) {
    use terse::backend::cuda::gemm::Gemm;
    let vocab = 256;
    let mut r = Rng::new(seed);
    let tokens: Vec<u32> = (0..n)
        .map(|_| match r.below(6) {
            0 => 32,
            _ => r.below(vocab as u64) as u32,
        })
        .collect();
    let dout = quant::<T>(&randn(&mut r, n * d, 1.0));
    let dtable0 = randn(&mut r, vocab * d, 0.1);
    let mut want = dtable0.clone();
    cpu::embed::embed_backward(&mut want, &dout, &tokens, d);
    let mut onehot = poison::<T>(k, n * vocab);
    let mut dtable = up_raw(k, &dtable0);
    launch::embed_onehot::<T>(k, &mut onehot, &up_raw(k, &tokens), n, vocab).unwrap();
    let mut g = Gemm::new(k.stream().clone()).expect("cuBLASLt");
    g.wgrad(&mut dtable, &onehot, &up::<T>(k, &dout), n, d, vocab, true)
        .unwrap();
    let what = format!("embed backward one-hot {} N{n} d{d}", T::SUFFIX);
    compare(&what, &down(k, &dtable), &want, TOL_F32);
    // A vocabulary the one-hot rows do not take is refused, not half-written.
    assert!(launch::embed_onehot::<T>(k, &mut onehot, &up_raw(k, &tokens), n, 260).is_err());
}

#[test]
fn embed_matches_cpu() {
    let Some(k) = gpu("embed") else { return };
    embed_case::<f32>(&k, 300, 500, 128, 3);
    embed_case::<Bf16>(&k, 300, 500, 128, 4);
    embed_case::<f32>(&k, 65536, 256, 64, 5);
    embed_case::<Bf16>(&k, 65536, 256, 64, 6);
    embed_onehot_case::<f32>(&k, 600, 128, 7);
    embed_onehot_case::<Bf16>(&k, 1000, 64, 8);
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
    // The backward's row paths: 16-byte packs at 1, 2 and 3 per lane (bf16 d = 256 above, f32
    // d = 256 above, bf16 d = 768 here), element by element for the rest (d = 96, 1024).
    rmsnorm_case::<Bf16>(&k, 130, 768, 12);
    rmsnorm_case::<Bf16>(&k, 70, 1024, 13);
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
// attention (the rotary embedding fused in)

/// The rotary tables of `seq` positions, on the device: (cos, sin).
fn rope_tables(k: &GpuKernels, seq: usize) -> (CudaSlice<f32>, CudaSlice<f32>) {
    let t = terse::numerics::RopeTables::new(seq, 10_000.0);
    (up_raw(k, &t.cos), up_raw(k, &t.sin))
}

/// The GPU's attention on unrotated qkv against the CPU's rope, attention and inverse rope.
fn attention_case<T: GpuFloat>(k: &GpuKernels, kernels: AttnKernels, sh: AttnShape, seed: u64) {
    let mut r = Rng::new(seed);
    let (n, d) = (sh.batch * sh.seq, sh.heads * 64);
    let rows = sh.batch * sh.heads * sh.seq;
    let qkv = quant::<T>(&randn(&mut r, n * 3 * d, 1.0));
    let tables = terse::numerics::RopeTables::new(sh.seq, 10_000.0);
    // q and k rotated as a separate rotary pass would have stored them (the kernels round the
    // same way).
    let mut rotated = qkv.clone();
    cpu::rope::rope_apply(&mut rotated, &tables, d, false);
    let rotated = quant::<T>(&rotated);
    let mut want = vec![0f32; n * d];
    let mut want_lse = vec![0f32; rows];
    cpu::attention::attention_forward(&mut want, &mut want_lse, &rotated, sh);
    let dqkv_in = up::<T>(k, &qkv);
    let (cos, sin) = rope_tables(k, sh.seq);
    let mut out = poison::<T>(k, n * d);
    let mut lse = poison::<f32>(k, rows);
    launch::attention_forward::<T>(k, kernels, &mut out, &mut lse, &dqkv_in, &cos, &sin, sh)
        .unwrap();
    let tag = format!(
        "{} {kernels:?} B{} T{} H{}",
        T::SUFFIX,
        sh.batch,
        sh.seq,
        sh.heads
    );
    // The element and rms tolerances of this path: see TOL_ATTN_TC.
    let (tol_el, tol_rms) = match kernels {
        AttnKernels::TensorCore => (TOL_ATTN_TC, TOL_ATTN_TC_RMS),
        AttnKernels::CudaCore => (tol::<T>(), f32::INFINITY),
    };
    let rms = compare_above(
        &format!("attention forward out {tag}"),
        &down(k, &out),
        &want,
        tol_el,
        f32::MIN_POSITIVE,
    );
    assert!(
        rms <= tol_rms,
        "attention forward out {tag}: rms error {rms:e} > {tol_rms:e}"
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
    cpu::attention::attention_backward(&mut want_d, &dout, &out_q, &want_lse, &rotated, sh);
    cpu::rope::rope_apply(&mut want_d, &tables, d, true);
    let (d_out, d_dout, d_lse) = (up::<T>(k, &out_q), up::<T>(k, &dout), up_raw(k, &want_lse));
    let mut dqkv = poison::<T>(k, n * 3 * d);
    let mut delta = poison::<f32>(k, rows);
    launch::attention_backward::<T>(
        k, kernels, &mut dqkv, &mut delta, &d_dout, &d_out, &d_lse, &dqkv_in, &cos, &sin, sh,
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
        // With one key, dq and dk are P (dP - delta) = 1 (dout.v - dout.out) = 0 exactly, and
        // both sides hold the rounding noise of two 64-term dot products of unit normals (~1e-7
        // after the scale): an absolute floor far below the O(0.1..1) gradients of every other
        // shape, whose rms sets the floor there.
        let rms = compare_above(&what, &pick(&got), &pick(&want_d), tol_el, 1e-2);
        assert!(rms <= tol_rms, "{what}: rms error {rms:e} > {tol_rms:e}");
    }
}

#[test]
fn attention_matches_cpu() {
    let Some(k) = gpu("attention") else { return };
    // The tensor-core kernels take bf16 storage only: f32 buffers are refused, not misread.
    let sh = AttnShape {
        batch: 1,
        seq: 8,
        heads: 1,
    };
    let (mut out, mut lse) = (poison::<f32>(&k, 8 * 64), poison::<f32>(&k, 8));
    let qkv = up::<f32>(&k, &[0.0; 8 * 3 * 64]);
    let (cos, sin) = rope_tables(&k, 8);
    let tc = AttnKernels::TensorCore;
    let refused = launch::attention_forward(&k, tc, &mut out, &mut lse, &qkv, &cos, &sin, sh);
    assert!(
        refused.is_err(),
        "tensor-core attention accepted f32 storage"
    );
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
        attention_case::<f32>(&k, AttnKernels::CudaCore, sh, 20 + i as u64);
        attention_case::<Bf16>(&k, AttnKernels::CudaCore, sh, 30 + i as u64);
        attention_case::<Bf16>(&k, AttnKernels::TensorCore, sh, 40 + i as u64);
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
    // Rows that are not whole 16-byte packs take the element-by-element path.
    classifier_case::<f32>(&k, 5, 32, 1002, 45);
    classifier_case::<Bf16>(&k, 5, 32, 1001, 46);
    // Rows up to WARP_ROWS_MAX_VOCAB go a warp each (above; 33 and 5 rows leave a block's last
    // warps without a row), wider ones a block each: 256 threads below 8192, 1024 from it.
    classifier_case::<Bf16>(&k, 33, 32, 256, 47);
    classifier_case::<Bf16>(&k, 7, 32, 3000, 48);
    classifier_case::<f32>(&k, 3, 32, 2049, 49);
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
    let mut dp16 = up_raw(&k, &vec![Bf16::from_bits(0x7fc1); n]);
    let dg = up_raw(&k, &g);
    let (mut dm, mut dv) = (up_raw(&k, &m0), up_raw(&k, &v0));
    launch::adamw(&k, &mut dp, Some(&mut dp16), &dg, &mut dm, &mut dv, n, &h).unwrap();
    let got_p = down(&k, &dp);
    compare("adamw params", &got_p, &p, TOL_F32);
    compare("adamw m", &down(&k, &dm), &m, TOL_F32);
    compare("adamw v", &down(&k, &dv), &v, TOL_F32);
    let p16 = down_raw(&k, &dp16);
    for i in 0..n {
        assert_eq!(
            p16[i].to_bits(),
            Bf16::from_f32(got_p[i]).to_bits(),
            "adamw bf16 copy [{i}]"
        );
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

/// The graph-replayable AdamW (scalars read from device memory) against the CPU update, writing
/// the working copy in f32 and in bf16.
#[test]
fn adamw_dev_matches_cpu() {
    let Some(k) = gpu("adamw_dev") else { return };
    let mut r = Rng::new(61);
    let n = 100_003;
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
    let hyper = up_raw(&k, &[h.lr, h.bias_corr1, h.bias_corr2]);
    let norm = up_raw(&k, &[123.0f32, h.grad_scale]);
    let dg = up_raw(&k, &g);
    fn case<T: GpuFloat>(
        k: &GpuKernels,
        init: (&[f32], &[f32], &[f32]),
        dg: &CudaSlice<f32>,
        hyper: &CudaSlice<f32>,
        norm: &CudaSlice<f32>,
        h: &cpu::adamw::AdamWStep,
        want: (&[f32], &[f32], &[f32]),
    ) {
        let n = init.0.len();
        let mut dp = up_raw(k, init.0);
        let mut work = poison::<T>(k, n);
        let (mut dm, mut dv) = (up_raw(k, init.1), up_raw(k, init.2));
        launch::adamw_dev(
            k,
            &mut dp,
            &mut work,
            dg,
            &mut dm,
            &mut dv,
            hyper,
            norm,
            n,
            h.beta1,
            h.beta2,
            h.eps,
            h.weight_decay,
        )
        .unwrap();
        let got = down(k, &dp);
        compare(
            &format!("adamw_dev params ({})", T::SUFFIX),
            &got,
            want.0,
            TOL_F32,
        );
        compare("adamw_dev m", &down(k, &dm), want.1, TOL_F32);
        compare("adamw_dev v", &down(k, &dv), want.2, TOL_F32);
        let w = down(k, &work);
        for i in 0..n {
            assert_eq!(w[i], T::from_f32(got[i]).to_f32(), "working copy [{i}]");
        }
    }
    case::<f32>(&k, (&p0, &m0, &v0), &dg, &hyper, &norm, &h, (&p, &m, &v));
    case::<Bf16>(&k, (&p0, &m0, &v0), &dg, &hyper, &norm, &h, (&p, &m, &v));
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
        // The one-hot embedding backward: its product's sums must not depend on the run either.
        let mut onehot = poison::<Bf16>(&k, n * vocab);
        launch::embed_onehot::<Bf16>(&k, &mut onehot, &up_raw(&k, &tokens), n, vocab).unwrap();
        let mut dtable_onehot = up_raw(&k, &vec![0f32; vocab * d]);
        terse::backend::cuda::gemm::Gemm::new(k.stream().clone())
            .expect("cuBLASLt")
            .wgrad(&mut dtable_onehot, &onehot, &ddout, n, d, vocab, true)
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
        let tc = AttnKernels::TensorCore;
        let (cos, sin) = rope_tables(&k, sh.seq);
        launch::attention_forward::<Bf16>(&k, tc, &mut out, &mut lse, &dq, &cos, &sin, sh).unwrap();
        let mut dqkv = poison::<Bf16>(&k, qkv.len());
        let mut delta = poison::<f32>(&k, rows);
        let datt = up::<Bf16>(&k, &dout[..sh.batch * sh.seq * 128]);
        launch::attention_backward::<Bf16>(
            &k, tc, &mut dqkv, &mut delta, &datt, &out, &lse, &dq, &cos, &sin, sh,
        )
        .unwrap();
        let mut partial = up_raw(&k, &vec![0f64; GLOBAL_NORM_BLOCKS]);
        launch::global_norm_squared::<Bf16>(&k, &mut partial, &ddout, n * d, false).unwrap();
        let mut norm = poison::<f32>(&k, 2);
        launch::global_norm_finish(&k, &mut norm, &partial, 1.0).unwrap();
        vec![
            down(&k, &dtable),
            down(&k, &dtable_onehot),
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
    note(
        "  determinism: embed (buckets and one-hot)/rmsnorm/attention backward and global norm \
         bit-identical",
    );
}

/// The compute_80 PTX (what non-sm_90 GPUs get) loads through the driver JIT and computes the
/// same thing.
#[test]
fn ptx_path_loads_and_runs() {
    let Some(_) = gpu("ptx path") else { return };
    let k = GpuKernels::with_source(0, Some(KernelSource::Ptx)).expect("PTX modules load");
    assert_eq!(k.source(), KernelSource::Ptx);
    attention_case::<f32>(
        &k,
        AttnKernels::CudaCore,
        AttnShape {
            batch: 2,
            seq: 33,
            heads: 2,
        },
        80,
    );
    attention_case::<Bf16>(
        &k,
        AttnKernels::TensorCore,
        AttnShape {
            batch: 1,
            seq: 70,
            heads: 2,
        },
        81,
    );
    classifier_case::<Bf16>(&k, 8, 64, 1000, 82);
}

/// A download into page-locked memory is visible only after the host waits for it. The backend
/// runs with cudarc's event tracking off, so `PinnedHostSlice::as_slice` does not wait (the bug
/// the first H200 run found: losses a step late, CDFs read as zeros); the emulator lands such a
/// copy only at the wait, so a read without one sees poison there instead of passing by luck.
#[test]
fn page_locked_download_lands_at_the_wait() {
    let Some(k) = gpu("page-locked download") else {
        return;
    };
    let want: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    let dev = up::<f32>(&k, &want);
    let s = k.stream();
    // SAFETY: fully written by the copy below before the comparison reads it.
    let mut host = unsafe { k.context().alloc_pinned::<f32>(want.len()) }.unwrap();
    s.memcpy_dtoh(&dev, &mut host).unwrap();
    if emulated() {
        let early = host.as_slice().unwrap();
        assert!(
            early.iter().all(|x| x.is_nan()),
            "the emulator landed a page-locked download before the host waited"
        );
    }
    k.synchronize().unwrap();
    assert_eq!(host.as_slice().unwrap(), &want[..]);
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt GEMM wrapper

fn gemm_case<T: GpuFloat>(k: &GpuKernels, n: usize, d_in: usize, d_out: usize, seed: u64) {
    use terse::backend::cuda::gemm::{relu_mask_bytes, Gemm};
    let mut r = Rng::new(seed);
    let mut g = Gemm::new(k.stream().clone()).expect("cuBLASLt");
    let x = quant::<T>(&randn(&mut r, n * d_in, 1.0));
    let w = quant::<T>(&randn(&mut r, d_out * d_in, 0.1));
    let res = quant::<T>(&randn(&mut r, n * d_out, 1.0));
    let dy = quant::<T>(&randn(&mut r, n * d_out, 1.0));
    let dw0 = randn(&mut r, d_out * d_in, 1.0);
    let what = |op: &str| format!("gemm {op} {} {n}x{d_in}->{d_out}", T::SUFFIX);
    let (dx, dwt, ddy, dres) = (
        up::<T>(k, &x),
        up::<T>(k, &w),
        up::<T>(k, &dy),
        up::<T>(k, &res),
    );

    // forward, then forward with the residual fused (beta = 1 from a separate buffer)
    let mut want = vec![0f32; n * d_out];
    cpu::matmul::matmul_forward(&mut want, &x, &w, n, d_in, d_out);
    let mut y = poison::<T>(k, n * d_out);
    g.forward(&mut y, &dx, &dwt, None, n, d_in, d_out).unwrap();
    compare(&what("forward"), &down(k, &y), &want, tol::<T>());
    let want_res: Vec<f32> = want.iter().zip(&res).map(|(a, b)| a + b).collect();
    let mut y = poison::<T>(k, n * d_out);
    g.forward(
        &mut y,
        &dx,
        &dwt,
        Some(&dres as &dyn terse::backend::cuda::gemm::DevicePtrDyn<T>),
        n,
        d_in,
        d_out,
    )
    .unwrap();
    compare(
        &what("forward+residual"),
        &down(k, &y),
        &want_res,
        tol::<T>(),
    );

    // The MLP's ReLU in cuBLASLt's epilogues, where it offers them (the emulator does unless told
    // not to, which the emulated runs use to cover the step's fallback) and the width takes a
    // mask: h = relu(x W^T) with its mask, then dh = (g Wd) where h > 0 for a layer Wd
    // [d_in, d_out] (w's values read that way) taking h's width back.
    let offered = emulated().then(|| std::env::var_os(NO_EPILOGUES).is_none());
    let mut mask = up_raw(k, &vec![0u8; relu_mask_bytes(n, d_out).unwrap_or(0).max(1)]);
    let mut h = poison::<T>(k, n * d_out);
    let fused = g
        .forward_relu_mask(&mut h, &mut mask, &dx, &dwt, n, d_in, d_out)
        .unwrap();
    if fused {
        let want_relu: Vec<f32> = want.iter().map(|&v| v.max(0.0)).collect();
        let got_h = down(k, &h);
        compare(&what("forward+relu"), &got_h, &want_relu, tol::<T>());
        let (mut want_dh, mut scratch) = (vec![0f32; n * d_out], vec![0f32; d_out * d_in]);
        cpu::matmul::matmul_backward(
            &mut want_dh,
            &mut scratch,
            &x,
            &vec![0f32; n * d_out],
            &w,
            n,
            d_out,
            d_in,
            false,
        );
        for (v, &hv) in want_dh.iter_mut().zip(&got_h) {
            if hv <= 0.0 {
                *v = 0.0;
            }
        }
        let mut dh = poison::<T>(k, n * d_out);
        if g.dgrad_relu_mask(&mut dh, &mask, &dx, &dwt, n, d_out, d_in)
            .unwrap()
        {
            compare(&what("dgrad+drelu"), &down(k, &dh), &want_dh, tol::<T>());
        } else {
            // A GPU's cuBLASLt may take RELU_AUX and not DRELU; the step then runs the kernel.
            assert!(offered.is_none(), "the emulator offers DRELU with RELU_AUX");
            note(&format!(
                "  {}: cuBLASLt offers no DRELU here; the step runs relu_backward",
                what("dgrad+drelu")
            ));
        }
    } else {
        assert!(
            down(k, &h).iter().all(|v| v.is_nan()),
            "{}: refused, yet it wrote h",
            what("forward+relu")
        );
        note(&format!(
            "  {}: cuBLASLt takes no ReLU mask here; the step runs the ReLU kernels",
            what("forward+relu")
        ));
    }
    if let Some(offered) = offered {
        assert_eq!(fused, offered && relu_mask_bytes(n, d_out).is_some());
    }

    // dgrad (overwrite) and wgrad (overwrite, then accumulate onto random values)
    let (mut want_dx, mut want_dw) = (vec![0f32; n * d_in], vec![0f32; d_out * d_in]);
    cpu::matmul::matmul_backward(
        &mut want_dx,
        &mut want_dw,
        &dy,
        &x,
        &w,
        n,
        d_in,
        d_out,
        false,
    );
    let mut gdx = poison::<T>(k, n * d_in);
    g.dgrad(&mut gdx, &ddy, &dwt, n, d_in, d_out, false)
        .unwrap();
    compare(&what("dgrad"), &down(k, &gdx), &want_dx, tol::<T>());
    let mut gdw = poison::<f32>(k, d_out * d_in);
    g.wgrad(&mut gdw, &ddy, &dx, n, d_in, d_out, false).unwrap();
    // fp32 output: the only error is the summation order (and bf16 inputs are exact)
    compare(&what("wgrad"), &down(k, &gdw), &want_dw, 1e-3);
    let mut gdw = up_raw(k, &dw0);
    g.wgrad(&mut gdw, &ddy, &dx, n, d_in, d_out, true).unwrap();
    let want_acc: Vec<f32> = want_dw.iter().zip(&dw0).map(|(a, b)| a + b).collect();
    compare(&what("wgrad accumulate"), &down(k, &gdw), &want_acc, 1e-3);
    let plans = g.plans();
    // same shapes again: no new plans
    g.forward(&mut y, &dx, &dwt, None, n, d_in, d_out).unwrap();
    assert_eq!(
        g.plans(),
        plans,
        "a repeated shape must reuse its cached plan"
    );
}

#[test]
fn gemm_matches_cpu() {
    let Some(k) = gpu("gemm") else { return };
    for (n, d_in, d_out) in [
        (77, 64, 192),
        (256, 256, 1024),
        (512, 1024, 256),
        (33, 128, 256),
    ] {
        gemm_case::<f32>(&k, n, d_in, d_out, 80 + n as u64);
        gemm_case::<Bf16>(&k, n, d_in, d_out, 90 + n as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// the whole CUDA training backend against the CPU backend

use terse::backend::cuda::CudaTrainer;
use terse::backend::{Backend, OptimConfig, StepStats};
use terse::model::Batch;
use terse::model::{ModelConfig, ParamArena};

/// True (after printing why) where the CUDA backend cannot run.
fn backend_skip(test: &str) -> bool {
    if let Some(reason) = cuda::gpu_unavailable_reason() {
        note(&format!("SKIPPED (no GPU): {test}: {reason}"));
        return true;
    }
    false
}

fn random_batch(r: &mut Rng, vocab: usize, batch: usize, seq: usize) -> Batch {
    let n = batch * seq;
    let toks: Vec<u32> = (0..n + 1).map(|_| r.below(vocab as u64) as u32).collect();
    Batch {
        inputs: toks[..n].to_vec(),
        targets: toks[1..].to_vec(),
        batch,
        seq,
    }
}

/// Per-tensor `||a - b|| / ||b||`.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// One step of `tiny` on the GPU (f32 and bf16 instantiations) against the CPU backend: the
/// loss, every gradient tensor and the updated weights.
#[test]
fn train_step_matches_cpu() {
    if backend_skip("train step") {
        return;
    }
    let cfg = ModelConfig::preset("tiny", None).unwrap();
    let params = ParamArena::init(&cfg, 7);
    let mut r = Rng::new(100);
    let batch = random_batch(&mut r, cfg.vocab, 4, 64);
    let opt = OptimConfig::default();
    let mut cpu_be = cpu::CpuBackend::new(&cfg, params.clone(), None).unwrap();
    let (sums, want_g) = cpu_be.loss_and_grads(&params.data, &batch).unwrap();
    let want_ce = (sums.ce / sums.rows as f64) as f32;
    let want_stats = cpu_be.train_step(&batch, 1e-3, 1, &opt).unwrap();
    let want_p = cpu_be.params().unwrap().data;

    fn run<T: GpuFloat>(
        cfg: &ModelConfig,
        params: &ParamArena,
        batch: &Batch,
        opt: &OptimConfig,
    ) -> (terse::backend::StepStats, Vec<f32>, Vec<f32>) {
        let mut be = CudaTrainer::<T>::new(cfg, params, None).expect("CUDA backend");
        be.poison_activations(batch.batch, batch.seq).unwrap();
        let st = be.train_step(batch, 1e-3, 1, opt).expect("GPU step");
        (st, be.last_grads().unwrap(), be.params().unwrap().data)
    }
    // (loss relative, gradient relative l2 per tensor, update relative l2). AdamW's first step
    // moves each weight by about lr * sign(g), so the update comparison is loose for bf16, where
    // gradients near zero can change sign.
    for (label, (st, g, p), tol_loss, tol_grad, tol_update) in [
        (
            "f32",
            run::<f32>(&cfg, &params, &batch, &opt),
            1e-4,
            2e-3,
            2e-2,
        ),
        (
            "bf16",
            run::<Bf16>(&cfg, &params, &batch, &opt),
            1e-2,
            6e-2,
            0.35,
        ),
    ] {
        note(&format!(
            "  step {label}: ce gpu {} cpu {want_ce}, grad norm gpu {} cpu {}",
            st.ce, st.grad_norm, want_stats.grad_norm
        ));
        assert!(
            ((st.ce - want_ce) / want_ce).abs() < tol_loss,
            "{label}: loss {} vs {want_ce}",
            st.ce
        );
        assert!(
            ((st.grad_norm - want_stats.grad_norm) / want_stats.grad_norm).abs() < tol_grad as f32,
            "{label}: grad norm {} vs {}",
            st.grad_norm,
            want_stats.grad_norm
        );
        for s in &params.specs {
            let e = rel_l2(&g[s.range()], &want_g[s.range()]);
            note(&format!("  {label} grad {}: rel l2 {e:.2e}", s.name));
            assert!(
                e < tol_grad,
                "{label}: gradient of {} off by {e:.2e}",
                s.name
            );
        }
        // Updated weights: AdamW's first step moves each weight by ~lr; compare the updates.
        let du: Vec<f32> = p.iter().zip(&params.data).map(|(a, b)| a - b).collect();
        let dw: Vec<f32> = want_p
            .iter()
            .zip(&params.data)
            .map(|(a, b)| a - b)
            .collect();
        let e = rel_l2(&du, &dw);
        note(&format!("  {label} update: rel l2 {e:.2e}"));
        assert!(e < tol_update, "{label}: AdamW update off by {e:.2e}");
    }
}

/// Gradient accumulation on the GPU (`--accum`): a step of 8 sequences in 2 or 4 passes (each
/// pass's activations poisoned first) gives one pass's loss, gradient norm, gradients and update,
/// to fp32 rounding (the passes' weight-gradient products are added rather than taken at once),
/// where a pass that overwrote the gradient, or a loss sum over one pass, would be off by far
/// more. Passes that do not divide the batch are refused.
#[test]
fn accumulated_passes_match_one_pass() {
    use terse::backend::GradReduction;
    if backend_skip("accumulated passes") {
        return;
    }
    let cfg = ModelConfig::preset("tiny", None).unwrap();
    let params = ParamArena::init(&cfg, 11);
    let mut r = Rng::new(101);
    let batch = random_batch(&mut r, cfg.vocab, 8, 32);
    let opt = OptimConfig::default();
    let step = |passes: usize| {
        let mut be = CudaTrainer::<f32>::new(&cfg, &params, None).expect("CUDA backend");
        be.share_steps(GradReduction::SequenceTree, passes, None)
            .unwrap();
        be.poison_activations(batch.batch / passes, batch.seq)
            .unwrap();
        let st = be.train_step(&batch, 1e-3, 1, &opt).expect("GPU step");
        (st, be.last_grads().unwrap(), be.params().unwrap().data)
    };
    let (want, want_g, want_p) = step(1);
    for passes in [2, 4] {
        let (st, g, p) = step(passes);
        assert!(
            ((st.ce - want.ce) / want.ce).abs() < 1e-6,
            "{passes} passes: loss {} vs {}",
            st.ce,
            want.ce
        );
        assert!(
            ((st.grad_norm - want.grad_norm) / want.grad_norm).abs() < 1e-5,
            "{passes} passes: grad norm {} vs {}",
            st.grad_norm,
            want.grad_norm
        );
        for s in &params.specs {
            let e = rel_l2(&g[s.range()], &want_g[s.range()]);
            assert!(
                e < 1e-5,
                "{passes} passes: gradient of {} off by {e:.2e}",
                s.name
            );
        }
        let e = rel_l2(&p, &want_p);
        assert!(e < 1e-6, "{passes} passes: weights off by {e:.2e}");
    }
    let mut be = CudaTrainer::<f32>::new(&cfg, &params, None).expect("CUDA backend");
    be.share_steps(GradReduction::SequenceTree, 3, None)
        .unwrap();
    let e = be.train_step(&batch, 1e-3, 1, &opt).unwrap_err();
    assert!(
        format!("{e:#}").contains("cannot split a share of 8 sequences"),
        "{e:#}"
    );
}

/// A run of one process, as a [`Group`](terse::dist::Group) (NCCL's binding needs one).
struct Alone;

impl terse::dist::Group for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn allgather(&self, mine: &[u8], all: &mut [u8]) -> anyhow::Result<()> {
        all.copy_from_slice(mine);
        Ok(())
    }
    fn alltoall(&self, blocks: &[u8], mine: &mut [u8]) -> anyhow::Result<()> {
        mine.copy_from_slice(blocks);
        Ok(())
    }
}

/// terse's NCCL binding against the NCCL found (the emulator's stand-in here, the real library
/// on a GPU machine: `libnccl.so.2` or `TERSE_NCCL_LIBRARY`): a one-rank communicator made from
/// its unique id sums f32 and f64 buffers, and the sum of one rank is the buffer itself. It
/// checks the hand-written signatures (the id passed by value, the enums) before any multi-GPU
/// run does. Skipped, saying so, where no NCCL opens.
#[test]
fn nccl_binding_runs_a_one_rank_sum() {
    use terse::backend::cuda::nccl::{Nccl, NcclComm};
    let Some(k) = gpu("nccl binding") else {
        return;
    };
    let nccl = match Nccl::open() {
        Ok(n) => n,
        Err(e) => return note(&format!("SKIPPED (no NCCL): nccl binding: {e:#}")),
    };
    let comm = NcclComm::join(nccl, &Alone, k.context()).expect("a one-rank communicator");
    let s = k.stream();
    let want32: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25 - 7.0).collect();
    let want64: Vec<f64> = vec![1.5, -2.25e300, 3.0];
    let mut a = s.clone_htod(&want32).unwrap();
    let mut b = s.clone_htod(&want64).unwrap();
    comm.all_reduce_sum(&mut a.slice_mut(..), s).unwrap();
    comm.all_reduce_sum(&mut b.slice_mut(1..), s).unwrap();
    s.synchronize().unwrap();
    assert_eq!(s.clone_dtoh(&a).unwrap(), want32);
    assert_eq!(s.clone_dtoh(&b).unwrap(), want64);
    note(&format!("  nccl binding: {} sums one rank", comm.library()));
}

/// Where the emulator's stand-in libnvToolsExt records NVTX ranges (`emu/nvtx.cpp`).
const NVTX_LOG: &str = "TERSE_EMU_NVTX_LOG";

/// NVTX ranges name a training step's phases and layers and an evaluation, nest, and all close.
/// The emulated run that sets `TERSE_EMU_NVTX_LOG` reads them back from the emulator's stand-in
/// libnvToolsExt; every other run trains and evaluates with ranges on (where NVTX is loaded) and
/// checks the step still gives a finite loss.
#[test]
fn nvtx_ranges_name_the_step() {
    let Some(_) = gpu("nvtx ranges") else { return };
    let log = std::env::var_os(NVTX_LOG).map(std::path::PathBuf::from);
    if let Some(path) = &log {
        let _ = std::fs::remove_file(path);
        assert!(
            cuda::nvtx::enabled(),
            "{NVTX_LOG} is set but NVTX is not loaded"
        );
    }
    let cfg = ModelConfig::preset("tiny", None).unwrap();
    let params = ParamArena::init(&cfg, 9);
    let mut be = CudaTrainer::<Bf16>::new(&cfg, &params, None).unwrap();
    be.set_use_graph(false); // eager, so the per-layer ranges are opened on every step
    let mut r = Rng::new(102);
    let b = random_batch(&mut r, cfg.vocab, 2, 64);
    let st = be.train_step(&b, 1e-3, 1, &OptimConfig::default()).unwrap();
    assert!(st.ce.is_finite(), "loss {} with NVTX ranges on", st.ce);
    be.eval_batch(&b).unwrap();
    let Some(path) = log else { return };

    // "start ID THREAD NAME" / "end ID THREAD": per thread, an end closes the innermost open range.
    let text = std::fs::read_to_string(&path).expect("the NVTX log");
    let mut open: std::collections::HashMap<&str, Vec<(&str, String)>> = Default::default();
    let mut seen: Vec<String> = Vec::new(); // each closed range as its path, outermost first
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let stack = open.entry(f[2]).or_default();
        match f[0] {
            "start" => {
                let parent = stack
                    .last()
                    .map(|(_, p)| format!("{p}/"))
                    .unwrap_or_default();
                stack.push((f[1], format!("{parent}{}", f[3])));
            }
            "end" => {
                let (id, path) = stack.pop().expect("an end with no open range");
                assert_eq!(id, f[1], "range {} closed out of order", f[1]);
                seen.push(path);
            }
            other => panic!("unexpected NVTX log line {other:?}"),
        }
    }
    for (thread, stack) in &open {
        assert!(
            stack.is_empty(),
            "thread {thread} left ranges open: {stack:?}"
        );
    }
    let last = cfg.n_layers - 1;
    for want in [
        "submit_step/upload".to_string(),
        "submit_step/step/forward/layer 0 forward".into(),
        format!("submit_step/step/forward/layer {last} forward"),
        "submit_step/step/loss".into(),
        format!("submit_step/step/backward/layer {last} backward"),
        "submit_step/step/backward/layer 0 backward".into(),
        "submit_step/step/optimizer".into(),
        "read_stats".into(),
        "eval_batch/forward/layer 0 forward".into(),
    ] {
        assert!(seen.contains(&want), "no NVTX range {want:?} in {seen:?}");
    }
    note(&format!("  nvtx: {} ranges, nested and closed", seen.len()));
}

/// The metrics ring: steps submitted without waiting, their metrics taken without waiting after
/// each and with waiting mid-run (which leaves the ring's slots out of step with its copies) and
/// at the end, arrive once each, in order, with the bits of a trainer that reads every step back;
/// and a step whose gradient norm is not finite is named when its metrics are taken.
#[test]
fn step_metrics_arrive_in_order() {
    let Some(_) = gpu("step metrics ring") else {
        return;
    };
    let cfg = ModelConfig::preset("tiny", None).unwrap();
    let params = ParamArena::init(&cfg, 11);
    let opt = OptimConfig::default();
    let mut r = Rng::new(103);
    let batches: Vec<Batch> = (0..8)
        .map(|_| random_batch(&mut r, cfg.vocab, 2, 64))
        .collect();
    let lr = |step: u64| 1e-3 * step as f32;

    let mut every = CudaTrainer::<f32>::new(&cfg, &params, None).unwrap();
    every.set_readback_every(1).unwrap();
    let want: Vec<StepStats> = (1..=8)
        .map(|step| {
            every
                .train_step(&batches[step as usize - 1], lr(step), step, &opt)
                .unwrap()
        })
        .collect();

    let mut be = CudaTrainer::<f32>::new(&cfg, &params, None).unwrap();
    be.set_readback_every(3).unwrap();
    let mut got = Vec::new();
    for step in 1..=8u64 {
        be.submit_step(&batches[step as usize - 1], lr(step), step, &opt)
            .unwrap();
        got.extend(be.take_step_stats(step == 5).unwrap());
    }
    got.extend(be.take_step_stats(true).unwrap());
    assert!(be.graph_active(), "the ring's steps were not graph replays");
    let steps: Vec<u64> = got.iter().map(|r| r.step).collect();
    assert_eq!(
        steps,
        (1..=8).collect::<Vec<_>>(),
        "steps out of order or lost"
    );
    for (r, w) in got.iter().zip(&want) {
        assert_eq!(
            r.stats, *w,
            "step {}: ring {:?} vs read back each step {w:?}",
            r.step, r.stats
        );
    }
    assert!(
        be.take_step_stats(true).unwrap().is_empty(),
        "metrics handed back twice"
    );
    assert_eq!(
        be.params().unwrap().data,
        every.params().unwrap().data,
        "weights differ"
    );

    let mut bad = params.clone();
    bad.data.fill(f32::NAN);
    let mut be = CudaTrainer::<f32>::new(&cfg, &bad, None).unwrap();
    be.set_readback_every(3).unwrap();
    be.submit_step(&batches[0], lr(1), 1, &opt).unwrap();
    be.submit_step(&batches[1], lr(2), 2, &opt).unwrap();
    let err = be.take_step_stats(true).unwrap_err().to_string();
    assert!(err.contains("not finite at step 1"), "{err}");
    note("  step metrics: 8 steps through a ring of 3, in order, bit for bit");
}

/// Three steps replayed from a captured CUDA graph give the same bits as three eager steps.
#[test]
fn graph_replay_matches_eager() {
    if backend_skip("graph replay") {
        return;
    }
    let cfg = ModelConfig::preset("tiny", None).unwrap();
    let params = ParamArena::init(&cfg, 8);
    let opt = OptimConfig::default();
    let mut results = Vec::new();
    for graph in [false, true] {
        let mut be = CudaTrainer::<Bf16>::new(&cfg, &params, None).unwrap();
        be.set_use_graph(graph);
        let mut r = Rng::new(101);
        let mut losses = Vec::new();
        for step in 1..=4 {
            let b = random_batch(&mut r, cfg.vocab, 4, 64);
            losses.push(
                be.train_step(&b, 1e-3 * step as f32, step, &opt)
                    .unwrap()
                    .ce,
            );
        }
        if graph {
            assert!(
                be.graph_active(),
                "graph capture did not happen: {:?}",
                be.graph_note()
            );
        }
        results.push((losses, be.params().unwrap().data));
    }
    assert_eq!(results[0].0, results[1].0, "losses differ (eager vs graph)");
    assert!(
        results[0].1 == results[1].1,
        "weights differ after 4 steps (eager vs graph)"
    );
}

/// The bundled sample: `$TERSE_SAMPLE_BOOKS` (set by gpu-check.sh to its copy in gpu-run/),
/// else the repository's `data/sample-books.txt` (at build time or under the working directory).
fn sample_bytes() -> Vec<u8> {
    let mut tried = Vec::new();
    let env = std::env::var("TERSE_SAMPLE_BOOKS").ok();
    for p in env.iter().map(String::as_str).chain([
        concat!(env!("CARGO_MANIFEST_DIR"), "/data/sample-books.txt"),
        "data/sample-books.txt",
    ]) {
        match std::fs::read(p) {
            Ok(b) => return b,
            Err(e) => tried.push(format!("{p}: {e}")),
        }
    }
    panic!("bundled sample not found ({})", tried.join("; "))
}

fn text_batch(bytes: &[u8], r: &mut Rng, batch: usize, seq: usize) -> Batch {
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for _ in 0..batch {
        let s = r.below((bytes.len() - seq - 1) as u64) as usize;
        inputs.extend(bytes[s..s + seq].iter().map(|&b| b as u32));
        targets.extend(bytes[s + 1..s + seq + 1].iter().map(|&b| b as u32));
    }
    Batch {
        inputs,
        targets,
        batch,
        seq,
    }
}

/// 200 steps of m1-3m on the bundled sample: the GPU (bf16) loss curve tracks the CPU (f32) one.
/// `TERSE_PARITY_CPU_STEPS` shortens the CPU side (the comparison then covers the last 50 of
/// those steps).
#[test]
fn loss_curve_tracks_cpu() {
    if backend_skip("loss curve") {
        return;
    }
    let steps: u64 = 200;
    let cpu_steps: u64 = std::env::var("TERSE_PARITY_CPU_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(steps)
        .clamp(60, steps);
    let cfg = ModelConfig::preset("m1-3m", None).unwrap();
    let params = ParamArena::init(&cfg, 9);
    let bytes = sample_bytes();
    let opt = OptimConfig::default();
    let (batch, seq) = (4, 256);
    let lr = |s: u64| 2e-3 * (s.min(20) as f32 / 20.0);
    let mut gpu_be = CudaTrainer::<Bf16>::new(&cfg, &params, None).unwrap();
    let mut cpu_be = cpu::CpuBackend::new(&cfg, params.clone(), None).unwrap();
    let (mut gl, mut cl) = (Vec::new(), Vec::new());
    let mut r = Rng::new(102);
    let t0 = std::time::Instant::now();
    for step in 1..=steps {
        let b = text_batch(&bytes, &mut r, batch, seq);
        gl.push(gpu_be.train_step(&b, lr(step), step, &opt).unwrap().ce);
        if step <= cpu_steps {
            cl.push(cpu_be.train_step(&b, lr(step), step, &opt).unwrap().ce);
        }
    }
    let tail = (cpu_steps - 50) as usize..cpu_steps as usize;
    let diff: f32 = tail.clone().map(|i| (gl[i] - cl[i]).abs()).sum::<f32>() / 50.0;
    note(&format!(
        "  loss curve: {steps} GPU steps, {cpu_steps} CPU steps ({:.1} s); first {:.3}/{:.3}, \
         step {cpu_steps} {:.3}/{:.3} (gpu/cpu); mean |diff| over steps {}..{} = {diff:.4}",
        t0.elapsed().as_secs_f64(),
        gl[0],
        cl[0],
        gl[cpu_steps as usize - 1],
        cl[cpu_steps as usize - 1],
        tail.start + 1,
        tail.end
    ));
    assert!(
        gl[steps as usize - 1] < gl[0] - 0.5,
        "GPU loss did not fall"
    );
    assert!(
        diff < 0.05,
        "GPU and CPU loss curves differ by {diff} on average"
    );
}

/// A checkpoint trained on the GPU, saved and loaded back, scores the same bits/byte on the CPU
/// as on the GPU.
#[test]
fn gpu_checkpoint_evaluates_on_cpu() {
    if backend_skip("checkpoint") {
        return;
    }
    let cfg = ModelConfig::preset("tiny", None).unwrap();
    let params = ParamArena::init(&cfg, 10);
    let bytes = sample_bytes();
    let opt = OptimConfig::default();
    let mut gpu_be = CudaTrainer::<Bf16>::new(&cfg, &params, None).unwrap();
    let mut r = Rng::new(103);
    for step in 1..=30 {
        let b = text_batch(&bytes, &mut r, 8, 64);
        gpu_be.train_step(&b, 3e-3, step, &opt).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("terse-gpu-ckpt-{}", std::process::id()));
    let trained = gpu_be.params().unwrap();
    terse::checkpoint::save_checkpoint(&dir, &cfg, &trained, None).unwrap();
    let (cfg2, loaded) = terse::checkpoint::load_model(&dir).unwrap();
    assert_eq!(loaded.data, trained.data, "checkpoint round trip");
    let held = &bytes[bytes.len() - 4096..];
    let windows = terse::data::eval_windows(held, 64, None);
    let mut cpu_be = cpu::CpuBackend::new(&cfg2, loaded, None).unwrap();
    let c = terse::eval::score_windows(&mut cpu_be, &windows, 8, None).unwrap();
    let g = terse::eval::score_windows(&mut gpu_be, &windows, 8, None).unwrap();
    note(&format!(
        "  checkpoint: held-out {:.4} bpb on the CPU, {:.4} on the GPU",
        c.bits_per_byte, g.bits_per_byte
    ));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        (c.bits_per_byte - g.bits_per_byte).abs() < 0.02,
        "CPU {} vs GPU {} bits/byte",
        c.bits_per_byte,
        g.bits_per_byte
    );
}

// ---------------------------------------------------------------------------------------------
// M1's exact coding path: bit for bit, not within a tolerance

/// M1 with sharpened random weights (varied, peaked distributions, as a trained model gives).
/// A random M1 of `preset` attending over `context` positions (`None`: unbounded).
fn exact_m1(preset: &str, context: Option<usize>, seed: u64) -> terse::m1::ExactM1 {
    let mut cfg = terse::model::ModelConfig::preset(preset, None).unwrap();
    cfg.context = context;
    let mut p = terse::model::ParamArena::init(&cfg, seed);
    p.data.iter_mut().for_each(|x| *x *= 4.0);
    terse::m1::ExactM1::new(&cfg, &p).unwrap()
}

/// What the random schedule needs of a GPU M1 (either contract's).
trait GpuM1Streams {
    fn position(&self, stream: usize) -> usize;
    fn reset(&mut self, stream: usize);
    fn step(&mut self, feeds: &[(usize, u8)]) -> anyhow::Result<Vec<terse::m1::Probs>>;
    /// A step's integer CDFs under `q`, built on the GPU (submit, then collect); `None` where the
    /// GPU M1 does not build them.
    fn step_cdfs(
        &mut self,
        feeds: &[(usize, u8)],
        q: &CdfQuantizer,
    ) -> Option<anyhow::Result<Vec<Cdf>>>;
}

/// Implements [`GpuM1Streams`] for a GPU M1 by its own methods, plus `$extra` (its `step_cdfs`).
macro_rules! gpu_m1_streams {
    ($t:ty { $($extra:tt)* }) => {
        impl GpuM1Streams for $t {
            fn position(&self, stream: usize) -> usize {
                <$t>::position(self, stream)
            }
            fn reset(&mut self, stream: usize) {
                <$t>::reset(self, stream)
            }
            fn step(&mut self, feeds: &[(usize, u8)]) -> anyhow::Result<Vec<terse::m1::Probs>> {
                <$t>::step(self, feeds)
            }
            $($extra)*
        }
    };
}
gpu_m1_streams!(terse::backend::cuda::GpuExactM1 {
    fn step_cdfs(
        &mut self,
        _: &[(usize, u8)],
        _: &CdfQuantizer,
    ) -> Option<anyhow::Result<Vec<Cdf>>> {
        None
    }
});
gpu_m1_streams!(terse::backend::cuda::GpuInt8M1 {
    fn step_cdfs(
        &mut self,
        feeds: &[(usize, u8)],
        q: &CdfQuantizer,
    ) -> Option<anyhow::Result<Vec<Cdf>>> {
        Some(self.submit(feeds, q).and_then(|()| self.collect()))
    }
});

/// The CDF precisions the GPU's CDFs are checked under: every `total_bits` from the smallest to
/// the largest the quantizer allows, with the smallest and other `f_min`s.
fn quantizers() -> Vec<CdfQuantizer> {
    use terse::coder::min_f_min;
    [
        (16, 1),
        (8, 1),
        (24, min_f_min(24)),
        (12, 3),
        (20, min_f_min(20)),
        (24, 1 << 16),
        (16, 256),
    ]
    .into_iter()
    .map(|(bits, f_min)| CdfQuantizer::new(bits, f_min).unwrap())
    .collect()
}

/// Runs a random schedule of `steps` steps on `gpu` and, stream by stream, on the CPU
/// (`cpu(stream, byte, starts)` feeds one byte to that stream's CPU state, `starts` when it is
/// the window's first): each step feeds a random subset of the streams in random order, every
/// fifth step all of them (the steady state of coding: a graph replay on `GpuInt8M1`); a stream
/// restarts (a new window) now and then, stream 0 never does (its context grows to `steps`
/// positions). Every distribution must match bit for bit; where the GPU builds integer CDFs,
/// every other step checks those instead, against `CdfQuantizer::quantize` of the CPU's
/// distributions, under each of [`quantizers`] in turn.
fn check_random_schedule(
    what: &str,
    gpu: &mut impl GpuM1Streams,
    streams: usize,
    steps: usize,
    seed: u64,
    mut cpu: impl FnMut(usize, u8, bool) -> terse::m1::Probs,
) {
    use terse::m1::WINDOW_START;
    let text = sample_bytes();
    let quantizers = quantizers();
    let mut r = Rng::new(seed);
    let (mut checked, mut cdfs_checked) = (0usize, 0usize);
    let t0 = std::time::Instant::now();
    for step in 0..steps {
        let mut order: Vec<usize> = (0..streams)
            .filter(|_| step % 5 == 4 || r.below(4) != 0)
            .collect();
        r.shuffle(&mut order);
        let feeds: Vec<(usize, u8)> = order
            .iter()
            .map(|&st| {
                let restart = gpu.position(st) == 0 || (st != 0 && r.below(60) == 0);
                if restart {
                    gpu.reset(st);
                    (st, WINDOW_START)
                } else if r.below(10) == 0 {
                    (st, r.below(256) as u8)
                } else {
                    (st, text[(step * 7 + st * 1000) % text.len()])
                }
            })
            .collect();
        let q = quantizers[step / 2 % quantizers.len()];
        let cdfs = if step % 2 == 1 {
            gpu.step_cdfs(&feeds, &q).map(|c| c.unwrap())
        } else {
            None
        };
        let probs = match cdfs {
            Some(_) => Vec::new(),
            None => gpu.step(&feeds).unwrap(),
        };
        for (k, &(st, byte)) in feeds.iter().enumerate() {
            let want = cpu(st, byte, gpu.position(st) == 1);
            let at = gpu.position(st) - 1;
            if let Some(cdfs) = &cdfs {
                assert_eq!(
                    cdfs[k],
                    q.quantize(&want).unwrap(),
                    "{what}: step {step}, stream {st} at position {at}: the GPU's CDF under \
                     {q:?} is not the quantised CPU distribution"
                );
                cdfs_checked += 1;
                continue;
            }
            let g = &probs[k];
            if let Some(i) = (0..256).find(|&i| g[i].to_bits() != want[i].to_bits()) {
                panic!(
                    "{what}: step {step}, stream {st} at position {at}: byte {i} GPU {:e} vs CPU {:e}",
                    g[i],
                    want[i]
                );
            }
            checked += 1;
        }
    }
    note(&format!(
        "{what}: {checked} distributions and {cdfs_checked} CDFs bit-identical over {streams} \
         streams (longest context {steps}); {:.1} s with the CPU twin",
        t0.elapsed().as_secs_f64()
    ));
}

/// [`check_random_schedule`] for contract 2's [`GpuExactM1`](terse::backend::cuda::GpuExactM1).
fn exact_m1_case(preset: &str, context: Option<usize>, streams: usize, steps: usize, seed: u64) {
    use terse::m1::WindowState;
    let m1 = exact_m1(preset, context, seed);
    let mut gpu = terse::backend::cuda::GpuExactM1::new(&m1, streams, steps + 1).unwrap();
    let mut cpu: Vec<WindowState> = vec![WindowState::default(); streams];
    let what = format!("exact M1 {preset}");
    check_random_schedule(&what, &mut gpu, streams, steps, seed, |st, byte, starts| {
        if starts {
            m1.start(&mut cpu[st])
        } else {
            m1.push(&mut cpu[st], byte)
        }
    });
}

#[test]
fn exact_m1_matches_cpu_bit_for_bit() {
    let Some(_k) = gpu("exact_m1_matches_cpu_bit_for_bit") else {
        return;
    };
    exact_m1_case("tiny", None, 7, 400, 21);
    // Longer than a block of score threads (256), unbounded and with the ring cache wrapping
    // (four times on a GPU, twice on the emulator).
    let long = if emulated() { 600 } else { 1200 };
    exact_m1_case("m1-3m", None, 5, long, 22);
    exact_m1_case("tiny", Some(48), 7, 400, 23);
    exact_m1_case("m1-3m", Some(256), 5, long, 24);
}

#[test]
fn exact_m1_refuses_bad_feeds() {
    let Some(_k) = gpu("exact_m1_refuses_bad_feeds") else {
        return;
    };
    let m1 = exact_m1("tiny", None, 3);
    let mut g = terse::backend::cuda::GpuExactM1::new(&m1, 2, 2).unwrap();
    assert!(g.step(&[(2, 0)]).is_err(), "stream out of range");
    assert!(g.step(&[(0, 0), (0, 1)]).is_err(), "stream fed twice");
    g.step(&[(0, 0)]).unwrap();
    g.step(&[(0, 1)]).unwrap();
    assert!(g.step(&[(0, 2)]).is_err(), "stream past its capacity");
    assert_eq!(g.position(0), 2);
    g.reset(0);
    assert_eq!(g.step(&[(0, 0), (1, 0)]).unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// M1 under contract 3 (int8), the one coding uses: bit for bit

/// A random contract-3 M1 of `preset` attending over `context` positions.
fn int8_m1(preset: &str, context: usize, seed: u64) -> terse::m1::Int8M1 {
    let mut cfg = terse::model::ModelConfig::preset(preset, None).unwrap();
    cfg.context = Some(context);
    let mut p = terse::model::ParamArena::init(&cfg, seed);
    p.data.iter_mut().for_each(|x| *x *= 4.0);
    terse::m1::Int8M1::new(&cfg, &p).unwrap()
}

/// [`check_random_schedule`] for [`GpuInt8M1`](terse::backend::cuda::GpuInt8M1) against
/// [`Int8M1`](terse::m1::Int8M1), with M1's `context` shorter than `steps` so the sliding window
/// (and the ring cache wrapping) is exercised.
fn int8_m1_case(preset: &str, context: usize, streams: usize, steps: usize, seed: u64) {
    use terse::m1::Int8State;
    let m1 = int8_m1(preset, context, seed);
    let mut gpu = terse::backend::cuda::GpuInt8M1::new(&m1, streams, steps + 1).unwrap();
    assert_eq!(gpu.fingerprint(), m1.fingerprint());
    let mut cpu: Vec<Int8State> = vec![Int8State::default(); streams];
    let what = format!("int8 M1 {preset}, context {context}");
    check_random_schedule(&what, &mut gpu, streams, steps, seed, |st, byte, starts| {
        if starts {
            m1.start(&mut cpu[st])
        } else {
            m1.push(&mut cpu[st], byte)
        }
    });
    assert!(
        gpu.graph_active(),
        "{what}: the step over every stream was not replayed as a graph"
    );
}

/// The distributions and integer CDFs of [`GpuInt8M1`](terse::backend::cuda::GpuInt8M1), over
/// steps feeding every stream (a captured graph, replayed) and steps feeding some (eager), equal
/// the CPU's bit for bit.
#[test]
fn int8_m1_matches_cpu_bit_for_bit() {
    let Some(_k) = gpu("int8_m1_matches_cpu_bit_for_bit") else {
        return;
    };
    // Many streams (more than a product block's 4 rows), resets, random bytes, a window that
    // slides past the context; on a GPU also longer than a block of score threads (256).
    let (short, long) = if emulated() { (200, 120) } else { (300, 1200) };
    int8_m1_case("tiny", 24, 9, short, 31);
    int8_m1_case("m1-3m", if emulated() { 40 } else { 300 }, 3, long, 32);
}

#[test]
fn int8_m1_refuses_bad_feeds() {
    let Some(_k) = gpu("int8_m1_refuses_bad_feeds") else {
        return;
    };
    let m1 = int8_m1("tiny", 16, 3);
    let mut g = terse::backend::cuda::GpuInt8M1::new(&m1, 2, 2).unwrap();
    let full = |e: anyhow::Error| e.to_string();
    assert_eq!(full(g.step(&[(2, 0)]).unwrap_err()), "stream 2 of 2");
    assert_eq!(
        full(g.step(&[(0, 0), (0, 1)]).unwrap_err()),
        "stream 0 fed twice in one step"
    );
    g.step(&[(0, 0)]).unwrap();
    g.step(&[(0, 1)]).unwrap();
    assert_eq!(
        full(g.step(&[(0, 2)]).unwrap_err()),
        "stream 0 is full (2 positions)"
    );
    assert_eq!(g.position(0), 2);
    g.reset(0);
    assert_eq!(g.step(&[(0, 0), (1, 0)]).unwrap().len(), 2);
}

/// `GpuInt8M1::for_chunks` gives a batch as many streams as its cache budget holds (one at
/// least) and a capacity of a whole chunk plus the window's start.
#[test]
fn int8_m1_for_chunks_fits_its_cache_budget() {
    use terse::backend::cuda::GpuInt8M1;
    let Some(_k) = gpu("int8_m1_for_chunks_fits_its_cache_budget") else {
        return;
    };
    let m1 = int8_m1("tiny", 16, 3);
    let cfg = m1.config();
    // Keys and values per layer: 16 ring slots (the context, shorter than a chunk) of d_model
    // int8 channels and one 4-byte exponent per head of 64.
    let per_stream = 2 * cfg.n_layers * 16 * (cfg.d_model + 4 * cfg.d_model / 64);
    for (budget, streams) in [(0, 1), (per_stream - 1, 1), (3 * per_stream + 7, 3)] {
        let g = GpuInt8M1::for_chunks(&m1, 100, budget).unwrap();
        assert_eq!(
            (g.streams(), g.capacity()),
            (streams, 101),
            "budget {budget}"
        );
    }
}

/// `GpuInt8M1`'s submitted steps keep `M1Batch`'s rules: one step pending (a second submit and a
/// collect with none pending are refused), refused feeds leave nothing pending and no stream
/// advanced, and an empty step gives no CDFs.
#[test]
fn int8_m1_submit_holds_one_pending_step() {
    use terse::m1::M1Batch;
    let Some(_k) = gpu("int8_m1_submit_holds_one_pending_step") else {
        return;
    };
    let m1 = int8_m1("tiny", 16, 3);
    let mut g = terse::backend::cuda::GpuInt8M1::new(&m1, 2, 4).unwrap();
    let q = CdfQuantizer::default();
    let e = g.collect().unwrap_err().to_string();
    assert!(e.contains("no step is pending"), "{e}");
    g.submit(&[(0, 0)], &q).unwrap();
    let e = g.submit(&[(1, 0)], &q).unwrap_err().to_string();
    assert!(e.contains("a step is already pending"), "{e}");
    assert_eq!(g.collect().unwrap().len(), 1);
    assert!(g.collect().is_err(), "collected twice");
    for bad in [vec![(2, 0)], vec![(1, 0), (1, 0)]] {
        assert!(g.submit(&bad, &q).is_err(), "{bad:?}");
        assert!(
            g.collect().is_err(),
            "{bad:?}: a refused step left one pending"
        );
    }
    assert_eq!((g.position(0), g.position(1)), (1, 0));
    g.submit(&[], &q).unwrap();
    assert!(g.collect().unwrap().is_empty());
    assert_eq!(
        M1Batch::step_cdfs(&mut g, &[(1, 0), (0, 7)], &q)
            .unwrap()
            .len(),
        2
    );
}

/// Two `GpuInt8M1`s on one GPU stepping alternately, as the coders drive them (submit A, submit
/// B, collect A, collect B), each with its own CUDA stream and page-locked buffers, give the
/// CPU's CDFs; A feeds every stream each step (graph replay), B some of its streams.
#[test]
fn two_int8_batches_in_flight_give_the_cpu_cdfs() {
    use terse::m1::{CpuM1Batch, M1Batch, WINDOW_START};
    let Some(_k) = gpu("two_int8_batches_in_flight_give_the_cpu_cdfs") else {
        return;
    };
    let m1 = int8_m1("tiny", 16, 5);
    let streams = 5;
    let new_gpu = || terse::backend::cuda::GpuInt8M1::new(&m1, streams, 40).unwrap();
    let (mut a, mut b) = (new_gpu(), new_gpu());
    let (mut cpu_a, mut cpu_b) = (CpuM1Batch::new(&m1, streams), CpuM1Batch::new(&m1, streams));
    let text = sample_bytes();
    let mut r = Rng::new(8);
    let q = CdfQuantizer::default();
    for step in 0..30 {
        let byte = |st: usize| {
            if step == 0 {
                WINDOW_START
            } else {
                text[(step * 13 + st * 517) % text.len()]
            }
        };
        let feeds_a: Vec<(usize, u8)> = (0..streams).rev().map(|st| (st, byte(st))).collect();
        let feeds_b: Vec<(usize, u8)> = (0..streams)
            .filter(|_| step == 0 || r.below(3) != 0)
            .map(|st| (st, byte(st)))
            .collect();
        a.submit(&feeds_a, &q).unwrap();
        b.submit(&feeds_b, &q).unwrap();
        let (got_a, got_b) = (a.collect().unwrap(), b.collect().unwrap());
        assert_eq!(
            got_a,
            cpu_a.step_cdfs(&feeds_a, &q).unwrap(),
            "A, step {step}"
        );
        assert_eq!(
            got_b,
            cpu_b.step_cdfs(&feeds_b, &q).unwrap(),
            "B, step {step}"
        );
    }
    assert!(
        a.graph_active(),
        "A's steps over every stream were not a graph"
    );
    note("two GpuInt8M1 in flight: 30 alternating steps, every CDF the CPU's");
}

/// `m1q_cdf`, the CDF kernel every `GpuInt8M1` step ends with, is `CdfQuantizer::quantize` bit
/// for bit on rows chosen to reach its edges (zeros, an all-zero row, subnormals, values spanning
/// more than 2^40, one huge value among tiny ones, ties), at total_bits 8, 16, 20 and 24 with their
/// smallest and largest `f_min`; and refuses, naming the row and byte, what `quantize` refuses.
#[test]
fn int8_cdf_kernel_matches_the_quantizer_on_crafted_rows() {
    use terse::coder::min_f_min;
    let Some(k) = gpu("int8_cdf_kernel_matches_the_quantizer_on_crafted_rows") else {
        return;
    };
    let mut r = Rng::new(4);
    let mut rows: Vec<[f32; 256]> = Vec::new();
    let mut row = |f: &mut dyn FnMut(usize) -> f32| rows.push(std::array::from_fn(&mut *f));
    row(&mut |i| if i == 200 { 1.0 } else { 0.0 });
    row(&mut |_| 0.0);
    row(&mut |i| if i % 2 == 0 { -0.0 } else { 0.0 });
    row(&mut |i| f32::from_bits(1 + (i as u32 % 5) * 0x1234));
    // Subnormals beside the smallest normals: their exponents within 40 of each other.
    row(&mut |i| match i % 2 {
        0 => f32::MIN_POSITIVE * (1 + i % 3) as f32,
        _ => f32::from_bits(i as u32 * 30_011 + 1),
    });
    row(&mut |i| {
        if i < 128 {
            f32::from_bits(i as u32 * 31)
        } else {
            1e-30 * i as f32
        }
    });
    // 2^0 down to 2^-127: more than 2^40 apart, the small ones floored to 0 or a few units.
    row(&mut |i| (-(i as f32) / 2.0).exp2());
    row(&mut |i| if i == 3 { f32::MAX } else { 1e-40 });
    row(&mut |i| {
        if i == 255 {
            3.0e38
        } else {
            f32::from_bits(i as u32)
        }
    });
    row(&mut |_| 0.25);
    row(&mut |i| if i % 7 == 0 { 0.0 } else { (i % 7) as f32 });
    for _ in 0..6 {
        let scale = (r.below(60) as f32 - 30.0).exp2();
        row(&mut |_| (r.below(1 << 20) as f32 / (1 << 20) as f32).powi(8) * scale);
    }
    let mut checked = 0;
    for bits in [8, 16, 20, 24] {
        for f_min in [min_f_min(bits), 1 << (bits - 8)] {
            let q = CdfQuantizer::new(bits, f_min).unwrap();
            let got = cuda::int8_m1::quantize_on_gpu(&k, &rows, &q).unwrap();
            for (i, (g, p)) in got.iter().zip(&rows).enumerate() {
                let want = q.quantize(p).unwrap();
                assert_eq!(g.cumulative(), want.cumulative(), "row {i} under {q:?}");
                checked += 1;
            }
        }
    }
    let q = CdfQuantizer::default();
    for (bad, what) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "infinity"),
        (-1e-3, "negative"),
    ] {
        let mut refused = vec![[0.1f32; 256]; 3];
        refused[1][9] = bad;
        refused[1][40] = f32::NAN;
        assert!(q.quantize(&refused[1]).is_err());
        let e = cuda::int8_m1::quantize_on_gpu(&k, &refused, &q)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1") && e.contains("(byte 9)"), "{what}: {e}");
    }
    note(&format!(
        "m1q_cdf: {checked} crafted CDFs equal the quantizer's"
    ));
}

// ---------------------------------------------------------------------------------------------
// M2 generation on the GPU: contract 3 at any vocabulary, bit for bit

/// A random contract-3 model of `vocab` tokens on the tiny shape, attending over `context`.
fn int8_model(vocab: usize, context: usize, seed: u64) -> terse::m1::Int8Model {
    let mut cfg = terse::model::ModelConfig::preset("tiny", Some(vocab)).unwrap();
    cfg.context = Some(context);
    let mut p = terse::model::ParamArena::init(&cfg, seed);
    p.data.iter_mut().for_each(|x| *x *= 4.0);
    terse::m1::Int8Model::new(&cfg, &p).unwrap()
}

/// [`GpuDecoder`](terse::generate::GpuDecoder) gives [`Int8Model`](terse::m1::Int8Model)'s
/// logits bit for bit, at a vocabulary that is not a whole number of product blocks: prompts
/// extended one position per launch, steps of every context (a graph, replayed) and of some
/// (eager), a dropped context's stream taken by a new one (emptied first). It refuses a fourth
/// context on three streams, a prompt past the context, a token outside the vocabulary and a
/// context stepped before its first feed.
#[test]
fn gpu_decoder_matches_int8_model_bit_for_bit() {
    use terse::generate::{Decoder, GpuDecoder};
    let Some(_k) = gpu("gpu_decoder_matches_int8_model_bit_for_bit") else {
        return;
    };
    let (vocab, context) = (1000, 24);
    let cpu = int8_model(vocab, context, 41);
    let dev = GpuDecoder::new(&cpu, 3).unwrap();
    let mut rng = Rng::new(5);
    let mut token = move || (rng.next_u64() % vocab as u64) as u32;
    let check = |what: &str, got: &[f32], want: &[f32]| {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}: logit {i}: {g} vs {w}");
        }
    };
    let poisoned = |n: usize| vec![f32::NAN; n];
    let mut cpu_states = vec![cpu.empty_state(), cpu.empty_state(), cpu.empty_state()];
    let mut dev_states = vec![dev.empty_state(), dev.empty_state(), dev.empty_state()];
    for (i, len) in [4usize, 1, 7].into_iter().enumerate() {
        let prompt: Vec<u32> = (0..len).map(|_| token()).collect();
        let (mut want, mut got) = (poisoned(vocab), poisoned(vocab));
        Decoder::extend(&cpu, &mut cpu_states[i], &prompt, &mut want).unwrap();
        dev.extend(&mut dev_states[i], &prompt, &mut got).unwrap();
        check(&format!("prompt of context {i}"), &got, &want);
    }
    for step in 0..8 {
        // Every context, then contexts 0 and 2 only (rows 2 of 3 streams: eager).
        let rows: Vec<usize> = if step % 3 == 2 {
            vec![0, 2]
        } else {
            vec![0, 1, 2]
        };
        let tokens: Vec<u32> = rows.iter().map(|_| token()).collect();
        let (mut want, mut got) = (poisoned(rows.len() * vocab), poisoned(rows.len() * vocab));
        let mut c: Vec<_> = cpu_states
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| rows.contains(i))
            .map(|(_, s)| s)
            .collect();
        Decoder::step(&cpu, &mut c, &tokens, &mut want).unwrap();
        let mut d: Vec<_> = dev_states
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| rows.contains(i))
            .map(|(_, s)| s)
            .collect();
        dev.step(&mut d, &tokens, &mut got).unwrap();
        check(&format!("step {step} of contexts {rows:?}"), &got, &want);
    }
    assert!(
        dev.graph_active(),
        "the step of every context was not replayed as a graph"
    );
    // A fourth context while three are live is refused; once one drops, its stream is reused,
    // emptied, by the newcomer.
    let mut fourth = dev.empty_state();
    let e = dev
        .extend(&mut fourth, &[1], &mut poisoned(vocab))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "all 3 GPU contexts are in use: give the decoder more streams"
    );
    drop(dev_states.remove(1));
    cpu_states.remove(1);
    let prompt: Vec<u32> = (0..5).map(|_| token()).collect();
    let (mut want, mut got) = (poisoned(vocab), poisoned(vocab));
    let mut fresh = cpu.empty_state();
    Decoder::extend(&cpu, &mut fresh, &prompt, &mut want).unwrap();
    dev.extend(&mut fourth, &prompt, &mut got).unwrap();
    check("a new context on a dropped context's stream", &got, &want);
    // Refusals leave the contexts as they were.
    let e = dev
        .extend(&mut fourth, &vec![1; context], &mut poisoned(vocab))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{context} tokens do not fit a context of {context} holding 5")
    );
    let e = dev
        .step(&mut [&mut fourth], &[vocab as u32], &mut poisoned(vocab))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("token {vocab} fed to stream 1 is outside the vocabulary {vocab}")
    );
    let mut unstarted = dev.empty_state();
    drop(dev_states.remove(0));
    let e = dev
        .step(&mut [&mut unstarted], &[1], &mut poisoned(vocab))
        .unwrap_err();
    assert!(e.to_string().contains("before its first feed"), "{e}");
    let t = token();
    let (mut want, mut got) = (poisoned(vocab), poisoned(vocab));
    Decoder::step(&cpu, &mut [&mut fresh], &[t], &mut want).unwrap();
    dev.step(&mut [&mut fourth], &[t], &mut got).unwrap();
    check("a step after the refusals", &got, &want);
    // Six contexts: two row groups of the fused products, the second part empty.
    let dev = GpuDecoder::new(&cpu, 6).unwrap();
    let mut cpu_states: Vec<_> = (0..6).map(|_| cpu.empty_state()).collect();
    let mut dev_states: Vec<_> = (0..6).map(|_| dev.empty_state()).collect();
    for step in 0..4 {
        let tokens: Vec<u32> = (0..6).map(|_| token()).collect();
        let (mut want, mut got) = (poisoned(6 * vocab), poisoned(6 * vocab));
        for i in 0..6 {
            if step == 0 {
                let (w, g) = (i * vocab..(i + 1) * vocab, i * vocab..(i + 1) * vocab);
                Decoder::extend(&cpu, &mut cpu_states[i], &tokens[i..=i], &mut want[w]).unwrap();
                dev.extend(&mut dev_states[i], &tokens[i..=i], &mut got[g])
                    .unwrap();
            }
        }
        if step > 0 {
            let mut c: Vec<_> = cpu_states.iter_mut().collect();
            Decoder::step(&cpu, &mut c, &tokens, &mut want).unwrap();
            let mut d: Vec<_> = dev_states.iter_mut().collect();
            dev.step(&mut d, &tokens, &mut got).unwrap();
        }
        check(&format!("six contexts, step {step}"), &got, &want);
    }
}

/// Generation on the GPU writes the CPU int8 model's text byte for byte with the same seed,
/// through context restarts (each a dropped context and a new one).
#[test]
fn gpu_generation_equals_the_cpus() {
    use terse::generate::{generate, GpuDecoder, SampleOptions};
    use terse::tokenize::{BytesParams, MethodParams, TokenSource};
    let Some(_k) = gpu("gpu_generation_equals_the_cpus") else {
        return;
    };
    let context = 16;
    let cpu = int8_model(256, context, 43);
    let dev = GpuDecoder::new(&cpu, 1).unwrap();
    let src = TokenSource {
        method: MethodParams::Bytes(BytesParams {
            chunk_bytes: 10_240,
        }),
        token_bits: 8,
        vocab: 256,
        m1_fingerprint: None,
        source: "test".into(),
        bytes_covered: 1,
        tokens: 1,
    };
    let o = SampleOptions {
        max_bytes: 60,
        temperature: 1.0,
        top_k: 0,
        seed: 9,
    };
    let run = |m: &dyn Fn(&mut Vec<u8>) -> terse::generate::GenerationReport| {
        let mut text = Vec::new();
        let r = m(&mut text);
        (text, r.context_restarts)
    };
    let on_cpu = run(&|text| {
        generate(&cpu, &src, None, context, b"Once", &o, |t| {
            text.extend_from_slice(t);
            Ok(())
        })
        .unwrap()
    });
    let on_gpu = run(&|text| {
        generate(&dev, &src, None, context, b"Once", &o, |t| {
            text.extend_from_slice(t);
            Ok(())
        })
        .unwrap()
    });
    assert_eq!(on_cpu.0.len(), 60);
    assert!(on_cpu.1 > 0, "no context restart was exercised");
    assert_eq!(on_gpu, on_cpu);
}

/// `terse tokenize --method ac|equal-info --gpu` end to end: a [`GpuInt8M1`] batch gives the
/// CPU's tokens, and decodes them back to what the CPU decodes.
///
/// [`GpuInt8M1`]: terse::backend::cuda::GpuInt8M1
#[test]
fn m1_datasets_on_gpu_equal_cpu() {
    use std::sync::{Arc, Mutex};
    use terse::tokenize::{self, M1Spec, Method};
    let Some(_k) = gpu("m1_datasets_on_gpu_equal_cpu") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 30 chunks of 2,048 bytes on a GPU; on the emulator four chunks of 256 (the last short), so
    // one of the three streams still codes chunk after chunk.
    let (len, chunk) = if emulated() {
        (900, 256)
    } else {
        (60_000, 2048)
    };
    let text = &sample_bytes()[..len];
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, text).unwrap();
    // A context shorter than a chunk: `ac` slides M1's window.
    let m1 = Arc::new(int8_m1("tiny", 128, 9));
    for method in [Method::Ac, Method::EqualInfo] {
        let cpu_spec = M1Spec::new(m1.clone(), 16);
        // As `--gpu` codes: two batches stepping in turn (2 + 1 streams for many chunks, so a
        // stream takes chunk after chunk, reset between them); an Equal-Info window of a whole
        // chunk would take chunk + 1 positions.
        let half = |streams| {
            Box::new(terse::backend::cuda::GpuInt8M1::new(&m1, streams, chunk + 1).unwrap())
        };
        let gpu_batch = Arc::new(Mutex::new(
            terse::m1::M1BatchPair::new(half(2), half(1)).unwrap(),
        ));
        let gpu_spec = M1Spec::new(m1.clone(), 16).with_batch(gpu_batch.clone());
        let name = method.name();
        let (a, b) = (
            dir.path().join(format!("{name}-cpu")),
            dir.path().join(format!("{name}-gpu")),
        );
        let t0 = std::time::Instant::now();
        tokenize::tokenize_corpus(method, &corpus, &a, 16, chunk, Some(&cpu_spec), false).unwrap();
        let t1 = std::time::Instant::now();
        tokenize::tokenize_corpus(method, &corpus, &b, 16, chunk, Some(&gpu_spec), false).unwrap();
        let t2 = std::time::Instant::now();
        let read = |d: &std::path::Path| std::fs::read(d.join(tokenize::TOKENS_FILE)).unwrap();
        assert_eq!(
            read(&a),
            read(&b),
            "GPU {name} tokens differ from the CPU's"
        );
        let back = tokenize::decode_dataset_on(&b, Some(m1.clone()), Some(gpu_batch)).unwrap();
        let cpu_back = tokenize::decode_dataset_with_m1(&a, Some(m1.clone())).unwrap();
        assert_eq!(back, cpu_back, "{name} decoded on the GPU");
        note(&format!(
            "{name} on the GPU: {} bytes coded identically (CPU {:.2} s, GPU {:.2} s, decode {:.2} s)",
            text.len(),
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            t2.elapsed().as_secs_f64()
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// the same tests on the CUDA emulator

/// Set in the child process that runs this file's tests against the emulator.
const EMULATED: &str = "TERSE_EMULATED_GPU";

/// Makes the emulated cuBLASLt offer no algorithm with an epilogue (`emu/cublaslt.cpp`).
const NO_EPILOGUES: &str = "TERSE_EMU_NO_EPILOGUES";

/// Whether this process runs against the emulator (which some tests meet with smaller sizes).
fn emulated() -> bool {
    std::env::var_os(EMULATED).is_some()
}

/// Tests too slow for the emulator, each covered there by a smaller one: the 200-step m1-3m loss
/// curve by `train_step_matches_cpu` and `gpu_checkpoint_evaluates_on_cpu`.
const TOO_SLOW_TO_EMULATE: &[&str] = &["loss_curve_tracks_cpu"];

/// Tests that check a page-locked copy has not landed before the host waits: the emulator models
/// one device, whose every host wait lands all pending copies, so another test's wait in the same
/// process could land this test's copy early. Each runs emulated in a process of its own.
const RUN_ALONE: &[&str] = &["page_locked_download_lands_at_the_wait"];

/// The tests rerun where the emulated cuBLASLt offers no epilogue (`NO_EPILOGUES`), so the
/// step's fallback (the ReLU kernel after a plain product) runs too.
const EPILOGUE_TESTS: &[&str] = &["gemm_matches_cpu", "train_step_matches_cpu"];

/// The kernel-level tests, rerun under the emulator's reverse schedule (blocks last-to-first, a
/// block's warps one at a time from the last, each until it waits on the block, and cp.async
/// copies landing at once): a race between the threads of a block (a missing barrier, a buffer
/// refilled while read), or a block counting on another having run, makes one of the two
/// schedules fail.
const KERNEL_TESTS: &[&str] = &[
    "cast_matches_host_rounding",
    "relu_matches_cpu",
    "embed_matches_cpu",
    "rmsnorm_matches_cpu",
    "fused_residual_rmsnorm_matches_cpu",
    "attention_matches_cpu",
    "classifier_matches_cpu",
    "global_norm_matches_cpu",
    "adamw_matches_cpu",
    "adamw_dev_matches_cpu",
    "reductions_are_deterministic",
    "exact_m1_refuses_bad_feeds",
    "int8_m1_refuses_bad_feeds",
    "int8_m1_matches_cpu_bit_for_bit",
    "int8_cdf_kernel_matches_the_quantizer_on_crafted_rows",
    "two_int8_batches_in_flight_give_the_cpu_cdfs",
    "gpu_decoder_matches_int8_model_bit_for_bit",
];

/// Where no GPU answers, every test above runs again in a child process whose libcuda and
/// libcublasLt are the CUDA emulator's (`emu/`, built here with the host C++ compiler): the
/// backend's driver calls, launchers, kernels, graphs and GEMM wrapper all execute, on the CPU.
/// Then each bug planted in `emu/planted/planted.cu` runs in a child of its own, to prove the
/// emulator catches it.
/// Skipped with a note where a GPU is present (the tests ran on it), where the binary has no
/// kernels (built without nvcc), on a target other than x86-64 (the emulator's fiber switch is
/// x86-64 assembly), or where python3 or g++ is missing. Wherever it runs, it first fails if a
/// test it names by name is not a test of this file (a filter that matches nothing runs nothing
/// and passes, so a renamed test would silently drop out of the emulated runs).
#[test]
fn gpu_parity_on_the_emulator() {
    use std::process::Command;
    if emulated() {
        return;
    }
    let me = std::env::current_exe().unwrap();
    check_named_tests_exist(&me);
    let skip = |why: &str| note(&format!("SKIPPED: gpu_parity_on_the_emulator: {why}"));
    if cuda::gpu_unavailable_reason().is_none() {
        return skip("a GPU is present, and the tests above ran on it");
    }
    if cuda::embedded_kernels().is_empty() {
        return skip("this binary was built without nvcc, so it has no kernels to emulate");
    }
    if cfg!(not(target_arch = "x86_64")) {
        return skip(&format!(
            "the emulator's fiber switch is x86-64 assembly (emu/runtime.cpp), and this target \
             is {}",
            std::env::consts::ARCH
        ));
    }
    for tool in ["python3", "g++"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return skip(&format!("{tool} not found"));
        }
    }
    let libs = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu");
    let build = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/emu/build.py"))
        .arg(&libs)
        .output()
        .expect("running emu/build.py");
    assert!(
        build.status.success(),
        "emu/build.py failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let library_path = match std::env::var("LD_LIBRARY_PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", libs.display()),
        _ => libs.display().to_string(),
    };
    let child = || {
        let mut cmd = Command::new(&me);
        cmd.env("LD_LIBRARY_PATH", &library_path).env(EMULATED, "1");
        cmd
    };
    let run = |what: &str, filters: &[&str], env: &[(&str, &str)]| {
        let mut cmd = child();
        cmd.args(filters).args(["--exact", "--test-threads", "2"]);
        if filters.is_empty() {
            cmd.args(["--skip", "gpu_parity_on_the_emulator"]);
            for t in TOO_SLOW_TO_EMULATE.iter().chain(RUN_ALONE) {
                cmd.args(["--skip", t]);
            }
        }
        cmd.envs(env.iter().copied());
        let t0 = std::time::Instant::now();
        let out = cmd.output().expect("running the emulated tests");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        note(&format!(
            "gpu_parity_on_the_emulator: {what} ({:.0} s):\n{stderr}{stdout}",
            t0.elapsed().as_secs_f64()
        ));
        assert!(out.status.success(), "{what}: failed (output above)");
        assert!(
            stderr.contains("running on terse CUDA emulator"),
            "{what}: the tests did not find the emulator"
        );
    };
    run("every test, emulated", &[], &[]);
    for &t in RUN_ALONE {
        run(&format!("{t}, emulated in a process of its own"), &[t], &[]);
    }
    run(
        "the kernel tests, reverse schedule (blocks last-to-first, warps apart)",
        KERNEL_TESTS,
        &[("TERSE_EMU_SCHEDULE", "reverse")],
    );
    run(
        "the GEMMs and the training step where cuBLASLt offers no epilogue (the ReLU kernel)",
        EPILOGUE_TESTS,
        &[(NO_EPILOGUES, "1")],
    );
    run(
        "the step metrics with every event query answering not ready (a busy GPU)",
        &["step_metrics_arrive_in_order"],
        &[("TERSE_EMU_EVENTS_BUSY", "1")],
    );
    let nvtx_log = libs.join("nvtx.log");
    run(
        "NVTX ranges, read back from the emulator's stand-in libnvToolsExt",
        &["nvtx_ranges_name_the_step"],
        &[(NVTX_LOG, nvtx_log.to_str().expect("a UTF-8 target path"))],
    );
    for bug in PLANTED_BUGS {
        let mut cmd = child();
        cmd.args(["planted_bug_on_the_emulator", "--exact", "--ignored"])
            .env(PLANTED, bug.name);
        if bug.reverse {
            cmd.env("TERSE_EMU_SCHEDULE", "reverse");
        }
        let out = cmd.output().expect("running a planted bug");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = bug.name;
        match bug.stops_with {
            None => assert!(
                out.status.success(),
                "planted {name}: the emulator missed it:\n{stderr}"
            ),
            Some(text) => assert!(
                !out.status.success() && stderr.contains(text),
                "planted {name}: the emulator should have stopped it with \"{text}\":\n{stderr}"
            ),
        }
    }
    note(&format!(
        "gpu_parity_on_the_emulator: all {} planted bugs caught",
        PLANTED_BUGS.len()
    ));
}

/// Fails unless every test [`gpu_parity_on_the_emulator`] names (to rerun, to skip, or to run a
/// planted bug in) is a test of this binary, as its own `--list` reports them.
fn check_named_tests_exist(me: &std::path::Path) {
    let out = std::process::Command::new(me)
        .args(["--list", "--format", "terse"])
        .output()
        .expect("listing this file's tests");
    assert!(out.status.success(), "--list failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let listed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .collect();
    let named = KERNEL_TESTS
        .iter()
        .chain(TOO_SLOW_TO_EMULATE)
        .chain(RUN_ALONE)
        .chain(EPILOGUE_TESTS)
        .chain(&["gpu_parity_on_the_emulator", "planted_bug_on_the_emulator"]);
    for name in named {
        assert!(
            listed.contains(name),
            "gpu_parity_on_the_emulator names the test {name}, which tests/gpu_parity.rs does not \
             have (renamed or removed? update KERNEL_TESTS / TOO_SLOW_TO_EMULATE / RUN_ALONE / EPILOGUE_TESTS); its tests are \
             {listed:?}"
        );
    }
}

/// Names the planted bug a child process runs (`planted_bug_on_the_emulator`).
const PLANTED: &str = "TERSE_EMU_PLANTED";

/// A bug in `emu/planted/planted.cu` and how the emulator must meet it.
struct PlantedBug {
    name: &'static str,
    /// `None`: the child sees the symptom itself (a wrong answer, a refused launch) and passes;
    /// `Some(text)`: the emulator must end the process with `text` on stderr.
    stops_with: Option<&'static str>,
    /// Run under `TERSE_EMU_SCHEDULE=reverse` (warps apart, cp.async landing at once).
    reverse: bool,
}

const fn planted(
    name: &'static str,
    stops_with: Option<&'static str>,
    reverse: bool,
) -> PlantedBug {
    PlantedBug {
        name,
        stops_with,
        reverse,
    }
}

const PLANTED_BUGS: &[PlantedBug] = &[
    planted("missing_barrier", None, false),
    planted("launch_bounds", None, false),
    planted("misaligned_load", Some("misaligned address"), false),
    planted("shared_overflow", Some("out of bounds"), false),
    planted("divergent_sync", Some("can never release"), false),
    planted("global_overflow", Some("outside every allocation"), false),
    planted("cp_async_no_wait", None, false),
    planted("refill_race", None, true),
    planted("dp4a_unsigned", None, false),
    planted("fast_math_as_ieee", None, false),
];

/// One planted bug on the emulator, proving one of its checks fires.
#[test]
#[ignore = "run by gpu_parity_on_the_emulator, in a child process against the emulator"]
fn planted_bug_on_the_emulator() {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let bug = std::env::var(PLANTED).expect("TERSE_EMU_PLANTED names the bug");
    assert!(emulated(), "planted bugs exist on the emulator only");
    let k = gpu("planted_bug_on_the_emulator").expect("the emulator answers");
    // The emulator reaches every kernel through any module.
    let module = k.module("relu").expect("the relu module");
    let kernel = module
        .load_function(&format!(
            "planted_{}",
            bug.replace("launch_bounds", "missing_barrier")
        ))
        .expect("a planted kernel");
    let config = |blocks: u32, threads: u32| LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let s = k.stream();
    let mut out = poison::<f32>(&k, 128);
    let input = up::<f32>(&k, &[0.0; 64]);
    let ramp_host: Vec<f32> = (0..128).map(|i| i as f32).collect();
    let ramp = up::<f32>(&k, &ramp_host);
    let n = 64i32;
    // 32 words of four signed bytes each, every word with a negative byte, and their dot products.
    let word = |i: i32, j: i32| -> i32 {
        i32::from_le_bytes(
            [(i - 16) as i8, -((j % 127) as i8) - 1, 3, (2 * i - j) as i8].map(|b: i8| b as u8),
        )
    };
    let (words_a, words_b): (Vec<i32>, Vec<i32>) = (0..32)
        .map(|i| (word(i, 7 * i), word(31 - i, i + 5)))
        .unzip();
    let signed_dot = |a: i32, b: i32| -> i32 {
        a.to_le_bytes()
            .iter()
            .zip(b.to_le_bytes())
            .map(|(&x, y)| x as i8 as i32 * y as i8 as i32)
            .sum()
    };
    let (dev_a, dev_b) = (up_raw(&k, &words_a), up_raw(&k, &words_b));
    let ieee_in = up_raw(&k, &[1e-20f32, 1e-20, 80.0]);
    let mut dots = up_raw(&k, &[0i32; 32]);
    let mut b = s.launch_builder(&kernel);
    // SAFETY (all launches): `out` holds 128 floats, `input` 64, `ramp` 128; each kernel's bug is deliberate
    // and is caught by the emulator before it touches memory outside them.
    let launched = match bug.as_str() {
        "missing_barrier" => unsafe { b.arg(&mut out).launch(config(2, 64)) },
        "launch_bounds" => unsafe { b.arg(&mut out).launch(config(1, 128)) },
        "misaligned_load" => unsafe { b.arg(&input).arg(&mut out).launch(config(1, 1)) },
        "shared_overflow" => unsafe { b.arg(&mut out).launch(config(1, 33)) },
        "divergent_sync" => unsafe { b.arg(&mut out).launch(config(1, 32)) },
        "global_overflow" => unsafe { b.arg(&input).arg(&n).arg(&mut out).launch(config(1, 32)) },
        "cp_async_no_wait" => unsafe { b.arg(&input).arg(&mut out).launch(config(1, 64)) },
        "refill_race" => unsafe { b.arg(&ramp).arg(&mut out).launch(config(1, 64)) },
        "dp4a_unsigned" => unsafe {
            b.arg(&dev_a)
                .arg(&dev_b)
                .arg(&mut dots)
                .launch(config(1, 32))
        },
        "fast_math_as_ieee" => unsafe { b.arg(&ieee_in).arg(&mut out).launch(config(1, 1)) },
        other => panic!("no planted bug {other}"),
    };
    if bug == "launch_bounds" {
        assert!(
            launched.is_err(),
            "128 threads launched a kernel bounded to 64"
        );
        return;
    }
    launched.expect("launch");
    k.synchronize().expect("synchronize");
    if bug == "cp_async_no_wait" {
        let got = down(&k, &out);
        assert!(
            got[..64].iter().any(|v| *v != 0.0),
            "the tile read without cp.async.wait_group held the copied data: copies land early"
        );
        return;
    }
    if bug == "refill_race" {
        let got = down(&k, &out);
        assert!(
            (0..64).any(|t| got[t] != ramp_host[63 - t] + ramp_host[127 - t]),
            "a buffer refilled while another warp still read it gave the right answer: the \
             warps did not run apart, or the copies did not land at once"
        );
        return;
    }
    if bug == "fast_math_as_ieee" {
        let got = down(&k, &out);
        assert_eq!(
            got[0], 0.0,
            "a fast-math kernel kept a denormal product: the emulator does not flush denormals"
        );
        assert_ne!(
            got[1].to_bits(),
            80f32.exp().to_bits(),
            "__expf(80) gave the exact exp's bits: the emulator does not model the GPU's \
             rounding of x log2 e"
        );
        return;
    }
    if bug == "dp4a_unsigned" {
        let got = down_raw(&k, &dots);
        assert!(
            (0..32).all(|i| got[i] != signed_dot(words_a[i], words_b[i])),
            "the unsigned __dp4a gave the signed dot products of negative bytes: the emulator \
             does not tell the overloads apart, so a kernel mixing them up would pass here"
        );
        return;
    }
    if bug == "missing_barrier" {
        let got = down(&k, &out);
        for block in 0..2 {
            assert!(
                (0..64).any(|t| got[block * 64 + t] != (63 - t) as f32),
                "block {block} read its neighbours' shared slots right without a barrier: \
                 shared memory is not poisoned between blocks"
            );
        }
        return;
    }
    panic!("the emulator ran planted_{bug} to the end without stopping it");
}
