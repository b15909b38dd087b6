#!/usr/bin/env python3
"""The training comparison of one gpu-check.sh run as a BENCHMARKS.md table: for each shape,
`terse bench train --device cuda` (06-train.log) beside PyTorch eager and torch.compile
(07-torch.log), ms/step, tokens/s and TFLOP/s, the speed-up over torch.compile, and the issue's
aim. Figures are copied from the logs as they are; a missing figure is shown as "-", a line
that is not JSON is skipped, and a folder with neither log is refused.

usage: python3 bench_table.py OUT_DIR
"""
import json
import os
import sys

# ms/step aims for terse (the issue): faster than torch.compile everywhere, and these.
AIMS = {"m1-3m": 6.5, "m2-25m": 35.0, "m2-113m": 70.0}


def json_lines(path):
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path, errors="replace"):
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def fmt(x, digits):
    return "-" if x is None else f"{x:,.{digits}f}"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: bench_table.py OUT_DIR")
    out = sys.argv[1]
    logs = [os.path.join(out, f) for f in ("06-train.log", "07-torch.log")]
    if not any(os.path.isfile(f) for f in logs):
        sys.exit(f"bench_table.py: {out} holds neither 06-train.log nor 07-torch.log "
                 "(the folder gpu-check.sh wrote its logs to)")
    terse = {(r["preset"], r["batch"], r["seq"]): r for r in json_lines(os.path.join(out, "06-train.log"))
             if r.get("bench") == "train"}
    torch_rows = json_lines(os.path.join(out, "07-torch.log"))
    env = next((r for r in torch_rows if "torch" in r and "gpu" in r), {})
    torch = {}
    for r in torch_rows:
        if r.get("what") == "train" and "ms_per_step" in r:
            torch[(r["model"], r["batch"], r["seq"], r["compiled"])] = r
    device = env.get("gpu") or next((r["backend"] for r in terse.values()), "?")
    print(f"Device: {device}; torch {env.get('torch', '-')}. ms/step (tokens/s, TFLOP/s by each tool's own count).")
    print()
    print("| shape | terse | torch eager | torch.compile | terse vs compile | aim |")
    print("| --- | --- | --- | --- | --- | --- |")
    shapes = sorted(set(terse) | {k[:3] for k in torch})
    for preset, batch, seq in shapes:
        t = terse.get((preset, batch, seq))
        e = torch.get((preset, batch, seq, False))
        c = torch.get((preset, batch, seq, True))

        def cell(r):
            if r is None:
                return "-"
            return f"{fmt(r['ms_per_step'], 2)} ({fmt(r.get('tokens_per_s'), 0)}, {fmt(r.get('tflops'), 1)})"

        speedup = f"{c['ms_per_step'] / t['ms_per_step']:.2f}x" if t and c else "-"
        aim = AIMS.get(preset)
        aim_cell = "-" if aim is None else f"<= {aim} ms" + (" (met)" if t and t["ms_per_step"] <= aim else "")
        print(f"| {preset} {batch}x{seq} | {cell(t)} | {cell(e)} | {cell(c)} | {speedup} | {aim_cell} |")


if __name__ == "__main__":
    main()
