//! Self-describing compressed files under M1's exact path (numeric contract 3), for any input
//! bytes (text, binary, empty, not UTF-8). Each chunk is coded one of two ways ([`Coding`]):
//! one arithmetic code under M1 with its context never reset (`ac`, M1's own rate: the best
//! ratio, the default), or Equal-Info windows (what M2 trains on). A chunk that the coding does
//! not shrink is stored as it is, so no input grows by more than the header and four bytes per
//! chunk.
//!
//! Layout (integers little-endian; docs/file-formats.md has the full table):
//!
//! | field | size |
//! |---|---|
//! | magic `TERSEcf\0` | 8 |
//! | format version (2) | 2 |
//! | M1 contract version | 4 |
//! | M1 fingerprint | 8 |
//! | coding: 1 equal-info, 2 ac | 1 |
//! | window bits `b` (equal-info; 0 for ac) | 2 |
//! | chunk bytes | 4 |
//! | original length | 8 |
//! | CRC-32 of the original | 4 |
//! | then per chunk a u32 word: [`STORED`] and the chunk's bytes; or, coded, the window count and each window's code (`b / 8` bytes big-endian), or the `ac` code's length in bytes and its bytes | |
//!
//! Chunks (the last may be shorter) are coded independently, so both directions use every core
//! and a damaged chunk is named. Decoding also reads format 1 (Equal-Info only, no stored
//! chunks, a 40-byte header without the coding byte), checks every header field against the M1 it
//! is given and the length and CRC-32 of the result, and writes its output atomically
//! ([`crate::fsio`]): on any error no output file is left.

use crate::fsio::{AtomicFile, Existing};
use crate::m1::{CpuM1Batch, Int8M1, CONTRACT_VERSION};
use crate::tokenize::ac;
use crate::tokenize::equal_info::EqualInfo;
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"TERSEcf\0";
/// The format this build writes; it reads this one and format 1.
const FORMAT_VERSION: u16 = 2;
const HEADER_BYTES: usize = 8 + 2 + 4 + 8 + 1 + 2 + 4 + 8 + 4;
/// Format 1's header: no coding byte.
const V1_HEADER_BYTES: usize = HEADER_BYTES - 1;
/// A chunk record's first word when the chunk's bytes follow as they are.
pub const STORED: u32 = u32::MAX;

/// Most chunks read, coded and written at a time: each a stream of one lockstep batch.
const BATCH_CHUNKS: usize = 64;
/// Bytes of input (compressing) or output (decompressing) a batch of chunks may hold, when its
/// chunks are large.
const BATCH_BYTES: usize = 4 << 20;
/// Streams that decode a batch's Equal-Info windows together.
const DECODE_STREAMS: usize = 256;

/// Chunk size of `terse compress` unless told otherwise: with M1's context of a few hundred
/// bytes, a chunk's fresh start costs `ac` 0.06% of the size against 64 KiB chunks on c4-sample,
/// and a small file still fills a lockstep batch.
pub const DEFAULT_CHUNK_BYTES: u32 = 16 * 1024;

/// Chunks per batch for chunks of `chunk_bytes`: [`BATCH_CHUNKS`], fewer for large chunks.
fn batch_chunks(chunk_bytes: u32) -> usize {
    (BATCH_BYTES / chunk_bytes as usize).clamp(1, BATCH_CHUNKS)
}

/// How `terse compress` codes each chunk under M1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// One arithmetic code per chunk, M1's context never reset inside it ([`ac`]): M1's own
    /// rate, the best ratio.
    Ac,
    /// Equal-Info windows of `window_bits` bits ([`EqualInfo`]): each window decodes on its own,
    /// at a cost in ratio.
    EqualInfo { window_bits: u32 },
}

impl Coding {
    /// The header's coding byte and window bits.
    fn fields(self) -> (u8, u16) {
        match self {
            Coding::EqualInfo { window_bits } => (1, window_bits as u16),
            Coding::Ac => (2, 0),
        }
    }
}

/// What one compression or decompression did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompressReport {
    /// "ac" or "equal-info".
    pub method: &'static str,
    pub original_bytes: u64,
    pub compressed_bytes: u64,
    /// Equal-Info windows (0 for `ac`).
    pub windows: u64,
    /// Chunks kept as they were, because coding did not shrink them.
    pub stored_chunks: u64,
    pub bits_per_byte: f64,
    pub seconds: f64,
    pub bytes_per_second: f64,
}

/// Counts of a file's chunks.
#[derive(Clone, Copy, Default)]
struct Tally {
    windows: u64,
    stored: u64,
}

fn report(
    coding: Coding,
    original: u64,
    compressed: u64,
    tally: Tally,
    seconds: f64,
) -> CompressReport {
    CompressReport {
        method: match coding {
            Coding::Ac => "ac",
            Coding::EqualInfo { .. } => "equal-info",
        },
        original_bytes: original,
        compressed_bytes: compressed,
        windows: tally.windows,
        stored_chunks: tally.stored,
        bits_per_byte: if original > 0 {
            8.0 * compressed as f64 / original as f64
        } else {
            0.0
        },
        seconds,
        bytes_per_second: original as f64 / seconds.max(1e-9),
    }
}

/// The header of a file of `total` bytes with CRC-32 `crc`.
fn header(m1: &Int8M1, coding: Coding, chunk_bytes: u32, total: u64, crc: u32) -> Vec<u8> {
    let (method, bits) = coding.fields();
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&CONTRACT_VERSION.to_le_bytes());
    header.extend_from_slice(&m1.fingerprint().to_le_bytes());
    header.push(method);
    header.extend_from_slice(&bits.to_le_bytes());
    header.extend_from_slice(&chunk_bytes.to_le_bytes());
    header.extend_from_slice(&total.to_le_bytes());
    header.extend_from_slice(&crc.to_le_bytes());
    header
}

/// The coders of one file: the Equal-Info coder when the coding is Equal-Info.
struct ChunkCoder<'a> {
    m1: &'a Int8M1,
    equal_info: Option<EqualInfo<'a>>,
}

impl<'a> ChunkCoder<'a> {
    fn new(m1: &'a Int8M1, coding: Coding) -> Result<Self> {
        let equal_info = match coding {
            Coding::EqualInfo { window_bits } => Some(EqualInfo::new(m1, window_bits)?),
            Coding::Ac => None,
        };
        Ok(ChunkCoder { m1, equal_info })
    }

    /// The records of `chunks`, coded together in lockstep on one [`CpuM1Batch`] (a stream per
    /// chunk, so each step's rows share one read of M1's weights), with their Equal-Info windows.
    /// A chunk whose code would not be shorter than itself is stored.
    fn encode_all(&self, chunks: &[&[u8]]) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut batch = CpuM1Batch::new(self.m1, chunks.len().max(1));
        let coded: Vec<(u32, Vec<u8>)> = match &self.equal_info {
            Some(coder) => {
                let width = coder.window_bits() as usize / 8;
                coder
                    .encode_chunks(&mut batch, chunks)?
                    .into_iter()
                    .map(|w| {
                        let body = w
                            .codes
                            .iter()
                            .flat_map(|c| c.to_be_bytes()[16 - width..].to_vec());
                        (w.codes.len() as u32, body.collect())
                    })
                    .collect()
            }
            None => ac::encode_chunks(&mut batch, chunks, 8)?
                .into_iter()
                .map(|tokens| {
                    let body: Vec<u8> = tokens.into_iter().map(|t| t as u8).collect();
                    (body.len() as u32, body)
                })
                .collect(),
        };
        Ok(coded
            .into_iter()
            .zip(chunks)
            .map(|((word, body), &chunk)| {
                let (word, body, windows) = match body.len() < chunk.len() {
                    true if self.equal_info.is_some() => (word, &body[..], word as u64),
                    true => (word, &body[..], 0),
                    false => (STORED, chunk, 0),
                };
                let mut record = Vec::with_capacity(4 + body.len());
                record.extend_from_slice(&word.to_le_bytes());
                record.extend_from_slice(body);
                (record, windows)
            })
            .collect())
    }

    /// The bytes of `chunks` (each with its share of the original), the coded ones decoded
    /// together in lockstep on one [`CpuM1Batch`]: `ac` a stream per chunk, Equal-Info a stream
    /// per window (windows are independent), up to [`DECODE_STREAMS`].
    fn decode_all(&self, chunks: &[(&Chunk, usize)]) -> Result<Vec<Vec<u8>>> {
        let coded: Vec<&(&Chunk, usize)> = chunks.iter().filter(|(c, _)| !c.stored).collect();
        let mut decoded = match &self.equal_info {
            Some(coder) => {
                let width = coder.window_bits() as usize / 8;
                let codes: Vec<u128> = coded
                    .iter()
                    .flat_map(|(c, _)| c.body.chunks(width))
                    .map(|k| k.iter().fold(0u128, |acc, &x| (acc << 8) | x as u128))
                    .collect();
                let streams = codes.len().clamp(1, DECODE_STREAMS);
                let mut windows = coder
                    .decode_codes(&mut CpuM1Batch::new(self.m1, streams), &codes)?
                    .into_iter();
                coded
                    .iter()
                    .map(|(c, _)| {
                        windows
                            .by_ref()
                            .take(c.word as usize)
                            .collect::<Vec<_>>()
                            .concat()
                    })
                    .collect::<Vec<_>>()
            }
            None => {
                let tokens: Vec<Vec<u16>> = coded
                    .iter()
                    .map(|(c, _)| c.body.iter().map(|&b| b as u16).collect())
                    .collect();
                let refs: Vec<&[u16]> = tokens.iter().map(Vec::as_slice).collect();
                let lens: Vec<usize> = coded.iter().map(|(_, len)| *len).collect();
                let mut batch = CpuM1Batch::new(self.m1, coded.len().max(1));
                ac::decode_chunks(&mut batch, &refs, 8, &lens)?
            }
        }
        .into_iter();
        Ok(chunks
            .iter()
            .map(|(c, _)| match c.stored {
                true => c.body.to_vec(),
                false => decoded.next().expect("one result per coded chunk"),
            })
            .collect())
    }

    /// Bytes after the word of a coded chunk's record whose word is `word`.
    fn body_bytes(&self, word: u32) -> usize {
        match &self.equal_info {
            Some(coder) => word as usize * (coder.window_bits() as usize / 8),
            None => word as usize,
        }
    }
}

/// A bar of `total` bytes on stderr, `what` before it; hidden unless `progress` (and, by
/// indicatif, when stderr is not a terminal).
fn byte_bar(progress: bool, total: u64, what: &str) -> indicatif::ProgressBar {
    if !progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// Length and CRC-32 of the regular file `input`, read once ahead of coding it.
fn scan(input: &Path) -> Result<(u64, u32)> {
    let name = input.display();
    let mut f = File::open(input).with_context(|| format!("cannot open {name}"))?;
    ensure!(
        f.metadata()
            .with_context(|| format!("cannot read {name}"))?
            .is_file(),
        "{name} is not a regular file: compressing into a device or pipe reads the input twice \
         (the header comes first), so it must be a file"
    );
    let (mut crc, mut total) = (crc32fast::Hasher::new(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {name}"))?;
        if n == 0 {
            return Ok((total, crc.finalize()));
        }
        crc.update(&buf[..n]);
        total += n as u64;
    }
}

/// Compresses `input` into `output`, each chunk as `coding` says (or stored, when that does not
/// shrink it). Memory holds one batch of chunks (up to 64, 4 MiB unless one chunk is larger),
/// coded in lockstep. An existing regular file at `output` is replaced only when `existing` says
/// so; a device or FIFO is written through (the input, which must then be a regular file, is read
/// twice: its length and CRC-32 head the output). With `progress`, a bar of the input's bytes on
/// stderr (when it is a terminal).
pub fn compress_file(
    input: &Path,
    output: &Path,
    m1: &Int8M1,
    coding: Coding,
    chunk_bytes: u32,
    existing: Existing,
    progress: bool,
) -> Result<CompressReport> {
    let t = std::time::Instant::now();
    let coder = ChunkCoder::new(m1, coding)?;
    ensure!(chunk_bytes > 0, "chunk bytes must be positive");
    let file = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let size = file.metadata().map_or(0, |m| m.len());
    let mut src = BufReader::new(file);
    let out_name = output.display();
    let mut out =
        AtomicFile::open(output, existing).with_context(|| format!("cannot write {out_name}"))?;
    // Written through, the output cannot be seeked back to: the header goes first.
    let known = match out.writes_through() {
        true => Some(scan(input)?),
        false => None,
    };
    let mut w = BufWriter::new(&mut out);
    let first = match known {
        Some((total, crc)) => header(m1, coding, chunk_bytes, total, crc),
        None => vec![0u8; HEADER_BYTES],
    };
    w.write_all(&first)
        .with_context(|| format!("cannot write {out_name}"))?;
    let mut compressed = first.len() as u64;
    let mut buf = vec![0u8; batch_chunks(chunk_bytes) * chunk_bytes as usize];
    let (mut crc, mut total, mut tally) = (crc32fast::Hasher::new(), 0u64, Tally::default());
    let bar = byte_bar(progress, size, "compressing");
    loop {
        let n = read_full(&mut src, &mut buf)
            .with_context(|| format!("reading {}", input.display()))?;
        crc.update(&buf[..n]);
        total += n as u64;
        let chunks: Vec<&[u8]> = buf[..n].chunks(chunk_bytes as usize).collect();
        for (record, windows) in coder.encode_all(&chunks)? {
            w.write_all(&record)
                .with_context(|| format!("cannot write {out_name}"))?;
            compressed += record.len() as u64;
            tally.windows += windows;
            tally.stored += u64::from(record[..4] == STORED.to_le_bytes());
        }
        bar.inc(n as u64);
        if n < buf.len() {
            break;
        }
    }
    bar.finish_and_clear();
    let crc = crc.finalize();
    let file = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {out_name}"))?;
    match known {
        Some(k) => ensure!(
            k == (total, crc),
            "{} changed while it was being compressed; {out_name} holds a bad stream",
            input.display()
        ),
        None => {
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.write_all(&header(m1, coding, chunk_bytes, total, crc)))
                .with_context(|| format!("cannot write {out_name}"))?;
        }
    }
    out.commit()?;
    Ok(report(
        coding,
        total,
        compressed,
        tally,
        t.elapsed().as_secs_f64(),
    ))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Decompresses `input` into `output`, streaming (the input is memory-mapped, the output written
/// a batch of chunks at a time, so memory stays bounded). Refuses (naming the mismatch) another format, contract or
/// M1, a truncated or corrupt file, and a result whose length or CRC-32 differs from the header.
/// An existing regular file at `output` is replaced only when `existing` says so. With
/// `progress`, a bar of the output's bytes on stderr (when it is a terminal).
pub fn decompress_file(
    input: &Path,
    output: &Path,
    m1: &Int8M1,
    existing: Existing,
    progress: bool,
) -> Result<CompressReport> {
    let t = std::time::Instant::now();
    let name = input.display();
    let file = File::open(input).with_context(|| format!("cannot open {name}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {name}"))?;
    ensure!(
        !meta.is_dir(),
        "{name} is a directory, not a terse compressed file"
    );
    let len = meta.len();
    ensure!(
        len >= V1_HEADER_BYTES as u64,
        "{name} is not a terse compressed file (bad magic or too short)"
    );
    // SAFETY: the map is read-only and lives only inside this call; a file truncated underneath
    // it by another process is outside what any reader can defend against.
    let data =
        unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot read {name}"))?;
    ensure!(
        &data[..8] == MAGIC,
        "{name} is not a terse compressed file (bad magic or too short)"
    );
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
    let (format, contract, fingerprint) = (u16_at(8), u32_at(10), u64_at(14));
    // Format 1 had no coding byte (Equal-Info only); the fields after it sit one byte earlier.
    let (method, at, header_bytes) = match format {
        1 => (1, 22, V1_HEADER_BYTES),
        FORMAT_VERSION => (data[22], 23, HEADER_BYTES),
        _ => bail!("{name}: format version {format}, this build reads 1 and {FORMAT_VERSION}"),
    };
    ensure!(
        len >= header_bytes as u64,
        "{name} is not a terse compressed file (bad magic or too short)"
    );
    let (bits, chunk_bytes, original_len, crc) = (
        u16_at(at) as u32,
        u32_at(at + 2),
        u64_at(at + 6),
        u32_at(at + 14),
    );
    ensure!(
        contract == CONTRACT_VERSION,
        "{name}: compressed under M1 numeric contract {contract}, this build decodes contract {CONTRACT_VERSION}: decompress it with the build that wrote it"
    );
    ensure!(
        fingerprint == m1.fingerprint(),
        "{name}: wrong M1: the file was compressed with M1 {fingerprint:016x}, this M1 is {:016x}",
        m1.fingerprint()
    );
    let coding = match (method, bits) {
        (1, window_bits) => Coding::EqualInfo { window_bits },
        (2, 0) => Coding::Ac,
        _ => bail!("{name}: corrupt header (coding {method}, window bits {bits})"),
    };
    let coder = ChunkCoder::new(m1, coding).with_context(|| format!("{name}: corrupt header"))?;
    ensure!(chunk_bytes > 0, "{name}: corrupt header (chunk size 0)");
    // Walk the chunk records, checking every length against the file before using it.
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut tally = Tally::default();
    let mut pos = header_bytes;
    let expect_chunks = original_len.div_ceil(chunk_bytes as u64);
    let share = |i: u64| (original_len - i * chunk_bytes as u64).min(chunk_bytes as u64) as usize;
    while (chunks.len() as u64) < expect_chunks {
        let i = chunks.len();
        ensure!(
            pos < data.len(),
            "{name} is truncated or corrupt: {i} chunks, header implies {expect_chunks}"
        );
        ensure!(
            pos + 4 <= data.len(),
            "{name} is truncated (inside chunk {i}'s record)"
        );
        let word = u32_at(pos);
        let stored = format == FORMAT_VERSION && word == STORED;
        let body = if stored {
            share(i as u64)
        } else {
            coder.body_bytes(word)
        };
        let end = pos + 4 + body;
        ensure!(
            end <= data.len(),
            "{name} is truncated or corrupt (chunk {i}'s record runs past the end of the file)"
        );
        if let Coding::EqualInfo { .. } = coding {
            ensure!(
                stored || word > 0,
                "{name} is corrupt (chunk {i} claims 0 windows)"
            );
            tally.windows += if stored { 0 } else { word as u64 };
        }
        tally.stored += u64::from(stored);
        chunks.push(Chunk {
            stored,
            word,
            body: &data[pos + 4..end],
        });
        pos = end;
    }
    if pos < data.len() {
        let what = if data[pos..].starts_with(MAGIC) {
            "another terse file follows (concatenated files are not read: split them)"
        } else {
            "not part of any chunk"
        };
        bail!(
            "{name}: trailing data after the last chunk ({} bytes at offset {pos}): {what}",
            data.len() - pos
        );
    }
    // Decode a batch of chunks at a time (all cores), streaming the result to a temp file.
    let out_name = output.display();
    let mut out =
        AtomicFile::open(output, existing).with_context(|| format!("cannot write {out_name}"))?;
    let mut w = BufWriter::new(&mut out);
    let mut hasher = crc32fast::Hasher::new();
    let batch = batch_chunks(chunk_bytes);
    let bar = byte_bar(progress, original_len, "decompressing");
    for (bi, group) in chunks.chunks(batch).enumerate() {
        let first = bi * batch;
        let shares: Vec<(&Chunk, usize)> = group
            .iter()
            .enumerate()
            .map(|(k, c)| (c, share((first + k) as u64)))
            .collect();
        let parts = coder
            .decode_all(&shares)
            .with_context(|| format!("{name}: chunks {first} to {}", first + group.len() - 1))?;
        for (k, p) in parts.into_iter().enumerate() {
            let i = first + k;
            let want = share(i as u64);
            ensure!(
                p.len() == want,
                "{name} is corrupt: chunk {i} decodes to {} bytes, expected {want}",
                p.len()
            );
            hasher.update(&p);
            w.write_all(&p)
                .with_context(|| format!("cannot write {out_name}"))?;
            bar.inc(p.len() as u64);
        }
    }
    bar.finish_and_clear();
    if hasher.finalize() != crc {
        bail!("{name} is corrupt: the decoded bytes fail the CRC-32 check");
    }
    w.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {out_name}"))?;
    out.commit()?;
    Ok(report(
        coding,
        original_len,
        data.len() as u64,
        tally,
        t.elapsed().as_secs_f64(),
    ))
}

/// One chunk's record in a file being decompressed.
struct Chunk<'a> {
    stored: bool,
    /// The record's first word: the window count or `ac` code length when coded.
    word: u32,
    /// What follows the word.
    body: &'a [u8],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ParamArena};
    use crate::rng::Rng;

    fn m1(seed: u64) -> Int8M1 {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(256); // contract 3 attends over a recorded context
        let mut p = ParamArena::init(&cfg, seed);
        p.data.iter_mut().for_each(|x| *x *= 8.0);
        Int8M1::new(&cfg, &p).unwrap()
    }

    /// A tiny M1 trained for 80 steps on the sample's first 4,000 bytes: it shrinks that text
    /// (about 5 bits/byte) and not random bytes, so files mix coded and stored chunks.
    fn text_m1() -> &'static Int8M1 {
        use crate::backend::{create_backend, Device, OptimConfig};
        use crate::model::Batch;
        static M1: std::sync::OnceLock<Int8M1> = std::sync::OnceLock::new();
        M1.get_or_init(|| {
            let mut cfg = ModelConfig::preset("tiny", None).unwrap();
            cfg.context = Some(256);
            let (mut be, _) =
                create_backend(Device::Cpu, &cfg, ParamArena::init(&cfg, 1), None).unwrap();
            let text = &include_bytes!("../data/sample-books.txt")[..4000];
            let (batch, seq) = (4, 32);
            let mut r = Rng::new(9);
            for step in 1..=80 {
                let (mut inputs, mut targets) = (Vec::new(), Vec::new());
                for _ in 0..batch {
                    let at = r.below((text.len() - seq - 1) as u64) as usize;
                    inputs.extend(text[at..at + seq].iter().map(|&b| b as u32));
                    targets.extend(text[at + 1..at + seq + 1].iter().map(|&b| b as u32));
                }
                let b = Batch {
                    inputs,
                    targets,
                    batch,
                    seq,
                };
                be.train_step(&b, 3e-3, step, &OptimConfig::default())
                    .unwrap();
            }
            Int8M1::new(&cfg, &be.params().unwrap()).unwrap()
        })
    }

    fn err(r: Result<CompressReport>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    const EQUAL_INFO_16: Coding = Coding::EqualInfo { window_bits: 16 };

    #[test]
    fn concatenated_files_and_directories_get_messages_that_say_so() {
        let m = m1(1);
        let dir = tempfile::tempdir().unwrap();
        let (src, z) = (dir.path().join("t"), dir.path().join("t.terse"));
        std::fs::write(&src, &include_bytes!("../data/sample-books.txt")[..2500]).unwrap();
        compress_file(&src, &z, &m, EQUAL_INFO_16, 1000, Existing::Replace, false).unwrap();
        let one = std::fs::read(&z).unwrap();
        let out = dir.path().join("out");
        let two = dir.path().join("two.terse");
        std::fs::write(&two, [one.clone(), one.clone()].concat()).unwrap();
        let e = err(decompress_file(&two, &out, &m, Existing::Replace, false));
        assert!(
            e.contains("trailing data after the last chunk") && e.contains("another terse file"),
            "{e}"
        );
        let junk = dir.path().join("junk.terse");
        std::fs::write(&junk, [one, b"xyz".to_vec()].concat()).unwrap();
        let e = err(decompress_file(&junk, &out, &m, Existing::Replace, false));
        assert!(
            e.contains("trailing data after the last chunk (3 bytes"),
            "{e}"
        );
        let e = err(decompress_file(
            dir.path(),
            &out,
            &m,
            Existing::Replace,
            false,
        ));
        assert!(e.contains("is a directory"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn round_trips_any_bytes_and_refuses_damage_without_partial_output() {
        let m = text_m1();
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rng::new(3);
        let random: Vec<u8> = (0..3000).map(|_| r.below(256) as u8).collect();
        let text = include_bytes!("../data/sample-books.txt")[..4000].to_vec();
        let inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![b'a'],
            text.clone(),
            random,
            vec![0xFF, 0xFE, 0x80, 0xC3],
        ];
        let codings = [
            Coding::Ac,
            EQUAL_INFO_16,
            Coding::EqualInfo { window_bits: 32 },
        ];
        for (i, input) in inputs.iter().enumerate() {
            for coding in codings {
                let (src, z, back) = (
                    dir.path().join(format!("in{i}")),
                    dir.path().join(format!("z{i}")),
                    dir.path().join(format!("out{i}")),
                );
                std::fs::write(&src, input).unwrap();
                let rep =
                    compress_file(&src, &z, m, coding, 1000, Existing::Replace, false).unwrap();
                assert_eq!(rep.original_bytes, input.len() as u64);
                let back_rep = decompress_file(&z, &back, m, Existing::Replace, false).unwrap();
                assert_eq!(
                    &std::fs::read(&back).unwrap(),
                    input,
                    "input {i}, {coding:?}"
                );
                assert_eq!(
                    (back_rep.method, back_rep.windows, back_rep.stored_chunks),
                    (rep.method, rep.windows, rep.stored_chunks)
                );
            }
        }
        // Damage: each case is refused and leaves no output file.
        let (src, z) = (dir.path().join("t"), dir.path().join("t.terse"));
        std::fs::write(&src, &text).unwrap();
        let rep = compress_file(&src, &z, m, Coding::Ac, 1000, Existing::Replace, false).unwrap();
        assert_eq!(rep.stored_chunks, 0, "text shrinks");
        let good = std::fs::read(&z).unwrap();
        let out = dir.path().join("never");
        let try_with = |bytes: &[u8]| {
            let p = dir.path().join("damaged");
            std::fs::write(&p, bytes).unwrap();
            let e = err(decompress_file(&p, &out, m, Existing::Replace, false));
            assert!(!out.exists(), "partial output left behind");
            e
        };
        assert!(try_with(&good[..good.len() - 1]).contains("truncated"));
        assert!(
            try_with(&good[..20]).contains("not a terse compressed file")
                || try_with(&good[..20]).contains("truncated")
        );
        assert!(try_with(b"hello").contains("not a terse compressed file"));
        let mut flipped = good.clone();
        flipped[HEADER_BYTES + 4 + 7] ^= 0x10;
        let e = try_with(&flipped);
        assert!(e.contains("corrupt"), "{e}");
        let mut crc_bad = good.clone();
        crc_bad[37] ^= 1;
        assert!(try_with(&crc_bad).contains("CRC-32"));
        let mut version = good.clone();
        version[10] = 2;
        let e = try_with(&version);
        assert!(
            e.contains("compressed under M1 numeric contract 2, this build decodes contract 3"),
            "{e}"
        );
        let mut format = good.clone();
        format[8] = 9;
        let e = try_with(&format);
        assert!(
            e.contains("format version 9, this build reads 1 and 2"),
            "{e}"
        );
        let mut method = good.clone();
        method[22] = 7;
        assert!(try_with(&method).contains("corrupt header (coding 7"));
        let e = err(decompress_file(&z, &out, &m1(2), Existing::Replace, false));
        assert!(e.contains("wrong M1"), "{e}");
        assert!(!out.exists());
        assert!(err(compress_file(
            &dir.path().join("missing"),
            &out,
            m,
            Coding::Ac,
            1000,
            Existing::Replace,
            false
        ))
        .contains("cannot open"));
    }

    /// Chunks that coding would not shrink are stored: random bytes grow by the header and four
    /// bytes per chunk, and a file mixing both kinds round-trips.
    #[test]
    fn incompressible_chunks_are_stored_as_they_are() {
        let m = text_m1();
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rng::new(5);
        let random: Vec<u8> = (0..2500).map(|_| r.below(256) as u8).collect();
        let text = &include_bytes!("../data/sample-books.txt")[..2000];
        let mixed = [text, &random[..], text].concat();
        let (src, z, back) = (
            dir.path().join("in"),
            dir.path().join("in.terse"),
            dir.path().join("back"),
        );
        for coding in [Coding::Ac, EQUAL_INFO_16] {
            std::fs::write(&src, &random).unwrap();
            let rep = compress_file(&src, &z, m, coding, 1000, Existing::Replace, false).unwrap();
            assert_eq!(rep.stored_chunks, 3, "{coding:?}");
            let size = (HEADER_BYTES + 3 * 4 + random.len()) as u64;
            assert_eq!(rep.compressed_bytes, size);
            assert_eq!(std::fs::metadata(&z).unwrap().len(), size);
            std::fs::write(&src, &mixed).unwrap();
            let rep = compress_file(&src, &z, m, coding, 1000, Existing::Replace, false).unwrap();
            assert!(
                rep.stored_chunks >= 2 && rep.stored_chunks < 7,
                "{coding:?}: {rep:?}"
            );
            decompress_file(&z, &back, m, Existing::Replace, false).unwrap();
            assert_eq!(std::fs::read(&back).unwrap(), mixed, "{coding:?}");
        }
    }

    /// A file of more chunks than one batch holds (coded and stored ones mixed) round-trips,
    /// batch after batch.
    #[test]
    fn files_of_many_batches_round_trip() {
        let m = text_m1();
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rng::new(7);
        let mut input = include_bytes!("../data/sample-books.txt")[..6000].to_vec();
        input.extend((0..700).map(|_| r.below(256) as u8));
        let (src, z, back) = (
            dir.path().join("in"),
            dir.path().join("in.terse"),
            dir.path().join("back"),
        );
        std::fs::write(&src, &input).unwrap();
        for coding in [Coding::Ac, EQUAL_INFO_16] {
            let rep = compress_file(&src, &z, m, coding, 100, Existing::Replace, false).unwrap();
            assert!(
                input.len() / 100 > BATCH_CHUNKS && rep.stored_chunks >= 7,
                "{rep:?}"
            );
            decompress_file(&z, &back, m, Existing::Replace, false).unwrap();
            assert_eq!(std::fs::read(&back).unwrap(), input, "{coding:?}");
        }
    }

    /// Format 1 (Equal-Info only, no coding byte, no stored chunks) still decompresses: a format 2
    /// file without stored chunks, rewritten to format 1's header.
    #[test]
    fn format_1_files_still_decompress() {
        let m = text_m1();
        let dir = tempfile::tempdir().unwrap();
        let text = &include_bytes!("../data/sample-books.txt")[..3000];
        let (src, z, back) = (
            dir.path().join("in"),
            dir.path().join("in.terse"),
            dir.path().join("back"),
        );
        std::fs::write(&src, text).unwrap();
        let rep =
            compress_file(&src, &z, m, EQUAL_INFO_16, 1000, Existing::Replace, false).unwrap();
        assert_eq!(rep.stored_chunks, 0);
        let mut v1 = std::fs::read(&z).unwrap();
        assert_eq!((v1[8], v1[22]), (2, 1));
        v1[8] = 1;
        v1.remove(22);
        std::fs::write(&z, &v1).unwrap();
        let rep = decompress_file(&z, &back, m, Existing::Replace, false).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), text);
        assert_eq!(rep.method, "equal-info");
    }
}
