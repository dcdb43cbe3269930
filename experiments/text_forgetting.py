"""Forgetting "eight" from the shipped `digits-text` model: EraseDiff, ESD-u, ESD-x, SalUn and SA side by side on the
same budget, over seeds, against Unscrubbed and Retrain; EraseDiff also from generated forget / remain images (no
training data). Writes results/digits-text/: table.json (every number, mean ± std over seeds), table.md and
forgetting.png (the forgotten share per guidance scale, worst first).

    python experiments/text_forgetting.py                       # 3 seeds, 8 samples per prompt
    python experiments/text_forgetting.py --seeds 1 --n-per-prompt 4 --out /tmp/quick   # a quick look

Each run unlearns with `unlearn` (no evaluation of its own) and is then measured by `concepts.concept_report` with the
run's seed: the same noise as the references' report of that seed (Unscrubbed is every run's "before"). Runs are kept
under <out>/runs/<name>-s<seed>/ (the unlearned pipeline, its card, metrics.json, report.json); a rerun reuses every
finished run, so an interrupted sweep loses nothing."""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from erasediff.concepts import concept_report
from erasediff.core import NoiseSchedule
from erasediff.methods import METHODS
from erasediff.runtime import atomic_write_json
from erasediff.text import TEXT_PRESETS, load_prompt_unet, load_text_reference
from erasediff.train import load_reference, read_manifest, save_png
from erasediff.unlearn import unlearn

ROWS = [("erasediff", "data"), ("erasediff", "generate:256"), ("esd", "data"), ("esd_x", "data"), ("salun", "data"),
        ("sa", "data")]


def row_name(method: str, images: str) -> str:
    return method if images == "data" else f"{method}-{images.replace(':', '')}"


def summarise(reports: list[dict]) -> dict:
    "Mean and std over seeds of the numbers a table shows (shares in %)."
    def stat(vals):
        v = np.asarray(vals, float)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
    ws = list(reports[0]["forgotten"])
    out = {f"forgotten_{split}_w{w}": stat([100 * r["forgotten"][w][split]["value"] for r in reports])
           for w in ws for split in ("train", "paraphrase")}
    out["worst_forgotten"] = stat([100 * r["worst_forgotten"]["share"] for r in reports])
    out["null_prompt"] = stat([100 * r["null_prompt"]["value"] for r in reports])
    out["remaining_train"] = stat([100 * r["remaining_train"]["value"] for r in reports])
    out["remaining_paraphrase"] = stat([100 * r["remaining_paraphrase"]["value"] for r in reports])
    out["nearest"] = stat([100 * np.mean(list(r["nearest"]["fidelity"].values())) for r in reports])
    out["fid_remaining"] = stat([r["fid_remaining"] for r in reports])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/digits-text"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-per-prompt", type=int, default=8)
    ap.add_argument("--rows", nargs="+", default=None, help="method[:images] rows to run (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    preset = TEXT_PRESETS["digits-text"]
    clf = load_reference("digits", "classifier")
    real = preset.load_images()[1].tensors()
    schedule = NoiseSchedule(preset.schedule)
    train_s = read_manifest()["digits-text/retrain"]["train_seconds"]   # the same UNet and steps, trained on an idle machine
    rows = ROWS if args.rows is None else [tuple(r.split(":", 1)) if ":" in r else (r, "data") for r in args.rows]
    table, t0 = {}, time.perf_counter()
    for ref in ("unscrubbed", "retrain"):
        f = args.out / "runs" / f"{ref}.json"
        if not f.exists():
            model = load_text_reference("digits-text", ref)
            atomic_write_json(f, [concept_report(model, clf, schedule, preset.sampler, (8,), real,
                                                 n_per_prompt=args.n_per_prompt, seed=s) for s in range(args.seeds)])
        table[ref] = {"label": ref.capitalize(), **summarise(json.loads(f.read_text()))}
        print(ref, f"worst {table[ref]['worst_forgotten']['mean']:.1f}%", flush=True)
    before = json.loads((args.out / "runs" / "unscrubbed.json").read_text())
    for method, images in rows:
        name, metrics, reports = row_name(method, images), [], []
        for seed in range(args.seeds):
            run = args.out / "runs" / f"{name}-s{seed}"
            if not (run / "report.json").exists():
                if not (run / "metrics.json").exists():
                    unlearn("digits-text", out=run, forget_prompt="eight", method=method, forget_images=images, seed=seed,
                            eval_per_class=0, progress=False, overwrite=True)
                report = concept_report(load_prompt_unet(run / "pipeline"), clf, schedule, preset.sampler, (8,), real,
                                        n_per_prompt=args.n_per_prompt, seed=seed)
                atomic_write_json(run / "report.json", report)
            metrics.append(json.loads((run / "metrics.json").read_text()))
            reports.append(json.loads((run / "report.json").read_text()))
        secs = [m["unlearn_seconds"] for m in metrics]
        table[name] = {"label": METHODS[method].label + ("" if images == "data" else f" ({images})"),
                       **summarise(reports),
                       "unlearn_seconds": {"mean": float(np.mean(secs)), "std": float(np.std(secs, ddof=1)) if len(secs) > 1 else 0.0},
                       "time_ratio_to_training": float(np.mean(secs) / train_s),
                       "fid_ratio": float(np.mean([r["fid_remaining"] / b["fid_remaining"] for r, b in zip(reports, before)])),
                       "peak_rss_mb": float(max(m["peak_rss_mb"] or 0 for m in metrics)),
                       "steps": metrics[0]["steps"], "forget_images": images}
        print(name, f"worst {table[name]['worst_forgotten']['mean']:.1f}%  {np.mean(secs):.0f} s", flush=True)
    atomic_write_json(args.out / "table.json", {"seeds": args.seeds, "n_per_prompt": args.n_per_prompt,
                                                "training_seconds": train_s, "rows": table,
                                                "wall_seconds": time.perf_counter() - t0})
    (args.out / "table.md").write_text(markdown(table, args.seeds, args.n_per_prompt))
    save_png(figure(table), args.out / "forgetting.png")
    print((args.out / "table.md").read_text())


def _c(s: dict, nd: int = 1) -> str:
    return f"{s['mean']:.{nd}f} ± {s['std']:.{nd}f}"


def markdown(table: dict, seeds: int, n: int) -> str:
    ws = sorted({k.split("_w")[1] for k in next(iter(table.values())) if k.startswith("forgotten_train_w")}, key=float)
    head = ("| model | " + " | ".join(f"'eight' shown, w = {w} (train / paraphrase) %" for w in ws) +
            " | worst % | null prompt % | remaining fidelity % (train / paraphrase) | nearest (3, 9) % | FID | FID ratio | s (ratio to training) |")
    lines = [f"Forgetting \"eight\" from the shipped digits-text model: mean ± std over {seeds} seeds, {n} samples per prompt "
             "(9 training templates, 5 paraphrases of \"eight\"; 81 and 45 prompts of the other digits); w is this package's "
             "guidance (Stable Diffusion's scale - 1).", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in table.values():
        cells = [f"{_c(r[f'forgotten_train_w{w}'])} / {_c(r[f'forgotten_paraphrase_w{w}'])}" for w in ws]
        cost = (f"{r['unlearn_seconds']['mean']:.0f} ({r['time_ratio_to_training']:.3f})" if "unlearn_seconds" in r else "—")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {_c(r['worst_forgotten'])} | {_c(r['null_prompt'])} | "
                     f"{_c(r['remaining_train'])} / {_c(r['remaining_paraphrase'])} | {_c(r['nearest'])} | "
                     f"{_c(r['fid_remaining'], 2)} | {r.get('fid_ratio', 1.0):.2f} | {cost} |")
    return "\n".join(lines) + "\n"


def figure(table: dict):
    from matplotlib.figure import Figure
    ws = sorted({k.split("_w")[1] for k in next(iter(table.values())) if k.startswith("forgotten_train_w")}, key=float)
    fig = Figure(figsize=(10, 3.2))
    axes = fig.subplots(1, 3)
    for r in table.values():
        for ax, split in zip(axes[:2], ("train", "paraphrase")):
            m = [r[f"forgotten_{split}_w{w}"]["mean"] for w in ws]
            s = [r[f"forgotten_{split}_w{w}"]["std"] for w in ws]
            ax.errorbar([float(w) for w in ws], m, yerr=s, marker="o", capsize=3, label=r["label"])
            ax.set_title(f"'eight' shown, {split} prompts", fontsize=9); ax.set_xlabel("guidance w")
        axes[2].bar(r["label"], r["remaining_train"]["mean"], yerr=r["remaining_train"]["std"], capsize=3)
    axes[0].set_ylabel("% of samples"); axes[0].set_yscale("symlog", linthresh=1); axes[1].set_yscale("symlog", linthresh=1)
    axes[0].legend(fontsize=7)
    axes[2].set_title("remaining prompt fidelity %", fontsize=9); axes[2].tick_params(axis="x", rotation=60, labelsize=7)
    axes[2].set_ylim(80, 100)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
