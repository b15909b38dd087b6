//! The exact interval of a window, its children for one CDF, and the `b`-bit codes inside it
//! (the `window` module docs: "The interval, kept exactly" and "Codes and the exact length").

/// Frame bits of the exact interval state.
const F: u32 = 62;
const FULL: u64 = 1 << F;

/// The exact interval of a window (the `window` module docs).
#[derive(Clone, Copy, Debug)]
pub(super) struct Interval {
    e: u128,
    e_bits: u32,
    pub(super) lo: u64,
    range: u64,
}

impl Interval {
    pub(super) const ROOT: Interval = Interval {
        e: 0,
        e_bits: 0,
        lo: 0,
        range: FULL,
    };

    /// The split of `range` that [`Bounds::at`] uses for a CDF of total `2^p`.
    #[inline(always)]
    pub(super) fn bounds(&self, p: u32) -> Bounds {
        Bounds {
            hi: self.range >> p,
            lo: self.range & ((1 << p) - 1),
            p,
        }
    }

    /// The child `[lo + a, lo + a + w)`, renormalised; `None` if it settles more than `b` bits
    /// (then it is narrower than `2^-b` and holds no `b`-bit block).
    #[inline(always)]
    fn child(&self, a: u64, w: u64, b: u32) -> Option<Interval> {
        let mut lo = self.lo + a;
        let mut e = self.e;
        if lo >= FULL {
            lo -= FULL;
            e += 1; // stays below 2^E: the interval lies inside [0, 1)
        }
        // Shift s whole bits so that range ends in (2^(F-1), 2^F]; w >= 1.
        let s = F - (64 - (w - 1).leading_zeros());
        let e_bits = self.e_bits + s;
        if e_bits > b {
            return None;
        }
        Some(Interval {
            e: (e << s) | (lo >> (F - s)) as u128,
            e_bits,
            lo: (lo << s) & (FULL - 1),
            range: w << s,
        })
    }

    /// The child `[lo + a0, lo + a1)` with its first and last `b`-bit codes
    /// ([`codes`](Self::codes)), or `None` if it holds no `b`-bit code.
    #[inline(always)]
    pub(super) fn child_codes(&self, a0: u64, a1: u64, b: u32) -> Option<(Interval, (u128, u128))> {
        let child = self.child(a0, a1 - a0, b)?;
        Some((child, child.codes(b)?))
    }

    /// Whether some `m`-bit block lies inside the interval.
    #[inline(always)]
    fn fits(&self, m: u32) -> bool {
        if self.e_bits > m {
            return false;
        }
        let sh = m as i32 - self.e_bits as i32 - F as i32;
        if sh >= 0 {
            return true;
        }
        let (first, end) = self.aligned((-sh) as u32);
        end > first
    }

    /// The blocks of `2^k` frame units (`k` in `1..=F`) inside `[lo, lo + range)`: those numbered
    /// `first..end` (none if `end <= first`).
    #[inline(always)]
    fn aligned(&self, k: u32) -> (u64, u64) {
        let first = (self.lo >> k) + ((self.lo & ((1 << k) - 1)) != 0) as u64;
        let end = (self.lo + self.range) >> k;
        (first, end)
    }

    /// The exact shortest code length: the fewest bits of a dyadic block inside the interval.
    pub(super) fn shortest_bits(&self) -> u32 {
        let m0 = self.e_bits + F - (63 - self.range.leading_zeros());
        if self.fits(m0) {
            m0
        } else {
            m0 + 1
        }
    }

    /// `e` aligned to `b` bits; requires `e_bits <= b`.
    #[inline(always)]
    fn base(&self, b: u32) -> u128 {
        if self.e_bits == 0 {
            0
        } else {
            self.e << (b - self.e_bits)
        }
    }

    /// `C`: the first and last `b`-bit codes whose block lies inside, or `None`.
    #[inline(always)]
    pub(super) fn codes(&self, b: u32) -> Option<(u128, u128)> {
        if self.e_bits > b {
            return None;
        }
        let base = self.base(b);
        let sh = b as i32 - self.e_bits as i32 - F as i32;
        if sh >= 0 {
            let sh = sh as u32; // <= 66
            let first = (self.lo as u128) << sh;
            let last = (((self.lo + self.range - 1) as u128) << sh) | ((1u128 << sh) - 1);
            Some((base + first, base + last))
        } else {
            let (first, end) = self.aligned((-sh) as u32);
            if end > first {
                Some((base + first as u128, base + (end - 1) as u128))
            } else {
                None
            }
        }
    }

    /// The block of code `c` in frame units relative to `e`: `[start, end)`. `None` if it is not
    /// inside the interval (cannot happen on a decoding path; checked anyway).
    #[inline(always)]
    pub(super) fn block(&self, b: u32, c: u128) -> Option<(u64, u64)> {
        if self.e_bits > b {
            return None;
        }
        let r = c.checked_sub(self.base(b))?;
        let sh = b as i32 - self.e_bits as i32 - F as i32;
        let (start, end) = if sh >= 0 {
            let v = r >> sh;
            (v, v + 1)
        } else {
            let k = (-sh) as u32;
            if r >> (64 - k) != 0 {
                return None;
            }
            (r << k, (r + 1) << k)
        };
        let (start, end) = (u64::try_from(start).ok()?, u64::try_from(end).ok()?);
        if start < self.lo || end > self.lo + self.range {
            return None;
        }
        Some((start, end))
    }
}

/// Child boundaries of an interval for one CDF: `at(cum) = ⌊range·cum / 2^p⌋`, computed as
/// `hi·cum + ⌊lo·cum / 2^p⌋` with `range = hi·2^p + lo` (exact, in u64: `lo·cum < 2^48`).
#[derive(Clone, Copy)]
pub(super) struct Bounds {
    pub(super) hi: u64,
    lo: u64,
    p: u32,
}

impl Bounds {
    #[inline(always)]
    pub(super) fn at(&self, cum: u32) -> u64 {
        self.hi * cum as u64 + ((self.lo * cum as u64) >> self.p)
    }
}
