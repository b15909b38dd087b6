/*
Causal self-attention on the tensor cores: the throughput version of attention.cu for bf16
storage, with the same signatures, layouts and outputs (out and lse; dqkv overwritten, every
element written exactly once), FlashAttention-2's scheme on mma.sync m16n8k16 (bf16 inputs, fp32
accumulation). attention.cu stays the exact-to-fp32 reference and the f32 path.

Layouts: see attention.cu (qkv [B*T, 3d] with q and k unrotated, cos and sin [T, 32], out and
dout [B*T, d], lse and delta [B, H, T] fp32, head dim 64, scores s_ij = q_i . k_j / 8 for j <= i
on the rotated q and k).

The rotary embedding is fused in as in attention.cu. The rows a warp owns are rotated in
registers as they are loaded (`load_a_rows_rotated`: columns c and c + 32 are k-steps ks and
ks + 2 of the same thread); each streamed q or k tile is rotated in shared memory once its copy
has landed (`rotate_tile`, then a barrier before any warp reads it); dq and dk are rotated back
in their accumulators before the store (`unrotate_acc`: n-tiles n and n + 4). Rotated values are
rounded to bf16, as the operands a separate rotary pass would have stored.

Every kernel: block = 4 warps (128 threads) owning 64 rows (queries, or keys for dk/dv), warp w
the 16 rows 16w..16w+15, so each warp's rows are one m16 tile and everything per row stays in
registers. The other side streams through shared memory in 64-row tiles (bf16, row stride 72 =
144 bytes, so the 8 rows of an ldmatrix fall in 8 distinct 16-byte bank groups) and reaches the
tensor cores through ldmatrix (transposed where the tile's rows are the product's k). Inside a
warp, with g = lane / 4 and t = lane % 4, a thread holds rows g and g + 8 of its warp's tile and,
of an n8 tile, columns 2t and 2t + 1 (the mma fragment layout, kernels/common.cuh). An S
accumulator is reused as the A operand of the next product by packing pairs to bf16: the C layout
of n-tiles 2k and 2k+1 is the A layout of k-step k.

    attention_forward_tc_bf16 (block: 64 queries):
        Q fragments in registers; for each key tile up to the diagonal: S = Q K^T (8 n-tiles x 4
        k-steps), mask, online softmax (row max and sum over the quad of 4 threads sharing a row),
        O += P V. out = O / l, lse = m + log l.
    attention_backward_dkdv_tc_bf16 (block: 64 keys):
        K and V fragments in registers; for each query tile from the diagonal on: S^T = K Q^T,
        P^T = exp(S^T / 8 - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta) / 8, dV += P^T dO,
        dK += dS^T Q.
    attention_backward_dq_tc_bf16 (block: 64 queries):
        Q and dO fragments in registers; for each key tile up to the diagonal: S = Q K^T,
        P = exp(S / 8 - lse), dP = dO V^T, dS = P (dP - delta) / 8, dQ += dS K.
    (delta comes from attention_backward_preprocess_bf16 in attention.cu.)

Precision is FlashAttention-2's: V and dO enter the tensor cores as they are stored (bf16), Q and
K rotated and rounded to bf16 (what a separate rotary pass would have stored), P and dS (computed in fp32) rounded to bf16; every product, row sum and accumulator is fp32. The
rounding of P and dS (2^-9 relative) is the kernels' one departure from the fp32 reference, and
the parity tolerances (tests/gpu_parity.rs, `TOL_ATTN_TC`) follow from it (with `__expf` and the
bf16 rounding of every output, which the CUDA-core kernels share). Per warp and 64 x 64
tile that is 64 mma in the forward (S, then O), 128 for dK/dV (S^T, dP^T, dV, dK) and 96 for dQ
(S, dP, dQ): FlashAttention-2's count but for the backward's S and dP, which the separate dQ
kernel computes a second time rather than add dQ atomically (whose order, and so bits, would
change from run to run). Only a block's diagonal tile is masked (`mask_unseen`); the other tiles
(before it for the forward and dQ, after it for dK/dV) are seen whole.

Launch (grid maths), nt = ceil(T / 64): each kernel grid (nt, H, B), block 128, static shared
memory 36 KiB (37 KiB for dk/dv): two buffers of each streamed tile, so that the next tile's
cp.async copies fly while the tensor cores work on this one (`stream_tiles`). The heaviest tiles
are scheduled first (queries: the last tile; keys: the first). qkv, out and dout must be 16-byte
aligned (the launcher checks; d is a multiple of 64), for 16-byte copies and ldmatrix.

Occupancy (ptxas, sm_90a, nvcc 13.0): the forward takes 100 registers, 4 blocks (16 warps) per
SM. The backward kernels work on each 64-row tile in halves of 32 columns (P and dS of one half
live at a time); left to itself ptxas then gives dK/dV 176 registers (2 blocks) and dQ 152 (3
blocks), and their launch bounds ask for 3 and 4 blocks per SM, which ptxas meets with 168
registers and a 28-byte spill (dK/dV; 16 before the rotary moved in) and 128 registers and a
28-byte spill (dQ). Whether that
trade pays is for `terse bench kernels` on a GPU to say (not yet measured).
*/

// Plain reference: attention.cu's (the CPU twin, backend::cpu::attention).

#include "common.cuh"

#define TC_ROWS 64   // rows a block owns (4 warps x 16)
#define TC_TILE 64   // rows per streamed shared tile
#define TC_LD 72     // shared row stride, in bf16
#define TC_SCALE 0.125f
#define HD_TC 64     // head dim

typedef unsigned short raw16;

// Starts copying rows r0..r0+63 of a 64-wide head slice (`src` points at row 0's first element,
// rows `stride` elements apart) into a shared tile; rows at or past `rows` become zeros. The
// copies join this thread's open cp.async group.
__device__ __forceinline__ void fetch_tile(raw16 (*tile)[TC_LD], const bf16* src, size_t stride, int r0, int rows) {
    const raw16* s = reinterpret_cast<const raw16*>(src);
    for (int e = threadIdx.x; e < TC_TILE * 8; e += blockDim.x) {
        const int r = e / 8, c = (e % 8) * 8;
        const bool valid = r0 + r < rows;
        cp_async16(&tile[r][c], s + (valid ? (size_t)(r0 + r) * stride + c : 0), valid);
    }
}

// The double-buffered stream of 64-row tiles from `begin` to `end`: fetch(r0, b) starts the
// copies of the tile at r0 into buffer b (cp.async, joining this thread's open group); body(r0, b)
// computes on it. While the body works on one buffer the next tile's copies fly into the other.
// Each iteration closes the group fetching the next tile (empty after the last, which keeps the
// count of groups in flight the same), waits for all but that newest group, and then for every
// thread at a barrier; a closing barrier frees the buffer for its refill.
template <typename Fetch, typename Body>
__device__ __forceinline__ void stream_tiles(int begin, int end, Fetch fetch, Body body) {
    fetch(begin, 0);
    cp_async_commit();
    for (int r0 = begin, buf = 0; r0 < end; r0 += TC_TILE, buf ^= 1) {
        if (r0 + TC_TILE < end) fetch(r0 + TC_TILE, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        body(r0, buf);
        __syncthreads(); // every warp is done with this buffer before it is refilled
    }
}

// Two consecutive bf16 of a shared row as one operand register.
__device__ __forceinline__ unsigned ld_pair(const raw16* p) { return *reinterpret_cast<const unsigned*>(p); }

// The A fragments (4 k-steps of 16 columns) of this warp's 16 rows of a 64-wide head slice in
// global memory (rows `stride` elements apart; rows at or past `rows` are zeros).
__device__ __forceinline__ void load_a_rows(unsigned a[4][4], const bf16* src, size_t stride, int row0, int rows) {
    const raw16* s = reinterpret_cast<const raw16*>(src);
    const int lane = threadIdx.x % WARP_SIZE, g = lane / 4, t = lane % 4;
    const int ra = row0 + g, rb = row0 + g + 8;
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
        const int c = ks * 16 + 2 * t;
        a[ks][0] = ra < rows ? ld_pair(s + (size_t)ra * stride + c) : 0u;
        a[ks][1] = rb < rows ? ld_pair(s + (size_t)rb * stride + c) : 0u;
        a[ks][2] = ra < rows ? ld_pair(s + (size_t)ra * stride + c + 8) : 0u;
        a[ks][3] = rb < rows ? ld_pair(s + (size_t)rb * stride + c + 8) : 0u;
    }
}

// ----------------------------------------------------------------------------
// rotary (q and k are stored unrotated; see the header)

// The pairs (x1, x2) = (columns c and c + 1, columns c + 32 and c + 33) of one row, as two bf16
// pairs, rotated to the angles at cs[0..1] and sn[0..1] (its position's row of the tables,
// from column c) and rounded back to bf16.
__device__ __forceinline__ void rotate_bf16_pairs(unsigned& lo, unsigned& hi, const float* cs, const float* sn) {
    float a0 = __uint_as_float(lo << 16), a1 = __uint_as_float(lo & 0xffff0000u);
    float b0 = __uint_as_float(hi << 16), b1 = __uint_as_float(hi & 0xffff0000u);
    rotate_pair(a0, b0, cs[0], sn[0]);
    rotate_pair(a1, b1, cs[1], sn[1]);
    lo = pack_bf16x2(a0, a1);
    hi = pack_bf16x2(b0, b1);
}

// load_a_rows of q or k, each row rotated to its position: columns c and c + 32 are k-steps ks
// and ks + 2 of the same thread. Rounded to bf16 as the rotated operand would have been stored.
__device__ __forceinline__ void load_a_rows_rotated(unsigned a[4][4], const bf16* src, size_t stride, int row0,
                                                    int rows, const float* cos_t, const float* sin_t) {
    load_a_rows(a, src, stride, row0, rows);
    const int lane = threadIdx.x % WARP_SIZE, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
#pragma unroll
        for (int r = 0; r < 4; r++) { // fragment r: row g (+8 for odd r), columns 2t (+8 for r >= 2)
            const int pos = row0 + g + (r & 1) * 8, c = ks * 16 + 2 * t + (r >> 1) * 8;
            if (pos < rows)
                rotate_bf16_pairs(a[ks][r], a[ks + 2][r], cos_t + pos * (HD_TC / 2) + c, sin_t + pos * (HD_TC / 2) + c);
        }
    }
}

// Rotates the rows of a streamed q or k tile (rows r0.., in shared memory) to their positions in
// place; rows at or past `rows` are zeros and stay so. Ends at a block barrier, so every thread of
// the block calls it and no warp reads the tile before all of it is rotated.
__device__ __forceinline__ void rotate_tile(raw16 (*tile)[TC_LD], int r0, int rows, const float* cos_t,
                                            const float* sin_t) {
    constexpr int HALF = HD_TC / 2;
    for (int e = threadIdx.x; e < TC_TILE * HALF / 2; e += blockDim.x) {
        const int r = e / (HALF / 2), c = (e % (HALF / 2)) * 2, pos = r0 + r;
        if (pos < rows)
            rotate_bf16_pairs(*reinterpret_cast<unsigned*>(&tile[r][c]),
                              *reinterpret_cast<unsigned*>(&tile[r][c + HALF]), cos_t + pos * HALF + c,
                              sin_t + pos * HALF + c);
    }
    __syncthreads();
}

// Rotates this warp's 16 x 64 accumulator rows back from their positions (the inverse rotary, so
// dq and dk become the gradients of the stored, unrotated q and k): columns c and c + 32 are
// n-tiles n and n + 4 of the same thread.
__device__ __forceinline__ void unrotate_acc(float acc[8][4], int row0, int rows, const float* cos_t,
                                             const float* sin_t) {
    const int lane = threadIdx.x % WARP_SIZE, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int n = 0; n < 4; n++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int pos = row0 + g + (i >> 1) * 8, c = n * 8 + 2 * t + (i & 1);
            if (pos < rows)
                rotate_pair(acc[n][i], acc[n + 4][i], cos_t[pos * (HD_TC / 2) + c], -sin_t[pos * (HD_TC / 2) + c]);
        }
    }
}

// ----------------------------------------------------------------------------
// products

// acc[n] = A (16 x 64, fragments) times B^T for nt 8-row slices of a shared tile B (rows 8 n0 ..
// 8 (n0 + nt) - 1, 64 columns): the 16 x 8nt product with those rows as its columns (S = Q K^T and
// friends). One ldmatrix gives the B fragments of two k-steps: lanes 8j..8j+7 address rows
// (n0 + n) 8.. at column 8j of the 32-column half.
template <int nt>
__device__ __forceinline__ void mma_rows_by_tile(float (&acc)[nt][4], const unsigned a[4][4], const raw16 (*tile)[TC_LD],
                                                 int n0) {
    const int lane = threadIdx.x % WARP_SIZE;
#pragma unroll
    for (int n = 0; n < nt; n++) {
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
        for (int kp = 0; kp < 2; kp++) {
            unsigned r[4];
            ldmatrix_x4(r, &tile[(n0 + n) * 8 + lane % 8][kp * 32 + (lane / 8) * 8]);
            const unsigned b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
            mma_bf16_16816(acc[n], a[2 * kp], b0);
            mma_bf16_16816(acc[n], a[2 * kp + 1], b1);
        }
    }
}

// out += P (16 x 8nt, as an accumulator of mma_rows_by_tile) times rows 8 n0 .. 8 (n0 + nt) - 1
// of a shared tile (64 columns): those rows are P's columns (O += P V and friends). P enters the
// tensor cores rounded to bf16, as FlashAttention-2 feeds it (its products still accumulate in
// fp32): 32 mma per warp and 64 x 64 tile instead of the 64 of a bf16 pair carrying P's remainder.
template <int nt>
__device__ __forceinline__ void mma_acc_by_tile(float out[8][4], const float (&p)[nt][4], const raw16 (*tile)[TC_LD],
                                                int n0) {
    const int lane = threadIdx.x % WARP_SIZE;
#pragma unroll
    for (int ks = 0; ks < nt / 2; ks++) {
        const float* c0 = p[2 * ks];
        const float* c1 = p[2 * ks + 1];
        const unsigned a[4] = {pack_bf16x2(c0[0], c0[1]), pack_bf16x2(c0[2], c0[3]), pack_bf16x2(c1[0], c1[1]),
                               pack_bf16x2(c1[2], c1[3])};
        // One transposed ldmatrix gives two n-tiles' B fragments: lanes 0-15 address the k-step's
        // 16 rows at column 16 np, lanes 16-31 the same rows at column 16 np + 8.
#pragma unroll
        for (int np = 0; np < 4; np++) {
            unsigned r[4];
            ldmatrix_x4_trans(r, &tile[n0 * 8 + ks * 16 + lane % 16][(2 * np + lane / 16) * 8]);
            const unsigned b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
            mma_bf16_16816(out[2 * np], a, b0);
            mma_bf16_16816(out[2 * np + 1], a, b1);
        }
    }
}

// Sum and max over the 4 threads of a quad (the threads holding one row).
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// Sets the entries of a 16 x 8nt score tile that a row does not see to -inf (P = 0): with rows r (this
// thread's ra, rb) and columns c = col0 + 8n + 2t + (0, 1), a query sees keys at or before it and
// inside the sequence. Only a block's diagonal tile needs it: key tiles wholly before a query tile
// are seen whole. Padding past T is harmless unmasked: padded query rows are never stored, and in
// dK/dV a padded query gets P = 1 but adds exactly zero, because its Q and dO rows are zero-filled
// and its lse and delta read as 0 (keep those fills if this changes).
template <bool rows_are_queries, int nt>
__device__ __forceinline__ void mask_unseen(float (&s)[nt][4], int col0, int ra, int rb, int t, int T_len) {
#pragma unroll
    for (int n = 0; n < nt; n++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int col = col0 + n * 8 + 2 * t + (i & 1), row = i < 2 ? ra : rb;
            const bool seen = col < T_len && (rows_are_queries ? col <= row : col >= row);
            if (!seen) s[n][i] = -INFINITY;
        }
    }
}

// Stores this warp's 16 x 64 accumulator rows (row0 + g, row0 + g + 8) times `scale_a`/`scale_b`
// as bf16 into a 64-wide head slice (rows `stride` apart), rows at or past `rows` skipped.
__device__ __forceinline__ void store_rows(bf16* dst, size_t stride, int row0, int rows, const float acc[8][4],
                                           float scale_a, float scale_b) {
    const int lane = threadIdx.x % WARP_SIZE, g = lane / 4, t = lane % 4;
    raw16* d = reinterpret_cast<raw16*>(dst);
    const int ra = row0 + g, rb = row0 + g + 8;
#pragma unroll
    for (int n = 0; n < 8; n++) {
        const int c = n * 8 + 2 * t;
        if (ra < rows)
            *reinterpret_cast<unsigned*>(d + (size_t)ra * stride + c) =
                pack_bf16x2(acc[n][0] * scale_a, acc[n][1] * scale_a);
        if (rb < rows)
            *reinterpret_cast<unsigned*>(d + (size_t)rb * stride + c) =
                pack_bf16x2(acc[n][2] * scale_b, acc[n][3] * scale_b);
    }
}

// Where a block and this thread sit, for a block owning row tile `tile` of (batch, head) =
// (blockIdx.z, blockIdx.y): model width d, the qkv row length row3 = 3d, the head's slices (q at
// `head`, k at head + d, v at head + 2d; the same offset `act` into out, dout and the d-wide
// activations), its offset `stats` into lse and delta, the first of this warp's 16 own rows
// (row0), and this thread's fragment coordinates (rows row0 + g and row0 + g + 8, quad column t).
struct TcPlace {
    int d, row0, g, t;
    size_t row3, act, stats;
    const bf16* head;
};

__device__ __forceinline__ TcPlace tc_place(const bf16* qkv, int tile, int T_len, int H) {
    const int lane = threadIdx.x % WARP_SIZE, b = blockIdx.z, h = blockIdx.y;
    TcPlace at;
    at.d = H * HD_TC;
    at.row3 = 3 * (size_t)at.d;
    at.head = qkv + (size_t)b * T_len * at.row3 + h * HD_TC;
    at.act = (size_t)b * T_len * at.d + h * HD_TC;
    at.stats = ((size_t)b * H + h) * T_len;
    at.row0 = tile * TC_ROWS + (threadIdx.x / WARP_SIZE) * 16;
    at.g = lane / 4;
    at.t = lane % 4;
    return at;
}

// The K and V tiles of every key query tile qt sees (from 0 to its diagonal), streamed through
// the double buffers Ks and Vs: body(k0, buf) with keys k0..k0+63 in Ks[buf] and Vs[buf].
template <typename Body>
__device__ __forceinline__ void stream_kv_tiles(raw16 (*Ks)[TC_TILE][TC_LD], raw16 (*Vs)[TC_TILE][TC_LD],
                                                const TcPlace& at, int qt, int T_len, Body body) {
    const auto fetch = [&](int k0, int b) {
        fetch_tile(Ks[b], at.head + at.d, at.row3, k0, T_len);
        fetch_tile(Vs[b], at.head + 2 * at.d, at.row3, k0, T_len);
    };
    stream_tiles(0, min(T_len, (qt + 1) * TC_ROWS), fetch, body);
}

// ----------------------------------------------------------------------------
// forward

extern "C" __global__ void __launch_bounds__(128) attention_forward_tc_bf16(bf16* out, float* lse, const bf16* qkv,
                                                                             const float* cos_t, const float* sin_t,
                                                                             int B, int T_len, int H) {
    __shared__ __align__(16) raw16 Ks[2][TC_TILE][TC_LD];
    __shared__ __align__(16) raw16 Vs[2][TC_TILE][TC_LD];
    const int qt = gridDim.x - 1 - blockIdx.x; // heaviest tiles first
    const TcPlace at = tc_place(qkv, qt, T_len, H);
    const int t = at.t, ra = at.row0 + at.g, rb = ra + 8;

    unsigned qa[4][4];
    load_a_rows_rotated(qa, at.head, at.row3, at.row0, T_len, cos_t, sin_t);
    float o[8][4] = {};
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

    stream_kv_tiles(Ks, Vs, at, qt, T_len, [&](int k0, int buf) {
        rotate_tile(Ks[buf], k0, T_len, cos_t, sin_t);
        float s[8][4];
        mma_rows_by_tile(s, qa, Ks[buf], 0);
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) s[n][i] *= TC_SCALE;
        if (k0 == qt * TC_ROWS) mask_unseen<true>(s, k0, ra, rb, t, T_len);
        float mt_a = -INFINITY, mt_b = -INFINITY;
#pragma unroll
        for (int n = 0; n < 8; n++) {
            mt_a = fmaxf(mt_a, fmaxf(s[n][0], s[n][1]));
            mt_b = fmaxf(mt_b, fmaxf(s[n][2], s[n][3]));
        }
        // Key k0 <= q0 is visible to every row of the block, so the new maxima are finite; the
        // first tile rescales by exp(-inf) = 0.
        const float mn_a = fmaxf(m_a, quad_max(mt_a)), mn_b = fmaxf(m_b, quad_max(mt_b));
        const float al_a = __expf(m_a - mn_a), al_b = __expf(m_b - mn_b);
        l_a *= al_a;
        l_b *= al_b;
#pragma unroll
        for (int n = 0; n < 8; n++) {
            s[n][0] = __expf(s[n][0] - mn_a);
            s[n][1] = __expf(s[n][1] - mn_a);
            s[n][2] = __expf(s[n][2] - mn_b);
            s[n][3] = __expf(s[n][3] - mn_b);
            l_a += s[n][0] + s[n][1];
            l_b += s[n][2] + s[n][3];
            o[n][0] *= al_a;
            o[n][1] *= al_a;
            o[n][2] *= al_b;
            o[n][3] *= al_b;
        }
        mma_acc_by_tile(o, s, Vs[buf], 0);
        m_a = mn_a;
        m_b = mn_b;
    });
    l_a = quad_sum(l_a);
    l_b = quad_sum(l_b);
    store_rows(out + at.act, at.d, at.row0, T_len, o, 1.0f / l_a, 1.0f / l_b);
    if (t == 0) {
        float* lse_bh = lse + at.stats;
        if (ra < T_len) lse_bh[ra] = m_a + __logf(l_a);
        if (rb < T_len) lse_bh[rb] = m_b + __logf(l_b);
    }
}

// ----------------------------------------------------------------------------
// backward

extern "C" __global__ void __launch_bounds__(128, 3)
    attention_backward_dkdv_tc_bf16(bf16* dqkv, const bf16* qkv, const bf16* dout, const float* lse,
                                    const float* delta, const float* cos_t, const float* sin_t, int B, int T_len,
                                    int H) {
    __shared__ __align__(16) raw16 Qs[2][TC_TILE][TC_LD];
    __shared__ __align__(16) raw16 dOs[2][TC_TILE][TC_LD];
    __shared__ float lse_s[2][TC_TILE], delta_s[2][TC_TILE];
    const int kt = blockIdx.x; // key tile 0 sees the most queries: scheduled first
    const TcPlace at = tc_place(qkv, kt, T_len, H);
    const int d = at.d, t = at.t, j0 = at.row0, ja = j0 + at.g, jb = ja + 8; // this thread's keys
    const size_t row3 = at.row3;
    const bf16* head = at.head;
    const bf16* dhead = dout + at.act;
    const float* lse_bh = lse + at.stats;
    const float* delta_bh = delta + at.stats;

    unsigned ka[4][4], va[4][4];
    load_a_rows_rotated(ka, head + d, row3, j0, T_len, cos_t, sin_t);
    load_a_rows(va, head + 2 * d, row3, j0, T_len);
    float dk[8][4] = {}, dv[8][4] = {};

    // The 64 queries from q0 into buffer b: Q and dO by cp.async, their lse and delta directly.
    const auto fetch_queries = [&](int q0, int b) {
        fetch_tile(Qs[b], head, row3, q0, T_len);
        fetch_tile(dOs[b], dhead, d, q0, T_len);
        if (threadIdx.x < TC_TILE) {
            const int i = q0 + threadIdx.x;
            lse_s[b][threadIdx.x] = i < T_len ? lse_bh[i] : 0.0f;
            delta_s[b][threadIdx.x] = i < T_len ? delta_bh[i] : 0.0f;
        }
    };
    stream_tiles(kt * TC_ROWS, T_len, fetch_queries, [&](int q0, int buf) { // queries i >= the first key
        rotate_tile(Qs[buf], q0, T_len, cos_t, sin_t);
        // In halves of 32 queries, which keeps P^T and dS^T within the registers of 3 blocks per SM.
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float p[4][4], ds[4][4];
            mma_rows_by_tile(p, ka, Qs[buf], 4 * h);   // S^T: keys x queries
            mma_rows_by_tile(ds, va, dOs[buf], 4 * h); // dP^T
            if (q0 == kt * TC_ROWS) mask_unseen<false>(p, q0 + 32 * h, ja, jb, t, T_len);
#pragma unroll
            for (int n = 0; n < 4; n++) {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int qc = 32 * h + n * 8 + 2 * t + (i & 1);
                    p[n][i] = __expf(p[n][i] * TC_SCALE - lse_s[buf][qc]);
                    ds[n][i] = p[n][i] * (ds[n][i] - delta_s[buf][qc]) * TC_SCALE;
                }
            }
            mma_acc_by_tile(dv, p, dOs[buf], 4 * h);
            mma_acc_by_tile(dk, ds, Qs[buf], 4 * h);
        }
    });
    bf16* dhead_qkv = dqkv + (at.head - qkv); // the same head slice of the gradient
    unrotate_acc(dk, j0, T_len, cos_t, sin_t);
    store_rows(dhead_qkv + d, row3, j0, T_len, dk, 1.0f, 1.0f);
    store_rows(dhead_qkv + 2 * d, row3, j0, T_len, dv, 1.0f, 1.0f);
}

extern "C" __global__ void __launch_bounds__(128, 4)
    attention_backward_dq_tc_bf16(bf16* dqkv, const bf16* qkv, const bf16* dout, const float* lse, const float* delta,
                                  const float* cos_t, const float* sin_t, int B, int T_len, int H) {
    __shared__ __align__(16) raw16 Ks[2][TC_TILE][TC_LD];
    __shared__ __align__(16) raw16 Vs[2][TC_TILE][TC_LD];
    const int qt = gridDim.x - 1 - blockIdx.x; // heaviest tiles first
    const TcPlace at = tc_place(qkv, qt, T_len, H);
    const int t = at.t, ra = at.row0 + at.g, rb = ra + 8;
    const float* lse_bh = lse + at.stats;
    const float* delta_bh = delta + at.stats;
    const float lse_a = ra < T_len ? lse_bh[ra] : 0.0f, lse_b = rb < T_len ? lse_bh[rb] : 0.0f;
    const float de_a = ra < T_len ? delta_bh[ra] : 0.0f, de_b = rb < T_len ? delta_bh[rb] : 0.0f;

    unsigned qa[4][4], doa[4][4];
    load_a_rows_rotated(qa, at.head, at.row3, at.row0, T_len, cos_t, sin_t);
    load_a_rows(doa, dout + at.act, at.d, at.row0, T_len);
    float dq[8][4] = {};

    stream_kv_tiles(Ks, Vs, at, qt, T_len, [&](int k0, int buf) {
        rotate_tile(Ks[buf], k0, T_len, cos_t, sin_t);
        // In halves of 32 keys, which keeps P and dS within the registers of 4 blocks per SM.
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float p[4][4], ds[4][4];
            mma_rows_by_tile(p, qa, Ks[buf], 4 * h);   // S
            mma_rows_by_tile(ds, doa, Vs[buf], 4 * h); // dP
            if (k0 == qt * TC_ROWS) mask_unseen<true>(p, k0 + 32 * h, ra, rb, t, T_len);
#pragma unroll
            for (int n = 0; n < 4; n++) {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    p[n][i] = __expf(p[n][i] * TC_SCALE - (i < 2 ? lse_a : lse_b));
                    ds[n][i] = p[n][i] * (ds[n][i] - (i < 2 ? de_a : de_b)) * TC_SCALE;
                }
            }
            mma_acc_by_tile(dq, ds, Ks[buf], 4 * h);
        }
    });
    unrotate_acc(dq, at.row0, T_len, cos_t, sin_t);
    store_rows(dqkv + (at.head - qkv), at.row3, at.row0, T_len, dq, 1.0f, 1.0f);
}
