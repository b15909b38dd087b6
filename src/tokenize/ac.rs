//! `ac`: the paper's plain arithmetic-coding baseline, `AC[v]` (§3.3, Table 1). Each chunk (by
//! default 10,240 bytes, the paper's example length) is one whole-sequence arithmetic code under
//! M1's exact probabilities ([`Int8M1`]), with M1's context **never reset** inside the chunk: byte
//! `k` is coded with the distribution M1 gives after `WINDOW_START, x_0 .. x_{k-1}` (one key/value
//! cache, rotary positions up to the chunk length; each position attends over M1's sliding window
//! of `context` positions, its training length). The CDFs are M1's probabilities
//! quantised by [`CdfQuantizer`] (total `2^16`, floor 1), the coder is [`StreamEncoder`].
//!
//! # Tokens, termination and padding
//!
//! The coded stream's bytes become tokens, 8 bits each or 16 bits each MSB first. The stream is
//! terminated by [`StreamEncoder::finish`] (the value with the most trailing zeros in the final
//! interval, trailing `0x00` bytes dropped); an odd final byte at 16 bits is padded with `0x00`,
//! which the decoder reads anyway (it reads zeros past the end), so padding changes nothing.
//! There is no end-of-input symbol: the decoder is told the chunk's byte length, which a dataset
//! keeps in its examples table.
//!
//! # Rate
//!
//! `tokens × token_bits / bytes` of an `ac` dataset is "M1 bits/byte (plain AC)": M1's
//! cross-entropy on the chunks plus the quantisation floor (≤ 0.0056 bit/byte), termination
//! (≤ 9 bytes per chunk) and token padding.
//!
//! # Cost
//!
//! One M1 position per byte, attention over at most M1's context: the cost per position stays flat
//! along the chunk (m1-3m with a 256-position context: ~4,000 positions/s per core, one position
//! per step, on a 2-core AMD EPYC; unbounded attention gave ~540 over a 10,240-byte chunk).
//! Chunks run in parallel on the CPU's threads, or in lockstep on an [`M1Batch`]
//! ([`encode_chunks`], [`decode_chunks`]): the GPU's exact M1 advances hundreds of chunks per
//! step with the same bits. A single chunk is the lockstep code on a one-stream [`CpuM1Batch`], so
//! there is one implementation of each.

use crate::coder::{bytes_to_tokens, tokens_to_bytes, CdfQuantizer, StreamDecoder, StreamEncoder};
use crate::m1::{CpuM1Batch, Int8M1, M1Batch, WINDOW_START};
use anyhow::{ensure, Result};

/// The chunk's arithmetic code under `m1`, as `token_bits`-bit tokens.
pub fn encode(m1: &Int8M1, chunk: &[u8], token_bits: u32) -> Result<Vec<u16>> {
    let mut coded = encode_batch(&mut CpuM1Batch::new(m1, 1), &[chunk], token_bits)?;
    Ok(coded.pop().expect("one chunk"))
}

/// The `byte_len` bytes coded by `tokens` under `m1` (any tokens decode to some bytes).
pub fn decode(m1: &Int8M1, tokens: &[u16], token_bits: u32, byte_len: usize) -> Result<Vec<u8>> {
    let mut out = decode_batch(
        &mut CpuM1Batch::new(m1, 1),
        &[tokens],
        token_bits,
        &[byte_len],
    )?;
    Ok(out.pop().expect("one chunk"))
}

/// [`encode`] of many chunks at once, `batch.streams()` chunks at a time (one stream each, all
/// advanced one byte per step): the same tokens as [`encode`] chunk by chunk.
pub fn encode_chunks(
    batch: &mut dyn M1Batch,
    chunks: &[&[u8]],
    token_bits: u32,
) -> Result<Vec<Vec<u16>>> {
    let mut out = Vec::with_capacity(chunks.len());
    for group in chunks.chunks(batch.streams().max(1)) {
        out.extend(encode_batch(batch, group, token_bits)?);
    }
    Ok(out)
}

/// [`decode`] of many chunks at once, `batch.streams()` at a time, as [`encode_chunks`].
pub fn decode_chunks(
    batch: &mut dyn M1Batch,
    tokens: &[&[u16]],
    token_bits: u32,
    lens: &[usize],
) -> Result<Vec<Vec<u8>>> {
    ensure!(tokens.len() == lens.len(), "one length per chunk");
    let g = batch.streams().max(1);
    let mut out = Vec::with_capacity(lens.len());
    for (t, l) in tokens.chunks(g).zip(lens.chunks(g)) {
        out.extend(decode_batch(batch, t, token_bits, l)?);
    }
    Ok(out)
}

/// [`encode`] of at most `batch.streams()` chunks at once, one stream per chunk.
fn encode_batch(
    batch: &mut dyn M1Batch,
    chunks: &[&[u8]],
    token_bits: u32,
) -> Result<Vec<Vec<u16>>> {
    ensure!(chunks.len() <= batch.streams(), "more chunks than streams");
    let q = CdfQuantizer::default();
    let mut coders: Vec<StreamEncoder> = chunks.iter().map(|_| StreamEncoder::new()).collect();
    let mut feeds: Vec<(usize, u8)> = (0..chunks.len())
        .filter(|&i| !chunks[i].is_empty())
        .map(|i| (i, WINDOW_START))
        .collect();
    feeds.iter().for_each(|&(i, _)| batch.reset(i));
    let mut k = 0; // the byte each fed chunk codes next
    while !feeds.is_empty() {
        let cdfs = batch.step_cdfs(&feeds, &q)?;
        for (&(i, _), cdf) in feeds.iter().zip(&cdfs) {
            coders[i].encode(chunks[i][k], cdf);
        }
        feeds.retain(|&(i, _)| k + 1 < chunks[i].len());
        feeds.iter_mut().for_each(|f| f.1 = chunks[f.0][k]);
        k += 1;
    }
    coders
        .into_iter()
        .map(|e| Ok(bytes_to_tokens(&e.finish(), token_bits)?))
        .collect()
}

/// [`decode`] of at most `batch.streams()` chunks at once (`lens[i]` bytes from `tokens[i]`).
fn decode_batch(
    batch: &mut dyn M1Batch,
    tokens: &[&[u16]],
    token_bits: u32,
    lens: &[usize],
) -> Result<Vec<Vec<u8>>> {
    ensure!(lens.len() <= batch.streams(), "more chunks than streams");
    let q = CdfQuantizer::default();
    let streams: Vec<Vec<u8>> = tokens
        .iter()
        .map(|t| Ok(tokens_to_bytes(t, token_bits)?))
        .collect::<Result<_>>()?;
    let mut coders: Vec<StreamDecoder> = streams.iter().map(|b| StreamDecoder::new(b)).collect();
    let mut out: Vec<Vec<u8>> = lens
        .iter()
        .map(|&n| Vec::with_capacity(n.min(1 << 20))) // the length may be corrupt
        .collect();
    let mut feeds: Vec<(usize, u8)> = (0..lens.len())
        .filter(|&i| lens[i] > 0)
        .map(|i| (i, WINDOW_START))
        .collect();
    feeds.iter().for_each(|&(i, _)| batch.reset(i));
    while !feeds.is_empty() {
        let cdfs = batch.step_cdfs(&feeds, &q)?;
        for (f, cdf) in feeds.iter_mut().zip(&cdfs) {
            let b = coders[f.0].decode(cdf);
            out[f.0].push(b);
            f.1 = b;
        }
        feeds.retain(|&(i, _)| out[i].len() < lens[i]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ParamArena};

    #[test]
    fn round_trips_and_beats_uniform_on_text() {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(256); // contract 3 attends over a recorded context
        let mut p = ParamArena::init(&cfg, 5);
        p.data.iter_mut().for_each(|x| *x *= 8.0);
        let m1 = Int8M1::new(&cfg, &p).unwrap();
        let text = &include_bytes!("../../data/sample-books.txt")[..3000];
        let inputs: [&[u8]; 5] = [text, b"", b"x", &[0u8; 700], &[255, 0, 1, 128]];
        for data in inputs {
            for bits in [8, 16] {
                let t = encode(&m1, data, bits).unwrap();
                assert_eq!(decode(&m1, &t, bits, data.len()).unwrap(), data);
            }
        }
        // Garbage decodes to the requested length without panicking.
        assert_eq!(decode(&m1, &[1, 2, 3], 16, 50).unwrap().len(), 50);
    }

    #[test]
    fn batched_coding_equals_chunk_by_chunk() {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(256); // contract 3 attends over a recorded context
        let mut p = ParamArena::init(&cfg, 6);
        p.data.iter_mut().for_each(|x| *x *= 8.0);
        let m1 = Int8M1::new(&cfg, &p).unwrap();
        let text = &include_bytes!("../../data/sample-books.txt")[5000..6500];
        let chunks: Vec<&[u8]> = vec![&text[..700], b"", &text[700..701], &text[701..], &[9; 300]];
        // Two streams for five chunks: three groups, the last with a spare stream.
        let mut batch = CpuM1Batch::new(&m1, 2);
        for bits in [8, 16] {
            let coded = encode_chunks(&mut batch, &chunks, bits).unwrap();
            for (c, t) in chunks.iter().zip(&coded) {
                assert_eq!(t, &encode(&m1, c, bits).unwrap());
            }
            let toks: Vec<&[u16]> = coded.iter().map(Vec::as_slice).collect();
            let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
            let back = decode_chunks(&mut batch, &toks, bits, &lens).unwrap();
            assert_eq!(back, chunks);
        }
        // A stream fed twice in one step, or out of range, is refused.
        assert!(batch.step(&[(0, WINDOW_START), (0, WINDOW_START)]).is_err());
        assert!(batch.step(&[(2, WINDOW_START)]).is_err());
        batch.reset(0);
        assert!(
            batch.step(&[(0, b'a')]).is_err(),
            "must start with WINDOW_START"
        );
    }
}
