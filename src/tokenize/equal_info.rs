//! EqualInfoAC (paper §3.3): text cut into windows that each code to exactly `b` bits under M1,
//! with M1's context reset at every window. M1 runs on its exact path ([`Int8M1`]), so the
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

use crate::coder::{Cdf, CdfQuantizer, EncodedWindows, WindowDecoder, WindowEncoder, WindowRule};
use crate::m1::{run_tasks, CpuM1Batch, Feed, Int8M1, M1Batch, StreamTask};
use anyhow::{ensure, Result};

/// M1 and a window width, ready to code.
pub struct EqualInfo<'a> {
    m1: &'a Int8M1,
    b: u32,
    rule: WindowRule,
    quantizer: CdfQuantizer,
}

impl<'a> EqualInfo<'a> {
    /// Refuses a window width the coder does not support (16..=128, a multiple of 8).
    pub fn new(m1: &'a Int8M1, b: u32) -> Result<Self> {
        Self::with_rule(m1, b, WindowRule::Designated)
    }

    /// As [`new`](Self::new), with the window termination rule `rule`.
    pub fn with_rule(m1: &'a Int8M1, b: u32, rule: WindowRule) -> Result<Self> {
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

    /// Cuts `data` into windows: one `b`-bit code and one byte length per window.
    pub fn encode(&self, data: &[u8]) -> Result<EncodedWindows> {
        let mut out = self.encode_chunks(&mut CpuM1Batch::new(self.m1, 1), &[data])?;
        Ok(out.pop().expect("one chunk"))
    }

    /// [`encode`](Self::encode) of many chunks at once on `batch` (built from this M1), one
    /// stream per chunk cutting its windows one byte per step ([`run_tasks`]): the same windows as
    /// chunk by chunk (this is also how one chunk is coded).
    pub fn encode_chunks(
        &self,
        batch: &mut dyn M1Batch,
        chunks: &[&[u8]],
    ) -> Result<Vec<EncodedWindows>> {
        self.check_batch(batch)?;
        let tasks = chunks.iter().map(|&data| Cutter::new(self, data)).collect();
        Ok(run_tasks(batch, &self.quantizer, tasks)?
            .into_iter()
            .map(|c| c.out)
            .collect())
    }

    /// The bytes of one window. Any `b`-bit code decodes to some byte string (possibly empty for
    /// a code no encoder writes); refuses only a code wider than `b` bits.
    pub fn decode_window(&self, code: u128) -> Result<Vec<u8>> {
        let mut out = self.decode_codes(&mut CpuM1Batch::new(self.m1, 1), &[code])?;
        Ok(out.pop().expect("one window"))
    }

    /// The bytes of consecutive windows.
    pub fn decode(&self, codes: &[u128]) -> Result<Vec<u8>> {
        Ok(self
            .decode_codes(&mut CpuM1Batch::new(self.m1, 1), codes)?
            .concat())
    }

    /// Each window's bytes, decoded on `batch` (built from this M1): windows are independent, so
    /// every stream takes the next undecoded window as soon as its last one ends.
    pub fn decode_codes(&self, batch: &mut dyn M1Batch, codes: &[u128]) -> Result<Vec<Vec<u8>>> {
        self.check_batch(batch)?;
        let tasks = codes
            .iter()
            .map(|&code| {
                Ok(WindowDecoding {
                    dec: WindowDecoder::with_rule(self.b, code, self.rule)?,
                    next: Feed::Open,
                })
            })
            .collect::<Result<_>>()?;
        Ok(run_tasks(batch, &self.quantizer, tasks)?
            .into_iter()
            .map(|w| w.dec.into_bytes())
            .collect())
    }

    /// Refuses a batch running another M1 (its distributions would code other windows).
    fn check_batch(&self, batch: &dyn M1Batch) -> Result<()> {
        ensure!(batch.streams() > 0, "an M1 batch without streams");
        ensure!(
            batch.fingerprint() == self.m1.fingerprint(),
            "the M1 batch runs M1 {:016x}, the coder's M1 is {:016x}",
            batch.fingerprint(),
            self.m1.fingerprint()
        );
        Ok(())
    }
}

/// One chunk being cut into windows, one M1 distribution at a time: the greedy rule of
/// [`EqualInfo`] as a state machine, so many chunks can share an [`M1Batch`].
struct Cutter<'e, 'd> {
    ei: &'e EqualInfo<'e>,
    data: &'d [u8],
    /// The next byte to code.
    pos: usize,
    /// Where the open window began.
    start: usize,
    /// The open window, if any.
    enc: Option<WindowEncoder>,
    out: EncodedWindows,
}

impl<'e, 'd> Cutter<'e, 'd> {
    fn new(ei: &'e EqualInfo<'e>, data: &'d [u8]) -> Self {
        Cutter {
            ei,
            data,
            pos: 0,
            start: 0,
            enc: None,
            out: EncodedWindows::default(),
        }
    }
}

impl StreamTask for Cutter<'_, '_> {
    /// For the distribution of `data[pos]`: a fresh context when a window opens, else the byte
    /// before; done once all is coded.
    fn next_feed(&self) -> Feed {
        match self.enc {
            Some(_) => Feed::Byte(self.data[self.pos - 1]),
            None if self.pos < self.data.len() => Feed::Open,
            None => Feed::Done,
        }
    }

    /// Codes `data[pos]` with `cdf` (M1's distribution after the feed, quantised), closing the
    /// window when the byte does not fit or the data ends.
    fn take(&mut self, cdf: &Cdf) -> Result<()> {
        let ei = self.ei;
        let enc = match &mut self.enc {
            Some(enc) => enc,
            None => {
                self.start = self.pos;
                self.enc.insert(WindowEncoder::with_rule(ei.b, ei.rule)?)
            }
        };
        if enc.push(cdf, self.data[self.pos]) {
            self.pos += 1;
            if self.pos < self.data.len() {
                return Ok(());
            }
        }
        let enc = self.enc.take().expect("opened above");
        ensure!(
            self.pos > self.start,
            "byte {:#04x} at offset {} does not fit a fresh {}-bit window",
            self.data[self.start],
            self.start,
            ei.b
        );
        // Delay: bytes accepted after the window's last code change start the next window.
        let deferred = self.pos - self.start - enc.window_len();
        self.pos -= deferred;
        self.out.backoffs += enc.backoffs() as u64 + deferred as u64;
        self.out.codes.push(enc.finish()?);
        self.out.lengths.push((self.pos - self.start) as u32);
        Ok(())
    }
}

/// One window being decoded: what to feed next, [`Feed::Done`] once its bytes are out.
struct WindowDecoding {
    dec: WindowDecoder,
    next: Feed,
}

impl StreamTask for WindowDecoding {
    fn next_feed(&self) -> Feed {
        self.next
    }

    fn take(&mut self, cdf: &Cdf) -> Result<()> {
        self.next = match self.dec.step(cdf) {
            Some(b) if !self.dec.is_done() => Feed::Byte(b),
            _ => Feed::Done,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ParamArena};
    use crate::rng::Rng;

    fn m1() -> Int8M1 {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(256); // contract 3 attends over a recorded context
        let mut p = ParamArena::init(&cfg, 5);
        p.data.iter_mut().for_each(|x| *x *= 8.0); // sharper distributions: varied window lengths
        Int8M1::new(&cfg, &p).unwrap()
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

    /// Chunks cut in lockstep on a shared batch give the windows of the coder's own reference
    /// cutter (`coder::encode_windows`, M1 computed all at once per prefix), and the windows decode
    /// back side by side; the Delay rule gives one-stream coding's windows.
    #[test]
    fn lockstep_chunks_equal_the_reference_cutter() {
        let m1 = m1();
        let text = &include_bytes!("../../data/sample-books.txt")[9000..10500];
        let chunks: Vec<&[u8]> = vec![
            &text[..400],
            b"",
            &text[400..401],
            &[7u8; 300],
            &text[401..900],
            &text[900..],
            b"ab",
        ];
        let q = CdfQuantizer::default();
        let reference = |data: &[u8]| {
            crate::coder::encode_windows(16, data, |prefix: &[u8]| {
                q.quantize(m1.window_probs(prefix).last().unwrap()).unwrap()
            })
            .unwrap()
        };
        let ei = EqualInfo::new(&m1, 16).unwrap();
        // Three streams for seven chunks: groups, idle streams and resets all happen.
        let mut batch = CpuM1Batch::new(&m1, 3);
        let cut = ei.encode_chunks(&mut batch, &chunks).unwrap();
        for (c, w) in chunks.iter().zip(&cut) {
            let r = reference(c);
            assert_eq!(
                (&w.codes, &w.lengths, w.backoffs),
                (&r.codes, &r.lengths, r.backoffs)
            );
        }
        let codes: Vec<u128> = cut.iter().flat_map(|w| w.codes.clone()).collect();
        let back = ei.decode_codes(&mut batch, &codes).unwrap().concat();
        assert_eq!(back, chunks.concat());

        let delay = EqualInfo::with_rule(&m1, 16, WindowRule::Delay).unwrap();
        let cut = delay.encode_chunks(&mut batch, &chunks).unwrap();
        for (c, w) in chunks.iter().zip(&cut) {
            assert_eq!(w.codes, delay.encode(c).unwrap().codes);
            assert_eq!(delay.decode(&w.codes).unwrap(), *c);
        }

        // A batch of another M1 is refused.
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(256); // contract 3 attends over a recorded context
        let other = Int8M1::new(&cfg, &ParamArena::init(&cfg, 6)).unwrap();
        let mut wrong = CpuM1Batch::new(&other, 2);
        assert!(ei.encode_chunks(&mut wrong, &chunks).is_err());
        assert!(ei.decode_codes(&mut wrong, &codes).is_err());
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
