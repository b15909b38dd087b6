//! Decoding: [`WindowDecoder`] walks one code down the tree step by step; [`decode_window`] and
//! [`decode_windows`] drive it with a CDF callback.

use super::designate::Taken;
use super::interval::Interval;
use super::{check_b, WindowRule};
use crate::coder::cdf::Cdf;
use crate::coder::{check_code_width, max_tz, CoderError};
use std::borrow::Borrow;

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
        check_code_width(code, self.b)?;
        self.c = code;
        self.iv = Interval::ROOT;
        self.taken.clear();
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
        let Some((child, (cmin, cmax))) = self.iv.child_codes(a0, a1, self.b) else {
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
