//! The Equal-Info window coder: each window of bytes becomes exactly `b` bits, and those `b` bits
//! alone give the window's bytes back.
//!
//! # The interval, kept exactly
//!
//! A window starts from the real interval `[0, 1)`. Byte `s`, coded with a [`Cdf`] of total
//! `T = 2^P`, narrows `[low, low + range)` to `[low + ⌊range·cum[s]/T⌋, low + ⌊range·cum[s+1]/T⌋)`
//! in units of `2^-(E+F)`, `F = 62`. The state is `(e, E, lo, range)`: the real interval is
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
//! (nothing is designated before it) and, with any valid [`Cdf`], any first byte fits `b = 16`
//! (see `super::cdf`), so every window holds at least one byte.
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

use super::cdf::Cdf;
use super::CoderError;
use std::borrow::Borrow;

/// Smallest supported window, in bits.
pub const MIN_WINDOW_BITS: u32 = 16;
/// Largest supported window, in bits.
pub const MAX_WINDOW_BITS: u32 = 128;

/// Frame bits of the exact interval state.
const F: u32 = 62;
const FULL: u64 = 1 << F;

/// Window sizes accepted: multiples of 8 in 16..=128.
pub fn window_bits_supported(b: u32) -> bool {
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&b) && b % 8 == 0
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

/// The exact interval of a window (module docs).
#[derive(Clone, Copy, Debug)]
struct Interval {
    e: u128,
    e_bits: u32,
    lo: u64,
    range: u64,
}

impl Interval {
    const ROOT: Interval = Interval {
        e: 0,
        e_bits: 0,
        lo: 0,
        range: FULL,
    };

    /// The split of `range` that [`Bounds::at`] uses for a CDF of total `2^p`.
    #[inline(always)]
    fn bounds(&self, p: u32) -> Bounds {
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
        let k = (-sh) as u32; // 1..=F
        let first = (self.lo >> k) + ((self.lo & ((1 << k) - 1)) != 0) as u64;
        let end = (self.lo + self.range) >> k;
        end > first
    }

    /// The exact shortest code length: the fewest bits of a dyadic block inside the interval.
    fn shortest_bits(&self) -> u32 {
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
    fn codes(&self, b: u32) -> Option<(u128, u128)> {
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
            let k = (-sh) as u32;
            let first = (self.lo >> k) + ((self.lo & ((1 << k) - 1)) != 0) as u64;
            let end = (self.lo + self.range) >> k;
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
    fn block(&self, b: u32, c: u128) -> Option<(u64, u64)> {
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
struct Bounds {
    hi: u64,
    lo: u64,
    p: u32,
}

impl Bounds {
    #[inline(always)]
    fn at(&self, cum: u32) -> u64 {
        self.hi * cum as u64 + ((self.lo * cum as u64) >> self.p)
    }
}

/// Most trailing zeros in `[cmin, cmax]` (unique), `cmin <= cmax`.
#[inline(always)]
fn max_tz(cmin: u128, cmax: u128) -> u128 {
    if cmin == 0 {
        return 0;
    }
    let k = 127 - ((cmin - 1) ^ cmax).leading_zeros();
    (cmax >> k) << k
}

/// Whether `x` comes before `y` in the designation order: more trailing zeros (0 has 128), then
/// smaller value.
#[inline(always)]
fn precedes(x: u128, y: u128) -> bool {
    let (tx, ty) = (x.trailing_zeros(), y.trailing_zeros());
    tx > ty || (tx == ty && x < y)
}

/// Codes designated to shorter prefixes of the window, sorted by value; codes that left the
/// window's code range are dropped as it narrows (ranges only shrink along a window).
#[derive(Clone, Debug, Default)]
struct Taken(Vec<u128>);

impl Taken {
    /// The taken codes in `[cmin, cmax]`.
    #[inline(always)]
    fn within(&self, cmin: u128, cmax: u128) -> (usize, usize) {
        let v = &self.0;
        if v.len() <= 8 {
            let i = v.iter().take_while(|&&t| t < cmin).count();
            let j = i + v[i..].iter().take_while(|&&t| t <= cmax).count();
            (i, j)
        } else {
            let i = v.partition_point(|&t| t < cmin);
            (i, i + v[i..].partition_point(|&t| t <= cmax))
        }
    }

    /// The designated code of a prefix whose codes are `[cmin, cmax]`: the first free code in
    /// the designation order, i.e. the best of the gaps' own first codes ([`max_tz`]). Cost: one
    /// step per taken code in range.
    #[inline(always)]
    fn designate(&self, cmin: u128, cmax: u128, (i, j): (usize, usize)) -> Option<u128> {
        let taken = &self.0[i..j];
        let first = max_tz(cmin, cmax);
        let free = if taken.len() <= 8 {
            !taken.contains(&first)
        } else {
            taken.binary_search(&first).is_err()
        };
        if free {
            Some(first)
        } else {
            Self::best_gap(cmin, cmax, taken)
        }
    }

    /// The first code in the designation order among the gaps between the `taken` codes
    /// (sorted, inside `[cmin, cmax]`): each gap's own first code is its [`max_tz`].
    #[inline(never)]
    fn best_gap(cmin: u128, cmax: u128, taken: &[u128]) -> Option<u128> {
        let mut best: Option<u128> = None;
        let mut consider = |c: u128| {
            if best.map_or(true, |b| precedes(c, b)) {
                best = Some(c);
            }
        };
        let mut lo = Some(cmin);
        for &x in taken {
            if let Some(l) = lo {
                if x > l {
                    consider(max_tz(l, x - 1));
                }
            }
            lo = x.checked_add(1);
        }
        if let Some(l) = lo {
            if l <= cmax {
                consider(max_tz(l, cmax));
            }
        }
        best
    }

    /// Keep only the codes in `[i, j)` and add `code` (absent).
    #[inline(always)]
    fn narrow_insert(&mut self, (i, j): (usize, usize), code: Option<u128>) {
        self.0.truncate(j);
        if i > 0 {
            self.0.drain(..i);
        }
        if let Some(c) = code {
            let at = self.0.iter().take_while(|&&t| t < c).count();
            self.0.insert(at, c);
        }
    }
}

/// Encodes one window (module docs). Feed bytes with [`push`](Self::push) until it refuses one
/// or the input ends, then [`finish`](Self::finish).
///
/// Guarantees: after any sequence of pushes, the window (the accepted bytes) is non-empty after
/// the first push and [`finish`](Self::finish)'s code decodes to exactly those bytes with the
/// same CDFs. Refuses: an unsupported `b`; finishing an empty window.
#[derive(Clone, Debug)]
pub struct WindowEncoder {
    b: u32,
    rule: WindowRule,
    iv: Interval,
    taken: Taken,
    code: u128,
    len: usize,
    /// Delay rule: the shortest prefix with the current code (the bytes the window emits).
    run_start: usize,
    backoffs: u32,
}

impl WindowEncoder {
    /// A fresh window of `b` bits (a multiple of 8 in 16..=128), designated-code rule.
    pub fn new(b: u32) -> Result<Self, CoderError> {
        Self::with_rule(b, WindowRule::Designated)
    }

    /// A fresh window of `b` bits under `rule`.
    pub fn with_rule(b: u32, rule: WindowRule) -> Result<Self, CoderError> {
        check_b(b)?;
        Ok(WindowEncoder {
            b,
            rule,
            iv: Interval::ROOT,
            taken: Taken::default(),
            code: 0,
            len: 0,
            run_start: 0,
            backoffs: 0,
        })
    }

    /// Window size in bits.
    pub fn window_bits(&self) -> u32 {
        self.b
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes the window holds if it ended now: [`len`](Self::len), except under
    /// [`WindowRule::Delay`], where accepted trailing bytes that left the code unchanged are
    /// deferred (the caller starts the next window with them).
    pub fn window_len(&self) -> usize {
        match self.rule {
            WindowRule::Designated => self.len,
            WindowRule::Delay => self.run_start,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Exact shortest code length of the window so far, in bits (0 for an empty window).
    pub fn bits(&self) -> u32 {
        self.iv.shortest_bits()
    }

    /// Pushes refused although the byte fit in `b` bits (0 or 1 for a window used as documented).
    pub fn backoffs(&self) -> u32 {
        self.backoffs
    }

    /// The window's code if it ended now (`None` while empty).
    pub fn code(&self) -> Option<u128> {
        (self.len > 0).then_some(self.code)
    }

    /// Append `byte`, coded with `cdf` (the distribution given the window's bytes so far).
    /// Returns `false`, leaving the window unchanged, when the longer window has no `b`-bit code
    /// or all its codes are designated to shorter prefixes (a back-off). The first byte of a
    /// window is always accepted.
    #[inline]
    pub fn push(&mut self, cdf: &Cdf, byte: u8) -> bool {
        let cum = cdf.cumulative();
        let p = cdf.total_bits();
        let bounds = self.iv.bounds(p);
        let a0 = bounds.at(cum[byte as usize]);
        let a1 = bounds.at(cum[byte as usize + 1]);
        let Some(child) = self.iv.child(a0, a1 - a0, self.b) else {
            return false;
        };
        let Some((cmin, cmax)) = child.codes(self.b) else {
            return false;
        };
        if self.rule == WindowRule::Delay {
            let code = max_tz(cmin, cmax);
            if self.len == 0 || code != self.code {
                self.run_start = self.len + 1;
            }
            self.iv = child;
            self.code = code;
            self.len += 1;
            return true;
        }
        let span = self.taken.within(cmin, cmax);
        let Some(code) = self.taken.designate(cmin, cmax, span) else {
            self.backoffs += 1;
            return false;
        };
        self.taken.narrow_insert(span, Some(code));
        self.iv = child;
        self.code = code;
        self.len += 1;
        true
    }

    /// The window's `b`-bit code (in the low `b` bits; MSB first means the bit `b-1` first).
    /// Refuses an empty window.
    pub fn finish(self) -> Result<u128, CoderError> {
        self.code().ok_or(CoderError::EmptyWindow)
    }
}

/// How a window's decoding ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowEnd {
    /// The code is the designated code of the decoded bytes: an encoder could have produced it,
    /// and re-encoding the bytes as a whole input gives this code back.
    Matched,
    /// The code's block straddled two bytes' intervals: the code is not an encoder output.
    Exhausted,
}

/// Decodes one window step by step, so that callers can batch the CDF computation of many
/// windows (see [`decode_window`] for the one-call form).
///
/// Guarantees: for every supported `b` and every code below `2^b`, [`step`](Self::step) never
/// panics and the window ends after finitely many steps (at most `b / -log2(1 - 255·f/T)` bytes
/// for the smallest floor `f` used). Refuses: an unsupported `b`, a code of more than `b` bits.
#[derive(Clone, Debug)]
pub struct WindowDecoder {
    b: u32,
    rule: WindowRule,
    c: u128,
    iv: Interval,
    taken: Taken,
    bytes: Vec<u8>,
    end: Option<WindowEnd>,
}

impl WindowDecoder {
    /// Decodes `code` under the designated-code rule.
    pub fn new(b: u32, code: u128) -> Result<Self, CoderError> {
        Self::with_rule(b, code, WindowRule::Designated)
    }

    /// Decodes `code` under `rule` (the encoder's).
    pub fn with_rule(b: u32, code: u128, rule: WindowRule) -> Result<Self, CoderError> {
        check_b(b)?;
        let mut dec = WindowDecoder {
            b,
            rule,
            c: 0,
            iv: Interval::ROOT,
            taken: Taken::default(),
            bytes: Vec::new(),
            end: None,
        };
        dec.reset(code)?;
        Ok(dec)
    }

    /// Starts over on the next window's `code` (same `b` and rule), keeping the buffers: the
    /// bytes decoded so far are dropped. Refuses a code of more than `b` bits.
    pub fn reset(&mut self, code: u128) -> Result<(), CoderError> {
        if self.b < 128 && code >> self.b != 0 {
            return Err(CoderError::CodeTooWide { code, bits: self.b });
        }
        self.c = code;
        self.iv = Interval::ROOT;
        self.taken.0.clear();
        self.bytes.clear();
        self.end = None;
        Ok(())
    }

    /// Whether the window has ended (no more CDFs needed).
    pub fn is_done(&self) -> bool {
        self.end.is_some()
    }

    /// How the window ended, once it has.
    pub fn end(&self) -> Option<WindowEnd> {
        self.end
    }

    /// The bytes decoded so far: the context for the next CDF.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Decode the next byte with `cdf` (the distribution given [`bytes`](Self::bytes)). Returns
    /// `None` if the window had already ended or ends here without a byte.
    #[inline]
    pub fn step(&mut self, cdf: &Cdf) -> Option<u8> {
        if self.end.is_some() {
            return None;
        }
        let Some((start, end)) = self.iv.block(self.b, self.c) else {
            self.end = Some(WindowEnd::Exhausted);
            return None;
        };
        let cum = cdf.cumulative();
        let p = cdf.total_bits();
        let d = start - self.iv.lo;
        let bounds = self.iv.bounds(p);
        // The byte is the largest s with at(cum[s]) <= d. With t0 = ⌊d / hi⌋ (clamped below T):
        // at(t) >= hi·t > d for t > t0, and at(t0 - 1) <= hi·t0 - hi + t0 <= d since
        // hi >= 2^37 > T. So the largest target t with at(t) <= d is t0 or t0 - 1: look up t0's
        // byte, then step back once if its start is past d.
        let t0 = (d / bounds.hi).min(cdf.total() as u64 - 1) as u32;
        let mut s = cdf.symbol_for(t0) as usize;
        if bounds.at(cum[s]) > d {
            s -= 1; // s > 0: at(cum[0]) = 0 <= d
        }
        let a0 = bounds.at(cum[s]);
        let a1 = bounds.at(cum[s + 1]);
        if end - self.iv.lo > a1 {
            self.end = Some(WindowEnd::Exhausted);
            return None;
        }
        let child = self.iv.child(a0, a1 - a0, self.b);
        let Some((child, (cmin, cmax))) = child.and_then(|ch| ch.codes(self.b).map(|r| (ch, r)))
        else {
            self.end = Some(WindowEnd::Exhausted); // unreachable: the block is inside the child
            return None;
        };
        self.iv = child;
        self.bytes.push(s as u8);
        if self.rule == WindowRule::Delay {
            if max_tz(cmin, cmax) == self.c {
                self.end = Some(WindowEnd::Matched);
            }
            return Some(s as u8);
        }
        let span = self.taken.within(cmin, cmax);
        match self.taken.designate(cmin, cmax, span) {
            Some(code) if code == self.c => self.end = Some(WindowEnd::Matched),
            code => self.taken.narrow_insert(span, code),
        }
        Some(s as u8)
    }
}

/// Decode a `b`-bit window: `cdf_source(prefix)` gives the distribution of the next byte after
/// `prefix` (the window's bytes so far). It is called once per decoded byte, plus once more if
/// the window ends by [`WindowEnd::Exhausted`]. Refuses only an unsupported `b` or a code wider
/// than `b` bits.
pub fn decode_window<Fs, R>(b: u32, code: u128, cdf_source: Fs) -> Result<Vec<u8>, CoderError>
where
    Fs: FnMut(&[u8]) -> R,
    R: Borrow<Cdf>,
{
    let mut out = Vec::new();
    decode_windows(b, &[code], &mut out, cdf_source)?;
    Ok(out)
}

/// Decode consecutive `b`-bit windows, appending their bytes to `out`; `cdf_source` is as for
/// [`decode_window`] (the prefix is the current window's bytes). One decoder serves every window,
/// so no allocation happens per window. Refuses an unsupported `b` or a code wider than `b` bits
/// (bytes of the windows before it stay in `out`).
pub fn decode_windows<Fs, R>(
    b: u32,
    codes: &[u128],
    out: &mut Vec<u8>,
    mut cdf_source: Fs,
) -> Result<(), CoderError>
where
    Fs: FnMut(&[u8]) -> R,
    R: Borrow<Cdf>,
{
    let mut dec = WindowDecoder::new(b, 0)?;
    for &code in codes {
        dec.reset(code)?;
        while !dec.is_done() {
            let cdf = cdf_source(dec.bytes());
            dec.step(cdf.borrow());
        }
        out.extend_from_slice(dec.bytes());
    }
    Ok(())
}

/// A whole input cut into windows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedWindows {
    /// One `b`-bit code per window.
    pub codes: Vec<u128>,
    /// Bytes per window (each at least 1; they sum to the input length).
    pub lengths: Vec<u32>,
    /// Bytes refused by a back-off (each then starts the next window).
    pub backoffs: u64,
}

/// Cut `data` into greedy Equal-Info windows of `b` bits. `cdf_source(prefix)` gives the
/// distribution of the next byte after `prefix`, the current window's bytes so far (so the model
/// context resets at every window). Each window's code decodes, with [`decode_window`] and the
/// same `cdf_source`, to exactly its bytes.
pub fn encode_windows<Fs, R>(
    b: u32,
    data: &[u8],
    mut cdf_source: Fs,
) -> Result<EncodedWindows, CoderError>
where
    Fs: FnMut(&[u8]) -> R,
    R: Borrow<Cdf>,
{
    check_b(b)?;
    let mut out = EncodedWindows::default();
    let mut i = 0;
    while i < data.len() {
        let start = i;
        let mut enc = WindowEncoder::new(b)?;
        while i < data.len() {
            let cdf = cdf_source(&data[start..i]);
            if !enc.push(cdf.borrow(), data[i]) {
                break;
            }
            i += 1;
        }
        out.backoffs += enc.backoffs() as u64;
        if i == start {
            return Err(CoderError::NoProgress(start));
        }
        out.codes.push(enc.finish()?);
        out.lengths.push((i - start) as u32);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::cdf::{peaked, CdfQuantizer};

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

    fn designate(cmin: u128, cmax: u128, taken: &[u128]) -> Option<u128> {
        let mut t = Taken::default();
        for &c in taken {
            if !t.0.contains(&c) {
                t.narrow_insert((0, t.0.len()), Some(c));
            }
        }
        let span = t.within(cmin, cmax);
        t.designate(cmin, cmax, span)
    }

    #[test]
    fn designate_order() {
        assert_eq!(designate(0, 10, &[]), Some(0));
        assert_eq!(designate(3, 10, &[]), Some(8));
        assert_eq!(designate(3, 10, &[8]), Some(4));
        assert_eq!(designate(3, 10, &[4, 8]), Some(6));
        assert_eq!(designate(3, 10, &[4, 6, 8]), Some(10));
        assert_eq!(designate(3, 10, &[4, 6, 8, 10]), Some(3));
        assert_eq!(designate(3, 10, &[3, 4, 6, 8, 10]), Some(5));
        assert_eq!(designate(3, 10, &[3, 4, 5, 6, 8, 10]), Some(7));
        assert_eq!(designate(3, 10, &[3, 4, 5, 6, 7, 8, 10]), Some(9));
        assert_eq!(designate(3, 10, &[3, 4, 5, 6, 7, 8, 9, 10]), None);
        assert_eq!(designate(3, 4, &[3, 4]), None);
        // Codes outside the range do not count.
        assert_eq!(designate(3, 10, &[0, 1, 2, 16, 12, 8]), Some(4));
        assert_eq!(designate(0, u128::MAX, &[0]), Some(1 << 127));
        assert_eq!(designate(0, u128::MAX, &[0, 1 << 127]), Some(1 << 126));
        assert_eq!(designate(u128::MAX, u128::MAX, &[]), Some(u128::MAX));
        assert_eq!(
            designate(u128::MAX - 1, u128::MAX, &[u128::MAX - 1]),
            Some(u128::MAX)
        );
        assert_eq!(
            designate(u128::MAX - 1, u128::MAX, &[u128::MAX - 1, u128::MAX]),
            None
        );
    }

    /// The designated code agrees with a brute-force scan of the order.
    #[test]
    fn designate_matches_brute_force() {
        let mut s = 0x853C_49E6_748F_EA9Bu64;
        let mut next = |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        for _ in 0..3000 {
            let cmin = next(200) as u128;
            let cmax = cmin + next(60) as u128;
            let taken: Vec<u128> = (0..next(40)).map(|_| next(270) as u128).collect();
            let mut uniq = taken.clone();
            uniq.sort();
            uniq.dedup();
            let mut order: Vec<u128> = (cmin..=cmax).collect();
            order.sort_by_key(|&c| (128 - c.trailing_zeros(), c));
            let want = order.into_iter().find(|c| !uniq.contains(c));
            assert_eq!(
                designate(cmin, cmax, &uniq),
                want,
                "{cmin}..={cmax} {uniq:?}"
            );
        }
    }
}
