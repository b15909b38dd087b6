//! Coding a batch of chunks under M1 ([`ChunkCoder`]): in lockstep on one [`CpuM1Batch`], so
//! each step's rows share one read of M1's weights. The batch lives as long as the file's coder:
//! its streams' key/value caches are reset and reused from batch to batch of chunks, not grown
//! again from nothing each time (which left a long run's memory growing with its input, the
//! allocator keeping what each batch had freed).

use super::classic::xz_chunk;
use super::format::{STORED, XZ};
use super::{Coding, BATCH_CHUNKS};
use crate::m1::{CpuM1Batch, Int8M1};
use crate::tokenize::ac::{self, AcModel, ChunkModelStore};
use crate::tokenize::equal_info::EqualInfo;
use anyhow::Result;
use std::cell::RefCell;

/// Streams that decode a batch's Equal-Info windows together.
const DECODE_STREAMS: usize = 256;

/// Streams of a file's batch: one per chunk of a batch, or per window decoded together (a
/// stream's memory is taken at its first use).
const STREAMS: usize = if DECODE_STREAMS > BATCH_CHUNKS {
    DECODE_STREAMS
} else {
    BATCH_CHUNKS
};

/// A chunk's record as read back: stored (its bytes) or coded (the record's word and body).
pub(super) struct Chunk {
    pub stored: bool,
    pub word: u32,
    pub body: Vec<u8>,
}

/// The coders of one file: the Equal-Info coder when the coding is Equal-Info, else the `ac`
/// model's chunk models, kept for the whole file.
pub(super) struct ChunkCoder<'a> {
    equal_info: Option<EqualInfo<'a>>,
    /// Borrowed by one coding call at a time.
    chunk_models: RefCell<ChunkModelStore>,
    /// Borrowed by one coding call at a time.
    batch: RefCell<CpuM1Batch<'a>>,
}

impl<'a> ChunkCoder<'a> {
    pub fn new(m1: &'a Int8M1, coding: Coding) -> Result<Self> {
        let (equal_info, ac_model) = match coding {
            Coding::EqualInfo { window_bits } => {
                (Some(EqualInfo::new(m1, window_bits)?), AcModel::M1)
            }
            Coding::Ac(model) => (None, model),
        };
        Ok(ChunkCoder {
            equal_info,
            chunk_models: RefCell::new(ChunkModelStore::new(ac_model)),
            batch: RefCell::new(CpuM1Batch::new(m1, STREAMS)),
        })
    }

    /// The records of `chunks` (at most [`BATCH_CHUNKS`]), coded together in lockstep on the
    /// file's [`CpuM1Batch`] (a stream per chunk, so each step's rows share one read of M1's
    /// weights), with their Equal-Info windows. A chunk whose code would not be shorter than
    /// itself is stored.
    pub fn encode_all(&self, chunks: &[&[u8]]) -> Result<Vec<(Vec<u8>, u64)>> {
        let batch = &mut *self.batch.borrow_mut();
        let coded: Vec<(u32, Vec<u8>)> = match &self.equal_info {
            Some(coder) => {
                let width = coder.window_bits() as usize / 8;
                coder
                    .encode_chunks(batch, chunks)?
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
            None => ac::encode_chunks(batch, chunks, 8, &mut self.chunk_models.borrow_mut())?
                .into_iter()
                .map(|tokens| {
                    let body: Vec<u8> = tokens.into_iter().map(|t| t as u8).collect();
                    (body.len() as u32, body)
                })
                .collect(),
        };
        coded
            .into_iter()
            .zip(chunks)
            .map(|((word, body), &chunk)| {
                // An Equal-Info record's word is its window count.
                let windows = if self.equal_info.is_some() {
                    word as u64
                } else {
                    0
                };
                // The shortest record of three: M1's code, xz's stream (for what M1 models
                // badly), the bytes as they are; a tie goes to the earlier.
                let xz = xz_chunk(chunk)?;
                let coded_len = 4 + body.len();
                let (word, body, windows) = if coded_len < 8 + chunk.len().min(xz.len()) {
                    (word, &body[..], windows)
                } else if xz.len() < chunk.len() {
                    (XZ, &xz[..], 0)
                } else {
                    (STORED, chunk, 0)
                };
                let mut record = Vec::with_capacity(8 + body.len());
                record.extend_from_slice(&word.to_le_bytes());
                if word == STORED || word == XZ {
                    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
                }
                record.extend_from_slice(body);
                Ok((record, windows))
            })
            .collect()
    }

    /// The bytes of `chunks` (each with its share of the original), the coded ones decoded
    /// together in lockstep on the file's [`CpuM1Batch`]: `ac` a stream per chunk, Equal-Info a
    /// stream per window (windows are independent), up to [`DECODE_STREAMS`].
    pub fn decode_all(&self, chunks: &[(Chunk, usize)]) -> Result<Vec<Vec<u8>>> {
        let coded: Vec<&(Chunk, usize)> = chunks.iter().filter(|(c, _)| !c.stored).collect();
        let mut decoded = match &self.equal_info {
            Some(coder) => {
                let width = coder.window_bits() as usize / 8;
                let codes: Vec<u128> = coded
                    .iter()
                    .flat_map(|(c, _)| c.body.chunks(width))
                    .map(|k| k.iter().fold(0u128, |acc, &x| (acc << 8) | x as u128))
                    .collect();
                let mut windows = coder
                    .decode_codes(&mut *self.batch.borrow_mut(), &codes)?
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
                ac::decode_chunks(
                    &mut *self.batch.borrow_mut(),
                    &refs,
                    8,
                    &lens,
                    &mut self.chunk_models.borrow_mut(),
                )?
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

    /// Bytes after the word `word` of a coded record in a file of `chunk_bytes` chunks, or
    /// `None` where no writer puts that word: a coded chunk is shorter than the chunk (format 2),
    /// and a window covers at least one byte (format 1, `v1`).
    pub fn body_bytes(&self, word: u32, chunk_bytes: u32, v1: bool) -> Option<usize> {
        let body = match &self.equal_info {
            Some(coder) if word > 0 => word as usize * (coder.window_bits() as usize / 8),
            Some(_) => return None,
            None => word as usize,
        };
        let fits = match v1 {
            true => word <= chunk_bytes,
            false => body < chunk_bytes as usize,
        };
        fits.then_some(body)
    }
}
