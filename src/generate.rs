//! Compressed generation: M2 samples tokens and the training data's method turns them back into
//! text, one unit at a time: an Equal-Info window (`b / token_bits` tokens, decoded through M1)
//! or a byte token. Each unit is handed to the caller as soon as it decodes.
//!
//! Guarantees: every token sequence M2 can emit decodes (every `b`-bit code is a valid window,
//! every byte token a byte), so generation never fails on M2's output. Refuses methods whose tokens
//! only decode as whole chunks (gzip, static-ac, plain AC): a sample of those is a stream prefix
//! that generally does not decode.
//!
//! M2 runs on a [`Decoder`] with key/value caches: [`Int8Model`] for speed, [`GpuDecoder`] for
//! the same samples on a GPU (bit for bit), [`ExactModel`] for a sample that is the same on every
//! machine. Its context holds the start token and at most
//! `context - 1` tokens (the length it trained on); when full, it restarts from the most recent
//! half, cut at a unit boundary. [`Generation`] is one stream's state machine, apart from the model,
//! so a server can batch many streams per model step.

mod gpu;

pub use gpu::{decode_on_gpu, decode_weights, GpuContext, GpuDecoder, GPU_DECODE_VALIDATED};

use crate::m1::{ExactModel, Int8M1, Int8Model, Int8State, WindowState};
use crate::model::ModelConfig;
use crate::numerics::int8::I8Kernel;
use crate::numerics::{exp_contract, on_a_worker};
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

/// The highest-scoring token (logits or probabilities alike); ties go to the lowest id.
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &p) in scores.iter().enumerate() {
        if p > scores[best] {
            best = i;
        }
    }
    best
}

/// Draws one token from next-token `logits`: the distribution `softmax(logits / temperature)`
/// restricted to the `top_k` highest. `logits` is overwritten with the tokens' weights and
/// `scratch` holds top-k's working copy, so a draw allocates nothing once `scratch` has room
/// for the vocabulary.
fn sample(logits: &mut [f32], o: &SampleOptions, rng: &mut Rng, scratch: &mut Vec<f32>) -> u32 {
    if o.temperature <= 0.0 {
        return argmax(logits) as u32;
    }
    if o.top_k > 0 && o.top_k < logits.len() {
        scratch.clear();
        scratch.extend_from_slice(logits);
        let k = o.top_k;
        scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let cut = scratch[k - 1];
        let mut kept = 0;
        for l in logits.iter_mut() {
            // Keep exactly k entries when values tie at the cut.
            if *l > cut || (*l == cut && kept < k) {
                kept += 1;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    // Weights relative to the top token, which keeps weight exactly 1: `exp((l - max) / t)` is
    // in [0, 1] for any temperature, so the total never underflows to 0 and a tiny temperature
    // is argmax (ties shared). The exponential is the contract's, compiled for AVX2 and FMA
    // where the CPU has them: over 65,536 tokens it is a noticeable part of a decode step.
    let inv_t = 1.0 / o.temperature;
    I8Kernel::best().vectorised(
        #[inline(always)]
        || {
            let max = lane_max(logits);
            for l in logits.iter_mut() {
                *l = exp_contract((*l - max) * inv_t);
            }
            draw(logits, rng.next_f64())
        },
    )
}

/// Tokens per block of a draw, and the interleaved running sums a block's total is added in:
/// independent lanes instead of one chain of 65,536 dependent adds (which took as long as a
/// small M2's whole step). The order is fixed, so a seed draws the same token everywhere.
const DRAW_BLOCK: usize = 1024;
const LANES: usize = 8;

/// The largest of `x` (the order of a max does not change it).
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter();
    for c in chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    m.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// The sum of `w` in f64: [`LANES`] running sums, then the lanes and the tail in order.
#[inline(always)]
fn block_total(w: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = w.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64;
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| v as f64).sum::<f64>()
}

/// The token at fraction `r` (in `[0, 1)`) of the cumulative `weights`: the block whose total
/// takes the running remainder below zero, then the token inside it that does.
#[inline(always)]
fn draw(weights: &[f32], r: f64) -> u32 {
    let total: f64 = weights.chunks(DRAW_BLOCK).map(block_total).sum();
    let mut u = r * total;
    for (b, block) in weights.chunks(DRAW_BLOCK).enumerate() {
        let t = block_total(block);
        if u < t {
            let inside = block.iter().position(|&w| {
                let hit = u < w as f64;
                u -= w as f64;
                hit
            });
            // Rounding may carry the remainder past the block's last weight: take that token.
            let i = inside.or_else(|| block.iter().rposition(|&w| w > 0.0));
            return (b * DRAW_BLOCK + i.unwrap_or(0)) as u32;
        }
        u -= t;
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

/// A model M2 generation runs on: contexts extended a token at a time, many streams per step.
/// [`ExactModel`] (contract 2's f32 chains, the same sample on every machine) and
/// [`Int8Model`] (int8 weights and activations: a quarter of the bytes per step, for speed)
/// both are.
pub trait Decoder: Sync {
    /// One stream's context (its key/value caches).
    type State: Send;
    fn config(&self) -> &ModelConfig;
    fn empty_state(&self) -> Self::State;
    /// Feeds `tokens` to `state` in order and writes the next token's logits (scores whose
    /// softmax is the distribution) into `logits` (`vocab` entries). Fails only where a device
    /// does (the CPU models never fail).
    fn extend(&self, state: &mut Self::State, tokens: &[u32], logits: &mut [f32]) -> Result<()>;
    /// Feeds `tokens[r]` to `states[r]` (independent streams, one position each; the weights
    /// are read once for all of them) and writes row `r`'s next-token logits into
    /// `logits[r * vocab..]`. Fails only where a device does.
    fn step(
        &self,
        states: &mut [&mut Self::State],
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()>;
}

impl Decoder for ExactModel {
    type State = WindowState;
    fn config(&self) -> &ModelConfig {
        ExactModel::config(self)
    }
    fn empty_state(&self) -> WindowState {
        ExactModel::empty_state(self)
    }
    fn extend(&self, state: &mut WindowState, tokens: &[u32], logits: &mut [f32]) -> Result<()> {
        let (last, head) = tokens.split_last().expect("at least one token to feed");
        for &t in head {
            self.feed_token(state, t);
        }
        self.push_rows_logits(&mut [state], &[*last], logits);
        Ok(())
    }
    fn step(
        &self,
        states: &mut [&mut WindowState],
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()> {
        self.push_rows_logits(states, tokens, logits);
        Ok(())
    }
}

impl Decoder for Int8Model {
    type State = Int8State;
    fn config(&self) -> &ModelConfig {
        Int8Model::config(self)
    }
    fn empty_state(&self) -> Int8State {
        Int8State::default()
    }
    fn extend(&self, state: &mut Int8State, tokens: &[u32], logits: &mut [f32]) -> Result<()> {
        on_a_worker(|| {
            let x = self.extend(state, tokens);
            let d = self.config().d_model;
            self.next_token_logits(&x[x.len() - d..], logits);
        });
        Ok(())
    }
    fn step(
        &self,
        states: &mut [&mut Int8State],
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()> {
        on_a_worker(|| {
            let x = self.advance_rows(states, tokens);
            self.next_token_logits(&x, logits);
        });
        Ok(())
    }
}

/// What a stream's model must be fed before its next token is drawn.
#[derive(Debug, PartialEq)]
pub enum Feed {
    /// A fresh context: the start token and the kept tokens (the prompt at first; after the
    /// context fills, its most recent half cut at a unit boundary).
    Restart(Vec<u32>),
    /// The token just drawn.
    Next(u32),
}

/// One stream of generation as a state machine, apart from the model it runs on, so one
/// caller ([`generate`]) or a server batching many streams per model step drives it the same
/// way: feed the model what [`feed`](Self::feed) says, hand the resulting distribution to
/// [`accept`](Self::accept), which draws a token and returns the text of any unit it completes,
/// until [`is_done`](Self::is_done).
pub struct Generation {
    codec: UnitCodec,
    token_bits: u32,
    unit: usize,
    context: usize,
    options: SampleOptions,
    rng: Rng,
    /// Top-k's working copy of the logits, kept so that drawing a token allocates nothing.
    scratch: Vec<f32>,
    ctx: Vec<u16>,
    pending: Vec<u16>,
    /// Positions in the model's context after the next feed.
    positions: usize,
    next: Option<u32>,
    prompt_bytes: usize,
    prompt_tokens: usize,
    steps: usize,
    produced: usize,
    restarts: usize,
}

impl Generation {
    /// A stream continuing `prompt` under `o`, for an M2 of vocabulary `vocab` trained on `src`'s
    /// tokens in rows of `context` tokens. Refuses what [`SampleOptions::validate`] refuses, a
    /// vocabulary other than the data's, a method that does not stream, an equal-info source
    /// without its M1, and a context too short for two units.
    pub fn new(
        src: &TokenSource,
        m1: Option<Arc<Int8M1>>,
        vocab: usize,
        context: usize,
        prompt: &[u8],
        o: &SampleOptions,
    ) -> Result<Self> {
        ensure!(
            vocab == src.vocab as usize,
            "M2 vocab {vocab} does not match its data's vocab {}",
            src.vocab
        );
        o.validate(Some(vocab))?;
        let codec = UnitCodec::new(src, m1)?;
        let tb = src.token_bits;
        let unit = codec.tokens_per_unit(tb);
        ensure!(
            context > 2 * unit,
            "context {context} too short for {unit}-token units"
        );
        let (prompt_tokens, prompt_bytes) = codec.encode_prompt(prompt, tb)?;
        let mut ctx = prompt_tokens.clone();
        // Longer prompts keep their most recent whole units.
        let max_tokens = (context - 1) / unit * unit;
        if ctx.len() > max_tokens {
            ctx.drain(..ctx.len() - max_tokens);
        }
        Ok(Generation {
            codec,
            token_bits: tb,
            unit,
            context,
            options: *o,
            rng: Rng::derive(o.seed, 0x6E6E),
            scratch: Vec::with_capacity(if o.top_k > 0 { vocab } else { 0 }),
            positions: ctx.len() + 1,
            ctx,
            pending: Vec::with_capacity(unit),
            next: None,
            prompt_bytes,
            prompt_tokens: prompt_tokens.len(),
            steps: 0,
            produced: 0,
            restarts: 0,
        })
    }

    /// What to feed the model now (the whole context at the start and after it fills).
    pub fn feed(&self) -> Feed {
        match self.next {
            Some(t) => Feed::Next(t),
            None => Feed::Restart(
                std::iter::once(M2_START)
                    .chain(self.ctx.iter().map(|&t| t as u32))
                    .collect(),
            ),
        }
    }

    /// Draws the next token from `logits` (the model's scores after [`feed`](Self::feed);
    /// overwritten) and returns the text it completes: a whole unit's bytes (cut at the
    /// byte limit), or nothing mid-unit.
    pub fn accept(&mut self, logits: &mut [f32]) -> Result<Vec<u8>> {
        ensure!(!self.is_done(), "this generation is already complete");
        let token = sample(logits, &self.options, &mut self.rng, &mut self.scratch);
        self.steps += 1;
        self.pending.push(token as u16);
        self.ctx.push(token as u16);
        let mut text = Vec::new();
        if self.pending.len() == self.unit {
            text = self.codec.decode_unit(&self.pending, self.token_bits)?;
            self.pending.clear();
            text.truncate(self.options.max_bytes - self.produced);
            self.produced += text.len();
        }
        if self.positions >= self.context {
            let keep = (self.context / 2) / self.unit * self.unit + self.pending.len();
            self.ctx.drain(..self.ctx.len() - keep);
            self.positions = self.ctx.len() + 1;
            self.next = None;
            self.restarts += 1;
        } else {
            self.positions += 1;
            self.next = Some(token);
        }
        Ok(text)
    }

    /// Whether `max_bytes` bytes have been produced.
    pub fn is_done(&self) -> bool {
        self.produced >= self.options.max_bytes
    }

    /// Bytes produced so far.
    pub fn produced(&self) -> usize {
        self.produced
    }

    /// Tokens drawn so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Prompt bytes carried by the prompt's tokens, and the token count.
    pub fn prompt(&self) -> (usize, usize) {
        (self.prompt_bytes, self.prompt_tokens)
    }

    /// Times the context filled and was restarted from its recent half.
    pub fn restarts(&self) -> usize {
        self.restarts
    }
}

/// Replaces `state` with a fresh context holding `tokens` (a [`Feed::Restart`]'s), leaving the
/// next token's logits in `logits`. Fails only where the decoder does.
pub fn restart<D: Decoder>(
    decoder: &D,
    state: &mut D::State,
    tokens: &[u32],
    logits: &mut [f32],
) -> Result<()> {
    *state = decoder.empty_state();
    decoder.extend(state, tokens, logits)
}

/// Feeds one stream what `g` asks for, on `decoder`, leaving the next token's logits in
/// `logits`.
pub fn advance<D: Decoder>(
    decoder: &D,
    g: &Generation,
    state: &mut D::State,
    logits: &mut [f32],
) -> Result<()> {
    match g.feed() {
        Feed::Restart(tokens) => restart(decoder, state, &tokens, logits),
        Feed::Next(t) => decoder.step(&mut [state], &[t], logits),
    }
}

/// Generates up to `o.max_bytes` bytes after `prompt` with M2 (`m2`, trained on `src`'s tokens
/// with rows of `context` tokens). `on_text` receives each decoded unit's bytes, in order.
pub fn generate<D: Decoder>(
    m2: &D,
    src: &TokenSource,
    m1: Option<Arc<Int8M1>>,
    context: usize,
    prompt: &[u8],
    o: &SampleOptions,
    mut on_text: impl FnMut(&[u8]) -> Result<()>,
) -> Result<GenerationReport> {
    let vocab = m2.config().vocab;
    let prefill_start = Instant::now();
    let mut g = Generation::new(src, m1, vocab, context, prompt, o)?;
    let mut logits = vec![0f32; vocab];
    let mut state = m2.empty_state();
    advance(m2, &g, &mut state, &mut logits)?;
    let prefill_seconds = prefill_start.elapsed().as_secs_f64();
    let started = Instant::now();
    loop {
        // Drawing runs M1's window decoding: on a worker too (see `on_a_worker`).
        let text = on_a_worker(|| g.accept(&mut logits))?;
        if !text.is_empty() {
            on_text(&text)?;
        }
        if g.is_done() {
            break;
        }
        advance(m2, &g, &mut state, &mut logits)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (prompt_bytes, prompt_tokens) = g.prompt();
    let (steps, produced) = (g.steps(), g.produced());
    Ok(GenerationReport {
        method: src.method.to_string(),
        prompt_bytes,
        prompt_tokens,
        steps,
        bytes: produced,
        bytes_per_step: produced as f64 / steps.max(1) as f64,
        seconds,
        ms_per_byte: 1e3 * seconds / produced.max(1) as f64,
        prefill_seconds,
        context_restarts: g.restarts(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits whose softmax is `p`.
    fn logits<const N: usize>(p: [f32; N]) -> [f32; N] {
        p.map(f32::ln)
    }

    #[test]
    fn greedy_and_top_k() {
        let o = SampleOptions {
            max_bytes: 1,
            temperature: 0.0,
            top_k: 0,
            seed: 0,
        };
        let mut rng = Rng::new(1);
        let mut scratch = Vec::new();
        assert_eq!(
            sample(&mut logits([0.1, 0.6, 0.3]), &o, &mut rng, &mut scratch),
            1
        );
        let o1 = SampleOptions {
            temperature: 1.0,
            top_k: 1,
            ..o
        };
        for _ in 0..20 {
            assert_eq!(
                sample(&mut logits([0.3, 0.2, 0.5]), &o1, &mut rng, &mut scratch),
                2
            );
        }
        let o2 = SampleOptions { top_k: 2, ..o1 };
        let mut seen = [0; 3];
        for _ in 0..400 {
            seen[sample(&mut logits([0.3, 0.2, 0.5]), &o2, &mut rng, &mut scratch) as usize] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 100 && seen[2] > 150, "{seen:?}");
    }

    /// Draws follow `softmax(logits / t)`: probabilities 0.2 and 0.8 at t = 1, and at t = 0.5
    /// their squares renormalised (0.059 and 0.941); 4,000 draws put each share within 0.03.
    #[test]
    fn draws_follow_the_tempered_softmax() {
        let mut rng = Rng::new(5);
        let mut scratch = Vec::new();
        for (t, want) in [(1.0, 0.2), (0.5, 0.04 / 0.68)] {
            let o = SampleOptions {
                max_bytes: 1,
                temperature: t,
                top_k: 0,
                seed: 0,
            };
            let n = 4000;
            let zeros = (0..n)
                .filter(|_| {
                    sample(
                        &mut [3.0 + 0.2f32.ln(), 3.0 + 0.8f32.ln()],
                        &o,
                        &mut rng,
                        &mut scratch,
                    ) == 0
                })
                .count();
            let share = zeros as f64 / n as f64;
            assert!((share - want).abs() < 0.03, "t {t}: {share} against {want}");
        }
    }

    /// A vocabulary of several draw blocks, the last one partial: a lone finite logit in the
    /// last block is always drawn; two tokens in different blocks (every other token at weight
    /// 0) come up 0.3 : 0.7; and a draw over many equal weights reaches every block.
    #[test]
    fn draws_find_their_block() {
        let (n, mut rng, mut scratch) = (3 * DRAW_BLOCK + 100, Rng::new(9), Vec::new());
        let o = SampleOptions {
            max_bytes: 1,
            temperature: 1.0,
            top_k: 0,
            seed: 0,
        };
        let mut lone = vec![f32::NEG_INFINITY; n];
        lone[n - 7] = 0.5;
        for _ in 0..20 {
            assert_eq!(
                sample(&mut lone.clone(), &o, &mut rng, &mut scratch),
                (n - 7) as u32
            );
        }
        let mut pair = vec![f32::NEG_INFINITY; n];
        (pair[5], pair[2 * DRAW_BLOCK + 3]) = (0.3f32.ln(), 0.7f32.ln());
        let draws = 4000;
        let firsts = (0..draws)
            .map(|_| sample(&mut pair.clone(), &o, &mut rng, &mut scratch))
            .inspect(|&t| assert!(t == 5 || t == (2 * DRAW_BLOCK + 3) as u32, "{t}"))
            .filter(|&t| t == 5)
            .count();
        let share = firsts as f64 / draws as f64;
        assert!((share - 0.3).abs() < 0.03, "{share}");
        let mut blocks = [0; 4];
        for _ in 0..400 {
            blocks[sample(&mut vec![1.0; n], &o, &mut rng, &mut scratch) as usize / DRAW_BLOCK] +=
                1;
        }
        assert!(blocks.iter().all(|&b| b > 0), "{blocks:?}");
    }

    /// Temperatures so small that `(l - max) / t` overflows to minus infinity for every token
    /// but the top take the top token, never token 0 by default.
    #[test]
    fn tiny_temperature_takes_the_most_likely_token_not_token_0() {
        let mut rng = Rng::new(3);
        let mut scratch = Vec::new();
        for temperature in [1e-30, f32::MIN_POSITIVE, 1e-6, 1e-4] {
            for top_k in [0, 2] {
                let o = SampleOptions {
                    max_bytes: 1,
                    temperature,
                    top_k,
                    seed: 0,
                };
                for _ in 0..20 {
                    let got = sample(&mut logits([0.1, 0.6, 0.3]), &o, &mut rng, &mut scratch);
                    assert_eq!(got, 1, "temperature {temperature}, top-k {top_k}");
                }
            }
        }
    }
}
