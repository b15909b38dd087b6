//! M1 under numeric contract 3 (docs/numeric-contract.md, "Contract 3"): the scalar reference of
//! the integer M1. Weights are int8 per output channel (norm gains folded in), activations int8
//! per row, q and the key/value cache int8 per (position, head), attention weights integers of
//! 2^-14; every matrix and attention product is a sum of integer products in i32, exact and
//! independent of order, so later SIMD and tensor-core kernels can tile it any way and give the
//! same bits. Everything else (RMSNorm, rotary, softmax, residuals) is contract 2's f32 operations,
//! except that the two long sums (RMSNorm's and the softmax's) run in 16 lanes (`lanes.rs`).
//!
//! Every coder runs M1 under contract 3; contract 2 ([`super::ExactM1`]) is the float model it
//! is quantised from.

mod attention;
mod lanes;
mod measure;
mod pack;
mod q4;
mod quantise;
mod weights;

pub use measure::{quantisation_cost, QuantisationCost};
pub use pack::PACK_FORMAT;
pub use quantise::MAX_INNER;
pub(crate) use quantise::{fake_quantise_rows, QMatrix};
pub use weights::WeightBits;

use super::{
    add_into, check_byte_level, check_weights, fingerprint, rotate, Probs, CONTRACT_VERSION,
    WINDOW_START,
};
use crate::model::{ModelConfig, ParamArena};
use crate::numerics::int8::I8Kernel;
use crate::numerics::{RopeTables, HEAD_DIM};
use anyhow::{ensure, Context, Result};
use attention::{attend, attend_head, QKvCache};
use lanes::{rms_factor, softmax};
use quantise::ROWS_PER_TASK;
use rayon::prelude::*;
use std::sync::{Arc, RwLock};
use weights::Weights;

/// The longest attention span (a model's [`ModelConfig::context`]) contract 3 admits: the bound
/// of the attention's i32 sums (`attention.rs`) holds for at most this many positions.
pub const MAX_CONTEXT: usize = 1024;

/// One layer's quantised matrices (`qkv` and `up` with the RMSNorm gains before them folded in).
struct QLayer {
    qkv: Weights,
    out: Weights,
    up: Weights,
    down: Weights,
}

/// A model of any vocabulary quantised for contract 3's arithmetic, one position at a time with
/// int8 key/value caches, many independent streams per step. M1 is its byte-level case
/// ([`Int8M1`]); M2 generation runs on it for speed (a quarter of the float model's weight bytes
/// per step; its sampling needs no exactness). Its integer products run on the fastest kernel of
/// [`crate::numerics::int8`] the machine has (every kernel gives the same integers, so the same
/// bits); the row-wise work around them runs in the AVX2 and FMA copies of
/// [`I8Kernel::vectorised`] (the same bits as plain code). Its weight matrices are int8 (contract
/// 3) or, for M2 on the CPU only, 4-bit ([`WeightBits`]).
pub struct Int8Model {
    cfg: ModelConfig,
    bits: WeightBits,
    kernel: I8Kernel,
    context: usize,
    tok_emb: Vec<f32>,
    layers: Vec<QLayer>,
    /// `lm_head` with the final norm's gain folded in.
    head: Weights,
    /// The rotary tables, shared by every stream and grown to the furthest position asked for
    /// ([`rope_covering`](Self::rope_covering)): a table's entries do not depend on its length.
    rope: RwLock<Arc<RopeTables>>,
}

/// A byte-level [`Int8Model`]: M1 under contract 3, named by its fingerprint.
pub struct Int8M1 {
    lm: Int8Model,
    fingerprint: u64,
}

/// The context of one stream (an M1 window, an M2 generation) under contract 3: int8
/// key/value caches of every layer.
#[derive(Clone, Default)]
pub struct Int8State {
    pos: usize,
    caches: Vec<QKvCache>,
}

impl Int8State {
    /// Positions fed so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Empties the context for a new window of the same model, keeping the caches' memory.
    pub(crate) fn restart(&mut self) {
        self.pos = 0;
        self.caches.iter_mut().for_each(QKvCache::clear);
    }
}

impl Int8Model {
    /// Quantises the float weights of a model (post-training: each weight matrix per output
    /// channel, after folding in the RMSNorm gain that precedes it). Refuses weights that do not
    /// match `cfg` or are not finite, and shapes outside the proved integer bounds: `d_model` or
    /// `d_ff` above [`MAX_INNER`], a context above [`MAX_CONTEXT`], or none recorded.
    pub fn new(cfg: &ModelConfig, params: &ParamArena) -> Result<Self> {
        Self::with_bits(cfg, params, WeightBits::Int8)
    }

    /// [`new`](Self::new) with the weight matrices in `bits`; 4-bit weights also refuse a
    /// `d_model` or `d_ff` above [`crate::numerics::int4::MAX_INPUTS`].
    pub fn with_bits(cfg: &ModelConfig, params: &ParamArena, bits: WeightBits) -> Result<Self> {
        check_weights(cfg, params)?;
        check_shape(cfg)?; // before any quantising, which assumes the bounds
        let d = cfg.d_model;
        let ff = cfg.d_ff;
        let t = |name: &str| params.tensor(name);
        let q = |w: &str, n, inp, gain: Option<&str>| {
            Weights::quantise(bits, t(w), n, inp, gain.map(t))
        };
        let layers = (0..cfg.n_layers)
            .map(|l| {
                let p = |s: &str| format!("layers.{l}.{s}");
                Ok(QLayer {
                    qkv: q(
                        &p("attn.qkv.weight"),
                        3 * d,
                        d,
                        Some(&p("attn_norm.weight")),
                    )?,
                    out: q(&p("attn.out.weight"), d, d, None)?,
                    up: q(&p("mlp.up.weight"), ff, d, Some(&p("mlp_norm.weight")))?,
                    down: q(&p("mlp.down.weight"), d, ff, None)?,
                })
            })
            .collect::<Result<_>>()?;
        let head = q("lm_head.weight", cfg.vocab, d, Some("final_norm.weight"))?;
        Self::assemble(cfg, bits, t("tok_emb.weight").to_vec(), layers, head)
    }

    /// The model of quantised parts (an M1 pack's, or [`with_bits`](Self::with_bits)'):
    /// refuses a shape [`check_shape`] refuses.
    fn assemble(
        cfg: &ModelConfig,
        bits: WeightBits,
        tok_emb: Vec<f32>,
        layers: Vec<QLayer>,
        head: Weights,
    ) -> Result<Self> {
        Ok(Int8Model {
            cfg: cfg.clone(),
            bits,
            kernel: I8Kernel::best(),
            context: check_shape(cfg)?,
            tok_emb,
            layers,
            head,
            rope: RwLock::new(Arc::new(RopeTables::new(0, cfg.rope_theta))),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// How the weight matrices are stored.
    pub fn weight_bits(&self) -> WeightBits {
        self.bits
    }

    /// The same model computing its integer products with `kernel`; refused where this machine
    /// cannot run it.
    pub fn with_kernel(mut self, kernel: I8Kernel) -> Result<Self> {
        ensure!(
            kernel.runs_here(),
            "the {} int8 kernel does not run on this machine",
            kernel.name()
        );
        self.kernel = kernel;
        Ok(self)
    }

    /// The kernel computing the integer products.
    pub fn kernel(&self) -> I8Kernel {
        self.kernel
    }

    /// How far back a query attends (the model's context, at most [`MAX_CONTEXT`]).
    pub(crate) fn context(&self) -> usize {
        self.context
    }

    /// The float token embedding, `[vocab][d_model]`.
    pub(crate) fn tok_emb(&self) -> &[f32] {
        &self.tok_emb
    }

    /// Layer `l`'s int8 matrices: `qkv`, `out`, `up`, `down` (norm gains folded in); `None`
    /// with 4-bit weights.
    pub(crate) fn layer_matrices(&self, l: usize) -> Option<[&QMatrix; 4]> {
        let w = &self.layers[l];
        Some([w.qkv.int8()?, w.out.int8()?, w.up.int8()?, w.down.int8()?])
    }

    /// `lm_head` in int8, with the final norm's gain folded in; `None` with 4-bit weights.
    pub(crate) fn head(&self) -> Option<&QMatrix> {
        self.head.int8()
    }

    /// Feeds `tokens[r]` to `states[r]` (independent streams, one position each; an empty state
    /// starts one) and returns the last layer's outputs `[rows][d]`: every row is quantised on
    /// its own, so the batch does not change a row's integers. Panics on a token outside the
    /// vocabulary.
    pub fn advance_rows(&self, states: &mut [&mut Int8State], tokens: &[u32]) -> Vec<f32> {
        let d = self.cfg.d_model;
        let mut x: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| self.embed(t))
            .copied()
            .collect();
        for state in states.iter_mut() {
            if state.caches.is_empty() {
                state.caches = vec![QKvCache::new(d); self.cfg.n_layers];
            }
        }
        let rope = self.rope_covering(states.iter().map(|s| s.pos + 1).max().unwrap_or(0));
        let mut att = vec![0f32; x.len()];
        for (l, w) in self.layers.iter().enumerate() {
            let mut qkv = self.project_qkv(w, &x);
            states
                .par_iter_mut()
                .zip(qkv.par_chunks_exact_mut(3 * d))
                .for_each(|(state, row)| {
                    let t = state.pos;
                    let cache = &mut state.caches[l];
                    self.kernel.vectorised(
                        #[inline(always)]
                        || {
                            rotate(&mut row[..2 * d], &rope, t);
                            cache.push(&row[d..2 * d], &row[2 * d..]);
                        },
                    );
                    cache.forget_before(self.window_start(t));
                });
            // Every (stream, head) is independent: at batch 1 the heads still share the threads.
            let (states, heads) = (&*states, d / HEAD_DIM);
            att.par_chunks_exact_mut(HEAD_DIM)
                .enumerate()
                .for_each(|(i, out)| {
                    let (r, h) = (i / heads, i % heads);
                    let t = states[r].pos;
                    let q = &qkv[r * 3 * d..r * 3 * d + d];
                    let span = self.window_start(t)..t + 1;
                    attend_head(self.kernel, out, q, &states[r].caches[l], span, h);
                });
            self.finish_layer(w, &mut x, &att);
        }
        states.iter_mut().for_each(|s| s.pos += 1);
        x
    }

    /// Feeds `tokens` to one stream, all positions of a layer computed before the next, and
    /// returns the last layer's outputs `[tokens][d]`; the bits equal those of
    /// [`advance_rows`](Self::advance_rows) one token at a time.
    pub fn extend(&self, state: &mut Int8State, tokens: &[u32]) -> Vec<f32> {
        let d = self.cfg.d_model;
        let (p0, n) = (state.pos, tokens.len());
        if state.caches.is_empty() {
            state.caches = vec![QKvCache::new(d); self.cfg.n_layers];
        }
        let rope = self.rope_covering(p0 + n);
        let mut x: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| self.embed(t))
            .copied()
            .collect();
        let mut att = vec![0f32; n * d];
        for (w, cache) in self.layers.iter().zip(&mut state.caches) {
            let mut qkv = self.project_qkv(w, &x);
            self.kernel.vectorised(
                #[inline(always)]
                || {
                    for (i, row) in qkv.chunks_exact_mut(3 * d).enumerate() {
                        rotate(&mut row[..2 * d], &rope, p0 + i);
                        cache.push(&row[d..2 * d], &row[2 * d..]);
                    }
                },
            );
            for (i, out) in att.chunks_exact_mut(d).enumerate() {
                let (t, q) = (p0 + i, &qkv[i * 3 * d..i * 3 * d + d]);
                attend(self.kernel, out, q, cache, self.window_start(t)..t + 1);
            }
            cache.forget_before(self.window_start(p0 + n.max(1) - 1));
            self.finish_layer(w, &mut x, &att);
        }
        state.pos += n;
        x
    }

    /// The next-token logits of every row of last-layer outputs `x` (`[rows][d]`) into `logits`
    /// (`[rows][vocab]`): the scores [`next_token_probs`](Self::next_token_probs) takes the
    /// softmax of.
    pub fn next_token_logits(&self, x: &[f32], logits: &mut [f32]) {
        self.head.product(self.kernel, logits, &self.normalise(x));
    }

    /// The next-token distribution of every row of last-layer outputs `x` (`[rows][d]`) into
    /// `probs` (`[rows][vocab]`).
    pub fn next_token_probs(&self, x: &[f32], probs: &mut [f32]) {
        self.next_token_logits(x, probs);
        probs
            .par_chunks_exact_mut(self.cfg.vocab)
            .with_min_len(ROWS_PER_TASK)
            .for_each(|p| {
                self.kernel.vectorised(
                    #[inline(always)]
                    || softmax(p),
                )
            });
    }

    /// The rotary tables of at least `positions` positions: the shared ones, rebuilt (to the
    /// next power of two, at least 64) only when a stream reaches past them.
    fn rope_covering(&self, positions: usize) -> Arc<RopeTables> {
        let shared = self.rope.read().unwrap_or_else(|e| e.into_inner()).clone();
        if shared.seq >= positions {
            return shared;
        }
        let mut rope = self.rope.write().unwrap_or_else(|e| e.into_inner());
        if rope.seq < positions {
            let seq = positions.next_power_of_two().max(64);
            *rope = Arc::new(RopeTables::new(seq, self.cfg.rope_theta));
        }
        rope.clone()
    }

    /// The input vector of `token`: its row of the float embedding. Panics outside the
    /// vocabulary.
    fn embed(&self, token: u32) -> &[f32] {
        let (d, t) = (self.cfg.d_model, token as usize);
        assert!(t < self.cfg.vocab, "token {t} outside the vocabulary");
        &self.tok_emb[t * d..(t + 1) * d]
    }

    /// The first position a query at position `t` attends to.
    fn window_start(&self, t: usize) -> usize {
        (t + 1).saturating_sub(self.context)
    }

    /// `qkv` of every row: the RMSNorm (gain folded into the matrix), then the int8 product.
    fn project_qkv(&self, w: &QLayer, x: &[f32]) -> Vec<f32> {
        let mut qkv = vec![0f32; x.len() * 3];
        w.qkv.product(self.kernel, &mut qkv, &self.normalise(x));
        qkv
    }

    /// The rest of a layer once `att` holds every row's attention output: projection, residual,
    /// MLP, residual.
    fn finish_layer(&self, w: &QLayer, x: &mut [f32], att: &[f32]) {
        let mut proj = vec![0f32; x.len()];
        w.out.product(self.kernel, &mut proj, att);
        add_into(x, &proj);
        let mut up = vec![0f32; x.len() / self.cfg.d_model * self.cfg.d_ff];
        w.up.product(self.kernel, &mut up, &self.normalise(x));
        up.iter_mut().for_each(|u| *u = u.max(0.0));
        w.down.product(self.kernel, &mut proj, &up);
        add_into(x, &proj);
    }

    /// RMSNorm without its gain (folded into the next matrix): `y_k = x_k * r` per row.
    fn normalise(&self, x: &[f32]) -> Vec<f32> {
        let mut y = x.to_vec();
        y.par_chunks_exact_mut(self.cfg.d_model)
            .with_min_len(ROWS_PER_TASK)
            .for_each(|row| {
                self.kernel.vectorised(
                    #[inline(always)]
                    || {
                        let r = rms_factor(row, self.cfg.norm_eps);
                        row.iter_mut().for_each(|v| *v *= r);
                    },
                )
            });
        y
    }
}

/// The context contract 3 runs `cfg` with (its recorded one). Refuses shapes outside the proved
/// integer bounds: `d_model` or `d_ff` above [`MAX_INNER`], a context above [`MAX_CONTEXT`], or
/// none recorded.
fn check_shape(cfg: &ModelConfig) -> Result<usize> {
    let (d, ff) = (cfg.d_model, cfg.d_ff);
    ensure!(
        d <= MAX_INNER && ff <= MAX_INNER,
        "contract 3 sums int8 products over at most {MAX_INNER} inputs; this model has d_model {d} and d_ff {ff}"
    );
    match cfg.context {
        Some(c) if c <= MAX_CONTEXT => Ok(c),
        Some(c) => anyhow::bail!(
            "contract 3 attends over at most {MAX_CONTEXT} positions; this model's context is {c}"
        ),
        None => anyhow::bail!(
            "contract 3 attends over at most {MAX_CONTEXT} positions; this model records no context (it attends over the whole window): load it from a checkpoint that records its training length"
        ),
    }
}

impl Int8M1 {
    /// Quantises a byte-level model ([`Int8Model::new`]); refuses, besides what that refuses,
    /// any other vocabulary than 256.
    pub fn new(cfg: &ModelConfig, params: &ParamArena) -> Result<Self> {
        check_byte_level(cfg)?;
        Ok(Int8M1 {
            lm: Int8Model::new(cfg, params)?,
            fingerprint: fingerprint(CONTRACT_VERSION, cfg, params)?,
        })
    }

    /// Loads the M1 at `path`: an M1 pack ([`from_packed`](Self::from_packed); told apart by
    /// the format its header names, whatever the file is called), or a checkpoint (a directory
    /// or its `model.safetensors`) that it quantises. Refuses a model that cannot serve as M1
    /// under contract 3, and what either reader refuses.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        if pack::is_pack(path) {
            return pack::read_file(path);
        }
        let (cfg, params) = crate::checkpoint::load_model(path)?;
        Int8M1::new(&cfg, &params).with_context(|| format!("{} cannot serve as M1", path.display()))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.lm.cfg
    }

    /// Hash of [`CONTRACT_VERSION`] (3), the configuration and every bit of the float weights
    /// quantised: what coded data records to name its M1.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The same model computing its integer products with `kernel`; refused where this machine
    /// cannot run it.
    pub fn with_kernel(mut self, kernel: I8Kernel) -> Result<Self> {
        self.lm = self.lm.with_kernel(kernel)?;
        Ok(self)
    }

    /// The kernel computing the integer products.
    pub fn kernel(&self) -> I8Kernel {
        self.lm.kernel
    }

    /// The contract-3 model of any vocabulary this M1 is (what the GPU's twin is built from).
    pub fn lm(&self) -> &Int8Model {
        &self.lm
    }

    /// A fresh window: feeds [`WINDOW_START`] and returns the distribution of its first byte.
    pub fn start(&self, state: &mut Int8State) -> Probs {
        *state = Int8State::default();
        self.push(state, WINDOW_START)
    }

    /// Appends `byte` to the window and returns the distribution of the byte after it.
    pub fn push(&self, state: &mut Int8State, byte: u8) -> Probs {
        self.push_rows(&mut [state], &[byte])[0]
    }

    /// [`push`](Self::push) of `bytes[r]` to `states[r]` for independent windows (an empty
    /// state starts one), each with its own bits: every row is quantised on its own, so the
    /// batch does not change a row's integers.
    pub fn push_rows(&self, states: &mut [&mut Int8State], bytes: &[u8]) -> Vec<Probs> {
        let tokens: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
        self.probs_of(&self.lm.advance_rows(states, &tokens))
    }

    /// The distributions a coder needs for `window`: entry `k` is the distribution of byte `k`,
    /// for `k` in `0..=window.len()`, all positions of a layer computed before the next; the
    /// bits equal those of [`start`](Self::start) and [`push`](Self::push) one byte at a time.
    pub fn window_probs(&self, window: &[u8]) -> Vec<Probs> {
        let tokens: Vec<u32> = std::iter::once(WINDOW_START)
            .chain(window.iter().copied())
            .map(|b| b as u32)
            .collect();
        self.probs_of(&self.lm.extend(&mut Int8State::default(), &tokens))
    }

    /// The next-byte distribution of every row of last-layer outputs.
    fn probs_of(&self, x: &[f32]) -> Vec<Probs> {
        let mut probs = vec![[0f32; 256]; x.len() / self.lm.cfg.d_model];
        self.lm.next_token_probs(x, probs.as_flattened_mut());
        probs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::m1::ExactM1;

    fn model(context: usize) -> (ModelConfig, ParamArena) {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(context);
        let mut p = ParamArena::init(&cfg, 3);
        p.data.iter_mut().for_each(|x| *x *= 8.0); // sharper, more varied distributions
        (cfg, p)
    }

    fn bits(p: &[Probs]) -> Vec<u32> {
        p.iter()
            .flat_map(|r| r.iter().map(|x| x.to_bits()))
            .collect()
    }

    fn stepped(m: &Int8M1, window: &[u8]) -> Vec<Probs> {
        let mut st = Int8State::default();
        let mut probs = vec![m.start(&mut st)];
        probs.extend(window.iter().map(|&b| m.push(&mut st, b)));
        probs
    }

    /// With the cache, one position at a time, a window gets the bits of the whole window at
    /// once: within the context, across a sliding window, and past the cache's first drop of
    /// old positions; a window does not depend on what the state held before.
    #[test]
    fn position_by_position_equals_all_at_once_bit_for_bit() {
        let text = b"The quick brown fox jumps over the lazy dog, again and again.";
        for context in [128, 7] {
            let (cfg, p) = model(context);
            let m = Int8M1::new(&cfg, &p).unwrap();
            for window in [&b""[..], b"a", &text[..], &[0u8, 255, 7, 7, 7, 128][..]] {
                assert_eq!(
                    bits(&stepped(&m, window)),
                    bits(&m.window_probs(window)),
                    "context {context}, {window:?}"
                );
            }
        }
        let (cfg, p) = model(40);
        let m = Int8M1::new(&cfg, &p).unwrap();
        let long: Vec<u8> = text.iter().copied().cycle().take(1_200).collect();
        let mut st = Int8State::default();
        let mut probs = vec![m.start(&mut st)];
        probs.extend(long.iter().map(|&b| m.push(&mut st, b)));
        assert!(st.caches.iter().all(|c| c.start > 0), "no position dropped");
        assert_eq!(bits(&probs), bits(&m.window_probs(&long)));
        assert_eq!(bits(&[m.start(&mut st)]), bits(&m.window_probs(b"")));
    }

    /// Windows pushed together, in any grouping, get each window's own bits.
    #[test]
    fn any_batching_of_windows_equals_one_at_a_time() {
        let (cfg, p) = model(16);
        let m = Int8M1::new(&cfg, &p).unwrap();
        let texts: [&[u8]; 5] = [
            b"first stream",
            b"a",
            b"third one, longer than the context of sixteen",
            b"",
            b"zz",
        ];
        let alone: Vec<Vec<Probs>> = texts.iter().map(|t| stepped(&m, t)).collect();
        for group in [1, 2, 5] {
            let mut states = vec![Int8State::default(); texts.len()];
            let mut together = vec![Vec::new(); texts.len()];
            for k in 0..=texts.iter().map(|t| t.len()).max().unwrap() {
                let live: Vec<usize> = (0..texts.len()).filter(|&i| k <= texts[i].len()).collect();
                for part in live.chunks(group) {
                    let bytes: Vec<u8> = part
                        .iter()
                        .map(|&i| {
                            if k == 0 {
                                WINDOW_START
                            } else {
                                texts[i][k - 1]
                            }
                        })
                        .collect();
                    let mut refs: Vec<&mut Int8State> = states
                        .iter_mut()
                        .enumerate()
                        .filter(|(i, _)| part.contains(i))
                        .map(|(_, s)| s)
                        .collect();
                    for (&i, p) in part.iter().zip(m.push_rows(&mut refs, &bytes)) {
                        together[i].push(p);
                    }
                }
            }
            for (a, b) in alone.iter().zip(&together) {
                assert_eq!(bits(a), bits(b), "groups of {group}");
            }
        }
    }

    /// A model of any vocabulary (M2's) fed its context in pieces by `extend`, one token at a
    /// time by `advance_rows`, or alongside other streams gets the same bits; across a sliding
    /// window too; with int8 and with 4-bit weights (whose products split the work by
    /// columns at batch 1, by row tiles for a long piece).
    #[test]
    fn general_vocab_extend_in_pieces_equals_one_token_at_a_time() {
        for bits in [WeightBits::Int8, WeightBits::Int4] {
            extend_in_pieces_equals_one_token_at_a_time(bits);
        }
    }

    fn extend_in_pieces_equals_one_token_at_a_time(bits: WeightBits) {
        let mut cfg = ModelConfig::preset("tiny", Some(1000)).unwrap();
        cfg.context = Some(24);
        let p = ParamArena::init(&cfg, 9);
        let m = Int8Model::with_bits(&cfg, &p, bits).unwrap();
        let tokens: Vec<u32> = (0..60).map(|i| (i * 37 + 11) % 1000).collect();
        let probs_of = |x: &[f32]| {
            let mut p = vec![0f32; x.len() / cfg.d_model * cfg.vocab];
            m.next_token_probs(x, &mut p);
            p.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let mut one = Int8State::default();
        let mut other = Int8State::default();
        let stepped: Vec<u32> = tokens
            .iter()
            .flat_map(|&t| {
                // A second stream in the same step must not change this one's bits.
                let x = m.advance_rows(&mut [&mut one, &mut other], &[t, 999 - t]);
                probs_of(&x[..cfg.d_model])
            })
            .collect();
        for cuts in [vec![60], vec![1, 59], vec![23, 2, 35], vec![10; 6]] {
            let mut st = Int8State::default();
            let mut at = 0;
            let mut got = Vec::new();
            for n in cuts {
                got.extend(probs_of(&m.extend(&mut st, &tokens[at..at + n])));
                at += n;
            }
            assert_eq!(got, stepped, "{}", bits.name());
            assert_eq!(st.len(), 60);
        }
    }

    /// M2 generation's quantised models stay close to the float model they were quantised from
    /// at a 65,536-token vocabulary: mean total-variation distance below 0.05 with int8 (as for
    /// M1 below), below 0.1 with 4-bit weights (measured 0.013 and 0.075 on these random
    /// weights; on a trained M2, `terse eval --int4` measures the cost in bits/byte).
    #[test]
    fn large_vocab_distributions_are_close_to_the_float_models() {
        for (bits, bound) in [(WeightBits::Int8, 0.05), (WeightBits::Int4, 0.1)] {
            large_vocab_close_to_float(bits, bound);
        }
    }

    fn large_vocab_close_to_float(bits: WeightBits, bound: f64) {
        let mut cfg = ModelConfig::preset("tiny", Some(65536)).unwrap();
        cfg.context = Some(64);
        let mut p = ParamArena::init(&cfg, 6);
        p.data.iter_mut().for_each(|x| *x *= 2.0);
        let q = Int8Model::with_bits(&cfg, &p, bits).unwrap();
        let f = crate::m1::ExactModel::new(&cfg, &p).unwrap();
        let tokens: Vec<u32> = (0..20).map(|i| (i * 7919 + 3) % 65536).collect();
        let (mut qs, mut fs) = (Int8State::default(), f.empty_state());
        let (mut qp, mut fp) = (vec![0f32; 65536], vec![0f32; 65536]);
        let mut tv = 0f64;
        for &t in &tokens {
            let x = q.advance_rows(&mut [&mut qs], &[t]);
            q.next_token_probs(&x, &mut qp);
            f.push_token(&mut fs, t, &mut fp);
            assert!((qp.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-3);
            tv += 0.5
                * qp.iter()
                    .zip(&fp)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .sum::<f64>();
        }
        let tv = tv / tokens.len() as f64;
        assert!(tv < bound, "{}: mean total variation {tv}", bits.name());
    }

    /// With 4-bit weights too, every kernel gives the same logits, bit for bit, stepped and in
    /// one piece.
    #[test]
    fn every_kernel_gives_the_same_bits_with_4_bit_weights() {
        let mut cfg = ModelConfig::preset("tiny", Some(3000)).unwrap();
        cfg.context = Some(32);
        let p = ParamArena::init(&cfg, 4);
        let tokens: Vec<u32> = (0..20).map(|i| (i * 131 + 7) % 3000).collect();
        let bits_of = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let run = |kernel| {
            let m = Int8Model::with_bits(&cfg, &p, WeightBits::Int4)
                .unwrap()
                .with_kernel(kernel)
                .unwrap();
            let mut logits = vec![0f32; tokens.len() * cfg.vocab];
            m.next_token_logits(&m.extend(&mut Int8State::default(), &tokens), &mut logits);
            let mut st = Int8State::default();
            for (t, l) in tokens.iter().zip(logits.chunks_exact(cfg.vocab)) {
                let mut one = vec![0f32; cfg.vocab];
                m.next_token_logits(&m.advance_rows(&mut [&mut st], &[*t]), &mut one);
                assert_eq!(bits_of(&one), bits_of(l), "{} stepped", kernel.name());
            }
            bits_of(&logits)
        };
        let want = run(I8Kernel::Portable);
        for kernel in I8Kernel::available() {
            assert_eq!(run(kernel), want, "{}", kernel.name());
        }
    }

    /// Every int8 kernel this machine has (AVX-512 VNNI, AVX-VNNI, AVX2, portable) gives the same
    /// bits for whole windows and for batches of positions: the integer sums are the contract.
    #[test]
    fn every_kernel_gives_the_same_bits() {
        let (cfg, p) = model(16);
        let text = b"Every kernel sums the same integers, so every probability agrees.";
        let want = bits(
            &Int8M1::new(&cfg, &p)
                .unwrap()
                .with_kernel(I8Kernel::Portable)
                .unwrap()
                .window_probs(text),
        );
        for kernel in I8Kernel::available() {
            let m = Int8M1::new(&cfg, &p).unwrap().with_kernel(kernel).unwrap();
            assert_eq!(bits(&m.window_probs(text)), want, "{}", kernel.name());
            assert_eq!(bits(&stepped(&m, text)), want, "{} stepped", kernel.name());
        }
    }

    /// Every distribution is finite, non-negative and sums to 1 within rounding, and stays close
    /// to the float model's: mean total-variation distance 0.012 here, below 0.05, where a scale
    /// off by a factor 2 (scores `2^-1` instead of `2^-3`, or values at half weight) gives 0.14
    /// and more.
    #[test]
    fn probabilities_are_distributions_close_to_the_float_models() {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(64);
        let mut p = ParamArena::init(&cfg, 5);
        p.data.iter_mut().for_each(|x| *x *= 2.0); // far from uniform, yet close to float
        let (m, float) = (
            Int8M1::new(&cfg, &p).unwrap(),
            ExactM1::new(&cfg, &p).unwrap(),
        );
        let text =
            b"Probabilities of an int8 model, row by row, for a hundred bytes or so of text.";
        let (q, f) = (m.window_probs(text), float.window_probs(text));
        let mut tv = 0f64;
        for (qr, fr) in q.iter().zip(&f) {
            assert!(qr.iter().all(|&x| x.is_finite() && x >= 0.0));
            let s: f64 = qr.iter().map(|&x| x as f64).sum();
            assert!((s - 1.0).abs() < 1e-5, "sum {s}");
            tv += qr
                .iter()
                .zip(fr)
                .map(|(&a, &b)| (a - b).abs() as f64)
                .sum::<f64>()
                / 2.0;
        }
        let tv = tv / q.len() as f64;
        assert!(tv < 0.05, "mean total variation {tv}");
    }

    /// The fingerprint names contract 3 and every weight bit: it differs from the same weights'
    /// contract-2 fingerprint, and a flipped weight bit changes it.
    #[test]
    fn fingerprint_tracks_the_contract_and_every_weight_bit() {
        let (cfg, mut p) = model(16);
        let a = Int8M1::new(&cfg, &p).unwrap().fingerprint();
        assert_eq!(a, Int8M1::new(&cfg, &p).unwrap().fingerprint());
        assert_ne!(a, ExactM1::new(&cfg, &p).unwrap().fingerprint());
        p.data[12345] = f32::from_bits(p.data[12345].to_bits() ^ 1);
        assert_ne!(a, Int8M1::new(&cfg, &p).unwrap().fingerprint());
    }

    /// Shapes outside the proved bounds are refused, saying which bound and the model's value.
    #[test]
    fn shapes_outside_the_integer_bounds_are_refused() {
        let err = |cfg: &ModelConfig| {
            let p = ParamArena::zeros(cfg);
            format!("{:#}", Int8M1::new(cfg, &p).err().expect("refused"))
        };
        let (mut cfg, _) = model(MAX_CONTEXT);
        assert!(Int8M1::new(&cfg, &ParamArena::zeros(&cfg)).is_ok());
        cfg.context = Some(MAX_CONTEXT + 1);
        assert!(err(&cfg).contains("at most 1024 positions; this model's context is 1025"));
        cfg.context = None;
        assert!(err(&cfg).contains("records no context"));
        cfg.context = Some(8);
        cfg.d_ff = MAX_INNER + 1;
        cfg.d_model = 64;
        cfg.n_heads = 1;
        cfg.n_layers = 1;
        assert!(
            err(&cfg).contains("at most 131072 inputs; this model has d_model 64 and d_ff 131073")
        );
        let big = ModelConfig::preset("tiny", Some(512)).unwrap();
        assert!(err(&big).contains("vocab 512"));
    }
}
