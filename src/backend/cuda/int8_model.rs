//! A model of any vocabulary under numeric contract 3 on the GPU (`kernels/m1_int8.cu`): many
//! independent contexts ("streams") advanced one position per step, each step ending in every
//! fed row's next-token logits, bit for bit those of [`Int8Model`] on the CPU
//! (docs/numeric-contract.md, "Contract 3"). M1's coding path ([`super::GpuInt8M1`]) is its
//! byte-level case; M2's generation on the GPU runs on it directly.
//!
//! Guarantees: for every stream, the logits returned after feeding `t_0 .. t_k` since its last
//! [`reset`](GpuInt8Model::reset) have the bits of `Int8Model::extend(t_0 .. t_k)` followed by
//! the head on the CPU, whatever the other streams do in the same step and whatever the order
//! of the feeds: every integer sum is exact, so the kernels' tiling cannot change a bit, and the
//! f32 steps are the CPU's operations in the CPU's order. Refuses: a stream index out of range, a
//! stream fed twice in one step, a stream past its capacity (positions per stream, fixed at
//! creation), a token outside the vocabulary; shapes the product kernel cannot hold (`d_ff` not
//! a multiple of 4, or `d_model`/`d_ff` above 12,288).
//!
//! A step feeding every stream is a CUDA graph from the second such step on
//! (`graph::StepGraph`); other row counts launch eagerly. A batch of one stream, the latency
//! case, is therefore always a graph replay after its first two steps.
//!
//! Cost of a step of R rows (each kernel's comment in `m1_int8.cu` has its own): the int8
//! weights once (`n x k` bytes per matrix, served from L2 to the later row groups), each row's
//! key/value cache up to its position (`2 x layers x (d_model + 4 heads) x positions` bytes),
//! and `4 x vocab` bytes of logits per row written and copied to the host. [`super::decode_cost`] states
//! it for a shape, the time it implies at a card's ceilings, and the launches a step takes.
//!
//! Memory: `2 x layers x streams x slots x (d_model + 4 heads)` bytes of key/value cache,
//! `slots = min(capacity, context)`, plus per-step buffers for `streams` rows (the largest
//! `streams x vocab x 4` bytes of logits).
//!
//! **Not yet run on a GPU** (written on a machine without one); `tests/gpu_parity.rs` checks it
//! bit for bit against the CPU on the CUDA emulator, and on a GPU when one is present.

use super::exact_m1::{cache_cells, grid, ring_slots, rotate_rows, FeedBufs};
use super::graph::StepGraph;
use super::loader::GpuKernels;
use super::rope::DevRope;
use super::Entry;
use crate::m1::int8::{QMatrix, WeightBits};
use crate::m1::Int8Model;
use crate::numerics::{RopeTables, HEAD_DIM};
use anyhow::{ensure, Context, Result};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Threads per block of the per-row and per-(row, head) kernels (`m1q_quantise`, `m1q_softmax`,
/// `m1q_attention`; the attention kernel needs exactly 256: four groups of 64 channels).
pub(super) const BLOCK: u32 = 256;
/// Outputs (one per thread) and rows per block of `m1q_linear` (its `LIN_ROWS`).
const LIN_OUTPUTS: u32 = 128;
const LIN_ROWS: usize = 4;
/// Dynamic shared memory a block may take without opting in on any GPU.
const SHARED_LIMIT: usize = 48 << 10;

/// A quantised matrix on the device: its int8 weights as 4-byte words interleaved by output
/// (`w4[i][o]` holds `w[o][4i..4i + 4]`, so a warp reads consecutive words) and one exponent per
/// output row.
struct DevMatrix {
    w4: CudaSlice<i32>,
    e: CudaSlice<i32>,
    k: usize,
    n: usize,
}

impl DevMatrix {
    fn new(s: &Arc<CudaStream>, m: &QMatrix) -> Result<Self> {
        let (k, n, w) = (m.inputs(), m.outputs(), m.rows());
        let w4: Vec<i32> = (0..k / 4)
            .flat_map(|i| (0..n).map(move |o| (i, o)))
            .map(|(i, o)| {
                let at = o * k + 4 * i;
                i32::from_le_bytes([w[at], w[at + 1], w[at + 2], w[at + 3]].map(|b| b as u8))
            })
            .collect();
        Ok(DevMatrix {
            w4: s.clone_htod(&w4).context("uploading M1's weights")?,
            e: s.clone_htod(m.exponents())
                .context("uploading M1's weights")?,
            k,
            n,
        })
    }
}

/// One layer: its matrices and its int8 key/value caches with their exponents,
/// `[streams][heads][slots][64]` and `[streams][heads][slots]`.
struct LayerBufs {
    qkv: DevMatrix,
    out: DevMatrix,
    up: DevMatrix,
    down: DevMatrix,
    keys: CudaSlice<i8>,
    key_e: CudaSlice<i32>,
    values: CudaSlice<i8>,
    value_e: CudaSlice<i32>,
}

struct Funcs {
    embed: CudaFunction,
    rope: CudaFunction,
    quantise: CudaFunction,
    linear: CudaFunction,
    qlinear: CudaFunction,
    attention: CudaFunction,
    rope_attention: CudaFunction,
}

/// Per-step buffers, `streams` rows each.
struct StepBufs {
    feeds: FeedBufs,
    x: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    att: CudaSlice<f32>,
    up: CudaSlice<f32>,
    /// The rows' next-token logits, `[rows][vocab]`.
    logits: CudaSlice<f32>,
    /// A row quantised for a product (`max(d_model, d_ff)` wide) and its exponent.
    xq: CudaSlice<i8>,
    ex: CudaSlice<i32>,
}

/// A batch of contract-3 contexts of one model on the GPU (module docs).
pub struct GpuInt8Model {
    k: GpuKernels,
    f: Funcs,
    d: usize,
    vocab: usize,
    eps: f32,
    layers: Vec<LayerBufs>,
    tok_emb: CudaSlice<f32>,
    head: DevMatrix,
    rope: DevRope,
    step: StepBufs,
    /// Ring slots per stream ([`ring_slots`]): also how far back a query attends.
    slots: usize,
    /// The step over every stream, captured once (keyed by nothing: the only graph).
    graph: StepGraph<()>,
    products: Fusion,
}

/// Why a model with 4-bit weights cannot go to the GPU.
const INT8_ONLY: &str =
    "the GPU decodes int8 weights only (contract 3's kernels); 4-bit weights run on the CPU";

impl GpuInt8Model {
    /// `lm` on GPU 0 with `streams` contexts of up to `capacity` positions each, its products
    /// run as `products` says ([`Fusion`]).
    pub fn new(lm: &Int8Model, streams: usize, capacity: usize, products: Fusion) -> Result<Self> {
        ensure!(streams > 0 && capacity > 0, "no streams or no capacity");
        ensure!(lm.weight_bits() == WeightBits::Int8, INT8_ONLY);
        let k = GpuKernels::new(0)?;
        let f = Funcs {
            embed: k.function(Entry::m1x_embed).clone(),
            rope: k.function(Entry::m1x_rope).clone(),
            quantise: k.function(Entry::m1q_quantise).clone(),
            linear: k.function(Entry::m1q_linear).clone(),
            qlinear: k.function(Entry::m1q_qlinear).clone(),
            attention: k.function(Entry::m1q_attention).clone(),
            rope_attention: k.function(Entry::m1q_rope_attention).clone(),
        };
        let cfg = lm.config();
        let (d, ff, vocab) = (cfg.d_model, cfg.d_ff, cfg.vocab);
        // The product kernel reads rows as 4-byte words, LIN_ROWS of them in shared memory.
        ensure!(
            ff % 4 == 0 && LIN_ROWS * d.max(ff) <= SHARED_LIMIT,
            "the GPU's int8 products need d_ff a multiple of 4 and d_model, d_ff at most {}; this model has d_model {d}, d_ff {ff}: run it on the CPU",
            SHARED_LIMIT / LIN_ROWS
        );
        ensure!(
            i32::try_from(vocab).is_ok(),
            "vocabulary {vocab} does not fit the kernels' int arguments"
        );
        let slots = ring_slots(Some(lm.context()), capacity);
        let cells = cache_cells(streams, capacity, slots, d, ff)?;
        let heads_cells = cells / HEAD_DIM;
        let s = k.stream().clone();
        let layers = (0..cfg.n_layers)
            .map(|l| -> Result<LayerBufs> {
                let [qkv, out, up, down] = lm.layer_matrices(l).context(INT8_ONLY)?;
                let cache = "allocating the key/value cache";
                Ok(LayerBufs {
                    qkv: DevMatrix::new(&s, qkv)?,
                    out: DevMatrix::new(&s, out)?,
                    up: DevMatrix::new(&s, up)?,
                    down: DevMatrix::new(&s, down)?,
                    keys: s.alloc_zeros::<i8>(cells).context(cache)?,
                    key_e: s.alloc_zeros::<i32>(heads_cells).context(cache)?,
                    values: s.alloc_zeros::<i8>(cells).context(cache)?,
                    value_e: s.alloc_zeros::<i32>(heads_cells).context(cache)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rope = RopeTables::new(capacity, cfg.rope_theta);
        let up = |x: &[f32]| s.clone_htod(x).context("uploading the model's weights");
        let rows = streams;
        let step = StepBufs {
            feeds: FeedBufs::new(&s, streams, capacity)?,
            x: s.alloc_zeros::<f32>(rows * d)?,
            qkv: s.alloc_zeros::<f32>(rows * 3 * d)?,
            att: s.alloc_zeros::<f32>(rows * d)?,
            up: s.alloc_zeros::<f32>(rows * ff)?,
            logits: s
                .alloc_zeros::<f32>(rows * vocab)
                .context("allocating the logits")?,
            xq: s.alloc_zeros::<i8>(rows * d.max(ff))?,
            ex: s.alloc_zeros::<i32>(rows)?,
        };
        Ok(GpuInt8Model {
            f,
            d,
            vocab,
            eps: cfg.norm_eps,
            layers,
            tok_emb: up(lm.tok_emb())?,
            head: DevMatrix::new(&s, lm.head().context(INT8_ONLY)?)?,
            rope: DevRope::upload(&s, &rope)?,
            step,
            slots,
            graph: StepGraph::new(true),
            products,
            k,
        })
    }

    pub fn streams(&self) -> usize {
        self.step.feeds.streams()
    }

    pub fn capacity(&self) -> usize {
        self.step.feeds.capacity()
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Positions fed to `stream` since its last reset.
    pub fn position(&self, stream: usize) -> usize {
        self.step.feeds.position(stream)
    }

    /// Empties `stream`'s context (its next feed is position 0).
    pub fn reset(&mut self, stream: usize) {
        self.step.feeds.reset(stream)
    }

    /// Whether the step over every stream is held as a CUDA graph (from the second such step on).
    pub fn graph_active(&self) -> bool {
        self.graph.active()
    }

    /// Feeds each `(stream, token)` and writes, in the same order, each stream's next-token
    /// logits into `logits` (`feeds.len() x vocab`; waits for the device). Refuses (feeding
    /// nothing) a stream out of range, fed twice or full, and a token outside the vocabulary.
    pub fn step(&mut self, feeds: &[(usize, u32)], logits: &mut [f32]) -> Result<()> {
        let rows = feeds.len();
        ensure!(
            logits.len() == rows * self.vocab,
            "{} logits for {rows} rows of vocabulary {}",
            logits.len(),
            self.vocab
        );
        if rows == 0 {
            return Ok(());
        }
        self.feed(feeds)?;
        let s = self.k.stream();
        s.memcpy_dtoh(&self.step.logits.slice(..rows * self.vocab), logits)?;
        s.synchronize()?;
        Ok(())
    }

    pub(super) fn kernels(&self) -> &GpuKernels {
        &self.k
    }

    /// The device's logits, `[streams][vocab]`: the first rows of the last step are its rows.
    pub(super) fn logits(&self) -> &CudaSlice<f32> {
        &self.step.logits
    }

    pub(super) fn logits_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.step.logits
    }

    /// Feeds each `(stream, token)` without reading the logits back (a prompt's positions
    /// before its last): uploads `feeds` (refusing what [`step`](Self::step) refuses, nothing
    /// enqueued then), enqueues the model step for them, leaving their logits in the device's
    /// first rows, and advances their streams. Does not wait for the device.
    pub fn feed<T: Copy + Into<u32>>(&mut self, feeds: &[(usize, T)]) -> Result<()> {
        if let Some(&(st, t)) = feeds
            .iter()
            .find(|&&(_, t)| t.into() as usize >= self.vocab)
        {
            anyhow::bail!(
                "token {} fed to stream {st} is outside the vocabulary {}",
                t.into(),
                self.vocab
            );
        }
        let s = self.k.stream().clone();
        self.step.feeds.upload(&s, feeds)?;
        self.run_model(feeds.len())?;
        self.step.feeds.advance(feeds);
        Ok(())
    }

    /// The model step for the first `rows` rows: a graph replay when every stream is fed (the
    /// steady state of coding and of a server's full batch, where launching a step's dozens of
    /// small kernels one by one would cost host time on every step); eager otherwise.
    fn run_model(&mut self, rows: usize) -> Result<()> {
        if rows != self.streams() {
            return self.enqueue(rows);
        }
        let (s, ctx) = (self.k.stream().clone(), self.k.context().clone());
        let mut graph = std::mem::replace(&mut self.graph, StepGraph::new(false));
        let ran = graph.run(&s, &ctx, (), || self.enqueue(rows));
        self.graph = graph;
        ran
    }

    /// Enqueues one position for the first `rows` rows of the step buffers: the CPU's order
    /// (`Int8Model::advance_rows`, then the head), each product's input row quantised first.
    fn enqueue(&mut self, rows: usize) -> Result<()> {
        let d = self.d;
        let s = self.k.stream().clone();
        // Fits: slots <= capacity, checked to fit an int at creation.
        let (rows_i, di, slots_i) = (rows as i32, d as i32, self.slots as i32);
        let (f, b) = (&self.f, &mut self.step);
        // One thread per (row, channel): the embedding and rotary (one per rotated pair).
        let elementwise = grid(rows * d, BLOCK);
        // One block per (row, head): attention, with 4 bytes of p and of W per cache slot.
        let per_head = LaunchConfig {
            grid_dim: (rows as u32, (d / HEAD_DIM) as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 8 * self.slots as u32,
        };
        let mut l = s.launch_builder(&f.embed);
        l.arg(&mut b.x)
            .arg(&self.tok_emb)
            .arg(&b.feeds.row_token)
            .arg(&rows_i)
            .arg(&di);
        unsafe { l.launch(elementwise) }?;
        let (eps, products) = (self.eps, self.products);
        // A product `y (mode) x W^T` of f32 rows x, each RMS-normalised first when `norm`, then
        // quantised: by the product's own blocks, or by m1q_quantise into `xq` and `ex` first.
        let product = |y: &mut CudaSlice<f32>,
                       x: &CudaSlice<f32>,
                       norm: bool,
                       w: &DevMatrix,
                       mode: Mode,
                       xq: &mut CudaSlice<i8>,
                       ex: &mut CudaSlice<i32>| {
            let norm_eps = norm.then_some(eps);
            match products {
                Fusion::Fused => qlinear(&s, &f.qlinear, rows, y, x, norm_eps, w, mode),
                Fusion::Separate => {
                    quantise(&s, &f.quantise, rows, xq, ex, x, w.k, norm_eps)?;
                    linear(&s, &f.linear, rows, y, (xq, ex), w, mode)
                }
            }
        };
        for w in &mut self.layers {
            product(
                &mut b.qkv,
                &b.x,
                true,
                &w.qkv,
                Mode::Store,
                &mut b.xq,
                &mut b.ex,
            )?;
            // Rotary, then attention: one launch when fused (the block rotates its own head).
            if products == Fusion::Separate {
                let pos = &b.feeds.row_pos;
                rotate_rows(&s, &f.rope, &self.rope, &mut b.qkv, pos, rows, d)?;
            }
            let attention = match products {
                Fusion::Separate => &f.attention,
                Fusion::Fused => &f.rope_attention,
            };
            let mut l = s.launch_builder(attention);
            l.arg(&mut b.att)
                .arg(&mut b.qkv)
                .arg(&mut w.keys)
                .arg(&mut w.key_e)
                .arg(&mut w.values)
                .arg(&mut w.value_e);
            l.arg(&b.feeds.row_stream)
                .arg(&b.feeds.row_pos)
                .arg(&di)
                .arg(&slots_i);
            if products == Fusion::Fused {
                l.arg(&self.rope.cos).arg(&self.rope.sin);
            }
            unsafe { l.launch(per_head) }?;
            product(
                &mut b.x,
                &b.att,
                false,
                &w.out,
                Mode::Add,
                &mut b.xq,
                &mut b.ex,
            )?;
            product(
                &mut b.up,
                &b.x,
                true,
                &w.up,
                Mode::Relu,
                &mut b.xq,
                &mut b.ex,
            )?;
            product(
                &mut b.x,
                &b.up,
                false,
                &w.down,
                Mode::Add,
                &mut b.xq,
                &mut b.ex,
            )?;
        }
        product(
            &mut b.logits,
            &b.x,
            true,
            &self.head,
            Mode::Store,
            &mut b.xq,
            &mut b.ex,
        )?;
        Ok(())
    }
}

/// One block of [`BLOCK`] threads per row: the quantiser and the softmax.
pub(super) fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// (ceil(n / LIN_OUTPUTS), ceil(rows / LIN_ROWS)) blocks of LIN_OUTPUTS threads (one per
/// output), each with its LIN_ROWS input rows (`LIN_ROWS * k` bytes) in dynamic shared memory.
fn product_grid(rows: usize, w: &DevMatrix) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            w.n.div_ceil(LIN_OUTPUTS as usize) as u32,
            rows.div_ceil(LIN_ROWS) as u32,
            1,
        ),
        block_dim: (LIN_OUTPUTS, 1, 1),
        shared_mem_bytes: (LIN_ROWS * w.k) as u32,
    }
}

/// How a step groups its work into launches, for the same bits: each product's input rows
/// quantised by their own launch (`m1q_quantise`, then `m1q_linear`) or inside the product
/// (`m1q_qlinear`), and the rotary a launch of its own (`m1x_rope`, then `m1q_attention`) or
/// inside the attention (`m1q_rope_attention`). M1's coding keeps the separate launches, the
/// kernels its parity run on an H200 checked, until a GPU run checks the fused ones; M2's
/// decoding, a chain of small launches at batch 1, fuses (6 launches per layer instead of 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fusion {
    Separate,
    Fused,
}

/// What a product does with its result (`m1q_linear`'s mode).
#[derive(Clone, Copy)]
enum Mode {
    Store = 0,
    Add = 1,
    Relu = 2,
}

/// Quantises `rows` rows of `x` (`n` wide) into `xq` and `ex`, RMS-normalised first when `eps` is given
/// (`Some(norm_eps)`). Grid: one block per row ([`per_row`]).
#[allow(clippy::too_many_arguments)]
fn quantise(
    s: &Arc<CudaStream>,
    f: &CudaFunction,
    rows: usize,
    xq: &mut CudaSlice<i8>,
    ex: &mut CudaSlice<i32>,
    x: &CudaSlice<f32>,
    n: usize,
    norm_eps: Option<f32>,
) -> Result<()> {
    let (ni, normi, eps) = (
        n as i32,
        i32::from(norm_eps.is_some()),
        norm_eps.unwrap_or(0.0),
    );
    let mut l = s.launch_builder(f);
    l.arg(xq).arg(ex).arg(x).arg(&ni).arg(&eps).arg(&normi);
    unsafe { l.launch(per_row(rows)) }?;
    Ok(())
}

/// `y (=, +=, = relu) dequantised (xq W^T)` for `rows` rows: a grid of
/// (ceil(n / LIN_OUTPUTS), ceil(rows / LIN_ROWS)) blocks of LIN_OUTPUTS threads (one per output),
/// each with its LIN_ROWS input rows (`LIN_ROWS * k` bytes) in dynamic shared memory.
#[allow(clippy::too_many_arguments)]
fn linear(
    s: &Arc<CudaStream>,
    f: &CudaFunction,
    rows: usize,
    y: &mut CudaSlice<f32>,
    (xq, ex): (&CudaSlice<i8>, &CudaSlice<i32>),
    w: &DevMatrix,
    mode: Mode,
) -> Result<()> {
    let cfg = product_grid(rows, w);
    let (rows_i, ki, ni, mode) = (rows as i32, w.k as i32, w.n as i32, mode as i32);
    let mut l = s.launch_builder(f);
    l.arg(y)
        .arg(xq)
        .arg(ex)
        .arg(&w.w4)
        .arg(&w.e)
        .arg(&rows_i)
        .arg(&ki)
        .arg(&ni)
        .arg(&mode);
    unsafe { l.launch(cfg) }?;
    Ok(())
}

/// [`quantise`] and [`linear`] in one launch (`m1q_qlinear`): the same grid and shared memory
/// as [`linear`], each block quantising (RMS-normalising first when `norm_eps` is given) its
/// LIN_ROWS rows of `x` itself.
#[allow(clippy::too_many_arguments)]
fn qlinear(
    s: &Arc<CudaStream>,
    f: &CudaFunction,
    rows: usize,
    y: &mut CudaSlice<f32>,
    x: &CudaSlice<f32>,
    norm_eps: Option<f32>,
    w: &DevMatrix,
    mode: Mode,
) -> Result<()> {
    let (normi, eps) = (i32::from(norm_eps.is_some()), norm_eps.unwrap_or(0.0));
    let (rows_i, ki, ni, mode) = (rows as i32, w.k as i32, w.n as i32, mode as i32);
    let mut l = s.launch_builder(f);
    l.arg(y).arg(x).arg(&normi).arg(&eps).arg(&w.w4).arg(&w.e);
    l.arg(&rows_i).arg(&ki).arg(&ni).arg(&mode);
    unsafe { l.launch(product_grid(rows, w)) }?;
    Ok(())
}
