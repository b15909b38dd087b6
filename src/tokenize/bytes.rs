//! `bytes`: the text's own bytes as tokens.
//!
//! 8-bit tokens: token = byte. 16-bit tokens: bytes are paired big-endian (`token = b0 << 8 |
//! b1`, as [`bytes_to_tokens`] packs every byte stream, MSB first); an odd final byte is paired
//! with a `0x00` pad byte. Decoding needs the chunk's byte length to drop that pad: datasets keep
//! it in their examples table.

use crate::coder::{bytes_to_tokens, tokens_to_bytes};
use anyhow::{ensure, Result};

/// The chunk's bytes as `token_bits`-bit tokens.
pub fn encode(chunk: &[u8], token_bits: u32) -> Result<Vec<u16>> {
    Ok(bytes_to_tokens(chunk, token_bits)?)
}

/// The `byte_len` bytes coded by `tokens`; refuses a token count that does not match `byte_len`
/// or a non-zero pad byte.
pub fn decode(tokens: &[u16], token_bits: u32, byte_len: usize) -> Result<Vec<u8>> {
    let mut bytes = tokens_to_bytes(tokens, token_bits)?;
    let expected = (byte_len * 8).div_ceil(token_bits as usize);
    ensure!(
        tokens.len() == expected,
        "bytes: {} tokens for {byte_len} bytes, expected {expected}",
        tokens.len()
    );
    ensure!(
        bytes[byte_len..].iter().all(|&b| b == 0),
        "bytes: non-zero pad byte after {byte_len} bytes"
    );
    bytes.truncate(byte_len);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(encode(b"abc", 16).unwrap(), vec![0x6162, 0x6300]);
        assert_eq!(decode(&[0x6162, 0x6300], 16, 3).unwrap(), b"abc");
        assert!(decode(&[0x6162, 0x6301], 16, 3).is_err());
        assert!(decode(&[0x6162], 16, 3).is_err());
        assert_eq!(decode(&[], 8, 0).unwrap(), b"");
        assert_eq!(decode(&[], 16, 0).unwrap(), b"");
    }
}
