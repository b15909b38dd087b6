//! The unit every backend steps on: a batch of token rows with their next-token targets.

use anyhow::{ensure, Result};

/// One training batch of token sequences (bytes for M1, compressed-text tokens for M2),
/// row-major `[batch, seq]`.
///
/// Guarantees: `inputs.len() == targets.len() == batch * seq`, and `targets[r * seq + j]` is the
/// token that follows `inputs[r * seq + j]`, so `targets[r * seq + j] == inputs[r * seq + j + 1]`
/// within a row. Loaders of byte data give values below 256; backends check the vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// What every backend checks before a step: a non-empty shape that the arrays match, and
    /// every token id below `vocab`.
    pub fn check(&self, vocab: usize) -> Result<()> {
        let n = self.batch * self.seq;
        ensure!(n > 0, "empty batch");
        ensure!(
            self.inputs.len() == n && self.targets.len() == n,
            "batch arrays do not match its shape"
        );
        let v = vocab as u32;
        ensure!(
            self.inputs.iter().chain(&self.targets).all(|&t| t < v),
            "token id out of range for vocab {v}"
        );
        Ok(())
    }
}

impl Batch {
    /// Equal-length windows framed for a model that starts every window from an empty context:
    /// row `r` has inputs `[start, w[0], .., w[len-2]]` and targets `w` (every byte predicted).
    /// Panics if the windows are empty or of different lengths.
    pub fn from_windows<T: Copy + Into<u32>>(windows: &[&[T]], start: u32) -> Batch {
        let seq = windows[0].len();
        assert!(
            seq > 0 && windows.iter().all(|w| w.len() == seq),
            "windows must be non-empty and of equal length"
        );
        let mut inputs = Vec::with_capacity(windows.len() * seq);
        let mut targets = Vec::with_capacity(windows.len() * seq);
        for w in windows {
            inputs.push(start);
            inputs.extend(w[..seq - 1].iter().map(|&b| b.into()));
            targets.extend(w.iter().map(|&b| b.into()));
        }
        Batch {
            inputs,
            targets,
            batch: windows.len(),
            seq,
        }
    }

    /// The same rows re-framed to start from `start`: each row's inputs become its targets, and
    /// the inputs are `start` followed by all but the last of them. This is how byte-level models
    /// train, matching M1's window contract (a window's first byte is predicted from the start
    /// token alone).
    pub fn with_window_start(self, start: u32) -> Batch {
        let seq = self.seq;
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for row in self.inputs.chunks(seq) {
            inputs.push(start);
            inputs.extend_from_slice(&row[..seq - 1]);
        }
        Batch {
            inputs,
            targets: self.inputs,
            batch: self.batch,
            seq,
        }
    }
}
