"""Smoke tests of the benchmark scripts of experiments/: they must run and print their table."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "experiments"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_unlearn_runs_and_records(tmp_path, capsys):
    from erasediff.train import reference_path
    try:
        reference_path("digits", "unscrubbed"); reference_path("digits", "classifier")
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(f"shipped digits models not available: {e}")
    out = tmp_path / "rows.jsonl"
    load("sweep_unlearn").main(["--grid", '[{"epochs": 1, "rem_num": 64}]', "--at", "1", "--n-forget", "2",
                                "--n-remain", "1", "--jsonl", str(out)])
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]                       # --at 1 and the end of the run (2 outer steps)
    assert all(0 <= r["acc_forget"] <= 1 and 0 <= r["acc_remain"] <= 1 for r in rows)
    assert set(rows[0]["per_class"]) == {str(c) for c in range(10)}
    assert "forget acc" in capsys.readouterr().out


def test_sweep_unlearn_honours_parameter_subset():
    "The sweep trains the `params` subset as unlearn() does: a pattern that matches no parameter is an error."
    from erasediff.train import reference_path
    try:
        reference_path("digits", "unscrubbed"); reference_path("digits", "classifier")
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(f"shipped digits models not available: {e}")
    with pytest.raises(ValueError, match="match no parameter"):
        load("sweep_unlearn").main(["--grid", '[{"epochs": 1, "rem_num": 64, "params": ["no_such_layer"]}]',
                                    "--n-forget", "1", "--n-remain", "1"])


def test_bench_methods_prints_one_row_per_method_and_the_speed_ratios(tmp_path, capsys, monkeypatch):
    from dataclasses import replace
    from erasediff.train import reference_path
    try:
        reference_path("digits", "unscrubbed"); reference_path("digits", "classifier")
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(f"shipped digits models not available: {e}")
    import erasediff.methods as U
    real = U.default_config
    tiny = dict(epochs=1, rounds=1, rem_num=64, batch_size=32, forget_batch_size=16)   # 2 steps per method
    extra = {"sa": dict(replay_per_class=2, replay_steps=2, fisher_images=2, fisher_timesteps=2)}
    monkeypatch.setattr(U, "default_config", lambda p, m, *a: replace(real(p, m, *a), **tiny, **extra.get(m, {})))
    out = tmp_path / "m.json"
    load("bench_methods").main(["--methods", "erasediff", "sa", "salun", "--check-every", "1", "--probe-forget", "2",
                                "--n-forget", "2", "--n-remain", "2", "--json", str(out)])
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["erasediff", "sa", "salun"]
    assert all(r["default_steps"] == 2 and r["max_steps"] == 8 and len(r["probes"]) >= 1 for r in rows)
    assert all(0 <= r["eval"]["forget_w0"] <= 1 and r["eval"]["fd_remain"] >= 0 and 0 <= r["eval"]["mia_auc"] <= 1
               for r in rows)
    assert rows[1]["prep_s"] > 0
    for m in ("| erasediff |", "| sa |", "| salun |", "speed EraseDiff vs sa", "speed EraseDiff vs salun"):
        assert m in text, m


def test_measure_null_label_writes_its_summary(tmp_path, capsys):
    "One method, one seed, a few samples: the summary names Unscrubbed, Retrain and the method; --out is not overwritten."
    from erasediff.train import reference_path
    try:
        reference_path("digits", "unscrubbed"); reference_path("digits", "retrain"); reference_path("digits", "classifier")
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(f"shipped digits models not available: {e}")
    out = tmp_path / "nl"
    load("measure_null_label").main(["--seeds", "1", "--methods", "so", "--n-per-class", "2", "--out", str(out)])
    s = json.loads((out / "summary.json").read_text())
    assert set(s["share"]) == {"unscrubbed", "retrain", "so"} and s["n_samples_per_run"] == 10
    assert all(0 <= r["mean"] <= 1 for r in s["share"].values()) and (out / "null_label.png").exists()
    assert "| SO |" in (out / "summary.md").read_text() and "minus Retrain" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        load("measure_null_label").main(["--seeds", "1", "--methods", "so", "--out", str(out)])


def test_measure_attacks_runs_every_part_and_resumes(tmp_path, capsys):
    "A one-step budget, one seed, a tiny probe: every table is written and a rerun reuses every model and record."
    out = tmp_path / "att"
    argv = ["--seeds", "1", "--unseen-seeds", "1", "--n-per-class", "2", "--utility-forget", "2", "--utility-remain", "1",
            "--n-per-label", "2", "--attack-steps", "0", "1", "--budget", "rem_num=32", "epochs=1", "rounds=1", "batch_size=32", "--out", str(out)]
    load("measure_attacks").main(argv)
    s = json.loads((out / "summary.json").read_text())
    assert s["wall_ratio_robust_to_default"] > 0 and set(s["utility"]) == {"erasediff", "robust", "retrain"}
    for name in ("table", "control", "labels", "unseen"): assert "Retrain" in (out / f"{name}.md").read_text(), name
    assert "EraseDiff --robust" in (out / "table.md").read_text()
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json") if "seed0.json" == p.name}
    load("measure_attacks").main(argv)
    assert stamp and all(p.stat().st_mtime_ns == t for p, t in stamp.items())       # nothing recomputed
    load("summarize_ablations").main([str(out), "--out", str(tmp_path / "abl.md")])   # the ablation table reads it
    row, = json.loads((tmp_path / "abl.json").read_text())
    u, w = json.loads((out / "summary.json").read_text())["utility"], row["utility"]["w"][-1]
    assert row["forget"] == [2, 8] and row["seeds"] == 1 and row["m"] == s["robust"]["robust_steps"]
    assert row["utility"]["remain_vs_erasediff"][w] == pytest.approx(
        100 * (u["robust"]["0"]["remain_by_w"][w] - u["erasediff"]["0"]["remain_by_w"][w]))
    assert row["utility"]["forgotten_worst"][w] == pytest.approx(100 * u["robust"]["0"]["forget_by_w"][w])
    assert "{2, 8}" in (tmp_path / "abl.md").read_text()
    assert row["null"] == 0 and "null-label weight" in (tmp_path / "abl.md").read_text()
    load("measure_denoising").main([str(tmp_path / "abl.json"), "--out", str(tmp_path / "den")])   # what each model knows
    plain, robust = json.loads((tmp_path / "den" / "table.json").read_text())
    assert (plain["model"], plain["seeds"]) == ("EraseDiff", 1) and robust["model"].startswith("--robust")
    for r in (plain, robust):
        for b in ("label", "null"):               # Retrain is further from the forgotten classes than Unscrubbed
            assert r["retrain"][b] > r["unscrubbed"][b] > 0 and len(r[b]["removed"]) == 1
            assert r[b]["removed"][0] == pytest.approx((r[b]["error"] - r["unscrubbed"][b]) / (r["retrain"][b] - r["unscrubbed"][b]))
    assert (tmp_path / "den" / "figures" / "removed_vs_auc.png").stat().st_size > 0
