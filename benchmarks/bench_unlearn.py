"""Benchmark of EraseDiff unlearning on a preset (default: digits, forget 2 and 8).

Prints, in one run:
- unlearning wall time / Retrain training wall time (Retrain's time: --retrain-seconds when given, e.g. a clean
  timing of `erasediff train --what retrain` on this machine; else data/manifest.json 'digits/retrain'
  'train_seconds' when shipped, which records the machine load of that run; else a Retrain run is timed here);
- peak memory of unlearning / peak memory of plain training steps (erasediff.core.measure: process RSS high-water
  mark on CPU, CUDA max allocated on a GPU);
- classifier accuracy on CFG samples of the forgotten and of the remaining classes, before and after, per seed.

    .venv/bin/python benchmarks/bench_unlearn.py [--preset digits] [--forget 2 8] [--seeds 0 1 2] [--eval-per-class 100] [--retrain-seconds S]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch


def plain_training_peak(preset, steps: int = 5) -> dict:
    "Cost of `steps` plain diffusion training steps (the preset's training batch) on the full training set."
    from erasediff.core import NoiseSchedule, make_unet, measure
    from erasediff.data import InfiniteBatches
    from erasediff.train import DiffusionObjective, fit
    train, _ = preset.load_data()
    loop = replace(preset.train, steps=steps, ckpt_every=0, sample_every=0, warmup_steps=1)
    torch.manual_seed(0)
    model = make_unet(preset.unet)
    with measure() as cost:
        fit(model, DiffusionObjective(NoiseSchedule(preset.schedule), preset.p_uncond),
            InfiniteBatches(train, loop.batch_size, seed=0), loop, progress=False)
    return {"steps": steps, "batch_size": loop.batch_size, "wall_s_per_step": cost["wall_s"] / steps,
            "peak_rss_mb": cost["peak_rss_mb"], "cuda_peak_mb": cost["cuda_peak_mb"]}


def retrain_seconds(preset, forget, tmp: Path, given: float | None = None) -> tuple[float, str]:
    "Retrain's training wall time: `given` (measured elsewhere), else from the shipped manifest, else timed here."
    from erasediff.train import read_manifest, train_reference
    if given: return float(given), "--retrain-seconds"
    entry = read_manifest().get(f"{preset.name}/retrain")
    if entry and entry.get("train_seconds"):
        return float(entry["train_seconds"]), "data/manifest.json"
    print(f"no shipped {preset.name}/retrain in data/manifest.json: timing a Retrain run ({preset.train.steps} steps) ...",
          file=sys.stderr, flush=True)
    res = train_reference(preset, "retrain", tmp / "retrain", forget_classes=forget, progress=False)
    return float(res.cost["wall_s"]), "timed here"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--forget", nargs="+", type=int, default=None, help="forget classes (default: the preset's)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--method", default="erasediff")
    ap.add_argument("--eval-per-class", type=int, default=None, help="CFG samples per class (default: the preset's)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--config", type=json.loads, default=None, help='JSON overrides of default_config, e.g. \'{"lr": 0.001}\'')
    ap.add_argument("--retrain-seconds", type=float, default=None,
                    help="Retrain's training wall time measured on this machine (default: data/manifest.json)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    from erasediff.train import get_preset
    from erasediff.unlearn import default_config, unlearn
    preset = get_preset(args.preset)
    forget = tuple(args.forget or preset.forget_classes)
    config = replace(default_config(preset, args.method), **(args.config or {}))
    runs = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        plain = plain_training_peak(preset)
        for s in args.seeds:
            r = unlearn(preset, forget, d / f"seed{s}", seed=s, method=args.method, eval_per_class=args.eval_per_class, config=config,
                        progress=False)
            runs.append(r)
            b, a = r["before"], r["after"]
            print(f"seed {s}: forgotten {b['acc_forget']:.1%} -> {a['acc_forget']:.1%} | remaining {b['acc_remain']:.1%} -> "
                  f"{a['acc_remain']:.1%} | unlearning {r['unlearn_seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB",
                  flush=True)
        t_retrain, src = retrain_seconds(preset, forget, d, args.retrain_seconds)

    def ms(xs):
        return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)
    t_u = ms([r["unlearn_seconds"] for r in runs])
    mem_u = max(r["peak_rss_mb"] or float("nan") for r in runs)
    cuda_u = max((r["cuda_peak_mb"] or 0) for r in runs) or None
    acc = {k: ms([r[when][key] for r in runs]) for when in ("before", "after") for key in ("acc_forget", "acc_remain")
           for k in [f"{key}_{when}"]}
    n = runs[0]["eval_per_class"]
    print()
    print(f"EraseDiff benchmark — preset {preset.name}, forget {list(forget)}, method {args.method}, "
          f"{config.steps} outer steps{' ' + json.dumps(args.config) if args.config else ''}, seeds {args.seeds}, device {runs[0]['device']}, torch threads {torch.get_num_threads()}")
    print(f"unlearning wall time      {t_u[0]:7.1f} ± {t_u[1]:.1f} s")
    print(f"Retrain training time     {t_retrain:7.1f} s ({src})")
    print(f"ratio unlearn / retrain   {t_u[0] / t_retrain:7.4f}   (target <= 0.05)")
    print(f"peak memory, unlearning   {mem_u:7.0f} MB RSS" + (f", {cuda_u:.0f} MB CUDA" if cuda_u else ""))
    print(f"peak memory, plain train  {plain['peak_rss_mb']:7.0f} MB RSS ({plain['steps']} steps, batch {plain['batch_size']})"
          + (f", {plain['cuda_peak_mb']:.0f} MB CUDA" if plain["cuda_peak_mb"] else ""))
    print(f"ratio memory              {mem_u / plain['peak_rss_mb']:7.3f}")
    print(f"accuracy on CFG samples ({n}/class, mean ± std over {len(runs)} seeds):")
    print(f"  forgotten classes  before {acc['acc_forget_before'][0]:.1%} ± {acc['acc_forget_before'][1]:.1%}"
          f"  after {acc['acc_forget_after'][0]:.1%} ± {acc['acc_forget_after'][1]:.1%}   (target <= 5%, stretch <= 1%)")
    print(f"  remaining classes  before {acc['acc_remain_before'][0]:.1%} ± {acc['acc_remain_before'][1]:.1%}"
          f"  after {acc['acc_remain_after'][0]:.1%} ± {acc['acc_remain_after'][1]:.1%}   "
          f"(drop {100 * (acc['acc_remain_before'][0] - acc['acc_remain_after'][0]):.1f} points; target <= 3)")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "plain_training": plain, "retrain_seconds": t_retrain,
                                         "retrain_source": src}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
