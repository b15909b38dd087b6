//! Linear layers on the CPU: `y = x W^T` forward and its two gradients, on top of
//! `matrixmultiply`'s cache-blocked SIMD kernels, split across threads in fixed row blocks so
//! results are identical whatever the thread count.

use rayon::prelude::*;

/// Rows of C per parallel task. Fixed, so the arithmetic never depends on the thread count.
const ROW_BLOCK: usize = 64;

/// A strided read-only matrix view: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct StridedRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// `C[m, n] = beta * C + A[m, k] * B[k, n]`, C row-major with row stride `n`, split across
/// threads in blocks of rows. Panics if a view is too short for the stated shape (a caller bug,
/// never data-dependent).
pub fn gemm(m: usize, k: usize, n: usize, a: StridedRef, b: StridedRef, beta: f32, c: &mut [f32]) {
    assert!(c.len() >= m * n, "gemm: C holds {} < {}x{}", c.len(), m, n);
    if m == 0 || n == 0 {
        return;
    }
    c[..m * n]
        .par_chunks_mut(ROW_BLOCK * n)
        .enumerate()
        .for_each(|(blk, c_blk)| {
            let rows = c_blk.len() / n;
            let a_blk = StridedRef {
                data: &a.data[(blk * ROW_BLOCK * a.rs).min(a.data.len())..],
                ..a
            };
            gemm_serial(rows, k, n, a_blk, b, beta, c_blk, n);
        });
}

/// `C[m, n] = beta * C + A[m, k] * B[k, n]` on the calling thread, C with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_serial(
    m: usize,
    k: usize,
    n: usize,
    a: StridedRef,
    b: StridedRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldc >= n && c.len() > (m - 1) * ldc + n - 1,
        "gemm: C too short"
    );
    let last = |v: &StridedRef, rows: usize, cols: usize| (rows - 1) * v.rs + (cols - 1) * v.cs;
    if k > 0 {
        assert!(a.data.len() > last(&a, m, k), "gemm: A too short");
        assert!(b.data.len() > last(&b, k, n), "gemm: B too short");
    }
    // SAFETY: every element touched lies within the slices, as asserted above.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// `out[n, d_out] = inp[n, d_in] W^T` with `W` stored `[d_out, d_in]`.
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
) {
    gemm(
        n,
        d_in,
        d_out,
        StridedRef {
            data: inp,
            rs: d_in,
            cs: 1,
        },
        StridedRef {
            data: w,
            rs: 1,
            cs: d_in,
        },
        0.0,
        out,
    );
}

/// Gradients of `out = inp W^T`: `dinp (+)= dout W` (added when `accumulate`, else overwritten) and
/// `dw += dout^T inp`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    accumulate: bool,
) {
    gemm(
        n,
        d_out,
        d_in,
        StridedRef {
            data: dout,
            rs: d_out,
            cs: 1,
        },
        StridedRef {
            data: w,
            rs: d_in,
            cs: 1,
        },
        if accumulate { 1.0 } else { 0.0 },
        dinp,
    );
    matmul_backward_weight(dw, dout, inp, n, d_in, d_out);
}

/// `dw[d_out, d_in] += dout[n, d_out]^T inp[n, d_in]`.
pub fn matmul_backward_weight(
    dw: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
) {
    gemm(
        d_out,
        n,
        d_in,
        StridedRef {
            data: dout,
            rs: 1,
            cs: d_out,
        },
        StridedRef {
            data: inp,
            rs: d_in,
            cs: 1,
        },
        1.0,
        dw,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.normal() as f32).collect()
    }

    #[test]
    fn forward_and_backward_match_naive_f64() {
        let (n, di, dout) = (150, 37, 70);
        let x = rand(n * di, 1);
        let w = rand(dout * di, 2);
        let g = rand(n * dout, 3);
        let mut y = vec![f32::NAN; n * dout];
        matmul_forward(&mut y, &x, &w, n, di, dout);
        let mut dx = vec![f32::NAN; n * di];
        let mut dw = vec![0.5f32; dout * di];
        matmul_backward(&mut dx, &mut dw, &g, &x, &w, n, di, dout, false);
        for r in 0..n {
            for o in 0..dout {
                let e: f64 = (0..di)
                    .map(|i| x[r * di + i] as f64 * w[o * di + i] as f64)
                    .sum();
                assert!((y[r * dout + o] as f64 - e).abs() < 1e-4, "y");
            }
            for i in 0..di {
                let e: f64 = (0..dout)
                    .map(|o| g[r * dout + o] as f64 * w[o * di + i] as f64)
                    .sum();
                assert!((dx[r * di + i] as f64 - e).abs() < 1e-4, "dx");
            }
        }
        for o in 0..dout {
            for i in 0..di {
                let e: f64 = 0.5
                    + (0..n)
                        .map(|r| g[r * dout + o] as f64 * x[r * di + i] as f64)
                        .sum::<f64>();
                assert!((dw[o * di + i] as f64 - e).abs() < 1e-3, "dw");
            }
        }
    }

    #[test]
    fn result_does_not_depend_on_thread_count() {
        let (n, di, dout) = (300, 64, 96);
        let x = rand(n * di, 4);
        let w = rand(dout * di, 5);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut y = vec![0.0; n * dout];
            pool.install(|| matmul_forward(&mut y, &x, &w, n, di, dout));
            y
        };
        assert_eq!(run(1), run(3));
    }
}
