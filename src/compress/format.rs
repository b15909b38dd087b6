//! The `.terse` layout (docs/file-formats.md): a header, one record per chunk, an end record with
//! the original's length and CRC-32; written and read front to back, so either side may be a
//! pipe. Also reads format 5 (context statistics by their first recipe only), format 4 (no
//! context statistics), format 3 (no `ac` with repeats), format 2 (no xz records either) and format 1
//! (length and CRC-32 in the header, no stored chunks, no end record).

use anyhow::{bail, ensure, Context, Result};
use std::io::Read;

pub(super) const MAGIC: &[u8; 8] = b"TERSEcf\0";
/// The format this build writes (6: `ac` may mix in each chunk's context statistics by their
/// second recipe); it reads every earlier one too.
pub(super) const FORMAT_VERSION: u16 = 6;
/// Magic, version, contract, fingerprint, coding, window bits, chunk bytes, and the CRC-32 of
/// those (a damaged chunk size would otherwise make every chunk decode to the wrong length at
/// length, before the end record could say so).
pub(super) const HEADER_BYTES: usize = 8 + 2 + 4 + 8 + 1 + 2 + 4 + 4;
/// Format 1's header: no coding byte, then the original's length and CRC-32.
const V1_HEADER_BYTES: usize = 8 + 2 + 4 + 8 + 2 + 4 + 8 + 4;
/// A record's first word when the chunk is stored: its length (u32) and bytes follow.
pub const STORED: u32 = u32::MAX - 1;
/// A record's first word when the chunk is coded by xz (`classic.rs`; format 3): the stream's
/// length (u32) and bytes follow.
pub const XZ: u32 = u32::MAX - 2;
/// The first word of the end record: the original's length (u64) and CRC-32 (u32) follow.
pub const END: u32 = u32::MAX;

/// What a file's header says.
pub(super) struct Header {
    pub contract: u32,
    pub fingerprint: u64,
    /// 1 equal-info, 2 ac.
    pub coding: u8,
    pub window_bits: u16,
    pub chunk_bytes: u32,
    /// Format 1: the original's length and CRC-32, which later formats keep for the end.
    pub v1_end: Option<(u64, u32)>,
    /// The format's version (1 to [`FORMAT_VERSION`]).
    pub format: u16,
}

impl Header {
    /// Format 3 and later: chunks may be xz records.
    pub fn xz_records(&self) -> bool {
        self.format >= 3
    }

    /// This build's header.
    pub fn encode(fingerprint: u64, contract: u32, coding: u8, bits: u16, chunk: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_BYTES);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        h.extend_from_slice(&contract.to_le_bytes());
        h.extend_from_slice(&fingerprint.to_le_bytes());
        h.push(coding);
        h.extend_from_slice(&bits.to_le_bytes());
        h.extend_from_slice(&chunk.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        h
    }

    /// Reads a header of format 1 to [`FORMAT_VERSION`] from `r` (`name` for messages).
    pub fn read(r: &mut impl Read, name: &str) -> Result<Header> {
        let not_ours = || format!("{name} is not a terse compressed file (bad magic or too short)");
        let mut head = [0u8; 10];
        ensure!(fill(r, &mut head, name)? == head.len(), not_ours());
        ensure!(&head[..8] == MAGIC, not_ours());
        let format = u16::from_le_bytes([head[8], head[9]]);
        let rest = match format {
            1 => V1_HEADER_BYTES,
            2..=FORMAT_VERSION => HEADER_BYTES,
            _ => bail!("{name}: format version {format}, this build reads 1 to {FORMAT_VERSION}"),
        } - head.len();
        let mut b = vec![0u8; rest];
        ensure!(fill(r, &mut b, name)? == rest, not_ours());
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let (contract, fingerprint) = (u32_at(0), u64_at(4));
        if format >= 2 {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&head);
            hasher.update(&b[..rest - 4]);
            ensure!(
                hasher.finalize() == u32_at(rest - 4),
                "{name}: corrupt header (its CRC-32 does not match)"
            );
        }
        Ok(match format {
            1 => Header {
                contract,
                fingerprint,
                coding: 1,
                window_bits: u16_at(12),
                chunk_bytes: u32_at(14),
                v1_end: Some((u64_at(18), u32_at(26))),
                format,
            },
            _ => Header {
                contract,
                fingerprint,
                coding: b[12],
                window_bits: u16_at(13),
                chunk_bytes: u32_at(15),
                v1_end: None,
                format,
            },
        })
    }
}

/// The end record of an original of `total` bytes with CRC-32 `crc`.
pub(super) fn end_record(total: u64, crc: u32) -> Vec<u8> {
    let mut e = END.to_le_bytes().to_vec();
    e.extend_from_slice(&total.to_le_bytes());
    e.extend_from_slice(&crc.to_le_bytes());
    e
}

/// One record as read.
pub(super) enum Record {
    Stored(Vec<u8>),
    /// An xz stream of the chunk's bytes.
    Xz(Vec<u8>),
    /// The first word (window count or `ac` code length) and what follows it.
    Coded {
        word: u32,
        body: Vec<u8>,
    },
    End {
        total: u64,
        crc: u32,
    },
}

/// Reads chunk `index`'s record (format 2 and later; format 1 has only coded records), refusing lengths
/// past `max_body` (a stored chunk longer than a chunk, a coded body larger than its chunk can
/// need) before allocating. `body_bytes` gives a coded record's body length from its word.
pub(super) fn read_record(
    r: &mut impl Read,
    h: &Header,
    index: u64,
    body_bytes: impl Fn(u32) -> Option<usize>,
    name: &str,
) -> Result<Record> {
    let truncated = || format!("{name} is truncated (inside chunk {index}'s record)");
    let mut word = [0u8; 4];
    match fill(r, &mut word, name)? {
        4 => {}
        0 => bail!("{name} is truncated: {index} chunks and no end record"),
        _ => bail!(truncated()),
    }
    let word = u32::from_le_bytes(word);
    let v2 = h.v1_end.is_none();
    let body_len = match word {
        END if v2 => {
            let mut e = [0u8; 12];
            ensure!(fill(r, &mut e, name)? == 12, truncated());
            return Ok(Record::End {
                total: u64::from_le_bytes(e[..8].try_into().expect("8 bytes")),
                crc: u32::from_le_bytes(e[8..].try_into().expect("4 bytes")),
            });
        }
        STORED if v2 => {
            let n = read_u32(r, name, truncated)?;
            ensure!(
                (1..=h.chunk_bytes).contains(&n),
                "{name} is corrupt (chunk {index} claims {n} stored bytes)"
            );
            n as usize
        }
        // An xz record is written only when shorter than the stored chunk.
        XZ if h.xz_records() => {
            let n = read_u32(r, name, truncated)?;
            ensure!(
                (1..h.chunk_bytes).contains(&n),
                "{name} is corrupt (chunk {index} claims an xz stream of {n} bytes)"
            );
            n as usize
        }
        _ => body_bytes(word)
            .with_context(|| format!("{name} is corrupt (chunk {index}'s record claims {word})"))?,
    };
    let mut body = vec![0u8; body_len];
    ensure!(fill(r, &mut body, name)? == body_len, truncated());
    Ok(match word {
        STORED if v2 => Record::Stored(body),
        XZ if h.xz_records() => Record::Xz(body),
        _ => Record::Coded { word, body },
    })
}

/// A record's little-endian u32 length field, `truncated` saying why when the input ends first.
fn read_u32(r: &mut impl Read, name: &str, truncated: impl Fn() -> String) -> Result<u32> {
    let mut n = [0u8; 4];
    ensure!(fill(r, &mut n, name)? == 4, truncated());
    Ok(u32::from_le_bytes(n))
}

/// Reads until `buf` is full or the input ends; how many bytes it read.
pub(super) fn fill(r: &mut impl Read, buf: &mut [u8], name: &str) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading {name}")),
        }
    }
    Ok(n)
}
