//! Pure integer arithmetic coding: quantised CDFs, the Equal-Info window coder, the whole-stream
//! coder of the plain AC baseline, and bit <-> token packing. No neural model code lives here and no
//! floating point is used, except that [`CdfQuantizer`] reads `f32` probabilities (by their bit
//! patterns: the conversion itself is integer arithmetic).
//!
//! - [`cdf`]: [`Cdf`], a validated integer CDF over the 256 byte values with total `2^total_bits`,
//!   and [`CdfQuantizer`], which builds one from 256 `f32` probabilities with a floor `f_min` per
//!   byte, chosen so that any byte fits in a fresh window of the smallest window size (16 bits).
//! - [`window`]: [`WindowEncoder`] / [`WindowDecoder`] for Equal-Info windows of `b` bits: the
//!   encoder knows the window's exact shortest code length after every byte, appends bytes while
//!   the window still has a code of `b` bits, and picks a code that the decoder maps back to
//!   exactly the window's bytes without any side information; every `b`-bit code decodes to some
//!   byte string. [`encode_windows`], [`decode_window`] and [`decode_windows`] drive them with a
//!   CDF callback.
//! - [`stream`]: [`StreamEncoder`] / [`StreamDecoder`], a carry-propagating range coder (64-bit
//!   state, byte output) for whole-text AC; the decoder needs the symbol count.
//! - [`pack`]: window codes and byte streams to 8- or 16-bit tokens, MSB first, and back.
//! - [`repeats`]: [`Repeats`], an integer model of a chunk's own history (the byte that followed
//!   the last occurrence of the current context) mixed into M1's CDF, for `terse compress`.
//! - [`contexts`]: [`Contexts`], a chunk's own statistics of the bytes after its short contexts
//!   (up to 8 bytes) mixed geometrically with that CDF, for `terse compress` from format 5, by
//!   the [`ContextsRecipe`] its format names.
//!
//! Every decoder here is total: no input bytes, code or token makes it panic or loop forever.

pub mod cdf;
pub mod contexts;
pub mod pack;
pub mod repeats;
pub mod stream;
pub mod window;

pub use cdf::{
    min_f_min, Cdf, CdfQuantizer, DEFAULT_F_MIN, DEFAULT_TOTAL_BITS, MAX_TOTAL_BITS, MIN_TOTAL_BITS,
};
pub use contexts::{Contexts, ContextsRecipe};
pub use pack::{bytes_to_tokens, codes_to_tokens, tokens_to_bytes, tokens_to_codes};
pub use repeats::Repeats;
pub use stream::{StreamDecoder, StreamEncoder};
pub use window::{
    decode_window, decode_windows, encode_windows, window_bits_supported, EncodedWindows,
    WindowDecoder, WindowEncoder, WindowEnd, WindowRule, MAX_WINDOW_BITS, MIN_WINDOW_BITS,
};

/// What the coder refuses, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoderError {
    #[error("CDF total bits {0} outside {MIN_TOTAL_BITS}..={MAX_TOTAL_BITS}")]
    TotalBits(u32),
    #[error(
        "f_min {f_min} invalid at total 2^{total_bits}: need {min}..={max} \
         (the lower bound lets any byte fit in a fresh 16-bit window)"
    )]
    FMin {
        f_min: u32,
        total_bits: u32,
        min: u32,
        max: u32,
    },
    #[error("expected 256 probabilities, got {0}")]
    ProbabilityCount(usize),
    #[error("probability of byte {index} is not finite ({value})")]
    NonFiniteProbability { index: usize, value: f32 },
    #[error("probability of byte {index} is negative ({value})")]
    NegativeProbability { index: usize, value: f32 },
    #[error("invalid CDF: {0}")]
    InvalidCdf(String),
    #[error("window bits {0} unsupported: need a multiple of 8 in {MIN_WINDOW_BITS}..={MAX_WINDOW_BITS}")]
    WindowBits(u32),
    #[error("window code {code:#x} does not fit in {bits} bits")]
    CodeTooWide { code: u128, bits: u32 },
    #[error("an empty window has no code")]
    EmptyWindow,
    #[error("token bits {0} unsupported: need 8 or 16")]
    TokenBits(u32),
    #[error("token {token} does not fit in {bits} bits")]
    TokenTooWide { token: u16, bits: u32 },
    #[error("window encoder made no progress at byte {0} (coder invariant broken)")]
    NoProgress(usize),
}

/// The value with the most trailing zero bits in `[lo, hi]` (unique; 0 counts as all zeros),
/// `lo <= hi`: a window's designated code (`window`) and the stream coder's final value
/// (`stream`).
#[inline(always)]
fn max_tz(lo: u128, hi: u128) -> u128 {
    if lo == 0 {
        return 0;
    }
    let k = 127 - ((lo - 1) ^ hi).leading_zeros();
    (hi >> k) << k
}

/// Refuses a code of more than `bits` bits (`bits <= 128`).
fn check_code_width(code: u128, bits: u32) -> Result<(), CoderError> {
    if bits < 128 && code >> bits != 0 {
        Err(CoderError::CodeTooWide { code, bits })
    } else {
        Ok(())
    }
}
