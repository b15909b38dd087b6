//! `gzip`: the paper's GZip baseline. Each chunk is compressed on its own with zlib (RFC 1950:
//! DEFLATE with its 2-byte header and 4-byte Adler-32 trailer kept, as Python's
//! `zlib.compress(chunk)`), at the default level 6; the compressed bytes become tokens, 8 bits
//! each or 16 bits each MSB first, a final odd byte padded with `0x00`.
//!
//! # How decoding finds the real compressed length
//!
//! A zlib stream is self-delimiting: the DEFLATE final block ends it and the Adler-32 trailer
//! follows. [`decode`] inflates until the stream ends and takes the bytes consumed as the real
//! length; what follows it may only be the zero pad (at most one `0x00` byte with 16-bit tokens,
//! nothing with 8-bit tokens), else decoding refuses. The trailer's checksum also verifies the
//! decompressed bytes.
//!
//! # Not byte-identical to Python's zlib
//!
//! flate2's Rust backend makes a valid zlib stream with the same header (`78 9C`) but its own
//! DEFLATE choices: on the first 100 KB of the bundled sample (10,240-byte chunks) it is 46,430
//! bytes against Python `zlib.compress`'s 46,354 (+0.16%). The paper's GZip rate (2.23 bytes per
//! 8-bit token on C4) is reproduced to that margin, not bit for bit.

use crate::coder::{bytes_to_tokens, tokens_to_bytes};
use anyhow::{bail, Context, Result};
use flate2::{Compression, Decompress, FlushDecompress, Status};
use std::io::Write;

/// The zlib compression level (zlib's default, as the paper's Python `zlib`).
pub const LEVEL: u32 = 6;

/// The chunk's zlib stream as `token_bits`-bit tokens.
pub fn encode(chunk: &[u8], token_bits: u32) -> Result<Vec<u16>> {
    Ok(bytes_to_tokens(&compress(chunk)?, token_bits)?)
}

/// The chunk's zlib stream (header and trailer kept).
pub fn compress(chunk: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(chunk.len() / 2 + 64),
        Compression::new(LEVEL),
    );
    e.write_all(chunk)?;
    Ok(e.finish()?)
}

/// The bytes coded by `tokens` (see the module docs); refuses output beyond `usize::MAX`.
pub fn decode(tokens: &[u16], token_bits: u32) -> Result<Vec<u8>> {
    decode_capped(tokens, token_bits, usize::MAX)
}

/// As [`decode`], refusing more than `cap` decompressed bytes (a guard against garbage tokens
/// that inflate without bound).
pub fn decode_capped(tokens: &[u16], token_bits: u32, cap: usize) -> Result<Vec<u8>> {
    let bytes = tokens_to_bytes(tokens, token_bits)?;
    let (out, used) = inflate(&bytes, cap)?;
    let pad = &bytes[used..];
    let max_pad = (token_bits as usize / 8) - 1;
    if pad.len() > max_pad || pad.iter().any(|&b| b != 0) {
        bail!(
            "gzip: {} bytes after the end of the zlib stream (at byte {used}), expected at most \
             {max_pad} zero pad byte(s)",
            pad.len()
        );
    }
    Ok(out)
}

/// Inflates one zlib stream at the start of `input`: the output and the stream's length.
pub fn inflate(input: &[u8], cap: usize) -> Result<(Vec<u8>, usize)> {
    let mut d = Decompress::new(true);
    let mut out: Vec<u8> = Vec::with_capacity((input.len() * 4).clamp(64, 1 << 20).min(cap.max(1)));
    loop {
        if out.len() == out.capacity() {
            if out.len() > cap {
                bail!("gzip: decompressed size exceeds {cap} bytes");
            }
            let grow = out
                .len()
                .max(4096)
                .min(cap.saturating_add(1) - out.len())
                .max(1);
            out.reserve_exact(grow);
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let pos = in0 as usize;
        let status = d
            .decompress_vec(&input[pos..], &mut out, FlushDecompress::None)
            .context("gzip: corrupt zlib stream")?;
        if status == Status::StreamEnd {
            if out.len() > cap {
                bail!("gzip: decompressed size exceeds {cap} bytes");
            }
            return Ok((out, d.total_in() as usize));
        }
        let progressed = d.total_in() != in0 || d.total_out() != out0;
        if !progressed && out.len() < out.capacity() {
            bail!(
                "gzip: zlib stream truncated after {} bytes (no end of stream)",
                input.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_harmless_and_checked() {
        for len in 0..40usize {
            let chunk: Vec<u8> = (0..len as u8).collect();
            let z = compress(&chunk).unwrap();
            assert_eq!(&z[..2], &[0x78, 0x9c], "zlib header, default level");
            for bits in [8, 16] {
                let t = encode(&chunk, bits).unwrap();
                assert_eq!(decode(&t, bits).unwrap(), chunk);
            }
            let t16 = encode(&chunk, 16).unwrap();
            if z.len() % 2 == 1 {
                assert_eq!(t16.last().unwrap() & 0xFF, 0, "zero pad");
                let mut bad = t16.clone();
                *bad.last_mut().unwrap() |= 1;
                assert!(decode(&bad, 16).is_err(), "non-zero pad refused");
            }
            // An extra token after the stream is refused; a truncated stream too.
            let mut extra = encode(&chunk, 8).unwrap();
            extra.push(0);
            assert!(decode(&extra, 8).is_err());
            let t8 = encode(&chunk, 8).unwrap();
            assert!(decode(&t8[..t8.len() - 1], 8).is_err());
        }
    }

    #[test]
    fn cap_and_garbage() {
        let big = vec![b'a'; 100_000];
        let t = encode(&big, 8).unwrap();
        assert!(decode_capped(&t, 8, 99_999).is_err());
        assert_eq!(decode_capped(&t, 8, 100_000).unwrap(), big);
        assert!(decode(&[], 8).is_err());
        assert!(decode(&[1, 2, 3, 4, 5], 8).is_err());
    }
}
