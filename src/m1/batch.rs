//! Many independent M1 contexts advanced together: the interface the coders drive in lockstep
//! ([`M1Batch`]) and its CPU implementation ([`CpuM1Batch`]); the GPU's is
//! `backend::cuda::GpuExactM1`.

use super::{ExactM1, Probs, WindowState, WINDOW_START};
use anyhow::{anyhow, ensure, Result};

/// Independent M1 contexts ("streams": Equal-Info windows, or whole `ac` chunks) advanced
/// together. Under the numeric contract every implementation gives, stream by stream, the bits of
/// [`ExactM1::start`] followed by [`ExactM1::push`], whatever the other streams do in the same
/// step and whatever the order of the feeds.
pub trait M1Batch: Send {
    /// How many streams there are (`0..streams()`).
    fn streams(&self) -> usize;
    /// [`ExactM1::fingerprint`] of the M1 it runs (coders check it against the data's M1).
    fn fingerprint(&self) -> u64;
    /// Empties `stream`'s context; its next feed must be [`WINDOW_START`].
    fn reset(&mut self, stream: usize);
    /// Feeds each `(stream, byte)` (each stream at most once) and returns, in order, the
    /// distribution of each stream's next byte. Refuses a stream out of range or fed twice.
    fn step(&mut self, feeds: &[(usize, u8)]) -> Result<Vec<Probs>>;
}

/// [`M1Batch`] on the CPU: one [`WindowState`] per stream; a step is one
/// [`ExactM1::push_rows`] over the fed streams (matrix products over all of them, the rest in
/// parallel on the CPU's threads). Also refuses a first feed after a reset other than
/// [`WINDOW_START`].
pub struct CpuM1Batch<'a> {
    m1: &'a ExactM1,
    states: Vec<WindowState>,
}

impl<'a> CpuM1Batch<'a> {
    pub fn new(m1: &'a ExactM1, streams: usize) -> Self {
        CpuM1Batch {
            m1,
            states: vec![WindowState::default(); streams],
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
        let mut slots: Vec<Option<&mut WindowState>> = self.states.iter_mut().map(Some).collect();
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
        Ok(self.m1.push_rows(&mut states, &bytes))
    }
}
