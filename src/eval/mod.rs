//! Scoring a byte-level model: bits per byte over evaluation windows.

use crate::backend::Backend;
use crate::data::Batch;
use anyhow::{ensure, Result};
use serde::Serialize;

/// Bits per byte over a set of windows.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct ByteScore {
    /// Mean cross-entropy of every predicted byte, in bits.
    pub bits_per_byte: f64,
    /// Bytes predicted (each window's first byte is context only).
    pub bytes_scored: u64,
}

/// Scores `windows` (each `len >= 2`: bytes `1..len` are predicted from those before them).
/// Full-length windows go `batch` at a time; windows of other lengths are scored one by one.
pub fn score_windows(
    backend: &mut dyn Backend,
    windows: &[Vec<u8>],
    batch: usize,
) -> Result<ByteScore> {
    ensure!(
        !windows.is_empty(),
        "nothing to score: no evaluation windows"
    );
    ensure!(batch > 0, "batch must be positive");
    let full = windows.iter().map(Vec::len).max().unwrap_or(0);
    let (mut ce, mut scored) = (0f64, 0u64);
    let (long, short): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
        windows.iter().partition(|w| w.len() == full);
    let groups = long.chunks(batch).chain(short.chunks(1));
    for group in groups {
        let seq = group[0].len() - 1;
        ensure!(seq >= 1, "evaluation window shorter than 2 bytes");
        let mut b = Batch {
            inputs: Vec::with_capacity(group.len() * seq),
            targets: Vec::new(),
            batch: group.len(),
            seq,
        };
        for w in group {
            b.inputs.extend(w[..seq].iter().map(|&x| x as u32));
            b.targets.extend(w[1..].iter().map(|&x| x as u32));
        }
        let s = backend.eval_batch(&b)?;
        ce += s.ce;
        scored += s.rows as u64;
    }
    Ok(ByteScore {
        bits_per_byte: ce / scored as f64 / std::f64::consts::LN_2,
        bytes_scored: scored,
    })
}
