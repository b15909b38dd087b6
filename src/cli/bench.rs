//! `terse bench`: its flags and what it prints (the measuring is [`terse::bench`]'s).

use anyhow::{bail, Result};
use clap::Subcommand;
use terse::backend::cuda::cost::{self, Card};
use terse::backend::cuda::decode_cost::format_decode_costs;
use terse::backend::{cuda, Device, GradReduction};
use terse::bench::decode::{bench_decode, DecodeArith};
use terse::bench::load::{run_load, LoadOptions};
use terse::bench::memory::copy_bandwidth;
use terse::bench::{bench_m1, bench_train, M1Bench, M1Mode};
use terse::checkpoint::load_model;
use terse::m1::int8::MAX_CONTEXT;
use terse::model::{ModelConfig, ParamArena};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Time M1 as it codes (numeric contract 3, int8) beside the float model it is quantised
    /// from (contract 2, the yardstick), on the same windows driven the same way, all cores.
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
        /// Positions a query attends over (M1's training length), 1 to 1024.
        #[arg(long, default_value_t = 256)]
        context: usize,
        /// Advance all windows together one position per step (`CpuM1Batch`, as the coders do)
        /// instead of each window all at once.
        #[arg(long)]
        steps: bool,
        /// Time both contracts on the GPU (`GpuInt8M1`, `GpuExactM1`): all windows advance
        /// together, one position per step.
        #[arg(long)]
        gpu: bool,
        /// Timed rounds, each one run of both contracts back to back (the first of the two
        /// alternating); the medians are reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The cost model of a bf16 training step at a preset's shapes: each kernel's bytes, FLOPs,
    /// launches per step and roofline time at a card's measured ceilings, and the step's
    /// predicted floor. With a GPU, each kernel is also timed (CUDA events, median of --reps)
    /// and its measured time printed beside the prediction.
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
        /// Without a GPU: the card whose ceilings the prediction uses (H100, H200). With one,
        /// the card that runs is used.
        #[arg(long, default_value = "H200")]
        card: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The scaling model of data-parallel training: each step's fp32 gradient all-reduce over
    /// NVLink inside a node and InfiniBand NDR or 100 GbE between nodes, against the step's
    /// compute from the cost model (`terse bench kernels`), at 8, 64 and 512 GPUs. No GPU needed.
    Scaling {
        /// Model presets.
        #[arg(long, value_delimiter = ',', default_value = "m2-113m,m2-403m")]
        presets: Vec<String>,
        /// Sequences per GPU per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 512)]
        seq: usize,
        /// The card whose ceilings give the compute time (H100, H200).
        #[arg(long, default_value = "H100")]
        card: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Measure the GPU's ceilings the cost model uses: a 2 GiB device-to-device copy and a
    /// cuBLASLt bf16 GEMM at 8192^3 (median of --reps). Needs a GPU.
    Ceilings {
        /// Timed runs of each (the median is reported).
        #[arg(long, default_value_t = 10)]
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
        /// How the CPU sums a step's gradient: sequence-tree (each sequence alone, as `terse
        /// train` does) or whole-batch (one pass over the batch, as runs begun before it did).
        #[arg(long, value_enum, default_value = "sequence-tree")]
        reduction: GradReduction,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Load a running `terse serve` with concurrent streaming clients for a bounded time:
    /// p50/p99 time to first text and gap between text chunks, aggregate bytes/s, and every
    /// failed or truncated stream (the exit status is non-zero if there was one).
    Serve {
        /// The server, host:port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Concurrent streaming clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seconds during which clients start new requests.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// Bytes each completion asks for.
        #[arg(long, default_value_t = 200)]
        max_tokens: usize,
        #[arg(long, default_value = "It was a dark and stormy night; ")]
        prompt: String,
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Time M2's decode step on the CPU (one new token per stream, key/value caches): 4-bit and
    /// int8 weights (`terse generate --weights`) beside f32 under contract 2 (`--exact`), each with the floor its
    /// bytes per step imply at this machine's measured copy bandwidth.
    Generate {
        /// An M2 checkpoint to time (default: a random model of --preset and --vocab).
        #[arg(long)]
        m2: Option<std::path::PathBuf>,
        /// Model preset (without --m2).
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Vocabulary size (without --m2).
        #[arg(long, default_value_t = 65536)]
        vocab: usize,
        /// Tokens the model attends over (without --m2; a checkpoint records its own).
        #[arg(long, default_value_t = 128)]
        context: usize,
        /// Streams advanced together per step, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        streams: Vec<usize>,
        /// Tokens in each stream's context before timing (default: half the context).
        #[arg(long)]
        position: Option<usize>,
        /// Timed steps per configuration (after 2 untimed ones); the median is reported.
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// Also time int8 on the GPU, beside each stream count's predicted GPU step; without a
        /// GPU, print the prediction alone (for an H200).
        #[arg(long)]
        gpu: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(b: BenchCmd) -> Result<()> {
    match b {
        BenchCmd::Serve {
            addr,
            clients,
            seconds,
            max_tokens,
            prompt,
            temperature,
            json,
        } => {
            let r = run_load(&LoadOptions {
                addr: addr.clone(),
                clients,
                seconds,
                max_tokens,
                prompt,
                temperature,
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"bench": "serve", "addr": addr, "max_tokens": max_tokens, "report": r})
                );
            } else {
                println!(
                    "{} clients for {:.1} s against {addr}: {} streams completed, {} failed; {:.0} bytes/s",
                    r.clients, r.seconds, r.streams_completed, r.streams_failed, r.bytes_per_s
                );
                println!(
                    "time to first text: p50 {:.1} ms, p99 {:.1} ms; gap between chunks: p50 {:.1} ms, p99 {:.1} ms",
                    r.ttfb_ms.p50, r.ttfb_ms.p99, r.gap_ms.p50, r.gap_ms.p99
                );
                for f in &r.failures {
                    println!("failed: {f}");
                }
            }
            if r.streams_failed > 0 {
                bail!(
                    "{} of {} streams failed",
                    r.streams_failed,
                    r.streams_failed + r.streams_completed
                );
            }
        }
        BenchCmd::Generate {
            m2,
            preset,
            vocab,
            context,
            streams,
            position,
            steps,
            gpu,
            json,
        } => {
            let (cfg, params) = match m2 {
                Some(dir) => load_model(&dir)?,
                None => {
                    let mut cfg = ModelConfig::preset(&preset, Some(vocab))?;
                    cfg.context = Some(context);
                    let params = ParamArena::init(&cfg, 1);
                    (cfg, params)
                }
            };
            let context = cfg.context.unwrap_or(context);
            let position = position.unwrap_or(context / 2);
            let bandwidth = copy_bandwidth(5);
            let absent = gpu.then(cuda::gpu_unavailable_reason).flatten();
            if let Some(why) = &absent {
                eprintln!(
                    "--gpu: no usable GPU here ({why}): the GPU step is predicted, not timed"
                );
                for &n in &streams {
                    eprint!(
                        "{}",
                        format_decode_costs(&cfg, n, position, &cuda::cost::H200)
                    );
                }
            }
            let on_gpu = gpu && absent.is_none();
            let rows = bench_decode(&cfg, &params, &streams, position, steps, bandwidth, on_gpu)?;
            let threads = rayon::current_num_threads();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"bench": "generate", "preset": cfg.preset, "vocab": cfg.vocab,
                    "context": context, "threads": threads, "copy_bytes_per_s": bandwidth, "rows": rows})
                );
            } else {
                println!(
                    "M2 decode step, {} (vocab {}), context {context}, {threads} threads; copy bandwidth {:.1} GB/s",
                    cfg.preset,
                    cfg.vocab,
                    bandwidth / 1e9
                );
                println!(
                    "{:>7} {:>6} {:>9} {:>15} {:>9} {:>8} {:>9} {:>9}",
                    "streams",
                    "arith",
                    "ms/step",
                    "range",
                    "tokens/s",
                    "MB/step",
                    "floor ms",
                    "x floor"
                );
                for r in &rows {
                    println!(
                        "{:>7} {:>6} {:>9.3} {:>15} {:>9.0} {:>8.2} {:>9.3} {:>9.2}",
                        r.streams,
                        r.arith.name(),
                        r.ms_per_step,
                        format!("{:.3}-{:.3}", r.ms_range.0, r.ms_range.1),
                        r.tokens_per_s,
                        r.bytes_per_step as f64 / 1e6,
                        r.floor_ms,
                        r.ms_per_step / r.floor_ms
                    );
                }
                let ms = |n: usize, a: DecodeArith| {
                    rows.iter()
                        .find(|r| r.streams == n && r.arith == a)
                        .map(|r| r.ms_per_step)
                };
                for &n in &streams {
                    let (Some(q4), Some(q), Some(e)) = (
                        ms(n, DecodeArith::Int4),
                        ms(n, DecodeArith::Int8),
                        ms(n, DecodeArith::Exact),
                    ) else {
                        continue;
                    };
                    print!(
                        "{n} streams: int4 is {:.2}x and int8 {:.2}x the exact path's speed",
                        e / q4,
                        e / q
                    );
                    match ms(n, DecodeArith::GpuInt8) {
                        Some(g) => println!("; the GPU is {:.2}x the CPU's int8", q / g),
                        None => println!(),
                    }
                }
                if on_gpu {
                    let card = Card::for_device(cuda::GpuKernels::new(0)?.device_name());
                    for &n in &streams {
                        print!("{}", format_decode_costs(&cfg, n, position, &card));
                    }
                }
            }
        }
        BenchCmd::M1 {
            preset,
            windows,
            len,
            context,
            steps,
            gpu,
            rounds,
            json,
        } => {
            if windows == 0 || rounds == 0 {
                bail!("--windows and --rounds must be positive");
            }
            if !(1..=MAX_CONTEXT).contains(&context) {
                bail!("--context must be between 1 and {MAX_CONTEXT} (contract 3's longest attention span), not {context}");
            }
            let mode = match (gpu, steps) {
                (true, _) => M1Mode::Gpu,
                (false, true) => M1Mode::Lockstep,
                (false, false) => M1Mode::AllAtOnce,
            };
            let c = bench_m1(&preset, windows, len, context, mode, rounds)?;
            let (q, f) = (&c.int8, &c.float);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"bench": "m1", "preset": preset, "windows": windows, "len": len, "context": context,
                    "rounds": rounds, "positions": q.positions,
                    "device": q.device, "positions_per_s": q.positions_per_s, "runs": q.runs,
                    "float_device": f.device, "float_positions_per_s": f.positions_per_s, "float_runs": f.runs,
                    "ratio": c.ratio, "round_ratio_min": c.round_ratios.0, "round_ratio_max": c.round_ratios.1})
                );
            } else {
                println!("int8 M1 {preset} (contract 3, coding): {}", rate_line(q));
                println!("float M1 {preset} (contract 2): {}", rate_line(f));
                println!(
                    "contract 3 / contract 2: {:.2}x (medians; one round's ratio {:.2}x to {:.2}x)",
                    c.ratio, c.round_ratios.0, c.round_ratios.1
                );
            }
        }
        BenchCmd::Kernels {
            preset,
            vocab,
            batch,
            seq,
            reps,
            card,
            json,
        } => {
            let cfg = ModelConfig::preset(&preset, vocab)?;
            if batch == 0 || seq == 0 {
                bail!("--batch and --seq must be positive");
            }
            let Some(card) = Card::by_name(&card) else {
                let known: Vec<_> = cost::CARDS.iter().map(|c| c.name).collect();
                bail!(
                    "no measured ceilings for card {card:?} (known: {})",
                    known.join(", ")
                );
            };
            if cuda::gpu_unavailable_reason().is_none() {
                let r = cuda::bench::bench_kernels(&cfg, batch, seq, reps)?;
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    print!("{}", cuda::bench::format_report(&r));
                }
            } else if json {
                let costs = cost::step_costs(&cfg, batch, seq);
                let floor = cost::predicted_step_ms(&costs, &card);
                println!(
                    "{}",
                    serde_json::json!({
                        "preset": cfg.preset, "vocab": cfg.vocab, "batch": batch, "seq": seq,
                        "card": card, "kernels": costs, "predicted_step_ms": floor,
                    })
                );
            } else {
                print!("{}", cost::format_costs(&cfg, batch, seq, &card));
            }
        }
        BenchCmd::Scaling {
            presets,
            batch,
            seq,
            card,
            json,
        } => {
            use terse::bench::scaling::{
                format_points, scaling_points, ETHERNET_100G, INFINIBAND_NDR,
            };
            if batch == 0 || seq == 0 {
                bail!("--batch and --seq must be positive");
            }
            let Some(card) = Card::by_name(&card) else {
                bail!("no measured ceilings for card {card:?} (known: H100, H200)");
            };
            let mut points = Vec::new();
            for preset in &presets {
                let cfg = ModelConfig::preset(preset, None)?;
                // One node (8 GPUs) is NVLink alone, whatever joins the nodes.
                points.extend(scaling_points(
                    &cfg,
                    batch,
                    seq,
                    &card,
                    &[8, 64, 512],
                    &INFINIBAND_NDR,
                ));
                points.extend(scaling_points(
                    &cfg,
                    batch,
                    seq,
                    &card,
                    &[64, 512],
                    &ETHERNET_100G,
                ));
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"card": card, "batch": batch, "seq": seq, "points": points})
                );
            } else {
                println!(
                    "{} x {seq} tokens per GPU per step on {} (compute: the cost model's floor)",
                    batch, card.name
                );
                print!("{}", format_points(&points));
            }
        }
        BenchCmd::Ceilings { reps, json } => {
            let c = cuda::bench::measure_ceilings(reps)?;
            if json {
                println!("{}", serde_json::to_string(&c)?);
            } else {
                println!(
                    "{}: copy {:.3} TB/s (read + write), bf16 GEMM {:.1} TFLOP/s at 8192^3",
                    c.device,
                    c.copy_bytes_per_s / 1e12,
                    c.gemm_flops / 1e12
                );
            }
        }
        BenchCmd::Train {
            preset,
            vocab,
            batch,
            seq,
            steps,
            device,
            reduction,
            json,
        } => {
            if batch == 0 || seq == 0 || steps == 0 {
                bail!("--batch, --seq and --steps must be positive");
            }
            let r = bench_train(&preset, vocab, batch, seq, steps, device, reduction)?;
            let (secs, tok_s, gflops) = (r.seconds_per_step, r.tokens_per_s, r.gflops);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "bench": "train", "preset": preset, "vocab": r.vocab, "batch": batch, "seq": seq,
                        "steps": steps, "backend": r.backend, "note": r.note, "ms_per_step": secs * 1e3,
                        "tokens_per_s": tok_s, "gflops": gflops, "tflops": gflops / 1e3,
                        "mfu_989": r.mfu, "card": r.card.map(|c| c.name), "of_gemm_ceiling": r.of_gemm_ceiling,
                    })
                );
            } else {
                let mfu_s = match (r.mfu, r.of_gemm_ceiling, r.card) {
                    (Some(m), Some(g), Some(c)) => format!(
                        ", MFU {:.1}% of 989 TFLOP/s ({:.1}% of the {}'s measured {:.0})",
                        m * 100.0,
                        g * 100.0,
                        c.name,
                        c.gemm_flops / 1e12
                    ),
                    _ => String::new(),
                };
                println!(
                    "train {preset} (vocab {}) {batch}x{seq} on {} [{}]: {:.2} ms/step, {:.0} tokens/s, {:.2} TFLOP/s{mfu_s}",
                    r.vocab,
                    r.backend,
                    r.note,
                    secs * 1e3,
                    tok_s,
                    gflops / 1e3,
                );
            }
        }
    }
    Ok(())
}

/// "median R positions/s (LOW to HIGH over N runs of P positions) on DEVICE".
fn rate_line(r: &M1Bench) -> String {
    let (low, high) = r
        .runs
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
    format!(
        "median {:.0} positions/s ({:.0} to {:.0} over {} runs of {} positions) on {}",
        r.positions_per_s,
        low,
        high,
        r.runs.len(),
        r.positions,
        r.device
    )
}
