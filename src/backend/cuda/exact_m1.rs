//! M1's exact inference path on the GPU (`kernels/m1_exact.cu`): many independent contexts
//! ("streams": Equal-Info windows, or whole `ac` chunks) advanced one position per step, with
//! the probabilities of [`ExactM1`] bit for bit (the numeric contract, `src/m1/mod.rs`).
//!
//! Guarantees: for every stream, the distribution returned after feeding bytes `b_0 .. b_k` since
//! its last [`reset`](GpuExactM1::reset) has the same bits as `ExactM1::start` followed by
//! `push(b_1) .. push(b_k)` on the CPU (the first byte fed must be [`WINDOW_START`] for that
//! equivalence; any byte is accepted), whatever the other streams do in the same step, and
//! whatever the order of the feeds. Refuses: a stream index out of range, a stream fed twice in
//! one step, a stream past its capacity (positions per stream, fixed at creation).
//!
//! Memory: `2 x layers x streams x capacity x d_model x 4` bytes of key/value cache (m1-3m: 6 KiB
//! per position), allocated once; plus per-step buffers for `streams` rows.
//!
//! **Not yet run on a GPU** (written on a machine without one); `tests/gpu_parity.rs` checks it
//! bit for bit against the CPU when a GPU is present.

use super::loader::GpuKernels;
use crate::backend::cpu::rope::{RopeTables, HEAD_DIM};
use crate::m1::{ExactM1, Probs};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{
    CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

/// GPU memory [`GpuExactM1::for_chunks`] gives the key/value caches (m1-3m at 10,240-byte
/// chunks: 60 MiB per stream, 409 streams).
pub const CACHE_BUDGET: usize = 24 << 30;

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

/// Per-step buffers, `streams` rows each.
struct StepBufs {
    row_stream: CudaSlice<i32>,
    row_token: CudaSlice<i32>,
    row_pos: CudaSlice<i32>,
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
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    step: StepBufs,
    capacity: usize,
    pos: Vec<usize>,
    fingerprint: u64,
}

impl GpuExactM1 {
    /// `m1` on GPU 0 with `streams` contexts of up to `capacity` positions each (a window of n
    /// bytes takes n + 1: the start token and every byte but the last feed the model).
    pub fn new(m1: &ExactM1, streams: usize, capacity: usize) -> Result<Self> {
        ensure!(streams > 0 && capacity > 0, "no streams or no capacity");
        let k = GpuKernels::new(0)?;
        let module = k
            .module("m1_exact")
            .ok_or_else(|| anyhow!("kernels/m1_exact.cu is not embedded in this binary"))?
            .clone();
        let load = |name: &str| {
            module
                .load_function(name)
                .with_context(|| format!("kernel {name} in kernels/m1_exact.cu"))
        };
        let f = Funcs {
            embed: load("m1x_embed")?,
            rmsnorm: load("m1x_rmsnorm")?,
            matvec: load("m1x_matvec")?,
            rope: load("m1x_rope")?,
            append_kv: load("m1x_append_kv")?,
            attention: load("m1x_attention")?,
            softmax: load("m1x_softmax")?,
        };
        let cfg = m1.config();
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        ensure!(
            d % HEAD_DIM == 0,
            "d_model {d} is not a multiple of {HEAD_DIM}"
        );
        let cells = streams
            .checked_mul(capacity)
            .and_then(|c| c.checked_mul(d))
            .ok_or_else(|| anyhow!("{streams} streams x {capacity} positions is too large"))?;
        ensure!(
            i32::try_from(capacity).is_ok() && i32::try_from(streams * 3 * d.max(ff)).is_ok(),
            "{streams} streams x {capacity} positions do not fit the kernels' int arguments"
        );
        let s = k.stream().clone();
        let (tok_emb, layers, final_norm, head_t) = m1.lm().weights();
        let up = |x: &[f32]| s.clone_htod(x).context("uploading M1's weights");
        let layers = layers
            .iter()
            .map(|w| -> Result<LayerBufs> {
                Ok(LayerBufs {
                    attn_norm: up(&w.attn_norm)?,
                    qkv_t: up(&w.qkv_t)?,
                    out_t: up(&w.out_t)?,
                    mlp_norm: up(&w.mlp_norm)?,
                    up_t: up(&w.up_t)?,
                    down_t: up(&w.down_t)?,
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
            row_stream: s.alloc_zeros::<i32>(rows)?,
            row_token: s.alloc_zeros::<i32>(rows)?,
            row_pos: s.alloc_zeros::<i32>(rows)?,
            x: s.alloc_zeros::<f32>(rows * d)?,
            h: s.alloc_zeros::<f32>(rows * d)?,
            qkv: s.alloc_zeros::<f32>(rows * 3 * d)?,
            att: s.alloc_zeros::<f32>(rows * d)?,
            up: s.alloc_zeros::<f32>(rows * ff)?,
            probs: s.alloc_zeros::<f32>(rows * 256)?,
            scores: s
                .alloc_zeros::<f32>(rows * (d / HEAD_DIM) * capacity)
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
            head_t: up(head_t)?,
            cos: up(&rope.cos)?,
            sin: up(&rope.sin)?,
            step,
            capacity,
            pos: vec![0; streams],
            fingerprint: m1.fingerprint(),
            k,
        })
    }

    /// For coding chunks of up to `chunk_bytes` bytes (`ac`): as many streams as a
    /// [`CACHE_BUDGET`]-byte key/value cache holds (1 to 1,024).
    pub fn for_chunks(m1: &ExactM1, chunk_bytes: usize) -> Result<Self> {
        let cfg = m1.config();
        let per_stream = 2 * cfg.n_layers * chunk_bytes.max(1) * cfg.d_model * 4;
        let streams = (CACHE_BUDGET / per_stream).clamp(1, 1024);
        Self::new(m1, streams, chunk_bytes.max(1))
    }

    /// The fingerprint of the M1 this was built from ([`ExactM1::fingerprint`]).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn streams(&self) -> usize {
        self.pos.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions fed to `stream` since its last reset.
    pub fn position(&self, stream: usize) -> usize {
        self.pos[stream]
    }

    /// Empties `stream`'s context (its next feed is position 0).
    pub fn reset(&mut self, stream: usize) {
        self.pos[stream] = 0;
    }

    /// Feeds each `(stream, byte)` and returns, in the same order, the distribution of each
    /// stream's next byte. Refuses (feeding nothing) a stream out of range, fed twice, or full.
    pub fn step(&mut self, feeds: &[(usize, u8)]) -> Result<Vec<Probs>> {
        let rows = feeds.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let mut seen = vec![false; self.streams()];
        for &(st, _) in feeds {
            ensure!(st < self.streams(), "stream {st} of {}", self.streams());
            ensure!(!seen[st], "stream {st} fed twice in one step");
            ensure!(
                self.pos[st] < self.capacity,
                "stream {st} is full ({} positions)",
                self.capacity
            );
            seen[st] = true;
        }
        let ids: Vec<i32> = feeds.iter().map(|&(st, _)| st as i32).collect();
        let tokens: Vec<i32> = feeds.iter().map(|&(_, b)| b as i32).collect();
        let positions: Vec<i32> = feeds.iter().map(|&(st, _)| self.pos[st] as i32).collect();
        let s = self.k.stream().clone();
        s.memcpy_htod(&ids, &mut self.step.row_stream.slice_mut(..rows))?;
        s.memcpy_htod(&tokens, &mut self.step.row_token.slice_mut(..rows))?;
        s.memcpy_htod(&positions, &mut self.step.row_pos.slice_mut(..rows))?;
        self.enqueue(rows)?;
        let mut host = vec![0f32; rows * 256];
        s.memcpy_dtoh(&self.step.probs.slice(..rows * 256), &mut host)?;
        s.synchronize()?;
        for &(st, _) in feeds {
            self.pos[st] += 1;
        }
        Ok(host
            .chunks_exact(256)
            .map(|c| c.try_into().expect("256 floats"))
            .collect())
    }

    /// Enqueues one position for the first `rows` rows of the step buffers.
    fn enqueue(&mut self, rows: usize) -> Result<()> {
        let (d, ff) = (self.d, self.ff);
        let heads = d / HEAD_DIM;
        let s = self.k.stream().clone();
        let (di, capi) = (d as i32, self.capacity as i32);
        let rows_i = rows as i32;
        let b = &mut self.step;
        // one thread per (row, channel)
        let elementwise = grid(rows * d, BLOCK);
        let per_row = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        {
            let (x, _g0) = b.x.device_ptr_mut(&s);
            let (emb, _g1) = self.tok_emb.device_ptr(&s);
            let (tok, _g2) = b.row_token.device_ptr(&s);
            let mut l = s.launch_builder(&self.f.embed);
            l.arg(&x).arg(&emb).arg(&tok).arg(&rows_i).arg(&di);
            unsafe { l.launch(elementwise) }?;
        }
        for w in &mut self.layers {
            rmsnorm(
                &s,
                &self.f.rmsnorm,
                per_row,
                &mut b.h,
                &b.x,
                &w.attn_norm,
                di,
                self.eps,
            )?;
            matvec(
                &s,
                &self.f.matvec,
                rows,
                &mut b.qkv,
                &b.h,
                &w.qkv_t,
                d,
                3 * d,
                0,
            )?;
            {
                let (qkv, _g0) = b.qkv.device_ptr_mut(&s);
                let (c, _g1) = self.cos.device_ptr(&s);
                let (sn, _g2) = self.sin.device_ptr(&s);
                let (pos, _g3) = b.row_pos.device_ptr(&s);
                let mut l = s.launch_builder(&self.f.rope);
                l.arg(&qkv).arg(&c).arg(&sn).arg(&pos).arg(&rows_i).arg(&di);
                unsafe { l.launch(elementwise) }?;
            }
            {
                let (kc, _g0) = w.keys.device_ptr_mut(&s);
                let (vc, _g1) = w.values.device_ptr_mut(&s);
                let (qkv, _g2) = b.qkv.device_ptr(&s);
                let (ids, _g3) = b.row_stream.device_ptr(&s);
                let (pos, _g4) = b.row_pos.device_ptr(&s);
                let mut l = s.launch_builder(&self.f.append_kv);
                l.arg(&kc)
                    .arg(&vc)
                    .arg(&qkv)
                    .arg(&ids)
                    .arg(&pos)
                    .arg(&rows_i)
                    .arg(&di)
                    .arg(&capi);
                unsafe { l.launch(elementwise) }?;
            }
            {
                // one block of BLOCK threads per (row, head)
                let cfg = LaunchConfig {
                    grid_dim: (rows as u32, heads as u32, 1),
                    block_dim: (BLOCK, 1, 1),
                    shared_mem_bytes: 0,
                };
                let (att, _g0) = b.att.device_ptr_mut(&s);
                let (qkv, _g1) = b.qkv.device_ptr(&s);
                let (kc, _g2) = w.keys.device_ptr(&s);
                let (vc, _g3) = w.values.device_ptr(&s);
                let (sc, _g4) = b.scores.device_ptr_mut(&s);
                let (ids, _g5) = b.row_stream.device_ptr(&s);
                let (pos, _g6) = b.row_pos.device_ptr(&s);
                let mut l = s.launch_builder(&self.f.attention);
                l.arg(&att)
                    .arg(&qkv)
                    .arg(&kc)
                    .arg(&vc)
                    .arg(&sc)
                    .arg(&ids)
                    .arg(&pos)
                    .arg(&di)
                    .arg(&capi);
                unsafe { l.launch(cfg) }?;
            }
            matvec(
                &s,
                &self.f.matvec,
                rows,
                &mut b.x,
                &b.att,
                &w.out_t,
                d,
                d,
                1,
            )?;
            rmsnorm(
                &s,
                &self.f.rmsnorm,
                per_row,
                &mut b.h,
                &b.x,
                &w.mlp_norm,
                di,
                self.eps,
            )?;
            matvec(&s, &self.f.matvec, rows, &mut b.up, &b.h, &w.up_t, d, ff, 2)?;
            matvec(
                &s,
                &self.f.matvec,
                rows,
                &mut b.x,
                &b.up,
                &w.down_t,
                ff,
                d,
                1,
            )?;
        }
        rmsnorm(
            &s,
            &self.f.rmsnorm,
            per_row,
            &mut b.h,
            &b.x,
            &self.final_norm,
            di,
            self.eps,
        )?;
        matvec(
            &s,
            &self.f.matvec,
            rows,
            &mut b.probs,
            &b.h,
            &self.head_t,
            d,
            256,
            0,
        )?;
        let (p, _g) = b.probs.device_ptr_mut(&s);
        let v = 256i32;
        let mut l = s.launch_builder(&self.f.softmax);
        l.arg(&p).arg(&v);
        unsafe { l.launch(per_row) }?;
        Ok(())
    }
}

/// `ceil(n / block)` blocks of `block` threads.
fn grid(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(block as usize).max(1) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `out[r] = rmsnorm(x[r]) g`, one block per row.
#[allow(clippy::too_many_arguments)]
fn rmsnorm(
    s: &std::sync::Arc<cudarc::driver::CudaStream>,
    f: &CudaFunction,
    per_row: LaunchConfig,
    out: &mut CudaSlice<f32>,
    x: &CudaSlice<f32>,
    g: &CudaSlice<f32>,
    d: i32,
    eps: f32,
) -> Result<()> {
    let (o, _g0) = out.device_ptr_mut(s);
    let (xp, _g1) = x.device_ptr(s);
    let (gp, _g2) = g.device_ptr(s);
    let mut l = s.launch_builder(f);
    l.arg(&o).arg(&xp).arg(&gp).arg(&d).arg(&eps);
    unsafe { l.launch(per_row) }?;
    Ok(())
}

/// `y[r] (=, +=, = relu) x[r] W` for `rows` rows (`mode` 0, 1, 2): a grid of
/// (ceil(n / MATVEC_BLOCK), rows) blocks, the row's `k` inputs in shared memory.
#[allow(clippy::too_many_arguments)]
fn matvec(
    s: &std::sync::Arc<cudarc::driver::CudaStream>,
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
    let (yp, _g0) = y.device_ptr_mut(s);
    let (xp, _g1) = x.device_ptr(s);
    let (wp, _g2) = w_t.device_ptr(s);
    let mut l = s.launch_builder(f);
    l.arg(&yp).arg(&xp).arg(&wp).arg(&ki).arg(&ni).arg(&mode);
    unsafe { l.launch(cfg) }?;
    Ok(())
}

impl crate::tokenize::ac::M1Batch for GpuExactM1 {
    fn streams(&self) -> usize {
        GpuExactM1::streams(self)
    }

    fn reset(&mut self, stream: usize) {
        GpuExactM1::reset(self, stream)
    }

    fn step(&mut self, feeds: &[(usize, u8)]) -> Result<Vec<Probs>> {
        GpuExactM1::step(self, feeds)
    }
}
