//! Contract 3's quantiser and its integer matrix product: a row of f32 values becomes int8
//! values and one power-of-two scale `2^e`, with `e` read from the bits of the row's largest
//! magnitude (no libm), so every backend computes the same integers.

use crate::numerics::int8::{matmul_i8_with, I8Kernel, I8Matrix};
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// The largest int8 magnitude used: quantised values lie in `-127..=127` (never -128), so a
/// product of two has magnitude at most `127 * 127` and the bounds below are symmetric.
pub(crate) const QMAX: i32 = 127;

/// The range of scale exponents. `2^e` and every sum of three exponents met in the contract
/// (`ex + ew`; `eq + ek - 3`; `14 + ev - E`) stay inside f32's normal exponents `-126..=127`, so
/// each scale is one exact power of two built from its bits. Rows below `127 * 2^E_MIN` (about
/// 1e-16), all-zero rows included, get `E_MIN`; rows above `127 * 2^E_MAX` saturate at ±127.
pub(crate) const E_MIN: i32 = -60;
pub(crate) const E_MAX: i32 = 60;

/// The longest inner dimension (`d_model`, `d_ff`) of an int8 product. No-overflow bound: every
/// term `x_k * w_k` has `|x_k|, |w_k| <= 127`, so a sum of at most `2^17` terms has magnitude at
/// most `127 * 127 * 2^17 = 2,114,060,288 < i32::MAX = 2,147,483,647`, in any order.
/// (`int8_product_at_the_longest_inner_dimension_does_not_overflow` runs it at the bound.)
pub const MAX_INNER: usize = 1 << 17;

/// `2^e` as an f32, built from its exponent bits. Every `e` passed is a sum of exponents clamped
/// to `E_MIN..=E_MAX` and constants that the contract keeps in `-126..=127` (see [`E_MIN`]), so
/// the check is a debug one: a release build keeps the loops around it vectorisable.
#[inline(always)]
pub(crate) fn pow2(e: i32) -> f32 {
    debug_assert!((-126..=127).contains(&e), "2^{e} is not a normal f32");
    f32::from_bits(((e + 127) as u32) << 23)
}

/// The scale exponent of `row`: the smallest `e` in `E_MIN..=E_MAX` with `m <= 127 * 2^e`, `m`
/// the largest `|x|` (clamped to `E_MAX` when there is none). Read from bits: `m`'s pattern
/// (sign cleared; the largest as an unsigned integer, so a NaN counts as the largest) is
/// `field << 23 | frac`. A zero or subnormal `m` (`field == 0`) gives `E_MIN`. Otherwise
/// `m = M * 2^(field - 150)` with `M = frac | 2^23` in `[2^23, 2^24)`, and the smallest `k`
/// with `127 * 2^k >= M` is 17 when `M <= 127 * 2^17`, else 18:
/// `e = clamp(field - 133 + (M > 16,646,144), E_MIN, E_MAX)`.
#[inline(always)]
pub(crate) fn scale_exponent(row: &[f32]) -> i32 {
    let m = row
        .iter()
        .map(|x| x.to_bits() & 0x7FFF_FFFF)
        .max()
        .unwrap_or(0);
    let field = (m >> 23) as i32;
    if field == 0 {
        return E_MIN;
    }
    let mant = (m & 0x7F_FFFF) | 0x80_0000;
    let e = field - 150 + 17 + i32::from(mant > (QMAX as u32) << 17);
    e.clamp(E_MIN, E_MAX)
}

/// `v` rounded to the nearest integer, ties to even, for `|v| < 2^22`: adding and subtracting
/// `1.5 · 2^23` leaves no fraction bits, and f32 addition rounds to nearest even. Outside that
/// range the result keeps `v`'s sign and is at least `2^22 - 1` in magnitude (NaN stays NaN), so
/// a caller that clamps to `±127` gets what `f32::round_ties_even` would give (the test checks
/// every f32). Two additions instead of a libm `rintf` call per value on x86-64's baseline.
#[inline(always)]
pub(crate) fn round_even(v: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + SHIFTER) - SHIFTER
}

/// `v` as an i32 the way Rust's saturating `as` converts it, for a `v` that is NaN (0) or an
/// integer of magnitude below 2^31 (itself). Unlike `as`, whose saturation x86 has no vector
/// instruction for, this vectorises: one compare and one truncating conversion per lane.
#[inline(always)]
pub(crate) fn int_or_zero(v: f32) -> i32 {
    debug_assert!(v.is_nan() || (v == v.trunc() && v.abs() < 2_147_483_648.0));
    let v = if v.is_nan() { 0.0 } else { v };
    // SAFETY: `v` is finite and in i32's range (the contract above).
    unsafe { v.to_int_unchecked() }
}

/// `clamp(round_half_even(v), -127, 127)` as an i8, NaN to 0 (what
/// `v.round_ties_even().clamp(-127.0, 127.0) as i8` gives, checked for every f32).
#[inline(always)]
pub(crate) fn quantise_value(v: f32) -> i8 {
    let q = QMAX as f32;
    int_or_zero(round_even(v).clamp(-q, q)) as i8
}

/// Quantises `x` into `out`: `q_k = clamp(round_half_even(x_k * 2^-e), -127, 127)` with
/// `e = scale_exponent(x)` (the multiply is exact for normal results; NaN becomes 0, by Rust's
/// saturating float-to-int conversion, as PTX's `cvt.rni.sat`). Returns `e`.
#[inline(always)]
pub(crate) fn quantise_row(x: &[f32], out: &mut [i8]) -> i32 {
    debug_assert_eq!(x.len(), out.len());
    let e = scale_exponent(x);
    let inv = pow2(-e);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantise_value(v * inv);
    }
    e
}

/// Replaces every `width`-wide row of `x` by its quantised value, `q_k * 2^e` ([`quantise_row`]):
/// what contract 3 feeds its integer products, as f32 (fake quantisation, for
/// quantisation-aware training). Rows are independent and run in parallel.
pub(crate) fn fake_quantise_rows(x: &mut [f32], width: usize) {
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "rows of {width}"
    );
    x.par_chunks_exact_mut(width)
        .with_min_len(ROWS_PER_TASK)
        .for_each_init(
            || vec![0i8; width],
            |q, row| {
                let scale = pow2(quantise_row(row, q));
                for (v, &q) in row.iter_mut().zip(q.iter()) {
                    *v = f32::from(q) * scale;
                }
            },
        );
}

/// `sum_k a_k b_k` in i32. Exact and order-free for `a.len() <= MAX_INNER` (the bound at
/// [`MAX_INNER`]); callers' shapes are held to it by `Int8M1::new`.
#[inline(always)]
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    debug_assert!(a.len() == b.len() && a.len() <= MAX_INNER);
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// A weight matrix quantised per output channel: row `o` (output `o`'s `inp` weights) is
/// `w[o] * 2^e[o]`, packed for the integer product.
pub(crate) struct QMatrix {
    w: I8Matrix,
    e: Vec<i32>,
}

impl QMatrix {
    /// The int8 weights, `[n][inp]` (row `o`: output `o`'s), unpacked: what a GPU uploads.
    pub(crate) fn rows(&self) -> Vec<i8> {
        (0..self.w.outputs()).flat_map(|o| self.w.row(o)).collect()
    }

    /// Each output row's scale exponent `e[o]`.
    pub(crate) fn exponents(&self) -> &[i32] {
        &self.e
    }

    pub(crate) fn inputs(&self) -> usize {
        self.w.inputs()
    }

    pub(crate) fn outputs(&self) -> usize {
        self.w.outputs()
    }

    /// The weights this matrix stands for, `w[o][k] * 2^e[o]` in the model's `[n, inp]` layout
    /// (each value exact: an integer below 128 times a power of two). Quantisation-aware
    /// training computes with these, so it sees the very weights the integer product reads.
    pub(crate) fn dequantised(&self) -> Vec<f32> {
        let inp = self.w.inputs();
        let mut out = self.rows().into_iter().map(f32::from).collect::<Vec<_>>();
        for (row, &e) in out.chunks_exact_mut(inp).zip(&self.e) {
            row.iter_mut().for_each(|v| *v *= pow2(e));
        }
        out
    }

    /// The matrix whose rows are `w` (`[n][inp]` int8 values) scaled by `2^e[o]`, as
    /// [`from_rows`](Self::from_rows) made and stored it. Refuses what contract 3's quantiser
    /// cannot produce: the value -128, an exponent outside `E_MIN..=E_MAX`, and a row whose
    /// exponent is above the smallest that fits it (strictly between `E_MIN` and `E_MAX`, its
    /// largest magnitude is then at least 64: the quantiser picks the smallest `e` with
    /// `max |x| <= 127 * 2^e`, so `max |x| * 2^-e > 63.5`).
    pub(crate) fn from_parts(w: &[i8], e: Vec<i32>, n: usize, inp: usize) -> Result<Self> {
        ensure!(
            w.len() == n * inp && e.len() == n,
            "{} weights and {} exponents for {n} rows of {inp}",
            w.len(),
            e.len()
        );
        for (o, &eo) in e.iter().enumerate() {
            ensure!(
                (E_MIN..=E_MAX).contains(&eo),
                "row {o} has scale exponent {eo}, outside contract 3's {E_MIN}..={E_MAX}"
            );
            let largest = w[o * inp..(o + 1) * inp]
                .iter()
                .map(|v| v.unsigned_abs())
                .max()
                .unwrap_or(0);
            ensure!(
                eo == E_MIN || eo == E_MAX || largest >= 64,
                "row {o} has scale exponent {eo} but its largest weight is {largest}: the quantiser would have chosen a smaller exponent"
            );
        }
        Ok(QMatrix {
            w: I8Matrix::from_rows(w, n, inp)?,
            e,
        })
    }

    /// Quantises the model's `[n, inp]` layout row by row. With `gain` (the RMSNorm before the
    /// product), each weight is first multiplied by its input's gain, `w[o][k] * g[k]` (one f32
    /// multiply), so the norm itself applies no gain.
    pub(crate) fn from_rows(w: &[f32], n: usize, inp: usize, gain: Option<&[f32]>) -> Self {
        assert_eq!(w.len(), n * inp, "weight shape");
        let mut q = vec![0i8; n * inp];
        let mut e = Vec::with_capacity(n);
        let mut row = vec![0f32; inp];
        for (o, out) in q.chunks_exact_mut(inp).enumerate() {
            row.copy_from_slice(&w[o * inp..(o + 1) * inp]);
            if let Some(g) = gain {
                row.iter_mut().zip(g).for_each(|(x, &g)| *x *= g);
            }
            e.push(quantise_row(&row, out));
        }
        let w = I8Matrix::from_rows(&q, n, inp).expect("quantised values lie in -127..=127");
        QMatrix { w, e }
    }
}

/// `out[r][o] = (acc as f32) * 2^(ex_r + e_o)`, `acc = sum_k xq[r][k] w[o][k]` in i32, for every
/// `inp`-wide row `r` of `x`, each row quantised on its own ([`quantise_row`]), so a row's result
/// does not depend on the others. The one rounding is `acc as f32` (exact below 2^24); the scale
/// is one exact power-of-two multiply (`ex + e_o` lies in `-120..=120`). The sums come from
/// `kernel` (any of them gives the same integers).
pub(crate) fn qmatmul(kernel: I8Kernel, out: &mut [f32], x: &[f32], w: &QMatrix) {
    let (inp, n) = (w.w.inputs(), w.w.outputs());
    assert!(
        x.len().is_multiple_of(inp) && out.len() == x.len() / inp * n,
        "qmatmul shapes"
    );
    let (xq, ex) = quantise_rows(kernel, x, inp);
    let mut acc = vec![0i32; out.len()];
    matmul_i8_with(kernel, &mut acc, &xq, &w.w);
    out.par_chunks_exact_mut(n)
        .zip(acc.par_chunks_exact(n))
        .zip(ex.par_iter())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|((or, ar), &ex)| {
            kernel.vectorised(
                #[inline(always)]
                || {
                    for ((o, &a), &ew) in or.iter_mut().zip(ar).zip(&w.e) {
                        *o = a as f32 * pow2(ex + ew);
                    }
                },
            )
        });
}

/// Every `inp`-wide row of `x` quantised on its own ([`quantise_row`]): the int8 values and
/// each row's exponent. Rows run in parallel, 16 or more to a task.
pub(crate) fn quantise_rows(kernel: I8Kernel, x: &[f32], inp: usize) -> (Vec<i8>, Vec<i32>) {
    let mut xq = vec![0i8; x.len()];
    let ex: Vec<i32> = x
        .par_chunks_exact(inp)
        .zip(xq.par_chunks_exact_mut(inp))
        .with_min_len(ROWS_PER_TASK)
        .map(|(xr, qr)| {
            kernel.vectorised(
                #[inline(always)]
                || quantise_row(xr, qr),
            )
        })
        .collect();
    (xq, ex)
}

/// The fewest rows a parallel task of row-wise work takes (fewer cost more to hand out).
pub(crate) const ROWS_PER_TASK: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    /// `quantise_value` (`round_even`, the clamp, the conversion) equals `round_ties_even`, the
    /// clamp and Rust's saturating `as` for every f32 bit pattern, and `round_even` equals
    /// `round_ties_even` alone below 2^22.
    #[test]
    fn round_even_matches_round_ties_even_on_every_f32() {
        use rayon::prelude::*;
        let q = QMAX as f32;
        (0..=u16::MAX).into_par_iter().for_each(|hi| {
            for lo in 0..=u16::MAX {
                let v = f32::from_bits((hi as u32) << 16 | lo as u32);
                let (fast, std) = (round_even(v), v.round_ties_even());
                assert_eq!(quantise_value(v), std.clamp(-q, q) as i8, "{v:e}");
                if v.abs() < 4_194_304.0 {
                    assert_eq!(
                        fast.to_bits() & 0x7FFF_FFFF,
                        std.to_bits() & 0x7FFF_FFFF,
                        "{v:e}"
                    );
                }
            }
        });
    }

    /// The exponent is the smallest in range with `m <= 127 * 2^e`, checked in f64 over
    /// magnitudes around every boundary and across the range, negative values and zeros included.
    #[test]
    fn scale_exponent_is_the_smallest_power_of_two_that_fits_127_steps() {
        let mut ms: Vec<f32> = vec![0.0, f32::MIN_POSITIVE, 1e-30, 1e-10, 1.0, 127.0, 3e20];
        for e in E_MIN - 3..=E_MAX + 3 {
            let edge = 127.0 * (e as f64).exp2();
            let f = edge as f32;
            ms.extend([
                f,
                f32::from_bits(f.to_bits() + 1),
                f32::from_bits(f.to_bits() - 1),
            ]);
            ms.push((edge * 0.75) as f32);
        }
        for m in ms {
            let e = scale_exponent(&[0.5 * m, -m, 0.0]);
            let fits = |e: i32| m as f64 <= 127.0 * (e as f64).exp2();
            assert!((E_MIN..=E_MAX).contains(&e), "{m:e}: {e}");
            if e < E_MAX {
                assert!(fits(e), "{m:e} does not fit 127 * 2^{e}");
            }
            if e > E_MIN {
                assert!(!fits(e - 1), "{m:e}: 2^{} fits already", e - 1);
            }
        }
        assert_eq!(scale_exponent(&[]), E_MIN);
        assert_eq!(scale_exponent(&[f32::NAN, 1.0]), E_MAX);
    }

    /// A hand-computed row: ties round to even, saturation past the exponent range, NaN, and an
    /// all-zero row.
    #[test]
    fn quantiser_rounds_ties_to_even_clamps_and_gives_zero_rows_the_smallest_scale() {
        let mut q = [0i8; 8];
        // max 1.0 <= 127 * 2^e first at e = -6 (127/64 = 1.98; 127/128 = 0.99 < 1), so x * 64:
        // 1 -> 64; 0.5 -> 0 and 2.5 -> 2 and -3.5 -> -4 (ties to even); 1.5 -> 2; 0.75 -> 48.
        let x = [
            1.0,
            0.5 / 64.0,
            1.5 / 64.0,
            2.5 / 64.0,
            -3.5 / 64.0,
            0.75,
            -1.0,
            -0.5,
        ];
        assert_eq!(quantise_row(&x, &mut q), -6);
        assert_eq!(q, [64, 0, 2, 2, -4, 48, -64, -32]);
        // Exactly 127 steps: e = 0, nothing clamped.
        assert_eq!(quantise_row(&[127.0, -126.5, 0.5, 1.5], &mut q[..4]), 0);
        assert_eq!(q[..4], [127, -126, 0, 2]);
        // An all-zero row gets the smallest scale, 2^-60, and zeros.
        q.fill(9);
        assert_eq!(quantise_row(&[0.0, -0.0, 0.0], &mut q[..3]), E_MIN);
        assert_eq!(q[..3], [0, 0, 0]);
        // Past 127 * 2^60 the exponent stops at E_MAX and the values saturate.
        assert_eq!(quantise_row(&[1e30, -1e30, 1e18], &mut q[..3]), E_MAX);
        assert_eq!(q[..3], [127, -127, 1]); // 1e18 / 2^60 = 0.867 -> 1
        assert_eq!(quantise_row(&[f32::NAN, 1e19], &mut q[..2]), E_MAX);
        assert_eq!(q[..2], [0, 9]); // 1e19 / 2^60 = 8.67 -> 9
    }

    /// Gains fold into the weights before quantising, per output row, and the product
    /// dequantises with `2^(ex + ew)`: a 2 x 3 case computed by hand.
    #[test]
    fn folded_gains_and_dequantisation_by_hand() {
        // Row 0: [1, -2, 4] * g [1, 0.5, 0.25] = [1, -1, 1]: e = -6, q = [64, -64, 64].
        // Row 1: [127, 0, -63.5] * g = [127, 0, -15.875]: e = 0, q = [127, 0, -16].
        let w = [1.0, -2.0, 4.0, 127.0, 0.0, -63.5];
        let m = QMatrix::from_rows(&w, 2, 3, Some(&[1.0, 0.5, 0.25]));
        assert_eq!(
            [m.w.row(0), m.w.row(1)].concat(),
            [64, -64, 64, 127, 0, -16]
        );
        assert_eq!(m.e, [-6, 0]);
        // x = [1, 0.25, -0.5]: e = -6, xq = [64, 16, -32].
        let mut out = [0f32; 2];
        qmatmul(I8Kernel::Portable, &mut out, &[1.0, 0.25, -0.5], &m);
        let acc0 = 64 * 64 - 16 * 64 - 32 * 64; // 1024, times 2^(-6 - 6)
        let acc1 = 64 * 127 + 32 * 16; // 8640, times 2^(-6 + 0)
        assert_eq!((acc0, acc1), (1024, 8640));
        assert_eq!(out, [0.25, 135.0]);
    }

    /// A matrix rebuilt from its stored rows and exponents is the quantised one; what the
    /// quantiser cannot produce is refused: -128, an exponent out of range, and a row whose
    /// exponent is larger than the smallest that fits it (unless it is the clamp at either end).
    #[test]
    fn stored_parts_rebuild_the_matrix_and_impossible_ones_are_refused() {
        let w = [
            1.0, -2.0, 4.0, 127.0, 0.0, -63.5, 0.0, 0.0, 0.0, 1e30, 0.0, -1.0,
        ];
        let m = QMatrix::from_rows(&w, 4, 3, None);
        assert_eq!(m.e, [-4, 0, E_MIN, E_MAX]);
        let back = QMatrix::from_parts(&m.rows(), m.e.clone(), 4, 3).unwrap();
        assert_eq!((back.rows(), back.e.clone()), (m.rows(), m.e.clone()));
        let refused = |w: &[i8], e: Vec<i32>| {
            format!(
                "{:#}",
                QMatrix::from_parts(w, e, 4, 3).err().expect("refused")
            )
        };
        let mut rows = m.rows();
        rows[0] = -128;
        assert!(refused(&rows, m.e.clone()).contains("-128"));
        for bad in [E_MIN - 1, E_MAX + 1] {
            let mut e = m.e.clone();
            e[2] = bad;
            assert!(refused(&m.rows(), e).contains("outside contract 3's -60..=60"));
        }
        // Row 0 is [16, -32, 64] at 2^-4; at 2^-3 it would read [8, -16, 32]: an exponent
        // one too large leaves every magnitude below 64.
        assert_eq!(m.rows()[..3], [16, -32, 64]);
        let mut half = m.rows();
        half[..3].copy_from_slice(&[8, -16, 32]);
        let mut e = m.e.clone();
        e[0] = -3;
        assert!(
            refused(&half, e).contains("row 0 has scale exponent -3 but its largest weight is 32")
        );
        assert!(refused(&m.rows()[..11], m.e.clone()).contains("11 weights"));
    }

    /// Fake quantisation is the integer product's arithmetic in f32: fake-quantised rows times
    /// the dequantised weights (gain folded) give `qmatmul`'s bits, since with 64 inputs every
    /// partial sum is an integer below 2^24 times `2^(ex + ew)`, so exact in f32.
    #[test]
    fn fake_quantised_rows_times_dequantised_weights_equal_the_integer_product() {
        let (n, inp, rows) = (5, 64, 40);
        let mut rng = crate::rng::Rng::new(9);
        let mut val = |s: f32| (rng.below(20001) as f32 - 10000.0) * 1e-4 * s;
        let w: Vec<f32> = (0..n * inp).map(|i| val(1.0 + (i / inp) as f32)).collect();
        let gain: Vec<f32> = (0..inp).map(|_| 1.0 + val(0.5)).collect();
        let x: Vec<f32> = (0..rows * inp)
            .map(|i| val(0.1 + (i / inp) as f32))
            .collect();
        let m = QMatrix::from_rows(&w, n, inp, Some(&gain));
        let mut want = vec![0f32; rows * n];
        qmatmul(I8Kernel::Portable, &mut want, &x, &m);
        let mut xq = x.clone();
        fake_quantise_rows(&mut xq, inp);
        let wq = m.dequantised();
        for (r, xr) in xq.chunks_exact(inp).enumerate() {
            let mut q = vec![0i8; inp];
            let e = quantise_row(&x[r * inp..(r + 1) * inp], &mut q);
            assert!(xr.iter().zip(&q).all(|(&v, &q)| v == q as f32 * pow2(e)));
            for (o, wr) in wq.chunks_exact(inp).enumerate() {
                let got = xr.iter().zip(wr).fold(0f32, |acc, (a, b)| acc + a * b);
                assert_eq!(
                    got.to_bits(),
                    want[r * n + o].to_bits(),
                    "row {r} output {o}"
                );
            }
        }
        assert_ne!(xq, x, "the rows were quantised");
    }

    /// Every kernel quantises and dequantises rows (the vectorised copies) to the plain code's
    /// bits, at every row width from 1 to 70 (every tail of an 8- or 16-lane loop) and with the
    /// values that take special paths: ties, zeros, subnormals, infinities, NaN, magnitudes past
    /// the exponent range.
    #[test]
    fn quantising_on_every_kernel_equals_the_plain_code() {
        let special = [
            0.5 / 64.0,
            -2.5 / 64.0,
            0.0,
            -0.0,
            1e-40,
            f32::INFINITY,
            f32::NAN,
            3e25,
            -7.25,
            1.0,
        ];
        let mut rng = crate::rng::Rng::new(5);
        for inp in 1..=70 {
            let w: Vec<f32> = (0..3 * inp)
                .map(|_| rng.below(255) as f32 - 127.0)
                .collect();
            let m = QMatrix::from_rows(&w, 3, inp, None);
            let rows = 2 * ROWS_PER_TASK + 3;
            let x: Vec<f32> = (0..rows * inp)
                .map(|i| match rng.below(4) {
                    0 => special[i % special.len()],
                    _ => (rng.below(20001) as f32 - 10000.0) * 1e-3 * (1 + i % 3) as f32,
                })
                .collect();
            let run = |kernel| {
                let mut out = vec![0f32; rows * 3];
                qmatmul(kernel, &mut out, &x, &m);
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let want = run(I8Kernel::Portable);
            for kernel in I8Kernel::available() {
                assert_eq!(run(kernel), want, "{} at width {inp}", kernel.name());
            }
        }
    }

    /// The no-overflow bound of [`MAX_INNER`], run at the bound: a product of `2^17` terms of
    /// `±127 * 127` gives the exact sum (checked in i64), which a wrapping i32 would not.
    #[test]
    fn int8_product_at_the_longest_inner_dimension_does_not_overflow() {
        for sign in [1.0f32, -1.0] {
            let x = vec![127.0f32; MAX_INNER];
            let w = vec![127.0 * sign; MAX_INNER];
            let m = QMatrix::from_rows(&w, 1, MAX_INNER, None);
            let exact = 127i64 * 127 * MAX_INNER as i64 * sign as i64;
            assert!(exact.abs() <= i32::MAX as i64);
            for kernel in I8Kernel::available() {
                let mut out = [0f32];
                qmatmul(kernel, &mut out, &x, &m);
                assert_eq!(
                    out[0] as i64,
                    exact,
                    "{}: 2^17 products of 127 * 127",
                    kernel.name()
                );
            }
        }
    }
}
