/*
Global gradient norm for clipping, deterministic: sum of squares in two stages, then the norm and
the clip scale computed on the device (so a captured training step needs no host round trip).

Stage 1 (global_norm_squared_*): a FIXED grid of GLOBAL_NORM_BLOCKS = 264 blocks of 512 threads
(fixed on the host for every device, so the partition of the sum, and hence its bits, never
depends on the GPU); thread t of block k sums elements k * 512 + t, + 264 * 512, ... in fp64, then
the block reduces with a fixed tree and writes partial[k] (or adds to it when accumulate != 0,
for gradients held in several buffers: call once per buffer with accumulate = 0 for the first).
Stage 2 (global_norm_finish): one block of 256 threads sums the partials in a fixed order and
writes out[0] = norm = sqrt(sum) and out[1] = clip scale = (clip > 0 && norm > clip) ?
clip / norm : 1 (the CPU backend's rule in train_step).

Memory bound: 4 bytes per fp32 element, ~8 us for 25M gradients at ~3 TB/s.

Launch (grid maths):
    global_norm_squared_*: grid = 264 (GLOBAL_NORM_BLOCKS; the host passes exactly this many
        partial slots), block = 512, static smem 256 B.
    global_norm_finish: grid = 1, block = 256.

Entry points: global_norm_squared_f32, global_norm_squared_bf16, global_norm_finish.
(`out[1]` is what adamw's grad_scale must be; adamw.cu takes it as a scalar argument, so a graph-
captured step needs an adamw variant reading it from device memory.)
*/

// Plain reference:
//
//   double ss = 0; for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
//   float norm = sqrt(ss);
//   float scale = (clip > 0 && norm > clip) ? clip / norm : 1;

#include "common.cuh"

template <typename T>
__device__ void global_norm_squared(double* __restrict__ partial, const T* __restrict__ x, size_t n,
                                    int accumulate) {
    __shared__ double shared[32];
    double acc = 0.0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double v = (double)to_float(x[i]);
        acc += v * v;
    }
    acc = block_reduce_sum(acc, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = accumulate ? partial[blockIdx.x] + acc : acc;
}

extern "C" __global__ void global_norm_squared_f32(double* partial, const float* x, size_t n, int accumulate) {
    global_norm_squared(partial, x, n, accumulate);
}
extern "C" __global__ void global_norm_squared_bf16(double* partial, const bf16* x, size_t n, int accumulate) {
    global_norm_squared(partial, x, n, accumulate);
}

extern "C" __global__ void global_norm_finish(float* __restrict__ out, const double* __restrict__ partial,
                                              int num_partials, float clip) {
    __shared__ double shared[32];
    double acc = 0.0;
    for (int k = threadIdx.x; k < num_partials; k += blockDim.x) acc += partial[k];
    acc = block_reduce_sum(acc, shared);
    if (threadIdx.x == 0) {
        const float norm = (float)sqrt(acc);
        out[0] = norm;
        out[1] = (clip > 0.0f && norm > clip) ? clip / norm : 1.0f;
    }
}
