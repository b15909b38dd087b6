"""Runs only the training rows of ../shared/anchors/torch_baseline.py (imported from the same
folder), eager first for every shape and then torch.compile, one JSON line each, so that a
timeout part-way still leaves the eager figures. Shapes are torch_baseline.CONFIGS: m1-3m
128x1024 (vocab 256), m2-25m and m2-113m 64x512 (vocab 65536), the ones `terse bench train`
runs in scripts/gpu-check.sh.

usage: python3 torch_train_shapes.py [--eager-only]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch_baseline as tb  # noqa: E402

if __name__ == "__main__":
    print(json.dumps({"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}), flush=True)
    modes = [False] if "--eager-only" in sys.argv else [False, True]
    for compiled in modes:
        for name in tb.CONFIGS:
            try:
                tb.bench_train(name, compiled)
            except Exception as e:  # report and go on, as torch_baseline.py does
                print(json.dumps({"what": "train", "model": name, "compiled": compiled,
                                  "error": str(e)[:300]}), flush=True)
