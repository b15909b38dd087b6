/*
Device side of the CUDA emulator (see emu/README.md): what a kernel under kernels/ sees when it
is compiled by the host C++ compiler instead of nvcc. Included first in every kernel translation
unit (`-include emu/device.h`).

Each CUDA thread of a block is a fiber; the blocks of a grid run one after another on the calling
host thread. `__syncthreads` and the warp shuffles are real barriers between those fibers (a
thread that has returned no longer counts), so a kernel that reads shared memory before every
thread has written it, or skips a barrier in divergent code, fails here as it would on a GPU (a
barrier that can never be passed aborts with the kernel's name). `__shared__` variables are
per-process statics, shared by the block that runs; they and dynamic shared memory are poisoned
with NaN bytes before each block. Arithmetic is the host's IEEE-754 f32 without contraction, so the exact
M1 path (explicit fmaf) gives the CPU's bits. `__expf`/`__logf` follow the GPU's steps (below);
kernels nvcc builds with --use_fast_math (all but `// terse: exact` ones) are built with
TERSE_EMU_FAST_MATH, which maps expf/logf to those too, and run with denormals flushed to zero
(emu/runtime.cpp). Fast-math division and square roots (within 2 ulp on a GPU) stay IEEE here.
*/
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>

struct emu_uint3 {
    unsigned x, y, z;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

// The thread running now (set by the scheduler in emu/runtime.cpp before it resumes a fiber).
struct EmuThread {
    emu_uint3 tid;
    int lane;
    int warp;
};
extern "C" EmuThread* emu_current_thread(void);
extern "C" emu_uint3 emu_block_idx, emu_block_dim, emu_grid_dim;
extern "C" void emu_syncthreads(void);
// Exchanges 8 bytes with the lane `src_lane` of the calling warp (all live lanes must call it).
extern "C" uint64_t emu_warp_exchange(uint64_t mine, int src_lane);
extern "C" void* emu_dynamic_shared(void);
// Every live lane of the calling warp passes `bytes` (at most 32) bytes; each gets all 32 lanes'
// (lane-major) in `all`.
extern "C" void emu_warp_gather(const void* mine, int bytes, void* all);
// cp.async of 16 bytes from global to shared memory (zeros when !valid). It lands when the issuing
// thread's cp.async.wait_group retires its group (a read that does not wait reads the poison), or
// under TERSE_EMU_SCHEDULE=reverse at once (a refill of a buffer still being read shows).
extern "C" void emu_cp_async16(void* shared_dst, const void* global_src, int valid);
extern "C" void emu_cp_async_commit(void);
extern "C" void emu_cp_async_wait(int pending_groups);

// Kernels test this to swap device-only code (inline PTX) for the emulator's version.
#define TERSE_EMU 1

#define threadIdx (emu_current_thread()->tid)
#define blockIdx emu_block_idx
#define blockDim emu_block_dim
#define gridDim emu_grid_dim

#ifdef EMU_SCAN
// emu/build.py's scan of the preprocessed source: entry points and launch bounds stay visible.
#define __global__ EMU_GLOBAL
#define __launch_bounds__(...) EMU_LAUNCH_BOUNDS(__VA_ARGS__)
#else
#define __global__
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
// Static shared variables live in one section, which the scheduler poisons before every block
// (emu/runtime.cpp), so a read of shared memory no thread of this block wrote shows as NaN.
#define __shared__ static __attribute__((section("emu_shared")))
#define EMU_DYNAMIC_SHARED(type, name) type* name = (type*)emu_dynamic_shared()

static inline void __syncthreads(void) { emu_syncthreads(); }

template <typename V> static inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask) {
    static_assert(sizeof(V) <= 8, "shuffle of more than 8 bytes");
    (void)mask; // every caller passes the full warp
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(V));
    bits = emu_warp_exchange(bits, emu_current_thread()->lane ^ lane_mask);
    V out;
    memcpy(&out, &bits, sizeof(V));
    return out;
}

template <typename V> static inline V __shfl_sync(unsigned mask, V v, int src_lane) {
    (void)mask;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(V));
    bits = emu_warp_exchange(bits, src_lane & 31);
    V out;
    memcpy(&out, &bits, sizeof(V));
    return out;
}

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }

// glibc declares its own __expf/__logf; the device intrinsics are macros over these. A GPU
// computes __expf(x) as ex2.approx(x * log2 e) and __logf(x) as lg2.approx(x) * ln 2, each step
// rounded to f32: modelled here step by step, with the host's exact exp2f/log2f for the
// approximate instructions (which are within 2 ulp of them). The product's rounding is the
// intrinsic's large error: relative |x| 2^-24 ln 2 in __expf(x). nvcc's --use_fast_math turns
// expf and logf into these intrinsics; so does a fast-math kernel here.
static inline float emu_fast_exp(float x) { return exp2f(x * 1.44269504f); }
static inline float emu_fast_log(float x) { return log2f(x) * 0.693147181f; }
#define __expf(x) emu_fast_exp(x)
#define __logf(x) emu_fast_log(x)
#ifdef TERSE_EMU_FAST_MATH
#define expf(x) emu_fast_exp(x)
#define logf(x) emu_fast_log(x)
#endif
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// The bits of one 4-byte type as another (the device's reinterpreting intrinsics).
template <typename To, typename From> static inline To emu_bits(From x) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To out;
    memcpy(&out, &x, sizeof out);
    return out;
}
static inline float __int_as_float(int x) { return emu_bits<float>(x); }
static inline float __uint_as_float(unsigned x) { return emu_bits<float>(x); }
static inline unsigned __float_as_uint(float x) { return emu_bits<unsigned>(x); }
static inline int __float_as_int(float x) { return emu_bits<int>(x); }

// The IEEE-754 intrinsics (round to nearest even) the exact kernels write out: the host's f32
// operations, which -ffp-contract=off keeps single and unfused.
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }

// __dp4a: c plus the four byte products of a and b, as signed bytes for int operands and as
// unsigned bytes for unsigned ones (the overload decides, as on a GPU), wrapping in 32 bits.
static inline int __dp4a(int a, int b, int c) {
    unsigned acc = (unsigned)c;
    for (int i = 0; i < 4; ++i) acc += (unsigned)((int)(signed char)(a >> 8 * i) * (int)(signed char)(b >> 8 * i));
    return (int)acc;
}
static inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    for (int i = 0; i < 4; ++i) c += ((a >> 8 * i) & 0xffu) * ((b >> 8 * i) & 0xffu);
    return c;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with D = C (in place): each lane passes its
// fragments as laid out by the PTX ISA ("Matrix Fragments for mma.m16n8k16", g = lane / 4,
// t = lane % 4): A 16x16 row-major as four registers of two bf16 (rows g, g+8, g, g+8; columns
// 2t, 2t, 2t+8, 2t+8 and the next one), B 16x8 as two registers (rows 2t and 2t+8 and the next
// one, column g), C/D 16x8 f32 as (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1). The emulator
// gathers the warp's fragments, rebuilds A and B, and sums in ascending k in f32 (the tensor
// core's order and internal precision are its own; callers compare within a tolerance). These
// layouts, and ldmatrix's below, were checked against a second source, CUTLASS's CuTe traits
// (SM80_16x8x16 ALayout/BLayout/CLayout, SM75_U32x4_LDSM_N, SM75_U16x8_LDSM_T): they agree.
static inline float emu_bf16_half(unsigned reg, int hi) {
    return emu_bits<float>((hi ? (reg >> 16) : (reg & 0xffffu)) << 16);
}

static inline void emu_mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2]) {
    unsigned mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    unsigned all[32][6];
    emu_warp_gather(mine, sizeof mine, all);
    float A[16][16], Bm[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        for (int h = 0; h < 2; ++h) {
            A[g][2 * t + h] = emu_bf16_half(all[lane][0], h);
            A[g + 8][2 * t + h] = emu_bf16_half(all[lane][1], h);
            A[g][2 * t + 8 + h] = emu_bf16_half(all[lane][2], h);
            A[g + 8][2 * t + 8 + h] = emu_bf16_half(all[lane][3], h);
            Bm[2 * t + h][g] = emu_bf16_half(all[lane][4], h);
            Bm[2 * t + 8 + h][g] = emu_bf16_half(all[lane][5], h);
        }
    }
    const int lane = emu_current_thread()->lane, g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i / 2) * 8, col = 2 * t + (i & 1);
        float acc = d[i];
        for (int k = 0; k < 16; ++k) acc += A[row][k] * Bm[k][col];
        d[i] = acc;
    }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l passes the address of row l % 8 of
// matrix l / 8 (8 b16 values); register i of lane (g = lane / 4, t = lane % 4) receives matrix
// i's row g, columns 2t and 2t+1, or with `trans` column g, rows 2t and 2t+1 (low half first).
static inline void emu_ldmatrix_x4(unsigned r[4], const void* row, bool trans) {
    if (((uintptr_t)row & 15) != 0) {
        fprintf(stderr, "CUDA emulator: ldmatrix row address not 16-byte aligned\n");
        abort();
    }
    const unsigned short* rows[32];
    emu_warp_gather(&row, sizeof row, rows);
    const int lane = emu_current_thread()->lane, g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        const unsigned short* const* m = rows + 8 * i;
        const unsigned lo = trans ? m[2 * t][g] : m[g][2 * t];
        const unsigned hi = trans ? m[2 * t + 1][g] : m[g][2 * t + 1];
        r[i] = lo | (hi << 16);
    }
}
