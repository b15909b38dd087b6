//! M2 generation on the GPU: [`GpuDecoder`], a [`Decoder`] over [`GpuInt8Model`] (contract 3's
//! int8 arithmetic, so its logits, and with them every sample, are bit for bit those of
//! [`Int8Model`] on the CPU with the same seed).
//!
//! The device holds a fixed number of contexts ("streams"), each a static key/value cache of the
//! model's context length. A [`GpuContext`] takes one at its first feed and gives it back when
//! dropped, so a server holds at most as many live generations as the decoder has streams.
//! A prompt is fed one position per launch (the attention kernel appends a row's key before
//! reading the cache, so two positions of one stream cannot share a step): prefill costs one
//! step per prompt token.

use super::Decoder;
use crate::backend::cuda::int8_model::Fusion;
use crate::backend::cuda::{gpu_unavailable_reason, GpuInt8Model};
use crate::backend::Device;
use crate::m1::int8::WeightBits;
use crate::m1::Int8Model;
use crate::model::ModelConfig;
use anyhow::{anyhow, bail, ensure, Result};
use std::sync::{Arc, Mutex, MutexGuard};

/// Whether M2 decoding on the GPU has passed its parity tests on a real GPU (so far it has run
/// only on the CUDA emulator): until it has, `--device auto` decodes on the CPU.
pub const GPU_DECODE_VALIDATED: bool = false;

/// Whether `terse generate` and `terse serve` run M2 on the GPU for `device`, given `--exact`
/// and `--weights` (f32 and 4-bit weights run on the CPU only), with a note for stderr when
/// `auto` passes over a GPU that is present. Refuses `cuda` with either of those, and `cuda`
/// without a usable GPU (saying why).
pub fn decode_on_gpu(
    device: Device,
    exact: bool,
    weights: Option<WeightBits>,
) -> Result<(bool, Option<String>)> {
    let cpu_only = if exact {
        Some("--exact runs M2 in f32 on the CPU only")
    } else if weights == Some(WeightBits::Int4) {
        Some("--weights int4 runs M2 on the CPU only")
    } else {
        None
    };
    match device {
        Device::Cpu => Ok((false, None)),
        Device::Cuda => {
            if let Some(why) = cpu_only {
                bail!("{why}; the GPU runs it with int8 weights (drop that flag or --device cuda)");
            }
            if let Some(why) = gpu_unavailable_reason() {
                bail!("--device cuda: no usable GPU: {why}");
            }
            Ok((true, None))
        }
        Device::Auto => {
            if cpu_only.is_some() || gpu_unavailable_reason().is_some() {
                return Ok((false, None));
            }
            if !GPU_DECODE_VALIDATED {
                let note = "a GPU is present, but GPU decoding has not yet passed its parity tests on a GPU; decoding on the CPU (--device cuda to try it)";
                return Ok((false, Some(note.into())));
            }
            Ok((true, None))
        }
    }
}

/// The weights M2 decodes with: int8 on the GPU (its kernels' format), else `asked`, by
/// default 4-bit (the fewest bytes per step; `terse eval --int4` shows what they cost).
pub fn decode_weights(on_gpu: bool, asked: Option<WeightBits>) -> WeightBits {
    match on_gpu {
        true => WeightBits::Int8,
        false => asked.unwrap_or(WeightBits::Int4),
    }
}

/// M2 on the GPU under contract 3: `streams` contexts of the model's context length (module
/// docs). Refuses what [`GpuInt8Model::new`] refuses (no usable GPU, shapes its kernels cannot
/// hold).
pub struct GpuDecoder {
    cfg: ModelConfig,
    model: Mutex<GpuInt8Model>,
    free: Arc<Mutex<Vec<usize>>>,
}

/// One generation's context on the device: a stream of its [`GpuDecoder`], taken at the first
/// feed and given back when this is dropped.
pub struct GpuContext {
    stream: Option<usize>,
    free: Arc<Mutex<Vec<usize>>>,
}

impl Drop for GpuContext {
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            lock(&self.free).push(s);
        }
    }
}

/// The lock even if a panic poisoned it: the free list is a plain list, and a panic inside a
/// device step is reported by that step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GpuDecoder {
    /// `lm` on GPU 0 with `streams` contexts (one per generation running at once).
    pub fn new(lm: &Int8Model, streams: usize) -> Result<Self> {
        let model = GpuInt8Model::new(lm, streams, lm.context(), Fusion::Fused)?;
        Ok(GpuDecoder {
            cfg: lm.config().clone(),
            model: Mutex::new(model),
            free: Arc::new(Mutex::new((0..streams).rev().collect())),
        })
    }

    /// Contexts the device holds.
    pub fn streams(&self) -> usize {
        lock(&self.model).streams()
    }

    /// Whether the step over every stream runs as a CUDA graph (from its second such step on).
    pub fn graph_active(&self) -> bool {
        lock(&self.model).graph_active()
    }

    /// `state`'s stream, taking a free one (emptied) if it has none.
    fn bind(&self, state: &mut GpuContext, m: &mut GpuInt8Model) -> Result<usize> {
        if let Some(s) = state.stream {
            return Ok(s);
        }
        let s = lock(&self.free).pop().ok_or_else(|| {
            anyhow!(
                "all {} GPU contexts are in use: give the decoder more streams",
                m.streams()
            )
        })?;
        m.reset(s);
        state.stream = Some(s);
        Ok(s)
    }
}

impl Decoder for GpuDecoder {
    type State = GpuContext;

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn empty_state(&self) -> GpuContext {
        GpuContext {
            stream: None,
            free: self.free.clone(),
        }
    }

    fn extend(&self, state: &mut GpuContext, tokens: &[u32], logits: &mut [f32]) -> Result<()> {
        let (&last, head) = tokens
            .split_last()
            .ok_or_else(|| anyhow!("no tokens to feed"))?;
        let mut m = lock(&self.model);
        let s = self.bind(state, &mut m)?;
        ensure!(
            m.position(s) + tokens.len() <= m.capacity(),
            "{} tokens do not fit a context of {} holding {}",
            tokens.len(),
            m.capacity(),
            m.position(s)
        );
        for &t in head {
            m.feed(&[(s, t)])?;
        }
        m.step(&[(s, last)], logits)
    }

    fn step(
        &self,
        states: &mut [&mut GpuContext],
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()> {
        let mut feeds = Vec::with_capacity(states.len());
        for (st, &t) in states.iter().zip(tokens) {
            let Some(s) = st.stream else {
                bail!("a context was stepped before its first feed (start it with extend)");
            };
            feeds.push((s, t));
        }
        lock(&self.model).step(&feeds, logits)
    }
}
