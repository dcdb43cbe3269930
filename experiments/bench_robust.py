"""What EraseDiff's robust option costs: wall time of plain EraseDiff and of each robust setting, interleaved (plain,
variant 1, variant 2, ..., plain, ...) so that every ratio is measured under the same load, on the digits preset
forgetting its classes, with `--epochs` of the preset's budget.

    python experiments/bench_robust.py [--variants 2,5,1e-3 2,10,1e-3 4,10,1e-3 1,5,1e-3] [--reps 3] [--threads 1]

Each variant is r,m,lr (robust_every, robust_steps, robust_lr). Prints one line per run, then per variant the median
wall time and its ratio to plain EraseDiff's median, and the load average; --json FILE also writes them. The
unlearned models live in a temporary folder.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from erasediff.runtime import atomic_write_json
from erasediff.train import get_preset
from erasediff.unlearn import unlearn


def _variant(s: str) -> dict:
    r, m, lr = s.split(",")
    return {"robust_every": int(r), "robust_steps": int(m), "robust_lr": float(lr)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", type=_variant,
                    default=[_variant(v) for v in ("2,5,1e-3", "2,10,1e-3", "4,10,1e-3", "1,5,1e-3")])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1, help="outer epochs of each run (the preset's: 3)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = get_preset("digits")
    configs = [("erasediff", {})] + [(f"r{v['robust_every']} m{v['robust_steps']} lr{v['robust_lr']:g}", v)
                                     for v in args.variants]
    walls: dict[str, list[float]] = {name: [] for name, _ in configs}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, cfg in configs:
                loads.append(os.getloadavg()[0])
                out = Path(tmp) / f"{name.replace(' ', '_')}-{rep}"
                t0 = time.perf_counter()
                unlearn(preset, preset.forget_classes, out, method="erasediff", seed=rep,
                        config={"epochs": args.epochs, **cfg}, eval_per_class=0, progress=False)
                walls[name].append(time.perf_counter() - t0)
                print(f"rep {rep} {name}: {walls[name][-1]:.1f} s (load {loads[-1]:.2f})", flush=True)
    base = statistics.median(walls["erasediff"])
    rows = {name: {"median_s": statistics.median(w), "ratio": statistics.median(w) / base, "runs_s": w}
            for name, w in walls.items()}
    for name, r in rows.items():
        print(f"{name:>22}: {r['median_s']:6.1f} s  {r['ratio']:.2f}x")
    print(f"load average (1 min) before the runs: {min(loads):.2f}-{max(loads):.2f}; {args.threads} thread(s), "
          f"{args.epochs} epoch(s), {args.reps} reps")
    if args.json:
        atomic_write_json(args.json, {"rows": rows, "load": [min(loads), max(loads)], "threads": args.threads,
                                      "epochs": args.epochs, "reps": args.reps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
