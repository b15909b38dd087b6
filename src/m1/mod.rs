//! M1 inference for coding. Coding runs under numeric contract 3 ([`Int8M1`], module [`int8`];
//! version [`CONTRACT_VERSION`]): int8 products summed in i32 around a fixed sequence of f32
//! operations, so an encoder and a decoder on any machine see exactly the same bits.
//!
//! Contract 2 ([`FLOAT_CONTRACT_VERSION`], docs/numeric-contract.md), the float path defined
//! here ([`ExactModel`], [`ExactM1`]), no longer codes: it is the float model that contract 3
//! quantises and is measured against, the GPU's `GpuExactM1` twin, and M2 generation's arithmetic
//! (a seeded sample is the same on every machine). Its probabilities are a pure function of
//! (weights, window bytes), defined by a fixed sequence of IEEE-754 f32 operations:
//! - every window starts from an empty context: position 0 is the input byte [`WINDOW_START`],
//!   position `k + 1` is the window's byte `k`; rotary angles come from [`RopeTables`] (f64 on the
//!   host, rounded to f32);
//! - a dot product is one chain `acc = fma(x[k], w[k], acc)` over ascending `k` from `acc = 0`;
//! - RMSNorm: `ss` is an fma chain of `x[k]^2`, then `r = 1 / sqrt(ss / d + eps)`, `y = (x r) g`;
//! - rotary: `y1 = fma(x1, c, -(x2 s))`, `y2 = fma(x1, s, x2 c)`;
//! - attention: position `t` attends to `j` in `lo..=t`, `lo = max(0, t + 1 - context)` (the
//!   model's [`ModelConfig::context`], its training length: a sliding window, so M1 is never asked
//!   for relative distances it was not trained on); scores `dot(q, k_j) * 0.125`, the max over `j`
//!   ascending, `p_j = exp(s_j - max)` with [`exp_contract`], the sum over ascending `j`,
//!   `o = fma` chain of `p_j v_j` over ascending `j`, then `o / sum`;
//! - softmax over the logits (256 for M1) the same way; residual adds and ReLU are single operations.
//!
//! Computing a window position by position (with a key/value cache) or all positions at once
//! gives identical bits, and so does any batching of windows: each output is the same chain.

mod batch;
mod builtin;
pub mod int8;
mod load;
mod lockstep;
mod matmul;

pub use batch::{CpuM1Batch, M1Batch, M1BatchPair, PendingStep};
pub use builtin::{builtin_m1, BUILTIN_M1_FINGERPRINT};
pub use int8::{Int8M1, Int8Model, Int8State};
pub use lockstep::{run_tasks, Feed, StreamTask};

use crate::model::{ModelConfig, ParamArena};
use crate::numerics::{exp_contract, RopeTables, HEAD_DIM};
use anyhow::{bail, ensure, Result};
use matmul::{matmul, Panels};
use rayon::prelude::*;
use std::ops::Range;

/// The contract M1 codes under (3: [`Int8M1`]); compressed files and token datasets record it,
/// and a build refuses data coded under another.
pub const CONTRACT_VERSION: u32 = 3;

/// The version of the float arithmetic above ([`ExactM1`]; version 2: attention over the sliding
/// window of [`ModelConfig::context`] positions). Nothing codes under it any more.
pub const FLOAT_CONTRACT_VERSION: u32 = 2;

/// The input byte at position 0 of every window (the window's empty context).
pub const WINDOW_START: u8 = 0;

/// Next-byte probabilities (they sum to 1 up to rounding).
pub type Probs = [f32; 256];

/// One layer's weights, matrices packed in [`Panels`] for the CPU's products (the GPU twin,
/// `backend::cuda::exact_m1`, unpacks them to `[in, out]`).
pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>,
    pub(crate) qkv: Panels,
    pub(crate) out: Panels,
    pub(crate) mlp_norm: Vec<f32>,
    pub(crate) up: Panels,
    pub(crate) down: Panels,
}

/// A model of any vocabulary prepared for inference under the contract, one position at a time
/// with a key/value cache. M1 is the byte-level case ([`ExactM1`]); M2 generation runs on this
/// too (its sampling needs no exactness, but a fixed operation order costs nothing and makes a
/// seeded sample the same on every machine).
pub struct ExactModel {
    cfg: ModelConfig,
    tok_emb: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    head: Panels,
}

/// M1 prepared for exact inference: fp32 weights of a byte-level model (vocab 256).
pub struct ExactM1 {
    lm: ExactModel,
    fingerprint: u64,
}

/// The context of one window: key and value caches of every layer.
#[derive(Clone, Default)]
pub struct WindowState {
    pos: usize,
    caches: Vec<KvCache>,
    rope: Option<RopeTables>,
}

impl WindowState {
    /// Positions fed so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
}

/// FNV-1a over bytes (64-bit): the fingerprint hash.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// An M1's identity under contract `version`: the hash of the version, the configuration (as
/// JSON) and every bit of the float weights it was prepared from.
fn fingerprint(version: u32, cfg: &ModelConfig, params: &ParamArena) -> Result<u64> {
    let mut fp = fnv1a(0xCBF2_9CE4_8422_2325, &version.to_le_bytes());
    fp = fnv1a(fp, serde_json::to_string(cfg)?.as_bytes());
    Ok(fnv1a(fp, bytemuck::cast_slice(&params.data)))
}

/// Refuses weights of another size than `cfg`'s, or holding NaN or infinities (naming the tensor).
fn check_weights(cfg: &ModelConfig, params: &ParamArena) -> Result<()> {
    ensure!(
        params.len() == cfg.total_params(),
        "weights do not match the configuration"
    );
    if let Some(i) = params.data.iter().position(|x| !x.is_finite()) {
        let tensor = params
            .specs
            .iter()
            .find(|s| s.range().contains(&i))
            .map_or("?", |s| s.name.as_str());
        bail!(
            "the model's weights hold a non-finite value ({}) in tensor {tensor} (vocab {})",
            params.data[i],
            cfg.vocab
        );
    }
    Ok(())
}

/// Refuses a model that is not byte-level: M1 predicts bytes.
fn check_byte_level(cfg: &ModelConfig) -> Result<()> {
    ensure!(
        cfg.vocab == 256,
        "M1 must be a byte-level model (vocab 256), this one has vocab {}",
        cfg.vocab
    );
    Ok(())
}

impl ExactModel {
    /// Prepares `params` (transposing the matrices). Refuses non-finite weights.
    pub fn new(cfg: &ModelConfig, params: &ParamArena) -> Result<Self> {
        check_weights(cfg, params)?;
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let t = |name: &str| params.tensor(name).to_vec();
        let layers = (0..cfg.n_layers)
            .map(|l| Layer {
                attn_norm: t(&format!("layers.{l}.attn_norm.weight")),
                qkv: Panels::from_rows(
                    params.tensor(&format!("layers.{l}.attn.qkv.weight")),
                    3 * d,
                    d,
                ),
                out: Panels::from_rows(params.tensor(&format!("layers.{l}.attn.out.weight")), d, d),
                mlp_norm: t(&format!("layers.{l}.mlp_norm.weight")),
                up: Panels::from_rows(params.tensor(&format!("layers.{l}.mlp.up.weight")), ff, d),
                down: Panels::from_rows(
                    params.tensor(&format!("layers.{l}.mlp.down.weight")),
                    d,
                    ff,
                ),
            })
            .collect();
        Ok(ExactModel {
            cfg: cfg.clone(),
            tok_emb: t("tok_emb.weight"),
            layers,
            final_norm: t("final_norm.weight"),
            head: Panels::from_rows(params.tensor("lm_head.weight"), cfg.vocab, d),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The first position a query at position `t` attends to ([`ModelConfig::context`] back;
    /// all of them when it is not recorded).
    pub(crate) fn window_start(&self, t: usize) -> usize {
        (t + 1).saturating_sub(self.cfg.context.unwrap_or(usize::MAX))
    }

    /// The prepared weights: token embedding `[vocab, d]`, layers, final norm, head.
    pub(crate) fn weights(&self) -> (&[f32], &[Layer], &[f32], &Panels) {
        (&self.tok_emb, &self.layers, &self.final_norm, &self.head)
    }

    /// An empty context (no position fed yet).
    pub fn empty_state(&self) -> WindowState {
        WindowState {
            pos: 0,
            caches: vec![KvCache::new(self.cfg.d_model); self.cfg.n_layers],
            rope: None,
        }
    }

    /// Appends `token` to the context and writes the distribution of the next token into
    /// `probs` (`vocab` entries). Panics if `token` is not below the vocabulary.
    pub fn push_token(&self, state: &mut WindowState, token: u32, probs: &mut [f32]) {
        let x = self.advance_rows(&mut [state], &[token]);
        self.next_token_probs(&x, probs);
    }

    /// Appends `tokens[r]` to `states[r]` for independent contexts, the weights read once for
    /// all of them, and writes row `r`'s next-token logits (the scores the distribution is the
    /// softmax of) into `logits[r * vocab..]`. Each row's bits are those of one row alone.
    pub fn push_rows_logits(
        &self,
        states: &mut [&mut WindowState],
        tokens: &[u32],
        logits: &mut [f32],
    ) {
        let x = self.advance_rows(states, tokens);
        self.next_token_logits(&x, logits);
    }

    /// Appends `token` to the context without computing the next distribution (prompt prefill).
    pub fn feed_token(&self, state: &mut WindowState, token: u32) {
        self.advance_rows(&mut [state], &[token]);
    }

    /// Feeds `tokens[r]` to `states[r]` (independent contexts, one position each) and returns the
    /// last layer's outputs `[rows][d]`. Matrix products run over all rows at once (each output
    /// still its own chain), the rest row by row. Panics on a token outside the vocabulary.
    pub(crate) fn advance_rows(&self, states: &mut [&mut WindowState], tokens: &[u32]) -> Vec<f32> {
        let (d, rows) = (self.cfg.d_model, tokens.len());
        let mut x = Vec::with_capacity(rows * d);
        for &token in tokens {
            let token = token as usize;
            assert!(
                token < self.cfg.vocab,
                "token {token} outside the vocabulary"
            );
            x.extend_from_slice(&self.tok_emb[token * d..(token + 1) * d]);
        }
        for state in states.iter_mut() {
            if state.caches.is_empty() {
                **state = self.empty_state();
            }
            cover_position(&mut state.rope, state.pos, self.cfg.rope_theta);
        }
        let mut qkv = vec![0f32; rows * 3 * d];
        let mut att = vec![0f32; rows * d];
        for (l, w) in self.layers.iter().enumerate() {
            self.project_qkv(w, &x, &mut qkv);
            let one = |(state, (row, out)): (&mut &mut WindowState, (&mut [f32], &mut [f32]))| {
                let t = state.pos;
                rotate(
                    &mut row[..2 * d],
                    state.rope.as_ref().expect("set above"),
                    t,
                );
                let cache = &mut state.caches[l];
                cache.push(&row[d..2 * d], &row[2 * d..]);
                let lo = self.window_start(t);
                cache.forget_before(lo);
                attend(out, &row[..d], cache, lo..t + 1);
            };
            let jobs = states
                .iter_mut()
                .zip(qkv.chunks_exact_mut(3 * d).zip(att.chunks_exact_mut(d)));
            if rows > 1 {
                jobs.collect::<Vec<_>>().into_par_iter().for_each(one);
            } else {
                jobs.for_each(one);
            }
            self.finish_layer(w, &mut x, &att);
        }
        states.iter_mut().for_each(|s| s.pos += 1);
        x
    }

    /// `qkv = rmsnorm(x) Wqkv^T` for every row (rotary comes after, per row).
    fn project_qkv(&self, w: &Layer, x: &[f32], qkv: &mut [f32]) {
        let h = rmsnorm_rows(x, &w.attn_norm, self.cfg.d_model, self.cfg.norm_eps);
        matmul(qkv, &h, &w.qkv);
    }

    /// The rest of a layer once `att` holds every row's attention output: projection, residual,
    /// MLP, residual.
    fn finish_layer(&self, w: &Layer, x: &mut [f32], att: &[f32]) {
        let (d, ff) = (self.cfg.d_model, self.cfg.d_ff);
        let rows = x.len() / d;
        let mut proj = vec![0f32; rows * d];
        matmul(&mut proj, att, &w.out);
        add_into(x, &proj);
        let h = rmsnorm_rows(x, &w.mlp_norm, d, self.cfg.norm_eps);
        let mut up = vec![0f32; rows * ff];
        matmul(&mut up, &h, &w.up);
        up.iter_mut().for_each(|u| *u = u.max(0.0));
        matmul(&mut proj, &up, &w.down);
        add_into(x, &proj);
    }

    /// The next-token distribution of every row of last-layer outputs `x` (`[rows][d]`) into
    /// `probs` (`[rows][vocab]`).
    fn next_token_probs(&self, x: &[f32], probs: &mut [f32]) {
        self.next_token_logits(x, probs);
        probs
            .chunks_exact_mut(self.cfg.vocab)
            .for_each(softmax_in_place);
    }

    /// The next-token logits of every row of last-layer outputs `x` into `logits`.
    fn next_token_logits(&self, x: &[f32], logits: &mut [f32]) {
        let h = rmsnorm_rows(x, &self.final_norm, self.cfg.d_model, self.cfg.norm_eps);
        matmul(logits, &h, &self.head);
    }
}

impl ExactM1 {
    /// Prepares `params` of a byte-level model. Refuses other vocabularies and non-finite weights.
    pub fn new(cfg: &ModelConfig, params: &ParamArena) -> Result<Self> {
        check_byte_level(cfg)?;
        let lm = ExactModel::new(cfg, params)?;
        Ok(ExactM1 {
            lm,
            fingerprint: fingerprint(FLOAT_CONTRACT_VERSION, cfg, params)?,
        })
    }

    /// Hash of [`FLOAT_CONTRACT_VERSION`], the configuration and every weight bit.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn config(&self) -> &ModelConfig {
        &self.lm.cfg
    }

    pub(crate) fn lm(&self) -> &ExactModel {
        &self.lm
    }

    /// A fresh window: feeds [`WINDOW_START`] and returns the distribution of the window's first byte.
    pub fn start(&self, state: &mut WindowState) -> Probs {
        *state = self.lm.empty_state();
        self.push(state, WINDOW_START)
    }

    /// Appends `byte` to the window and returns the distribution of the byte after it.
    pub fn push(&self, state: &mut WindowState, byte: u8) -> Probs {
        let mut p = [0f32; 256];
        self.lm.push_token(state, byte as u32, &mut p);
        p
    }

    /// [`push`](Self::push) of `bytes[r]` to `states[r]` for many independent windows at once
    /// (an empty state starts a window), with each window's bits: the matrix products run over
    /// all of them, reusing each weight across windows.
    pub fn push_rows(&self, states: &mut [&mut WindowState], bytes: &[u8]) -> Vec<Probs> {
        let tokens: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
        let x = self.lm.advance_rows(states, &tokens);
        let mut probs = vec![[0f32; 256]; bytes.len()];
        self.lm.next_token_probs(&x, probs.as_flattened_mut());
        probs
    }

    /// The distributions a coder needs for `window`: entry `k` is the distribution of byte `k`
    /// (given bytes `0..k`), for `k` in `0..=window.len()`. All positions of a layer are computed
    /// before the next layer; the bits equal those of [`start`](Self::start) and
    /// [`push`](Self::push) one byte at a time.
    pub fn window_probs(&self, window: &[u8]) -> Vec<Probs> {
        let lm = &self.lm;
        let (d, n) = (lm.cfg.d_model, window.len() + 1);
        let rope = RopeTables::new(n, lm.cfg.rope_theta);
        let inputs: Vec<u8> = std::iter::once(WINDOW_START)
            .chain(window.iter().copied())
            .collect();
        let mut xs: Vec<f32> = inputs
            .iter()
            .flat_map(|&b| lm.tok_emb[b as usize * d..(b as usize + 1) * d].to_vec())
            .collect();
        let mut qkv = vec![0f32; n * 3 * d];
        let mut att = vec![0f32; n * d];
        for w in &lm.layers {
            lm.project_qkv(w, &xs, &mut qkv);
            let mut cache = KvCache::new(d);
            for (t, row) in qkv.chunks_exact_mut(3 * d).enumerate() {
                rotate(&mut row[..2 * d], &rope, t);
                cache.push(&row[d..2 * d], &row[2 * d..]);
            }
            for (t, out) in att.chunks_exact_mut(d).enumerate() {
                let q = &qkv[t * 3 * d..t * 3 * d + d];
                attend(out, q, &cache, lm.window_start(t)..t + 1);
            }
            lm.finish_layer(w, &mut xs, &att);
        }
        let mut probs = vec![[0f32; 256]; n];
        lm.next_token_probs(&xs, probs.as_flattened_mut());
        probs
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += *b;
    }
}

/// RMSNorm's factor `r = 1 / sqrt(ss / d + eps)`, `ss` the fma chain of `x_k^2` over ascending k.
fn rms_factor(x: &[f32], eps: f32) -> f32 {
    let mut ss = 0f32;
    for &v in x {
        ss = v.mul_add(v, ss);
    }
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

fn rmsnorm(out: &mut [f32], x: &[f32], g: &[f32], eps: f32) {
    let r = rms_factor(x, eps);
    for ((o, &v), &gi) in out.iter_mut().zip(x).zip(g) {
        *o = (v * r) * gi;
    }
}

/// [`rmsnorm`] of each `d`-wide row of `x`.
fn rmsnorm_rows(x: &[f32], g: &[f32], d: usize, eps: f32) -> Vec<f32> {
    let mut h = vec![0f32; x.len()];
    for (o, row) in h.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        rmsnorm(o, row, g, eps);
    }
    h
}

/// Makes `rope` (a window's tables, built on demand) reach position `t`, growing it in powers of
/// two so a window rebuilds it only a few times.
fn cover_position(rope: &mut Option<RopeTables>, t: usize, theta: f32) {
    if rope.as_ref().is_none_or(|r| r.seq <= t) {
        let seq = (t + 1).next_power_of_two().max(64);
        *rope = Some(RopeTables::new(seq, theta));
    }
}

/// Rotary embedding of the q and k parts (`[2d]`) at position `t`.
#[inline(always)]
fn rotate(qk: &mut [f32], rope: &RopeTables, t: usize) {
    let half = HEAD_DIM / 2;
    let (c, s) = (
        &rope.cos[t * half..(t + 1) * half],
        &rope.sin[t * half..(t + 1) * half],
    );
    for head in qk.chunks_mut(HEAD_DIM) {
        for i in 0..half {
            let (x1, x2) = (head[i], head[i + half]);
            head[i] = x1.mul_add(c[i], -(x2 * s[i]));
            head[i + half] = x1.mul_add(s[i], x2 * c[i]);
        }
    }
}

/// Keys whose score chains run side by side: the lanes of one [`KvCache`] block.
const KEY_BLOCK: usize = 32;

/// Whole blocks of positions behind the attention window that a [`KvCache`] lets pile up before
/// it drops them (dropping moves the live ones, so it is done in batches).
const DEAD_BLOCKS: usize = 16;

/// One layer's cached keys and values. Keys are stored for the score loop: blocks of
/// [`KEY_BLOCK`] positions, each block `[head][k][lane]` (lane = position within the block; unused
/// lanes hold zeros); values `[position][d]`. Positions before `dropped` blocks are gone
/// ([`forget_before`](Self::forget_before)), so a sliding window keeps memory bounded.
#[derive(Clone, Default)]
struct KvCache {
    d: usize,
    len: usize,
    dropped: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl KvCache {
    fn new(d: usize) -> Self {
        KvCache {
            d,
            ..Default::default()
        }
    }

    /// Appends the key and value (`[d]` each) of the next position.
    fn push(&mut self, key: &[f32], value: &[f32]) {
        let lane = self.len % KEY_BLOCK;
        if lane == 0 {
            self.keys.resize(self.keys.len() + KEY_BLOCK * self.d, 0.0);
        }
        let block = self.keys.len() - KEY_BLOCK * self.d;
        for (i, &x) in key.iter().enumerate() {
            self.keys[block + i * KEY_BLOCK + lane] = x;
        }
        self.values.extend_from_slice(value);
        self.len += 1;
    }

    /// Lets go of the positions before `pos` that fill whole blocks, once enough have piled up.
    fn forget_before(&mut self, pos: usize) {
        let dead = pos / KEY_BLOCK - self.dropped;
        if dead >= DEAD_BLOCKS {
            self.keys.drain(..dead * KEY_BLOCK * self.d);
            self.values.drain(..dead * KEY_BLOCK * self.d);
            self.dropped += dead;
        }
    }
}

/// Attention of one query position over the cached keys and values of the positions `span`.
fn attend(out: &mut [f32], q: &[f32], cache: &KvCache, span: Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the features the function is compiled for were just detected.
        unsafe { attend_fma(out, q, cache, span) };
        return;
    }
    attend_chains(out, q, cache, span);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_fma(out: &mut [f32], q: &[f32], cache: &KvCache, span: Range<usize>) {
    attend_chains(out, q, cache, span);
}

/// The contract's attention. Each score is its own fma chain over ascending `k` from 0 (one
/// lane of a block); the [`KEY_BLOCK`] chains of a block run side by side, which changes no
/// chain's operation order (so no bit) but lets them vectorise: long contexts (the plain-AC
/// baseline codes 10,240 positions under one context) are bound by this loop.
#[inline(always)]
fn attend_chains(out: &mut [f32], q: &[f32], cache: &KvCache, span: Range<usize>) {
    let d = cache.d;
    debug_assert!(span.start < span.end && span.end <= cache.len && out.len() == d);
    debug_assert!(span.start >= cache.dropped * KEY_BLOCK);
    // Whole blocks covering the span; the scores of lanes outside it are computed and dropped.
    let first = span.start / KEY_BLOCK;
    let blocks = span.end.div_ceil(KEY_BLOCK) - first;
    let mut scores = vec![0f32; blocks * KEY_BLOCK];
    for (head, o) in out.chunks_mut(HEAD_DIM).enumerate() {
        let off = head * HEAD_DIM;
        let qh = &q[off..off + HEAD_DIM];
        for (blk, sc) in scores.chunks_exact_mut(KEY_BLOCK).enumerate() {
            let base = (first + blk - cache.dropped) * KEY_BLOCK * d + off * KEY_BLOCK;
            let kb = &cache.keys[base..base + HEAD_DIM * KEY_BLOCK];
            let mut acc = [0f32; KEY_BLOCK];
            for (&qk, row) in qh.iter().zip(kb.chunks_exact(KEY_BLOCK)) {
                for (a, &kv) in acc.iter_mut().zip(row) {
                    *a = qk.mul_add(kv, *a);
                }
            }
            for (s, a) in sc.iter_mut().zip(acc) {
                *s = a * 0.125;
            }
        }
        let skip = span.start - first * KEY_BLOCK;
        let probs = &mut scores[skip..skip + span.len()];
        let m = probs.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        // The exponentials are elementwise: a separate (vectorisable) pass changes no bit.
        probs.iter_mut().for_each(|s| *s = exp_contract(*s - m));
        let mut sum = 0f32;
        o.fill(0.0);
        let values = &cache.values[(span.start - cache.dropped * KEY_BLOCK) * d..];
        for (j, &p) in probs.iter().enumerate() {
            sum += p;
            let v = &values[j * d + off..j * d + off + HEAD_DIM];
            for (oc, &vc) in o.iter_mut().zip(v) {
                *oc = p.mul_add(vc, *oc);
            }
        }
        o.iter_mut().for_each(|x| *x /= sum);
    }
}

/// Softmax in place: the max, then `exp_contract(l - max)` and their sum in ascending order, then
/// one division per entry. The exponentials are elementwise, so computing them in a separate
/// (vectorisable, hardware-fma) pass before the sequential sum changes no bit.
fn softmax_in_place(p: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the features the function is compiled for were just detected.
        unsafe { softmax_fma(p) };
        return;
    }
    softmax_passes(p);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_fma(p: &mut [f32]) {
    softmax_passes(p);
}

#[inline(always)]
fn softmax_passes(p: &mut [f32]) {
    let m = p.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    p.iter_mut().for_each(|x| *x = exp_contract(*x - m));
    let mut sum = 0f32;
    for &x in p.iter() {
        sum += x;
    }
    p.iter_mut().for_each(|x| *x /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> (ModelConfig, ParamArena) {
        let cfg = ModelConfig::preset("tiny", None).unwrap();
        let mut p = ParamArena::init(&cfg, 3);
        p.data.iter_mut().for_each(|x| *x *= 8.0); // sharper, more varied distributions
        (cfg, p)
    }

    fn bits(p: &[Probs]) -> Vec<u32> {
        p.iter()
            .flat_map(|r| r.iter().map(|x| x.to_bits()))
            .collect()
    }

    #[test]
    fn position_by_position_equals_all_at_once_bit_for_bit() {
        let (cfg, p) = model();
        let m1 = ExactM1::new(&cfg, &p).unwrap();
        for window in [
            &b""[..],
            b"a",
            b"The quick brown fox jumps over the lazy dog.",
            &[0u8, 255, 7, 7, 7, 128][..],
        ] {
            let mut st = WindowState::default();
            let mut stepped = vec![m1.start(&mut st)];
            for &b in window {
                stepped.push(m1.push(&mut st, b));
            }
            assert_eq!(bits(&stepped), bits(&m1.window_probs(window)), "{window:?}");
            for r in &stepped {
                let s: f64 = r.iter().map(|&x| x as f64).sum();
                assert!((s - 1.0).abs() < 1e-5 && r.iter().all(|&x| x >= 0.0));
            }
        }
        // A window's probabilities do not depend on what was coded before it.
        let mut st = WindowState::default();
        m1.start(&mut st);
        m1.push(&mut st, b'z');
        let again = m1.start(&mut st);
        assert_eq!(bits(&[again]), bits(&m1.window_probs(b"")));
    }

    /// The blocked score loop computes the contract's plain chains (one fma chain per score over
    /// ascending k, from 0) bit for bit, for every context length around the block size and
    /// windows that start inside, at and past block edges.
    #[test]
    fn blocked_attention_equals_plain_chains() {
        let d = 2 * HEAD_DIM;
        let mut r = crate::rng::Rng::new(11);
        let mut val = || (r.below(2001) as f32 - 1000.0) / 37.0;
        for (lo, n) in [
            (0, 1),
            (0, 2),
            (0, 31),
            (0, 32),
            (0, 33),
            (0, 64),
            (0, 100),
            (5, 6),
        ]
        .into_iter()
        .chain([(31, 33), (32, 64), (33, 100), (70, 100), (99, 100)])
        .chain([(530, 560), (700, 900)])
        {
            let q: Vec<f32> = (0..d).map(|_| val()).collect();
            let keys: Vec<f32> = (0..n * d).map(|_| val()).collect();
            let values: Vec<f32> = (0..n * d).map(|_| val()).collect();
            let mut cache = KvCache::new(d);
            keys.chunks(d)
                .zip(values.chunks(d))
                .for_each(|(k, v)| cache.push(k, v));
            cache.forget_before(lo); // drops whole blocks once 16 lie before `lo`
            assert_eq!(cache.dropped, if lo >= 512 { lo / KEY_BLOCK } else { 0 });
            let mut got = vec![f32::NAN; d];
            attend(&mut got, &q, &cache, lo..n);
            let mut want = vec![0f32; d];
            for (head, o) in want.chunks_mut(HEAD_DIM).enumerate() {
                let off = head * HEAD_DIM;
                let s: Vec<f32> = (lo..n)
                    .map(|j| {
                        let mut acc = 0f32;
                        for k in 0..HEAD_DIM {
                            acc = q[off + k].mul_add(keys[j * d + off + k], acc);
                        }
                        acc * 0.125
                    })
                    .collect();
                let m = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut sum = 0f32;
                for (j, &sj) in (lo..n).zip(&s) {
                    let p = exp_contract(sj - m);
                    sum += p;
                    for c in 0..HEAD_DIM {
                        o[c] = p.mul_add(values[j * d + off + c], o[c]);
                    }
                }
                o.iter_mut().for_each(|x| *x /= sum);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "span {lo}..{n}");
        }
    }

    /// With a context shorter than the window, stepping and all-at-once still agree bit for bit,
    /// and the window matters: the same bytes under an unbounded context give other bits.
    #[test]
    fn sliding_window_position_by_position_equals_all_at_once() {
        let (mut cfg, p) = model();
        cfg.context = Some(7);
        let m1 = ExactM1::new(&cfg, &p).unwrap();
        let text = b"A sliding window of seven positions, crossed many times over.";
        let mut st = WindowState::default();
        let mut stepped = vec![m1.start(&mut st)];
        for &b in text {
            stepped.push(m1.push(&mut st, b));
        }
        let all = m1.window_probs(text);
        assert_eq!(bits(&stepped), bits(&all));
        // Up to the window, bounded and unbounded contexts are the same computation.
        cfg.context = None;
        let unbounded = ExactM1::new(&cfg, &p).unwrap().window_probs(text);
        assert_eq!(bits(&all[..7]), bits(&unbounded[..7]));
        assert_ne!(bits(&all[7..]), bits(&unbounded[7..]));
        // Long enough for the stepped caches to drop blocks behind the window.
        let long: Vec<u8> = text.iter().copied().cycle().take(1_200).collect();
        let m1 = ExactM1::new(
            &ModelConfig {
                context: Some(40),
                ..cfg.clone()
            },
            &p,
        )
        .unwrap();
        let mut st = WindowState::default();
        let mut stepped = vec![m1.start(&mut st)];
        stepped.extend(long.iter().map(|&b| m1.push(&mut st, b)));
        assert!(st.caches.iter().all(|c| c.dropped > 0));
        assert_eq!(bits(&stepped), bits(&m1.window_probs(&long)));
        // The context is part of the fingerprint.
        assert_ne!(
            m1.fingerprint(),
            ExactM1::new(&cfg, &p).unwrap().fingerprint()
        );
    }

    #[test]
    fn fingerprint_tracks_every_weight_bit() {
        let (cfg, mut p) = model();
        let a = ExactM1::new(&cfg, &p).unwrap().fingerprint();
        assert_eq!(a, ExactM1::new(&cfg, &p).unwrap().fingerprint());
        p.data[12345] = f32::from_bits(p.data[12345].to_bits() ^ 1);
        assert_ne!(a, ExactM1::new(&cfg, &p).unwrap().fingerprint());
        p.data[0] = f32::NAN;
        assert!(ExactM1::new(&cfg, &p).is_err());
        let big = ModelConfig::preset("tiny", Some(65536)).unwrap();
        assert!(ExactM1::new(&big, &ParamArena::zeros(&big)).is_err());
    }

    /// ExactModel serves M2 too: its refusal of NaN weights does not call them M1's, and names
    /// the tensor.
    #[test]
    fn nonfinite_weights_message_names_the_tensor_not_m1() {
        let cfg = ModelConfig::preset("tiny", Some(512)).unwrap();
        let mut p = ParamArena::init(&cfg, 3);
        let at = p.specs[3].offset + 2;
        p.data[at] = f32::INFINITY;
        let e = format!("{:#}", ExactModel::new(&cfg, &p).err().unwrap());
        assert!(!e.contains("M1"), "{e}");
        assert!(
            e.contains(&format!(
                "non-finite value (inf) in tensor {}",
                p.specs[3].name
            )),
            "{e}"
        );
    }
}
