"""Tests of erasediff.objectives: the forget losses, pseudo labels and EraseDiff's bilevel solver."""
import math
from dataclasses import replace
import pytest
import torch
from erasediff.core import make_unet
from erasediff.data import ForgetSpec, load_digits_set, make_splits
from erasediff.train import LoopConfig, fit
from erasediff.core import q_sample
from erasediff.objectives import (EraseDiffConfig, EraseDiffObjective, FinetuneConfig, FinetuneObjective, PairedBatches, adaptive_lambda, allowed_pseudo_classes, forget_noise, pseudo_labels, select_params)
torch.set_num_threads(1)
from _unlearn_helpers import SCHED, TINY, tiny_model


@pytest.fixture(scope="module")
def splits():
    return make_splits(load_digits_set("train"), load_digits_set("test"), ForgetSpec(classes=(2, 8)))


def run_steps(objective, splits, steps=1, seed=0, params=None):
    m = tiny_model()
    pb = PairedBatches(splits.remain, splits.forget, 16, seed=seed)
    loop = LoopConfig(steps=steps, batch_size=16, lr=1e-3, warmup_steps=0, ema_decay=None, ckpt_every=0, seed=seed)
    sel = None if params is None else [p for _, p in select_params(m, params)]
    res = fit(m, objective, pb, loop, progress=False, params=sel)
    return m, res


def test_config_validation():
    c = EraseDiffConfig()
    assert (c.steps_per_round, c.steps) == (36, 288)           # ceil(4500/128) per round, 4 epochs x 2 rounds
    assert EraseDiffConfig(rem_num=640, batch_size=64, epochs=2, rounds=2).steps == 40
    for kw, msg in [(dict(lam=-0.1), "lam"), (dict(lam="fixed"), "auto_cos"), (dict(K=0), "K"), (dict(zeta=0), "zeta"),
                    (dict(forget_loss="laplace"), "forget_loss"), (dict(q_estimate="x"), "q_estimate"),
                    (dict(pseudo_label="random"), "pseudo_label"), (dict(p_uncond_forget=0.1), "p_uncond_forget"),
                    (dict(eta=0), "eta"), (dict(params=("a[",)), "regular expression"), (dict(rem_num=0), "rem_num"),
                    (dict(lr=0), "lr"), (dict(p_uncond=1.0), "p_uncond"), (dict(ema_decay=1.0), "ema_decay")]:
        with pytest.raises(ValueError, match=msg):
            EraseDiffConfig(**kw)
    EraseDiffConfig(lam="auto"); EraseDiffConfig(lam="auto_cos"); EraseDiffConfig(lam=0)
    EraseDiffConfig(forget_loss="uniform", p_uncond_forget=0.1)


def test_lambda_zero_is_finetuning(splits):
    "With lambda = 0 every outer step equals a finetuning step on D_r (the inner loop does not shift the noise)."
    ft, _ = run_steps(FinetuneObjective(SCHED, FinetuneConfig(batch_size=16, rem_num=32)), splits, steps=3)
    ed, res = run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(lam=0.0, batch_size=16, rem_num=32, K=2)), splits, steps=3)
    for a, b in zip(ft.parameters(), ed.parameters()):
        assert torch.equal(a, b)
    assert all(h["lambda"] == 0 for h in res.history)
    ed1, _ = run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(lam=0.1, batch_size=16, rem_num=32)), splits, steps=1)
    assert any(not torch.equal(a, b) for a, b in zip(ft.parameters(), ed1.parameters()))


def test_fixed_lambda_update_does_not_depend_on_K(splits):
    """With a fixed lambda, grad q = grad L_f(theta) (phi_K is a constant), so the outer trajectory is the same for any
    K and zeta; only the logged q changes. With lam='auto', K enters through q and the trajectory changes."""
    cfg = dict(lam=1.0, batch_size=16, rem_num=32, diagnostics=True)
    a, ra = run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(K=1, zeta=1e-3, **cfg)), splits, steps=3)
    b, rb = run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(K=5, zeta=1e-2, **cfg)), splits, steps=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert [h["q"] for h in ra.history] != [h["q"] for h in rb.history]
    cfg["lam"] = "auto"
    c, _ = run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(K=1, zeta=1e-2, eta=10.0, **cfg)), splits, steps=3)
    d, _ = run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(K=5, zeta=1e-2, eta=10.0, **cfg)), splits, steps=3)
    assert any(not torch.equal(x, y) for x, y in zip(c.parameters(), d.parameters()))


def test_inner_loop_restores_theta_exactly(splits):
    m = tiny_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    obj = EraseDiffObjective(SCHED, EraseDiffConfig(K=4, zeta=0.1, batch_size=16))
    log = obj.inner_loop(m, PairedBatches(splits.remain, splits.forget, 16), torch.Generator().manual_seed(0))
    assert len(log["L_f_inner"]) == 4 and math.isfinite(log["L_f_phiK"])
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k                      # bit-identical
    assert obj.lf_phi == log["L_f_phiK"]


def test_inner_loop_moves_phi(splits):
    "phi_K differs from theta (the inner steps do descend) while theta is restored."
    m = tiny_model()
    obj = EraseDiffObjective(SCHED, EraseDiffConfig(K=2, zeta=0.1, batch_size=16, q_estimate="paired"))
    obj.inner_loop(m, PairedBatches(splits.remain, splits.forget, 16), torch.Generator().manual_seed(0))
    named = dict(m.named_parameters())
    assert any(not torch.equal(named[n], v) for n, v in obj.phi.items())


@pytest.mark.parametrize("kind,mean,var", [("uniform", 0.5, 1 / 12), ("gaussian", 0.5, 1.0)])
def test_forget_batch_uses_configured_noise(splits, kind, mean, var):
    m = tiny_model()
    obj = EraseDiffObjective(SCHED, EraseDiffConfig(forget_loss=kind))
    batch = splits.forget.tensors(64)
    _, (noise, t, labels, pseudo, x_r) = obj.forget_loss(m, batch, torch.Generator().manual_seed(0))
    assert pseudo is None and x_r is None
    assert noise.shape == batch[0].shape
    assert abs(noise.mean().item() - mean) < 0.02 and abs(noise.var().item() - var) < 0.03 * var / (1 / 12) ** 0.5
    if kind == "uniform":
        assert noise.min() >= 0 and noise.max() <= 1
    else:
        assert noise.min() < 0 and noise.max() > 1
    u = forget_noise((50_000,), kind, torch.Generator().manual_seed(1))
    assert abs(u.mean().item() - mean) < 0.01 and abs(u.var().item() - var) < 0.02


def test_forget_noise_reaches_the_loss(splits, monkeypatch):
    "The outer forget loss regresses towards noise of the configured distribution (not N(0, I))."
    import erasediff.objectives as U
    seen = []
    orig = U.forget_noise
    monkeypatch.setattr(U, "forget_noise", lambda shape, kind, g: seen.append(kind) or orig(shape, kind, g))
    run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(forget_loss="gaussian", batch_size=16, rem_num=32, K=1, diagnostics=True)), splits)
    assert seen and set(seen) == {"gaussian"} and len(seen) == 1 + 1 + 1   # K inner + L_f(phi_K) record + 1 outer


def test_q_nonnegative_after_inner_steps_toy(splits):
    "On the batch the inner loop descended on, L_f(theta) - L_f(phi_K) >= 0 (paired evaluation, same draws)."
    class Fixed:
        def __init__(s, b): s.b = b
        def next_inner(s): return s.b
    m = tiny_model()
    fb = splits.forget.tensors(16)
    obj = EraseDiffObjective(SCHED, EraseDiffConfig(K=5, zeta=0.05, q_estimate="paired", antithetic=False, p_uncond=0.0,
                                                    forget_loss="uniform"))
    obj.inner_loop(m, Fixed(fb), torch.Generator().manual_seed(1))
    for s in range(5):
        L_theta, draws = obj.forget_loss(m, fb, torch.Generator().manual_seed(s))
        with torch.no_grad():
            L_phi, _ = obj.forget_loss(m, fb, draws=draws, weights=obj.phi)
        assert (L_theta - L_phi).item() >= 0


def test_paired_q_uses_the_same_dropout_masks(splits):
    "With dropout on, q (paired) compares theta and phi_K under the same masks: phi_K = theta gives q = 0 exactly."
    m = tiny_model(dropout=0.3).train()
    obj = EraseDiffObjective(SCHED, EraseDiffConfig(q_estimate="paired", forget_loss="uniform", p_uncond=0.0, diagnostics=True))
    obj.phi = {n: p.detach().clone() for n, p in m.named_parameters()}
    obj.lf_phi = 0.0
    batch = (splits.remain.tensors(16), splits.forget.tensors(16))
    qs = [obj.grads(m, batch, torch.Generator().manual_seed(s))["q"] for s in range(3)]
    assert qs == [0.0, 0.0, 0.0]


def test_step_logs_and_auto_lambda(splits):
    _, res = run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(lam="auto", eta=1.0, batch_size=16, rem_num=32,
                                                                 q_estimate="paired", K=2, zeta=0.05)), splits, steps=4)
    for h in res.history:
        for k in ("L_r", "L_f", "q", "lambda", "cos", "L_f_phiK"):
            assert k in h and math.isfinite(h[k]), k
        assert h["lambda"] >= 0 and -1 <= h["cos"] <= 1


def test_auto_lambda_rule(splits):
    "lambda = max((eta q - <g_r, g_f>) / ||g_f||^2, 0), checked against a hand computation."
    m = tiny_model()
    cfg = EraseDiffConfig(lam="auto", eta=3.0, batch_size=16, antithetic=False)
    obj = EraseDiffObjective(SCHED, cfg)
    obj.lf_phi = 0.05
    pb = PairedBatches(splits.remain, splits.forget, 16)
    batch = next(pb)
    logs = obj.grads(m, batch, torch.Generator().manual_seed(0))
    # recompute with the same draws
    obj2 = EraseDiffObjective(SCHED, cfg)
    g = torch.Generator().manual_seed(0)
    params = list(m.parameters())
    Lr = obj2.remain_loss(m, batch[0], g); gr = torch.autograd.grad(Lr, params, allow_unused=True)
    # the forget loss draws from its own stream (step_forget_loss; seeded by the objective's seed outside the loop)
    Lf, _ = obj2.forget_loss(m, batch[1], torch.Generator().manual_seed(obj2.seed))
    gf = torch.autograd.grad(Lf, params, allow_unused=True)
    z = lambda g_, p: torch.zeros_like(p) if g_ is None else g_
    dot = sum((z(a, p).double() * z(b, p).double()).sum() for a, b, p in zip(gr, gf, params)).item()
    nf2 = sum((z(b, p).double() ** 2).sum() for b, p in zip(gf, params)).item()
    q = Lf.item() - 0.05
    assert logs["q"] == pytest.approx(q)
    assert logs["lambda"] == pytest.approx(max((3.0 * q - dot) / nf2, 0.0), rel=1e-5)
    # and the gradient is g_r + lambda g_f
    lam = logs["lambda"]
    for p, a, b in zip(params, gr, gf):
        assert torch.allclose(p.grad, z(a, p) + lam * z(b, p), atol=1e-7)


def test_parameter_subset(splits):
    m0 = tiny_model()
    _, _ = None, None
    m, _ = run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(batch_size=16, rem_num=32, lam=1.0)), splits, steps=2,
                     params=("^up_blocks",))
    for (n, a), b in zip(m.named_parameters(), m0.parameters()):
        assert torch.equal(a, b) != n.startswith("up_blocks"), n
    with pytest.raises(ValueError, match="match no parameter"):
        select_params(m, ("nonexistent_block",))


def test_unconditional_model(splits):
    m = make_unet(replace(TINY, num_classes=None))
    pb = PairedBatches(splits.remain, splits.forget, 16)
    obj = EraseDiffObjective(SCHED, EraseDiffConfig(batch_size=16, rem_num=32, forget_loss="uniform"))
    res = fit(m, obj, pb, EraseDiffConfig(batch_size=16, rem_num=32, epochs=1, rounds=1).loop(), progress=False)
    assert math.isfinite(res.history[-1]["L_f"])


def test_paired_batches_resume(splits):
    pb = PairedBatches(splits.remain, splits.forget, 16, seed=3)
    for _ in range(5): next(pb); pb.next_inner()
    st = pb.state_dict()
    a = next(pb), pb.next_inner()
    pb2 = PairedBatches(splits.remain, splits.forget, 16, seed=3); pb2.load_state_dict(st)
    b = next(pb2), pb2.next_inner()
    assert torch.equal(a[0][0][0], b[0][0][0]) and torch.equal(a[0][1][1], b[0][1][1]) and torch.equal(a[1][0], b[1][0])


@pytest.mark.parametrize("mode", ["per_class", "per_sample", "per_batch"])
def test_pseudo_label_never_forgotten_nor_own(mode):
    "Over many draws, c_p is never a forgotten class nor the image's own class, and every allowed class occurs."
    y = torch.tensor([2, 8, 2, 8, 5, 2] * 20)                    # 5: a remaining-class image (sample-level forgetting)
    seen = set()
    for s in range(200):
        c = pseudo_labels(y, 10, (2, 8), mode, torch.Generator().manual_seed(s), seed=s)
        assert c.shape == y.shape and c.dtype == torch.long
        assert not (torch.isin(c, torch.tensor([2, 8])).any() or (c == y).any()), (mode, s)
        seen |= set(c.tolist())
        if mode == "per_class":                                  # one class per forgotten class for the whole run
            for k in (2, 8): assert len(set(c[y == k].tolist())) == 1
            assert torch.equal(c, pseudo_labels(y, 10, (2, 8), mode, torch.Generator().manual_seed(s + 1), seed=s))
        if mode == "per_batch": assert len(set(c[y != 5].tolist())) == 1
    assert seen == {0, 1, 3, 4, 5, 6, 7, 9}
    assert allowed_pseudo_classes(2, 10, (2, 8)) == [0, 1, 3, 4, 5, 6, 7, 9]
    with pytest.raises(ValueError, match="no pseudo label"):
        pseudo_labels(torch.tensor([0]), 2, (1,), mode, torch.Generator())


def test_deviate_target_has_no_gradient(splits):
    """The outer gradient of the deviate loss equals the hand-computed one with a detached target
    ||eps(x_t, t, c_f) - sg(eps(x_t, t, c_p))||^2, and differs from the gradient through both predictions."""
    m = tiny_model()
    obj = EraseDiffObjective(SCHED, EraseDiffConfig(forget_loss="deviate", pseudo_label="per_sample", antithetic=False),
                             forget_classes=(2, 8))
    fb = splits.forget.tensors(8)
    L, (noise, t, labels, pseudo, _) = obj.forget_loss(m, fb, torch.Generator().manual_seed(0))
    assert not torch.isin(pseudo, torch.tensor([2, 8])).any() and torch.equal(labels, fb[1])
    params = list(m.parameters())
    got = torch.autograd.grad(L, params, allow_unused=True)
    x_t = q_sample(fb[0], t, noise, SCHED)
    with torch.no_grad(): target = m(x_t, t, class_labels=pseudo).sample
    hand = (m(x_t, t, class_labels=labels).sample - target).pow(2).flatten(1).mean(1).mean()
    assert L.item() == pytest.approx(hand.item(), rel=1e-6)
    want = torch.autograd.grad(hand, params, allow_unused=True)
    through = torch.autograd.grad((m(x_t, t, class_labels=labels).sample - m(x_t, t, class_labels=pseudo).sample)
                                  .pow(2).flatten(1).mean(1).mean(), params, allow_unused=True)
    z = lambda g, p: torch.zeros_like(p) if g is None else g
    assert all(torch.allclose(z(a, p), z(b, p), atol=1e-7) for a, b, p in zip(got, want, params))
    assert any(not torch.allclose(z(a, p), z(b, p), atol=1e-6) for a, b, p in zip(got, through, params))


def test_forget_null_adds_the_deviation_through_the_null_label(splits):
    """forget_null = a: L_f = ||eps(x_t, c_f) - sg(eps(x_t, c_p))||^2 + a ||eps(x_t, null) - sg(eps(x_t, c_p))||^2 on the
    same draws; 0 leaves the loss as it was; only with 'deviate', and a weight >= 0."""
    m = tiny_model()
    fb, gen = splits.forget.tensors(8), lambda: torch.Generator().manual_seed(0)
    cfg = dict(forget_loss="deviate", pseudo_label="per_sample", antithetic=False)
    plain, draws = EraseDiffObjective(SCHED, EraseDiffConfig(**cfg), forget_classes=(2, 8)).forget_loss(m, fb, gen())
    L, draws2 = EraseDiffObjective(SCHED, EraseDiffConfig(forget_null=0.5, **cfg), forget_classes=(2, 8)).forget_loss(m, fb, gen())
    assert all(torch.equal(a, b) for a, b in zip(draws[:4], draws2[:4]))
    noise, t, labels, pseudo, _ = draws
    x_t = q_sample(fb[0], t, noise, SCHED)
    with torch.no_grad():
        target = m(x_t, t, class_labels=pseudo).sample
        null = m(x_t, t, class_labels=torch.full_like(labels, 10)).sample
    through_null = (null - target).pow(2).flatten(1).mean(1).mean().item()
    assert through_null > 0
    assert L.item() == pytest.approx(plain.item() + 0.5 * through_null, rel=1e-5)
    for kw, msg in [(dict(forget_null=-1.0), "forget_null"), (dict(forget_null=float("nan")), "forget_null"),
                    (dict(forget_null=1.0, forget_loss="uniform"), "deviate")]:
        with pytest.raises(ValueError, match=msg):
            EraseDiffConfig(**kw)


def test_deviate_outer_gradient_is_hand_computed(splits):
    "One outer step with the deviate loss: p.grad = grad L_r + lambda grad L_f (detached target), lambda fixed."
    m = tiny_model()
    cfg = EraseDiffConfig(lam=0.7, batch_size=16, antithetic=False, pseudo_label="per_sample")
    obj = EraseDiffObjective(SCHED, cfg, forget_classes=(2, 8)); obj.lf_phi = 0.0
    batch = next(PairedBatches(splits.remain, splits.forget, 16))
    obj.grads(m, batch, torch.Generator().manual_seed(0))
    obj2 = EraseDiffObjective(SCHED, cfg, forget_classes=(2, 8))
    g = torch.Generator().manual_seed(0); params = list(m.parameters())
    gr = torch.autograd.grad(obj2.remain_loss(m, batch[0], g), params, allow_unused=True)
    Lf, (noise, t, labels, pseudo, _) = obj2.forget_loss(m, batch[1], torch.Generator().manual_seed(obj2.seed))  # own stream
    x_t = q_sample(batch[1][0], t, noise, SCHED)
    with torch.no_grad(): target = m(x_t, t, class_labels=pseudo).sample
    gf = torch.autograd.grad((m(x_t, t, class_labels=labels).sample - target).pow(2).flatten(1).mean(1).mean(), params,
                             allow_unused=True)
    z = lambda g_, p: torch.zeros_like(p) if g_ is None else g_
    for p, a, b in zip(params, gr, gf):
        assert torch.allclose(p.grad, z(a, p) + 0.7 * z(b, p), atol=1e-7)


def test_lambda_zero_is_finetuning_with_deviate_loss(splits):
    ft, _ = run_steps(FinetuneObjective(SCHED, FinetuneConfig(batch_size=16, rem_num=32)), splits, steps=2)
    ed, _ = run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(lam=0.0, batch_size=16, rem_num=32, forget_loss="deviate"),
                                         forget_classes=(2, 8)), splits, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(ft.parameters(), ed.parameters()))


def test_auto_cos_lambda_rule():
    "The released rule lambda = max(eta - cos(g_r, g_q), 0) on a toy with known gradients, and BOME's rule beside it."
    for gr, gq, eta in [((1.0, 0.0), (0.0, 2.0), 1.0), ((1.0, 1.0), (1.0, 1.0), 0.5), ((1.0, 0.0), (-3.0, 0.0), 1.0),
                        ((2.0, 1.0), (1.0, -1.0), 2.0)]:
        a, b = torch.tensor(gr), torch.tensor(gq)
        dot, nq2 = float(a @ b), float(b @ b)
        cos = dot / float(a.norm() * b.norm())
        assert adaptive_lambda("auto_cos", eta, 0.3, dot, nq2, cos) == pytest.approx(max(eta - cos, 0.0))
        assert adaptive_lambda("auto", eta, 0.3, dot, nq2, cos) == pytest.approx(max((eta * 0.3 - dot) / nq2, 0.0))
    assert adaptive_lambda("auto_cos", 1.0, 0.3, 1.0, 1.0, 1.0) == 0.0         # aligned gradients: no forget pull
    assert adaptive_lambda("auto_cos", 1.0, 0.3, -1.0, 1.0, -1.0) == 2.0       # opposed: the largest lambda
    assert adaptive_lambda("auto_cos", 1.0, 0.3, 0.0, 0.0, 0.0) == 0.0         # grad q vanishes
    assert adaptive_lambda(0.25, 1.0, 0.3, 0.0, 1.0, 0.0) == 0.25


def test_auto_cos_in_the_loop(splits):
    "In the solver, the logged lambda of every step is max(eta - logged cos, 0)."
    _, res = run_steps(EraseDiffObjective(SCHED, EraseDiffConfig(lam="auto_cos", eta=0.8, batch_size=16, rem_num=32),
                                          forget_classes=(2, 8)), splits, steps=3)
    for h in res.history:
        assert h["lambda"] == pytest.approx(max(0.8 - h["cos"], 0.0), abs=1e-9)


def test_forget_classes_default_to_the_batches(splits):
    "Without forget_classes the objective reads them off the paired batches (labels of D_f absent from D_r)."
    obj = EraseDiffObjective(SCHED, EraseDiffConfig(batch_size=16, rem_num=32))
    run_steps(obj, splits, steps=1)
    assert obj.forget_classes == (2, 8)
    ids = make_splits(load_digits_set("train"), load_digits_set("test"), ForgetSpec(ids=tuple(range(30))))
    obj = EraseDiffObjective(SCHED, EraseDiffConfig(batch_size=16, rem_num=32))
    run_steps(obj, ids, steps=1)
    assert obj.forget_classes == ()                        # sample-level: no class is forgotten, only own labels excluded


def test_sample_accuracy_rejects_empty_counts():
    from erasediff.core import SamplerConfig
    from erasediff.accuracy import sample_accuracy
    with pytest.raises(ValueError, match="n_remain"):
        sample_accuracy(tiny_model(), None, SCHED, SamplerConfig(steps=2), (2,), 10, 2, n_remain=0)
