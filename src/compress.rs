//! Self-describing compressed files: Equal-Info windows under M1's exact path, for any input
//! bytes (text, binary, empty, not UTF-8).
//!
//! Layout (integers little-endian):
//!
//! | field | size |
//! |---|---|
//! | magic `TERSEcf\0` | 8 |
//! | format version (1) | 2 |
//! | M1 contract version | 4 |
//! | M1 fingerprint | 8 |
//! | window bits `b` | 2 |
//! | chunk bytes | 4 |
//! | original length | 8 |
//! | CRC-32 of the original | 4 |
//! | then per chunk: window count (u32), then each window's code, `b / 8` bytes big-endian | |
//!
//! Chunks (the last may be shorter) are coded independently, so both directions use every core;
//! windows need no side information, the window count only says where a chunk ends. Decoding
//! checks every header field against the M1 it is given and the length and CRC-32 of the result,
//! and writes its output atomically ([`crate::fsio`]): on any error no output file is left.

use crate::fsio::{AtomicFile, Existing};
use crate::m1::{Int8M1, CONTRACT_VERSION};
use crate::tokenize::equal_info::EqualInfo;
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"TERSEcf\0";
const FORMAT_VERSION: u16 = 1;
const HEADER_BYTES: usize = 8 + 2 + 4 + 8 + 2 + 4 + 8 + 4;

/// Chunk size of `terse compress` unless told otherwise.
pub const DEFAULT_CHUNK_BYTES: u32 = 64 * 1024;

/// What one compression or decompression did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompressReport {
    pub original_bytes: u64,
    pub compressed_bytes: u64,
    pub windows: u64,
    pub bits_per_byte: f64,
    pub seconds: f64,
    pub bytes_per_second: f64,
}

fn report(original: u64, compressed: u64, windows: u64, seconds: f64) -> CompressReport {
    CompressReport {
        original_bytes: original,
        compressed_bytes: compressed,
        windows,
        bits_per_byte: if original > 0 {
            8.0 * compressed as f64 / original as f64
        } else {
            0.0
        },
        seconds,
        bytes_per_second: original as f64 / seconds.max(1e-9),
    }
}

/// The header of a file of `total` bytes with CRC-32 `crc`, coded with `b`-bit windows.
fn header(m1: &Int8M1, b: u32, chunk_bytes: u32, total: u64, crc: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&CONTRACT_VERSION.to_le_bytes());
    header.extend_from_slice(&m1.fingerprint().to_le_bytes());
    header.extend_from_slice(&(b as u16).to_le_bytes());
    header.extend_from_slice(&chunk_bytes.to_le_bytes());
    header.extend_from_slice(&total.to_le_bytes());
    header.extend_from_slice(&crc.to_le_bytes());
    header
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

/// Compresses `input` into `output` with `b`-bit windows. Memory holds one batch of chunks. An
/// existing regular file at `output` is replaced only when `existing` says so; a device or FIFO
/// is written through (the input, which must then be a regular file, is read twice: its length
/// and CRC-32 head the output).
pub fn compress_file(
    input: &Path,
    output: &Path,
    m1: &Int8M1,
    b: u32,
    chunk_bytes: u32,
    existing: Existing,
) -> Result<CompressReport> {
    let t = std::time::Instant::now();
    let coder = EqualInfo::new(m1, b)?;
    ensure!(chunk_bytes > 0, "chunk bytes must be positive");
    let mut src = BufReader::new(
        File::open(input).with_context(|| format!("cannot open {}", input.display()))?,
    );
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
        Some((total, crc)) => header(m1, b, chunk_bytes, total, crc),
        None => vec![0u8; HEADER_BYTES],
    };
    w.write_all(&first)
        .with_context(|| format!("cannot write {out_name}"))?;
    let mut compressed = first.len() as u64;
    let batch_chunks = rayon::current_num_threads() * 4;
    let mut buf = vec![0u8; batch_chunks * chunk_bytes as usize];
    let (mut crc, mut total, mut windows) = (crc32fast::Hasher::new(), 0u64, 0u64);
    loop {
        let n = read_full(&mut src, &mut buf)
            .with_context(|| format!("reading {}", input.display()))?;
        crc.update(&buf[..n]);
        total += n as u64;
        let coded: Vec<Result<Vec<u128>>> = buf[..n]
            .par_chunks(chunk_bytes as usize)
            .map(|c| Ok(coder.encode(c)?.codes))
            .collect();
        for codes in coded {
            let codes = codes?;
            let mut record = Vec::with_capacity(4 + codes.len() * b as usize / 8);
            record.extend_from_slice(&(codes.len() as u32).to_le_bytes());
            for c in &codes {
                record.extend_from_slice(&c.to_be_bytes()[16 - b as usize / 8..]);
            }
            w.write_all(&record)
                .with_context(|| format!("cannot write {out_name}"))?;
            compressed += record.len() as u64;
            windows += codes.len() as u64;
        }
        if n < buf.len() {
            break;
        }
    }
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
                .and_then(|_| file.write_all(&header(m1, b, chunk_bytes, total, crc)))
                .with_context(|| format!("cannot write {out_name}"))?;
        }
    }
    out.commit()?;
    Ok(report(
        total,
        compressed,
        windows,
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
/// An existing regular file at `output` is replaced only when `existing` says so.
pub fn decompress_file(
    input: &Path,
    output: &Path,
    m1: &Int8M1,
    existing: Existing,
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
        len >= HEADER_BYTES as u64,
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
    let (b, chunk_bytes, original_len, crc) =
        (u16_at(22) as u32, u32_at(24), u64_at(28), u32_at(36));
    ensure!(
        format == FORMAT_VERSION,
        "{name}: format version {format}, this build reads {FORMAT_VERSION}"
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
    let coder = EqualInfo::new(m1, b).with_context(|| format!("{name}: corrupt header"))?;
    ensure!(chunk_bytes > 0, "{name}: corrupt header (chunk size 0)");
    // Walk the chunk records, checking every length against the file before using it.
    let code_bytes = b as usize / 8;
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut windows = 0u64;
    let mut pos = HEADER_BYTES;
    let expect_chunks = original_len.div_ceil(chunk_bytes as u64);
    while (chunks.len() as u64) < expect_chunks {
        ensure!(
            pos < data.len(),
            "{name} is truncated or corrupt: {} chunks, header implies {expect_chunks}",
            chunks.len()
        );
        ensure!(
            pos + 4 <= data.len(),
            "{name} is truncated (inside a chunk record)"
        );
        let n = u32_at(pos) as usize;
        let end = pos + 4 + n * code_bytes;
        ensure!(
            n > 0 && end <= data.len(),
            "{name} is truncated or corrupt (chunk {} claims {n} windows)",
            chunks.len()
        );
        chunks.push(&data[pos + 4..end]);
        windows += n as u64;
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
    let batch = rayon::current_num_threads() * 4;
    for (bi, group) in chunks.chunks(batch).enumerate() {
        let parts: Vec<Result<Vec<u8>>> = group
            .par_iter()
            .map(|c| {
                let codes: Vec<u128> = c
                    .chunks(code_bytes)
                    .map(|k| k.iter().fold(0u128, |acc, &x| (acc << 8) | x as u128))
                    .collect();
                coder.decode(&codes)
            })
            .collect();
        for (k, p) in parts.into_iter().enumerate() {
            let (i, p) = (bi * batch + k, p?);
            let want = (original_len - i as u64 * chunk_bytes as u64).min(chunk_bytes as u64);
            ensure!(
                p.len() as u64 == want,
                "{name} is corrupt: chunk {i} decodes to {} bytes, expected {want}",
                p.len()
            );
            hasher.update(&p);
            w.write_all(&p)
                .with_context(|| format!("cannot write {out_name}"))?;
        }
    }
    if hasher.finalize() != crc {
        bail!("{name} is corrupt: the decoded bytes fail the CRC-32 check");
    }
    w.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {out_name}"))?;
    out.commit()?;
    Ok(report(
        original_len,
        data.len() as u64,
        windows,
        t.elapsed().as_secs_f64(),
    ))
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

    fn err(r: Result<CompressReport>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn concatenated_files_and_directories_get_messages_that_say_so() {
        let m = m1(1);
        let dir = tempfile::tempdir().unwrap();
        let (src, z) = (dir.path().join("t"), dir.path().join("t.terse"));
        std::fs::write(&src, &include_bytes!("../data/sample-books.txt")[..2500]).unwrap();
        compress_file(&src, &z, &m, 16, 1000, Existing::Replace).unwrap();
        let one = std::fs::read(&z).unwrap();
        let out = dir.path().join("out");
        let two = dir.path().join("two.terse");
        std::fs::write(&two, [one.clone(), one.clone()].concat()).unwrap();
        let e = err(decompress_file(&two, &out, &m, Existing::Replace));
        assert!(
            e.contains("trailing data after the last chunk") && e.contains("another terse file"),
            "{e}"
        );
        let junk = dir.path().join("junk.terse");
        std::fs::write(&junk, [one, b"xyz".to_vec()].concat()).unwrap();
        let e = err(decompress_file(&junk, &out, &m, Existing::Replace));
        assert!(
            e.contains("trailing data after the last chunk (3 bytes"),
            "{e}"
        );
        let e = err(decompress_file(dir.path(), &out, &m, Existing::Replace));
        assert!(e.contains("is a directory"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn round_trips_any_bytes_and_refuses_damage_without_partial_output() {
        let m = m1(1);
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
        for (i, input) in inputs.iter().enumerate() {
            for b in [16, 32] {
                let (src, z, back) = (
                    dir.path().join(format!("in{i}")),
                    dir.path().join(format!("z{i}")),
                    dir.path().join(format!("out{i}")),
                );
                std::fs::write(&src, input).unwrap();
                let rep = compress_file(&src, &z, &m, b, 1000, Existing::Replace).unwrap();
                assert_eq!(rep.original_bytes, input.len() as u64);
                decompress_file(&z, &back, &m, Existing::Replace).unwrap();
                assert_eq!(&std::fs::read(&back).unwrap(), input, "input {i}, b={b}");
            }
        }
        // Damage: each case is refused and leaves no output file.
        let (src, z) = (dir.path().join("t"), dir.path().join("t.terse"));
        std::fs::write(&src, &text).unwrap();
        compress_file(&src, &z, &m, 16, 1000, Existing::Replace).unwrap();
        let good = std::fs::read(&z).unwrap();
        let out = dir.path().join("never");
        let try_with = |bytes: &[u8]| {
            let p = dir.path().join("damaged");
            std::fs::write(&p, bytes).unwrap();
            let e = err(decompress_file(&p, &out, &m, Existing::Replace));
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
        crc_bad[36] ^= 1;
        assert!(try_with(&crc_bad).contains("CRC-32"));
        let mut version = good.clone();
        version[10] = 2;
        let e = try_with(&version);
        assert!(
            e.contains("compressed under M1 numeric contract 2, this build decodes contract 3"),
            "{e}"
        );
        let e = err(decompress_file(&z, &out, &m1(2), Existing::Replace));
        assert!(e.contains("wrong M1"), "{e}");
        assert!(!out.exists());
        assert!(err(compress_file(
            &dir.path().join("missing"),
            &out,
            &m,
            16,
            1000,
            Existing::Replace
        ))
        .contains("cannot open"));
    }
}
