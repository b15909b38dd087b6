/*
Causal self-attention over the fused qkv activation, head dim 64: a flash-style forward that keeps
only the output and the per-row log-sum-exp, and a backward that recomputes the probabilities from
that log-sum-exp (FlashAttention-2's scheme). The T x T matrix is never stored.

Rotary position embedding is fused in: qkv holds q and k as the projection wrote them, and the
kernels rotate them to their positions as they load them (the pairs (c, c + 32) of each head, as
the CPU's rope_apply) and un-rotate dq and dk as they store them, so dqkv is the gradient of the
stored, unrotated qkv. That saves the rotary's own launches, a read and a write of q and k each,
forward and backward.

Layouts (the CPU twin's, backend::cpu::attention, with backend::cpu::rope around it):
    qkv   [B*T, 3d] (T), q | k | v, each split into H heads of 64 (d = 64 H); q and k unrotated
    cos, sin [T, 32] fp32: the rotary tables (RopeTables), row t for position t
    out   [B*T, d]  (T), heads side by side
    lse   [B, H, T] fp32: m + log(sum exp(s - m)) of each query row's scaled scores
    delta [B, H, T] fp32 scratch: D_i = dot(dout_i, out_i) (backward preprocess)
    dqkv  [B*T, 3d] (T), overwritten (every element is written: dq by the dq kernel, dk and dv by
          the dkdv kernel)
Scores are s_ij = (q_i . k_j) / 8 for j <= i (1/sqrt(64) = 1/8 exactly).

This file holds the CUDA-core kernels: fp32 FMAs, one thread per query (or key) row, K/V (or
Q/dO) tiles staged through shared memory and read as broadcasts, exact to fp32 rounding for both
storage types. They are the f32 path and the reference; bf16 training runs attention_tc.cu's
tensor-core kernels (same signatures and layouts), and `terse bench kernels` times both.

Forward (attention_forward_*): block (query tile qt, head h, batch b) = 64 threads, thread t owns
query i = 64 qt + t, holding q_i and its unnormalised output in registers. For every 32-key tile
up to the tile's last query: scores, the tile max, rescale by exp(m_old - m_new), accumulate
p_j v_j. At the end out = o / l, lse = m + log l. Query tiles run heaviest (latest) first.

Backward:
    attention_backward_preprocess_*: D_i = dout_i . out_i, one warp per (b, h, i).
    attention_backward_dkdv_*: block (key tile, h, b) = 64 threads, thread owns key j; k_j and v_j
        in padded shared memory ([64][65]: conflict-free per-thread rows), dk_j and dv_j in
        registers. Streams 16-query tiles of q and dout from the key tile's first row to T:
            p = exp(s_ij - lse_i), dp = dout_i . v_j, ds = p (dp - D_i) / 8,
            dv_j += p dout_i, dk_j += ds q_i.
    attention_backward_dq_*: block (query tile, h, b) = 64 threads, thread owns query i; q_i and
        dout_i in padded shared memory, dq_i in registers; streams 16-key tiles of k and v:
            dq_i += ds k_j.
    dq and dk/dv are separate kernels (each recomputes p) so that every output element has exactly
    one writer: deterministic, no atomics.

Launch (grid maths), with nt64 = ceil(T / 64):
    attention_forward_*:             grid (nt64, H, B), block 64, static smem 16 KiB.
    attention_backward_preprocess_*: grid ceil(B * H * T / 8), block 256 (8 warps, a row each).
    attention_backward_dkdv_*:       grid (nt64, H, B), block 64, static smem 40.6 KiB.
    attention_backward_dq_*:         grid (nt64, H, B), block 64, static smem 40.6 KiB.
    gridDim.y = H <= 65535 and gridDim.z = B <= 65535.

Entry points: attention_forward_{f32,bf16}, attention_backward_preprocess_{f32,bf16},
attention_backward_dkdv_{f32,bf16}, attention_backward_dq_{f32,bf16}.
*/

// Plain reference (the CPU twin):
//
//   q, k = rope(q), rope(k) (backend::cpu::rope::rope_apply); then for each (b, h), for i in 0..T:
//       s_j = dot(q_i, k_j) / 8 for j <= i;  m = max_j s_j;  l = sum_j exp(s_j - m)
//       out_i = sum_j exp(s_j - m) v_j / l;  lse_i = m + log(l)
//   backward, with D_i = dot(dout_i, out_i):
//       p_ij = exp(dot(q_i, k_j) / 8 - lse_i);  ds_ij = p_ij (dot(dout_i, v_j) - D_i) / 8
//       dq_i = sum_{j <= i} ds_ij k_j;  dk_j = sum_{i >= j} ds_ij q_i;  dv_j = sum_{i >= j} p_ij dout_i
//   and dq, dk rotated back (rope_apply's inverse).

#include "common.cuh"

#define HD 64        // head dim
#define FWD_BR 64    // forward: query rows per block (one thread each)
#define FWD_BC 32    // forward: keys per shared tile
#define BWD_BR 64    // backward: own rows per block (one thread each)
#define BWD_BC 16    // backward: streamed rows per shared tile
#define SCALE 0.125f // 1 / sqrt(HD)

// A rotated q or k value as storage type T holds it: the kernels see what a separate rotary pass
// would have stored (and the tensor cores, bf16 operands, can see nothing finer).
template <typename T>
__device__ __forceinline__ float as_stored(float x) {
    return to_float(from_float<T>(x));
}

// Rows r0..r0+n-1 of a 64-wide q or k head slice (`src` at row 0, rows `row3` apart) into shared
// `dst` (rows `ld` floats apart), each rotated to its position (as_stored); rows at or past T_len
// are zeros.
template <typename T>
__device__ __forceinline__ void load_rotated_rows(float* dst, int ld, const T* src, size_t row3, int r0, int n,
                                                  int T_len, const float* cos_t, const float* sin_t) {
    for (int e = threadIdx.x; e < n * (HD / 2); e += blockDim.x) {
        const int r = e / (HD / 2), c = e % (HD / 2), pos = r0 + r;
        float x1 = 0.0f, x2 = 0.0f;
        if (pos < T_len) {
            const T* xp = src + (size_t)pos * row3;
            x1 = to_float(xp[c]);
            x2 = to_float(xp[c + HD / 2]);
            rotate_pair(x1, x2, cos_t[pos * (HD / 2) + c], sin_t[pos * (HD / 2) + c]);
        }
        dst[r * ld + c] = as_stored<T>(x1);
        dst[r * ld + c + HD / 2] = as_stored<T>(x2);
    }
}

// A row of 64 in registers rotated to position pos (sign = 1) or back from it (sign = -1, the
// backward's un-rotation of dq and dk).
__device__ __forceinline__ void rotate_row(float x[HD], int pos, const float* cos_t, const float* sin_t, float sign) {
#pragma unroll
    for (int c = 0; c < HD / 2; c++)
        rotate_pair(x[c], x[c + HD / 2], cos_t[pos * (HD / 2) + c], sign * sin_t[pos * (HD / 2) + c]);
}

// ----------------------------------------------------------------------------
// forward

template <typename T>
__device__ void attention_forward(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ qkv,
                                  const float* __restrict__ cos_t, const float* __restrict__ sin_t, int B, int T_len,
                                  int H) {
    __shared__ float Ks[FWD_BC][HD];
    __shared__ float Vs[FWD_BC][HD];
    const int qt = gridDim.x - 1 - blockIdx.x; // heaviest tiles first
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int d = H * HD;
    const size_t row3 = 3 * (size_t)d;
    const T* base = qkv + (size_t)b * T_len * row3;
    const int i = qt * FWD_BR + threadIdx.x;
    const bool valid = i < T_len;

    float q[HD], o[HD];
#pragma unroll
    for (int c = 0; c < HD; c++) {
        q[c] = valid ? to_float(base[(size_t)i * row3 + h * HD + c]) : 0.0f;
        o[c] = 0.0f;
    }
    if (valid) rotate_row(q, i, cos_t, sin_t, 1.0f);
#pragma unroll
    for (int c = 0; c < HD; c++) q[c] = as_stored<T>(q[c]);
    float m = -INFINITY, l = 0.0f;

    const int kv_end = min(T_len, (qt + 1) * FWD_BR); // keys the tile's last row can see
    for (int k0 = 0; k0 < kv_end; k0 += FWD_BC) {
        __syncthreads(); // previous tile fully consumed
        load_rotated_rows(&Ks[0][0], HD, base + d + h * HD, row3, k0, FWD_BC, T_len, cos_t, sin_t);
        for (int e = threadIdx.x; e < FWD_BC * HD; e += blockDim.x) {
            const int r = e / HD, c = e % HD, j = k0 + r;
            Vs[r][c] = j < T_len ? to_float(base[(size_t)j * row3 + 2 * d + h * HD + c]) : 0.0f;
        }
        __syncthreads();
        if (!valid || k0 > i) continue; // the whole tile is in this row's future

        float s[FWD_BC];
        float mt = -INFINITY;
#pragma unroll
        for (int r = 0; r < FWD_BC; r++) {
            float acc = 0.0f;
#pragma unroll
            for (int c = 0; c < HD; c++) acc += q[c] * Ks[r][c];
            s[r] = (k0 + r <= i) ? acc * SCALE : -INFINITY;
            mt = fmaxf(mt, s[r]);
        }
        // Key k0 <= i is visible, so mt and m_new are finite; the first tile has m = -inf and
        // alpha = exp(-inf) = 0.
        const float m_new = fmaxf(m, mt);
        const float alpha = __expf(m - m_new);
        l *= alpha;
#pragma unroll
        for (int c = 0; c < HD; c++) o[c] *= alpha;
#pragma unroll
        for (int r = 0; r < FWD_BC; r++) {
            const float p = __expf(s[r] - m_new); // masked: exp(-inf) = 0
            l += p;
#pragma unroll
            for (int c = 0; c < HD; c++) o[c] += p * Vs[r][c];
        }
        m = m_new;
    }
    if (valid) {
        const float inv = 1.0f / l;
        T* op = out + ((size_t)b * T_len + i) * d + h * HD;
#pragma unroll
        for (int c = 0; c < HD; c++) op[c] = from_float<T>(o[c] * inv);
        lse[((size_t)b * H + h) * T_len + i] = m + __logf(l);
    }
}

// ----------------------------------------------------------------------------
// backward

template <typename T>
__device__ void attention_backward_preprocess(float* __restrict__ delta, const T* __restrict__ dout,
                                              const T* __restrict__ out, int B, int T_len, int H) {
    const int lane = threadIdx.x % WARP_SIZE;
    const size_t w = (size_t)blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE; // [B, H, T] index
    if (w >= (size_t)B * H * T_len) return;
    const int t = (int)(w % T_len);
    const int h = (int)((w / T_len) % H);
    const size_t b = w / ((size_t)T_len * H);
    const size_t off = (b * T_len + t) * (size_t)(H * HD) + h * HD;
    float s = to_float(dout[off + lane]) * to_float(out[off + lane]) +
              to_float(dout[off + lane + 32]) * to_float(out[off + lane + 32]);
    s = warp_reduce_sum(s);
    if (lane == 0) delta[w] = s;
}

template <typename T>
__device__ void attention_backward_dkdv(T* __restrict__ dqkv, const T* __restrict__ qkv, const T* __restrict__ dout,
                                        const float* __restrict__ lse, const float* __restrict__ delta,
                                        const float* __restrict__ cos_t, const float* __restrict__ sin_t, int B,
                                        int T_len, int H) {
    __shared__ float Kp[BWD_BR][HD + 1]; // own keys (padded: thread t reads row t conflict-free)
    __shared__ float Vp[BWD_BR][HD + 1];
    __shared__ float Qs[BWD_BC][HD];     // streamed queries (broadcast reads)
    __shared__ float dOs[BWD_BC][HD];
    __shared__ float lse_s[BWD_BC];
    __shared__ float delta_s[BWD_BC];
    const int kt = blockIdx.x; // key tile 0 sees the most queries: scheduled first
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int d = H * HD;
    const size_t row3 = 3 * (size_t)d;
    const T* base = qkv + (size_t)b * T_len * row3;
    const T* dbase = dout + (size_t)b * T_len * d;
    const float* lse_bh = lse + ((size_t)b * H + h) * T_len;
    const float* delta_bh = delta + ((size_t)b * H + h) * T_len;
    const int j0 = kt * BWD_BR;
    const int j = j0 + threadIdx.x;
    const bool valid = j < T_len;

    load_rotated_rows(&Kp[0][0], HD + 1, base + d + h * HD, row3, j0, BWD_BR, T_len, cos_t, sin_t);
    for (int e = threadIdx.x; e < BWD_BR * HD; e += blockDim.x) {
        const int r = e / HD, c = e % HD, jj = j0 + r;
        Vp[r][c] = jj < T_len ? to_float(base[(size_t)jj * row3 + 2 * d + h * HD + c]) : 0.0f;
    }
    float dk[HD], dv[HD];
#pragma unroll
    for (int c = 0; c < HD; c++) {
        dk[c] = 0.0f;
        dv[c] = 0.0f;
    }

    for (int q0 = j0; q0 < T_len; q0 += BWD_BC) { // queries i >= j0 only
        __syncthreads();
        load_rotated_rows(&Qs[0][0], HD, base + h * HD, row3, q0, BWD_BC, T_len, cos_t, sin_t);
        for (int e = threadIdx.x; e < BWD_BC * HD; e += blockDim.x) {
            const int r = e / HD, c = e % HD, i = q0 + r;
            dOs[r][c] = i < T_len ? to_float(dbase[(size_t)i * d + h * HD + c]) : 0.0f;
        }
        if (threadIdx.x < BWD_BC) {
            const int i = q0 + threadIdx.x;
            lse_s[threadIdx.x] = i < T_len ? lse_bh[i] : 0.0f;
            delta_s[threadIdx.x] = i < T_len ? delta_bh[i] : 0.0f;
        }
        __syncthreads();
        if (!valid) continue;
#pragma unroll 1
        for (int r = 0; r < BWD_BC; r++) {
            const int i = q0 + r;
            if (i < j || i >= T_len) continue; // causal: key j is seen by queries i >= j
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int c = 0; c < HD; c++) {
                s += Qs[r][c] * Kp[threadIdx.x][c];
                dp += dOs[r][c] * Vp[threadIdx.x][c];
            }
            const float p = __expf(s * SCALE - lse_s[r]);
            const float ds = p * (dp - delta_s[r]) * SCALE;
#pragma unroll
            for (int c = 0; c < HD; c++) {
                dv[c] += p * dOs[r][c];
                dk[c] += ds * Qs[r][c];
            }
        }
    }
    // Un-rotated (the gradient of the stored k), then staged through shared memory so the global
    // stores are coalesced.
    if (valid) rotate_row(dk, j, cos_t, sin_t, -1.0f);
    __syncthreads();
#pragma unroll
    for (int c = 0; c < HD; c++) {
        Kp[threadIdx.x][c] = dk[c];
        Vp[threadIdx.x][c] = dv[c];
    }
    __syncthreads();
    T* dbase_qkv = dqkv + (size_t)b * T_len * row3;
    for (int e = threadIdx.x; e < BWD_BR * HD; e += blockDim.x) {
        const int r = e / HD, c = e % HD, jj = j0 + r;
        if (jj < T_len) {
            T* dp = dbase_qkv + (size_t)jj * row3 + d + h * HD;
            dp[c] = from_float<T>(Kp[r][c]);
            dp[d + c] = from_float<T>(Vp[r][c]);
        }
    }
}

template <typename T>
__device__ void attention_backward_dq(T* __restrict__ dqkv, const T* __restrict__ qkv, const T* __restrict__ dout,
                                      const float* __restrict__ lse, const float* __restrict__ delta,
                                      const float* __restrict__ cos_t, const float* __restrict__ sin_t, int B,
                                      int T_len, int H) {
    __shared__ float Qp[BWD_BR][HD + 1]; // own queries (padded)
    __shared__ float dOp[BWD_BR][HD + 1];
    __shared__ float Ks[BWD_BC][HD];     // streamed keys (broadcast reads)
    __shared__ float Vs[BWD_BC][HD];
    const int qt = gridDim.x - 1 - blockIdx.x; // heaviest tiles first
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int d = H * HD;
    const size_t row3 = 3 * (size_t)d;
    const T* base = qkv + (size_t)b * T_len * row3;
    const T* dbase = dout + (size_t)b * T_len * d;
    const int i0 = qt * BWD_BR;
    const int i = i0 + threadIdx.x;
    const bool valid = i < T_len;
    const float lse_i = valid ? lse[((size_t)b * H + h) * T_len + i] : 0.0f;
    const float delta_i = valid ? delta[((size_t)b * H + h) * T_len + i] : 0.0f;

    load_rotated_rows(&Qp[0][0], HD + 1, base + h * HD, row3, i0, BWD_BR, T_len, cos_t, sin_t);
    for (int e = threadIdx.x; e < BWD_BR * HD; e += blockDim.x) {
        const int r = e / HD, c = e % HD, ii = i0 + r;
        dOp[r][c] = ii < T_len ? to_float(dbase[(size_t)ii * d + h * HD + c]) : 0.0f;
    }
    float dq[HD];
#pragma unroll
    for (int c = 0; c < HD; c++) dq[c] = 0.0f;

    const int kv_end = min(T_len, i0 + BWD_BR);
    for (int k0 = 0; k0 < kv_end; k0 += BWD_BC) {
        __syncthreads();
        load_rotated_rows(&Ks[0][0], HD, base + d + h * HD, row3, k0, BWD_BC, T_len, cos_t, sin_t);
        for (int e = threadIdx.x; e < BWD_BC * HD; e += blockDim.x) {
            const int r = e / HD, c = e % HD, jj = k0 + r;
            Vs[r][c] = jj < T_len ? to_float(base[(size_t)jj * row3 + 2 * d + h * HD + c]) : 0.0f;
        }
        __syncthreads();
        if (!valid) continue;
#pragma unroll 1
        for (int r = 0; r < BWD_BC; r++) {
            const int jj = k0 + r;
            if (jj > i) break; // causal
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int c = 0; c < HD; c++) {
                s += Qp[threadIdx.x][c] * Ks[r][c];
                dp += dOp[threadIdx.x][c] * Vs[r][c];
            }
            const float p = __expf(s * SCALE - lse_i);
            const float ds = p * (dp - delta_i) * SCALE;
#pragma unroll
            for (int c = 0; c < HD; c++) dq[c] += ds * Ks[r][c];
        }
    }
    if (valid) rotate_row(dq, i, cos_t, sin_t, -1.0f); // the gradient of the stored q
    __syncthreads();
#pragma unroll
    for (int c = 0; c < HD; c++) Qp[threadIdx.x][c] = dq[c];
    __syncthreads();
    T* dbase_qkv = dqkv + (size_t)b * T_len * row3;
    for (int e = threadIdx.x; e < BWD_BR * HD; e += blockDim.x) {
        const int r = e / HD, c = e % HD, ii = i0 + r;
        if (ii < T_len) dbase_qkv[(size_t)ii * row3 + h * HD + c] = from_float<T>(Qp[r][c]);
    }
}

// ----------------------------------------------------------------------------
// entry points

#define ATTN_ENTRIES(SUFFIX, TYPE)                                                                                     \
    extern "C" __global__ void __launch_bounds__(FWD_BR)                                                               \
        attention_forward_##SUFFIX(TYPE* out, float* lse, const TYPE* qkv, const float* cos_t, const float* sin_t,    \
                                   int B, int T_len, int H) {                                                          \
        attention_forward(out, lse, qkv, cos_t, sin_t, B, T_len, H);                                                  \
    }                                                                                                                  \
    extern "C" __global__ void attention_backward_preprocess_##SUFFIX(float* delta, const TYPE* dout,                \
                                                                      const TYPE* out, int B, int T_len, int H) {     \
        attention_backward_preprocess(delta, dout, out, B, T_len, H);                                                 \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(BWD_BR) attention_backward_dkdv_##SUFFIX(                             \
        TYPE* dqkv, const TYPE* qkv, const TYPE* dout, const float* lse, const float* delta, const float* cos_t,      \
        const float* sin_t, int B, int T_len, int H) {                                                                 \
        attention_backward_dkdv(dqkv, qkv, dout, lse, delta, cos_t, sin_t, B, T_len, H);                              \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(BWD_BR) attention_backward_dq_##SUFFIX(                               \
        TYPE* dqkv, const TYPE* qkv, const TYPE* dout, const float* lse, const float* delta, const float* cos_t,      \
        const float* sin_t, int B, int T_len, int H) {                                                                 \
        attention_backward_dq(dqkv, qkv, dout, lse, delta, cos_t, sin_t, B, T_len, H);                                \
    }

ATTN_ENTRIES(f32, float)
ATTN_ENTRIES(bf16, bf16)
