/*
Device side of the CUDA emulator (see emu/README.md): what a kernel under kernels/ sees when it
is compiled by the host C++ compiler instead of nvcc. Included first in every kernel translation
unit (`-include emu/device.h`).

Each CUDA thread of a block is a fiber; the blocks of a grid run one after another on the calling
host thread. `__syncthreads` and the warp shuffles are real barriers between those fibers (a
thread that has returned no longer counts), so a kernel that reads shared memory before every
thread has written it, or skips a barrier in divergent code, fails here as it would on a GPU (a
barrier that can never be passed aborts with the kernel's name). `__shared__` variables are
per-process statics, shared by the block that runs; dynamic shared memory is poisoned with NaN
bytes before each block. Arithmetic is the host's IEEE-754 f32 without contraction, so the exact
M1 path (explicit fmaf) gives the CPU's bits; `__expf`/`__logf` are the host's expf/logf, more
exact than the GPU's fast intrinsics.
*/
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct emu_uint3 {
    unsigned x, y, z;
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
#define __shared__ static
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

// glibc declares its own __expf/__logf; the device intrinsics are macros over the host functions.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __int_as_float(int x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}
static inline unsigned __float_as_uint(float x) {
    unsigned u;
    memcpy(&u, &x, 4);
    return u;
}
static inline int __float_as_int(float x) {
    int u;
    memcpy(&u, &x, 4);
    return u;
}
