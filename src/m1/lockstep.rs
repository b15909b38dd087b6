//! The coders' loop over an [`M1Batch`]: many independent tasks (chunks to code, windows to
//! decode), each carried by one stream from its first byte to its last, all streams advanced one
//! position per step. A stream whose task ends takes the next task at once.
//!
//! A batch made of parts ([`M1Batch::parts`], e.g. two GPUs' worth of streams in an
//! [`M1BatchPair`](super::M1BatchPair)) steps its parts in turn: part A's step is submitted, then
//! part B's CDFs are taken by its tasks (in parallel) while A computes, then A's are collected,
//! and so on. So a GPU computes one part's probabilities while the CPU's coder cuts the other's
//! windows. Each stream's probabilities depend only on what it was fed since its reset (the
//! numeric contract), so the results are the same whatever the parts, streams and schedule.

use super::{M1Batch, WINDOW_START};
use crate::coder::{Cdf, CdfQuantizer};
use crate::numerics::on_a_worker;
use anyhow::Result;

/// What a task feeds M1 next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// A fresh context: the stream is reset and fed [`WINDOW_START`].
    Open,
    /// The byte its next distribution follows.
    Byte(u8),
    /// Nothing: the task is finished.
    Done,
}

/// One task: a state machine that codes one byte (or decodes one) per M1 distribution.
pub trait StreamTask: Send {
    /// What to feed for the next distribution. A task's first feed is [`Feed::Open`] (or
    /// [`Feed::Done`] when it has nothing to do).
    fn next_feed(&self) -> Feed;
    /// Takes the distribution that followed the last feed, as an integer CDF.
    fn take(&mut self, cdf: &Cdf) -> Result<()>;
}

/// Runs every task to its end on `batch` (module docs) and returns them, finished, in order.
/// Stops at the first error (a task's, or the batch's), leaving no step pending on the batch.
/// A batch wholly on the CPU is driven from a rayon worker thread
/// ([`runs_on_the_cpu_pool`](M1Batch::runs_on_the_cpu_pool)).
pub fn run_tasks<T: StreamTask>(
    batch: &mut dyn M1Batch,
    quantizer: &CdfQuantizer,
    mut tasks: Vec<T>,
) -> Result<Vec<T>> {
    let on_the_pool = batch.runs_on_the_cpu_pool();
    let mut parts = batch.parts();
    let mut lanes: Vec<Lanes> = parts
        .iter()
        .map(|p| Lanes {
            carried: vec![None; p.streams()],
            fed: Vec::new(),
        })
        .collect();
    let mut run = || drive(&mut parts, &mut lanes, quantizer, &mut tasks);
    let result = if on_the_pool { on_a_worker(run) } else { run() };
    if result.is_err() {
        // Whatever the error, a later run on this batch must not find a step pending.
        for (part, lane) in parts.iter_mut().zip(&lanes) {
            if !lane.fed.is_empty() {
                let _ = part.collect();
            }
        }
    }
    result.map(|()| tasks)
}

/// One part's streams: the task each carries and the feeds of its pending step (empty when none).
struct Lanes {
    carried: Vec<Option<usize>>,
    fed: Vec<(usize, u8)>,
}

fn drive<T: StreamTask>(
    parts: &mut [&mut dyn M1Batch],
    lanes: &mut [Lanes],
    quantizer: &CdfQuantizer,
    tasks: &mut [T],
) -> Result<()> {
    let mut next = 0; // the first task not yet given to a stream
    for (part, lane) in parts.iter_mut().zip(lanes.iter_mut()) {
        submit_next(*part, lane, quantizer, tasks, &mut next)?;
    }
    while lanes.iter().any(|l| !l.fed.is_empty()) {
        for (part, lane) in parts.iter_mut().zip(lanes.iter_mut()) {
            if lane.fed.is_empty() {
                continue;
            }
            let cdfs = part.collect()?;
            let fed = std::mem::take(&mut lane.fed);
            let taking = fed.iter().zip(&cdfs).map(|(&(stream, _), cdf)| {
                (lane.carried[stream].expect("fed streams carry a task"), cdf)
            });
            take_all(tasks, taking.collect())?;
            submit_next(*part, lane, quantizer, tasks, &mut next)?;
        }
    }
    Ok(())
}

/// Hands each `(task, cdf)` pair's CDF to its task (each task at most once), the tasks in
/// parallel: their own models (a chunk's repeats and context statistics) are the coders' share
/// of a step. Every task takes its CDF; the error returned, if any, is the lowest-numbered
/// task's.
fn take_all<T: StreamTask>(tasks: &mut [T], mut taking: Vec<(usize, &Cdf)>) -> Result<()> {
    use rayon::prelude::*;
    taking.sort_unstable_by_key(|&(task, _)| task);
    let mut picked = Vec::with_capacity(taking.len());
    let (mut rest, mut base) = (tasks, 0);
    for (task, cdf) in taking {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(task - base);
        let (one, tail) = tail.split_first_mut().expect("a task taken once");
        picked.push((one, cdf));
        (rest, base) = (tail, task + 1);
    }
    let results: Vec<Result<()>> = picked
        .into_par_iter()
        .map(|(task, cdf)| task.take(cdf))
        .collect();
    results.into_iter().collect()
}

/// Gives each idle stream of `part` the next unfinished task, gathers every stream's feed
/// (resetting streams whose task opens a context) and submits the step, if anything is fed.
fn submit_next<T: StreamTask>(
    part: &mut dyn M1Batch,
    lane: &mut Lanes,
    quantizer: &CdfQuantizer,
    tasks: &[T],
    next: &mut usize,
) -> Result<()> {
    for (stream, carried) in lane.carried.iter_mut().enumerate() {
        loop {
            let task = match *carried {
                Some(t) => t,
                None if *next < tasks.len() => {
                    *next += 1;
                    *next - 1
                }
                None => break,
            };
            match tasks[task].next_feed() {
                Feed::Open => {
                    part.reset(stream);
                    lane.fed.push((stream, WINDOW_START));
                }
                Feed::Byte(b) => lane.fed.push((stream, b)),
                Feed::Done => {
                    *carried = None;
                    continue;
                }
            }
            *carried = Some(task);
            break;
        }
    }
    if !lane.fed.is_empty() {
        if let Err(e) = part.submit(&lane.fed, quantizer) {
            lane.fed.clear(); // a refused step is not pending
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::m1::{CpuM1Batch, Int8M1, M1BatchPair};
    use crate::model::{ModelConfig, ParamArena};

    /// Records, per task, the bits of every CDF it was given for `text`.
    struct Record<'t> {
        text: &'t [u8],
        seen: Vec<Cdf>,
    }

    impl StreamTask for Record<'_> {
        fn next_feed(&self) -> Feed {
            match self.seen.len() {
                n if n >= self.text.len() => Feed::Done,
                0 => Feed::Open,
                n => Feed::Byte(self.text[n - 1]),
            }
        }

        fn take(&mut self, cdf: &Cdf) -> Result<()> {
            self.seen.push(cdf.clone());
            Ok(())
        }
    }

    fn m1() -> Int8M1 {
        let mut cfg = ModelConfig::preset("tiny", None).unwrap();
        cfg.context = Some(32);
        let mut p = ParamArena::init(&cfg, 9);
        p.data.iter_mut().for_each(|x| *x *= 8.0);
        Int8M1::new(&cfg, &p).unwrap()
    }

    /// Each task gets the CDFs of its own text alone, whatever the batch: one stream, fewer
    /// streams than tasks, a pair of parts stepping in turn.
    #[test]
    fn every_task_gets_its_own_distributions_on_any_batch() {
        let m1 = m1();
        let q = CdfQuantizer::default();
        let texts: Vec<&[u8]> = vec![
            b"the first task",
            b"",
            b"x",
            b"a longer task than the others, longer than the context of 32",
            &[0, 0, 0, 1],
            b"zz",
        ];
        let tasks = || -> Vec<Record> {
            texts
                .iter()
                .map(|&text| Record {
                    text,
                    seen: Vec::new(),
                })
                .collect()
        };
        let alone: Vec<Vec<Cdf>> = texts
            .iter()
            .map(|&t| {
                let mut state = crate::m1::Int8State::default();
                let mut probs = vec![m1.start(&mut state)];
                probs.extend(t.iter().map(|&b| m1.push(&mut state, b)));
                probs[..t.len()]
                    .iter()
                    .map(|p| q.quantize(p).unwrap())
                    .collect()
            })
            .collect();
        let mut one = CpuM1Batch::new(&m1, 1);
        let mut three = CpuM1Batch::new(&m1, 3);
        let mut pair = M1BatchPair::new(
            Box::new(CpuM1Batch::new(&m1, 2)),
            Box::new(CpuM1Batch::new(&m1, 1)),
        )
        .unwrap();
        let batches: [&mut dyn M1Batch; 3] = [&mut one, &mut three, &mut pair];
        for batch in batches {
            let done = run_tasks(batch, &q, tasks()).unwrap();
            for (t, want) in done.iter().zip(&alone) {
                assert_eq!(&t.seen, want);
            }
        }
    }

    /// A task's error stops the run and leaves no step pending.
    #[test]
    fn an_error_stops_the_run_and_leaves_the_batch_idle() {
        struct Fails;
        impl StreamTask for Fails {
            fn next_feed(&self) -> Feed {
                Feed::Open
            }
            fn take(&mut self, _: &Cdf) -> Result<()> {
                anyhow::bail!("task failed")
            }
        }
        let m1 = m1();
        let q = CdfQuantizer::default();
        let mut pair = M1BatchPair::new(
            Box::new(CpuM1Batch::new(&m1, 1)),
            Box::new(CpuM1Batch::new(&m1, 1)),
        )
        .unwrap();
        let e = run_tasks(&mut pair, &q, vec![Fails, Fails, Fails])
            .err()
            .expect("the task's error");
        assert_eq!(e.to_string(), "task failed");
        assert!(pair.collect().is_err(), "nothing pending after the error");
        assert!(pair.step_cdfs(&[(0, WINDOW_START)], &q).is_ok());
    }
}
