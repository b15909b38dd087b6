/*
A cuBLASLt (libcublasLt) for the CUDA emulator: the calls terse's GEMM wrapper makes
(src/backend/cuda/gemm.rs), computing D = alpha op(A) op(B) + beta C in column-major layouts
with plain loops and fp32 accumulation, A/B in f32 or bf16, C/D in f32 or bf16.
Built by emu/build.py as libcublasLt.so.13 beside the emulated libcuda, whose stream it runs on
(so a GEMM issued during a capture is recorded into the graph like a kernel).

Refused with CUBLAS_STATUS_INVALID_VALUE: layouts whose shapes disagree with the transposes, a
leading dimension below the row count, C and D of different types or shapes; with
CUBLAS_STATUS_NOT_SUPPORTED: attributes, types or compute types it does not implement (ordered
layouts, epilogues other than RELU_AUX and DRELU, batches, scale types other than f32).
RELU_AUX stores max(sum, 0) (a NaN sum stores 0, as the CPU model's ReLU gives) and sets bit
i + j ld of the aux buffer (byte / 8, bit % 8: this emulator's layout, which only it reads) to
sum > 0; DRELU stores the sum where that bit is set, else 0. Both need the aux pointer and an aux
leading dimension that is a multiple of 128 and at least the rows of D (INVALID_VALUE otherwise).
With TERSE_EMU_NO_EPILOGUES set, the heuristic offers no algorithm for an epilogue
(CUBLAS_STATUS_NOT_SUPPORTED), for the callers' fallbacks.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

typedef int cublasStatus_t;
enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum { CUBLAS_COMPUTE_32F = 68 };

extern "C" int terse_emu_submit(void* stream, void (*run)(void*), void* data, void (*drop)(void*));

namespace {

enum { EPILOGUE_DEFAULT = 1, EPILOGUE_RELU_AUX = 130, EPILOGUE_DRELU = 136 };
enum { ATTR_TRANSA = 3, ATTR_TRANSB = 4, ATTR_EPILOGUE = 7, ATTR_AUX_POINTER = 11, ATTR_AUX_LD = 12 };

struct MatmulDesc {
    int trans_a = 0, trans_b = 0;
    int epilogue = EPILOGUE_DEFAULT;
    uint8_t* aux = nullptr;
    int64_t aux_ld = 0;
};
struct Layout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
};
struct Preference {
    int unused;
};

float load(const void* p, int type, size_t i) {
    if (type == CUDA_R_32F) return static_cast<const float*>(p)[i];
    uint32_t u = (uint32_t) static_cast<const uint16_t*>(p)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void store(void* p, int type, size_t i, float x) {
    if (type == CUDA_R_32F) {
        static_cast<float*>(p)[i] = x;
        return;
    }
    uint32_t u;
    memcpy(&u, &x, 4);
    uint16_t b = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40u)
                                                : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    static_cast<uint16_t*>(p)[i] = b;
}

struct Gemm {
    MatmulDesc op;
    Layout a, b, c, d;
    float alpha, beta;
    const void *pa, *pb, *pc;
    void* pd;
    uint64_t m, n, k;
};

// op(X) as a dense row-major rows x cols f32 matrix, from a stored column-major X.
std::vector<float> dense(const void* p, const Layout& l, bool trans, uint64_t rows, uint64_t cols) {
    std::vector<float> out(rows * cols);
    for (uint64_t i = 0; i < rows; ++i)
        for (uint64_t j = 0; j < cols; ++j)
            out[i * cols + j] = trans ? load(p, l.type, j + i * (uint64_t)l.ld) : load(p, l.type, i + j * (uint64_t)l.ld);
    return out;
}

// Dot product in eight interleaved partial sums (the order is not cuBLASLt's either; callers
// compare within a tolerance).
float dot(const float* x, const float* y, uint64_t n) {
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    uint64_t k = 0;
    for (; k + 8 <= n; k += 8)
        for (int l = 0; l < 8; ++l) part[l] += x[k + l] * y[k + l];
    for (; k < n; ++k) part[0] += x[k] * y[k];
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

void run_gemm(void* data) {
    const Gemm& g = *static_cast<Gemm*>(data);
    std::vector<float> a = dense(g.pa, g.a, g.op.trans_a, g.m, g.k);  // op(A): m x k
    std::vector<float> bt = dense(g.pb, g.b, !g.op.trans_b, g.n, g.k); // op(B)^T: n x k
    for (uint64_t j = 0; j < g.n; ++j)
        for (uint64_t i = 0; i < g.m; ++i) {
            float out = g.alpha * dot(&a[i * g.k], &bt[j * g.k], g.k);
            if (g.beta != 0.0f) out += g.beta * load(g.pc, g.c.type, i + j * (uint64_t)g.c.ld);
            if (g.op.epilogue != EPILOGUE_DEFAULT) {
                const uint64_t bit = i + j * (uint64_t)g.op.aux_ld;
                uint8_t& byte = g.op.aux[bit / 8];
                const uint8_t m = (uint8_t)(1u << (bit % 8));
                if (g.op.epilogue == EPILOGUE_RELU_AUX) {
                    byte = out > 0.0f ? byte | m : byte & ~m;
                    out = out > 0.0f ? out : 0.0f;
                } else if (!(byte & m)) {
                    out = 0.0f;
                }
            }
            store(g.pd, g.d.type, i + j * (uint64_t)g.d.ld, out);
        }
}

void drop_gemm(void* data) { delete static_cast<Gemm*>(data); }

} // namespace

extern "C" {

cublasStatus_t cublasLtCreate(void** handle) {
    *handle = new int(0);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(void* handle) {
    delete static_cast<int*>(handle);
    return CUBLAS_STATUS_SUCCESS;
}
size_t cublasLtGetVersion(void) { return 130000; }

cublasStatus_t cublasLtMatmulDescCreate(void** desc, int compute, int scale) {
    if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    *desc = new MatmulDesc();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(void* desc) {
    delete static_cast<MatmulDesc*>(desc);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(void* desc, int attr, const void* buf, size_t size) {
    MatmulDesc* d = static_cast<MatmulDesc*>(desc);
    if (attr == ATTR_AUX_POINTER || attr == ATTR_AUX_LD) {
        if (size != 8) return CUBLAS_STATUS_INVALID_VALUE;
        if (attr == ATTR_AUX_POINTER) memcpy(&d->aux, buf, 8);
        else memcpy(&d->aux_ld, buf, 8);
        return CUBLAS_STATUS_SUCCESS;
    }
    if ((attr != ATTR_TRANSA && attr != ATTR_TRANSB && attr != ATTR_EPILOGUE) || size != 4)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    int32_t v;
    memcpy(&v, buf, 4);
    if (attr == ATTR_EPILOGUE) {
        if (v != EPILOGUE_DEFAULT && v != EPILOGUE_RELU_AUX && v != EPILOGUE_DRELU) return CUBLAS_STATUS_NOT_SUPPORTED;
        d->epilogue = v;
        return CUBLAS_STATUS_SUCCESS;
    }
    if (v != 0 && v != 1) return CUBLAS_STATUS_INVALID_VALUE;
    (attr == ATTR_TRANSA ? d->trans_a : d->trans_b) = v;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(void** layout, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (type != CUDA_R_32F && type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (ld < (int64_t)rows || ld < 1) return CUBLAS_STATUS_INVALID_VALUE;
    *layout = new Layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(void* layout) {
    delete static_cast<Layout*>(layout);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(void** pref) {
    *pref = new Preference();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(void* pref) {
    delete static_cast<Preference*>(pref);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(void*, int attr, const void*, size_t) {
    // MAX_WORKSPACE_BYTES (1) and the four MIN_ALIGNMENT_*_BYTES (5..8) are accepted and unused.
    return (attr == 1 || (attr >= 5 && attr <= 8)) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

struct HeuristicResult {
    uint64_t algo[8];
    size_t workspace;
    int state;
    float waves;
    int reserved[4];
};

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(void*, void* desc, void* a, void* b, void* c, void* d, void*,
                                              int requested, HeuristicResult* results, int* count) {
    if (requested < 1 || !desc || !a || !b || !c || !d) return CUBLAS_STATUS_INVALID_VALUE;
    // A cuBLASLt that offers no algorithm with an epilogue, for the callers' fallback paths.
    if (getenv("TERSE_EMU_NO_EPILOGUES") && static_cast<MatmulDesc*>(desc)->epilogue != EPILOGUE_DEFAULT)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    memset(results, 0, sizeof(HeuristicResult));
    results[0].algo[0] = 1;
    results[0].waves = 1.0f;
    *count = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(void*, void* desc, const void* alpha, const void* A, void* Adesc, const void* B,
                              void* Bdesc, const void* beta, const void* C, void* Cdesc, void* D, void* Ddesc,
                              const void* algo, void*, size_t, void* stream) {
    if (!desc || !alpha || !beta || !A || !B || !C || !D || !algo) return CUBLAS_STATUS_INVALID_VALUE;
    Gemm g;
    g.op = *static_cast<MatmulDesc*>(desc);
    g.a = *static_cast<Layout*>(Adesc);
    g.b = *static_cast<Layout*>(Bdesc);
    g.c = *static_cast<Layout*>(Cdesc);
    g.d = *static_cast<Layout*>(Ddesc);
    memcpy(&g.alpha, alpha, 4);
    memcpy(&g.beta, beta, 4);
    g.m = g.op.trans_a ? g.a.cols : g.a.rows;
    g.k = g.op.trans_a ? g.a.rows : g.a.cols;
    uint64_t kb = g.op.trans_b ? g.b.cols : g.b.rows;
    g.n = g.op.trans_b ? g.b.rows : g.b.cols;
    if (kb != g.k || g.c.rows != g.m || g.c.cols != g.n || g.d.rows != g.m || g.d.cols != g.n ||
        g.c.type != g.d.type || g.a.type != g.b.type)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (g.op.epilogue != EPILOGUE_DEFAULT && (!g.op.aux || g.op.aux_ld % 128 != 0 || g.op.aux_ld < (int64_t)g.m))
        return CUBLAS_STATUS_INVALID_VALUE;
    g.pa = A;
    g.pb = B;
    g.pc = C;
    g.pd = D;
    return terse_emu_submit(stream, run_gemm, new Gemm(g), drop_gemm) == 0 ? CUBLAS_STATUS_SUCCESS
                                                                            : CUBLAS_STATUS_INVALID_VALUE;
}

} // extern "C"
