/*
The emulator's thread scheduler: runs one kernel launch (a grid of blocks) on the calling host
thread, each CUDA thread of a block as a fiber, blocks in order (x fastest). Fibers switch with a few instructions
of x86-64 assembly (glibc's swapcontext makes a system call per switch, which made the emulator
ten times slower); other architectures are refused at compile time.

Fibers run until they reach a barrier or return. A block barrier (`__syncthreads`) releases when
every live thread of the block has arrived; a warp barrier (inside a shuffle) when every live
lane of the warp has. A thread that returns stops counting, as on the GPU. When no fiber can run
and some have not finished, the kernel waits on a barrier that can never release (divergent
`__syncthreads`, a shuffle with an exited lane): the emulator aborts with the kernel's name.

By default every ready fiber of the block runs in turn, so the warps move in step.
TERSE_EMU_SCHEDULE=reverse runs the blocks from the last to the first, and a block's warps one at
a time from the last, each until it waits on the block or ends, so warps drift as far apart as
the barriers allow; cp.async copies then land at once instead of at the wait. A race between
threads of a block (a missing barrier, a buffer refilled while read), or a block relying on
another having run, gives different results under the two schedules.
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include "device.h"
#include "kernel_registry.h"
#include <xmmintrin.h>
#include "runtime.h"

extern "C" {
emu_uint3 emu_block_idx, emu_block_dim, emu_grid_dim;
// The bounds of every kernel's static shared variables (device.h's `__shared__`), from the linker;
// weak, so a build whose kernels have none still links (both are then null).
extern char __start_emu_shared[] __attribute__((weak));
extern char __stop_emu_shared[] __attribute__((weak));
}

namespace {

enum State { READY, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

// Saves the callee-saved registers on the current stack, stores its pointer in *save, and resumes
// the stack `load` (which was saved the same way, or prepared by `prepare_stack`).
extern "C" void emu_switch(void** save, void* load);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

// One cp.async issued by a thread and not yet landed.
struct AsyncCopy {
    void* dst;
    const void* src;
    bool valid;
};

void land(const AsyncCopy& c) {
    if (c.valid) memcpy(c.dst, c.src, 16);
    else memset(c.dst, 0, 16);
}

struct Fiber {
    void* sp;
    EmuThread thread;
    State state;
    std::vector<AsyncCopy> open_group;             // issued since the last commit
    std::deque<std::vector<AsyncCopy>> committed;  // oldest first
};

struct WarpState {
    int live = 0;
    int arrived = 0;
    uint64_t slot[32];
    unsigned char gathered[32][32];
};

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr size_t SHARED_BYTES = 232448; // an H100's opt-in maximum per block

struct Scheduler {
    void* home;
    std::vector<Fiber> fibers;
    std::vector<WarpState> warps;
    char* stacks = nullptr;
    size_t stack_count = 0;
    int current = -1;
    int block_live = 0;
    int block_arrived = 0;
    const EmuKernel* kernel = nullptr;
    void* packed = nullptr;
    bool reverse = false;
    alignas(256) unsigned char shared[SHARED_BYTES];
};

Scheduler* sched() {
    static Scheduler* s = [] {
        auto* s = new Scheduler();
        const char* order = getenv("TERSE_EMU_SCHEDULE");
        s->reverse = order && strcmp(order, "reverse") == 0;
        return s;
    }();
    return s;
}

[[noreturn]] void die(const char* what) {
    Scheduler* s = sched();
    fprintf(stderr, "CUDA emulator: kernel %s: %s\n", s->kernel ? s->kernel->name : "?", what);
    abort();
}

void release_block_barrier(Scheduler* s) {
    s->block_arrived = 0;
    for (Fiber& f : s->fibers)
        if (f.state == AT_BLOCK_BARRIER) f.state = READY;
}

void release_warp_barrier(Scheduler* s, int warp) {
    s->warps[warp].arrived = 0;
    for (Fiber& f : s->fibers)
        if (f.state == AT_WARP_BARRIER && f.thread.warp == warp) f.state = READY;
}

void yield_to_scheduler(Scheduler* s) { emu_switch(&s->fibers[s->current].sp, s->home); }

[[noreturn]] void fiber_main() {
    Scheduler* s = sched();
    s->kernel->run(s->packed);
    Fiber& f = s->fibers[s->current];
    f.state = DONE;
    s->block_live--;
    WarpState& w = s->warps[f.thread.warp];
    w.live--;
    // Exited threads no longer count: a barrier the others already reached may now be complete.
    if (s->block_arrived > 0 && s->block_arrived == s->block_live) release_block_barrier(s);
    if (w.arrived > 0 && w.arrived == w.live) release_warp_barrier(s, f.thread.warp);
    void* unused;
    emu_switch(&unused, s->home);
    __builtin_unreachable();
}

// A fresh stack whose first `emu_switch` pops six zero registers and "returns" into fiber_main,
// entered with the stack aligned as after a call (rsp + 8 a multiple of 16).
void* prepare_stack(char* stack, size_t bytes) {
    uintptr_t top = ((uintptr_t)(stack + bytes)) & ~(uintptr_t)15;
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                                 // fiber_main's return address (never used)
    *--sp = reinterpret_cast<void*>(&fiber_main);    // popped by emu_switch's ret
    for (int i = 0; i < 6; ++i) *--sp = nullptr;     // rbp, rbx, r12-r15
    return sp;
}

void ensure_stacks(Scheduler* s, size_t n) {
    if (n <= s->stack_count) return;
    if (s->stacks) munmap(s->stacks, s->stack_count * STACK_BYTES);
    void* p = mmap(nullptr, n * STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) die("cannot map fiber stacks");
    s->stacks = static_cast<char*>(p);
    s->stack_count = n;
}

void run_block(Scheduler* s, int threads, size_t dynamic_shared) {
    // NaN in f32 and bf16, so reads of shared memory this block never wrote show.
    memset(s->shared, 0xff, dynamic_shared);
    memset(__start_emu_shared, 0xff, __stop_emu_shared - __start_emu_shared);
    s->fibers.assign(threads, Fiber{});
    int num_warps = (threads + 31) / 32;
    s->warps.assign(num_warps, WarpState{});
    s->block_live = threads;
    s->block_arrived = 0;
    for (int i = 0; i < threads; ++i) {
        Fiber& f = s->fibers[i];
        f.thread.tid.x = i % emu_block_dim.x;
        f.thread.tid.y = (i / emu_block_dim.x) % emu_block_dim.y;
        f.thread.tid.z = i / (emu_block_dim.x * emu_block_dim.y);
        f.thread.lane = i % 32;
        f.thread.warp = i / 32;
        f.state = READY;
        s->warps[f.thread.warp].live++;
        f.sp = prepare_stack(s->stacks + (size_t)i * STACK_BYTES, STACK_BYTES);
    }
    int done = 0;
    // Runs fiber i until it waits or ends; false if it was not ready.
    auto step = [&](int i) {
        if (s->fibers[i].state != READY) return false;
        s->current = i;
        emu_switch(&s->home, s->fibers[i].sp);
        if (s->fibers[i].state == DONE) ++done;
        return true;
    };
    while (done < threads) {
        bool ran = false;
        if (s->reverse) {
            // Warp by warp, last first, each run until it waits on the block or ends: the warps
            // drift as far apart as the block's barriers allow.
            for (int w = num_warps - 1; w >= 0; --w) {
                for (bool again = true; again;) {
                    again = false;
                    for (int i = std::min(threads, 32 * (w + 1)) - 1; i >= 32 * w; --i) again |= step(i);
                    ran |= again;
                }
            }
        } else {
            // Every ready thread in turn: the warps move in step.
            for (int i = 0; i < threads; ++i) ran |= step(i);
        }
        if (!ran) die("threads wait on a barrier that can never release (divergent __syncthreads or shuffle)");
    }
    s->current = -1;
}

std::unordered_map<std::string, const EmuKernel*>& registry() {
    static auto* r = new std::unordered_map<std::string, const EmuKernel*>();
    return *r;
}

} // namespace

extern "C" void emu_register_kernel(const EmuKernel* k) { registry()[k->name] = k; }

const EmuKernel* emu_find_kernel(const char* name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : it->second;
}

// The fiber of the thread running now; aborts outside a kernel.
static Fiber& current_fiber() {
    Scheduler* s = sched();
    if (s->current < 0) die("a device builtin was called outside a kernel");
    return s->fibers[s->current];
}

extern "C" void emu_cp_async16(void* dst, const void* src, int valid) {
    Scheduler* s = sched();
    Fiber& f = current_fiber();
    const char* d = static_cast<const char*>(dst);
    const bool in_shared = (d >= __start_emu_shared && d + 16 <= __stop_emu_shared) ||
                           (d >= (const char*)s->shared && d + 16 <= (const char*)s->shared + SHARED_BYTES);
    if (!in_shared) die("cp.async destination is not shared memory");
    if (((uintptr_t)dst & 15) || (valid && ((uintptr_t)src & 15))) die("cp.async address not 16-byte aligned");
    AsyncCopy c{dst, src, valid != 0};
    // The default order lands copies at the wait (the latest a GPU may), which shows a read that
    // does not wait; the reverse order lands them at once (the earliest), which shows a refill of
    // a buffer that other threads may still be reading.
    if (s->reverse) land(c);
    else f.open_group.push_back(c);
}

extern "C" void emu_cp_async_commit(void) {
    Fiber& f = current_fiber();
    f.committed.push_back(std::move(f.open_group));
    f.open_group.clear();
}

extern "C" void emu_cp_async_wait(int pending_groups) {
    Fiber& f = current_fiber();
    while ((int)f.committed.size() > pending_groups) {
        for (const AsyncCopy& c : f.committed.front()) land(c);
        f.committed.pop_front();
    }
}

extern "C" EmuThread* emu_current_thread(void) { return &current_fiber().thread; }

extern "C" void emu_syncthreads(void) {
    Scheduler* s = sched();
    if (++s->block_arrived == s->block_live) {
        release_block_barrier(s);
        return;
    }
    s->fibers[s->current].state = AT_BLOCK_BARRIER;
    yield_to_scheduler(s);
}

static void warp_barrier(Scheduler* s) {
    Fiber& f = s->fibers[s->current];
    WarpState& w = s->warps[f.thread.warp];
    if (++w.arrived == w.live) {
        release_warp_barrier(s, f.thread.warp);
        return;
    }
    f.state = AT_WARP_BARRIER;
    yield_to_scheduler(s);
}

extern "C" uint64_t emu_warp_exchange(uint64_t mine, int src_lane) {
    Scheduler* s = sched();
    EmuThread& t = s->fibers[s->current].thread;
    WarpState& w = s->warps[t.warp];
    int src = t.warp * 32 + src_lane;
    w.slot[t.lane] = mine;
    warp_barrier(s);
    if (src >= (int)s->fibers.size() || s->fibers[src].state == DONE) die("shuffle reads a lane that has exited");
    uint64_t got = w.slot[src_lane];
    warp_barrier(s); // nobody overwrites a slot before every lane has read
    return got;
}

extern "C" void emu_warp_gather(const void* mine, int bytes, void* all) {
    Scheduler* s = sched();
    EmuThread& t = s->fibers[s->current].thread;
    WarpState& w = s->warps[t.warp];
    if (bytes > 32) die("warp gather of more than 32 bytes per lane");
    if (w.live != 32) die("warp-collective matrix operation with exited lanes");
    memcpy(w.gathered[t.lane], mine, bytes);
    warp_barrier(s);
    for (int lane = 0; lane < 32; ++lane) memcpy(static_cast<char*>(all) + lane * bytes, w.gathered[lane], bytes);
    warp_barrier(s);
}

namespace {

// A kernel that touches memory outside every allocation lands on a guard page (emu/driver.cpp) or
// an unmapped address. Name the kernel, block and thread (a GPU reports "an illegal memory
// access"), then let the default action end the process. Runs on its own stack: a fault may come
// from a fiber's stack running out.
void on_segv(int) {
    Scheduler* s = sched();
    if (s->kernel && s->current >= 0) {
        const emu_uint3 t = s->fibers[s->current].thread.tid;
        char line[512];
        int n = snprintf(line, sizeof line,
                         "CUDA emulator: kernel %s: block (%u,%u,%u) thread (%u,%u,%u) touched memory outside "
                         "every allocation (an illegal address on a GPU)\n",
                         s->kernel->name, emu_block_idx.x, emu_block_idx.y, emu_block_idx.z, t.x, t.y, t.z);
        if (n > 0) (void)!write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    }
    signal(SIGSEGV, SIG_DFL); // returning re-runs the faulting access, which now ends the process
}

// Installs on_segv once per process and an alternate signal stack once per launching thread.
void catch_faults() {
    static bool installed = [] {
        struct sigaction a = {};
        a.sa_handler = on_segv;
        a.sa_flags = SA_ONSTACK;
        sigemptyset(&a.sa_mask);
        return sigaction(SIGSEGV, &a, nullptr) == 0;
    }();
    thread_local bool has_stack = false;
    if (!installed || has_stack) return;
    stack_t st = {};
    st.ss_size = 64 * 1024;
    st.ss_sp = malloc(st.ss_size); // kept for the thread's life
    has_stack = st.ss_sp && sigaltstack(&st, nullptr) == 0;
}

} // namespace

extern "C" void* emu_dynamic_shared(void) { return sched()->shared; }

const char* emu_run_kernel(const EmuKernel* k, void* packed, const unsigned grid[3], const unsigned block[3],
                           size_t dynamic_shared) {
    Scheduler* s = sched();
    unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (threads == 0 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0) return "empty grid or block";
    if (block[0] > 1024 || block[1] > 1024 || block[2] > 64 || threads > 1024) return "block too large";
    if (threads > k->max_threads) return "block larger than the kernel's __launch_bounds__";
    if (grid[1] > 65535 || grid[2] > 65535 || grid[0] > 0x7fffffffu) return "grid too large";
    if (dynamic_shared > SHARED_BYTES) return "dynamic shared memory above the device maximum";
    ensure_stacks(s, threads);
    catch_faults();
    s->kernel = k;
    s->packed = packed;
    // A fast-math kernel flushes denormal results to zero and reads denormal inputs as zero, as
    // the GPU's .ftz instructions do: MXCSR's FTZ and DAZ bits, for this host thread (every fiber
    // of the grid runs on it) until the grid is done.
    const unsigned mxcsr = _mm_getcsr();
    if (k->fast_math) _mm_setcsr(mxcsr | 0x8040u);
    emu_grid_dim = {grid[0], grid[1], grid[2]};
    emu_block_dim = {block[0], block[1], block[2]};
    const unsigned long long blocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    for (unsigned long long k = 0; k < blocks; ++k) {
        const unsigned long long i = s->reverse ? blocks - 1 - k : k;
        emu_block_idx = {(unsigned)(i % grid[0]), (unsigned)(i / grid[0] % grid[1]),
                         (unsigned)(i / ((unsigned long long)grid[0] * grid[1]))};
        run_block(s, (int)threads, dynamic_shared);
    }
    _mm_setcsr(mxcsr);
    s->kernel = nullptr;
    return nullptr;
}
