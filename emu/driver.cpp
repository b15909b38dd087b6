/*
A CUDA driver (libcuda) for machines without a GPU: the subset of the driver API that cudarc and
terse call, over host memory, with kernels run by the emulator (emu/runtime.cpp). Built by
emu/build.py as libcuda.so.1; a process finds it only when LD_LIBRARY_PATH names its folder.

What it guarantees:
- one device, compute capability 9.0, 80 GiB, 132 SMs, named "terse CUDA emulator (CPU)";
- every stream operation runs when it is issued (streams are in order, so this is one valid
  schedule), except on a stream under capture, where it is recorded into the graph and runs at
  each cuGraphLaunch, with the arguments it had when captured;
- an asynchronous copy into page-locked host memory (cuMemHostAlloc) lands only when the host
  waits for it (cuStreamSynchronize, cuCtxSynchronize, or cuEventSynchronize / a successful
  cuEventQuery of an event recorded after it), the latest a GPU may land it; until then the
  destination holds 0xff bytes, so a host that reads without waiting reads NaN; with
  TERSE_EMU_EVENTS_BUSY set, every query of a recorded event answers CUDA_ERROR_NOT_READY;
- device memory is host memory: each allocation ends at a guard page (a kernel reading or writing
  past its end faults) and is filled with 0xff bytes (NaN as f32 or bf16) until written;
  copies and memsets outside an allocation are refused with CUDA_ERROR_INVALID_VALUE;
- launches are checked as the GPU checks them (block and grid limits, the kernel's launch bounds,
  dynamic shared memory above 48 KiB without cuFuncSetAttribute);
- a synchronising call during a global-mode capture fails as on the GPU
  (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
- calls are serialised by one lock, so tests on several host threads share the one device.
Event times are host wall-clock times of the emulation, not GPU timings.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kernel_registry.h"
#include "runtime.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
};

namespace {

std::recursive_mutex& lock() {
    static auto* m = new std::recursive_mutex();
    return *m;
}
#define LOCKED std::lock_guard<std::recursive_mutex> guard_(lock())

constexpr size_t TOTAL_MEMORY = 80ull << 30;
constexpr size_t PAGE = 4096;
constexpr int DEFAULT_MAX_DYNAMIC_SHARED = 48 * 1024;

struct Allocation {
    char* base;
    size_t mapped;
    size_t bytes; // rounded to 256
};
std::map<CUdeviceptr, Allocation> allocations;
size_t allocated_bytes = 0;

struct Graph {
    std::vector<std::function<void()>> ops;
};

struct Stream {
    bool capturing = false;
    int capture_mode = 0;
    Graph* graph = nullptr;
};

struct Event {
    double ms = 0.0;
    bool recorded = false;
    uint64_t landings_before = 0; // copies into page-locked memory issued before the record
};

// Page-locked host allocations (cuMemHostAlloc): base -> bytes.
std::map<uintptr_t, size_t> host_allocations;

// A device-to-host copy into page-locked memory that has run on its stream but not yet landed
// where the host can see it: the bytes as they were when it ran, and its issue number.
struct Landing {
    uint64_t id;
    char* dst;
    std::vector<char> bytes;
};
std::vector<Landing> landings;
uint64_t landings_issued = 0;

bool in_page_locked_memory(const void* p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    auto it = host_allocations.upper_bound(a);
    if (it == host_allocations.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

// Lands every pending copy issued before `before` (all of them by default): the host has waited.
void land(uint64_t before = UINT64_MAX) {
    std::vector<Landing> later;
    for (Landing& l : landings) {
        if (l.id < before) {
            memcpy(l.dst, l.bytes.data(), l.bytes.size());
        } else {
            later.push_back(std::move(l));
        }
    }
    landings = std::move(later);
}

struct Function {
    const EmuKernel* kernel;
    int max_dynamic_shared = DEFAULT_MAX_DYNAMIC_SHARED;
};

struct Context {
    int dummy;
};
Context primary;
thread_local Context* current_ctx = nullptr;
int global_captures = 0; // streams capturing in global mode

double now_ms() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

// The stream a handle names; the legacy and per-thread default streams (0, 1, 2) are never
// captured here.
Stream* stream_of(void* h) {
    uintptr_t v = (uintptr_t)h;
    return v <= 2 ? nullptr : static_cast<Stream*>(h);
}

// Runs `op` now, or records it when the stream is capturing.
CUresult submit(void* stream, std::function<void()> op) {
    Stream* s = stream_of(stream);
    if (s && s->capturing) {
        s->graph->ops.push_back(std::move(op));
    } else {
        op();
    }
    return CUDA_SUCCESS;
}

bool sync_forbidden() { return global_captures > 0; }

// Whether [p, p + n) lies inside one allocation.
bool in_device_memory(CUdeviceptr p, size_t n) {
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second.bytes;
}

CUresult device_alloc(CUdeviceptr* out, size_t bytes) {
    if (!out || bytes == 0) return CUDA_ERROR_INVALID_VALUE; // as cuMemAlloc refuses 0 bytes
    size_t rounded = (bytes + 255) / 256 * 256;
    size_t pages = (rounded + PAGE - 1) / PAGE;
    if (pages == 0) pages = 1;
    if (allocated_bytes + rounded > TOTAL_MEMORY) return CUDA_ERROR_OUT_OF_MEMORY;
    size_t mapped = (pages + 1) * PAGE;
    void* m = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    char* base = static_cast<char*>(m);
    mprotect(base + pages * PAGE, PAGE, PROT_NONE);
    char* p = base + pages * PAGE - rounded;
    memset(p, 0xff, rounded);
    allocations[(CUdeviceptr)p] = Allocation{base, mapped, rounded};
    allocated_bytes += rounded;
    *out = (CUdeviceptr)p;
    return CUDA_SUCCESS;
}

CUresult device_free(CUdeviceptr p) {
    auto it = allocations.find(p);
    if (it == allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    allocated_bytes -= it->second.bytes;
    munmap(it->second.base, it->second.mapped);
    allocations.erase(it);
    return CUDA_SUCCESS;
}

struct ErrorText {
    CUresult code;
    const char* name;
    const char* text;
};

// The codes this driver returns, with the real driver's names and messages.
ErrorText error_text(CUresult e) {
    static const ErrorText known[] = {
        {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
        {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
        {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
        {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
        {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
        {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
        {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
         "too many resources requested for launch"},
        {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
         "operation not permitted when stream is capturing"},
        {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
         "operation failed due to a previous error during capture"},
    };
    for (const ErrorText& k : known)
        if (k.code == e) return k;
    return {e, "CUDA_ERROR_UNKNOWN", "unknown error"};
}

struct PackedArgs {
    const EmuKernel* kernel;
    void* packed;
    PackedArgs(const EmuKernel* k, void* p) : kernel(k), packed(p) {}
    PackedArgs(const PackedArgs&) = delete;
    ~PackedArgs() { kernel->drop(packed); }
};

} // namespace

extern "C" {

// For the emulated cuBLASLt (emu/cublaslt.cpp): run or capture host work on a stream.
int terse_emu_submit(void* stream, void (*run)(void*), void* data, void (*drop)(void*)) {
    LOCKED;
    std::shared_ptr<void> owned(data, drop);
    return submit(stream, [run, owned] { run(owned.get()); });
}

CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, len, "terse CUDA emulator (CPU)");
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = TOTAL_MEMORY;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid_v2(void* uuid, CUdevice) {
    memset(uuid, 0, 16);
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice) {
    switch (attr) {
    case 1: *v = 1024; break;       // max threads per block
    case 2: *v = 1024; break;       // max block dim x
    case 3: *v = 1024; break;       // y
    case 4: *v = 64; break;         // z
    case 5: *v = 0x7fffffff; break; // max grid dim x
    case 6: case 7: *v = 65535; break;
    case 8: *v = 49152; break;      // shared memory per block
    case 10: *v = 32; break;        // warp size
    case 13: *v = 1980000; break;   // clock rate, kHz
    case 16: *v = 132; break;       // SMs
    case 36: *v = 2619000; break;   // memory clock, kHz
    case 37: *v = 5120; break;      // bus width, bits
    case 38: *v = 50 << 20; break;  // L2
    case 75: *v = 9; break;         // compute capability
    case 76: *v = 0; break;
    case 97: *v = 232448; break;    // opt-in shared memory per block
    case 115: *v = 1; break;        // memory pools
    default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    *ctx = &primary;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(void* ctx) {
    current_ctx = static_cast<Context*>(ctx);
    return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = current_ctx;
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() {
    LOCKED;
    if (sync_forbidden()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    land();
    return CUDA_SUCCESS;
}
CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return CUDA_SUCCESS;
}
CUresult cuCtxSetFlags(unsigned) { return CUDA_SUCCESS; }

CUresult cuStreamCreate(void** s, unsigned) {
    *s = new Stream();
    return CUDA_SUCCESS;
}
CUresult cuStreamCreateWithPriority(void** s, unsigned, int) {
    *s = new Stream();
    return CUDA_SUCCESS;
}
CUresult cuStreamDestroy_v2(void* h) {
    LOCKED;
    Stream* s = stream_of(h);
    if (s && s->capturing) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    delete s;
    return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(void* h) {
    LOCKED;
    Stream* s = stream_of(h);
    if ((s && s->capturing) || sync_forbidden()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    land(); // one device, and every stream's work has run: all of it is done
    return CUDA_SUCCESS;
}
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return CUDA_SUCCESS; }
CUresult cuStreamBeginCapture_v2(void* h, int mode) {
    LOCKED;
    Stream* s = stream_of(h);
    if (!s) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; // the legacy stream cannot be captured
    if (s->capturing) return CUDA_ERROR_INVALID_VALUE;
    s->capturing = true;
    s->capture_mode = mode;
    s->graph = new Graph();
    if (mode == 0) global_captures++;
    return CUDA_SUCCESS;
}
CUresult cuStreamEndCapture(void* h, void** graph) {
    LOCKED;
    Stream* s = stream_of(h);
    if (!s || !s->capturing) return CUDA_ERROR_INVALID_VALUE;
    s->capturing = false;
    if (s->capture_mode == 0) global_captures--;
    *graph = s->graph;
    s->graph = nullptr;
    return CUDA_SUCCESS;
}
CUresult cuStreamIsCapturing(void* h, int* status) {
    LOCKED;
    Stream* s = stream_of(h);
    *status = (s && s->capturing) ? 1 : 0;
    return CUDA_SUCCESS;
}
CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    // The executable graph is a copy of the recorded operations.
    *exec = new Graph(*static_cast<Graph*>(graph));
    return CUDA_SUCCESS;
}
CUresult cuGraphLaunch(void* exec, void* stream) {
    LOCKED;
    Graph* g = static_cast<Graph*>(exec);
    return submit(stream, [g] {
        for (auto& op : g->ops) op();
    });
}
CUresult cuGraphUpload(void*, void*) { return CUDA_SUCCESS; }
CUresult cuGraphDestroy(void* g) {
    delete static_cast<Graph*>(g);
    return CUDA_SUCCESS;
}
CUresult cuGraphExecDestroy(void* g) {
    delete static_cast<Graph*>(g);
    return CUDA_SUCCESS;
}

CUresult cuEventCreate(void** e, unsigned) {
    *e = new Event();
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(void* e, void* stream) {
    LOCKED;
    Event* ev = static_cast<Event*>(e);
    return submit(stream, [ev] {
        ev->ms = now_ms();
        ev->recorded = true;
        ev->landings_before = landings_issued;
    });
}
// An event never recorded is complete at once (as on a GPU), and lands nothing.
CUresult cuEventSynchronize(void* e) {
    LOCKED;
    if (sync_forbidden()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    land(static_cast<Event*>(e)->landings_before);
    return CUDA_SUCCESS;
}
// TERSE_EMU_EVENTS_BUSY=1: a recorded event's query answers "not ready" and lands nothing, as a
// GPU still running the work before it does, so the host's no-wait paths meet a busy device.
CUresult cuEventQuery(void* e) {
    LOCKED;
    Event* ev = static_cast<Event*>(e);
    static const bool busy = getenv("TERSE_EMU_EVENTS_BUSY") != nullptr;
    if (busy && ev->recorded) return CUDA_ERROR_NOT_READY;
    land(ev->landings_before);
    return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) {
    Event* x = static_cast<Event*>(a);
    Event* y = static_cast<Event*>(b);
    if (!x->recorded || !y->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *ms = (float)(y->ms - x->ms);
    return CUDA_SUCCESS;
}
CUresult cuLaunchHostFunc(void* stream, void (*fn)(void*), void* data) {
    LOCKED;
    return submit(stream, [fn, data] { fn(data); });
}

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    LOCKED;
    if (sync_forbidden()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return device_alloc(p, bytes);
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) {
    LOCKED;
    return device_alloc(p, bytes);
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCKED;
    return device_free(p);
}
CUresult cuMemFreeAsync(CUdeviceptr p, void* stream) {
    LOCKED;
    if (!allocations.count(p)) return CUDA_ERROR_INVALID_VALUE;
    return submit(stream, [p] { device_free(p); });
}
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCKED;
    *free_bytes = TOTAL_MEMORY - allocated_bytes;
    *total = TOTAL_MEMORY;
    return CUDA_SUCCESS;
}
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE; // cudarc would take the null pointer as a failure
    LOCKED;
    *p = malloc(bytes);
    if (!*p) return CUDA_ERROR_OUT_OF_MEMORY;
    host_allocations[(uintptr_t)*p] = bytes;
    return CUDA_SUCCESS;
}
CUresult cuMemFreeHost(void* p) {
    LOCKED;
    auto it = host_allocations.find((uintptr_t)p);
    if (it == host_allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    char* base = (char*)p;
    size_t bytes = it->second;
    // Copies still in flight into it never land.
    std::vector<Landing> keep;
    for (Landing& l : landings)
        if (l.dst < base || l.dst >= base + bytes) keep.push_back(std::move(l));
    landings = std::move(keep);
    host_allocations.erase(it);
    free(p);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* stream) {
    LOCKED;
    if (!in_device_memory(dst, n)) return CUDA_ERROR_INVALID_VALUE;
    return submit(stream, [dst, src, n] { memcpy((void*)dst, src, n); });
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* stream) {
    LOCKED;
    if (!in_device_memory(src, n)) return CUDA_ERROR_INVALID_VALUE;
    // Into pageable memory the driver returns only once the copy is done; into page-locked
    // memory it lands when the host waits for it (see the header).
    if (!in_page_locked_memory(dst, n))
        return submit(stream, [dst, src, n] { memcpy(dst, (const void*)src, n); });
    return submit(stream, [dst, src, n] {
        const char* from = (const char*)src;
        landings.push_back(Landing{landings_issued++, (char*)dst, std::vector<char>(from, from + n)});
        memset(dst, 0xff, n);
    });
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* stream) {
    LOCKED;
    if (!in_device_memory(dst, n) || !in_device_memory(src, n)) return CUDA_ERROR_INVALID_VALUE;
    return submit(stream, [dst, src, n] { memmove((void*)dst, (const void*)src, n); });
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    LOCKED;
    if (sync_forbidden()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return cuMemcpyHtoDAsync_v2(dst, src, n, nullptr);
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    LOCKED;
    if (sync_forbidden()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    CUresult r = cuMemcpyDtoHAsync_v2(dst, src, n, nullptr);
    land(); // a synchronous copy returns once it (and the work before it) is done
    return r;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    return cuMemcpyDtoDAsync_v2(dst, src, n, nullptr);
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, void* stream) {
    LOCKED;
    if (!in_device_memory(dst, n)) return CUDA_ERROR_INVALID_VALUE;
    return submit(stream, [dst, value, n] { memset((void*)dst, value, n); });
}
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t n) {
    return cuMemsetD8Async(dst, value, n, nullptr);
}

CUresult cuModuleLoadData(void** module, const void* image) {
    if (!image) return CUDA_ERROR_INVALID_VALUE;
    *module = new int(0); // every registered kernel is reachable from any module
    return CUDA_SUCCESS;
}
CUresult cuModuleUnload(void* module) {
    delete static_cast<int*>(module);
    return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    const EmuKernel* k = emu_find_kernel(name);
    if (!k) return CUDA_ERROR_NOT_FOUND;
    *f = new Function{k};
    return CUDA_SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, int attr, void* f) {
    Function* fn = static_cast<Function*>(f);
    switch (attr) {
    case 0: *v = (int)fn->kernel->max_threads; break;
    case 8: *v = fn->max_dynamic_shared; break;
    default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(void* f, int attr, int value) {
    Function* fn = static_cast<Function*>(f);
    if (attr == 8) {
        if (value < 0 || value > 232448) return CUDA_ERROR_INVALID_VALUE;
        fn->max_dynamic_shared = value;
    }
    return CUDA_SUCCESS;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void* stream, void** params, void** extra) {
    LOCKED;
    if (!f || extra) return CUDA_ERROR_INVALID_VALUE;
    Function* fn = static_cast<Function*>(f);
    if ((int)shared > fn->max_dynamic_shared) return CUDA_ERROR_INVALID_VALUE;
    unsigned long long threads = (unsigned long long)bx * by * bz;
    if (threads > fn->kernel->max_threads) return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    // Refuse a bad shape at the call, as the driver does, not later at a graph replay.
    if (gx == 0 || gy == 0 || gz == 0 || threads == 0 || bx > 1024 || by > 1024 || bz > 64 || threads > 1024 ||
        gy > 65535 || gz > 65535 || gx > 0x7fffffffu)
        return CUDA_ERROR_INVALID_VALUE;
    auto args = std::make_shared<PackedArgs>(fn->kernel, fn->kernel->pack(params));
    return submit(stream, [args, grid0 = gx, grid1 = gy, grid2 = gz, block0 = bx, block1 = by, block2 = bz, shared] {
        unsigned g[3] = {grid0, grid1, grid2}, b[3] = {block0, block1, block2};
        if (const char* why = emu_run_kernel(args->kernel, args->packed, g, b, shared)) {
            fprintf(stderr, "CUDA emulator: launch of %s refused: %s\n", args->kernel->name, why);
            abort();
        }
    });
}

CUresult cuGetErrorString(CUresult e, const char** s) {
    *s = error_text(e).text;
    return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
    *s = error_text(e).name;
    return CUDA_SUCCESS;
}

} // extern "C"
