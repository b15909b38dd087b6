//! `terse generate`: its flags; the text streams to stdout as it is decoded.

use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use terse::backend::Device;
use terse::generate::{
    decode_on_gpu, decode_weights, generate, Decoder, GpuDecoder, SampleOptions,
};
use terse::m1::int8::WeightBits;
use terse::m1::{ExactModel, Int8M1, Int8Model};
use terse::tokenize::TokenSource;
use terse::train::{load_m2, M2Checkpoint};

#[derive(Args)]
pub struct GenerateArgs {
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
    /// Sampling temperature; 0 (or one so small that only the most likely token keeps any
    /// weight) takes the most likely token.
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
    /// Run M2 in f32 under contract 2's fixed operation order (the same sample on every
    /// machine, about 8x the bytes per step) instead of quantised.
    #[arg(long, conflicts_with = "weights")]
    exact: bool,
    /// M2's quantised weights: `int4` (the CPU's default: 4-bit codes with 8-bit group scales,
    /// about half of int8's bytes per step) or `int8` (the GPU's, and the CPU's when asked).
    #[arg(long, value_enum)]
    weights: Option<WeightBits>,
    /// Where M2 runs: `cuda` decodes on the GPU with int8 weights (the same samples as the
    /// CPU's `--weights int8`, bit for bit); `auto` takes the GPU once GPU decoding has passed
    /// its parity tests on one.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
}

/// The M2 a generation runs on.
enum M2 {
    Exact(ExactModel),
    Quantised(Int8Model),
    Gpu(Box<GpuDecoder>),
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let o = SampleOptions {
        max_bytes: a.max_bytes,
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
    };
    o.validate(None)?;
    let M2Checkpoint {
        config: cfg,
        params,
        options: opts,
        tokens: src,
    } = load_m2(&a.m2)?;
    let m1 = a.m1.as_deref().map(Int8M1::load).transpose()?.map(Arc::new);
    o.validate(Some(cfg.vocab))?;
    let (on_gpu, note) = decode_on_gpu(a.device, a.exact, a.weights)?;
    if let Some(note) = note {
        eprintln!("terse generate: {note}");
    }
    let bits = decode_weights(on_gpu, a.weights);
    let quantised = || {
        Int8Model::with_bits(&cfg, &params, bits).with_context(|| {
            format!(
                "M2 cannot run with {} weights (--exact runs it in f32)",
                bits.name()
            )
        })
    };
    let m2 = if a.exact {
        M2::Exact(ExactModel::new(&cfg, &params)?)
    } else if on_gpu {
        M2::Gpu(Box::new(
            GpuDecoder::new(&quantised()?, 1).context("--device cuda: M2 on the GPU")?,
        ))
    } else {
        M2::Quantised(quantised()?)
    };
    let job = Job {
        src,
        m1,
        context: opts.seq,
        prompt: a.prompt,
        options: o,
        json: a.json,
    };
    match &m2 {
        M2::Exact(m) => job.run(m),
        M2::Quantised(m) => job.run(m),
        M2::Gpu(m) => job.run(m.as_ref()),
    }
}

/// Everything a generation takes apart from the model it runs on.
struct Job {
    src: TokenSource,
    m1: Option<Arc<Int8M1>>,
    /// The context M2 trained at (tokens per row).
    context: usize,
    prompt: String,
    options: SampleOptions,
    /// Print one JSON object instead of streaming the text.
    json: bool,
}

impl Job {
    /// Generates on `m2`: the prompt and text stream to stdout with a summary on stderr, or
    /// (`json`) one JSON object goes to stdout at the end.
    fn run<D: Decoder>(self, m2: &D) -> Result<()> {
        let Job {
            src,
            m1,
            context,
            prompt,
            options,
            json,
        } = self;
        let mut text = Vec::new();
        let mut out = std::io::stdout().lock();
        let prompt = prompt.as_bytes();
        if !json {
            out.write_all(prompt)?;
            out.flush()?;
        }
        let on_text = |bytes: &[u8]| {
            text.extend_from_slice(bytes);
            if !json {
                out.write_all(bytes)?;
                out.flush()?;
            }
            Ok(())
        };
        let r = generate(m2, &src, m1, context, prompt, &options, on_text)?;
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
}
