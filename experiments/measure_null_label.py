"""What the null label still draws of the forgotten classes, for every method of the registry against Retrain: each method
unlearns the preset's shipped Unscrubbed model (its calibrated settings) for every seed, then `null_label_leakage`
samples the null label alone (w = 0) and the classifier reads the samples. Unscrubbed and Retrain are the shipped
models, sampled with every seed's noise.

    python experiments/measure_null_label.py [--preset digits] [--forget 2 8] [--seeds 3] [--n-per-class 100]
                                             [--out results/digits-null-label]

Writes OUT/summary.json, OUT/summary.md and OUT/null_label.png (mean ± sample std over seeds; each run's bootstrap
interval in the JSON), atomically; refuses an existing OUT unless --overwrite.
"""
import argparse
import io
import tempfile
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from erasediff.accuracy import null_label_leakage
from erasediff.core import NoiseSchedule
from erasediff.evaluate import mean_std
from erasediff.names import METHOD_NAMES
from erasediff.runtime import atomic_dir, atomic_write_bytes, atomic_write_json, load_unet
from erasediff.train import get_preset, load_reference
from erasediff.unlearn import unlearn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="digits")
    ap.add_argument("--forget", nargs="+", type=int, default=[2, 8])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=list(METHOD_NAMES))
    ap.add_argument("--n-per-class", type=int, default=60, help="see null_label_leakage: ceil(n * K / |F|) samples")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    out = args.out or Path("results") / f"{args.preset}-null-label"
    if out.exists() and not args.overwrite: ap.error(f"--out: {out} exists; pass --overwrite to replace it")
    torch.set_num_threads(2)
    preset = get_preset(args.preset)
    schedule, clf = NoiseSchedule(preset.schedule), load_reference(args.preset, "classifier")
    leak = lambda m, seed: null_label_leakage(m, clf, schedule, preset.sampler, args.forget, args.n_per_class, seed=seed)
    runs: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for ref in ("unscrubbed", "retrain"):
        model = load_reference(args.preset, ref)
        runs[ref] = [leak(model, s) for s in range(args.seeds)]
        print(f"{ref}: {[round(r['share'], 3) for r in runs[ref]]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            runs[method] = []
            for seed in range(args.seeds):
                run = Path(tmp) / f"{method}-{seed}"
                unlearn(preset, tuple(args.forget), run, method=method, seed=seed, eval_per_class=0, progress=False)
                runs[method].append(leak(load_unet(run / "unet"), seed))
            print(f"{method}: {[round(r['share'], 3) for r in runs[method]]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = {k: mean_std([r["share"] for r in v]) for k, v in runs.items()}
    n = runs["retrain"][0]["n"]
    summary = {"preset": args.preset, "forget": args.forget, "seeds": args.seeds, "n_samples_per_run": n,
               "sampler": {"w": 0.0, "steps": preset.sampler.steps, "sampler": preset.sampler.sampler},
               "data_share": runs["retrain"][0]["data_share"], "share": rows, "runs": runs,
               "wall_s": round(time.perf_counter() - t0, 1)}
    label = lambda k: METHOD_NAMES[k].label if k in METHOD_NAMES else k.capitalize()
    fmt = lambda r: f"{r['mean']:.3f} ± {r['std']:.3f}" if r["std"] is not None else f"{r['mean']:.3f}"
    md = [f"# Null-label leakage on `{args.preset}`, forgetting {args.forget}", "",
          f"Share of the null label's samples (w = 0, {n} per run, {preset.sampler.sampler.upper()} {preset.sampler.steps} "
          f"steps) that the evaluation classifier assigns to a forgotten class; mean ± sample std over {args.seeds} seeds "
          f"(each seed: its own unlearning run and its own noise). The data holds {summary['data_share']:.0%}; Retrain, "
          "which never saw the forgotten classes, is the reference. `python experiments/measure_null_label.py`", "",
          "| model | null-label samples classified as a forgotten class | minus Retrain (points) |", "|---|---|---|"]
    for k, r in rows.items():
        md.append(f"| {label(k)} | {fmt(r)} | {100 * (r['mean'] - rows['retrain']['mean']):+.1f} |")
    fig = Figure(figsize=(7, 2.8)); ax = fig.subplots()
    names = list(rows)
    ax.bar([label(k) for k in names], [rows[k]["mean"] for k in names], yerr=[rows[k]["std"] or 0 for k in names],
           color=["grey" if k in ("unscrubbed", "retrain") else "tab:red" for k in names])
    ax.axhline(rows["retrain"]["mean"], color="k", lw=0.8, ls="--", label="Retrain")
    ax.set_ylabel("null-label samples\nread as a forgotten class"); ax.legend(fontsize=8); ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO(); fig.savefig(buf, format="png", dpi=110)
    with atomic_dir(out, overwrite=True) as tmp:
        atomic_write_json(tmp / "summary.json", summary)
        atomic_write_bytes(tmp / "summary.md", ("\n".join(md) + "\n").encode())
        atomic_write_bytes(tmp / "null_label.png", buf.getvalue())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
