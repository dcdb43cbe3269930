"""Tests of the sample-level forgetting metric of erasediff.metrics: can the model still reproduce a forgotten image?"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from erasediff import metrics as M

torch.set_num_threads(1)


def rand_images(n: int, seed: int, shape=(1, 8, 8)) -> torch.Tensor:
    "n images with i.i.d. uniform pixels in [-1, 1]."
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g) * 2 - 1


def brute_force(images: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    "Per-pixel RMS distance to the nearest generated image, all pairs at once."
    d = (images.double()[:, None] - generated.double()[None]).pow(2).flatten(2).mean(2).sqrt()
    return d.min(1).values


# --- nearest_generated_distance ---------------------------------------------------------------------------------

def test_distance_is_per_pixel_rms():
    a = torch.zeros(1, 3, 4, 4)
    g = torch.stack([torch.full((3, 4, 4), 1.0), torch.full((3, 4, 4), -3.0)])
    half = torch.zeros(1, 3, 4, 4); half[:, :, :2] = 2.0          # half the pixels differ by 2: RMS sqrt(2)
    assert M.nearest_generated_distance(a, g).tolist() == [1.0]
    assert M.nearest_generated_distance(half, torch.zeros(1, 3, 4, 4)).item() == pytest.approx(2 ** 0.5)


@pytest.mark.parametrize("chunk", [1, 7, 30, 1024])
def test_chunked_equals_direct(chunk):
    x, g = rand_images(23, 0, (3, 4, 4)), rand_images(61, 1, (3, 4, 4))
    got = M.nearest_generated_distance(x, g, chunk=chunk)
    assert got.shape == (23,) and got.dtype == torch.float64
    torch.testing.assert_close(got, brute_force(x, g), rtol=1e-12, atol=1e-12)


def test_nearest_index_is_the_nearest_sample():
    x, g = rand_images(40, 2), rand_images(90, 3)
    d, idx = M._nearest_generated(x, g, chunk=16)
    full = (x.double()[:, None] - g.double()[None]).pow(2).flatten(2).mean(2)
    assert idx.tolist() == full.argmin(1).tolist()


def test_exact_copies_are_at_zero_despite_large_pixel_values():
    # cdist's matrix-product form loses precision for near-equal vectors of large norm; the winner is recomputed exactly
    x = 100 + rand_images(40, 4)
    g = torch.cat([rand_images(50, 5), x.double() + 1e-6])
    d = M.nearest_generated_distance(x.double(), g)
    torch.testing.assert_close(d, torch.full((40,), 1e-6, dtype=torch.float64), rtol=1e-4, atol=0)
    assert M.nearest_generated_distance(x, torch.cat([g.float(), x])).abs().max().item() == 0.0


# --- reproduction_report ----------------------------------------------------------------------------------------

def test_copies_of_the_forgotten_images_are_reproduced():
    forgotten, heldout = rand_images(30, 10), rand_images(50, 11)
    generated = torch.cat([rand_images(200, 12), forgotten[torch.randperm(30)]])
    r = M.reproduction_report(forgotten, heldout, generated, n_boot=50)
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
    r = M.reproduction_report(forgotten, heldout, generated, n_boot=0)
    assert 0.5 <= r["reproduced_share"] <= 0.6                       # the 20 copies, and the others by chance
    assert 0.4 < r["ratio"] < 0.6
    assert [r["forgotten"]["per_image"][i] == 0.0 for i in range(40)] == [True] * 20 + [False] * 20


def test_independent_samples_give_ratio_near_one():
    forgotten, heldout, generated = rand_images(200, 30), rand_images(300, 31), rand_images(500, 32)
    r = M.reproduction_report(forgotten, heldout, generated, n_boot=200, seed=1)
    assert abs(r["ratio"] - 1) < 0.03
    bar = r["error_bars"]["ratio"]
    assert bar["ci95"][0] < r["ratio"] < bar["ci95"][1] and bar["ci95"][1] - bar["ci95"][0] < 0.05
    assert abs(r["ratio"] - 1) < 4 * bar["std"]
    assert r["reproduced_share"] < 0.15
    assert r["forgotten"]["mean"] == pytest.approx(r["heldout"]["mean"], rel=0.03)


def test_error_bars_are_bootstrap_means_of_the_distances():
    forgotten, heldout, generated = rand_images(25, 40), rand_images(35, 41), rand_images(80, 42)
    r = M.reproduction_report(forgotten, heldout, generated, n_boot=100, seed=3)
    d_f = M.nearest_generated_distance(forgotten, generated).numpy()
    d_h = M.nearest_generated_distance(heldout, generated).numpy()
    assert r["error_bars"]["forgotten_mean"] == M.bootstrap_mean(d_f, n_boot=100, seed=3, tag="reproduction/forgotten")
    assert r["error_bars"]["heldout_mean"] == M.bootstrap_mean(d_h, n_boot=100, seed=3, tag="reproduction/heldout")
    assert r["error_bars"]["forgotten_mean"]["value"] == pytest.approx(d_f.mean())
    assert r["error_bars"]["ratio"]["value"] == r["ratio"] == pytest.approx(d_f.mean() / d_h.mean())
    assert r["heldout"]["p05"] == pytest.approx(np.percentile(d_h, 5))
    again = M.reproduction_report(forgotten, heldout, generated, n_boot=100, seed=3)
    assert again["error_bars"] == r["error_bars"]                     # seeded
    other = M.reproduction_report(forgotten, heldout, generated, n_boot=100, seed=4)
    assert other["error_bars"]["ratio"]["ci95"] != r["error_bars"]["ratio"]["ci95"]


def test_forgotten_ids_key_the_per_image_results():
    forgotten, heldout = rand_images(3, 50), rand_images(10, 51)
    generated = torch.cat([rand_images(20, 52), forgotten[1:2]])
    r = M.reproduction_report(forgotten, heldout, generated, forgotten_ids=torch.tensor([101, 7, 42]), n_boot=10)
    assert list(r["forgotten"]["per_image"]) == [101, 7, 42]
    assert all(type(k) is int for k in r["forgotten"]["per_image"])
    assert r["forgotten"]["per_image"][7] == 0.0 and r["forgotten"]["per_image"][101] > 0
    assert r["forgotten"]["nearest_generated"][7] == 20
    json.dumps(M._jsonable(r))                                        # writable to metrics.json


def test_held_out_copies_give_no_ratio():
    x = rand_images(5, 60)
    r = M.reproduction_report(x, x, x, n_boot=10)
    assert r["ratio"] is None and r["reproduced_share"] == 0.0


# --- bad inputs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["forgotten", "heldout", "generated"])
def test_empty_set_is_refused(which):
    sets = {"forgotten": rand_images(4, 0), "heldout": rand_images(4, 1), "generated": rand_images(4, 2)}
    sets[which] = sets[which][:0]
    with pytest.raises(ValueError, match=f"{which} is empty"):
        M.reproduction_report(**sets)


@pytest.mark.parametrize("which", ["heldout", "generated"])
def test_image_shape_mismatch_names_the_argument(which):
    sets = {"forgotten": rand_images(4, 0), "heldout": rand_images(4, 1), "generated": rand_images(4, 2)}
    sets[which] = rand_images(4, 3, (3, 8, 8))
    with pytest.raises(ValueError, match=rf"forgotten and {which} must be images of the same shape.*\(1, 8, 8\) and \(3, 8, 8\)"):
        M.reproduction_report(**sets)


@pytest.mark.parametrize("which", ["forgotten", "heldout", "generated"])
def test_not_a_batch_of_images_names_the_argument(which):
    sets = {"forgotten": rand_images(4, 0), "heldout": rand_images(4, 1), "generated": rand_images(4, 2)}
    sets[which] = sets[which].flatten(1)
    with pytest.raises(ValueError, match=rf"{which} must be a batch of images \(N, C, H, W\), got shape \(4, 64\)"):
        M.reproduction_report(**sets)


def test_non_finite_pixels_are_refused():
    g = rand_images(4, 2); g[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="generated holds NaN"):
        M.reproduction_report(rand_images(4, 0), rand_images(4, 1), g)


def test_bad_ids_and_chunk_are_refused():
    f, h, g = rand_images(4, 0), rand_images(4, 1), rand_images(4, 2)
    with pytest.raises(ValueError, match="forgotten_ids: 3 ids for 4 forgotten images"):
        M.reproduction_report(f, h, g, forgotten_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="forgotten_ids must be unique"):
        M.reproduction_report(f, h, g, forgotten_ids=[1, 2, 3, 3])
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        M.nearest_generated_distance(f, g, chunk=0)
    with pytest.raises(ValueError, match="images and generated must be images of the same shape"):
        M.nearest_generated_distance(f, rand_images(4, 3, (1, 4, 4)))
    with pytest.raises(ValueError, match="images is empty"):
        M.nearest_generated_distance(f[:0], g)


# --- plot_reproduction --------------------------------------------------------------------------------------------

def test_plot_reproduction_draws_both_reports():
    forgotten, heldout, pool = rand_images(10, 70), rand_images(20, 71), rand_images(60, 72)
    before = M.reproduction_report(forgotten, heldout, torch.cat([pool, forgotten]), n_boot=20)
    after = M.reproduction_report(forgotten, heldout, pool, n_boot=20)
    fig = M.plot_reproduction(before, after, title="toy")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert bars == pytest.approx([before["forgotten"]["mean"], before["heldout"]["mean"],
                                  after["forgotten"]["mean"], after["heldout"]["mean"]])
    assert len(fig.axes[1].lines) == 10                               # one line per forgotten image, before -> after
    assert M._fig_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(json.dumps(M._jsonable(after)))               # reports read back from metrics.json (str ids)
    assert isinstance(M.plot_reproduction(json.loads(json.dumps(M._jsonable(before))), loaded), Figure)
    with pytest.raises(ValueError, match="report_after must be a dict returned by reproduction_report"):
        M.plot_reproduction(before, {"forgotten": {}})
