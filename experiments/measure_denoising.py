"""Why is an unlearned model relearned faster than Retrain? Measures what each model still knows of the forgotten
classes: its denoising error on held-out images of them (never unlearned, never attacked), through the forgotten label
and through the null label, against Unscrubbed (knows them) and Retrain (never saw them), beside the relearning AUC
ratio that measure_attacks gave the same models.

For every forget pair that `measure_attacks.py` and `summarize_ablations.py` measured (each row of the ablation tables
given, plus plain EraseDiff of each pair), every seed's model is scored on the same images, timesteps and noise:

  error     mean squared error of the noise prediction, over the held-out forgotten images x 8 timesteps
  removed   (error - Unscrubbed's) / (Retrain's - Unscrubbed's): the share of Retrain's ignorance of the classes that
            the model reaches (1: as ignorant as Retrain; 0: as knowing as Unscrubbed), through either label

    python experiments/measure_denoising.py results/digits-attacks-ablations*/table.json --out results/digits-denoising

OUT gets table.md, table.json and figures/removed_vs_auc.png (one point per pair and setting).
"""
import argparse
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from erasediff.attacks import attack_context, save_figure
from erasediff.core import eps_loss, null_label
from erasediff.runtime import atomic_write_bytes, atomic_write_json, load_unet
from erasediff.train import reference_path

ATTACK = "relearn-n10-lr0.0003"  # the relearning attack the AUC ratios are read from
N_T = 8                    # timesteps per image, spread over the schedule


@torch.no_grad()
def denoising_error(unet, schedule, x0: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> float:
    "Mean squared noise-prediction error of `unet` on x0 (B,C,H,W) at timesteps t (B,) with `noise`, under `labels` (B,)."
    unet.eval()
    errs = [eps_loss(unet, x, y, schedule, noise=n, t=tt, reduction="none")
            for x, y, tt, n in zip(x0.split(256), labels.split(256), t.split(256), noise.split(256))]
    return float(torch.cat(errs).mean())


def probe_batch(ctx, seed: int = 0):
    "Every held-out forgotten image, each at N_T timesteps spread over the schedule, with fixed noise."
    x, y = ctx.splits.heldout_forget.batch(torch.arange(len(ctx.splits.heldout_forget)))
    t = torch.linspace(0, ctx.schedule.T - 1, N_T + 2)[1:-1].round().long()
    x, y = x.repeat_interleave(N_T, 0), y.repeat_interleave(N_T, 0)
    t = t.repeat(len(x) // N_T)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x, y, t, noise


def score(folder, schedule, batch) -> dict:
    "The model's error through the forgotten label and through the null label."
    unet = load_unet(folder)
    x, y, t, noise = batch
    return {"label": denoising_error(unet, schedule, x, y, t, noise),
            "null": denoising_error(unet, schedule, x, torch.full_like(y, null_label(unet)), t, noise)}


def _ratio(row: dict) -> str:
    "The AUC ratio, or n/a where there is none (Retrain never recognised the classes)."
    return "n/a" if row["auc_ratio"] is None else f"{row['auc_ratio']:.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="+", type=Path, help="summarize_ablations' table.json files")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows, by_pair = [], {}
    for table in args.tables:
        for row in json.loads(table.read_text()):
            folder = table.parent / row["folder"]                # an ablation's folder, or a pair's main one beside it
            folder = folder if folder.is_dir() else table.parent.parent / row["folder"]
            by_pair.setdefault(tuple(row["forget"]), []).append((row, folder))
    for pair, settings in sorted(by_pair.items()):
        ctx = attack_context("digits", list(pair))
        batch, sc = probe_batch(ctx), lambda folder: score(folder, ctx.schedule, batch)
        home = max(settings, key=lambda rf: rf[0]["seeds"])[1]          # the pair's folder with the most seeds
        retrain = json.loads((home / "summary.json").read_text())["retrain"]   # 'retrain': the shipped one, else a folder
        ref = {"unscrubbed": sc(reference_path("digits", "unscrubbed")),
               "retrain": sc(reference_path("digits", "retrain") if retrain == "retrain" else Path(retrain))}
        plain = json.loads((home / "table.json").read_text())["summary"][ATTACK]["erasediff"]
        groups = [("EraseDiff", home / "runs/models/erasediff", plain["auc_ratio"], {"seeds": plain["seeds"]})]
        groups += [(f"--robust r {r['r']}, m {r['m']}, lr {r['lr']:g}, beta {r['beta']:g}"
                    + (f", null-label weight {r['null']:g}" if r.get("null") else ""), f / "runs/models/robust", r["auc_ratio"], r)
                   for r, f in settings]
        seen = set()
        for name, models, auc, r in groups:
            seeds = sorted(p for p in models.glob("seed*") if (p / "metrics.json").is_file())[:r.get("seeds", 5)]
            key = (str(models.resolve()), len(seeds))
            if not seeds or key in seen: continue
            seen.add(key)
            scores = [sc(s) for s in seeds]
            row = {"forget": list(pair), "model": name, "seeds": len(seeds), "auc_ratio": auc["value"],
                   "auc_ci95": auc["ci95"], **ref}
            for branch in ("label", "null"):
                e = np.array([s[branch] for s in scores])
                gap = ref["retrain"][branch] - ref["unscrubbed"][branch]
                row[branch] = {"error": e.mean().item(), "removed": ((e - ref["unscrubbed"][branch]) / gap).tolist()}
            rows.append(row)
            print(f"{pair} {name}: removed label {np.mean(row['label']['removed']):.2f} null {np.mean(row['null']['removed']):.2f}"
                  f" AUC ratio {_ratio(row)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "table.json", rows)
    lines = ["| forget | model | seeds | error, forgotten label: Unscrubbed / Retrain / model | removed (label) | "
             "error, null label: Unscrubbed / Retrain / model | removed (null) | AUC ratio to Retrain |", "|" + "---|" * 8]
    for r in rows:
        cell = lambda b: f"{r['unscrubbed'][b]:.4f} / {r['retrain'][b]:.4f} / {r[b]['error']:.4f}"
        rem = lambda b: f"{np.mean(r[b]['removed']):.2f} [{min(r[b]['removed']):.2f}, {max(r[b]['removed']):.2f}]"
        lines.append(f"| {{{', '.join(map(str, r['forget']))}}} | {r['model']} | {r['seeds']} | {cell('label')} | "
                     f"{rem('label')} | {cell('null')} | {rem('null')} | {_ratio(r)} |")
    lines += ["", f"Denoising error: mean squared error of the noise prediction on every held-out image of the forgotten "
              f"classes (none of them unlearned or attacked), each at {N_T} timesteps spread over the schedule, the same "
              "noise for every model. Removed: (model - Unscrubbed) / (Retrain - Unscrubbed), the mean over seeds [lowest, "
              "highest]. AUC ratio: the 10-image / lr 3e-4 relearning attack's, from measure_attacks (the same models)."]
    atomic_write_bytes(args.out / "table.md", ("\n".join(lines) + "\n").encode())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, branch in zip(axes, ("label", "null")):
        for pair, marker in zip(sorted(by_pair), "osD"):
            pts = [r for r in rows if tuple(r["forget"]) == pair and r["auc_ratio"] is not None]   # no ratio: not drawn
            ax.scatter([np.mean(r[branch]["removed"]) for r in pts], [r["auc_ratio"] for r in pts], marker=marker,
                       label=f"{{{pair[0]}, {pair[1]}}}")
            for r in pts:
                if "null-label" in r["model"] or r["model"] == "EraseDiff":   # the points the text reads
                    ax.annotate("null-label weight 1" if "null-label" in r["model"] else "plain",
                                (np.mean(r[branch]["removed"]), r["auc_ratio"]), textcoords="offset points",
                                xytext=(5, 4), fontsize=7)
        ax.axhline(1, color="grey", lw=0.8, ls="--")
        ax.axvline(1, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"share of Retrain's ignorance reached ({'forgotten' if branch == 'label' else 'null'} label)")
    axes[0].set_ylabel("relearning AUC ratio to Retrain")
    axes[0].legend(title="forget")
    fig.suptitle("What the model still denoises of the forgotten classes vs how fast they come back")
    fig.tight_layout()
    save_figure(fig, args.out / "figures" / "removed_vs_auc.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
