"""Tests of erasediff.metrics: every metric on a case with a known answer."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from erasediff.core import NoiseSchedule, SamplerConfig, ScheduleConfig, UNetConfig, eps_loss, make_unet, q_sample, save_unet
from erasediff.data import load_digits_set
from erasediff import metrics as M

torch.set_num_threads(1)

TINY = UNetConfig(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)


def make_tiny(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return make_unet(UNetConfig(**{**TINY.__dict__, **kw}))


class OracleClassifier(nn.Module):
    "Reads the class from the image: logits = the first 10 pixels; features = the first 4 pixels."
    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
    def features(self, x): return x.flatten(1)[:, :4] + 0 * self.dummy
    def forward(self, x): return x.flatten(1)[:, :10] + 0 * self.dummy


def onehot_images(labels: torch.Tensor) -> torch.Tensor:
    "(N,1,16,16) images, -1 everywhere but pixel `label` of the first row set to +1."
    x = -torch.ones(len(labels), 1, 16, 16)
    x[torch.arange(len(labels)), 0, 0, labels] = 1.0
    return x


# --- Fréchet distance -------------------------------------------------------------------------------------------

def _gauss(d=5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T + np.eye(d)


def test_frechet_identical_is_zero():
    mu, sig = _gauss()
    assert M.frechet_distance(mu, sig, mu, sig) == pytest.approx(0.0, abs=1e-8)


def test_frechet_mean_shift_is_squared_norm():
    mu, sig = _gauss()
    delta = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert M.frechet_distance(mu, sig, mu + delta, sig) == pytest.approx(delta @ delta, rel=1e-6)


def test_frechet_diagonal_covariances():
    d = M.frechet_distance(np.zeros(3), np.diag([1.0, 4.0, 9.0]), np.ones(3), np.diag([4.0, 4.0, 1.0]))
    assert d == pytest.approx(3 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2, rel=1e-9)


def test_frechet_agrees_with_cleanfid():
    from cleanfid.fid import frechet_distance as cf
    (m1, s1), (m2, s2) = _gauss(6, 1), _gauss(6, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cf(m1, s1, m2, s2)
    assert M.frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8)


def test_frechet_validation():
    mu, sig = _gauss()
    with pytest.raises(ValueError, match="same length"):
        M.frechet_distance(mu, sig, mu[:3], sig[:3, :3])
    with pytest.raises(ValueError, match="sigma"):
        M.frechet_distance(mu, sig[:3, :3], mu, sig)
    with pytest.raises(ValueError, match="at least 2"):
        M.feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="2-d"):
        M.frechet_from_features(np.zeros(5), np.zeros((5, 1)))


def test_frechet_from_features_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20000, 2)), rng.normal(size=(20000, 2)) + [2.0, 0.0]
    assert M.frechet_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    assert M.frechet_from_features(a, b) == pytest.approx(4.0, abs=0.1)


@pytest.mark.parametrize("n1,n2,d", [(30, 20, 50), (50, 50, 50), (2, 7, 3), (40, 60, 5)])
def test_frechet_low_rank_route_matches_sqrtm(n1, n2, d):
    rng = np.random.default_rng(n1 + n2 + d)
    f1, f2 = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) @ rng.normal(size=(d, d)) + 0.3
    ref = M.frechet_distance(*M.feature_stats(f1), *M.feature_stats(f2))
    assert M.frechet_from_features(f1, f2) == pytest.approx(ref, rel=1e-6, abs=1e-8)
    assert M.frechet_from_features(f1, f1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_by_class_groups():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(size=(40, 2)) + c * 10 for c in range(3)])
    labels = np.repeat([0, 1, 2], 40)
    same = M.frechet_by_class(feats, labels, feats, labels, forget_classes=[2])
    assert all(v == pytest.approx(0, abs=1e-8) for v in same["per_class"].values())
    assert same["forget"] == pytest.approx(0, abs=1e-8) and same["remain"] == pytest.approx(0, abs=1e-8)
    # the generator draws class 0 when asked for the forget class 2: forget distance ~ ||20 * (1, 1)||^2 = 800
    gen_lab = labels.copy(); gen_lab[labels == 0] = 2; gen_lab[labels == 2] = 0
    r = M.frechet_by_class(feats, gen_lab, feats, labels, forget_classes=[2])
    assert r["per_class"][1] == pytest.approx(0, abs=1e-8)
    assert 700 < r["forget"] < 900 and 700 < r["per_class"][0] < 900
    assert M.frechet_by_class(feats[:1], labels[:1], feats, labels, forget_classes=[2])["per_class"][0] is None


# --- error bars: the bootstrap ------------------------------------------------------------------------------------

def test_bootstrap_indices_and_mean():
    strata = np.repeat([0, 1, 2], [5, 7, 9])
    idx = M.bootstrap_indices(21, 50, seed=3, tag="t", strata=strata)
    assert idx.shape == (50, 21) and (strata[idx] == strata[None]).all()          # each class resampled within itself
    np.testing.assert_array_equal(idx, M.bootstrap_indices(21, 50, seed=3, tag="t", strata=strata))  # seeded
    assert not np.array_equal(idx, M.bootstrap_indices(21, 50, seed=3, tag="u", strata=strata))
    hits = (np.random.default_rng(0).random(400) < 0.3).astype(float)            # a proportion p over n = 400 samples
    eb = M.bootstrap_mean(hits, n_boot=2000)
    p = hits.mean()
    assert eb["value"] == p and eb["std"] == pytest.approx(np.sqrt(p * (1 - p) / 400), rel=0.1)
    assert eb["ci95"][0] < p < eb["ci95"][1]
    assert M.bootstrap_mean([], n_boot=10) == {"value": None, "std": None, "ci95": None}
    assert M.bootstrap_mean(hits, n_boot=0)["std"] is None


def test_bootstrap_mean_weights_travel_with_their_values():
    "90 zeros of weight 1/90 and 10 ones of weight 1/10: a mean of two class means, 0.5; each resample keeps the pairs."
    v, w = np.r_[np.zeros(90), np.ones(10)], np.r_[np.full(90, 1 / 90), np.full(10, 1 / 10)]
    eb = M.bootstrap_mean(v, weights=w, n_boot=500, seed=0, tag="w")
    assert eb["value"] == pytest.approx(0.5)
    assert eb["ci95"][0] < 0.5 < eb["ci95"][1] and eb["std"] > 0      # weights left in place gave replicates near 0.1
    strat = M.bootstrap_mean(v, weights=w, n_boot=50, strata=(v > 0).astype(int))   # class counts fixed: always 0.5
    assert strat["std"] == pytest.approx(0, abs=1e-12)


def test_float64_work_leaves_mps_for_the_cpu():
    assert M._float64_device("mps") == torch.device("cpu")           # Apple's MPS has no float64
    assert M._float64_device(torch.device("mps", 0)) == torch.device("cpu")
    assert M._float64_device("cpu") == torch.device("cpu")
    assert M._float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    rng = np.random.default_rng(0)
    g, r = rng.normal(size=(40, 6)), rng.normal(size=(60, 6))
    assert M.bootstrap_frechet(g, r, n_boot=20, device="mps") == M.bootstrap_frechet(g, r, n_boot=20)   # runs on the CPU


def test_bootstrap_frechet_is_the_distance_of_each_resample():
    rng = np.random.default_rng(0)
    for n, d in ((30, 50), (200, 20)):                                   # the n x n route and the d x d route
        g, r = rng.normal(size=(n, d)), rng.normal(size=(150, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.2
        mu_r, s_r = (torch.as_tensor(a) for a in M.feature_stats(r))
        w, V = torch.linalg.eigh(s_r)
        root = (V * w.clamp_min(0).sqrt()) @ V.T
        idx = torch.as_tensor(M.bootstrap_indices(n, 3, seed=1))
        fast = M._frechet_to_reference(torch.as_tensor(g)[idx], mu_r, root, float(torch.trace(s_r)))
        slow = [M.frechet_from_features(g[i.numpy()], r) for i in idx]
        np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-6)
    eb = M.bootstrap_frechet(g, r, n_boot=100)
    assert eb["value"] == pytest.approx(M.frechet_from_features(g, r)) and eb["std"] > 0
    assert eb["ci95"][0] < eb["value"] < eb["ci95"][1]                      # re-centred: duplicates inflate resampled FDs


# --- Inception through clean-fid, offline -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def inception_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("inception")
    p = M.write_inception_weights(d)
    assert p == d / M.INCEPTION_FILE and p.stat().st_size > 80e6
    return d


def test_inception_features_and_fid_offline(inception_dir):
    "The real clean-fid Inception path on 8 + 2 + 6 tiny images (16x16 digits, resized to 299x299)."
    x, y = load_digits_set("train").tensors()
    imgs = torch.cat([x[y == 0][:4], x[y == 1][:4]])
    f = M.inception_features(imgs, weights=inception_dir, batch_size=4)
    assert f.shape == (8, 2048) and f.dtype == np.float32 and np.isfinite(f).all() and f.std() > 0
    f2 = M.inception_features(imgs[1:3], weights=inception_dir / M.INCEPTION_FILE, batch_size=1)
    np.testing.assert_allclose(f2, f[1:3], rtol=1e-4, atol=1e-4)   # independent of batching and of how weights are named
    # 0s vs 1s differ far more than two pairs of 0s
    assert np.linalg.norm(f[:2].mean(0) - f[2:4].mean(0)) < np.linalg.norm(f[:4].mean(0) - f[4:].mean(0))
    assert M.frechet_from_features(f, f) == pytest.approx(0.0, abs=1e-3)
    assert M.inception_fid(x[y == 3][:3], x[y == 7][:3], weights=inception_dir) > 1.0


def test_inception_weights_resolution(tmp_path, inception_dir, monkeypatch):
    with pytest.raises(FileNotFoundError, match="write_inception_weights"):
        M.resolve_inception_weights(tmp_path / "nothing" / M.INCEPTION_FILE)
    other = tmp_path / "renamed.pt"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="inception-2015-12-05.pt"):
        M.resolve_inception_weights(other)
    monkeypatch.setenv("ERASEDIFF_INCEPTION", str(inception_dir))
    assert M.default_inception_path() == inception_dir / M.INCEPTION_FILE
    assert M.resolve_inception_weights() == inception_dir / M.INCEPTION_FILE


def test_inception_path_rule_refuses_misnamed_files(tmp_path, monkeypatch):
    "One rule for $ERASEDIFF_INCEPTION, weights= and path=: a folder holding inception-2015-12-05.pt, or that file."
    mine = tmp_path / "my_inception.pt"
    mine.write_bytes(b"weights under another name")
    monkeypatch.setenv("ERASEDIFF_INCEPTION", str(mine))
    for call in (M.default_inception_path, M.resolve_inception_weights, M.write_inception_weights):
        with pytest.raises(ValueError, match=r"ERASEDIFF_INCEPTION.*inception-2015-12-05\.pt"):
            call()
    monkeypatch.delenv("ERASEDIFF_INCEPTION")
    with pytest.raises(ValueError, match=r"weights.*inception-2015-12-05\.pt"):
        M.resolve_inception_weights(tmp_path / "absent" / "other.pt")          # misnamed and missing: the name is the error
    with pytest.raises(ValueError, match=r"path.*inception-2015-12-05\.pt"):
        M.write_inception_weights(mine)
    monkeypatch.setenv("ERASEDIFF_INCEPTION", str(tmp_path / "new_folder"))   # a folder not made yet: the file inside it
    assert M.default_inception_path() == tmp_path / "new_folder" / M.INCEPTION_FILE
    monkeypatch.setenv("ERASEDIFF_INCEPTION", str(tmp_path / M.INCEPTION_FILE))
    assert M.default_inception_path() == tmp_path / M.INCEPTION_FILE


def test_evaluate_checkpoint_checks_inception_path_before_any_work(tmp_path, monkeypatch):
    mine = tmp_path / "my_inception.pt"
    mine.write_bytes(b"x")
    def no_work(*a, **k): raise AssertionError("generated samples before checking the Inception weights path")
    monkeypatch.setattr(M, "generate", no_work)
    monkeypatch.setattr(M, "load_unet", no_work)
    with pytest.raises(ValueError, match=r"inception_weights.*inception-2015-12-05\.pt"):
        M.evaluate_checkpoint(tmp_path / "ck", toy_preset(), out=tmp_path / "o", classifier=OracleClassifier(),
                              inception=True, inception_weights=mine, progress=False)
    monkeypatch.setenv("ERASEDIFF_INCEPTION", str(mine))
    with pytest.raises(ValueError, match="ERASEDIFF_INCEPTION"):
        M.evaluate_checkpoint(tmp_path / "ck", toy_preset(), out=tmp_path / "o", classifier=OracleClassifier(),
                              inception=True, progress=False)
    assert not (tmp_path / "o").exists()


def test_to_uint8_rgb():
    u = M.to_uint8_rgb(torch.tensor([[[[-1.0, 0.0, 1.0]]]]))
    assert u.shape == (1, 1, 3, 3) and u.dtype == np.uint8
    assert u[0, 0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="C = 1 or 3"):
        M.to_uint8_rgb(torch.zeros(1, 2, 4, 4))


# --- classifier space: Fréchet distance, accuracy -----------------------------------------------------------------

def test_classifier_frechet_distance_known_shift():
    clf = OracleClassifier()
    x = torch.randn(500, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert M.classifier_frechet_distance(clf, x, x) == pytest.approx(0.0, abs=1e-8)
    assert M.classifier_frechet_distance(clf, x, x + 0.5) == pytest.approx(4 * 0.25, rel=1e-6)  # 4 features shifted by 0.5


def test_classifier_features_requires_features():
    with pytest.raises(ValueError, match="features"):
        M.classifier_features(nn.Linear(2, 2), torch.zeros(1, 2))


def test_conditional_accuracy_and_forget_share():
    clf = OracleClassifier()
    labels = torch.arange(10).repeat(3)
    gen = onehot_images(labels)
    r = M.conditional_accuracy(clf, gen, labels, forget_classes=(2, 8))
    assert r["forget"] == 1.0 and r["remain"] == 1.0
    # an unlearned model draws a 0 when asked for 2 or 8
    drawn = torch.where(torch.isin(labels, torch.tensor([2, 8])), torch.zeros_like(labels), labels)
    r = M.conditional_accuracy(clf, onehot_images(drawn), labels, forget_classes=(2, 8))
    assert r["forget"] == 0.0 and r["remain"] == 1.0 and r["per_class"][2] == 0.0 and r["per_class"][3] == 1.0
    assert M.forget_share(clf, gen, (2, 8)) == pytest.approx(0.2)
    assert M.forget_share(clf, onehot_images(drawn), (2, 8)) == 0.0
    with pytest.raises(ValueError, match="labels"):
        M.conditional_accuracy(clf, gen, labels[:5], forget_classes=(2,))


def test_eval_mode_restores_training_flag():
    clf = OracleClassifier().train()
    M.classify(clf, torch.zeros(2, 1, 16, 16))
    assert clf.training


def test_forget_class_confidence_tells_other_class_from_noise():
    "Class 2 drawn as a confident 0 (low entropy, low p(2)); class 8 drawn as noise (uniform logits: entropy log K)."
    labels = torch.tensor([2, 2, 8, 8, 5])
    logits = torch.zeros(5, 10)
    logits[:2, 0] = 20.0                     # the classifier is sure these are 0s
    logits[4, 5] = 20.0
    r = M.forget_class_confidence(None, torch.zeros(5, 1, 4, 4), labels, (2, 8), logits=logits, n_boot=50)
    assert set(r["per_class"]) == {2, 8} and r["per_class"][2]["n"] == 2
    assert r["per_class"][2]["entropy"] < 1e-6 and r["per_class"][2]["p_forget"] < 1e-6 and r["per_class"][2]["accuracy"] == 0
    assert r["per_class"][8]["entropy"] == pytest.approx(np.log(10)) and r["per_class"][8]["p_forget"] == pytest.approx(0.1)
    assert r["entropy"] == pytest.approx(np.log(10) / 2) and r["max_entropy"] == pytest.approx(np.log(10))
    assert r["error_bars"]["entropy"]["value"] == pytest.approx(r["entropy"]) and r["error_bars"]["entropy"]["std"] == pytest.approx(0, abs=1e-9)
    # through the classifier: the oracle reads the one-hot pixel, so a faithful class-2 sample has p(2) > 1/K
    good = M.forget_class_confidence(OracleClassifier(), onehot_images(torch.tensor([2, 8])), torch.tensor([2, 8]), (2, 8))
    assert good["accuracy"] == 1.0 and good["p_forget"] > 0.1 and good["entropy"] < np.log(10)
    assert "error_bars" not in good


# --- membership inference --------------------------------------------------------------------------------------

def test_attack_metrics_known_answers():
    perfect = M.attack_metrics([5.0, 6.0, 7.0], [0.0, 1.0])        # cross-fitted: every fold's threshold separates
    assert (perfect["accuracy"], perfect["auc"], perfect["tpr_at_1_fpr"]) == (1.0, 1.0, None)   # 2 non-members: no TPR at 1 %
    assert M.attack_metrics([0.0, 1.0], [5.0, 6.0])["auc"] == 0.0
    assert M.attack_metrics([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], threshold=1.0)["accuracy"] == pytest.approx(0.5)
    assert M.attack_metrics([0.0, 1.0, 2.0], [0.0, 1.0, 2.0])["auc"] == 0.5
    # 1000 non-members 0..999; half the members above all of them, half at 985.5 (14 false positives = 1.4 % FPR to
    # reach them): at 1 % FPR, TPR = 0.5
    r = M.attack_metrics([2000.0] * 10 + [985.5] * 10, np.arange(1000.0))
    assert r["tpr_at_1_fpr"] == 0.5
    with pytest.raises(ValueError, match="members"):
        M.attack_metrics([], [1.0])


def test_best_threshold_and_fixed_threshold():
    tau, acc = M.best_threshold([3.0, 4.0, 5.0], [0.0, 1.0])
    assert tau == 2.0 and acc == 1.0                                 # midway between the adjacent scores 1 and 3
    assert M.best_threshold([0.0, 1.0], [5.0, 6.0]) == (np.inf, 0.5)  # no cut helps: nobody is a member
    assert M.balanced_accuracy_at([3.0, 4.0, 5.0], [0.0, 1.0], 3.5) == pytest.approx(0.5 * (2 / 3 + 1))
    assert M.auc_score([1.0, 2.0], [1.0, 0.0]) == pytest.approx((1.5 + 2) / 4)   # a tie counts 1/2


def test_tpr_at_low_fpr_only_with_enough_nonmembers():
    m = np.full(20, 5000.0)
    assert M.tpr_at_fpr(m, np.arange(999.0)) is None                  # 999 x 1 % < 10 possible false positives
    assert M.tpr_at_fpr(m, np.arange(1000.0)) == 1.0
    r = M.mia_from_losses(torch.zeros(30, 1), torch.ones(70, 1), (10,), n_shuffles=0, n_boot=0)
    assert r["mean"]["tpr_at_1_fpr"] is None and "70 non-members" in r["tpr_note"]


def test_tpr_at_fpr_keeps_every_roc_point():
    "Members and non-members with the same 1000 scores: the ROC is the diagonal, TPR = FPR = 1 % (10 false positives)."
    s = -np.arange(1000.0)
    assert M.tpr_at_fpr(s, s, fpr=0.01, min_false_positives=10) == pytest.approx(0.01)   # dropped points gave 0.001


def _null_draw(rng, shift=0.0, k=1):
    "Per-sample losses (M, k) of 281 members and 70 non-members, and a calibration set of 290 vs 290; members lower by shift."
    L = torch.tensor(rng.normal(size=(281 + 70 + 290 + 290, k)))
    return L[:281] - shift, L[281:351], (L[351:641] - shift, L[641:])


def test_mia_without_signal_is_at_chance():
    """Members and non-members from one distribution: over 200 draws of 281 vs 70 the attack's accuracy averages 0.5
    within 3 standard errors, calibrated or cross-fitted; the old in-sample best threshold averages ~0.54."""
    rng = np.random.default_rng(0)
    cal, cross, insample, auc, above = [], [], [], [], []
    for i in range(200):
        lm, ln, calib = _null_draw(rng)
        r = M.mia_from_losses(lm, ln, (10,), calibration=calib, n_shuffles=50, n_boot=0, seed=i)
        cal.append(r["mean"]["accuracy"]); auc.append(r["mean"]["auc"]); above.append(r["chance"]["mean"]["accuracy"]["exceeds"])
        cross.append(M.mia_from_losses(lm, ln, (10,), n_shuffles=0, n_boot=0, seed=i)["mean"]["accuracy"])
        insample.append(M.best_threshold(-lm[:, 0].numpy(), -ln[:, 0].numpy())[1])
    for name, v in (("calibrated", cal), ("cross-fitted", cross), ("auc", auc)):
        v = np.array(v)
        se = v.std(ddof=1) / np.sqrt(len(v))
        assert abs(v.mean() - 0.5) < 3 * se, (name, v.mean(), se)
    v = np.array(insample)
    assert v.mean() - 0.5 > 3 * v.std(ddof=1) / np.sqrt(len(v))      # the biased estimate this protocol replaces
    assert np.mean(above) < 0.1                                       # mean + 2 std of the shuffles: ~2.5 % false alarms


def test_cross_fitted_calls_refit_each_relabelling_on_the_same_folds():
    "The vectorised cross-fitting equals, row by row, folds of positions fixed by the seed and `best_threshold` per fold."
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=37), 1)                          # ties included
    Mm, k, seed = 25, 4, 7
    perms = np.stack([np.arange(37)] + [rng.permutation(37) for _ in range(20)])
    calls = M._cross_fitted_calls(scores, perms, Mm, k, seed)
    fr = M._rng(seed, "mia/folds")
    fold = np.r_[fr.permutation(Mm) % k, fr.permutation(37 - Mm) % k]
    for row, perm in zip(calls, perms):
        s, ref = scores[perm], np.zeros(37, bool)
        for f in range(k):
            tr = fold != f
            tau, _ = M.best_threshold(s[:Mm][tr[:Mm]], s[Mm:][tr[Mm:]])
            ref[~tr] = s[~tr] >= tau
        np.testing.assert_array_equal(row, ref)
    pm, pn = M._cross_fitted_predictions(scores[:Mm], scores[Mm:], k, seed)
    np.testing.assert_array_equal(np.r_[pm, pn], calls[0])


def test_mia_cross_fitted_chance_refits_the_threshold():
    """No signal, 1000 draws of 281 members vs 70 non-members (digits' sizes), threshold cross-fitted on the target: the
    shuffle baseline refits the threshold on each relabelling, as the observed accuracy was obtained, so its std matches
    the observed accuracy's spread over draws and 'exceeds' (mean + 2 std) fires at the nominal ~2.3 %. With the
    observed calls held fixed under the shuffles the null was too narrow (std ratio 0.93) and fired 3.6 % of the time."""
    rng = np.random.default_rng(0)
    acc, sd, fired = [], [], []
    for i in range(1000):
        lm, ln, _ = _null_draw(rng)
        r = M.mia_from_losses(lm, ln, (10,), n_shuffles=50, n_boot=0, seed=i)
        ch = r["chance"]["mean"]["accuracy"]
        acc.append(r["mean"]["accuracy"]); sd.append(ch["std"]); fired.append(ch["exceeds"])
    ratio = np.sqrt(np.mean(np.square(sd))) / np.std(acc, ddof=1)
    assert 0.96 < ratio < 1.08, ratio
    assert abs(np.mean(fired) - 0.023) < 0.01, np.mean(fired)


def test_mia_error_bars_refit_the_calibrated_threshold():
    """The calibration pair (20 vs 20) is a sample too: over 100 draws of target and calibration, the bootstrap std of the
    calibrated accuracy matches its spread only when each replicate refits the threshold on resampled calibration scores
    (a threshold held fixed gave 2/3 of it). Seeded: the same call gives the same bars."""
    rng = np.random.default_rng(0)
    acc, sd = [], []
    for i in range(100):
        L = torch.tensor(rng.normal(size=(440, 1)))
        lm, ln, cal = L[:200], L[200:400] + 1.0, (L[400:420] - 1.0, L[420:] + 1.0)   # calibration members: lower losses
        r = M.mia_from_losses(lm, ln, (10,), calibration=cal, n_shuffles=0, n_boot=200, seed=i)
        acc.append(r["mean"]["accuracy"]); sd.append(r["error_bars"]["mean"]["accuracy"]["std"])
    ratio = np.sqrt(np.mean(np.square(sd))) / np.std(acc, ddof=1)
    assert 0.85 < ratio < 1.25, ratio
    again = M.mia_from_losses(lm, ln, (10,), calibration=cal, n_shuffles=0, n_boot=200, seed=99)["error_bars"]
    assert again == r["error_bars"]


def test_mia_strong_signal_beats_shuffle_baseline():
    lm, ln, calib = _null_draw(np.random.default_rng(1), shift=2.5, k=3)   # per timestep: AUC Phi(2.5 / sqrt 2) = 0.96
    r = M.mia_from_losses(lm, ln, (10, 50, 100), calibration=calib, seed=0)
    assert r["mean"]["accuracy"] > 0.85 and r["mean"]["auc"] > 0.93 and r["avg_loss"]["accuracy"] > 0.93
    for key in ("mean", "avg_loss"):
        for stat in ("accuracy", "auc"):
            ch = r["chance"][key][stat]
            assert abs(ch["mean"] - 0.5) < 0.02 and ch["std"] > 0 and ch["exceeds"] is True
            eb = r["error_bars"][key][stat]
            assert eb["value"] == r[key][stat] and eb["std"] > 0 and eb["ci95"][0] <= eb["value"] <= eb["ci95"][1]
    assert r["chance"]["n_shuffles"] == 200 and set(r["chance"]["per_timestep"]) == {10, 50, 100}


def test_mia_threshold_comes_from_calibration_only():
    "A calibration set whose threshold lies below every target score: all called members, accuracy 0.5, AUC untouched."
    lm, ln = torch.zeros(50, 1), torch.ones(20, 1)                     # perfectly separable target (scores -loss)
    far = (torch.full((30, 1), 10.0), torch.full((30, 1), 11.0))       # calibration scores -10 vs -11: tau = -10.5
    r = M.mia_from_losses(lm, ln, (10,), calibration=far, n_boot=0)
    assert r["per_timestep"][10]["threshold"] == -10.5 and r["per_timestep"][10]["calibration_accuracy"] == 1.0
    assert r["mean"]["accuracy"] == 0.5 and r["mean"]["auc"] == 1.0
    assert r["n_calibration_members"] == 30 and r["protocol"].startswith("calibrated")
    with pytest.raises(ValueError, match="calibration"):
        M.mia_from_losses(lm, ln, (10,), calibration=(torch.zeros(3, 2), torch.zeros(3, 2)))


class Memorizer(nn.Module):
    """A 'diffusion model' that memorised `train` images: it recovers the noise exactly for them (loss 0)
    by picking the stored image whose implied noise is smallest."""
    def __init__(self, train: torch.Tensor, schedule: NoiseSchedule):
        super().__init__()
        self.train_x, self.schedule = train, schedule
        self.config = SimpleNamespace(num_class_embeds=None)
        self.w = nn.Parameter(torch.zeros(()))
    def forward(self, x_t, t, class_labels=None):
        a = self.schedule.alpha_bar(t)
        cand = (x_t[:, None] - a.sqrt()[:, None] * self.train_x[None]) / (1 - a).sqrt()[:, None]   # (B, M, C, H, W)
        best = cand.flatten(2).pow(2).sum(2).argmin(1)
        return SimpleNamespace(sample=cand[torch.arange(len(x_t)), best] + 0 * self.w)


def test_membership_inference_on_a_memorizer():
    sched = NoiseSchedule()
    x, y = load_digits_set("train").tensors()
    members, nonmembers = x[:30], x[30:60]
    model = Memorizer(members, sched)
    r = M.membership_inference(model, sched, (members, None), (nonmembers, None), timesteps=(10, 50))
    assert r["mean"] == {"accuracy": 1.0, "auc": 1.0, "tpr_at_1_fpr": None}       # 30 non-members: no TPR at 1 % FPR
    cal = M.membership_inference(model, sched, (members, None), (nonmembers, None), timesteps=(10, 50),
                                 calibration=((members[:10], None), (x[60:80], None)))
    assert cal["mean"]["accuracy"] == 1.0 and cal["n_calibration_nonmembers"] == 20
    assert r["avg_loss"]["auc"] == 1.0
    assert r["per_timestep"][10]["loss_members"] < 1e-8 < r["per_timestep"][10]["loss_nonmembers"]
    assert r["n_members"] == 30 and r["timesteps"] == [10, 50]


def test_per_sample_losses_fixed_noise_and_eps_loss():
    sched = NoiseSchedule()
    model = make_tiny().eval()
    x, y = load_digits_set("train").tensors()
    x, y = x[:6], y[:6]
    L = M.per_sample_losses(model, x, y, sched, (10, 300), seed=3)
    assert L.shape == (6, 2)
    torch.testing.assert_close(L, M.per_sample_losses(model, x, y, sched, (10, 300), seed=3, batch_size=4))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = eps_loss(model, x, y, sched, noise=noise, t=torch.full((6,), 300), reduction="none")
    torch.testing.assert_close(L[:, 1], ref)
    assert not torch.allclose(L, M.per_sample_losses(model, x, y, sched, (10, 300), seed=4))
    with pytest.raises(ValueError, match="timesteps"):
        M.per_sample_losses(model, x, y, sched, (1000,))
    with pytest.raises(ValueError, match="labels are required"):
        M.per_sample_losses(model, x, None, sched, (10,))
    unc = make_tiny(num_classes=None).eval()
    assert M.per_sample_losses(unc, x, y, sched, (10,)).shape == (6, 1)   # labels ignored by unconditional models


# --- KL of the predicted noise, figures --------------------------------------------------------------------------

def test_gaussian_kl_to_standard():
    g = torch.Generator().manual_seed(0)
    kl = M.gaussian_kl_to_standard(torch.randn(3, 200_000, generator=g))
    torch.testing.assert_close(kl, torch.zeros(3, dtype=torch.float64), atol=1e-3, rtol=0)
    v = torch.tensor([[0.5 - 2.0, 0.5 + 2.0]])   # mean 0.5, (biased) variance 4
    assert float(M.gaussian_kl_to_standard(v)) == pytest.approx(0.5 * (4 + 0.25 - 1 - np.log(4)), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        M.gaussian_kl_to_standard(torch.zeros(3, 1))


class NoisePredictor(nn.Module):
    "Predicts eps ~ N(mu, s^2) whatever the input."
    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s, self.config = mu, s, SimpleNamespace(num_class_embeds=None)
        self.w = nn.Parameter(torch.zeros(()))
    def forward(self, x, t, class_labels=None):
        return SimpleNamespace(sample=self.mu + self.s * torch.randn_like(x) + 0 * self.w)


def test_predicted_noise_kl_known_distribution():
    torch.manual_seed(0)
    x = torch.zeros(4, 1, 128, 128)   # 16384 values per sample: the fitted mean/variance are within ~1-2%
    kl = M.predicted_noise_kl(NoisePredictor(0.5, 2.0), x, None, NoiseSchedule(), (10, 500))
    assert kl.shape == (4, 2)
    torch.testing.assert_close(kl, torch.full((4, 2), 0.5 * (4 + 0.25 - 1 - np.log(4)), dtype=torch.float64), atol=0.05, rtol=0)
    assert float(M.predicted_noise_kl(NoisePredictor(0.0, 1.0), x, None, NoiseSchedule(), (10,)).max()) < 0.01


def test_predicted_noise_stats_loss_is_eps_loss():
    sched = NoiseSchedule()
    model = make_tiny().eval()
    x, y = load_digits_set("train").tensors()
    loss, kl = M.predicted_noise_stats(model, x[:5], y[:5], sched, (10, 700), seed=2, batch_size=3)
    torch.testing.assert_close(loss, M.per_sample_losses(model, x[:5], y[:5], sched, (10, 700), seed=2), rtol=1e-5, atol=1e-6)
    # batch 3 vs the default batch: float32 network outputs summed in another order (seen: 2e-7 apart, float64 KL)
    torch.testing.assert_close(kl, M.predicted_noise_kl(model, x[:5], y[:5], sched, (10, 700), seed=2), rtol=1e-5, atol=1e-6)
    assert kl.shape == (5, 2) and (kl >= 0).all()


def test_mia_from_losses_shapes():
    r = M.mia_from_losses(torch.zeros(4, 2), torch.ones(3, 2), (10, 20))
    assert r["mean"]["auc"] == 1.0 and r["per_timestep"][20]["loss_nonmembers"] == 1.0
    with pytest.raises(ValueError, match="losses must be"):
        M.mia_from_losses(torch.zeros(4, 2), torch.ones(3, 2), (10,))


def test_figures_are_figures():
    from matplotlib.figure import Figure
    rng = np.random.default_rng(0)
    for fn in (M.plot_kl, M.plot_losses):
        fig = fn(rng.gamma(2, size=50), rng.gamma(3, size=50), title="t")
        assert isinstance(fig, Figure) and fig.axes[0].get_title() == "t"
        assert len(fig.axes[0].get_legend().get_texts()) == 2


# --- weight distance, precision/recall, gradient conflict --------------------------------------------------------

def test_weight_distance():
    a, b = make_tiny(0), make_tiny(0)
    assert M.weight_distance(a, b)["l2"] == 0.0
    p = next(b.parameters())
    with torch.no_grad():
        p.add_(2.0)
    r = M.weight_distance(a, b)
    assert r["l2"] == pytest.approx(2 * p.numel() ** 0.5, rel=1e-6)
    assert r["relative"] == pytest.approx(r["l2"] / r["reference_norm"])
    with pytest.raises(ValueError, match="different parameters|differ in shape"):
        M.weight_distance(a, make_tiny(0, block_out_channels=(8, 8)))


def test_precision_recall_known():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 3))
    assert M.precision_recall(real, real) == {"precision": 1.0, "recall": 1.0, "k": 3}
    far = M.precision_recall(real, real + 100)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    part = M.precision_recall(real, real[real[:, 0] > 0.5])   # good samples of a part of the data
    assert part["precision"] == 1.0 and part["recall"] < 0.6
    with pytest.raises(ValueError, match="k must be"):
        M.precision_recall(real[:3], real[:3], k=3)


def test_knn_radii():
    pts = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    torch.testing.assert_close(M.knn_radii(pts, k=1), torch.tensor([1.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(M.knn_radii(pts, k=2), torch.tensor([3.0, 2.0, 3.0, 5.0], dtype=torch.float64))


def test_gradient_cosine_known():
    lin = nn.Linear(2, 1, bias=False)
    x = torch.randn(5, 2)
    assert M.gradient_cosine(lin, lin(x).sum(), 3 * lin(x).sum())["cosine"] == pytest.approx(1.0)
    assert M.gradient_cosine(lin, lin(x).sum(), -lin(x).sum())["cosine"] == pytest.approx(-1.0)
    w = lin.weight[0]
    assert M.gradient_cosine(lin, w[0] ** 2 + 1, (w[1] - 5) ** 2)["cosine"] == pytest.approx(0.0, abs=1e-12)  # orthogonal


def test_pair_batches_are_disjoint_across_pairs():
    gen = torch.Generator().manual_seed(0)
    pairs = M._pair_batches(100, 100, 10, 10, 8, gen)
    for side in (0, 1):                                                 # one permutation per set, consecutive slices
        assert len(torch.cat([p[side] for p in pairs]).unique()) == 80
    one = M._pair_batches(100, None, 6, 4, 10, gen)                     # one set: 10 pairs of 6 + 4 use all 100
    assert len(torch.cat([torch.cat(p) for p in one]).unique()) == 100
    wrap = M._pair_batches(25, 12, 10, 5, 3, gen)                       # set a holds 2 batches: the 3rd starts afresh
    assert len(torch.cat([wrap[0][0], wrap[1][0]]).unique()) == 20 and all(len(p[0].unique()) == 10 for p in wrap)
    assert len(torch.cat([wrap[0][1], wrap[1][1]]).unique()) == 10


def test_gradient_conflict_on_unet():
    sched = NoiseSchedule()
    model = make_tiny()
    x, y = load_digits_set("train").tensors()
    same = (x[:8], y[:8])
    assert M.gradient_conflict(model, sched, same, same)["cosine"] == pytest.approx(1.0, abs=1e-6)
    r = M.gradient_conflict(model, sched, (x[y == 5][:8], y[y == 5][:8]), (x[y == 2][:8], y[y == 2][:8]), forget_noise="uniform")
    assert -1 <= r["cosine"] <= 1 and r["grad_norm_remain"] > 0 and r["grad_norm_forget"] > 0
    assert all(p.grad is None for p in model.parameters())   # does not touch .grad
    with pytest.raises(ValueError, match="forget_noise"):
        M.gradient_conflict(model, sched, same, same, forget_noise="laplace")


@pytest.fixture(scope="module")
def trained_tiny():
    "A tiny UNet after 60 Adam steps on digits: its gradients are no longer all alike (an untrained one gives cos ~0.97)."
    sched = NoiseSchedule()
    x, y = load_digits_set("train").tensors()
    model = make_tiny()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        i = torch.randint(0, len(x), (64,), generator=g)
        loss = eps_loss(model, x[i], y[i], sched, generator=g)
        opt.zero_grad(); loss.backward(); opt.step()
    model.zero_grad(set_to_none=True)
    return model


def test_method_loss_gradient_with_itself_is_one():
    sched = NoiseSchedule()
    model = make_tiny(dropout=0.5).train()                 # dropout: only eval mode makes two passes agree
    x, y = load_digits_set("train").tensors()
    l_r, l_f, cfg = M.unlearning_losses(sched, "deviate", (2, 8), preset="digits")
    assert cfg.p_uncond == 0 and cfg.forget_loss == "deviate"
    fb, rb = (x[y == 2][:16], y[y == 2][:16]), (x[y == 5][:16], y[y == 5][:16])
    for loss, b in ((l_f, fb), (l_r, rb)):
        assert M.loss_gradient_cosine(model, loss, b, loss, b, seed_a=3, seed_b=3)["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert M.loss_gradient_cosine(model, l_f, fb, l_f, fb, seed_a=3, seed_b=4)["cosine"] < 1 - 1e-5   # other draws
    assert model.training and all(p.grad is None for p in model.parameters())


def test_gradient_conflict_remain_vs_remain(trained_tiny):
    "Two independent batches of D_r with independent draws: positive, clearly below 1, spread over pairs, reproducible."
    sched = NoiseSchedule()
    x, y = load_digits_set("train").tensors()
    keep = ~torch.isin(y, torch.tensor([2, 8]))
    l_r, _, _ = M.unlearning_losses(sched, "deviate", (2, 8), preset="digits")
    runs = [M.gradient_conflict_pairs(trained_tiny, l_r, (x[keep], y[keep]), l_r, None, n_pairs=8, batch_size_a=32, seed=s)
            for s in (0, 1)]
    for r in runs:
        assert len(r["per_pair"]) == 8 and r["batch_size_a"] == r["batch_size_b"] == 32
        assert 0 < r["cosine"] < 0.99 and r["std"] > 0 and np.std(r["per_pair"]) > 0
        assert r["cosine"] == pytest.approx(np.mean(r["per_pair"]))
    se = np.sqrt((runs[0]["std"] ** 2 + runs[1]["std"] ** 2) / 8)
    assert abs(runs[0]["cosine"] - runs[1]["cosine"]) < 4 * se        # two estimates of one expectation agree
    again = M.gradient_conflict_pairs(trained_tiny, l_r, (x[keep], y[keep]), l_r, None, n_pairs=8, batch_size_a=32, seed=0)
    assert again["per_pair"] == runs[0]["per_pair"]


def test_method_gradient_conflict_names_its_loss():
    sched = NoiseSchedule()
    x, y = load_digits_set("train").tensors()
    f = torch.isin(y, torch.tensor([2, 8]))
    kw = dict(n_pairs=2, batch_size=8, forget_batch_size=8)
    r = M.method_gradient_conflict(make_tiny(), sched, (x[~f], y[~f]), (x[f], y[f]), (2, 8), preset="digits", **kw)
    assert r["forget_loss"] == "deviate" and len(r["per_pair"]) == 2 and -1 <= r["cosine"] <= 1   # the preset's default
    assert r["batch_size_remain"] == 8 and "eval" in r["mode"]
    r = M.method_gradient_conflict(make_tiny(), sched, (x[~f], y[~f]), (x[f], y[f]), (2, 8), forget_loss="gaussian", **kw)
    assert r["forget_loss"] == "gaussian"
    r = M.method_gradient_conflict(make_tiny(num_classes=None), sched, (x[~f], None), (x[f], None), (2, 8), **kw)
    assert r["forget_loss"] == "retarget" and "unconditional" in r["forget_loss_note"]


def test_summarize_seeds():
    runs = [{"a": {"b": 1.0, "c": None}, "n": 3, "flag": True}, {"a": {"b": 3.0}, "n": 5}]
    agg = M.summarize_seeds(runs)
    assert agg["a.b"] == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "n": 2}
    assert agg["n"]["mean"] == 4.0 and "flag" not in agg and "a.c" not in agg
    assert M.summarize_seeds(runs[:1])["a.b"] == {"mean": 1.0, "std": None, "n": 1}   # one run: no spread to report
    with pytest.raises(ValueError, match="no results"):
        M.summarize_seeds([])


# --- evaluate_checkpoint -----------------------------------------------------------------------------------------

def toy_preset(**kw):
    return SimpleNamespace(**{**dict(name="toy", dataset="digits", dataset_kwargs={}, forget_classes=(2, 8), eval_per_class=3,
                                     sampler=SamplerConfig(steps=2), schedule=ScheduleConfig()), **kw})


def test_evaluate_checkpoint_writes_and_refuses_overwrite(tmp_path):
    ck = save_unet(make_tiny(), tmp_path / "ckpt")
    out = tmp_path / "eval"
    m = M.evaluate_checkpoint(ck, toy_preset(), out=out, classifier=OracleClassifier(), reference_retrain=ck,
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
    assert m["mia"]["n_members"] > m["mia"]["n_nonmembers"] > 0
    for key in ("classifier_fd", "precision_recall", "kl", "loss", "gradient_conflict", "cost"):
        assert key in m, key
    assert "fid" not in m                                           # digits: no Inception by default
    assert m["cost"]["wall_s"] > 0
    md = (out / "metrics.md").read_text()
    assert "| metric | value |" in md and "MIA on D_f" in md and "| 2 | yes |" in md
    assert "worst guidance scale" in md and "w = 0" in md and "What the classifier calls" in md
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
        M.evaluate_checkpoint(ck, toy_preset(), out=out, classifier=OracleClassifier(), progress=False)
    m2 = M.evaluate_checkpoint(ck, toy_preset(), out=out, classifier=OracleClassifier(), overwrite=True, seed=1,
                               progress=False, mia_timesteps=(100,))
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1 and m2["seed"] == 1


def _tree(root):
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_evaluate_checkpoint_default_out_is_under_cwd(tmp_path, monkeypatch):
    "out=None: runs/eval/<run name> under the working directory; nothing appears in the checkpoint's folder tree."
    ck = save_unet(make_tiny(), tmp_path / "store" / "myrun" / "unet")
    (tmp_path / "store" / "myrun" / "metrics.json").write_text(json.dumps({"method": "erasediff", "config": {"forget_loss": "uniform"}}))
    before = _tree(tmp_path / "store")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    m = M.evaluate_checkpoint(ck, toy_preset(eval_per_class=2), classifier=OracleClassifier(), progress=False, mia_timesteps=(100,))
    assert (tmp_path / "work" / "runs" / "eval" / "myrun" / "metrics.json").exists()
    assert _tree(tmp_path / "store") == before
    # the forget loss of the run that made the checkpoint, read from its metrics.json
    assert m["gradient_conflict"]["forget_loss"] == "uniform" and "metrics.json" in m["gradient_conflict"]["forget_loss_source"]
    # a run folder (with unet/) names the output the same way; a plain model folder by its own name
    assert M.default_eval_out(tmp_path / "store" / "myrun") == Path("runs/eval/myrun")
    assert M.default_eval_out("data/digits/unscrubbed") == Path("runs/eval/unscrubbed")
    monkeypatch.chdir(tmp_path / "store" / "myrun")                       # runs/eval would land inside the checkpoint
    with pytest.raises(ValueError, match="pass out="):
        M.evaluate_checkpoint(ck, toy_preset(eval_per_class=2), classifier=OracleClassifier(), progress=False)
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
            M.default_eval_out("some_model")
    monkeypatch.chdir(tmp_path)
    assert M.default_eval_out("some_model") == Path("runs/eval/some_model")


def test_evaluate_checkpoint_unconditional_and_validation(tmp_path):
    model = make_tiny(num_classes=None)
    m = M.evaluate_checkpoint(model, toy_preset(eval_per_class=2), out=tmp_path / "u", classifier=OracleClassifier(),
                              progress=False, mia_timesteps=(100,))
    assert not m["conditional"] and "accuracy" not in m and 0 <= m["forget_share"] <= 1
    assert set(m["classifier_fd"]) == {"remain", "all"}
    with pytest.raises(ValueError, match="out is required"):
        M.evaluate_checkpoint(model, toy_preset(), classifier=OracleClassifier())
    with pytest.raises(ValueError, match="n_per_class"):
        M.evaluate_checkpoint(model, toy_preset(), out=tmp_path / "v", n_per_class=1, classifier=OracleClassifier())
    with pytest.raises(ValueError, match="classes"):
        M.evaluate_checkpoint(make_tiny(num_classes=5), toy_preset(), out=tmp_path / "w", classifier=OracleClassifier())


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ERASEDIFF_SLOW"), reason="slow: set ERASEDIFF_SLOW=1")
def test_evaluate_checkpoint_with_inception(tmp_path, inception_dir):
    m = M.evaluate_checkpoint(make_tiny(), toy_preset(), out=tmp_path / "i", classifier=OracleClassifier(), n_per_class=2,
                              n_real_per_class=2, progress=False, mia_timesteps=(100,), inception=True,
                              inception_weights=inception_dir)
    assert set(m["fid"]) == {"per_class", "forget", "remain"} and len(m["fid"]["per_class"]) == 10
    assert all(v > 0 for v in m["fid"]["per_class"].values()) and m["fid"]["forget"] > 0
    assert "FID (Inception, clean-fid), forget" in (tmp_path / "i" / "metrics.md").read_text()


# --- acceptance on the shipped digits models (slow) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    train = pytest.importorskip("erasediff.train")
    try:
        return {w: train.load_reference("digits", w) for w in ("classifier", "unscrubbed", "retrain")}
    except FileNotFoundError as e:
        pytest.skip(f"shipped digits models missing: {e}")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ERASEDIFF_SLOW"), reason="slow: set ERASEDIFF_SLOW=1")
def test_shipped_classifier_frechet_halves_vs_other_class(shipped):
    x, y = load_digits_set("train").tensors()
    c3, c8 = x[y == 3], x[y == 8]
    h = len(c3) // 2
    same = M.classifier_frechet_distance(shipped["classifier"], c3[:h], c3[h:])
    other = M.classifier_frechet_distance(shipped["classifier"], c3, c8)
    assert same * 5 < other


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ERASEDIFF_SLOW"), reason="slow: set ERASEDIFF_SLOW=1")
def test_shipped_unscrubbed_vs_retrain(shipped, tmp_path):
    from erasediff.train import get_preset
    preset = get_preset("digits")
    r = {w: M.evaluate_checkpoint(shipped[w], preset, out=tmp_path / w, classifier=shipped["classifier"], n_per_class=30,
                                  progress=False) for w in ("unscrubbed", "retrain")}
    assert r["unscrubbed"]["accuracy"]["forget"] > 0.8 and r["retrain"]["accuracy"]["forget"] < 0.2
    assert r["unscrubbed"]["accuracy"]["remain"] > 0.8 and r["retrain"]["accuracy"]["remain"] > 0.8
    assert r["unscrubbed"]["mia"]["mean"]["auc"] > r["retrain"]["mia"]["mean"]["auc"]
