//! The `terse` command line: parse, call the library, print.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;
use terse::backend::{self, create_backend, Device, OptimConfig};
use terse::data::{baselines, eval_windows, read_prefix};
use terse::eval::score_windows;
use terse::train::{
    checkpoint::load_model, train, RunStart, ScheduleKind, TrainOptions, TrainSummary,
};

/// The bundled sample corpus (six public-domain books; see data/README.md).
const SAMPLE: &[u8] = include_bytes!("../data/sample-books.txt");

#[derive(Parser)]
#[command(
    name = "terse",
    version,
    about = "Train and serve language models over neurally compressed text"
)]
struct Cli {
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train M1 on a corpus or M2 on a token dataset, or resume a run.
    Train(Box<TrainArgs>),
    /// Bits per byte of a checkpoint: M1 on a corpus file, M2 on a token dataset.
    Eval(EvalArgs),
    /// Generate text with M2: sample compressed tokens, decode them through M1 as they come.
    Generate(GenerateArgs),
    /// Version, built-in backends, embedded kernels and GPUs found.
    Info {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The whole pipeline on the bundled sample: M1, Equal-Info and byte tokens, an M2 on each,
    /// scores, a generated sample.
    Demo(DemoArgs),
    /// The paper's comparison: every method tokenized, one M2 each, scored side by side.
    Experiment(ExperimentArgs),
    /// Throughput figures (JSON with --json).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Tokenize a corpus into a token dataset (raw tokens + metadata.json) for M2.
    Tokenize(TokenizeArgs),
    /// Compress any file losslessly with Equal-Info windows under M1.
    Compress {
        /// M1 checkpoint (a byte-level model); decompression needs the same one.
        #[arg(long)]
        m1: PathBuf,
        /// Bits per window: 16..=128, a multiple of 8.
        #[arg(long, default_value_t = 16)]
        window_bits: u32,
        /// Bytes per independently coded chunk (parallelism; each chunk ends a window).
        #[arg(long, default_value_t = terse::compress::DEFAULT_CHUNK_BYTES)]
        chunk_bytes: u32,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        input: PathBuf,
        output: PathBuf,
    },
    /// Restore a file made by `terse compress` (needs the same M1).
    Decompress {
        /// The M1 checkpoint the file was compressed with.
        #[arg(long)]
        m1: PathBuf,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        input: PathBuf,
        output: PathBuf,
    },
    /// Decode a token dataset back to the exact bytes it covers.
    Detokenize {
        /// Token dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// The M1 checkpoint the dataset was coded with (equal-info datasets).
        #[arg(long)]
        m1: Option<PathBuf>,
        /// Output file (written atomically).
        #[arg(long)]
        out: PathBuf,
        /// ac, equal-info: run M1 on the GPU, hundreds of chunks or windows at once (the same
        /// bytes as on the CPU).
        #[arg(long)]
        gpu: bool,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// Model preset: tiny, m1-3m, m2-25m, m2-113m, m2-403m.
    #[arg(long)]
    preset: Option<String>,
    /// Corpus (.txt or .jsonl in C4 layout, optionally .gz or .zst) to train a byte-level M1, or
    /// a token dataset directory (`terse tokenize` output) to train M2 on its tokens.
    #[arg(long)]
    data: Option<PathBuf>,
    /// M2: the held-out token dataset (the same method on a held-out file) [default: every 20th
    /// chunk of --data is held out].
    #[arg(long)]
    heldout: Option<PathBuf>,
    /// Total optimiser steps (the schedule's length). On --resume, may extend the run.
    #[arg(long)]
    steps: Option<u64>,
    /// Sequences per step [default: 16].
    #[arg(long)]
    batch: Option<usize>,
    /// Bytes (M1) or tokens (M2) per sequence [default: 256 bytes, 512 tokens].
    #[arg(long)]
    seq: Option<usize>,
    /// Peak learning rate [default: 1e-3].
    #[arg(long)]
    lr: Option<f32>,
    /// Linear warmup steps [default: min(100, steps/10)].
    #[arg(long)]
    warmup: Option<u64>,
    /// Decay after warmup [default: cosine].
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Final learning rate as a fraction of the peak [default: 0.1].
    #[arg(long)]
    min_lr_frac: Option<f32>,
    /// AdamW decoupled weight decay on matrices [default: 0.1].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Global gradient-norm clip, 0 to disable [default: 1.0].
    #[arg(long)]
    clip: Option<f32>,
    /// Bytes at the head of the corpus held out for evaluation [default: 262144].
    #[arg(long)]
    heldout_bytes: Option<u64>,
    /// Held-out evaluation every N steps [default: 100].
    #[arg(long)]
    eval_every: Option<u64>,
    /// Held-out windows per evaluation, 0 for all [default: 64].
    #[arg(long)]
    eval_windows: Option<usize>,
    /// Checkpoint every N steps (always at the end) [default: 500].
    #[arg(long)]
    ckpt_every: Option<u64>,
    /// Seed for initialisation and data order [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory: checkpoint files and metrics.jsonl [default: runs/<preset>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in this checkpoint directory, exactly.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop this invocation after step N (saving a checkpoint); the schedule is unchanged.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Fit the schedule to this many seconds of training: --steps becomes an upper bound and
    /// the step count is set from the speed of steps 3..12 (saved, so a resume repeats it).
    #[arg(long)]
    time_budget: Option<f64>,
    /// Where to run: auto (the GPU when usable, else the CPU), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct TokenizeArgs {
    /// Tokenization method (ac and equal-info need --m1).
    #[arg(long, value_enum)]
    method: terse::tokenize::Method,
    /// M1 checkpoint (a byte-level model) for ac and equal-info.
    #[arg(long)]
    m1: Option<PathBuf>,
    /// Bits per Equal-Info window: 16..=128, a multiple of 8 and of --token-bits.
    #[arg(long, default_value_t = 16)]
    window_bits: u32,
    /// equal-info: the paper's "Delay" rule (App. A.5): a window never ends with a byte that
    /// encodes to all zeros; such bytes start the next window. Default: designated codes.
    #[arg(long)]
    delay: bool,
    /// subword: train the BPE on this corpus (its first 50 MB) instead of --data's first 50 MB.
    #[arg(long)]
    subword_train: Option<PathBuf>,
    /// Corpus: .txt or .jsonl (C4 layout), optionally .gz or .zst.
    #[arg(long)]
    data: PathBuf,
    /// Output dataset directory (created; tokens.bin and metadata.json are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Bits per token: 8 (vocab 256) or 16 (vocab 65536).
    #[arg(long, default_value_t = 16, value_parser = token_bits_parser())]
    token_bits: u32,
    /// Bytes of text per example (the paper's 10,240); the last chunk may be shorter.
    #[arg(long, default_value_t = terse::tokenize::DEFAULT_CHUNK_BYTES)]
    chunk_bytes: usize,
    /// ac, equal-info: run M1 on the GPU, hundreds of chunks at once (the same tokens as on the
    /// CPU).
    #[arg(long)]
    gpu: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint directory (or its model.safetensors).
    #[arg(long, visible_alias = "m2")]
    checkpoint: PathBuf,
    /// A corpus file (M1: its whole byte stream, documents joined by a blank line) or a token
    /// dataset (M2: every token of its chunks, tokenized like the M2's training data).
    #[arg(long)]
    data: PathBuf,
    /// Context per window: bytes (M1) [default: 256], tokens (M2) [default: its training length].
    #[arg(long)]
    seq: Option<usize>,
    /// M2: which chunks of the token dataset to score.
    #[arg(long, value_enum, default_value = "all")]
    split: terse::data::ChunkSplit,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Score only the first N bytes.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Also compute gzip -9, xz -9 and zstd -19 on the same bytes.
    #[arg(long)]
    baselines: bool,
    /// Where to run: auto (the GPU when usable, else the CPU), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// The M2 checkpoint (trained with `terse train --data TOKENS`).
    #[arg(long)]
    m2: PathBuf,
    /// The M1 its tokens were coded with (equal-info models).
    #[arg(long)]
    m1: Option<PathBuf>,
    /// Text to continue.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Bytes to generate.
    #[arg(long, default_value_t = 400)]
    max_bytes: usize,
    /// Sampling temperature; 0 takes the most likely token.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample among the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object (text and timing) instead of streaming the text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExperimentArgs {
    /// Which comparison: `paper` (Table 15's methods and Fig. 5's window widths).
    #[arg(long, default_value = "paper")]
    grid: String,
    /// Budget: smoke (seconds, CI), tiny (~30 min on 2 cores), small, paper (GPU-sized).
    #[arg(long, value_enum, default_value = "tiny")]
    scale: terse::experiment::Scale,
    /// Corpus [default: the bundled sample].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Reuse this M1 instead of training one.
    #[arg(long)]
    m1: Option<PathBuf>,
    /// Output directory (results.json, results.md, results.svg, datasets, checkpoints).
    #[arg(long, default_value = "runs/experiment")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to run: auto (the GPU when usable, else the CPU), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Print results.json's summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time M1's exact inference path (the coding contract) over many windows, all cores.
    M1 {
        /// Model preset (a byte-level model).
        #[arg(long, default_value = "m1-3m")]
        preset: String,
        /// Windows to run.
        #[arg(long, default_value_t = 256)]
        windows: usize,
        /// Bytes per window (positions per window = len + 1).
        #[arg(long, default_value_t = 16)]
        len: usize,
        /// Positions a query attends over (M1's training length; 0: unbounded).
        #[arg(long, default_value_t = 256)]
        context: usize,
        /// On the CPU, advance all windows together one position per step (`CpuM1Batch`, as the
        /// coders do) instead of each window all at once.
        #[arg(long)]
        steps: bool,
        /// On the GPU (`GpuExactM1`): all windows advance together, one position per step.
        #[arg(long)]
        gpu: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Time every CUDA training kernel and GEMM at a preset's shapes (CUDA events, median of
    /// --reps): ms, bytes moved, GB/s or TFLOP/s against the measured H100 ceilings. Needs a GPU.
    Kernels {
        /// Model preset.
        #[arg(long, default_value = "m1-3m")]
        preset: String,
        /// Vocabulary size (default: the preset's).
        #[arg(long)]
        vocab: Option<usize>,
        /// Sequences per step.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 1024)]
        seq: usize,
        /// Timed launches per kernel (the median is reported).
        #[arg(long, default_value_t = 20)]
        reps: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Time training steps on random bytes: ms/step, tokens/s, TFLOP/s, MFU.
    Train {
        /// Model preset.
        #[arg(long, default_value = "m1-3m")]
        preset: String,
        /// Vocabulary size (default: the preset's).
        #[arg(long)]
        vocab: Option<usize>,
        /// Sequences per step.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 256)]
        seq: usize,
        /// Timed steps (after 2 untimed warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: u64,
        /// Where to run: auto, cpu or cuda.
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct DemoArgs {
    /// Seconds of M1 training (the schedule is fitted to it); each M2 gets its own share.
    #[arg(long, default_value_t = 180.0)]
    seconds: f64,
    /// Seconds of training for the Equal-Info M2 (the bytes M2 gets half).
    #[arg(long, default_value_t = 240.0)]
    m2_seconds: f64,
    /// Corpus to use instead of the bundled sample.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Where to run: auto (the GPU when usable, else the CPU), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Last line of output is one JSON object with the results.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: --threads {n}: {e}");
            std::process::exit(2);
        }
    }
    let result = match cli.cmd {
        Cmd::Train(a) => cmd_train(*a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Generate(a) => cmd_generate(a),
        Cmd::Info { json } => cmd_info(json),
        Cmd::Demo(a) => cmd_demo(a),
        Cmd::Experiment(a) => cmd_experiment(a),
        Cmd::Bench(b) => cmd_bench(b),
        Cmd::Tokenize(a) => cmd_tokenize(a),
        Cmd::Detokenize { data, m1, out, gpu } => cmd_detokenize(&data, m1.as_deref(), &out, gpu),
        Cmd::Compress {
            m1,
            window_bits,
            chunk_bytes,
            json,
            input,
            output,
        } => load_exact_m1(&m1).and_then(|m| {
            let r = terse::compress::compress_file(&input, &output, &m, window_bits, chunk_bytes)?;
            print_compress(&r, json, "compressed")
        }),
        Cmd::Decompress {
            m1,
            json,
            input,
            output,
        } => load_exact_m1(&m1).and_then(|m| {
            let r = terse::compress::decompress_file(&input, &output, &m)?;
            print_compress(&r, json, "decompressed")
        }),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let progress = !a.quiet;
    let summary = if let Some(dir) = &a.resume {
        let fixed = [
            ("--preset", a.preset.is_some()),
            ("--data", a.data.is_some()),
            ("--batch", a.batch.is_some()),
            ("--seq", a.seq.is_some()),
            ("--lr", a.lr.is_some()),
            ("--warmup", a.warmup.is_some()),
            ("--schedule", a.schedule.is_some()),
            ("--min-lr-frac", a.min_lr_frac.is_some()),
            ("--weight-decay", a.weight_decay.is_some()),
            ("--clip", a.clip.is_some()),
            ("--heldout-bytes", a.heldout_bytes.is_some()),
            ("--eval-every", a.eval_every.is_some()),
            ("--eval-windows", a.eval_windows.is_some()),
            ("--ckpt-every", a.ckpt_every.is_some()),
            ("--seed", a.seed.is_some()),
            ("--heldout", a.heldout.is_some()),
            ("--time-budget", a.time_budget.is_some()),
        ];
        if let Some((flag, _)) = fixed.iter().find(|f| f.1) {
            bail!("{flag} cannot be changed on --resume: the run's settings come from the checkpoint (only --steps, --stop-after, --out and --device may be given)");
        }
        let out = a.out.clone().unwrap_or_else(|| dir.clone());
        train(
            RunStart::Resume {
                dir,
                steps: a.steps,
            },
            a.stop_after,
            &out,
            a.device,
            progress,
        )?
    } else {
        let Some(data) = a.data.clone() else {
            bail!("--data is required (a corpus file), or --resume a checkpoint")
        };
        let preset =
            (a.preset.clone()).unwrap_or_else(|| TrainOptions::default_preset(&data).into());
        let mut o = TrainOptions::new(data, preset.clone(), a.steps.unwrap_or(1000));
        o.heldout_data = a.heldout.clone();
        o.batch = a.batch.unwrap_or(o.batch);
        o.seq = a.seq.unwrap_or(o.seq);
        o.lr = a.lr.unwrap_or(o.lr);
        o.warmup = a.warmup.unwrap_or(o.warmup);
        o.schedule = a.schedule.unwrap_or(o.schedule);
        o.min_lr_frac = a.min_lr_frac.unwrap_or(o.min_lr_frac);
        o.optim.weight_decay = a.weight_decay.unwrap_or(o.optim.weight_decay);
        o.optim.clip = a.clip.unwrap_or(o.optim.clip);
        o.heldout_bytes = a.heldout_bytes.unwrap_or(o.heldout_bytes);
        o.time_budget_s = a.time_budget;
        o.eval_every = a.eval_every.unwrap_or(o.eval_every);
        o.eval_windows = a.eval_windows.unwrap_or(o.eval_windows);
        o.ckpt_every = a.ckpt_every.unwrap_or(o.ckpt_every);
        o.seed = a.seed.unwrap_or(o.seed);
        let out = a
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&preset));
        train(RunStart::Fresh(&o), a.stop_after, &out, a.device, progress)?
    };
    print_summary(&summary, a.json)
}

fn print_summary(s: &TrainSummary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
    } else {
        println!(
            "trained {}/{} steps on {} in {:.1} s: {:.0} tokens/s, train {:.3} bpb, held-out {}; checkpoint in {}",
            s.steps_done,
            s.steps_total,
            s.backend,
            s.seconds,
            s.tokens_per_s,
            s.final_train_bpb,
            s.heldout_bpb.map_or("not evaluated".into(), |b| format!("{b:.3} bpb")),
            s.out.display()
        );
    }
    Ok(())
}

/// An M2 checkpoint's weights and the token source it was trained on.
fn load_m2(
    path: &std::path::Path,
) -> Result<(
    terse::model::ModelConfig,
    terse::model::ParamArena,
    TrainOptions,
    terse::train::TokenSource,
)> {
    let (cfg, params) = load_model(path)?;
    let opts = terse::train::saved_options(path)?.with_context(|| {
        format!(
            "checkpoint {} has no training state, so the tokens it was trained on are unknown",
            path.display()
        )
    })?;
    let src = opts.tokens.clone().with_context(|| {
        format!(
            "checkpoint {} is a byte-level model (M1) trained on a corpus, not an M2 trained on tokens",
            path.display()
        )
    })?;
    Ok((cfg, params, opts, src))
}

fn cmd_eval_m2(a: EvalArgs) -> Result<()> {
    let (cfg, params, opts, src) = load_m2(&a.checkpoint)?;
    let ds = terse::tokenize::TokenDataset::open(&a.data)?;
    src.check_compatible(ds.metadata(), &a.data)?;
    // The unigram model counts the M2's training tokens when they are still there.
    let unigram = terse::tokenize::TokenDataset::open(&opts.data)
        .ok()
        .map(|t| {
            (
                terse::eval::tokens::token_counts(&t, terse::data::ChunkSplit::All),
                opts.data.display().to_string(),
            )
        });
    let t = Instant::now();
    let (mut be, _) = create_backend(a.device, &cfg, params, None)?;
    let r = terse::eval::tokens::evaluate_m2(
        be.as_mut(),
        &cfg,
        &src,
        &ds,
        a.split,
        a.seq.unwrap_or(opts.seq),
        a.batch,
        unigram,
    )?;
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        let mut j = serde_json::to_value(&r)?;
        j["seconds"] = secs.into();
        j["backend"] = be.name().into();
        println!("{j}");
    } else {
        println!(
            "{} ({}-bit {}, vocab {}): {} chunks, {} tokens over {} bytes ({:.3} bytes/token)",
            a.data.display(),
            r.token_bits,
            r.method,
            r.vocab,
            r.chunks,
            r.tokens,
            r.bytes,
            r.bytes_per_token
        );
        println!(
            "  M2 {:.4} bits/byte ({:.4} bits/token)   uniform {:.4}   unigram {:.4}",
            r.bits_per_byte, r.bits_per_token, r.uniform_bits_per_byte, r.unigram_bits_per_byte
        );
        println!(
            "  inference {:.2}M FLOPs/byte (M2 {:.2}M non-embedding params{})   {:.1} s on {}",
            r.flops_per_byte / 1e6,
            r.m2_non_embedding_params as f64 / 1e6,
            r.m1_non_embedding_params
                .map(|p| format!(", M1 {:.2}M", p as f64 / 1e6))
                .unwrap_or_default(),
            secs,
            be.name()
        );
    }
    Ok(())
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    use std::io::Write;
    let (cfg, params, opts, src) = load_m2(&a.m2)?;
    let m2 = terse::m1::ExactLm::new(&cfg, &params)?;
    let m1 =
        a.m1.as_deref()
            .map(load_exact_m1)
            .transpose()?
            .map(std::sync::Arc::new);
    let o = terse::generate::SampleOptions {
        max_bytes: a.max_bytes,
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
    };
    let mut text = Vec::new();
    let mut out = std::io::stdout().lock();
    let prompt = a.prompt.as_bytes();
    let json = a.json;
    if !json {
        out.write_all(prompt)?;
        out.flush()?;
    }
    let r = terse::generate::generate(&m2, &src, m1, opts.seq, prompt, &o, |bytes| {
        text.extend_from_slice(bytes);
        if !json {
            out.write_all(bytes)?;
            out.flush()?;
        }
        Ok(())
    })?;
    if json {
        let mut j = serde_json::to_value(&r)?;
        j["text"] = String::from_utf8_lossy(&text).into_owned().into();
        writeln!(out, "{j}")?;
    } else {
        writeln!(out)?;
        eprintln!(
            "terse generate: {} bytes in {} steps ({:.2} bytes/step), {:.3} ms/byte, {:.1} steps/s ({} M2, {}-bit tokens)",
            r.bytes,
            r.steps,
            r.bytes_per_step,
            r.ms_per_byte,
            r.steps as f64 / r.seconds.max(1e-9),
            r.method,
            src.token_bits
        );
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    if a.seq == Some(0) || a.batch == 0 {
        bail!("--seq and --batch must be positive");
    }
    if terse::train::is_token_dataset(&a.data) {
        return cmd_eval_m2(a);
    }
    let seq = a.seq.unwrap_or(256);
    let (cfg, params) = load_model(&a.checkpoint)?;
    if cfg.vocab != 256 {
        bail!(
            "checkpoint {} has vocab {}: `terse eval --data` scores byte-level models (vocab 256)",
            a.checkpoint.display(),
            cfg.vocab
        );
    }
    let bytes = read_prefix(&a.data, a.max_bytes.unwrap_or(u64::MAX))?;
    if bytes.len() < 2 {
        bail!(
            "corpus {} holds too little text to score (need at least 2 bytes)",
            a.data.display()
        );
    }
    let t = Instant::now();
    let (mut be, _) = create_backend(a.device, &cfg, params, None)?;
    let windows = eval_windows(&bytes, seq, None);
    let score = score_windows(be.as_mut(), &windows, a.batch)?;
    let secs = t.elapsed().as_secs_f64();
    let base = if a.baselines {
        Some(baselines(&bytes)?)
    } else {
        None
    };
    if a.json {
        let mut j = serde_json::json!({
            "bits_per_byte": score.bits_per_byte, "bytes_scored": score.bytes_scored,
            "seconds": secs, "backend": be.name(),
        });
        if let Some(b) = &base {
            j["gzip_bpb"] = b.gzip_bpb.into();
            j["xz_bpb"] = b.xz_bpb.into();
            j["zstd_bpb"] = b.zstd_bpb.into();
        }
        println!("{j}");
    } else {
        println!(
            "{}: {:.4} bits/byte over {} bytes ({:.1} s, {:.0} bytes/s on {})",
            a.data.display(),
            score.bits_per_byte,
            score.bytes_scored,
            secs,
            score.bytes_scored as f64 / secs,
            be.name()
        );
        if let Some(b) = base {
            println!(
                "gzip -9 {:.4}  xz -9 {:.4}  zstd -19 {:.4} bits/byte",
                b.gzip_bpb, b.xz_bpb, b.zstd_bpb
            );
        }
    }
    Ok(())
}

fn cmd_info(json: bool) -> Result<()> {
    let probe = backend::cuda::probe();
    let kernels: Vec<&str> = backend::cuda::embedded_kernels()
        .iter()
        .map(|k| k.name)
        .collect();
    let info = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "backends": {
            "cpu": {"threads": rayon::current_num_threads()},
            "cuda": {"training": !kernels.is_empty(), "usable_here": backend::cuda::cuda_available(),
                     "validated_on_gpu": false, "kernels_embedded": kernels, "nvcc": backend::cuda::nvcc_version()},
        },
        "cuda_driver_found": probe.driver_found,
        "gpus": probe.gpus,
        "note": probe.note,
    });
    if json {
        println!("{info}");
        return Ok(());
    }
    println!("terse {}", env!("CARGO_PKG_VERSION"));
    println!(
        "cpu backend: yes ({} threads)",
        rayon::current_num_threads()
    );
    if kernels.is_empty() {
        println!("cuda kernels: none embedded (built without nvcc)");
    } else {
        println!(
            "cuda kernels: {} embedded ({}), nvcc {}",
            kernels.len(),
            kernels.join(", "),
            backend::cuda::nvcc_version()
        );
    }
    if kernels.is_empty() {
        println!("cuda training backend: not in this build (no kernels embedded)");
    } else {
        println!(
            "cuda training backend: built ({}; not yet validated on a GPU)",
            if backend::cuda::cuda_available() {
                "usable here"
            } else {
                "no usable GPU here"
            }
        );
    }
    if probe.gpus.is_empty() {
        println!("gpus: none ({})", probe.note);
    }
    for g in &probe.gpus {
        println!(
            "gpu {}: {} (sm_{}{}, {:.1} GiB)",
            g.ordinal,
            g.name,
            g.compute_capability.0,
            g.compute_capability.1,
            g.memory_bytes as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}

fn cmd_demo(a: DemoArgs) -> Result<()> {
    use terse::experiment::{prepare_corpus, train_m1, M2Budget, MethodSpec, Pipeline};
    use terse::tokenize::Method;
    let t0 = Instant::now();
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let data = match &a.data {
        Some(p) => p.clone(),
        None => {
            let p = a.out.join("sample-books.txt");
            std::fs::write(&p, SAMPLE).with_context(|| format!("cannot write {}", p.display()))?;
            p
        }
    };
    let progress = !a.json;
    let corpus = prepare_corpus(
        &data,
        &a.out.join("corpus"),
        None,
        terse::tokenize::DEFAULT_CHUNK_BYTES,
    )?;
    eprintln!(
        "terse demo [1/4]: training a tiny M1 on {} for about {:.0} s ({} bytes held out)",
        data.display(),
        a.seconds,
        corpus.heldout.len()
    );
    // The demo owns its output directory: each run starts new models.
    let m1 = train_m1(
        &corpus,
        &a.out.join("m1"),
        "tiny",
        a.seconds,
        a.device,
        progress,
    )?;
    let exact = std::sync::Arc::new(load_exact_m1(&m1.checkpoint)?);
    let base = baselines(&corpus.heldout)?;
    let p = Pipeline {
        corpus: &corpus,
        m1: Some(exact.clone()),
        out: a.out.clone(),
        device: a.device,
        progress,
        coded: Default::default(),
    };
    let budget = |seconds: f64| M2Budget {
        preset: "tiny".into(),
        steps: 1_000_000,
        seconds: Some(seconds),
        batch: 8,
        seq: 128,
        lr: 3e-3,
        seed: 0,
    };
    eprintln!(
        "terse demo [2/4]: EqualInfoAC[b=16, v=65k] tokens through M1, then an M2 on them for about {:.0} s",
        a.m2_seconds
    );
    let ei = p.run_method(&MethodSpec::equal_info(16, 16), &budget(a.m2_seconds))?;
    eprintln!(
        "terse demo [3/4]: byte tokens and an M2 on them for about {:.0} s",
        a.m2_seconds / 2.0
    );
    let by = p.run_method(
        &MethodSpec::new(Method::Bytes, 8),
        &budget(a.m2_seconds / 2.0),
    )?;
    eprintln!("terse demo [4/4]: generating with the Equal-Info M2 (decoded through M1)");
    let (cfg, params) = load_model(&ei.checkpoint)?;
    let lm = terse::m1::ExactLm::new(&cfg, &params)?;
    let src = terse::train::TokenSource::from_metadata(
        terse::tokenize::TokenDataset::open(&ei.dataset)?.metadata(),
    );
    let prompt = b"It was a dark and stormy night; ";
    let mut sample = Vec::new();
    let g = terse::generate::generate(
        &lm,
        &src,
        Some(exact),
        128,
        prompt,
        &terse::generate::SampleOptions {
            max_bytes: 300,
            temperature: 0.7,
            top_k: 0,
            seed: 1,
        },
        |t| {
            sample.extend_from_slice(t);
            Ok(())
        },
    )?;
    let sample_text = format!(
        "{}{}",
        String::from_utf8_lossy(prompt),
        String::from_utf8_lossy(&sample)
    );
    let seconds = t0.elapsed().as_secs_f64();
    println!(
        "held-out: {} bytes ({} chunks of {} bytes never trained on by M1 or M2)",
        corpus.heldout.len(),
        corpus.heldout.len().div_ceil(corpus.chunk_bytes),
        corpus.chunk_bytes
    );
    println!(
        "  {:<46} {:>9} {:>9} {:>11}",
        "model", "bits/byte", "uniform", "bytes/token"
    );
    println!(
        "  {:<46} {:>9.3}",
        format!(
            "M1 tiny ({} steps)",
            m1.train.as_ref().map_or(0, |t| t.steps_done)
        ),
        m1.heldout_bpb
    );
    for r in [&ei, &by] {
        println!(
            "  {:<46} {:>9.3} {:>9.3} {:>11.3}",
            format!("M2 tiny on {} ({} steps)", r.label, r.train.steps_done),
            r.eval.bits_per_byte,
            r.eval.uniform_bits_per_byte,
            r.eval.bytes_per_token
        );
    }
    println!("  {:<46} {:>9.3}", "gzip -9", base.gzip_bpb);
    println!("  {:<46} {:>9.3}", "xz -9", base.xz_bpb);
    println!("  {:<46} {:>9.3}", "zstd -19", base.zstd_bpb);
    println!(
        "sample (Equal-Info M2, {} steps, {:.2} bytes/step, {:.2} ms/byte):\n{sample_text}",
        g.steps, g.bytes_per_step, g.ms_per_byte
    );
    println!(
        "outputs under {}   total time {:.1} s",
        a.out.display(),
        seconds
    );
    if a.json {
        let j = serde_json::json!({
            "m1_heldout_bpb": m1.heldout_bpb,
            "equal_info_bytes_per_token": ei.eval.bytes_per_token,
            "m2_equal_info_bpb": ei.eval.bits_per_byte,
            "m2_bytes_bpb": by.eval.bits_per_byte,
            "uniform_equal_info_bpb": ei.eval.uniform_bits_per_byte,
            "unigram_equal_info_bpb": ei.eval.unigram_bits_per_byte,
            "uniform_bytes_bpb": by.eval.uniform_bits_per_byte,
            "gzip_bpb": base.gzip_bpb, "xz_bpb": base.xz_bpb, "zstd_bpb": base.zstd_bpb,
            "heldout_bytes": corpus.heldout.len(),
            "m1_steps": m1.train.as_ref().map(|t| t.steps_done),
            "m2_equal_info_steps": ei.train.steps_done, "m2_bytes_steps": by.train.steps_done,
            "sample_text": sample_text, "generation_ms_per_byte": g.ms_per_byte,
            "backend": ei.train.backend, "seconds": seconds,
        });
        println!("{j}");
    }
    Ok(())
}

fn cmd_experiment(a: ExperimentArgs) -> Result<()> {
    use terse::experiment::{paper_grid, run_experiment, ExperimentOptions};
    if a.grid != "paper" {
        bail!("unknown grid {:?} (this build has: paper)", a.grid);
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let data = match &a.data {
        Some(p) => p.clone(),
        None => {
            let p = a.out.join("sample-books.txt");
            std::fs::write(&p, SAMPLE).with_context(|| format!("cannot write {}", p.display()))?;
            p
        }
    };
    let r = run_experiment(&ExperimentOptions {
        scale: a.scale,
        data,
        out: a.out.clone(),
        m1: a.m1,
        grid: paper_grid(),
        device: a.device,
        seed: a.seed,
        progress: !a.json,
    })?;
    print!("{}", terse::experiment::markdown_table(&r));
    for f in &r.findings {
        println!(
            "[{}] {}: {}",
            if f.holds { "x" } else { " " },
            f.claim,
            f.detail
        );
    }
    println!(
        "results: {0}/results.json, {0}/results.md, {0}/results.svg   ({1:.0} s)",
        a.out.display(),
        r.seconds
    );
    if a.json {
        let j = serde_json::json!({
            "m1_heldout_bpb": r.m1.heldout_bpb,
            "methods": r.methods.iter().map(|m| serde_json::json!({
                "label": m.label, "bytes_per_token": m.eval.bytes_per_token,
                "bits_per_byte": m.eval.bits_per_byte, "uniform_bits_per_byte": m.eval.uniform_bits_per_byte,
                "flops_per_byte": m.eval.flops_per_byte,
            })).collect::<Vec<_>>(),
            "findings": r.findings, "seconds": r.seconds,
        });
        println!("{j}");
    }
    Ok(())
}

fn cmd_bench(b: BenchCmd) -> Result<()> {
    if let BenchCmd::M1 {
        preset,
        windows,
        len,
        context,
        steps,
        gpu,
        json,
    } = b
    {
        return bench_m1(&preset, windows, len, context, steps, gpu, json);
    }
    if let BenchCmd::Kernels {
        preset,
        vocab,
        batch,
        seq,
        reps,
        json,
    } = b
    {
        let cfg = terse::model::ModelConfig::preset(&preset, vocab)?;
        let r = backend::cuda::bench::bench_kernels(&cfg, batch, seq, reps)?;
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print!("{}", backend::cuda::bench::format_report(&r));
        }
        return Ok(());
    }
    let BenchCmd::Train {
        preset,
        vocab,
        batch,
        seq,
        steps,
        device,
        json,
    } = b
    else {
        unreachable!("handled above")
    };
    if batch == 0 || seq == 0 || steps == 0 {
        bail!("--batch, --seq and --steps must be positive");
    }
    let cfg = terse::model::ModelConfig::preset(&preset, vocab)?;
    let params = terse::model::ParamArena::init(&cfg, 0);
    let (mut be, note) = create_backend(device, &cfg, params, None)?;
    let mut rng = terse::rng::Rng::new(1);
    let n = batch * seq;
    let tokens: Vec<u32> = (0..n + 1)
        .map(|_| rng.below(cfg.vocab as u64) as u32)
        .collect();
    let data = terse::data::Batch {
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
    let tok_s = n as f64 / secs;
    let gflops = cfg.train_flops_per_token(seq) * tok_s / 1e9;
    // MFU against the H100 SXM dense bf16 peak (989 TFLOP/s, llm.c's figure) and against the
    // measured cuBLASLt ceiling; only meaningful on the GPU.
    let on_gpu = be.name().starts_with("cuda");
    let mfu = on_gpu.then(|| gflops * 1e9 / 989e12);
    let of_gemm = on_gpu.then(|| gflops * 1e9 / backend::cuda::bench::GEMM_CEILING_FLOPS);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "train", "preset": preset, "vocab": cfg.vocab, "batch": batch, "seq": seq,
                "steps": steps, "backend": be.name(), "note": note, "ms_per_step": secs * 1e3,
                "tokens_per_s": tok_s, "gflops": gflops, "tflops": gflops / 1e3,
                "mfu_989": mfu, "of_gemm_ceiling_805": of_gemm,
            })
        );
    } else {
        let mfu_s = match (mfu, of_gemm) {
            (Some(m), Some(g)) => format!(
                ", MFU {:.1}% of 989 TFLOP/s ({:.1}% of the measured 805)",
                m * 100.0,
                g * 100.0
            ),
            _ => String::new(),
        };
        println!(
            "train {preset} (vocab {}) {batch}x{seq} on {} [{note}]: {:.2} ms/step, {:.0} tokens/s, {:.2} TFLOP/s{mfu_s}",
            cfg.vocab,
            be.name(),
            secs * 1e3,
            tok_s,
            gflops / 1e3,
        );
    }
    Ok(())
}

/// `--token-bits`: 8 or 16 only.
fn token_bits_parser() -> impl clap::builder::TypedValueParser<Value = u32> {
    clap::builder::TypedValueParser::map(
        clap::builder::PossibleValuesParser::new(["8", "16"]),
        |s: String| if s == "8" { 8 } else { 16 },
    )
}

fn cmd_tokenize(a: TokenizeArgs) -> Result<()> {
    use terse::tokenize::{M1Spec, Method};
    if a.delay && a.method != Method::EqualInfo {
        bail!("--delay is a rule of --method equal-info only");
    }
    if a.gpu && !a.method.needs_m1() {
        bail!(
            "--gpu runs M1 (ac, equal-info); {} runs on the CPU",
            a.method.name()
        );
    }
    let spec = match (a.method.needs_m1(), &a.m1) {
        (true, Some(path)) => {
            let m1 = load_exact_m1(path)?;
            let batch = match a.gpu {
                true => Some(gpu_m1_batch(&a.method, &m1, a.chunk_bytes)?),
                false => None,
            };
            let spec = M1Spec::new(std::sync::Arc::new(m1), a.window_bits).with_delay(a.delay);
            Some(match batch {
                Some(b) => spec.with_batch(b),
                None => spec,
            })
        }
        (true, None) => bail!("--method {} needs --m1 CHECKPOINT", a.method.name()),
        (false, Some(_)) => bail!("--m1 is used only by --method ac and equal-info"),
        (false, None) => None,
    };
    let r = terse::tokenize::tokenize_corpus_with(
        a.method,
        &a.data,
        &a.out,
        a.token_bits,
        a.chunk_bytes,
        spec.as_ref(),
        a.subword_train.as_deref(),
        !a.json,
    )?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} -> {} ({}, {}-bit tokens, {}-byte chunks)",
            r.source,
            r.out,
            r.method.name(),
            r.token_bits,
            r.chunk_bytes
        );
        println!(
            "{} bytes, {} tokens, {} chunks: {:.3} bytes/token, {:.3} bits/byte",
            r.bytes, r.tokens, r.chunks, r.bytes_per_token, r.bits_per_byte
        );
        if let Some(h) = r.unigram_entropy {
            println!("byte unigram entropy {h:.3} bits/byte");
        }
        if let (Some(w), Some(b)) = (r.windows, r.backoffs) {
            println!(
                "{w} windows ({:.3} bytes/window), {b} encoder back-offs",
                r.bytes_per_window.unwrap_or(0.0)
            );
        }
        println!("{:.2} s, {:.3} MB/s", r.seconds, r.bytes_per_second / 1e6);
    }
    Ok(())
}

fn bench_m1(
    preset: &str,
    windows: usize,
    len: usize,
    context: usize,
    steps: bool,
    gpu: bool,
    json: bool,
) -> Result<()> {
    use rayon::prelude::*;
    if windows == 0 {
        bail!("--windows must be positive");
    }
    let mut cfg = terse::model::ModelConfig::preset(preset, Some(256))?;
    cfg.context = (context > 0).then_some(context);
    let m1 = terse::m1::ExactM1::new(&cfg, &terse::model::ParamArena::init(&cfg, 0))?;
    let mut rng = terse::rng::Rng::new(2);
    let data: Vec<Vec<u8>> = (0..windows)
        .map(|_| (0..len).map(|_| rng.below(256) as u8).collect())
        .collect();
    // All windows as streams of one batch, one position per step (how the coders drive M1).
    let lockstep = |batch: &mut dyn terse::m1::M1Batch| -> Result<(Instant, usize)> {
        let t = Instant::now();
        let mut positions = 0;
        for k in 0..=len {
            let feeds: Vec<(usize, u8)> = (0..windows)
                .map(|w| {
                    let byte = if k == 0 {
                        terse::m1::WINDOW_START
                    } else {
                        data[w][k - 1]
                    };
                    (w, byte)
                })
                .collect();
            positions += batch.step(&feeds)?.len();
        }
        Ok((t, positions))
    };
    let threads = rayon::current_num_threads();
    let (t, positions, device) = if gpu {
        let mut g = terse::backend::cuda::GpuExactM1::new(&m1, windows, len + 1)?;
        let (t, positions) = lockstep(&mut g)?;
        (t, positions, "cuda".to_string())
    } else if steps {
        let (t, positions) = lockstep(&mut terse::m1::CpuM1Batch::new(&m1, windows))?;
        (t, positions, format!("cpu, lockstep ({threads} threads)"))
    } else {
        let t = Instant::now();
        let positions: usize = data.par_iter().map(|w| m1.window_probs(w).len()).sum();
        (
            t,
            positions,
            format!("cpu, all at once ({threads} threads)"),
        )
    };
    let secs = t.elapsed().as_secs_f64();
    let rate = positions as f64 / secs;
    if json {
        println!(
            "{}",
            serde_json::json!({"bench": "m1", "preset": preset, "windows": windows, "len": len, "context": context,
                "device": device, "positions_per_s": rate, "seconds": secs})
        );
    } else {
        println!(
            "exact M1 {preset}: {positions} positions in {secs:.2} s = {rate:.0} positions/s on {device}"
        );
    }
    Ok(())
}

fn cmd_detokenize(
    data: &std::path::Path,
    m1: Option<&std::path::Path>,
    out: &std::path::Path,
    gpu: bool,
) -> Result<()> {
    let m1 = match m1 {
        Some(path) => {
            let (cfg, params) = load_model(path)?;
            Some(std::sync::Arc::new(terse::m1::ExactM1::new(&cfg, &params)?))
        }
        None => None,
    };
    let batch = match (gpu, &m1) {
        (false, _) => None,
        (true, None) => bail!("--gpu runs M1: pass --m1"),
        (true, Some(m)) => {
            let meta = terse::tokenize::TokenDataset::open(data)?
                .metadata()
                .clone();
            let method = terse::tokenize::Method::from_name(&meta.method)
                .with_context(|| format!("unknown method {}", meta.method))?;
            let chunk = meta.params.get("chunk_bytes").and_then(|v| v.as_u64());
            let chunk = chunk.unwrap_or(terse::tokenize::DEFAULT_CHUNK_BYTES as u64) as usize;
            Some(gpu_m1_batch(&method, m, chunk)?)
        }
    };
    let t = Instant::now();
    let bytes = terse::tokenize::decode_dataset_on(data, m1, batch)?;
    terse::train::checkpoint::atomic_write(out, &bytes)?;
    println!(
        "{}: {} bytes decoded to {} in {:.1} s",
        data.display(),
        bytes.len(),
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// M1 on the GPU for `ac` and `equal-info` (`--gpu`): refuses other methods and machines
/// without a usable GPU.
fn gpu_m1_batch(
    method: &terse::tokenize::Method,
    m1: &terse::m1::ExactM1,
    chunk_bytes: usize,
) -> Result<std::sync::Arc<std::sync::Mutex<dyn terse::m1::M1Batch>>> {
    anyhow::ensure!(
        method.needs_m1(),
        "--gpu runs M1 (ac, equal-info); {} runs on the CPU",
        method.name()
    );
    let g = terse::backend::cuda::GpuExactM1::for_chunks(m1, chunk_bytes)
        .context("--gpu: M1 on the GPU")?;
    eprintln!(
        "M1 on the GPU: {} streams at a time (positions up to {})",
        g.streams(),
        g.capacity()
    );
    Ok(std::sync::Arc::new(std::sync::Mutex::new(g)))
}

fn load_exact_m1(path: &std::path::Path) -> Result<terse::m1::ExactM1> {
    let (cfg, params) = load_model(path)?;
    terse::m1::ExactM1::new(&cfg, &params)
        .with_context(|| format!("{} cannot serve as M1", path.display()))
}

fn print_compress(r: &terse::compress::CompressReport, json: bool, what: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "{what} {} bytes <-> {} bytes ({:.3} bits/byte, {} windows) in {:.2} s, {:.0} bytes/s",
            r.original_bytes,
            r.compressed_bytes,
            r.bits_per_byte,
            r.windows,
            r.seconds,
            r.bytes_per_second
        );
    }
    Ok(())
}
