"""The reproduction's bookkeeping: a deterministic plan, finished stages reused, damaged ones redone, and a table whose
numbers are those of the run folders. The stages are replaced by fast deterministic fakes here (the real stages run in
nbs/07_reproduce.ipynb); what is tested is the orchestration around them."""
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import erasediff.reproduce as R
from erasediff.cli import main


def _value(*parts) -> float:
    "A deterministic number in [0, 1) from the parts (what a stage 'measured')."
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 16**8


@pytest.fixture
def fake_stages(monkeypatch):
    calls = []

    def unlearn(preset, forget, out, *, method, seed, config=None, eval_per_class=None, progress=True, device=None):
        calls.append(("unlearn", method, seed))
        (out / "unet").mkdir(parents=True)
        (out / "unet" / "weights.bin").write_bytes(f"{method}-{seed}".encode())
        (out / "metrics.json").write_text(json.dumps({"unlearn_seconds": 10 + _value(method, seed), "peak_rss_mb": 500.0}))

    def evaluate(checkpoint, preset, *, out, n_per_class, seed, **kw):
        key = Path(checkpoint).parent.parent.parent.name if Path(checkpoint).name == "unet" else Path(checkpoint).name
        calls.append(("eval", key, seed))
        v = lambda *p: _value(key, seed, *p)
        m = {"accuracy_by_w": {w: {"forget": v("f", w), "remain": v("r", w)} for w in ("0", "0.5", "1")},
             "accuracy_worst": {"forget": v("fw"), "remain": v("rw")},
             "classifier_fd": {"forget": 10 * v("fdf"), "remain": v("fdr")},
             "precision_recall": {"remain": {"precision": v("p"), "recall": v("rc")}},
             "forget_confidence": {"0.5": {"entropy": v("h"), "p_forget": v("pf")}},
             "weight_distance": {"relative": v("wd")},
             "mia": {"avg_loss": {"auc": v("auc")}, "chance": {"avg_loss": {"auc": {"mean": 0.5, "std": 0.03}}}}}
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(m))
        return m

    def relearn(checkpoint, preset, config, *, seed, **kw):
        key = Path(checkpoint).parent.parent.parent.name if Path(checkpoint).name == "unet" else Path(checkpoint).name
        calls.append(("relearn", key, seed))
        return {"forget_after": _value(key, seed, "relearn"), "seed": seed}

    monkeypatch.setattr(R, "unlearn", unlearn)
    monkeypatch.setattr(R, "evaluate_checkpoint", evaluate)
    monkeypatch.setattr(R, "relearn_attack", relearn)
    return calls


CFG = R.ReproduceConfig(seeds=2, methods=("erasediff", "salun"), sweep=False)


def test_plan_is_deterministic_and_complete():
    runs = R.plan(CFG)
    assert runs == R.plan(R.ReproduceConfig(seeds=2, methods=("erasediff", "salun"), sweep=False))
    assert [r.name for r in runs] == ["unscrubbed/seed0", "unscrubbed/seed1", "retrain/seed0", "retrain/seed1",
                                      "erasediff/seed0", "erasediff/seed1", "salun/seed0", "salun/seed1"]
    assert runs[0].stages == ("eval", "relearn") and runs[1].stages == ("relearn",) and runs[4].stages == R.STAGES
    full = R.plan(R.ReproduceConfig())
    assert len(full) == 3 * (2 + len(R.TABLE_METHODS)) and len(set(full)) == len(full)


@pytest.mark.parametrize("kw, msg", [(dict(seeds=0), "seeds"), (dict(methods=("erasediff", "nope")), "nope"),
                                     (dict(methods=("retrain",)), "reference"), (dict(methods=()), "at least one"),
                                     (dict(methods=("sa", "sa")), "repeated"), (dict(preset="mnist9"), "preset"),
                                     (dict(n_per_class=1), "n_per_class")])
def test_bad_config_is_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        R.ReproduceConfig(**kw)
    with pytest.raises(ValueError, match="steps"):
        R.RelearnConfig(steps=0)


def test_finished_runs_are_never_recomputed(tmp_path, fake_stages):
    first = R.reproduce(CFG, tmp_path, progress=False, figures=False)
    n_first = len(fake_stages)
    assert n_first == 2 * 3 + 2 * 2 * 3 and len(first["computed"]) == n_first and first["reused"] == []
    again = R.reproduce(CFG, tmp_path, progress=False, figures=False)
    assert len(fake_stages) == n_first, fake_stages[n_first:]            # nothing ran again
    assert again["computed"] == [] and sorted(again["reused"]) == sorted(first["computed"])
    assert again["rows"] == first["rows"]


def test_damaged_or_partial_runs_are_detected_and_redone(tmp_path, fake_stages):
    R.reproduce(CFG, tmp_path, progress=False, figures=False)
    runs = tmp_path / "runs"
    table_before = (tmp_path / "table.md").read_text()
    # 1. a changed file of a finished stage (a corrupt write): that stage and the later ones are redone
    (runs / "salun/seed1/unlearn/unet/weights.bin").write_bytes(b"garbage")
    # 2. a stage killed before its record: the folder is there, the record is not
    (runs / "erasediff/seed0/eval.done.json").unlink()
    # 3. a record that does not parse (killed mid-write of the record itself)
    (runs / "unscrubbed/seed1/relearn.done.json").write_text("{")
    del fake_stages[:]
    again = R.reproduce(CFG, tmp_path, progress=False, figures=False)
    assert sorted(again["computed"]) == sorted(["salun/seed1:unlearn", "salun/seed1:eval", "salun/seed1:relearn",
                                                "erasediff/seed0:eval", "erasediff/seed0:relearn", "unscrubbed/seed1:relearn"])
    assert sorted(fake_stages) == sorted([("unlearn", "salun", 1), ("eval", "salun", 1), ("relearn", "salun", 1),
                                          ("eval", "erasediff", 0), ("relearn", "erasediff", 0), ("relearn", "unscrubbed", 1)])
    assert (runs / "salun/seed1/unlearn/unet/weights.bin").read_bytes() == b"salun-1"
    assert (tmp_path / "table.md").read_text() == table_before          # the same table as before the damage


def test_table_numbers_are_those_of_the_run_folders(tmp_path, fake_stages):
    R.reproduce(CFG, tmp_path, progress=False, figures=False)
    preset = CFG.get_preset()
    rows = {r["method"]: r for r in json.loads((tmp_path / "table.json").read_text())["rows"]}
    with open(tmp_path / "table.csv") as f:
        csv_rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["unscrubbed", "retrain", "erasediff", "salun"]
    for method in ("erasediff", "salun"):
        evals = [json.loads((tmp_path / f"runs/{method}/seed{s}/eval/metrics.json").read_text()) for s in (0, 1)]
        relearn = [json.loads((tmp_path / f"runs/{method}/seed{s}/relearn.json").read_text()) for s in (0, 1)]
        cost = [json.loads((tmp_path / f"runs/{method}/seed{s}/unlearn/metrics.json").read_text()) for s in (0, 1)]
        expect = {"forget acc w=0": [e["accuracy_by_w"]["0"]["forget"] for e in evals],
                  "forget acc w=0.5": [e["accuracy_by_w"]["0.5"]["forget"] for e in evals],   # a key with a dot
                  "precision": [e["precision_recall"]["remain"]["precision"] for e in evals],
                  "p(forgotten) (w=0.5)": [e["forget_confidence"]["0.5"]["p_forget"] for e in evals],
                  "MIA chance": [e["mia"]["chance"]["avg_loss"]["auc"]["mean"] for e in evals],
                  "weight dist. to Retrain": [e["weight_distance"]["relative"] for e in evals],
                  "forget acc (worst w)": [e["accuracy_worst"]["forget"] for e in evals],
                  "FD remain": [e["classifier_fd"]["remain"] for e in evals],
                  "MIA AUC": [e["mia"]["avg_loss"]["auc"] for e in evals],
                  "relearned forget acc": [r["forget_after"] for r in relearn],
                  "time (s)": [c["unlearn_seconds"] for c in cost]}
        for col, vals in expect.items():
            assert rows[method][col]["mean"] == pytest.approx(np.mean(vals)), (method, col)
            assert rows[method][col]["std"] == pytest.approx(np.std(vals, ddof=1)), (method, col)
            assert float(csv_rows[method][f"{col} mean"]) == pytest.approx(np.mean(vals))
    assert [h for h, _ in R._columns(preset) if rows["salun"][h] is None] == []       # every column found in the records
    # a reference is evaluated once: no spread for its evaluation, a spread over seeds for the attack
    ref = rows["retrain"]
    ev = json.loads((tmp_path / "runs/retrain/seed0/eval/metrics.json").read_text())
    assert ref["MIA AUC"] == {"mean": ev["mia"]["avg_loss"]["auc"], "std": None, "n": 1}
    assert ref["relearned forget acc"]["n"] == 2 and ref["time (s)"] is None
    md = (tmp_path / "table.md").read_text()
    assert "| Retrain (reference) | 2 |" in md and f"{np.mean(expect['MIA AUC']):.3f} ± " in md


def test_cli_reproduce_refuses_bad_input_before_work(tmp_path, capsys):
    assert main(["reproduce", "--seeds", "0", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "seeds" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        main(["reproduce", "--methods", "nope", "--out", str(tmp_path / "r")])


def test_changed_settings_redo_only_the_stages_they_touch(tmp_path, fake_stages):
    from dataclasses import replace
    R.reproduce(CFG, tmp_path, progress=False, figures=False)
    del fake_stages[:]
    again = R.reproduce(replace(CFG, relearn=R.RelearnConfig(steps=7)), tmp_path, progress=False, figures=False)
    assert len(again["computed"]) == 2 * 2 + 2 * 2 and all(s.endswith(":relearn") for s in again["computed"])
    assert {c[0] for c in fake_stages} == {"relearn"}
    del fake_stages[:]
    third = R.reproduce(replace(CFG, n_per_class=5, relearn=R.RelearnConfig(steps=7)), tmp_path, progress=False, figures=False)
    assert sorted({s.split(":")[1] for s in third["computed"]}) == ["eval", "relearn"] and not any(c[0] == "unlearn" for c in fake_stages)
