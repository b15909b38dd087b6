//! `terse serve`: its flags; loads M2 (and M1) as `terse generate` does and serves until
//! SIGINT or SIGTERM.

use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use terse::backend::Device;
use terse::generate::{decode_on_gpu, decode_weights, GpuDecoder};
use terse::m1::int8::WeightBits;
use terse::m1::{ExactModel, Int8M1, Int8Model};
use terse::serve::{serve, Model, ServeOptions};
use terse::train::{load_m2, M2Checkpoint};

#[derive(Args)]
pub struct ServeArgs {
    /// The M2 checkpoint (trained with `terse train --data TOKENS`).
    #[arg(long)]
    m2: PathBuf,
    /// The M1 its tokens were coded with (equal-info models).
    #[arg(long)]
    m1: Option<PathBuf>,
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Streams generating at once; a request beyond them is answered 429.
    #[arg(long, default_value_t = 32)]
    max_streams: usize,
    /// The largest prompt accepted, in bytes (larger: 413).
    #[arg(long, default_value_t = 4096)]
    max_prompt_bytes: usize,
    /// The largest `max_tokens` (bytes to generate) a request may ask for.
    #[arg(long, default_value_t = 4096)]
    max_output_bytes: usize,
    /// Seconds a streaming client may take nothing (its stream's queue full) before it is
    /// treated as gone: the stream is dropped and its place freed. At least 1.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    stall_timeout: u64,
    /// Run M2 in f32 under contract 2's fixed operation order (the same sample on every
    /// machine) instead of quantised.
    #[arg(long, conflicts_with = "weights")]
    exact: bool,
    /// M2's quantised weights: `int4` (the CPU's default, about half of int8's bytes per step)
    /// or `int8` (the GPU's, and the CPU's when asked).
    #[arg(long, value_enum)]
    weights: Option<WeightBits>,
    /// Where M2 runs: `cuda` decodes on the GPU with int8 weights, one device context per stream
    /// (`--max-streams` of them); `auto` takes the GPU once GPU decoding has passed its parity
    /// tests on one.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let o = ServeOptions {
        addr: a.addr,
        max_streams: a.max_streams,
        max_prompt_bytes: a.max_prompt_bytes,
        max_output_bytes: a.max_output_bytes,
        stall_timeout: Duration::from_secs(a.stall_timeout),
    };
    // Flags first: a bad one is refused before a model is loaded.
    o.validate()?;
    let M2Checkpoint {
        config: cfg,
        params,
        options,
        tokens,
    } = load_m2(&a.m2)?;
    let m1 = a.m1.as_deref().map(Int8M1::load).transpose()?.map(Arc::new);
    let name =
        a.m2.file_name()
            .map_or_else(|| "m2".into(), |n| n.to_string_lossy().into_owned());
    let model = Model {
        name,
        source: tokens,
        m1,
        context: options.seq,
    };
    let (on_gpu, note) = decode_on_gpu(a.device, a.exact, a.weights)?;
    if let Some(note) = note {
        eprintln!("terse serve: {note}");
    }
    if a.exact {
        return serve(ExactModel::new(&cfg, &params)?, model, &o);
    }
    let bits = decode_weights(on_gpu, a.weights);
    let m2 = Int8Model::with_bits(&cfg, &params, bits).with_context(|| {
        format!(
            "M2 cannot run with {} weights (--exact runs it in f32)",
            bits.name()
        )
    })?;
    if on_gpu {
        let gpu = GpuDecoder::new(&m2, o.max_streams).context("--device cuda: M2 on the GPU")?;
        drop(m2);
        serve(gpu, model, &o)
    } else {
        serve(m2, model, &o)
    }
}
