//! EqualInfoAC (paper §3.3): text cut into windows that each code to exactly `b` bits under M1,
//! with M1's context reset at every window. M1 runs on its exact path ([`ExactM1`]), so the
//! probabilities, and so the codes, are the same on every machine: any code this module writes
//! decodes back to exactly its bytes.
//!
//! The greedy rule: a window takes bytes while the window coder can still represent them in `b`
//! bits; the first byte it refuses starts the next window. Every byte fits a fresh window (the
//! coder's floor guarantees it), so windows are never empty.
//!
//! Two termination rules ([`WindowRule`]): the default designated-code rule, and the paper's
//! "Delay" variant (App. A.5, Table 17): a window never ends with a byte that encodes to all zeros
//! (its prefix's zero-padded shortest code is unchanged by it); such trailing bytes are deferred
//! to the next window, and the decoder returns the fewest bytes whose code is the window's.
//! Deferred bytes are counted with the back-offs.

use crate::coder::{CdfQuantizer, EncodedWindows, WindowDecoder, WindowEncoder, WindowRule};
use crate::m1::{ExactM1, Probs, WindowState};
use anyhow::{ensure, Result};

/// M1 and a window width, ready to code.
pub struct EqualInfo<'a> {
    m1: &'a ExactM1,
    b: u32,
    rule: WindowRule,
    quantizer: CdfQuantizer,
}

impl<'a> EqualInfo<'a> {
    /// Refuses a window width the coder does not support (16..=128, a multiple of 8).
    pub fn new(m1: &'a ExactM1, b: u32) -> Result<Self> {
        Self::with_rule(m1, b, WindowRule::Designated)
    }

    /// As [`new`](Self::new), with the window termination rule `rule`.
    pub fn with_rule(m1: &'a ExactM1, b: u32, rule: WindowRule) -> Result<Self> {
        WindowEncoder::new(b)?;
        Ok(EqualInfo {
            m1,
            b,
            rule,
            quantizer: CdfQuantizer::default(),
        })
    }

    pub fn rule(&self) -> WindowRule {
        self.rule
    }

    pub fn window_bits(&self) -> u32 {
        self.b
    }

    fn cdf(&self, probs: &Probs) -> Result<crate::coder::Cdf> {
        Ok(self.quantizer.quantize(probs)?)
    }

    /// Cuts `data` into windows: one `b`-bit code and one byte length per window.
    pub fn encode(&self, data: &[u8]) -> Result<EncodedWindows> {
        let mut out = EncodedWindows::default();
        let mut state = WindowState::default();
        let mut pos = 0;
        while pos < data.len() {
            let start = pos;
            let mut enc = WindowEncoder::with_rule(self.b, self.rule)?;
            let mut probs = self.m1.start(&mut state);
            while pos < data.len() && enc.push(&self.cdf(&probs)?, data[pos]) {
                pos += 1;
                if pos < data.len() {
                    probs = self.m1.push(&mut state, data[pos - 1]);
                }
            }
            ensure!(
                pos > start,
                "byte {:#04x} at offset {start} does not fit a fresh {}-bit window",
                data[start],
                self.b
            );
            // Delay: bytes accepted after the window's last code change start the next window.
            let deferred = pos - start - enc.window_len();
            pos -= deferred;
            out.backoffs += enc.backoffs() as u64 + deferred as u64;
            out.codes.push(enc.finish()?);
            out.lengths.push((pos - start) as u32);
        }
        Ok(out)
    }

    /// The bytes of one window. Any `b`-bit code decodes to some byte string (possibly empty for
    /// a code no encoder writes); refuses only a code wider than `b` bits.
    pub fn decode_window(&self, code: u128) -> Result<Vec<u8>> {
        let mut dec = WindowDecoder::with_rule(self.b, code, self.rule)?;
        let mut state = WindowState::default();
        let mut probs = self.m1.start(&mut state);
        while let Some(byte) = dec.step(&self.cdf(&probs)?) {
            if dec.is_done() {
                break;
            }
            probs = self.m1.push(&mut state, byte);
        }
        Ok(dec.into_bytes())
    }

    /// The bytes of consecutive windows.
    pub fn decode(&self, codes: &[u128]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for &c in codes {
            out.extend(self.decode_window(c)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ParamArena};
    use crate::rng::Rng;

    fn m1() -> ExactM1 {
        let cfg = ModelConfig::preset("tiny", None).unwrap();
        let mut p = ParamArena::init(&cfg, 5);
        p.data.iter_mut().for_each(|x| *x *= 8.0); // sharper distributions: varied window lengths
        ExactM1::new(&cfg, &p).unwrap()
    }

    #[test]
    fn every_input_round_trips_for_every_width() {
        let m1 = m1();
        let text = &include_bytes!("../../data/sample-books.txt")[5000..6500];
        let mut r = Rng::new(4);
        let random: Vec<u8> = (0..300).map(|_| r.below(256) as u8).collect();
        let inputs: [&[u8]; 5] = [text, &random, &[7u8; 400], b"x", b""];
        for (b, rule) in [16, 24, 32, 64, 128]
            .into_iter()
            .flat_map(|b| [(b, WindowRule::Designated), (b, WindowRule::Delay)])
        {
            let ei = EqualInfo::with_rule(&m1, b, rule).unwrap();
            for data in inputs {
                let w = ei.encode(data).unwrap();
                assert_eq!(
                    w.lengths.iter().map(|&l| l as usize).sum::<usize>(),
                    data.len()
                );
                assert!(w.lengths.iter().all(|&l| l >= 1));
                assert!(w.codes.iter().all(|&c| b == 128 || c >> b == 0));
                for (i, &c) in w.codes.iter().enumerate() {
                    let start: usize = w.lengths[..i].iter().map(|&l| l as usize).sum();
                    assert_eq!(
                        ei.decode_window(c).unwrap(),
                        &data[start..start + w.lengths[i] as usize],
                        "b={b} {rule:?} window {i}"
                    );
                }
                assert_eq!(ei.decode(&w.codes).unwrap(), data, "b={b}");
            }
        }
        assert!(EqualInfo::new(&m1, 12).is_err());
    }

    #[test]
    fn random_codes_decode_without_error() {
        let m1 = m1();
        let ei = EqualInfo::new(&m1, 16).unwrap();
        let mut r = Rng::new(8);
        for _ in 0..300 {
            let code = r.below(1 << 16) as u128;
            let bytes = ei.decode_window(code).unwrap();
            assert!(bytes.len() < 10_000);
        }
        assert!(ei.decode_window(1 << 16).is_err());
    }
}
