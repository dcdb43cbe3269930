"""EraseDiff's forget losses side by side on a preset (default: digits).

For every forget pair (`--pairs`), seed and loss (`--losses`, default the released 'deviate' and the first version's
'uniform'), one `erasediff.unlearn.unlearn` run with that loss's default config, then the classifier's accuracy on
samples at w = 0, the preset's w and 1 (the Unscrubbed model once per pair, the same noise for every model). Prints the
per-run and mean ± std accuracies against the accuracy targets, unlearning time / Retrain's training time
(`--retrain-seconds`, else data/manifest.json) and peak memory / that of plain training steps. Each unlearning run
takes about 30 s on 2 CPU cores; the sampling for the accuracies comes on top.

    python experiments/bench_unlearn.py --pairs 2,8 4,9 1,7 --seeds 0 1 2 --v1-pairs 2,8 --retrain-seconds 659.8

Prints to stdout; `--json FILE` also writes the runs there. The unlearned models live in a temporary folder.
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

from erasediff.accuracy import sample_accuracy   # in eval mode, the model's mode restored


def plain_training_peak(preset, steps: int = 5) -> dict:
    "Cost of `steps` plain diffusion training steps (the preset's training batch) on the full training set."
    from erasediff.core import NoiseSchedule, make_unet
    from erasediff.runtime import measure
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


def accuracy(model, preset, forget, n_forget: int, n_remain: int, eval_seed: int) -> dict:
    "sample_accuracy at w = 0, the preset's w and 1, with the shipped classifier and a fixed noise seed."
    from erasediff.core import NoiseSchedule
    from erasediff.train import load_reference
    train, _ = preset.load_data()
    acc, _, _ = sample_accuracy(model, load_reference(preset.name, "classifier"), NoiseSchedule(preset.schedule),
                               preset.sampler, forget, len(train.classes), n_forget, seed=eval_seed, n_remain=n_remain)
    return acc


def _pair(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.replace(" ", "").split(","))


def _ms(xs) -> str:
    return f"{statistics.mean(xs):6.1%} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:5.1%}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--pairs", nargs="+", type=_pair, default=None, help="forget sets, e.g. 2,8 4,9 (default: the preset's)")
    ap.add_argument("--losses", nargs="+", default=["deviate", "uniform"], help="forget losses to compare")
    ap.add_argument("--v1-pairs", nargs="*", type=_pair, default=None,
                    help="run the losses other than the first only on these pairs (default: every pair)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-forget", type=int, default=100, help="samples per forgotten class, per guidance scale")
    ap.add_argument("--n-remain", type=int, default=20, help="samples per remaining class, per guidance scale")
    ap.add_argument("--eval-seed", type=int, default=123, help="noise of the evaluation samples (same for every model)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--config", type=json.loads, default=None, help='JSON overrides of default_config, e.g. \'{"lr": 0.001}\'')
    ap.add_argument("--retrain-seconds", type=float, default=None,
                    help="Retrain's training wall time, measured separately (default: data/manifest.json)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    from erasediff.runtime import load_unet
    from erasediff.train import get_preset, load_reference
    from erasediff.methods import default_config
    from erasediff.unlearn import unlearn
    preset = get_preset(args.preset)
    pairs = args.pairs or [tuple(preset.forget_classes)]
    base = replace(default_config(preset), **(args.config or {}))
    configs = {loss: replace(default_config(preset, "erasediff", loss), **(args.config or {})) for loss in args.losses}
    runs, before = [], {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        plain = plain_training_peak(preset)
        for pair in pairs:
            before[pair] = accuracy(load_reference(preset.name, "unscrubbed"), preset, pair, args.n_forget, args.n_remain,
                                    args.eval_seed)
            b = before[pair]
            print(f"{list(pair)} Unscrubbed: " + " | ".join(
                f"w={w}: forget {v['acc_forget']:.1%} remain {v['acc_remain']:.1%}" for w, v in b["by_w"].items()), flush=True)
            for loss in args.losses:
                if loss != args.losses[0] and args.v1_pairs is not None and pair not in args.v1_pairs: continue
                cfg = configs[loss]                 # each loss with its own calibrated settings
                for s in args.seeds:
                    out = d / f"{'-'.join(map(str, pair))}-{loss}-{s}"
                    r = unlearn(preset, pair, out, seed=s, config=cfg, eval_per_class=0, progress=False)
                    a = accuracy(load_unet(out / "unet"), preset, pair, args.n_forget, args.n_remain, args.eval_seed)
                    runs.append({"pair": list(pair), "loss": loss, "seed": s, "after": a, "unlearn_seconds": r["unlearn_seconds"],
                                 "peak_rss_mb": r["peak_rss_mb"], "cuda_peak_mb": r["cuda_peak_mb"], "steps": r["steps"]})
                    print(f"{list(pair)} {loss:8s} seed {s}: " + " | ".join(
                        f"w={w}: forget {v['acc_forget']:.1%} remain {v['acc_remain']:.1%}" for w, v in a["by_w"].items())
                        + f" | {r['unlearn_seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        t_retrain, src = retrain_seconds(preset, pairs[0], d, args.retrain_seconds)

    ws = list(runs[0]["after"]["by_w"])
    pw = f"{preset.sampler.w:g}"
    print()
    print(f"EraseDiff benchmark — preset {preset.name}, {base.steps} outer steps, seeds {args.seeds}, device "
          f"{'cuda' if torch.cuda.is_available() and preset.device == 'cuda' else 'cpu'}, torch threads {torch.get_num_threads()}, "
          f"{args.n_forget} samples per forgotten class and {args.n_remain} per remaining class at each w")
    for loss, cfg in configs.items():
        first = vars(configs[args.losses[0]])
        diff = {k: v for k, v in vars(cfg).items() if first.get(k) != v}
        print(f"config {loss}: " + (json.dumps(vars(cfg), default=str) if loss == args.losses[0] else f"as above but {json.dumps(diff)}"))
    print(f"targets: forget <= 1% at the preset's w = {pw} and <= 5% at w = 0; remain within 2 points of Unscrubbed at "
          f"w = {pw} and 5 points at w = 0")
    head = " ".join(f"{'forget w=' + w:>17s} {'remain w=' + w:>17s}" for w in ws)
    print(f"{'pair':8s} {'loss':8s} {head} {'worst forget':>13s} {'worst remain drop':>18s} {'time s':>7s}")
    for pair in pairs:
        b = before[pair]["by_w"]
        print(f"{str(list(pair)):8s} {'before':8s} " + " ".join(f"{b[w]['acc_forget']:17.1%} {b[w]['acc_remain']:17.1%}" for w in ws))
        for loss in args.losses:
            sel = [r for r in runs if tuple(r["pair"]) == pair and r["loss"] == loss]
            if not sel: continue
            cells = " ".join(f"{_ms([r['after']['by_w'][w]['acc_forget'] for r in sel]):>17s} "
                             f"{_ms([r['after']['by_w'][w]['acc_remain'] for r in sel]):>17s}" for w in ws)
            worst_f = max(r["after"]["acc_forget"] for r in sel)
            drop = max(b[w]["acc_remain"] - r["after"]["by_w"][w]["acc_remain"] for r in sel for w in ws)
            t = statistics.mean(r["unlearn_seconds"] for r in sel)
            print(f"{str(list(pair)):8s} {loss:8s} {cells} {worst_f:13.1%} {100 * drop:15.1f} pt {t:7.1f}")
    for loss in args.losses:
        sel = [r for r in runs if r["loss"] == loss]
        if not sel: continue
        ok = []
        for r in sel:
            b, a = before[tuple(r["pair"])]["by_w"], r["after"]["by_w"]
            ok.append(a[pw]["acc_forget"] <= 0.01 and a["0"]["acc_forget"] <= 0.05
                      and b[pw]["acc_remain"] - a[pw]["acc_remain"] <= 0.02 and b["0"]["acc_remain"] - a["0"]["acc_remain"] <= 0.05)
        print(f"{loss}: {sum(ok)}/{len(ok)} runs meet every accuracy target; worst forget at w = {pw}: "
              f"{max(r['after']['by_w'][pw]['acc_forget'] for r in sel):.1%}, at w = 0: "
              f"{max(r['after']['by_w']['0']['acc_forget'] for r in sel):.1%}")
    print(f"Retrain training time     {t_retrain:7.1f} s ({src})")
    for loss in args.losses:
        sel = [r for r in runs if r["loss"] == loss]
        if not sel: continue
        t_u = statistics.mean(r["unlearn_seconds"] for r in sel)
        mem_u = max(r["peak_rss_mb"] or float("nan") for r in sel)
        print(f"{loss:8s} unlearning {t_u:6.1f} s (mean of {len(sel)} runs, max {max(r['unlearn_seconds'] for r in sel):.1f} s)"
              f" -> ratio to Retrain {t_u / t_retrain:.4f} (target <= 0.05); peak memory {mem_u:.0f} MB RSS -> ratio "
              f"{mem_u / plain['peak_rss_mb']:.3f} to plain training ({plain['peak_rss_mb']:.0f} MB, {plain['steps']} steps, "
              f"batch {plain['batch_size']})")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "before": {",".join(map(str, k)): v for k, v in before.items()},
                                         "plain_training": plain, "retrain_seconds": t_retrain, "retrain_source": src},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
