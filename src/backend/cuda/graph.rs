//! A step's launches as one CUDA graph, for work repeated with the same shape (a training step,
//! M1's step over every stream): run eagerly the first time a key is seen (so lazy module loading
//! and first-use setup, such as planning GEMMs, stay out of the capture), captured on the second
//! run of the same key and replayed from then on; a new key drops the graph. Every value a step
//! reads must sit at a fixed device address, written before the launch. A failed capture is noted
//! and the work runs eagerly from then on.

use anyhow::Result;
use cudarc::driver::{sys, CudaContext, CudaGraph, CudaStream};
use std::sync::Arc;

/// One captured graph and what it was captured for (see the module docs).
pub(super) struct StepGraph<K> {
    graph: Option<(CudaGraph, K)>,
    /// The key of the last eager run (the warm-up before a capture).
    warmed: Option<K>,
    enabled: bool,
    note: Option<String>,
}

// SAFETY: the driver's graph handles may be used from any thread so long as calls on one graph
// are serialised; `StepGraph` is not `Sync` (raw handles inside), so whoever owns it, on whatever
// thread, is the only caller.
unsafe impl<K: Send> Send for StepGraph<K> {}

impl<K: Copy + PartialEq> StepGraph<K> {
    /// Replays graphs when `enabled` (otherwise every run is eager).
    pub(super) fn new(enabled: bool) -> Self {
        StepGraph {
            graph: None,
            warmed: None,
            enabled,
            note: None,
        }
    }

    /// Turns graph replay on or off (off drops the graph).
    pub(super) fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        if !on {
            self.graph = None;
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a graph is held (the last run of its key was a replay).
    pub(super) fn active(&self) -> bool {
        self.graph.is_some()
    }

    /// Why capture was abandoned, if it was.
    pub(super) fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Forgets the graph and the warm-up (the buffers it launched on are gone).
    pub(super) fn clear(&mut self) {
        self.graph = None;
        self.warmed = None;
    }

    /// Runs `enqueue` (which launches on `s`) for `key`: replays the graph of this key, captures
    /// one after an eager run of the same key, or runs eagerly. Nothing synchronises.
    pub(super) fn run(
        &mut self,
        s: &Arc<CudaStream>,
        ctx: &Arc<CudaContext>,
        key: K,
        mut enqueue: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        if let Some((g, gk)) = &self.graph {
            if *gk == key {
                g.launch()?;
                return Ok(());
            }
            self.graph = None;
        }
        if !self.enabled || self.warmed != Some(key) {
            enqueue()?;
            self.warmed = Some(key);
            return Ok(());
        }
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let enq = enqueue();
        let captured = s.end_capture(sys::CUgraphInstantiate_flags(0));
        match (enq, captured) {
            (Ok(()), Ok(Some(g))) => {
                g.upload()?;
                g.launch()?;
                self.graph = Some((g, key));
            }
            (enq, cap) => {
                // Capture failed: note why, and run this step (and later ones) eagerly.
                let why = match (enq, cap) {
                    (Err(e), _) => format!("enqueue during capture failed: {e:#}"),
                    (_, Err(e)) => format!("end_capture failed: {e}"),
                    _ => "end_capture returned no graph".to_string(),
                };
                self.note = Some(why);
                self.enabled = false;
                ctx.check_err().ok();
                enqueue()?;
            }
        }
        Ok(())
    }
}
