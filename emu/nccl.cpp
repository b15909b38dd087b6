// The NCCL calls of src/backend/cuda/nccl.rs for the emulated GPU, whose device memory is this
// process's memory: the ranks (processes or threads of one run) meet in a directory named by the
// unique id. Each collective writes this rank's buffer there as one file, waits for every rank's
// file of the same call, and adds them in rank order. Stream work runs when issued here, so the
// call is done when it returns.
//
// What it checks (a GPU would hang or corrupt memory instead): every rank's call of the same
// sequence number reduces the same count of elements of the same size, and every rank arrives within
// TERSE_EMU_NCCL_TIMEOUT seconds (default 120). A failed check returns ncclInvalidUsage or
// ncclSystemError with the reason in ncclGetLastError.
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
} ncclResult_t;

typedef struct {
    char internal[128];
} ncclUniqueId;

enum { ncclSum = 0 };
enum { ncclFloat32 = 7, ncclFloat64 = 8 };

struct EmuComm {
    std::string dir;
    int nranks;
    int rank;
    unsigned long seq;
    std::string last_error;
};
typedef EmuComm* ncclComm_t;

static thread_local std::string init_error;

static std::string file_of(const EmuComm* c, unsigned long seq, int rank) {
    return c->dir + "/" + std::to_string(seq) + "." + std::to_string(rank);
}

static ncclResult_t fail(EmuComm* c, ncclResult_t code, const std::string& why) {
    c->last_error = why;
    fprintf(stderr, "emulated NCCL, rank %d: %s\n", c->rank, why.c_str());
    return code;
}

extern "C" ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    if (!id) return ncclInvalidArgument;
    const char* tmp = getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/terse-emu-nccl-XXXXXX";
    if (templ.size() >= sizeof id->internal) return ncclInvalidArgument;
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) return ncclSystemError;
    memset(id->internal, 0, sizeof id->internal);
    memcpy(id->internal, buf.data(), buf.size());
    return ncclSuccess;
}

extern "C" ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
    if (!comm || nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
    std::string dir(id.internal, strnlen(id.internal, sizeof id.internal));
    struct stat st;
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        init_error = "the unique id names no directory: " + dir;
        return ncclInvalidArgument;
    }
    *comm = new EmuComm{dir, nranks, rank, 0, ""};
    return ncclSuccess;
}

template <typename T>
static ncclResult_t all_reduce(const void* send, void* recv, size_t count, ncclComm_t comm) {
    unsigned long seq = ++comm->seq;
    std::string mine = file_of(comm, seq, comm->rank);
    std::string partial = mine + ".partial";
    FILE* f = fopen(partial.c_str(), "wb");
    if (!f) return fail(comm, ncclSystemError, "cannot write " + partial + ": " + strerror(errno));
    unsigned long long head[2] = {count, sizeof(T)};
    bool written = fwrite(head, sizeof head, 1, f) == 1 &&
                   (count == 0 || fwrite(send, sizeof(T), count, f) == count);
    if (fclose(f) != 0 || !written || rename(partial.c_str(), mine.c_str()) != 0)
        return fail(comm, ncclSystemError, "cannot write " + mine);

    const char* limit = getenv("TERSE_EMU_NCCL_TIMEOUT");
    double timeout = limit ? atof(limit) : 120.0;
    auto start = std::chrono::steady_clock::now();
    std::vector<T> sum(count), part(count);
    for (int r = 0; r < comm->nranks; r++) {
        std::string theirs = file_of(comm, seq, r);
        FILE* g;
        while (!(g = fopen(theirs.c_str(), "rb"))) {
            std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
            if (waited.count() > timeout)
                return fail(comm, ncclSystemError,
                            "rank " + std::to_string(r) + " never reached all-reduce number " +
                                std::to_string(seq));
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        unsigned long long theirs_head[2] = {0, 0};
        bool ok = fread(theirs_head, sizeof theirs_head, 1, g) == 1;
        if (ok && (theirs_head[0] != head[0] || theirs_head[1] != head[1])) {
            fclose(g);
            return fail(comm, ncclInvalidUsage,
                        "all-reduce number " + std::to_string(seq) + " sums " +
                            std::to_string(head[0]) + " elements of " + std::to_string(head[1]) +
                            " bytes here and " + std::to_string(theirs_head[0]) + " elements of " +
                            std::to_string(theirs_head[1]) + " bytes on rank " + std::to_string(r));
        }
        ok = ok && (count == 0 || fread(part.data(), sizeof(T), count, g) == count);
        fclose(g);
        if (!ok) return fail(comm, ncclSystemError, "cannot read " + theirs);
        for (size_t i = 0; i < count; i++) sum[i] = r == 0 ? part[i] : sum[i] + part[i];
    }
    if (count) memcpy(recv, sum.data(), count * sizeof(T));
    // Every rank has read call seq-1's files once all of call seq's exist.
    if (seq > 1) unlink(file_of(comm, seq - 1, comm->rank).c_str());
    return ncclSuccess;
}

extern "C" ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, int datatype, int op,
                           ncclComm_t comm, void* /*stream*/) {
    if (!comm) return ncclInvalidArgument;
    if (op != ncclSum) return fail(comm, ncclInvalidArgument, "the emulator only sums");
    if (datatype == ncclFloat32) return all_reduce<float>(send, recv, count, comm);
    if (datatype == ncclFloat64) return all_reduce<double>(send, recv, count, comm);
    return fail(comm, ncclInvalidArgument, "the emulator sums float32 and float64 only");
}

// Each rank leaves a mark; the rank that finds every mark there (so every rank has finished
// reading) removes the directory.
static ncclResult_t close_comm(ncclComm_t comm) {
    if (!comm) return ncclInvalidArgument;
    std::string mark = comm->dir + "/left." + std::to_string(comm->rank);
    if (FILE* f = fopen(mark.c_str(), "wb")) fclose(f);
    std::vector<std::string> names;
    int left = 0;
    if (DIR* d = opendir(comm->dir.c_str())) {
        while (dirent* e = readdir(d)) {
            std::string name = e->d_name;
            if (name == "." || name == "..") continue;
            left += name.rfind("left.", 0) == 0;
            names.push_back(name);
        }
        closedir(d);
    }
    if (left == comm->nranks) {
        for (const std::string& name : names) unlink((comm->dir + "/" + name).c_str());
        rmdir(comm->dir.c_str());
    }
    delete comm;
    return ncclSuccess;
}

extern "C" ncclResult_t ncclCommDestroy(ncclComm_t comm) { return close_comm(comm); }
extern "C" ncclResult_t ncclCommAbort(ncclComm_t comm) { return close_comm(comm); }

extern "C" const char* ncclGetLastError(ncclComm_t comm) {
    return comm ? comm->last_error.c_str() : init_error.c_str();
}

extern "C" const char* ncclGetErrorString(ncclResult_t code) {
    switch (code) {
        case ncclSuccess: return "no error";
        case ncclUnhandledCudaError: return "unhandled cuda error";
        case ncclSystemError: return "unhandled system error";
        case ncclInternalError: return "internal error";
        case ncclInvalidArgument: return "invalid argument";
        case ncclInvalidUsage: return "invalid usage";
    }
    return "unknown result code";
}

