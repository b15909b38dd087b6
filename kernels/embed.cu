/*
Token embedding: forward lookup and a deterministic backward (no atomics over the table).

Layouts: table [V, d] (T: fp32 or bf16 working weights), tokens [N] (u32, N = B*T),
out / dout [N, d] row-major (T), dtable [V, d] fp32 (weight gradients are fp32 everywhere, since
AdamW reads fp32 gradients).

Forward: out[n, :] = table[tokens[n], :]. One thread per output element; memory bound.

Backward: dtable[t, :] += sum over positions n with tokens[n] == t of dout[n, :], each row summed
in ascending n, starting from the value already in dtable (accumulate). With V = 65536 and many
repeated tokens, atomics would make the sum order (and so the bits) change from run to run; instead
the host buckets positions by token (a counting sort, exactly like the CPU twin
`backend::cpu::embed::embed_backward`; see `EmbedBackwardPlan` in `src/backend/cuda/launch/embed.rs`):
    order[N]                    positions grouped by token, ascending inside each group
    bucket_start[num_buckets+1] bucket b covers order[bucket_start[b] .. bucket_start[b+1])
    bucket_token[num_buckets]   the token (table row) of bucket b
Buckets come largest first (llm.c's trick) so the long sums start early. Empty padding buckets
(start == end) are allowed, so the grid can stay fixed at its upper bound min(N, V) for every batch
(a CUDA graph needs fixed launch shapes). Each block owns one table row, so no two blocks ever
write the same address.

Backward for a small vocabulary (V <= 256: M1's bytes), where one token can hold a sixth of all
positions (the space byte) and its bucket would be one block's long serial sum: embed_onehot_*
writes onehot [N, V] (T, exactly 1 at column tokens[n] of row n, else 0) and the caller adds
onehot^T dout to dtable with one cuBLASLt product (Gemm::wgrad, fp32 accumulation), which spreads
every row's sum over the whole GPU in a fixed order (the plan cuBLASLt picks once per shape), so
the bits are the same from run to run. No plan is built on the host for it.
Cost (src/backend/cuda/cost.rs, m1-3m at 128 x 1024, bf16): embed_onehot writes N V 2 bytes =
67.1 MB, 0.016 ms at the H200's measured 2.85 TB/s copy ceiling; the product reads those rows and
dout (134.7 MB) for 2 N V d = 17.2 GFLOP, 0.032 ms. Not yet timed on a GPU.

Launch (grid maths):
    embed_forward_*:  block = 256, grid = ceil(N * d / 256) (one thread per output element).
    embed_onehot_*:   block = 256, grid = ceil(N * V / P / 256), a thread per 16-byte pack of P
                      elements (P = 8 bf16 or 4 f32; V a multiple of P, onehot 16-byte aligned).
    embed_backward_*: block = 256 (threads stride over the d channels of the row),
                      grid = num_buckets (>= the number of distinct tokens; typically min(N, V)).

Entry points: embed_forward_f32, embed_forward_bf16, embed_backward_f32, embed_backward_bf16,
embed_onehot_f32, embed_onehot_bf16 (the suffix names T, the type of table/out/dout/onehot).
*/

// Plain reference:
//
//   void embed_forward_reference(float* out, const float* table, const unsigned* tokens, int N, int d) {
//       for (int n = 0; n < N; n++)
//           for (int c = 0; c < d; c++) out[n * d + c] = table[tokens[n] * d + c];
//   }
//   void embed_backward_reference(float* dtable, const float* dout, const unsigned* tokens, int N, int d) {
//       for (int n = 0; n < N; n++)                    // ascending n within each row
//           for (int c = 0; c < d; c++) dtable[tokens[n] * d + c] += dout[n * d + c];
//   }

#include "common.cuh"

template <typename T>
__device__ void embed_forward(T* __restrict__ out, const T* __restrict__ table, const unsigned* __restrict__ tokens,
                              int N, int d) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * d) return;
    size_t n = idx / d;
    size_t c = idx % d;
    out[idx] = table[(size_t)tokens[n] * d + c];
}

template <typename T>
__device__ void embed_backward(float* __restrict__ dtable, const T* __restrict__ dout, const int* __restrict__ order,
                               const int* __restrict__ bucket_start, const int* __restrict__ bucket_token, int d) {
    const int b = blockIdx.x;
    const int begin = bucket_start[b];
    const int end = bucket_start[b + 1];
    if (begin >= end) return; // padding bucket
    float* row = dtable + (size_t)bucket_token[b] * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = row[c];
        for (int k = begin; k < end; k++) {
            acc += to_float(dout[(size_t)order[k] * d + c]);
        }
        row[c] = acc;
    }
}

// One 16-byte pack of a one-hot row: columns v0 .. v0 + P - 1 of row n.
template <typename T>
__device__ void embed_onehot(T* __restrict__ onehot, const unsigned* __restrict__ tokens, int N, int V) {
    constexpr int P = Pack16<T>::N;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; // pack index
    const size_t packs_per_row = (size_t)(V / P);
    if (idx >= (size_t)N * packs_per_row) return;
    const unsigned t = tokens[idx / packs_per_row];
    const unsigned v0 = (unsigned)(idx % packs_per_row) * P;
    float v[P];
#pragma unroll
    for (int i = 0; i < P; i++) v[i] = v0 + i == t ? 1.0f : 0.0f;
    reinterpret_cast<uint4*>(onehot)[idx] = Pack16<T>::pack(v);
}

extern "C" __global__ void embed_onehot_f32(float* onehot, const unsigned* tokens, int N, int V) {
    embed_onehot(onehot, tokens, N, V);
}
extern "C" __global__ void embed_onehot_bf16(bf16* onehot, const unsigned* tokens, int N, int V) {
    embed_onehot(onehot, tokens, N, V);
}

extern "C" __global__ void embed_forward_f32(float* out, const float* table, const unsigned* tokens, int N, int d) {
    embed_forward(out, table, tokens, N, d);
}
extern "C" __global__ void embed_forward_bf16(bf16* out, const bf16* table, const unsigned* tokens, int N, int d) {
    embed_forward(out, table, tokens, N, d);
}
extern "C" __global__ void embed_backward_f32(float* dtable, const float* dout, const int* order,
                                              const int* bucket_start, const int* bucket_token, int d) {
    embed_backward(dtable, dout, order, bucket_start, bucket_token, d);
}
extern "C" __global__ void embed_backward_bf16(float* dtable, const bf16* dout, const int* order,
                                               const int* bucket_start, const int* bucket_token, int d) {
    embed_backward(dtable, dout, order, bucket_start, bucket_token, d);
}
