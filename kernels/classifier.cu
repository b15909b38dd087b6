/*
The fused classifier: one pass over a row of logits gives the loss (cross-entropy + z-loss) and,
when training, overwrites the logits with dlogits in place. No fp32 probabilities are ever
materialised: at vocab 65536 the [N, V] logits are the largest activation, and this kernel reads
them twice (statistics, then gradient) and writes them once. (llm.c's fused_classifier_kernel5.)

Where it goes: logits = xf W_head^T is a cuBLASLt GEMM (bf16 in, bf16 out, fp32 accumulate) into
the [N, V] logits buffer; this kernel turns it into dlogits; then two more cuBLASLt GEMMs give
dxf = dlogits W_head (overwrite) and dW_head += dlogits^T xf (fp32 output, beta = 1). For the
held-out loss pass dscale = 0 and the logits are left untouched.

Layouts: logits [N, V] row-major (T), targets [N] u32, ce [N] fp32 (lse - logit[target]),
lse [N] fp32 (logsumexp of the row; z-loss = lse^2). The loss of a batch is
    (1 / N_total) sum_rows (ce + z_loss * lse^2),
so dscale = 1 / N_total (0 = evaluation, no gradient):
    dlogit_j = dscale * ((1 + 2 z_loss lse) softmax_j - [j == target])

Reduction: each thread keeps an online (max, sum exp) pair over its elements (16-byte packs
strided by the block when the rows allow it, else single elements); pairs are
combined by a warp butterfly, then warp 0 combines the warp results in order. Deterministic.
The per-row ce and lse come out separately so that the batch sums (loss_sums) are taken in a
fixed order in fp64.

Launch (grid maths):
    classifier_forward_backward_*: grid = N (one block per row), block = 1024 when V >= 8192 else
        256 (any multiple of 32 up to 1024 is correct); static smem 256 B.
    classifier_warp_rows_*: the same rows a warp each, for V <= 2048 (at most 8 packs of bf16 per
        lane; a block per row of 256 would leave 7 of its 8 warps idle at V = 256): block = 256
        (8 rows), grid = ceil(N / 8).
    loss_sums: grid = 1, block = 1024: out[0] = sum ce, out[1] = sum lse^2 (fp64), each thread
        summing rows tid, tid + 1024, ... then a fixed tree.

Entry points: classifier_forward_backward_{f32,bf16}, classifier_warp_rows_{f32,bf16}, loss_sums.
*/

// Plain reference (the CPU twin, backend::cpu::classifier, per row):
//
//   float m = max_j logits[j];
//   float sum = 0; for j: sum += expf(logits[j] - m);
//   float lse = m + logf(sum);
//   ce[row] = lse - logits[target];  lse_out[row] = lse;
//   if (dscale != 0) {
//       float coef = dscale * (1 + 2 * z_loss * lse);
//       for j: logits[j] = expf(logits[j] - lse) * coef;
//       logits[target] -= dscale;
//   }

#include "common.cuh"

// Combine two (max, sum of exp(x - max)) pairs. A pair with max = -inf is empty.
__device__ __forceinline__ void combine(float& m, float& s, float m2, float s2) {
    if (m2 == -INFINITY) return;
    if (m == -INFINITY) {
        m = m2;
        s = s2;
        return;
    }
    const float mn = fmaxf(m, m2);
    s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
    m = mn;
}

// Add one logit to an online (max, sum of exp(x - max)) pair.
__device__ __forceinline__ void online_add(float& m, float& s, float v) {
    if (v > m) {
        s = (m == -INFINITY ? 0.0f : s * __expf(m - v)) + 1.0f;
        m = v;
    } else {
        s += (v == -INFINITY) ? 0.0f : __expf(v - m); // -inf logits contribute 0 (and no NaN)
    }
}

// warp_rows = false: a block per row (blockIdx.x), its threads striding the row. warp_rows =
// true: a warp per row (row blockIdx.x * warps + warp), for rows too short to feed a block; the
// warp's butterfly is then the whole reduction and the block never synchronises.
template <typename T, bool warp_rows>
__device__ void classifier_forward_backward(T* __restrict__ logits, float* __restrict__ ce,
                                            float* __restrict__ lse_out, const unsigned* __restrict__ targets,
                                            int N, int V, float z_loss, float dscale) {
    __shared__ float sm_m[32];
    __shared__ float sm_s[32];
    __shared__ float sm_lse;
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int num_warps = blockDim.x / WARP_SIZE;
    const int row = warp_rows ? blockIdx.x * num_warps + warp : blockIdx.x;
    if (row >= N) return; // a whole block, or (warp_rows) a whole warp
    const int tid = warp_rows ? lane : threadIdx.x;      // this thread's place among the row's
    const int stride = warp_rows ? WARP_SIZE : blockDim.x; // threads
    T* x = logits + (size_t)row * V;
    const unsigned target = targets[row];
    // Rows are read and written in 16-byte packs (a warp covers 512 contiguous bytes per step)
    // where every row starts aligned, else element by element; the same for the whole grid.
    constexpr int P = Pack16<T>::N;
    const bool packed = fits_packs16(logits, V);

    // Pass 1: online max and sum of exponentials.
    float m = -INFINITY, s = 0.0f;
    if (packed) {
        for (int j = tid * P; j < V; j += stride * P) {
            float v[P];
            Pack16<T>::unpack(*reinterpret_cast<const uint4*>(x + j), v);
            for (int e = 0; e < P; ++e) online_add(m, s, v[e]);
        }
    } else {
        for (int j = tid; j < V; j += stride) online_add(m, s, to_float(x[j]));
    }
    // Read the target logit before any thread can overwrite the row in pass 2: the block's
    // barrier, or (warp_rows) the shuffle that hands it to the warp, orders the two.
    float x_target = tid == 0 ? to_float(x[target]) : 0.0f;
    for (int off = 16; off > 0; off >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
        combine(m, s, m2, s2);
    }
    float lse;
    if (warp_rows) {
        x_target = __shfl_sync(0xffffffffu, x_target, 0);
        lse = m + __logf(s);
        if (lane == 0) {
            ce[row] = lse - x_target;
            lse_out[row] = lse;
        }
    } else {
        if (lane == 0) {
            sm_m[warp] = m;
            sm_s[warp] = s;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float mt = sm_m[0], st = sm_s[0];
            for (int w = 1; w < num_warps; w++) combine(mt, st, sm_m[w], sm_s[w]);
            sm_lse = mt + __logf(st);
            ce[row] = sm_lse - x_target;
            lse_out[row] = sm_lse;
        }
        __syncthreads();
        lse = sm_lse;
    }
    if (dscale == 0.0f) return;

    // Pass 2: dlogits in place.
    const float coef = dscale * (1.0f + 2.0f * z_loss * lse);
    auto dlogit = [&](float v, int j) {
        const float g = __expf(v - lse) * coef;
        return j == (int)target ? g - dscale : g;
    };
    if (packed) {
        for (int j = tid * P; j < V; j += stride * P) {
            float v[P];
            Pack16<T>::unpack(*reinterpret_cast<const uint4*>(x + j), v);
            for (int e = 0; e < P; ++e) v[e] = dlogit(v[e], j + e);
            *reinterpret_cast<uint4*>(x + j) = Pack16<T>::pack(v);
        }
    } else {
        for (int j = tid; j < V; j += stride) x[j] = from_float<T>(dlogit(to_float(x[j]), j));
    }
}

extern "C" __global__ void __launch_bounds__(1024) classifier_forward_backward_f32(float* logits, float* ce,
                                                                                   float* lse, const unsigned* targets,
                                                                                   int N, int V, float z_loss,
                                                                                   float dscale) {
    classifier_forward_backward<float, false>(logits, ce, lse, targets, N, V, z_loss, dscale);
}
extern "C" __global__ void __launch_bounds__(1024) classifier_forward_backward_bf16(bf16* logits, float* ce,
                                                                                    float* lse,
                                                                                    const unsigned* targets, int N,
                                                                                    int V, float z_loss,
                                                                                    float dscale) {
    classifier_forward_backward<bf16, false>(logits, ce, lse, targets, N, V, z_loss, dscale);
}
extern "C" __global__ void __launch_bounds__(256) classifier_warp_rows_f32(float* logits, float* ce, float* lse,
                                                                           const unsigned* targets, int N, int V,
                                                                           float z_loss, float dscale) {
    classifier_forward_backward<float, true>(logits, ce, lse, targets, N, V, z_loss, dscale);
}
extern "C" __global__ void __launch_bounds__(256) classifier_warp_rows_bf16(bf16* logits, float* ce, float* lse,
                                                                            const unsigned* targets, int N, int V,
                                                                            float z_loss, float dscale) {
    classifier_forward_backward<bf16, true>(logits, ce, lse, targets, N, V, z_loss, dscale);
}

// out[0] = sum_n ce[n], out[1] = sum_n lse[n]^2, in fp64 (the CPU backend's LossSums are fp64).
extern "C" __global__ void __launch_bounds__(1024) loss_sums(double* __restrict__ out, const float* __restrict__ ce,
                                                             const float* __restrict__ lse, int N) {
    __shared__ double shared[32];
    double a = 0.0, z = 0.0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        a += (double)ce[n];
        const double l = (double)lse[n];
        z += l * l;
    }
    a = block_reduce_sum(a, shared);
    z = block_reduce_sum(z, shared);
    if (threadIdx.x == 0) {
        out[0] = a;
        out[1] = z;
    }
}
