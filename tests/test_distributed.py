"""Accelerate on CPU: 2 processes (gloo) against 1, at tiny scale (tests/_dist_job.py does the work)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).with_name("_dist_job.py")
ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
LAUNCH = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no"]   # --multi_gpu is accelerate's torchrun launcher; on a CPU machine it runs gloo


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd, cwd, timeout=600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "The same job on one process and on two."
    assert ACCELERATE, "the accelerate command is not installed"
    base = tmp_path_factory.mktemp("dist")
    _run([sys.executable, str(JOB), str(base / "one")], base)
    p = _run(LAUNCH + [str(JOB), str(base / "two")], base)
    assert "rank 1 of 2: done" in p.stdout and "rank 0 of 2: done" in p.stdout, p.stdout
    load = lambda d: torch.load(base / d / "result.pt", weights_only=False)
    return load("one"), load("two")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_processes_train_like_one_with_the_same_global_batch(runs):
    one, two = runs
    assert (one["world"], two["world"]) == (1, 2)
    l1, l2 = [h["loss"] for h in one["train_history"]], [h["loss"] for h in two["train_history"]]
    assert len(l1) == 4 and l1 == pytest.approx(l2, rel=1e-5)     # unsynchronised halves would differ from step 2
    assert _max_diff(one["trained"], two["trained"]) < 2e-4          # after 4 AdamW steps of lr 1e-3 (EMA weights)


def test_an_interrupted_run_resumes_exactly_on_either(runs):
    for r in runs:                                                   # killed after step 3, resumed from step 2
        assert _max_diff(r["trained"], r["resumed"]) == 0, r["world"]


def test_two_processes_unlearn_like_one(runs):
    one, two = runs
    f1, f2 = one["unlearn_final"], two["unlearn_final"]
    for k in ("L_r", "L_f", "L_f_phiK", "q", "lambda"):               # lambda: the adaptive rule agrees across ranks
        assert f1[k] == pytest.approx(f2[k], rel=1e-4, abs=1e-7), k
    assert _max_diff(one["unlearned"], two["unlearned"]) < 2e-4


def test_sharded_sampling_gives_the_single_process_images(runs):
    one, two = runs
    assert one["samples"].shape == (30, 1, 16, 16)
    assert torch.equal(one["samples"], two["samples"])                # 8 batches of 4 (last short) over 2 ranks


def test_only_rank_zero_writes_and_the_files_are_the_single_process_ones(runs):
    one, two = runs
    assert two["files"] == one["files"]
    assert "train/train_state.pt" in one["files"] and "unlearn/unet/diffusion_pytorch_model.safetensors" in one["files"]


def test_cli_under_accelerate_launch(tmp_path):
    "The CLI as the README runs it on several devices: one summary printed, one run folder, a model that loads."
    out = tmp_path / "clf"
    p = _run(LAUNCH + ["-m", "erasediff.cli", "train", "--what", "classifier", "--steps", "3", "--out", str(out),
                       "--quiet"], tmp_path)
    assert p.stdout.count('"test_accuracy"') == 1, p.stdout                 # rank 0 alone prints
    run = json.loads((out / "run.json").read_text())
    assert run["loop"]["steps"] == 3 and (out / "model" / "config.json").exists()


def test_a_one_process_method_refuses_several_processes(tmp_path):
    script = tmp_path / "sa.py"
    script.write_text("from erasediff.unlearn import unlearn\n"
                      "unlearn('digits', (2, 8), 'out', method='sa', eval_per_class=0, progress=False,\n"
                      "        config=dict(epochs=1, rounds=1, rem_num=16, batch_size=16))\n")
    p = subprocess.run(LAUNCH + [str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "runs on one process only" in p.stderr + p.stdout
    assert not (tmp_path / "out").exists()
