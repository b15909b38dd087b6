//! M1 under numeric contract 3 on the GPU (`kernels/m1_int8.cu`): many independent contexts
//! ("streams") advanced one position per step, with the probabilities of [`Int8M1`] bit for bit
//! (docs/numeric-contract.md, "Contract 3").
//!
//! Guarantees: for every stream, the distribution returned after feeding bytes `b_0 .. b_k` since
//! its last [`reset`](GpuInt8M1::reset) has the bits of `Int8M1::start` followed by
//! `push(b_1) .. push(b_k)` on the CPU (the first byte fed must be
//! [`WINDOW_START`](crate::m1::WINDOW_START) for that equivalence; any byte is accepted),
//! whatever the other streams do in the same step and whatever the order of the feeds. Every
//! integer sum is exact, so the kernels' tiling cannot change a bit; the f32 steps are the CPU's
//! operations in the CPU's order. Refuses: a stream index out of range, a stream fed twice in one
//! step, a stream past its capacity (positions per stream, fixed at creation).
//!
//! Coding calls [`submit`](GpuInt8M1::submit) and [`collect`](GpuInt8M1::collect) (the
//! [`M1Batch`] rules: one step pending): `submit` enqueues, on this batch's own CUDA stream, the
//! feeds' upload from page-locked memory, the step, `m1q_cdf` (the coder's integer CDFs,
//! [`CdfQuantizer`]'s rule exactly) and their download into page-locked memory, and returns
//! without waiting for the device; `collect` waits for that download and validates each CDF
//! ([`Cdf::from_cumulative`]). With two batches alternating (submit A, code B's CDFs, collect A,
//! ...), a GPU overlaps A's step with the host's coding of B, and A's copies with B's kernels.
//! A step feeding every stream, the steady state of coding, is a CUDA graph from the second such
//! step on (`graph::StepGraph`); other row counts launch eagerly.
//!
//! Memory: `2 x layers x streams x slots x (d_model + 4 heads)` bytes of int8 key/value cache
//! with their exponents (m1-3m: 1.6 KiB per slot, a quarter of contract 2's), allocated once,
//! `slots = min(capacity, M1's context)`; plus per-step buffers for `streams` rows.
//!
//! **Not yet run on a GPU** (written on a machine without one); `tests/gpu_parity.rs` checks it
//! bit for bit against the CPU, on a GPU when one is present and on the CUDA emulator otherwise.

use super::exact_m1::{cache_cells, download_probs, grid, ring_slots, stream_accessors, FeedBufs};
use super::graph::StepGraph;
use super::loader::GpuKernels;
use super::staging::Staged;
use super::Entry;
use crate::coder::{Cdf, CdfQuantizer};
use crate::m1::int8::QMatrix;
use crate::m1::{Int8M1, M1Batch, PendingStep, Probs};
use crate::numerics::{RopeTables, HEAD_DIM};
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Threads per block of the per-row and per-(row, head) kernels (`m1q_quantise`, `m1q_softmax`,
/// `m1q_attention`; the attention kernel needs exactly 256: four groups of 64 channels).
const BLOCK: u32 = 256;
/// Outputs (one per thread) and rows per block of `m1q_linear` (its `LIN_ROWS`).
const LIN_OUTPUTS: u32 = 128;
const LIN_ROWS: usize = 4;
/// Dynamic shared memory a block may take without opting in on any GPU.
const SHARED_LIMIT: usize = 48 << 10;
/// Most streams [`GpuInt8M1::for_chunks`] gives a batch: the top of the range the roofline
/// (docs/gpu-m1-roofline.md) predicts for, where Equal-Info passes 10M positions/s.
pub const MAX_STREAMS: usize = 8192;

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
    attention: CudaFunction,
    softmax: CudaFunction,
    cdf: CudaFunction,
}

/// Per-step buffers, `streams` rows each.
struct StepBufs {
    feeds: FeedBufs,
    x: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    att: CudaSlice<f32>,
    up: CudaSlice<f32>,
    probs: CudaSlice<f32>,
    /// The rows' integer CDFs (`[rows][257]`, `m1q_cdf`) and their page-locked host copy, which
    /// the device writes while the host goes on ([`GpuInt8M1::collect`] waits for it).
    cdf: CudaSlice<u32>,
    cdf_host: Staged<u32>,
    /// A row quantised for a product (`max(d_model, d_ff)` wide) and its exponent.
    xq: CudaSlice<i8>,
    ex: CudaSlice<i32>,
}

/// A batch of contract-3 M1 contexts on the GPU (module docs).
pub struct GpuInt8M1 {
    k: GpuKernels,
    f: Funcs,
    d: usize,
    ff: usize,
    eps: f32,
    layers: Vec<LayerBufs>,
    tok_emb: CudaSlice<f32>,
    head: DevMatrix,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    step: StepBufs,
    /// Ring slots per stream ([`ring_slots`]): also how far back a query attends.
    slots: usize,
    fingerprint: u64,
    /// The step over every stream, captured once (keyed by nothing: the only graph).
    graph: StepGraph<()>,
    pending: PendingStep<Submitted>,
}

/// What [`GpuInt8M1::collect`] needs of a submitted step: the fed streams, in order, and the CDF
/// total.
struct Submitted {
    streams: Vec<usize>,
    total_bits: u32,
}

impl GpuInt8M1 {
    /// `m1` on GPU 0 with `streams` contexts of up to `capacity` positions each (a window of n
    /// bytes takes n + 1: the start token and every byte but the last feed the model).
    pub fn new(m1: &Int8M1, streams: usize, capacity: usize) -> Result<Self> {
        ensure!(streams > 0 && capacity > 0, "no streams or no capacity");
        let k = GpuKernels::new(0)?;
        let f = Funcs {
            embed: k.function(Entry::m1x_embed).clone(),
            rope: k.function(Entry::m1x_rope).clone(),
            quantise: k.function(Entry::m1q_quantise).clone(),
            linear: k.function(Entry::m1q_linear).clone(),
            attention: k.function(Entry::m1q_attention).clone(),
            softmax: k.function(Entry::m1q_softmax).clone(),
            cdf: k.function(Entry::m1q_cdf).clone(),
        };
        let cfg = m1.config();
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        // The product kernel reads rows as 4-byte words, LIN_ROWS of them in shared memory.
        ensure!(
            ff % 4 == 0 && LIN_ROWS * d.max(ff) <= SHARED_LIMIT,
            "the GPU's int8 products need d_ff a multiple of 4 and d_model, d_ff at most {}; this model has d_model {d}, d_ff {ff}: run it on the CPU",
            SHARED_LIMIT / LIN_ROWS
        );
        let slots = ring_slots(Some(m1.context()), capacity);
        let cells = cache_cells(streams, capacity, slots, d, ff)?;
        let heads_cells = cells / HEAD_DIM;
        let s = k.stream().clone();
        let layers = (0..cfg.n_layers)
            .map(|l| -> Result<LayerBufs> {
                let [qkv, out, up, down] = m1.layer_matrices(l);
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
        let up = |x: &[f32]| s.clone_htod(x).context("uploading M1's weights");
        let rows = streams;
        let step = StepBufs {
            feeds: FeedBufs::new(&s, streams, capacity)?,
            x: s.alloc_zeros::<f32>(rows * d)?,
            qkv: s.alloc_zeros::<f32>(rows * 3 * d)?,
            att: s.alloc_zeros::<f32>(rows * d)?,
            up: s.alloc_zeros::<f32>(rows * ff)?,
            probs: s.alloc_zeros::<f32>(rows * 256)?,
            cdf: s.alloc_zeros::<u32>(rows * 257)?,
            cdf_host: Staged::for_download(k.context(), rows * 257)
                .context("allocating page-locked host memory for the CDFs")?,
            xq: s.alloc_zeros::<i8>(rows * d.max(ff))?,
            ex: s.alloc_zeros::<i32>(rows)?,
        };
        Ok(GpuInt8M1 {
            f,
            d,
            ff,
            eps: cfg.norm_eps,
            layers,
            tok_emb: up(m1.tok_emb())?,
            head: DevMatrix::new(&s, m1.head())?,
            cos: up(&rope.cos)?,
            sin: up(&rope.sin)?,
            step,
            slots,
            fingerprint: m1.fingerprint(),
            graph: StepGraph::new(true),
            pending: PendingStep::default(),
            k,
        })
    }

    /// For coding chunks of up to `chunk_bytes` bytes: as many streams as a key/value cache of
    /// `cache_bytes` holds, 1 to [`MAX_STREAMS`] (a batch of fewer than one stream's cache still
    /// gets one).
    pub fn for_chunks(m1: &Int8M1, chunk_bytes: usize, cache_bytes: usize) -> Result<Self> {
        let cfg = m1.config();
        // An Equal-Info window of the whole chunk takes chunk_bytes + 1 positions.
        let capacity = chunk_bytes + 1;
        let slots = ring_slots(Some(m1.context()), capacity);
        let per_stream = 2 * cfg.n_layers * slots * (cfg.d_model + 4 * cfg.d_model / HEAD_DIM);
        Self::new(
            m1,
            (cache_bytes / per_stream).clamp(1, MAX_STREAMS),
            capacity,
        )
    }

    stream_accessors!();

    /// Feeds each `(stream, byte)` and returns, in the same order, the distribution of each
    /// stream's next byte. Refuses (feeding nothing) a stream out of range, fed twice, or full.
    pub fn step(&mut self, feeds: &[(usize, u8)]) -> Result<Vec<Probs>> {
        let rows = feeds.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        self.launch_step(feeds)?;
        download_probs(self.k.stream(), &self.step.probs, rows)
    }

    /// Whether the step over every stream is held as a CUDA graph (from the second such step on).
    pub fn graph_active(&self) -> bool {
        self.graph.active()
    }

    /// Starts a step (module docs; [`M1Batch::submit`]): enqueues the feeds' upload, the model,
    /// `m1q_cdf` and the CDFs' download, and returns without waiting for the device.
    pub fn submit(&mut self, feeds: &[(usize, u8)], quantizer: &CdfQuantizer) -> Result<()> {
        self.pending.ensure_idle()?;
        let rows = feeds.len();
        if rows > 0 {
            self.launch_step(feeds)?;
            let s = self.k.stream().clone();
            let b = &mut self.step;
            launch_cdf(&s, &self.f.cdf, &mut b.cdf, &b.probs, rows, quantizer)?;
            b.cdf_host.download(&s, &b.cdf.slice(..rows * 257))?;
        }
        self.pending.start(Submitted {
            streams: feeds.iter().map(|&(st, _)| st).collect(),
            total_bits: quantizer.total_bits(),
        })
    }

    /// The pending step's CDFs, in feed order (waits for the device; [`M1Batch::collect`]).
    pub fn collect(&mut self) -> Result<Vec<Cdf>> {
        let done = self.pending.take()?;
        let rows = done.streams.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        // Waits for the download, the last work of the step.
        let cum = self.step.cdf_host.read()?;
        cdfs_of(&cum[..rows * 257], done.total_bits, "stream", &done.streams)
    }

    /// Uploads `feeds` (refusing bad ones, nothing enqueued then), enqueues the model step for
    /// them and advances their streams.
    fn launch_step(&mut self, feeds: &[(usize, u8)]) -> Result<()> {
        let s = self.k.stream().clone();
        self.step.feeds.upload(&s, feeds)?;
        self.run_model(feeds.len())?;
        self.step.feeds.advance(feeds);
        Ok(())
    }

    /// The model step for the first `rows` rows: a graph replay when every stream is fed (the
    /// steady state of coding, where launching a step's dozens of small kernels one by one would
    /// cost host time on every step); eager otherwise. Other row counts come where streams run
    /// out of work (the last chunks), so a graph per row count would cost captures (and graph
    /// memory) for steps that are rare.
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
    /// (`Int8M1::push_rows`), each product's input row quantised first.
    fn enqueue(&mut self, rows: usize) -> Result<()> {
        let (d, ff) = (self.d, self.ff);
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
        let eps = self.eps;
        // A product's input row quantised (RMS-normalised first when `norm`), and the product.
        let q = |x: &CudaSlice<f32>,
                 n: usize,
                 norm: bool,
                 xq: &mut CudaSlice<i8>,
                 ex: &mut CudaSlice<i32>| {
            quantise(&s, &f.quantise, rows, xq, ex, x, n, norm.then_some(eps))
        };
        let lin =
            |y: &mut CudaSlice<f32>,
             xq: &CudaSlice<i8>,
             ex: &CudaSlice<i32>,
             w: &DevMatrix,
             mode: Mode| { linear(&s, &f.linear, rows, y, (xq, ex), w, mode) };
        for w in &mut self.layers {
            q(&b.x, d, true, &mut b.xq, &mut b.ex)?;
            lin(&mut b.qkv, &b.xq, &b.ex, &w.qkv, Mode::Store)?;
            let mut l = s.launch_builder(&f.rope);
            l.arg(&mut b.qkv)
                .arg(&self.cos)
                .arg(&self.sin)
                .arg(&b.feeds.row_pos);
            l.arg(&rows_i).arg(&di);
            unsafe { l.launch(elementwise) }?;
            let mut l = s.launch_builder(&f.attention);
            l.arg(&mut b.att)
                .arg(&b.qkv)
                .arg(&mut w.keys)
                .arg(&mut w.key_e)
                .arg(&mut w.values)
                .arg(&mut w.value_e);
            l.arg(&b.feeds.row_stream)
                .arg(&b.feeds.row_pos)
                .arg(&di)
                .arg(&slots_i);
            unsafe { l.launch(per_head) }?;
            q(&b.att, d, false, &mut b.xq, &mut b.ex)?;
            lin(&mut b.x, &b.xq, &b.ex, &w.out, Mode::Add)?;
            q(&b.x, d, true, &mut b.xq, &mut b.ex)?;
            lin(&mut b.up, &b.xq, &b.ex, &w.up, Mode::Relu)?;
            q(&b.up, ff, false, &mut b.xq, &mut b.ex)?;
            lin(&mut b.x, &b.xq, &b.ex, &w.down, Mode::Add)?;
        }
        q(&b.x, d, true, &mut b.xq, &mut b.ex)?;
        lin(&mut b.probs, &b.xq, &b.ex, &self.head, Mode::Store)?;
        let v = 256i32;
        let mut l = s.launch_builder(&f.softmax);
        l.arg(&mut b.probs).arg(&v);
        unsafe { l.launch(per_row(rows)) }?;
        Ok(())
    }
}

/// One block of [`BLOCK`] threads per row: the quantiser and the softmax.
fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
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
    let cfg = LaunchConfig {
        grid_dim: (
            w.n.div_ceil(LIN_OUTPUTS as usize) as u32,
            rows.div_ceil(LIN_ROWS) as u32,
            1,
        ),
        block_dim: (LIN_OUTPUTS, 1, 1),
        shared_mem_bytes: (LIN_ROWS * w.k) as u32,
    };
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

impl M1Batch for GpuInt8M1 {
    fn streams(&self) -> usize {
        GpuInt8M1::streams(self)
    }

    fn fingerprint(&self) -> u64 {
        GpuInt8M1::fingerprint(self)
    }

    fn reset(&mut self, stream: usize) {
        GpuInt8M1::reset(self, stream)
    }

    fn step(&mut self, feeds: &[(usize, u8)]) -> Result<Vec<Probs>> {
        GpuInt8M1::step(self, feeds)
    }

    fn submit(&mut self, feeds: &[(usize, u8)], quantizer: &CdfQuantizer) -> Result<()> {
        GpuInt8M1::submit(self, feeds, quantizer)
    }

    fn collect(&mut self) -> Result<Vec<Cdf>> {
        GpuInt8M1::collect(self)
    }

    fn parts(&mut self) -> Vec<&mut dyn M1Batch> {
        vec![self]
    }
}

/// `m1q_cdf` over the first `rows` distributions of `probs` into `cum` (`[rows][257]`): one block
/// of [`BLOCK`] threads (one per byte) per row.
fn launch_cdf(
    s: &Arc<CudaStream>,
    f: &CudaFunction,
    cum: &mut CudaSlice<u32>,
    probs: &CudaSlice<f32>,
    rows: usize,
    q: &CdfQuantizer,
) -> Result<()> {
    let (total_bits, f_min) = (q.total_bits() as i32, q.f_min() as i32);
    let mut l = s.launch_builder(f);
    l.arg(cum).arg(probs).arg(&total_bits).arg(&f_min);
    unsafe { l.launch(per_row(rows)) }?;
    Ok(())
}

/// The [`Cdf`]s of `m1q_cdf`'s rows (`cum`, 257 counts each, under `total_bits`), validated by
/// [`Cdf::from_cumulative`]; a row the kernel marked (an input `CdfQuantizer` refuses) is refused,
/// named as `what` `ids[row]`.
fn cdfs_of(cum: &[u32], total_bits: u32, what: &str, ids: &[usize]) -> Result<Vec<Cdf>> {
    cum.chunks_exact(257)
        .zip(ids)
        .map(|(c, id)| {
            if c[0] != 0 {
                bail!(
                    "the distribution of {what} {id} has a NaN, infinite or negative probability \
                     (byte {}), which no CDF codes",
                    c[0] - 1
                );
            }
            let c: [u32; 257] = c.try_into().expect("257 counts");
            Cdf::from_cumulative(c, total_bits)
                .with_context(|| format!("the GPU's CDF of {what} {id}"))
        })
        .collect()
}

/// [`CdfQuantizer::quantize`] of each distribution, computed by `m1q_cdf` on `k`'s GPU (the
/// kernel every [`GpuInt8M1`] step ends with), for checking that kernel on chosen rows.
/// Refuses, naming the row, a distribution `quantize` refuses.
pub fn quantize_on_gpu(k: &GpuKernels, probs: &[Probs], q: &CdfQuantizer) -> Result<Vec<Cdf>> {
    if probs.is_empty() {
        return Ok(Vec::new());
    }
    let s = k.stream();
    let rows = probs.len();
    let flat: Vec<f32> = probs.iter().flatten().copied().collect();
    let dev = s.clone_htod(&flat)?;
    let mut cum = s.alloc_zeros::<u32>(rows * 257)?;
    launch_cdf(s, k.function(Entry::m1q_cdf), &mut cum, &dev, rows, q)?;
    let host = s.clone_dtoh(&cum)?;
    let ids: Vec<usize> = (0..rows).collect();
    cdfs_of(&host, q.total_bits(), "row", &ids)
}
