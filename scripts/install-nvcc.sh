#!/usr/bin/env bash
# Install nvcc 13.0 from PyPI (no GPU or system CUDA needed) and print its path on the last line.
#
# The nvidia-cuda-nvcc wheel alone holds only the driver programs; cicc comes from nvidia-nvvm, the
# crt headers from nvidia-cuda-crt, cuda_runtime.h and friends from nvidia-cuda-runtime, and
# cuda/std from nvidia-cuda-cccl. All land under <site-packages>/nvidia/cu13/. Idempotent: the pip
# step is skipped when nvcc, cicc and the headers are already there.
set -euo pipefail

PY="${PYTHON:-python3}"

find_nvcc() {
    "$PY" - <<'PYEOF'
import os, site
dirs = []
try:
    dirs += site.getsitepackages()
except Exception:
    pass
try:
    dirs.append(site.getusersitepackages())
except Exception:
    pass
for d in dirs:
    root = os.path.join(d, "nvidia", "cu13")
    nvcc = os.path.join(root, "bin", "nvcc")
    need = [nvcc,
            os.path.join(root, "nvvm", "bin", "cicc"),
            os.path.join(root, "include", "crt", "host_config.h"),
            os.path.join(root, "include", "cuda_runtime.h"),
            os.path.join(root, "include", "cuda_bf16.h")]
    if all(os.path.exists(p) for p in need):
        print(nvcc)
        break
PYEOF
}

nvcc_path="$(find_nvcc)"
if [ -z "$nvcc_path" ]; then
    echo "installing nvcc 13.0 from PyPI..." >&2
    "$PY" -m pip install --quiet --disable-pip-version-check \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
        "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" >&2
    nvcc_path="$(find_nvcc)"
fi

if [ -z "$nvcc_path" ]; then
    echo "install-nvcc: nvcc, cicc or the CUDA headers are still missing after pip install" >&2
    exit 1
fi
"$nvcc_path" --version >&2
echo "$nvcc_path"
