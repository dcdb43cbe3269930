"""Calibration sweep of an unlearning method (`--method`, default erasediff) on a preset's shipped Unscrubbed model.

Each setting of `--grid` (a JSON list of overrides of `default_config(preset, method)`) runs once per seed; the
classifier's accuracy on samples of the forgotten and the remaining classes is measured at the outer steps `--at` of
that one run (the learning rate is constant, so step s of a longer run is a run of s steps). Unlearning wall time
excludes the evaluations.

    python experiments/sweep_unlearn.py --grid '[{"lam": 1.0}, {"lam": 1.0, "lr": 0.003}]' --at 20 40 80 --seeds 0 1

Prints one line per (setting, seed, step) and a mean ± std table; `--jsonl FILE` also appends every row there.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from erasediff.accuracy import sample_accuracy   # in eval mode, the model's mode restored


def evaluate(model, classifier, schedule, sampler, forget, n_classes, n_forget, n_remain, seed, scales=None) -> dict:
    """Accuracy of the classifier on samples at every guidance scale of `scales` (default: w = 0, the preset's and 1):
    n_forget per forgotten class, n_remain per remaining class; acc_forget / acc_remain are the worst scale's."""
    acc, _, _ = sample_accuracy(model, classifier, schedule, sampler, forget, n_classes, n_forget, seed=seed,
                               scales=scales, n_remain=n_remain)
    return acc


def _fmt(r: dict, forget) -> str:
    "w=<w>: forget acc (per forgotten class) / remain acc, for every guidance scale of a row."
    parts = []
    for w, v in r["by_w"].items():
        per = " ".join(f"{v['per_class'][c]:.2f}" for c in forget)
        parts.append(f"w={w}: {v['acc_forget']:.3f} ({per}) / {v['acc_remain']:.3f}")
    return " ".join(parts)


def run_setting(preset, forget, overrides: dict, seed: int, at: list[int], method: str, n_forget: int, n_remain: int,
                eval_seed: int, scales=None) -> list[dict]:
    from erasediff.core import NoiseSchedule
    from erasediff.data import make_splits, ForgetSpec
    from erasediff.train import fit, load_reference
    from erasediff.methods import default_config, make_objective
    from erasediff.objectives import select_params
    loss = overrides.get("forget_loss")
    cfg = replace(default_config(preset, method, loss), **overrides)      # a loss's own calibrated settings first
    at = sorted(s for s in at if s <= cfg.steps) or [cfg.steps]
    if cfg.steps not in at: at.append(cfg.steps)
    train, test = preset.load_data()
    splits = make_splits(train, test, ForgetSpec(classes=tuple(forget)))
    model = load_reference(preset.name, "unscrubbed")
    clf = load_reference(preset.name, "classifier")
    schedule = NoiseSchedule(preset.schedule)
    torch.manual_seed(seed)
    rows, eval_s = [], 0.0
    t0 = time.perf_counter()

    def callback(step, m, logs):
        nonlocal eval_s
        if step not in at: return
        e0 = time.perf_counter()
        acc = evaluate(m, clf, schedule, preset.sampler, forget, len(train.classes), n_forget, n_remain, eval_seed, scales)
        eval_s += time.perf_counter() - e0
        rows.append({"setting": json.dumps(overrides), "forget": list(forget), "seed": seed, "step": step,
                     "unlearn_s": time.perf_counter() - t0 - eval_s, **acc,
                     **{k: logs.get(k) for k in ("L_r", "L_f", "q", "lambda", "cos")}})
        r = rows[-1]
        print(f"{r['setting']:50s} {list(forget)} seed {seed} step {step:4d}: worst forget {r['acc_forget']:.3f} remain "
              f"{r['acc_remain']:.3f} | {_fmt(r, forget)} | {r['unlearn_s']:.1f}s "
              + " ".join(f"{k} {r[k]:.4g}" for k in ("L_f", "L_r", "lambda") if r.get(k) is not None), flush=True)

    objective = make_objective(method, schedule, cfg, forget, seed)
    batches = objective.make_batches(splits.remain, splits.forget, seed=seed)   # staged for TS
    params = [p for _, p in select_params(model, cfg.params)]   # the parameter subset of `params`, as in unlearn()
    fit(model, objective, batches, cfg.loop(seed), params=params, progress=False, callback=callback, desc=method)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--forget", nargs="+", type=int, default=None)
    ap.add_argument("--method", default="erasediff")
    ap.add_argument("--grid", type=json.loads, required=True, help="JSON list of override dicts")
    ap.add_argument("--at", nargs="+", type=int, default=[], help="outer steps to evaluate at (default: the end)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--n-forget", type=int, default=50, help="CFG samples per forgotten class")
    ap.add_argument("--n-remain", type=int, default=20, help="CFG samples per remaining class")
    ap.add_argument("--eval-seed", type=int, default=123, help="noise of the evaluation samples (same for every row)")
    ap.add_argument("--baseline", action="store_true", help="also evaluate the Unscrubbed model (step 0)")
    ap.add_argument("--w", nargs="+", type=float, default=None, help="guidance scales (default: 0, the preset's w, 1)")
    ap.add_argument("--jsonl", type=Path, default=None, help="append every row here")
    args = ap.parse_args(argv)
    from erasediff.core import NoiseSchedule
    from erasediff.train import get_preset, load_reference
    preset = get_preset(args.preset)
    forget = tuple(args.forget or preset.forget_classes)
    rows = []
    if args.baseline:
        train, _ = preset.load_data()
        acc = evaluate(load_reference(preset.name, "unscrubbed"), load_reference(preset.name, "classifier"),
                       NoiseSchedule(preset.schedule), preset.sampler, forget, len(train.classes), args.n_forget,
                       args.n_remain, args.eval_seed, args.w)
        rows.append({"setting": "unscrubbed", "forget": list(forget), "seed": 0, "step": 0, "unlearn_s": 0.0, **acc})
        print(f"unscrubbed {list(forget)}: worst forget {acc['acc_forget']:.3f} remain {acc['acc_remain']:.3f} | "
              f"{_fmt(acc, forget)}", flush=True)
    for overrides in args.grid:
        for s in args.seeds:
            new = run_setting(preset, forget, overrides, s, args.at, args.method, args.n_forget, args.n_remain, args.eval_seed,
                              args.w)
            rows += new
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    for r in new: f.write(json.dumps(r) + "\n")
    print(f"\n{'setting':50s} {'step':>5s} {'forget acc':>15s} {'remain acc':>15s} {'time s':>7s}  (mean ± std over seeds {args.seeds})")
    keys = sorted({(r["setting"], r["step"]) for r in rows}, key=lambda k: [r["setting"] for r in rows].index(k[0]) * 10**6 + k[1])
    for setting, step in keys:
        sel = [r for r in rows if r["setting"] == setting and r["step"] == step]
        f = [r["acc_forget"] for r in sel]; m = [r["acc_remain"] for r in sel]; t = [r["unlearn_s"] for r in sel]
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
        print(f"{setting:50s} {step:5d} {statistics.mean(f):7.3f} ± {sd(f):.3f} {statistics.mean(m):7.3f} ± {sd(m):.3f} "
              f"{statistics.mean(t):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
