"""EraseDiff against SO at a fixed lambda: the same update, so the same weights, and (now) the same cost.

At a fixed lambda the first-order bilevel update of EraseDiff is grad L_r + lambda grad L_f(theta) (L_f(phi_K) is a
constant), which is SO's step. Its inner loop and gradient dot products only feed logged diagnostics (q, cos), so the
default run skips them (`EraseDiffConfig.diagnostics=False`). This script runs EraseDiff (default, and with
diagnostics) and SO on the shipped digits Unscrubbed model with the preset's budget (60 outer steps), alternating the
methods `--repeats` times (after one untimed warm-up run of each, in alternating order), checks that the three give
bit-identical weights, and prints the wall times and ratios. About 70 s per repeat on 2 CPU cores.

    python experiments/bench_fixed_lambda.py --repeats 3

Prints a table to stdout; `--json FILE` also writes the timings there.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from erasediff.core import NoiseSchedule
from erasediff.data import make_splits
from erasediff.methods import default_config, make_objective
from erasediff.runtime import weights_sha256
from erasediff.train import fit, get_preset, load_reference

RUNS = {"erasediff": ("erasediff", {}), "erasediff+diagnostics": ("erasediff", {"diagnostics": True}), "so": ("so", {})}


def run_once(label: str, preset, splits, seed: int) -> tuple[float, str]:
    "Unlearn the shipped Unscrubbed model with `label`'s method and settings; (wall seconds of the loop, weights hash)."
    method, extra = RUNS[label]
    cfg = replace(default_config(preset, method), **extra)
    model = load_reference(preset.name, "unscrubbed")
    obj = make_objective(method, NoiseSchedule(preset.schedule), cfg, splits.forget_classes, seed)
    batches = obj.make_batches(splits.remain, splits.forget, seed=seed)
    t0 = time.perf_counter()
    res = fit(model, obj, batches, cfg.loop(seed), progress=False, desc=label)
    return time.perf_counter() - t0, weights_sha256(res.model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="times each run is repeated, alternating (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.repeats < 1: ap.error("--repeats must be >= 1")
    preset = get_preset("digits")
    splits = make_splits(*preset.load_data(), preset.forget_spec())
    walls: dict[str, list[float]] = {k: [] for k in RUNS}
    hashes: dict[str, set] = {k: set() for k in RUNS}
    for label in RUNS:                                       # warm-up (allocator, kernels, page cache): not timed
        run_once(label, preset, splits, args.seed)
    for r in range(args.repeats):
        for label in (list(RUNS) if r % 2 == 0 else list(RUNS)[::-1]):   # alternate the order: no method always first
            s, h = run_once(label, preset, splits, args.seed)
            walls[label].append(s); hashes[label].add(h)
            print(f"  repeat {r}: {label} {s:.1f} s", file=sys.stderr, flush=True)
    same = len(set().union(*hashes.values())) == 1
    print(f"\n| run | steps | wall s (mean ± std over {args.repeats}) | ratio to SO |\n|---|---|---|---|")
    so = statistics.mean(walls["so"])
    for label, w in walls.items():
        sd = statistics.stdev(w) if len(w) > 1 else 0.0
        print(f"| {label} | {default_config(preset, RUNS[label][0]).steps} | {statistics.mean(w):.1f} ± {sd:.1f} "
              f"| {statistics.mean(w) / so:.3f} |")
    print(f"weights bit-identical across the three: {same}")
    print(f"threads: {torch.get_num_threads()}; load: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"walls": walls, "identical_weights": same, "load": os.getloadavg()}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
