//! Bits to tokens and back, MSB first: a token of `t` bits (8 or 16) holds the next `t` bits of
//! the bit stream, its first bit as the token's most significant bit (the paper's Fig. 9: window
//! bits `1111000011110011` are the 8-bit tokens `[240, 243]` or the 16-bit token `61683`).
//!
//! - Window codes: the `b`-bit codes are concatenated in order. When `b` is a multiple of the
//!   token width (every supported `b` with 8-bit tokens; `b` in {16, 32, 48, ...} with 16-bit
//!   tokens) each window is exactly `b / t` tokens; otherwise tokens straddle windows (the paper's
//!   `b = 24, v = 65k`) and the last token is padded with zero bits. [`tokens_to_codes`] returns
//!   every complete `b`-bit code and ignores the fewer than `b` bits left over.
//! - Byte streams (plain AC output): 8-bit tokens are the bytes; 16-bit tokens are big-endian
//!   byte pairs, an odd final byte padded with a zero byte.
//!
//! Tokens are returned as `u16` whatever the width (values below `2^t`). Refuses: a token width
//! other than 8 or 16, `b` outside 1..=128, a code of more than `b` bits, a token of more than `t`
//! bits. Never panics.

use super::{check_code_width, CoderError};

fn check_token_bits(t: u32) -> Result<(), CoderError> {
    if t == 8 || t == 16 {
        Ok(())
    } else {
        Err(CoderError::TokenBits(t))
    }
}

fn check_code_bits(b: u32) -> Result<(), CoderError> {
    if (1..=128).contains(&b) {
        Ok(())
    } else {
        Err(CoderError::WindowBits(b))
    }
}

struct BitWriter {
    t: u32,
    acc: u32,
    n: u32,
    out: Vec<u16>,
}

impl BitWriter {
    fn push(&mut self, v: u128, mut bits: u32) {
        while bits > 0 {
            let take = (self.t - self.n).min(bits);
            let chunk = ((v >> (bits - take)) & ((1u128 << take) - 1)) as u32;
            self.acc = (self.acc << take) | chunk;
            self.n += take;
            bits -= take;
            if self.n == self.t {
                self.out.push(self.acc as u16);
                self.acc = 0;
                self.n = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<u16> {
        if self.n > 0 {
            self.out.push((self.acc << (self.t - self.n)) as u16);
        }
        self.out
    }
}

/// Concatenate `b`-bit window codes and cut the bits into `token_bits`-bit tokens.
pub fn codes_to_tokens(codes: &[u128], b: u32, token_bits: u32) -> Result<Vec<u16>, CoderError> {
    check_token_bits(token_bits)?;
    check_code_bits(b)?;
    let total = codes.len() as u128 * b as u128;
    let mut w = BitWriter {
        t: token_bits,
        acc: 0,
        n: 0,
        out: Vec::with_capacity(total.div_ceil(token_bits as u128) as usize),
    };
    for &c in codes {
        check_code_width(c, b)?;
        w.push(c, b);
    }
    Ok(w.finish())
}

/// The complete `b`-bit codes in a token sequence (trailing bits short of a code are ignored).
pub fn tokens_to_codes(tokens: &[u16], b: u32, token_bits: u32) -> Result<Vec<u128>, CoderError> {
    check_token_bits(token_bits)?;
    check_code_bits(b)?;
    let n_codes = (tokens.len() as u128 * token_bits as u128 / b as u128) as usize;
    let mut codes = Vec::with_capacity(n_codes);
    let (mut code, mut have) = (0u128, 0u32);
    for &tok in tokens {
        if token_bits < 16 && tok >> token_bits != 0 {
            return Err(CoderError::TokenTooWide {
                token: tok,
                bits: token_bits,
            });
        }
        let mut left = token_bits;
        while left > 0 {
            let take = (b - have).min(left);
            let chunk = ((tok as u32 >> (left - take)) & ((1u32 << take) - 1)) as u128;
            code = (code << take) | chunk;
            have += take;
            left -= take;
            if have == b {
                codes.push(code);
                code = 0;
                have = 0;
            }
        }
    }
    Ok(codes)
}

/// Bytes (e.g. a plain AC stream) as tokens: 8-bit tokens are the bytes, 16-bit tokens big-endian
/// pairs with an odd last byte padded by a zero byte.
pub fn bytes_to_tokens(bytes: &[u8], token_bits: u32) -> Result<Vec<u16>, CoderError> {
    check_token_bits(token_bits)?;
    Ok(if token_bits == 8 {
        bytes.iter().map(|&x| x as u16).collect()
    } else {
        bytes
            .chunks(2)
            .map(|p| ((p[0] as u16) << 8) | p.get(1).copied().unwrap_or(0) as u16)
            .collect()
    })
}

/// Tokens back to bytes (16-bit tokens give two bytes each, big-endian).
pub fn tokens_to_bytes(tokens: &[u16], token_bits: u32) -> Result<Vec<u8>, CoderError> {
    check_token_bits(token_bits)?;
    if token_bits == 8 {
        tokens
            .iter()
            .map(|&t| {
                u8::try_from(t).map_err(|_| CoderError::TokenTooWide {
                    token: t,
                    bits: token_bits,
                })
            })
            .collect()
    } else {
        Ok(tokens.iter().flat_map(|t| t.to_be_bytes()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_figure_9() {
        let codes = [0b1111_0000_1111_0011u128, 0b1001_0001_1111_1000];
        assert_eq!(
            codes_to_tokens(&codes, 16, 8).unwrap(),
            vec![240, 243, 145, 248]
        );
        assert_eq!(
            codes_to_tokens(&codes, 16, 16).unwrap(),
            vec![0xF0F3, 0x91F8]
        );
        assert_eq!(
            tokens_to_codes(&[240, 243, 145, 248], 16, 8).unwrap(),
            codes
        );
    }

    #[test]
    fn roundtrip_all_widths() {
        let mut s = 0x1234_5678_9ABC_DEF0u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for b in [16u32, 24, 32, 40, 64, 72, 128] {
            for t in [8u32, 16] {
                for n in [0usize, 1, 2, 3, 7] {
                    let codes: Vec<u128> = (0..n)
                        .map(|_| {
                            let v = ((next() as u128) << 64) | next() as u128;
                            if b == 128 {
                                v
                            } else {
                                v & ((1u128 << b) - 1)
                            }
                        })
                        .collect();
                    let toks = codes_to_tokens(&codes, b, t).unwrap();
                    assert_eq!(toks.len(), (n * b as usize).div_ceil(t as usize));
                    assert!(toks.iter().all(|&x| (x as u32) < (1 << t)));
                    assert_eq!(tokens_to_codes(&toks, b, t).unwrap(), codes, "b={b} t={t}");
                }
            }
        }
        // b = 24, 16-bit tokens: windows straddle tokens, the last token is zero-padded.
        let toks = codes_to_tokens(&[0xABCDEF], 24, 16).unwrap();
        assert_eq!(toks, vec![0xABCD, 0xEF00]);
    }

    #[test]
    fn bytes_and_refusals() {
        assert_eq!(
            bytes_to_tokens(&[1, 2, 3], 16).unwrap(),
            vec![0x0102, 0x0300]
        );
        assert_eq!(
            tokens_to_bytes(&[0x0102, 0x0300], 16).unwrap(),
            vec![1, 2, 3, 0]
        );
        assert_eq!(bytes_to_tokens(&[1, 2, 3], 8).unwrap(), vec![1, 2, 3]);
        assert_eq!(tokens_to_bytes(&[1, 2, 3], 8).unwrap(), vec![1, 2, 3]);
        assert!(tokens_to_bytes(&[256], 8).is_err());
        assert!(tokens_to_codes(&[256], 16, 8).is_err());
        assert!(codes_to_tokens(&[1 << 16], 16, 8).is_err());
        assert!(codes_to_tokens(&[0], 16, 12).is_err());
        assert!(codes_to_tokens(&[0], 0, 8).is_err());
        assert!(codes_to_tokens(&[0], 129, 8).is_err());
        assert!(bytes_to_tokens(&[0], 4).is_err());
    }
}
