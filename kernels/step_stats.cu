/*
A training step's metrics kept on the device, so that a captured step needs no copy back to the
host: one thread appends the step's (mean cross-entropy, mean lse^2, gradient norm) to a ring of
ring_len slots of 3 floats, at slot cursor % ring_len, and advances the cursor. The host copies
the ring back every ring_len steps (or when asked) and knows which slot holds which step by
counting the steps it submitted; a step's slot is overwritten only ring_len steps later, after
the copy that reads it was enqueued on the same stream.

Bytes: reads 16 + 8 + 4, writes 12 + 8; one launch's latency (a few microseconds inside a graph),
nothing else. It replaces a device-to-host copy and a host wait per step.

Launch (grid maths): grid = 1, block = 1.

Entry points: step_stats_record.
*/

// Plain reference (what the host computed from the copied sums, `StepStats::from_sums`):
//
//   slot = ring + 3 * (*cursor % ring_len);
//   slot[0] = (float)(sums[0] / rows);   // division in fp64, then rounded to fp32
//   slot[1] = (float)(sums[1] / rows);
//   slot[2] = norm[0];
//   *cursor += 1;

#include "common.cuh"

extern "C" __global__ void step_stats_record(float* __restrict__ ring, unsigned long long* __restrict__ cursor,
                                             const double* __restrict__ sums, const float* __restrict__ norm,
                                             int rows, int ring_len) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const unsigned long long c = *cursor;
    float* slot = ring + 3 * (size_t)(c % (unsigned long long)ring_len);
    slot[0] = (float)(sums[0] / (double)rows);
    slot[1] = (float)(sums[1] / (double)rows);
    slot[2] = norm[0];
    *cursor = c + 1;
}
