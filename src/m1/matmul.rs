//! The contract's matrix products on the CPU: every output is one fma chain over ascending `k`
//! from 0, computed for many rows at once with the weights packed in panels so each weight loaded
//! serves several rows and the chains of neighbouring outputs run side by side in vector lanes.
//! No chain's operation order depends on the tiling, the row count or the thread split, so the
//! bits do not either (`tiled_matmul_equals_plain_chains`).

use rayon::prelude::*;

/// Outputs per panel (one AVX-512 register, two AVX2 ones).
const PANEL: usize = 16;
/// Rows per register tile: each weight loaded serves this many rows.
const TILE_ROWS: usize = 4;
/// Rows per pass over the weights: their inputs stay in cache while every panel passes over them.
const ROW_CHUNK: usize = 64;
/// Products smaller than this many multiply-adds run on the calling thread.
const SERIAL_MACS: usize = 1 << 18;

/// A weight matrix of `inp` inputs and `n` outputs stored for [`matmul`]: panels of [`PANEL`]
/// consecutive outputs, each panel `[inp][PANEL]` contiguous (so a pass over it is one sequential
/// stream), the last panel padded with zero columns.
pub(crate) struct Panels {
    inp: usize,
    n: usize,
    data: Vec<f32>,
}

impl Panels {
    /// From the model's `[n, inp]` layout (row `o` holds output `o`'s weights).
    pub(crate) fn from_rows(w: &[f32], n: usize, inp: usize) -> Self {
        assert_eq!(w.len(), n * inp, "weight shape");
        let mut data = vec![0f32; n.div_ceil(PANEL) * inp * PANEL];
        for o in 0..n {
            let (p, j) = (o / PANEL, o % PANEL);
            for k in 0..inp {
                data[(p * inp + k) * PANEL + j] = w[o * inp + k];
            }
        }
        Panels { inp, n, data }
    }

    /// The `[inp, n]` layout (row `k`: input `k`'s weight for every output), as the GPU reads it.
    pub(crate) fn to_inputs_by_outputs(&self) -> Vec<f32> {
        let mut t = vec![0f32; self.inp * self.n];
        for o in 0..self.n {
            for k in 0..self.inp {
                t[k * self.n + o] = self.data[((o / PANEL) * self.inp + k) * PANEL + o % PANEL];
            }
        }
        t
    }
}

/// `out[r][o] = sum_k x[r][k] w[k][o]` for every `inp`-wide row `r` of `x` (`out`: `[rows][n]`).
pub(crate) fn matmul(out: &mut [f32], x: &[f32], w: &Panels) {
    let (inp, n) = (w.inp, w.n);
    let rows = x.len() / inp;
    assert!(
        rows * inp == x.len() && rows * n == out.len(),
        "matmul shapes"
    );
    if rows * n * inp < SERIAL_MACS {
        matmul_block(out, n, x, w, 0);
    } else if rows == 1 {
        // One wide row (M2's head over 65,536 tokens): split the outputs.
        const PART: usize = 256 * PANEL;
        out.par_chunks_mut(PART)
            .enumerate()
            .for_each(|(i, o)| matmul_block(o, o.len(), x, w, i * PART / PANEL));
    } else {
        let task = rows.div_ceil(rayon::current_num_threads());
        let task = if task > TILE_ROWS {
            task.next_multiple_of(TILE_ROWS)
        } else {
            task
        };
        out.par_chunks_mut(task * n)
            .zip(x.par_chunks(task * inp))
            .for_each(|(o, xr)| matmul_block(o, n, xr, w, 0));
    }
}

/// [`matmul`] of the rows of `x` into `out` (`out_cols` outputs per row) from panel `p0` on.
fn matmul_block(out: &mut [f32], out_cols: usize, x: &[f32], w: &Panels, p0: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the features the function is compiled for were just detected.
        unsafe { matmul_block_fma(out, out_cols, x, w, p0) };
        return;
    }
    matmul_tiles::<false>(out, out_cols, x, w, p0);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn matmul_block_fma(out: &mut [f32], out_cols: usize, x: &[f32], w: &Panels, p0: usize) {
    matmul_tiles::<true>(out, out_cols, x, w, p0);
}

/// The tiles of [`matmul_block`]; `AVX2`: the caller runs with AVX2 and FMA, so the full tiles
/// take their hand-written form ([`tile_rows_avx2`], [`tile_panels_avx2`]; the same chains).
#[inline(always)]
fn matmul_tiles<const AVX2: bool>(
    out: &mut [f32],
    out_cols: usize,
    x: &[f32],
    w: &Panels,
    p0: usize,
) {
    let (data, inp) = (&w.data[..], w.inp);
    let rows = x.len() / inp;
    let panels = out_cols.div_ceil(PANEL);
    for r_chunk in (0..rows).step_by(ROW_CHUNK) {
        let r_end = (r_chunk + ROW_CHUNK).min(rows);
        let grouped = r_chunk + (r_end - r_chunk) / TILE_ROWS * TILE_ROWS;
        for p in 0..panels {
            for r in (r_chunk..grouped).step_by(TILE_ROWS) {
                #[cfg(target_arch = "x86_64")]
                if AVX2 {
                    // SAFETY: AVX2 and FMA are available (the caller's contract).
                    unsafe { tile_rows_avx2(out, out_cols, x, data, inp, p0 + p, p * PANEL, r) };
                    continue;
                }
                tile_rows::<TILE_ROWS>(out, out_cols, x, data, inp, p0 + p, p * PANEL, r);
            }
        }
        // A row on its own takes several panels at once: as many chains side by side as a
        // group of rows has on one panel.
        for r in grouped..r_end {
            let wide = panels / TILE_ROWS * TILE_ROWS;
            for p in (0..wide).step_by(TILE_ROWS) {
                #[cfg(target_arch = "x86_64")]
                if AVX2 {
                    // SAFETY: AVX2 and FMA are available (the caller's contract).
                    unsafe { tile_panels_avx2(out, out_cols, x, data, inp, p0 + p, p * PANEL, r) };
                    continue;
                }
                tile_panels::<TILE_ROWS>(out, out_cols, x, data, inp, p0 + p, p * PANEL, r);
            }
            for p in wide..panels {
                tile_rows::<1>(out, out_cols, x, data, inp, p0 + p, p * PANEL, r);
            }
        }
    }
}

/// Rows `r0..r0 + R` times panel `p` of `data` (`inp` rows per panel), into output columns from
/// `c`: `R x PANEL` chains, each advanced one `k` at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_rows<const R: usize>(
    out: &mut [f32],
    out_cols: usize,
    x: &[f32],
    data: &[f32],
    inp: usize,
    p: usize,
    c: usize,
    r0: usize,
) {
    let base = p * inp * PANEL;
    let mut acc = [[0f32; PANEL]; R];
    for k in 0..inp {
        let wk: &[f32; PANEL] = data[base + k * PANEL..][..PANEL]
            .try_into()
            .expect("a panel row");
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = x[(r0 + i) * inp + k];
            for (aj, &wj) in a.iter_mut().zip(wk) {
                *aj = xv.mul_add(wj, *aj);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        store(out, out_cols, r0 + i, c, *a);
    }
}

/// Row `r` times panels `p .. p + P`, into output columns from `c`: `P x PANEL` chains, each
/// advanced one `k` at a time (a lone row's tile, as wide as a row group's).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_panels<const P: usize>(
    out: &mut [f32],
    out_cols: usize,
    x: &[f32],
    data: &[f32],
    inp: usize,
    p: usize,
    c: usize,
    r: usize,
) {
    let base = p * inp * PANEL;
    let mut acc = [[0f32; PANEL]; P];
    for k in 0..inp {
        let xv = x[r * inp + k];
        for (q, a) in acc.iter_mut().enumerate() {
            let wk: &[f32; PANEL] = data[base + (q * inp + k) * PANEL..][..PANEL]
                .try_into()
                .expect("a panel row");
            for (aj, &wj) in a.iter_mut().zip(wk) {
                *aj = xv.mul_add(wj, *aj);
            }
        }
    }
    for (q, a) in acc.iter().enumerate() {
        store(out, out_cols, r, c + q * PANEL, *a);
    }
}

/// [`tile_rows`] of [`TILE_ROWS`] rows in AVX2 registers: two 8-lane accumulators per row,
/// `_mm256_fmadd_ps` being the same single-rounding fma per lane as `mul_add`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows_avx2(
    out: &mut [f32],
    out_cols: usize,
    x: &[f32],
    data: &[f32],
    inp: usize,
    p: usize,
    c: usize,
    r0: usize,
) {
    use std::arch::x86_64::*;
    let w = &data[p * inp * PANEL..(p + 1) * inp * PANEL];
    let xs = &x[r0 * inp..(r0 + TILE_ROWS) * inp];
    let mut acc = [_mm256_setzero_ps(); 2 * TILE_ROWS];
    for k in 0..inp {
        let wk = &w[k * PANEL..(k + 1) * PANEL];
        let (w0, w1) = (
            _mm256_loadu_ps(wk.as_ptr()),
            _mm256_loadu_ps(wk[8..].as_ptr()),
        );
        for i in 0..TILE_ROWS {
            let xv = _mm256_set1_ps(xs[i * inp + k]);
            acc[2 * i] = _mm256_fmadd_ps(xv, w0, acc[2 * i]);
            acc[2 * i + 1] = _mm256_fmadd_ps(xv, w1, acc[2 * i + 1]);
        }
    }
    for i in 0..TILE_ROWS {
        store(out, out_cols, r0 + i, c, lanes(acc[2 * i], acc[2 * i + 1]));
    }
}

/// [`tile_panels`] of [`TILE_ROWS`] panels in AVX2 registers (see [`tile_rows_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_panels_avx2(
    out: &mut [f32],
    out_cols: usize,
    x: &[f32],
    data: &[f32],
    inp: usize,
    p: usize,
    c: usize,
    r: usize,
) {
    use std::arch::x86_64::*;
    let w = &data[p * inp * PANEL..(p + TILE_ROWS) * inp * PANEL];
    let xs = &x[r * inp..(r + 1) * inp];
    let mut acc = [_mm256_setzero_ps(); 2 * TILE_ROWS];
    for (k, &xk) in xs.iter().enumerate() {
        let xv = _mm256_set1_ps(xk);
        for q in 0..TILE_ROWS {
            let wk = &w[(q * inp + k) * PANEL..(q * inp + k + 1) * PANEL];
            let (w0, w1) = (
                _mm256_loadu_ps(wk.as_ptr()),
                _mm256_loadu_ps(wk[8..].as_ptr()),
            );
            acc[2 * q] = _mm256_fmadd_ps(xv, w0, acc[2 * q]);
            acc[2 * q + 1] = _mm256_fmadd_ps(xv, w1, acc[2 * q + 1]);
        }
    }
    for q in 0..TILE_ROWS {
        store(
            out,
            out_cols,
            r,
            c + q * PANEL,
            lanes(acc[2 * q], acc[2 * q + 1]),
        );
    }
}

/// Two 8-lane registers as one panel's 16 outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes(lo: std::arch::x86_64::__m256, hi: std::arch::x86_64::__m256) -> [f32; PANEL] {
    let mut a = [0f32; PANEL];
    std::arch::x86_64::_mm256_storeu_ps(a.as_mut_ptr(), lo);
    std::arch::x86_64::_mm256_storeu_ps(a[8..].as_mut_ptr(), hi);
    a
}

/// Row `r`'s outputs from column `c`, dropping the padding past `out_cols`. (Taken by value: a
/// copy of variable length from the accumulators themselves would keep them out of registers.)
#[inline(always)]
fn store(out: &mut [f32], out_cols: usize, r: usize, c: usize, a: [f32; PANEL]) {
    let row = &mut out[r * out_cols..(r + 1) * out_cols];
    if c + PANEL <= out_cols {
        row[c..c + PANEL].copy_from_slice(&a);
    } else {
        row[c..].copy_from_slice(&a[..out_cols - c]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiled product is the contract's plain chains bit for bit, for row counts around the
    /// tile height, widths with a padded last panel, and the threaded splits (rows, one wide row).
    #[test]
    fn tiled_matmul_equals_plain_chains() {
        let mut r = crate::rng::Rng::new(9);
        let shapes = [
            (1, 64, 16),
            (3, 64, 40),
            (4, 7, 16),
            (9, 130, 70),
            (2, 64, 200),
        ];
        let wide = [
            (1, 64, 10_000),
            (33, 256, 768),
            (70, 1024, 20),
            (5, 256, 1024),
        ];
        for (rows, inp, n) in shapes.into_iter().chain(wide) {
            let x: Vec<f32> = (0..rows * inp).map(|_| r.normal() as f32).collect();
            let w: Vec<f32> = (0..n * inp).map(|_| r.normal() as f32).collect(); // [n, inp]
            let panels = Panels::from_rows(&w, n, inp);
            let mut got = vec![f32::NAN; rows * n];
            matmul(&mut got, &x, &panels);
            // The portable tiles (machines without AVX2) give the same bits.
            let mut portable = vec![f32::NAN; rows * n];
            matmul_tiles::<false>(&mut portable, n, &x, &panels, 0);
            assert!(got
                .iter()
                .zip(&portable)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            for row in 0..rows {
                for o in 0..n {
                    let mut acc = 0f32;
                    for k in 0..inp {
                        acc = x[row * inp + k].mul_add(w[o * inp + k], acc);
                    }
                    assert_eq!(
                        got[row * n + o].to_bits(),
                        acc.to_bits(),
                        "{rows}x{inp}x{n} at ({row}, {o})"
                    );
                }
            }
            let t = panels.to_inputs_by_outputs();
            assert!((0..n * inp).all(|i| t[(i % inp) * n + i / inp] == w[i]));
        }
    }
}
