//! A step's gradient as a fixed-order sum of its sequences' gradients, so that splitting the
//! batch (across ranks, or into accumulation passes) cannot change a bit of it; and the sum of
//! the ranks' shares, which both backends use.
//!
//! Each sequence's gradient of the step's mean loss is computed alone; the batch's gradient is
//! their sum by the halving tree: the sum over sequences `lo..hi` is the sum over `lo..mid` plus
//! the sum over `mid..hi`, `mid = lo + (hi - lo) / 2`. When the ranks are a power of two that
//! divides the batch, each rank's share `r * B/N .. (r+1) * B/N` is one subtree, and the same
//! tree over the ranks' subtree sums is the top of the whole tree: N ranks add exactly what one
//! process adds, in the same order.

use super::LossSums;
use crate::dist::{Group, OnEveryRank};
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// How a CPU training step sums its gradient over the batch.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum GradReduction {
    /// One pass over the whole batch: the matrix kernels sum over all its rows at once. Runs
    /// begun before per-sequence reduction existed continue this way, bit for bit; such a run
    /// cannot be shared between ranks.
    #[default]
    WholeBatch,
    /// Each sequence alone, summed by the halving tree: the same bits however the batch is
    /// shared between ranks or accumulation passes.
    SequenceTree,
}

/// Spare gradient buffers the halving tree over `n` leaves needs beside its output.
pub(crate) fn tree_depth(n: usize) -> usize {
    n.next_power_of_two().trailing_zeros() as usize
}

/// Sums leaves `lo..hi` by the halving tree into `out`: `leaf(i, buf)` writes leaf `i` into
/// `buf` (overwriting it) and returns its loss sums, which are added by the same tree. `spare`
/// must hold `tree_depth(hi - lo)` buffers of `out`'s length.
pub(crate) fn halving_tree_sum(
    lo: usize,
    hi: usize,
    out: &mut [f32],
    spare: &mut [Vec<f32>],
    leaf: &mut dyn FnMut(usize, &mut [f32]) -> LossSums,
) -> LossSums {
    assert!(hi > lo, "halving tree over no leaves");
    if hi - lo == 1 {
        return leaf(lo, out);
    }
    let mid = lo + (hi - lo) / 2;
    let left = halving_tree_sum(lo, mid, out, spare, leaf);
    let (right_buf, rest) = spare
        .split_first_mut()
        .expect("halving tree: too few spare buffers");
    let right = halving_tree_sum(mid, hi, right_buf, rest, leaf);
    out.par_chunks_mut(1 << 14)
        .zip(right_buf.par_chunks(1 << 14))
        .for_each(|(o, r)| o.iter_mut().zip(r).for_each(|(o, r)| *o += r));
    LossSums {
        ce: left.ce + right.ce,
        z: left.z + right.z,
        rows: left.rows + right.rows,
    }
}

/// Where this rank's sequences lie in a batch of `batch` shared by `group` (all of it without a
/// group). Fails on every rank unless the ranks are a power of two that divides the batch, the
/// shape under which each share is a subtree of the halving tree.
pub fn rank_share(batch: usize, group: Option<&dyn Group>) -> Result<std::ops::Range<usize>> {
    let Some(g) = group else {
        return Ok(0..batch);
    };
    let n = g.size();
    if !n.is_power_of_two() || !batch.is_multiple_of(n) {
        return Err(OnEveryRank(format!(
            "{n} ranks cannot share a batch of {batch} sequences exactly: the rank count must be a power of two that divides the global batch (--batch x --accum)"
        ))
        .into());
    }
    let share = batch / n;
    Ok(g.rank() * share..(g.rank() + 1) * share)
}

/// Replaces this rank's subtree sum (`grads`, `sums`) with the whole batch's: every rank's sum
/// gathered, then added by the top of the halving tree, identically on every rank.
pub(crate) fn sum_across_ranks(
    group: &dyn Group,
    grads: &mut [f32],
    sums: &mut LossSums,
    spare: &mut [Vec<f32>],
) -> Result<()> {
    let n = group.size();
    let mut mine = Vec::with_capacity(24 + 4 * grads.len());
    mine.extend_from_slice(&sums.ce.to_le_bytes());
    mine.extend_from_slice(&sums.z.to_le_bytes());
    mine.extend_from_slice(&(sums.rows as u64).to_le_bytes());
    mine.extend_from_slice(bytemuck::cast_slice(grads));
    let len = mine.len();
    let mut all = vec![0u8; len * n];
    group.allgather(&mine, &mut all)?;
    drop(mine);
    let f64_at = |b: &[u8], i: usize| f64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    ensure!(spare.len() >= tree_depth(n), "too few spare buffers");
    *sums = halving_tree_sum(0, n, grads, spare, &mut |r, buf| {
        let b = &all[r * len..][..len];
        for (dst, src) in buf.iter_mut().zip(b[24..].chunks_exact(4)) {
            *dst = f32::from_le_bytes(src.try_into().expect("4 bytes"));
        }
        LossSums {
            ce: f64_at(b, 0),
            z: f64_at(b, 8),
            rows: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")) as usize,
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaf i is the vector [x_i]: the tree's order is visible in f32 rounding.
    fn tree_of(values: &[f32], lo: usize, hi: usize) -> f32 {
        let mut out = vec![0.0];
        let mut spare = vec![vec![0.0]; tree_depth(hi - lo)];
        halving_tree_sum(lo, hi, &mut out, &mut spare, &mut |i, b| {
            b[0] = values[i];
            LossSums {
                ce: values[i] as f64,
                z: 0.0,
                rows: 1,
            }
        });
        out[0]
    }

    #[test]
    fn a_share_per_rank_is_a_subtree_of_the_whole_tree() {
        let values: Vec<f32> = (0..24)
            .map(|i| (1.0 / (i + 1) as f32) * if i % 3 == 0 { 1e4 } else { 1.0 })
            .collect();
        let whole = tree_of(&values, 0, 24);
        for n in [2usize, 4, 8] {
            let share = 24 / n;
            let parts: Vec<f32> = (0..n)
                .map(|r| tree_of(&values, r * share, (r + 1) * share))
                .collect();
            assert_eq!(
                tree_of(&parts, 0, n).to_bits(),
                whole.to_bits(),
                "{n} ranks"
            );
        }
        // A left fold rounds differently: the test can tell orders apart.
        let fold = values.iter().fold(0f32, |a, &v| a + v);
        assert_ne!(fold.to_bits(), whole.to_bits());
    }

    #[test]
    fn depth_is_enough_for_every_leaf_count() {
        for n in 1..70 {
            let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
            assert_eq!(tree_of(&values, 0, n), (n * (n - 1) / 2) as f32);
        }
    }
}
