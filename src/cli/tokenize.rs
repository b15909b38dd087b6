//! `terse tokenize` and `terse detokenize`: their flags and what they print.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use terse::dist::{check_same_command, gather_u64, Group, OnEveryRank};
use terse::fsio::Existing;
use terse::tokenize::{merge_shards, Method, Shard};
use terse::tokenize_jobs::{detokenize, load_m1_spec};

#[derive(Args)]
pub struct TokenizeArgs {
    /// Tokenization method (ac and equal-info need --m1).
    #[arg(long, value_enum, required_unless_present = "merge")]
    method: Option<terse::tokenize::Method>,
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
    #[arg(long, required_unless_present = "merge")]
    data: Option<PathBuf>,
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
    /// Code only shard I of N (counting from 0): chunk k when k mod N = I, so N processes (a
    /// job array's tasks) share a corpus; `--merge` joins their outputs into the dataset one
    /// process writes, byte for byte.
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    shard: Option<Shard>,
    /// Join the datasets of every shard of one `--shard` run (in any order) into --out, instead
    /// of tokenizing.
    #[arg(long, num_args = 1.., value_name = "SHARD_DIR", conflicts_with_all = ["method", "data", "m1", "gpu", "subword_train", "delay", "token_bits", "chunk_bytes", "window_bits"])]
    merge: Vec<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `--token-bits`: 8 or 16 only.
fn token_bits_parser() -> impl clap::builder::TypedValueParser<Value = u32> {
    clap::builder::TypedValueParser::map(
        clap::builder::PossibleValuesParser::new(["8", "16"]),
        |s: String| if s == "8" { 8 } else { 16 },
    )
}

/// Runs `terse tokenize`; under `mpirun` or `srun`, the ranks share the corpus's chunks
/// ([`run_ranks`]).
pub fn run(a: TokenizeArgs) -> Result<()> {
    super::ranks::run_ranked(|group| match group {
        None => run_alone(a),
        Some(g) => run_ranks(a, g.as_ref()),
    })
}

/// Every rank codes shard `rank/size` into a directory beside `--out`; once all have, rank 0
/// merges them into `--out` (the dataset one process writes, byte for byte) and each rank
/// removes its own. A rank that fails makes every rank fail, naming it.
fn run_ranks(a: TokenizeArgs, g: &dyn Group) -> Result<()> {
    check_same_command(g)?;
    let (Some(method), Some(data)) = (a.method, &a.data) else {
        return Err(OnEveryRank(
            "--merge joins shards in one process; run it without mpirun".into(),
        )
        .into());
    };
    if a.shard.is_some() {
        return Err(OnEveryRank(
            "--shard splits a corpus between separate tasks; under mpirun the ranks split it themselves: drop --shard".into(),
        )
        .into());
    }
    let (rank, size) = (g.rank(), g.size());
    let part = |r: usize| {
        let name = a
            .out
            .file_name()
            .map_or("dataset".into(), |n| n.to_string_lossy());
        a.out.with_file_name(format!(".{name}.rank-{r}-of-{size}"))
    };
    let shard = Shard {
        index: rank as u32,
        count: size as u32,
    };
    let started = std::time::Instant::now();
    let mine = code(
        &a,
        method,
        data,
        &part(rank),
        Some(shard),
        rank == 0 && !a.json,
    );
    let failed = gather_u64(g, mine.is_err() as u64)?;
    let cleanup = || std::fs::remove_dir_all(part(rank));
    if let Err(e) = mine {
        let _ = cleanup();
        return Err(OnEveryRank(format!("{e:#}")).into());
    }
    if let Some(r) = failed.iter().position(|&f| f != 0) {
        let _ = cleanup();
        return Err(OnEveryRank(format!(
            "rank {r} could not code its shard (its error is above)"
        ))
        .into());
    }
    let merged = if rank == 0 {
        merge_shards(&(0..size).map(part).collect::<Vec<_>>(), &a.out).map(Some)
    } else {
        Ok(None)
    };
    let merge_failed = gather_u64(g, merged.is_err() as u64)?[0] != 0;
    cleanup().with_context(|| format!("cannot remove {}", part(rank).display()))?;
    if merge_failed {
        let why = merged
            .err()
            .map_or("(its error is above)".into(), |e| format!("{e:#}"));
        return Err(OnEveryRank(format!("rank 0 could not merge the shards: {why}")).into());
    }
    if let Ok(Some(meta)) = merged {
        if a.json {
            println!("{}", serde_json::to_string(&meta.identity)?);
        } else {
            println!(
                "{} ranks -> {}: {} bytes, {} tokens, {} chunks in {:.2} s",
                size,
                a.out.display(),
                meta.bytes_covered,
                meta.tokens,
                meta.examples.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Codes `data` (or its `shard`) into `out` as `a` asks.
fn code(
    a: &TokenizeArgs,
    method: Method,
    data: &Path,
    out: &Path,
    shard: Option<Shard>,
    progress: bool,
) -> Result<terse::tokenize::TokenizeReport> {
    if a.delay && method != Method::EqualInfo {
        bail!("--delay is a rule of --method equal-info only");
    }
    if a.gpu && !method.needs_m1() {
        bail!(
            "--gpu runs M1 (ac, equal-info); {} runs on the CPU",
            method.name()
        );
    }
    let spec = match (method.needs_m1(), &a.m1) {
        (true, Some(path)) => Some(load_m1_spec(
            &method,
            path,
            a.window_bits,
            a.delay,
            a.gpu,
            a.chunk_bytes,
        )?),
        (true, None) => bail!("--method {} needs --m1 CHECKPOINT", method.name()),
        (false, Some(_)) => bail!("--m1 is used only by --method ac and equal-info"),
        (false, None) => None,
    };
    terse::tokenize::tokenize_corpus_with(
        method,
        data,
        out,
        a.token_bits,
        a.chunk_bytes,
        spec.as_ref(),
        a.subword_train.as_deref(),
        shard,
        progress,
    )
}

fn run_alone(a: TokenizeArgs) -> Result<()> {
    let (Some(method), Some(data)) = (a.method, &a.data) else {
        let meta = merge_shards(&a.merge, &a.out)?;
        if a.json {
            println!("{}", serde_json::to_string(&meta.identity)?);
        } else {
            println!(
                "{} shards -> {}: {} bytes, {} tokens, {} chunks",
                a.merge.len(),
                a.out.display(),
                meta.bytes_covered,
                meta.tokens,
                meta.examples.len()
            );
        }
        return Ok(());
    };
    let r = code(&a, method, data, &a.out, a.shard, !a.json)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let shard = a.shard.map(|s| format!(", shard {s}")).unwrap_or_default();
        println!(
            "{} -> {} ({}, {}-bit tokens, {}-byte chunks{shard})",
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

/// `terse detokenize` (`force`: replace an existing output file).
pub fn run_detokenize(
    data: &Path,
    m1: Option<&Path>,
    out: &Path,
    gpu: bool,
    force: bool,
) -> Result<()> {
    let r = detokenize(data, m1, out, gpu, Existing::replace_if(force))?;
    println!(
        "{}: {} bytes decoded to {} in {:.1} s",
        data.display(),
        r.bytes,
        out.display(),
        r.seconds
    );
    Ok(())
}
