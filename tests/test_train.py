import json
import math
from dataclasses import replace

import pytest
import torch

from erasediff.core import NoiseSchedule, make_unet
from erasediff.runtime import sha256_path
from erasediff.data import InfiniteBatches, load_digits_set
from erasediff.train import (DiffusionObjective, DigitsClassifier, LoopConfig, NonFiniteLossError, fit, get_preset, load_reference, read_manifest, reference_path, ship_reference, train_reference)

SCHED = NoiseSchedule()


@pytest.fixture(scope="module")
def digits():
    return load_digits_set("train")


def _run(cfg, tiny_cfg, digits, **kw):
    torch.manual_seed(0)
    return fit(make_unet(tiny_cfg), DiffusionObjective(SCHED), InfiniteBatches(digits, cfg.batch_size, seed=1), cfg,
               progress=False, **kw)


def test_resume_gives_the_same_loss_curve(tiny_cfg, digits, tmp_path):
    cfg = LoopConfig(steps=10, batch_size=8, lr=2e-3, warmup_steps=2, log_every=1, ckpt_every=4, seed=5)
    full = _run(cfg, tiny_cfg, digits)

    class Crash(Exception):
        pass

    def crash(step, model, logs):
        if step == 6: raise Crash
    with pytest.raises(Crash):
        _run(cfg, tiny_cfg, digits, out=tmp_path, callback=crash)
    assert json.loads((tmp_path / "history.json").read_text())["step"] == 4
    resumed = _run(cfg, tiny_cfg, digits, out=tmp_path, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for a, b in zip(resumed.raw_model.parameters(), full.raw_model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="other settings"):
        _run(replace(cfg, lr=1e-3), tiny_cfg, digits, out=tmp_path, resume=True)


def test_resume_with_dropout_is_bit_exact(tiny_cfg, digits, tmp_path):
    "Dropout draws from the global generator: a resumed run must restore it, not replay the masks from step 0."
    cfg = LoopConfig(steps=6, batch_size=8, lr=2e-3, warmup_steps=1, log_every=1, ckpt_every=3, seed=2)
    drop = replace(tiny_cfg, dropout=0.3)
    full = _run(cfg, drop, digits)

    class Crash(Exception):
        pass

    def crash(step, model, logs):
        if step == 4: raise Crash
    with pytest.raises(Crash):
        _run(cfg, drop, digits, out=tmp_path, callback=crash)
    torch.manual_seed(123)                               # a fresh process would not be where the crashed one was
    resumed = _run(cfg, drop, digits, out=tmp_path, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for a, b in zip(resumed.raw_model.parameters(), full.raw_model.parameters()):
        assert torch.equal(a, b)


def test_sample_fn_sees_the_shipped_ema_weights(tiny_cfg, digits):
    cfg = LoopConfig(steps=4, batch_size=8, lr=1e-2, warmup_steps=1, log_every=1, ckpt_every=0, sample_every=2,
                     ema_decay=0.5)
    seen = {}

    def sample_fn(step, m):
        seen[step] = ({k: v.clone() for k, v in m.state_dict().items()}, m.training)
    res = _run(cfg, tiny_cfg, digits, sample_fn=sample_fn)
    assert sorted(seen) == [2, 4] and not any(training for _, training in seen.values())
    ema_final, raw_final = res.model.state_dict(), res.raw_model.state_dict()
    assert all(torch.equal(seen[4][0][k], ema_final[k]) for k in ema_final)
    assert any(not torch.equal(seen[4][0][k], raw_final[k]) for k in raw_final)
    assert res.raw_model.training is False and res.history[-1]["step"] == 4


class NaNAfter(DiffusionObjective):
    def __init__(self, n):
        super().__init__(SCHED); self.n, self.calls = n, 0

    def grads(self, model, batch, generator):
        self.calls += 1
        logs = super().grads(model, batch, generator)
        if self.calls > self.n:
            logs["loss"] = float("nan")
        return logs


def test_nan_stops_and_keeps_last_checkpoint(tiny_cfg, digits, tmp_path):
    cfg = LoopConfig(steps=10, batch_size=8, warmup_steps=1, log_every=1, ckpt_every=3)
    torch.manual_seed(0)
    model = make_unet(tiny_cfg)
    with pytest.raises(NonFiniteLossError, match="step 7.*intact"):
        fit(model, NaNAfter(7), InfiniteBatches(digits, 8), cfg, out=tmp_path, progress=False)
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert state["step"] == 6 and all(math.isfinite(h["loss"]) for h in state["history"])
    h = sha256_path(tmp_path / "model")
    resumed = fit(make_unet(tiny_cfg), DiffusionObjective(SCHED), InfiniteBatches(digits, 8), cfg, out=tmp_path,
                  resume=True, progress=False)
    assert resumed.history[-1]["step"] == 10 and sha256_path(tmp_path / "model") != h


def test_params_subset_leaves_the_rest_untouched(tiny_cfg, digits):
    torch.manual_seed(0)
    model = make_unet(tiny_cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train = [p for n, p in model.named_parameters() if n.startswith("up_blocks")]
    fit(model, DiffusionObjective(SCHED), InfiniteBatches(digits, 8), LoopConfig(steps=3, batch_size=8, ema_decay=None),
        params=train, progress=False)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("up_blocks"), n


def test_loop_config_validation():
    for kw, msg in [(dict(steps=0), "steps"), (dict(lr=0), "lr"), (dict(ema_decay=1.0), "ema_decay"),
                    (dict(grad_clip=-1), "grad_clip"), (dict(batch_size=0), "batch_size")]:
        with pytest.raises(ValueError, match=msg):
            LoopConfig(**kw)


def test_train_reference_validates_before_work(tmp_path):
    with pytest.raises(ValueError, match="what must be"):
        train_reference("digits", "everything", tmp_path / "a")
    with pytest.raises(ValueError, match="out of range"):
        train_reference("digits", "retrain", tmp_path / "b", forget_classes=[42])
    assert not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir(); (tmp_path / "c" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="resume"):
        train_reference("digits", "classifier", tmp_path / "c", steps=1)
    assert (tmp_path / "c" / "x").read_text() == "keep me"
    with pytest.raises(ValueError, match="preset must be"):
        get_preset("imagenet")


def test_classifier_learns_and_ships(tmp_path):
    res = train_reference("digits", "classifier", tmp_path / "run", steps=150, progress=False)
    assert res.cost["test_accuracy"] > 0.8
    entry = ship_reference(tmp_path / "run", "digits", "classifier", "erasediff train ...", root=tmp_path / "data")
    assert entry["sha256"] == sha256_path(tmp_path / "data" / "digits" / "classifier")
    clf = load_reference("digits", "classifier", root=tmp_path / "data")
    assert isinstance(clf, DigitsClassifier) and clf.features(torch.zeros(2, 1, 16, 16)).shape == (2, 128)
    (tmp_path / "data" / "digits" / "classifier" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="corrupt"):
        reference_path("digits", "classifier", tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="erasediff train"):
        reference_path("digits", "unscrubbed", tmp_path / "data")


def test_shipped_manifest_is_consistent():
    manifest = read_manifest()
    assert "digits/classifier" in manifest, "data/manifest.json must list the shipped digits classifier"
    for key, entry in manifest.items():
        preset, which = key.split("/")
        assert reference_path(preset, which).exists()
        assert entry["command"].startswith("erasediff train") and entry["train_seconds"] > 0
