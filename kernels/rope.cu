/*
Rotary position embeddings, applied in place to the q and k parts of the fused qkv activation.

Layout: qkv [N, 3d] row-major (T), q | k | v, heads of 64 side by side in each part; row r is
position t = r % seq. Pairs are (i, i + 32) within each 64-wide head (GPT-NeoX / Llama "rotate
half"). cos, sin: [seq, 32] fp32 tables computed once on the host in f64 (`RopeTables`, the same
values the CPU backend uses). The v part (columns [2d, 3d)) is untouched.

    forward:  (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)
    inverse:  the transpose rotation (sin -> -sin): this is the backward pass, applied to dqkv.

One thread per pair; a row holds 2d/64 heads (q and k) x 32 pairs = d pairs. Memory bound.

Launch (grid maths): block = 256, grid = ceil(N * d / 256). Thread idx -> row = idx / d,
p = idx % d, head = p / 32 (0 .. 2H-1, q heads then k heads), i = p % 32.

Entry points: rope_f32, rope_bf16.
*/

// Plain reference (the CPU twin, backend::cpu::rope::rope_apply):
//
//   void rope_reference(float* qkv, const float* cos, const float* sin, int N, int seq, int d, int inverse) {
//       for (int r = 0; r < N; r++) {
//           int t = r % seq;
//           for (int h = 0; h < 2 * d / 64; h++) {
//               float* x = qkv + r * 3 * d + h * 64;
//               for (int i = 0; i < 32; i++) {
//                   float c = cos[t * 32 + i], s = inverse ? -sin[t * 32 + i] : sin[t * 32 + i];
//                   float x1 = x[i], x2 = x[i + 32];
//                   x[i] = x1 * c - x2 * s;
//                   x[i + 32] = x1 * s + x2 * c;
//               }
//           }
//       }
//   }

#include "common.cuh"

template <typename T>
__device__ void rope(T* __restrict__ qkv, const float* __restrict__ cos_t, const float* __restrict__ sin_t, int N,
                     int seq, int d, int inverse) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * d) return;
    const size_t row = idx / d;
    const int p = (int)(idx % d);
    const int head = p / 32;
    const int i = p % 32;
    const int t = (int)(row % seq);
    const float c = cos_t[t * 32 + i];
    const float s = inverse ? -sin_t[t * 32 + i] : sin_t[t * 32 + i];
    T* x = qkv + row * 3 * (size_t)d + head * 64;
    const float x1 = to_float(x[i]);
    const float x2 = to_float(x[i + 32]);
    x[i] = from_float<T>(x1 * c - x2 * s);
    x[i + 32] = from_float<T>(x1 * s + x2 * c);
}

extern "C" __global__ void rope_f32(float* qkv, const float* cos_t, const float* sin_t, int N, int seq, int d,
                                    int inverse) {
    rope(qkv, cos_t, sin_t, N, seq, d, inverse);
}
extern "C" __global__ void rope_bf16(bf16* qkv, const float* cos_t, const float* sin_t, int N, int seq, int d,
                                     int inverse) {
    rope(qkv, cos_t, sin_t, N, seq, d, inverse);
}
