/*
Casts between fp32 and bf16: weights into the bf16 working copy, activations and gradients back to
fp32 for checks and for the host.

One thread per element; elements are independent (no reduction, no ordering question). Memory
bound: 6 bytes per element, so ~0.5 ms for 250M elements at ~3 TB/s.

Launch (grid maths, both kernels):
    block = 512 threads (1D), grid = min(ceil(n / 512), 2^31 - 1) blocks (1D).
    The body is a grid-stride loop, so any grid size is correct.

Rounding: f32 -> bf16 is round to nearest, ties to even (the host's `Bf16::from_f32` and
`adamw.cu` round the same way); bf16 -> f32 is exact.
*/

// Plain reference (what the kernels compute):
//
//   void cast_f32_to_bf16_reference(bf16* out, const float* in, size_t n) {
//       for (size_t i = 0; i < n; i++) out[i] = round_to_nearest_even_bf16(in[i]);
//   }
//   void cast_bf16_to_f32_reference(float* out, const bf16* in, size_t n) {
//       for (size_t i = 0; i < n; i++) out[i] = (float)in[i];
//   }

#include "common.cuh"

extern "C" __global__ void cast_f32_to_bf16(bf16* __restrict__ out, const float* __restrict__ in, size_t n) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = __float2bfloat16_rn(in[i]);
    }
}

extern "C" __global__ void cast_bf16_to_f32(float* __restrict__ out, const bf16* __restrict__ in, size_t n) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = __bfloat162float(in[i]);
    }
}
