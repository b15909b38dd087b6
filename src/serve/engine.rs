//! Continuous batching: one thread owns M2 and advances every admitted stream together, a
//! token per stream per step, so the weights are read once per step for all of them.

use super::metrics::{Metrics, Outcome};
use crate::generate::{restart, Decoder, Feed, Generation};
use anyhow::{anyhow, Context, Result};
use rayon::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{self, error::TrySendError};

/// Events a request's stream carries, in order: text as units decode, then exactly one of
/// `Done` or `Failed`. A channel closed without either means the engine dropped the stream
/// because its client took nothing for the stall timeout, or the engine itself stopped.
#[derive(Debug)]
pub enum Event {
    /// The bytes of one or more whole units (not necessarily UTF-8, nor cut at characters).
    Text(Vec<u8>),
    /// Every byte asked for was generated.
    Done,
    /// The stream failed; the message says why.
    Failed(String),
}

/// Events a client has not yet taken, per stream. A full channel pauses that stream (it is not
/// stepped) rather than the engine: a slow reader slows only itself.
const EVENT_QUEUE: usize = 32;

/// One of the engine's `max_streams` places, held from admission until the engine drops the
/// stream (finished, failed, or its client gone); dropping it frees the place.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Job {
    generation: Generation,
    events: mpsc::Sender<Event>,
    slot: Slot,
    arrived: Instant,
}

/// The handle requests reach the engine thread through. Guarantees: at most `max_streams`
/// streams are admitted or generating at once ([`reserve`](Self::reserve) refuses the next);
/// each admitted stream gets its text in order and then `Done` or `Failed`, unless its client
/// takes nothing for `stall_timeout`, which drops the stream and frees its place; a panic
/// inside one stream's sampling or decoding ends that stream, one inside the batched model step
/// ends the streams of that step, and the engine goes on serving the others.
pub struct Engine {
    jobs: std_mpsc::Sender<Job>,
    in_use: Arc<AtomicUsize>,
    max_streams: usize,
}

impl Engine {
    /// Starts the engine thread, which owns `decoder` until every handle is dropped.
    pub fn start<D: Decoder + Send + 'static>(
        decoder: D,
        max_streams: usize,
        stall_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Engine> {
        let (jobs, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("terse-engine".into())
            .spawn(move || run(decoder, rx, stall_timeout, metrics))
            .context("starting the engine thread")?;
        Ok(Engine {
            jobs,
            in_use: Arc::new(AtomicUsize::new(0)),
            max_streams,
        })
    }

    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// A place for one more stream, or `None` when all `max_streams` are taken.
    pub fn reserve(&self) -> Option<Slot> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_streams).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.in_use.clone()))
    }

    /// Hands `generation` to the engine; its events arrive on the returned receiver. Dropping
    /// the receiver ends the stream at the engine's next step. Fails only when the engine
    /// thread is gone.
    pub fn submit(
        &self,
        generation: Generation,
        slot: Slot,
        arrived: Instant,
    ) -> Result<mpsc::Receiver<Event>> {
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        self.jobs
            .send(Job {
                generation,
                events,
                slot,
                arrived,
            })
            .map_err(|_| anyhow!("the generation engine has stopped"))?;
        Ok(rx)
    }
}

struct Stream<S> {
    generation: Generation,
    state: S,
    events: mpsc::Sender<Event>,
    /// Text made but not yet queued for the client.
    outbox: Vec<u8>,
    /// `Done` or `Failed`, once decided, until queued.
    end: Option<Event>,
    arrived: Instant,
    first_byte_seen: bool,
    /// Since when the client's queue has been full.
    stalled_since: Option<Instant>,
    /// Held while the stream generates; let go before its end is sent, so a client that sends
    /// its next request on reading the end always finds the place free.
    slot: Option<Slot>,
}

impl<S> Stream<S> {
    /// Whether the model should advance this stream now: still generating, and its client has
    /// taken everything made so far.
    fn ready(&self) -> bool {
        self.end.is_none() && self.outbox.is_empty()
    }

    /// Draws the next token from `logits` and keeps the text it completes.
    fn accept(&mut self, logits: &mut [f32], metrics: &Metrics) {
        match catch_unwind(AssertUnwindSafe(|| self.generation.accept(logits))) {
            Ok(Ok(text)) => {
                if !text.is_empty() {
                    if !self.first_byte_seen {
                        self.first_byte_seen = true;
                        metrics.first_byte(self.arrived.elapsed());
                    }
                    metrics.generated(text.len());
                    self.outbox.extend_from_slice(&text);
                }
                if self.generation.is_done() {
                    self.end = Some(Event::Done);
                }
            }
            Ok(Err(e)) => self.end = Some(Event::Failed(format!("{e:#}"))),
            Err(_) => self.end = Some(Event::Failed("generation panicked".into())),
        }
    }

    /// Queues what the client has not got yet. Returns whether the stream lives on: false once
    /// its end is queued or its client is gone (or took nothing for `stall_timeout`).
    fn deliver(&mut self, stall_timeout: Duration, metrics: &Metrics) -> bool {
        let stalled = self
            .stalled_since
            .is_some_and(|t| t.elapsed() > stall_timeout);
        if self.events.is_closed() || stalled {
            metrics.request(Outcome::Cancelled);
            return false;
        }
        if !self.outbox.is_empty() {
            match self
                .events
                .try_send(Event::Text(std::mem::take(&mut self.outbox)))
            {
                Ok(()) => self.stalled_since = None,
                Err(TrySendError::Full(Event::Text(t))) => {
                    self.outbox = t;
                    self.stalled_since.get_or_insert_with(Instant::now);
                    return true;
                }
                Err(_) => {
                    metrics.request(Outcome::Cancelled);
                    return false;
                }
            }
        }
        let Some(end) = self.end.take() else {
            return true;
        };
        self.slot = None;
        let outcome = match end {
            Event::Done => Outcome::Ok,
            _ => Outcome::Error,
        };
        match self.events.try_send(end) {
            Ok(()) => {
                metrics.request(outcome);
                false
            }
            Err(TrySendError::Full(end)) => {
                self.end = Some(end);
                self.stalled_since.get_or_insert_with(Instant::now);
                true
            }
            Err(TrySendError::Closed(_)) => {
                metrics.request(Outcome::Cancelled);
                false
            }
        }
    }
}

/// The engine thread: admit, step every ready stream, deliver, until every handle is dropped
/// and no stream is left.
fn run<D: Decoder>(
    decoder: D,
    jobs: std_mpsc::Receiver<Job>,
    stall_timeout: Duration,
    metrics: Arc<Metrics>,
) {
    let vocab = decoder.config().vocab;
    let mut streams: Vec<Stream<D::State>> = Vec::new();
    let mut logits = Vec::new();
    let mut idle = false;
    loop {
        // Block only when there is nothing else to do; a step with every stream paused on a
        // slow client waits a little for new work instead of spinning.
        let waited = if streams.is_empty() {
            jobs.recv().ok()
        } else if idle {
            jobs.recv_timeout(Duration::from_millis(1)).ok()
        } else {
            None
        };
        if streams.is_empty() && waited.is_none() {
            return;
        }
        for job in waited.into_iter().chain(jobs.try_iter()) {
            streams.push(Stream {
                generation: job.generation,
                state: decoder.empty_state(),
                events: job.events,
                outbox: Vec::new(),
                end: None,
                arrived: job.arrived,
                first_byte_seen: false,
                stalled_since: None,
                slot: Some(job.slot),
            });
        }
        let started = Instant::now();
        let stepped = step(&decoder, vocab, &mut streams, &mut logits, &metrics);
        if stepped > 0 {
            metrics.step(started.elapsed());
        }
        idle = stepped == 0;
        streams.retain_mut(|s| s.deliver(stall_timeout, &metrics));
        metrics.set_active_streams(streams.len());
    }
}

/// Advances every ready stream by one token: a stream starting or restarting its context is
/// fed it alone (`extend`), all others together in one batched `step`. Returns how many
/// streams advanced.
fn step<D: Decoder>(
    decoder: &D,
    vocab: usize,
    streams: &mut [Stream<D::State>],
    logits: &mut Vec<f32>,
    metrics: &Metrics,
) -> usize {
    let mut batched = vec![false; streams.len()];
    let mut tokens = Vec::new();
    let mut advanced = 0;
    for (s, in_batch) in streams.iter_mut().zip(&mut batched) {
        if !s.ready() {
            continue;
        }
        match s.generation.feed() {
            Feed::Next(t) => {
                *in_batch = true;
                tokens.push(t);
            }
            Feed::Restart(context) => {
                logits.resize(vocab, 0.0);
                let fed = catch_unwind(AssertUnwindSafe(|| {
                    restart(decoder, &mut s.state, &context, &mut logits[..vocab])
                }));
                match model_outcome(fed) {
                    Ok(()) => s.accept(&mut logits[..vocab], metrics),
                    Err(why) => s.end = Some(Event::Failed(why)),
                }
                advanced += 1;
            }
        }
    }
    let rows = tokens.len();
    if rows == 0 {
        return advanced;
    }
    logits.resize(rows * vocab, 0.0);
    let mut states: Vec<&mut D::State> = streams
        .iter_mut()
        .zip(&batched)
        .filter(|(_, &b)| b)
        .map(|(s, _)| &mut s.state)
        .collect();
    let fed = model_outcome(catch_unwind(AssertUnwindSafe(|| {
        decoder.step(&mut states, &tokens, &mut logits[..rows * vocab])
    })));
    drop(states);
    let batch: Vec<(&mut Stream<D::State>, &mut [f32])> = streams
        .iter_mut()
        .zip(&batched)
        .filter(|(_, &b)| b)
        .map(|(s, _)| s)
        .zip(logits[..rows * vocab].chunks_exact_mut(vocab))
        .collect();
    match fed {
        // Each stream draws and decodes its windows on its own: in parallel.
        Ok(()) => batch
            .into_par_iter()
            .for_each(|(s, p)| s.accept(p, metrics)),
        Err(why) => batch
            .into_iter()
            .for_each(|(s, _)| s.end = Some(Event::Failed(why.clone()))),
    }
    advanced + rows
}

/// A model call's result as the reason its streams end, if they do: a device error or a panic.
fn model_outcome(fed: std::thread::Result<anyhow::Result<()>>) -> Result<(), String> {
    match fed {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the model failed: {e:#}")),
        Err(_) => Err("the model panicked".into()),
    }
}
