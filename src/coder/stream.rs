//! A whole-stream arithmetic (range) coder for the plain AC baseline: one code for a whole
//! sequence of bytes, each coded with its own [`Cdf`].
//!
//! # Arithmetic
//!
//! State: `low` (64 bits, the bottom of the interval within the current 64-bit output window)
//! and `range` in `[2^56, 2^64)`. Byte `s` with a CDF of total `2^P` (`P <= 24`): `r = range >> P`
//! (at least `2^32`), `low += r·cum[s]`, `range = r·freq(s)`; then while `range < 2^56` the top
//! byte of `low` is output and both shift left by 8. A carry out of `low` is added to the bytes
//! already output (a run of `0xFF` becomes `0x00`s). The per-byte coding loss from `r`'s
//! truncation is below `2^-32` relative, i.e. negligible.
//!
//! # Termination
//!
//! [`StreamEncoder::finish`] picks, in the final interval, the value with the most trailing zero
//! bits, outputs it, and drops all trailing `0x00` bytes of the stream: the decoder reads zeros
//! past the end, so they carry nothing. The stream does not record its length: the decoder must
//! be told how many bytes to decode (the file format stores it).
//!
//! # Guarantees and refusals
//!
//! `StreamDecoder` accepts any bytes (including none) and decodes any number of symbols from
//! them without panicking: garbage decodes to some bytes. On the encoder's output with the same
//! CDFs in the same order, it returns exactly the encoded bytes.

use super::cdf::Cdf;
use super::max_tz;

const TOP: u64 = 1 << 56;

/// Encodes bytes into one stream (module docs).
#[derive(Clone, Debug)]
pub struct StreamEncoder {
    low: u64,
    range: u64,
    out: Vec<u8>,
}

impl Default for StreamEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamEncoder {
    pub fn new() -> Self {
        StreamEncoder {
            low: 0,
            range: u64::MAX,
            out: Vec::new(),
        }
    }

    /// Add 1 at the end of the output so far (a carry out of `low`).
    fn carry(&mut self) {
        for byte in self.out.iter_mut().rev() {
            if *byte == 0xFF {
                *byte = 0;
            } else {
                *byte += 1;
                return;
            }
        }
        // Unreachable: the coded value stays below 1.
    }

    /// Encode `byte` with `cdf`.
    #[inline]
    pub fn encode(&mut self, byte: u8, cdf: &Cdf) {
        let r = self.range >> cdf.total_bits();
        let (low, carry) = self.low.overflowing_add(r * cdf.start(byte) as u64);
        if carry {
            self.carry();
        }
        self.low = low;
        self.range = r * cdf.freq(byte) as u64;
        while self.range < TOP {
            self.out.push((self.low >> 56) as u8);
            self.low <<= 8;
            self.range <<= 8;
        }
    }

    /// Bytes output so far (a lower bound on the final size).
    pub fn bytes_so_far(&self) -> usize {
        self.out.len()
    }

    /// The terminated stream (see the module docs).
    pub fn finish(mut self) -> Vec<u8> {
        let lo = self.low as u128;
        let hi = lo + self.range as u128 - 1;
        let v = max_tz(lo, hi);
        if v >> 64 != 0 {
            self.carry();
        }
        self.out.extend_from_slice(&(v as u64).to_be_bytes());
        while self.out.last() == Some(&0) {
            self.out.pop();
        }
        self.out
    }
}

/// Decodes a stream made by [`StreamEncoder`]; the caller knows how many bytes to decode.
#[derive(Clone, Debug)]
pub struct StreamDecoder<'a> {
    input: &'a [u8],
    pos: usize,
    /// The code value minus `low`, within the current 64-bit window.
    x: u64,
    range: u64,
}

impl<'a> StreamDecoder<'a> {
    /// Start decoding `input` (any bytes; zeros are read past its end).
    pub fn new(input: &'a [u8]) -> Self {
        let mut d = StreamDecoder {
            input,
            pos: 0,
            x: 0,
            range: u64::MAX,
        };
        for _ in 0..8 {
            d.x = (d.x << 8) | d.next_byte() as u64;
        }
        d
    }

    #[inline(always)]
    fn next_byte(&mut self) -> u8 {
        let b = self.input.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    /// Decode the next byte with `cdf` (the same CDF the encoder used at this position).
    #[inline]
    pub fn decode(&mut self, cdf: &Cdf) -> u8 {
        if self.x >= self.range {
            self.x = self.range - 1; // only on input no encoder produced
        }
        let r = self.range >> cdf.total_bits();
        let cum = cdf.cumulative();
        // Largest s with r·cum[s] <= x.
        let x = self.x;
        let s = cdf.last_start_where(|c| r * c as u64 <= x) as usize;
        self.x -= r * cum[s] as u64;
        self.range = r * (cum[s + 1] - cum[s]) as u64;
        if self.x >= self.range {
            self.x = self.range - 1; // x fell in the unused top of the range: garbage input
        }
        while self.range < TOP {
            self.x = (self.x << 8) | self.next_byte() as u64;
            self.range <<= 8;
        }
        s as u8
    }

    /// Input bytes consumed so far (may exceed the input length: zeros past the end).
    pub fn position(&self) -> usize {
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::cdf::{peaked, CdfQuantizer};

    fn roundtrip(data: &[u8], cdfs: &[Cdf]) -> Vec<u8> {
        let mut enc = StreamEncoder::new();
        for (i, &x) in data.iter().enumerate() {
            enc.encode(x, &cdfs[i % cdfs.len()]);
        }
        let code = enc.finish();
        let mut dec = StreamDecoder::new(&code);
        for (i, &x) in data.iter().enumerate() {
            assert_eq!(dec.decode(&cdfs[i % cdfs.len()]), x, "at {i}");
        }
        code
    }

    #[test]
    fn empty_and_tiny() {
        assert!(StreamEncoder::new().finish().is_empty());
        let u = Cdf::uniform(16).unwrap();
        let u = std::slice::from_ref(&u);
        assert_eq!(roundtrip(&[0], u), Vec::<u8>::new());
        assert_eq!(roundtrip(&[0x80], u), vec![0x80]);
        assert!(roundtrip(&[1, 2, 3], u).len() <= 4);
    }

    /// Exact information content of `data` under a fixed CDF, in bytes.
    fn ideal_bytes(data: &[u8], cdf: &Cdf) -> f64 {
        let t = cdf.total() as f64;
        data.iter()
            .map(|&x| (t / cdf.freq(x) as f64).log2())
            .sum::<f64>()
            / 8.0
    }

    #[test]
    fn size_matches_information() {
        let u = Cdf::uniform(16).unwrap();
        let data: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let code = roundtrip(&data, &[u]);
        assert!(code.len() <= data.len() + 1);
        for (byte, mass, n) in [
            (b'a', 0.99f32, 100_000usize),
            (0, 1.0, 50_000),
            (9, 0.3, 5000),
        ] {
            let p = peaked(byte, mass);
            let data = vec![byte; n];
            let code = roundtrip(&data, std::slice::from_ref(&p));
            let ideal = ideal_bytes(&data, &p);
            assert!(
                (code.len() as f64) <= ideal + 2.0,
                "{} vs {ideal}",
                code.len()
            );
        }
    }

    #[test]
    fn carries_and_mixed_precisions() {
        let top = peaked(255, 1.0);
        let low = peaked(0, 0.5);
        let q24 = CdfQuantizer::new(24, 511).unwrap();
        let mut p = [1.0f32; 256];
        p[200] = 1000.0;
        let c24 = q24.quantize(&p).unwrap();
        let data: Vec<u8> = (0..20_000u32)
            .map(|i| match i % 7 {
                0..=3 => 255,
                4 => 200,
                _ => (i * 13) as u8,
            })
            .collect();
        roundtrip(&data, &[top, low, c24, Cdf::uniform(8).unwrap()]);
    }

    #[test]
    fn garbage_never_panics() {
        let cdfs = [Cdf::uniform(16).unwrap(), peaked(3, 1.0), peaked(255, 0.7)];
        for seed in 0..200u64 {
            let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let input: Vec<u8> = (0..(seed % 40))
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                })
                .collect();
            let mut dec = StreamDecoder::new(&input);
            for i in 0..500 {
                dec.decode(&cdfs[i % 3]);
            }
        }
        let ff = [0xFFu8; 64];
        let mut dec = StreamDecoder::new(&ff);
        for i in 0..500 {
            dec.decode(&cdfs[i % 3]);
        }
    }
}
