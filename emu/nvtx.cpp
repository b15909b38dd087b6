// The emulator's stand-in for libnvToolsExt (NVTX), the two calls terse makes (cudarc's ranges:
// nvtxRangeStartEx, nvtxRangeEnd). Each is one line appended to the file named by
// TERSE_EMU_NVTX_LOG: "start ID THREAD NAME" and "end ID THREAD", so a test can check that the
// ranges close, nest and name what they should. Without the variable it records nothing.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <unistd.h>
#include <sys/syscall.h>

// nvtxEventAttributes_v2 (NVTX 3), as cudarc passes it.
struct EventAttributes {
    uint16_t version, size;
    uint32_t category;
    int32_t color_type;
    uint32_t color;
    int32_t payload_type, reserved0;
    uint64_t payload;
    int32_t message_type;
    const char* message;
};
static const int32_t MESSAGE_TYPE_ASCII = 1;

static std::mutex lock;
static uint64_t next_id = 1;

static void record(const char* what, uint64_t id, const char* name) {
    const char* path = getenv("TERSE_EMU_NVTX_LOG");
    if (!path) return;
    FILE* f = fopen(path, "a");
    if (!f) abort(); // a test asked for the log and cannot have it
    const long tid = syscall(SYS_gettid);
    if (name)
        fprintf(f, "%s %llu %ld %s\n", what, (unsigned long long)id, tid, name);
    else
        fprintf(f, "%s %llu %ld\n", what, (unsigned long long)id, tid);
    fclose(f);
}

extern "C" uint64_t nvtxRangeStartEx(const EventAttributes* a) {
    std::lock_guard<std::mutex> g(lock);
    const uint64_t id = next_id++;
    record("start", id, a && a->message_type == MESSAGE_TYPE_ASCII ? a->message : "(not ascii)");
    return id;
}

extern "C" void nvtxRangeEnd(uint64_t id) {
    std::lock_guard<std::mutex> g(lock);
    record("end", id, nullptr);
}
