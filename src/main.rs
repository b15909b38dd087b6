//! The `terse` command line: parse, call the library, print.

mod cli {
    //! One file per command family: its flags, the library calls it makes, what it prints.
    pub mod bench;
    pub mod compress;
    pub mod eval;
    pub mod experiment;
    pub mod generate;
    pub mod pack_m1;
    pub mod ranks;
    pub mod serve;
    pub mod tokenize;
    pub mod train;
}

use anyhow::Result;
use clap::{Parser, Subcommand};
use cli::{bench::BenchCmd, eval::EvalArgs, experiment::DemoArgs, experiment::ExperimentArgs};
use cli::{compress::CompressArgs, compress::DecompressArgs, generate::GenerateArgs};
use cli::{pack_m1::PackM1Args, serve::ServeArgs, tokenize::TokenizeArgs, train::TrainArgs};
use std::path::PathBuf;
use terse::backend;

#[derive(Parser)]
#[command(
    name = "terse",
    version,
    about = "Train and serve language models over neurally compressed text"
)]
struct Cli {
    /// Worker threads for the CPU backend, at most the machine's cores (default: all cores).
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
    /// Serve M2 over HTTP (OpenAI-style /v1/completions, streamed or not), many requests
    /// batched per model step, until SIGINT or SIGTERM.
    Serve(ServeArgs),
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
    /// Compress any file or stream losslessly under M1 (xz's habits: `terse compress FILE` writes
    /// FILE.terse and removes FILE unless -k; -c to stdout, -d to decompress, -t to test).
    Compress(CompressArgs),
    /// Restore what `terse compress` made (needs the same M1): FILE.terse gives FILE.
    Decompress(DecompressArgs),
    /// Quantise an M1 checkpoint once into an M1 pack: one file holding contract 3's int8 model,
    /// which every --m1 flag takes in place of the checkpoint (the same codes, bit for bit).
    PackM1(PackM1Args),
    /// Decode a token dataset back to the exact bytes it covers.
    Detokenize {
        /// Token dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// The M1 checkpoint the dataset was coded with (equal-info datasets).
        #[arg(long)]
        m1: Option<PathBuf>,
        /// Output file, written atomically; a symlink is followed, a device or FIFO written
        /// through.
        #[arg(long)]
        out: PathBuf,
        /// Replace --out if it is an existing file (without this, an existing file is refused).
        #[arg(long)]
        force: bool,
        /// ac, equal-info: run M1 on the GPU, hundreds of chunks or windows at once (the same
        /// bytes as on the CPU).
        #[arg(long)]
        gpu: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Some(asked) = cli.threads {
        if asked == 0 {
            eprintln!("error: --threads must be at least 1 (leave it out to use every core)");
            std::process::exit(2);
        }
        let cores = std::thread::available_parallelism().map_or(asked, |c| c.get());
        let n = asked.min(cores);
        if n < asked {
            eprintln!("terse: --threads {asked} is more than the {cores} cores this machine has; using {cores}");
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: --threads {n}: {e}");
            std::process::exit(2);
        }
    }
    let result = match cli.cmd {
        Cmd::Train(a) => cli::train::run(*a),
        Cmd::Eval(a) => cli::eval::run(a),
        Cmd::Generate(a) => cli::generate::run(a),
        Cmd::Serve(a) => cli::serve::run(a),
        Cmd::Info { json } => cmd_info(json),
        Cmd::Demo(a) => cli::experiment::demo(a),
        Cmd::Experiment(a) => cli::experiment::run(a),
        Cmd::Bench(b) => cli::bench::run(b),
        Cmd::Tokenize(a) => cli::tokenize::run(a),
        Cmd::Detokenize {
            data,
            m1,
            out,
            force,
            gpu,
        } => cli::tokenize::run_detokenize(&data, m1.as_deref(), &out, gpu, force),
        Cmd::PackM1(a) => cli::pack_m1::run(a),
        Cmd::Compress(a) => cli::compress::run_compress(&a),
        Cmd::Decompress(a) => cli::compress::run_decompress(&a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
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
