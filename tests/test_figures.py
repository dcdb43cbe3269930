"""Tests of erasediff.figures that need no model: the recovery figure drawn from run folders made here."""
import json
from dataclasses import asdict

import pytest

from erasediff.figures import plot_recovery_by_method, relearn_records
from erasediff.reproduce import RelearnConfig

CONFIG = RelearnConfig(n_images=4, steps=(0, 5, 10), n_per_class=10, n_per_label=0)


def _record(seed: int, hits: list[int]) -> dict:
    "A relearning record of two forgotten classes: `hits` of 10 samples per class at each step, at both scales."
    pts = [{"step": s, "counts": {w: [[h, 10], [h, 10]] for w in ("0", "0.5")}, "recognition": h / 10}
           for s, h in zip(CONFIG.steps, hits)]
    return {"attack": "relearn-n4-lr0.0003", "seed": seed, "points": pts, "ids": [0, 1, 2, 3], "losses": []}


def _run(root, method: str, seed: int, hits: list[int], evaluated: bool = True) -> None:
    d = root / "runs" / method / f"seed{seed}"
    (d / "eval").mkdir(parents=True)
    if evaluated:
        (d / "eval" / "metrics.json").write_text("{}"); (d / "eval.done.json").write_text("{}")
    (d / "relearn.json").write_text(json.dumps({"relearn": _record(seed, hits)}))
    (d / "relearn.done.json").write_text(json.dumps({"settings": {"relearn": asdict(CONFIG)}}))


def test_recovery_figure_reads_every_seed_and_draws_identical_methods_once(tmp_path):
    with pytest.raises(FileNotFoundError, match="reproduce"):
        relearn_records(tmp_path)
    for s in (0, 1):
        _run(tmp_path, "retrain", s, [0, 2, 5], evaluated=s == 0)    # a reference is evaluated once, attacked at every seed
        _run(tmp_path, "erasediff", s, [0, 4, 9])
        _run(tmp_path, "so", s, [0, 4, 9])                          # identical to EraseDiff
        _run(tmp_path, "neggrad", s, [9, 10, 10])
    (tmp_path / "runs" / "neggrad" / "seed1" / "relearn.done.json").unlink()   # an unfinished stage is not read
    recs, config = relearn_records(tmp_path)
    assert config == CONFIG
    assert {m: [r["seed"] for r in v] for m, v in recs.items()} == {"retrain": [0, 1], "erasediff": [0, 1], "so": [0, 1],
                                                                   "neggrad": [0]}
    ax = plot_recovery_by_method(tmp_path, n_boot=50).axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "Retrain (95 %)" in labels and "EraseDiff = SO (identical at fixed λ)" in labels and "SO" not in labels
    curves = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert curves["EraseDiff = SO (identical at fixed λ)"] == pytest.approx([0.0, 0.4, 0.9])
    assert curves["NegGrad"] == pytest.approx([0.9, 1.0, 1.0])
