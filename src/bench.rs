//! Throughput measurements behind `terse bench m1` and `terse bench train` (`terse bench
//! kernels` is [`crate::backend::cuda::bench`]).

use crate::backend::{create_backend, cuda, Device, OptimConfig};
use crate::m1::{CpuM1Batch, ExactM1, Int8M1, M1Batch, WindowState, WINDOW_START};
use crate::model::Batch;
use crate::model::{ModelConfig, ParamArena};
use crate::rng::Rng;
use anyhow::{ensure, Result};
use rayon::prelude::*;
use std::time::Instant;

/// Dense bf16 peak of an H100 SXM (llm.c's figure), FLOP/s: the denominator of MFU.
pub const H100_PEAK_FLOPS: f64 = 989e12;

/// How [`bench_m1`] drives M1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum M1Mode {
    /// On the CPU, each window all at once, windows in parallel.
    AllAtOnce,
    /// On the CPU, all windows together one position per step (as the coders drive M1:
    /// [`CpuM1Batch`]).
    Lockstep,
    /// On the GPU ([`cuda::GpuInt8M1`] for contract 3, [`cuda::GpuExactM1`] for contract 2),
    /// all windows together one position per step.
    Gpu,
}

/// Which arithmetic [`bench_m1`] times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum M1Contract {
    /// Contract 3, what M1 codes with ([`Int8M1`]: int8 products on the fastest kernel).
    Int8,
    /// Contract 2, the float model it is quantised from ([`ExactM1`]): the yardstick.
    Float,
}

/// What [`bench_m1`] measured.
#[derive(Clone, Debug)]
pub struct M1Bench {
    /// Positions computed (a window of `len` bytes has `len + 1`).
    pub positions: usize,
    pub seconds: f64,
    pub positions_per_s: f64,
    /// Where it ran, e.g. "cpu, lockstep (2 threads)".
    pub device: String,
}

/// Windows of the untimed warm-up run before each timed one (or all of them, when fewer).
const WARM_UP_WINDOWS: usize = 64;

/// Times M1 under `contract` on `windows` random windows of `len` bytes: a `preset` byte-level
/// model with random weights attending over at most `context` positions (0: unbounded, which
/// contract 3 refuses), driven as `mode` says. The model is built and then run untimed on
/// [`WARM_UP_WINDOWS`] of the windows (thread pool, first touch of the heap, kernel loading on a
/// GPU), so whichever contract runs first pays no one-time costs; the timed run starts afresh.
pub fn bench_m1(
    preset: &str,
    windows: usize,
    len: usize,
    context: usize,
    mode: M1Mode,
    contract: M1Contract,
) -> Result<M1Bench> {
    ensure!(windows > 0, "no windows to run");
    let mut cfg = ModelConfig::preset(preset, Some(256))?;
    cfg.context = (context > 0).then_some(context);
    let params = ParamArena::init(&cfg, 0);
    let mut rng = Rng::new(2);
    let data: Vec<Vec<u8>> = (0..windows)
        .map(|_| (0..len).map(|_| rng.below(256) as u8).collect())
        .collect();
    // The first `n` windows as streams, one position per step (how the coders drive M1); `step`
    // feeds each window's next byte and returns how many positions it computed. Timed from here.
    type Step<'a> = dyn FnMut(&[(usize, u8)]) -> Result<usize> + 'a;
    let lockstep = |n: usize, step: &mut Step| {
        let t = Instant::now();
        let mut positions = 0;
        for k in 0..=len {
            let feeds: Vec<(usize, u8)> = (0..n)
                .map(|w| (w, if k == 0 { WINDOW_START } else { data[w][k - 1] }))
                .collect();
            positions += step(&feeds)?;
        }
        Ok((positions, t.elapsed().as_secs_f64()))
    };
    let threads = rayon::current_num_threads();
    // One run over the first `n` windows from fresh state (built untimed): positions computed
    // and seconds.
    type Run<'a> = Box<dyn FnMut(usize) -> Result<(usize, f64)> + 'a>;
    let (mut run, device): (Run, String) = match (contract, mode) {
        (M1Contract::Float, M1Mode::Gpu) => {
            let m1 = ExactM1::new(&cfg, &params)?;
            let run = move |n| {
                let mut g = cuda::GpuExactM1::new(&m1, n, len + 1)?;
                lockstep(n, &mut |f| Ok(g.step(f)?.len()))
            };
            (Box::new(run), "cuda".to_string())
        }
        (M1Contract::Int8, M1Mode::Gpu) => {
            let m1 = Int8M1::new(&cfg, &params)?;
            let run = move |n| {
                let mut g = cuda::GpuInt8M1::new(&m1, n, len + 1)?;
                lockstep(n, &mut |f| Ok(g.step(f)?.len()))
            };
            (Box::new(run), "cuda, int8 products on dp4a".to_string())
        }
        (M1Contract::Float, M1Mode::Lockstep) => {
            let m1 = ExactM1::new(&cfg, &params)?;
            let run = move |n| {
                let mut states = vec![WindowState::default(); n];
                lockstep(n, &mut |f| {
                    let bytes: Vec<u8> = f.iter().map(|&(_, b)| b).collect();
                    let mut refs: Vec<&mut WindowState> = states.iter_mut().collect();
                    Ok(m1.push_rows(&mut refs, &bytes).len())
                })
            };
            (Box::new(run), format!("cpu, lockstep ({threads} threads)"))
        }
        (M1Contract::Int8, M1Mode::Lockstep) => {
            let m1 = Int8M1::new(&cfg, &params)?;
            let kernel = m1.kernel().name();
            let run = move |n| {
                let mut batch = CpuM1Batch::new(&m1, n);
                lockstep(n, &mut |f| Ok(batch.step(f)?.len()))
            };
            let how = format!("cpu, int8 products on {kernel}, lockstep ({threads} threads)");
            (Box::new(run), how)
        }
        (M1Contract::Float, M1Mode::AllAtOnce) => {
            let m1 = ExactM1::new(&cfg, &params)?;
            let run = move |n| all_at_once(&data[..n], |w| m1.window_probs(w).len());
            (
                Box::new(run),
                format!("cpu, all at once ({threads} threads)"),
            )
        }
        (M1Contract::Int8, M1Mode::AllAtOnce) => {
            let m1 = Int8M1::new(&cfg, &params)?;
            let kernel = m1.kernel().name();
            let run = move |n| all_at_once(&data[..n], |w| m1.window_probs(w).len());
            let how = format!("cpu, int8 products on {kernel}, all at once ({threads} threads)");
            (Box::new(run), how)
        }
    };
    run(windows.min(WARM_UP_WINDOWS))?;
    let (positions, seconds) = run(windows)?;
    Ok(M1Bench {
        positions,
        seconds,
        positions_per_s: positions as f64 / seconds,
        device,
    })
}

/// Each window all at once, windows in parallel: positions computed and seconds.
fn all_at_once(windows: &[Vec<u8>], probs: impl Fn(&[u8]) -> usize + Sync) -> Result<(usize, f64)> {
    let t = Instant::now();
    let positions = windows.par_iter().map(|w| probs(w)).sum();
    Ok((positions, t.elapsed().as_secs_f64()))
}

/// What [`bench_train`] measured.
#[derive(Clone, Debug)]
pub struct TrainBench {
    pub vocab: usize,
    /// The backend's name after the timed steps.
    pub backend: String,
    /// Why that backend was chosen.
    pub note: String,
    pub seconds_per_step: f64,
    pub tokens_per_s: f64,
    /// Training GFLOP/s ([`ModelConfig::train_flops_per_token`] x tokens/s).
    pub gflops: f64,
    /// On the GPU: the fraction of [`H100_PEAK_FLOPS`] reached.
    pub mfu: Option<f64>,
    /// On the GPU: the fraction of the measured cuBLASLt ceiling
    /// ([`cuda::bench::GEMM_CEILING_FLOPS`]) reached.
    pub of_gemm_ceiling: Option<f64>,
}

/// Times `steps` training steps of a `preset` model (vocabulary `vocab`, default the preset's)
/// on one fixed random `batch x seq` batch, after 2 untimed warm-up steps.
pub fn bench_train(
    preset: &str,
    vocab: Option<usize>,
    batch: usize,
    seq: usize,
    steps: u64,
    device: Device,
) -> Result<TrainBench> {
    ensure!(
        batch > 0 && seq > 0 && steps > 0,
        "batch, seq and steps must be positive"
    );
    let cfg = ModelConfig::preset(preset, vocab)?;
    let params = ParamArena::init(&cfg, 0);
    let (mut be, note) = create_backend(device, &cfg, params, None)?;
    let mut rng = Rng::new(1);
    let n = batch * seq;
    let tokens: Vec<u32> = (0..n + 1)
        .map(|_| rng.below(cfg.vocab as u64) as u32)
        .collect();
    let data = Batch {
        inputs: tokens[..n].to_vec(),
        targets: tokens[1..].to_vec(),
        batch,
        seq,
    };
    let opt = OptimConfig::default();
    for step in 1..=2 {
        be.train_step(&data, 1e-4, step, &opt)?;
    }
    let t = Instant::now();
    for step in 3..3 + steps {
        be.train_step(&data, 1e-4, step, &opt)?;
    }
    let secs = t.elapsed().as_secs_f64() / steps as f64;
    let tokens_per_s = n as f64 / secs;
    let gflops = cfg.train_flops_per_token(seq) * tokens_per_s / 1e9;
    // Utilisation figures mean something only on the GPU.
    let on_gpu = be.device() == Device::Cuda;
    Ok(TrainBench {
        vocab: cfg.vocab,
        backend: be.name(),
        note,
        seconds_per_step: secs,
        tokens_per_s,
        gflops,
        mfu: on_gpu.then(|| gflops * 1e9 / H100_PEAK_FLOPS),
        of_gemm_ceiling: on_gpu.then(|| gflops * 1e9 / cuda::bench::GEMM_CEILING_FLOPS),
    })
}
