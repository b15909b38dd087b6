//! NVTX ranges around terse's GPU work, so that Nsight Systems timelines and Nsight Compute
//! reports name it: a training step's upload, forward (each layer), loss, backward (each layer),
//! optimizer and read-back; an evaluation batch; each kernel `terse bench kernels` times.
//!
//! NVTX is loaded at run time, as the other CUDA libraries are (`libnvToolsExt`, from a CUDA 12
//! toolkit or the `nvidia-nvtx-cu12` wheel, found through `LD_LIBRARY_PATH`). Where it is absent
//! every range is empty: nothing is loaded and nothing fails. Under a profiler the library hands
//! each range to the tool; without one it returns at once.
//!
//! Ranges mark when the host enqueues work. A replayed CUDA graph was enqueued once, at capture,
//! so its kernels carry no per-layer ranges: to see them, run the step eagerly
//! (`TERSE_CUDA_GRAPH=0`).

use std::sync::OnceLock;

/// Whether NVTX is loaded (probed once per process).
pub fn enabled() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to open the library; no symbol is called.
    *PRESENT.get_or_init(|| unsafe { cudarc::nvtx::sys::is_culib_present() })
}

/// An open NVTX range, closed when dropped; empty where NVTX is not loaded.
#[must_use = "a range closes when it is dropped"]
pub struct Range {
    _open: Option<cudarc::nvtx::Range>,
}

/// Opens a range named `name` (no NUL bytes: names are terse's own).
pub fn range(name: &str) -> Range {
    Range {
        _open: enabled().then(|| cudarc::nvtx::scoped_range(name)),
    }
}

/// Opens a range whose name is built only where NVTX is loaded (names with a layer number).
pub fn range_with(name: impl FnOnce() -> String) -> Range {
    Range {
        _open: enabled().then(|| cudarc::nvtx::scoped_range(name())),
    }
}
