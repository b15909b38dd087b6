/*
Shared helpers for the training kernels (embed, norm, rope, attention, classifier, relu,
global_norm, cast): the storage types, conversions, and warp/block reductions; and, at the end,
the pieces M1's exact paths share (m1_exact.cu for contract 2, m1_int8.cu for contract 3).

Storage: every training kernel is a template over its activation/weight storage type T, either
`float` (the f32 path, checked against the CPU backend at 1e-4) or `bf16` (the training path,
checked at 1e-2). All arithmetic is fp32 (fp64 where a long sum is reduced), whatever T is; a bf16
value is converted to float on load and rounded to nearest-even on store. Kernels are exported as
`extern "C"` wrappers named `<op>_f32` and `<op>_bf16`, so the module's symbol names are plain.

Reductions here are deterministic: a fixed shuffle tree inside a warp, then a fixed sequential
order over warps. Nothing uses atomics.
*/
#pragma once

#include <cuda_bf16.h>
#include <stddef.h>

typedef __nv_bfloat16 bf16;

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))
#define WARP_SIZE 32

// ----------------------------------------------------------------------------
// conversions

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
// Round to nearest, ties to even (the same rounding as the host's `Bf16::from_f32`).
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

// The bits of x rounded to bf16 (nearest, ties to even), as from_float<bf16> rounds.
__device__ __forceinline__ unsigned bf16_bits(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u; // NaN stays a quiet NaN
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// Two values as one bf16 pair (an mma operand register, or 4 bytes of a row): `lo` in the low
// half (the lower column or row index).
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) { return bf16_bits(lo) | (bf16_bits(hi) << 16); }

// ----------------------------------------------------------------------------
// reductions

// Butterfly (xor) reduction: every lane ends with the same value, computed in the same order.
__device__ __forceinline__ float warp_reduce_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Integer sums are exact, so any tree gives the same value.
__device__ __forceinline__ int warp_reduce_sum(int v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ double warp_reduce_sum(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float warp_reduce_max(float v) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). `shared` holds 32 values.
// Every thread gets the total. Deterministic: warp trees, then warp 0 sums the warp totals with
// the same tree. Contains __syncthreads: call it from every thread of the block.
template <typename V>
__device__ __forceinline__ V block_reduce_sum(V v, V* shared) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    const int num_warps = blockDim.x / WARP_SIZE;
    v = warp_reduce_sum(v);
    __syncthreads(); // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    V w = (lane < num_warps) ? shared[lane] : (V)0;
    return warp_reduce_sum(w);
}

// ----------------------------------------------------------------------------
// 16-byte packs: one 128-bit load or store moves 16 / sizeof(T) elements, an eighth of the
// instructions of bf16 one by one (llm.c's x128). The address must be 16-byte aligned: a GPU
// faults on a misaligned one, so callers check (`fits_packs16`) and fall back to single elements.

template <typename T> struct Pack16;
template <> struct Pack16<float> {
    static constexpr int N = 4;
    static __device__ __forceinline__ void unpack(uint4 u, float v[N]) {
        v[0] = __uint_as_float(u.x);
        v[1] = __uint_as_float(u.y);
        v[2] = __uint_as_float(u.z);
        v[3] = __uint_as_float(u.w);
    }
    static __device__ __forceinline__ uint4 pack(const float v[N]) {
        return uint4{__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3])};
    }
};
template <> struct Pack16<bf16> {
    static constexpr int N = 8;
    static __device__ __forceinline__ void unpack(uint4 u, float v[N]) {
        const unsigned w[4] = {u.x, u.y, u.z, u.w};
        for (int i = 0; i < 4; ++i) {
            v[2 * i] = __uint_as_float(w[i] << 16);
            v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
    static __device__ __forceinline__ uint4 pack(const float v[N]) {
        return uint4{pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]), pack_bf16x2(v[4], v[5]), pack_bf16x2(v[6], v[7])};
    }
};

// Whether n elements from p can be moved in whole, aligned 16-byte packs.
template <typename T> __device__ __forceinline__ bool fits_packs16(const T* p, long long n) {
    return n % Pack16<T>::N == 0 && ((size_t)p & 15) == 0;
}

// ----------------------------------------------------------------------------
// asynchronous copies (cp.async, sm_80+): 16 bytes from global to shared memory without passing
// through registers, so a block fetches its next tile while it computes on this one. A copy joins
// the group the next cp_async_commit closes; cp_async_wait<N> returns once at most the N newest of
// this thread's groups are still in flight. Other threads' copies are visible after their waits
// and a __syncthreads. Both addresses must be 16-byte aligned.

// `valid` false writes 16 zero bytes and reads nothing (`global_src` must still be a mapped address).
__device__ __forceinline__ void cp_async16(void* shared_dst, const void* global_src, bool valid) {
#ifdef TERSE_EMU
    emu_cp_async16(shared_dst, global_src, valid);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"((unsigned)__cvta_generic_to_shared(shared_dst)),
                 "l"(global_src), "r"(valid ? 16 : 0)
                 : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef TERSE_EMU
    emu_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef TERSE_EMU
    emu_cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// ----------------------------------------------------------------------------
// tensor cores

// d += A B for one 16x16 (A, row-major) by 16x8 (B, column-major) bf16 tile with fp32 accumulation,
// warp-collective (every lane of a full warp). Fragments, with g = lane / 4 and t = lane % 4 (PTX
// ISA, "Matrix Fragments for mma.m16n8k16"): a[0..3] hold A[g][2t..2t+1], A[g+8][2t..2t+1],
// A[g][2t+8..2t+9], A[g+8][2t+8..2t+9]; b[0..1] hold B[2t..2t+1][g], B[2t+8..2t+9][g]; d[0..3]
// are D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1].
__device__ __forceinline__ void mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2]) {
#ifdef TERSE_EMU
    emu_mma_bf16_16816(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Four 8x8 b16 matrices from shared memory into mma operand registers, warp-collective: lane l
// passes the (16-byte aligned) address of row l % 8 of matrix l / 8; register i receives, of
// matrix i, row g's columns 2t and 2t+1 (ldmatrix_x4) or, transposed, column g's rows 2t and
// 2t+1 (ldmatrix_x4_trans), low half first (PTX ISA, ldmatrix).
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) {
#ifdef TERSE_EMU
    emu_ldmatrix_x4(r, row, false);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((unsigned)__cvta_generic_to_shared(row)));
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void* row) {
#ifdef TERSE_EMU
    emu_ldmatrix_x4(r, row, true);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((unsigned)__cvta_generic_to_shared(row)));
#endif
}

// ----------------------------------------------------------------------------
// M1's exact paths (docs/numeric-contract.md). Every operation is written as the IEEE-754
// intrinsic it must be (__fmaf_rn, __fmul_rn, __fadd_rn), so neither nvcc's contraction nor
// --use_fast_math can change a bit, whichever file includes this.

#define HEAD_DIM 64

// Rotary of one pair (x1, x2) = (x[j], x[j + 32]) of a head at the angle whose cos and sin are
// c and s, as the CPU's `rotate` (src/m1/mod.rs); with -s it is the inverse (the backward). The
// one rotation of every kernel: the exact ones (m1x_rope, m1q_rope_attention) compile without
// contraction, so the products round as written; the training attention kernels rotate q and k
// as they load them and un-rotate dq and dk as they store them.
__device__ __forceinline__ void rotate_pair(float& x1, float& x2, float c, float s) {
    const float y1 = fmaf(x1, c, -(x2 * s));
    x2 = fmaf(x1, s, x2 * c);
    x1 = y1;
}

// rotate_pair on (h[j], h[j + 32]) in place.
__device__ __forceinline__ void rope_pair(float* h, int j, float c, float s) {
    rotate_pair(h[j], h[j + HEAD_DIM / 2], c, s);
}

// The contract's exponential (src/numerics/exp.rs), constant for constant.
__device__ __forceinline__ float exp_contract(float x) {
    const float LOG2E = 1.44269504088896340736f;
    const float LN2_HI = 0.69314575f;
    const float LN2_LO = 1.4286068e-6f;
    const float C6 = 1.0f / 720.0f;
    const float C5 = 1.0f / 120.0f;
    const float C4 = 1.0f / 24.0f;
    const float C3 = 1.0f / 6.0f;
    const float C2 = 0.5f;
    if (isnan(x)) return x;
    if (x < -87.0f) return 0.0f;
    if (x > 88.0f) return INFINITY;
    float n = floorf(__fadd_rn(__fmul_rn(x, LOG2E), 0.5f));
    float r = __fmaf_rn(-n, LN2_HI, x);
    r = __fmaf_rn(-n, LN2_LO, r);
    float p = C6;
    p = __fmaf_rn(p, r, C5);
    p = __fmaf_rn(p, r, C4);
    p = __fmaf_rn(p, r, C3);
    p = __fmaf_rn(p, r, C2);
    p = __fmaf_rn(p, r, 1.0f);
    p = __fmaf_rn(p, r, 1.0f);
    float scale = __int_as_float(((int)n + 127) << 23);
    return __fmul_rn(p, scale);
}

__device__ __forceinline__ float max_of(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ int max_of(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ unsigned max_of(unsigned a, unsigned b) { return a > b ? a : b; }

// Max over a block (blockDim.x a multiple of 32, at most 1024), every thread passing `v` and the
// identity `lowest`: exact in any order. Contains __syncthreads: call it from every thread.
template <typename V> __device__ V block_max(V v, V lowest) {
    __shared__ V part[32];
    for (int off = 16; off > 0; off >>= 1) v = max_of(v, __shfl_xor_sync(0xffffffffu, v, off));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); // `part` may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    V m = lowest;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) m = max_of(m, part[w]);
    return m;
}
