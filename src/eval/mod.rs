//! Scoring: a byte-level model's bits per byte over evaluation windows (here), and an M2's bits
//! per byte, FLOPs per byte and trivial-model baselines over token datasets ([`tokens`]).

pub mod tokens;

pub use tokens::{score_tokens, TokenScore};

use crate::backend::Backend;
use crate::dist::Group;
use crate::m1::WINDOW_START;
use crate::model::Batch;
use anyhow::{ensure, Result};
use serde::Serialize;

/// Bits per byte over a set of windows.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct ByteScore {
    /// Mean cross-entropy of every predicted byte, in bits.
    pub bits_per_byte: f64,
    /// Bytes predicted (all of them).
    pub bytes_scored: u64,
}

/// The one scoring loop: sums a model's loss over `rows`, each framed from an empty context
/// ([`Batch::from_windows`] with `start`), so every element of every row is predicted once. Rows
/// `full` long go `batch` at a time, in order; every other non-empty row is scored alone
/// afterwards, in order. Returns the summed negative log-likelihood (nats) and the count scored.
///
/// Shared by the ranks of `group` (each calls it alike), rank `r` scores the batches `k` with
/// `k mod N = r`, and every rank adds all the batches' sums in batch order: the same bits as one
/// process, in an N-th of the time.
pub fn score_rows<T: Copy + Into<u32>>(
    backend: &mut dyn Backend,
    rows: &[&[T]],
    full: usize,
    start: u32,
    batch: usize,
    group: Option<&dyn Group>,
) -> Result<(f64, u64)> {
    ensure!(batch > 0, "batch must be positive");
    let (long, short): (Vec<&[T]>, Vec<&[T]>) = rows
        .iter()
        .filter(|r| !r.is_empty())
        .partition(|r| r.len() == full);
    let (rank, ranks) = group.map_or((0, 1), |g| (g.rank(), g.size()));
    // Each batch's (nll bits, count), this rank's filled in.
    let batches: Vec<&[&[T]]> = long.chunks(batch).chain(short.chunks(1)).collect();
    let mut sums = vec![[0u64; 2]; batches.len()];
    for (k, b) in batches.iter().enumerate().skip(rank).step_by(ranks) {
        let s = backend.eval_batch(&Batch::from_windows(b, start))?;
        sums[k] = [s.ce.to_bits(), s.rows as u64];
    }
    if let Some(g) = group {
        let mut all = vec![0u8; 16 * sums.len() * ranks];
        g.allgather(bytemuck::cast_slice(&sums), &mut all)?;
        let all: &[[u64; 2]] = bytemuck::cast_slice(&all);
        for (k, s) in sums.iter_mut().enumerate() {
            *s = all[(k % ranks) * batches.len() + k];
        }
    }
    let (mut nll, mut scored) = (0f64, 0u64);
    for [ce, n] in sums {
        nll += f64::from_bits(ce);
        scored += n;
    }
    Ok((nll, scored))
}

/// Scores `windows`, each from an empty context (the M1 window start token, then the window's
/// bytes): every byte of every window is predicted. Equal-length windows go `batch` at a time;
/// a window of another length (the last one) is scored alone. Shared by `group` as
/// [`score_rows`] is.
pub fn score_windows(
    backend: &mut dyn Backend,
    windows: &[&[u8]],
    batch: usize,
    group: Option<&dyn Group>,
) -> Result<ByteScore> {
    ensure!(
        !windows.is_empty(),
        "nothing to score: no evaluation windows"
    );
    let (ce, scored) = score_rows(
        backend,
        windows,
        windows[0].len(),
        WINDOW_START as u32,
        batch,
        group,
    )?;
    Ok(ByteScore {
        bits_per_byte: ce / scored as f64 / std::f64::consts::LN_2,
        bytes_scored: scored,
    })
}
