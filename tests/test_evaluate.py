"""Tests of erasediff.evaluate: evaluate_checkpoint, its reports and the seeds summary."""
from __future__ import annotations
import json
import os
from pathlib import Path
from types import SimpleNamespace
import pytest
import torch
from erasediff.core import SamplerConfig, ScheduleConfig
from erasediff.runtime import save_unet
from erasediff.evaluate import default_eval_out, evaluate_checkpoint, summarize_seeds
import erasediff.evaluate as EV
torch.set_num_threads(1)
from matplotlib.figure import Figure
from erasediff.membership import (memorization_report, plot_memorization)
from erasediff.evaluate import _fig_png, _jsonable
from _metric_helpers import OracleClassifier, make_tiny, rand_images


def toy_preset(**kw):
    return SimpleNamespace(**{**dict(name="toy", dataset="digits", dataset_kwargs={}, forget_classes=(2, 8), eval_per_class=3,
                                     sampler=SamplerConfig(steps=2), schedule=ScheduleConfig()), **kw})


def _tree(root):
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_evaluate_checkpoint_checks_inception_path_before_any_work(tmp_path, monkeypatch):
    mine = tmp_path / "my_inception.pt"
    mine.write_bytes(b"x")
    def no_work(*a, **k): raise AssertionError("generated samples before checking the Inception weights path")
    monkeypatch.setattr(EV, "generate", no_work)
    monkeypatch.setattr(EV, "load_unet", no_work)
    (tmp_path / "ck").mkdir()                                       # a UNet folder as far as the checks can tell
    (tmp_path / "ck" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (tmp_path / "ck" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"inception_weights.*inception-2015-12-05\.pt"):
        evaluate_checkpoint(tmp_path / "ck", toy_preset(), out=tmp_path / "o", classifier=OracleClassifier(),
                              inception=True, inception_weights=mine, progress=False)
    monkeypatch.setenv("ERASEDIFF_INCEPTION", str(mine))
    with pytest.raises(ValueError, match="ERASEDIFF_INCEPTION"):
        evaluate_checkpoint(tmp_path / "ck", toy_preset(), out=tmp_path / "o", classifier=OracleClassifier(),
                              inception=True, progress=False)
    assert not (tmp_path / "o").exists()


def test_summarize_seeds():
    runs = [{"a": {"b": 1.0, "c": None}, "n": 3, "flag": True}, {"a": {"b": 3.0}, "n": 5}]
    agg = summarize_seeds(runs)
    assert agg["a.b"] == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "n": 2}
    assert agg["n"]["mean"] == 4.0 and "flag" not in agg and "a.c" not in agg
    assert summarize_seeds(runs[:1])["a.b"] == {"mean": 1.0, "std": None, "n": 1}   # one run: no spread to report
    with pytest.raises(ValueError, match="no results"):
        summarize_seeds([])


def test_evaluate_checkpoint_writes_and_refuses_overwrite(tmp_path):
    ck = save_unet(make_tiny(), tmp_path / "ckpt")
    out = tmp_path / "eval"
    m = evaluate_checkpoint(ck, toy_preset(), out=out, classifier=OracleClassifier(), reference_retrain=ck,
                              progress=False, mia_timesteps=(100,))
    assert sorted(p.name for p in out.iterdir()) == ["kl.png", "losses.png", "metrics.json", "metrics.md", "per_sample.npz"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == m
    assert m["n_generated"] == 30 and m["conditional"] and m["forget_classes"] == [2, 8]
    assert set(m["accuracy"]["per_class"]) == {str(c) for c in range(10)}
    # forgetting at every guidance scale: w = 0, the preset's (SamplerConfig's default 2.0) and the peers' 1
    assert set(m["accuracy_by_w"]) == {"0", "1", "2"}
    assert m["accuracy_by_w"]["2"]["forget"] == m["accuracy"]["forget"]          # the preset's w reuses the main samples
    assert m["accuracy_worst"]["forget"] == max(v["forget"] for v in m["accuracy_by_w"].values())
    assert m["accuracy_worst"]["remain"] == min(v["remain"] for v in m["accuracy_by_w"].values())
    for v in m["accuracy_by_w"].values():
        assert set(v["confusion"]) == {"2", "8"} and all(abs(sum(r) - 1) < 1e-9 for r in v["confusion"].values())
    assert m["weight_distance"]["l2"] == 0.0                      # compared with itself
    nl = m["null_label"]                                            # what the null label still draws of {2, 8}
    assert nl["n"] == 15 and 0 <= nl["share"] <= 1 and set(nl["per_class"]) == {"2", "8"} and nl["data_share"] == 0.2
    assert m["error_bars"]["null_label"]["share"]["value"] == pytest.approx(nl["share"])
    assert m["mia"]["n_members"] > m["mia"]["n_nonmembers"] > 0
    for key in ("classifier_fd", "precision_recall", "kl", "loss", "gradient_conflict", "cost"):
        assert key in m, key
    assert "fid" not in m                                           # digits: no Inception by default
    assert m["cost"]["wall_s"] > 0
    md = (out / "metrics.md").read_text()
    assert "| metric | value |" in md and "MIA on D_f" in md and "| 2 | yes |" in md
    assert "worst guidance scale" in md and "w = 0" in md and "What the classifier calls" in md
    assert "null-label samples classified as a forget class (15 samples" in md
    # error bars beside every sample-based figure, under the metric's own path in m["error_bars"]
    eb = m["error_bars"]
    bars = [(eb["accuracy_by_w"][w][g], m["accuracy_by_w"][w][g]) for w in m["accuracy_by_w"] for g in ("forget", "remain")]
    bars += [(eb["accuracy"][g], m["accuracy"][g]) for g in ("forget", "remain")]
    bars += [(eb["classifier_fd"][g], m["classifier_fd"][g]) for g in ("forget", "remain")]
    bars += [(eb["precision_recall"][g][k], m["precision_recall"][g][k]) for g in ("forget", "remain") for k in ("precision", "recall")]
    bars += [(eb["mia"][k][s], m["mia"][k][s]) for k in ("mean", "avg_loss") for s in ("accuracy", "auc")]
    bars += [(eb[k][g], m[k][g]) for k in ("kl", "loss") for g in ("forget_mean", "remain_mean")]
    bars += [(eb["forget_confidence"][w][k], m["forget_confidence"][w][k]) for w in m["forget_confidence"] for k in ("entropy", "p_forget")]
    for bar, value in bars:
        assert bar["value"] == pytest.approx(value) and bar["std"] >= 0 and bar["ci95"][0] <= bar["ci95"][1]
    assert eb["classifier_fd"]["forget"]["std"] > 0 and eb["mia"]["mean"]["auc"]["std"] > 0
    assert m["bootstrap"]["n_boot"] == 200
    # the honest attack: calibrated on D_r vs held-out D_r, chance baseline, no TPR at 1 % from 70 non-members
    assert m["mia"]["n_calibration_nonmembers"] == 290 and m["mia"]["n_calibration_members"] == 290
    assert "held-out D_r" in m["mia"]["protocol"] and m["mia"]["mean"]["tpr_at_1_fpr"] is None
    assert {"mean", "std", "exceeds"} <= set(m["mia"]["chance"]["mean"]["auc"])
    assert "n/a (70 non-members)" in md and "chance 0.5" in md and " ± " in md
    # Selective Amnesia's measures at every guidance scale, per forgotten class
    assert set(m["forget_confidence"]) == set(m["accuracy_by_w"])
    for w, r in m["forget_confidence"].items():
        assert set(r["per_class"]) == {"2", "8"} and r["accuracy"] == m["accuracy_by_w"][w]["forget"]
        assert 0 <= r["entropy"] <= r["max_entropy"] and 0 <= r["p_forget"] <= 1
    assert "p(forgotten class)" in md
    # gradient conflict of the method's own loss (the preset's default: 'deviate'), several pairs
    gc = m["gradient_conflict"]
    assert gc["forget_loss"] == "deviate" and gc["n_pairs"] == 8 and len(gc["per_pair"]) == 8 and gc["std"] > 0
    assert gc["forget_loss_source"] == "the preset's EraseDiff default" and "forget loss 'deviate'" in md
    with pytest.raises(FileExistsError, match="overwrite=True"):
        evaluate_checkpoint(ck, toy_preset(), out=out, classifier=OracleClassifier(), progress=False)
    (out / "notes.txt").write_text("mine")                          # a file of the user's beside the reports
    m2 = evaluate_checkpoint(ck, toy_preset(), out=out, classifier=OracleClassifier(), overwrite=True, seed=1,
                               progress=False, mia_timesteps=(100,), reference_retrain=ck)
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1 and m2["seed"] == 1
    assert (out / "notes.txt").read_text() == "mine"                # replaced in one step, the rest kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "eval"]   # no temporaries, no lock left
    for f in ("metrics.json", "metrics.md"):                        # names relative to the output, never absolute
        assert str(tmp_path) not in (out / f).read_text()
    assert m2["checkpoint"] == "../ckpt" and m2["weight_distance"]["reference"] == "../ckpt"


def test_evaluate_checkpoint_default_out_is_under_cwd(tmp_path, monkeypatch):
    "out=None: runs/eval/<run name> under the working directory; nothing appears in the checkpoint's folder tree."
    ck = save_unet(make_tiny(), tmp_path / "store" / "myrun" / "unet")
    (tmp_path / "store" / "myrun" / "metrics.json").write_text(json.dumps({"method": "erasediff", "config": {"forget_loss": "uniform"}}))
    before = _tree(tmp_path / "store")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    m = evaluate_checkpoint(ck, toy_preset(eval_per_class=2), classifier=OracleClassifier(), progress=False, mia_timesteps=(100,))
    assert (tmp_path / "work" / "runs" / "eval" / "myrun" / "metrics.json").exists()
    assert _tree(tmp_path / "store") == before
    # the forget loss of the run that made the checkpoint, read from its metrics.json
    assert m["gradient_conflict"]["forget_loss"] == "uniform" and "metrics.json" in m["gradient_conflict"]["forget_loss_source"]
    # a run folder (with unet/) names the output the same way; a plain model folder by its own name
    assert default_eval_out(tmp_path / "store" / "myrun") == Path("runs/eval/myrun")
    assert default_eval_out("data/digits/unscrubbed") == Path("runs/eval/unscrubbed")
    monkeypatch.chdir(tmp_path / "store" / "myrun")                       # runs/eval would land inside the checkpoint
    with pytest.raises(ValueError, match="pass out="):
        evaluate_checkpoint(ck, toy_preset(eval_per_class=2), classifier=OracleClassifier(), progress=False)
    assert _tree(tmp_path / "store") == before


def test_default_eval_out_guards_both_data_folders(tmp_path, monkeypatch):
    "$ERASEDIFF_DATA moves data_dir() elsewhere: the repository's own data/ stays guarded, and so does the new folder."
    import erasediff
    repo_data = Path(erasediff.__file__).resolve().parent.parent / "data"
    if not repo_data.is_dir():
        pytest.skip(f"no data/ folder beside the package ({repo_data})")
    elsewhere = tmp_path / "shipped"
    elsewhere.mkdir()
    monkeypatch.setenv("ERASEDIFF_DATA", str(elsewhere))
    for cwd in (repo_data, elsewhere):
        monkeypatch.chdir(cwd)
        with pytest.raises(ValueError, match="pass out="):
            default_eval_out("some_model")
    monkeypatch.chdir(tmp_path)
    assert default_eval_out("some_model") == Path("runs/eval/some_model")


def test_evaluate_checkpoint_unconditional_and_validation(tmp_path):
    model = make_tiny(num_classes=None)
    m = evaluate_checkpoint(model, toy_preset(eval_per_class=2), out=tmp_path / "u", classifier=OracleClassifier(),
                              progress=False, mia_timesteps=(100,))
    assert not m["conditional"] and "accuracy" not in m and 0 <= m["forget_share"] <= 1
    assert set(m["classifier_fd"]) == {"remain", "all"}
    with pytest.raises(ValueError, match="out is required"):
        evaluate_checkpoint(model, toy_preset(), classifier=OracleClassifier())
    with pytest.raises(ValueError, match="n_per_class"):
        evaluate_checkpoint(model, toy_preset(), out=tmp_path / "v", n_per_class=1, classifier=OracleClassifier())
    with pytest.raises(ValueError, match="classes"):
        evaluate_checkpoint(make_tiny(num_classes=5), toy_preset(), out=tmp_path / "w", classifier=OracleClassifier())


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ERASEDIFF_SLOW"), reason="slow: set ERASEDIFF_SLOW=1")
def test_evaluate_checkpoint_with_inception(tmp_path, inception_dir):
    m = evaluate_checkpoint(make_tiny(), toy_preset(), out=tmp_path / "i", classifier=OracleClassifier(), n_per_class=2,
                              n_real_per_class=2, progress=False, mia_timesteps=(100,), inception=True,
                              inception_weights=inception_dir)
    assert set(m["fid"]) == {"per_class", "forget", "remain"} and len(m["fid"]["per_class"]) == 10
    assert all(v > 0 for v in m["fid"]["per_class"].values()) and m["fid"]["forget"] > 0
    assert "FID (Inception, clean-fid), forget" in (tmp_path / "i" / "metrics.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ERASEDIFF_SLOW"), reason="slow: set ERASEDIFF_SLOW=1")
def test_shipped_unscrubbed_vs_retrain(shipped, tmp_path):
    from erasediff.train import get_preset
    preset = get_preset("digits")
    r = {w: evaluate_checkpoint(shipped[w], preset, out=tmp_path / w, classifier=shipped["classifier"], n_per_class=30,
                                  progress=False) for w in ("unscrubbed", "retrain")}
    assert r["unscrubbed"]["accuracy"]["forget"] > 0.8 and r["retrain"]["accuracy"]["forget"] < 0.2
    assert r["unscrubbed"]["accuracy"]["remain"] > 0.8 and r["retrain"]["accuracy"]["remain"] > 0.8
    assert r["unscrubbed"]["mia"]["mean"]["auc"] > r["retrain"]["mia"]["mean"]["auc"]


def test_forgotten_ids_key_the_per_image_results():
    forgotten, heldout = rand_images(3, 50), rand_images(10, 51)
    generated = torch.cat([rand_images(20, 52), forgotten[1:2]])
    r = memorization_report(forgotten, heldout, generated, forgotten_ids=torch.tensor([101, 7, 42]), n_boot=10)
    assert list(r["forgotten"]["per_image"]) == [101, 7, 42]
    assert all(type(k) is int for k in r["forgotten"]["per_image"])
    assert r["forgotten"]["per_image"][7] == 0.0 and r["forgotten"]["per_image"][101] > 0
    assert r["forgotten"]["nearest_generated"][7] == 20
    json.dumps(_jsonable(r))                                        # writable to metrics.json


def test_plot_memorization_draws_both_reports():
    forgotten, heldout, pool = rand_images(10, 70), rand_images(20, 71), rand_images(60, 72)
    before = memorization_report(forgotten, heldout, torch.cat([pool, forgotten]), n_boot=20)
    after = memorization_report(forgotten, heldout, pool, n_boot=20)
    fig = plot_memorization(before, after, title="toy")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert bars == pytest.approx([before["forgotten"]["mean"], before["heldout"]["mean"],
                                  after["forgotten"]["mean"], after["heldout"]["mean"]])
    assert len(fig.axes[1].lines) == 10                               # one line per forgotten image, before -> after
    assert _fig_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(json.dumps(_jsonable(after)))               # reports read back from metrics.json (str ids)
    assert isinstance(plot_memorization(json.loads(json.dumps(_jsonable(before))), loaded), Figure)
    with pytest.raises(ValueError, match="report_after must be a dict returned by memorization_report"):
        plot_memorization(before, {"forgotten": {}})
