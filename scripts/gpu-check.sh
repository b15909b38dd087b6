#!/usr/bin/env bash
# GPU check for one device session: runs every GPU parity test and the PyTorch yardstick on the
# same GPU in the same run, and writes one log per step plus a summary.
#
# usage: scripts/gpu-check.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds what scripts/pack-gpu-run.sh collects: `terse` (release binary), `gpu_parity`
# (the tests/gpu_parity.rs executable), `terse-lib-tests` (the library's unit tests, of which the
# `backend::cuda` ones run) and, if present, `torch_baseline.py` (copied from ../shared/anchors).
# Every step runs under `timeout` and the script goes on after a failure; it exits non-zero if any
# step failed. At most 8 files land in OUT_DIR (the device tool returns no more than that).
#
# Environment (all optional):
#   GPU_CHECK_PARITY_TIMEOUT  seconds for the parity tests (default 300)
#   GPU_CHECK_TORCH_TIMEOUT   seconds for torch_baseline.py (default 420; 0 skips it)
#   GPU_CHECK_SANITIZER=1     also run the attention/norm/embed/classifier parity tests under
#                             compute-sanitizer memcheck (slow; default off)
#   GPU_CHECK_FILTER          test-name filter passed to gpu_parity (default: all tests)
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 BIN_DIR OUT_DIR" >&2
    exit 2
fi
BIN="$(cd "$1" && pwd)" || { echo "no such folder: $1" >&2; exit 2; }
mkdir -p "$2"
OUT="$(cd "$2" && pwd)"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
export RUST_BACKTRACE=1
export PYTHONUNBUFFERED=1

PARITY_TIMEOUT="${GPU_CHECK_PARITY_TIMEOUT:-300}"
TORCH_TIMEOUT="${GPU_CHECK_TORCH_TIMEOUT:-420}"
FILTER="${GPU_CHECK_FILTER:-}"
FAILED=0

# step NAME SECONDS CMD...: runs CMD under timeout, output to OUT/NAME.log, one summary line.
step() {
    local name="$1" limit="$2"
    shift 2
    local log="$OUT/$name.log" t0 t1 rc
    local shown="$*"
    [ "${#shown}" -le 150 ] || shown="${shown:0:150}..."
    echo "== $name (limit ${limit}s): $shown"
    t0=$(date +%s.%N)
    {
        echo "# $*"
        echo "# started $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    local verdict=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        verdict="TIMEOUT"
    elif [ "$rc" -ne 0 ]; then
        verdict="FAILED"
    fi
    [ "$verdict" = ok ] || FAILED=1
    printf '%-15s %-8s rc=%-4s %7ss  %s\n' "$name" "$verdict" "$rc" "$secs" "$name.log" | tee -a "$SUMMARY"
    echo "# rc=$rc after ${secs}s" >>"$log"
}

skip() {
    printf '%-15s %-8s %s\n' "$1" "skipped" "$2" | tee -a "$SUMMARY"
}

env_report() {
    uname -a
    date -u
    nvidia-smi || true
    echo "--- nvcc"
    command -v nvcc && nvcc --version || true
    echo "--- libraries cudarc loads (libcuda, libnvrtc, libcublasLt; .so.13 wanted)"
    ldconfig -p | grep -E 'libcuda\.so|libnvrtc|libcublasLt' || true
    ls /usr/local/cuda-13.0/targets/x86_64-linux/lib 2>/dev/null | grep -E 'nvrtc|cublasLt' || true
    echo "--- BIN_DIR"
    ls -la "$BIN"
}

step 01-env 60 bash -c "$(declare -f env_report); BIN='$BIN'; env_report"

if [ -x "$BIN/terse" ]; then
    step 02-info 60 bash -c "'$BIN/terse' info && '$BIN/terse' info --json"
else
    skip 02-info "no $BIN/terse"
fi

if [ -x "$BIN/terse-lib-tests" ]; then
    step 03-lib-cuda 300 "$BIN/terse-lib-tests" backend::cuda --nocapture --test-threads=1
else
    skip 03-lib-cuda "no $BIN/terse-lib-tests"
fi

# Each parity test in its own process: a kernel fault (illegal address) poisons the CUDA context
# of the process it happens in, and must not take the later tests down with it.
run_parity() {
    local exe="$1" filter="$2" failed=0 t rc
    local tests
    # shellcheck disable=SC2086
    tests=$("$exe" $filter --list --format terse 2>/dev/null | sed -n 's/: test$//p')
    [ -n "$tests" ] || { echo "no tests matched '$filter'"; return 1; }
    for t in $tests; do
        echo "---------------- $t"
        "$exe" "$t" --exact --nocapture --test-threads=1
        rc=$?
        echo "---------------- $t: rc=$rc"
        [ "$rc" -eq 0 ] || failed=1
    done
    return "$failed"
}

if [ -x "$BIN/gpu_parity" ]; then
    step 04-gpu-parity "$PARITY_TIMEOUT" bash -c "$(declare -f run_parity); run_parity '$BIN/gpu_parity' '$FILTER'"
else
    skip 04-gpu-parity "no $BIN/gpu_parity"
fi

if [ "${GPU_CHECK_SANITIZER:-0}" = 1 ] && [ -x "$BIN/gpu_parity" ]; then
    if command -v compute-sanitizer >/dev/null 2>&1; then
        step 05-sanitizer 400 compute-sanitizer --tool memcheck --error-exitcode 99 \
            "$BIN/gpu_parity" matches_cpu --nocapture --test-threads=1
    else
        skip 05-sanitizer "compute-sanitizer not on PATH"
    fi
fi

if [ -f "$BIN/torch_baseline.py" ] && [ "$TORCH_TIMEOUT" != 0 ]; then
    step 06-torch "$TORCH_TIMEOUT" bash -c "cd '$BIN' && python3 torch_baseline.py"
else
    skip 06-torch "no torch_baseline.py in $BIN (or GPU_CHECK_TORCH_TIMEOUT=0)"
fi

{
    echo
    echo "== parity results"
    grep -hE '^test result:|FAILED|panicked|SKIPPED|^---------------- .*rc=' "$OUT"/03-lib-cuda.log "$OUT"/04-gpu-parity.log 2>/dev/null | head -80
    echo
    echo "== worst errors per check"
    grep -h 'max relative error' "$OUT"/04-gpu-parity.log 2>/dev/null | head -120
    if [ -f "$OUT/06-torch.log" ]; then
        echo
        echo "== torch baseline"
        grep -h '^{' "$OUT/06-torch.log"
    fi
} >>"$SUMMARY"

echo
cat "$SUMMARY"
exit "$FAILED"
