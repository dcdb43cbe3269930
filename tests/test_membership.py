"""Tests of erasediff.membership: membership inference, KL and loss distributions, memorisation of single images."""
from __future__ import annotations
from types import SimpleNamespace
import numpy as np
import pytest
import torch
import torch.nn as nn
from erasediff.core import NoiseSchedule, eps_loss
from erasediff.data import load_digits_set
from erasediff.measures import (_rng, bootstrap_mean)
from erasediff.membership import (_cross_fitted_calls, _cross_fitted_predictions, attack_metrics, auc_score, balanced_accuracy_at, best_threshold, gaussian_kl_to_standard, membership_inference, mia_from_losses, per_sample_losses, plot_kl, plot_losses, predicted_noise_kl, predicted_noise_stats, tpr_at_fpr)
torch.set_num_threads(1)
from matplotlib.figure import Figure
from erasediff.membership import (_nearest_generated, memorization_report, nearest_generated_distance)
from _metric_helpers import make_tiny, rand_images


def brute_force(images: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    "Per-pixel RMS distance to the nearest generated image, all pairs at once."
    d = (images.double()[:, None] - generated.double()[None]).pow(2).flatten(2).mean(2).sqrt()
    return d.min(1).values


def _null_draw(rng, shift=0.0, k=1):
    "Per-sample losses (M, k) of 281 members and 70 non-members, and a calibration set of 290 vs 290; members lower by shift."
    L = torch.tensor(rng.normal(size=(281 + 70 + 290 + 290, k)))
    return L[:281] - shift, L[281:351], (L[351:641] - shift, L[641:])


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


class NoisePredictor(nn.Module):
    "Predicts eps ~ N(mu, s^2) whatever the input."
    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s, self.config = mu, s, SimpleNamespace(num_class_embeds=None)
        self.w = nn.Parameter(torch.zeros(()))
    def forward(self, x, t, class_labels=None):
        return SimpleNamespace(sample=self.mu + self.s * torch.randn_like(x) + 0 * self.w)


def test_attack_metrics_known_answers():
    perfect = attack_metrics([5.0, 6.0, 7.0], [0.0, 1.0])        # cross-fitted: every fold's threshold separates
    assert (perfect["accuracy"], perfect["auc"], perfect["tpr_at_1_fpr"]) == (1.0, 1.0, None)   # 2 non-members: no TPR at 1 %
    assert attack_metrics([0.0, 1.0], [5.0, 6.0])["auc"] == 0.0
    assert attack_metrics([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], threshold=1.0)["accuracy"] == pytest.approx(0.5)
    assert attack_metrics([0.0, 1.0, 2.0], [0.0, 1.0, 2.0])["auc"] == 0.5
    # 1000 non-members 0..999; half the members above all of them, half at 985.5 (14 false positives = 1.4 % FPR to
    # reach them): at 1 % FPR, TPR = 0.5
    r = attack_metrics([2000.0] * 10 + [985.5] * 10, np.arange(1000.0))
    assert r["tpr_at_1_fpr"] == 0.5
    with pytest.raises(ValueError, match="members"):
        attack_metrics([], [1.0])


def test_best_threshold_and_fixed_threshold():
    tau, acc = best_threshold([3.0, 4.0, 5.0], [0.0, 1.0])
    assert tau == 2.0 and acc == 1.0                                 # midway between the adjacent scores 1 and 3
    assert best_threshold([0.0, 1.0], [5.0, 6.0]) == (np.inf, 0.5)  # no cut helps: nobody is a member
    assert balanced_accuracy_at([3.0, 4.0, 5.0], [0.0, 1.0], 3.5) == pytest.approx(0.5 * (2 / 3 + 1))
    assert auc_score([1.0, 2.0], [1.0, 0.0]) == pytest.approx((1.5 + 2) / 4)   # a tie counts 1/2


def test_tpr_at_low_fpr_only_with_enough_nonmembers():
    m = np.full(20, 5000.0)
    assert tpr_at_fpr(m, np.arange(999.0)) is None                  # 999 x 1 % < 10 possible false positives
    assert tpr_at_fpr(m, np.arange(1000.0)) == 1.0
    r = mia_from_losses(torch.zeros(30, 1), torch.ones(70, 1), (10,), n_shuffles=0, n_boot=0)
    assert r["mean"]["tpr_at_1_fpr"] is None and "70 non-members" in r["tpr_note"]


def test_tpr_at_fpr_keeps_every_roc_point():
    "Members and non-members with the same 1000 scores: the ROC is the diagonal, TPR = FPR = 1 % (10 false positives)."
    s = -np.arange(1000.0)
    assert tpr_at_fpr(s, s, fpr=0.01, min_false_positives=10) == pytest.approx(0.01)   # dropped points gave 0.001


def test_mia_without_signal_is_at_chance():
    """Members and non-members from one distribution: over 200 draws of 281 vs 70 the attack's accuracy averages 0.5
    within 3 standard errors, calibrated or cross-fitted; the old in-sample best threshold averages ~0.54."""
    rng = np.random.default_rng(0)
    cal, cross, insample, auc, above = [], [], [], [], []
    for i in range(200):
        lm, ln, calib = _null_draw(rng)
        r = mia_from_losses(lm, ln, (10,), calibration=calib, n_shuffles=50, n_boot=0, seed=i)
        cal.append(r["mean"]["accuracy"]); auc.append(r["mean"]["auc"]); above.append(r["chance"]["mean"]["accuracy"]["exceeds"])
        cross.append(mia_from_losses(lm, ln, (10,), n_shuffles=0, n_boot=0, seed=i)["mean"]["accuracy"])
        insample.append(best_threshold(-lm[:, 0].numpy(), -ln[:, 0].numpy())[1])
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
    calls = _cross_fitted_calls(scores, perms, Mm, k, seed)
    fr = _rng(seed, "mia/folds")
    fold = np.r_[fr.permutation(Mm) % k, fr.permutation(37 - Mm) % k]
    for row, perm in zip(calls, perms):
        s, ref = scores[perm], np.zeros(37, bool)
        for f in range(k):
            tr = fold != f
            tau, _ = best_threshold(s[:Mm][tr[:Mm]], s[Mm:][tr[Mm:]])
            ref[~tr] = s[~tr] >= tau
        np.testing.assert_array_equal(row, ref)
    pm, pn = _cross_fitted_predictions(scores[:Mm], scores[Mm:], k, seed)
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
        r = mia_from_losses(lm, ln, (10,), n_shuffles=50, n_boot=0, seed=i)
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
        r = mia_from_losses(lm, ln, (10,), calibration=cal, n_shuffles=0, n_boot=200, seed=i)
        acc.append(r["mean"]["accuracy"]); sd.append(r["error_bars"]["mean"]["accuracy"]["std"])
    ratio = np.sqrt(np.mean(np.square(sd))) / np.std(acc, ddof=1)
    assert 0.85 < ratio < 1.25, ratio
    again = mia_from_losses(lm, ln, (10,), calibration=cal, n_shuffles=0, n_boot=200, seed=99)["error_bars"]
    assert again == r["error_bars"]


def test_mia_strong_signal_beats_shuffle_baseline():
    lm, ln, calib = _null_draw(np.random.default_rng(1), shift=2.5, k=3)   # per timestep: AUC Phi(2.5 / sqrt 2) = 0.96
    r = mia_from_losses(lm, ln, (10, 50, 100), calibration=calib, seed=0)
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
    r = mia_from_losses(lm, ln, (10,), calibration=far, n_boot=0)
    assert r["per_timestep"][10]["threshold"] == -10.5 and r["per_timestep"][10]["calibration_accuracy"] == 1.0
    assert r["mean"]["accuracy"] == 0.5 and r["mean"]["auc"] == 1.0
    assert r["n_calibration_members"] == 30 and r["protocol"].startswith("calibrated")
    with pytest.raises(ValueError, match="calibration"):
        mia_from_losses(lm, ln, (10,), calibration=(torch.zeros(3, 2), torch.zeros(3, 2)))


def test_membership_inference_on_a_memorizer():
    sched = NoiseSchedule()
    x, y = load_digits_set("train").tensors()
    members, nonmembers = x[:30], x[30:60]
    model = Memorizer(members, sched)
    r = membership_inference(model, sched, (members, None), (nonmembers, None), timesteps=(10, 50))
    assert r["mean"] == {"accuracy": 1.0, "auc": 1.0, "tpr_at_1_fpr": None}       # 30 non-members: no TPR at 1 % FPR
    cal = membership_inference(model, sched, (members, None), (nonmembers, None), timesteps=(10, 50),
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
    L = per_sample_losses(model, x, y, sched, (10, 300), seed=3)
    assert L.shape == (6, 2)
    torch.testing.assert_close(L, per_sample_losses(model, x, y, sched, (10, 300), seed=3, batch_size=4))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = eps_loss(model, x, y, sched, noise=noise, t=torch.full((6,), 300), reduction="none")
    torch.testing.assert_close(L[:, 1], ref)
    assert not torch.allclose(L, per_sample_losses(model, x, y, sched, (10, 300), seed=4))
    with pytest.raises(ValueError, match="timesteps"):
        per_sample_losses(model, x, y, sched, (1000,))
    with pytest.raises(ValueError, match="labels are required"):
        per_sample_losses(model, x, None, sched, (10,))
    unc = make_tiny(num_classes=None).eval()
    assert per_sample_losses(unc, x, y, sched, (10,)).shape == (6, 1)   # labels ignored by unconditional models


def test_gaussian_kl_to_standard():
    g = torch.Generator().manual_seed(0)
    kl = gaussian_kl_to_standard(torch.randn(3, 200_000, generator=g))
    torch.testing.assert_close(kl, torch.zeros(3, dtype=torch.float64), atol=1e-3, rtol=0)
    v = torch.tensor([[0.5 - 2.0, 0.5 + 2.0]])   # mean 0.5, (biased) variance 4
    assert float(gaussian_kl_to_standard(v)) == pytest.approx(0.5 * (4 + 0.25 - 1 - np.log(4)), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_kl_to_standard(torch.zeros(3, 1))


def test_predicted_noise_kl_known_distribution():
    torch.manual_seed(0)
    x = torch.zeros(4, 1, 128, 128)   # 16384 values per sample: the fitted mean/variance are within ~1-2%
    kl = predicted_noise_kl(NoisePredictor(0.5, 2.0), x, None, NoiseSchedule(), (10, 500))
    assert kl.shape == (4, 2)
    torch.testing.assert_close(kl, torch.full((4, 2), 0.5 * (4 + 0.25 - 1 - np.log(4)), dtype=torch.float64), atol=0.05, rtol=0)
    assert float(predicted_noise_kl(NoisePredictor(0.0, 1.0), x, None, NoiseSchedule(), (10,)).max()) < 0.01


def test_predicted_noise_stats_loss_is_eps_loss():
    sched = NoiseSchedule()
    model = make_tiny().eval()
    x, y = load_digits_set("train").tensors()
    loss, kl = predicted_noise_stats(model, x[:5], y[:5], sched, (10, 700), seed=2, batch_size=3)
    torch.testing.assert_close(loss, per_sample_losses(model, x[:5], y[:5], sched, (10, 700), seed=2), rtol=1e-5, atol=1e-6)
    # batch 3 vs the default batch: float32 network outputs summed in another order (seen: 2e-7 apart, float64 KL)
    torch.testing.assert_close(kl, predicted_noise_kl(model, x[:5], y[:5], sched, (10, 700), seed=2), rtol=1e-5, atol=1e-6)
    assert kl.shape == (5, 2) and (kl >= 0).all()


def test_mia_from_losses_shapes():
    r = mia_from_losses(torch.zeros(4, 2), torch.ones(3, 2), (10, 20))
    assert r["mean"]["auc"] == 1.0 and r["per_timestep"][20]["loss_nonmembers"] == 1.0
    with pytest.raises(ValueError, match="losses must be"):
        mia_from_losses(torch.zeros(4, 2), torch.ones(3, 2), (10,))


def test_figures_are_figures():
    rng = np.random.default_rng(0)
    for fn in (plot_kl, plot_losses):
        fig = fn(rng.gamma(2, size=50), rng.gamma(3, size=50), title="t")
        assert isinstance(fig, Figure) and fig.axes[0].get_title() == "t"
        assert len(fig.axes[0].get_legend().get_texts()) == 2


def test_distance_is_per_pixel_rms():
    a = torch.zeros(1, 3, 4, 4)
    g = torch.stack([torch.full((3, 4, 4), 1.0), torch.full((3, 4, 4), -3.0)])
    half = torch.zeros(1, 3, 4, 4); half[:, :, :2] = 2.0          # half the pixels differ by 2: RMS sqrt(2)
    assert nearest_generated_distance(a, g).tolist() == [1.0]
    assert nearest_generated_distance(half, torch.zeros(1, 3, 4, 4)).item() == pytest.approx(2 ** 0.5)


@pytest.mark.parametrize("chunk", [1, 7, 30, 1024])
def test_chunked_equals_direct(chunk):
    x, g = rand_images(23, 0, (3, 4, 4)), rand_images(61, 1, (3, 4, 4))
    got = nearest_generated_distance(x, g, chunk=chunk)
    assert got.shape == (23,) and got.dtype == torch.float64
    torch.testing.assert_close(got, brute_force(x, g), rtol=1e-12, atol=1e-12)


def test_nearest_index_is_the_nearest_sample():
    x, g = rand_images(40, 2), rand_images(90, 3)
    d, idx = _nearest_generated(x, g, chunk=16)
    full = (x.double()[:, None] - g.double()[None]).pow(2).flatten(2).mean(2)
    assert idx.tolist() == full.argmin(1).tolist()


def test_exact_copies_are_at_zero_despite_large_pixel_values():
    # cdist's matrix-product form loses precision for near-equal vectors of large norm; the winner is recomputed exactly
    x = 100 + rand_images(40, 4)
    g = torch.cat([rand_images(50, 5), x.double() + 1e-6])
    d = nearest_generated_distance(x.double(), g)
    torch.testing.assert_close(d, torch.full((40,), 1e-6, dtype=torch.float64), rtol=1e-4, atol=0)
    assert nearest_generated_distance(x, torch.cat([g.float(), x])).abs().max().item() == 0.0


def test_copies_of_the_forgotten_images_are_reproduced():
    forgotten, heldout = rand_images(30, 10), rand_images(50, 11)
    generated = torch.cat([rand_images(200, 12), forgotten[torch.randperm(30)]])
    r = memorization_report(forgotten, heldout, generated, n_boot=50)
    assert set(r["forgotten"]["per_image"].values()) == {0.0}
    assert r["forgotten"]["mean"] == 0.0 and r["forgotten"]["median"] == 0.0
    assert r["ratio"] == 0.0
    assert r["reproduced_share"] == 1.0
    assert r["heldout"]["mean"] > 0.3 and r["heldout"]["n"] == 50
    assert r["n_generated"] == 230
    assert r["forgotten"]["nearest_generated"] and all(k >= 200 for k in r["forgotten"]["nearest_generated"].values())


def test_half_copied_gives_half_reproduced():
    forgotten, heldout = rand_images(40, 20), rand_images(60, 21)
    generated = torch.cat([rand_images(300, 22), forgotten[:20]])
    r = memorization_report(forgotten, heldout, generated, n_boot=0)
    assert 0.5 <= r["reproduced_share"] <= 0.6                       # the 20 copies, and the others by chance
    assert 0.4 < r["ratio"] < 0.6
    assert [r["forgotten"]["per_image"][i] == 0.0 for i in range(40)] == [True] * 20 + [False] * 20


def test_independent_samples_give_ratio_near_one():
    forgotten, heldout, generated = rand_images(200, 30), rand_images(300, 31), rand_images(500, 32)
    r = memorization_report(forgotten, heldout, generated, n_boot=200, seed=1)
    assert abs(r["ratio"] - 1) < 0.03
    bar = r["error_bars"]["ratio"]
    assert bar["ci95"][0] < r["ratio"] < bar["ci95"][1] and bar["ci95"][1] - bar["ci95"][0] < 0.05
    assert abs(r["ratio"] - 1) < 4 * bar["std"]
    assert r["reproduced_share"] < 0.15
    assert r["forgotten"]["mean"] == pytest.approx(r["heldout"]["mean"], rel=0.03)


def test_error_bars_are_bootstrap_means_of_the_distances():
    forgotten, heldout, generated = rand_images(25, 40), rand_images(35, 41), rand_images(80, 42)
    r = memorization_report(forgotten, heldout, generated, n_boot=100, seed=3)
    d_f = nearest_generated_distance(forgotten, generated).numpy()
    d_h = nearest_generated_distance(heldout, generated).numpy()
    assert r["error_bars"]["forgotten_mean"] == bootstrap_mean(d_f, n_boot=100, seed=3, tag="reproduction/forgotten")
    assert r["error_bars"]["heldout_mean"] == bootstrap_mean(d_h, n_boot=100, seed=3, tag="reproduction/heldout")
    assert r["error_bars"]["forgotten_mean"]["value"] == pytest.approx(d_f.mean())
    assert r["error_bars"]["ratio"]["value"] == r["ratio"] == pytest.approx(d_f.mean() / d_h.mean())
    assert r["heldout"]["p05"] == pytest.approx(np.percentile(d_h, 5))
    again = memorization_report(forgotten, heldout, generated, n_boot=100, seed=3)
    assert again["error_bars"] == r["error_bars"]                     # seeded
    other = memorization_report(forgotten, heldout, generated, n_boot=100, seed=4)
    assert other["error_bars"]["ratio"]["ci95"] != r["error_bars"]["ratio"]["ci95"]


def test_held_out_copies_give_no_ratio():
    x = rand_images(5, 60)
    r = memorization_report(x, x, x, n_boot=10)
    assert r["ratio"] is None and r["reproduced_share"] == 0.0


@pytest.mark.parametrize("which", ["forgotten", "heldout", "generated"])
def test_empty_set_is_refused(which):
    sets = {"forgotten": rand_images(4, 0), "heldout": rand_images(4, 1), "generated": rand_images(4, 2)}
    sets[which] = sets[which][:0]
    with pytest.raises(ValueError, match=f"{which} is empty"):
        memorization_report(**sets)


@pytest.mark.parametrize("which", ["heldout", "generated"])
def test_image_shape_mismatch_names_the_argument(which):
    sets = {"forgotten": rand_images(4, 0), "heldout": rand_images(4, 1), "generated": rand_images(4, 2)}
    sets[which] = rand_images(4, 3, (3, 8, 8))
    with pytest.raises(ValueError, match=rf"forgotten and {which} must be images of the same shape.*\(1, 8, 8\) and \(3, 8, 8\)"):
        memorization_report(**sets)


@pytest.mark.parametrize("which", ["forgotten", "heldout", "generated"])
def test_not_a_batch_of_images_names_the_argument(which):
    sets = {"forgotten": rand_images(4, 0), "heldout": rand_images(4, 1), "generated": rand_images(4, 2)}
    sets[which] = sets[which].flatten(1)
    with pytest.raises(ValueError, match=rf"{which} must be a batch of images \(N, C, H, W\), got shape \(4, 64\)"):
        memorization_report(**sets)


def test_non_finite_pixels_are_refused():
    g = rand_images(4, 2); g[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="generated holds NaN"):
        memorization_report(rand_images(4, 0), rand_images(4, 1), g)


def test_bad_ids_and_chunk_are_refused():
    f, h, g = rand_images(4, 0), rand_images(4, 1), rand_images(4, 2)
    with pytest.raises(ValueError, match="forgotten_ids: 3 ids for 4 forgotten images"):
        memorization_report(f, h, g, forgotten_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="forgotten_ids must be unique"):
        memorization_report(f, h, g, forgotten_ids=[1, 2, 3, 3])
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        nearest_generated_distance(f, g, chunk=0)
    with pytest.raises(ValueError, match="images and generated must be images of the same shape"):
        nearest_generated_distance(f, rand_images(4, 3, (1, 4, 4)))
    with pytest.raises(ValueError, match="images is empty"):
        nearest_generated_distance(f[:0], g)
