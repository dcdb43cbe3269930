"""Tests of erasediff.baselines: every method of the registry on the one loop, and the property each one rests on."""
from dataclasses import replace

import pytest
import torch

from erasediff.baselines import (BlindSpotConfig, NegGradConfig, SAConfig, SalUnConfig, SOConfig, StagedBatches, TSConfig, cached_fisher, ewc_penalty, fisher_diagonal, saliency_mask)
from erasediff.core import NoiseSchedule, UNetConfig, make_unet
from erasediff.data import ForgetSpec, load_digits_set, make_splits
from erasediff.train import fit
from erasediff.objectives import EraseDiffConfig
from erasediff.methods import METHODS, default_config, get_method, make_objective
from erasediff.accuracy import split_losses
from erasediff.unlearn import unlearn

torch.set_num_threads(1)
SCHED = NoiseSchedule()
TINY = UNetConfig(sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"), num_classes=10, norm_num_groups=4)
SMALL = dict(epochs=1, rounds=1, rem_num=64, batch_size=16, forget_batch_size=16, ema_decay=None)
ALL = ("erasediff", "finetune", "neggrad", "blindspot", "sa", "salun", "so", "ts")


@pytest.fixture(scope="module")
def splits():
    return make_splits(load_digits_set("train"), load_digits_set("test"), ForgetSpec(classes=(2, 8)))


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return make_unet(replace(TINY, **kw))


def run(method, config, splits, model=None, seed=0):
    "Unlearn a tiny model with `method` on the one loop; returns (objective, FitResult)."
    model = model or tiny()
    obj = make_objective(method, SCHED, config, (2, 8), seed)
    res = fit(model, obj, obj.make_batches(splits.remain, splits.forget, seed=seed), config.loop(seed), progress=False)
    return obj, res


def test_registry_has_every_method_with_defaults():
    get_method("erasediff")
    assert set(ALL) <= set(METHODS)
    for name in ALL:
        for preset in ("digits", "cifar10"):
            cfg = default_config(preset, name)
            assert isinstance(cfg, METHODS[name].config_cls), (name, preset)
            make_objective(name, SCHED, cfg, (2, 8))
    assert default_config("cifar10", "salun").steps == 1000 and default_config("cifar10", "sa").ewc_lambda == 10


@pytest.mark.parametrize("cls,bad", [(NegGradConfig, dict(alpha=-1)), (SalUnConfig, dict(mask_fraction=0)),
                                     (SalUnConfig, dict(mask_fraction=1.5)), (SAConfig, dict(replay="fake")),
                                     (SAConfig, dict(fisher_images=0)), (BlindSpotConfig, dict(teacher_init="x")),
                                     (TSConfig, dict(forget_fraction=2.0)), (SOConfig, dict(lam="auto"))])
def test_configs_refuse_bad_values(cls, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        cls(**bad)


@pytest.mark.parametrize("method", ALL)
def test_every_method_runs_on_the_loop(method, splits):
    extra = {"blindspot": dict(teacher_steps=3), "sa": dict(replay_per_class=2, replay_steps=2, fisher_images=4,
                                                            fisher_timesteps=2, cache=False)}.get(method, {})
    cfg = replace(default_config("digits", method), **SMALL, **extra)
    before = {k: v.clone() for k, v in tiny().state_dict().items()}
    _, res = run(method, cfg, splits)
    assert len(res.history) == cfg.steps and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    assert any(not torch.equal(before[k], v) for k, v in res.model.state_dict().items())


def test_neggrad_raises_the_forget_loss(splits):
    cfg = NegGradConfig(**{**SMALL, "rem_num": 96}, lr=2e-3)
    model = tiny()
    start = split_losses(model, splits, SCHED, n=64)
    _, res = run("neggrad", cfg, splits, model=model)
    end = split_losses(res.model, splits, SCHED, n=64)
    assert end["loss_forget"] > start["loss_forget"] + 0.05, (start, end)


def test_salun_mask_keeps_the_fraction(splits):
    m = tiny()
    mask = saliency_mask(m, splits.forget.subset(torch.arange(32)), SCHED, fraction=0.3, batch_size=16)
    total = sum(t.numel() for t in mask.values())
    kept = sum(int(t.sum()) for t in mask.values())
    assert kept == round(0.3 * total)
    assert set(mask) == {n for n, _ in m.named_parameters()}


def test_salun_leaves_unmasked_weights_bit_identical(splits):
    "Even with weight decay and EMA, which would move a weight with zero gradient."
    cfg = SalUnConfig(**{**SMALL, "ema_decay": 0.9}, weight_decay=0.1, lr=1e-2, mask_fraction=0.4)
    model = tiny()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    obj, res = run("salun", cfg, splits, model=model)
    for result in (res.raw_model, res.model):
        moved = 0
        for n, p in result.named_parameters():
            keep = obj.mask[n]
            assert torch.equal(p[~keep], original[n][~keep]), n
            moved += int((p[keep] != original[n][keep]).sum())
        assert moved > 0


@pytest.mark.parametrize("method", ["salun", "so", "ts", "erasediff"])
def test_pseudo_label_never_a_forgotten_class(method, splits):
    obj = make_objective(method, SCHED, default_config("digits", method), (2, 8), seed=3)
    m = tiny()
    for s in range(10):
        x, y = splits.forget.tensors(32)
        _, (_, _, _, pseudo, _) = obj.forget_loss(m, (x, y), torch.Generator().manual_seed(s))
        assert not set(pseudo.tolist()) & {2, 8} and not (pseudo == y).any()


def test_sa_fisher_is_nonnegative_and_ewc_vanishes_at_the_original(splits):
    m = tiny()
    x, y = splits.remain.tensors(4)
    F = fisher_diagonal(m, x, y, SCHED, timesteps=3)
    assert all((f >= 0).all() for f in F.values()) and sum(float(f.sum()) for f in F.values()) > 0
    ref = {n: p.detach().clone() for n, p in m.named_parameters()}
    pen = ewc_penalty(m, F, ref)
    grads = torch.autograd.grad(pen, list(m.parameters()), allow_unused=True)
    assert pen.item() == 0 and all(g is None or not g.any() for g in grads)
    with torch.no_grad():
        for p in m.parameters(): p.add_(0.01)
    assert ewc_penalty(m, F, ref).item() > 0


def test_sa_fisher_cache_is_keyed_by_weights_and_survives_corruption(splits, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEDIFF_CACHE", str(tmp_path))
    m = tiny()
    x, y = splits.remain.tensors(3)
    F1, info1 = cached_fisher(m, x, y, SCHED, timesteps=2)
    F2, info2 = cached_fisher(m, x, y, SCHED, timesteps=2)
    assert not info1["cached"] and info2["cached"] and all(torch.equal(F1[k], F2[k]) for k in F1)
    path = tmp_path / "fisher" / f"{info1['key']}.pt"
    path.write_bytes(b"garbage")
    F3, info3 = cached_fisher(m, x, y, SCHED, timesteps=2)
    assert not info3["cached"] and all(torch.equal(F1[k], F3[k]) for k in F1)
    _, info4 = cached_fisher(tiny(seed=1), x, y, SCHED, timesteps=2)     # other weights: another key
    assert info4["key"] != info1["key"] and not info4["cached"]


def test_ts_first_stage_never_reads_remain(splits, monkeypatch):
    cfg = TSConfig(**SMALL, forget_fraction=0.5)
    obj = make_objective("ts", SCHED, cfg, (2, 8))
    remain = splits.remain.subset(torch.arange(len(splits.remain)))
    reads = []
    monkeypatch.setattr(remain, "batch", lambda idx, f=remain.batch: reads.append(len(idx)) or f(idx))
    batches = obj.make_batches(remain, splits.forget)
    assert isinstance(batches, StagedBatches) and cfg.forget_steps == 2

    seen = []
    fit(tiny(), obj, batches, cfg.loop(0), progress=False,
        callback=lambda step, m, logs: seen.append((step, logs["stage"], len(reads))))
    assert [s for _, s, _ in seen] == [1.0, 1.0, 2.0, 2.0]
    assert [r for _, s, r in seen if s == 1.0] == [0, 0] and seen[-1][2] == 2


def test_so_takes_exactly_erasediffs_steps_with_a_fixed_lambda(splits):
    "The first-order outer gradient of EraseDiff with a fixed lambda is SO's: the inner loop only changes the logged q."
    common = dict(**SMALL, lam=0.3, forget_loss="deviate")
    _, so = run("so", SOConfig(**common), splits)
    _, ed = run("erasediff", EraseDiffConfig(**common, K=2, zeta=0.05, diagnostics=True), splits)
    assert [h["L_r"] for h in so.history] == [h["L_r"] for h in ed.history]
    for a, b in zip(so.model.parameters(), ed.model.parameters()):
        assert torch.equal(a, b)
    assert any(h["q"] != 0 for h in ed.history)


def test_sa_refuses_an_unconditional_model():
    with pytest.raises(ValueError, match="class-conditional"):
        make_objective("sa", SCHED, SAConfig()).check_model(tiny(num_classes=None))


def test_unlearn_runs_a_baseline_end_to_end(tmp_path, splits):
    from erasediff.runtime import save_unet
    save_unet(tiny(), tmp_path / "ck")
    m = unlearn("digits", (2, 8), tmp_path / "run", checkpoint=tmp_path / "ck", method="salun", eval_per_class=0,
                config=dict(SMALL, mask_fraction=0.5), progress=False)
    assert m["method"] == "salun" and m["steps"] == 4 and (tmp_path / "run" / "unet" / "config.json").exists()
    assert "SalUn" in (tmp_path / "run" / "README.md").read_text()
