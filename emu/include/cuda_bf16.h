// The emulator's stand-in for CUDA's <cuda_bf16.h>: the storage type and the two conversions the
// kernels use, with the device's rounding (to nearest, ties to even; NaN stays a quiet NaN).
#pragma once
#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
    unsigned short bits;
};

static inline float __bfloat162float(__nv_bfloat16 x) {
    uint32_t u = (uint32_t)x.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    __nv_bfloat16 out;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        out.bits = (unsigned short)((u >> 16) | 0x40u);
    } else {
        out.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return out;
}
