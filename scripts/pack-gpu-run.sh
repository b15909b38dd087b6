#!/usr/bin/env bash
# Builds terse with its CUDA kernels and collects what a device session runs into gpu-run/:
#   terse              the release binary
#   terse-lib-tests    the library's unit-test executable (the backend::cuda tests run)
#   gpu_parity         the tests/gpu_parity.rs executable
#   gpu-check.sh       the device script (scripts/gpu-check.sh)
#   torch_train_shapes.py  the torch training rows at the bench shapes (scripts/)
#   bench_table.py     turns the run's terse and torch rows into a BENCHMARKS.md table (scripts/)
#   sample-books.txt   the bundled sample (data/), for the loss-curve and checkpoint parity tests
#   *.py               ../shared/anchors/*.py (torch_baseline.py, ...), when that folder exists
#   m1/, ac-input.txt  with TERSE_GPU_M1=CHECKPOINT_DIR and TERSE_GPU_AC_INPUT=FILE, for the
#                      optional whole-file `ac` round trip (GPU_CHECK_AC=1)
# Binaries are copied with their debug info stripped (symbols stay, for backtraces) to keep the
# folder well under the device tool's 64 MiB. gpu-run/ is ignored by git (.gitignore) and carried
# to the device:
#   run(command="bash gpu-run/gpu-check.sh gpu-run $OUT", carry=["gpu-run"])
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${NVCC:-}" ]; then
    NVCC="$(bash scripts/install-nvcc.sh | tail -n 1)"
fi
export NVCC
export TERSE_REQUIRE_KERNELS=1
echo "NVCC=$NVCC"

json="$(mktemp)"
trap 'rm -f "$json"' EXIT
# Executables come from cargo's JSON messages (this also honours CARGO_TARGET_DIR).
cargo build --release --message-format=json-render-diagnostics >"$json"
cargo test --release --no-run --message-format=json-render-diagnostics >>"$json"

out=gpu-run
rm -rf "$out"
mkdir -p "$out"

python3 - "$json" "$out" <<'PYEOF'
import json, shutil, sys, os
src, out = sys.argv[1], sys.argv[2]
found = {}
for line in open(src):
    line = line.strip()
    if not line.startswith("{"):
        continue
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    target = msg["target"]
    kinds, name = target["kind"], target["name"]
    if not msg.get("profile", {}).get("test"):
        if kinds == ["bin"] and name == "terse":
            found["terse"] = msg["executable"]
        continue
    if "lib" in kinds and name == "terse":
        found["terse-lib-tests"] = msg["executable"]
    elif kinds == ["test"] and name == "gpu_parity":
        found["gpu_parity"] = msg["executable"]
for want in ("terse", "terse-lib-tests", "gpu_parity"):
    if want not in found:
        sys.exit(f"no {want} test executable in cargo's output")
for dest, exe in found.items():
    shutil.copy2(exe, os.path.join(out, dest))
    print(f"{dest} <- {exe}")
PYEOF

if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$out/terse" "$out/terse-lib-tests" "$out/gpu_parity"
fi
cp scripts/gpu-check.sh scripts/torch_train_shapes.py scripts/bench_table.py "$out/"
cp data/sample-books.txt "$out/"
if compgen -G "../shared/anchors/*.py" >/dev/null; then
    cp ../shared/anchors/*.py "$out/"
else
    echo "note: ../shared/anchors/*.py not found; the torch baseline step will be skipped" >&2
fi
# For GPU_CHECK_AC=1: an M1 checkpoint and a text to code with it.
if [ -n "${TERSE_GPU_M1:-}" ]; then
    mkdir -p "$out/m1"
    cp "$TERSE_GPU_M1"/{model.safetensors,config.json,manifest.json} "$out/m1/"
fi
if [ -n "${TERSE_GPU_AC_INPUT:-}" ]; then
    cp "$TERSE_GPU_AC_INPUT" "$out/ac-input.txt"
fi
du -sh "$out"
ls -la "$out"
echo "ready: on the device run   bash gpu-run/gpu-check.sh gpu-run \$OUT   (carry gpu-run)"
