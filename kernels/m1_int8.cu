// terse: exact
/*
M1 under numeric contract 3 on the GPU (docs/numeric-contract.md, "Contract 3"; the CPU reference
is src/m1/int8/): int8 weights per output row, int8 activations per row, int8 keys and values per
(position, head), every product a sum of int8 x int8 in i32 (`__dp4a`: exact, so any tiling gives
the CPU's integers); the f32 steps are the CPU's operations, written as IEEE intrinsics.

A step advances a set of rows as m1_exact.cu does (row r feeds stream row_stream[r] at position
row_pos[r]); the embedding and rotary kernels are m1_exact.cu's (the same operations under both
contracts). Caches are rings of `cap` slots per stream (position t in slot t % cap), laid out
per layer as keys and values `[S][H][cap][64]` int8 with exponents `[S][H][cap]`.

Costs below are per step of R rows for m1-3m (d = 256, d_ff = 1024, 3 layers, 4 heads), against an
H100 SXM's ceilings: 3.35 TB/s of HBM, and `__dp4a` at the int32 rate, taken as 64 per clock per
SM x 132 SMs x 1.98 GHz = 16.7 T dp4a/s (67 T int8 multiply-adds/s). A step ends with m1q_cdf,
the coder's integer CDFs (1,028 bytes per row cross to the host instead of 1,024 of f32). The
host replays a step over every stream as a CUDA graph. M2's decode step (src/backend/cuda/
int8_model.rs, Fusion::Fused) replaces each m1q_quantise + m1q_linear pair by m1q_qlinear and
m1x_rope + m1q_attention by m1q_rope_attention, at the same bits; further speed work (tensor cores, a persistent step)
is left for later: the kernels are written to be exact and simple.
*/

#include "common.cuh"

#define Q_MAX 127
#define E_MIN (-60)
#define E_MAX 60
// Attention weights are integers of 2^-P_BITS; 2^SCORE_SHIFT = 1 / sqrt(64).
#define P_BITS 14
#define SCORE_SHIFT (-3)

// 2^e (e in -126..=127), built from its exponent bits.
__device__ __forceinline__ float pow2i(int e) { return __int_as_float((e + 127) << 23); }

// quantise.rs's scale_exponent from `m`, the largest magnitude's bit pattern (sign cleared; a NaN
// counts as the largest): the smallest e in E_MIN..=E_MAX with m <= 127 * 2^e.
__device__ __forceinline__ int scale_exponent(unsigned m) {
    const int field = (int)(m >> 23);
    if (field == 0) return E_MIN;
    const unsigned mant = (m & 0x7FFFFFu) | 0x800000u;
    const int e = field - 150 + 17 + (mant > ((unsigned)Q_MAX << 17) ? 1 : 0);
    return min(max(e, E_MIN), E_MAX);
}

// clamp(round_half_even(v * inv), -127, 127), NaN to 0: what quantise.rs's round_even and clamp
// give (rintf rounds to nearest even; beyond +-127 both saturate).
__device__ __forceinline__ int quantise_value(float v, float inv) {
    const float s = __fmul_rn(v, inv);
    if (isnan(s)) return 0;
    return (int)fminf(fmaxf(rintf(s), -(float)Q_MAX), (float)Q_MAX);
}

// Quantises the row y_k = x_k * r (k < n; r = 1 leaves x as it is, exactly) into q and returns
// its exponent, to every thread. Block-collective (contains barriers).
__device__ int block_quantise_row(signed char* q, const float* x, int n, float r) {
    unsigned m = 0;
    for (int k = threadIdx.x; k < n; k += blockDim.x) m = max_of(m, __float_as_uint(__fmul_rn(x[k], r)) & 0x7FFFFFFFu);
    const int e = scale_exponent(block_max(m, 0u));
    const float inv = pow2i(-e);
    for (int k = threadIdx.x; k < n; k += blockDim.x) q[k] = (signed char)quantise_value(__fmul_rn(x[k], r), inv);
    return e;
}

// Contract 3's order for a row's long f32 sums (src/m1/int8/lanes.rs): 16 lanes, lane i a
// chain over k = i, i + 16, ... ascending, then the lanes added by a fixed tree (l[i] += l[i + 8],
// then + 4, + 2, + 1). `sq` chooses RMSNorm's sum of squares (fma(x, x, l)) over the softmax's
// plain sum (l + x). c3_lane is one lane's chain, c3_lane_tree the tree: the one place each is
// written, whether one thread runs the 16 chains (c3_lane_sum) or 16 threads do (m1q_qlinear).
__device__ float c3_lane(const float* x, int n, int i, bool sq) {
    float l = 0.0f;
    for (int k = i; k < n; k += 16) l = sq ? __fmaf_rn(x[k], x[k], l) : __fadd_rn(l, x[k]);
    return l;
}

__device__ float c3_lane_tree(float l[16]) {
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) l[i] = __fadd_rn(l[i], l[i + w]);
    return l[0];
}

__device__ float c3_lane_sum(const float* x, int n, bool sq) {
    float l[16];
    for (int i = 0; i < 16; i++) l[i] = c3_lane(x, n, i, sq);
    return c3_lane_tree(l);
}

// Contract 3's RMSNorm factor from the lane sum of squares ss of a row of d: 1 / sqrt(ss / d + eps).
__device__ float c3_rms_of_sum(float ss, int d, float eps) {
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)d), eps)));
}

// Contract 3's RMSNorm factor of x.
__device__ float c3_rms_factor(const float* x, int d, float eps) { return c3_rms_of_sum(c3_lane_sum(x, d, true), d, eps); }

// Contract 3's softmax sum: the lane sum of the exponentials.
__device__ float c3_softmax_sum(const float* p, int n) { return c3_lane_sum(p, n, false); }

// Row r of x ([rows][n] f32), RMS-normalised when `norm` (the gain is folded into the next
// matrix), quantised: xq[r] ([rows][n] int8) and ex[r]. Grid: one block of 256 per row.
// Cost: reads 4n, writes n + 4 bytes per row; one thread's 16 lane chains of n fmas when
// normalising (m1-3m, R = 1,024, n = 256: 1.3 MB, 0.4 us of HBM; the thread's n fmas, its lanes
// held in local memory, ~1 us, bound it).
extern "C" __global__ void __launch_bounds__(256) m1q_quantise(signed char* xq, int* ex, const float* x, int n,
                                                              float eps, int norm) {
    __shared__ float rs;
    const float* xr = x + (size_t)blockIdx.x * n;
    if (threadIdx.x == 0) rs = norm ? c3_rms_factor(xr, n, eps) : 1.0f;
    __syncthreads();
    const int e = block_quantise_row(xq + (size_t)blockIdx.x * n, xr, n, rs);
    if (threadIdx.x == 0) ex[blockIdx.x] = e;
}

// Rows per block of m1q_linear: each weight word read serves this many rows.
#define LIN_ROWS 4

// The product and its use, shared by m1q_linear and m1q_qlinear: thread o of the block (output
// blockIdx.x * blockDim.x + o) sums its output for the block's `live` rows r0.. (int8 in
// lin_rows, `[LIN_ROWS][words]`, exponents ex_rows[rr]), one dp4a per word and row (integers:
// exact in any order), and stores (mode 0), adds (1) or stores the ReLU of (2) the dequantised
// sum.
__device__ void lin_rows_out(float* y, const int* lin_rows, const int* ex_rows, const int* w4, const int* ew,
                             int r0, int live, int words, int n, int mode) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= n) return;
    int acc[LIN_ROWS] = {0, 0, 0, 0};
    for (int i = 0; i < words; i++) {
        const int wv = w4[(size_t)i * n + o];
        for (int rr = 0; rr < live; rr++) acc[rr] = __dp4a(lin_rows[rr * words + i], wv, acc[rr]);
    }
    for (int rr = 0; rr < live; rr++) {
        const float v = __fmul_rn((float)acc[rr], pow2i(ex_rows[rr] + ew[o]));
        float* yo = y + (size_t)(r0 + rr) * n + o;
        if (mode == 1) {
            *yo = __fadd_rn(*yo, v);
        } else if (mode == 2) {
            *yo = fmaxf(v, 0.0f);
        } else {
            *yo = v;
        }
    }
}

// y[r][o] (mode 0: =, 1: += (the residual, y + v), 2: = max(v, 0) (ReLU)) v = (acc as f32) *
// 2^(ex[r] + ew[o]), acc = sum_k xq[r][k] w[o][k] in i32. The weights come as 4-byte words
// interleaved by output, w4[i][o] = w[o][4i..4i + 4] (k a multiple of 4), so a warp's loads of
// one word index are consecutive. Grid: (ceil(n / 128), ceil(rows / 4)) blocks of 128, dynamic
// shared memory 4 k bytes (the block's 4 input rows): thread o of the block sums its output for
// the 4 rows, one dp4a per word and row (integers: exact in any order).
// Cost: R n k multiply-adds (R n k / 4 dp4a); bytes: the weights n k from HBM once per step and
// from L2 once per 4 rows, 4 R n written. m1-3m, R = 1,024, all of a step's products (2.42 M
// weights): 0.62 G dp4a = 37 us at the dp4a ceiling; 0.62 GB of L2 reads, ~0.1 ms at ~6 TB/s;
// 0.7 us of HBM: bound by L2 bandwidth.
extern "C" __global__ void __launch_bounds__(128) m1q_linear(float* y, const signed char* xq, const int* ex,
                                                            const int* w4, const int* ew, int rows, int k, int n,
                                                            int mode) {
    extern __shared__ int lin_rows[]; // [LIN_ROWS][k / 4] words
    const int words = k / 4, r0 = blockIdx.y * LIN_ROWS;
    const int live = min(LIN_ROWS, rows - r0);
    for (int i = threadIdx.x; i < live * words; i += blockDim.x)
        lin_rows[i] = reinterpret_cast<const int*>(xq + (size_t)r0 * k)[i];
    __syncthreads();
    lin_rows_out(y, lin_rows, ex + r0, w4, ew, r0, live, words, n, mode);
}

// m1q_quantise and m1q_linear in one launch, for M2's decode step, where a step is a chain of
// small dependent kernels and each launch costs more than its work (src/backend/cuda/
// decode_cost.rs): y[r][o] (mode as m1q_linear) from the f32 rows x ([rows][k]), each
// RMS-normalised when `norm` (the gain folded into w) and quantised by this block itself into
// shared memory. Every block of a row group repeats the same quantisation (the same integers);
// the RMS sum runs as contract 3's 16 lane chains in 16 threads per row, then the fixed tree, so
// the factor, and every bit after it, is m1q_quantise's. Grid, block and dynamic shared memory
// as m1q_linear.
// Cost: m1q_linear's, plus each block reading its rows (4 k bytes per row, from L2 after the
// first block) and k / 16 fmas per lane thread; it saves a launch and the int8 rows' round trip.
extern "C" __global__ void __launch_bounds__(128) m1q_qlinear(float* y, const float* x, int norm, float eps,
                                                             const int* w4, const int* ew, int rows, int k, int n,
                                                             int mode) {
    extern __shared__ int lin_rows[]; // [LIN_ROWS][k / 4] words
    __shared__ float lanes[LIN_ROWS][16];
    __shared__ float factor[LIN_ROWS];
    __shared__ int ex[LIN_ROWS];
    const int words = k / 4, r0 = blockIdx.y * LIN_ROWS;
    const int live = min(LIN_ROWS, rows - r0);
    const int t = threadIdx.x;
    if (norm) {
        if (t < 16 * live) lanes[t / 16][t % 16] = c3_lane(x + (size_t)(r0 + t / 16) * k, k, t % 16, true);
        __syncthreads();
        if (t < live) factor[t] = c3_rms_of_sum(c3_lane_tree(lanes[t]), k, eps);
        __syncthreads();
    }
    for (int rr = 0; rr < live; rr++) {
        const float r = norm ? factor[rr] : 1.0f;
        const int e = block_quantise_row(reinterpret_cast<signed char*>(lin_rows) + rr * k,
                                         x + (size_t)(r0 + rr) * k, k, r);
        if (t == 0) ex[rr] = e;
    }
    __syncthreads();
    lin_rows_out(y, lin_rows, ex, w4, ew, r0, live, words, n, mode);
}

// Threads per block of m1q_attention: 4 groups of 64, one thread per value channel in each.
#define ATT_THREADS 256

// Attention of row r's query, head h (grid: (rows, heads) blocks of 256; dynamic shared memory
// 8 cap bytes). First appends the row's rotated key and its value (qkv[r][d..3d]) to its stream's
// caches, each head quantised as a row; then, over positions j in lo..=t (lo = t + 1 - cap, at
// least 0; t = row_pos[r]), as attention.rs's `attend`: the query head quantised (qq, eq);
// s_j = (dot(qq, kq_j) as f32) * 2^(eq + ek_j - 3); m = max s_j, E = max ev_j; p_j =
// exp_contract(s_j - m); P_j = rne(p_j 2^14); W_j = rne(p_j 2^(14 + ev_j - E)); sum = sum of P_j
// and acc_c = sum_j W_j vq_j[c], both in i32 (bounded by 2^24 and 127 2^24 for cap <= 1024:
// exact in any order, so the block sums them in any tree); out_c = ((acc_c as f32) 2^E) / sum.
// Cost per (row, head) over n positions: reads n (64 + 64 + 8) cache bytes (keys, values, their
// exponents); 16 n dp4a, 64 n integer multiply-adds and n exp_contract. m1-3m, R = 1,024 rows all
// at n = 256 (the full window), 3 layers, 4 heads: 428 MB of cache reads = 128 us of HBM against
// 0.25 G integer operations (~10 us): memory-bound.
// The body of m1q_attention and m1q_rope_attention, written once; att_shared is the kernel's
// dynamic shared memory (p_j as f32, then W_j, cap of each).
__device__ void c3_attention(float* att, const float* qkv, signed char* kq, int* ke, signed char* vq, int* ve,
                             const int* row_stream, const int* row_pos, int d, int cap, int* att_shared) {
    __shared__ __align__(16) signed char qq[HEAD_DIM];
    __shared__ int part[ATT_THREADS / HEAD_DIM][HEAD_DIM];
    float* ps = reinterpret_cast<float*>(att_shared);
    int* ws = att_shared + cap;
    const int r = blockIdx.x, h = blockIdx.y, heads = d / HEAD_DIM;
    const size_t s = row_stream[r];
    const int t = row_pos[r], end = t + 1;
    const int lo = end > cap ? end - cap : 0;
    const int n = end - lo; // position lo + j sits in slot (lo + j) % cap
    const float* row = qkv + (size_t)r * 3 * d + h * HEAD_DIM;
    const size_t head0 = (s * heads + h) * (size_t)cap; // slot 0 of this stream's head
    const size_t at = head0 + t % cap;
    const int ek = block_quantise_row(kq + at * HEAD_DIM, row + d, HEAD_DIM, 1.0f);
    const int ev = block_quantise_row(vq + at * HEAD_DIM, row + 2 * d, HEAD_DIM, 1.0f);
    const int eq = block_quantise_row(qq, row, HEAD_DIM, 1.0f);
    if (threadIdx.x == 0) {
        ke[at] = ek;
        ve[at] = ev;
    }
    __syncthreads(); // the new key and value (global memory) are visible to the whole block
    const int* qw = reinterpret_cast<const int*>(qq);
    float m = -INFINITY;
    int top = E_MIN;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const size_t slot = head0 + (lo + j) % cap;
        const int* kw = reinterpret_cast<const int*>(kq + slot * HEAD_DIM);
        int dot = 0;
        for (int i = 0; i < HEAD_DIM / 4; i++) dot = __dp4a(qw[i], kw[i], dot);
        const float sj = __fmul_rn((float)dot, pow2i(eq + ke[slot] + SCORE_SHIFT));
        ps[j] = sj;
        m = fmaxf(m, sj);
        top = max(top, ve[slot]);
    }
    m = block_max(m, -INFINITY);
    top = block_max(top, E_MIN);
    int psum = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const size_t slot = head0 + (lo + j) % cap;
        const float p = exp_contract(__fsub_rn(ps[j], m));
        psum += (int)rintf(__fmul_rn(p, pow2i(P_BITS)));
        ws[j] = (int)rintf(__fmul_rn(p, pow2i(P_BITS + ve[slot] - top)));
    }
    __shared__ int sum_part[32];
    const int sum = block_reduce_sum(psum, sum_part); // its barriers also publish ws
    const int c = threadIdx.x % HEAD_DIM, group = threadIdx.x / HEAD_DIM;
    int acc = 0;
    for (int j = group; j < n; j += ATT_THREADS / HEAD_DIM)
        acc += ws[j] * (int)vq[(head0 + (lo + j) % cap) * HEAD_DIM + c];
    part[group][c] = acc;
    __syncthreads();
    if (threadIdx.x < HEAD_DIM) {
        int total = 0;
        for (int g = 0; g < ATT_THREADS / HEAD_DIM; g++) total += part[g][c];
        att[(size_t)r * d + h * HEAD_DIM + c] = __fdiv_rn(__fmul_rn((float)total, pow2i(top)), (float)sum);
    }
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS) m1q_attention(float* att, const float* qkv, signed char* kq,
                                                                       int* ke, signed char* vq, int* ve,
                                                                       const int* row_stream, const int* row_pos,
                                                                       int d, int cap) {
    extern __shared__ int att_shared[];
    c3_attention(att, qkv, kq, ke, vq, ve, row_stream, row_pos, d, cap, att_shared);
}

// m1x_rope and m1q_attention in one launch, for M2's decode step (a launch fewer per layer; the
// same bits): block (r, h) first rotates head h's query and key of row r in place, the pairs
// m1x_rope gives it (threads 0..31 the query's, 32..63 the key's; those values are this block's
// alone), then attends as m1q_attention. Grid, block and shared memory as m1q_attention; cos_t
// and sin_t are m1x_rope's tables ([positions][32]).
// Cost: m1q_attention's, plus 512 bytes of q and k read and written per (row, head) and 64
// rotations; it saves m1x_rope's launch (src/backend/cuda/decode_cost.rs: m2-25m at batch 1,
// 6 launches of about 2 us each).
extern "C" __global__ void __launch_bounds__(ATT_THREADS) m1q_rope_attention(float* att, float* qkv, signed char* kq,
                                                                            int* ke, signed char* vq, int* ve,
                                                                            const int* row_stream, const int* row_pos,
                                                                            int d, int cap, const float* cos_t,
                                                                            const float* sin_t) {
    extern __shared__ int att_shared[];
    const int half = HEAD_DIM / 2, r = blockIdx.x, h = blockIdx.y;
    if (threadIdx.x < HEAD_DIM) {
        const int j = threadIdx.x % half;
        float* head = qkv + (size_t)r * 3 * d + (threadIdx.x < half ? 0 : d) + h * HEAD_DIM;
        const size_t t = (size_t)row_pos[r] * half + j;
        rope_pair(head, j, cos_t[t], sin_t[t]);
    }
    __syncthreads(); // the rotated query and key (global memory) are visible to the whole block
    c3_attention(att, qkv, kq, ke, vq, ve, row_stream, row_pos, d, cap, att_shared);
}

// Softmax of each row of p ([rows][v]) in place: m = max, p_i = exp_contract(p_i - m), the sum
// (c3_softmax_sum), p_i / sum. Grid: one block of 256 per row.
// Cost: 8 v bytes per row (m1-3m, R = 1,024: 2 MB, 0.6 us of HBM); one thread's v lane adds.
extern "C" __global__ void __launch_bounds__(256) m1q_softmax(float* p, int v) {
    __shared__ float sum_s;
    float* row = p + (size_t)blockIdx.x * v;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, row[i]);
    m = block_max(m, -INFINITY);
    for (int i = threadIdx.x; i < v; i += blockDim.x) row[i] = exp_contract(__fsub_rn(row[i], m));
    __syncthreads();
    if (threadIdx.x == 0) sum_s = c3_softmax_sum(row, v);
    __syncthreads();
    for (int i = threadIdx.x; i < v; i += blockDim.x) row[i] = __fdiv_rn(row[i], sum_s);
}

// The coder's integer CDF of each row of p ([rows][256] f32) into cum ([rows][257] u32): exactly
// CdfQuantizer::quantize (src/coder/cdf.rs, whose module docs define the rule), so only integers
// cross to the host. Thread i takes byte i: p_i = m_i 2^e_i read from its bits (subnormals in units
// of 2^-149); e_max the largest exponent of a non-zero input; w_i = floor(m_i 2^(16 + e_i - e_max))
// (0 when that shift is 64 or more); acc_i = sum_{j<i} w_j, W = sum w_j (u64, below 2^48); then
// cum[i] = floor(acc_i free / W) + i f_min (u128: the product reaches 2^72), free = 2^total_bits -
// 256 f_min, cum[256] = 2^total_bits; an all-zero row (W = 0) gives the uniform CDF. A row holding
// a NaN, an infinity or a negative non-zero value (which quantize refuses) is marked instead:
// cum[0] = 1 + the first such byte (a valid CDF has cum[0] = 0). Grid: one block of 256 per row.
// Cost per row: reads 1 KiB, writes 1,028 bytes; two block maxima, an 8-round scan of u64 in
// shared memory, one u128 product and division per thread (software, ~100s of instructions).
// m1-3m, R = 1,024: 2 MB, 0.6 us of HBM; 262 k divisions, a few us across the SMs.
extern "C" __global__ void __launch_bounds__(256) m1q_cdf(unsigned* cum, const float* p, int total_bits, int f_min) {
    __shared__ unsigned long long scan[2][256];
    const int i = threadIdx.x;
    const unsigned bits = __float_as_uint(p[(size_t)blockIdx.x * 256 + i]);
    const int field = (int)((bits >> 23) & 0xFFu);
    const unsigned frac = bits & 0x7FFFFFu;
    const unsigned long long mant = field == 0 ? frac : (frac | 0x800000u);
    const bool bad = field == 0xFF || (mant != 0 && (bits >> 31) != 0);
    const unsigned long long m = bad ? 0 : mant;
    const int e = field == 0 ? -149 : field - 150;
    // 256 - (the first bad byte), or 0: the largest marks the first.
    const int first_bad = block_max(bad ? 256 - i : 0, 0);
    const int e_max = block_max(m != 0 ? e : -1000, -1000);
    const int shift = e_max - e;
    const unsigned long long w = (m == 0 || shift >= 64) ? 0ull : (m << 16) >> shift;
    // Inclusive scan (Hillis-Steele), double-buffered: round r reads buffer r % 2, writes the other.
    scan[0][i] = w;
    __syncthreads();
    int from = 0;
    for (int off = 1; off < 256; off <<= 1) {
        const unsigned long long v = scan[from][i];
        scan[from ^ 1][i] = i >= off ? v + scan[from][i - off] : v;
        from ^= 1;
        __syncthreads();
    }
    const unsigned long long sum = scan[from][255], acc = scan[from][i] - w;
    unsigned* out = cum + (size_t)blockIdx.x * 257;
    const unsigned long long total = 1ull << total_bits;
    if (first_bad != 0) {
        if (i == 0) out[0] = (unsigned)(257 - first_bad);
        return;
    }
    if (sum == 0) {
        out[i] = (unsigned)i << (total_bits - 8);
    } else {
        const unsigned long long free_ = total - 256ull * (unsigned)f_min;
        const unsigned __int128 share = (unsigned __int128)acc * free_ / sum;
        out[i] = (unsigned)((unsigned long long)share + (unsigned long long)i * (unsigned)f_min);
    }
    if (i == 255) out[256] = (unsigned)total;
}
