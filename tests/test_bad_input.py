"""Every kind of mistake a user makes on the command line, one case each: refused with exit code 2 and a one-line
message naming the flag, before any work (within seconds) and without creating or deleting anything, an existing
result included. The concurrency and kill tests are at the end."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from erasediff.cli import main
from erasediff.runtime import stale_siblings
from erasediff.train import reference_path

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the case needs a machine without CUDA")
MAX_SECONDS = 20          # checks only: loading the built-in data and a small model (well under 2 s on an idle machine)


def U(*args, out="{tmp}/u"):
    "An unlearn command line with a small budget (it is never meant to start)."
    return ["unlearn", "--quiet", *(["--out", out] if out else []), *args]


def T(*args, what="unscrubbed", out="{tmp}/t"):
    return ["train", "--quiet", "--what", what, *(["--out", out] if out else []), *args]


def E(*args, ck="{unscrubbed}", out="{tmp}/e"):
    return ["evaluate", ck, "--quiet", *(["--out", out] if out else []), *args]


def R(*args, out="{tmp}/r"):
    return ["reproduce", "--quiet", "--no-figures", *(["--out", out] if out else []), *args]


ALL_CLASSES = [str(c) for c in range(10)]

# (id, argv, what the message must name)
CASES = [
    # ---- unlearn: numbers ----
    ("unlearn-lr-inf", U("--lr", "inf"), "--lr"), ("unlearn-lr-nan", U("--lr", "nan"), "--lr"),
    ("unlearn-lr-negative", U("--lr", "-1"), "--lr"), ("unlearn-lr-zero", U("--lr", "0"), "--lr"),
    ("unlearn-lr-huge", U("--lr", "1e10"), "--lr"), ("unlearn-lr-text", U("--lr", "fast"), "--lr"),
    ("unlearn-lam-negative", U("--lam", "-1"), "--lam"), ("unlearn-lam-nan", U("--lam", "nan"), "--lam"),
    ("unlearn-lam-inf", U("--lam", "inf"), "--lam"), ("unlearn-lam-text", U("--lam", "abc"), "--lam"),
    ("unlearn-K-zero", U("--K", "0"), "--K"), ("unlearn-K-float", U("--K", "1.5"), "--K"),
    ("unlearn-epochs-zero", U("--epochs", "0"), "--epochs"), ("unlearn-epochs-bool", U("--epochs", "true"), "--epochs"),
    ("unlearn-rounds-negative", U("--rounds", "-2"), "--rounds"), ("unlearn-rem-num-zero", U("--rem-num", "0"), "--rem-num"),
    ("unlearn-batch-size-zero", U("--batch-size", "0"), "--batch-size"),
    ("unlearn-retarget-pool-zero", U("--retarget-pool", "0"), "--retarget-pool"),
    ("unlearn-eval-negative", U("--eval-per-class", "-1"), "--eval-per-class"),
    ("unlearn-eval-huge", U("--eval-per-class", "1000000000"), "--eval-per-class"),
    ("unlearn-seed-negative", U("--seed", "-1"), "--seed"), ("unlearn-seed-too-big", U("--seed", str(2**32)), "--seed"),
    ("unlearn-seed-text", U("--seed", "abc"), "--seed"),
    # ---- unlearn: devices ----
    ("unlearn-device-garbage", U("--device", "garbage"), "--device"), ("unlearn-device-meta", U("--device", "meta"), "--device"),
    pytest.param("unlearn-device-cuda", U("--device", "cuda"), "--device", marks=NO_CUDA),
    pytest.param("unlearn-device-cuda7", U("--device", "cuda:7"), "--device", marks=NO_CUDA),
    # ---- unlearn: what to forget ----
    ("unlearn-forget-repeated", U("--forget", "3", "3"), "--forget"),
    ("unlearn-forget-repeated-by-name", U("--forget", "3", "03"), "--forget"),
    ("unlearn-forget-out-of-range", U("--forget", "42"), "--forget"),
    ("unlearn-forget-unknown-name", U("--forget", "nine"), "--forget"),
    ("unlearn-forget-negative", U("--forget", "-1"), "--forget"),
    ("unlearn-forget-everything", U("--forget", *ALL_CLASSES), "--forget"),
    ("unlearn-forget-ids-repeated", U("--forget-ids", "1", "1"), "--forget-ids"),
    ("unlearn-forget-ids-negative", U("--forget-ids", "-1"), "--forget-ids"),
    ("unlearn-forget-ids-text", U("--forget-ids", "x"), "--forget-ids"),
    ("unlearn-forget-ids-out-of-range", U("--forget-ids", "99999999"), "--forget-ids"),
    ("unlearn-forget-and-ids", U("--forget", "2", "--forget-ids", "3"), "--forget"),
    ("unlearn-forget-and-attribute", U("--forget", "2", "--forget-attribute", "even"), "--forget-attribute"),
    ("unlearn-attribute-empty", U("--forget-attribute", ""), "--forget-attribute"),
    ("unlearn-attribute-unknown", U("--forget-attribute", "Eyeglasses"), "--forget-attribute"),
    # ---- unlearn: options the method or loss ignores ----
    ("unlearn-loss-unknown", U("--forget-loss", "laplace"), "--forget-loss"),
    ("unlearn-pseudo-label-with-uniform", U("--forget-loss", "uniform", "--pseudo-label", "per_sample"), "--pseudo-label"),
    ("unlearn-pseudo-label-with-ids", U("--forget-ids", "1", "2", "--pseudo-label", "per_sample"), "--pseudo-label"),
    ("unlearn-pool-with-deviate", U("--forget-loss", "deviate", "--retarget-pool", "10"), "--retarget-pool"),
    ("unlearn-pool-default-deviate", U("--retarget-pool", "10"), "--retarget-pool"),
    ("unlearn-method-unknown", U("--method", "nope"), "--method"),
    ("unlearn-lam-for-finetune", U("--method", "finetune", "--lam", "0.5"), "--lam"),
    ("unlearn-loss-for-neggrad", U("--method", "neggrad", "--forget-loss", "uniform"), "--forget-loss"),
    ("unlearn-K-for-sa", U("--method", "sa", "--K", "3"), "--K"),
    # ---- unlearn: --set ----
    ("unlearn-set-float-for-int", U("--set", "forget_batch_size=2.5"), "forget_batch_size"),
    ("unlearn-set-bool-for-int", U("--set", "epochs=true"), "epochs"),
    ("unlearn-set-infinite", U("--set", "weight_decay=1e400"), "weight_decay"),
    ("unlearn-set-nan", U("--set", "grad_clip=NaN"), "grad_clip"),
    ("unlearn-set-unknown-field", U("--set", "nosuch=1"), "nosuch"),
    ("unlearn-set-no-equals", U("--set", "lam"), "--set"),
    ("unlearn-set-empty-name", U("--set", "=3"), "--set"),
    ("unlearn-set-twice", U("--set", "lam=0.1", "--lam", "0.2"), "--set"),
    ("unlearn-set-params-match-nothing", U("--set", 'params=["no_such_layer"]'), "params"),
    ("unlearn-set-params-bad-regex", U("--set", 'params=["(("]'), "params"),
    ("unlearn-set-ema-out-of-range", U("--set", "ema_decay=1.5"), "ema_decay"),
    # ---- unlearn: checkpoints ----
    ("unlearn-checkpoint-missing", U("--checkpoint", "{tmp}/nothing"), "--checkpoint"),
    ("unlearn-checkpoint-classifier", U("--checkpoint", "{classifier}"), "--checkpoint"),
    ("unlearn-checkpoint-pickled", U("--checkpoint", "{pickled}"), "--allow-pickle"),
    ("unlearn-checkpoint-file", U("--checkpoint", "{afile}"), "--checkpoint"),
    ("unlearn-checkpoint-hub-offline", U("--checkpoint", "someone/some-model"), "--checkpoint"),
    ("unlearn-checkpoint-empty-folder", U("--checkpoint", "{tmp}/work"), "--checkpoint"),
    # ---- unlearn: output folders ----
    ("unlearn-out-cwd", U(out="."), "--out"), ("unlearn-out-parent", U(out=".."), "--out"),
    ("unlearn-out-cwd-overwrite", U("--overwrite", out="."), "--out"),
    ("unlearn-out-file", U(out="{afile}"), "--out"), ("unlearn-out-under-file", U(out="{afile}/sub"), "--out"),
    ("unlearn-out-proc", U(out="/proc/erasediff-out"), "--out"), ("unlearn-out-empty", U(out=""), "--out"),
    ("unlearn-out-missing", U(out=None), "--out"),
    ("unlearn-out-exists", U(out="{existing}"), "--out"),
    ("unlearn-overwrite-bad-lr", U("--overwrite", "--lr", "inf", out="{existing}"), "--lr"),
    ("unlearn-overwrite-bad-class", U("--overwrite", "--forget", "42", out="{existing}"), "--forget"),
    ("unlearn-overwrite-bad-device", U("--overwrite", "--device", "garbage", out="{existing}"), "--device"),
    ("unlearn-overwrite-bad-checkpoint", U("--overwrite", "--checkpoint", "{classifier}", out="{existing}"), "--checkpoint"),
    ("unlearn-data-root-file", U("--data-root", "{afile}"), "--data-root"),
    ("unlearn-preset-unknown", U("--preset", "imagenet"), "--preset"),
    # ---- train ----
    ("train-steps-zero", T("--steps", "0"), "--steps"), ("train-steps-negative", T("--steps", "-5"), "--steps"),
    ("train-steps-float", T("--steps", "1.5"), "--steps"), ("train-seed-negative", T("--seed", "-1"), "--seed"),
    ("train-seed-text", T("--seed", "x"), "--seed"),
    ("train-device-garbage", T("--device", "garbage"), "--device"), ("train-device-meta", T("--device", "meta"), "--device"),
    pytest.param("train-device-cuda", T("--device", "cuda"), "--device", marks=NO_CUDA),
    ("train-what-unknown", T(what="nothing"), "--what"),
    ("train-forget-for-classifier", T("--forget", "3", what="classifier"), "--forget"),
    ("train-forget-for-unscrubbed", T("--forget", "3"), "--forget"),
    ("train-forget-out-of-range", T("--forget", "42", what="retrain"), "--forget"),
    ("train-forget-repeated", T("--forget", "3", "3", what="retrain"), "--forget"),
    ("train-forget-everything", T("--forget", *ALL_CLASSES, what="retrain"), "--forget"),
    ("train-resume-nothing", T("--resume"), "--resume"),
    ("train-resume-and-overwrite", T("--resume", "--overwrite", out="{existing}"), "--resume"),
    ("train-resume-not-a-run", T("--resume", out="{existing}"), "--resume"),
    ("train-eval-classifier", T("--eval", what="classifier"), "--eval"),
    ("train-out-cwd-overwrite", T("--overwrite", what="classifier", out="."), "--out"),
    ("train-out-parent-overwrite", T("--overwrite", out=".."), "--out"),
    ("train-out-file", T(out="{afile}"), "--out"), ("train-out-under-file", T(out="{afile}/sub"), "--out"),
    ("train-out-proc", T(out="/proc/erasediff-out"), "--out"), ("train-out-missing", T(out=None), "--out"),
    ("train-out-exists", T(out="{existing}"), "--out"),
    ("train-overwrite-bad-class", T("--overwrite", "--forget", "42", what="retrain", out="{existing}"), "--forget"),
    ("train-overwrite-bad-device", T("--overwrite", "--device", "garbage", out="{existing}"), "--device"),
    ("train-overwrite-bad-steps", T("--overwrite", "--steps", "0", out="{existing}"), "--steps"),
    ("train-preset-unknown", T("--preset", "nope"), "--preset"),
    ("train-data-root-file", T("--data-root", "{afile}"), "--data-root"),
    # ---- evaluate ----
    ("evaluate-checkpoint-missing", E(ck="{tmp}/nothing"), "CHECKPOINT"),
    ("evaluate-checkpoint-classifier", E(ck="{classifier}"), "CHECKPOINT"),
    ("evaluate-checkpoint-file", E(ck="{afile}"), "CHECKPOINT"),
    ("evaluate-checkpoint-pickled", E(ck="{pickled}"), "--allow-pickle"),
    ("evaluate-n-one", E("--n-per-class", "1"), "--n-per-class"),
    ("evaluate-n-huge", E("--n-per-class", "1000000000"), "--n-per-class"),
    ("evaluate-n-text", E("--n-per-class", "x"), "--n-per-class"),
    ("evaluate-seed-negative", E("--seed", "-1"), "--seed"),
    ("evaluate-device-garbage", E("--device", "garbage"), "--device"),
    ("evaluate-device-meta", E("--device", "meta"), "--device"),
    pytest.param("evaluate-device-cuda", E("--device", "cuda"), "--device", marks=NO_CUDA),
    ("evaluate-retrain-missing", E("--reference-retrain", "{tmp}/nothing"), "--reference-retrain"),
    ("evaluate-retrain-classifier", E("--reference-retrain", "{classifier}"), "--reference-retrain"),
    ("evaluate-retrain-pickled", E("--reference-retrain", "{pickled}"), "--allow-pickle"),
    ("evaluate-out-file", E(out="{afile}"), "--out"),
    ("evaluate-out-cwd", E(out="."), "--out"),
    ("evaluate-out-proc", E(out="/proc/erasediff-out"), "--out"),
    ("evaluate-out-evaluated", E(out="{evaluated}"), "--out"),
    ("evaluate-inception-on-digits", E("--inception-weights", "/nonexistent"), "--inception-weights"),
    ("evaluate-forget-out-of-range", E("--forget", "42"), "--forget"),
    ("evaluate-forget-repeated", E("--forget", "3", "3"), "--forget"),
    ("evaluate-preset-unknown", E("--preset", "nope"), "--preset"),
    ("evaluate-data-root-file", E("--data-root", "{afile}"), "--data-root"),
    # ---- reproduce ----
    ("reproduce-seeds-zero", R("--seeds", "0"), "--seeds"), ("reproduce-seeds-huge", R("--seeds", "1001"), "--seeds"),
    ("reproduce-seeds-text", R("--seeds", "x"), "--seeds"), ("reproduce-jobs-zero", R("--jobs", "0"), "--jobs"),
    ("reproduce-relearn-images-zero", R("--relearn-images", "0"), "--relearn-images"),
    ("reproduce-relearn-steps-decreasing", R("--relearn-steps", "5", "0"), "--relearn-steps"),
    ("reproduce-relearn-per-label-negative", R("--relearn-per-label", "-1"), "--relearn-per-label"),
    ("reproduce-relearn-per-class-zero", R("--relearn-per-class", "0"), "--relearn-per-class"),
    ("reproduce-n-one", R("--n-per-class", "1"), "--n-per-class"),
    ("reproduce-device-garbage", R("--device", "garbage"), "--device"),
    ("reproduce-device-meta", R("--device", "meta"), "--device"),
    pytest.param("reproduce-device-cuda", R("--device", "cuda"), "--device", marks=NO_CUDA),
    ("reproduce-methods-unknown", R("--methods", "nope"), "--methods"),
    ("reproduce-methods-repeated", R("--methods", "so", "so"), "--methods"),
    ("reproduce-out-file", R(out="{afile}"), "--out"), ("reproduce-out-cwd", R(out="."), "--out"),
    ("reproduce-out-proc", R(out="/proc/erasediff-out"), "--out"),
    ("reproduce-preset-unknown", R("--preset", "nope"), "--preset"),
    ("reproduce-data-root-file", R("--data-root", "{afile}"), "--data-root"),
]


def _id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


def _command(case) -> str:
    return (case.values if hasattr(case, "values") else case)[1][0]


@pytest.fixture(scope="module")
def pickled(tmp_path_factory) -> Path:
    "The shipped Unscrubbed model saved with pickled .bin weights."
    from erasediff.runtime import load_unet
    d = tmp_path_factory.mktemp("pickled") / "unet"
    load_unet(reference_path("digits", "unscrubbed")).save_pretrained(d, safe_serialization=False)
    return d


@pytest.fixture
def place(tmp_path, monkeypatch, pickled) -> dict:
    "A working folder (the cwd, with a file in it), a file, a finished result and a finished evaluation."
    work = tmp_path / "work"; work.mkdir(); (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)   # a hub name fails at once, as offline
    (tmp_path / "afile").write_text("a file")
    existing = tmp_path / "existing"; (existing / "unet").mkdir(parents=True)
    (existing / "metrics.json").write_text('{"old": true}'); (existing / "unet" / "weights").write_bytes(b"old weights")
    (tmp_path / "evaluated").mkdir(); (tmp_path / "evaluated" / "metrics.json").write_text('{"old": true}')
    return {"tmp": str(tmp_path), "afile": str(tmp_path / "afile"), "existing": str(existing),
            "evaluated": str(tmp_path / "evaluated"), "pickled": str(pickled),
            "classifier": str(reference_path("digits", "classifier")),
            "unscrubbed": str(reference_path("digits", "unscrubbed"))}


def snapshot(root: Path) -> dict:
    "Every file and folder under `root`, with each file's size and modification time (what creating, deleting or "
    "rewriting anything changes)."
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name, argv, flag", [c if hasattr(c, "values") else pytest.param(*c) for c in CASES],
                         ids=[_id(c) for c in CASES])
def test_bad_input_is_refused_before_work(name, argv, flag, place, tmp_path, capsys):
    argv = [a.format(**place) for a in argv]
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    try: code = main(argv)
    except SystemExit as e: code = e.code                     # argparse's usage errors
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2, f"{name}: exit code {code}; stderr: {err}"
    assert flag in err, f"{name}: the message does not name {flag}: {err}"
    assert "Traceback" not in err and err.count("error:") == 1
    assert seconds < MAX_SECONDS, f"{name}: refused after {seconds:.1f} s: work started before the check"
    assert snapshot(tmp_path) == before, f"{name}: files were created or deleted"


def test_the_suite_covers_every_subcommand():
    "At least 100 cases, at least 15 for each run-making subcommand."
    counts = {c: sum(_command(k) == c for k in CASES) for c in ("unlearn", "train", "evaluate", "reproduce")}
    assert len(CASES) >= 100 and min(counts.values()) >= 15, counts
    assert len({_id(k) for k in CASES}) == len(CASES)


def test_debug_shows_the_traceback(place):
    with pytest.raises(ValueError, match="out"):
        main(["unlearn", "--quiet", "--debug", "--out", "."])


def test_a_bug_is_not_disguised_as_a_usage_error(monkeypatch, place):
    "Only users' mistakes become one-line messages: an error of the package itself keeps its traceback."
    import erasediff.unlearn as UN
    def broken(*a, **k): raise KeyError("a bug")
    monkeypatch.setattr(UN, "unlearn", broken)
    with pytest.raises(KeyError):
        main(["unlearn", "--quiet", "--out", "{tmp}/u".format(**place)])


def test_a_diverged_run_is_one_line(monkeypatch, place, capsys):
    "A run that diverges stops with the trainer's message (the last good checkpoint intact), not a traceback."
    import erasediff.unlearn as UN
    from erasediff.train import NonFiniteLossError
    def diverge(*a, **k): raise NonFiniteLossError("loss=nan at step 3; the last good checkpoint is left untouched")
    monkeypatch.setattr(UN, "unlearn", diverge)
    assert main(["unlearn", "--quiet", "--out", "{tmp}/u".format(**place)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("erasediff unlearn: error: loss=nan at step 3") and err.count("\n") == 1


# ---- concurrency and kills: real processes ----

def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "erasediff.cli", *args]


SMALL = ["--forget", "2", "--epochs", "1", "--rounds", "1", "--rem-num", "64", "--eval-per-class", "2", "--quiet"]
LONG = ["--forget", "2", "--epochs", "50", "--rounds", "2", "--rem-num", "640", "--eval-per-class", "0", "--quiet"]


def _wait_for(path: Path, proc, seconds: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared: {proc.communicate()}"
        assert time.time() - t0 < seconds, f"{path} did not appear"
        time.sleep(0.05)


def test_two_runs_into_one_folder_one_is_refused(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(_cli("unlearn", "--out", str(out), *SMALL), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    _wait_for(tmp_path / ".run.lock", first)                   # the first one is working
    second = subprocess.run(_cli("unlearn", "--out", str(out), "--overwrite", *SMALL), capture_output=True, text=True)
    assert first.wait(timeout=600) == 0, first.communicate()
    assert second.returncode == 2 and "--out: another erasediff run is writing" in second.stderr, second.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["forget"]["classes"] == [2] and (out / "unet" / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]   # no lock, no temporaries left


def test_kill_during_overwrite_leaves_the_old_result(tmp_path):
    out = tmp_path / "run"
    (out / "unet").mkdir(parents=True)
    (out / "metrics.json").write_text('{"old": true}'); (out / "unet" / "weights").write_bytes(b"old weights")
    old = snapshot(out)
    proc = subprocess.Popen(_cli("unlearn", "--out", str(out), "--overwrite", *LONG), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / ".run.lock", proc)
    time.sleep(3)                                             # unlearning
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert snapshot(out) == old                               # the old result, untouched
    from erasediff.runtime import claim_output
    with claim_output(out): pass                             # the next writer clears what the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not stale_siblings(out)


def test_kill_between_the_two_renames_is_repaired(tmp_path, monkeypatch):
    "Where no atomic exchange exists, a writer killed between moving the old folder aside and moving the new one in "
    "leaves the old one aside; the next claim puts it back."
    import erasediff.runtime as RT
    out = tmp_path / "run"; out.mkdir(); (out / "a.txt").write_text("old")
    monkeypatch.setattr(RT, "_exchange", lambda a, b: False)
    calls = []
    real = os.replace
    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2: raise KeyboardInterrupt          # the kill, after the old folder went aside
        real(src, dst)
    monkeypatch.setattr(RT.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with RT.atomic_dir(out) as tmp: (tmp / "a.txt").write_text("new")
    monkeypatch.setattr(RT.os, "replace", real)
    assert not out.exists() and len(stale_siblings(out)) == 2   # the old one aside, the new one unfinished
    with RT.claim_output(out): pass
    assert (out / "a.txt").read_text() == "old" and not stale_siblings(out)
