"""Tests of erasediff.conflict: the gradient conflict between the remain and the forget loss."""
from __future__ import annotations
import numpy as np
import pytest
import torch
import torch.nn as nn
from erasediff.core import NoiseSchedule, eps_loss
from erasediff.data import load_digits_set
from erasediff.conflict import (_pair_batches, gradient_conflict_pairs, gradient_cosine, loss_gradient_cosine, method_gradient_conflict, unlearning_losses)
torch.set_num_threads(1)
from _metric_helpers import make_tiny


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


def test_gradient_cosine_known():
    lin = nn.Linear(2, 1, bias=False)
    x = torch.randn(5, 2)
    assert gradient_cosine(lin, lin(x).sum(), 3 * lin(x).sum())["cosine"] == pytest.approx(1.0)
    assert gradient_cosine(lin, lin(x).sum(), -lin(x).sum())["cosine"] == pytest.approx(-1.0)
    w = lin.weight[0]
    assert gradient_cosine(lin, w[0] ** 2 + 1, (w[1] - 5) ** 2)["cosine"] == pytest.approx(0.0, abs=1e-12)  # orthogonal


def test_pair_batches_are_disjoint_across_pairs():
    gen = torch.Generator().manual_seed(0)
    pairs = _pair_batches(100, 100, 10, 10, 8, gen)
    for side in (0, 1):                                                 # one permutation per set, consecutive slices
        assert len(torch.cat([p[side] for p in pairs]).unique()) == 80
    one = _pair_batches(100, None, 6, 4, 10, gen)                     # one set: 10 pairs of 6 + 4 use all 100
    assert len(torch.cat([torch.cat(p) for p in one]).unique()) == 100
    wrap = _pair_batches(25, 12, 10, 5, 3, gen)                       # set a holds 2 batches: the 3rd starts afresh
    assert len(torch.cat([wrap[0][0], wrap[1][0]]).unique()) == 20 and all(len(p[0].unique()) == 10 for p in wrap)
    assert len(torch.cat([wrap[0][1], wrap[1][1]]).unique()) == 10


def test_gaussian_forget_loss_in_gradient_conflict_is_the_objectives_noise():
    "One meaning of 'gaussian': the conflict measures the forget loss the method trains with, N(0.5, I) targets."
    sched = NoiseSchedule()
    _, l_f, _ = unlearning_losses(sched, "gaussian", (2, 8), preset="digits")
    x, y = load_digits_set("train").tensors()
    model = make_tiny()
    g = torch.Generator().manual_seed(0)
    seen = []
    import erasediff.objectives as O
    orig = O.forget_noise
    O.forget_noise, restore = (lambda shape, kind, gen=None: seen.append(kind) or orig(shape, kind, gen)), orig
    try:
        r = method_gradient_conflict(model, sched, (x[y == 5][:32], y[y == 5][:32]), (x[y == 2][:32], y[y == 2][:32]),
                                       (2, 8), forget_loss="gaussian", n_pairs=2, batch_size=8)
    finally:
        O.forget_noise = restore
    assert seen and set(seen) == {"gaussian"} and -1 <= r["cosine"] <= 1
    assert all(p.grad is None for p in model.parameters())   # does not touch .grad
    assert orig((20000,), "gaussian", g).mean().item() == pytest.approx(0.5, abs=0.03)


def test_method_loss_gradient_with_itself_is_one():
    sched = NoiseSchedule()
    model = make_tiny(dropout=0.5).train()                 # dropout: only eval mode makes two passes agree
    x, y = load_digits_set("train").tensors()
    l_r, l_f, cfg = unlearning_losses(sched, "deviate", (2, 8), preset="digits")
    assert cfg.p_uncond == 0 and cfg.forget_loss == "deviate"
    fb, rb = (x[y == 2][:16], y[y == 2][:16]), (x[y == 5][:16], y[y == 5][:16])
    for loss, b in ((l_f, fb), (l_r, rb)):
        assert loss_gradient_cosine(model, loss, b, loss, b, seed_a=3, seed_b=3)["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert loss_gradient_cosine(model, l_f, fb, l_f, fb, seed_a=3, seed_b=4)["cosine"] < 1 - 1e-5   # other draws
    assert model.training and all(p.grad is None for p in model.parameters())


def test_gradient_conflict_remain_vs_remain(trained_tiny):
    "Two independent batches of D_r with independent draws: positive, clearly below 1, spread over pairs, reproducible."
    sched = NoiseSchedule()
    x, y = load_digits_set("train").tensors()
    keep = ~torch.isin(y, torch.tensor([2, 8]))
    l_r, _, _ = unlearning_losses(sched, "deviate", (2, 8), preset="digits")
    runs = [gradient_conflict_pairs(trained_tiny, l_r, (x[keep], y[keep]), l_r, None, n_pairs=8, batch_size_a=32, seed=s)
            for s in (0, 1)]
    for r in runs:
        assert len(r["per_pair"]) == 8 and r["batch_size_a"] == r["batch_size_b"] == 32
        assert 0 < r["cosine"] < 0.99 and r["std"] > 0 and np.std(r["per_pair"]) > 0
        assert r["cosine"] == pytest.approx(np.mean(r["per_pair"]))
    se = np.sqrt((runs[0]["std"] ** 2 + runs[1]["std"] ** 2) / 8)
    assert abs(runs[0]["cosine"] - runs[1]["cosine"]) < 4 * se        # two estimates of one expectation agree
    again = gradient_conflict_pairs(trained_tiny, l_r, (x[keep], y[keep]), l_r, None, n_pairs=8, batch_size_a=32, seed=0)
    assert again["per_pair"] == runs[0]["per_pair"]


def test_method_gradient_conflict_names_its_loss():
    sched = NoiseSchedule()
    x, y = load_digits_set("train").tensors()
    f = torch.isin(y, torch.tensor([2, 8]))
    kw = dict(n_pairs=2, batch_size=8, forget_batch_size=8)
    r = method_gradient_conflict(make_tiny(), sched, (x[~f], y[~f]), (x[f], y[f]), (2, 8), preset="digits", **kw)
    assert r["forget_loss"] == "deviate" and len(r["per_pair"]) == 2 and -1 <= r["cosine"] <= 1   # the preset's default
    assert r["batch_size_remain"] == 8 and "eval" in r["mode"]
    r = method_gradient_conflict(make_tiny(), sched, (x[~f], y[~f]), (x[f], y[f]), (2, 8), forget_loss="gaussian", **kw)
    assert r["forget_loss"] == "gaussian"
    r = method_gradient_conflict(make_tiny(num_classes=None), sched, (x[~f], None), (x[f], None), (2, 8), **kw)
    assert r["forget_loss"] == "retarget" and "unconditional" in r["forget_loss_note"]
