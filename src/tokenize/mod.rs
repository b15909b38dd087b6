//! Token datasets for M2: a corpus cut into chunks, each chunk coded by one method into 8- or
//! 16-bit tokens, written as a [`dataset`] (raw tokens plus `metadata.json`).
//!
//! Methods, one module each (the paper's §5 methods):
//!
//! - [`bytes`]: token = byte (or a big-endian byte pair);
//! - [`gzip`]: each chunk's zlib stream (default level, header and trailer kept);
//! - [`static_ac`]: each chunk arithmetic-coded with a fixed byte-unigram CDF from corpus counts;
//! - [`ac`]: the plain AC baseline, each chunk one arithmetic code under M1, context never reset
//!   (needs M1);
//! - [`subword`]: a 32k byte-level BPE (the paper's SentencePiece baseline), trained on the corpus,
//!   16-bit tokens only;
//! - [`equal_info`]: EqualInfoAC, windows of exactly `b` bits under M1's exact path (needs M1), with
//!   the designated-code termination rule or the paper's "Delay" rule.
//!
//! Chunks are [`DEFAULT_CHUNK_BYTES`] (10,240, the paper's) of the corpus's canonical byte stream;
//! the last may be shorter. Every chunk is one example in the dataset's examples table, which also
//! records each chunk's byte length, so every method decodes exactly ([`decode_dataset`]).
//!
//! Reported rates: `bytes_per_token = bytes / tokens`; `bits_per_byte = tokens × token_bits /
//! bytes`, the compressed bits (including per-chunk headers, termination and token padding) per
//! original byte.

pub mod ac;
pub mod bytes;
pub mod dataset;
pub mod equal_info;
pub mod examples;
pub mod gzip;
pub mod method;
pub mod repack;
pub mod shard;
pub mod static_ac;
pub mod subword;

pub use dataset::{
    DatasetError, Metadata, TokenDataset, TokenDatasetWriter, FORMAT, METADATA_FILE, TOKENS_FILE,
    VERSION,
};
pub use examples::{
    ChunkSplit, TokenEvalSet, TokenLoader, TokenLoaderState, HELDOUT_EVERY, M2_START,
};
pub use method::{
    AcParams, BytesParams, EqualInfoParams, GzipParams, Method, MethodParams, StaticAcParams,
    SubwordParams, TokenSource,
};
pub use shard::{merge_shards, Shard, ShardInfo};

use crate::coder::{codes_to_tokens, tokens_to_codes, EncodedWindows, WindowRule};
use crate::data::open_stream;
use crate::m1::{CpuM1Batch, Int8M1, M1Batch, CONTRACT_VERSION};
use anyhow::{anyhow, ensure, Context, Result};
use equal_info::EqualInfo;
use rayon::prelude::*;
use serde::Serialize;
use static_ac::StaticAc;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use subword::Subword;

/// The paper's example length for compression-based methods.
pub const DEFAULT_CHUNK_BYTES: usize = 10_240;

/// Largest chunk (example) accepted, in bytes, when tokenizing and when decoding.
pub const MAX_CHUNK_BYTES: usize = 1 << 30;

/// Bytes of text read and coded per parallel batch (about).
const BATCH_BYTES: usize = 16 << 20;

/// Chunks M1 codes side by side on the CPU ([`CpuM1Batch`] streams): each step's int8 products
/// then run over this many rows per weight read (about 5x the positions/s of one row at a time
/// at m1-3m's width), and the rows' other work spreads over the threads.
const CPU_STREAMS: usize = 256;

/// What the M1-based methods ([`Method::Ac`], [`Method::EqualInfo`]) code with: M1, and for
/// equal-info the window width and termination rule (ignored by `ac`).
#[derive(Clone)]
pub struct M1Spec {
    pub m1: Arc<Int8M1>,
    pub window_bits: u32,
    pub rule: WindowRule,
    /// Where M1 runs: many chunks (and, decoding equal-info, many windows) at once on this batch,
    /// or, when `None`, on the CPU: tokenizing codes [`CPU_STREAMS`] chunks in lockstep, decoding
    /// runs examples in parallel. The tokens are the same either way (the numeric contract).
    pub batch: Option<Arc<Mutex<dyn M1Batch>>>,
}

impl M1Spec {
    /// `m1` with `window_bits`-bit windows under the default (designated-code) rule.
    pub fn new(m1: Arc<Int8M1>, window_bits: u32) -> Self {
        M1Spec {
            m1,
            window_bits,
            rule: WindowRule::Designated,
            batch: None,
        }
    }

    /// The same, running M1 on `batch` (built from the same M1).
    pub fn with_batch(mut self, batch: Arc<Mutex<dyn M1Batch>>) -> Self {
        self.batch = Some(batch);
        self
    }

    /// The same, with the paper's Delay rule when `delay`.
    pub fn with_delay(mut self, delay: bool) -> Self {
        self.rule = if delay {
            WindowRule::Delay
        } else {
            WindowRule::Designated
        };
        self
    }

    fn fingerprint(&self) -> String {
        format!("{:016x}", self.m1.fingerprint())
    }
}

impl std::fmt::Debug for M1Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "M1(b={}, rule {}, m1 {:016x})",
            self.window_bits,
            self.rule.name(),
            self.m1.fingerprint()
        )
    }
}

/// What coding one chunk produced besides its tokens (equal-info only).
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkStats {
    pub windows: u64,
    pub backoffs: u64,
}

/// A method ready to code and decode chunks (not to be confused with [`crate::coder`], the
/// arithmetic codec some methods run).
#[derive(Clone, Debug)]
pub enum Codec {
    Bytes,
    Gzip,
    StaticAc(Box<StaticAc>),
    /// M1 coding the whole chunk (the spec's window width and rule are unused).
    Ac(M1Spec),
    Subword(Arc<Subword>),
    EqualInfo(M1Spec),
}

impl Codec {
    /// The codec that decodes (and codes) tokens made by `method`. Methods that ran M1 need the
    /// same M1 in `m1`: its fingerprint must be the recorded `m1_fingerprint`.
    pub fn new(
        method: &MethodParams,
        m1_fingerprint: Option<&str>,
        m1: Option<Arc<Int8M1>>,
    ) -> Result<Codec> {
        let m1 = if method.method().needs_m1() {
            let contract = method.m1_contract().unwrap_or(0);
            ensure!(
                contract == CONTRACT_VERSION,
                "these tokens were coded under M1 numeric contract {contract}; this build codes and decodes under contract {CONTRACT_VERSION}: tokenize the text again with this build (or decode with the build that wrote them)"
            );
            let m1 = m1.context("this dataset was coded with M1: pass the same M1 to decode it")?;
            let want = m1_fingerprint.unwrap_or("none");
            let have = format!("{:016x}", m1.fingerprint());
            ensure!(
                want == have,
                "wrong M1: the dataset was coded with M1 {want}, this M1 is {have}"
            );
            Some(m1)
        } else {
            None
        };
        Ok(match method {
            MethodParams::Bytes(_) => Codec::Bytes,
            MethodParams::Gzip(_) => Codec::Gzip,
            MethodParams::StaticAc(p) => Codec::StaticAc(Box::new(StaticAc::from_freqs(&p.freqs)?)),
            MethodParams::Subword(p) => Codec::Subword(Arc::new(Subword::from_json(&p.tokenizer)?)),
            MethodParams::Ac(_) => Codec::Ac(M1Spec::new(m1.expect("checked above"), 16)),
            MethodParams::EqualInfo(p) => {
                let m1 = m1.expect("checked above");
                EqualInfo::with_rule(&m1, p.window_bits, p.window_rule)?;
                Codec::EqualInfo(
                    M1Spec::new(m1, p.window_bits).with_delay(p.window_rule == WindowRule::Delay),
                )
            }
        })
    }

    /// One chunk's tokens.
    pub fn encode(&self, chunk: &[u8], token_bits: u32) -> Result<Vec<u16>> {
        Ok(self.encode_with_stats(chunk, token_bits)?.0)
    }

    /// One chunk's tokens, with its window count and back-offs (zero but for equal-info).
    pub fn encode_with_stats(
        &self,
        chunk: &[u8],
        token_bits: u32,
    ) -> Result<(Vec<u16>, ChunkStats)> {
        let plain = |t: Vec<u16>| (t, ChunkStats::default());
        Ok(match self {
            Codec::Bytes => plain(bytes::encode(chunk, token_bits)?),
            Codec::Gzip => plain(gzip::encode(chunk, token_bits)?),
            Codec::StaticAc(m) => plain(m.encode(chunk, token_bits)?),
            Codec::Ac(e) => plain(ac::encode(&e.m1, chunk, token_bits)?),
            Codec::Subword(sw) => plain(sw.encode(chunk, token_bits)?),
            Codec::EqualInfo(e) => {
                let w = EqualInfo::with_rule(&e.m1, e.window_bits, e.rule)?.encode(chunk)?;
                windows_to_tokens(&w, e.window_bits, token_bits)?
            }
        })
    }

    /// One chunk's bytes from its tokens; the result is checked to be `byte_len` long.
    pub fn decode(&self, tokens: &[u16], token_bits: u32, byte_len: usize) -> Result<Vec<u8>> {
        let out = match self {
            Codec::Bytes => bytes::decode(tokens, token_bits, byte_len)?,
            Codec::Gzip => gzip::decode_capped(tokens, token_bits, byte_len)?,
            Codec::StaticAc(m) => m.decode(tokens, token_bits, byte_len)?,
            Codec::Ac(e) => ac::decode(&e.m1, tokens, token_bits, byte_len)?,
            Codec::Subword(sw) => sw.decode(tokens, token_bits)?,
            Codec::EqualInfo(e) => {
                let codes = tokens_to_codes(tokens, e.window_bits, token_bits)?;
                EqualInfo::with_rule(&e.m1, e.window_bits, e.rule)?.decode(&codes)?
            }
        };
        ensure!(
            out.len() == byte_len,
            "decoded {} bytes, expected {byte_len}",
            out.len()
        );
        Ok(out)
    }
}

/// A chunk's Equal-Info windows as tokens, with their count and back-offs.
fn windows_to_tokens(
    w: &EncodedWindows,
    window_bits: u32,
    token_bits: u32,
) -> Result<(Vec<u16>, ChunkStats)> {
    let stats = ChunkStats {
        windows: w.codes.len() as u64,
        backoffs: w.backoffs,
    };
    Ok((codes_to_tokens(&w.codes, window_bits, token_bits)?, stats))
}

fn lock<'a>(
    batch: &'a Mutex<dyn M1Batch + 'static>,
) -> Result<std::sync::MutexGuard<'a, dyn M1Batch + 'static>> {
    batch.lock().map_err(|_| anyhow!("M1 batch poisoned"))
}

/// What [`tokenize_corpus`] did.
#[derive(Clone, Debug, Serialize)]
pub struct TokenizeReport {
    pub method: Method,
    pub source: String,
    pub out: String,
    pub token_bits: u32,
    pub vocab: u32,
    pub chunk_bytes: usize,
    /// Corpus bytes covered.
    pub bytes: u64,
    pub tokens: u64,
    /// Examples (chunks).
    pub chunks: u64,
    /// `bytes / tokens` (0 with no tokens).
    pub bytes_per_token: f64,
    /// `tokens × token_bits / bytes`: compressed bits per original byte (0 with no bytes).
    pub bits_per_byte: f64,
    /// static-ac only: the corpus's byte-unigram entropy, bits per byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unigram_entropy: Option<f64>,
    /// equal-info only: windows coded (each `window_bits` bits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<u64>,
    /// equal-info only: `bytes / windows`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_window: Option<f64>,
    /// equal-info only: encoder back-offs (bytes refused although they fit, or deferred by the
    /// Delay rule), each starting the next window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoffs: Option<u64>,
    /// Wall-clock seconds, counting pass included.
    pub seconds: f64,
    /// `bytes / seconds`.
    pub bytes_per_second: f64,
}

/// Tokenizes the corpus at `corpus` (any format [`open_stream`] reads) into a dataset at `out`,
/// streaming: memory stays at a few batches of chunks whatever the corpus size. `static-ac` reads
/// the corpus twice (counts, then coding). Chunks are coded in parallel (rayon), written in order.
/// `m1` is required by (and only used by) the methods that code with M1 ([`Method::needs_m1`]);
/// its window width and rule matter only to [`Method::EqualInfo`].
pub fn tokenize_corpus(
    method: Method,
    corpus: &Path,
    out: &Path,
    token_bits: u32,
    chunk_bytes: usize,
    m1: Option<&M1Spec>,
    progress: bool,
) -> Result<TokenizeReport> {
    tokenize_corpus_with(
        method,
        corpus,
        out,
        token_bits,
        chunk_bytes,
        m1,
        None,
        None,
        progress,
    )
}

/// As [`tokenize_corpus`]; [`Method::Subword`] trains on `subword_train` (any corpus format; its
/// first [`subword::TRAIN_MAX_BYTES`]) instead of the corpus's first bytes when given. With
/// `shard`, only that shard's chunks are coded, and the dataset records the whole corpus's
/// counts and CRC-32 for [`merge_shards`].
#[allow(clippy::too_many_arguments)]
pub fn tokenize_corpus_with(
    method: Method,
    corpus: &Path,
    out: &Path,
    token_bits: u32,
    chunk_bytes: usize,
    m1: Option<&M1Spec>,
    subword_train: Option<&Path>,
    shard: Option<Shard>,
    progress: bool,
) -> Result<TokenizeReport> {
    ensure!(
        subword_train.is_none() || method == Method::Subword,
        "a subword training file is used only by the subword method"
    );
    ensure!(
        method != Method::Subword || token_bits == 16,
        "subword tokens are 16-bit ids (a 32k vocabulary): --token-bits {token_bits} refused, use 16"
    );
    ensure!(
        token_bits == 8 || token_bits == 16,
        "token bits {token_bits} unsupported: need 8 or 16"
    );
    ensure!(
        (1..=MAX_CHUNK_BYTES).contains(&chunk_bytes),
        "chunk bytes {chunk_bytes} out of range 1..=2^30"
    );
    let start = Instant::now();
    let bar = if progress {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} {bytes} ({bytes_per_sec}) {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut buf = vec![0u8; BATCH_BYTES.div_ceil(chunk_bytes).max(1) * chunk_bytes];

    ensure!(
        m1.is_some() == method.needs_m1(),
        "M1 is needed by ac and equal-info, and by no other method ({} given {})",
        method.name(),
        if m1.is_some() { "an M1" } else { "no M1" }
    );
    let m1_fingerprint = m1.map(M1Spec::fingerprint);
    let chunk = chunk_bytes as u64;
    let (codec, params, entropy) = match method {
        Method::Bytes => (
            Codec::Bytes,
            MethodParams::Bytes(BytesParams { chunk_bytes: chunk }),
            None,
        ),
        Method::Ac => {
            let e = m1.expect("checked above");
            let params = MethodParams::Ac(AcParams {
                cdf_f_min: 1,
                cdf_total_bits: 16,
                chunk_bytes: chunk,
                m1_config: e.m1.config().clone(),
                m1_context: "whole chunk, never reset".into(),
                m1_contract: CONTRACT_VERSION,
            });
            (Codec::Ac(e.clone()), params, None)
        }
        Method::EqualInfo => {
            let e = m1.expect("checked above").clone();
            EqualInfo::with_rule(&e.m1, e.window_bits, e.rule)?;
            ensure!(
                e.window_bits.is_multiple_of(token_bits),
                "window bits {} must be a multiple of the token bits {token_bits}",
                e.window_bits
            );
            let params = MethodParams::EqualInfo(EqualInfoParams {
                cdf_f_min: 1,
                cdf_total_bits: 16,
                chunk_bytes: chunk,
                m1_config: e.m1.config().clone(),
                m1_contract: CONTRACT_VERSION,
                window_bits: e.window_bits,
                window_rule: e.rule,
            });
            (Codec::EqualInfo(e), params, None)
        }
        Method::Subword => {
            bar.set_message("training subword");
            let src = subword_train.unwrap_or(corpus);
            let mut text = vec![0u8; subword::TRAIN_MAX_BYTES];
            let n = open_stream(src)?.read_full(&mut text)?;
            text.truncate(n);
            let sw = Subword::train(&text, subword::VOCAB_SIZE).with_context(|| {
                format!("cannot train the subword tokenizer on {}", src.display())
            })?;
            let params = MethodParams::Subword(SubwordParams {
                algorithm: "byte-level BPE (tokenizers crate)".into(),
                chunk_bytes: chunk,
                max_word_bytes: subword::MAX_WORD_BYTES as u64,
                pretokenizer: subword::PRETOKENIZER.into(),
                tokenizer: sw.to_json()?,
                train_bytes: n as u64,
                train_source: src.display().to_string(),
                vocab_size: sw.vocab_size() as u64,
            });
            (Codec::Subword(Arc::new(sw)), params, None)
        }
        Method::Gzip => (
            Codec::Gzip,
            MethodParams::Gzip(GzipParams {
                chunk_bytes: chunk,
                container: "zlib".into(),
                level: gzip::LEVEL,
            }),
            None,
        ),
        Method::StaticAc => {
            bar.set_message("counting");
            let mut counts = [0u64; 256];
            let mut s = open_stream(corpus)?;
            loop {
                let n = s.read_full(&mut buf)?;
                static_ac::count_bytes(&mut counts, &buf[..n]);
                bar.inc(n as u64);
                if n < buf.len() {
                    break;
                }
            }
            bar.set_position(0);
            let m = StaticAc::from_counts(&counts)?;
            let params = MethodParams::StaticAc(StaticAcParams {
                cdf_total_bits: static_ac::TOTAL_BITS,
                chunk_bytes: chunk,
                counts: counts.to_vec(),
                freqs: m.freqs().to_vec(),
            });
            (
                Codec::StaticAc(Box::new(m)),
                params,
                Some(static_ac::unigram_entropy(&counts)),
            )
        }
    };
    bar.set_message(method.name());

    let mut stream = open_stream(corpus)?;
    let mut w = TokenDatasetWriter::create(out, token_bits)?;
    let mut stats = ChunkStats::default();
    let (mut corpus_chunks, mut corpus_bytes) = (0u64, 0u64);
    let mut corpus_crc = crc32fast::Hasher::new();
    loop {
        let n = stream.read_full(&mut buf)?;
        let first = corpus_chunks;
        corpus_chunks += n.div_ceil(chunk_bytes) as u64;
        corpus_bytes += n as u64;
        if shard.is_some() {
            corpus_crc.update(&buf[..n]);
        }
        let chunks: Vec<&[u8]> = buf[..n]
            .chunks(chunk_bytes)
            .enumerate()
            .filter(|&(j, _)| shard.is_none_or(|s| s.takes(first + j as u64)))
            .map(|(_, c)| c)
            .collect();
        let coded: Vec<Result<(Vec<u16>, ChunkStats)>> = match &codec {
            Codec::Ac(spec) | Codec::EqualInfo(spec) => {
                let (mut guard, mut cpu);
                let batch: &mut dyn M1Batch = match &spec.batch {
                    Some(b) => {
                        guard = lock(b)?;
                        &mut *guard
                    }
                    None => {
                        cpu = CpuM1Batch::new(&spec.m1, CPU_STREAMS);
                        &mut cpu
                    }
                };
                if let Codec::Ac(_) = codec {
                    ac::encode_chunks(
                        batch,
                        &chunks,
                        token_bits,
                        &mut ac::ChunkModelStore::new(ac::AcModel::M1),
                    )?
                    .into_iter()
                    .map(|t| Ok((t, ChunkStats::default())))
                    .collect()
                } else {
                    let ei = EqualInfo::with_rule(&spec.m1, spec.window_bits, spec.rule)?;
                    ei.encode_chunks(batch, &chunks)?
                        .into_iter()
                        .map(|w| windows_to_tokens(&w, spec.window_bits, token_bits))
                        .collect()
                }
            }
            _ => chunks
                .par_iter()
                .map(|c| codec.encode_with_stats(c, token_bits))
                .collect(),
        };
        for (chunk, coded) in chunks.iter().zip(coded) {
            let (tokens, s) = coded?;
            stats.windows += s.windows;
            stats.backoffs += s.backoffs;
            w.push_example(&tokens, chunk.len() as u64)?;
        }
        bar.inc(n as u64);
        if n < buf.len() {
            break;
        }
    }
    let (bytes, tokens, chunks) = (w.bytes(), w.tokens(), w.examples() as u64);
    let vocab = match &codec {
        Codec::Subword(sw) => sw.vocab_size() as u32, // M2's vocabulary: the trained one
        _ => 1u32 << token_bits,
    };
    let source = corpus.display().to_string();
    if let Some(s) = shard {
        w.set_shard(ShardInfo {
            index: s.index,
            count: s.count,
            corpus_chunks,
            corpus_bytes,
            corpus_crc32: corpus_crc.finalize(),
        });
    }
    w.finish(params, vocab, m1_fingerprint, &source)
        .with_context(|| format!("cannot write token dataset {}", out.display()))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let is_ei = method == Method::EqualInfo;
    Ok(TokenizeReport {
        method,
        source,
        out: out.display().to_string(),
        token_bits,
        vocab,
        chunk_bytes,
        bytes,
        tokens,
        chunks,
        bytes_per_token: ratio(bytes as f64, tokens as f64),
        bits_per_byte: ratio((tokens * token_bits as u64) as f64, bytes as f64),
        unigram_entropy: entropy,
        windows: is_ei.then_some(stats.windows),
        bytes_per_window: is_ei.then(|| ratio(bytes as f64, stats.windows as f64)),
        backoffs: is_ei.then_some(stats.backoffs),
        seconds,
        bytes_per_second: ratio(bytes as f64, seconds),
    })
}

/// The source bytes of example `i` of an opened dataset, decoded with `codec`. Refuses an example
/// longer than the dataset's `params.chunk_bytes` or [`MAX_CHUNK_BYTES`] (corrupt metadata) before
/// decoding it.
pub fn decode_example(ds: &TokenDataset, codec: &Codec, i: usize) -> Result<Vec<u8>> {
    let (tokens, len) = example_for_decoding(ds, i)?;
    codec
        .decode(&tokens, ds.token_bits(), len)
        .with_context(|| format!("{}: cannot decode example {i}", ds.dir().display()))
}

/// Example `i`'s tokens and byte length, refusing a length beyond the dataset's chunks.
fn example_for_decoding(ds: &TokenDataset, i: usize) -> Result<(Vec<u16>, usize)> {
    let (toks, bytes) = ds
        .example(i)
        .with_context(|| format!("example {i} out of range"))?;
    let len = bytes.end - bytes.start;
    let max = ds
        .metadata()
        .method
        .chunk_bytes()
        .min(MAX_CHUNK_BYTES as u64);
    ensure!(
        len <= max,
        "{}: corrupt metadata: example {i} covers {len} bytes, more than the {max}-byte chunks",
        ds.dir().display()
    );
    let len = usize::try_from(len).context("example length beyond this machine's memory")?;
    Ok((ds.tokens_u16(toks), len))
}

/// Every example of an `ac` or `equal-info` dataset, decoded on `batch`: `ac` examples
/// `batch.streams()` at a time, equal-info windows of all examples side by side.
fn decode_batched(
    ds: &TokenDataset,
    codec: &Codec,
    batch: &mut dyn M1Batch,
) -> Result<Vec<Vec<u8>>> {
    let (tokens, lens): (Vec<Vec<u16>>, Vec<usize>) = (0..ds.num_examples())
        .map(|i| example_for_decoding(ds, i))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let fail = || format!("{}: cannot decode", ds.dir().display());
    let bits = ds.token_bits();
    let Codec::EqualInfo(e) = codec else {
        let views: Vec<&[u16]> = tokens.iter().map(|t| &t[..]).collect();
        return ac::decode_chunks(
            batch,
            &views,
            bits,
            &lens,
            &mut ac::ChunkModelStore::new(ac::AcModel::M1),
        )
        .with_context(fail);
    };
    let codes: Vec<Vec<u128>> = tokens
        .iter()
        .map(|t| tokens_to_codes(t, e.window_bits, bits))
        .collect::<Result<_, _>>()
        .with_context(fail)?;
    let ei = EqualInfo::with_rule(&e.m1, e.window_bits, e.rule)?;
    let mut windows = ei
        .decode_codes(batch, &codes.concat())
        .with_context(fail)?
        .into_iter();
    codes
        .iter()
        .zip(lens)
        .enumerate()
        .map(|(i, (c, len))| {
            let bytes: Vec<u8> = windows.by_ref().take(c.len()).flatten().collect();
            ensure!(
                bytes.len() == len,
                "{}: cannot decode example {i}: decoded {} bytes, expected {len}",
                ds.dir().display(),
                bytes.len()
            );
            Ok(bytes)
        })
        .collect()
}

/// The whole source byte stream a dataset covers, decoded (every method here has a decoder).
pub fn decode_dataset(dir: &Path) -> Result<Vec<u8>> {
    decode_dataset_with_m1(dir, None)
}

/// As [`decode_dataset`], with the M1 that datasets of M1-based methods need.
pub fn decode_dataset_with_m1(dir: &Path, m1: Option<Arc<Int8M1>>) -> Result<Vec<u8>> {
    decode_dataset_on(dir, m1, None)
}

/// As [`decode_dataset_with_m1`]; an `ac` or `equal-info` dataset decodes on `batch`
/// ([`M1Spec::batch`]) when given (other methods ignore it).
pub fn decode_dataset_on(
    dir: &Path,
    m1: Option<Arc<Int8M1>>,
    batch: Option<Arc<Mutex<dyn M1Batch>>>,
) -> Result<Vec<u8>> {
    let decoder = DatasetDecoder::open(dir, m1, batch)?;
    let mut out = Vec::with_capacity(decoder.bytes_covered() as usize);
    decoder.decode_into(|bytes| {
        out.extend_from_slice(bytes);
        Ok(())
    })?;
    Ok(out)
}

/// A token dataset opened for decoding, its codec ready: everything that can be refused about the
/// dataset is refused by [`open`](Self::open), before [`decode_into`](Self::decode_into) hands
/// out any bytes (so a caller can open its output in between).
pub struct DatasetDecoder {
    ds: TokenDataset,
    codec: Codec,
    batch: Option<Arc<Mutex<dyn M1Batch>>>,
}

impl DatasetDecoder {
    /// Opens the dataset in `dir` with the M1 that M1-based methods need; an `ac` or
    /// `equal-info` dataset decodes on `batch` when given (other methods ignore it).
    pub fn open(
        dir: &Path,
        m1: Option<Arc<Int8M1>>,
        batch: Option<Arc<Mutex<dyn M1Batch>>>,
    ) -> Result<DatasetDecoder> {
        let ds = TokenDataset::open(dir)?;
        let meta = ds.metadata();
        let codec = Codec::new(&meta.method, meta.m1_fingerprint.as_deref(), m1)
            .with_context(|| format!("{}: cannot decode", dir.display()))?;
        let batch = batch.filter(|_| matches!(codec, Codec::Ac(_) | Codec::EqualInfo(_)));
        Ok(DatasetDecoder { ds, codec, batch })
    }

    /// The number of source bytes the dataset covers.
    pub fn bytes_covered(&self) -> u64 {
        self.ds.metadata().bytes_covered
    }

    /// Decodes every example, handing each one's bytes to `sink` in order. On the CPU, examples
    /// decode in parallel a few per thread at a time, so the output streams out as it decodes;
    /// on a batch, all examples decode together first.
    pub fn decode_into(self, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let (ds, codec) = (&self.ds, &self.codec);
        if let Some(b) = &self.batch {
            for part in decode_batched(ds, codec, &mut *lock(b)?)? {
                sink(&part)?;
            }
            return Ok(());
        }
        let (n, group) = (ds.num_examples(), rayon::current_num_threads() * 4);
        for start in (0..n).step_by(group) {
            let parts: Vec<Vec<u8>> = (start..n.min(start + group))
                .into_par_iter()
                .map(|i| decode_example(ds, codec, i))
                .collect::<Result<_>>()?;
            for part in &parts {
                sink(part)?;
            }
        }
        Ok(())
    }
}
