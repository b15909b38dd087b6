//! A shared step's gradient sum on the GPUs: NCCL all-reduces of the gradient buffer in buckets,
//! each started on a communication stream as soon as the backward pass has written its last
//! value, so the transfers of the later layers overlap the backward of the earlier ones (DDP's
//! scheme; llm.c's ZeRO-1 path does the same in one piece after the backward).
//!
//! The backward pass finishes the gradient from the end of the [`ParamArena`] layout towards its
//! start: the head and final norm first, then the layers last to first, the embedding last. So
//! each bucket is a contiguous range, the buckets run from the end of the buffer down, and "the
//! gradient from offset `x` on is final" is all the step has to say ([`GradAllReduce::ready`]).
//!
//! Each rank's gradient is already scaled to the whole batch's mean (its loss was divided by
//! the global row count), so the sum is the batch's gradient. NCCL sums in its own order: GPU
//! ranks agree with one GPU by tolerance, not bit for bit (the CPU's halving tree is the bitwise
//! path).
//!
//! [`ParamArena`]: crate::model::ParamArena

use crate::backend::cuda::nccl::NcclComm;
use crate::backend::cuda::nvtx;
use anyhow::Result;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use std::ops::Range;
use std::sync::Arc;

/// DDP's default bucket: large enough that a transfer's latency is small beside its bytes, small
/// enough that the first one starts early in the backward. `TERSE_CUDA_BUCKET_KIB` overrides it.
const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Splits a gradient of `total` values into buckets at the offsets where the backward pass
/// finishes a part of it (`done_from`, decreasing, the last 0): consecutive parts are merged
/// until a bucket holds at least `min_len` values (the last bucket may hold fewer). The buckets
/// come in the order the backward completes them, from the end of the buffer down, and tile
/// `0..total` exactly.
pub(super) fn plan_buckets(done_from: &[usize], total: usize, min_len: usize) -> Vec<Range<usize>> {
    let mut buckets = Vec::new();
    let mut end = total;
    for &from in done_from {
        assert!(
            from <= end,
            "the backward finishes the gradient from its end down"
        );
        if end > from && (end - from >= min_len || from == 0) {
            buckets.push(from..end);
            end = from;
        }
    }
    assert_eq!(end, 0, "the backward's last part must start at offset 0");
    buckets
}

/// NCCL's sum of the gradient across the ranks, bucket by bucket on its own stream.
pub(super) struct GradAllReduce {
    comm: NcclComm,
    stream: Arc<CudaStream>,
    buckets: Vec<Range<usize>>,
    /// The first bucket not yet started in this step.
    next: usize,
}

impl GradAllReduce {
    /// Buckets over the finishing offsets `done_from` (see [`plan_buckets`]) of a gradient of
    /// `total` values, summed through `comm` on a new stream of `ctx`.
    pub(super) fn new(
        comm: NcclComm,
        ctx: &Arc<CudaContext>,
        done_from: &[usize],
        total: usize,
    ) -> Result<Self> {
        let bucket_bytes = std::env::var("TERSE_CUDA_BUCKET_KIB")
            .ok()
            .and_then(|x| x.parse::<usize>().ok())
            .map_or(DEFAULT_BUCKET_BYTES, |kib| kib << 10);
        let min_len = (bucket_bytes / 4).max(1);
        Ok(GradAllReduce {
            comm,
            stream: ctx.new_stream()?,
            buckets: plan_buckets(done_from, total, min_len),
            next: 0,
        })
    }

    /// The buckets, in the order they are summed.
    pub(super) fn buckets(&self) -> &[Range<usize>] {
        &self.buckets
    }

    /// Where NCCL was opened from.
    pub(super) fn library(&self) -> &str {
        self.comm.library()
    }

    /// Readies a new step: no bucket started yet.
    pub(super) fn begin(&mut self) {
        self.next = 0;
    }

    /// Says that `compute` has enqueued the last write of every gradient value from `from` on:
    /// every bucket lying there and not yet started is summed on the communication stream once
    /// `compute` has reached this point.
    pub(super) fn ready(
        &mut self,
        compute: &CudaStream,
        grads: &mut CudaSlice<f32>,
        from: usize,
    ) -> Result<()> {
        let start = self.next;
        while self.buckets.get(self.next).is_some_and(|b| b.start >= from) {
            self.next += 1;
        }
        if start == self.next {
            return Ok(());
        }
        let _range = nvtx::range("all-reduce");
        self.stream.wait(&compute.record_event(None)?)?;
        for b in &self.buckets[start..self.next] {
            self.comm
                .all_reduce_sum(&mut grads.slice_mut(b.clone()), &self.stream)?;
        }
        Ok(())
    }

    /// Ends the step's sums once the backward is enqueued: the remaining buckets, then the loss
    /// sums `sums`; `compute` then waits for all of them before the update reads them.
    pub(super) fn finish(
        &mut self,
        compute: &CudaStream,
        grads: &mut CudaSlice<f32>,
        sums: &mut CudaSlice<f64>,
    ) -> Result<()> {
        self.ready(compute, grads, 0)?;
        self.comm
            .all_reduce_sum(&mut sums.slice_mut(..), &self.stream)?;
        compute.join(&self.stream)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::plan_buckets;

    #[test]
    fn buckets_tile_the_gradient_from_its_end_and_merge_small_parts() {
        let done = [90, 70, 50, 45, 40, 10, 0];
        assert_eq!(
            plan_buckets(&done, 100, 1),
            vec![90..100, 70..90, 50..70, 45..50, 40..45, 10..40, 0..10]
        );
        assert_eq!(
            plan_buckets(&done, 100, 20),
            vec![70..100, 50..70, 10..50, 0..10]
        );
        assert_eq!(plan_buckets(&done, 100, 1000), vec![0..100]);
    }
}
