"""One table of the robust option's ablations: every folder that `measure_attacks.py --robust ... --out DIR` filled
(each with its table.json and summary.json) as a row: r, m, the simulated attacker's lr, beta, seeds, the relearning
attack's AUC and steps-to-50 % ratios to Retrain (95 % intervals) and the unlearning wall-time ratio to plain EraseDiff
from `bench_robust.py --json` (--cost; the runs of the measurements themselves were timed under different loads).

    python experiments/summarize_ablations.py results/digits-attacks results/digits-attacks-ablations/*/ \
        --cost results/digits-attacks-ablations/cost.json --out results/digits-attacks-ablations/table.md
"""
import argparse
import json
import sys
from pathlib import Path

from erasediff.runtime import atomic_write_bytes

ATTACK = "relearn-n10-lr0.0003"


def _bar(s: dict) -> str:
    if s["value"] is None: return "n/a"                    # e.g. Retrain never recognised: no ratio
    lo, hi = s["ci95"] or (float("nan"), float("nan"))
    return f"{s['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def row(folder: Path, cost: dict) -> dict:
    "One ablation folder's settings and figures; its wall-time ratio from `cost` (bench_robust's rows) when there."
    summary = json.loads((folder / "summary.json").read_text())
    table = json.loads((folder / "table.json").read_text())
    rob, cfg = table["summary"][ATTACK]["robust"], summary["robust"]
    seeds = table["seeds"]
    rm = f"r{cfg['robust_every']} m{cfg['robust_steps']} "                # the attacker's lr does not change the cost
    bench = next((v for k, v in cost.items() if k.startswith(rm)), None)
    return {"folder": folder.name, "forget": summary["forget"], "r": cfg["robust_every"], "m": cfg["robust_steps"],
            "lr": cfg["robust_lr"], "beta": cfg.get("robust_weight", 1.0), "null": cfg.get("forget_null", 0.0),
            "seeds": len(seeds), "auc_ratio": rob["auc_ratio"], "steps_ratio": rob["steps_ratio"],
            "wall_ratio": bench["ratio"] if bench and not cfg.get("forget_null") else None,   # the null term costs more
            "utility": utility(summary.get("utility") or {})}


def utility(u: dict) -> dict | None:
    """From measure_attacks' utility part: per guidance scale, the robust run's forgotten-class recognition at its worst
    seed and its remaining-class accuracy minus plain EraseDiff's at the same seeds (points, mean over seeds)."""
    if not u.get("robust") or not u.get("erasediff"): return None
    rob, ed = u["robust"], u["erasediff"]
    seeds = [s for s in rob if s in ed]
    ws = sorted(next(iter(rob.values()))["forget_by_w"], key=float)
    return {"seeds": len(seeds), "w": ws,
            "forgotten_worst": {w: 100 * max(rob[s]["forget_by_w"][w] for s in rob) for w in ws},
            "remain_vs_erasediff": {w: 100 * sum(rob[s]["remain_by_w"][w] - ed[s]["remain_by_w"][w] for s in seeds) / len(seeds)
                                    for w in ws}}


def _util(u: dict | None) -> str:
    if u is None: return "n/a | n/a"
    f, d = u["forgotten_worst"], u["remain_vs_erasediff"]
    return " / ".join(f"{f[w]:.1f}" for w in u["w"]) + " | " + " / ".join(f"{d[w]:+.1f}" for w in u["w"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--cost", type=Path, default=None, help="bench_robust.py's --json (the wall-time column)")
    ap.add_argument("--out", type=Path, required=True, help="the markdown table (a .json beside it holds the rows)")
    args = ap.parse_args(argv)
    cost = json.loads(args.cost.read_text()) if args.cost else {"rows": {}, "epochs": None}
    rows = [row(f, cost["rows"]) for f in args.folders if (f / "table.json").is_file() and (f / "summary.json").is_file()]
    if not rows: ap.error("no folder holds a table.json and a summary.json")
    rows.sort(key=lambda r: (r["forget"], r["r"], r["m"], r["lr"], r["beta"], r["null"], -r["seeds"]))
    ws = next((r["utility"]["w"] for r in rows if r["utility"]), None)
    scales = "w = " + " / ".join(ws) if ws else "w"
    lines = ["| forget | r | m | attacker lr | beta | null-label weight | seeds | AUC ratio to Retrain | steps ratio to Retrain | "
             f"wall time / EraseDiff's | forgotten, worst seed (%, {scales}) | remaining minus EraseDiff's (points, {scales}) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = f"{r['wall_ratio']:.2f}x" if r["wall_ratio"] is not None else "n/a"
        forget = "{" + ", ".join(map(str, r["forget"])) + "}"
        lines.append(f"| {forget} | {r['r']} | {r['m']} | {r['lr']:g} | {r['beta']:g} | {r['null']:g} | {r['seeds']} | {_bar(r['auc_ratio'])} | "
                     f"{_bar(r['steps_ratio'])} | {wall} | {_util(r['utility'])} |")
    lines += ["", "EraseDiff's robust option on digits: every r outer steps, m Adam steps at the "
              "attacker lr on forget images, then beta times the forget loss' gradient at the attacked weights; null-label weight: the forget loss' deviation also through the null label (forget_null). Attack: "
              "10 held-out images at lr 3e-4, recognition at steps 0, 5, 10, 20, 50, 100 (100 samples per class per "
              "point); ratios < 1 are better than Retrain, 95 % intervals from the paired bootstrap over seeds and "
              "samples. Utility (measure_attacks' utility part, at the seeds it ran): the forgotten classes' recognition at the "
              "worst seed, and the remaining classes' accuracy minus plain EraseDiff's at the same seeds." + (f" Wall time: median of {cost['reps']} runs of {cost['epochs']} outer epoch(s) each over plain "
              f"EraseDiff's, interleaved ({cost['threads']} thread, load {cost['load'][0]:.1f}-{cost['load'][1]:.1f}; "
              "bench_robust.py)." if args.cost else "")]
    atomic_write_bytes(args.out, ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(args.out.with_suffix(".json"), json.dumps(rows, indent=1).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
