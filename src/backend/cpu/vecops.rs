//! Small vector loops written so LLVM vectorises them (eight independent accumulators; the
//! summation order is fixed, so results are reproducible).

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// Sum of squares accumulated in f64 (gradient norms, RMSNorm statistics in tests).
pub fn sum_sq_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let chunks = x.len() / 4;
    for c in 0..chunks {
        for l in 0..4 {
            let v = x[c * 4 + l] as f64;
            acc[l] += v * v;
        }
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for v in &x[chunks * 4..] {
        s += (*v as f64) * (*v as f64);
    }
    s
}
