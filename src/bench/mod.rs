//! Throughput measurements behind `terse bench m1`, `terse bench train`, `terse bench generate`
//! ([`decode`], with [`memory`]'s copy bandwidth for its floor) and `terse bench serve` ([`load`]:
//! streaming clients against a running server) and `terse bench scaling` ([`scaling`]: the
//! data-parallel model); `terse bench kernels` is [`crate::backend::cuda::bench`].

pub mod decode;
pub mod load;
pub mod memory;
pub mod scaling;

use crate::backend::{create_backend, cuda, Device, GradReduction, OptimConfig};
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
enum M1Contract {
    /// Contract 3, what M1 codes with ([`Int8M1`]: int8 products on the fastest kernel).
    Int8,
    /// Contract 2, the float model it is quantised from ([`ExactM1`]): the yardstick.
    Float,
}

/// One contract's side of [`bench_m1`].
#[derive(Clone, Debug)]
pub struct M1Bench {
    /// Positions computed per run (a window of `len` bytes has `len + 1`).
    pub positions: usize,
    /// Positions/s of each timed run, in the order run.
    pub runs: Vec<f64>,
    /// The median of `runs`.
    pub positions_per_s: f64,
    /// Where it ran, e.g. "cpu, lockstep (2 threads)".
    pub device: String,
}

/// What [`bench_m1`] measured: both contracts on the same windows, driven the same way.
#[derive(Clone, Debug)]
pub struct M1Comparison {
    /// Contract 3 (what codes).
    pub int8: M1Bench,
    /// Contract 2 (the yardstick).
    pub float: M1Bench,
    /// `int8.positions_per_s / float.positions_per_s`: the ratio of the medians.
    pub ratio: f64,
    /// The lowest and highest ratio of one round's two runs (each round runs both contracts back
    /// to back, so a machine whose speed drifts moves both runs of a round alike).
    pub round_ratios: (f64, f64),
}

/// Windows of the untimed warm-up run before the timed ones (or all of them, when fewer).
const WARM_UP_WINDOWS: usize = 64;

/// Times M1 under both contracts on `windows` random windows of `len` bytes: a `preset`
/// byte-level model with random weights attending over at most `context` positions, driven as
/// `mode` says. Both models are built and run untimed on [`WARM_UP_WINDOWS`] of the windows
/// (thread pool, first touch of the heap, kernel loading on a GPU); then `rounds` rounds each
/// time one run of both from fresh state, alternating which goes first, so that neither contract
/// owns the machine's fast or slow moments. Refuses zero windows or rounds.
pub fn bench_m1(
    preset: &str,
    windows: usize,
    len: usize,
    context: usize,
    mode: M1Mode,
    rounds: usize,
) -> Result<M1Comparison> {
    ensure!(windows > 0, "no windows to run");
    ensure!(rounds > 0, "no rounds to run");
    ensure!(context > 0, "M1 needs a context of at least one position");
    let mut cfg = ModelConfig::preset(preset, Some(256))?;
    cfg.context = Some(context);
    let params = ParamArena::init(&cfg, 0);
    let mut rng = Rng::new(2);
    let data: Vec<Vec<u8>> = (0..windows)
        .map(|_| (0..len).map(|_| rng.below(256) as u8).collect())
        .collect();
    let mut int8 = contract_runner(&cfg, &params, &data, mode, M1Contract::Int8)?;
    let mut float = contract_runner(&cfg, &params, &data, mode, M1Contract::Float)?;
    let warm = windows.min(WARM_UP_WINDOWS);
    (int8.0)(warm)?;
    (float.0)(warm)?;
    let (mut q, mut f) = (Vec::new(), Vec::new());
    let mut positions = 0;
    for round in 0..rounds {
        let mut time = |run: &mut Run| -> Result<f64> {
            let (p, seconds) = run(windows)?;
            positions = p;
            Ok(p as f64 / seconds)
        };
        if round % 2 == 0 {
            q.push(time(&mut int8.0)?);
            f.push(time(&mut float.0)?);
        } else {
            f.push(time(&mut float.0)?);
            q.push(time(&mut int8.0)?);
        }
    }
    let ratios: Vec<f64> = q.iter().zip(&f).map(|(a, b)| a / b).collect();
    let side = |runs: Vec<f64>, device: String| M1Bench {
        positions,
        positions_per_s: median(&runs),
        runs,
        device,
    };
    let (int8, float) = (side(q, int8.1), side(f, float.1));
    Ok(M1Comparison {
        ratio: int8.positions_per_s / float.positions_per_s,
        round_ratios: (
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        ),
        int8,
        float,
    })
}

/// The middle value (the mean of the middle two for an even count) of a non-empty slice.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// One timed run over the first `n` windows from fresh state (built untimed): positions computed
/// and seconds.
type Run<'a> = Box<dyn FnMut(usize) -> Result<(usize, f64)> + 'a>;

/// `contract`'s model built from `params`, as a [`Run`] over `data` driven as `mode` says, and
/// where it runs.
fn contract_runner<'a>(
    cfg: &ModelConfig,
    params: &ParamArena,
    data: &'a [Vec<u8>],
    mode: M1Mode,
    contract: M1Contract,
) -> Result<(Run<'a>, String)> {
    let len = data[0].len();
    // The first `n` windows as streams, one position per step (how the coders drive M1); `step`
    // feeds each window's next byte and returns how many positions it computed. Timed from here.
    type Step<'a> = dyn FnMut(&[(usize, u8)]) -> Result<usize> + 'a;
    let lockstep = move |n: usize, step: &mut Step| {
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
    Ok(match (contract, mode) {
        (M1Contract::Float, M1Mode::Gpu) => {
            let m1 = ExactM1::new(cfg, params)?;
            let run = move |n| {
                let mut g = cuda::GpuExactM1::new(&m1, n, len + 1)?;
                lockstep(n, &mut |f| Ok(g.step(f)?.len()))
            };
            (Box::new(run), "cuda".to_string())
        }
        (M1Contract::Int8, M1Mode::Gpu) => {
            let m1 = Int8M1::new(cfg, params)?;
            let run = move |n| {
                let mut g = cuda::GpuInt8M1::new(&m1, n, len + 1)?;
                lockstep(n, &mut |f| Ok(g.step(f)?.len()))
            };
            (Box::new(run), "cuda, int8 products on dp4a".to_string())
        }
        (M1Contract::Float, M1Mode::Lockstep) => {
            let m1 = ExactM1::new(cfg, params)?;
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
            let m1 = Int8M1::new(cfg, params)?;
            let kernel = m1.kernel().name();
            let run = move |n| {
                let mut batch = CpuM1Batch::new(&m1, n);
                lockstep(n, &mut |f| Ok(batch.step(f)?.len()))
            };
            let how = format!("cpu, int8 products on {kernel}, lockstep ({threads} threads)");
            (Box::new(run), how)
        }
        (M1Contract::Float, M1Mode::AllAtOnce) => {
            let m1 = ExactM1::new(cfg, params)?;
            let run = move |n| all_at_once(&data[..n], |w| m1.window_probs(w).len());
            (
                Box::new(run),
                format!("cpu, all at once ({threads} threads)"),
            )
        }
        (M1Contract::Int8, M1Mode::AllAtOnce) => {
            let m1 = Int8M1::new(cfg, params)?;
            let kernel = m1.kernel().name();
            let run = move |n| all_at_once(&data[..n], |w| m1.window_probs(w).len());
            let how = format!("cpu, int8 products on {kernel}, all at once ({threads} threads)");
            (Box::new(run), how)
        }
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
    /// On the GPU: the card whose measured cuBLASLt ceiling `of_gemm_ceiling` is relative to
    /// ([`cuda::cost::Card::for_device`]), and the fraction of it reached.
    pub card: Option<cuda::cost::Card>,
    pub of_gemm_ceiling: Option<f64>,
}

/// Times `steps` training steps of a `preset` model (vocabulary `vocab`, default the preset's)
/// on one fixed random `batch x seq` batch, after 2 untimed warm-up steps, with the gradient
/// summed as `terse train` sums it (`reduction`: on the CPU, new runs sum per sequence).
pub fn bench_train(
    preset: &str,
    vocab: Option<usize>,
    batch: usize,
    seq: usize,
    steps: u64,
    device: Device,
    reduction: GradReduction,
) -> Result<TrainBench> {
    ensure!(
        batch > 0 && seq > 0 && steps > 0,
        "batch, seq and steps must be positive"
    );
    let cfg = ModelConfig::preset(preset, vocab)?;
    let params = ParamArena::init(&cfg, 0);
    let (mut be, note) = create_backend(device, &cfg, params, None)?;
    be.share_steps(reduction, 1, None)?;
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
    // Submitted as the trainer submits them (metrics taken as they come back), timed until the
    // last step's metrics are on the host.
    let t = Instant::now();
    for step in 3..3 + steps {
        be.submit_step(&data, 1e-4, step, &opt)?;
        be.take_step_stats(false)?;
    }
    be.take_step_stats(true)?;
    let secs = t.elapsed().as_secs_f64() / steps as f64;
    let tokens_per_s = n as f64 / secs;
    let gflops = cfg.train_flops_per_token(seq) * tokens_per_s / 1e9;
    // Utilisation figures mean something only on the GPU.
    let on_gpu = be.device() == Device::Cuda;
    let card = cuda::cost::Card::for_device(&be.name());
    Ok(TrainBench {
        vocab: cfg.vocab,
        backend: be.name(),
        note,
        seconds_per_step: secs,
        tokens_per_s,
        gflops,
        mfu: on_gpu.then(|| gflops * 1e9 / H100_PEAK_FLOPS),
        card: on_gpu.then_some(card),
        of_gemm_ceiling: on_gpu.then(|| gflops * 1e9 / card.gemm_flops),
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
    }
}
