//! Where short parallel passes should start from: one of rayon's worker threads.

/// Runs `f` on one of rayon's worker threads and returns what it returns. Each parallel pass
/// started from outside the pool hands itself to a worker and sleeps until woken; a step of M1
/// or M2 is tens of short passes, so from outside those hand-offs cost about a tenth of a
/// batch-1 decode step, and `ac` coding of 256 KiB (four streams, two cores) took 38.6 s
/// instead of 24.0. One hand-off here instead: inside the pool a pass splits in place. (Already
/// on a worker, `f` simply runs.)
pub fn on_a_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
