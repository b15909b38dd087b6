//! `ac`: the paper's plain arithmetic-coding baseline, `AC[v]` (§3.3, Table 1). Each chunk (by
//! default 10,240 bytes, the paper's example length) is one whole-sequence arithmetic code under
//! M1's exact probabilities ([`ExactM1`]), with M1's context **never reset** inside the chunk: byte
//! `k` is coded with the distribution M1 gives after `WINDOW_START, x_0 .. x_{k-1}` (one growing
//! key/value cache, rotary positions up to the chunk length). The CDFs are M1's probabilities
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
//! One M1 position per byte, attention over the whole chunk so far: per-position cost grows with
//! the position (about 4,000 positions/s per core at short contexts for m1-3m, ~540 positions/s
//! averaged over a 10,240-byte chunk, measured on a 2-core AMD EPYC). Chunks run in parallel.

use crate::coder::{bytes_to_tokens, tokens_to_bytes, CdfQuantizer, StreamDecoder, StreamEncoder};
use crate::m1::{ExactM1, WindowState};
use anyhow::Result;

/// The chunk's arithmetic code under `m1`, as `token_bits`-bit tokens.
pub fn encode(m1: &ExactM1, chunk: &[u8], token_bits: u32) -> Result<Vec<u16>> {
    let q = CdfQuantizer::default();
    let mut e = StreamEncoder::new();
    let mut state = WindowState::default();
    if let Some((&first, rest)) = chunk.split_first() {
        let mut probs = m1.start(&mut state);
        e.encode(first, &q.quantize(&probs)?);
        let mut prev = first;
        for &b in rest {
            probs = m1.push(&mut state, prev);
            e.encode(b, &q.quantize(&probs)?);
            prev = b;
        }
    }
    Ok(bytes_to_tokens(&e.finish(), token_bits)?)
}

/// The `byte_len` bytes coded by `tokens` under `m1` (any tokens decode to some bytes).
pub fn decode(m1: &ExactM1, tokens: &[u16], token_bits: u32, byte_len: usize) -> Result<Vec<u8>> {
    let q = CdfQuantizer::default();
    let bytes = tokens_to_bytes(tokens, token_bits)?;
    let mut d = StreamDecoder::new(&bytes);
    let mut state = WindowState::default();
    let mut out = Vec::with_capacity(byte_len.min(1 << 20)); // the length may be corrupt
    if byte_len == 0 {
        return Ok(out);
    }
    let mut probs = m1.start(&mut state);
    loop {
        let b = d.decode(&q.quantize(&probs)?);
        out.push(b);
        if out.len() == byte_len {
            return Ok(out);
        }
        probs = m1.push(&mut state, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ParamArena};

    #[test]
    fn round_trips_and_beats_uniform_on_text() {
        let cfg = ModelConfig::preset("tiny", None).unwrap();
        let mut p = ParamArena::init(&cfg, 5);
        p.data.iter_mut().for_each(|x| *x *= 8.0);
        let m1 = ExactM1::new(&cfg, &p).unwrap();
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
}
