"""Tests of erasediff.measures: Fréchet distances, bootstrap error bars, Inception features, precision/recall."""
from __future__ import annotations
import os
import warnings
import numpy as np
import pytest
import torch
import torch.nn as nn
from erasediff.data import load_digits_set
from erasediff.measures import (INCEPTION_FILE, _float64_device, _frechet_to_reference, bootstrap_frechet, bootstrap_indices, bootstrap_mean, classifier_features, classifier_frechet_distance, default_inception_path, feature_stats, frechet_by_class, frechet_distance, frechet_from_features, inception_features, inception_fid, knn_radii, precision_recall, resolve_inception_weights, to_uint8_rgb, weight_distance, write_inception_weights)
torch.set_num_threads(1)
from _metric_helpers import OracleClassifier, make_tiny


def _gauss(d=5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T + np.eye(d)


def test_frechet_identical_is_zero():
    mu, sig = _gauss()
    assert frechet_distance(mu, sig, mu, sig) == pytest.approx(0.0, abs=1e-8)


def test_frechet_mean_shift_is_squared_norm():
    mu, sig = _gauss()
    delta = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance(mu, sig, mu + delta, sig) == pytest.approx(delta @ delta, rel=1e-6)


def test_frechet_diagonal_covariances():
    d = frechet_distance(np.zeros(3), np.diag([1.0, 4.0, 9.0]), np.ones(3), np.diag([4.0, 4.0, 1.0]))
    assert d == pytest.approx(3 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2, rel=1e-9)


def test_frechet_agrees_with_cleanfid():
    from cleanfid.fid import frechet_distance as cf
    (m1, s1), (m2, s2) = _gauss(6, 1), _gauss(6, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cf(m1, s1, m2, s2)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8)


def test_frechet_validation():
    mu, sig = _gauss()
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(mu, sig, mu[:3], sig[:3, :3])
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(mu, sig[:3, :3], mu, sig)
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="2-d"):
        frechet_from_features(np.zeros(5), np.zeros((5, 1)))


def test_frechet_from_features_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20000, 2)), rng.normal(size=(20000, 2)) + [2.0, 0.0]
    assert frechet_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_from_features(a, b) == pytest.approx(4.0, abs=0.1)


@pytest.mark.parametrize("n1,n2,d", [(30, 20, 50), (50, 50, 50), (2, 7, 3), (40, 60, 5)])
def test_frechet_low_rank_route_matches_sqrtm(n1, n2, d):
    rng = np.random.default_rng(n1 + n2 + d)
    f1, f2 = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) @ rng.normal(size=(d, d)) + 0.3
    ref = frechet_distance(*feature_stats(f1), *feature_stats(f2))
    assert frechet_from_features(f1, f2) == pytest.approx(ref, rel=1e-6, abs=1e-8)
    assert frechet_from_features(f1, f1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_by_class_groups():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(size=(40, 2)) + c * 10 for c in range(3)])
    labels = np.repeat([0, 1, 2], 40)
    same = frechet_by_class(feats, labels, feats, labels, forget_classes=[2])
    assert all(v == pytest.approx(0, abs=1e-8) for v in same["per_class"].values())
    assert same["forget"] == pytest.approx(0, abs=1e-8) and same["remain"] == pytest.approx(0, abs=1e-8)
    # the generator draws class 0 when asked for the forget class 2: forget distance ~ ||20 * (1, 1)||^2 = 800
    gen_lab = labels.copy(); gen_lab[labels == 0] = 2; gen_lab[labels == 2] = 0
    r = frechet_by_class(feats, gen_lab, feats, labels, forget_classes=[2])
    assert r["per_class"][1] == pytest.approx(0, abs=1e-8)
    assert 700 < r["forget"] < 900 and 700 < r["per_class"][0] < 900
    assert frechet_by_class(feats[:1], labels[:1], feats, labels, forget_classes=[2])["per_class"][0] is None


def test_bootstrap_indices_and_mean():
    strata = np.repeat([0, 1, 2], [5, 7, 9])
    idx = bootstrap_indices(21, 50, seed=3, tag="t", strata=strata)
    assert idx.shape == (50, 21) and (strata[idx] == strata[None]).all()          # each class resampled within itself
    np.testing.assert_array_equal(idx, bootstrap_indices(21, 50, seed=3, tag="t", strata=strata))  # seeded
    assert not np.array_equal(idx, bootstrap_indices(21, 50, seed=3, tag="u", strata=strata))
    hits = (np.random.default_rng(0).random(400) < 0.3).astype(float)            # a proportion p over n = 400 samples
    eb = bootstrap_mean(hits, n_boot=2000)
    p = hits.mean()
    assert eb["value"] == p and eb["std"] == pytest.approx(np.sqrt(p * (1 - p) / 400), rel=0.1)
    assert eb["ci95"][0] < p < eb["ci95"][1]
    assert bootstrap_mean([], n_boot=10) == {"value": None, "std": None, "ci95": None}
    assert bootstrap_mean(hits, n_boot=0)["std"] is None


def test_bootstrap_mean_weights_travel_with_their_values():
    "90 zeros of weight 1/90 and 10 ones of weight 1/10: a mean of two class means, 0.5; each resample keeps the pairs."
    v, w = np.r_[np.zeros(90), np.ones(10)], np.r_[np.full(90, 1 / 90), np.full(10, 1 / 10)]
    eb = bootstrap_mean(v, weights=w, n_boot=500, seed=0, tag="w")
    assert eb["value"] == pytest.approx(0.5)
    assert eb["ci95"][0] < 0.5 < eb["ci95"][1] and eb["std"] > 0      # weights left in place gave replicates near 0.1
    strat = bootstrap_mean(v, weights=w, n_boot=50, strata=(v > 0).astype(int))   # class counts fixed: always 0.5
    assert strat["std"] == pytest.approx(0, abs=1e-12)


def test_float64_work_leaves_mps_for_the_cpu():
    assert _float64_device("mps") == torch.device("cpu")           # Apple's MPS has no float64
    assert _float64_device(torch.device("mps", 0)) == torch.device("cpu")
    assert _float64_device("cpu") == torch.device("cpu")
    assert _float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    rng = np.random.default_rng(0)
    g, r = rng.normal(size=(40, 6)), rng.normal(size=(60, 6))
    assert bootstrap_frechet(g, r, n_boot=20, device="mps") == bootstrap_frechet(g, r, n_boot=20)   # runs on the CPU


def test_bootstrap_frechet_is_the_distance_of_each_resample():
    rng = np.random.default_rng(0)
    for n, d in ((30, 50), (200, 20)):                                   # the n x n route and the d x d route
        g, r = rng.normal(size=(n, d)), rng.normal(size=(150, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.2
        mu_r, s_r = (torch.as_tensor(a) for a in feature_stats(r))
        w, V = torch.linalg.eigh(s_r)
        root = (V * w.clamp_min(0).sqrt()) @ V.T
        idx = torch.as_tensor(bootstrap_indices(n, 3, seed=1))
        fast = _frechet_to_reference(torch.as_tensor(g)[idx], mu_r, root, float(torch.trace(s_r)))
        slow = [frechet_from_features(g[i.numpy()], r) for i in idx]
        np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-6)
    eb = bootstrap_frechet(g, r, n_boot=100)
    assert eb["value"] == pytest.approx(frechet_from_features(g, r)) and eb["std"] > 0
    assert eb["ci95"][0] < eb["value"] < eb["ci95"][1]                      # re-centred: duplicates inflate resampled FDs


def test_inception_features_and_fid_offline(inception_dir):
    "The real clean-fid Inception path on 8 + 2 + 6 tiny images (16x16 digits, resized to 299x299)."
    x, y = load_digits_set("train").tensors()
    imgs = torch.cat([x[y == 0][:4], x[y == 1][:4]])
    f = inception_features(imgs, weights=inception_dir, batch_size=4)
    assert f.shape == (8, 2048) and f.dtype == np.float32 and np.isfinite(f).all() and f.std() > 0
    f2 = inception_features(imgs[1:3], weights=inception_dir / INCEPTION_FILE, batch_size=1)
    np.testing.assert_allclose(f2, f[1:3], rtol=1e-4, atol=1e-4)   # independent of batching and of how weights are named
    # 0s vs 1s differ far more than two pairs of 0s
    assert np.linalg.norm(f[:2].mean(0) - f[2:4].mean(0)) < np.linalg.norm(f[:4].mean(0) - f[4:].mean(0))
    assert frechet_from_features(f, f) == pytest.approx(0.0, abs=1e-3)
    assert inception_fid(x[y == 3][:3], x[y == 7][:3], weights=inception_dir) > 1.0


def test_inception_weights_resolution(tmp_path, inception_dir, monkeypatch):
    with pytest.raises(FileNotFoundError, match="write_inception_weights"):
        resolve_inception_weights(tmp_path / "nothing" / INCEPTION_FILE)
    other = tmp_path / "renamed.pt"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="inception-2015-12-05.pt"):
        resolve_inception_weights(other)
    monkeypatch.setenv("ERASEDIFF_INCEPTION", str(inception_dir))
    assert default_inception_path() == inception_dir / INCEPTION_FILE
    assert resolve_inception_weights() == inception_dir / INCEPTION_FILE


def test_inception_path_rule_refuses_misnamed_files(tmp_path, monkeypatch):
    "One rule for $ERASEDIFF_INCEPTION, weights= and path=: a folder holding inception-2015-12-05.pt, or that file."
    mine = tmp_path / "my_inception.pt"
    mine.write_bytes(b"weights under another name")
    monkeypatch.setenv("ERASEDIFF_INCEPTION", str(mine))
    for call in (default_inception_path, resolve_inception_weights, write_inception_weights):
        with pytest.raises(ValueError, match=r"ERASEDIFF_INCEPTION.*inception-2015-12-05\.pt"):
            call()
    monkeypatch.delenv("ERASEDIFF_INCEPTION")
    with pytest.raises(ValueError, match=r"weights.*inception-2015-12-05\.pt"):
        resolve_inception_weights(tmp_path / "absent" / "other.pt")          # misnamed and missing: the name is the error
    with pytest.raises(ValueError, match=r"path.*inception-2015-12-05\.pt"):
        write_inception_weights(mine)
    monkeypatch.setenv("ERASEDIFF_INCEPTION", str(tmp_path / "new_folder"))   # a folder not made yet: the file inside it
    assert default_inception_path() == tmp_path / "new_folder" / INCEPTION_FILE
    monkeypatch.setenv("ERASEDIFF_INCEPTION", str(tmp_path / INCEPTION_FILE))
    assert default_inception_path() == tmp_path / INCEPTION_FILE


def test_to_uint8_rgb():
    u = to_uint8_rgb(torch.tensor([[[[-1.0, 0.0, 1.0]]]]))
    assert u.shape == (1, 1, 3, 3) and u.dtype == np.uint8
    assert u[0, 0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_uint8_rgb(torch.zeros(1, 2, 4, 4))


def test_classifier_frechet_distance_known_shift():
    clf = OracleClassifier()
    x = torch.randn(500, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert classifier_frechet_distance(clf, x, x) == pytest.approx(0.0, abs=1e-8)
    assert classifier_frechet_distance(clf, x, x + 0.5) == pytest.approx(4 * 0.25, rel=1e-6)  # 4 features shifted by 0.5


def test_classifier_features_requires_features():
    with pytest.raises(ValueError, match="features"):
        classifier_features(nn.Linear(2, 2), torch.zeros(1, 2))


def test_weight_distance():
    a, b = make_tiny(0), make_tiny(0)
    assert weight_distance(a, b)["l2"] == 0.0
    p = next(b.parameters())
    with torch.no_grad():
        p.add_(2.0)
    r = weight_distance(a, b)
    assert r["l2"] == pytest.approx(2 * p.numel() ** 0.5, rel=1e-6)
    assert r["relative"] == pytest.approx(r["l2"] / r["reference_norm"])
    with pytest.raises(ValueError, match="different parameters|differ in shape"):
        weight_distance(a, make_tiny(0, block_out_channels=(8, 8)))


def test_precision_recall_known():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 3))
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0, "k": 3}
    far = precision_recall(real, real + 100)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    part = precision_recall(real, real[real[:, 0] > 0.5])   # good samples of a part of the data
    assert part["precision"] == 1.0 and part["recall"] < 0.6
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real[:3], real[:3], k=3)


def test_knn_radii():
    pts = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    torch.testing.assert_close(knn_radii(pts, k=1), torch.tensor([1.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(knn_radii(pts, k=2), torch.tensor([3.0, 2.0, 3.0, 5.0], dtype=torch.float64))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ERASEDIFF_SLOW"), reason="slow: set ERASEDIFF_SLOW=1")
def test_shipped_classifier_frechet_halves_vs_other_class(shipped):
    x, y = load_digits_set("train").tensors()
    c3, c8 = x[y == 3], x[y == 8]
    h = len(c3) // 2
    same = classifier_frechet_distance(shipped["classifier"], c3[:h], c3[h:])
    other = classifier_frechet_distance(shipped["classifier"], c3, c8)
    assert same * 5 < other
