//! Matrix products with 4-bit weights: `out[r][o] = acc · (xs[r] · S[o])` in f32, where
//! `acc = Σ_g s[o][g] · Σ_{k in g} x[r][k] · w[o][k]` is an exact i32, with int8 inputs `x`
//! (`-127..=127`) scaled by `xs[r]`, weights `w` in `-8..=7`, one unsigned 8-bit sub-scale `s`
//! per output and group of [`GROUP`] inputs, and one f32 scale `S` per output.
//!
//! This is M2's weight format for the fastest CPU decoding (half of int8's weight bytes, which
//! bound a batch-1 step). Like [`super::int8`], the sums are integers, so every kernel, tiling
//! and thread split gives the same integers, and the one scaling after them the same bits; the
//! tests force each kernel the machine has and compare it with a plain loop. The kernels write
//! the f32 results themselves: at batch 1 a product allocates nothing the size of its output.
//!
//! **No overflow.** A group's sum has magnitude at most `32 · 8 · 127 = 32,512`; times a
//! sub-scale of at most 255 that is 8,290,560, and [`MAX_INPUTS`] = 8,192 inputs (256 groups)
//! keep the whole sum below `2^31` (2,122,383,360). [`I4Matrix::from_rows`] refuses anything
//! wider.
//!
//! **Layout.** Outputs go in blocks of [`BLOCK`] (one AVX2 register of i32); a block's weights
//! for one group are 128 bytes: chunk `c` (32 bytes) holds, at byte `4i + t`, output `i`'s input
//! `8c + t` in its low nibble and input `8c + 4 + t` in its high nibble, each stored as `w + 8`
//! (`0..=15`). A block's 8 sub-scales for the group follow in a separate array. Outputs past `n`
//! and inputs past `inp` are padding with weight 0 and sub-scale 0.
//!
//! **AVX2.** `vpmaddubsw` multiplies the unsigned codes `w + 8` by the signed inputs and adds
//! pairs (at most `2 · 15 · 127 = 3,810`); eight of those, one group, add in i16 without
//! overflow (30,480). Subtracting `8 · Σ x` over the pair's inputs turns `w + 8` back into `w`
//! (the i16 lanes may wrap on the way, but the exact result, at most `16 · 8 · 127` in
//! magnitude, fits, and wrapping arithmetic is exact modulo 2^16); `vpmaddwd` by the sub-scale
//! then adds the two halves of each output into i32. That is 9 multiplies per 256
//! multiply-adds where the int8 kernel needs 16.
//!
//! **Cost model.** A batch-1 product reads `n · inp / 2` code bytes and `n · inp / 32` scale
//! bytes: 4.25 bits per weight, so at batch 1 (bound by memory) a step takes about 53% of
//! int8's time.

use super::columns::by_column_runs;
use super::int8::I8Kernel;
use rayon::prelude::*;

/// Inputs per sub-scale.
pub const GROUP: usize = 32;
/// Outputs per block: one AVX2 register of i32 accumulators.
pub const BLOCK: usize = 8;
/// Code bytes of one block and one group.
const BLOCK_GROUP_BYTES: usize = BLOCK * GROUP / 2;
/// Rows per tile: each weight unpacked serves this many rows.
const TILE_ROWS: usize = 4;
/// The widest input whose sums fit an i32 (module docs).
pub const MAX_INPUTS: usize = 8192;
/// The weight range: `-8..=7`.
pub const W_MIN: i8 = -8;
pub const W_MAX: i8 = 7;
/// Products smaller than this many multiply-adds run on the calling thread.
const SERIAL_MACS: usize = 1 << 16;

/// A 4-bit weight matrix of `n` outputs and `inp` inputs with 8-bit sub-scales per group and
/// an f32 scale per output, packed for [`matmul_i4_with`].
#[derive(Clone, Debug)]
pub struct I4Matrix {
    n: usize,
    inp: usize,
    /// Groups per output (`inp` rounded up to whole groups).
    groups: usize,
    /// Codes `w + 8`, two per byte, `[block][group][128 bytes]` (module docs).
    codes: Vec<u8>,
    /// Sub-scales, `[block][group][BLOCK]`.
    subs: Vec<u8>,
    /// `S[o]`, padded with zeros to whole blocks.
    scale: Vec<f32>,
}

impl I4Matrix {
    /// Packs `w` (the model's `[n, inp]` layout, values in `-8..=7`) with sub-scales `s`
    /// (`[n][inp / GROUP rounded up]`) and output scales `scale` (`[n]`). Refuses an `inp` of 0
    /// or above [`MAX_INPUTS`], shapes that do not match, and weights outside `-8..=7`.
    pub fn from_rows(
        w: &[i8],
        s: &[u8],
        scale: &[f32],
        n: usize,
        inp: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            inp > 0 && inp <= MAX_INPUTS,
            "inputs: {inp} must be in 1..={MAX_INPUTS}"
        );
        let groups = inp.div_ceil(GROUP);
        anyhow::ensure!(
            w.len() == n * inp && s.len() == n * groups && scale.len() == n,
            "int4 weights: {} values, {} sub-scales and {} scales for {n} x {inp}",
            w.len(),
            s.len(),
            scale.len()
        );
        anyhow::ensure!(
            w.iter().all(|v| (W_MIN..=W_MAX).contains(v)),
            "int4 weights must lie in {W_MIN}..={W_MAX}"
        );
        let blocks = n.div_ceil(BLOCK);
        let mut codes = vec![0x88u8; blocks * groups * BLOCK_GROUP_BYTES];
        let mut subs = vec![0u8; blocks * groups * BLOCK];
        for o in 0..n {
            for k in 0..inp {
                let (at, high) = Self::at(groups, o, k);
                let code = (w[o * inp + k] + 8) as u8;
                let b = &mut codes[at];
                *b = if high {
                    (*b & 0x0F) | code << 4
                } else {
                    (*b & 0xF0) | code
                };
            }
            for g in 0..groups {
                subs[((o / BLOCK) * groups + g) * BLOCK + o % BLOCK] = s[o * groups + g];
            }
        }
        let mut padded = scale.to_vec();
        padded.resize(blocks * BLOCK, 0.0);
        Ok(I4Matrix {
            n,
            inp,
            groups,
            codes,
            subs,
            scale: padded,
        })
    }

    /// The byte holding `w[o][k]` and whether it is the high nibble (module docs).
    fn at(groups: usize, o: usize, k: usize) -> (usize, bool) {
        let (b, i, g, j) = (o / BLOCK, o % BLOCK, k / GROUP, k % GROUP);
        let (c, high, t) = (j / 8, j % 8 >= 4, j % 4);
        let at = (b * groups + g) * BLOCK_GROUP_BYTES + c * 32 + 4 * i + t;
        (at, high)
    }

    /// Output `o`'s weights, unpacked (`inp` of them).
    pub fn row(&self, o: usize) -> Vec<i8> {
        assert!(o < self.n, "output {o} of {}", self.n);
        (0..self.inp)
            .map(|k| {
                let (at, high) = Self::at(self.groups, o, k);
                let b = self.codes[at];
                (if high { b >> 4 } else { b & 0x0F }) as i8 - 8
            })
            .collect()
    }

    /// Output `o`'s sub-scales, one per group.
    pub fn sub_scales(&self, o: usize) -> Vec<u8> {
        assert!(o < self.n, "output {o} of {}", self.n);
        let (b, i) = (o / BLOCK, o % BLOCK);
        (0..self.groups)
            .map(|g| self.subs[(b * self.groups + g) * BLOCK + i])
            .collect()
    }

    /// The output scales `S[o]`.
    pub fn scales(&self) -> &[f32] {
        &self.scale[..self.n]
    }

    pub fn outputs(&self) -> usize {
        self.n
    }

    pub fn inputs(&self) -> usize {
        self.inp
    }

    fn blocks(&self) -> usize {
        self.n.div_ceil(BLOCK)
    }
}

/// Inputs prepared for the kernels: rows padded with zeros to whole groups and whole tiles of
/// rows, and per row and group the correction `8 · Σ x` over each half of the `vpmaddubsw`
/// pairs (inputs `4j, 4j + 1` in the low i16, `4j + 2, 4j + 3` in the high), packed as one i32.
struct Inputs<'a> {
    x: Vec<i8>,
    corr: Vec<i32>,
    /// Each row's scale `xs[r]`.
    scale: &'a [f32],
}

impl<'a> Inputs<'a> {
    fn new(x: &[i8], scale: &'a [f32], inp: usize, groups: usize) -> Self {
        let rows = x.len() / inp;
        let stride = groups * GROUP;
        let padded_rows = rows.next_multiple_of(TILE_ROWS);
        let mut xp = vec![0i8; padded_rows * stride];
        for (p, r) in xp.chunks_exact_mut(stride).zip(x.chunks_exact(inp)) {
            p[..inp].copy_from_slice(r);
        }
        let corr = xp
            .chunks_exact(GROUP)
            .map(|g| {
                let half = |h: usize| -> i32 {
                    g.chunks_exact(4)
                        .map(|q| q[2 * h] as i32 + q[2 * h + 1] as i32)
                        .sum::<i32>()
                        * 8
                };
                (half(0) as u16 as u32 | (half(1) as u16 as u32) << 16) as i32
            })
            .collect();
        Inputs { x: xp, corr, scale }
    }
}

/// `out[r][o] = acc · (xs[r] · S[o])` (module docs) for every `inp`-wide row of `x` (`out`:
/// `[rows][n]`), with `kernel`'s instructions: AVX2 for every kernel but
/// [`I8Kernel::Portable`] (the machines with VNNI have AVX2 too). Panics on mismatched shapes,
/// a -128 in `x`, or a kernel this machine cannot run.
pub fn matmul_i4_with(kernel: I8Kernel, out: &mut [f32], x: &[i8], xs: &[f32], w: &I4Matrix) {
    assert!(kernel.runs_here(), "{} unavailable here", kernel.name());
    let (inp, n) = (w.inp, w.n);
    let rows = x.len() / inp;
    assert!(
        rows * inp == x.len() && rows * n == out.len() && xs.len() == rows,
        "matmul_i4 shapes"
    );
    assert!(
        !x.contains(&i8::MIN),
        "activations: -128 is outside -127..=127"
    );
    if rows == 0 {
        return;
    }
    let inputs = Inputs::new(x, xs, inp, w.groups);
    let blocks = w.blocks();
    let threads = rayon::current_num_threads();
    if rows * n * inp < SERIAL_MACS {
        columns(kernel, out, n, 0, &inputs, 0..rows, w, 0..blocks);
    } else if rows == 1 {
        // Batch 1: each task writes its own run of blocks straight into `out`.
        let per_task = blocks.div_ceil(4 * threads) * BLOCK;
        out.par_chunks_mut(per_task).enumerate().for_each(|(t, o)| {
            let b0 = t * per_task / BLOCK;
            let b1 = b0 + o.len().div_ceil(BLOCK);
            columns(kernel, o, o.len(), b0 * BLOCK, &inputs, 0..1, w, b0..b1);
        });
    } else if rows < 2 * TILE_ROWS * threads {
        // Few rows: tasks take runs of blocks for every row.
        by_column_runs(out, rows, n, BLOCK, |part, c0, b| {
            columns(kernel, part, part.len() / rows, c0, &inputs, 0..rows, w, b)
        });
    } else {
        // Many rows: tasks take runs of whole tiles of rows, every output.
        let task = rows.div_ceil(threads).next_multiple_of(TILE_ROWS);
        out.par_chunks_mut(task * n).enumerate().for_each(|(t, o)| {
            let r0 = t * task;
            let r1 = r0 + o.len() / n;
            columns(kernel, o, n, 0, &inputs, r0..r1, w, 0..blocks);
        });
    }
}

/// Rows `rows` of the product into `out` (`[rows][width]`, holding output columns
/// `c0..c0 + width`) for output `blocks`, which must lie in those columns.
#[allow(clippy::too_many_arguments)]
fn columns(
    kernel: I8Kernel,
    out: &mut [f32],
    width: usize,
    c0: usize,
    xs: &Inputs,
    rows: std::ops::Range<usize>,
    w: &I4Matrix,
    blocks: std::ops::Range<usize>,
) {
    let (groups, stride) = (w.groups, w.groups * GROUP);
    if blocks.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if rows.len() == 1 && kernel != I8Kernel::Portable {
        let (r, b0, b1) = (rows.start, blocks.start, blocks.end);
        let span = b0 * groups..b1 * groups;
        // SAFETY: as in `tile`; the slices hold exactly blocks `b0..b1` and row `r`.
        unsafe {
            x86::row_avx2(
                &xs.x[r * stride..(r + 1) * stride],
                &xs.corr[r * groups..(r + 1) * groups],
                xs.scale[r],
                &w.codes[span.start * BLOCK_GROUP_BYTES..span.end * BLOCK_GROUP_BYTES],
                &w.subs[span.start * BLOCK..span.end * BLOCK],
                &w.scale[b0 * BLOCK..b1 * BLOCK],
                &mut out[b0 * BLOCK - c0..(b1 * BLOCK).min(w.n) - c0],
            )
        };
        return;
    }
    for b in blocks {
        let codes = &w.codes[b * groups * BLOCK_GROUP_BYTES..][..groups * BLOCK_GROUP_BYTES];
        let subs = &w.subs[b * groups * BLOCK..][..groups * BLOCK];
        let scale: &[f32; BLOCK] = w.scale[b * BLOCK..][..BLOCK].try_into().unwrap();
        let cols = BLOCK.min(w.n - b * BLOCK);
        for r0 in rows.clone().step_by(TILE_ROWS) {
            let live = TILE_ROWS.min(rows.end - r0);
            let x = &xs.x[r0 * stride..(r0 + TILE_ROWS) * stride];
            let corr = &xs.corr[r0 * groups..(r0 + TILE_ROWS) * groups];
            let at = (r0 - rows.start) * width + b * BLOCK - c0;
            let dst = TileOut {
                out: &mut out[at..],
                width,
                cols,
                xs: &xs.scale[r0..r0 + live],
                scale,
            };
            tile(kernel, x, corr, groups, codes, subs, dst);
        }
    }
}

/// Where a tile's results go: row `i` (of the `xs.len()` live rows) at `out[i * width..]`, its
/// first `cols` outputs `acc · (xs[i] · scale[j])`.
struct TileOut<'a> {
    out: &'a mut [f32],
    width: usize,
    cols: usize,
    xs: &'a [f32],
    scale: &'a [f32; BLOCK],
}

impl TileOut<'_> {
    fn scale_from(self, acc: &Tile) {
        for (i, a) in acc.iter().take(self.xs.len()).enumerate() {
            let row = &mut self.out[i * self.width..][..self.cols];
            for (j, o) in row.iter_mut().enumerate() {
                *o = a[j] as f32 * (self.xs[i] * self.scale[j]);
            }
        }
    }
}

type Tile = [[i32; BLOCK]; TILE_ROWS];

/// One block of outputs for [`TILE_ROWS`] padded input rows, of which the live ones (as many
/// as `dst` has row scales) are scaled and written to `dst`.
fn tile(
    kernel: I8Kernel,
    x: &[i8],
    corr: &[i32],
    groups: usize,
    codes: &[u8],
    subs: &[u8],
    dst: TileOut,
) {
    let live = dst.xs.len();
    assert!(x.len() == TILE_ROWS * groups * GROUP && corr.len() == TILE_ROWS * groups);
    assert!(codes.len() == groups * BLOCK_GROUP_BYTES && subs.len() == groups * BLOCK);
    assert!((1..=TILE_ROWS).contains(&live) && (1..=BLOCK).contains(&dst.cols));
    assert!(dst.out.len() >= (live - 1) * dst.width + dst.cols);
    match kernel {
        I8Kernel::Portable => dst.scale_from(&tile_portable(x, groups, codes, subs)),
        // SAFETY: every other kernel needs AVX2, which `matmul_i4_with` checked with
        // `runs_here()`; the asserts above give the kernel the lengths it reads and writes.
        #[cfg(target_arch = "x86_64")]
        _ => unsafe {
            match live {
                1 => x86::tile_avx2::<1>(x, corr, groups, codes, subs, dst),
                2 => x86::tile_avx2::<2>(x, corr, groups, codes, subs, dst),
                3 => x86::tile_avx2::<3>(x, corr, groups, codes, subs, dst),
                _ => x86::tile_avx2::<4>(x, corr, groups, codes, subs, dst),
            }
        },
        #[cfg(not(target_arch = "x86_64"))]
        _ => dst.scale_from(&tile_portable(x, groups, codes, subs)),
    }
}

fn tile_portable(x: &[i8], groups: usize, codes: &[u8], subs: &[u8]) -> Tile {
    let mut acc = [[0i32; BLOCK]; TILE_ROWS];
    let stride = groups * GROUP;
    for g in 0..groups {
        let c = &codes[g * BLOCK_GROUP_BYTES..(g + 1) * BLOCK_GROUP_BYTES];
        for (r, a) in acc.iter_mut().enumerate() {
            let xg = &x[r * stride + g * GROUP..r * stride + (g + 1) * GROUP];
            for (i, a) in a.iter_mut().enumerate() {
                let sum: i32 = (0..GROUP)
                    .map(|j| {
                        let b = c[(j / 8) * 32 + 4 * i + j % 4];
                        let code = if j % 8 >= 4 { b >> 4 } else { b & 0x0F };
                        (code as i32 - 8) * xg[j] as i32
                    })
                    .sum();
                *a += subs[g * BLOCK + i] as i32 * sum;
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{TileOut, BLOCK, BLOCK_GROUP_BYTES, GROUP};
    use std::arch::x86_64::*;

    /// How far ahead of the group being multiplied its codes are fetched: a core on its own
    /// keeps too few misses in flight for the hardware prefetcher to reach memory's bandwidth.
    const PREFETCH_BYTES: usize = 1024;

    /// `vpshufb` control putting sub-scale `i` of 8 bytes into both i16 halves of i32 lane `i`
    /// (each 128-bit lane sees the same 8 bytes: outputs 0-3 from the low lane, 4-7 the high).
    #[inline(always)]
    unsafe fn spread() -> __m256i {
        _mm256_setr_epi8(
            0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1, //
            4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7, -1,
        )
    }

    /// Group `g`'s 128 code bytes of a block unpacked into eight registers (register `q`: the
    /// group's inputs `4q..4q + 4` for each of the 8 outputs), after asking for the codes
    /// [`PREFETCH_BYTES`] ahead.
    #[inline(always)]
    unsafe fn unpack(cp: *const u8) -> [__m256i; 8] {
        _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(PREFETCH_BYTES) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(PREFETCH_BYTES + 64) as *const i8);
        let nibble = _mm256_set1_epi8(0x0F);
        let mut u = [_mm256_setzero_si256(); 8];
        for c in 0..4 {
            let v = _mm256_loadu_si256(cp.add(32 * c) as *const _);
            u[2 * c] = _mm256_and_si256(v, nibble);
            u[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble);
        }
        u
    }

    /// One row's group: eight `vpmaddubsw` against its inputs broadcast 4 at a time, added in
    /// i16, corrected, then one `vpmaddwd` by the sub-scales `s`, added to `acc`.
    #[inline(always)]
    unsafe fn group(
        acc: __m256i,
        u: &[__m256i; 8],
        xp: *const i8,
        corr: i32,
        s: __m256i,
    ) -> __m256i {
        let bcast = |q: usize| _mm256_set1_epi32((xp.add(4 * q) as *const i32).read_unaligned());
        let mut sum = _mm256_maddubs_epi16(u[0], bcast(0));
        for (q, &uq) in u.iter().enumerate().skip(1) {
            sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(uq, bcast(q)));
        }
        sum = _mm256_sub_epi16(sum, _mm256_set1_epi32(corr));
        _mm256_add_epi32(acc, _mm256_madd_epi16(sum, s))
    }

    /// Group `g`'s 8 sub-scales of a block, spread for `vpmaddwd`.
    #[inline(always)]
    unsafe fn subscales(sp: *const u8) -> __m256i {
        let s8 = (sp as *const i64).read_unaligned();
        _mm256_shuffle_epi8(_mm256_set1_epi64x(s8), spread())
    }

    /// Batch 1: every block of `codes` (`subs`, `scale` alike) for one padded input row `x`,
    /// each block's sums scaled and written to its 8 columns of `out` (the last block's only
    /// up to `out`'s end). The scaling is `acc as f32 * (xs * S[o])`, lane by lane, the same
    /// two roundings as the tiled path.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row_avx2(
        x: &[i8],
        corr: &[i32],
        xs: f32,
        codes: &[u8],
        subs: &[u8],
        scale: &[f32],
        out: &mut [f32],
    ) {
        let groups = corr.len();
        let blocks = scale.len() / BLOCK;
        assert!(x.len() == groups * GROUP && scale.len() == blocks * BLOCK);
        assert!(codes.len() == blocks * groups * BLOCK_GROUP_BYTES);
        assert!(subs.len() == blocks * groups * BLOCK);
        assert!(out.len() <= blocks * BLOCK && out.len() > (blocks - 1) * BLOCK);
        for b in 0..blocks {
            let mut acc = _mm256_setzero_si256();
            for (g, &c) in corr.iter().enumerate() {
                let at = b * groups + g;
                let u = unpack(codes.as_ptr().add(at * BLOCK_GROUP_BYTES));
                let s = subscales(subs.as_ptr().add(at * BLOCK));
                acc = group(acc, &u, x.as_ptr().add(g * GROUP), c, s);
            }
            let o = &mut out[b * BLOCK..];
            let cols = o.len().min(BLOCK);
            store_scaled(&mut o[..cols], acc, xs, scale.as_ptr().add(b * BLOCK));
        }
    }

    /// `out[j] = acc[j] as f32 * (xs * scale[j])` for the `out.len()` (at most 8) first lanes:
    /// lane by lane the same two roundings as the scalar code.
    #[inline(always)]
    unsafe fn store_scaled(out: &mut [f32], acc: __m256i, xs: f32, scale: *const f32) {
        let f = _mm256_mul_ps(
            _mm256_cvtepi32_ps(acc),
            _mm256_mul_ps(_mm256_set1_ps(xs), _mm256_loadu_ps(scale)),
        );
        if out.len() == BLOCK {
            _mm256_storeu_ps(out.as_mut_ptr(), f);
        } else {
            let mut lanes = [0f32; BLOCK];
            _mm256_storeu_ps(lanes.as_mut_ptr(), f);
            out.copy_from_slice(&lanes[..out.len()]);
        }
    }

    /// Per group: four 32-byte loads unpack into eight registers of codes (8 outputs × 4
    /// inputs), reused by every live row; per row, eight `vpmaddubsw` against the row's inputs
    /// broadcast 4 at a time, added in i16, corrected, then one `vpmaddwd` by the sub-scales.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2<const LIVE: usize>(
        x: &[i8],
        corr: &[i32],
        groups: usize,
        codes: &[u8],
        subs: &[u8],
        dst: TileOut,
    ) {
        let stride = groups * GROUP;
        let mut acc = [_mm256_setzero_si256(); LIVE];
        for g in 0..groups {
            let u = unpack(codes.as_ptr().add(g * BLOCK_GROUP_BYTES));
            let s = subscales(subs.as_ptr().add(g * BLOCK));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = group(
                    *a,
                    &u,
                    x.as_ptr().add(r * stride + g * GROUP),
                    corr[r * groups + g],
                    s,
                );
            }
        }
        for (i, &a) in acc.iter().enumerate() {
            let row = &mut dst.out[i * dst.width..][..dst.cols];
            store_scaled(row, a, dst.xs[i], dst.scale.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: the integer sum in i64, checked to fit, then the one scaling.
    fn reference(x: &[i8], xs: &[f32], m: &Case, n: usize, inp: usize) -> Vec<f32> {
        let (rows, groups) = (x.len() / inp, inp.div_ceil(GROUP));
        let mut out = Vec::with_capacity(rows * n);
        for r in 0..rows {
            for o in 0..n {
                let sum: i64 = (0..inp)
                    .map(|k| {
                        let sub = m.s[o * groups + k / GROUP] as i64;
                        sub * x[r * inp + k] as i64 * m.w[o * inp + k] as i64
                    })
                    .sum();
                let acc = i32::try_from(sum).expect("exact sum fits");
                out.push(acc as f32 * (xs[r] * m.scale[o]));
            }
        }
        out
    }

    /// xorshift values in `lo..=hi`, the extremes often (where a wrong correction or an
    /// overflowing i16 would show).
    fn values(seed: u64, len: usize, lo: i32, hi: i32) -> Vec<i32> {
        let mut st = seed | 1;
        (0..len)
            .map(|i| {
                st ^= st << 13;
                st ^= st >> 7;
                st ^= st << 17;
                match i % 5 {
                    0 => lo,
                    1 => hi,
                    _ => lo + ((st >> 11) % (hi - lo + 1) as u64) as i32,
                }
            })
            .collect()
    }

    /// A matrix's unpacked weights, sub-scales and output scales.
    struct Case {
        w: Vec<i8>,
        s: Vec<u8>,
        scale: Vec<f32>,
    }

    fn case(seed: u64, n: usize, inp: usize) -> Case {
        Case {
            w: values(seed, n * inp, -8, 7)
                .iter()
                .map(|&v| v as i8)
                .collect(),
            s: values(seed + 1, n * inp.div_ceil(GROUP), 0, 255)
                .iter()
                .map(|&v| v as u8)
                .collect(),
            scale: values(seed + 2, n, 1, 1000)
                .iter()
                .map(|&v| v as f32 * 1e-3)
                .collect(),
        }
    }

    /// Every kernel the machine has, at many shapes (partial groups, partial blocks, rows not
    /// a multiple of the tile; serial, batch 1, few rows and many), gives the plain sum's bits;
    /// packing round-trips.
    #[test]
    fn every_kernel_equals_the_plain_sum() {
        let shapes = [
            (1, 1, 1),
            (2, 5, 3),
            (3, 9, 33),
            (5, 8, 64),
            (7, 70, 131),
            (1, 256, 512),
            (4, 130, 128),
            (9, 37, 96),
            (1, 5000, 256),
            (1, 4099, 300),
            (6, 2100, 200),
            (40, 300, 160),
        ];
        for (i, &(rows, n, inp)) in shapes.iter().enumerate() {
            let m = case(3 * i as u64 + 1, n, inp);
            let x: Vec<i8> = values(7 * i as u64, rows * inp, -127, 127)
                .iter()
                .map(|&v| v as i8)
                .collect();
            let xs: Vec<f32> = (0..rows).map(|r| 0.5 + r as f32).collect();
            let want = reference(&x, &xs, &m, n, inp);
            let packed = I4Matrix::from_rows(&m.w, &m.s, &m.scale, n, inp).unwrap();
            let groups = inp.div_ceil(GROUP);
            for o in [0, n / 2, n - 1] {
                assert_eq!(packed.row(o), m.w[o * inp..(o + 1) * inp], "row {o}");
                assert_eq!(packed.sub_scales(o), m.s[o * groups..(o + 1) * groups]);
            }
            assert_eq!(packed.scales(), m.scale);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for kernel in I8Kernel::available() {
                let mut out = vec![f32::NAN; rows * n]; // poisoned
                matmul_i4_with(kernel, &mut out, &x, &xs, &packed);
                assert!(
                    bits(&out) == bits(&want),
                    "{} at {rows}x{n}x{inp}",
                    kernel.name()
                );
            }
        }
    }

    /// At the widest input allowed, with every term at its extreme (inputs ±127, weights -8,
    /// sub-scales 255), the sums are exact in every kernel (the bound in the module docs, met):
    /// a wrapped i32 would change the sign.
    #[test]
    fn widest_input_sums_do_not_overflow() {
        let (n, inp) = (BLOCK, MAX_INPUTS);
        let m = Case {
            w: vec![W_MIN; n * inp],
            s: vec![255u8; n * inp / GROUP],
            scale: vec![1.0; n],
        };
        let packed = I4Matrix::from_rows(&m.w, &m.s, &m.scale, n, inp).unwrap();
        let x: Vec<i8> = [vec![-127i8; inp], vec![127i8; inp]].concat();
        let want = reference(&x, &[1.0, 1.0], &m, n, inp);
        assert_eq!(want[0] as f64, 255.0 * 8.0 * 127.0 * MAX_INPUTS as f64);
        for kernel in I8Kernel::available() {
            let mut out = vec![0f32; 2 * n];
            matmul_i4_with(kernel, &mut out, &x, &[1.0, 1.0], &packed);
            assert!(out == want, "{}", kernel.name());
        }
    }

    #[test]
    fn refuses_what_the_format_excludes() {
        let from = |w: &[i8], s: &[u8], n, inp| I4Matrix::from_rows(w, s, &vec![1.0; n], n, inp);
        assert!(from(&[], &[], 1, 0).is_err(), "no inputs");
        assert!(from(&[8, 0], &[1], 1, 2).is_err(), "8");
        assert!(from(&[0, 0], &[1, 1], 1, 2).is_err(), "sub-scales");
        assert!(
            I4Matrix::from_rows(&[0, 0], &[1], &[], 1, 2).is_err(),
            "scales"
        );
        let wide = MAX_INPUTS + 1;
        assert!(from(&vec![0; wide], &[1; 257], 1, wide).is_err());
    }
}
