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

/// The tiles of [`matmul_block`]; `AVX2`: the caller runs with AVX2 and FMA, so the tiles take
/// their hand-written form ([`tile_avx2`]; the same chains).
#[inline(always)]
fn matmul_tiles<const AVX2: bool>(
    out: &mut [f32],
    out_cols: usize,
    x: &[f32],
    w: &Panels,
    p0: usize,
) {
    let rows = x.len() / w.inp;
    let panels = out_cols.div_ceil(PANEL);
    let mut at = Tile {
        out,
        out_cols,
        x,
        w,
        panel: 0,
        row: 0,
    };
    for r_chunk in (0..rows).step_by(ROW_CHUNK) {
        let r_end = (r_chunk + ROW_CHUNK).min(rows);
        let grouped = r_chunk + (r_end - r_chunk) / TILE_ROWS * TILE_ROWS;
        for p in 0..panels {
            for r in (r_chunk..grouped).step_by(TILE_ROWS) {
                (at.panel, at.row) = (p, r);
                at.run::<AVX2, TILE_ROWS, 1>(p0);
            }
        }
        // A row on its own takes several panels at once: as many chains side by side as a
        // group of rows has on one panel.
        for r in grouped..r_end {
            let wide = panels / TILE_ROWS * TILE_ROWS;
            for p in (0..wide).step_by(TILE_ROWS) {
                (at.panel, at.row) = (p, r);
                at.run::<AVX2, 1, TILE_ROWS>(p0);
            }
            for p in wide..panels {
                (at.panel, at.row) = (p, r);
                at.run::<AVX2, 1, 1>(p0);
            }
        }
    }
}

/// Where a tile of [`matmul_tiles`] works: `R` rows from `row` times `P` panels from `panel`
/// (counted within the block's outputs, which start at weight panel `p0`).
struct Tile<'a> {
    out: &'a mut [f32],
    out_cols: usize,
    x: &'a [f32],
    w: &'a Panels,
    panel: usize,
    row: usize,
}

impl Tile<'_> {
    /// `R x P x PANEL` chains, each advanced one `k` at a time, then stored.
    #[inline(always)]
    fn run<const AVX2: bool, const R: usize, const P: usize>(&mut self, p0: usize) {
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: AVX2 and FMA are available (matmul_tiles' caller's contract).
            let acc = unsafe { tile_avx2::<R, P>(self.x, self.w, p0 + self.panel, self.row) };
            return self.store(&acc);
        }
        let (inp, base) = (self.w.inp, (p0 + self.panel) * self.w.inp * PANEL);
        let mut acc = [[[0f32; PANEL]; P]; R];
        for k in 0..inp {
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = self.x[(self.row + i) * inp + k];
                for (q, aq) in a.iter_mut().enumerate() {
                    let wk = &self.w.data[base + (q * inp + k) * PANEL..][..PANEL];
                    for (aj, &wj) in aq.iter_mut().zip(wk) {
                        *aj = xv.mul_add(wj, *aj);
                    }
                }
            }
        }
        self.store(&acc);
    }

    /// The tile's outputs, dropping the padding past `out_cols`.
    #[inline(always)]
    fn store<const R: usize, const P: usize>(&mut self, acc: &[[[f32; PANEL]; P]; R]) {
        for (i, a) in acc.iter().enumerate() {
            let row = self.row + i;
            let out = &mut self.out[row * self.out_cols..(row + 1) * self.out_cols];
            for (q, aq) in a.iter().enumerate() {
                let c = (self.panel + q) * PANEL;
                let take = PANEL.min(self.out_cols - c);
                out[c..c + take].copy_from_slice(&aq[..take]);
            }
        }
    }
}

/// [`Tile::run`] in AVX2 registers: `2 R P` 8-lane accumulators (at most 8: `R P <= 4`), and
/// `_mm256_fmadd_ps` is the same single-rounding fma per lane as `mul_add`. Returns the chains'
/// values (the caller stores them: writing straight from registers with a variable length would
/// keep the accumulators in memory).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize, const P: usize>(
    x: &[f32],
    w: &Panels,
    p: usize,
    r0: usize,
) -> [[[f32; PANEL]; P]; R] {
    use std::arch::x86_64::*;
    const { assert!(R * P <= 4) };
    let inp = w.inp;
    let panels = &w.data[p * inp * PANEL..(p + P) * inp * PANEL];
    let xs = &x[r0 * inp..(r0 + R) * inp];
    let mut acc = [[[_mm256_setzero_ps(); 2]; P]; R];
    for k in 0..inp {
        let wk: [[__m256; 2]; P] = std::array::from_fn(|q| {
            let row = &panels[(q * inp + k) * PANEL..(q * inp + k + 1) * PANEL];
            [
                _mm256_loadu_ps(row.as_ptr()),
                _mm256_loadu_ps(row[8..].as_ptr()),
            ]
        });
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = _mm256_set1_ps(xs[i * inp + k]);
            for (aq, wq) in a.iter_mut().zip(&wk) {
                aq[0] = _mm256_fmadd_ps(xv, wq[0], aq[0]);
                aq[1] = _mm256_fmadd_ps(xv, wq[1], aq[1]);
            }
        }
    }
    let mut out = [[[0f32; PANEL]; P]; R];
    for (o, a) in out.iter_mut().zip(&acc) {
        for (oq, aq) in o.iter_mut().zip(a) {
            _mm256_storeu_ps(oq.as_mut_ptr(), aq[0]);
            _mm256_storeu_ps(oq[8..].as_mut_ptr(), aq[1]);
        }
    }
    out
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
