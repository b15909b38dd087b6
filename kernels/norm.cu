/*
RMSNorm: y = x / sqrt(mean(x^2) + eps) * g, forward (optionally fused with the residual add that
precedes it) and backward with a deterministic two-stage reduction for the gain gradient.

Layouts: x, y, dy, dx [N, d] row-major (T: fp32 or bf16), gain g [d] (T), rstd [N] fp32 (saved by
the forward for the backward), dgain [d] fp32 (weight gradients are fp32).

Forward (rmsnorm_forward_*): one warp per row; each lane strides the row by 32, the sum of squares
is a warp butterfly. rstd may be NULL (evaluation).

Fused residual forward (fused_residual_rmsnorm_forward_*): residual = inp1 + inp2 (stored, rounded
to T) and then the norm of that stored residual, in one pass: the pre-norm block's
"x_mid = x + attn_out; xn2 = norm(x_mid)" (llm.c's fused_residual_forward). residual may alias
inp1 (an in-place residual stream); out must not alias either input.

Backward (rmsnorm_backward_*, then rmsnorm_dgain_reduce):
    a = dy * g;  dx += rstd * a - x * rstd^3 * mean(a * x)      (dx accumulates: it is the residual
                                                                stream's gradient)
    dgain += sum over rows of dy * x * rstd
Stage 1: block k owns rows [k * rows_per_chunk, (k+1) * rows_per_chunk); its W warps take the rows
in turn (warp w: rows w, w + W, ...), each warp keeping its own per-channel dgain sums in shared
memory ([W, d] fp32, a channel's sum at `packed_slot` on the packed path; a row is read once, in
16-byte packs, when it is at most 3 packs per lane: `rmsnorm_backward_packed`; else twice,
element by element); at the end
the block adds its W rows in warp order and writes
partial[k, :]. Stage 2 (rmsnorm_dgain_reduce) sums partial[:, c] over k in a fixed order and adds
to dgain[c]. No atomics: the bits do not depend on scheduling. (llm.c finishes the cross-block
sum in-kernel with a flag; two launches are simpler and cost ~2 us.)

Launch (grid maths):
    rmsnorm_forward_*, fused_residual_rmsnorm_forward_*:
        block = 256 (8 warps, one row each), grid = ceil(N / 8).
    rmsnorm_backward_*:
        W = clamp(8192 / d, 1, 8) warps, block = 32 * W, grid = ceil(N / rows_per_chunk),
        dynamic shared memory = W * d * 4 bytes (<= 32 KiB for any d <= 8192; above 48 KiB would need
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), partial = [grid, d] fp32 scratch.
        rows_per_chunk = norm_rows_per_chunk(N) (launch/norm.rs): about 512 blocks, 64 to 256 rows.
    rmsnorm_dgain_reduce:
        block = (32, 8), grid = ceil(d / 32); thread (x, y) sums chunks y, y + 8, ... of channel
        32 * blockIdx.x + x, then the 8 partial sums are added in y order.

Entry points: rmsnorm_forward_{f32,bf16}, fused_residual_rmsnorm_forward_{f32,bf16},
rmsnorm_backward_{f32,bf16}, rmsnorm_dgain_reduce.
*/

// Plain reference (the CPU twin, backend::cpu::norm):
//
//   void rmsnorm_forward_reference(float* y, float* rstd, const float* x, const float* g, int N, int d, float eps) {
//       for (int n = 0; n < N; n++) {
//           float ss = 0; for (int c = 0; c < d; c++) ss += x[n*d+c] * x[n*d+c];
//           float rs = 1.0f / sqrtf(ss / d + eps);
//           rstd[n] = rs;
//           for (int c = 0; c < d; c++) y[n*d+c] = x[n*d+c] * rs * g[c];
//       }
//   }
//   void rmsnorm_backward_reference(float* dx, float* dg, const float* dy, const float* x, const float* g,
//                                   const float* rstd, int N, int d) {
//       for (int n = 0; n < N; n++) {
//           float rs = rstd[n], ax = 0;
//           for (int c = 0; c < d; c++) ax += dy[n*d+c] * g[c] * x[n*d+c];
//           float coef = rs * rs * rs * ax / d;
//           for (int c = 0; c < d; c++) {
//               dx[n*d+c] += rs * dy[n*d+c] * g[c] - coef * x[n*d+c];
//               dg[c] += dy[n*d+c] * x[n*d+c] * rs;
//           }
//       }
//   }

#include "common.cuh"

template <typename T>
__device__ void rmsnorm_forward(T* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ inp,
                                const T* __restrict__ gain, int N, int d, float eps) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    const T* x = inp + (size_t)row * d;
    float ss = 0.0f;
    for (int c = lane; c < d; c += WARP_SIZE) {
        float v = to_float(x[c]);
        ss += v * v;
    }
    ss = warp_reduce_sum(ss);
    float rs = rsqrtf(ss / d + eps);
    if (rstd != nullptr && lane == 0) rstd[row] = rs;
    T* y = out + (size_t)row * d;
    for (int c = lane; c < d; c += WARP_SIZE) {
        y[c] = from_float<T>(to_float(x[c]) * rs * to_float(gain[c]));
    }
}

// residual may alias inp1: no __restrict__ on those three.
template <typename T>
__device__ void fused_residual_rmsnorm_forward(T* residual, T* __restrict__ out, float* __restrict__ rstd,
                                               const T* inp1, const T* inp2, const T* __restrict__ gain, int N,
                                               int d, float eps) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= N) return;
    const size_t off = (size_t)row * d;
    float ss = 0.0f;
    for (int c = lane; c < d; c += WARP_SIZE) {
        // Round the sum to T first, so the norm (and later the backward) sees the stored value.
        T r = from_float<T>(to_float(inp1[off + c]) + to_float(inp2[off + c]));
        residual[off + c] = r;
        float v = to_float(r);
        ss += v * v;
    }
    ss = warp_reduce_sum(ss);
    float rs = rsqrtf(ss / d + eps);
    if (rstd != nullptr && lane == 0) rstd[row] = rs;
    for (int c = lane; c < d; c += WARP_SIZE) {
        // Each lane re-reads only what it wrote itself above: no fence needed.
        out[off + c] = from_float<T>(to_float(residual[off + c]) * rs * to_float(gain[c]));
    }
}

// Where rmsnorm_backward_packed keeps channel c's dgain sum in its warp's accumulator: slot
// (v P + i) 32 + lane for c = (32 v + lane) P + i, so that the warp's 32 lanes add into 32
// consecutive floats (32 banks) instead of floats P apart (a P-way bank conflict).
template <typename T> __device__ __forceinline__ int packed_slot(int c) {
    constexpr int P = Pack16<T>::N;
    return ((c / (WARP_SIZE * P)) * P + c % P) * WARP_SIZE + (c / P) % WARP_SIZE;
}

// The rows of rmsnorm_backward when d is 32 V packs of 16 bytes (V <= 3; bf16: d = 256, 512,
// 768; at V = 4 x and dy would spill from the 80 registers of 3 blocks per SM): lane `lane` owns
// channels (32 v + lane) P .. + P - 1 for v < V (P elements per pack), so a warp's loads are
// whole 512-byte runs, and a row's x and dy are read once, into registers (the gain, the same for
// every row, comes from L1). The dgain sums go to `my_acc` at `packed_slot`.
template <typename T, int V>
__device__ void rmsnorm_backward_packed(T* __restrict__ dinp, float* __restrict__ my_acc, const T* __restrict__ dout,
                                        const T* __restrict__ inp, const T* __restrict__ gain,
                                        const float* __restrict__ rstd, int row, int row_end, int step, int d) {
    constexpr int P = Pack16<T>::N;
    const int lane = threadIdx.x % WARP_SIZE;
    for (; row < row_end; row += step) {
        const size_t off = (size_t)row * d;
        const float rs = rstd[row];
        float x[V][P], dy[V][P], g[P];
        float ax = 0.0f;
#pragma unroll
        for (int v = 0; v < V; v++) {
            const int c = (v * WARP_SIZE + lane) * P;
            Pack16<T>::unpack(*reinterpret_cast<const uint4*>(inp + off + c), x[v]);
            Pack16<T>::unpack(*reinterpret_cast<const uint4*>(dout + off + c), dy[v]);
            Pack16<T>::unpack(*reinterpret_cast<const uint4*>(gain + c), g);
#pragma unroll
            for (int i = 0; i < P; i++) ax += dy[v][i] * g[i] * x[v][i];
        }
        ax = warp_reduce_sum(ax);
        const float coef = rs * rs * rs * ax / d;
#pragma unroll
        for (int v = 0; v < V; v++) {
            const int c = (v * WARP_SIZE + lane) * P;
            uint4* at = reinterpret_cast<uint4*>(dinp + off + c);
            float dx[P];
            Pack16<T>::unpack(*at, dx);
            Pack16<T>::unpack(*reinterpret_cast<const uint4*>(gain + c), g);
#pragma unroll
            for (int i = 0; i < P; i++) {
                dx[i] += rs * dy[v][i] * g[i] - coef * x[v][i];
                my_acc[packed_slot<T>(c + i)] += dy[v][i] * x[v][i] * rs; // lane-private slots
            }
            *at = Pack16<T>::pack(dx);
        }
    }
}

// Any d: each lane strides the row by 32 single elements, and reads it twice.
template <typename T>
__device__ void rmsnorm_backward_strided(T* __restrict__ dinp, float* __restrict__ my_acc, const T* __restrict__ dout,
                                         const T* __restrict__ inp, const T* __restrict__ gain,
                                         const float* __restrict__ rstd, int row, int row_end, int step, int d) {
    const int lane = threadIdx.x % WARP_SIZE;
    for (; row < row_end; row += step) {
        const size_t off = (size_t)row * d;
        const float rs = rstd[row];
        float ax = 0.0f;
        for (int c = lane; c < d; c += WARP_SIZE) {
            ax += to_float(dout[off + c]) * to_float(gain[c]) * to_float(inp[off + c]);
        }
        ax = warp_reduce_sum(ax);
        const float coef = rs * rs * rs * ax / d;
        for (int c = lane; c < d; c += WARP_SIZE) {
            float dy = to_float(dout[off + c]);
            float x = to_float(inp[off + c]);
            float dx = to_float(dinp[off + c]) + (rs * dy * to_float(gain[c]) - coef * x);
            dinp[off + c] = from_float<T>(dx);
            my_acc[c] += dy * x * rs; // lane-private channel: no race inside the warp
        }
    }
}

template <typename T>
__device__ void rmsnorm_backward(T* __restrict__ dinp, float* __restrict__ partial, const T* __restrict__ dout,
                                 const T* __restrict__ inp, const T* __restrict__ gain,
                                 const float* __restrict__ rstd, int N, int d, int rows_per_chunk) {
    extern __shared__ float dg_acc[]; // [num_warps, d]
    const int warp = threadIdx.x / WARP_SIZE;
    const int num_warps = blockDim.x / WARP_SIZE;
    for (int i = threadIdx.x; i < num_warps * d; i += blockDim.x) dg_acc[i] = 0.0f;
    __syncthreads();

    const int row_begin = blockIdx.x * rows_per_chunk;
    const int row_end = min(N, row_begin + rows_per_chunk);
    float* my_acc = dg_acc + (size_t)warp * d;
    const int row = row_begin + warp;
    // Whole 16-byte packs need d a multiple of 32 packs and every row (so the base) 16-byte aligned.
    const int packs = d / (WARP_SIZE * Pack16<T>::N);
    const bool packed = d % (WARP_SIZE * Pack16<T>::N) == 0 && fits_packs16(dinp, d) && fits_packs16(dout, d) &&
                        fits_packs16(inp, d) && fits_packs16(gain, d);
    const bool slotted = packed && packs <= 3; // the channels' sums sit at packed_slot
    if (packed && packs == 1)
        rmsnorm_backward_packed<T, 1>(dinp, my_acc, dout, inp, gain, rstd, row, row_end, num_warps, d);
    else if (packed && packs == 2)
        rmsnorm_backward_packed<T, 2>(dinp, my_acc, dout, inp, gain, rstd, row, row_end, num_warps, d);
    else if (packed && packs == 3)
        rmsnorm_backward_packed<T, 3>(dinp, my_acc, dout, inp, gain, rstd, row, row_end, num_warps, d);
    else
        rmsnorm_backward_strided(dinp, my_acc, dout, inp, gain, rstd, row, row_end, num_warps, d);
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float s = 0.0f;
        const int at = slotted ? packed_slot<T>(c) : c;
        for (int w = 0; w < num_warps; w++) s += dg_acc[(size_t)w * d + at];
        partial[(size_t)blockIdx.x * d + c] = s;
    }
}

extern "C" __global__ void rmsnorm_forward_f32(float* out, float* rstd, const float* inp, const float* gain, int N,
                                               int d, float eps) {
    rmsnorm_forward(out, rstd, inp, gain, N, d, eps);
}
extern "C" __global__ void rmsnorm_forward_bf16(bf16* out, float* rstd, const bf16* inp, const bf16* gain, int N,
                                                int d, float eps) {
    rmsnorm_forward(out, rstd, inp, gain, N, d, eps);
}
extern "C" __global__ void fused_residual_rmsnorm_forward_f32(float* residual, float* out, float* rstd,
                                                              const float* inp1, const float* inp2,
                                                              const float* gain, int N, int d, float eps) {
    fused_residual_rmsnorm_forward(residual, out, rstd, inp1, inp2, gain, N, d, eps);
}
extern "C" __global__ void fused_residual_rmsnorm_forward_bf16(bf16* residual, bf16* out, float* rstd,
                                                               const bf16* inp1, const bf16* inp2, const bf16* gain,
                                                               int N, int d, float eps) {
    fused_residual_rmsnorm_forward(residual, out, rstd, inp1, inp2, gain, N, d, eps);
}
extern "C" __global__ void __launch_bounds__(256, 3) rmsnorm_backward_f32(float* dinp, float* partial, const float* dout, const float* inp,
                                                const float* gain, const float* rstd, int N, int d,
                                                int rows_per_chunk) {
    rmsnorm_backward(dinp, partial, dout, inp, gain, rstd, N, d, rows_per_chunk);
}
extern "C" __global__ void __launch_bounds__(256, 3) rmsnorm_backward_bf16(bf16* dinp, float* partial, const bf16* dout, const bf16* inp,
                                                 const bf16* gain, const float* rstd, int N, int d,
                                                 int rows_per_chunk) {
    rmsnorm_backward(dinp, partial, dout, inp, gain, rstd, N, d, rows_per_chunk);
}

// dgain[c] += sum_k partial[k, c], k ascending within each of the 8 thread rows, rows added in order.
extern "C" __global__ void rmsnorm_dgain_reduce(float* __restrict__ dgain, const float* __restrict__ partial,
                                                int num_chunks, int d) {
    __shared__ float sums[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (c < d) {
        for (int k = threadIdx.y; k < num_chunks; k += blockDim.y) s += partial[(size_t)k * d + c];
    }
    sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < d) {
        float total = 0.0f;
        for (int y = 0; y < blockDim.y; y++) total += sums[y][threadIdx.x];
        dgain[c] += total;
    }
}
