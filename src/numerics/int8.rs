//! Integer matrix products for numeric contract 3: `out[r][o] = Σ_k x[r][k] · w[o][k]` with
//! int8 operands and an exact i32 result.
//!
//! Integer sums do not depend on their order, so every kernel here (AVX-512 VNNI, AVX-VNNI, AVX2,
//! portable), any tiling, any thread split and any batch of rows gives the same integers; the
//! tests force each kernel the machine has and compare it with a plain loop.
//!
//! **No overflow.** Operands are symmetric int8, in `-127..=127` (never -128: the quantiser clamps
//! there), so every exact sum is at most `inp · 127² ≤ 2^31 - 1` for `inp ≤` [`MAX_INPUTS`] =
//! 133,144; [`I8Matrix::from_rows`] refuses anything wider. The kernels' intermediates may wrap
//! (VNNI adds `x + 128` as an unsigned byte, then subtracts `128 · Σ_k w[o][k]`), but all their
//! arithmetic is modulo 2^32, so the result is the exact sum whenever the exact sum fits, which
//! the bound guarantees. AVX2 uses `vpmaddubsw` on `|x|` and the weights carrying `x`'s sign:
//! each i16 pair sum is at most 2 · 127² < 2^15 in magnitude, so its saturation never triggers.
//!
//! **Layout.** Weights are packed in panels of [`PANEL`] outputs; inside a panel, inputs go in
//! groups of 4 (one 32-bit lane of VNNI's `dpbusd`): byte `((p · groups + g) · PANEL + j) · 4 + t`
//! holds `w[16p + j][4g + t]`, zero past `n` (padded to whole tiles of 4 panels) and past `inp`
//! (padded to whole groups; inputs are padded with zeros likewise). Each kernel
//! computes a tile of [`TILE_ROWS`] rows by 4 panels (64 outputs), so each weight loaded serves 4
//! rows and (with AVX-512) each input loaded serves 64 outputs.

//! **Cost model.** A product does `2 · rows · n · inp` integer operations and reads `n · inp`
//! weight bytes once per tile of 4 rows (tiny's largest matrix, 512 × 128, is 64 KiB: it stays in
//! L2). One `vpdpbusd` on 512 bits is 64 multiply-adds; at one per cycle per core that is 128
//! op/cycle/core, about 0.6–0.8 Top/s on 2 cores at 2.5–3 GHz. Measured (BENCHMARKS.md, "M1
//! under contract 3"): 262–380 Gop/s, roughly half of that ceiling; the gap is the tile's edges
//! (256 outputs is 4 tiles), the per-call bias of the inputs and the thread hand-out.

use super::columns::by_column_runs;
use rayon::prelude::*;

/// Outputs per panel: one AVX-512 register of i32.
pub const PANEL: usize = 16;
/// Inputs per group: the four bytes one VNNI lane multiplies and adds.
const GROUP: usize = 4;
/// Rows per tile: each weight loaded serves this many rows.
pub const TILE_ROWS: usize = 4;
/// Panels per tile: each input loaded serves `TILE_PANELS · PANEL` outputs.
const TILE_PANELS: usize = 4;
/// Outputs per tile.
const TILE_OUTPUTS: usize = TILE_PANELS * PANEL;
/// The widest input for which `inp · 127²` fits in an i32 (module docs).
pub const MAX_INPUTS: usize = (i32::MAX / (127 * 127)) as usize;
/// Products smaller than this many multiply-adds run on the calling thread.
const SERIAL_MACS: usize = 1 << 20;

/// An int8 weight matrix of `n` outputs and `inp` inputs packed for [`matmul_i8`].
#[derive(Clone, Debug)]
pub struct I8Matrix {
    n: usize,
    inp: usize,
    /// `inp` rounded up to whole groups (the padding inputs have zero weights).
    stride: usize,
    /// Panels, padded with zero panels to whole tiles.
    data: Vec<i8>,
    /// `128 · Σ_k w[o][k]` per output (padded likewise), undoing VNNI's `x + 128`.
    bias: Vec<i32>,
}

/// Which instructions compute the products; every one gives the same integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I8Kernel {
    /// AVX-512 VNNI: `vpdpbusd` on 16 outputs at once, 4 rows × 64 outputs per tile.
    Avx512Vnni,
    /// AVX-VNNI: the 256-bit `vpdpbusd`.
    AvxVnni,
    /// AVX2: `vpmaddubsw` on `|x|` and the weights carrying `x`'s sign, then `vpmaddwd` by ones.
    Avx2,
    /// Plain loops, any machine.
    Portable,
}

impl I8Kernel {
    /// Every kernel this machine can run, fastest first (the last is always `Portable`).
    pub fn available() -> Vec<I8Kernel> {
        Self::detected().to_vec()
    }

    /// True when this machine can run the kernel.
    pub fn runs_here(self) -> bool {
        Self::detected().contains(&self)
    }

    /// The CPU's features, read once (products check them on every call).
    fn detected() -> &'static [I8Kernel] {
        static KERNELS: std::sync::OnceLock<Vec<I8Kernel>> = std::sync::OnceLock::new();
        KERNELS.get_or_init(|| {
            let mut k = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") && has!("avx512vnni") {
                    k.push(I8Kernel::Avx512Vnni);
                }
                if has!("avx2") && has!("avxvnni") {
                    k.push(I8Kernel::AvxVnni);
                }
                if has!("avx2") {
                    k.push(I8Kernel::Avx2);
                }
            }
            k.push(I8Kernel::Portable);
            k
        })
    }

    /// The fastest kernel this machine can run.
    pub fn best() -> I8Kernel {
        Self::detected()[0]
    }

    /// Runs `f` compiled for AVX2 and FMA when this kernel is not [`Portable`](Self::Portable)
    /// and the CPU has both, else as plain code: for the row-wise work around the products
    /// (quantising, norms, rotary, attention), whose loops vectorise with AVX2 and whose
    /// `mul_add`s become one instruction instead of a libm call. The bits are the same either
    /// way: rustc neither contracts nor reassociates f32 operations, `mul_add` rounds once in
    /// both, and integer sums are exact. `f` (a closure marked `#[inline(always)]`) and what it
    /// calls must be inlined into it to be compiled for those features.
    #[inline(always)]
    pub fn vectorised<R>(self, f: impl FnOnce() -> R) -> R {
        #[cfg(target_arch = "x86_64")]
        if self != I8Kernel::Portable && avx2_fma() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn with_avx2_fma<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { with_avx2_fma(f) };
        }
        f()
    }

    /// A short name for reports (`avx512-vnni`, `avx-vnni`, `avx2`, `portable`).
    pub fn name(self) -> &'static str {
        match self {
            I8Kernel::Avx512Vnni => "avx512-vnni",
            I8Kernel::AvxVnni => "avx-vnni",
            I8Kernel::Avx2 => "avx2",
            I8Kernel::Portable => "portable",
        }
    }
}

/// True when the CPU has AVX2 and FMA (read once).
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

impl I8Matrix {
    /// Packs `w` in the model's `[n, inp]` layout (row `o` holds output `o`'s weights). Refuses
    /// an `inp` of 0 or above [`MAX_INPUTS`], a shape that does not match `w`, and the value
    /// -128 (contract 3's int8 is symmetric).
    pub fn from_rows(w: &[i8], n: usize, inp: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            w.len() == n * inp,
            "weights: {} values for {n} x {inp}",
            w.len()
        );
        anyhow::ensure!(
            inp > 0 && inp <= MAX_INPUTS,
            "inputs: {inp} must be in 1..={MAX_INPUTS}"
        );
        anyhow::ensure!(!w.contains(&i8::MIN), "weights: -128 is outside -127..=127");
        let stride = inp.next_multiple_of(GROUP);
        let padded = n.next_multiple_of(TILE_OUTPUTS);
        let mut data = vec![0i8; padded * stride];
        let mut bias = vec![0i32; padded];
        for o in 0..n {
            let row = &w[o * inp..(o + 1) * inp];
            for (k, &v) in row.iter().enumerate() {
                data[Self::at(stride, o, k)] = v;
            }
            bias[o] = 128 * row.iter().map(|&v| v as i32).sum::<i32>();
        }
        Ok(I8Matrix {
            n,
            inp,
            stride,
            data,
            bias,
        })
    }

    /// Where `w[o][k]` lives in the packed data (module docs).
    fn at(stride: usize, o: usize, k: usize) -> usize {
        let (p, j, g, t) = (o / PANEL, o % PANEL, k / GROUP, k % GROUP);
        ((p * (stride / GROUP) + g) * PANEL + j) * GROUP + t
    }

    /// Output `o`'s weights, unpacked (`inp` of them).
    pub fn row(&self, o: usize) -> Vec<i8> {
        assert!(o < self.n, "output {o} of {}", self.n);
        (0..self.inp)
            .map(|k| self.data[Self::at(self.stride, o, k)])
            .collect()
    }

    /// Number of outputs.
    pub fn outputs(&self) -> usize {
        self.n
    }

    /// Number of inputs.
    pub fn inputs(&self) -> usize {
        self.inp
    }

    /// Tiles of outputs.
    fn tiles(&self) -> usize {
        self.n.div_ceil(TILE_OUTPUTS)
    }
}

/// `out[r][o] = Σ_k x[r][k] · w[o][k]` for every `inp`-wide row of `x`, with the fastest kernel
/// (`out`: `[rows][n]`). Panics on mismatched shapes or a -128 in `x`.
pub fn matmul_i8(out: &mut [i32], x: &[i8], w: &I8Matrix) {
    matmul_i8_with(I8Kernel::best(), out, x, w)
}

/// [`matmul_i8`] with a chosen kernel; panics if this machine cannot run it.
pub fn matmul_i8_with(kernel: I8Kernel, out: &mut [i32], x: &[i8], w: &I8Matrix) {
    assert!(kernel.runs_here(), "{} unavailable here", kernel.name());
    let (inp, n) = (w.inp, w.n);
    let rows = x.len() / inp;
    assert!(
        rows * inp == x.len() && rows * n == out.len(),
        "matmul_i8 shapes"
    );
    assert!(
        !x.contains(&i8::MIN),
        "activations: -128 is outside -127..=127"
    );
    // Inputs as `x + 128` (what VNNI multiplies), each row padded with zeros to whole groups,
    // and zero rows to whole tiles.
    let stride = w.stride;
    let mut xb = vec![0x80u8; rows.next_multiple_of(TILE_ROWS) * stride];
    for (b, xr) in xb.chunks_exact_mut(stride).zip(x.chunks_exact(inp)) {
        for (b, &v) in b.iter_mut().zip(xr) {
            *b = (v as u8) ^ 0x80;
        }
    }
    let tiles = w.tiles();
    if rows * n * inp < SERIAL_MACS {
        block(kernel, out, n, 0, &xb, w, 0..tiles);
    } else if rows < 2 * TILE_ROWS * rayon::current_num_threads() && tiles > 1 {
        // Few rows, many outputs (M2's head at batch 1): split the output tiles.
        by_column_runs(out, rows, n, TILE_OUTPUTS, |part, c0, t| {
            block(kernel, part, part.len() / rows, c0, &xb, w, t)
        });
    } else {
        let task = rows
            .div_ceil(rayon::current_num_threads())
            .next_multiple_of(TILE_ROWS);
        out.par_chunks_mut(task * n)
            .zip(xb.par_chunks(task * stride))
            .for_each(|(o, xr)| block(kernel, o, n, 0, xr, w, 0..tiles));
    }
}

/// Every row of `out` (`[rows][width]`, holding output columns `c0..c0 + width`) for output
/// tiles `tiles`, which must lie in those columns; `xb` holds the biased inputs, padded to whole
/// tiles of rows.
fn block(
    kernel: I8Kernel,
    out: &mut [i32],
    width: usize,
    c0: usize,
    xb: &[u8],
    w: &I8Matrix,
    tiles: std::ops::Range<usize>,
) {
    let (n, inp) = (w.n, w.stride);
    let rows = out.len() / width;
    let tile_bytes = TILE_OUTPUTS * inp;
    for t in tiles {
        let weights = &w.data[t * tile_bytes..(t + 1) * tile_bytes];
        let bias: &[i32; TILE_OUTPUTS] = w.bias[t * TILE_OUTPUTS..(t + 1) * TILE_OUTPUTS]
            .try_into()
            .unwrap();
        let cols = TILE_OUTPUTS.min(n - t * TILE_OUTPUTS);
        for r0 in (0..rows).step_by(TILE_ROWS) {
            let x = &xb[r0 * inp..(r0 + TILE_ROWS) * inp];
            let y = tile(kernel, x, inp, weights, bias, TILE_ROWS.min(rows - r0));
            for (i, row) in y.iter().take(TILE_ROWS.min(rows - r0)).enumerate() {
                let at = (r0 + i) * width + t * TILE_OUTPUTS - c0;
                out[at..at + cols].copy_from_slice(&row[..cols]);
            }
        }
    }
}

type Tile = [[i32; TILE_OUTPUTS]; TILE_ROWS];

/// One tile: [`TILE_ROWS`] biased input rows by [`TILE_PANELS`] panels, of which the first
/// `live` rows are wanted (kernels may skip the rest, which are padding).
fn tile(
    kernel: I8Kernel,
    x: &[u8],
    inp: usize,
    w: &[i8],
    bias: &[i32; TILE_OUTPUTS],
    live: usize,
) -> Tile {
    assert!(x.len() == TILE_ROWS * inp && w.len() == TILE_OUTPUTS * inp);
    assert!((1..=TILE_ROWS).contains(&live));
    match kernel {
        // SAFETY (all three): `matmul_i8_with` checked the CPU features with `available()`, and
        // the assert above gives the kernels the lengths they read.
        #[cfg(target_arch = "x86_64")]
        I8Kernel::Avx512Vnni => unsafe { x86::tile_vnni512(x, inp, w, bias) },
        #[cfg(target_arch = "x86_64")]
        I8Kernel::AvxVnni => unsafe { x86::tile_vnni256(x, inp, w, bias) },
        #[cfg(target_arch = "x86_64")]
        I8Kernel::Avx2 => unsafe {
            match live {
                1 => x86::tile_avx2::<1>(x, inp, w),
                2 => x86::tile_avx2::<2>(x, inp, w),
                3 => x86::tile_avx2::<3>(x, inp, w),
                _ => x86::tile_avx2::<4>(x, inp, w),
            }
        },
        _ => tile_portable(x, inp, w),
    }
}

fn tile_portable(x: &[u8], inp: usize, w: &[i8]) -> Tile {
    let mut acc = [[0i32; TILE_OUTPUTS]; TILE_ROWS];
    for (p, panel) in w.chunks_exact(PANEL * inp).enumerate() {
        for (g, wg) in panel.chunks_exact(PANEL * GROUP).enumerate() {
            for (r, a) in acc.iter_mut().enumerate() {
                let xg = &x[r * inp + g * GROUP..r * inp + (g + 1) * GROUP];
                for (j, wj) in wg.chunks_exact(GROUP).enumerate() {
                    a[p * PANEL + j] += (0..GROUP)
                        .map(|t| ((xg[t] ^ 0x80) as i8) as i32 * wj[t] as i32)
                        .sum::<i32>();
                }
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, GROUP, PANEL, TILE_OUTPUTS, TILE_PANELS, TILE_ROWS};
    use std::arch::x86_64::*;

    /// The four biased input bytes of row `r`, group `g`, as one i32.
    #[inline(always)]
    unsafe fn group(x: &[u8], inp: usize, r: usize, g: usize) -> i32 {
        (x.as_ptr().add(r * inp + g * GROUP) as *const i32).read_unaligned()
    }

    /// 4 rows × 4 panels: 16 accumulators; per group of 4 inputs, 4 weight loads and 4
    /// broadcasts feed 16 `vpdpbusd`.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn tile_vnni512(
        x: &[u8],
        inp: usize,
        w: &[i8],
        bias: &[i32; TILE_OUTPUTS],
    ) -> Tile {
        let mut acc = [[_mm512_setzero_si512(); TILE_PANELS]; TILE_ROWS];
        let panel_bytes = PANEL * inp;
        for g in 0..inp / GROUP {
            let wp = w.as_ptr().add(g * PANEL * GROUP);
            let wv: [__m512i; TILE_PANELS] =
                std::array::from_fn(|p| _mm512_loadu_si512(wp.add(p * panel_bytes) as *const _));
            for (r, a) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_epi32(group(x, inp, r, g));
                for p in 0..TILE_PANELS {
                    a[p] = _mm512_dpbusd_epi32(a[p], xb, wv[p]);
                }
            }
        }
        let mut out = [[0i32; TILE_OUTPUTS]; TILE_ROWS];
        for (o, a) in out.iter_mut().zip(&acc) {
            for (p, &v) in a.iter().enumerate() {
                let b = _mm512_loadu_si512(bias.as_ptr().add(p * PANEL) as *const _);
                _mm512_storeu_si512(
                    o.as_mut_ptr().add(p * PANEL) as *mut _,
                    _mm512_sub_epi32(v, b),
                );
            }
        }
        out
    }

    /// One panel at a time: 4 rows × 2 halves = 8 accumulators (AVX-VNNI machines without
    /// AVX-512 have 16 vector registers).
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn tile_vnni256(
        x: &[u8],
        inp: usize,
        w: &[i8],
        bias: &[i32; TILE_OUTPUTS],
    ) -> Tile {
        let mut out = [[0i32; TILE_OUTPUTS]; TILE_ROWS];
        for p in 0..TILE_PANELS {
            let panel = w.as_ptr().add(p * PANEL * inp);
            let mut acc = [[_mm256_setzero_si256(); 2]; TILE_ROWS];
            for g in 0..inp / GROUP {
                let wp = panel.add(g * PANEL * GROUP);
                let w0 = _mm256_loadu_si256(wp as *const _);
                let w1 = _mm256_loadu_si256(wp.add(32) as *const _);
                for (r, a) in acc.iter_mut().enumerate() {
                    let xb = _mm256_set1_epi32(group(x, inp, r, g));
                    a[0] = _mm256_dpbusd_avx_epi32(a[0], xb, w0);
                    a[1] = _mm256_dpbusd_avx_epi32(a[1], xb, w1);
                }
            }
            let b = bias.as_ptr().add(p * PANEL);
            let (b0, b1) = (
                _mm256_loadu_si256(b as *const _),
                _mm256_loadu_si256(b.add(8) as *const _),
            );
            for (r, a) in acc.iter().enumerate() {
                let o = out[r].as_mut_ptr().add(p * PANEL);
                _mm256_storeu_si256(o as *mut _, _mm256_sub_epi32(a[0], b0));
                _mm256_storeu_si256(o.add(8) as *mut _, _mm256_sub_epi32(a[1], b1));
            }
        }
        out
    }

    /// AVX2's byte product `vpmaddubsw` multiplies unsigned by signed bytes and adds pairs into
    /// saturating i16: fed `|x|` and the weights with `x`'s sign moved onto them (`vpsignb`),
    /// each pair is `x_a w_a + x_b w_b` exactly, at most `2 · 127² < 2^15` in magnitude, so it
    /// never saturates; `vpmaddwd` by ones then adds the pairs into i32, one lane per output
    /// (8 outputs × their 4 inputs per register). One panel at a time, its 16 outputs in two
    /// registers per row: up to 8 accumulators. Only the first `LIVE` rows are computed (the
    /// rest of the tile is padding, left 0): a lone row (M2's batch-1 decode) costs a quarter
    /// of a full tile.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2<const LIVE: usize>(x: &[u8], inp: usize, w: &[i8]) -> Tile {
        let mut out = [[0i32; TILE_OUTPUTS]; TILE_ROWS];
        let unbias = _mm256_set1_epi8(0x80u8 as i8);
        let ones = _mm256_set1_epi16(1);
        for p in 0..TILE_PANELS {
            let panel = w.as_ptr().add(p * PANEL * inp);
            let mut acc = [[_mm256_setzero_si256(); 2]; LIVE];
            for g in 0..inp / GROUP {
                let wp = panel.add(g * PANEL * GROUP);
                let wv = [0, 1].map(|h| _mm256_loadu_si256(wp.add(32 * h) as *const _));
                for (r, a) in acc.iter_mut().enumerate() {
                    // The row's 4 inputs of this group in every lane, unbiased to signed.
                    let xs = _mm256_xor_si256(_mm256_set1_epi32(group(x, inp, r, g)), unbias);
                    let xa = _mm256_abs_epi8(xs);
                    for (h, a) in a.iter_mut().enumerate() {
                        let pairs = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(wv[h], xs));
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            for (o, a) in out.iter_mut().zip(&acc) {
                for (h, v) in a.iter().enumerate() {
                    _mm256_storeu_si256(o.as_mut_ptr().add(p * PANEL + 8 * h) as *mut _, *v);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: a plain sum in i64, checked to fit.
    fn reference(x: &[i8], w: &[i8], n: usize, inp: usize) -> Vec<i32> {
        let rows = x.len() / inp.max(1);
        let mut out = Vec::with_capacity(rows * n);
        for r in 0..rows {
            for o in 0..n {
                let s: i64 = (0..inp)
                    .map(|k| x[r * inp + k] as i64 * w[o * inp + k] as i64)
                    .sum();
                out.push(i32::try_from(s).expect("exact sum fits"));
            }
        }
        out
    }

    fn values(seed: u64, len: usize) -> Vec<i8> {
        let mut s = seed | 1;
        (0..len)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // The extremes often: they are where saturation or a wrong bias would show.
                match i % 7 {
                    0 => 127,
                    1 => -127,
                    _ => (((s >> 11) % 255) as i32 - 127) as i8,
                }
            })
            .collect()
    }

    /// Every kernel the machine has, at many shapes (rows not a multiple of the tile, outputs
    /// not a multiple of the panel, serial and both parallel splits), equals the plain sum.
    #[test]
    fn every_kernel_equals_the_plain_sum() {
        let shapes = [
            (1, 1, 4),
            (2, 5, 3),
            (3, 17, 8),
            (7, 70, 131),
            (5, 16, 64),
            (4, 33, 132),
            (9, 256, 128),
            (1, 256, 512),
            (2, 1000, 256),
            (64, 384, 128),
            (300, 48, 256),
            // Few rows, many outputs: the path that splits the output tiles.
            (1, 5000, 256),
            (3, 2100, 200),
        ];
        for (i, &(rows, n, inp)) in shapes.iter().enumerate() {
            let x = values(2 * i as u64 + 1, rows * inp);
            let w = values(2 * i as u64 + 2, n * inp);
            let want = reference(&x, &w, n, inp);
            let m = I8Matrix::from_rows(&w, n, inp).unwrap();
            for kernel in I8Kernel::available() {
                let mut out = vec![i32::MIN; rows * n]; // poisoned
                matmul_i8_with(kernel, &mut out, &x, &m);
                assert!(out == want, "{} at {rows}x{n}x{inp}", kernel.name());
            }
        }
    }

    /// At the widest input allowed, the largest positive and negative sums are exact in every
    /// kernel and every lane of a panel (the bound in the module docs, reached: a saturating
    /// instruction would clip them).
    #[test]
    fn widest_input_sums_do_not_overflow() {
        let inp = MAX_INPUTS / GROUP * GROUP;
        let n = 2 * PANEL;
        let w: Vec<i8> = (0..n)
            .flat_map(|o| vec![if o % 2 == 0 { -127i8 } else { 127 }; inp])
            .collect();
        let m = I8Matrix::from_rows(&w, n, inp).unwrap();
        let x: Vec<i8> = [vec![-127i8; inp], vec![127i8; inp]].concat();
        let want = reference(&x, &w, n, inp);
        assert_eq!(want[0], inp as i32 * 127 * 127);
        assert_eq!(want[1], -(inp as i32) * 127 * 127);
        for kernel in I8Kernel::available() {
            let mut out = vec![0i32; 2 * n];
            matmul_i8_with(kernel, &mut out, &x, &m);
            assert!(out == want, "{}", kernel.name());
        }
        assert!(I8Matrix::from_rows(&vec![1i8; MAX_INPUTS + 4], 1, MAX_INPUTS + 4).is_err());
    }

    #[test]
    fn refuses_what_the_contract_excludes() {
        assert!(I8Matrix::from_rows(&[], 1, 0).is_err(), "no inputs");
        assert!(
            I8Matrix::from_rows(&[i8::MIN, 0, 0, 0], 1, 4).is_err(),
            "-128"
        );
        assert!(I8Matrix::from_rows(&[0; 8], 1, 4).is_err(), "shape");
    }
}
