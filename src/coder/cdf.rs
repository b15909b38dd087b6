//! Integer CDFs over the 256 byte values, and the quantiser that builds them from `f32`
//! probabilities.
//!
//! # [`Cdf`]: what it guarantees
//!
//! A `Cdf` holds 257 cumulative counts `cum[0] = 0 < cum[1] < ... < cum[256] = 2^total_bits`
//! with `total_bits` in [`MIN_TOTAL_BITS`]`..=`[`MAX_TOTAL_BITS`]. Byte `s` owns the half-open
//! range `[cum[s], cum[s+1])` of frequency `freq(s) = cum[s+1] - cum[s]`. Every constructor
//! checks that each frequency is at least [`min_f_min`]`(total_bits)`; a `Cdf` that violates this
//! cannot exist. That floor is what lets any byte start an Equal-Info window of 16 bits (see
//! below), so every coder in this module accepts every `Cdf` without further checks.
//!
//! # [`CdfQuantizer`]: the rule
//!
//! Input: 256 non-negative finite `f32` values (any scale; they need not sum to 1). `-0.0` counts
//! as zero. NaN, infinities and negative values are refused with an error naming the byte; all
//! zeros give the uniform CDF. The rule uses integers only (the `f32`s are read by bit pattern):
//!
//! 1. Each `p_i = m_i * 2^e_i` exactly (`m_i < 2^24`, from the IEEE-754 fields). With `e_max` the
//!    largest exponent among the non-zero inputs, `w_i = floor(m_i * 2^(16 + e_i - e_max))`: the
//!    largest input keeps 40 significant bits, inputs below `2^-40` of it become 0.
//! 2. `W = sum w_i` (u64), `free = T - 256 * f_min` with `T = 2^total_bits`,
//!    `acc_i = sum_{j<i} w_j`, and `cum[i] = floor(acc_i * free / W) + i * f_min` (u128).
//!
//! So `cum[256] = T` exactly, the CDF is monotone, every byte gets at least `f_min`, and each
//! byte's share of `free` is its exact share of `W`, rounded by flooring the running sum (error
//! below one count, never accumulating). Same input bits, same CDF, on every machine.
//!
//! # Choice of `f_min`
//!
//! The window coder (`super::window`) starts each window from the exact interval `[0, 1)`, so the
//! first byte `s` of a window gets exactly `[cum[s], cum[s+1]) / 2^total_bits`. For
//! `total_bits <= 16` that interval contains the whole block `[cum[s], cum[s]+1) / 2^total_bits`,
//! i.e. a code of at most `total_bits <= 16` bits, and a one-byte window needs nothing beyond its
//! interval to terminate (its code cannot collide with a shorter prefix: there is none). So
//! **`f_min = 1` already lets any byte fit in a fresh 16-bit window**: the exact worst-case cost
//! of one minimum-frequency byte, termination included, is 16 bits. The default is therefore
//! [`DEFAULT_F_MIN`]` = 1` at the default total `2^16`; the floor then costs at most
//! `-log2(1 - 256/65536) = 0.0056` bits per byte. Above 16 total bits the floor must grow:
//! an interval `[k, k+f)` of `2^-P` units contains an aligned run of `2^(P-16)` units (one 16-bit
//! block) for every `k` iff `f >= 2^(P-15) - 1`, which is [`min_f_min`].

use super::CoderError;
use std::fmt;

/// Smallest supported CDF precision (256 symbols of frequency 1).
pub const MIN_TOTAL_BITS: u32 = 8;
/// Largest supported CDF precision: keeps the stream coder's per-symbol precision >= 2^32.
pub const MAX_TOTAL_BITS: u32 = 24;
/// The CDF total used by M1 coding: 2^16.
pub const DEFAULT_TOTAL_BITS: u32 = 16;
/// The floor at the default total: the smallest that lets any byte fit a fresh 16-bit window.
pub const DEFAULT_F_MIN: u32 = 1;

/// The smallest per-byte frequency at total `2^total_bits` for which any byte, as the first byte
/// of a window, has a code of at most 16 bits: 1 up to 16 total bits, `2^(total_bits-15) - 1`
/// above. Every [`Cdf`] satisfies it.
pub const fn min_f_min(total_bits: u32) -> u32 {
    if total_bits <= 16 {
        1
    } else {
        (1 << (total_bits - 15)) - 1
    }
}

/// A validated cumulative distribution over the 256 byte values (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct Cdf {
    cum: [u32; 257],
    total_bits: u32,
}

impl fmt::Debug for Cdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (argmax, max) = (0..=255u8)
            .map(|s| (s, self.freq(s)))
            .max_by_key(|&(s, q)| (q, std::cmp::Reverse(s)))
            .unwrap_or((0, 0));
        write!(
            f,
            "Cdf {{ total: 2^{}, max: byte {argmax} freq {max} }}",
            self.total_bits
        )
    }
}

fn check_total_bits(total_bits: u32) -> Result<(), CoderError> {
    if (MIN_TOTAL_BITS..=MAX_TOTAL_BITS).contains(&total_bits) {
        Ok(())
    } else {
        Err(CoderError::TotalBits(total_bits))
    }
}

impl Cdf {
    /// Every byte equally likely: frequency `2^total_bits / 256` each.
    pub fn uniform(total_bits: u32) -> Result<Cdf, CoderError> {
        check_total_bits(total_bits)?;
        let step = 1u32 << (total_bits - 8);
        let mut cum = [0u32; 257];
        for (i, c) in cum.iter_mut().enumerate() {
            *c = i as u32 * step;
        }
        Ok(Cdf { cum, total_bits })
    }

    /// From cumulative counts; refuses anything but `cum[0] = 0`, `cum[256] = 2^total_bits` and
    /// steps of at least [`min_f_min`]`(total_bits)`.
    pub fn from_cumulative(cum: [u32; 257], total_bits: u32) -> Result<Cdf, CoderError> {
        check_total_bits(total_bits)?;
        let total = 1u32 << total_bits;
        if cum[0] != 0 || cum[256] != total {
            return Err(CoderError::InvalidCdf(format!(
                "cum[0] = {}, cum[256] = {}, expected 0 and {total}",
                cum[0], cum[256]
            )));
        }
        let floor = min_f_min(total_bits);
        for s in 0..256 {
            if cum[s + 1] < cum[s] || cum[s + 1] - cum[s] < floor {
                return Err(CoderError::InvalidCdf(format!(
                    "byte {s}: cum {} -> {}, frequency below the floor {floor}",
                    cum[s],
                    cum[s + 1]
                )));
            }
        }
        Ok(Cdf { cum, total_bits })
    }

    /// From 256 frequencies whose sum is a power of two in range (each at least the floor).
    pub fn from_frequencies(freqs: &[u32]) -> Result<Cdf, CoderError> {
        if freqs.len() != 256 {
            return Err(CoderError::InvalidCdf(format!(
                "expected 256 frequencies, got {}",
                freqs.len()
            )));
        }
        let sum: u64 = freqs.iter().map(|&f| f as u64).sum();
        if !sum.is_power_of_two() {
            return Err(CoderError::InvalidCdf(format!(
                "frequencies sum to {sum}, not a power of two"
            )));
        }
        let total_bits = sum.trailing_zeros();
        check_total_bits(total_bits)?;
        let mut cum = [0u32; 257];
        for s in 0..256 {
            cum[s + 1] = cum[s] + freqs[s];
        }
        Cdf::from_cumulative(cum, total_bits)
    }

    /// `log2` of the total.
    #[inline]
    pub fn total_bits(&self) -> u32 {
        self.total_bits
    }

    /// The total, `2^total_bits`.
    #[inline]
    pub fn total(&self) -> u32 {
        1 << self.total_bits
    }

    /// The 257 cumulative counts.
    #[inline]
    pub fn cumulative(&self) -> &[u32; 257] {
        &self.cum
    }

    /// Start of byte `s`'s range.
    #[inline]
    pub fn start(&self, s: u8) -> u32 {
        self.cum[s as usize]
    }

    /// Frequency of byte `s` (at least [`min_f_min`]`(total_bits)`).
    #[inline]
    pub fn freq(&self, s: u8) -> u32 {
        self.cum[s as usize + 1] - self.cum[s as usize]
    }

    /// The byte whose range holds `target`: `cum[s] <= target < cum[s+1]`. A target at or above
    /// the total maps to 255 (never panics).
    #[inline]
    pub fn symbol_for(&self, target: u32) -> u8 {
        self.last_start_where(|c| c <= target)
    }

    /// The last byte `s` whose start `cum[s]` satisfies `below`, a predicate that holds for
    /// `cum[0]` and, along the cumulative counts, holds up to some point and fails after it (the
    /// stream decoder's is `cum[s]` scaled to its range being at most its value).
    #[inline(always)]
    pub(super) fn last_start_where(&self, below: impl Fn(u32) -> bool) -> u8 {
        // 4-ary search: three independent probes per level, four levels.
        let c = &self.cum;
        let mut s = 0usize;
        for step in [64usize, 16, 4, 1] {
            let n = below(c[s + step]) as usize
                + below(c[s + 2 * step]) as usize
                + below(c[s + 3 * step]) as usize;
            s += step * n;
        }
        s as u8
    }
}

/// Builds [`Cdf`]s from `f32` probabilities with integer arithmetic (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdfQuantizer {
    total_bits: u32,
    f_min: u32,
}

impl Default for CdfQuantizer {
    /// Total 2^16, `f_min = 1`.
    fn default() -> Self {
        CdfQuantizer {
            total_bits: DEFAULT_TOTAL_BITS,
            f_min: DEFAULT_F_MIN,
        }
    }
}

impl CdfQuantizer {
    /// Refuses `total_bits` outside 8..=24 and `f_min` outside
    /// [`min_f_min`]`(total_bits)..=2^total_bits / 256`.
    pub fn new(total_bits: u32, f_min: u32) -> Result<Self, CoderError> {
        check_total_bits(total_bits)?;
        let (min, max) = (min_f_min(total_bits), 1u32 << (total_bits - 8));
        if f_min < min || f_min > max {
            return Err(CoderError::FMin {
                f_min,
                total_bits,
                min,
                max,
            });
        }
        Ok(CdfQuantizer { total_bits, f_min })
    }

    pub fn total_bits(&self) -> u32 {
        self.total_bits
    }

    pub fn f_min(&self) -> u32 {
        self.f_min
    }

    /// [`quantize`](Self::quantize) of many distributions (a batch of streams), in parallel.
    pub fn quantize_all(&self, probs: &[[f32; 256]]) -> Result<Vec<Cdf>, CoderError> {
        use rayon::prelude::*;
        probs.par_iter().map(|p| self.quantize(p)).collect()
    }

    /// Quantise 256 probabilities. Errors: wrong count, NaN, infinite or negative values.
    pub fn quantize(&self, probs: &[f32]) -> Result<Cdf, CoderError> {
        if probs.len() != 256 {
            return Err(CoderError::ProbabilityCount(probs.len()));
        }
        // Exact (mantissa, exponent) of each input; exponent of 2^-149 units for subnormals.
        let mut mant = [0u64; 256];
        let mut expo = [0i32; 256];
        let mut e_max = i32::MIN;
        for (i, &p) in probs.iter().enumerate() {
            let bits = p.to_bits();
            let field = ((bits >> 23) & 0xFF) as i32;
            let frac = (bits & 0x7F_FFFF) as u64;
            if field == 0xFF {
                return Err(CoderError::NonFiniteProbability { index: i, value: p });
            }
            let (m, e) = if field == 0 {
                (frac, -149)
            } else {
                (frac | (1 << 23), field - 150)
            };
            if m == 0 {
                continue; // +0.0 or -0.0
            }
            if bits >> 31 != 0 {
                return Err(CoderError::NegativeProbability { index: i, value: p });
            }
            mant[i] = m;
            expo[i] = e;
            e_max = e_max.max(e);
        }
        let total = 1u64 << self.total_bits;
        let f_min = self.f_min as u64;
        let free = (total - 256 * f_min) as u128;
        let mut w = [0u64; 256];
        let mut sum = 0u64;
        if e_max != i32::MIN {
            for i in 0..256 {
                if mant[i] != 0 {
                    let d = (e_max - expo[i]) as u32; // >= 0
                    w[i] = if d >= 64 { 0 } else { (mant[i] << 16) >> d };
                    sum += w[i]; // <= 256 * 2^40
                }
            }
        }
        let mut cum = [0u32; 257];
        if sum == 0 {
            return Cdf::uniform(self.total_bits);
        }
        let mut acc = 0u64;
        for i in 0..256 {
            cum[i] = ((acc as u128 * free / sum as u128) as u64 + i as u64 * f_min) as u32;
            acc += w[i];
        }
        cum[256] = total as u32;
        Ok(Cdf {
            cum,
            total_bits: self.total_bits,
        })
    }
}

/// A CDF with `mass` on `byte` and the rest spread evenly (test models of the coders).
#[cfg(test)]
pub(crate) fn peaked(byte: u8, mass: f32) -> Cdf {
    let mut p = [(1.0 - mass) / 255.0; 256];
    p[byte as usize] = mass;
    CdfQuantizer::default().quantize(&p).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cdf: &Cdf, f_min: u32) {
        let c = cdf.cumulative();
        assert_eq!(c[0], 0);
        assert_eq!(c[256], cdf.total());
        for s in 0..=255u8 {
            assert!(cdf.freq(s) >= f_min, "byte {s} freq {}", cdf.freq(s));
        }
        assert!(Cdf::from_cumulative(*c, cdf.total_bits()).is_ok());
    }

    #[test]
    fn default_is_2_16_with_floor_1() {
        let q = CdfQuantizer::default();
        assert_eq!((q.total_bits(), q.f_min()), (16, 1));
        assert_eq!(min_f_min(16), 1);
        assert_eq!(min_f_min(17), 3);
        assert_eq!(min_f_min(24), 511);
    }

    #[test]
    fn peaked_and_degenerate() {
        let q = CdfQuantizer::default();
        let mut p = [0.0f32; 256];
        p[b'e' as usize] = 1.0;
        let cdf = q.quantize(&p).unwrap();
        check(&cdf, 1);
        assert_eq!(cdf.freq(b'e'), 65536 - 255);
        let mut p = [1e-30f32; 256];
        p[0] = 0.5;
        p[255] = 0.5;
        let cdf = q.quantize(&p).unwrap();
        check(&cdf, 1);
        assert_eq!(cdf.freq(0) + cdf.freq(255), 65536 - 254);
        // Subnormals only, and tiny next to huge.
        let mut p = [f32::from_bits(1); 256];
        p[7] = f32::from_bits(3);
        check(&q.quantize(&p).unwrap(), 1);
        let mut p = [1e-40f32; 256];
        p[3] = f32::MAX;
        let cdf = q.quantize(&p).unwrap();
        check(&cdf, 1);
        assert_eq!(cdf.freq(3), 65536 - 255);
    }

    #[test]
    fn proportional_and_floors() {
        let q = CdfQuantizer::new(16, 4).unwrap();
        let p: Vec<f32> = (0..256).map(|i| (i % 7) as f32).collect();
        let cdf = q.quantize(&p).unwrap();
        check(&cdf, 4);
        for s in 0..=255u8 {
            if s % 7 == 0 {
                assert_eq!(cdf.freq(s), 4);
            }
        }
        let q24 = CdfQuantizer::new(24, 511).unwrap();
        check(&q24.quantize(&p).unwrap(), 511);
    }

    #[test]
    fn uniform_and_zero_input() {
        let q = CdfQuantizer::default();
        let cdf = q.quantize(&[0.0; 256]).unwrap();
        assert_eq!(cdf, Cdf::uniform(16).unwrap());
        assert_eq!(q.quantize(&[-0.0; 256]).unwrap(), cdf);
        assert_eq!(q.quantize(&[3.0; 256]).unwrap(), cdf);
        for s in 0..=255u8 {
            assert_eq!(cdf.freq(s), 256);
            assert_eq!(cdf.symbol_for(cdf.start(s)), s);
            assert_eq!(cdf.symbol_for(cdf.start(s) + 255), s);
        }
        assert_eq!(cdf.symbol_for(u32::MAX), 255);
    }

    #[test]
    fn refusals() {
        let q = CdfQuantizer::default();
        let mut p = [0.1f32; 256];
        p[9] = f32::NAN;
        assert!(matches!(
            q.quantize(&p),
            Err(CoderError::NonFiniteProbability { index: 9, .. })
        ));
        p[9] = f32::INFINITY;
        assert!(q.quantize(&p).is_err());
        p[9] = -1e-3;
        assert!(matches!(
            q.quantize(&p),
            Err(CoderError::NegativeProbability { index: 9, .. })
        ));
        assert!(q.quantize(&p[..255]).is_err());
        assert!(CdfQuantizer::new(7, 1).is_err());
        assert!(CdfQuantizer::new(25, 1024).is_err());
        assert!(CdfQuantizer::new(16, 0).is_err());
        assert!(CdfQuantizer::new(16, 257).is_err());
        assert!(CdfQuantizer::new(20, 16).is_err());
        assert!(CdfQuantizer::new(8, 1).is_ok());
        let mut bad = *Cdf::uniform(16).unwrap().cumulative();
        bad[5] = bad[4];
        assert!(Cdf::from_cumulative(bad, 16).is_err());
        assert!(Cdf::from_frequencies(&[256; 256]).is_ok());
        assert!(Cdf::from_frequencies(&[255; 256]).is_err());
    }

    #[test]
    fn symbol_for_matches_linear_scan() {
        let q = CdfQuantizer::default();
        let p: Vec<f32> = (0..256).map(|i| ((i * 37) % 11) as f32 + 0.01).collect();
        let cdf = q.quantize(&p).unwrap();
        for t in (0..65536u32).step_by(7) {
            let s = cdf.symbol_for(t);
            assert!(cdf.start(s) <= t && t < cdf.start(s) + cdf.freq(s));
        }
    }
}
