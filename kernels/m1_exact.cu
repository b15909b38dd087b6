// terse: exact
/*
M1's exact inference path on the GPU: the numeric contract of `src/m1/mod.rs`
(docs/numeric-contract.md), operation for operation, so the probabilities are the CPU's bit for bit.

This file compiles with -fmad=false, IEEE division and square root and no flush-to-zero (build.rs,
first line above): every `a * b + c` below is two rounded operations unless written `fmaf`.

One call of the step advances a set of *rows*: row r feeds byte `row_token[r]` to stream
`row_stream[r]` at position `row_pos[r]` (streams are independent contexts: Equal-Info windows or
whole `ac` chunks). Per row, the contract's chains:
- a dot product is one `fmaf` chain over ascending k from 0.0f (one thread per output);
- RMSNorm: the fma chain of x[k]^2, then r = 1 / sqrt(ss / d + eps), y = (x r) g;
- rotary: y1 = fmaf(x1, c, -(x2 s)), y2 = fmaf(x1, s, x2 c);
- attention per head: scores dot(q, k_j) * 0.125 (one thread per j), their max (order-free, so a
  block reduction), p_j = exp_contract(s_j - max), the sum of p_j over ascending j in one thread,
  each output an fmaf chain of p_j v_j over ascending j in one thread, then o / sum;
- softmax: the same max / exp / sequential sum / division.

Attention looks back over a sliding window (the model's context W): position t attends to j in
max(0, t + 1 - W)..=t. The caches are rings of P slots per stream (P = min(W, the longest chunk)),
position t in slot t % P. Layouts per layer: keys `[S][H][64][P]` (the score threads, one per
position, read consecutive addresses), values `[S][P][d]` (the output threads, one per channel,
read consecutive addresses).
*/

#include "common.cuh"

// x[r] = tok_emb[row_token[r]]. Grid: ceil(rows * d / 256) blocks of 256.
extern "C" __global__ void m1x_embed(float* x, const float* tok_emb, const int* row_token, int rows,
                                     int d) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * d) return;
    int r = i / d, c = i % d;
    x[i] = tok_emb[(size_t)row_token[r] * d + c];
}

// out[r] = rmsnorm(x[r]) * g. Grid: one block per row (thread 0 runs the chain).
extern "C" __global__ void m1x_rmsnorm(float* out, const float* x, const float* g, int d, float eps) {
    __shared__ float rs;
    const float* xr = x + (size_t)blockIdx.x * d;
    if (threadIdx.x == 0) {
        float ss = 0.0f;
        for (int k = 0; k < d; k++) ss = fmaf(xr[k], xr[k], ss);
        rs = 1.0f / sqrtf(ss / (float)d + eps);
    }
    __syncthreads();
    float r = rs;
    for (int c = threadIdx.x; c < d; c += blockDim.x) out[(size_t)blockIdx.x * d + c] = (xr[c] * r) * g[c];
}

// y[r, o] = sum_k x[r, k] w_t[k, o] as one fmaf chain; mode 0 stores it, 1 adds it to y (the
// residual: y + acc), 2 stores max(acc, 0) (ReLU). Grid: (ceil(n / 128), rows) blocks of 128,
// dynamic shared memory k floats (the row's input).
extern "C" __global__ void m1x_matvec(float* y, const float* x, const float* w_t, int k, int n, int mode) {
    extern __shared__ float xs[];
    const float* xr = x + (size_t)blockIdx.y * k;
    for (int i = threadIdx.x; i < k; i += blockDim.x) xs[i] = xr[i];
    __syncthreads();
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= n) return;
    float acc = 0.0f;
    for (int i = 0; i < k; i++) acc = fmaf(xs[i], w_t[(size_t)i * n + o], acc);
    float* yo = y + (size_t)blockIdx.y * n + o;
    if (mode == 1) {
        *yo = *yo + acc;
    } else if (mode == 2) {
        *yo = fmaxf(acc, 0.0f);
    } else {
        *yo = acc;
    }
}

// Rotary on the q and k parts of qkv[r] ([3d]) at position row_pos[r]; cos/sin are [P][32].
// Grid: ceil(rows * d / 256) blocks of 256 (one thread per (row, q-or-k head, i < 32)).
extern "C" __global__ void m1x_rope(float* qkv, const float* cos_t, const float* sin_t,
                                    const int* row_pos, int rows, int d) {
    const int half = HEAD_DIM / 2;
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // over rows * (2d / 64) * 32 = rows * d
    if (i >= rows * d) return;
    int r = i / d, rem = i % d;
    int head = rem / half, j = rem % half;  // head in [0, 2d / 64): q heads then k heads
    float* h = qkv + (size_t)r * 3 * d + head * HEAD_DIM;
    size_t t = (size_t)row_pos[r] * half + j;
    rope_pair(h, j, cos_t[t], sin_t[t]);
}

// Appends row r's key and value (qkv[r][d..3d]) to its stream's ring caches of `cap` slots, at
// position row_pos[r]. Grid: ceil(rows * d / 256) blocks of 256.
extern "C" __global__ void m1x_append_kv(float* kcache, float* vcache, const float* qkv,
                                         const int* row_stream, const int* row_pos, int rows, int d,
                                         int cap) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * d) return;
    int r = i / d, c = i % d;
    size_t s = row_stream[r], t = row_pos[r] % cap;
    const float* row = qkv + (size_t)r * 3 * d;
    int head = c / HEAD_DIM, k = c % HEAD_DIM;
    int heads = d / HEAD_DIM;
    kcache[((s * heads + head) * HEAD_DIM + k) * cap + t] = row[d + c];
    vcache[(s * cap + t) * d + c] = row[2 * d + c];
}

// Attention of row r's query over positions lo..=row_pos[r] of its stream, held in ring caches of
// `cap` slots: cap = min(M1's context, the positions a stream can reach), so the window is the
// ring (lo = row_pos[r] + 1 - cap, at least 0). One block per (row, head) of 256 threads;
// `scores` is scratch [rows][H][cap], score i for position lo + i.
extern "C" __global__ void m1x_attention(float* att, const float* qkv, const float* kcache,
                                         const float* vcache, float* scores, const int* row_stream,
                                         const int* row_pos, int d, int cap) {
    __shared__ float q[HEAD_DIM];
    __shared__ float sum_s;
    int r = blockIdx.x, head = blockIdx.y, heads = d / HEAD_DIM;
    size_t s = row_stream[r];
    int end = row_pos[r] + 1;
    int lo = end > cap ? end - cap : 0;
    int n = end - lo;  // positions attended; position lo + i sits in slot (lo + i) % cap
    if (threadIdx.x < HEAD_DIM) q[threadIdx.x] = qkv[(size_t)r * 3 * d + head * HEAD_DIM + threadIdx.x];
    __syncthreads();
    const float* kh = kcache + (s * heads + head) * HEAD_DIM * (size_t)cap;
    float* sc = scores + ((size_t)r * heads + head) * cap;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        int slot = (lo + j) % cap;
        float acc = 0.0f;
        for (int k = 0; k < HEAD_DIM; k++) acc = fmaf(q[k], kh[(size_t)k * cap + slot], acc);
        float v = acc * 0.125f;
        sc[j] = v;
        m = fmaxf(m, v);
    }
    m = block_max(m, -INFINITY);
    for (int j = threadIdx.x; j < n; j += blockDim.x) sc[j] = exp_contract(sc[j] - m);
    __syncthreads();
    const float* vh = vcache + s * cap * (size_t)d + head * HEAD_DIM;
    float acc = 0.0f;
    if (threadIdx.x < HEAD_DIM) {
        for (int j = 0; j < n; j++)
            acc = fmaf(sc[j], vh[(size_t)((lo + j) % cap) * d + threadIdx.x], acc);
    } else if (threadIdx.x == HEAD_DIM) {
        float sum = 0.0f;
        for (int j = 0; j < n; j++) sum = sum + sc[j];
        sum_s = sum;
    }
    __syncthreads();
    if (threadIdx.x < HEAD_DIM) att[(size_t)r * d + head * HEAD_DIM + threadIdx.x] = acc / sum_s;
}

// Softmax of each row of p ([rows][v]) in place. Grid: one block of 256 per row.
extern "C" __global__ void m1x_softmax(float* p, int v) {
    __shared__ float sum_s;
    float* row = p + (size_t)blockIdx.x * v;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, row[i]);
    m = block_max(m, -INFINITY);
    for (int i = threadIdx.x; i < v; i += blockDim.x) row[i] = exp_contract(row[i] - m);
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int i = 0; i < v; i++) sum = sum + row[i];
        sum_s = sum;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < v; i += blockDim.x) row[i] = row[i] / sum_s;
}
