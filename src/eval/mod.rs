//! Scoring: a byte-level model's bits per byte over evaluation windows (here), and an M2's bits
//! per byte, FLOPs per byte and trivial-model baselines over token datasets ([`tokens`]).

pub mod tokens;

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
    ensure!(batch > 0, "batch must be positive");
    let full = windows[0].len();
    let (mut ce, mut scored) = (0f64, 0u64);
    let (long, short): (Vec<&[u8]>, Vec<&[u8]>) = windows.iter().partition(|w| w.len() == full);
    for group in long.chunks(batch).chain(short.chunks(1)) {
        let s = backend.eval_batch(&Batch::from_windows(group, WINDOW_START as u32))?;
        ce += s.ce;
        scored += s.rows as u64;
    }
    Ok(ByteScore {
        bits_per_byte: ce / scored as f64 / std::f64::consts::LN_2,
        bytes_scored: scored,
    })
}
