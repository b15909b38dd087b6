//! Rotary position tables. Pairs are (i, i + 32) within each 64-wide head (the GPT-NeoX / Llama
//! "rotate half" layout). The angles are computed once on the host in f64 and rounded to f32, so
//! every backend, and M1's exact path, rotates with the same values.

use super::HEAD_DIM;

/// cos and sin tables, `[seq, HEAD_DIM / 2]` each.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTables {
    pub seq: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTables {
    /// Angle `t * theta^(-2i / HEAD_DIM)` for position `t` and pair `i`.
    pub fn new(seq: usize, theta: f32) -> Self {
        let half = HEAD_DIM / 2;
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for t in 0..seq {
            for i in 0..half {
                let freq = (theta as f64).powf(-2.0 * i as f64 / HEAD_DIM as f64);
                let a = t as f64 * freq;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        RopeTables { seq, cos, sin }
    }
}
