//! M1's exact inference path on the GPU (`kernels/m1_exact.cu`): many independent contexts
//! ("streams": Equal-Info windows, or whole `ac` chunks) advanced one position per step, with
//! the probabilities of [`ExactM1`] bit for bit (the numeric contract, `src/m1/mod.rs`).
//!
//! Guarantees: for every stream, the distribution returned after feeding bytes `b_0 .. b_k` since
//! its last [`reset`](GpuExactM1::reset) has the same bits as `ExactM1::start` followed by
//! `push(b_1) .. push(b_k)` on the CPU (the first byte fed must be [`WINDOW_START`](crate::m1::WINDOW_START) for that
//! equivalence; any byte is accepted), whatever the other streams do in the same step, and
//! whatever the order of the feeds. Refuses: a stream index out of range, a stream fed twice in
//! one step, a stream past its capacity (positions per stream, fixed at creation).
//!
//! Memory: `2 x layers x streams x slots x d_model x 4` bytes of key/value cache (m1-3m: 6 KiB
//! per slot), allocated once, where `slots = min(capacity, M1's context)`: attention looks back
//! over M1's sliding window only, so each stream's cache is a ring of that many positions; plus
//! per-step buffers for `streams` rows.
//!
//! **Not yet run on a GPU** (written on a machine without one); `tests/gpu_parity.rs` checks it
//! bit for bit against the CPU, on a GPU when one is present and on the CUDA emulator (`emu/`)
//! otherwise, where it passes.

use super::loader::GpuKernels;
use super::rope::DevRope;
use super::staging::Staged;
use super::Entry;
use crate::m1::{ExactM1, Probs};
use crate::numerics::{RopeTables, HEAD_DIM};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Threads per block of the attention and softmax kernels (the kernels assume a multiple of 32).
const BLOCK: u32 = 256;
/// Outputs per block of the matrix-vector kernel.
const MATVEC_BLOCK: u32 = 128;

struct LayerBufs {
    attn_norm: CudaSlice<f32>,
    qkv_t: CudaSlice<f32>,
    out_t: CudaSlice<f32>,
    mlp_norm: CudaSlice<f32>,
    up_t: CudaSlice<f32>,
    down_t: CudaSlice<f32>,
    keys: CudaSlice<f32>,
    values: CudaSlice<f32>,
}

struct Funcs {
    embed: CudaFunction,
    rmsnorm: CudaFunction,
    matvec: CudaFunction,
    rope: CudaFunction,
    append_kv: CudaFunction,
    attention: CudaFunction,
    softmax: CudaFunction,
}

/// The streams of a GPU M1 (both contracts'): each one's position since its reset, the positions
/// each may hold, and a step's feeds on the device, one row each: row `r` feeds byte
/// `row_token[r]` to stream `row_stream[r]` at its position `row_pos[r]`. The device
/// buffers stay at fixed addresses (a captured graph reads them), and the host stages each in a
/// page-locked buffer: a copy from pageable memory may hold the host until the device is idle,
/// one from page-locked memory is queued on the stream and returns.
pub(super) struct FeedBufs {
    pub(super) row_stream: CudaSlice<i32>,
    pub(super) row_token: CudaSlice<i32>,
    pub(super) row_pos: CudaSlice<i32>,
    staged: [Staged<i32>; 3],
    pos: Vec<usize>,
    capacity: usize,
}

impl FeedBufs {
    /// `streams` streams (at most one feed each per step) of up to `capacity` positions.
    pub(super) fn new(s: &Arc<CudaStream>, streams: usize, capacity: usize) -> Result<Self> {
        let rows = streams;
        let pinned = || {
            Staged::for_upload(s.context(), rows)
                .context("allocating page-locked host memory for the feeds")
        };
        Ok(FeedBufs {
            row_stream: s.alloc_zeros::<i32>(rows)?,
            row_token: s.alloc_zeros::<i32>(rows)?,
            row_pos: s.alloc_zeros::<i32>(rows)?,
            staged: [pinned()?, pinned()?, pinned()?],
            pos: vec![0; streams],
            capacity,
        })
    }

    pub(super) fn streams(&self) -> usize {
        self.pos.len()
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions fed to `stream` since its last reset.
    pub(super) fn position(&self, stream: usize) -> usize {
        self.pos[stream]
    }

    /// Empties `stream`'s context (its next feed is position 0).
    pub(super) fn reset(&mut self, stream: usize) {
        self.pos[stream] = 0;
    }

    /// Advances the streams of `feeds`, once their step is enqueued.
    pub(super) fn advance<T>(&mut self, feeds: &[(usize, T)]) {
        for &(st, _) in feeds {
            self.pos[st] += 1;
        }
    }

    /// Enqueues the upload of `feeds` (stream, token: a byte for M1) at their streams'
    /// positions, after refusing (uploading nothing) a stream out of range, fed twice, or already
    /// at its capacity. Does not wait for the device (only, in the staging buffers, for the
    /// previous upload's copies). The caller checks tokens against its vocabulary.
    pub(super) fn upload<T: Copy + Into<u32>>(
        &mut self,
        s: &Arc<CudaStream>,
        feeds: &[(usize, T)],
    ) -> Result<()> {
        let (pos, capacity) = (&self.pos, self.capacity);
        let mut seen = vec![false; pos.len()];
        for &(st, _) in feeds {
            ensure!(st < pos.len(), "stream {st} of {}", pos.len());
            ensure!(!seen[st], "stream {st} fed twice in one step");
            ensure!(
                pos[st] < capacity,
                "stream {st} is full ({capacity} positions)"
            );
            seen[st] = true;
        }
        let [ids, tokens, positions] = &mut self.staged;
        let (ids, tokens, positions) = (ids.host_mut()?, tokens.host_mut()?, positions.host_mut()?);
        for (r, &(st, token)) in feeds.iter().enumerate() {
            (ids[r], tokens[r], positions[r]) = (st as i32, token.into() as i32, pos[st] as i32);
        }
        let dev = [&mut self.row_stream, &mut self.row_token, &mut self.row_pos];
        for (host, dev) in self.staged.iter_mut().zip(dev) {
            // The whole buffer (a few KiB at most): rows past the feeds are never read.
            host.upload(s, dev)?;
        }
        Ok(())
    }
}

/// Per-step buffers, `streams` rows each.
struct StepBufs {
    feeds: FeedBufs,
    x: CudaSlice<f32>,
    h: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    att: CudaSlice<f32>,
    up: CudaSlice<f32>,
    probs: CudaSlice<f32>,
    scores: CudaSlice<f32>,
}

/// A batch of M1 contexts on the GPU (module docs).
pub struct GpuExactM1 {
    k: GpuKernels,
    f: Funcs,
    d: usize,
    ff: usize,
    eps: f32,
    layers: Vec<LayerBufs>,
    tok_emb: CudaSlice<f32>,
    final_norm: CudaSlice<f32>,
    head_t: CudaSlice<f32>,
    rope: DevRope,
    step: StepBufs,
    /// Ring slots per stream ([`ring_slots`]): also how far back a query attends.
    slots: usize,
    fingerprint: u64,
}

impl GpuExactM1 {
    /// `m1` on GPU 0 with `streams` contexts of up to `capacity` positions each (a window of n
    /// bytes takes n + 1: the start token and every byte but the last feed the model).
    pub fn new(m1: &ExactM1, streams: usize, capacity: usize) -> Result<Self> {
        ensure!(streams > 0 && capacity > 0, "no streams or no capacity");
        let k = GpuKernels::new(0)?;
        let f = Funcs {
            embed: k.function(Entry::m1x_embed).clone(),
            rmsnorm: k.function(Entry::m1x_rmsnorm).clone(),
            matvec: k.function(Entry::m1x_matvec).clone(),
            rope: k.function(Entry::m1x_rope).clone(),
            append_kv: k.function(Entry::m1x_append_kv).clone(),
            attention: k.function(Entry::m1x_attention).clone(),
            softmax: k.function(Entry::m1x_softmax).clone(),
        };
        let cfg = m1.config();
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let slots = ring_slots(cfg.context, capacity);
        let cells = cache_cells(streams, capacity, slots, d, ff)?;
        let s = k.stream().clone();
        let (tok_emb, layers, final_norm, head) = m1.lm().weights();
        let up = |x: &[f32]| s.clone_htod(x).context("uploading M1's weights");
        let layers = layers
            .iter()
            .map(|w| -> Result<LayerBufs> {
                Ok(LayerBufs {
                    attn_norm: up(&w.attn_norm)?,
                    qkv_t: up(&w.qkv.to_inputs_by_outputs())?,
                    out_t: up(&w.out.to_inputs_by_outputs())?,
                    mlp_norm: up(&w.mlp_norm)?,
                    up_t: up(&w.up.to_inputs_by_outputs())?,
                    down_t: up(&w.down.to_inputs_by_outputs())?,
                    keys: s
                        .alloc_zeros::<f32>(cells)
                        .context("allocating the key cache")?,
                    values: s
                        .alloc_zeros::<f32>(cells)
                        .context("allocating the value cache")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rope = RopeTables::new(capacity, cfg.rope_theta);
        let rows = streams;
        let step = StepBufs {
            feeds: FeedBufs::new(&s, streams, capacity)?,
            x: s.alloc_zeros::<f32>(rows * d)?,
            h: s.alloc_zeros::<f32>(rows * d)?,
            qkv: s.alloc_zeros::<f32>(rows * 3 * d)?,
            att: s.alloc_zeros::<f32>(rows * d)?,
            up: s.alloc_zeros::<f32>(rows * ff)?,
            probs: s.alloc_zeros::<f32>(rows * 256)?,
            scores: s
                .alloc_zeros::<f32>(rows * (d / HEAD_DIM) * slots)
                .context("allocating attention scratch")?,
        };
        Ok(GpuExactM1 {
            f,
            d,
            ff,
            eps: cfg.norm_eps,
            layers,
            tok_emb: up(tok_emb)?,
            final_norm: up(final_norm)?,
            head_t: up(&head.to_inputs_by_outputs())?,
            rope: DevRope::upload(&s, &rope)?,
            step,
            slots,
            fingerprint: m1.fingerprint(),
            k,
        })
    }

    stream_accessors!();

    /// Feeds each `(stream, byte)` and returns, in the same order, the distribution of each
    /// stream's next byte. Refuses (feeding nothing) a stream out of range, fed twice, or full.
    pub fn step(&mut self, feeds: &[(usize, u8)]) -> Result<Vec<Probs>> {
        let rows = feeds.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let s = self.k.stream().clone();
        self.step.feeds.upload(&s, feeds)?;
        self.enqueue(rows)?;
        let probs = download_probs(&s, &self.step.probs, rows)?;
        self.step.feeds.advance(feeds);
        Ok(probs)
    }

    /// Enqueues one position for the first `rows` rows of the step buffers.
    fn enqueue(&mut self, rows: usize) -> Result<()> {
        let d = self.d;
        let s = self.k.stream().clone();
        // Fits: slots <= capacity, checked to fit an int at creation.
        let (rows_i, di, slots_i, eps) = (rows as i32, d as i32, self.slots as i32, self.eps);
        let (f, b) = (&self.f, &mut self.step);
        // One thread per (row, channel); embed, rope (one per rotated pair) and the cache append.
        let elementwise = grid(rows * d, BLOCK);
        // One block per row: RMSNorm (thread 0 runs the chain) and the softmax.
        let per_row = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // One block per (row, head): attention.
        let per_head = LaunchConfig {
            grid_dim: (rows as u32, (d / HEAD_DIM) as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = s.launch_builder(&f.embed);
        l.arg(&mut b.x)
            .arg(&self.tok_emb)
            .arg(&b.feeds.row_token)
            .arg(&rows_i)
            .arg(&di);
        unsafe { l.launch(elementwise) }?;
        for w in &mut self.layers {
            let mut l = s.launch_builder(&f.rmsnorm);
            l.arg(&mut b.h)
                .arg(&b.x)
                .arg(&w.attn_norm)
                .arg(&di)
                .arg(&eps);
            unsafe { l.launch(per_row) }?;
            matvec(&s, &f.matvec, rows, &mut b.qkv, &b.h, &w.qkv_t, d, 3 * d, 0)?;
            rotate_rows(
                &s,
                &f.rope,
                &self.rope,
                &mut b.qkv,
                &b.feeds.row_pos,
                rows,
                d,
            )?;
            let mut l = s.launch_builder(&f.append_kv);
            l.arg(&mut w.keys)
                .arg(&mut w.values)
                .arg(&b.qkv)
                .arg(&b.feeds.row_stream);
            l.arg(&b.feeds.row_pos).arg(&rows_i).arg(&di).arg(&slots_i);
            unsafe { l.launch(elementwise) }?;
            let mut l = s.launch_builder(&f.attention);
            l.arg(&mut b.att)
                .arg(&b.qkv)
                .arg(&w.keys)
                .arg(&w.values)
                .arg(&mut b.scores);
            l.arg(&b.feeds.row_stream)
                .arg(&b.feeds.row_pos)
                .arg(&di)
                .arg(&slots_i);
            unsafe { l.launch(per_head) }?;
            matvec(&s, &f.matvec, rows, &mut b.x, &b.att, &w.out_t, d, d, 1)?;
            let mut l = s.launch_builder(&f.rmsnorm);
            l.arg(&mut b.h)
                .arg(&b.x)
                .arg(&w.mlp_norm)
                .arg(&di)
                .arg(&eps);
            unsafe { l.launch(per_row) }?;
            matvec(&s, &f.matvec, rows, &mut b.up, &b.h, &w.up_t, d, self.ff, 2)?;
            matvec(
                &s, &f.matvec, rows, &mut b.x, &b.up, &w.down_t, self.ff, d, 1,
            )?;
        }
        let mut l = s.launch_builder(&f.rmsnorm);
        l.arg(&mut b.h)
            .arg(&b.x)
            .arg(&self.final_norm)
            .arg(&di)
            .arg(&eps);
        unsafe { l.launch(per_row) }?;
        matvec(
            &s,
            &f.matvec,
            rows,
            &mut b.probs,
            &b.h,
            &self.head_t,
            d,
            256,
            0,
        )?;
        let v = 256i32;
        let mut l = s.launch_builder(&f.softmax);
        l.arg(&mut b.probs).arg(&v);
        unsafe { l.launch(per_row) }?;
        Ok(())
    }
}

/// The public stream accessors of a GPU M1 (both contracts'), from its `fingerprint` and its
/// [`FeedBufs`] (`step.feeds`).
macro_rules! stream_accessors {
    () => {
        /// The fingerprint of the M1 this was built from.
        pub fn fingerprint(&self) -> u64 {
            self.fingerprint
        }

        pub fn streams(&self) -> usize {
            self.step.feeds.streams()
        }

        pub fn capacity(&self) -> usize {
            self.step.feeds.capacity()
        }

        /// Positions fed to `stream` since its last reset.
        pub fn position(&self, stream: usize) -> usize {
            self.step.feeds.position(stream)
        }

        /// Empties `stream`'s context (its next feed is position 0).
        pub fn reset(&mut self, stream: usize) {
            self.step.feeds.reset(stream)
        }
    };
}
pub(super) use stream_accessors;

/// The first `rows` distributions of `probs` (`[rows][256]`), once the stream has run.
pub(super) fn download_probs(
    s: &Arc<CudaStream>,
    probs: &CudaSlice<f32>,
    rows: usize,
) -> Result<Vec<Probs>> {
    let mut host = vec![0f32; rows * 256];
    s.memcpy_dtoh(&probs.slice(..rows * 256), &mut host)?;
    s.synchronize()?;
    Ok(host
        .chunks_exact(256)
        .map(|c| c.try_into().expect("256 floats"))
        .collect())
}

/// Cells (`streams x slots x d`) of one layer's key or value cache for a GPU M1 of `streams`
/// contexts of up to `capacity` positions, `slots` ring slots each; refuses a `d` (d_model)
/// that is not whole heads and sizes past the kernels' `int` arguments (`ff`: d_ff).
pub(super) fn cache_cells(
    streams: usize,
    capacity: usize,
    slots: usize,
    d: usize,
    ff: usize,
) -> Result<usize> {
    ensure!(
        d.is_multiple_of(HEAD_DIM),
        "d_model {d} is not a multiple of {HEAD_DIM}"
    );
    let cells = streams
        .checked_mul(slots)
        .and_then(|c| c.checked_mul(d))
        .ok_or_else(|| anyhow!("{streams} streams x {capacity} positions is too large"))?;
    ensure!(
        i32::try_from(capacity).is_ok() && i32::try_from(streams * 3 * d.max(ff)).is_ok(),
        "{streams} streams x {capacity} positions do not fit the kernels' int arguments"
    );
    Ok(cells)
}

/// Key/value slots per stream: M1's `context` (`None`: unbounded), or fewer when no stream can
/// reach that many positions. A position's query attends over the ring, so it holds exactly the
/// window.
pub(super) fn ring_slots(context: Option<usize>, capacity: usize) -> usize {
    capacity.min(context.unwrap_or(usize::MAX))
}

/// `ceil(n / block)` blocks of `block` threads.
pub(super) fn grid(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(block as usize).max(1) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rotary position embedding on the query and key thirds of `rows` rows of `qkv` (`3 d` wide),
/// each row at its position in `row_pos`, with the kernel `f` (`m1x_rope`): one thread per (row,
/// pair of a head's dimensions), `ceil(rows d / BLOCK)` blocks.
pub(super) fn rotate_rows(
    s: &Arc<CudaStream>,
    f: &CudaFunction,
    rope: &DevRope,
    qkv: &mut CudaSlice<f32>,
    row_pos: &CudaSlice<i32>,
    rows: usize,
    d: usize,
) -> Result<()> {
    let (rows_i, di) = (rows as i32, d as i32);
    let mut l = s.launch_builder(f);
    l.arg(qkv).arg(&rope.cos).arg(&rope.sin).arg(row_pos);
    l.arg(&rows_i).arg(&di);
    unsafe { l.launch(grid(rows * d, BLOCK)) }?;
    Ok(())
}

/// `y[r] (=, +=, = relu) x[r] W` for `rows` rows (`mode` 0, 1, 2): a grid of
/// (ceil(n / MATVEC_BLOCK), rows) blocks, the row's `k` inputs in shared memory.
#[allow(clippy::too_many_arguments)]
fn matvec(
    s: &Arc<CudaStream>,
    f: &CudaFunction,
    rows: usize,
    y: &mut CudaSlice<f32>,
    x: &CudaSlice<f32>,
    w_t: &CudaSlice<f32>,
    k: usize,
    n: usize,
    mode: i32,
) -> Result<()> {
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(MATVEC_BLOCK as usize) as u32, rows as u32, 1),
        block_dim: (MATVEC_BLOCK, 1, 1),
        shared_mem_bytes: (k * 4) as u32,
    };
    let (ki, ni) = (k as i32, n as i32);
    let mut l = s.launch_builder(f);
    l.arg(y).arg(x).arg(w_t).arg(&ki).arg(&ni).arg(&mode);
    unsafe { l.launch(cfg) }?;
    Ok(())
}
