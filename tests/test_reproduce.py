"""The reproduction's bookkeeping: a deterministic plan, finished stages reused, damaged ones redone, and a table whose
numbers are those of the run folders. The stages are replaced by fast deterministic fakes here (the real stages run in
nbs/13_reproduce.ipynb); what is tested is the orchestration around them."""
import csv
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import _fake_stages as fakes
import erasediff.reproduce as R
from erasediff.runtime import ResultsInUseError
from erasediff.cli import main
from erasediff.methods import default_config


@pytest.fixture
def fake_stages(monkeypatch):
    fakes.CALLS.clear()
    fakes.install(monkeypatch.setattr)
    return fakes.CALLS


CFG = R.ReproduceConfig(seeds=2, methods=("erasediff", "salun"), sweep=False, jobs=1)


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
                                     (dict(n_per_class=1), "n_per_class"), (dict(jobs=0), "jobs")])
def test_bad_config_is_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        R.ReproduceConfig(**kw)
    for kw, flag in ((dict(steps=0), "steps"), (dict(steps=(5, 0)), "increasing"), (dict(n_per_label=-1), "n_per_label"),
                     (dict(n_images=0), "n_images"), (dict(lr=0.0), "lr")):
        with pytest.raises(ValueError, match=f"relearn.*{flag}"):
            R.RelearnConfig(**kw)


def test_finished_runs_are_never_recomputed(tmp_path, fake_stages):
    first = R.reproduce(CFG, tmp_path, progress=False)
    n_first = len(fake_stages)
    assert n_first == 2 * 3 + 2 * 2 * 3 and len(first["computed"]) == n_first and first["reused"] == []
    again = R.reproduce(CFG, tmp_path, progress=False)
    assert len(fake_stages) == n_first, fake_stages[n_first:]            # nothing ran again
    assert again["computed"] == [] and sorted(again["reused"]) == sorted(first["computed"])
    assert again["rows"] == first["rows"]


def test_damaged_or_partial_runs_are_detected_and_redone(tmp_path, fake_stages):
    R.reproduce(CFG, tmp_path, progress=False)
    runs = tmp_path / "runs"
    table_before = (tmp_path / "table.md").read_text()
    # 1. a changed file of a finished stage (a corrupt write): that stage and the later ones are redone
    (runs / "salun/seed1/unlearn/unet/weights.bin").write_bytes(b"garbage")
    # 2. a stage killed before its record: the folder is there, the record is not
    (runs / "erasediff/seed0/eval.done.json").unlink()
    # 3. a record that does not parse (killed mid-write of the record itself)
    (runs / "unscrubbed/seed1/relearn.done.json").write_text("{")
    del fake_stages[:]
    again = R.reproduce(CFG, tmp_path, progress=False)
    # (a redone evaluation does not redo the attack: that reads the model, not its evaluation)
    assert sorted(again["computed"]) == sorted(["salun/seed1:unlearn", "salun/seed1:eval", "salun/seed1:relearn",
                                                "erasediff/seed0:eval", "unscrubbed/seed1:relearn"])
    assert sorted(fake_stages) == sorted([("unlearn", "salun", 1), ("eval", "salun", 1), ("relearn", "salun", 1),
                                          ("eval", "erasediff", 0), ("relearn", "unscrubbed", 1)])
    assert (runs / "salun/seed1/unlearn/unet/weights.bin").read_bytes() == b"salun-1"
    assert (tmp_path / "table.md").read_text() == table_before          # the same table as before the damage


def test_table_numbers_are_those_of_the_run_folders(tmp_path, fake_stages):
    R.reproduce(CFG, tmp_path, progress=False)
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
                  "relearn AUC": [r["auc"] for r in relearn],
                  "relearn steps to 50 %": [r["steps_to_level"] for r in relearn],
                  "null-label leakage": [r["null_leakage"] for r in relearn],
                  "neighbour-label leakage": [r["neighbour_leakage"] for r in relearn],
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
    assert ref["relearn AUC"]["n"] == 2 and ref["time (s)"] is None
    md = (tmp_path / "table.md").read_text()
    assert "| Retrain (reference) | 2 |" in md and f"{np.mean(expect['MIA AUC']):.3f} ± " in md


def test_cli_reproduce_refuses_bad_input_before_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--seeds", "0", "--out", str(tmp_path / "r"), "--quiet"])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["reproduce", "--methods", "so", "so", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--methods" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        main(["reproduce", "--methods", "nope", "--out", str(tmp_path / "r")])


def test_changed_settings_redo_only_the_stages_they_touch(tmp_path, fake_stages):
    from dataclasses import replace
    R.reproduce(CFG, tmp_path, progress=False)
    del fake_stages[:]
    again = R.reproduce(replace(CFG, relearn=R.RelearnConfig(steps=(0, 7))), tmp_path, progress=False)
    assert len(again["computed"]) == 2 * 2 + 2 * 2 and all(s.endswith(":relearn") for s in again["computed"])
    assert {c[0] for c in fake_stages} == {"relearn"}
    del fake_stages[:]
    third = R.reproduce(replace(CFG, n_per_class=5, relearn=R.RelearnConfig(steps=(0, 7))), tmp_path, progress=False)
    assert sorted({s.split(":")[1] for s in third["computed"]}) == ["eval"] and {c[0] for c in fake_stages} == {"eval"}


def test_sweep_points_are_reused_only_with_the_same_settings(monkeypatch, tmp_path):
    "The lambda sweep's point files carry their settings: a rerun reuses them; other overrides or probes redo them."
    calls = []

    def unlearn(preset, forget, out, *, method, seed, config=None, callback=None, **kw):
        calls.append(config["lam"])
        for step in range(1, 1000):
            callback(step, None, {})

    monkeypatch.setattr(R, "unlearn", unlearn)
    monkeypatch.setattr(R, "forgetting_probe", lambda *a, **k: {"forget": 0.5, "remain": 0.9, "fd_remain": 1.0})
    cfg = R.ReproduceConfig(seeds=1, methods=("erasediff",), unlearn_overrides={"epochs": 1})
    splits = SimpleNamespace(remain=SimpleNamespace(tensors=lambda: (None,)))
    run = lambda c, **k: R.tradeoff_sweep(tmp_path, c, classifier=None, splits=splits, lams=(0.1, 1.0), progress=False, **k)
    pts = run(cfg)["points"]
    steps = replace(default_config(cfg.get_preset()), epochs=1).steps
    at = [round(steps / 2), steps]
    assert calls == [0.1, 1.0] and [(p["lam"], p["step"]) for p in pts] == [(0.1, at[0]), (0.1, at[1]), (1.0, at[0]), (1.0, at[1])]
    assert run(cfg)["points"] == pts and calls == [0.1, 1.0]                       # reused
    run(cfg, n_forget=4)                                                            # another probe: recomputed
    assert calls == [0.1, 1.0] * 2
    run(R.ReproduceConfig(seeds=1, methods=("erasediff",), unlearn_overrides={"epochs": 1, "lr": 1e-5}))
    assert calls == [0.1, 1.0] * 3                                                  # other overrides: recomputed
    f = tmp_path / "runs" / "sweep" / "lam0.1.json"
    f.write_text(json.dumps({"lam": 0.1, "points": []}))                            # a record without settings
    run(R.ReproduceConfig(seeds=1, methods=("erasediff",), unlearn_overrides={"epochs": 1, "lr": 1e-5}))
    assert calls == [0.1, 1.0] * 3 + [0.1]


def test_parallel_workers_give_the_same_results_and_resume(tmp_path, fake_stages):
    "Runs spread over 2 worker processes: the same stages and table as one process; a rerun reuses everything."
    from dataclasses import replace
    serial = R.reproduce(CFG, tmp_path / "serial", progress=False)
    par = R.reproduce(replace(CFG, jobs=2), tmp_path / "par", progress=False, worker_setup=fakes.install)
    assert par["jobs"] == 2 and sorted(par["computed"]) == sorted(serial["computed"])
    assert (tmp_path / "par/table.csv").read_text() == (tmp_path / "serial/table.csv").read_text()
    again = R.reproduce(replace(CFG, jobs=2), tmp_path / "par", progress=False, worker_setup=fakes.install)
    assert again["computed"] == [] and sorted(again["reused"]) == sorted(serial["computed"])


def test_a_second_writer_is_refused(tmp_path, fake_stages):
    held = R.lock_folder(tmp_path, ".reproduce.lock", "erasediff reproduce")
    try:
        with pytest.raises(ResultsInUseError, match="another `erasediff reproduce`"):
            R.reproduce(CFG, tmp_path, progress=False)
        assert not (tmp_path / "runs").exists()
        assert main(["reproduce", "--seeds", "1", "--methods", "neggrad", "--out", str(tmp_path), "--quiet"]) == 2
    finally:
        held.close()
    R.reproduce(CFG, tmp_path, progress=False)                     # released: runs


def _token_processes(token: str) -> list[int]:
    "Pids of live processes whose environment holds `token` (Linux /proc)."
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit(): continue
        try:
            if token.encode() in (d / "environ").read_bytes(): pids.append(int(d.name))
        except OSError: pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("when", ["starting", "busy"])
def test_workers_die_with_a_killed_reproduce(tmp_path, when):
    """SIGKILL of `reproduce` leaves no worker writing on, whether the worker was still starting (importing) or busy
    with a stage: it exits once its parent is gone and never records the stage."""
    import os, signal, subprocess, sys, time, uuid
    token = f"ERASEDIFF_TEST_{uuid.uuid4().hex}"
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import erasediff.reproduce as R, _fake_stages as fakes\n"
        "if __name__ == '__main__':\n"
        "    import multiprocessing as mp\n"
        "    out = R.Path(sys.argv[1])\n"
        "    cfg = R.ReproduceConfig(seeds=1, methods=('salun',), sweep=False, jobs=1)\n"
        "    pool = R._pool(cfg, 1, 1, mp.get_context('spawn').Queue(), fakes.install_slow)\n"
        "    pool.submit(R._worker_task, ('run', ('salun', 0)), out)\n"
        "    (out / 'submitted').write_text('')\n"
        "    time.sleep(120)\n")
    out = tmp_path / "out"; out.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(out)], env={**os.environ, token: "1"})
    wait_for = out / ("submitted" if when == "starting" else "started-salun-0")
    for _ in range(1200):
        if wait_for.exists(): break
        time.sleep(0.05)
    assert wait_for.exists()
    os.kill(parent.pid, signal.SIGKILL); parent.wait()
    for _ in range(300):
        alive = [p for p in _token_processes(token) if p != os.getpid()]
        if not alive: break
        time.sleep(0.1)
    else:
        for p in alive: os.kill(p, signal.SIGKILL)
        pytest.fail(f"workers outlived their killed parent by 30 s ({when})")
    assert not (out / "runs/salun/seed0/unlearn.done.json").exists()
    if when == "starting": assert not (out / "started-salun-0").exists()     # never began the task


def test_a_failing_task_stops_every_worker_now(tmp_path):
    "A stage that fails ends the reproduction at once (busy workers are not waited for) and frees the results folder."
    import multiprocessing, time
    cfg = R.ReproduceConfig(seeds=2, methods=("erasediff", "salun"), sweep=False, jobs=2)
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match="boom"):
        R.reproduce(cfg, tmp_path, progress=False, worker_setup=fakes.install_slow)
    assert time.perf_counter() - t < 45                      # the other worker sleeps 60 s in its stage
    assert multiprocessing.active_children() == []
    R.lock_folder(tmp_path, ".reproduce.lock", "erasediff reproduce").close()                                # the lock is free again
