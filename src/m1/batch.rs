//! Many independent M1 contexts advanced together: the interface the coders drive in lockstep
//! ([`M1Batch`]) and its CPU implementation ([`CpuM1Batch`]); the GPU's is
//! `backend::cuda::GpuInt8M1`.

use super::{Int8M1, Int8State, Probs, WINDOW_START};
use crate::coder::{Cdf, CdfQuantizer};
use anyhow::{anyhow, ensure, Result};
use rayon::prelude::*;

/// Independent M1 contexts ("streams": Equal-Info windows, or whole `ac` chunks) advanced
/// together. Under the numeric contract every implementation gives, stream by stream, the bits of
/// [`Int8M1::start`] followed by [`Int8M1::push`], whatever the other streams do in the same
/// step and whatever the order of the feeds.
pub trait M1Batch: Send {
    /// How many streams there are (`0..streams()`).
    fn streams(&self) -> usize;
    /// [`Int8M1::fingerprint`] of the M1 it runs (coders check it against the data's M1).
    fn fingerprint(&self) -> u64;
    /// Empties `stream`'s context; its next feed must be [`WINDOW_START`].
    fn reset(&mut self, stream: usize);
    /// Feeds each `(stream, byte)` (each stream at most once) and returns, in order, the
    /// distribution of each stream's next byte. Refuses a stream out of range or fed twice.
    fn step(&mut self, feeds: &[(usize, u8)]) -> Result<Vec<Probs>>;
    /// Starts a step: the feeds of [`step`](Self::step), whose distributions
    /// [`collect`](Self::collect) returns as integer CDFs under `quantizer`. An implementation
    /// that computes elsewhere (a GPU) returns at once, so the caller can code another batch's
    /// windows meanwhile. One step may be pending: a second `submit` before `collect` is refused,
    /// as are the feeds `step` refuses (the pending step is then dropped).
    fn submit(&mut self, feeds: &[(usize, u8)], quantizer: &CdfQuantizer) -> Result<()>;
    /// The CDFs of the pending step, in feed order (waiting for them); refuses when none is
    /// pending.
    fn collect(&mut self) -> Result<Vec<Cdf>>;
    /// The batches this one is made of, each with its own pending step, which
    /// [`run_tasks`](super::run_tasks) steps in turn: `[self]` for a plain batch, the two of an
    /// [`M1BatchPair`]. A part's stream indices are its own (from 0).
    fn parts(&mut self) -> Vec<&mut dyn M1Batch>;
    /// True when every step runs on the CPU's thread pool (rayon): [`run_tasks`](super::run_tasks)
    /// then drives the batch from one of its worker threads, so neither the steps nor the tasks'
    /// own parallel work hand themselves to the pool from outside. False for a batch with any
    /// GPU part, whose calls stay on the caller's thread.
    fn runs_on_the_cpu_pool(&self) -> bool;
    /// [`submit`](Self::submit) and [`collect`](Self::collect): one step's CDFs.
    fn step_cdfs(&mut self, feeds: &[(usize, u8)], quantizer: &CdfQuantizer) -> Result<Vec<Cdf>> {
        self.submit(feeds, quantizer)?;
        self.collect()
    }
}

/// The one pending step of an [`M1Batch`] (what [`collect`](M1Batch::collect) hands over, or what
/// it needs to): the trait's refusals, for every implementation.
pub struct PendingStep<T>(Option<T>);

impl<T> Default for PendingStep<T> {
    fn default() -> Self {
        PendingStep(None)
    }
}

impl<T> PendingStep<T> {
    /// Refuses a second pending step (call before starting the next one).
    pub fn ensure_idle(&self) -> Result<()> {
        ensure!(
            self.0.is_none(),
            "a step is already pending: collect it before submitting another"
        );
        Ok(())
    }

    /// Records a submitted step (after [`ensure_idle`](Self::ensure_idle)).
    pub fn start(&mut self, step: T) -> Result<()> {
        self.ensure_idle()?;
        self.0 = Some(step);
        Ok(())
    }

    /// The pending step, leaving none.
    pub fn take(&mut self) -> Result<T> {
        self.0
            .take()
            .ok_or_else(|| anyhow!("no step is pending: submit one first"))
    }
}

/// [`M1Batch`] on the CPU: one [`Int8State`] per stream; a step is [`Int8M1::push_rows`] over
/// the fed streams, one share of them per thread (with one stream, its operations spread over
/// the threads); [`run_tasks`](super::run_tasks) steps it from a rayon worker. Also refuses a
/// first feed after a reset other than [`WINDOW_START`].
pub struct CpuM1Batch<'a> {
    m1: &'a Int8M1,
    states: Vec<Int8State>,
    pending: PendingStep<Vec<Cdf>>,
}

impl<'a> CpuM1Batch<'a> {
    pub fn new(m1: &'a Int8M1, streams: usize) -> Self {
        CpuM1Batch {
            m1,
            states: vec![Int8State::default(); streams],
            pending: PendingStep::default(),
        }
    }
}

impl M1Batch for CpuM1Batch<'_> {
    fn streams(&self) -> usize {
        self.states.len()
    }

    fn fingerprint(&self) -> u64 {
        self.m1.fingerprint()
    }

    fn reset(&mut self, stream: usize) {
        self.states[stream].restart(); // every stream runs this batch's one M1
    }

    fn step(&mut self, feeds: &[(usize, u8)]) -> Result<Vec<Probs>> {
        let mut slots: Vec<Option<&mut Int8State>> = self.states.iter_mut().map(Some).collect();
        let mut states = Vec::with_capacity(feeds.len());
        for &(st, byte) in feeds {
            let state = slots
                .get_mut(st)
                .and_then(Option::take)
                .ok_or_else(|| anyhow!("stream {st} out of range or fed twice"))?;
            ensure!(
                !state.is_empty() || byte == WINDOW_START,
                "stream {st} must start with the window-start byte"
            );
            states.push(state);
        }
        let bytes: Vec<u8> = feeds.iter().map(|&(_, b)| b).collect();
        // One share of the streams per thread, each a whole `push_rows`: the threads stay busy
        // through the step instead of meeting at every operation's parallel section (which cost
        // a third of the time at a hundred streams, and 44% with four streams on two cores); a
        // share's own passes still split for idle threads to take. Rows are independent, so the
        // bits are those of one call over all of them.
        let share = states.len().div_ceil(rayon::current_num_threads());
        if share == states.len() {
            return Ok(self.m1.push_rows(&mut states, &bytes));
        }
        let parts: Vec<Vec<Probs>> = states
            .par_chunks_mut(share)
            .zip(bytes.par_chunks(share))
            .map(|(s, b)| self.m1.push_rows(s, b))
            .collect();
        Ok(parts.concat())
    }

    fn submit(&mut self, feeds: &[(usize, u8)], quantizer: &CdfQuantizer) -> Result<()> {
        self.pending.ensure_idle()?;
        let probs = self.step(feeds)?;
        self.pending.start(quantizer.quantize_all(&probs)?)
    }

    fn collect(&mut self) -> Result<Vec<Cdf>> {
        self.pending.take()
    }

    fn parts(&mut self) -> Vec<&mut dyn M1Batch> {
        vec![self]
    }

    fn runs_on_the_cpu_pool(&self) -> bool {
        true
    }
}

/// Two batches of the same M1 as one: streams `0..a.streams()` are `a`'s, the rest `b`'s. Its
/// [`parts`](M1Batch::parts) are the two, so the coders step them in turn: on GPUs, one part
/// computes while the CPU codes the other's windows. Its own `step`, `submit` and `collect`
/// split the feeds between the two and merge the results in feed order. Refuses (at
/// [`new`](Self::new)) two batches of different M1s.
pub struct M1BatchPair<'a> {
    a: Box<dyn M1Batch + 'a>,
    b: Box<dyn M1Batch + 'a>,
    /// The pending step's side of each feed (`true`: `b`).
    pending: PendingStep<Vec<bool>>,
}

/// Feeds split between the two parts: each feed's side, and each part's feeds (local streams).
type Split = (Vec<bool>, Vec<(usize, u8)>, Vec<(usize, u8)>);

impl<'a> M1BatchPair<'a> {
    pub fn new(a: Box<dyn M1Batch + 'a>, b: Box<dyn M1Batch + 'a>) -> Result<Self> {
        ensure!(
            a.fingerprint() == b.fingerprint(),
            "the two batches of a pair run different M1s ({:016x}, {:016x})",
            a.fingerprint(),
            b.fingerprint()
        );
        Ok(M1BatchPair {
            a,
            b,
            pending: PendingStep::default(),
        })
    }

    fn split(&self, feeds: &[(usize, u8)]) -> Result<Split> {
        let (na, mut split) = (self.a.streams(), Split::default());
        for &(st, byte) in feeds {
            ensure!(st < self.streams(), "stream {st} out of range or fed twice");
            split.0.push(st >= na);
            match st < na {
                true => split.1.push((st, byte)),
                false => split.2.push((st - na, byte)),
            }
        }
        Ok(split)
    }

    fn merge<X>(sides: &[bool], a: Vec<X>, b: Vec<X>) -> Vec<X> {
        let (mut a, mut b) = (a.into_iter(), b.into_iter());
        sides
            .iter()
            .map(|&side| match side {
                false => a.next(),
                true => b.next(),
            })
            .collect::<Option<Vec<X>>>()
            .expect("one result per feed")
    }
}

impl M1Batch for M1BatchPair<'_> {
    fn streams(&self) -> usize {
        self.a.streams() + self.b.streams()
    }

    fn fingerprint(&self) -> u64 {
        self.a.fingerprint()
    }

    fn reset(&mut self, stream: usize) {
        match stream.checked_sub(self.a.streams()) {
            None => self.a.reset(stream),
            Some(st) => self.b.reset(st),
        }
    }

    fn step(&mut self, feeds: &[(usize, u8)]) -> Result<Vec<Probs>> {
        let (sides, fa, fb) = self.split(feeds)?;
        let pa = if fa.is_empty() {
            Vec::new()
        } else {
            self.a.step(&fa)?
        };
        let pb = if fb.is_empty() {
            Vec::new()
        } else {
            self.b.step(&fb)?
        };
        Ok(Self::merge(&sides, pa, pb))
    }

    fn submit(&mut self, feeds: &[(usize, u8)], quantizer: &CdfQuantizer) -> Result<()> {
        self.pending.ensure_idle()?;
        let (sides, fa, fb) = self.split(feeds)?;
        if !fa.is_empty() {
            self.a.submit(&fa, quantizer)?;
        }
        if !fb.is_empty() {
            if let Err(e) = self.b.submit(&fb, quantizer) {
                if !fa.is_empty() {
                    let _ = self.a.collect(); // the step is refused whole
                }
                return Err(e);
            }
        }
        self.pending.start(sides)
    }

    fn collect(&mut self) -> Result<Vec<Cdf>> {
        let sides = self.pending.take()?;
        let (ra, rb) = (
            sides.contains(&false).then(|| self.a.collect()),
            sides.contains(&true).then(|| self.b.collect()),
        );
        let (ca, cb) = (ra.transpose()?, rb.transpose()?);
        Ok(Self::merge(
            &sides,
            ca.unwrap_or_default(),
            cb.unwrap_or_default(),
        ))
    }

    fn parts(&mut self) -> Vec<&mut dyn M1Batch> {
        vec![&mut *self.a, &mut *self.b]
    }

    fn runs_on_the_cpu_pool(&self) -> bool {
        self.a.runs_on_the_cpu_pool() && self.b.runs_on_the_cpu_pool()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ParamArena};

    fn bits(p: &[Probs]) -> Vec<u32> {
        p.iter()
            .flat_map(|r| r.iter().map(|x| x.to_bits()))
            .collect()
    }

    /// Streams advanced together give each stream's own bits, whatever else is in the step, and
    /// a reset stream starts a window afresh (the window-start byte first, or the step is refused).
    #[test]
    fn streams_advanced_together_equal_one_at_a_time() {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(16);
        let mut p = ParamArena::init(&cfg, 3);
        p.data.iter_mut().for_each(|x| *x *= 8.0);
        let m1 = Int8M1::new(&cfg, &p).unwrap();
        let texts: [&[u8]; 5] = [
            b"first stream",
            b"a",
            b"third one, longer than the context of sixteen",
            b"",
            b"zz",
        ];
        let alone: Vec<Vec<Probs>> = texts
            .iter()
            .map(|t| {
                let mut st = Int8State::default();
                let mut probs = vec![m1.start(&mut st)];
                probs.extend(t.iter().map(|&b| m1.push(&mut st, b)));
                probs
            })
            .collect();
        let mut batch = CpuM1Batch::new(&m1, texts.len());
        for round in 0..2 {
            let mut together = vec![Vec::new(); texts.len()];
            for k in 0..=texts.iter().map(|t| t.len()).max().unwrap() {
                let feeds: Vec<(usize, u8)> = (0..texts.len())
                    .filter(|&i| k <= texts[i].len())
                    .map(|i| {
                        (
                            i,
                            if k == 0 {
                                WINDOW_START
                            } else {
                                texts[i][k - 1]
                            },
                        )
                    })
                    .collect();
                for (&(i, _), p) in feeds.iter().zip(batch.step(&feeds).unwrap()) {
                    together[i].push(p);
                }
            }
            for (a, b) in alone.iter().zip(&together) {
                assert_eq!(bits(a), bits(b), "round {round}");
            }
            (0..texts.len()).for_each(|s| batch.reset(s));
        }
        let e = batch.step(&[(0, b'x')]).unwrap_err().to_string();
        assert!(
            e.contains("stream 0 must start with the window-start byte"),
            "{e}"
        );
        let e = batch.step(&[(1, 0), (1, 0)]).unwrap_err().to_string();
        assert!(e.contains("stream 1 out of range or fed twice"), "{e}");
        assert!(batch.step(&[(5, 0)]).is_err());
    }

    /// A submitted step's CDFs are those of its distributions; one step may be pending, and
    /// collecting needs one.
    #[test]
    fn submitted_steps_give_the_quantised_distributions_one_at_a_time() {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(16);
        let m1 = Int8M1::new(&cfg, &ParamArena::init(&cfg, 5)).unwrap();
        let q = CdfQuantizer::default();
        let mut by_probs = CpuM1Batch::new(&m1, 2);
        let mut by_cdfs = CpuM1Batch::new(&m1, 2);
        for feeds in [
            [(0, WINDOW_START), (1, WINDOW_START)],
            [(1, b'q'), (0, b'a')],
        ] {
            let want = q.quantize_all(&by_probs.step(&feeds).unwrap()).unwrap();
            by_cdfs.submit(&feeds, &q).unwrap();
            let e = by_cdfs.submit(&feeds, &q).unwrap_err().to_string();
            assert!(e.contains("a step is already pending"), "{e}");
            assert_eq!(by_cdfs.collect().unwrap(), want);
        }
        let e = by_cdfs.collect().unwrap_err().to_string();
        assert!(e.contains("no step is pending"), "{e}");
        assert!(by_cdfs.submit(&[(7, 0)], &q).is_err());
        assert!(
            by_cdfs.collect().is_err(),
            "a refused step leaves nothing pending"
        );
    }

    /// A pair is one batch of its two parts' streams: its steps and CDFs are those of a single
    /// batch, in feed order, whichever part each feed goes to; it refuses what a batch refuses,
    /// leaving nothing pending, and two different M1s.
    #[test]
    fn a_pair_steps_as_one_batch_of_both_parts_streams() {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(16);
        let m1 = Int8M1::new(&cfg, &ParamArena::init(&cfg, 5)).unwrap();
        let q = CdfQuantizer::default();
        let mut single = CpuM1Batch::new(&m1, 3);
        let mut pair = M1BatchPair::new(
            Box::new(CpuM1Batch::new(&m1, 2)),
            Box::new(CpuM1Batch::new(&m1, 1)),
        )
        .unwrap();
        assert_eq!(pair.streams(), 3);
        assert_eq!(pair.parts().len(), 2);
        let start = [(2, WINDOW_START), (0, WINDOW_START), (1, WINDOW_START)];
        assert_eq!(
            bits(&pair.step(&start).unwrap()),
            bits(&single.step(&start).unwrap())
        );
        for feeds in [
            vec![(1, b'x'), (2, b'y')],
            vec![(2, b'z'), (0, b'a'), (1, b'b')],
        ] {
            let want = q.quantize_all(&single.step(&feeds).unwrap()).unwrap();
            pair.submit(&feeds, &q).unwrap();
            assert!(pair.submit(&feeds, &q).is_err(), "one pending step");
            assert_eq!(pair.collect().unwrap(), want);
        }
        assert!(pair.collect().is_err());
        let e = pair.submit(&[(3, 0)], &q).unwrap_err().to_string();
        assert!(e.contains("stream 3 out of range"), "{e}");
        assert!(pair.submit(&[(0, 1), (2, 2), (2, 2)], &q).is_err());
        assert!(
            pair.collect().is_err(),
            "a refused step leaves nothing pending"
        );
        pair.submit(&[(0, 1)], &q).unwrap();
        assert_eq!(pair.collect().unwrap().len(), 1, "the parts were left idle");
        let other = Int8M1::new(&cfg, &ParamArena::init(&cfg, 6)).unwrap();
        let e = M1BatchPair::new(
            Box::new(CpuM1Batch::new(&m1, 1)),
            Box::new(CpuM1Batch::new(&other, 1)),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("different M1s"), "{e}");
    }
}
