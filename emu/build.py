#!/usr/bin/env python3
"""Builds the CUDA emulator: libcuda.so.1 (the fake driver with every kernel in kernels/*.cu
compiled for the host), libcublasLt.so.13, libnvToolsExt.so.1 (NVTX ranges, recorded for the
tests) and libnccl.so.2 (all-reduce between the ranks of one run), into OUT_DIR (default
target/cuda-emu).

usage: emu/build.py [OUT_DIR]

Each kernel file is compiled by the host C++ compiler (CXX, default g++) with emu/device.h in
front. Two source changes are made on the fly, in a copy: `extern __shared__ T name[];` becomes
the emulator's dynamic shared buffer, and a footer registers every `extern "C" __global__` entry
point with its `__launch_bounds__` (found in the preprocessed source, so macro-generated names
count). Run a program against the result with LD_LIBRARY_PATH=OUT_DIR.
"""
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "emu")
KERNELS = os.path.join(ROOT, "kernels")
# Kernels with deliberate bugs, for the emulator's own test (see emu/planted/planted.cu).
PLANTED = os.path.join(EMU, "planted")
CXX = os.environ.get("CXX", "g++")
# -march=native: the libraries run where they are built, and fmaf becomes one instruction instead
# of a libm call. -ffp-contract=off and no fast-math keep IEEE-754 f32 as the kernels' contract
# requires (M1's exact path must give the CPU's bits).
FLAGS = ["-std=c++17", "-O2", "-march=native", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing", "-g0",
         "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable", "-Wno-sign-compare"]
# UBSan, aborting at the first report: a vector load or store at an address its type's alignment
# does not divide (a GPU faults: "misaligned address"), and an index past a fixed-size array such as
# a shared-memory tile (a GPU reads or corrupts a neighbour silently).
SANITIZE = ["-fsanitize=alignment,bounds", "-fno-sanitize-recover=all"]
KERNEL_FLAGS = FLAGS + SANITIZE + ["-include", os.path.join(EMU, "device.h"), "-I", os.path.join(EMU, "include"),
                        "-I", EMU, "-I", KERNELS]

DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+([A-Za-z_][\w\s]*?)\s+(\w+)\s*\[\s*\]\s*;")
ENTRY = re.compile(r'extern\s+"C"\s+EMU_GLOBAL\s+void\s+(?:EMU_LAUNCH_BOUNDS\s*\(\s*\(?\s*(\d+)[^)]*\)\s*)?(\w+)\s*\(')


def run(cmd, **kw):
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0:
        sys.exit(f"emu/build.py: failed: {' '.join(cmd)}")
    return r


def kernel_object(src, work):
    name = os.path.splitext(os.path.basename(src))[0]
    text = open(src).read()
    text = DYNAMIC_SHARED.sub(r"EMU_DYNAMIC_SHARED(\1, \2);", text)
    copy = os.path.join(work, name + ".cu")
    open(copy, "w").write(f'#line 1 "{src}"\n' + text)
    pre = run([CXX, *KERNEL_FLAGS, "-DEMU_SCAN", "-E", "-x", "c++", copy], capture_output=True, text=True).stdout
    entries = [(m.group(2), int(m.group(1) or 1024)) for m in ENTRY.finditer(pre)]
    if not entries:
        sys.exit(f"emu/build.py: no extern \"C\" __global__ entry point found in {src}")
    unit = os.path.join(work, name + ".emu.cpp")
    with open(unit, "w") as f:
        f.write(f'#include "{copy}"\n#include "kernel_registry.h"\n')
        for entry, threads in entries:
            f.write(f"EMU_REGISTER({entry}, {threads})\n")
    obj = os.path.join(work, name + ".o")
    # nvcc builds every kernel but the `// terse: exact` ones with --use_fast_math (build.rs):
    # device.h models what that changes (the fast exp and log, denormals flushed) for those.
    with open(src) as f:
        exact = f.readline().strip() == "// terse: exact"
    run([CXX, *KERNEL_FLAGS, *([] if exact else ["-DTERSE_EMU_FAST_MATH"]), "-c", unit, "-o", obj])
    return obj, [e for e, _ in entries]


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "cuda-emu"))
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        objs, names = [], []
        sources = [os.path.join(d, f) for d in [KERNELS, PLANTED] for f in sorted(os.listdir(d)) if f.endswith(".cu")]
        for src in sources:
            obj, entries = kernel_object(src, work)
            objs.append(obj)
            names += entries
        for src in ["runtime.cpp", "driver.cpp"]:
            obj = os.path.join(work, src + ".o")
            run([CXX, *FLAGS, "-I", EMU, "-c", os.path.join(EMU, src), "-o", obj])
            objs.append(obj)
        cuda = os.path.join(out, "libcuda.so.1")
        run([CXX, *SANITIZE, "-shared", "-Wl,-soname,libcuda.so.1", "-o", cuda, *objs, "-lpthread"])
        lt = os.path.join(out, "libcublasLt.so.13")
        run([CXX, *FLAGS, "-shared", "-Wl,-soname,libcublasLt.so.13", "-o", lt, os.path.join(EMU, "cublaslt.cpp"),
             cuda, "-Wl,-rpath,$ORIGIN"])
        nvtx = os.path.join(out, "libnvToolsExt.so.1")
        run([CXX, *FLAGS, "-shared", "-Wl,-soname,libnvToolsExt.so.1", "-o", nvtx, os.path.join(EMU, "nvtx.cpp")])
        nccl = os.path.join(out, "libnccl.so.2")
        run([CXX, *FLAGS, "-shared", "-Wl,-soname,libnccl.so.2", "-o", nccl, os.path.join(EMU, "nccl.cpp")])
    for link, target in [("libcuda.so", "libcuda.so.1"), ("libcublasLt.so", "libcublasLt.so.13"),
                         ("libnvToolsExt.so", "libnvToolsExt.so.1")]:
        path = os.path.join(out, link)
        if os.path.lexists(path):
            os.remove(path)
        os.symlink(target, path)
    print(f"emu/build.py: {len(names)} kernels emulated, libraries in {out}")
    print(out)


if __name__ == "__main__":
    main()
