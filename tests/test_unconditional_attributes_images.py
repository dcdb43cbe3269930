"""Unconditional models, attributes and single images on one device: unconditional and pipeline checkpoints, attribute and sample-level
forgetting, and clear errors before any work."""
import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from erasediff.core import NoiseSchedule, SamplerConfig, UNetConfig, make_unet, num_classes, q_sample
from erasediff.runtime import check_schedule
from erasediff.data import ForgetSpec, ImageSet, load_digits_set, make_splits
from erasediff.train import load_reference, read_manifest, reference_path
from erasediff.unlearn import unlearn

torch.set_num_threads(1)
TINY = UNetConfig(sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"), num_classes=None, norm_num_groups=4)
SMALL = dict(epochs=1, rounds=2, rem_num=32, batch_size=16)
FAST = SamplerConfig("ddim", steps=3, w=0.5)


def _pipeline(path, **scheduler):
    "A diffusers DDPMPipeline folder (unet/ + scheduler/) around a tiny unconditional UNet."
    from diffusers import DDPMPipeline, DDPMScheduler
    torch.manual_seed(0)
    DDPMPipeline(unet=make_unet(TINY), scheduler=DDPMScheduler(**scheduler)).save_pretrained(path)
    return path


# ---------------------------------------------------------------- data: the synthetic attribute

def test_digits_even_attribute_splits_by_parity():
    train, test = load_digits_set("train"), load_digits_set("test")
    assert train.attribute_names == ["even"]
    s = make_splits(train, test, ForgetSpec(attribute="even"))
    assert s.forget_classes == (0, 2, 4, 6, 8)                   # classes that only hold the attribute
    assert (s.forget.labels % 2 == 0).all() and (s.remain.labels % 2 == 1).all()
    assert (s.heldout_forget.labels % 2 == 0).all() and len(s.forget) + len(s.remain) == len(train)


# ---------------------------------------------------------------- pipeline folders and their scheduler

def test_pipeline_folder_unlearns_unconditionally(tmp_path):
    pipe = _pipeline(tmp_path / "pipe")
    r = unlearn("digits", (3,), tmp_path / "out", checkpoint=pipe, config=SMALL, eval_per_class=0, progress=False)
    assert r["config"]["forget_loss"] == "retarget"               # no labels to deviate to
    assert r["n_forget"] == int((load_digits_set("train").labels == 3).sum())
    assert (tmp_path / "out" / "unet" / "config.json").exists()


def test_pipeline_with_another_schedule_is_refused_before_work(tmp_path):
    pipe = _pipeline(tmp_path / "pipe", beta_end=0.012)
    with pytest.raises(ValueError, match="beta_end"):
        unlearn("digits", (3,), tmp_path / "out", checkpoint=pipe, config=SMALL, eval_per_class=0, progress=False)
    assert not (tmp_path / "out").exists()
    pipe2 = _pipeline(tmp_path / "pipe2", beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ValueError, match="beta_schedule"):
        check_schedule(pipe2, NoiseSchedule().config)
    check_schedule(_pipeline(tmp_path / "pipe3"), NoiseSchedule().config)   # the DDPM defaults are the presets'


# ---------------------------------------------------------------- clear errors before any work

@pytest.mark.parametrize("forget,msg", [
    ((12,), "out of range"),
    (("airplane",), "unknown class 'airplane'"),
    (ForgetSpec(attribute="Blond_Hair"), r"unknown attribute 'Blond_Hair'; known: \['even'\]"),
    (ForgetSpec(ids=(0, 5000)), r"\[5000\] out of range; the training set has ids 0..1436"),
])
def test_bad_forget_sets(tmp_path, forget, msg):
    with pytest.raises(ValueError, match=msg):
        unlearn("digits", forget, tmp_path / "out", checkpoint=_pipeline(tmp_path / "p"), config=SMALL,
                eval_per_class=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_attribute_on_a_dataset_without_attributes():
    real = load_digits_set("train")
    plain = ImageSet(real.base, real.all_labels, real.classes, name="plain")
    with pytest.raises(ValueError, match="none \\(this dataset has no attributes\\)"):
        make_splits(plain, plain, ForgetSpec(attribute="even"))


@pytest.mark.parametrize("config,msg", [
    (dict(forget_loss="deviate"), "needs a class-conditional model"),
    (dict(pseudo_label="per_sample"), "this model is unconditional"),
])
def test_class_conditional_options_on_an_unconditional_model(tmp_path, config, msg):
    with pytest.raises(ValueError, match=msg):
        unlearn("digits", (3,), tmp_path / "out", checkpoint=_pipeline(tmp_path / "p"), config={**SMALL, **config},
                eval_per_class=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_class_conditional_baseline_on_an_unconditional_model(tmp_path):
    with pytest.raises(ValueError, match="class-conditional"):
        unlearn("digits", (3,), tmp_path / "out", checkpoint=_pipeline(tmp_path / "p"), method="sa", eval_per_class=0,
                progress=False, config=SMALL)
    assert not (tmp_path / "out").exists()


def test_cli_aliases_and_errors(tmp_path):
    "The issue's spelling (--dataset, --forget-class) parses; a bad class is exit 2 with the reason, nothing written."
    from erasediff.cli import build_parser
    a = build_parser().parse_args(["unlearn", "--dataset", "cifar10", "--forget-class", "airplane", "--out", "x"])
    assert (a.preset, a.forget) == ("cifar10", ["airplane"])
    from erasediff.cli import _overrides
    a = build_parser().parse_args(["unlearn", "--forget-loss", "retarget", "--retarget-pool", "512", "--out", "x"])
    assert _overrides(a) == {"forget_loss": "retarget", "retarget_pool": 512}
    p = subprocess.run([sys.executable, "-m", "erasediff.cli", "unlearn", "--dataset", "digits", "--forget-class",
                        "airplane", "--checkpoint", str(_pipeline(tmp_path / "p")), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "unknown class 'airplane'" in p.stderr and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- the shipped unconditional model

def test_shipped_unconditional_model():
    entry = read_manifest()["digits/unconditional"]
    assert "--what unconditional" in entry["command"]
    reference_path("digits", "unconditional")                     # hashes verified
    m = load_reference("digits", "unconditional")
    assert num_classes(m) is None and m.config.sample_size == 16
    q = entry["quality"]
    assert abs(sum(q["class_shares"].values()) - 1) < 1e-3 and q["max_share_gap"] <= 0.08, q   # measured 0.059 (class 1: 4.4 % of 320 samples)


# ---------------------------------------------------------------- attribute and sample-level forgetting, both model kinds

@pytest.mark.parametrize("which", ["unscrubbed", "unconditional"])
def test_attribute_forgetting_both_model_kinds(tmp_path, which):
    ck = reference_path("digits", which)
    r = unlearn("digits", ForgetSpec(attribute="even"), tmp_path / "out", checkpoint=ck, config=SMALL, eval_per_class=1,
                sampler=FAST, progress=False)
    assert r["forget"]["kind"] == "attribute" and r["forget"]["classes"] == [0, 2, 4, 6, 8]
    if which == "unconditional":
        assert r["config"]["forget_loss"] == "retarget" and 0 <= r["after"]["forget_share"] <= 1
        assert abs(sum(r["after"]["class_shares"].values()) - 1) < 1e-6
    else:
        assert {int(c) for c in r["after"]["by_w"]["0"]["confusion"]} == {0, 2, 4, 6, 8}
    assert "attribute even" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("which", ["unscrubbed", "unconditional"])
def test_sample_level_report(tmp_path, which):
    train = load_digits_set("train")
    ids = torch.nonzero(train.labels == 3).flatten()[:12].tolist()
    r = unlearn("digits", ForgetSpec(ids=tuple(ids)), tmp_path / "out", checkpoint=reference_path("digits", which),
                config=SMALL, eval_per_class=2, sampler=FAST, progress=False)
    for when in ("before", "after"):
        rep = r[when]["memorization"]
        assert {int(i) for i in rep["forgotten"]["per_image"]} == set(ids) and rep["n_generated"] == 20
        assert rep["heldout"]["n"] == int((load_digits_set("test").labels == 3).sum())
        assert 0 <= r[when]["mia"]["accuracy"] <= 1 and r[when]["mia"]["n_members"] == 12
    card = (tmp_path / "out" / "README.md").read_text()
    assert "nearest-generated distance" in card and "membership inference" in card
    assert (tmp_path / "out" / "memorization.png").stat().st_size > 1000
    json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_retarget_is_the_default_where_deviate_cannot_serve():
    "Unconditional models and sample-level forgetting default to 'retarget' with its calibration; classes keep 'deviate'."
    from erasediff.train import get_preset
    from erasediff.methods import LOSS_DEFAULTS, default_config
    from erasediff.unlearn import _resolve_config
    p = get_preset("digits")
    unc = _resolve_config(p, "erasediff", None, conditional=False)
    assert unc == default_config(p, forget_loss="retarget") and unc.forget_loss == "retarget"
    cal = LOSS_DEFAULTS["digits"]["retarget"]
    assert (unc.lam, unc.lr, unc.forget_batch_size) == (cal["lam"], cal["lr"], cal["forget_batch_size"])
    assert (unc.lam, unc.lr) != (default_config(p).lam, default_config(p).lr)   # its own calibration, not deviate's
    assert _resolve_config(p, "erasediff", None, conditional=True) == default_config(p)
    assert _resolve_config(p, "erasediff", None, conditional=True, sample_level=True).forget_loss == "retarget"
    assert _resolve_config(p, "erasediff", {"forget_loss": "uniform"}, conditional=False).forget_loss == "uniform"
    with pytest.raises(ValueError, match="retarget_pool"):
        default_config(p, forget_loss="retarget").__class__(retarget_pool=0)


def _bayes_posterior_mean(x_t, ab, pool):
    "E[x_0 | x_t] by Bayes' rule with Gaussian log-likelihoods, one row at a time (float64): the reference."
    out = []
    for i in range(len(x_t)):
        a = float(ab[i])
        ll = torch.stack([torch.distributions.Normal(a ** 0.5 * p.double(), (1 - a) ** 0.5).log_prob(x_t[i].double()).sum()
                          for p in pool])
        out.append((torch.softmax(ll, 0)[:, None] * pool.flatten(1).double()).sum(0).view_as(x_t[i]))
    return torch.stack(out).float()


def test_posterior_mean_is_the_optimal_denoiser_of_the_pool():
    "Bayes' rule over the pool: its mean at the last timestep, the image itself at t=0, masked rows stay in their subset."
    from erasediff.objectives import posterior_mean
    sched = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(12, 1, 6, 6, generator=g) * 2 - 1
    x0 = pool[[3, 7, 7, 0]]
    t = torch.tensor([0, 300, 600, sched.T - 1])
    x_t = q_sample(x0, t, torch.randn(x0.shape, generator=g), sched)
    got = posterior_mean(x_t, t, pool, sched)
    assert torch.allclose(got, _bayes_posterior_mean(x_t, sched.alpha_bar(t).flatten(), pool), atol=1e-4)
    assert torch.allclose(got[0], pool[3], atol=1e-4)                       # t=0: the image the noised one came from
    assert (got[3] - pool.mean(0)).abs().max() < 0.05                       # t=T-1: nearly the pool's mean
    allowed = torch.zeros(4, 12, dtype=torch.bool); allowed[:, :4] = True  # only pool[0..3]
    masked = posterior_mean(x_t, t, pool, sched, allowed)
    assert torch.allclose(masked, _bayes_posterior_mean(x_t, sched.alpha_bar(t).flatten(), pool[:4]), atol=1e-4)
    with pytest.raises(ValueError, match="allowed"):
        posterior_mean(x_t, t, pool, sched, torch.zeros(4, 12, dtype=torch.bool))


def test_retarget_loss_pulls_the_x0_estimate_to_the_remaining_images_posterior_mean():
    "L_f = ab || (x_t - sqrt(1 - ab) eps_theta) / sqrt(ab) - E_remaining[x_0 | x_t] ||^2; a conditional row: its class."
    from erasediff.objectives import EraseDiffObjective, posterior_mean
    from erasediff.methods import default_config
    sched = NoiseSchedule()
    torch.manual_seed(0); m = make_unet(TINY).eval()
    obj = EraseDiffObjective(sched, replace(default_config("digits"), forget_loss="retarget"))
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    with pytest.raises(ValueError, match="retarget_images"):
        obj.forget_loss(m, (x, torch.zeros(4, dtype=torch.long)), torch.Generator().manual_seed(0))
    obj.retarget_images = torch.rand(10, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        loss, (noise, t, labels, pseudo, x_r) = obj.forget_loss(m, (x, torch.zeros(4, dtype=torch.long)),
                                                                torch.Generator().manual_seed(0))
        assert labels is None and pseudo is None
        x_t = q_sample(x, t, noise, sched)
        assert torch.allclose(x_r, posterior_mean(x_t, t, obj.retarget_images, sched), atol=1e-6)
        ab = sched.alpha_bar(t)
        x0 = (x_t - (1 - ab).sqrt() * m(x_t, t).sample) / ab.sqrt()
        assert torch.allclose(loss, (ab * (x0 - x_r).pow(2)).mean(), rtol=1e-4)
    # a class-conditional model: a row whose class remains is pulled to that class's images only
    torch.manual_seed(0); mc = make_unet(replace(TINY, num_classes=3)).eval()
    imgs, labs = torch.rand(9, 1, 16, 16) * 2 - 1, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    obj = EraseDiffObjective(sched, replace(default_config("digits"), forget_loss="retarget", p_uncond=0.0, p_uncond_forget=0.0))
    obj.retarget_images = ImageSet(imgs, labs, ["a", "b", "c"])
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        _, (noise, t, labels, _, x_r) = obj.forget_loss(mc, (x, y), torch.Generator().manual_seed(1))
    x_t = q_sample(x, t, noise, sched)
    for i in range(4):
        ref = posterior_mean(x_t[i:i + 1], t[i:i + 1], imgs[labs == y[i]], sched)
        assert torch.allclose(x_r[i:i + 1], ref, atol=1e-5)


def test_retarget_pool_is_drawn_once_with_the_seed():
    "A pool smaller than the remaining set: retarget_pool images drawn once (seeded), not re-read at every step."
    from erasediff.objectives import EraseDiffObjective
    from erasediff.methods import default_config
    sched = NoiseSchedule()
    torch.manual_seed(0); m = make_unet(TINY).eval()
    imgs = ImageSet(torch.rand(30, 1, 16, 16) * 2 - 1, torch.arange(30) % 3, ["a", "b", "c"])
    reads = []
    real_batch = imgs.batch
    imgs.batch = lambda idx: (reads.append(len(idx)), real_batch(idx))[1]
    cfg = replace(default_config("digits"), forget_loss="retarget", retarget_pool=8)
    pools = []
    for seed in (0, 0, 1):
        obj = EraseDiffObjective(sched, cfg, seed=seed)
        obj.retarget_images = imgs
        with torch.no_grad():
            for s in range(3): obj.forget_loss(m, (torch.rand(2, 1, 16, 16), torch.zeros(2, dtype=torch.long)),
                                               torch.Generator().manual_seed(s))
        pools.append(obj.pool_images()[0])
    assert reads == [8, 8, 8]                                     # once per objective, 8 images each
    assert torch.equal(pools[0], pools[1]) and not torch.equal(pools[0], pools[2])   # the seed draws the pool
    assert all(any(torch.equal(p, r) for r in imgs.base) for p in pools[2])         # remaining images, unchanged


def test_retrain_reference_tool_refuses_a_bad_class_before_training(tmp_path):
    "experiments/retrain_reference.py (the Retrain figures of the README) checks its class before 10 minutes of training."
    from pathlib import Path
    tool = Path(__file__).resolve().parents[1] / "experiments" / "retrain_reference.py"
    p = subprocess.run([sys.executable, str(tool), "--forget-class", "12", "--run", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "out of range" in p.stderr and not (tmp_path / "r").exists()
