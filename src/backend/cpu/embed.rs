//! Token embedding lookup and its gradient.

use rayon::prelude::*;

/// `out[n, d] = table[tokens[n]]`.
pub fn embed_forward(out: &mut [f32], table: &[f32], tokens: &[u32], d: usize) {
    out.par_chunks_mut(d)
        .zip(tokens.par_iter())
        .for_each(|(o, &t)| {
            let t = t as usize;
            o.copy_from_slice(&table[t * d..(t + 1) * d]);
        });
}

/// `dtable[tokens[n]] += dout[n]`. Positions are bucketed by token with a counting sort, then
/// each table row sums its positions in ascending order: deterministic, no atomics, and no
/// temporary the size of the table.
pub fn embed_backward(dtable: &mut [f32], dout: &[f32], tokens: &[u32], d: usize) {
    let v = dtable.len() / d;
    let mut start = vec![0usize; v + 1];
    for &t in tokens {
        start[t as usize + 1] += 1;
    }
    for i in 0..v {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; tokens.len()];
    for (n, &t) in tokens.iter().enumerate() {
        order[fill[t as usize]] = n;
        fill[t as usize] += 1;
    }
    dtable.par_chunks_mut(d).enumerate().for_each(|(t, row)| {
        for &n in &order[start[t]..start[t + 1]] {
            for (r, g) in row.iter_mut().zip(&dout[n * d..(n + 1) * d]) {
                *r += g;
            }
        }
    });
}
