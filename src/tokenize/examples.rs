//! M2 examples from a token dataset ([`super::dataset`]): fixed-length training segments, a
//! shuffled and exactly resumable loader over them, and held-out sets that score every token of
//! whole chunks, so bits per byte is over the exact bytes those chunks cover.
//!
//! Segments never cross a chunk: a chunk (one example of the dataset, 10,240 source bytes by
//! default) is coded independently, so its tokens start from the coder's fresh state. Chunk `c`
//! with tokens `[a, b)` gives training segments at `a, a + seq, ..` while a whole `seq` fits (the
//! paper keeps only the first 512 tokens of each chunk; the rest of the chunk is used here too,
//! because the corpora at hand are small). Every row is framed like a byte model's window:
//! inputs `[M2_START, t0, .., t(seq-2)]`, targets `[t0, .., t(seq-1)]`, so every token of a row
//! is predicted (as T5X's decoder does with its shifted-in 0).

use crate::model::Batch;
use crate::rng::Rng;
use crate::tokenize::TokenDataset;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;

/// The input at position 0 of every M2 row (T5X's shifted-in 0; it is also a real token id,
/// which position 0 tells apart).
pub const M2_START: u32 = 0;

/// Without a separate held-out dataset, every `HELDOUT_EVERY`-th chunk (indices 19, 39, ..) is
/// held out of training and scored instead.
pub const HELDOUT_EVERY: usize = 20;

/// Which chunks of a dataset a role uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ChunkSplit {
    /// Every chunk.
    All,
    /// Chunks whose index is not `HELDOUT_EVERY - 1` modulo [`HELDOUT_EVERY`].
    Train,
    /// Chunks whose index is `HELDOUT_EVERY - 1` modulo [`HELDOUT_EVERY`].
    Heldout,
}

impl ChunkSplit {
    /// Whether this split keeps chunk number `chunk`: the one held-out rule, also used to cut
    /// the experiment's M1 training text.
    pub fn keeps(self, chunk: usize) -> bool {
        let held = chunk % HELDOUT_EVERY == HELDOUT_EVERY - 1;
        match self {
            ChunkSplit::All => true,
            ChunkSplit::Train => !held,
            ChunkSplit::Heldout => held,
        }
    }

    /// The chunk indices of `ds` this split keeps.
    pub fn chunks(self, ds: &TokenDataset) -> impl Iterator<Item = usize> {
        (0..ds.num_examples()).filter(move |&c| self.keeps(c))
    }
}

/// Where a [`TokenLoader`] stands; [`TokenLoader::resume`] continues its exact batch order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLoaderState {
    /// Completed passes over the training segments.
    pub epoch: u64,
    /// Segments of the current epoch already delivered.
    pub position: u64,
    /// Tokens delivered as targets since the start.
    pub tokens_seen: u64,
    /// Settings the state only makes sense under; `resume` refuses a mismatch.
    pub seq: u64,
    pub segments: u64,
    pub seed: u64,
    pub split: ChunkSplit,
}

/// Shuffled batches of `seq`-token segments of a token dataset. Epoch `e` delivers every
/// segment once, in the order of a permutation drawn from `Rng::derive(seed, e)`; batches may
/// span epochs. Memory: the segment offsets (8 bytes per segment) and one permutation.
pub struct TokenLoader {
    ds: TokenDataset,
    batch: usize,
    segments: Vec<u64>,
    order: Vec<u32>,
    state: TokenLoaderState,
}

impl TokenLoader {
    /// A loader at the start of epoch 0 over the `split` chunks of the dataset in `dir`. Refuses a
    /// dataset none of whose chunks holds `seq` tokens.
    pub fn new(dir: &Path, split: ChunkSplit, batch: usize, seq: usize, seed: u64) -> Result<Self> {
        let state = TokenLoaderState {
            epoch: 0,
            position: 0,
            tokens_seen: 0,
            seq: seq as u64,
            segments: 0,
            seed,
            split,
        };
        Self::resume(dir, batch, &state)
    }

    /// Continues from `state` (batch size may differ from the saved run's).
    pub fn resume(dir: &Path, batch: usize, state: &TokenLoaderState) -> Result<Self> {
        ensure!(batch > 0 && state.seq > 0, "batch and seq must be positive");
        let ds = TokenDataset::open(dir)?;
        let seq = state.seq as usize;
        let mut segments = Vec::new();
        let mut longest = 0;
        for c in state.split.chunks(&ds) {
            let (toks, _) = ds.example(c).expect("index from the split");
            longest = longest.max(toks.len());
            segments.extend((0..toks.len() / seq).map(|k| (toks.start + k * seq) as u64));
        }
        if segments.is_empty() {
            bail!(
                "{}: no training chunk holds {seq} tokens (the longest holds {longest}); use a smaller --seq or tokenize with larger --chunk-bytes",
                dir.display()
            );
        }
        ensure!(
            segments.len() <= u32::MAX as usize,
            "too many segments for one loader"
        );
        ensure!(
            state.segments == 0 || state.segments == segments.len() as u64,
            "{}: the dataset now has {} training segments, the saved run had {}: not the same dataset",
            dir.display(),
            segments.len(),
            state.segments
        );
        let mut state = state.clone();
        state.segments = segments.len() as u64;
        let mut loader = TokenLoader {
            ds,
            batch,
            segments,
            order: Vec::new(),
            state,
        };
        loader.shuffle_epoch();
        Ok(loader)
    }

    fn shuffle_epoch(&mut self) {
        self.order = (0..self.segments.len() as u32).collect();
        Rng::derive(self.state.seed, self.state.epoch).shuffle(&mut self.order);
    }

    /// The next batch, framed with [`M2_START`].
    pub fn next_batch(&mut self) -> Batch {
        let seq = self.state.seq as usize;
        let mut rows = Vec::with_capacity(self.batch);
        for _ in 0..self.batch {
            if self.state.position as usize == self.order.len() {
                self.state.epoch += 1;
                self.state.position = 0;
                self.shuffle_epoch();
            }
            let start = self.segments[self.order[self.state.position as usize] as usize] as usize;
            rows.push(self.ds.tokens_u16(start..start + seq));
            self.state.position += 1;
        }
        self.state.tokens_seen += (self.batch * seq) as u64;
        let refs: Vec<&[u16]> = rows.iter().map(|r| r.as_slice()).collect();
        Batch::from_windows(&refs, M2_START)
    }

    pub fn state(&self) -> TokenLoaderState {
        self.state.clone()
    }

    /// The dataset's vocabulary size.
    pub fn vocab(&self) -> usize {
        self.ds.metadata().vocab as usize
    }

    pub fn dataset(&self) -> &TokenDataset {
        &self.ds
    }
}

/// Every token of a set of whole chunks, cut into rows of at most `seq` tokens, with the exact
/// number of source bytes the chunks cover.
pub struct TokenEvalSet {
    /// Rows of `seq` tokens, then shorter rows (each chunk's tail).
    pub rows: Vec<Vec<u16>>,
    pub seq: usize,
    pub tokens: u64,
    pub bytes: u64,
    pub chunks: usize,
}

impl TokenEvalSet {
    /// The `split` chunks of `ds`, in order, stopping before the chunk that would take the set
    /// past `max_rows` rows (`None`: all chunks; at least one chunk is always taken).
    pub fn new(ds: &TokenDataset, split: ChunkSplit, seq: usize, max_rows: Option<usize>) -> Self {
        let mut set = TokenEvalSet {
            rows: Vec::new(),
            seq,
            tokens: 0,
            bytes: 0,
            chunks: 0,
        };
        let mut tails = Vec::new();
        for c in split.chunks(ds) {
            let (toks, bytes): (Range<usize>, Range<u64>) = ds.example(c).expect("in range");
            let rows = toks.len().div_ceil(seq);
            if set.chunks > 0 && max_rows.is_some_and(|m| set.rows.len() + tails.len() + rows > m) {
                break;
            }
            for start in toks.clone().step_by(seq) {
                let row = ds.tokens_u16(start..(start + seq).min(toks.end));
                if row.len() == seq {
                    set.rows.push(row);
                } else {
                    tails.push(row);
                }
            }
            set.tokens += toks.len() as u64;
            set.bytes += bytes.end - bytes.start;
            set.chunks += 1;
        }
        set.rows.extend(tails);
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_partitions_chunks() {
        let train: Vec<bool> = (0..45).map(|c| ChunkSplit::Train.keeps(c)).collect();
        let held: Vec<bool> = (0..45).map(|c| ChunkSplit::Heldout.keeps(c)).collect();
        assert!(train.iter().zip(&held).all(|(a, b)| a != b));
        assert_eq!(held.iter().filter(|&&h| h).count(), 2);
        assert!(held[19] && held[39]);
    }
}
