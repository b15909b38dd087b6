//! `static-ac`: the paper's StaticAC baseline. A byte unigram model, `p(x_i | x_<i) = p(x_i)`,
//! drives the whole-stream arithmetic coder ([`StreamEncoder`]) over each chunk on its own; the
//! coded bytes become tokens, 8 bits each or 16 bits each MSB first (a final odd byte padded with
//! `0x00`, harmless since the stream decoder reads zeros past the end).
//!
//! # The model
//!
//! Byte counts over the corpus being tokenized (all of its canonical byte stream; the paper used
//! C4's training split) are quantised to integer frequencies summing to `2^`[`TOTAL_BITS`], each at
//! least 1, by [`quantize_counts`] (integer arithmetic only, so the CDF is a pure function of the
//! counts). Datasets store the counts and the frequencies in their metadata `params`, so decoding
//! needs no corpus.
//!
//! # Lengths
//!
//! The coded stream does not record how many bytes it holds: [`StaticAc::decode`] is told the
//! chunk's byte length, which datasets keep in their examples table.

use crate::coder::{bytes_to_tokens, tokens_to_bytes, Cdf, StreamDecoder, StreamEncoder};
use anyhow::{bail, Result};

/// The CDF total: `2^16`, as M1 coding.
pub const TOTAL_BITS: u32 = 16;

/// Byte counts to 256 frequencies summing to `2^total_bits`, each at least 1: every byte gets 1
/// plus its share (rounded down) of the rest in proportion to its count; the few units left go
/// one each to the largest remainders (ties to the lower byte). No counts at all: uniform.
pub fn quantize_counts(counts: &[u64; 256], total_bits: u32) -> [u32; 256] {
    let total = 1u64 << total_bits;
    let n: u128 = counts.iter().map(|&c| c as u128).sum();
    if n == 0 {
        return [(total / 256) as u32; 256];
    }
    let spare = (total - 256) as u128;
    let mut freqs = [0u32; 256];
    let mut rems = [0u128; 256];
    for s in 0..256 {
        let x = spare * counts[s] as u128;
        freqs[s] = 1 + (x / n) as u32;
        rems[s] = x % n;
    }
    let left = total - freqs.iter().map(|&f| f as u64).sum::<u64>();
    let mut order: Vec<usize> = (0..256).collect();
    order.sort_by(|&a, &b| rems[b].cmp(&rems[a]).then(a.cmp(&b)));
    for &s in order.iter().take(left as usize) {
        freqs[s] += 1;
    }
    freqs
}

/// Counts of each byte value in `bytes`, added to `counts`.
pub fn count_bytes(counts: &mut [u64; 256], bytes: &[u8]) {
    for &b in bytes {
        counts[b as usize] += 1;
    }
}

/// The static unigram coder.
#[derive(Clone, Debug)]
pub struct StaticAc {
    freqs: [u32; 256],
    cdf: Cdf,
}

impl StaticAc {
    /// From corpus byte counts (quantised by [`quantize_counts`] at [`TOTAL_BITS`]).
    pub fn from_counts(counts: &[u64; 256]) -> Result<StaticAc> {
        StaticAc::from_freqs(&quantize_counts(counts, TOTAL_BITS))
    }

    /// From stored frequencies (256, each ≥ 1, summing to a power of two in range).
    pub fn from_freqs(freqs: &[u32]) -> Result<StaticAc> {
        if freqs.len() != 256 || freqs.contains(&0) {
            bail!("static-ac: need 256 frequencies, each at least 1");
        }
        let cdf = Cdf::from_frequencies(freqs)?;
        let mut f = [0u32; 256];
        f.copy_from_slice(freqs);
        Ok(StaticAc { freqs: f, cdf })
    }

    /// The frequencies.
    pub fn freqs(&self) -> &[u32; 256] {
        &self.freqs
    }

    /// The CDF.
    pub fn cdf(&self) -> &Cdf {
        &self.cdf
    }

    /// The model's cross-entropy on bytes distributed as `counts`, in bits per byte (what coding
    /// them costs, before per-chunk termination and token padding).
    pub fn cross_entropy(&self, counts: &[u64; 256]) -> f64 {
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return 0.0;
        }
        let total = self.cdf.total() as f64;
        counts
            .iter()
            .zip(self.freqs.iter())
            .filter(|(&c, _)| c > 0)
            .map(|(&c, &f)| c as f64 * -(f as f64 / total).log2())
            .sum::<f64>()
            / n as f64
    }

    /// The chunk's arithmetic code as `token_bits`-bit tokens.
    pub fn encode(&self, chunk: &[u8], token_bits: u32) -> Result<Vec<u16>> {
        let mut e = StreamEncoder::new();
        for &b in chunk {
            e.encode(b, &self.cdf);
        }
        Ok(bytes_to_tokens(&e.finish(), token_bits)?)
    }

    /// The `byte_len` bytes coded by `tokens`.
    pub fn decode(&self, tokens: &[u16], token_bits: u32, byte_len: usize) -> Result<Vec<u8>> {
        let bytes = tokens_to_bytes(tokens, token_bits)?;
        let mut d = StreamDecoder::new(&bytes);
        Ok((0..byte_len).map(|_| d.decode(&self.cdf)).collect())
    }
}

/// Shannon entropy of the byte distribution `counts`, bits per byte.
pub fn unigram_entropy(counts: &[u64; 256]) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_sums_and_floors() {
        let mut counts = [0u64; 256];
        assert_eq!(quantize_counts(&counts, 16), [256; 256]);
        counts[b'a' as usize] = 1_000_000_007;
        counts[b'b' as usize] = 3;
        counts[7] = u64::MAX / 300;
        for bits in [8, 12, 16, 24] {
            let f = quantize_counts(&counts, bits);
            assert_eq!(f.iter().map(|&x| x as u64).sum::<u64>(), 1 << bits);
            assert!(f.iter().all(|&x| x >= 1));
        }
        let m = StaticAc::from_counts(&counts).unwrap();
        for len in [0usize, 1, 2, 3, 100] {
            let chunk: Vec<u8> = (0..len).map(|i| [b'a', 7, b'b', 0, 255][i % 5]).collect();
            for bits in [8, 16] {
                let t = m.encode(&chunk, bits).unwrap();
                assert_eq!(m.decode(&t, bits, len).unwrap(), chunk);
            }
        }
        // Runs of the first byte code to nothing at all.
        assert!(m.encode(&[0; 50], 8).unwrap().is_empty());
        assert_eq!(m.decode(&[], 8, 50).unwrap(), vec![0; 50]);
        assert!(StaticAc::from_freqs(&[1; 255]).is_err());
        assert!(StaticAc::from_freqs(&[0; 256]).is_err());
    }
}
