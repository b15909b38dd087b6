//! The byte-level dataset that trains M1: a held-out split, a streaming batch loader with an
//! exactly resumable order, and evaluation windows.
//!
//! # The held-out split
//!
//! Everything works on the corpus's canonical byte stream `S` (documents joined by `"\n\n"`, see
//! [`CorpusStream`]). With `h = heldout_bytes > 0`:
//!
//! - the held-out set is `S[..e]`, where `e` is the position of the first `"\n"` at or after
//!   index `h - 1` (the end of the paragraph holding the `h`-th byte), capped at `h + 64 KiB`
//!   when a paragraph runs on longer, or the end of `S`; trailing newlines are not included;
//! - training uses `S[t..]`, where `t` is `e` plus the run of `"\n"` bytes found there, so
//!   training starts at the first byte of the next paragraph.
//!
//! With `h = 0` there is no held-out set and training uses all of `S`. The rule streams (the
//! held-out part is read first) and needs no document boundaries, so it works for a corpus that
//! is one long document as well as for many short ones. It is a pure function of the bytes, so
//! every epoch and every resume find the same split.

use super::corpus::{open_stream, CorpusStream};
use crate::rng::Rng;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How far past `heldout_bytes` the held-out set may extend to finish its paragraph.
pub const HELDOUT_EXTENSION_CAP: u64 = 64 * 1024;

/// Sequences per shuffled block in [`ByteLoader::new`].
pub const DEFAULT_BLOCK_SEQS: usize = 512;

/// Reads the held-out set of the corpus at `path` (see the module docs for the rule).
///
/// Refuses a corpus that holds no text. Returns an empty vector when `heldout_bytes` is 0.
pub fn read_heldout(path: &Path, heldout_bytes: u64) -> Result<Vec<u8>> {
    let mut stream = open_stream(path)?;
    let mut heldout = Vec::new();
    split(&mut stream, heldout_bytes, Some(&mut heldout))?;
    if stream.offset() == 0 && stream.peek_byte()?.is_none() {
        bail!("corpus {} holds no text", path.display());
    }
    Ok(heldout)
}

/// Reads through the held-out set, keeping it in `keep` if given, and leaves `stream` at the
/// first training byte.
fn split(stream: &mut CorpusStream, h: u64, mut keep: Option<&mut Vec<u8>>) -> Result<()> {
    if h == 0 {
        return Ok(());
    }
    // The first h bytes, remembering the last one.
    let mut chunk = vec![0u8; (h.min(1 << 20)) as usize];
    let mut read = 0u64;
    let mut last = None;
    while read < h {
        let want = (h - read).min(chunk.len() as u64) as usize;
        let n = stream.read_full(&mut chunk[..want])?;
        if n == 0 {
            break;
        }
        if let Some(k) = keep.as_deref_mut() {
            k.extend_from_slice(&chunk[..n]);
        }
        last = Some(chunk[n - 1]);
        read += n as u64;
        if n < want {
            break;
        }
    }
    // Finish the paragraph, unless the h-th byte already ends it.
    if read == h && last != Some(b'\n') {
        let mut extended = 0;
        while extended < HELDOUT_EXTENSION_CAP {
            match stream.peek_byte()? {
                Some(b'\n') | None => break,
                Some(b) => {
                    stream.next_byte()?;
                    if let Some(k) = keep.as_deref_mut() {
                        k.push(b);
                    }
                    extended += 1;
                }
            }
        }
    }
    while stream.peek_byte()? == Some(b'\n') {
        stream.next_byte()?;
    }
    if let Some(k) = keep {
        while k.last() == Some(&b'\n') {
            k.pop();
        }
    }
    Ok(())
}

/// One training batch of byte sequences, row-major `[batch, seq]`.
///
/// Guarantees: `inputs.len() == targets.len() == batch * seq`, every value is a byte (< 256), and
/// `targets[r * seq + j]` is the byte that follows `inputs[r * seq + j]` in the corpus, so
/// `targets[r * seq + j] == inputs[r * seq + j + 1]` within a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
}

/// Where a [`ByteLoader`] stands, enough to continue its exact batch order with
/// [`ByteLoader::resume`]. Batch size may change across a resume; the other settings may not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Completed passes over the training stream.
    pub epoch: u64,
    /// Index of the current block within the epoch.
    pub block_index: u64,
    /// Sequences of the current block already delivered.
    pub position: u64,
    /// Offset of the current block's first byte in the training stream (after the held-out part).
    pub block_offset: u64,
    /// Target bytes delivered since the start (see [`ByteLoader::bytes_consumed`]).
    pub bytes_seen: u64,
    /// Settings the state only makes sense under; `resume` refuses a mismatch.
    pub seq: u64,
    pub block_seqs: u64,
    pub heldout_bytes: u64,
    pub seed: u64,
}

/// A streaming, shuffled, exactly resumable loader of byte sequences over a corpus's training part.
///
/// Order: the training stream is cut into sequences `i` covering bytes `[i*seq, i*seq + seq + 1)`
/// (neighbours share one byte, so every byte after the first is a target exactly once per epoch).
/// Sequences are read in blocks of `block_seqs`; each block is delivered in the order of a
/// permutation drawn from `Rng::derive(seed, epoch * 2^32 + block_index)`. The last block of an
/// epoch may be partial; a final sequence shorter than `seq + 1` bytes is dropped. Then the file
/// is reopened for the next epoch. Batches may span blocks and epochs.
///
/// Memory: one block (`block_seqs * seq + 1` bytes) plus the current document. Refuses (at
/// construction or when an epoch starts) a corpus with no text or with fewer than `seq + 1`
/// training bytes; read errors are returned from [`next_batch`](Self::next_batch).
#[derive(Debug)]
pub struct ByteLoader {
    path: PathBuf,
    heldout_bytes: u64,
    batch: usize,
    seq: usize,
    seed: u64,
    block_seqs: usize,
    stream: CorpusStream,
    training_start: u64,
    epoch: u64,
    block_index: u64,
    block_offset: u64,
    position: usize,
    block: Vec<u8>,
    order: Vec<u32>,
    bytes_seen: u64,
}

impl ByteLoader {
    /// A loader at the start of epoch 0, with [`DEFAULT_BLOCK_SEQS`] sequences per block.
    pub fn new(
        path: &Path,
        heldout_bytes: u64,
        batch: usize,
        seq: usize,
        seed: u64,
    ) -> Result<Self> {
        Self::with_block_seqs(path, heldout_bytes, batch, seq, seed, DEFAULT_BLOCK_SEQS)
    }

    /// As [`new`](Self::new), with a chosen block size (the shuffle's reach).
    pub fn with_block_seqs(
        path: &Path,
        heldout_bytes: u64,
        batch: usize,
        seq: usize,
        seed: u64,
        block_seqs: usize,
    ) -> Result<Self> {
        let state = LoaderState {
            epoch: 0,
            block_index: 0,
            position: 0,
            block_offset: 0,
            bytes_seen: 0,
            seq: seq as u64,
            block_seqs: block_seqs as u64,
            heldout_bytes,
            seed,
        };
        Self::resume(path, heldout_bytes, batch, seq, seed, &state)
    }

    /// A loader that continues exactly where the one that produced `state` stood: its next
    /// batches equal those the original would have delivered (same corpus bytes assumed).
    /// Re-reads the stream up to the saved block. Refuses a state taken under a different `seq`,
    /// `seed` or `heldout_bytes`, or one that points past the end of the corpus.
    pub fn resume(
        path: &Path,
        heldout_bytes: u64,
        batch: usize,
        seq: usize,
        seed: u64,
        state: &LoaderState,
    ) -> Result<Self> {
        if batch == 0 || seq == 0 || state.block_seqs == 0 {
            bail!(
                "batch, seq and block size must be positive (batch {batch}, seq {seq}, block {})",
                state.block_seqs
            );
        }
        if state.block_seqs > u32::MAX as u64 {
            bail!("block size {} is too large", state.block_seqs);
        }
        for (what, saved, now) in [
            ("seq", state.seq, seq as u64),
            ("seed", state.seed, seed),
            ("heldout_bytes", state.heldout_bytes, heldout_bytes),
        ] {
            if saved != now {
                bail!("cannot resume the data loader: it was saved with {what} {saved}, now {now}");
            }
        }
        let mut loader = ByteLoader {
            path: path.to_path_buf(),
            heldout_bytes,
            batch,
            seq,
            seed,
            block_seqs: state.block_seqs as usize,
            stream: open_stream(path)?,
            training_start: 0,
            epoch: state.epoch,
            block_index: state.block_index,
            block_offset: 0,
            position: 0,
            block: Vec::new(),
            order: Vec::new(),
            bytes_seen: state.bytes_seen,
        };
        loader.start_epoch(state.epoch)?;
        let skipped = loader.stream.skip(state.block_offset)?;
        loader.block_offset = state.block_offset;
        loader.block_index = state.block_index;
        if skipped < state.block_offset || !loader.load_block(None)? {
            if state.block_offset == 0 {
                return Err(loader.no_training_text());
            }
            bail!(
                "cannot resume the data loader: corpus {} has no sequence at training byte {} \
                 where the saved state points (was the file changed?)",
                path.display(),
                state.block_offset
            );
        }
        if state.position > loader.order.len() as u64 {
            bail!(
                "cannot resume the data loader: the saved position {} lies past the block's {} sequences (was the file changed?)",
                state.position,
                loader.order.len()
            );
        }
        loader.position = state.position as usize;
        Ok(loader)
    }

    /// Reopens the corpus at the first training byte of `epoch`.
    fn start_epoch(&mut self, epoch: u64) -> Result<()> {
        self.stream = open_stream(&self.path)?;
        split(&mut self.stream, self.heldout_bytes, None)?;
        self.training_start = self.stream.offset();
        self.epoch = epoch;
        self.block_index = 0;
        self.block_offset = 0;
        self.position = 0;
        Ok(())
    }

    /// Reads the block at `block_offset` (whose first byte is `first` when the previous block
    /// already read it) and draws its order. False when it holds no whole sequence.
    fn load_block(&mut self, first: Option<u8>) -> Result<bool> {
        let want = self.block_seqs * self.seq + 1;
        self.block.clear();
        self.block.extend(first);
        let have = self.block.len();
        self.block.resize(want, 0);
        let n = self.stream.read_full(&mut self.block[have..])?;
        self.block.truncate(have + n);
        let count = if self.block.len() > self.seq {
            (self.block.len() - 1) / self.seq
        } else {
            0
        };
        self.block.truncate(count * self.seq + 1);
        self.order.clear();
        self.order.extend(0..count as u32);
        let stream_id = self.epoch.wrapping_shl(32).wrapping_add(self.block_index);
        Rng::derive(self.seed, stream_id).shuffle(&mut self.order);
        self.position = 0;
        Ok(count > 0)
    }

    fn no_training_text(&self) -> anyhow::Error {
        let total = self.stream.offset();
        if total == 0 {
            anyhow::anyhow!("corpus {} holds no text", self.path.display())
        } else {
            anyhow::anyhow!(
                "corpus {}: too little training text for seq {}: {} training bytes after {} held-out bytes, need at least {}",
                self.path.display(),
                self.seq,
                total - self.training_start,
                self.training_start,
                self.seq + 1
            )
        }
    }

    /// Moves to the next block, starting a new epoch when the stream is exhausted.
    fn advance_block(&mut self) -> Result<()> {
        let count = self.order.len();
        let carry = self.block[count * self.seq];
        self.block_offset += (count * self.seq) as u64;
        self.block_index += 1;
        if self.load_block(Some(carry))? {
            return Ok(());
        }
        self.start_epoch(self.epoch + 1)?;
        if !self.load_block(None)? {
            return Err(self.no_training_text());
        }
        Ok(())
    }

    /// The next `batch` sequences.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let (batch, seq) = (self.batch, self.seq);
        let mut inputs = Vec::with_capacity(batch * seq);
        let mut targets = Vec::with_capacity(batch * seq);
        for _ in 0..batch {
            while self.position >= self.order.len() {
                self.advance_block()?;
            }
            let start = self.order[self.position] as usize * seq;
            let chunk = &self.block[start..start + seq + 1];
            inputs.extend(chunk[..seq].iter().map(|&b| b as u32));
            targets.extend(chunk[1..].iter().map(|&b| b as u32));
            self.position += 1;
            self.bytes_seen += seq as u64;
        }
        Ok(Batch {
            inputs,
            targets,
            batch,
            seq,
        })
    }

    /// The position to save beside a checkpoint.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            epoch: self.epoch,
            block_index: self.block_index,
            position: self.position as u64,
            block_offset: self.block_offset,
            bytes_seen: self.bytes_seen,
            seq: self.seq as u64,
            block_seqs: self.block_seqs as u64,
            heldout_bytes: self.heldout_bytes,
            seed: self.seed,
        }
    }

    /// Training bytes delivered so far, counted as targets (`seq` per sequence), across resumes.
    pub fn bytes_consumed(&self) -> u64 {
        self.bytes_seen
    }

    /// The current epoch (0-based).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Offset in the corpus byte stream where training starts (the held-out part's extent).
    pub fn training_start(&self) -> u64 {
        self.training_start
    }
}

/// Evaluation windows over held-out bytes: window `i` is `heldout[i*seq .. i*seq + seq + 1]`
/// (the last may be shorter). Neighbours share one byte, so every held-out byte after the first
/// is a target exactly once; a final window under 2 bytes (nothing to predict) is omitted.
/// `max_windows` keeps only the first windows. Panics if `seq` is 0.
pub fn heldout_windows(heldout: &[u8], seq: usize, max_windows: Option<usize>) -> Vec<Vec<u8>> {
    assert!(seq > 0, "heldout_windows: seq must be positive");
    let mut windows = Vec::new();
    let mut start = 0;
    while start + 1 < heldout.len() && max_windows.map_or(true, |m| windows.len() < m) {
        let end = (start + seq + 1).min(heldout.len());
        windows.push(heldout[start..end].to_vec());
        start += seq;
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::tests::write_corpus;
    use std::io::Read;

    fn stream_bytes(path: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        open_stream(path).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    /// A corpus of `docs` short documents with varied paragraphs.
    fn sample_text(docs: usize) -> Vec<u8> {
        let mut t = Vec::new();
        for d in 0..docs {
            for p in 0..(d % 3 + 1) {
                t.extend(format!("Doc {d} paragraph {p}: {}.\n", "xyz".repeat(d % 5)).bytes());
            }
            t.extend(b"\n");
        }
        t
    }

    #[test]
    fn heldout_rule() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_corpus(dir.path(), "h.txt", b"aaaa\nbbbb\n\ncccc\n\ndddd\n");
        // S = "aaaa\nbbbb\n\ncccc\n\ndddd"
        let cases: [(u64, &[u8], u64); 8] = [
            (0, b"", 0),
            (1, b"aaaa", 5),
            (4, b"aaaa", 5),
            (5, b"aaaa", 5),
            (6, b"aaaa\nbbbb", 11),
            (11, b"aaaa\nbbbb", 11),
            (12, b"aaaa\nbbbb\n\ncccc", 17),
            (100, b"aaaa\nbbbb\n\ncccc\n\ndddd", 21),
        ];
        let s = stream_bytes(&p);
        for (h, want, start) in cases {
            assert_eq!(read_heldout(&p, h).unwrap(), want, "h={h}");
            let mut stream = open_stream(&p).unwrap();
            split(&mut stream, h, None).unwrap();
            assert_eq!(stream.offset(), start, "h={h}");
            assert!(start as usize == s.len() || s[start as usize] != b'\n');
        }
        // A paragraph longer than the cap is cut at h + 64 KiB.
        let long = vec![b'q'; 200_000];
        let p = write_corpus(dir.path(), "long.txt", &long);
        let held = read_heldout(&p, 1000).unwrap();
        assert_eq!(held.len() as u64, 1000 + HELDOUT_EXTENSION_CAP);
        // An empty corpus is refused.
        let p = write_corpus(dir.path(), "empty.txt", b"");
        let msg = format!("{:#}", read_heldout(&p, 10).unwrap_err());
        assert!(
            msg.contains("holds no text") && msg.contains("empty.txt"),
            "{msg}"
        );
    }

    #[test]
    fn targets_are_next_bytes_and_an_epoch_covers_training_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_corpus(dir.path(), "c.txt", &sample_text(300));
        let (seq, h, block_seqs) = (16usize, 500u64, 7usize);
        let s = stream_bytes(&p);
        let heldout = read_heldout(&p, h).unwrap();
        assert_eq!(&s[..heldout.len()], &heldout[..]);
        let mut loader = ByteLoader::with_block_seqs(&p, h, 1, seq, 3, block_seqs).unwrap();
        let training = &s[loader.training_start() as usize..];
        let n_seqs = (training.len() - 1) / seq;
        let mut expected: Vec<Vec<u8>> = (0..n_seqs)
            .map(|i| training[i * seq..i * seq + seq + 1].to_vec())
            .collect();
        let mut got = Vec::new();
        for _ in 0..n_seqs {
            let b = loader.next_batch().unwrap();
            assert_eq!(b.inputs[1..], b.targets[..seq - 1]);
            let mut chunk: Vec<u8> = b.inputs.iter().map(|&x| x as u8).collect();
            chunk.push(*b.targets.last().unwrap() as u8);
            got.push(chunk);
        }
        assert_eq!(loader.epoch(), 0);
        assert_eq!(loader.bytes_consumed(), (n_seqs * seq) as u64);
        assert_ne!(got, expected, "blocks should be shuffled");
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
        loader.next_batch().unwrap();
        assert_eq!(loader.epoch(), 1);
    }

    fn batches(loader: &mut ByteLoader, n: usize) -> Vec<Batch> {
        (0..n).map(|_| loader.next_batch().unwrap()).collect()
    }

    #[test]
    fn same_seed_same_batches_different_seed_different() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_corpus(dir.path(), "d.txt.zst", &sample_text(200));
        let a = batches(&mut ByteLoader::new(&p, 100, 4, 12, 9).unwrap(), 30);
        let b = batches(&mut ByteLoader::new(&p, 100, 4, 12, 9).unwrap(), 30);
        let c = batches(&mut ByteLoader::new(&p, 100, 4, 12, 10).unwrap(), 30);
        assert_eq!(a, b);
        assert_ne!(a, c);
        for batch in &a {
            assert_eq!(batch.inputs.len(), 48);
            for r in 0..4 {
                assert_eq!(
                    batch.inputs[r * 12 + 1..(r + 1) * 12],
                    batch.targets[r * 12..(r + 1) * 12 - 1]
                );
            }
        }
    }

    #[test]
    fn resume_continues_exactly_across_epoch_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["r.txt", "r.jsonl.gz"] {
            let text = sample_text(20);
            let body = if name.ends_with(".txt") {
                text
            } else {
                String::from_utf8(text)
                    .unwrap()
                    .split("\n\n")
                    .filter(|d| !d.is_empty())
                    .map(|d| serde_json::json!({ "text": d }).to_string() + "\n")
                    .collect::<String>()
                    .into_bytes()
            };
            let p = write_corpus(dir.path(), name, &body);
            let (h, batch, seq, seed, bs) = (64u64, 3usize, 10usize, 5u64, 4usize);
            let mut reference = ByteLoader::with_block_seqs(&p, h, batch, seq, seed, bs).unwrap();
            let all = batches(&mut reference, 200);
            assert!(reference.epoch() >= 3, "test must span epochs ({name})");
            for k in [0usize, 1, 5, 17, 40, 41, 90, 150] {
                let mut first = ByteLoader::with_block_seqs(&p, h, batch, seq, seed, bs).unwrap();
                batches(&mut first, k);
                let state = first.state();
                let json = serde_json::to_string(&state).unwrap();
                let state: LoaderState = serde_json::from_str(&json).unwrap();
                let mut resumed = ByteLoader::resume(&p, h, batch, seq, seed, &state).unwrap();
                assert_eq!(resumed.state(), state);
                assert_eq!(resumed.bytes_consumed(), (k * batch * seq) as u64);
                let rest = batches(&mut resumed, 200 - k);
                assert_eq!(rest, all[k..], "{name}: resume after {k} batches");
            }
            // A state saved under other settings is refused.
            let state = reference.state();
            assert!(ByteLoader::resume(&p, h, batch, seq + 1, seed, &state).is_err());
            assert!(ByteLoader::resume(&p, h, batch, seq, seed + 1, &state).is_err());
        }
    }

    #[test]
    fn empty_or_tiny_corpora_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_corpus(dir.path(), "empty.txt", b"\n\n\n");
        let msg = format!("{:#}", ByteLoader::new(&p, 0, 2, 8, 1).unwrap_err());
        assert_eq!(msg, format!("corpus {} holds no text", p.display()));
        let p = write_corpus(dir.path(), "empty.jsonl.gz", b"");
        let msg = format!("{:#}", ByteLoader::new(&p, 10, 2, 8, 1).unwrap_err());
        assert!(msg.contains("holds no text"), "{msg}");
        let p = write_corpus(dir.path(), "tiny.txt", b"para one\n\npara two is here\n");
        let msg = format!("{:#}", ByteLoader::new(&p, 3, 2, 64, 1).unwrap_err());
        assert!(msg.contains("too little training text for seq 64"), "{msg}");
        // Exactly seq + 1 training bytes is enough: one sequence per epoch.
        let p = write_corpus(dir.path(), "just.txt", b"0123456789");
        let mut l = ByteLoader::new(&p, 0, 3, 9, 1).unwrap();
        let b = l.next_batch().unwrap();
        assert_eq!(b.inputs, b.inputs[..9].repeat(3));
        assert_eq!(l.epoch(), 2);
        let missing = dir.path().join("missing.txt");
        let msg = format!("{:#}", ByteLoader::new(&missing, 0, 2, 8, 1).unwrap_err());
        assert!(msg.contains("cannot open corpus"), "{msg}");
    }

    #[test]
    fn heldout_windows_cover_every_byte_once() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        for seq in [1usize, 7, 10, 1000, 2000] {
            let w = heldout_windows(&data, seq, None);
            assert!(w.iter().all(|x| x.len() >= 2 && x.len() <= seq + 1));
            let targets: Vec<u8> = w.iter().flat_map(|x| x[1..].to_vec()).collect();
            assert_eq!(targets, data[1..], "seq {seq}");
            for pair in w.windows(2) {
                assert_eq!(pair[0].last(), pair[1].first());
            }
        }
        assert_eq!(heldout_windows(&data, 10, Some(3)).len(), 3);
        assert!(heldout_windows(b"x", 10, None).is_empty());
        assert!(heldout_windows(b"", 10, None).is_empty());
    }
}
