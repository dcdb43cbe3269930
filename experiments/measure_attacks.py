"""Does EraseDiff's forgetting last, and does its robust option (`erasediff unlearn --robust`) make it last as long as
Retrain's? For every seed, EraseDiff (the preset's calibrated settings) and EraseDiff --robust each unlearn the shipped
Unscrubbed model, back to back (their wall-time ratio is measured under the same load); then, by part:

  main     the relearning attack the option is judged on (10 held-out images, lr 3e-4, steps 0..100) on Retrain (the
           shipped model), EraseDiff and EraseDiff --robust, every seed: OUT/table.md, OUT/figures/
  utility  forgotten-class recognition at w = 0 and the preset's w, remaining-class accuracy at both, every seed
  control  plain EraseDiff given as many outer steps as the robust run's wall time buys (the equal-compute control),
           attacked like the others, over the first --unseen-seeds seeds: OUT/control.md
  labels   the null label and the labels next to the forgotten ones, every seed: OUT/labels.md
  train    only the unlearning runs (e.g. while another pair's Retrain is still training)
  unseen   attacks the option never simulated (lr 1e-3; 50 images; 50 remaining-class images only), over the first
           --unseen-seeds seeds: OUT/unseen.md

    python experiments/measure_attacks.py [--seeds 5] [--unseen-seeds 2] [--parts main utility control labels unseen]
    python experiments/measure_attacks.py --forget 1 7 --retrain FOLDER --out results/digits-attacks-1-7 --parts main utility

Another forget pair needs its own Retrain (erasediff train --preset digits --what retrain --forget 1 7 --out FOLDER);
--robust NAME=VALUE changes the robust option's settings (an ablation: give it its own --out).

OUT (default results/digits-attacks) also gets summary.json (wall times, their ratio, the load average, the utility);
the models and every attack record go to OUT/runs/ (not shipped: rerun to regenerate; finished models and records are
reused, so a part can be run alone, or beside another part in a second process).
"""
import argparse
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from erasediff.accuracy import sample_accuracy
from erasediff.attacks import (
    CURVE_STEPS, attack_context, attack_tables, LabelAttack, Probe, RelearnAttack, run_attacks)
from erasediff.methods import default_config
from erasediff.names import ROBUST
from erasediff.runtime import atomic_write_json, load_unet
from erasediff.train import get_preset, reference_path
from erasediff.unlearn import unlearn

LABELS = {"retrain": "Retrain", "erasediff": "EraseDiff", "robust": "EraseDiff --robust",
          "equal_compute": "EraseDiff, equal compute"}


def _assignments(items: list) -> dict:
    "NAME=VALUE arguments (the value as JSON) as a dict."
    return {k: json.loads(v) for k, v in (item.split("=", 1) for item in items)}


def _unlearn(out: Path, preset, forget, seed: int, config: dict) -> float:
    "Unlearn into out (reused when finished) with these config fields; the unlearning's wall seconds."
    if (out / "metrics.json").is_file():                        # reused only if made with these settings and classes
        made = json.loads((out / "metrics.json").read_text())
        differ = {k: (made["config"].get(k), v) for k, v in config.items() if made["config"].get(k) != v}
        if differ or sorted(made["forget"]["classes"]) != sorted(forget):
            raise SystemExit(f"{out} was unlearned with other settings ({differ or made['forget']}); "
                             "give another --out (or remove the folder)")
    else:
        unlearn(preset, forget, out, method="erasediff", seed=seed, config=config or None,
                eval_per_class=0, progress=False)
    return json.loads((out / "metrics.json").read_text())["unlearn_seconds"]


def _utility(folder: Path, ctx, n_forget: int, n_remain: int, seed: int) -> dict:
    "Forgotten-class accuracy at w = 0 and the preset's w, remaining-class accuracy at both (the worst)."
    p = ctx.preset
    acc, _, _ = sample_accuracy(load_unet(folder), ctx.classifier, ctx.schedule, p.sampler, ctx.forget_classes,
                                ctx.n_classes, n_forget, seed=seed, scales=(0.0, p.sampler.w), n_remain=n_remain)
    return {"forget_by_w": {w: r["acc_forget"] for w, r in acc["by_w"].items()},
            "remain_by_w": {w: r["acc_remain"] for w, r in acc["by_w"].items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--unseen-seeds", type=int, default=2)
    ap.add_argument("--only-seeds", type=int, nargs="+", default=None, metavar="S",
                    help="compute these of the --seeds only (a second process can take the others); tables need all")
    ap.add_argument("--parts", nargs="+", default=["main", "utility", "control", "labels", "unseen"],
                    choices=["train", "main", "utility", "control", "labels", "unseen"],
                    help="what to (re)compute, in this order; finished models and records are reused either way")
    ap.add_argument("--n-per-class", type=int, default=100, help="samples per forgotten class at each curve point")
    ap.add_argument("--utility-forget", type=int, default=50, help="utility: samples per forgotten class")
    ap.add_argument("--utility-remain", type=int, default=10, help="utility: samples per remaining class")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the wall-time ratios are measured at this)")
    ap.add_argument("--n-per-label", type=int, default=200, help="label attack: samples per asked label")
    ap.add_argument("--attack-steps", type=int, nargs="+", default=list(CURVE_STEPS), help="steps of each curve")
    ap.add_argument("--budget", nargs="*", default=[], metavar="NAME=VALUE",
                    help="config fields of every unlearning run (e.g. a smoke test's rem_num=64 epochs=1 rounds=1)")
    ap.add_argument("--forget", type=int, nargs="+", default=None, help="forgotten classes (default: the preset's)")
    ap.add_argument("--retrain", type=Path, default=None,
                    help="Retrain's folder (default: the shipped one, which forgot the preset's classes)")
    ap.add_argument("--robust", nargs="*", default=[], metavar="NAME=VALUE",
                    help="robust option's settings over erasediff.names.ROBUST (e.g. robust_steps=10)")
    ap.add_argument("--out", type=Path, default=Path("results/digits-attacks"))
    args = ap.parse_args(argv)
    robust = {**ROBUST, **_assignments(args.robust)}
    labels = {**LABELS, "robust": f"EraseDiff --robust (r = {robust['robust_every']}, m = {robust['robust_steps']}, "
                        f"lr {robust['robust_lr']:g}" + (f", β = {robust['robust_weight']:g}" if "robust_weight" in robust else "")
                        + (f", null-label weight {robust['forget_null']:g}" if robust.get("forget_null") else "") + ")"}
    budget = _assignments(args.budget)     # given to every unlearning run (a smoke test's tiny budget)
    steps = tuple(args.attack_steps)
    torch.set_num_threads(args.threads)
    preset = get_preset("digits")
    forget = tuple(args.forget or preset.forget_classes)
    if args.retrain is None and sorted(forget) != sorted(preset.forget_classes):
        ap.error(f"--forget {' '.join(map(str, forget))}: the shipped Retrain forgot {list(preset.forget_classes)}; "
                 "give --retrain FOLDER (erasediff train --preset digits --what retrain --forget ...)")
    if args.retrain is not None and not args.retrain.is_dir(): ap.error(f"--retrain {args.retrain}: no such folder")
    ctx = attack_context(preset, forget, probe=Probe(n_per_class=args.n_per_class, sampler_steps=20))
    retrain = str(args.retrain) if args.retrain is not None else "retrain"
    seeds, useeds = list(range(args.seeds)), list(range(args.unseen_seeds))
    if args.only_seeds is not None:
        if not set(args.only_seeds) <= set(seeds): ap.error(f"--only-seeds {args.only_seeds}: not among the seeds {seeds}")
        seeds, useeds = [s for s in seeds if s in args.only_seeds], [s for s in useeds if s in args.only_seeds]
    runs = args.out / "runs" / "models"
    summary_file = args.out / "summary.json"
    summary = {}

    def save() -> None:          # merged into what is there: runs of other --parts (even concurrent ones) keep theirs
        there = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        atomic_write_json(summary_file, {**there, **summary})
    t0 = time.time()
    wall, load = {"erasediff": {}, "robust": {}}, {}
    for s in seeds:                                # each pair back to back: the ratio is measured under the same load
        if not all((runs / m / f"seed{s}" / "metrics.json").is_file() for m in wall): load[s] = os.getloadavg()[0]
        wall["erasediff"][s] = _unlearn(runs / "erasediff" / f"seed{s}", preset, forget, s, budget)
        wall["robust"][s] = _unlearn(runs / "robust" / f"seed{s}", preset, forget, s, {**budget, **robust})
    ratio = float(np.mean([wall["robust"][s] / wall["erasediff"][s] for s in seeds]))
    summary.update(forget=list(forget), retrain=retrain, robust=robust, wall_s=wall, wall_ratio_robust_to_default=ratio, seeds=seeds, unseen_seeds=useeds)
    if load: summary.update(load_avg_1min_before_each_pair=load, threads=args.threads)   # only when they were trained
    save()
    per_seed = lambda m, ss: {s: runs / m / f"seed{s}" / "unet" for s in ss}
    at = lambda ss: {"retrain": retrain, "erasediff": per_seed("erasediff", ss), "robust": per_seed("robust", ss)}
    models = at(seeds)
    relearn = RelearnAttack(n_images=10, lr=3e-4, steps=steps)
    if "main" in args.parts:
        run_attacks(models, [relearn], ctx, seeds, args.out)
        attack_tables(args.out, list(models), [relearn], seeds, labels=labels)
        print((args.out / "table.md").read_text(), flush=True)
    if "utility" in args.parts:
        summary["utility"] = {m: {s: _utility(models[m][s], ctx, args.utility_forget, args.utility_remain, s) for s in seeds}
                              for m in ("erasediff", "robust")}
        summary["utility"]["retrain"] = {0: _utility(args.retrain or reference_path("digits", "retrain"), ctx, args.utility_forget,
                                                     args.utility_remain, 0)}
        summary["utility_samples"] = {"forget_per_class": args.utility_forget, "remain_per_class": args.utility_remain}
        save()
    if "control" in args.parts:                    # plain EraseDiff given the robust run's wall time, as outer steps
        base = replace(default_config(preset, "erasediff"), **budget)
        control = {"rem_num": base.batch_size * math.ceil(base.rem_num / base.batch_size * ratio)}
        wall["equal_compute"] = {s: _unlearn(runs / "equal_compute" / f"seed{s}", preset, forget, s, {**budget, **control}) for s in useeds}
        models_c = {**at(useeds), "equal_compute": per_seed("equal_compute", useeds)}
        run_attacks(models_c, [relearn], ctx, useeds, args.out)
        attack_tables(args.out, list(models_c), [relearn], useeds, labels=labels, name="control")
        summary.update(control=control, wall_s=wall)
        save()
    if "labels" in args.parts:
        labels_attack = [LabelAttack(n_per_label=args.n_per_label)]
        run_attacks(models, labels_attack, ctx, seeds, args.out)
        attack_tables(args.out, list(models), labels_attack, seeds, labels=labels, name="labels")
    if "unseen" in args.parts:
        unseen = [RelearnAttack(n_images=10, lr=1e-3, steps=steps), RelearnAttack(n_images=50, lr=3e-4, steps=steps),
                  RelearnAttack(n_images=50, lr=3e-4, steps=steps, data="remain")]
        models_u = at(useeds)
        run_attacks(models_u, unseen, ctx, useeds, args.out)
        attack_tables(args.out, list(models_u), unseen, useeds, labels=labels, name="unseen")
    summary[f"last_run_s:{'+'.join(args.parts)}"] = time.time() - t0
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
