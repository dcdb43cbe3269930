"""Tests of erasediff.accuracy: classifier accuracy on samples, where the forgotten classes went, sample_accuracy."""
from __future__ import annotations
import numpy as np
import pytest
import torch
from erasediff.accuracy import classify, conditional_accuracy, forget_class_confidence, forget_share
torch.set_num_threads(1)
from _metric_helpers import OracleClassifier
from erasediff.accuracy import guidance_scales


def onehot_images(labels: torch.Tensor) -> torch.Tensor:
    "(N,1,16,16) images, -1 everywhere but pixel `label` of the first row set to +1."
    x = -torch.ones(len(labels), 1, 16, 16)
    x[torch.arange(len(labels)), 0, 0, labels] = 1.0
    return x


def test_conditional_accuracy_and_forget_share():
    clf = OracleClassifier()
    labels = torch.arange(10).repeat(3)
    gen = onehot_images(labels)
    r = conditional_accuracy(clf, gen, labels, forget_classes=(2, 8))
    assert r["forget"] == 1.0 and r["remain"] == 1.0
    # an unlearned model draws a 0 when asked for 2 or 8
    drawn = torch.where(torch.isin(labels, torch.tensor([2, 8])), torch.zeros_like(labels), labels)
    r = conditional_accuracy(clf, onehot_images(drawn), labels, forget_classes=(2, 8))
    assert r["forget"] == 0.0 and r["remain"] == 1.0 and r["per_class"][2] == 0.0 and r["per_class"][3] == 1.0
    assert forget_share(clf, gen, (2, 8)) == pytest.approx(0.2)
    assert forget_share(clf, onehot_images(drawn), (2, 8)) == 0.0
    with pytest.raises(ValueError, match="labels"):
        conditional_accuracy(clf, gen, labels[:5], forget_classes=(2,))


def test_eval_mode_restores_training_flag():
    clf = OracleClassifier().train()
    classify(clf, torch.zeros(2, 1, 16, 16))
    assert clf.training


def test_forget_class_confidence_tells_other_class_from_noise():
    "Class 2 drawn as a confident 0 (low entropy, low p(2)); class 8 drawn as noise (uniform logits: entropy log K)."
    labels = torch.tensor([2, 2, 8, 8, 5])
    logits = torch.zeros(5, 10)
    logits[:2, 0] = 20.0                     # the classifier is sure these are 0s
    logits[4, 5] = 20.0
    r = forget_class_confidence(None, torch.zeros(5, 1, 4, 4), labels, (2, 8), logits=logits, n_boot=50)
    assert set(r["per_class"]) == {2, 8} and r["per_class"][2]["n"] == 2
    assert r["per_class"][2]["entropy"] < 1e-6 and r["per_class"][2]["p_forget"] < 1e-6 and r["per_class"][2]["accuracy"] == 0
    assert r["per_class"][8]["entropy"] == pytest.approx(np.log(10)) and r["per_class"][8]["p_forget"] == pytest.approx(0.1)
    assert r["entropy"] == pytest.approx(np.log(10) / 2) and r["max_entropy"] == pytest.approx(np.log(10))
    assert r["error_bars"]["entropy"]["value"] == pytest.approx(r["entropy"]) and r["error_bars"]["entropy"]["std"] == pytest.approx(0, abs=1e-9)
    # through the classifier: the oracle reads the one-hot pixel, so a faithful class-2 sample has p(2) > 1/K
    good = forget_class_confidence(OracleClassifier(), onehot_images(torch.tensor([2, 8])), torch.tensor([2, 8]), (2, 8))
    assert good["accuracy"] == 1.0 and good["p_forget"] > 0.1 and good["entropy"] < np.log(10)
    assert "error_bars" not in good


def test_guidance_scales():
    assert guidance_scales(0.5) == (0.0, 0.5, 1.0)
    assert guidance_scales(1.0) == (0.0, 1.0)
    assert guidance_scales(0.0) == (0.0, 1.0)


def test_null_label_leakage_tells_unscrubbed_from_retrain(shipped, tiny_uncond_unet):
    "The shipped Unscrubbed model's null label draws 2s and 8s about as the data holds them; Retrain, never shown them, less."
    from dataclasses import replace
    from erasediff.accuracy import null_label_leakage
    from erasediff.core import NoiseSchedule
    from erasediff.train import get_preset
    p = get_preset("digits"); sched, sampler = NoiseSchedule(p.schedule), replace(p.sampler, steps=10)
    leak = {w: null_label_leakage(shipped[w], shipped["classifier"], sched, sampler, (2, 8), 10, n_boot=50)
            for w in ("unscrubbed", "retrain")}
    assert leak["unscrubbed"]["n"] == 50 and leak["unscrubbed"]["share"] > 0.08
    assert leak["retrain"]["share"] < leak["unscrubbed"]["share"]
    assert null_label_leakage(tiny_uncond_unet, shipped["classifier"], sched, sampler, (2,), 2) is None   # no labels
