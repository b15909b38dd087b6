//! The output layer fused with its loss: logits = x W^T, cross-entropy + z-loss, and (when
//! training) dlogits, dx and dW, a block of rows at a time so that the `[N, V]` logits are never
//! held in full (at V = 65536 they would be the largest activation by far).
//!
//! Inside a block the vocabulary is cut into fixed chunks and the rows into fixed groups; the
//! logits live chunk-major (`[chunk][row][column]`), so every (row group, chunk) tile and every
//! chunk's `dW` rows are contiguous and independent. The softmax is taken per chunk (local max
//! and sum) and combined per row afterwards, so no phase needs a whole row at once. Every sum
//! runs in an order fixed by these constants: results do not depend on the thread count.

use super::matmul::{gemm_serial, StridedRef};
use crate::numerics::exp_contract;
use rayon::prelude::*;

/// Logit floats per row block (64 MiB): 256 rows at V = 65536, so each chunk of W is packed for
/// 256 rows at a time (packing cost, not arithmetic, is what smaller blocks lose).
const BLOCK_FLOATS: usize = 1 << 24;
/// Vocabulary columns per chunk: one chunk of `W` (and of `dW`) is 2 MiB at d = 128.
const VOCAB_CHUNK: usize = 4096;
/// Rows per tile: the whole block at V = 65536.
const ROW_GROUP: usize = 256;

/// Sums over the rows of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossSums {
    /// Sum of cross-entropy in nats.
    pub ce: f64,
    /// Sum of logsumexp(logits)^2 (the z-loss before its weight).
    pub z: f64,
    pub rows: usize,
}

/// Gradient outputs of the classifier: `dx` is overwritten, `dw` accumulated. Gradients are of
/// the mean loss `(1/rows_total) * sum(ce + z_loss * lse^2)`.
pub struct ClassifierGrads<'a> {
    pub dx: &'a mut [f32],
    pub dw: &'a mut [f32],
    pub rows_total: usize,
}

/// One (row group, vocabulary chunk) tile of the chunk-major logits buffer.
struct Tile<'a> {
    /// First row of the group, relative to the block.
    r0: usize,
    /// First vocabulary column of the chunk, and its width.
    c0: usize,
    width: usize,
    /// `[rows][width]`: logits, then `e^(l - chunk max)`, then dlogits.
    data: &'a mut [f32],
}

/// Per (row, chunk): the chunk's max logit, the sum of `e^(l - max)` over it, and the target's
/// logit when the target falls in this chunk.
#[derive(Clone, Copy)]
struct ChunkStats {
    max: f32,
    sum: f32,
    target: Option<f32>,
}

/// Length of the logits buffer for `n` rows over vocabulary `v` (one block of rows).
pub(crate) fn logits_floats(n: usize, v: usize) -> usize {
    (BLOCK_FLOATS / v).clamp(1, n.max(1)) * v
}

/// Runs the classifier over `x[n, d]` with `w[v, d]` and integer `targets[n]`.
#[allow(clippy::too_many_arguments)]
pub fn classifier_forward_backward(
    x: &[f32],
    w: &[f32],
    targets: &[u32],
    d: usize,
    v: usize,
    z_loss: f32,
    mut grads: Option<ClassifierGrads>,
    logits: &mut Vec<f32>,
) -> LossSums {
    let n = targets.len();
    let rows_per_block = (BLOCK_FLOATS / v).clamp(1, n.max(1));
    logits.resize(logits_floats(n, v), 0.0);
    let chunks = v.div_ceil(VOCAB_CHUNK);
    let scale = grads.as_ref().map_or(0.0, |g| 1.0 / g.rows_total as f32);
    let mut sums = LossSums::default();
    for b0 in (0..n).step_by(rows_per_block) {
        let rows = rows_per_block.min(n - b0);
        let xb = &x[b0 * d..(b0 + rows) * d];
        let tb = &targets[b0..b0 + rows];
        let mut tiles = split_tiles(&mut logits[..rows * v], rows, v);

        // Logits and per-chunk softmax statistics, tile by tile.
        let stats: Vec<Vec<ChunkStats>> = tiles
            .par_iter_mut()
            .map(|t| {
                let tile_rows = t.data.len() / t.width;
                gemm_serial(
                    tile_rows,
                    d,
                    t.width,
                    StridedRef {
                        data: &xb[t.r0 * d..],
                        rs: d,
                        cs: 1,
                    },
                    StridedRef {
                        data: &w[t.c0 * d..],
                        rs: 1,
                        cs: d,
                    },
                    0.0,
                    t.data,
                    t.width,
                );
                t.data
                    .chunks_mut(t.width)
                    .zip(&tb[t.r0..])
                    .map(|(row, &target)| {
                        let j = (target as usize).wrapping_sub(t.c0);
                        let target = (j < t.width).then(|| row[j]);
                        let (max, sum) = exp_shifted(row);
                        ChunkStats { max, sum, target }
                    })
                    .collect()
            })
            .collect();
        let groups = rows.div_ceil(ROW_GROUP);

        // Per row: the whole row's logsumexp from its chunks (in chunk order), the loss, and
        // each chunk's factor turning `e^(l - chunk max)` into dlogits.
        let mut factors = vec![0f32; rows * chunks];
        for r in 0..rows {
            let row_stats = |c: usize| stats[c * groups + r / ROW_GROUP][r % ROW_GROUP];
            let max = (0..chunks).fold(f32::NEG_INFINITY, |m, c| m.max(row_stats(c).max));
            let sum: f32 = (0..chunks)
                .map(|c| row_stats(c).sum * exp_contract(row_stats(c).max - max))
                .sum();
            let lse = max + sum.ln();
            let target = row_stats(tb[r] as usize / VOCAB_CHUNK).target;
            sums.ce += (lse - target.expect("target inside the vocabulary")) as f64;
            sums.z += (lse as f64) * (lse as f64);
            // d/dlogit of ce + z*lse^2 is p - onehot + 2 z lse p, with p = e / sum
            let coef = scale * (1.0 + 2.0 * z_loss * lse) / sum;
            for c in 0..chunks {
                factors[r * chunks + c] = coef * exp_contract(row_stats(c).max - max);
            }
        }

        let Some(g) = grads.as_mut() else { continue };
        // dlogits in place, then each tile's share of dx = dlogits W.
        let partial_dx: Vec<Vec<f32>> = tiles
            .par_iter_mut()
            .map(|t| {
                let tile_rows = t.data.len() / t.width;
                let chunk = t.c0 / VOCAB_CHUNK;
                for (i, row) in t.data.chunks_mut(t.width).enumerate() {
                    let r = t.r0 + i;
                    let f = factors[r * chunks + chunk];
                    row.iter_mut().for_each(|e| *e *= f);
                    let j = (tb[r] as usize).wrapping_sub(t.c0);
                    if j < t.width {
                        row[j] -= scale;
                    }
                }
                let mut part = vec![0f32; tile_rows * d];
                gemm_serial(
                    tile_rows,
                    t.width,
                    d,
                    StridedRef {
                        data: t.data,
                        rs: t.width,
                        cs: 1,
                    },
                    StridedRef {
                        data: &w[t.c0 * d..],
                        rs: d,
                        cs: 1,
                    },
                    0.0,
                    &mut part,
                    d,
                );
                part
            })
            .collect();
        let dx = &mut g.dx[b0 * d..(b0 + rows) * d];
        dx.par_chunks_mut(d).enumerate().for_each(|(r, out)| {
            out.fill(0.0);
            for c in 0..chunks {
                let part = &partial_dx[c * groups + r / ROW_GROUP];
                let i = r % ROW_GROUP;
                out.iter_mut()
                    .zip(&part[i * d..(i + 1) * d])
                    .for_each(|(o, p)| *o += p);
            }
        });
        // dW += dlogits^T x, one chunk of dW rows per task over all the block's rows.
        let chunk_data: Vec<&[f32]> = logits[..rows * v].chunks(rows * VOCAB_CHUNK).collect();
        g.dw[..v * d]
            .par_chunks_mut(VOCAB_CHUNK * d)
            .zip(chunk_data)
            .for_each(|(dw, dl)| {
                let width = dw.len() / d;
                gemm_serial(
                    width,
                    rows,
                    d,
                    StridedRef {
                        data: dl,
                        rs: 1,
                        cs: width,
                    },
                    StridedRef {
                        data: xb,
                        rs: d,
                        cs: 1,
                    },
                    1.0,
                    dw,
                    d,
                );
            });
    }
    sums.rows = n;
    sums
}

/// Cuts a block's chunk-major logits buffer (`rows` rows, vocabulary `v`) into tiles, chunk by
/// chunk and, inside a chunk, row group by row group: tile `c * groups + g`.
fn split_tiles(buf: &mut [f32], rows: usize, v: usize) -> Vec<Tile<'_>> {
    let mut tiles = Vec::new();
    for (c, chunk) in buf.chunks_mut(rows * VOCAB_CHUNK).enumerate() {
        let width = chunk.len() / rows;
        for (g, data) in chunk.chunks_mut(ROW_GROUP * width).enumerate() {
            tiles.push(Tile {
                r0: g * ROW_GROUP,
                c0: c * VOCAB_CHUNK,
                width,
                data,
            });
        }
    }
    debug_assert_eq!(
        tiles.len(),
        v.div_ceil(VOCAB_CHUNK) * rows.div_ceil(ROW_GROUP)
    );
    tiles
}

/// Overwrites a row of logits with `e^(l - max)` and returns `(max, sum of them)`. The
/// exponential is the contract's polynomial (within 4e-7 of `exp`), which vectorises where libm's
/// does not: at vocab 65,536 the exponentials would otherwise cost more than the GEMMs. The sum
/// runs in 8 interleaved partial sums, a fixed order whatever the thread count.
fn exp_shifted(row: &mut [f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the features the function is compiled for were just detected.
        return unsafe { exp_shifted_avx2(row) };
    }
    exp_shifted_portable(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(row: &mut [f32]) -> (f32, f32) {
    exp_shifted_portable(row)
}

#[inline(always)]
fn exp_shifted_portable(row: &mut [f32]) -> (f32, f32) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    row.iter_mut().for_each(|x| *x = exp_contract(*x - m));
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (s, &x) in sums.iter_mut().zip(c) {
            *s += x;
        }
    }
    let sum = sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    (m, sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Loss sums, dx and dW in f64, straight from the definitions.
    fn naive(
        x: &[f32],
        w: &[f32],
        t: &[u32],
        d: usize,
        v: usize,
        z: f64,
    ) -> (f64, f64, Vec<f64>, Vec<f64>) {
        let n = t.len();
        let (mut ce, mut zs) = (0.0, 0.0);
        let mut dx = vec![0.0; n * d];
        let mut dw = vec![0.0; v * d];
        for r in 0..n {
            let xr = &x[r * d..(r + 1) * d];
            let l: Vec<f64> = (0..v)
                .map(|j| (0..d).map(|k| xr[k] as f64 * w[j * d + k] as f64).sum())
                .collect();
            let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = l.iter().map(|&a| (a - m).exp()).sum();
            let lse = m + s.ln();
            ce += lse - l[t[r] as usize];
            zs += lse * lse;
            for j in 0..v {
                let p = (l[j] - lse).exp();
                let g = (p * (1.0 + 2.0 * z * lse) - f64::from(j == t[r] as usize)) / n as f64;
                for k in 0..d {
                    dx[r * d + k] += g * w[j * d + k] as f64;
                    dw[j * d + k] += g * xr[k] as f64;
                }
            }
        }
        (ce, zs, dx, dw)
    }

    /// Several row blocks, two row groups and a ragged last vocabulary chunk.
    #[test]
    fn matches_f64_reference_across_blocks_chunks_and_thread_counts() {
        let (d, v) = (6, VOCAB_CHUNK + 904);
        let n = BLOCK_FLOATS / v + ROW_GROUP + 7;
        let mut rng = Rng::new(11);
        let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let w: Vec<f32> = (0..v * d).map(|_| rng.normal() as f32 * 0.5).collect();
        let t: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
        let z = 1e-4;
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut dx = vec![f32::NAN; n * d];
            let mut dw = vec![0.25f32; v * d];
            let mut scratch = Vec::new();
            let sums = pool.install(|| {
                classifier_forward_backward(
                    &x,
                    &w,
                    &t,
                    d,
                    v,
                    z as f32,
                    Some(ClassifierGrads {
                        dx: &mut dx,
                        dw: &mut dw,
                        rows_total: n,
                    }),
                    &mut scratch,
                )
            });
            (sums, dx, dw)
        };
        let (sums, dx, dw) = run(1);
        assert_eq!(
            (sums, dx.clone(), dw.clone()),
            run(3),
            "thread count changed the result"
        );
        let (ce, zs, dx_ref, dw_ref) = naive(&x, &w, &t, d, v, z);
        assert_eq!(sums.rows, n);
        assert!((sums.ce - ce).abs() < 1e-5 * ce, "ce {} vs {ce}", sums.ce);
        assert!((sums.z - zs).abs() < 1e-5 * zs, "z {} vs {zs}", sums.z);
        let close = |got: &[f32], want: &[f64], offset: f64| {
            let scale = want.iter().fold(0f64, |m, &a| m.max(a.abs()));
            for (i, (&g, &e)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g as f64 - offset - e).abs() < 1e-4 * scale,
                    "{i}: {g} vs {e}"
                );
            }
        };
        close(&dx, &dx_ref, 0.0);
        close(&dw, &dw_ref, 0.25);
    }
}
