// Kernels with one deliberate bug each, of the kinds a GPU punishes and a plain host build of the
// same source would not notice. They are built into every emulator (never into the real cubins:
// build.rs compiles kernels/ only) so that tests/gpu_parity.rs can prove each emulator check fires.

#include "common.cuh"

// Reads a neighbour's shared slot without the __syncthreads that would make it written. The
// right answer is out[i] = 63 - t; the emulator must not give it in any block.
extern "C" __global__ void __launch_bounds__(64) planted_missing_barrier(float* out) {
    __shared__ float slot[64];
    const int t = threadIdx.x;
    slot[t] = (float)t;
    out[blockIdx.x * 64 + t] = slot[63 - t];
}

// A 16-byte vector load from an address that is only 4-byte aligned: a GPU faults.
extern "C" __global__ void planted_misaligned_load(const float* in, float* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(in + 1);
    out[threadIdx.x] = __uint_as_float(v.x);
}

// One thread past the end of a shared tile: a GPU silently writes whatever lies beyond it.
extern "C" __global__ void planted_shared_overflow(float* out) {
    __shared__ float tile[32];
    tile[threadIdx.x] = 1.0f; // launched with 33 threads
    __syncthreads();
    out[threadIdx.x] = tile[0];
}

// Half a warp waits at __syncthreads while the other half shuffles with the whole warp's mask: on
// a GPU it hangs or reads garbage. (A barrier that only some threads reach before the rest exit is
// not planted: exited threads count as arrived, on a GPU as on the emulator.)
extern "C" __global__ void planted_divergent_sync(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16) __syncthreads();
    else v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

// Reads past the end of a global buffer of n floats (launched with a page of slack beyond it).
extern "C" __global__ void planted_global_overflow(const float* in, int n, float* out) {
    out[threadIdx.x] = in[n + 512 + threadIdx.x]; // 2 KiB past the end: in the guard page
}

// Reads a tile fetched by cp.async after the barrier but without cp.async.wait_group: on a GPU the
// copies may not have landed. The right answer is out[i] = in[i]; the emulator must not give it.
extern "C" __global__ void __launch_bounds__(64) planted_cp_async_no_wait(const float* in, float* out) {
    __shared__ __align__(16) float tile[64];
    const int t = threadIdx.x;
    if (t < 16) cp_async16(&tile[4 * t], in + 4 * t, true);
    cp_async_commit();
    __syncthreads();
    out[t] = tile[t];
}

// Double buffering without the barrier that ends each round: the last warp refills the buffer for
// round 2 while warp 0 may still be reading round 1 from it. The right answer is
// out[t] = in[63 - t] + in[127 - t]; under the reverse schedule (warps run apart, copies land at
// once) the emulator must not give it.
extern "C" __global__ void __launch_bounds__(64) planted_refill_race(const float* in, float* out) {
    __shared__ __align__(16) float buf[64];
    const int t = threadIdx.x;
    float acc = 0.0f;
    for (int round = 0; round < 2; ++round) {
        if (t >= 48) cp_async16(&buf[4 * (t - 48)], in + 64 * round + 4 * (t - 48), true);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        acc += buf[63 - t];
    }
    out[t] = acc;
}

// An int8 dot product through the unsigned __dp4a: words of signed bytes passed as `unsigned`
// pick the overload that multiplies them as 0..255, so every negative byte counts as 256 more.
// The right answer is out[i] = the signed dot of a[i] and b[i]; the emulator must not give it.
extern "C" __global__ void planted_dp4a_unsigned(const int* a, const int* b, int* out) {
    const int t = threadIdx.x;
    out[t] = (int)__dp4a((unsigned)a[t], (unsigned)b[t], 0u);
}

// A fast-math kernel counting on IEEE arithmetic: a denormal product (1e-20 * 1e-20) and __expf to
// the bit of an exact exp. nvcc builds it with --use_fast_math, so a GPU flushes the product to
// zero and rounds x log2 e before its exp2; the emulator must answer the same way.
extern "C" __global__ void planted_fast_math_as_ieee(const float* in, float* out) {
    out[0] = in[0] * in[1];
    out[1] = __expf(in[2]);
}
