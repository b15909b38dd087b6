//! Rotary position embeddings on the query and key parts of the fused `qkv` activation, with the
//! contract's tables ([`RopeTables`], pairs (i, i + 32) within each head).

use crate::numerics::{RopeTables, HEAD_DIM};
use rayon::prelude::*;

const HALF: usize = HEAD_DIM / 2;

/// Rotates q and k (columns `[0, 2d)` of each `[3d]` row) in place; row `r` is position `r % seq`.
/// `inverse` applies the transpose rotation, which is the backward pass.
pub fn rope_apply(qkv: &mut [f32], tables: &RopeTables, d: usize, inverse: bool) {
    let seq = tables.seq;
    qkv.par_chunks_mut(3 * d).enumerate().for_each(|(r, row)| {
        let t = r % seq;
        let (c, s) = (
            &tables.cos[t * HALF..(t + 1) * HALF],
            &tables.sin[t * HALF..(t + 1) * HALF],
        );
        for head in row[..2 * d].chunks_mut(HEAD_DIM) {
            for i in 0..HALF {
                let (x1, x2) = (head[i], head[i + HALF]);
                let sn = if inverse { -s[i] } else { s[i] };
                head[i] = x1 * c[i] - x2 * sn;
                head[i + HALF] = x1 * sn + x2 * c[i];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_undoes_forward_and_preserves_norms() {
        let d = 128;
        let t = RopeTables::new(5, 10_000.0);
        let orig: Vec<f32> = (0..5 * 3 * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let mut x = orig.clone();
        rope_apply(&mut x, &t, d, false);
        for (a, b) in x.chunks(HEAD_DIM).zip(orig.chunks(HEAD_DIM)) {
            let na: f32 = a.iter().map(|v| v * v).sum();
            let nb: f32 = b.iter().map(|v| v * v).sum();
            assert!((na - nb).abs() < 1e-3 * nb.max(1.0));
        }
        assert_eq!(&x[2 * d..3 * d], &orig[2 * d..3 * d], "v untouched");
        rope_apply(&mut x, &t, d, true);
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
