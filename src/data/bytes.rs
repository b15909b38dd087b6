//! The byte-level dataset that trains M1: a held-out split, a streaming batch loader with an
//! exactly resumable order, and evaluation windows.
//!
//! # The held-out split
//!
//! Everything works on the corpus's canonical byte stream `S` (documents joined by `"\n\n"`, see
//! [`CorpusStream`]). With `h = heldout_bytes > 0`, `S` is cut into spans: a span is
//! `span_len(h) = clamp(h / 8, 64, 32 KiB)` bytes extended to the end of the paragraph it stops in
//! (through the next `"\n"`, at most 64 KiB further). Span `k` is held out when
//! `k % HELDOUT_STRIDE == HELDOUT_STRIDE - 1` and fewer than `h` bytes are held out so far; every
//! other span is training text. So the held-out set is about `h` bytes (whole spans) sampled
//! across the first `HELDOUT_STRIDE * h` bytes of the corpus, not one stretch of its first
//! document: on a corpus of a few books it samples every book.
//!
//! With `h = 0` there is no held-out set and training uses all of `S`. The rule streams, needs no
//! document boundaries and is a pure function of the bytes, so every epoch and every resume find
//! the same split.

use super::corpus::{open_stream, CorpusStream};
use crate::model::Batch;
use crate::rng::Rng;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How far past its nominal length a span may extend to finish its paragraph.
pub const HELDOUT_EXTENSION_CAP: u64 = 64 * 1024;

/// One span in this many is held out (until `heldout_bytes` are collected).
pub const HELDOUT_STRIDE: u64 = 6;

/// Sequences per shuffled block in [`ByteLoader::new`].
pub const DEFAULT_BLOCK_SEQS: usize = 512;

/// Nominal span length for a held-out budget of `h` bytes (about 8 held-out spans).
fn span_len(h: u64) -> u64 {
    (h / 8).clamp(64, 32 * 1024)
}

/// Reads the held-out set of the corpus at `path` (see the module docs for the rule).
///
/// Refuses a corpus that holds no text, and one too short to hold any held-out span when
/// `heldout_bytes > 0`. Returns an empty vector when `heldout_bytes` is 0.
pub fn read_heldout(path: &Path, heldout_bytes: u64) -> Result<Vec<u8>> {
    let mut stream = SplitStream::open(path, heldout_bytes, Part::Heldout)?;
    let mut heldout = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = stream.read_full(&mut buf)?;
        heldout.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    if stream.corpus_bytes() == 0 {
        bail!("corpus {} holds no text", path.display());
    }
    if heldout_bytes > 0 && heldout.is_empty() {
        bail!(
            "corpus {} ({} bytes) is too short to hold out {heldout_bytes} bytes: held-out spans of ~{} bytes are every {}th; lower --heldout-bytes",
            path.display(),
            stream.corpus_bytes(),
            span_len(heldout_bytes),
            HELDOUT_STRIDE
        );
    }
    Ok(heldout)
}

/// Which side of the held-out split a [`SplitStream`] delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Heldout,
    Train,
}

/// One side of the held-out split of a corpus, as a sequential byte stream.
#[derive(Debug)]
pub(crate) struct SplitStream {
    inner: CorpusStream,
    heldout_bytes: u64,
    part: Part,
    span_index: u64,
    heldout_taken: u64,
    span: Vec<u8>,
    pos: usize,
    offset: u64,
}

impl SplitStream {
    pub(crate) fn open(path: &Path, heldout_bytes: u64, part: Part) -> Result<Self> {
        Ok(SplitStream {
            inner: open_stream(path)?,
            heldout_bytes,
            part,
            span_index: 0,
            heldout_taken: 0,
            span: Vec::new(),
            pos: 0,
            offset: 0,
        })
    }

    /// Bytes of this part delivered so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of the whole corpus stream read so far (both parts).
    pub(crate) fn corpus_bytes(&self) -> u64 {
        self.inner.offset()
    }

    /// Loads the next span of this part into `span`; false at the end of the corpus.
    fn next_span(&mut self) -> Result<bool> {
        self.pos = 0;
        loop {
            let h = self.heldout_bytes;
            let len = if h == 0 { 1 << 16 } else { span_len(h) } as usize;
            self.span.resize(len, 0);
            let n = self.inner.read_full(&mut self.span)?;
            self.span.truncate(n);
            if n == 0 {
                return Ok(false);
            }
            if h > 0 && n == len && self.span[n - 1] != b'\n' {
                let mut extended = 0;
                while extended < HELDOUT_EXTENSION_CAP {
                    match self.inner.next_byte()? {
                        Some(b) => {
                            self.span.push(b);
                            extended += 1;
                            if b == b'\n' {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
            let held = h > 0
                && self.span_index % HELDOUT_STRIDE == HELDOUT_STRIDE - 1
                && self.heldout_taken < h;
            self.span_index += 1;
            if held {
                self.heldout_taken += self.span.len() as u64;
            }
            if held == (self.part == Part::Heldout) {
                return Ok(true);
            }
            if self.part == Part::Heldout && self.heldout_taken >= h {
                self.span.clear();
                return Ok(false);
            }
        }
    }

    /// Fills `buf` as far as this part allows; fewer bytes only at its end.
    pub(crate) fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.pos == self.span.len() && !self.next_span()? {
                break;
            }
            let n = (self.span.len() - self.pos).min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&self.span[self.pos..self.pos + n]);
            self.pos += n;
            filled += n;
        }
        self.offset += filled as u64;
        Ok(filled)
    }

    /// Discards up to `n` bytes of this part; returns how many were discarded.
    pub(crate) fn skip(&mut self, n: u64) -> Result<u64> {
        let mut buf = vec![0u8; (n.min(1 << 20)) as usize];
        let mut done = 0;
        while done < n {
            let want = (n - done).min(buf.len() as u64) as usize;
            let got = self.read_full(&mut buf[..want])?;
            done += got as u64;
            if got < want {
                break;
            }
        }
        Ok(done)
    }
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
    stream: SplitStream,
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
            stream: SplitStream::open(path, heldout_bytes, Part::Train)?,
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
        self.stream = SplitStream::open(&self.path, self.heldout_bytes, Part::Train)?;
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
        let total = self.stream.corpus_bytes();
        if total == 0 {
            anyhow::anyhow!("corpus {} holds no text", self.path.display())
        } else {
            anyhow::anyhow!(
                "corpus {}: too little training text for seq {}: {} training bytes of {} in all, need at least {}",
                self.path.display(),
                self.seq,
                self.stream.offset(),
                total,
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
}

/// Evaluation windows: consecutive non-overlapping pieces of `seq` bytes (the last may be
/// shorter); `max_windows` keeps only the first ones. Scored with a window start (see
/// [`Batch::with_window_start`]), every byte is predicted exactly once. Panics if `seq` is 0.
pub fn eval_windows(bytes: &[u8], seq: usize, max_windows: Option<usize>) -> Vec<&[u8]> {
    assert!(seq > 0, "eval_windows: seq must be positive");
    bytes
        .chunks(seq)
        .take(max_windows.unwrap_or(usize::MAX))
        .collect()
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

    /// The split rule written plainly over an in-memory stream: (held-out, training).
    fn naive_split(s: &[u8], h: u64) -> (Vec<u8>, Vec<u8>) {
        if h == 0 {
            return (Vec::new(), s.to_vec());
        }
        let (mut held, mut train, mut pos, mut k) = (Vec::new(), Vec::new(), 0usize, 0u64);
        while pos < s.len() {
            let mut end = (pos + span_len(h) as usize).min(s.len());
            if end - pos == span_len(h) as usize && s[end - 1] != b'\n' {
                let cap = (end + HELDOUT_EXTENSION_CAP as usize).min(s.len());
                end = s[end..cap]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(cap, |p| end + p + 1);
            }
            if k % HELDOUT_STRIDE == HELDOUT_STRIDE - 1 && (held.len() as u64) < h {
                held.extend_from_slice(&s[pos..end]);
            } else {
                train.extend_from_slice(&s[pos..end]);
            }
            pos = end;
            k += 1;
        }
        (held, train)
    }

    fn read_part(p: &Path, h: u64, part: Part) -> Vec<u8> {
        let mut st = SplitStream::open(p, h, part).unwrap();
        let mut v = vec![0u8; 1 << 22];
        let n = st.read_full(&mut v).unwrap();
        v.truncate(n);
        v
    }

    #[test]
    fn heldout_rule() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_corpus(dir.path(), "h.txt", &sample_text(400));
        let s = stream_bytes(&p);
        for h in [0u64, 100, 640, 2000, 5000] {
            let (held, train) = naive_split(&s, h);
            assert_eq!(read_heldout(&p, h).unwrap(), held, "h={h}");
            assert_eq!(read_part(&p, h, Part::Train), train, "h={h}");
            assert!(
                held.len() as u64 <= h + span_len(h) + 200,
                "h={h}: {}",
                held.len()
            );
            if h <= 2000 {
                assert!(held.len() as u64 >= h, "h={h}: {}", held.len());
            }
        }
        // Held-out spans come from across the corpus, not only its start.
        let held = read_heldout(&p, 2000).unwrap();
        let last_doc = String::from_utf8_lossy(&held)
            .rsplit("Doc ")
            .next()
            .unwrap()
            .to_string();
        let n: usize = last_doc.split(' ').next().unwrap().parse().unwrap();
        assert!(n > 200, "last held-out document {n}");
        // A paragraph longer than the cap is cut at span + 64 KiB.
        let long = vec![b'q'; 700_000];
        let p = write_corpus(dir.path(), "long.txt", &long);
        let held = read_heldout(&p, 1000).unwrap();
        assert_eq!(held.len() as u64, span_len(1000) + HELDOUT_EXTENSION_CAP);
        // An empty corpus is refused, and so is one too short for any held-out span.
        let p = write_corpus(dir.path(), "empty.txt", b"");
        let msg = format!("{:#}", read_heldout(&p, 10).unwrap_err());
        assert!(
            msg.contains("holds no text") && msg.contains("empty.txt"),
            "{msg}"
        );
        let p = write_corpus(dir.path(), "short.txt", b"one short paragraph\n");
        let msg = format!("{:#}", read_heldout(&p, 1000).unwrap_err());
        assert!(msg.contains("too short to hold out 1000 bytes"), "{msg}");
    }

    #[test]
    fn targets_are_next_bytes_and_an_epoch_covers_training_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_corpus(dir.path(), "c.txt", &sample_text(300));
        let (seq, h, block_seqs) = (16usize, 500u64, 7usize);
        let s = stream_bytes(&p);
        let (_, training) = naive_split(&s, h);
        let mut loader = ByteLoader::with_block_seqs(&p, h, 1, seq, 3, block_seqs).unwrap();
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
    fn eval_windows_and_window_start_framing() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        for seq in [1usize, 7, 10, 1000, 2000] {
            let w = eval_windows(&data, seq, None);
            assert_eq!(w.concat(), data, "seq {seq}");
            assert!(w.iter().all(|x| !x.is_empty() && x.len() <= seq));
        }
        assert_eq!(eval_windows(&data, 10, Some(3)).len(), 3);
        assert!(eval_windows(b"", 10, None).is_empty());
        let b = Batch::from_windows(&[b"abc", b"xyz"], 0);
        assert_eq!(b.inputs, vec![0, 97, 98, 0, 120, 121]);
        assert_eq!(b.targets, vec![97, 98, 99, 120, 121, 122]);
        let raw = Batch {
            inputs: vec![1, 2, 3, 4, 5, 6],
            targets: vec![2, 3, 4, 5, 6, 7],
            batch: 2,
            seq: 3,
        };
        let framed = raw.with_window_start(0);
        assert_eq!(framed.inputs, vec![0, 1, 2, 0, 4, 5]);
        assert_eq!(framed.targets, vec![1, 2, 3, 4, 5, 6]);
    }
}
