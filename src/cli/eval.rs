//! `terse eval`: its flags and what it prints (an M1 on a corpus, an M2 on a token dataset).

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use terse::backend::{create_backend, Device};
use terse::checkpoint::load_model;
use terse::data::{baselines, eval_windows, read_prefix};
use terse::eval::score_windows;
use terse::eval::tokens::{evaluate_m2, score_tokens_quantised, token_counts, TokenScore};
use terse::m1::int8::quantisation_cost;
use terse::m1::int8::WeightBits;
use terse::m1::{ExactM1, Int8M1, Int8Model};
use terse::model::{ModelConfig, ParamArena};
use terse::tokenize::ChunkSplit;
use terse::tokenize::{TokenDataset, TokenEvalSet};
use terse::train::{is_token_dataset, load_m2, M2Checkpoint};

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint directory (or its model.safetensors).
    #[arg(long, visible_alias = "m2")]
    checkpoint: PathBuf,
    /// A corpus file (M1: its whole byte stream, documents joined by a blank line) or a token
    /// dataset (M2: every token of its chunks, tokenized like the M2's training data).
    #[arg(long)]
    data: PathBuf,
    /// Context per window, at most the model's: bytes (M1) [default: 256, or the model's context
    /// when shorter], tokens (M2) [default: its training length].
    #[arg(long)]
    seq: Option<usize>,
    /// M2: which chunks of the token dataset to score.
    #[arg(long, value_enum, default_value = "all")]
    split: terse::tokenize::ChunkSplit,
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
    /// Also score the int8 quantisation on the CPU beside the float model. M1: the float model
    /// on the exact path (numeric contract 2) beside contract 3 (what codes), windows of --seq
    /// bytes from a fresh context. M2: beside the usual score, M2 in int8 (`Int8Model`, what
    /// `terse generate` and `terse serve` run) on the same rows.
    #[arg(long)]
    int8: bool,
    /// M2 only: also score M2 with 4-bit weights (`terse generate --weights int4`) on the same
    /// rows.
    #[arg(long)]
    int4: bool,
    #[arg(long)]
    json: bool,
}

/// `--int8`: bits/byte of the float M1 (contract 2) and of its int8 quantisation (contract 3).
fn run_int8(
    a: &EvalArgs,
    cfg: &ModelConfig,
    params: &ParamArena,
    bytes: &[u8],
    seq: usize,
) -> Result<()> {
    if a.device == Device::Cuda {
        bail!("--int8 scores both contracts on the CPU; drop --device cuda");
    }
    let c = a.checkpoint.display();
    let float = ExactM1::new(cfg, params).with_context(|| format!("{c} cannot serve as M1"))?;
    let int8 =
        Int8M1::new(cfg, params).with_context(|| format!("{c} cannot be quantised to int8"))?;
    let t = Instant::now();
    let r = quantisation_cost(&float, &int8, bytes, seq);
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "float_bpb": r.float_bpb, "int8_bpb": r.int8_bpb, "relative_loss": r.relative_loss(),
                "bytes_scored": r.bytes, "window": r.window, "seconds": secs,
            })
        );
    } else {
        println!(
            "{}: float (contract 2) {:.4}, int8 (contract 3) {:.4} bits/byte ({:+.2}%) over {} bytes in windows of {} ({:.1} s)",
            a.data.display(),
            r.float_bpb,
            r.int8_bpb,
            100.0 * r.relative_loss(),
            r.bytes,
            r.window,
            secs
        );
    }
    Ok(())
}

fn run_m2(a: EvalArgs) -> Result<()> {
    let M2Checkpoint {
        config: cfg,
        params,
        options: opts,
        tokens: src,
    } = load_m2(&a.checkpoint)?;
    let ds = TokenDataset::open(&a.data)?;
    src.check_compatible(ds.metadata(), &a.data)?;
    // The unigram model counts the M2's training tokens when they are still there.
    let unigram = TokenDataset::open(&opts.data).ok().map(|t| {
        (
            token_counts(&t, ChunkSplit::All),
            opts.data.display().to_string(),
        )
    });
    let seq = a.seq.unwrap_or(opts.seq);
    check_context(&a, &cfg, seq)?;
    let t = Instant::now();
    let quantised = |bits: WeightBits| -> Result<(WeightBits, TokenScore)> {
        let mut c = cfg.clone();
        c.context.get_or_insert(opts.seq);
        let m = Int8Model::with_bits(&c, &params, bits)
            .with_context(|| format!("M2 cannot be quantised to {}", bits.name()))?;
        let set = TokenEvalSet::new(&ds, a.split, seq, None);
        Ok((bits, score_tokens_quantised(&set, &m)?))
    };
    let scores: Vec<(WeightBits, TokenScore)> =
        [(a.int8, WeightBits::Int8), (a.int4, WeightBits::Int4)]
            .into_iter()
            .filter(|&(asked, _)| asked)
            .map(|(_, bits)| quantised(bits))
            .collect::<Result<_>>()?;
    let (mut be, _) = create_backend(a.device, &cfg, params, None)?;
    let r = evaluate_m2(be.as_mut(), &cfg, &src, &ds, a.split, seq, a.batch, unigram)?;
    let secs = t.elapsed().as_secs_f64();
    let loss = |q: &TokenScore| q.bits_per_byte / r.bits_per_byte - 1.0;
    if a.json {
        let mut j = serde_json::to_value(&r)?;
        j["seconds"] = secs.into();
        j["backend"] = be.name().into();
        for (bits, q) in &scores {
            j[format!("{}_bits_per_byte", bits.name())] = q.bits_per_byte.into();
            j[format!("{}_relative_loss", bits.name())] = loss(q).into();
        }
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
        for (bits, q) in &scores {
            println!(
                "  M2 with {} weights (`generate --weights {}`) {:.4} bits/byte ({:+.2}% against the float model)",
                bits.name(),
                bits.name(),
                q.bits_per_byte,
                100.0 * loss(q)
            );
        }
    }
    Ok(())
}

/// Refuses a `--seq` longer than the context the model was trained with: positions it never saw.
fn check_context(a: &EvalArgs, cfg: &ModelConfig, seq: usize) -> Result<()> {
    if let Some(context) = cfg.context.filter(|&c| seq > c) {
        bail!(
            "--seq {seq} is longer than the context of {} ({context} positions, its training length); give --seq {context} or less",
            a.checkpoint.display()
        );
    }
    Ok(())
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.seq == Some(0) || a.batch == 0 {
        bail!("--seq and --batch must be positive");
    }
    if is_token_dataset(&a.data) {
        return run_m2(a);
    }
    let (cfg, params) = load_model(&a.checkpoint)?;
    let seq = a.seq.unwrap_or(cfg.context.map_or(256, |c| c.min(256)));
    if cfg.vocab != 256 {
        bail!(
            "checkpoint {} has vocab {}: `terse eval --data` scores byte-level models (vocab 256)",
            a.checkpoint.display(),
            cfg.vocab
        );
    }
    check_context(&a, &cfg, seq)?;
    let bytes = read_prefix(&a.data, a.max_bytes.unwrap_or(u64::MAX))?;
    if bytes.len() < 2 {
        bail!(
            "corpus {} holds too little text to score (need at least 2 bytes)",
            a.data.display()
        );
    }
    if a.int4 {
        bail!("--int4 scores M2 (a token dataset); M1 codes in int8 only (--int8)");
    }
    if a.int8 {
        return run_int8(&a, &cfg, &params, &bytes, seq);
    }
    let t = Instant::now();
    let (mut be, _) = create_backend(a.device, &cfg, params, None)?;
    let windows = eval_windows(&bytes, seq, None);
    let score = score_windows(be.as_mut(), &windows, a.batch, None)?;
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
