"""Unlearning on the digits preset with unconditional models, attributes and single images: class forgetting on the
unconditional model (classes 2, 8 and 5, 3 seeds each), attribute forgetting ("even") with both model kinds, and
forgetting 20 training images of class 3 / of class 7; each with the default forget loss of its kind, and some with the
losses it replaced. Each run is `erasediff.unlearn.unlearn` into RUNS/<name> (kept and reused when its metrics.json
exists; `--only` limits which missing runs are made). All 19 runs take about 28 min on 2 CPU cores (40 s to 2 min each).

    python experiments/measure_unconditional_attributes_images.py [--out results/digits-unconditional-attributes-images] [--runs runs/unconditional-attributes-images] [--only NAME ...]

Writes OUT/summary.json, OUT/summary.md and the runs' figures to OUT/figures/ (OUT: results/digits-unconditional-attributes-images by default).
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from erasediff.runtime import atomic_write_bytes, atomic_write_json
from erasediff.data import ForgetSpec, load_digits_set
from erasediff.train import reference_path
from erasediff.unlearn import unlearn

_labels = load_digits_set("train").labels
CLASS_3, CLASS_7 = (tuple(torch.nonzero(_labels == c).flatten()[:20].tolist()) for c in (3, 7))
DEV, UNI = {"forget_loss": "deviate"}, {"forget_loss": "uniform"}
JOBS = {  # name: (model, forget, seed, eval_per_class, config overrides; None: the default, 'retarget' here but cond-even)
    # 1000 samples per unconditional evaluation: a share's sampling error is then 1 point, not 1.7 (320 samples)
    **{f"uncond-class{c}-seed{s}": ("unconditional", (c,), s, 100, None) for c in (2, 8) for s in range(3)},
    **{f"uncond-class5-seed{s}": ("unconditional", (5,), s, 100, None) for s in range(3)},
    "uncond-even-seed0": ("unconditional", ForgetSpec(attribute="even"), 0, 100, None),
    "cond-even-seed0": ("unscrubbed", ForgetSpec(attribute="even"), 0, 16, None),
    **{f"cond-ids-seed{s}": ("unscrubbed", ForgetSpec(ids=CLASS_3), s, 32, None) for s in range(2)},
    **{f"cond-ids7-seed{s}": ("unscrubbed", ForgetSpec(ids=CLASS_7), s, 32, None) for s in range(2)},
    "uncond-ids-seed0": ("unconditional", ForgetSpec(ids=CLASS_3), 0, 32, None),
    # what the defaults replaced: the paper's uniform loss for unconditional models, the released deviate for images
    "uncond-uniform-class2-seed0": ("unconditional", (2,), 0, 100, UNI),
    "uncond-uniform-class8-seed0": ("unconditional", (8,), 0, 100, UNI),
    "cond-ids-deviate-seed0": ("unscrubbed", ForgetSpec(ids=CLASS_3), 0, 32, DEV),
}


def summary_row(name: str, m: dict) -> dict:
    b, a = m["before"], m["after"]
    row = {"run": name, "model": JOBS[name][0], "forget": m["forget"]["description"], "seed": m["seed"],
           "forget_loss": m["config"].get("forget_loss"),
           "unlearn_s": round(m["unlearn_seconds"], 1), "total_s": round(m["total_seconds"], 1)}
    if "forget_share" in a:
        F = set(m["forget"]["classes"])
        other = [c for c in a["class_shares"] if int(c) not in F]
        row.update(forget_share_before=b["forget_share"], forget_share_after=a["forget_share"], n=a["n"],
                   other_max_change=max(abs(a["class_shares"][c] - b["class_shares"][c]) for c in other),
                   # the forgotten share is redistributed: compare the others' shares among the others
                   other_max_change_renormalised=max(abs(a["class_shares"][c] / max(1e-9, 1 - a["forget_share"])
                                                         - b["class_shares"][c] / max(1e-9, 1 - b["forget_share"]))
                                                     for c in other))
    if "acc_forget" in a:
        row.update(acc_forget_before=b["acc_forget"], acc_forget_after=a["acc_forget"], worst_w_forget=a["worst_w_forget"],
                   acc_remain_before=b["acc_remain"], acc_remain_after=a["acc_remain"], worst_w_remain=a["worst_w_remain"])
    key = "memorization" if "memorization" in a else "reproduction"      # runs made before the rename read too
    if key in a:
        for when, d in (("before", b), ("after", a)):
            r = d[key]
            row.update({f"forgotten_dist_{when}": r["forgotten"]["mean"], f"heldout_dist_{when}": r["heldout"]["mean"],
                        f"ratio_{when}": r["ratio"], f"reproduced_{when}": r["reproduced_share"],
                        f"mia_acc_{when}": d["mia"]["accuracy"], f"class_share_{when}": d.get("class_share")})
    return row


def markdown(rows: list[dict]) -> str:
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"
    out = ["# Unconditional models, attributes and single images: digits", "",
           "Every run: `erasediff.unlearn.unlearn` with the preset's EraseDiff settings for its forget loss (the default: "
           "`retarget` for unconditional models and single images, the released `deviate` for a conditional model's "
           "attribute; `uniform` and `deviate` where the loss column names them), made by `python experiments/measure_unconditional_attributes_images.py`.", "",
           "## Unconditional model: share of samples classified as the forgotten class(es)", "",
           "| run | forget | loss | before | after | n | max change of another class (raw / renormalised) |", "|---|---|---|---|---|---|---|"]
    out += [f"| {r['run']} | {r['forget']} | {r['forget_loss']} | {pct(r['forget_share_before'])} | **{pct(r['forget_share_after'])}** | {r['n']} | "
            f"{pct(r['other_max_change'])} / {pct(r['other_max_change_renormalised'])} |" for r in rows if "forget_share_after" in r]
    out += ["", "## Class-conditional model: classifier accuracy, worst guidance scale", "",
            "| run | forget | forgotten before | forgotten after (w) | remaining before | remaining after (w) |",
            "|---|---|---|---|---|---|"]
    out += [f"| {r['run']} | {r['forget']} | {pct(r['acc_forget_before'])} | **{pct(r['acc_forget_after'])}** ({r['worst_w_forget']}) | "
            f"{pct(r['acc_remain_before'])} | {pct(r['acc_remain_after'])} ({r['worst_w_remain']}) |"
            for r in rows if "acc_forget_after" in r]
    out += ["", "## Sample level: 20 training images of one class", "",
            "| run | forget | loss | mean nearest-generated distance, forgotten / held-out, before | after | ratio before → after | "
            "reproduced before → after | MIA accuracy before → after | samples of their class before → after |",
            "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['run']} | {r['forget']} | {r['forget_loss']} | {r['forgotten_dist_before']:.3f} / {r['heldout_dist_before']:.3f} | "
            f"{r['forgotten_dist_after']:.3f} / {r['heldout_dist_after']:.3f} | {r['ratio_before']:.3f} → **{r['ratio_after']:.3f}** | "
            f"{pct(r['reproduced_before'])} → {pct(r['reproduced_after'])} | {pct(r['mia_acc_before'])} → {pct(r['mia_acc_after'])} | "
            f"{pct(r['class_share_before'])} → {pct(r['class_share_after'])} |" for r in rows if "ratio_after" in r]
    out += ["", "| run | unlearning (s) | whole run with evaluation (s) |", "|---|---|---|"]
    out += [f"| {r['run']} | {r['unlearn_s']} | {r['total_s']} |" for r in rows]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/digits-unconditional-attributes-images"))
    ap.add_argument("--runs", type=Path, default=Path("runs/unconditional-attributes-images"))
    ap.add_argument("--only", nargs="+", choices=sorted(JOBS), default=None)
    args = ap.parse_args(argv)
    rows = []
    for name, (which, forget, seed, n_eval, config) in JOBS.items():
        run = args.runs / name
        if (run / "metrics.json").exists():
            m = json.loads((run / "metrics.json").read_text())
        elif args.only is None or name in args.only:
            t = time.perf_counter()
            m = unlearn("digits", forget, run, checkpoint=reference_path("digits", which), seed=seed, config=config,
                        eval_per_class=n_eval, overwrite=True)
            print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        else:
            continue
        rows.append(summary_row(name, m))
        for fig, saved in (("memorization.png", "memorization.png"), ("reproduction.png", "memorization.png"),
                           ("samples_after.png", "samples_after.png")):
            if (run / fig).exists():
                (args.out / "figures").mkdir(parents=True, exist_ok=True)
                shutil.copy(run / fig, args.out / "figures" / f"{name}-{saved}")
    atomic_write_json(args.out / "summary.json", rows)
    atomic_write_bytes(args.out / "summary.md", markdown(rows).encode())
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
