//! Scoring: a byte-level model's bits per byte over evaluation windows (here), and an M2's bits
//! per byte, FLOPs per byte and trivial-model baselines over token datasets ([`tokens`]).

pub mod tokens;

pub use tokens::{score_tokens, TokenScore};

use crate::backend::Backend;
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
pub fn score_rows<T: Copy + Into<u32>>(
    backend: &mut dyn Backend,
    rows: &[&[T]],
    full: usize,
    start: u32,
    batch: usize,
) -> Result<(f64, u64)> {
    ensure!(batch > 0, "batch must be positive");
    let (long, short): (Vec<&[T]>, Vec<&[T]>) = rows
        .iter()
        .filter(|r| !r.is_empty())
        .partition(|r| r.len() == full);
    let (mut nll, mut scored) = (0f64, 0u64);
    for group in long.chunks(batch).chain(short.chunks(1)) {
        let s = backend.eval_batch(&Batch::from_windows(group, start))?;
        nll += s.ce;
        scored += s.rows as u64;
    }
    Ok((nll, scored))
}

/// Scores `windows`, each from an empty context (the M1 window start token, then the window's
/// bytes): every byte of every window is predicted. Equal-length windows go `batch` at a time;
/// a window of another length (the last one) is scored alone.
pub fn score_windows(
    backend: &mut dyn Backend,
    windows: &[&[u8]],
    batch: usize,
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
    )?;
    Ok(ByteScore {
        bits_per_byte: ce / scored as f64 / std::f64::consts::LN_2,
        bytes_scored: scored,
    })
}
