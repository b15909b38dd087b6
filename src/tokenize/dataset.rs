//! The token dataset format: what `terse tokenize` writes and M2 training reads.
//!
//! A dataset is a directory holding two files:
//!
//! - `tokens.bin`: every token back to back, raw little-endian, one byte each (`token_bits = 8`)
//!   or two bytes each (`token_bits = 16`); no header, so it memory-maps as a `u8`/`u16` array.
//! - `metadata.json`: [`Metadata`]: `{"format": "terse-tokens", "version": 2, "method", "params",
//!   "token_bits", "vocab", "m1_fingerprint", "source", "bytes_covered", "tokens", "examples",
//!   "example_crc32", "metadata_crc32"}`.
//!   `examples` has one `[token_offset, byte_offset]` pair per example (chunk) start: example `i`
//!   covers tokens `examples[i][0]..examples[i+1][0]` (the last one up to `tokens`) and source
//!   bytes `examples[i][1]..examples[i+1][1]` (the last one up to `bytes_covered`). Byte offsets
//!   start at 0 and strictly increase (no example is empty of text); token offsets start at 0 and
//!   never decrease (an example may code to zero tokens, e.g. StaticAC on a run of `0x00`s).
//!
//! # Checksums
//!
//! `example_crc32[i]` is the CRC-32 of example `i`'s bytes in `tokens.bin`, so a reader of one
//! slice can verify just that slice; `metadata_crc32` is the CRC-32 of the metadata itself,
//! serialised as compact JSON without that one field. Every change to either file after it was
//! written (a flipped bit, a hand edit) is refused on open rather than decoded to other text.
//! Version 1 datasets (earlier builds) carry neither and are still read, unverified.
//!
//! # Writing
//!
//! [`TokenDatasetWriter`] streams tokens into a hidden temp file in the directory (an
//! [`AtomicFile`]). [`finish`](TokenDatasetWriter::finish) removes any old `metadata.json`, commits
//! the temp file as `tokens.bin` (fsync, rename, directory fsync) and then writes `metadata.json`
//! the same way ([`fsio::write_atomic`]). A
//! directory is a dataset only once `metadata.json` exists and agrees with `tokens.bin`, so an
//! error or a crash at any point leaves no partial dataset: on error (and on drop without
//! `finish`) the temp file, and a `tokens.bin` renamed by this writer, are removed.
//!
//! # Reading
//!
//! [`TokenDataset::open`] reads and validates the metadata and memory-maps `tokens.bin`; every
//! refusal is a [`DatasetError`] naming the offending file.

use super::shard::ShardInfo;
use super::{MethodParams, TokenSource};
use crate::fsio::{self, AtomicFile};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The `format` field of every token dataset's metadata.
pub const FORMAT: &str = "terse-tokens";
/// The metadata version this build writes (with checksums).
pub const VERSION: u32 = 2;
/// The oldest metadata version this build reads (no checksums).
pub const OLDEST_VERSION: u32 = 1;
/// The token file's name inside a dataset directory.
pub const TOKENS_FILE: &str = "tokens.bin";
/// The metadata file's name inside a dataset directory.
pub const METADATA_FILE: &str = "metadata.json";

/// `metadata.json` (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written by this build; [`OLDEST_VERSION`]..=[`VERSION`] are read.
    pub version: u32,
    /// What the dataset is: method and parameters, token width, vocabulary, M1, corpus and
    /// counts, stored inline (`"method"`, `"params"`, `"token_bits"`, ...). Its fields read
    /// through a `Metadata` too (`meta.token_bits`).
    #[serde(flatten)]
    pub identity: TokenSource,
    /// `[token_offset, byte_offset]` of every example's start.
    pub examples: Vec<[u64; 2]>,
    /// Set on one shard of `terse tokenize --shard` (absent from a whole dataset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
    /// CRC-32 of each example's bytes in `tokens.bin` (version 2; absent in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example_crc32: Option<Vec<u32>>,
    /// CRC-32 of this metadata serialised without this field (version 2; absent in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_crc32: Option<u32>,
}

impl Metadata {
    /// The CRC-32 that `metadata_crc32` must hold: of the compact JSON of `self` without it.
    pub fn compute_crc32(&self) -> u32 {
        let unsealed = Metadata {
            metadata_crc32: None,
            ..self.clone()
        };
        crc32fast::hash(&serde_json::to_vec(&unsealed).expect("metadata serialises"))
    }

    /// Sets `metadata_crc32` to match the rest of the metadata (after an edit, for instance).
    pub fn seal(&mut self) {
        self.metadata_crc32 = Some(self.compute_crc32());
    }

    /// True when the dataset carries checksums (version 2 and later).
    pub fn has_checksums(&self) -> bool {
        self.metadata_crc32.is_some()
    }
}

impl std::ops::Deref for Metadata {
    type Target = TokenSource;

    fn deref(&self) -> &TokenSource {
        &self.identity
    }
}

/// Why a token dataset could not be opened or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: not found (not a token dataset?)", path.display())]
    Missing { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: corrupt metadata: {message}", path.display())]
    CorruptMetadata { path: PathBuf, message: String },
    #[error("{}: format is {found:?}, expected {FORMAT:?}", path.display())]
    WrongFormat { path: PathBuf, found: String },
    #[error(
        "{}: version {found} unsupported (this build reads versions {OLDEST_VERSION} to {VERSION})",
        path.display()
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("{}: token_bits {bits} unsupported (need 8 or 16)", path.display())]
    TokenBits { path: PathBuf, bits: u32 },
    #[error("{}: vocab {vocab} invalid for {token_bits}-bit tokens (need 1..=2^{token_bits})", path.display())]
    Vocab {
        path: PathBuf,
        vocab: u32,
        token_bits: u32,
    },
    #[error("{}: odd length {len} for 16-bit tokens", path.display())]
    OddLength { path: PathBuf, len: u64 },
    #[error(
        "{}: length {len} bytes does not match the metadata's {tokens} tokens x {width} bytes",
        path.display()
    )]
    LengthMismatch {
        path: PathBuf,
        len: u64,
        tokens: u64,
        width: u64,
    },
    #[error("{}: bad example offsets at example {index}: {message}", path.display())]
    Examples {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error(
        "{}: changed after it was written (metadata CRC-32 {computed:08x}, recorded {stored:08x}); \
         tokenize the corpus again",
        path.display()
    )]
    MetadataChecksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error(
        "{}: example {index} (tokens {start}..{end}) is damaged (CRC-32 {computed:08x}, recorded \
         {stored:08x}); tokenize the corpus again",
        path.display()
    )]
    ExampleChecksum {
        path: PathBuf,
        index: usize,
        start: u64,
        end: u64,
        stored: u32,
        computed: u32,
    },
    #[error("{}: token {token} at index {index} is not below the vocab {vocab}", path.display())]
    TokenOutOfRange {
        path: PathBuf,
        index: u64,
        token: u32,
        vocab: u32,
    },
}

fn io_err(path: &Path, e: io::Error) -> DatasetError {
    if e.kind() == io::ErrorKind::NotFound {
        DatasetError::Missing {
            path: path.to_path_buf(),
        }
    } else {
        DatasetError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Checks the metadata on its own (everything but the token file); `path` names metadata.json.
pub fn validate_metadata(meta: &Metadata, path: &Path) -> Result<(), DatasetError> {
    let p = || path.to_path_buf();
    if meta.format != FORMAT {
        return Err(DatasetError::WrongFormat {
            path: p(),
            found: meta.format.clone(),
        });
    }
    if !(OLDEST_VERSION..=VERSION).contains(&meta.version) {
        return Err(DatasetError::UnsupportedVersion {
            path: p(),
            found: meta.version,
        });
    }
    if meta.token_bits != 8 && meta.token_bits != 16 {
        return Err(DatasetError::TokenBits {
            path: p(),
            bits: meta.token_bits,
        });
    }
    if meta.vocab == 0 || meta.vocab as u64 > 1u64 << meta.token_bits {
        return Err(DatasetError::Vocab {
            path: p(),
            vocab: meta.vocab,
            token_bits: meta.token_bits,
        });
    }
    let corrupt = |message: String| DatasetError::CorruptMetadata { path: p(), message };
    let bad = |index: usize, message: String| DatasetError::Examples {
        path: p(),
        index,
        message,
    };
    if meta.examples.is_empty() != (meta.bytes_covered == 0) {
        return Err(bad(
            0,
            format!(
                "{} examples for {} bytes covered",
                meta.examples.len(),
                meta.bytes_covered
            ),
        ));
    }
    if meta.examples.is_empty() && meta.tokens != 0 {
        return Err(bad(0, format!("no examples but {} tokens", meta.tokens)));
    }
    for (i, &[t, b]) in meta.examples.iter().enumerate() {
        let (pt, pb) = match i {
            0 => {
                if t != 0 || b != 0 {
                    return Err(bad(
                        0,
                        format!("first example starts at [{t}, {b}], not [0, 0]"),
                    ));
                }
                continue;
            }
            _ => (meta.examples[i - 1][0], meta.examples[i - 1][1]),
        };
        if t < pt {
            return Err(bad(
                i,
                format!("token offset {t} decreases (previous {pt})"),
            ));
        }
        if b <= pb {
            return Err(bad(
                i,
                format!("byte offset {b} does not increase (previous {pb})"),
            ));
        }
    }
    if let Some(&[t, b]) = meta.examples.last() {
        if t > meta.tokens {
            return Err(bad(
                meta.examples.len() - 1,
                format!("token offset {t} beyond the {} tokens", meta.tokens),
            ));
        }
        if b >= meta.bytes_covered {
            return Err(bad(
                meta.examples.len() - 1,
                format!(
                    "byte offset {b} not below the {} bytes covered",
                    meta.bytes_covered
                ),
            ));
        }
    }
    let checksums = (meta.example_crc32.as_ref(), meta.metadata_crc32);
    match (meta.version, checksums) {
        (1, (None, None)) => {}
        (1, _) => return Err(corrupt("version 1 metadata carries checksums".into())),
        (_, (Some(crcs), Some(_))) if crcs.len() == meta.examples.len() => {}
        (_, (Some(crcs), Some(_))) => {
            return Err(corrupt(format!(
                "{} example checksums for {} examples",
                crcs.len(),
                meta.examples.len()
            )))
        }
        (v, _) => {
            return Err(corrupt(format!(
                "version {v} metadata lacks `example_crc32` or `metadata_crc32`"
            )))
        }
    }
    if let Some(stored) = meta.metadata_crc32 {
        let computed = meta.compute_crc32();
        if computed != stored {
            return Err(DatasetError::MetadataChecksum {
                path: p(),
                stored,
                computed,
            });
        }
    }
    Ok(())
}

/// Streams tokens into a new dataset directory (module docs).
pub struct TokenDatasetWriter {
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<AtomicFile>>,
    token_bits: u32,
    tokens: u64,
    bytes: u64,
    examples: Vec<[u64; 2]>,
    example_crc32: Vec<u32>,
    shard: Option<ShardInfo>,
}

impl TokenDatasetWriter {
    /// Starts a dataset in `dir` (created if missing) with `token_bits`-bit tokens.
    pub fn create(dir: &Path, token_bits: u32) -> anyhow::Result<Self> {
        if token_bits != 8 && token_bits != 16 {
            anyhow::bail!("token bits {token_bits} unsupported: need 8 or 16");
        }
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let tokens_path = dir.join(TOKENS_FILE);
        let file = AtomicFile::create(&tokens_path).map_err(|e| io_err(&tokens_path, e))?;
        let tmp = file.temp_path().to_path_buf();
        Ok(TokenDatasetWriter {
            dir: dir.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            token_bits,
            tokens: 0,
            bytes: 0,
            examples: Vec::new(),
            example_crc32: Vec::new(),
            shard: None,
        })
    }

    /// Marks the dataset as one shard of a sharded run (its metadata records `info`).
    pub fn set_shard(&mut self, info: ShardInfo) {
        self.shard = Some(info);
    }

    /// Appends one example: the tokens coding `byte_len` (> 0) bytes of the source.
    pub fn push_example(&mut self, tokens: &[u16], byte_len: u64) -> anyhow::Result<()> {
        anyhow::ensure!(byte_len > 0, "an example must cover at least one byte");
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("dataset writer already failed"))?;
        let buf: Vec<u8> = if self.token_bits == 8 {
            let mut buf = Vec::with_capacity(tokens.len());
            for &t in tokens {
                anyhow::ensure!(t < 256, "token {t} does not fit in 8 bits");
                buf.push(t as u8);
            }
            buf
        } else {
            tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
        };
        self.examples.push([self.tokens, self.bytes]);
        self.example_crc32.push(crc32fast::hash(&buf));
        if let Err(e) = file.write_all(&buf) {
            self.file = None;
            return Err(io_err(&self.tmp, e).into());
        }
        self.tokens += tokens.len() as u64;
        self.bytes += byte_len;
        Ok(())
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Source bytes covered so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Examples written so far.
    pub fn examples(&self) -> usize {
        self.examples.len()
    }

    /// Completes the dataset: `tokens.bin`, then `metadata.json` (module docs). Returns the
    /// metadata written.
    pub fn finish(
        mut self,
        method: MethodParams,
        vocab: u32,
        m1_fingerprint: Option<String>,
        source: &str,
    ) -> anyhow::Result<Metadata> {
        let mut meta = Metadata {
            format: FORMAT.into(),
            version: VERSION,
            identity: TokenSource {
                method,
                token_bits: self.token_bits,
                vocab,
                m1_fingerprint,
                source: source.into(),
                bytes_covered: self.bytes,
                tokens: self.tokens,
            },
            examples: std::mem::take(&mut self.examples),
            shard: self.shard,
            example_crc32: Some(std::mem::take(&mut self.example_crc32)),
            metadata_crc32: None,
        };
        meta.seal();
        let meta_path = self.dir.join(METADATA_FILE);
        validate_metadata(&meta, &meta_path)?;
        let file = self
            .file
            .take()
            .ok_or_else(|| anyhow::anyhow!("dataset writer already failed"))?;
        let file = file
            .into_inner()
            .map_err(|e| io_err(&self.tmp, e.into_error()))?;
        match fs::remove_file(&meta_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err(&meta_path, e).into())
            }
            _ => {}
        }
        let tokens_path = self.dir.join(TOKENS_FILE);
        let renamed = file.rename().map_err(|e| io_err(&tokens_path, e))?;
        if let Err(e) = renamed.sync_dir() {
            let _ = fs::remove_file(&tokens_path);
            return Err(io_err(&self.dir, e).into());
        }
        let json = serde_json::to_vec(&meta)?;
        if let Err(e) = fsio::write_atomic(&meta_path, &json) {
            let _ = fs::remove_file(&tokens_path);
            return Err(e);
        }
        Ok(meta)
    }
}

/// An opened, validated token dataset with `tokens.bin` memory-mapped.
#[derive(Debug)]
pub struct TokenDataset {
    dir: PathBuf,
    meta: Metadata,
    map: Option<memmap2::Mmap>,
}

impl TokenDataset {
    /// Opens and validates the dataset in `dir` (see [`DatasetError`] for the refusals). When the
    /// vocab is below `2^token_bits`, every token is checked against it (one pass over the file).
    pub fn open(dir: &Path) -> Result<TokenDataset, DatasetError> {
        let meta_path = dir.join(METADATA_FILE);
        let text = fs::read(&meta_path).map_err(|e| io_err(&meta_path, e))?;
        let meta: Metadata =
            serde_json::from_slice(&text).map_err(|e| DatasetError::CorruptMetadata {
                path: meta_path.clone(),
                message: e.to_string(),
            })?;
        validate_metadata(&meta, &meta_path)?;
        let tokens_path = dir.join(TOKENS_FILE);
        let file = File::open(&tokens_path).map_err(|e| io_err(&tokens_path, e))?;
        let len = file.metadata().map_err(|e| io_err(&tokens_path, e))?.len();
        let width = meta.token_bits as u64 / 8;
        if width == 2 && len % 2 == 1 {
            return Err(DatasetError::OddLength {
                path: tokens_path,
                len,
            });
        }
        if meta.tokens.checked_mul(width) != Some(len) {
            return Err(DatasetError::LengthMismatch {
                path: tokens_path,
                len,
                tokens: meta.tokens,
                width,
            });
        }
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only; like every memory-mapped reader, it assumes nobody
            // truncates or rewrites tokens.bin while it is open (the writer only ever replaces
            // it by rename, which leaves this mapping intact).
            Some(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(&tokens_path, e))?)
        };
        let ds = TokenDataset {
            dir: dir.to_path_buf(),
            meta,
            map,
        };
        for i in 0..ds.num_examples() {
            ds.verify_example(i)?;
        }
        if (ds.meta.vocab as u64) < 1u64 << ds.meta.token_bits {
            let vocab = ds.meta.vocab;
            if let Some((index, token)) = ds.tokens().enumerate().find(|&(_, t)| t >= vocab) {
                return Err(DatasetError::TokenOutOfRange {
                    path: tokens_path,
                    index: index as u64,
                    token,
                    vocab,
                });
            }
        }
        Ok(ds)
    }

    /// Checks example `i`'s bytes in `tokens.bin` against its recorded CRC-32 ([`open`](Self::open)
    /// has checked them all; this is for a reader that maps one slice). A version 1 dataset has
    /// no checksums and always passes; `i` past the end is an error.
    pub fn verify_example(&self, i: usize) -> Result<(), DatasetError> {
        let path = || self.dir.join(TOKENS_FILE);
        let (tokens, _) = self.example(i).ok_or_else(|| DatasetError::Examples {
            path: path(),
            index: i,
            message: format!("no example {i} (the dataset has {})", self.num_examples()),
        })?;
        let Some(crcs) = &self.meta.example_crc32 else {
            return Ok(());
        };
        let width = self.meta.token_bits as usize / 8;
        let computed = crc32fast::hash(&self.raw()[tokens.start * width..tokens.end * width]);
        let stored = crcs[i];
        if computed != stored {
            return Err(DatasetError::ExampleChecksum {
                path: path(),
                index: i,
                start: tokens.start as u64,
                end: tokens.end as u64,
                stored,
                computed,
            });
        }
        Ok(())
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The validated metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// 8 or 16.
    pub fn token_bits(&self) -> u32 {
        self.meta.token_bits
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.meta.tokens as usize
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.meta.tokens == 0
    }

    /// The raw bytes of `tokens.bin`.
    pub fn raw(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Token `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u32> {
        let raw = self.raw();
        if self.meta.token_bits == 8 {
            raw.get(i).map(|&t| t as u32)
        } else {
            let j = i.checked_mul(2)?;
            Some(u16::from_le_bytes([*raw.get(j)?, *raw.get(j + 1)?]) as u32)
        }
    }

    /// Every token, in order.
    pub fn tokens(&self) -> impl Iterator<Item = u32> + '_ {
        let raw = self.raw();
        let wide = self.meta.token_bits == 16;
        let step = if wide { 2 } else { 1 };
        raw.chunks_exact(step).map(move |c| {
            if wide {
                u16::from_le_bytes([c[0], c[1]]) as u32
            } else {
                c[0] as u32
            }
        })
    }

    /// The tokens as a `u8` slice (8-bit datasets only).
    pub fn as_u8(&self) -> Option<&[u8]> {
        (self.meta.token_bits == 8).then(|| self.raw())
    }

    /// The tokens as a `u16` slice (16-bit datasets on little-endian hosts only; the map is
    /// page-aligned).
    pub fn as_u16(&self) -> Option<&[u16]> {
        if self.meta.token_bits != 16 || cfg!(target_endian = "big") {
            return None;
        }
        match self.map.as_deref() {
            None => Some(&[]),
            Some(raw) => bytemuck::try_cast_slice(raw).ok(),
        }
    }

    /// Tokens `range` as `u16`s (any width, any host).
    pub fn tokens_u16(&self, range: Range<usize>) -> Vec<u16> {
        let raw = self.raw();
        if self.meta.token_bits == 8 {
            let end = range.end.min(raw.len());
            raw[range.start.min(end)..end]
                .iter()
                .map(|&t| t as u16)
                .collect()
        } else {
            let end = range.end.min(raw.len() / 2);
            raw[2 * range.start.min(end)..2 * end]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        }
    }

    /// Number of examples.
    pub fn num_examples(&self) -> usize {
        self.meta.examples.len()
    }

    /// Example `i`: its token range and its source byte range.
    pub fn example(&self, i: usize) -> Option<(Range<usize>, Range<u64>)> {
        let ex = &self.meta.examples;
        let [t0, b0] = *ex.get(i)?;
        let (t1, b1) = match ex.get(i + 1) {
            Some(&[t, b]) => (t, b),
            None => (self.meta.tokens, self.meta.bytes_covered),
        };
        Some((t0 as usize..t1 as usize, b0..b1))
    }
}
