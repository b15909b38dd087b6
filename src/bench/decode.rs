//! `terse bench generate`: M2's decode step (one new token per stream, key/value caches) on the
//! CPU, 4-bit and int8 weights ([`Int8Model`]; 4-bit is what CPU generation runs) beside f32
//! under contract 2 ([`ExactModel`], the exact path), each against the floor its bytes imply at the machine's copy bandwidth; with
//! `--gpu`, also int8 on the GPU ([`GpuDecoder`]) against its predicted step
//! ([`decode_cost`](crate::backend::cuda::decode_cost)).
//!
//! Cost model: a step reads every weight matrix once whatever the number of streams (the
//! products run over all streams' rows together) and, per stream, one embedding row and its
//! key/value cache up to its position. Everything else (norms, softmax over the vocabulary,
//! sampling) is small beside that at batch 1, so `bytes / copy bandwidth` is the floor.

use crate::backend::cuda::cost::Card;
use crate::backend::cuda::decode_cost::{decode_costs, predicted_decode_us};
use crate::backend::cuda::GpuKernels;
use crate::generate::{Decoder, GpuDecoder};
use crate::m1::int8::WeightBits;
use crate::m1::{ExactModel, Int8Model};
use crate::model::{ModelConfig, ParamArena};
use crate::rng::Rng;
use anyhow::{ensure, Context, Result};
use serde::Serialize;
use std::time::Instant;

/// The arithmetic a decode step runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeArith {
    /// 4-bit weights, int8 activations ([`Int8Model`] with [`WeightBits::Int4`]): CPU
    /// generation's default.
    Int4,
    /// Int8 weights and activations ([`Int8Model`]): `--weights int8`.
    Int8,
    /// F32 under contract 2 ([`ExactModel`]): `terse generate --exact`.
    Exact,
    /// Int8 on the GPU ([`GpuDecoder`]), the same logits as `Int8`: `terse generate --device cuda`.
    #[serde(rename = "gpu-int8")]
    GpuInt8,
}

impl DecodeArith {
    /// Bytes per cached key or value element.
    fn cache_bytes(self) -> usize {
        match self {
            DecodeArith::Int4 | DecodeArith::Int8 | DecodeArith::GpuInt8 => 1,
            DecodeArith::Exact => 4,
        }
    }

    /// Bytes one step reads with `streams` streams each `position` tokens in (the model above):
    /// for 4-bit weights, half a byte per weight, a sub-scale byte per 32 and an f32 per output.
    pub fn step_bytes(self, cfg: &ModelConfig, streams: usize, position: usize) -> usize {
        let (d, l) = (cfg.d_model, cfg.n_layers);
        let matrices = l * (4 * d * d + 2 * d * cfg.d_ff) + cfg.vocab * d;
        let outputs = l * (5 * d + cfg.d_ff) + cfg.vocab;
        let weights = match self {
            DecodeArith::Int4 => matrices * 17 / 32 + 4 * outputs,
            DecodeArith::Int8 | DecodeArith::GpuInt8 => matrices,
            DecodeArith::Exact => 4 * matrices,
        };
        let per_stream = 4 * d + 2 * l * (position + 1) * d * self.cache_bytes();
        weights + streams * per_stream
    }
}

/// One measured configuration of [`bench_decode`].
#[derive(Clone, Debug, Serialize)]
pub struct DecodeBench {
    pub arith: DecodeArith,
    /// Streams advanced together per step.
    pub streams: usize,
    /// Tokens already in each stream's context when timing starts.
    pub position: usize,
    /// Median milliseconds per step over the timed steps.
    pub ms_per_step: f64,
    /// Fastest and slowest timed step.
    pub ms_range: (f64, f64),
    /// Tokens produced per second (streams / step time).
    pub tokens_per_s: f64,
    /// Bytes one step reads ([`DecodeArith::step_bytes`]).
    pub bytes_per_step: usize,
    /// `bytes_per_step / copy bandwidth`, milliseconds; on the GPU, the step the cost model
    /// predicts for the card ([`predicted_decode_us`]).
    pub floor_ms: f64,
}

impl DecodeArith {
    /// The name `terse bench generate` prints and its JSON holds.
    pub fn name(self) -> &'static str {
        match self {
            DecodeArith::Int4 => "int4",
            DecodeArith::Int8 => "int8",
            DecodeArith::Exact => "exact",
            DecodeArith::GpuInt8 => "gpu-int8",
        }
    }
}

/// Times `steps` decode steps (after two untimed ones) of `cfg`'s model with `params`, for each
/// arithmetic and each count in `streams`: every stream is first filled with `position` random
/// tokens, then advanced one token per step. `copy_bandwidth` (bytes/s) sets each CPU floor.
/// With `gpu`, also times [`GpuDecoder`] (`n` device streams for `n` streams, so every step is a
/// graph replay). Refuses a position the model's context cannot hold with room for the timed
/// steps, zero steps or streams, and `gpu` without a usable GPU (with the reason).
pub fn bench_decode(
    cfg: &ModelConfig,
    params: &ParamArena,
    streams: &[usize],
    position: usize,
    steps: usize,
    copy_bandwidth: f64,
    gpu: bool,
) -> Result<Vec<DecodeBench>> {
    ensure!(steps > 0, "--steps must be positive");
    ensure!(
        !streams.is_empty() && streams.iter().all(|&s| s > 0),
        "--streams must list positive counts"
    );
    let context = cfg.context.unwrap_or(usize::MAX);
    ensure!(
        position >= 1 && position + steps + 2 <= context,
        "--position {position} plus {} steps does not fit the model's context of {context} tokens",
        steps + 2
    );
    let card = if gpu {
        if let Some(why) = crate::backend::cuda::gpu_unavailable_reason() {
            anyhow::bail!("--gpu: no usable GPU: {why}");
        }
        let k = GpuKernels::new(0).context("--gpu")?;
        Some(Card::for_device(k.device_name()))
    } else {
        None
    };
    let int4 = Int8Model::with_bits(cfg, params, WeightBits::Int4)?;
    let int8 = Int8Model::new(cfg, params)?;
    let exact = ExactModel::new(cfg, params)?;
    let mut out = Vec::new();
    for &n in streams {
        let mut ariths = vec![DecodeArith::Int4, DecodeArith::Int8, DecodeArith::Exact];
        ariths.extend(card.map(|_| DecodeArith::GpuInt8));
        for arith in ariths {
            let times = match arith {
                DecodeArith::Int4 => time_steps(&int4, n, position, steps)?,
                DecodeArith::Int8 => time_steps(&int8, n, position, steps)?,
                DecodeArith::Exact => time_steps(&exact, n, position, steps)?,
                DecodeArith::GpuInt8 => {
                    time_steps(&GpuDecoder::new(&int8, n)?, n, position, steps)?
                }
            };
            let median = times[times.len() / 2];
            let mid = position + steps / 2;
            let bytes = arith.step_bytes(cfg, n, mid);
            let floor_ms = match (arith, card) {
                (DecodeArith::GpuInt8, Some(card)) => {
                    predicted_decode_us(&decode_costs(cfg, n, mid), &card) / 1e3
                }
                _ => 1e3 * bytes as f64 / copy_bandwidth,
            };
            out.push(DecodeBench {
                arith,
                streams: n,
                position,
                ms_per_step: median,
                ms_range: (times[0], times[times.len() - 1]),
                tokens_per_s: n as f64 / (median / 1e3),
                bytes_per_step: bytes,
                floor_ms,
            });
        }
    }
    Ok(out)
}

/// Sorted milliseconds of `steps` decode steps of `streams` streams filled to `position`.
fn time_steps<D: Decoder>(
    m: &D,
    streams: usize,
    position: usize,
    steps: usize,
) -> Result<Vec<f64>> {
    let vocab = m.config().vocab as u64;
    let mut rng = Rng::new(7);
    let mut token = move || (rng.next_u64() % vocab) as u32;
    let mut logits = vec![0f32; streams * vocab as usize];
    let mut states: Vec<D::State> = (0..streams)
        .map(|_| {
            let mut s = m.empty_state();
            let prompt: Vec<u32> = (0..position).map(|_| token()).collect();
            m.extend(&mut s, &prompt, &mut logits[..vocab as usize])?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let mut times: Vec<f64> = (0..steps + 2)
        .map(|_| {
            let tokens: Vec<u32> = (0..streams).map(|_| token()).collect();
            let mut refs: Vec<&mut D::State> = states.iter_mut().collect();
            let t = Instant::now();
            m.step(&mut refs, &tokens, &mut logits)?;
            Ok(1e3 * t.elapsed().as_secs_f64())
        })
        .skip(2)
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte model counts every matrix once per step and each stream's cache: for tiny at
    /// vocab 65,536, 1 stream at position 9, int8 reads 8,781,824 + 512 + 2*2*10*128 bytes.
    #[test]
    fn step_bytes_follow_the_model() {
        let cfg = ModelConfig::preset("tiny", Some(65536)).unwrap();
        let matrices = 2 * (4 * 128 * 128 + 2 * 128 * 512) + 65536 * 128;
        assert_eq!(
            DecodeArith::Int8.step_bytes(&cfg, 1, 9),
            matrices + 512 + 5120
        );
        assert_eq!(
            DecodeArith::Exact.step_bytes(&cfg, 3, 9),
            4 * matrices + 3 * (512 + 4 * 5120)
        );
        // 4-bit: 17/32 of a byte per weight, plus an f32 scale per output row.
        let outputs = 2 * (5 * 128 + 512) + 65536;
        assert_eq!(
            DecodeArith::Int4.step_bytes(&cfg, 1, 9),
            matrices * 17 / 32 + 4 * outputs + 512 + 5120
        );
    }

    #[test]
    fn refuses_a_position_past_the_context() {
        let mut cfg = ModelConfig::preset("tiny", Some(300)).unwrap();
        cfg.context = Some(16);
        let p = ParamArena::init(&cfg, 1);
        let e = bench_decode(&cfg, &p, &[1], 10, 8, 1e10, false).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let r = bench_decode(&cfg, &p, &[1, 2], 4, 3, 1e10, false).unwrap();
        assert_eq!(r.len(), 6);
        assert!(r.iter().all(|b| b.ms_per_step > 0.0 && b.floor_ms > 0.0));
    }
}
