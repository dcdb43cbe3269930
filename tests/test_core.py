"""Tests of erasediff.core: the noise schedule, the diffusion loss, samplers and guidance, UNet configs."""
import pytest
import torch
from erasediff.core import (NoiseSchedule, SamplerConfig, ScheduleConfig, UNetConfig, eps_loss, generate, guided_eps, inference_timesteps, predict_eps, q_sample, sample, sample_timesteps, sample_with_diffusers)


SCHED = NoiseSchedule()


def test_schedule_matches_paper():
    assert SCHED.betas[0].item() == pytest.approx(1e-4) and SCHED.betas[-1].item() == pytest.approx(0.02)
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    assert torch.allclose(SCHED.alpha_bars.double(), ab, atol=1e-6)
    with pytest.raises(ValueError, match="beta_start"):
        ScheduleConfig(beta_start=0.5, beta_end=0.1)


@pytest.mark.parametrize("t", [0, 250, 999])
def test_q_sample_moments(t):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((40000, 1, 1, 1), -0.7)
    xt = q_sample(x0, torch.full((40000,), t), torch.randn(x0.shape, generator=g), SCHED)
    a = SCHED.alpha_bars[t]
    assert xt.mean().item() == pytest.approx((a.sqrt() * -0.7).item(), abs=0.015)
    assert xt.var().item() == pytest.approx((1 - a).item(), abs=0.02 + 0.02 * (1 - a).item())


def test_antithetic_timesteps_pair_up():
    t = sample_timesteps(10, 1000, antithetic=True, generator=torch.Generator().manual_seed(1))
    assert (t[:5] + t[5:] == 999).all() and t.min() >= 0 and t.max() <= 999


def test_loss_falls_on_overfit_batch(tiny_unet):
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 16, 16) * 2 - 1, torch.randint(0, 10, (8,))
    noise, t = torch.randn(8, 1, 16, 16), torch.randint(0, 1000, (8,))
    opt = torch.optim.Adam(tiny_unet.parameters(), 3e-3)
    first = None
    tiny_unet.train()
    for _ in range(80):
        loss = eps_loss(tiny_unet, x, y, SCHED, noise=noise, t=t)
        opt.zero_grad(); loss.backward(); opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.3 * first


def test_loss_per_sample_and_label_checks(tiny_unet, tiny_uncond_unet):
    x = torch.randn(4, 1, 16, 16)
    per = eps_loss(tiny_unet, x, torch.tensor([0, 1, 2, 3]), SCHED, reduction="none")
    assert per.shape == (4,) and (per > 0).all()
    with pytest.raises(ValueError, match="labels are required"):
        eps_loss(tiny_unet, x, None, SCHED)
    with pytest.raises(ValueError, match="unconditional"):
        eps_loss(tiny_uncond_unet, x, torch.zeros(4, dtype=torch.long), SCHED)
    with pytest.raises(ValueError, match="labels must lie"):
        eps_loss(tiny_unet, x, torch.tensor([0, 1, 2, 11]), SCHED)


def test_p_uncond_drops_labels_to_null(tiny_unet, monkeypatch):
    seen = []
    import erasediff.core as core
    monkeypatch.setattr(core, "predict_eps", lambda m, x, t, labels: (seen.append(labels), torch.zeros_like(x))[1])
    eps_loss(tiny_unet, torch.zeros(2000, 1, 16, 16), torch.zeros(2000, dtype=torch.long), SCHED, p_uncond=0.1,
             generator=torch.Generator().manual_seed(0))
    share_null = (seen[0] == 10).float().mean().item()
    assert 0.08 < share_null < 0.12


@pytest.mark.parametrize("cfg", [SamplerConfig("ddim", steps=10, w=0), SamplerConfig("ddim", steps=10, eta=0.7, w=0),
                                 SamplerConfig("ddpm", steps=10, w=0), SamplerConfig("ddim", steps=10, w=0, clip_sample=False),
                                 SamplerConfig("ddpm", steps=1000, w=0)])
def test_sampler_parity_with_diffusers(tiny_unet, cfg):
    lab = torch.tensor([0, 3, 9])
    ours = sample(tiny_unet, SCHED, 3, labels=lab, config=cfg, generator=torch.Generator().manual_seed(7))
    ref = sample_with_diffusers(tiny_unet, SCHED, 3, labels=lab, config=cfg, generator=torch.Generator().manual_seed(7))
    assert (ours - ref).abs().max().item() < 1e-4


def test_guidance_formula_and_w0_is_conditional(tiny_unet):
    x, lab = torch.randn(3, 1, 16, 16), torch.tensor([1, 2, 3])
    with torch.no_grad():
        cond = predict_eps(tiny_unet, x, torch.full((3,), 500), lab)
        unc = predict_eps(tiny_unet, x, torch.full((3,), 500), torch.full((3,), 10))
        assert torch.allclose(guided_eps(tiny_unet, x, 500, lab, 0.0), cond)
        assert torch.allclose(guided_eps(tiny_unet, x, 500, lab, 2.0), 3 * cond - 2 * unc, atol=1e-5)
    # w = 0 sampling equals a loop that only ever calls the conditional model
    ours = sample(tiny_unet, SCHED, 3, labels=lab, config=SamplerConfig(steps=5, w=0), generator=torch.Generator().manual_seed(0))
    ref = sample_with_diffusers(tiny_unet, SCHED, 3, labels=lab, config=SamplerConfig(steps=5, w=0),
                                generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ours, ref, atol=1e-5)
    guided = sample(tiny_unet, SCHED, 3, labels=lab, config=SamplerConfig(steps=5, w=2), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(guided, ours)


def test_generate_is_deterministic_and_batch_seeded(tiny_unet, tiny_uncond_unet):
    lab = torch.arange(10).repeat(2)
    a = generate(tiny_unet, SCHED, lab, config=SamplerConfig(steps=3), batch_size=8, seed=5, progress=False)
    b = generate(tiny_unet, SCHED, lab, config=SamplerConfig(steps=3), batch_size=8, seed=5, progress=False)
    assert a.shape == (20, 1, 16, 16) and torch.equal(a, b) and a.abs().max() <= 1
    u = generate(tiny_uncond_unet, SCHED, None, n=5, config=SamplerConfig(steps=3), progress=False)
    assert u.shape == (5, 1, 16, 16)
    with pytest.raises(ValueError, match="labels"):
        generate(tiny_unet, SCHED)


def test_inference_timesteps_leading():
    assert inference_timesteps(1000, 4) == [750, 500, 250, 0]
    with pytest.raises(ValueError, match="steps"):
        inference_timesteps(1000, 0)


def test_unet_config_validation():
    with pytest.raises(ValueError, match="same non-zero length"):
        UNetConfig(block_out_channels=(32, 64))
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNetConfig(block_out_channels=(30, 64, 64))
    with pytest.raises(ValueError, match="num_classes"):
        UNetConfig(num_classes=0)
