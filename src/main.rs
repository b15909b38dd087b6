//! The `terse` command line: parse, call the library, print.

mod cli {
    //! One file per command family: its flags, the library calls it makes, what it prints.
    pub mod bench;
    pub mod eval;
    pub mod experiment;
    pub mod generate;
    pub mod tokenize;
    pub mod train;
}

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use cli::{bench::BenchCmd, eval::EvalArgs, experiment::DemoArgs, experiment::ExperimentArgs};
use cli::{generate::GenerateArgs, tokenize::TokenizeArgs, train::TrainArgs};
use std::path::{Path, PathBuf};
use terse::backend;
use terse::compress::{compress_file, decompress_file, Coding, STDIO};
use terse::fsio::{check_output, Existing};
use terse::m1::Int8M1;

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

/// `terse compress --method`: the command line's names of [`Coding`]'s kinds.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CompressMethod {
    Ac,
    EqualInfo,
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
        /// How each chunk is coded: `ac` (one arithmetic code under M1: the best ratio) or
        /// `equal-info` (windows of --window-bits that decode on their own). A chunk that the
        /// coding does not shrink is stored as it is.
        #[arg(long, value_enum, default_value = "ac")]
        method: CompressMethod,
        /// Bits per Equal-Info window: 16..=128, a multiple of 8 (default 16; equal-info only).
        #[arg(long)]
        window_bits: Option<u32>,
        /// Bytes per independently coded chunk (parallelism; a damaged chunk is named).
        #[arg(long, default_value_t = terse::compress::DEFAULT_CHUNK_BYTES)]
        chunk_bytes: u32,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Replace OUTPUT if it is an existing file (without this, an existing file is refused).
        #[arg(long)]
        force: bool,
        /// Input file, or `-` for standard input (read once, front to back).
        input: PathBuf,
        /// Output file, written atomically (a symlink is followed, a device or FIFO written
        /// through), or `-` for standard output (the report then goes to stderr).
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
        /// Replace OUTPUT if it is an existing file (without this, an existing file is refused).
        #[arg(long)]
        force: bool,
        /// Compressed file, or `-` for standard input.
        input: PathBuf,
        /// Output file, written atomically (a symlink is followed, a device or FIFO written
        /// through), or `-` for standard output (the report then goes to stderr; a file refused
        /// part way leaves there what was decoded before the refusal, and the exit status says
        /// so).
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
        Cmd::Compress {
            m1,
            method,
            window_bits,
            chunk_bytes,
            json,
            force,
            input,
            output,
        } => compress_coding(method, window_bits).and_then(|coding| {
            check_stdio_output(&output, force)?;
            let m = Int8M1::load(&m1)?;
            let existing = Existing::replace_if(force);
            let r = compress_file(&input, &output, &m, coding, chunk_bytes, existing, !json)?;
            print_compress(&r, json, "compressed", output == Path::new(STDIO))
        }),
        Cmd::Decompress {
            m1,
            json,
            force,
            input,
            output,
        } => check_stdio_output(&output, force).and_then(|_| {
            let m = Int8M1::load(&m1)?;
            let r = decompress_file(&input, &output, &m, Existing::replace_if(force), !json)?;
            print_compress(&r, json, "decompressed", output == Path::new(STDIO))
        }),
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

/// [`check_output`] for an output that may be `-` (standard output, always writable).
fn check_stdio_output(output: &Path, force: bool) -> Result<()> {
    match output == Path::new(STDIO) {
        true => Ok(()),
        false => check_output(output, Existing::replace_if(force)),
    }
}

/// What `terse compress --method --window-bits` asks for; refuses window bits for `ac`.
fn compress_coding(method: CompressMethod, window_bits: Option<u32>) -> Result<Coding> {
    Ok(match (method, window_bits) {
        (CompressMethod::Ac, None) => Coding::Ac,
        (CompressMethod::Ac, Some(_)) => {
            bail!("--window-bits applies to --method equal-info, not ac")
        }
        (CompressMethod::EqualInfo, bits) => Coding::EqualInfo {
            window_bits: bits.unwrap_or(16),
        },
    })
}

/// Prints what `compress` or `decompress` did: on stdout, or on stderr when the data went to
/// stdout (`to_stderr`).
fn print_compress(
    r: &terse::compress::CompressReport,
    json: bool,
    what: &str,
    to_stderr: bool,
) -> Result<()> {
    let line = if json {
        serde_json::to_string(r)?
    } else {
        format!(
            "{what} {} bytes <-> {} bytes ({:.3} bits/byte, {}{} chunks stored) in {:.2} s, {:.0} bytes/s",
            r.original_bytes,
            r.compressed_bytes,
            r.bits_per_byte,
            match r.method {
                "ac" => "ac, ".to_string(),
                m => format!("{m}, {} windows, ", r.windows),
            },
            r.stored_chunks,
            r.seconds,
            r.bytes_per_second
        )
    };
    match to_stderr {
        true => eprintln!("{line}"),
        false => println!("{line}"),
    }
    Ok(())
}
