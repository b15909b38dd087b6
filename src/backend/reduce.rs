//! A step's gradient as a fixed-order sum of its sequences' gradients, so that splitting the
//! batch (across ranks, or into accumulation passes) cannot change a bit of it; and the sum of
//! the ranks' shares, which both backends use.
//!
//! Each sequence's gradient of the step's mean loss is computed alone; the batch's gradient is
//! their sum by the halving tree: the sum over sequences `lo..hi` is the sum over `lo..mid` plus
//! the sum over `mid..hi`, `mid = lo + (hi - lo) / 2`. When the ranks are a power of two that
//! divides the batch, each rank's share `r * B/N .. (r+1) * B/N` is one subtree, and the same
//! tree over the ranks' subtree sums is the top of the whole tree: N ranks add exactly what one
//! process adds, in the same order. Each rank adds only one slice of the gradient over the
//! ranks ([`sum_across_ranks`]), so the traffic is a ring all-reduce's, not N copies.

use super::LossSums;
use crate::dist::{Group, OnEveryRank};
use anyhow::Result;
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

/// Replaces this rank's subtree sum (`grads`, `sums`) with the whole batch's, identically on
/// every rank, moving `2 (N-1)/N` of the gradient through each rank as a ring all-reduce does:
/// rank `r` receives every rank's `r`-th slice of the gradient (an all-to-all), adds them by the
/// top of the halving tree, and the summed slices are gathered back on every rank. Each element
/// is the halving tree over the ranks' values whichever rank adds it.
pub(crate) fn sum_across_ranks(
    group: &dyn Group,
    grads: &mut [f32],
    sums: &mut LossSums,
) -> Result<()> {
    let n = group.size();
    let slice = grads.len().div_ceil(n);
    let mut blocks = vec![0f32; slice * n];
    blocks[..grads.len()].copy_from_slice(grads);
    let mut received = vec![0f32; slice * n];
    group.alltoall(
        bytemuck::cast_slice(&blocks),
        bytemuck::cast_slice_mut(&mut received),
    )?;
    drop(blocks);
    let mut mine = vec![0f32; slice];
    let mut spare = vec![vec![0f32; slice]; tree_depth(n)];
    halving_tree_sum(0, n, &mut mine, &mut spare, &mut |r, buf| {
        buf.copy_from_slice(&received[r * slice..][..slice]);
        LossSums::default()
    });
    let mut summed = received;
    group.allgather(
        bytemuck::cast_slice(&mine),
        bytemuck::cast_slice_mut(&mut summed),
    )?;
    grads.copy_from_slice(&summed[..grads.len()]);

    // The loss sums: every rank's, added by the same tree.
    let mut mine = Vec::with_capacity(24);
    mine.extend_from_slice(&sums.ce.to_le_bytes());
    mine.extend_from_slice(&sums.z.to_le_bytes());
    mine.extend_from_slice(&(sums.rows as u64).to_le_bytes());
    let mut all = vec![0u8; 24 * n];
    group.allgather(&mine, &mut all)?;
    let word =
        |r: usize, i: usize| -> [u8; 8] { all[24 * r + 8 * i..][..8].try_into().expect("8 bytes") };
    let mut no_spare = vec![Vec::new(); tree_depth(n)];
    *sums = halving_tree_sum(0, n, &mut [], &mut no_spare, &mut |r, _| LossSums {
        ce: f64::from_le_bytes(word(r, 0)),
        z: f64::from_le_bytes(word(r, 1)),
        rows: u64::from_le_bytes(word(r, 2)) as usize,
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

    /// Ranks as threads of this process, exchanging through shared slots.
    struct Threads {
        rank: usize,
        size: usize,
        slots: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        barrier: std::sync::Arc<std::sync::Barrier>,
    }

    impl Threads {
        /// Publishes `bytes` as this rank's, then hands every rank's to `read`.
        fn exchange(&self, bytes: &[u8], read: impl FnOnce(&[Vec<u8>])) {
            self.slots.lock().unwrap()[self.rank] = bytes.to_vec();
            self.barrier.wait();
            read(&self.slots.lock().unwrap());
            self.barrier.wait();
        }
    }

    impl Group for Threads {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn allgather(&self, mine: &[u8], all: &mut [u8]) -> Result<()> {
            self.exchange(mine, |slots| all.copy_from_slice(&slots.concat()));
            Ok(())
        }
        fn alltoall(&self, blocks: &[u8], mine: &mut [u8]) -> Result<()> {
            let len = blocks.len() / self.size;
            self.exchange(blocks, |slots| {
                for (r, slot) in slots.iter().enumerate() {
                    mine[r * len..][..len].copy_from_slice(&slot[self.rank * len..][..len]);
                }
            });
            Ok(())
        }
    }

    #[test]
    fn every_rank_gets_the_halving_tree_of_the_ranks_gradients() {
        // Three ranks and seven values: the slices are uneven, and the last is padded.
        let (n, len) = (3, 7);
        let grad = |r: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((r * 31 + i * 7) as f32).sin() * if i % 2 == 0 { 1e4 } else { 1.0 })
                .collect()
        };
        let mut want = vec![0f32; len];
        let mut spare = vec![vec![0f32; len]; tree_depth(n)];
        halving_tree_sum(0, n, &mut want, &mut spare, &mut |r, b| {
            b.copy_from_slice(&grad(r));
            LossSums::default()
        });
        let slots = std::sync::Arc::new(std::sync::Mutex::new(vec![Vec::new(); n]));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
        let got: Vec<(Vec<f32>, LossSums)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|rank| {
                    let group = Threads {
                        rank,
                        size: n,
                        slots: slots.clone(),
                        barrier: barrier.clone(),
                    };
                    s.spawn(move || {
                        let mut g = grad(rank);
                        let mut sums = LossSums {
                            ce: rank as f64 + 0.5,
                            z: 1.0,
                            rows: 10,
                        };
                        sum_across_ranks(&group, &mut g, &mut sums).unwrap();
                        (g, sums)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (g, sums) in got {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&g), bits(&want));
            assert_eq!((sums.ce, sums.z, sums.rows), (0.5 + (1.5 + 2.5), 3.0, 30));
        }
    }

    #[test]
    fn depth_is_enough_for_every_leaf_count() {
        for n in 1..70 {
            let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
            assert_eq!(tree_of(&values, 0, n), (n * (n - 1) / 2) as f32);
        }
    }
}
