/*
ReLU (the paper's MLP activation), forward and backward.

Where it goes: h = relu(xn2 W_up^T). Training runs both directions in cuBLASLt epilogues
(`Gemm::forward_relu_mask`: RELU_AUX, which also keeps a bit mask of h > 0; `Gemm::dgrad_relu_mask`:
DRELU, which zeroes the down projection's dgrad where the mask is clear), so neither pass touches
the [N, ff] activation on its own. These kernels are the fallback where cuBLASLt offers no such
algorithm (or ff is not a multiple of 128, the mask's leading dimension), and the parity
reference. The backward needs only the sign of the saved ReLU output h, so it masks the incoming
gradient in place: dh = (h > 0) ? dh : 0.

One thread per element; memory bound (forward 2 x sizeof(T) bytes per element, backward 3 x).

Launch (grid maths, all four kernels):
    block = 512 threads (1D), grid = min(ceil(n / 512), 2^31 - 1) blocks (1D), grid-stride loop.

Entry points: relu_forward_f32, relu_forward_bf16 (out may alias inp: in place),
              relu_backward_f32, relu_backward_bf16 (dinp updated in place).
*/

// Plain reference (the CPU backend's model.rs does exactly this):
//
//   void relu_forward_reference(float* out, const float* inp, size_t n) {
//       for (size_t i = 0; i < n; i++) out[i] = fmaxf(inp[i], 0.0f);   // NaN -> 0, like f32::max
//   }
//   void relu_backward_reference(float* dinp, const float* out, size_t n) {
//       for (size_t i = 0; i < n; i++) if (out[i] <= 0.0f) dinp[i] = 0.0f;
//   }

#include "common.cuh"

template <typename T>
__device__ void relu_forward(T* out, const T* inp, size_t n) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = from_float<T>(fmaxf(to_float(inp[i]), 0.0f));
    }
}

template <typename T>
__device__ void relu_backward(T* dinp, const T* out, size_t n) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        if (to_float(out[i]) <= 0.0f) dinp[i] = from_float<T>(0.0f);
    }
}

// No __restrict__ on the forward: out == inp (in place) is allowed.
extern "C" __global__ void relu_forward_f32(float* out, const float* inp, size_t n) { relu_forward(out, inp, n); }
extern "C" __global__ void relu_forward_bf16(bf16* out, const bf16* inp, size_t n) { relu_forward(out, inp, n); }
extern "C" __global__ void relu_backward_f32(float* __restrict__ dinp, const float* __restrict__ out, size_t n) {
    relu_backward(dinp, out, n);
}
extern "C" __global__ void relu_backward_bf16(bf16* __restrict__ dinp, const bf16* __restrict__ out, size_t n) {
    relu_backward(dinp, out, n);
}
