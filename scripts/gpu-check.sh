#!/usr/bin/env bash
# GPU check for one device session (one ~10-minute device call): every GPU parity test, the
# kernel and training benchmarks of `terse`, and the PyTorch yardstick at the same shapes, on the
# same GPU in the same run; one log per step plus a summary.
#
# usage: scripts/gpu-check.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds what scripts/pack-gpu-run.sh collects: `terse` (release binary), `gpu_parity`
# (the tests/gpu_parity.rs executable), `terse-lib-tests` (the library's unit tests, of which the
# `backend::cuda` ones run), `sample-books.txt` (the bundled sample, for the loss-curve and
# checkpoint parity tests), `bench_table.py` (the summary's terse-against-torch table),
# `torch_train_shapes.py` and `torch_baseline.py` (copied from ../shared/anchors).
#
# Steps, in order (each under `timeout`; the script goes on after a failure and exits non-zero if
# any step failed):
#   01-env, 02-info, 03-lib-cuda, 04-gpu-parity (each test in its own process),
#   05-kernels-*  `terse bench kernels` for m1-3m 128x1024, m2-25m and m2-113m (vocab 65536) 64x512,
#   06-train-*    `terse bench train --device cuda` at the same shapes,
#   07-torch      torch_train_shapes.py: torch eager, then torch.compile, at the same shapes;
#                 then torch_decode.py's batch-1 decode step for m2-25m (eager and compiled).
# 05 also holds `terse bench generate --gpu` (M2's decode step on the GPU against its predicted
# step) at torch_decode.py's shape.
# A whole-run budget (GPU_CHECK_BUDGET, default 530 s) caps every step's timeout at the time left
# and skips steps once less than 20 s remain, so the run never exceeds the budget.
#
# Environment (all optional):
#   GPU_CHECK_BUDGET          seconds for the whole script (default 530)
#   GPU_CHECK_PARITY_TIMEOUT  seconds for the parity tests (default 200)
#   GPU_CHECK_BENCH_TIMEOUT   seconds for each bench step (default 45)
#   GPU_CHECK_TORCH_TIMEOUT   seconds for the torch step (default 240; 0 skips it)
#   GPU_CHECK_TORCH_EAGER_ONLY=1  torch eager only (no torch.compile)
#   GPU_CHECK_SANITIZER=1     also run the kernel parity tests under compute-sanitizer memcheck
#   GPU_CHECK_FILTER          test-name filter passed to gpu_parity (default: all tests)
#   GPU_CHECK_AC              1: also whole-file `ac` and `equal-info` round trips with M1 on the GPU (08-ac-gpu)
#   GPU_CHECK_AC_TIMEOUT      seconds for it (default 300)
#   TERSE_PARITY_CPU_STEPS    CPU steps of the 200-step loss-curve test (default 200)
#   GPU_CHECK_SMOKE=1         a rehearsal of the script itself, e.g. on the CUDA emulator (emu/,
#                             LD_LIBRARY_PATH=target/cuda-emu): the benches at tiny shapes
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
# Fallbacks for libcublasLt.so.13 / libnvrtc.so.13 (cudarc dlopens them by name): the toolkit's
# lib64 and the pip wheels' nvidia/*/lib folders (PyTorch's), after the toolkit so it wins.
for d in /usr/local/cuda/lib64 /usr/local/cuda-13.0/lib64 $(python3 -c '
import glob, os, site
for sp in site.getsitepackages():
    for p in sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib"))):
        print(p)' 2>/dev/null); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
export LD_LIBRARY_PATH
# nsys, when the toolkit or Nsight Systems ships it outside PATH.
for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin /opt/nvidia/nsight-systems/*/bin; do
    [ -d "$d" ] && PATH="$PATH:$d"
done
export PATH
export RUST_BACKTRACE=1
export PYTHONUNBUFFERED=1

PARITY_TIMEOUT="${GPU_CHECK_PARITY_TIMEOUT:-200}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-45}"
TORCH_TIMEOUT="${GPU_CHECK_TORCH_TIMEOUT:-240}"
BUDGET="${GPU_CHECK_BUDGET:-530}"
FILTER="${GPU_CHECK_FILTER:-}"
FAILED=0
START=$(date +%s)
[ -f "$BIN/sample-books.txt" ] && export TERSE_SAMPLE_BOOKS="$BIN/sample-books.txt"

# step NAME SECONDS CMD...: runs CMD under timeout, output to OUT/NAME.log, one summary line.
# The limit is cut to what is left of the whole-run budget; with under 20 s left, it is skipped.
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET - ($(date +%s) - START) - 10))
    if [ "$left" -lt 20 ]; then
        skip "$name" "whole-run budget of ${BUDGET}s spent"
        FAILED=1
        return
    fi
    [ "$limit" -le "$left" ] || limit="$left"
    # STEP_LOG groups several steps in one log (at most 8 files come back from the device).
    local log="$OUT/${STEP_LOG:-$name}.log" t0 t1 rc
    local shown="$*"
    [ "${#shown}" -le 150 ] || shown="${shown:0:150}..."
    echo "== $name (limit ${limit}s): $shown"
    t0=$(date +%s.%N)
    {
        echo "# == $name: $*"
        echo "# started $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >>"$log"
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
    printf '%-22s %-8s rc=%-4s %7ss  %s\n' "$name" "$verdict" "$rc" "$secs" "$(basename "$log")" | tee -a "$SUMMARY"
    echo "# rc=$rc after ${secs}s" >>"$log"
}

skip() {
    printf '%-22s %-8s %s\n' "$1" "skipped" "$2" | tee -a "$SUMMARY"
}

env_report() {
    uname -a
    date -u
    nvidia-smi || true
    echo "--- nvcc"
    command -v nvcc && nvcc --version || true
    echo "--- libraries cudarc loads (libcuda, libnvrtc, libcublasLt; .so.13 wanted)"
    ldconfig -p | grep -E 'libcuda\.so|libnvrtc|libcublasLt' || true
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
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
    step 03-lib-cuda 90 "$BIN/terse-lib-tests" backend::cuda --nocapture --test-threads=1
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
        step 04b-sanitizer 200 compute-sanitizer --tool memcheck --error-exitcode 99 \
            "$BIN/gpu_parity" matches_cpu --nocapture --test-threads=1
    else
        skip 04b-sanitizer "compute-sanitizer not on PATH"
    fi
fi

# The benchmark shapes: the PyTorch yardstick's (torch_baseline.CONFIGS).
BENCH_SHAPES=(
    "m1-3m 256 128 1024"
    "m2-25m 65536 64 512"
    "m2-113m 65536 64 512"
)
M1_WINDOWS=(4096 256)
# M2's decode step (torch_decode.py's: m2-25m, a 1,024-token cache, positions from 20 on):
# preset, context, position, timed steps.
DECODE_SHAPE="m2-25m 1024 160 30"
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
    BENCH_SHAPES=("tiny 256 2 64" "tiny 65536 2 32")
    M1_WINDOWS=(16 2)
    DECODE_SHAPE="tiny 64 16 3"
fi
if [ -x "$BIN/terse" ]; then
    # The card's own ceilings first: the cost model's predictions use them (src/backend/cuda/cost.rs).
    STEP_LOG=05-kernels step "05-ceilings" "$BENCH_TIMEOUT" "$BIN/terse" bench ceilings --reps 10
    for shape in "${BENCH_SHAPES[@]}"; do
        set -- $shape
        STEP_LOG=05-kernels step "05-kernels-$1" "$BENCH_TIMEOUT" "$BIN/terse" bench kernels --preset "$1" --vocab "$2" \
            --batch "$3" --seq "$4" --reps 10
    done
    # M1's exact coding path: Equal-Info-sized windows (the yardstick's 4096 x 16) and long
    # contexts (plain AC).
    STEP_LOG=05-kernels step "05-m1-exact-16" "$BENCH_TIMEOUT" "$BIN/terse" bench m1 --gpu --windows "${M1_WINDOWS[0]}" --len 16 --rounds 3 --json
    STEP_LOG=05-kernels step "05-m1-exact-1024" "$BENCH_TIMEOUT" "$BIN/terse" bench m1 --gpu --windows "${M1_WINDOWS[1]}" --len 1024 --rounds 1 --json
    # M2's decode step on the GPU (int8, GpuDecoder) beside the CPU's and the cost model's
    # prediction (src/backend/cuda/decode_cost.rs), batch 1 and 16.
    set -- $DECODE_SHAPE
    STEP_LOG=05-kernels step "05-decode-$1" "$BENCH_TIMEOUT" "$BIN/terse" bench generate --gpu --preset "$1" \
        --vocab 65536 --context "$2" --position "$3" --steps "$4" --streams 1,16
    for shape in "${BENCH_SHAPES[@]}"; do
        set -- $shape
        STEP_LOG=06-train step "06-train-$1" "$BENCH_TIMEOUT" "$BIN/terse" bench train --device cuda --preset "$1" \
            --vocab "$2" --batch "$3" --seq "$4" --steps 10 --json
    done
    # Where a real step's time goes (graph nodes traced one by one), when nsys is installed.
    if command -v nsys >/dev/null 2>&1 && [ "${GPU_CHECK_SMOKE:-0}" != 1 ]; then
        set -- ${BENCH_SHAPES[0]}
        STEP_LOG=06-train step "06-nsys-$1" 120 nsys profile --cuda-graph-trace=node --stats=true \
            --force-overwrite=true -o "$OUT/nsys-$1" "$BIN/terse" bench train --device cuda \
            --preset "$1" --vocab "$2" --batch "$3" --seq "$4" --steps 10
        rm -f "$OUT/nsys-$1".nsys-rep "$OUT/nsys-$1".sqlite
    else
        skip 06-nsys "nsys not on PATH"
    fi
else
    skip 05-kernels "no $BIN/terse"
    skip 06-train "no $BIN/terse"
fi

if [ -f "$BIN/torch_train_shapes.py" ] && [ -f "$BIN/torch_baseline.py" ] && [ "$TORCH_TIMEOUT" != 0 ]; then
    torch_args=""
    [ "${GPU_CHECK_TORCH_EAGER_ONLY:-0}" = 1 ] && torch_args="--eager-only"
    step 07-torch "$TORCH_TIMEOUT" bash -c "cd '$BIN' && python3 torch_train_shapes.py $torch_args"
    # The decode yardstick (gpt-fast's way: static cache, torch.compile reduce-overhead) for m2-25m.
    if [ -f "$BIN/torch_decode.py" ] && [ "${GPU_CHECK_SMOKE:-0}" != 1 ]; then
        STEP_LOG=07-torch step 07-torch-decode 180 bash -c "cd '$BIN' && python3 -c \
            'import torch_decode as t; t.bench(\"m2-25m\", False); t.bench(\"m2-25m\", True)'"
    fi
else
    skip 07-torch "no torch_train_shapes.py + torch_baseline.py in $BIN (or GPU_CHECK_TORCH_TIMEOUT=0)"
fi

# Optional (GPU_CHECK_AC=1): the `ac` and `equal-info` round trips of a whole file with M1 on the GPU
# (`--gpu`), against the file's text as the CPU reads it. Needs BIN/m1/ (an M1 checkpoint:
# pack-gpu-run.sh copies $TERSE_GPU_M1 there) and BIN/ac-input.txt ($TERSE_GPU_AC_INPUT). Its log
# is a ninth file: run it with GPU_CHECK_TORCH_TIMEOUT=0 (the device returns at most 8 files).
if [ "${GPU_CHECK_AC:-0}" = 1 ]; then
    if [ -f "$BIN/m1/model.safetensors" ] && [ -f "$BIN/ac-input.txt" ]; then
        AC_TMP="$(mktemp -d)"
        step 08-ac-gpu "${GPU_CHECK_AC_TIMEOUT:-300}" bash -c "
            set -e
            '$BIN/terse' tokenize --method bytes --data '$BIN/ac-input.txt' --out '$AC_TMP/bytes' --json >/dev/null
            '$BIN/terse' detokenize --data '$AC_TMP/bytes' --out '$AC_TMP/text'
            for m in ac equal-info; do
                /usr/bin/time -f \"\$m tokenize wall %e s\" '$BIN/terse' tokenize --method \$m --gpu \
                    --m1 '$BIN/m1' --token-bits 16 --data '$BIN/ac-input.txt' --out '$AC_TMP/'\$m --json
                /usr/bin/time -f \"\$m detokenize wall %e s\" '$BIN/terse' detokenize --gpu --force --m1 '$BIN/m1' \
                    --data '$AC_TMP/'\$m --out '$AC_TMP/back'
                cmp '$AC_TMP/back' '$AC_TMP/text' && echo \"\$m round trip on the GPU: EXACT\"
            done"
        rm -rf "$AC_TMP"
    else
        skip 08-ac-gpu "no $BIN/m1/model.safetensors or $BIN/ac-input.txt"
    fi
fi

{
    echo
    echo "== ac and equal-info on the GPU"
    cat "$OUT/08-ac-gpu.log" 2>/dev/null | grep -E 'EXACT|wall|bits_per_byte|differ|rror' | head -20
    echo
    echo "== parity results"
    grep -hE '^test result:|FAILED|panicked|SKIPPED|^---------------- .*rc=' "$OUT"/03-lib-cuda.log "$OUT"/04-gpu-parity.log 2>/dev/null | head -80
    echo
    echo "== worst errors per check"
    grep -h 'max relative error' "$OUT"/04-gpu-parity.log 2>/dev/null | head -120
    echo
    echo "== terse bench train (cuda)"
    grep -h '^{' "$OUT"/06-train.log 2>/dev/null
    echo
    echo "== terse bench kernels"
    grep -v '^# started' "$OUT"/05-kernels.log 2>/dev/null
    if [ -f "$OUT/07-torch.log" ]; then
        echo
        echo "== torch at the same shapes"
        grep -h '^{' "$OUT/07-torch.log"
    fi
    if [ -f "$BIN/bench_table.py" ]; then
        echo
        echo "== terse against torch (for BENCHMARKS.md)"
        python3 "$BIN/bench_table.py" "$OUT"
    fi
    echo
    echo "total $(( $(date +%s) - START ))s of a ${BUDGET}s budget"

} >>"$SUMMARY"

echo
cat "$SUMMARY"
exit "$FAILED"
