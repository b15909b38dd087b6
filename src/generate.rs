//! Compressed generation: M2 samples tokens and the training data's method turns them back into
//! text, one unit at a time: an Equal-Info window (`b / token_bits` tokens, decoded through M1)
//! or a byte token. Each unit is handed to the caller as soon as it decodes.
//!
//! Guarantees: every token sequence M2 can emit decodes (every `b`-bit code is a valid window,
//! every byte token a byte), so generation never fails on M2's output. Refuses methods whose tokens
//! only decode as whole chunks (gzip, static-ac, plain AC): a sample of those is a stream prefix
//! that generally does not decode.
//!
//! M2 runs on [`ExactModel`] with a key/value cache. Its context holds the start token and at most
//! `context - 1` tokens (the length it trained on); when full, it restarts from the most recent
//! half, cut at a unit boundary.

use crate::m1::{ExactModel, Int8M1, WindowState};
use crate::rng::Rng;
use crate::tokenize::equal_info::EqualInfo;
use crate::tokenize::M2_START;
use crate::tokenize::{bytes, Codec, M1Spec, Method, TokenSource};
use anyhow::{bail, ensure, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// How tokens are drawn.
#[derive(Clone, Copy, Debug)]
pub struct SampleOptions {
    /// Stop once this many bytes have been generated (the output is cut to exactly this many).
    pub max_bytes: usize,
    /// Softmax temperature; 0 takes the most likely token, and so does a temperature small
    /// enough that every other token's weight `(p / p_max)^(1/t)` rounds to 0.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    pub seed: u64,
}

impl SampleOptions {
    /// Refuses settings sampling cannot use, naming the `terse generate` flag: a temperature
    /// that is negative, NaN or infinite, no bytes to generate, and (when the model's
    /// vocabulary is known) a top-k larger than the vocabulary.
    pub fn validate(&self, vocab: Option<usize>) -> Result<()> {
        ensure!(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "--temperature must be a finite number, 0 or more (0 takes the most likely token), not {}",
            self.temperature
        );
        ensure!(self.max_bytes > 0, "--max-bytes must be positive");
        if let Some(v) = vocab {
            ensure!(
                self.top_k <= v,
                "--top-k {} is larger than the model's vocabulary ({v}); 0 samples among all tokens",
                self.top_k
            );
        }
        Ok(())
    }
}

/// What a generation did.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationReport {
    pub method: String,
    /// Prompt bytes given to M2 (16-bit byte tokens drop an odd final byte).
    pub prompt_bytes: usize,
    pub prompt_tokens: usize,
    /// Tokens sampled (M2 decoding steps).
    pub steps: usize,
    /// Bytes generated (after the prompt).
    pub bytes: usize,
    pub bytes_per_step: f64,
    /// Seconds from the first sampled token to the last decoded unit (prompt prefill excluded).
    pub seconds: f64,
    pub ms_per_byte: f64,
    pub prefill_seconds: f64,
    pub context_restarts: usize,
}

/// Turns units of M2 tokens back into bytes.
enum UnitCodec {
    Bytes { token_bits: u32 },
    EqualInfo(M1Spec),
}

impl UnitCodec {
    fn new(src: &TokenSource, m1: Option<Arc<Int8M1>>) -> Result<Self> {
        match src.method.method() {
            Method::Bytes => Ok(UnitCodec::Bytes {
                token_bits: src.token_bits,
            }),
            Method::EqualInfo => match src.codec(m1)? {
                Codec::EqualInfo(spec) => Ok(UnitCodec::EqualInfo(spec)),
                _ => unreachable!("equal-info metadata gives an equal-info codec"),
            },
            other => bail!(
                "generation streams text for equal-info and bytes models; {other} tokens decode only as whole chunks"
            ),
        }
    }

    fn tokens_per_unit(&self, token_bits: u32) -> usize {
        match self {
            UnitCodec::Bytes { .. } => 1,
            UnitCodec::EqualInfo(e) => (e.window_bits / token_bits) as usize,
        }
    }

    /// The prompt's tokens and how many of its bytes they carry.
    fn encode_prompt(&self, prompt: &[u8], token_bits: u32) -> Result<(Vec<u16>, usize)> {
        match self {
            UnitCodec::Bytes { token_bits } => {
                let used = prompt.len() - prompt.len() % (*token_bits as usize / 8);
                Ok((bytes::encode(&prompt[..used], *token_bits)?, used))
            }
            UnitCodec::EqualInfo(e) => Ok((
                Codec::EqualInfo(e.clone()).encode(prompt, token_bits)?,
                prompt.len(),
            )),
        }
    }

    fn decode_unit(&self, tokens: &[u16], token_bits: u32) -> Result<Vec<u8>> {
        match self {
            UnitCodec::Bytes { token_bits } => bytes::decode(
                tokens,
                *token_bits,
                tokens.len() * (*token_bits as usize / 8),
            ),
            UnitCodec::EqualInfo(e) => {
                let codes = crate::coder::tokens_to_codes(tokens, e.window_bits, token_bits)?;
                EqualInfo::with_rule(&e.m1, e.window_bits, e.rule)?.decode_window(codes[0])
            }
        }
    }
}

/// The most likely token; ties go to the lowest id.
pub fn argmax(probs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > probs[best] {
            best = i;
        }
    }
    best
}

/// Draws one token from `probs` (modified in place).
fn sample(probs: &mut [f32], o: &SampleOptions, rng: &mut Rng) -> u32 {
    if o.temperature <= 0.0 {
        return argmax(probs) as u32;
    }
    if o.top_k > 0 && o.top_k < probs.len() {
        let mut sorted: Vec<f32> = probs.to_vec();
        let k = o.top_k;
        sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let cut = sorted[k - 1];
        let mut kept = 0;
        for p in probs.iter_mut() {
            // Keep exactly k entries when values tie at the cut.
            if *p > cut || (*p == cut && kept < k) {
                kept += 1;
            } else {
                *p = 0.0;
            }
        }
    }
    let inv_t = 1.0 / o.temperature as f64;
    let weights: Vec<f64> = if inv_t == 1.0 {
        probs.iter().map(|&p| p as f64).collect()
    } else {
        // Relative to the most likely token, which keeps weight exactly 1: `(p/max)^(1/t)` is in
        // [0, 1] for any temperature, so the total never underflows to 0 (as `p^(1/t)` did for
        // tiny ones, which then always drew token 0) and a tiny temperature is argmax (ties
        // shared).
        let max = probs.iter().fold(0f32, |m, &p| m.max(p)) as f64;
        probs
            .iter()
            .map(|&p| {
                if p > 0.0 {
                    (p as f64 / max).powf(inv_t)
                } else {
                    0.0
                }
            })
            .collect()
    };
    let total: f64 = weights.iter().sum();
    let mut u = rng.next_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
}

/// The text of a token sequence M2 emitted for `src`'s method: every whole unit decoded in order
/// (a trailing partial unit is left out). Fails only for a method generation refuses, a wrong M1
/// or a token outside the vocabulary: any in-range sequence decodes.
pub fn decode_tokens(
    src: &TokenSource,
    m1: Option<Arc<Int8M1>>,
    tokens: &[u16],
) -> Result<Vec<u8>> {
    if let Some(&t) = tokens.iter().find(|&&t| t as u32 >= src.vocab) {
        bail!("token {t} outside the vocabulary {}", src.vocab);
    }
    let codec = UnitCodec::new(src, m1)?;
    let unit = codec.tokens_per_unit(src.token_bits);
    let mut out = Vec::new();
    for u in tokens.chunks_exact(unit) {
        out.extend(codec.decode_unit(u, src.token_bits)?);
    }
    Ok(out)
}

/// Generates up to `o.max_bytes` bytes after `prompt` with M2 (`m2`, trained on `src`'s tokens
/// with rows of `context` tokens). `on_text` receives each decoded unit's bytes, in order.
pub fn generate(
    m2: &ExactModel,
    src: &TokenSource,
    m1: Option<Arc<Int8M1>>,
    context: usize,
    prompt: &[u8],
    o: &SampleOptions,
    mut on_text: impl FnMut(&[u8]) -> Result<()>,
) -> Result<GenerationReport> {
    ensure!(
        m2.config().vocab == src.vocab as usize,
        "M2 vocab {} does not match its data's vocab {}",
        m2.config().vocab,
        src.vocab
    );
    o.validate(Some(m2.config().vocab))?;
    let codec = UnitCodec::new(src, m1)?;
    let tb = src.token_bits;
    let unit = codec.tokens_per_unit(tb);
    ensure!(
        context > 2 * unit,
        "context {context} too short for {unit}-token units"
    );
    let prefill_start = Instant::now();
    let (prompt_tokens, prompt_bytes) = codec.encode_prompt(prompt, tb)?;
    let mut ctx: Vec<u16> = prompt_tokens.clone();
    // Longer prompts keep their most recent whole units.
    let max_tokens = (context - 1) / unit * unit;
    if ctx.len() > max_tokens {
        ctx.drain(..ctx.len() - max_tokens);
    }
    let mut probs = vec![0f32; m2.config().vocab];
    let mut state = WindowState::default();
    let restart = |state: &mut WindowState, ctx: &[u16], probs: &mut [f32]| {
        *state = m2.empty_state();
        let mut inputs = std::iter::once(M2_START).chain(ctx.iter().map(|&t| t as u32));
        let last = inputs.next_back().expect("the start token at least");
        for t in inputs {
            m2.feed_token(state, t);
        }
        m2.push_token(state, last, probs);
    };
    restart(&mut state, &ctx, &mut probs);
    let prefill_seconds = prefill_start.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut rng = Rng::derive(o.seed, 0x6E6E);
    let (mut steps, mut produced, mut restarts) = (0, 0, 0);
    let mut pending: Vec<u16> = Vec::with_capacity(unit);
    while produced < o.max_bytes {
        let token = sample(&mut probs, o, &mut rng);
        steps += 1;
        pending.push(token as u16);
        ctx.push(token as u16);
        if pending.len() == unit {
            let text = codec.decode_unit(&pending, tb)?;
            pending.clear();
            let take = text.len().min(o.max_bytes - produced);
            on_text(&text[..take])?;
            produced += take;
        }
        if produced >= o.max_bytes {
            break;
        }
        if state.len() >= context {
            let keep = (context / 2) / unit * unit + pending.len();
            ctx.drain(..ctx.len() - keep);
            restart(&mut state, &ctx, &mut probs);
            restarts += 1;
        } else {
            m2.push_token(&mut state, token, &mut probs);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(GenerationReport {
        method: src.method.to_string(),
        prompt_bytes,
        prompt_tokens: prompt_tokens.len(),
        steps,
        bytes: produced,
        bytes_per_step: produced as f64 / steps.max(1) as f64,
        seconds,
        ms_per_byte: 1e3 * seconds / produced.max(1) as f64,
        prefill_seconds,
        context_restarts: restarts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k() {
        let o = SampleOptions {
            max_bytes: 1,
            temperature: 0.0,
            top_k: 0,
            seed: 0,
        };
        let mut rng = Rng::new(1);
        assert_eq!(sample(&mut [0.1, 0.6, 0.3], &o, &mut rng), 1);
        let o1 = SampleOptions {
            temperature: 1.0,
            top_k: 1,
            ..o
        };
        for _ in 0..20 {
            assert_eq!(sample(&mut [0.3, 0.2, 0.5], &o1, &mut rng), 2);
        }
        let o2 = SampleOptions { top_k: 2, ..o1 };
        let mut seen = [0; 3];
        for _ in 0..400 {
            seen[sample(&mut [0.3, 0.2, 0.5], &o2, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 100 && seen[2] > 150, "{seen:?}");
    }

    /// Temperatures so small that `p^(1/t)` underflows to 0 for every probability below 1 used
    /// to leave all weights 0 and return token 0; they now take the most likely token.
    #[test]
    fn tiny_temperature_takes_the_most_likely_token_not_token_0() {
        let mut rng = Rng::new(3);
        for temperature in [1e-30, f32::MIN_POSITIVE, 1e-6, 1e-4] {
            for top_k in [0, 2] {
                let o = SampleOptions {
                    max_bytes: 1,
                    temperature,
                    top_k,
                    seed: 0,
                };
                for _ in 0..20 {
                    let got = sample(&mut [0.1, 0.6, 0.3], &o, &mut rng);
                    assert_eq!(got, 1, "temperature {temperature}, top-k {top_k}");
                }
            }
        }
    }
}
