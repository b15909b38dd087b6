//! Encoding: [`WindowEncoder`] fills one window greedily; [`encode_windows`] cuts a whole input
//! into windows.

use super::designate::Taken;
use super::interval::Interval;
use super::{check_b, WindowRule};
use crate::coder::cdf::Cdf;
use crate::coder::{max_tz, CoderError};
use std::borrow::Borrow;

/// Encodes one window (the `window` module docs). Feed bytes with [`push`](Self::push) until it
/// refuses one or the input ends, then [`finish`](Self::finish).
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
        let Some((child, (cmin, cmax))) = self.iv.child_codes(a0, a1, self.b) else {
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
/// context resets at every window). Each window's code decodes, with
/// [`decode_window`](super::decode_window) and the same `cdf_source`, to exactly its bytes.
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
