//! The Equal-Info window coder: each window of bytes becomes exactly `b` bits, and those `b` bits
//! alone give the window's bytes back.
//!
//! The parts: `interval` keeps a window's exact interval and finds the codes inside it;
//! `designate` holds the designation order and the codes already designated; `encode` has
//! [`WindowEncoder`] and [`encode_windows`]; `decode` has [`WindowDecoder`], [`decode_window`] and
//! [`decode_windows`]. This file has the rules they share and the round-trip tests of the pair.
//!
//! # The interval, kept exactly
//!
//! A window starts from the real interval `[0, 1)`. Byte `s`, coded with a [`Cdf`](super::Cdf)
//! of total `T = 2^P`, narrows `[low, low + range)` to
//! `[low + ⌊range·cum[s]/T⌋, low + ⌊range·cum[s+1]/T⌋)` in units of `2^-(E+F)`, `F = 62`. The
//! state is `(e, E, lo, range)`: the real interval is
//! `[(e·2^F + lo)·2^-(E+F), (e·2^F + lo + range)·2^-(E+F))` with `e < 2^E` the settled leading
//! bits (a `u128`, since a window never settles more than `b <= 128` of them), `lo < 2^F` and
//! `range` in `(2^(F-1), 2^F]`. Moving whole bits from `lo` into `e` (and adding a carry into `e`)
//! changes no number, so nothing is approximated: the children of an interval tile it exactly,
//! each child is at least `2^37` units wide, and the first byte of a window gets exactly
//! `[cum[s], cum[s+1]) / T`.
//!
//! # Codes and the exact length
//!
//! A `b`-bit code `c` stands for the block `[c, c+1)·2^-b`. The window's codes `C(x)` are the
//! codes whose block lies inside the window's interval (block semantics: a code is in `C(x)`
//! whatever bits follow it). `C(x)` is a contiguous range, non-empty exactly when the window's
//! shortest code — the shortest dyadic block inside the interval, the paper's quantity, reported
//! by [`WindowEncoder::bits`] — has at most `b` bits. Both are computed exactly from the state.
//!
//! # Termination rule (how the decoder knows where the window ends)
//!
//! Each non-empty prefix `x_1..x_k` of a window has a **designated code** `d_k`: among the codes
//! of `C(x_1..x_k)` not already designated to a shorter prefix (`d_1..d_{k-1}`), the one with the
//! most trailing zero bits, ties to the smallest value (0 counts as all zeros). Without a
//! collision that is the code with the fewest significant bits followed by zero padding, as in
//! the paper; a prefix whose codes are all designated already has none.
//!
//! - **Decoder.** Follow the block of `c` down the tree: at each step take the child interval that
//!   contains the whole block; after each byte `k >= 1`, stop if `d_k == c`
//!   ([`WindowEnd::Matched`]). If the block straddles two children, stop there too
//!   ([`WindowEnd::Exhausted`]; no encoder output does this, but random codes, e.g. M2's samples,
//!   may). The interval shrinks by a fixed factor per byte, so decoding always ends.
//! - **Encoder.** Append bytes greedily while the window stays representable: `C(x)` is non-empty
//!   (the exact length is at most `b`) *and* some code of it is still free. The window's code is
//!   its last designated code `d_n`.
//!
//! Why this is exact: `d_n` lies in `C(x_1..x_n)`, which is inside every child on the path, so the
//! decoder walks exactly `x_1..x_n` and recomputes the same `d_1..d_n` from the same states; it
//! cannot stop before `n` because `d_n` differs from every earlier `d_k` by construction, and at
//! `n` it finds `d_n == c`. This disposes of the three classic ambiguities with no side
//! information: trailing bytes that "encode to zero bits" (their prefix's code is taken, so they
//! get another code or are deferred), a spurious extra byte (the decoder stops at the first
//! designated match, it never looks ahead), and input that ends mid-window (any prefix with a
//! designated code is a complete window). When a byte still fits but every code of the longer
//! window is already designated, the byte is refused and counted as a **back-off**
//! ([`WindowEncoder::backoffs`]): it starts the next window. A one-byte window can never back off
//! (nothing is designated before it) and, with any valid [`Cdf`](super::Cdf), any first byte fits
//! `b = 16` (see `super::cdf`), so every window holds at least one byte.
//!
//! **The paper's "Delay" rule** ([`WindowRule::Delay`], App. A.5) is the other way out: each
//! prefix's code is simply its shortest code zero-padded (the code of `C(x)` with the most trailing
//! zeros, no collision avoidance), the decoder stops at the *first* prefix whose code is `c` (no
//! look-ahead), and the encoder, after filling the window greedily, drops the trailing bytes that
//! did not change the code (bytes that "encode to all zeros"): they start the next window
//! ([`WindowEncoder::window_len`]). Prefix codes along a window form runs of equal values, so the
//! window ends at the first byte of its last run and the decoder stops exactly there.
//!
//! Every `b`-bit code decodes to some byte string, without error or panic. It holds at least one
//! byte whenever the first CDF's total is at most `2^b` (always with the default `2^16`); with a
//! larger total a code may straddle two first bytes and decode to nothing.
//!
//! # Cost of the rule, measured
//!
//! On 400 kB of English prose with an order-2 count model (2.96 bits per byte), 6–7 % of windows
//! back off, for 3.972 instead of 4.021 bytes per window at `b = 16` (−1.2 %) and 41.88 instead
//! of 41.94 at `b = 128` (−0.15 %), compared with the greedy cut that ignores decodability. The
//! paper's decodable alternative, its "Delay" rule, costs 17 % (2.66 → 2.20 bytes per token).
//!
//! # Cost in time
//!
//! Per byte: a few 64-bit multiplications, one division (decoder), a 4-level search of the CDF
//! (decoder) and a scan of the designated codes still in range: almost always fewer than 8, at
//! worst about `T / (256·f_min)` (≈ 270 at the default) for a window of bytes of probability
//! near 1, where a window holds up to ~21,000 bytes at `b = 128` and coding slows to ~1.3 µs
//! per byte (measured).

mod decode;
mod designate;
mod encode;
mod interval;

pub use decode::{decode_window, decode_windows, WindowDecoder, WindowEnd};
pub use encode::{encode_windows, EncodedWindows, WindowEncoder};

use super::CoderError;

/// Smallest supported window, in bits.
pub const MIN_WINDOW_BITS: u32 = 16;
/// Largest supported window, in bits.
pub const MAX_WINDOW_BITS: u32 = 128;

/// Window sizes accepted: multiples of 8 in 16..=128.
pub fn window_bits_supported(b: u32) -> bool {
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&b) && b.is_multiple_of(8)
}

fn check_b(b: u32) -> Result<(), CoderError> {
    if window_bits_supported(b) {
        Ok(())
    } else {
        Err(CoderError::WindowBits(b))
    }
}

/// How a window's end is marked (module docs, "Termination rule").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WindowRule {
    /// Designated codes: a prefix whose shortest code is taken gets another free code, or its
    /// last byte is refused (a back-off). The default, and the better compressor.
    #[default]
    Designated,
    /// The paper's "Delay" rule (App. A.5): each prefix's code is its shortest code zero-padded
    /// (the code of `C(x)` with the most trailing zeros); the encoder never ends a window with a
    /// byte that "encodes to all zeros" (one that leaves the prefix's code unchanged): such
    /// trailing bytes are deferred to the next window. The decoder returns the fewest bytes whose
    /// code is the window's code, with no look-ahead.
    Delay,
}

impl WindowRule {
    /// The name stored in metadata.
    pub fn name(self) -> &'static str {
        match self {
            WindowRule::Designated => "designated",
            WindowRule::Delay => "delay",
        }
    }

    /// From a stored name.
    pub fn from_name(name: &str) -> Option<WindowRule> {
        [WindowRule::Designated, WindowRule::Delay]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::cdf::{peaked, Cdf, CdfQuantizer};

    fn roundtrip(b: u32, data: &[u8], model: &dyn Fn(&[u8]) -> Cdf) -> EncodedWindows {
        let enc = encode_windows(b, data, model).unwrap();
        let mut at = 0usize;
        for (&code, &len) in enc.codes.iter().zip(&enc.lengths) {
            assert!(len >= 1);
            assert!(b == 128 || code >> b == 0);
            let got = decode_window(b, code, model).unwrap();
            assert_eq!(got, &data[at..at + len as usize], "b={b} window at {at}");
            at += len as usize;
        }
        assert_eq!(at, data.len());
        // The one-decoder form gives the same bytes; a code too wide for `b` is refused after
        // the windows before it were appended.
        let mut all = vec![7u8];
        decode_windows(b, &enc.codes, &mut all, model).unwrap();
        assert_eq!(&all[1..], data);
        if b < 128 {
            let bad = [enc.codes.clone(), vec![1u128 << b]].concat();
            let mut out = Vec::new();
            assert!(decode_windows(b, &bad, &mut out, model).is_err());
            assert_eq!(out, data);
        }
        enc
    }

    #[test]
    fn unsupported_b() {
        for b in [0, 8, 15, 17, 20, 136, 256] {
            assert!(WindowEncoder::new(b).is_err());
            assert!(WindowDecoder::new(b, 0).is_err());
        }
        assert!(WindowDecoder::new(16, 1 << 16).is_err());
        assert!(WindowDecoder::new(128, u128::MAX).is_ok());
        assert!(matches!(
            WindowEncoder::new(16).unwrap().finish(),
            Err(CoderError::EmptyWindow)
        ));
    }

    #[test]
    fn any_byte_fits_a_fresh_window_and_costs_its_frequency() {
        // Frequency 1 at total 2^16: exactly 16 bits.
        let cdf = peaked(0, 1.0);
        for byte in [1u8, 77, 255] {
            assert_eq!(cdf.freq(byte), 1);
            let mut enc = WindowEncoder::new(16).unwrap();
            assert!(enc.push(&cdf, byte));
            assert_eq!(enc.bits(), 16);
            let code = enc.finish().unwrap();
            assert_eq!(code, cdf.start(byte) as u128);
            assert_eq!(
                decode_window(16, code, |_: &[u8]| &cdf).unwrap(),
                vec![byte]
            );
        }
        // The empty window costs 0 bits, a uniform byte 8, a byte of probability 1/2 one bit.
        let u = Cdf::uniform(16).unwrap();
        let mut enc = WindowEncoder::new(32).unwrap();
        assert_eq!(enc.bits(), 0);
        assert!(enc.push(&u, 9));
        assert_eq!(enc.bits(), 8);
        assert!(enc.push(&u, 200));
        assert_eq!(enc.bits(), 16);
        let mut f = [1u32; 256];
        f[0] = 32768;
        f[1] = 32768 - 254;
        let h = Cdf::from_frequencies(&f).unwrap();
        for (byte, bits) in [(0u8, 1u32), (1, 2), (2, 16)] {
            let mut enc = WindowEncoder::new(16).unwrap();
            assert!(enc.push(&h, byte));
            assert_eq!(enc.bits(), bits, "byte {byte}");
        }
    }

    #[test]
    fn greedy_fill_and_exact_bits() {
        // Uniform bytes cost exactly 8 bits each: a b-bit window holds exactly b/8 of them.
        let u = Cdf::uniform(16).unwrap();
        for b in [16u32, 24, 32, 64, 128] {
            let data: Vec<u8> = (0..100u32).map(|i| (i * 37 % 251) as u8).collect();
            let enc = roundtrip(b, &data, &|_| u.clone());
            for &len in &enc.lengths[..enc.lengths.len() - 1] {
                assert_eq!(len, b / 8, "b={b}");
            }
            assert_eq!(enc.backoffs, 0);
        }
    }

    #[test]
    fn zero_cost_runs_and_ambiguity() {
        // All mass on the low end: the run byte's interval sits at 0, the classic
        // "encodes to zeros" trap, plus an input that ends mid-window.
        let cdf = peaked(0, 1.0);
        for b in [16u32, 24, 32, 64, 128] {
            for n in [1usize, 2, 3, 17, 300, 5000] {
                let data = vec![0u8; n];
                roundtrip(b, &data, &|_| cdf.clone());
                let mut data2 = data.clone();
                data2.push(255);
                data2.extend_from_slice(&data);
                roundtrip(b, &data2, &|_| cdf.clone());
            }
        }
        let top = peaked(255, 1.0);
        roundtrip(32, &[255u8; 4000], &|_| top.clone());
        let mid = peaked(128, 0.999);
        roundtrip(64, &[128u8; 4000], &|_| mid.clone());
    }

    #[test]
    fn context_dependent_model() {
        let table: Vec<Cdf> = (0..256u32)
            .map(|k| {
                let p: Vec<f32> = (0..256u32)
                    .map(|s| {
                        let h = (s.wrapping_mul(2654435761) ^ k.wrapping_mul(40503)) >> 7;
                        if s == (k * 7 + 1) % 256 {
                            50.0
                        } else {
                            (h % 100) as f32 / 100.0
                        }
                    })
                    .collect();
                CdfQuantizer::default().quantize(&p).unwrap()
            })
            .collect();
        let model = |prefix: &[u8]| {
            let k = prefix.last().map_or(0usize, |&x| x as usize) ^ (prefix.len() % 3);
            table[k].clone()
        };
        let mut data = Vec::new();
        let mut x = 0u8;
        for i in 0..3000u32 {
            x = if i % 13 == 0 {
                (i * 31) as u8
            } else {
                x.wrapping_mul(7).wrapping_add(1)
            };
            data.push(x);
        }
        for b in [16u32, 24, 32, 64, 128] {
            roundtrip(b, &data, &model);
        }
    }

    #[test]
    fn every_16_bit_code_decodes_and_matched_codes_reencode() {
        // Exhaustive for two models; every 97th code for the near-degenerate one, whose random
        // codes decode to runs of hundreds of bytes.
        let models = [
            (Cdf::uniform(16).unwrap(), 1),
            (peaked(97, 0.9), 1),
            (peaked(0, 1.0), 97),
        ];
        for (cdf, stride) in &models {
            let mut matched = 0u32;
            for c in (0..(1u128 << 16)).step_by(*stride) {
                let mut dec = WindowDecoder::new(16, c).unwrap();
                while !dec.is_done() {
                    dec.step(cdf);
                }
                let end = dec.end();
                let bytes = dec.into_bytes();
                assert!(!bytes.is_empty());
                if end == Some(WindowEnd::Matched) {
                    matched += 1;
                    let mut enc = WindowEncoder::new(16).unwrap();
                    for &x in &bytes {
                        assert!(enc.push(cdf, x));
                    }
                    assert_eq!(enc.finish().unwrap(), c);
                }
            }
            eprintln!("stride {stride}: {matched} matched");
            assert!(matched > 0);
        }
    }
}
