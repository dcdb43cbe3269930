"""Every unlearning method of the registry on a preset's shipped Unscrubbed model (default: digits), one table.

Each method runs once with its calibrated defaults, extended up to `--extend` times its budget (TS: not extended) until
a cheap probe every `--check-every` steps finds the worst-scale forget-class accuracy <= `--target` (its time to forget).
At its default budget the model is evaluated in full: forget accuracy at w = 0 and the preset's w, remaining accuracy
(worst w), classifier-space FD of the remaining classes, MIA AUC on D_f with its chance level, wall time (preparation
shown apart) and peak memory. Ends with the speed ratios EraseDiff / SA and EraseDiff / SalUn. About 20-30 min on 2 CPU
cores with the defaults (digits, forget {2, 8}).

    python experiments/bench_methods.py
    python experiments/bench_methods.py --methods erasediff salun --json /tmp/m.json

Prints the table to stdout; `--json FILE` also writes every row there.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from erasediff.accuracy import sample_accuracy   # in eval mode, the model's mode restored
from erasediff.methods import METHODS

ALL = tuple(m for m in METHODS if m != "esd_x")   # every method of the registry that runs on a class-label UNet


def probe(model, clf, schedule, sampler, forget, n_classes, n, seed):
    "Worst-scale (w = 0, preset w) accuracy of the classifier on n samples per forgotten class."
    acc, _, _ = sample_accuracy(model, clf, schedule, sampler, forget, n_classes, n, seed=seed, scales=(0.0, sampler.w),
                               n_remain=1)
    return acc["acc_forget"]


def full_eval(model, clf, schedule, sampler, splits, forget, n_classes, n_forget, n_remain, seed):
    "The table's metrics of one model."
    from erasediff.measures import classifier_frechet_distance
    from erasediff.membership import membership_inference
    model.eval()                                                    # and stays so for the attack
    acc, x, labels = sample_accuracy(model, clf, schedule, sampler, forget, n_classes, n_forget, seed=seed,
                                    scales=(0.0, sampler.w), n_remain=n_remain)
    keep = ~torch.isin(labels, torch.tensor(list(forget)))
    xr, _ = splits.remain.tensors()
    fd = classifier_frechet_distance(clf, x[keep], xr)
    # evaluate's protocol: the attack is calibrated on D_r vs held-out D_r, then scored on D_f vs held-out D_f
    n_cal = len(splits.heldout_remain)
    pick = torch.randperm(len(splits.remain), generator=torch.Generator().manual_seed(seed))[:n_cal]
    mia = membership_inference(model, schedule, splits.forget, splits.heldout_forget, seed=seed,
                               calibration=(splits.remain.subset(pick), splits.heldout_remain))
    auc = mia["avg_loss"]["auc"]
    chance = mia["chance"]["avg_loss"]["auc"]
    w0, ww = "0", f"{sampler.w:g}"
    return {"forget_w0": acc["by_w"][w0]["acc_forget"], "forget_w": acc["by_w"][ww]["acc_forget"],
            "remain_worst": acc["acc_remain"], "remain_w0": acc["by_w"][w0]["acc_remain"], "fd_remain": fd,
            "mia_auc": auc, "mia_chance": chance, "confusion": {w: r["confusion"] for w, r in acc["by_w"].items()}}


class _Done(Exception):
    "Raised by the callback once the method has forgotten and its default budget has been evaluated."


def run_method(method, preset, forget, args) -> dict:
    from erasediff.core import NoiseSchedule
    from erasediff.runtime import measure
    from erasediff.data import ForgetSpec, make_splits
    from erasediff.train import fit, load_reference
    from erasediff.methods import default_config, make_objective
    cfg0 = default_config(preset, method)
    if hasattr(cfg0, "cache"): cfg0 = replace(cfg0, cache=False)           # SA: time the Fisher diagonal too
    ext = 1 if method == "ts" else args.extend
    cfg = replace(cfg0, epochs=cfg0.epochs * ext)
    train, test = preset.load_data()
    splits = make_splits(train, test, ForgetSpec(classes=tuple(forget)))
    model = load_reference(preset.name, "unscrubbed")
    clf = load_reference(preset.name, "classifier")
    schedule = NoiseSchedule(preset.schedule)
    torch.manual_seed(args.seed)
    obj = make_objective(method, schedule, cfg, forget, args.seed)
    batches = obj.make_batches(splits.remain, splits.forget, seed=args.seed)
    paused, t0 = 0.0, time.perf_counter()
    out = {"method": method, "default_steps": cfg0.steps, "max_steps": cfg.steps, "reached_step": None,
           "reached_s": None, "probes": []}

    def callback(step, m, logs):
        nonlocal paused
        if step % args.check_every and step != cfg0.steps: return
        e0 = time.perf_counter()
        spent = e0 - t0 - paused
        if out["reached_step"] is None and step % args.check_every == 0:
            a = probe(m, clf, schedule, preset.sampler, forget, len(train.classes), args.probe_forget, args.eval_seed)
            out["probes"].append((step, round(spent, 2), a))
            if a <= args.target: out["reached_step"], out["reached_s"] = step, spent
        if step == cfg0.steps:
            out["default_s"] = spent
            out["eval"] = full_eval(m, clf, schedule, preset.sampler, splits, forget, len(train.classes), args.n_forget,
                                    args.n_remain, args.eval_seed)
            m.train()
            e = out["eval"]
            print(f"  {method} @ {step} steps ({spent:.1f} s): forget w=0 {e['forget_w0']:.3f} w={preset.sampler.w:g} "
                  f"{e['forget_w']:.3f} remain {e['remain_worst']:.3f} FD {e['fd_remain']:.2f} MIA AUC {e['mia_auc']:.3f}",
                  flush=True)
        paused += time.perf_counter() - e0
        if out["reached_step"] is not None and "eval" in out: raise _Done   # nothing left to measure

    with measure() as cost:
        try:
            fit(model, obj, batches, cfg.loop(args.seed), progress=False, callback=callback, desc=method)
        except _Done:
            pass
    out["peak_rss_mb"] = cost.get("peak_rss_mb")
    out["prep_s"] = getattr(obj, "prep_s", 0.0)
    return out


def _s(v) -> str:
    return "not reached" if v is None else f"{v:.1f} s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--forget", nargs="+", type=int, default=None)
    ap.add_argument("--methods", nargs="*", default=list(ALL), choices=ALL, help="(none with --references: only those)")
    ap.add_argument("--extend", type=int, default=4,
                    help="run each method up to this many times its budget to find its time to forget (stops once found)")
    ap.add_argument("--check-every", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.05, help="forget-class accuracy that counts as forgotten")
    ap.add_argument("--probe-forget", type=int, default=20, help="samples per forgotten class of each probe")
    ap.add_argument("--n-forget", type=int, default=100, help="samples per forgotten class of the full evaluation")
    ap.add_argument("--n-remain", type=int, default=30, help="samples per remaining class of the full evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=123)
    ap.add_argument("--references", action="store_true",
                    help="also evaluate the shipped Unscrubbed and Retrain models (the table's reference rows)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from erasediff.train import get_preset
    preset = get_preset(args.preset)
    forget = tuple(args.forget or preset.forget_classes)
    print(f"bench_methods: {preset.name}, forget {list(forget)}, methods {args.methods}; load: {os.getloadavg()}", flush=True)
    rows = []
    if args.references:
        from erasediff.core import NoiseSchedule
        from erasediff.data import ForgetSpec, make_splits
        from erasediff.train import load_reference
        train, test = preset.load_data()
        splits = make_splits(train, test, ForgetSpec(classes=tuple(forget)))
        clf, schedule = load_reference(preset.name, "classifier"), NoiseSchedule(preset.schedule)
        for ref in ("unscrubbed", "retrain"):
            e = full_eval(load_reference(preset.name, ref), clf, schedule, preset.sampler, splits, forget,
                          len(train.classes), args.n_forget, args.n_remain, args.eval_seed)
            rows.append({"method": ref.capitalize(), "default_steps": 0, "max_steps": 0, "reached_step": None,
                         "reached_s": None, "default_s": float("nan"), "prep_s": 0.0, "peak_rss_mb": None, "eval": e})
            print(f"  {ref}: forget w=0 {e['forget_w0']:.3f} remain {e['remain_worst']:.3f} FD {e['fd_remain']:.2f} "
                  f"MIA AUC {e['mia_auc']:.3f}", flush=True)
    for m in args.methods:
        rows.append(run_method(m, preset, forget, args))
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    w = f"{preset.sampler.w:g}"
    print(f"\n| method | steps | forget acc w=0 | forget acc w={w} | remain acc (worst w) | FD remain | MIA AUC D_f "
          f"| time s (prep) | peak RSS MB | steps / s to forget acc <= {args.target:.0%} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e = r["eval"]
        reach = (f"{r['reached_step']} / {r['reached_s']:.1f}" if r["reached_step"] is not None
                 else f"not in {r['max_steps']}" if r["max_steps"] else "—")
        c = e.get("mia_chance") or {}
        chance = f" (chance {c['mean']:.3f} ± {c['std']:.3f})" if c else ""
        print(f"| {r['method']} | {r['default_steps']} | {e['forget_w0']:.3f} | {e['forget_w']:.3f} | {e['remain_worst']:.3f} "
              f"| {e['fd_remain']:.2f} | {e['mia_auc']:.3f}{chance} | {r['default_s']:.1f} ({r['prep_s']:.1f}) "
              f"| {r['peak_rss_mb'] or float('nan'):.0f} | {reach} |")
    by = {r["method"]: r for r in rows}
    if "erasediff" in by:
        ed = by["erasediff"]
        for other, claim in (("sa", 11), ("salun", 2)):
            if other not in by: continue
            o = by[other]
            bare = (o["default_s"] - o["prep_s"]) / (ed["default_s"] - ed["prep_s"])
            print(f"speed EraseDiff vs {other} (paper: {claim}x faster): default budgets "
                  f"{o['default_s']:.1f} s / {ed['default_s']:.1f} s = {o['default_s'] / ed['default_s']:.2f}x "
                  f"({bare:.2f}x without {other}'s one-off preparation of {o['prep_s']:.1f} s); "
                  + (f"time to forget {o['reached_s']:.1f} s / {ed['reached_s']:.1f} s = {o['reached_s'] / ed['reached_s']:.2f}x"
                     if o["reached_s"] and ed["reached_s"] else
                     f"time to forget: EraseDiff {_s(ed['reached_s'])}, {other} {_s(o['reached_s'])} "
                     f"(not reached in {o['max_steps']} steps)"))
    print(f"load: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
