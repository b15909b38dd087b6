//! The one exponential of the numeric contract: range reduction by ln 2 and a degree-6 polynomial
//! evaluated with explicit fused multiply-adds. Every step is a single IEEE-754 f32 operation
//! (multiply, add, fma, floor, exponent-bit construction), so the CUDA twin computes the same bits.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n * LN2_HI` is exact for |n| < 2^9.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Taylor coefficients 1/k! for k = 2..6 (|r| <= ln2/2 keeps the error near one ulp).
const C6: f32 = 1.0 / 720.0;
const C5: f32 = 1.0 / 120.0;
const C4: f32 = 1.0 / 24.0;
const C3: f32 = 1.0 / 6.0;
const C2: f32 = 0.5;

/// `e^x` for the contract. Below -87 it returns 0, above 88 infinity; NaN stays NaN.
#[inline(always)]
pub fn exp_contract(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < -87.0 {
        return 0.0;
    }
    if x > 88.0 {
        return f32::INFINITY;
    }
    let n = (x * LOG2E + 0.5).floor();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let mut p = C6;
    p = p.mul_add(r, C5);
    p = p.mul_add(r, C4);
    p = p.mul_add(r, C3);
    p = p.mul_add(r, C2);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // p * 2^n with n in [-126, 127]: build 2^n from its exponent bits.
    // SAFETY: x is in [-87, 88] here, so n + 127 is an integer in [1, 254]. The unchecked
    // conversion (same value as `as`) is what lets the compiler vectorise loops over this function.
    let biased: i32 = unsafe { (n + 127.0).to_int_unchecked() };
    let scale = f32::from_bits((biased as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_f64_exp_over_the_softmax_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let want = (x as f64).exp();
            let got = exp_contract(x) as f64;
            worst = worst.max((got - want).abs() / want);
            x += 0.001_3;
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert_eq!(exp_contract(0.0), 1.0);
        assert_eq!(exp_contract(-100.0), 0.0);
        assert!(exp_contract(100.0).is_infinite());
        assert!(exp_contract(f32::NAN).is_nan());
    }
}
