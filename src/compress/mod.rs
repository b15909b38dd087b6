//! Self-describing compressed files under M1's exact path (numeric contract 3), for any input
//! bytes (text, binary, empty, not UTF-8). Each chunk is coded one of two ways ([`Coding`]):
//! one arithmetic code under M1 with its context never reset, mixed with the chunk's own
//! repeats and context statistics (`ac`: the best ratio, the default), or Equal-Info windows
//! (what M2 trains on). A
//! chunk that xz codes shorter becomes an xz record, and one that nothing shrinks is stored as it
//! is, so no input grows by more than 49 bytes (header and end record) and 8 per chunk.
//!
//! The layout ([`format`], docs/file-formats.md) is written and read front to back, a header
//! (magic, format 6, M1's contract and fingerprint, coding, window bits, chunk bytes), one record
//! per chunk, then an end record with the original's length and CRC-32, so the input of
//! `compress` and of `decompress` may be a pipe and memory holds one batch of chunks. Chunks are
//! independent (the last may be shorter), so a batch codes in lockstep ([`chunks`]) and a damaged
//! chunk is named. Decoding also reads formats 1 to 5, checks every header field against the M1 it is
//! given, every length before it allocates, and the length and CRC-32 of the result. Into a file
//! the output is written atomically ([`crate::fsio`]): on any error no output file is left.

mod chunks;
mod classic;
mod format;
mod progress;

use crate::coder::ContextsRecipe;
use crate::fsio::{AtomicFile, Existing};
use crate::m1::{Int8M1, CONTRACT_VERSION};
use crate::tokenize::ac::AcModel;
use anyhow::{bail, ensure, Context, Result};
use chunks::{Chunk, ChunkCoder};
use classic::unxz_chunk;
use format::{end_record, fill, read_record, Header, Record, MAGIC};
pub use format::{END, STORED, XZ};
use progress::Meter;
pub use progress::Progress;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// Most chunks read, coded and written at a time: each a stream of one lockstep batch.
pub(super) const BATCH_CHUNKS: usize = 64;
/// Bytes of input (compressing) or output (decompressing) a batch of chunks may hold, when its
/// chunks are large.
const BATCH_BYTES: usize = 4 << 20;

/// Chunk size of `terse compress` unless told otherwise. A chunk's repeats model
/// ([`Repeats`](crate::coder::Repeats)) remembers the whole chunk, so larger chunks code smaller
/// (on 192 KiB of sample-books, 1.948 bits/byte at 64 KiB, 1.977 at 16 KiB, 1.926 in one chunk),
/// while smaller ones give more streams to run in parallel: a file of 128 KiB still keeps two
/// cores busy.
pub const DEFAULT_CHUNK_BYTES: u32 = 64 * 1024;

/// The largest chunk `compress` writes and `decompress` accepts: a bound on what one chunk's
/// decoding may allocate and run.
pub const MAX_CHUNK_BYTES: u32 = 16 << 20;

/// Chunks per batch for chunks of `chunk_bytes`: [`BATCH_CHUNKS`], fewer for large chunks.
fn batch_chunks(chunk_bytes: u32) -> usize {
    (BATCH_BYTES / chunk_bytes as usize).clamp(1, BATCH_CHUNKS)
}

/// How `terse compress` codes each chunk under M1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// One arithmetic code per chunk, M1's context never reset inside it
    /// ([`ac`](crate::tokenize::ac)), under `AcModel`: the best ratio.
    Ac(AcModel),
    /// Equal-Info windows of `window_bits` bits ([`EqualInfo`](crate::tokenize::equal_info::EqualInfo)): each window decodes on its own,
    /// at a cost in ratio.
    EqualInfo { window_bits: u32 },
}

impl Coding {
    /// The `ac` coding this build writes: M1 mixed with each chunk's repeats and context
    /// statistics, by format 6's recipe.
    pub const AC: Coding = Coding::Ac(AcModel::M1RepeatsContexts(ContextsRecipe::Format6));

    /// The header's coding byte and window bits.
    fn fields(self) -> (u8, u16) {
        match self {
            Coding::EqualInfo { window_bits } => (1, window_bits as u16),
            Coding::Ac(AcModel::M1) => (2, 0),
            Coding::Ac(AcModel::M1Repeats) => (3, 0),
            Coding::Ac(AcModel::M1RepeatsContexts(ContextsRecipe::Format5)) => (4, 0),
            Coding::Ac(AcModel::M1RepeatsContexts(ContextsRecipe::Format6)) => (5, 0),
        }
    }

    /// The coding a header of format `format` names by its [`fields`](Coding::fields), or `None`
    /// for none that format has (`ac` with repeats came with format 4, with context statistics
    /// too with format 5, by their second recipe with format 6).
    fn from_fields(method: u8, bits: u16, format: u16) -> Option<Coding> {
        match (method, bits) {
            (1, bits) => Some(Coding::EqualInfo {
                window_bits: bits as u32,
            }),
            (2, 0) => Some(Coding::Ac(AcModel::M1)),
            (3, 0) if format >= 4 => Some(Coding::Ac(AcModel::M1Repeats)),
            (4, 0) if format >= 5 => Some(Coding::Ac(AcModel::M1RepeatsContexts(
                ContextsRecipe::Format5,
            ))),
            (5, 0) if format >= 6 => Some(Coding::AC),
            _ => None,
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
    /// Chunks coded by xz, because M1 coded them worse (format 3).
    pub xz_chunks: u64,
    /// Chunks kept as they were, because neither coding shrank them.
    pub stored_chunks: u64,
    pub bits_per_byte: f64,
    pub seconds: f64,
    pub bytes_per_second: f64,
}

/// Counts of a file's chunks.
#[derive(Clone, Copy, Default)]
struct Tally {
    windows: u64,
    xz: u64,
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
            Coding::Ac(_) => "ac",
            Coding::EqualInfo { .. } => "equal-info",
        },
        original_bytes: original,
        compressed_bytes: compressed,
        windows: tally.windows,
        xz_chunks: tally.xz,
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

/// `-`, the path that names standard input (as an input) or standard output (as an output).
pub const STDIO: &str = "-";

/// Where compressed or restored bytes go: a file written atomically (or a device or FIFO written
/// through), or standard output, which cannot be taken back: a refused input leaves there what
/// was written before the refusal.
enum Sink {
    File(AtomicFile),
    Stdout(std::io::Stdout),
}

impl Sink {
    fn open(path: &Path, existing: Existing) -> Result<Sink> {
        if path == Path::new(STDIO) {
            return Ok(Sink::Stdout(std::io::stdout()));
        }
        AtomicFile::open(path, existing)
            .map(Sink::File)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn commit(self) -> Result<()> {
        match self {
            Sink::File(f) => f.commit(),
            Sink::Stdout(mut o) => o.flush().context("cannot write to standard output"),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Stdout(o) => o.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stdout(o) => o.flush(),
        }
    }
}

/// The input at `path` (standard input for [`STDIO`]) and its size when it is a regular file
/// (0 otherwise: a progress bar without a total). Refuses a directory.
fn open_input(path: &Path) -> Result<(Box<dyn Read>, u64)> {
    if path == Path::new(STDIO) {
        return Ok((Box::new(std::io::stdin()), 0));
    }
    let name = path.display();
    let file = File::open(path).with_context(|| format!("cannot open {name}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {name}"))?;
    ensure!(!meta.is_dir(), "{name} is a directory, not a file to read");
    let size = if meta.is_file() { meta.len() } else { 0 };
    Ok((Box::new(file), size))
}

/// Counts bytes passing through a reader.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Compresses `input` into `output`, each chunk as `coding` says (or stored, when that does not
/// shrink it), reading and writing front to back: either may be a pipe or a device, or [`STDIO`]
/// for standard input or output. Memory holds
/// one batch of chunks (up to 64, 4 MiB unless one chunk is larger), coded in lockstep. An
/// existing regular file at `output` is replaced only when `existing` says so. `progress` says
/// what is reported on stderr as it runs.
pub fn compress_file(
    input: &Path,
    output: &Path,
    m1: &Int8M1,
    coding: Coding,
    chunk_bytes: u32,
    existing: Existing,
    progress: Progress,
) -> Result<CompressReport> {
    let t = std::time::Instant::now();
    let coder = ChunkCoder::new(m1, coding)?;
    ensure!(
        (1..=MAX_CHUNK_BYTES).contains(&chunk_bytes),
        "chunk bytes {chunk_bytes} out of range 1..={MAX_CHUNK_BYTES}"
    );
    let in_name = input.display().to_string();
    let (file, size) = open_input(input)?;
    let mut src = BufReader::new(file);
    let out_name = output.display();
    let mut out = Sink::open(output, existing)?;
    let mut w = BufWriter::new(&mut out);
    let (method, bits) = coding.fields();
    let mut put = |bytes: &[u8]| {
        w.write_all(bytes)
            .with_context(|| format!("cannot write {out_name}"))
    };
    let head = Header::encode(
        m1.fingerprint(),
        CONTRACT_VERSION,
        method,
        bits,
        chunk_bytes,
    );
    put(&head)?;
    let mut compressed = head.len() as u64;
    let mut buf = vec![0u8; batch_chunks(chunk_bytes) * chunk_bytes as usize];
    let (mut crc, mut total, mut tally) = (crc32fast::Hasher::new(), 0u64, Tally::default());
    let mut meter = Meter::new(progress, size, "compressing");
    loop {
        let n = fill(&mut src, &mut buf, &in_name)?;
        crc.update(&buf[..n]);
        total += n as u64;
        let chunks: Vec<&[u8]> = buf[..n].chunks(chunk_bytes as usize).collect();
        for (record, windows) in coder.encode_all(&chunks)? {
            put(&record)?;
            compressed += record.len() as u64;
            tally.windows += windows;
            tally.stored += u64::from(record[..4] == STORED.to_le_bytes());
            tally.xz += u64::from(record[..4] == XZ.to_le_bytes());
        }
        meter.update(total, compressed);
        if n < buf.len() {
            break;
        }
    }
    let end = end_record(total, crc.finalize());
    put(&end)?;
    compressed += end.len() as u64;
    meter.finish(total, compressed);
    w.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {out_name}"))?;
    out.commit()?;
    Ok(report(
        coding,
        total,
        compressed,
        tally,
        t.elapsed().as_secs_f64(),
    ))
}

/// Decompresses `input` (a file, a pipe, or [`STDIO`]: it is read front to back) into `output`
/// (a file, or [`STDIO`] for standard output), a batch of
/// chunks at a time, so memory stays bounded. Refuses (naming the mismatch) another format,
/// contract or M1, a truncated or corrupt file, trailing bytes, and a result whose length or
/// CRC-32 differs from the end record's. An existing regular file at `output` is replaced only
/// when `existing` says so; a refused file leaves no output file. `progress` says what is
/// reported on stderr as it runs.
pub fn decompress_file(
    input: &Path,
    output: &Path,
    m1: &Int8M1,
    existing: Existing,
    progress: Progress,
) -> Result<CompressReport> {
    let t = std::time::Instant::now();
    let name = input.display().to_string();
    let (file, _) = open_input(input)?;
    let mut src = Counted {
        inner: BufReader::new(file),
        bytes: 0,
    };
    let h = Header::read(&mut src, &name)?;
    let (contract, fingerprint) = (h.contract, h.fingerprint);
    ensure!(
        contract == CONTRACT_VERSION,
        "{name}: compressed under M1 numeric contract {contract}, this build decodes contract {CONTRACT_VERSION}: decompress it with the build that wrote it"
    );
    ensure!(
        fingerprint == m1.fingerprint(),
        "{name}: wrong M1: the file was compressed with M1 {fingerprint:016x}, this M1 is {:016x}",
        m1.fingerprint()
    );
    let (c, bits) = (h.coding, h.window_bits);
    let coding = Coding::from_fields(c, bits, h.format)
        .with_context(|| format!("{name}: corrupt header (coding {c}, window bits {bits})"))?;
    let coder = ChunkCoder::new(m1, coding).with_context(|| format!("{name}: corrupt header"))?;
    let chunk = h.chunk_bytes;
    ensure!(
        (1..=MAX_CHUNK_BYTES).contains(&chunk),
        "{name}: corrupt header (chunk size {chunk})"
    );
    let out_name = output.display();
    let mut out = Sink::open(output, existing)?;
    let mut w = BufWriter::new(&mut out);
    let mut hasher = crc32fast::Hasher::new();
    let mut meter = Meter::new(
        progress,
        h.v1_end.map_or(0, |(total, _)| total),
        "decompressing",
    );
    let (mut tally, mut done, mut read) = (Tally::default(), 0u64, 0u64);
    // Records wait in `pending` until the next one is read: only the end record says which chunk
    // was the last, and so how long it is.
    let mut pending: Vec<Chunk> = Vec::new();
    // Decodes `chunks`, the first being chunk `first`, all full but the last when `last_len`.
    let mut decode = |chunks: Vec<Chunk>, first: u64, last_len: Option<usize>| -> Result<u64> {
        let n = chunks.len();
        let mut bytes = 0;
        let shares: Vec<(Chunk, usize)> = chunks
            .into_iter()
            .enumerate()
            .map(|(k, c)| {
                (
                    c,
                    if k + 1 == n {
                        last_len.unwrap_or(chunk as usize)
                    } else {
                        chunk as usize
                    },
                )
            })
            .collect();
        let parts = coder
            .decode_all(&shares)
            .with_context(|| format!("{name}: chunks {first} to {}", first + n as u64 - 1))?;
        for (k, (p, (_, want))) in parts.iter().zip(&shares).enumerate() {
            ensure!(
                p.len() == *want,
                "{name} is corrupt: chunk {} decodes to {} bytes, expected {want}",
                first + k as u64,
                p.len()
            );
            hasher.update(p);
            w.write_all(p)
                .with_context(|| format!("cannot write {out_name}"))?;
            bytes += p.len() as u64;
        }
        Ok(bytes)
    };
    let batch = batch_chunks(chunk);
    let (total, crc) = loop {
        let record = match h.v1_end {
            Some((total, crc)) if read == total.div_ceil(chunk as u64) => {
                Record::End { total, crc }
            }
            _ => read_record(
                &mut src,
                &h,
                read,
                |word| coder.body_bytes(word, chunk, h.v1_end.is_some()),
                &name,
            )?,
        };
        // An xz chunk is restored here and joins the stored ones: its bytes are final.
        let (stored, word, body) = match record {
            Record::End { total, crc } => break (total, crc),
            Record::Stored(body) => {
                tally.stored += 1;
                (true, 0, body)
            }
            Record::Xz(z) => {
                tally.xz += 1;
                let what = format!("{name} (chunk {read})");
                (true, 0, unxz_chunk(&z, chunk as usize, &what)?)
            }
            Record::Coded { word, body } => (false, word, body),
        };
        if !stored && matches!(coding, Coding::EqualInfo { .. }) {
            tally.windows += word as u64;
        }
        if pending.len() == batch {
            done += decode(std::mem::take(&mut pending), read - batch as u64, None)?;
            meter.update(done, src.bytes);
        }
        read += 1;
        pending.push(Chunk { stored, word, body });
    };
    // The last chunk holds what is left: 1 to `chunk` bytes (no chunk at all for no bytes).
    let full = (pending.len() as u64).saturating_sub(1) * chunk as u64;
    let last = total.checked_sub(done + full);
    match (pending.is_empty(), last) {
        (true, _) if total == done => {}
        (false, Some(l)) if (1..=chunk as u64).contains(&l) => {
            let first = read - pending.len() as u64;
            decode(std::mem::take(&mut pending), first, Some(l as usize))?;
        }
        _ => bail!(
            "{name} is truncated or corrupt: the end record says {total} bytes, {read} chunks of {chunk} bytes cannot hold that"
        ),
    }
    let mut rest = [0u8; 8];
    let extra = fill(&mut src, &mut rest, &name)?;
    if extra > 0 {
        let at = src.bytes - extra as u64;
        let more = std::io::copy(&mut src, &mut std::io::sink())
            .with_context(|| format!("reading {name}"))?;
        let what = if rest[..extra] == MAGIC[..] {
            "another terse file follows (concatenated files are not read: split them)"
        } else {
            "not part of any chunk"
        };
        bail!(
            "{name}: trailing data after the end record ({} bytes at offset {at}): {what}",
            extra as u64 + more
        );
    }
    if hasher.finalize() != crc {
        bail!("{name} is corrupt: the decoded bytes fail the CRC-32 check");
    }
    w.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {out_name}"))?;
    out.commit()?;
    meter.finish(total, src.bytes);
    Ok(report(
        coding,
        total,
        src.bytes,
        tally,
        t.elapsed().as_secs_f64(),
    ))
}

#[cfg(test)]
mod tests {
    use super::format::HEADER_BYTES;
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
            let text = &include_bytes!("../../data/sample-books.txt")[..4000];
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

    /// Compresses `input` with `coding` in `chunk`-byte chunks under `m` (in `dir`), checks that
    /// it decompresses to `input` with the same counts, and returns the report and file size.
    fn round_trip(
        dir: &Path,
        m: &Int8M1,
        input: &[u8],
        coding: Coding,
        chunk: u32,
    ) -> (CompressReport, u64) {
        let (src, z, back) = (dir.join("in"), dir.join("in.terse"), dir.join("back"));
        std::fs::write(&src, input).unwrap();
        let rep =
            compress_file(&src, &z, m, coding, chunk, Existing::Replace, Progress::Off).unwrap();
        assert_eq!(rep.original_bytes, input.len() as u64);
        let back_rep = decompress_file(&z, &back, m, Existing::Replace, Progress::Off).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), input, "{coding:?}");
        assert_eq!(
            (
                back_rep.method,
                back_rep.windows,
                back_rep.stored_chunks,
                back_rep.xz_chunks
            ),
            (rep.method, rep.windows, rep.stored_chunks, rep.xz_chunks)
        );
        let size = std::fs::metadata(&z).unwrap().len();
        assert_eq!(rep.compressed_bytes, size);
        (rep, size)
    }

    const EQUAL_INFO_16: Coding = Coding::EqualInfo { window_bits: 16 };

    #[test]
    fn concatenated_files_and_directories_get_messages_that_say_so() {
        let m = m1(1);
        let dir = tempfile::tempdir().unwrap();
        let (src, z) = (dir.path().join("t"), dir.path().join("t.terse"));
        std::fs::write(&src, &include_bytes!("../../data/sample-books.txt")[..2500]).unwrap();
        compress_file(
            &src,
            &z,
            &m,
            EQUAL_INFO_16,
            1000,
            Existing::Replace,
            Progress::Off,
        )
        .unwrap();
        let one = std::fs::read(&z).unwrap();
        let out = dir.path().join("out");
        let two = dir.path().join("two.terse");
        std::fs::write(&two, [one.clone(), one.clone()].concat()).unwrap();
        let e = err(decompress_file(
            &two,
            &out,
            &m,
            Existing::Replace,
            Progress::Off,
        ));
        assert!(
            e.contains("trailing data after the end record") && e.contains("another terse file"),
            "{e}"
        );
        let junk = dir.path().join("junk.terse");
        std::fs::write(&junk, [one, b"xyz".to_vec()].concat()).unwrap();
        let e = err(decompress_file(
            &junk,
            &out,
            &m,
            Existing::Replace,
            Progress::Off,
        ));
        assert!(
            e.contains("trailing data after the end record (3 bytes"),
            "{e}"
        );
        let e = err(decompress_file(
            dir.path(),
            &out,
            &m,
            Existing::Replace,
            Progress::Off,
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
        let text = include_bytes!("../../data/sample-books.txt")[..4000].to_vec();
        let inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![b'a'],
            text.clone(),
            random,
            vec![0xFF, 0xFE, 0x80, 0xC3],
        ];
        let codings = [
            Coding::AC,
            EQUAL_INFO_16,
            Coding::EqualInfo { window_bits: 32 },
        ];
        for input in &inputs {
            for coding in codings {
                round_trip(dir.path(), m, input, coding, 1000);
            }
        }
        // Damage: each case is refused and leaves no output file.
        let (src, z) = (dir.path().join("t"), dir.path().join("t.terse"));
        std::fs::write(&src, &text).unwrap();
        let rep = compress_file(
            &src,
            &z,
            m,
            Coding::AC,
            1000,
            Existing::Replace,
            Progress::Off,
        )
        .unwrap();
        assert_eq!(rep.stored_chunks, 0, "text shrinks");
        let good = std::fs::read(&z).unwrap();
        let out = dir.path().join("never");
        let try_with = |bytes: &[u8]| {
            let p = dir.path().join("damaged");
            std::fs::write(&p, bytes).unwrap();
            let e = err(decompress_file(
                &p,
                &out,
                m,
                Existing::Replace,
                Progress::Off,
            ));
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
        *crc_bad.last_mut().unwrap() ^= 1;
        assert!(try_with(&crc_bad).contains("CRC-32"));
        // A header edited with its CRC-32 made good again reaches the checks behind it.
        let edited = |at: usize, byte: u8| {
            let mut f = good.clone();
            f[at] = byte;
            let crc = crc32fast::hash(&f[..HEADER_BYTES - 4]);
            f[HEADER_BYTES - 4..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
            f
        };
        let e = try_with(&edited(10, 2));
        assert!(
            e.contains("compressed under M1 numeric contract 2, this build decodes contract 3"),
            "{e}"
        );
        let mut contract = good.clone();
        contract[10] = 2;
        let e = try_with(&contract);
        assert!(
            e.contains("corrupt header (its CRC-32 does not match)"),
            "{e}"
        );
        let mut format = good.clone();
        format[8] = 9;
        let e = try_with(&format);
        assert!(
            e.contains("format version 9, this build reads 1 to 6"),
            "{e}"
        );
        assert!(try_with(&edited(22, 7)).contains("corrupt header (coding 7"));
        assert!(try_with(&edited(28, 2)).contains("corrupt header (chunk size 33555432)"));
        let e = err(decompress_file(
            &z,
            &out,
            &m1(2),
            Existing::Replace,
            Progress::Off,
        ));
        assert!(e.contains("wrong M1"), "{e}");
        assert!(!out.exists());
        assert!(err(compress_file(
            &dir.path().join("missing"),
            &out,
            m,
            Coding::AC,
            1000,
            Existing::Replace,
            Progress::Off
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
        let text = &include_bytes!("../../data/sample-books.txt")[..2000];
        let mixed = [text, &random[..], text].concat();
        for coding in [Coding::AC, EQUAL_INFO_16] {
            let (rep, size) = round_trip(dir.path(), m, &random, coding, 1000);
            assert_eq!(rep.stored_chunks, 3, "{coding:?}");
            // Each stored record: its word, its length, its bytes; then the 16-byte end record.
            assert_eq!(size, (HEADER_BYTES + 3 * 8 + random.len() + 16) as u64);
            let (rep, _) = round_trip(dir.path(), m, &mixed, coding, 1000);
            assert!(
                rep.stored_chunks >= 2 && rep.stored_chunks < 7,
                "{coding:?}: {rep:?}"
            );
        }
    }

    /// Chunks M1 codes worse than xz (here a block of random bytes repeated at a distance past
    /// M1's context, under format 4's coding, whose repeats model alone does not make up for an
    /// M1 that pays more than 8 bits a random byte; format 6's context statistics learn the
    /// block and beat xz on it) are xz records, and the file
    /// round-trips; format 2, which has no xz records, is refused on them, and a format 2 file
    /// (only coded and stored records) still decodes.
    #[test]
    fn chunks_m1_codes_badly_go_to_xz() {
        let m = text_m1();
        let dir = tempfile::tempdir().unwrap();
        let text = &include_bytes!("../../data/sample-books.txt")[..2000];
        let mut r = Rng::new(9);
        let block: Vec<u8> = (0..300).map(|_| r.below(256) as u8).collect();
        let input = [text, &block.repeat(10)[..], text].concat();
        let (rep, _) = round_trip(dir.path(), m, &input, Coding::AC, 1000);
        assert_eq!(rep.xz_chunks, 0, "{rep:?}");
        for coding in [Coding::Ac(AcModel::M1Repeats), EQUAL_INFO_16] {
            // The text chunks sit at chunk boundaries, so they code as the text alone does.
            let (_, text_only) = round_trip(dir.path(), m, &[text, text].concat(), coding, 1000);
            let (rep, size) = round_trip(dir.path(), m, &input, coding, 1000);
            assert!(
                rep.xz_chunks >= 3 && rep.stored_chunks == 0,
                "{coding:?}: {rep:?}"
            );
            // Three xz records of the 3,000 repeated bytes, where storing them takes 3,024.
            let xz = size - text_only;
            assert!(xz < 1500, "{coding:?}: {xz} bytes");
        }
        let z = std::fs::read(dir.path().join("in.terse")).unwrap();
        let as_format = |format: u16, mut f: Vec<u8>| {
            f[8..10].copy_from_slice(&format.to_le_bytes());
            let crc = crc32fast::hash(&f[..HEADER_BYTES - 4]);
            f[HEADER_BYTES - 4..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
            let p = dir.path().join("v2.terse");
            std::fs::write(&p, f).unwrap();
            decompress_file(
                &p,
                &dir.path().join("v2"),
                m,
                Existing::Replace,
                Progress::Off,
            )
        };
        let e = format!("{:#}", as_format(2, z).unwrap_err());
        assert!(e.contains("corrupt"), "{e}");
        // Format 2 had `ac` under M1 alone.
        let (rep, _) = round_trip(dir.path(), m, text, Coding::Ac(AcModel::M1), 1000);
        assert_eq!(rep.xz_chunks, 0, "{rep:?}");
        let z = std::fs::read(dir.path().join("in.terse")).unwrap();
        as_format(2, z).expect("a format 2 file decodes");
        assert_eq!(std::fs::read(dir.path().join("v2")).unwrap(), text);
        // Format 4's `ac` (repeats, no context statistics) still decodes; it is refused before
        // format 4, format 5's coding before format 5, and format 6's before format 6.
        round_trip(dir.path(), m, text, Coding::Ac(AcModel::M1Repeats), 1000);
        let z = std::fs::read(dir.path().join("in.terse")).unwrap();
        as_format(4, z.clone()).expect("a format 4 file decodes");
        assert_eq!(std::fs::read(dir.path().join("v2")).unwrap(), text);
        let e = format!("{:#}", as_format(3, z).unwrap_err());
        assert!(
            e.contains("corrupt header (coding 3, window bits 0)"),
            "{e}"
        );
        let format_5 = Coding::Ac(AcModel::M1RepeatsContexts(ContextsRecipe::Format5));
        for (format, coding, field) in [(5, format_5, 4), (6, Coding::AC, 5)] {
            round_trip(dir.path(), m, text, coding, 1000);
            let z = std::fs::read(dir.path().join("in.terse")).unwrap();
            as_format(format, z.clone()).expect("a file of its format decodes");
            assert_eq!(std::fs::read(dir.path().join("v2")).unwrap(), text);
            let e = format!("{:#}", as_format(format - 1, z).unwrap_err());
            assert!(
                e.contains(&format!("corrupt header (coding {field}, window bits 0)")),
                "{e}"
            );
        }
    }

    /// A file of more chunks than one batch holds (coded and stored ones mixed) round-trips,
    /// batch after batch.
    #[test]
    fn files_of_many_batches_round_trip() {
        let m = text_m1();
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rng::new(7);
        let mut input = include_bytes!("../../data/sample-books.txt")[..6000].to_vec();
        input.extend((0..700).map(|_| r.below(256) as u8));
        for coding in [Coding::AC, EQUAL_INFO_16] {
            let (rep, _) = round_trip(dir.path(), m, &input, coding, 100);
            assert!(
                input.len() / 100 > BATCH_CHUNKS && rep.stored_chunks >= 7,
                "{rep:?}"
            );
        }
    }

    /// Format 1 (Equal-Info only: its length and CRC-32 in a 40-byte header, no stored chunks,
    /// no end record) still decompresses: a file laid out by hand from the Equal-Info coder.
    #[test]
    fn format_1_files_still_decompress() {
        let m = text_m1();
        let dir = tempfile::tempdir().unwrap();
        let text = &include_bytes!("../../data/sample-books.txt")[..2500];
        let coder = crate::tokenize::equal_info::EqualInfo::new(m, 16).unwrap();
        let mut v1 = MAGIC.to_vec();
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(&CONTRACT_VERSION.to_le_bytes());
        v1.extend_from_slice(&m.fingerprint().to_le_bytes());
        v1.extend_from_slice(&16u16.to_le_bytes());
        v1.extend_from_slice(&1000u32.to_le_bytes());
        v1.extend_from_slice(&(text.len() as u64).to_le_bytes());
        v1.extend_from_slice(&crc32fast::hash(text).to_le_bytes());
        assert_eq!(v1.len(), 40);
        for chunk in text.chunks(1000) {
            let codes = coder.encode(chunk).unwrap().codes;
            v1.extend_from_slice(&(codes.len() as u32).to_le_bytes());
            for c in codes {
                v1.extend_from_slice(&(c as u16).to_be_bytes());
            }
        }
        let (z, back) = (dir.path().join("v1.terse"), dir.path().join("back"));
        std::fs::write(&z, &v1).unwrap();
        let rep = decompress_file(&z, &back, m, Existing::Replace, Progress::Off).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), text);
        assert_eq!((rep.method, rep.stored_chunks), ("equal-info", 0));
        // Its records end where the header's length says: a byte more is trailing data.
        std::fs::write(&z, [&v1[..], b"x"].concat()).unwrap();
        let e = err(decompress_file(
            &z,
            &back,
            m,
            Existing::Replace,
            Progress::Off,
        ));
        assert!(e.contains("trailing data"), "{e}");
    }
}
