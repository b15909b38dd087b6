//! The training loop: byte-level models (M1) on a streamed corpus, or M2 on a token dataset
//! (`terse tokenize`'s output, detected by its `metadata.json`); one backend step per batch,
//! periodic held-out bits/byte, JSONL metrics, a progress bar and atomic checkpoints from which
//! `--resume` continues bit for bit.

use super::schedule::{Schedule, ScheduleKind};
use crate::backend::cpu::{available_memory, training_memory};
use crate::backend::reduce::rank_share;
use crate::backend::{
    create_backend, create_qat_backend, cuda, Backend, Device, GradReduction, OptimConfig,
    CUDA_VALIDATED, MULTI_GPU_VALIDATED,
};
use crate::checkpoint::{
    load_model, load_training, save_checkpoint, TrainingState, MANIFEST_FILE, MODEL_FILE,
};
use crate::data::{eval_windows, read_heldout, ByteLoader, LoaderState};
use crate::dist::{bytes_fingerprint, check_agreement, gather_u64, Group, OnEveryRank};
use crate::eval::{score_tokens, score_windows};
use crate::m1::WINDOW_START;
use crate::model::{Batch, ModelConfig, ParamArena};
use crate::tokenize::{
    ChunkSplit, TokenDataset, TokenEvalSet, TokenLoader, TokenLoaderState, TokenSource,
    METADATA_FILE,
};
use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

/// Everything that defines a run. Saved in the checkpoint so that a resume continues the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub preset: String,
    /// A corpus (M1) or a token dataset directory (M2).
    pub data: PathBuf,
    /// M2 only: the held-out token dataset (same method, a held-out file); without it every
    /// [`crate::tokenize::HELDOUT_EVERY`]-th chunk of `data` is held out instead.
    #[serde(default)]
    pub heldout_data: Option<PathBuf>,
    /// Total optimiser steps (the schedule's length).
    pub steps: u64,
    /// Sequences per pass; a step's global batch is `batch * accum` sequences.
    pub batch: usize,
    /// Bytes (M1) or tokens (M2) per sequence.
    pub seq: usize,
    pub lr: f32,
    pub warmup: u64,
    pub schedule: ScheduleKind,
    pub min_lr_frac: f32,
    pub optim: OptimConfig,
    /// Bytes at the head of the corpus kept out of training and used for held-out bits/byte.
    pub heldout_bytes: u64,
    /// Held-out evaluation every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Held-out windows scored per evaluation (0: all).
    pub eval_windows: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub ckpt_every: u64,
    pub seed: u64,
    /// If set, the step count is fitted to this many seconds of training, measured over the
    /// first dozen steps; the fitted count is saved, so a resume repeats it.
    pub time_budget_s: Option<f64>,
    /// M2 only: what the token dataset holds (set from its metadata when the run starts; the
    /// method, its parameters and the M1 fingerprint are what `terse generate` and `terse eval`
    /// need to code text the way the training tokens were coded).
    #[serde(default)]
    pub tokens: Option<TokenSource>,
    /// Start from this checkpoint's float weights (its configuration must be `preset`'s) with a
    /// fresh optimiser and schedule, instead of the seeded initialisation.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Quantisation-aware training of M1: the CPU backend's forward pass simulates contract 3
    /// ([`crate::backend::cpu::CpuBackend::with_qat`]); byte-level runs only, never on CUDA.
    #[serde(default)]
    pub qat: bool,
    /// Passes of `batch` sequences summed into each step (gradient accumulation): the data, and
    /// on the CPU every bit of the result, are those of `batch * accum` in one pass.
    #[serde(default = "one_pass")]
    pub accum: usize,
    /// How the CPU backend sums a step's gradient over its sequences. Runs saved before the
    /// field sum over the whole batch at once, and continue so.
    #[serde(default)]
    pub grad_reduction: GradReduction,
}

fn one_pass() -> usize {
    1
}

impl TrainOptions {
    /// Sequences per optimiser step: `batch * accum`.
    pub fn global_batch(&self) -> usize {
        self.batch * self.accum
    }
}

/// The options a checkpoint at `path` was trained with (`None` for a checkpoint saved without
/// training state).
pub fn saved_options(path: &Path) -> Result<Option<TrainOptions>> {
    let Some(state) = crate::checkpoint::load_trainer_state(path)? else {
        return Ok(None);
    };
    let run: RunState = serde_json::from_value(state).with_context(|| {
        format!(
            "checkpoint {} holds training state of another format",
            path.display()
        )
    })?;
    Ok(Some(run.options))
}

/// True when `path` is a token dataset directory rather than a corpus file.
pub fn is_token_dataset(path: &Path) -> bool {
    path.join(METADATA_FILE).is_file()
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub out: PathBuf,
    pub backend: String,
    pub steps_done: u64,
    pub steps_total: u64,
    pub tokens: u64,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// Training loss of the last step in bits per byte (M2: bits per token times the training
    /// dataset's tokens per byte).
    pub final_train_bpb: f64,
    pub heldout_bpb: Option<f64>,
    pub params: usize,
}

/// What the loop saves beside the weights (the `state` of a training checkpoint).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunState {
    options: TrainOptions,
    step: u64,
    loader: DataState,
    tokens: u64,
}

/// Where the data loader stands (the JSON of a byte run is the bare [`LoaderState`], as before
/// token runs existed).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum DataState {
    Bytes(LoaderState),
    Tokens(TokenLoaderState),
}

/// The run's data: training batches and the held-out set.
enum DataSource {
    Bytes {
        loader: ByteLoader,
        heldout: Vec<u8>,
    },
    Tokens {
        loader: TokenLoader,
        heldout: TokenEvalSet,
    },
}

impl DataSource {
    /// Opens the data of `o` at `state` (`None`: the start of a fresh run).
    fn open(o: &TrainOptions, state: Option<&DataState>) -> Result<Self> {
        if o.tokens.is_none() {
            let loader = match state {
                None => ByteLoader::new(&o.data, o.heldout_bytes, o.global_batch(), o.seq, o.seed)?,
                Some(DataState::Bytes(s)) => ByteLoader::resume(
                    &o.data,
                    o.heldout_bytes,
                    o.global_batch(),
                    o.seq,
                    o.seed,
                    s,
                )?,
                Some(DataState::Tokens(_)) => bail!("byte run saved with a token loader state"),
            };
            let heldout = read_heldout(&o.data, o.heldout_bytes)?;
            return Ok(DataSource::Bytes { loader, heldout });
        }
        let split = if o.heldout_data.is_some() {
            ChunkSplit::All
        } else {
            ChunkSplit::Train
        };
        let loader = match state {
            None => TokenLoader::new(&o.data, split, o.global_batch(), o.seq, o.seed)?,
            Some(DataState::Tokens(s)) => TokenLoader::resume(&o.data, o.global_batch(), s)?,
            Some(DataState::Bytes(_)) => bail!("token run saved with a byte loader state"),
        };
        let max_rows = (o.eval_windows > 0).then_some(o.eval_windows);
        let heldout = match &o.heldout_data {
            Some(dir) => {
                let ds = TokenDataset::open(dir)?;
                loader
                    .dataset()
                    .metadata()
                    .identity
                    .clone()
                    .check_compatible(ds.metadata(), dir)?;
                TokenEvalSet::new(&ds, ChunkSplit::All, o.seq, max_rows)
            }
            None => TokenEvalSet::new(loader.dataset(), ChunkSplit::Heldout, o.seq, max_rows),
        };
        Ok(DataSource::Tokens { loader, heldout })
    }

    fn next_batch(&mut self) -> Result<Batch> {
        Ok(match self {
            DataSource::Bytes { loader, .. } => {
                loader.next_batch()?.with_window_start(WINDOW_START as u32)
            }
            DataSource::Tokens { loader, .. } => loader.next_batch(),
        })
    }

    fn state(&self) -> DataState {
        match self {
            DataSource::Bytes { loader, .. } => DataState::Bytes(loader.state()),
            DataSource::Tokens { loader, .. } => DataState::Tokens(loader.state()),
        }
    }

    /// Held-out bits per byte (`None` when there is nothing held out), its batches shared by the
    /// ranks of `group`.
    fn heldout_bpb(
        &self,
        backend: &mut dyn Backend,
        o: &TrainOptions,
        group: Option<&dyn Group>,
    ) -> Result<Option<f64>> {
        match self {
            DataSource::Bytes { heldout, .. } => {
                let windows = eval_windows(
                    heldout,
                    o.seq,
                    (o.eval_windows > 0).then_some(o.eval_windows),
                );
                if windows.is_empty() {
                    return Ok(None);
                }
                Ok(Some(
                    score_windows(backend, &windows, o.batch, group)?.bits_per_byte,
                ))
            }
            DataSource::Tokens { heldout, .. } => {
                if heldout.tokens == 0 {
                    return Ok(None);
                }
                Ok(Some(
                    score_tokens(heldout, backend, o.batch, group)?.bits_per_byte,
                ))
            }
        }
    }
}

/// How a run begins.
pub enum RunStart<'a> {
    /// A new run with these settings.
    Fresh(&'a TrainOptions),
    /// Continue the run saved in a checkpoint directory, with its settings; `steps` may extend it.
    Resume { dir: &'a Path, steps: Option<u64> },
}

/// Runs or resumes training, writing checkpoints and `metrics.jsonl` under `out`. `stop_after`
/// ends this invocation at that step (saving a checkpoint) without changing the schedule.
/// Refuses to write a new run over a checkpoint that is not the one being resumed.
fn check_output_dir(start: &RunStart, out: &Path) -> Result<()> {
    let holds_checkpoint = [MODEL_FILE, MANIFEST_FILE]
        .iter()
        .any(|f| out.join(f).exists());
    if !holds_checkpoint {
        return Ok(());
    }
    let same = |a: &Path| match (a.canonicalize(), out.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    match start {
        RunStart::Resume { dir, .. } if same(dir) => Ok(()),
        _ => bail!(
            "output directory {} already holds a checkpoint; continue it with --resume {0}, or choose another --out",
            out.display()
        ),
    }
}

pub fn train(
    start: RunStart,
    stop_after: Option<u64>,
    out: &Path,
    device: Device,
    progress: bool,
) -> Result<TrainSummary> {
    train_in_group(start, stop_after, out, device, progress, None)
}

/// [`train`] as one rank of `group` (`None`: alone). Every rank is given the same arguments and
/// passes every step's whole batch to its backend, which computes the rank's share; the ranks'
/// sums make every rank's weights identical to one process's. Rank 0 alone writes the
/// checkpoints and `metrics.jsonl` and shows progress. Errors every rank meets together (flags
/// that disagree between ranks, a batch they cannot share) are [`OnEveryRank`].
pub fn train_in_group(
    start: RunStart,
    stop_after: Option<u64>,
    out: &Path,
    device: Device,
    progress: bool,
    group: Option<Rc<dyn Group>>,
) -> Result<TrainSummary> {
    if let Some(g) = &group {
        check_agreement(
            g.as_ref(),
            command_fingerprint(&start, stop_after, out, device)?,
            "flags",
        )?;
    }
    let lead = group.as_ref().is_none_or(|g| g.rank() == 0);
    let progress = progress && lead;
    if stop_after == Some(0) {
        bail!("--stop-after 0 would stop before the first step and save no checkpoint; give a step of 1 or more");
    }
    check_output_dir(&start, out)?;
    let (mut cfg, params, moments, mut run) = match start {
        RunStart::Resume {
            dir,
            steps: steps_override,
        } => {
            let (cfg, params, st) = load_training(dir)?;
            let mut run: RunState = serde_json::from_value(st.state).with_context(|| {
                format!(
                    "checkpoint {} holds training state of another format",
                    dir.display()
                )
            })?;
            if let Some(s) = steps_override {
                run.options.steps = s;
            }
            (cfg, params, Some((st.m, st.v)), run)
        }
        RunStart::Fresh(opts) => {
            opts.validate()?;
            check_qat_device(opts, device)?;
            let mut opts = opts.clone();
            let vocab = if is_token_dataset(&opts.data) {
                ensure!(
                    !opts.qat,
                    "--qat simulates M1's int8 arithmetic (numeric contract 3), which only byte-level models run; {} is a token dataset, and M2 is never quantised: drop --qat",
                    opts.data.display()
                );
                let ds = TokenDataset::open(&opts.data)?;
                let src = ds.metadata().identity.clone();
                let vocab = src.vocab as usize;
                opts.tokens = Some(src);
                vocab
            } else {
                ensure!(
                    opts.heldout_data.is_none(),
                    "--heldout takes a token dataset and goes with --data TOKENS; a byte-level run holds out part of its corpus (--heldout-bytes)"
                );
                opts.tokens = None;
                256
            };
            let cfg = ModelConfig::preset(&opts.preset, Some(vocab))?;
            check_memory(&cfg, &opts, device)?;
            let params = match &opts.init {
                None => ParamArena::init(&cfg, opts.seed),
                Some(dir) => initial_weights(dir, &cfg)?,
            };
            let source = DataSource::open(&opts, None)?;
            let run = RunState {
                options: opts,
                step: 0,
                loader: source.state(),
                tokens: 0,
            };
            (cfg, params, None, run)
        }
    };
    let o = run.options.clone();
    check_qat_device(&o, device)?;
    // What exact inference will let a position attend over (checkpoints from before the field
    // get it when resumed).
    cfg.context.get_or_insert(o.seq);
    ensure!(
        run.step <= o.steps,
        "checkpoint is at step {} beyond --steps {}",
        run.step,
        o.steps
    );
    if let Some(n) = stop_after.filter(|&n| n <= run.step) {
        bail!(
            "--stop-after {n}: the checkpoint is already at step {}, so no step would run and nothing would be saved; give a later step",
            run.step
        );
    }
    // A shared run takes the GPU on `auto` only once a multi-GPU machine has run it.
    let device = match device {
        Device::Auto if group.is_some() && !MULTI_GPU_VALIDATED => Device::Cpu,
        d => d,
    };
    check_memory(&cfg, &o, device)?;
    rank_share(o.global_batch(), group.as_deref())?;
    let mut data = DataSource::open(&o, Some(&run.loader))?;
    let (mut backend, note) = if o.qat {
        create_qat_backend(device, &cfg, params, moments)?
    } else {
        create_backend(device, &cfg, params, moments)?
    };
    let shared = group.is_some();
    backend
        .share_steps(o.grad_reduction, o.accum, group.clone())
        .map_err(|e| -> anyhow::Error {
            if shared {
                OnEveryRank(format!("{e:#}")).into()
            } else {
                e
            }
        })?;
    let unit = match &o.tokens {
        Some(t) => format!("{}-bit {} tokens", t.token_bits, t.method),
        None => "bytes".to_string(),
    };
    let ranks = group
        .as_ref()
        .map_or(String::new(), |g| format!(", {} ranks", g.size()));
    if lead {
        eprintln!(
            "terse train: {} ({:.2}M params, vocab {}) on {}{ranks} [{note}], {} x {} {unit} per step, steps {}..{}",
            cfg.preset,
            cfg.total_params() as f64 / 1e6,
            cfg.vocab,
            backend.name(),
            o.global_batch(),
            o.seq,
            run.step,
            o.steps
        );
    }
    // Training loss is per token; scale it to bits per byte by the data's tokens per byte.
    let tokens_per_byte = o.tokens.as_ref().map_or(1.0, |t| t.tokens_per_byte());
    let mut metrics = if lead {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create output directory {}", out.display()))?;
        Some(MetricsLog::open(&out.join("metrics.jsonl"), run.step)?)
    } else {
        None
    };

    let stop = stop_after.unwrap_or(o.steps).min(o.steps);
    let bar = if progress {
        ProgressBar::new(o.steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("static template"),
    );
    bar.set_position(run.step);
    let tokens_per_step = (o.global_batch() * o.seq) as u64;
    let started = Instant::now();
    let start_step = run.step;
    let mut budget_clock = Instant::now();
    let (mut last_bpb, mut heldout_bpb) = (f64::NAN, None);
    let mut window_t = Instant::now();
    let mut window_tokens = 0u64;
    let mut steps_total = o.steps;
    let mut submitted = std::collections::VecDeque::new();
    while run.step < stop.min(steps_total) {
        let sched = Schedule {
            kind: o.schedule,
            peak_lr: o.lr,
            warmup: o.warmup,
            total: steps_total,
            min_lr_frac: o.min_lr_frac,
        };
        let lr = sched.lr(run.step);
        let batch = data.next_batch()?;
        backend.submit_step(&batch, lr, run.step + 1, &o.optim)?;
        run.step += 1;
        run.tokens += tokens_per_step;
        window_tokens += tokens_per_step;
        if run.step == start_step + 2 {
            budget_clock = Instant::now();
        }
        if let (Some(budget), true) = (o.time_budget_s, run.step == start_step + 12) {
            // Fit the schedule to the budget from the speed of steps 3..12 (the first two pay for
            // allocation); the fitted count is saved, so a resume repeats it.
            let per_step = budget_clock.elapsed().as_secs_f64() / 10.0;
            let spent = started.elapsed().as_secs_f64();
            steps_total = (run.step + ((budget - spent).max(0.0) / per_step) as u64)
                .clamp(run.step + 1, o.steps);
            // Every rank must stop at the same step: rank 0's clock decides.
            if let Some(g) = &group {
                steps_total = gather_u64(g.as_ref(), steps_total)?[0];
            }
            run.options.steps = steps_total;
            run.options.time_budget_s = None;
            bar.set_length(steps_total);
        }
        let tok_s = window_tokens as f64 / window_t.elapsed().as_secs_f64().max(1e-9);
        submitted.push_back(Submitted {
            step: run.step,
            lr,
            tokens_per_s: tok_s,
            tokens: run.tokens,
        });
        let eval_now =
            (o.eval_every > 0 && run.step % o.eval_every == 0) || run.step == steps_total;
        let save_now = (o.ckpt_every > 0 && run.step % o.ckpt_every == 0)
            || run.step == stop
            || run.step == steps_total;
        // Metrics rows are written as the backend hands the steps' metrics back (a GPU copies
        // them back in batches); an evaluation or a checkpoint waits for every step's, so that
        // the held-out score joins its step's row and the log stops where the checkpoint does.
        for done in backend.take_step_stats(eval_now || save_now)? {
            let sub = submitted
                .pop_front()
                .filter(|s| s.step == done.step)
                .with_context(|| format!("the backend reported step {} out of order", done.step))?;
            last_bpb = done.stats.ce as f64 / std::f64::consts::LN_2 * tokens_per_byte;
            let mut rec = serde_json::json!({
                "step": sub.step, "loss": done.stats.ce, "train_bpb": last_bpb, "z": done.stats.z,
                "grad_norm": done.stats.grad_norm, "lr": sub.lr, "tokens_per_s": sub.tokens_per_s,
                "tokens": sub.tokens,
            });
            if eval_now && sub.step == run.step {
                if let Some(bpb) = data.heldout_bpb(backend.as_mut(), &o, group.as_deref())? {
                    heldout_bpb = Some(bpb);
                    rec["heldout_bpb"] = bpb.into();
                    bar.println(format!(
                        "step {:>6}/{steps_total}  train {:.3} bpb  held-out {:.3} bpb  lr {:.2e}  {:.0} tok/s",
                        sub.step, last_bpb, bpb, sub.lr, sub.tokens_per_s
                    ));
                }
            }
            if let Some(m) = metrics.as_mut() {
                m.write(&rec)?;
            }
        }
        bar.set_position(run.step);
        bar.set_message(format!("{last_bpb:.3} bpb {:.1}K tok/s", tok_s / 1e3));
        if run.step % 20 == 0 {
            window_t = Instant::now();
            window_tokens = 0;
        }
        if save_now && lead {
            run.loader = data.state();
            save(out, &cfg, backend.as_ref(), &run)?;
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let tokens_run = (run.step - start_step) * tokens_per_step;
    Ok(TrainSummary {
        out: out.to_path_buf(),
        backend: backend.name(),
        steps_done: run.step,
        steps_total,
        tokens: tokens_run,
        seconds,
        tokens_per_s: tokens_run as f64 / seconds.max(1e-9),
        final_train_bpb: last_bpb,
        heldout_bpb,
        params: cfg.total_params(),
    })
}

/// A hash of what defines this invocation (the run's settings or the checkpoint it resumes, where
/// it stops, where it writes, the device), which every rank of a group must share.
fn command_fingerprint(
    start: &RunStart,
    stop_after: Option<u64>,
    out: &Path,
    device: Device,
) -> Result<u64> {
    let what = match start {
        RunStart::Fresh(o) => serde_json::to_string(o)?,
        RunStart::Resume { dir, steps } => format!("resume {} {steps:?}", dir.display()),
    };
    let text = format!("{what}\n{stop_after:?}\n{}\n{device:?}", out.display());
    Ok(bytes_fingerprint(text.as_bytes()))
}

/// What the trainer knew of a step when it submitted it, kept until the backend hands back the
/// step's metrics to write its row.
struct Submitted {
    step: u64,
    lr: f32,
    tokens_per_s: f64,
    tokens: u64,
}

/// Refuses a run whose batch would not fit in this machine's available memory on the CPU
/// backend, before anything is allocated (the allocation would abort the process). No check when
/// the run goes to the GPU or the available memory cannot be read.
fn check_memory(cfg: &ModelConfig, o: &TrainOptions, device: Device) -> Result<()> {
    let on_gpu = match device {
        _ if o.qat => false,
        Device::Cuda => true,
        Device::Auto => CUDA_VALIDATED && cuda::cuda_available(),
        Device::Cpu => false,
    };
    let Some(available) = available_memory().filter(|_| !on_gpu) else {
        return Ok(());
    };
    let need = training_memory(cfg, o.global_batch(), o.seq, o.qat, o.grad_reduction);
    if need.total() > available as u128 {
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        bail!(
            "--batch {} x --seq {} needs about {:.1} GiB of memory to train {} on the CPU \
             (activations {:.1} GiB, weights, gradients and AdamW moments {:.1} GiB); this \
             machine has {:.1} GiB available. Lower --batch or --seq",
            o.batch,
            o.seq,
            gib(need.total()),
            cfg.preset,
            gib(need.activations),
            gib(need.state),
            gib(available as u128)
        );
    }
    Ok(())
}

/// Refuses `--qat` with `--device cuda` before anything is read.
fn check_qat_device(o: &TrainOptions, device: Device) -> Result<()> {
    if o.qat {
        crate::backend::check_qat_device(device)?;
    }
    Ok(())
}

/// The float weights of the checkpoint at `dir` (`--init`), refused unless its configuration is
/// `cfg`'s (the context aside: the run's `--seq` sets it).
fn initial_weights(dir: &Path, cfg: &ModelConfig) -> Result<ParamArena> {
    let (init_cfg, params) = load_model(dir).with_context(|| {
        format!(
            "--init {}: cannot read the checkpoint's weights; give a checkpoint directory that terse train wrote",
            dir.display()
        )
    })?;
    let shape = |c: &ModelConfig| ModelConfig {
        context: None,
        ..c.clone()
    };
    if shape(&init_cfg) != shape(cfg) {
        bail!(
            "--init {}: its model ({}) is not the one --preset {} trains ({}); give the checkpoint's preset, --preset {}",
            dir.display(),
            serde_json::to_string(&shape(&init_cfg))?,
            cfg.preset,
            serde_json::to_string(&shape(cfg))?,
            init_cfg.preset
        );
    }
    Ok(params)
}

fn save(out: &Path, cfg: &ModelConfig, backend: &dyn Backend, run: &RunState) -> Result<()> {
    let params = backend.params()?;
    let (m, v) = backend.optimizer_state()?;
    let state = TrainingState {
        m,
        v,
        state: serde_json::to_value(run)?,
    };
    save_checkpoint(out, cfg, &params, Some(&state))
        .with_context(|| format!("saving checkpoint to {}", out.display()))
}

/// `metrics.jsonl`: one JSON object per step. On resume, records past the checkpoint's step
/// (written by the interrupted run after its last save) are dropped, so the log has no duplicates.
struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    fn open(path: &Path, resume_step: u64) -> Result<Self> {
        let kept: String = match std::fs::read_to_string(path) {
            Ok(text) if resume_step > 0 => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= resume_step)
                })
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => String::new(),
        };
        // Atomic, so a kill during the rewrite leaves the old log, not an empty one.
        crate::fsio::write_atomic(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(MetricsLog { file })
    }

    fn write(&mut self, rec: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{rec}").context("writing metrics.jsonl")
    }
}
