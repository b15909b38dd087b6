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
//! It is [`GpuInt8Model`] at vocabulary 256 with a softmax and the CDFs after its logits: a step
//! feeding every stream, the steady state of coding, is a CUDA graph from the second such step
//! on; other row counts launch eagerly.
//!
//! Memory: `2 x layers x streams x slots x (d_model + 4 heads)` bytes of int8 key/value cache
//! with their exponents (m1-3m: 1.6 KiB per slot, a quarter of contract 2's), allocated once,
//! `slots = min(capacity, M1's context)`; plus per-step buffers for `streams` rows.
//!
//! **Not yet run on a GPU** (written on a machine without one); `tests/gpu_parity.rs` checks it
//! bit for bit against the CPU, on a GPU when one is present and on the CUDA emulator otherwise.

use super::exact_m1::{download_probs, ring_slots};
use super::int8_model::{per_row, Fusion, GpuInt8Model};
use super::loader::GpuKernels;
use super::staging::Staged;
use super::Entry;
use crate::coder::{Cdf, CdfQuantizer};
use crate::m1::{Int8M1, M1Batch, PendingStep, Probs};
use crate::numerics::HEAD_DIM;
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, PushKernelArg};
use std::sync::Arc;

/// Most streams [`GpuInt8M1::for_chunks`] gives a batch: the top of the range the roofline
/// (docs/gpu-m1-roofline.md) predicts for, where Equal-Info passes 10M positions/s.
pub const MAX_STREAMS: usize = 8192;

/// A batch of contract-3 M1 contexts on the GPU (module docs).
pub struct GpuInt8M1 {
    model: GpuInt8Model,
    softmax: CudaFunction,
    cdf: CudaFunction,
    /// The rows' integer CDFs (`[rows][257]`, `m1q_cdf`) and their page-locked host copy, which
    /// the device writes while the host goes on ([`GpuInt8M1::collect`] waits for it).
    cum: CudaSlice<u32>,
    cum_host: Staged<u32>,
    fingerprint: u64,
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
        let model = GpuInt8Model::new(m1.lm(), streams, capacity, Fusion::Separate)?;
        let k = model.kernels();
        let s = k.stream().clone();
        Ok(GpuInt8M1 {
            softmax: k.function(Entry::m1q_softmax).clone(),
            cdf: k.function(Entry::m1q_cdf).clone(),
            cum: s.alloc_zeros::<u32>(streams * 257)?,
            cum_host: Staged::for_download(k.context(), streams * 257)
                .context("allocating page-locked host memory for the CDFs")?,
            fingerprint: m1.fingerprint(),
            pending: PendingStep::default(),
            model,
        })
    }

    /// For coding chunks of up to `chunk_bytes` bytes: as many streams as a key/value cache of
    /// `cache_bytes` holds, 1 to [`MAX_STREAMS`] (a batch of fewer than one stream's cache still
    /// gets one).
    pub fn for_chunks(m1: &Int8M1, chunk_bytes: usize, cache_bytes: usize) -> Result<Self> {
        let cfg = m1.config();
        // An Equal-Info window of the whole chunk takes chunk_bytes + 1 positions.
        let capacity = chunk_bytes + 1;
        let slots = ring_slots(Some(m1.lm().context()), capacity);
        let per_stream = 2 * cfg.n_layers * slots * (cfg.d_model + 4 * cfg.d_model / HEAD_DIM);
        Self::new(
            m1,
            (cache_bytes / per_stream).clamp(1, MAX_STREAMS),
            capacity,
        )
    }

    /// The fingerprint of the M1 this was built from.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn streams(&self) -> usize {
        self.model.streams()
    }

    pub fn capacity(&self) -> usize {
        self.model.capacity()
    }

    /// Positions fed to `stream` since its last reset.
    pub fn position(&self, stream: usize) -> usize {
        self.model.position(stream)
    }

    /// Empties `stream`'s context (its next feed is position 0).
    pub fn reset(&mut self, stream: usize) {
        self.model.reset(stream)
    }

    /// Feeds each `(stream, byte)` and returns, in the same order, the distribution of each
    /// stream's next byte. Refuses (feeding nothing) a stream out of range, fed twice, or full.
    pub fn step(&mut self, feeds: &[(usize, u8)]) -> Result<Vec<Probs>> {
        let rows = feeds.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        self.launch_step(feeds)?;
        download_probs(self.model.kernels().stream(), self.model.logits(), rows)
    }

    /// Whether the step over every stream is held as a CUDA graph (from the second such step on).
    pub fn graph_active(&self) -> bool {
        self.model.graph_active()
    }

    /// Starts a step (module docs; [`M1Batch::submit`]): enqueues the feeds' upload, the model,
    /// `m1q_cdf` and the CDFs' download, and returns without waiting for the device.
    pub fn submit(&mut self, feeds: &[(usize, u8)], quantizer: &CdfQuantizer) -> Result<()> {
        self.pending.ensure_idle()?;
        let rows = feeds.len();
        if rows > 0 {
            self.launch_step(feeds)?;
            let s = self.model.kernels().stream().clone();
            let probs = self.model.logits();
            launch_cdf(&s, &self.cdf, &mut self.cum, probs, rows, quantizer)?;
            self.cum_host.download(&s, &self.cum.slice(..rows * 257))?;
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
        let cum = self.cum_host.read()?;
        cdfs_of(&cum[..rows * 257], done.total_bits, "stream", &done.streams)
    }

    /// The model's step for `feeds` (refusing bad ones, nothing enqueued then), then the softmax
    /// of its rows' logits in place: the rows' distributions.
    fn launch_step(&mut self, feeds: &[(usize, u8)]) -> Result<()> {
        self.model.feed(feeds)?;
        let s = self.model.kernels().stream().clone();
        let v = 256i32;
        let mut l = s.launch_builder(&self.softmax);
        l.arg(self.model.logits_mut()).arg(&v);
        unsafe { l.launch(per_row(feeds.len())) }?;
        Ok(())
    }
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

    fn runs_on_the_cpu_pool(&self) -> bool {
        false // the CUDA context is the caller's thread's
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
