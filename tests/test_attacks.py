"""The attack suite: held-out attack images, recovery-curve statistics, resumable records, the CLI's errors, and
EraseDiff's option that simulates the relearning attack while it unlearns."""
import json
import math

import numpy as np
import pytest
import torch

from erasediff.attacks import (
    attack_context, curve_auc, LabelAttack, Probe, recovery_summary, RelearnAttack, resolve_model, run_attacks,
    spread_indices, steps_to_level, attack_tables, load_records)
from erasediff.cli import main
from erasediff.objectives import EraseDiffConfig, EraseDiffObjective, PairedBatches
from erasediff.runtime import save_weights, weights_sha256
from erasediff.train import LoopConfig, fit

from _unlearn_helpers import SCHED, tiny_model

PROBE = Probe(n_per_class=4, sampler_steps=2)


@pytest.fixture(scope="module")
def ctx():
    return attack_context("digits", probe=PROBE)


def _saved(folder, seed=0, unlearned=False):
    m = tiny_model(seed)
    save_weights(m, folder / "unet")
    if unlearned: (folder / "metrics.json").write_text(json.dumps({"method": "erasediff"}))
    return folder / "unet"


def test_attack_settings_are_checked_before_work(ctx):
    for kw, msg in [(dict(n_images=0), "n_images"), (dict(lr=0.0), "lr must be > 0"), (dict(lr=-1e-3), "lr must be > 0"),
                    (dict(steps=(0, -1)), "steps must be"), (dict(steps=(5, 0)), "increasing"), (dict(steps=()), "steps"),
                    (dict(data="both"), "data must be")]:
        with pytest.raises(ValueError, match=msg): RelearnAttack(**kw)
    with pytest.raises(ValueError, match="n_images=71 but the held-out forget images"):
        RelearnAttack(n_images=71).check(ctx)                     # 70 held-out images of 2 and 8
    RelearnAttack(n_images=70).check(ctx)
    with pytest.raises(ValueError, match="n_per_class"): Probe(n_per_class=0)
    with pytest.raises(ValueError, match="scales"): Probe(scales=(-1.0,))


def test_attack_images_are_held_out_and_spread(ctx):
    a = RelearnAttack(n_images=10)
    imgs = a.images(ctx, seed=3)
    ids = set(int(i) for i in imgs.ids)
    assert ids <= set(int(i) for i in ctx.splits.heldout_forget.ids)      # test images ...
    x, _ = imgs.tensors()
    f, _ = ctx.splits.forget.tensors()
    assert torch.cdist(x.flatten(1), f.flatten(1)).min() > 0              # ... none of them an image that was unlearned
    assert sorted(imgs.labels.tolist()) == [2] * 5 + [8] * 5
    assert set(int(i) for i in a.images(ctx, seed=4).ids) != ids          # another seed, other images
    remain = RelearnAttack(n_images=12, data="remain").images(ctx, 0)
    assert not set(remain.labels.tolist()) & {2, 8}
    idx = spread_indices(torch.tensor([0, 0, 0, 1, 1, 1, 1]), 3, seed=0)
    assert torch.tensor([0, 0, 0, 1, 1, 1, 1])[idx].tolist().count(0) == 2


def test_relearn_attack_is_seeded_and_leaves_the_model_alone(ctx):
    m = tiny_model()
    before = weights_sha256(m)
    a = RelearnAttack(n_images=4, lr=1e-3, steps=(0, 2, 3))
    r1, r2 = a.run(m, ctx, seed=1), a.run(m, ctx, seed=1)
    assert weights_sha256(m) == before
    assert [p["step"] for p in r1["points"]] == [0, 2, 3] and len(r1["losses"]) == 3
    assert r1["points"] == r2["points"]
    for p in r1["points"]:
        assert set(p["counts"]) == {"0", "0.5"} and all(n == 4 for per in p["counts"].values() for _, n in per)
        assert 0 <= p["recognition"] <= 1


def test_curve_statistics_by_hand():
    assert curve_auc([0, 10, 20], np.array([0.0, 0.5, 1.0])) == pytest.approx(0.5)
    assert curve_auc([0, 5, 100], np.array([0.2, 0.2, 0.2])) == pytest.approx(0.2)
    assert steps_to_level([0, 10, 20], np.array([0.1, 0.3, 0.7])) == pytest.approx(15.0)
    assert steps_to_level([0, 10, 20], np.array([0.6, 0.7, 0.9])) == 0
    assert steps_to_level([0, 10, 20], np.array([0.1, 0.2, 0.3])) == 20          # censored at the horizon
    both = steps_to_level([0, 10], np.array([[0.0, 1.0], [0.5, 0.5]]))
    assert both.tolist() == [5.0, 0.0]


def _records(curve, seeds=5, n=100, jitter=0.0):
    rng = np.random.default_rng(0)
    out = []
    for s in range(seeds):
        pts = []
        for step, q in zip((0, 10, 20), curve):
            k = int(np.clip(round((q + jitter * rng.standard_normal()) * n), 0, n))
            pts.append({"step": step, "counts": {"0": [[k, n], [k, n]], "1": [[k // 2, n], [k // 2, n]]}})
        out.append({"seed": s, "points": pts})
    return out


def test_recovery_summary_intervals_and_ratios():
    ref = _records([0.0, 0.3, 0.6], jitter=0.05)
    same = recovery_summary(ref, ref)
    assert same["auc_ratio"]["value"] == pytest.approx(1.0)
    lo, hi = same["auc_ratio"]["ci95"]
    assert lo < 1 < hi
    slower = recovery_summary(_records([0.0, 0.05, 0.1], jitter=0.02), ref)
    assert slower["auc_ratio"]["ci95"][1] < 0.5 and slower["censored"]          # recovers far less than Retrain
    assert slower["steps_ratio"]["value"] < 1                                    # and takes longer to reach 50 %
    faster = recovery_summary(_records([0.6, 0.9, 1.0]), ref)
    assert faster["auc_ratio"]["ci95"][0] > 1 and faster["steps_ratio"]["value"] == math.inf
    # the worst scale is what counts: scale "1" holds half the hits, scale "0" decides the curve
    assert same["curve"] == pytest.approx([0.0, 0.3, 0.6], abs=0.05)


def test_suite_records_resume_and_tables(ctx, tmp_path):
    a = [RelearnAttack(n_images=2, lr=1e-3, steps=(0, 1)), LabelAttack(n_per_label=3)]
    folders = {s: _saved(tmp_path / f"m{s}", seed=s, unlearned=True) for s in (0, 1)}
    plain = _saved(tmp_path / "plain", seed=5)
    notes = []
    models = {"retrain": plain, "method": folders}
    first = run_attacks(models, a, ctx, [0, 1], tmp_path / "out", progress=False, log=notes.append)
    assert first["computed"] == 8 and first["unlearned"] == {"retrain": False, "method": True}
    assert any("'retrain' was never unlearned" in n for n in notes)
    again = run_attacks(models, a, ctx, [0, 1], tmp_path / "out", progress=False, log=notes.append)
    assert (again["computed"], again["reused"]) == (0, 8)
    r0, r1 = load_records(tmp_path / "out", "method", a[0].name, [0, 1])
    assert r0["settings"]["weights"] != r1["settings"]["weights"]             # each seed its own model
    other = run_attacks(models, a, attack_context("digits", probe=Probe(n_per_class=3, sampler_steps=2)), [0, 1],
                        tmp_path / "out", progress=False, log=notes.append)
    assert other["computed"] == 8                                              # another probe: redone, not reused
    rows = attack_tables(tmp_path / "out", ["retrain", "method"], a, [0, 1])
    assert "auc_ratio" in rows[a[0].name]["method"] and "auc_ratio" not in rows[a[0].name]["retrain"]
    lab = rows["labels"]["method"]
    assert set(lab["labels"]) == {"1", "3", "7", "9"} and 0 <= lab["null"]["value"] <= 1
    md = (tmp_path / "out" / "table.md").read_text()
    assert "AUC ratio to Retrain" in md and "null label" in md
    assert (tmp_path / "out" / "figures" / f"{a[0].name}.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no folder for seed"):
        run_attacks({"method": {0: folders[0]}}, a, ctx, [0, 1], tmp_path / "x", progress=False)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        run_attacks({"m": tmp_path / "nothing"}, a, ctx, [0], tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_resolve_model_knows_references_and_unlearned_runs(ctx, tmp_path):
    path, unlearned = resolve_model(ctx, "retrain")
    assert unlearned and (path / "config.json").is_file()
    assert resolve_model(ctx, "unscrubbed")[1] is False
    with pytest.raises(ValueError, match="shipped Retrain forgot"):
        resolve_model(attack_context("digits", (1, 7), probe=PROBE), "retrain")


def test_cli_attack_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: main(["attack", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("relearn", "remain", "labels", "held-out", "Retrain"): assert word in out
    cases = [(["--lr", "0"], "--lr"), (["--lr", "-1e-4"], "--lr"), (["--steps", "-5", "0"], "--steps"),
             (["--steps", "10", "5"], "--steps"), (["--n-images", "0"], "--n-images"),
             (["--n-images", "500"], "--n-images"), (["--model", "x"], "--model"), (["--model", "a=b{x}"], "--model"),
             (["--model", "a=p", "a=q"], "--model"), (["--seeds", "0"], "--seeds")]
    for extra, flag in cases:
        base = ["attack", "--out", str(tmp_path / "o"), "--quiet"] + ([] if "--model" in extra else ["--model", "retrain"])
        assert _exits(base + extra) == 2, extra
        assert flag in capsys.readouterr().err, extra
        assert not (tmp_path / "o").exists()


def _exits(argv) -> int:
    "main's exit code, argparse's usage errors (which exit) included."
    try: return main(argv)
    except SystemExit as e: return e.code


def test_cli_attack_runs_and_notes_a_model_never_unlearned(tmp_path, capsys):
    plain = _saved(tmp_path / "plain")
    argv = ["attack", "--model", f"plain={plain}", "--attack", "relearn", "--n-images", "2", "--steps", "0", "1",
            "--seeds", "1", "--n-per-class", "2", "--sampler-steps", "2", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "never unlearned" in cap.err and "AUC ratio to Retrain" in cap.out
    assert (tmp_path / "o" / "runs" / "retrain").is_dir() and (tmp_path / "o" / "table.json").is_file()


# --- EraseDiff that simulates the attack ------------------------------------------------------------------------

def test_robust_config_validation():
    assert not EraseDiffConfig().robust and EraseDiffConfig(robust_every=2).robust
    assert not EraseDiffConfig(robust_every=2, robust_weight=0.0).robust
    for kw, msg in [(dict(robust_every=-1), "robust_every"), (dict(robust_steps=0), "robust_steps"),
                    (dict(robust_images=0), "robust_images"), (dict(robust_lr=0.0), "robust_lr"),
                    (dict(robust_weight=-1.0), "robust_weight"), (dict(robust_every=True), "robust_every")]:
        with pytest.raises(ValueError, match=msg): EraseDiffConfig(**kw)


@pytest.fixture(scope="module")
def splits(ctx):
    return ctx.splits


def _run(splits, steps=2, **cfg):
    m = tiny_model()
    c = EraseDiffConfig(lam=0.3, batch_size=8, forget_batch_size=8, rem_num=16, epochs=1, rounds=1, **cfg)
    obj = EraseDiffObjective(SCHED, c)
    loop = LoopConfig(steps=steps, batch_size=8, lr=1e-3, warmup_steps=0, ema_decay=None, ckpt_every=0, seed=0, log_every=1)
    res = fit(m, obj, PairedBatches(splits.remain, splits.forget, 8, 8, seed=0), loop, progress=False)
    return m, res


def test_robust_step_restores_theta_and_changes_the_update(splits):
    m = tiny_model()
    obj = EraseDiffObjective(SCHED, EraseDiffConfig(robust_every=1, robust_steps=3, robust_lr=1e-2, batch_size=8))
    pb = PairedBatches(splits.remain, splits.forget, 8, 8, seed=0)
    obj.on_step_start(m, 0, pb, torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    grads, l_att = obj.attacked_forget_grad(m, next(pb)[1])
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())            # theta restored bit for bit
    assert all(p.grad is None for p in m.parameters()) and math.isfinite(l_att)
    assert len(grads) == len(list(m.parameters())) and any(g.abs().sum() > 0 for g in grads)
    plain, rp = _run(splits)
    off, ro = _run(splits, robust_every=0)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), off.parameters()))  # r = 0: EraseDiff itself
    robust, rr = _run(splits, robust_every=1, robust_steps=2)
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), robust.parameters()))
    assert all("L_f_attacked" in h for h in rr.history) and "L_f_attacked" not in rp.history[0]
    every2, r2 = _run(splits, steps=3, robust_every=2, robust_steps=1)
    assert ["L_f_attacked" in h for h in r2.history] == [True, False, True]


def test_cli_attack_digits_text_prompt_attacks(tmp_path, capsys):
    "--preset digits-text: the prompt attacks on the shipped Retrain at a tiny budget; kinds mixed and bad values exit 2."
    with pytest.raises(SystemExit) as e: main(["attack", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("inversion", "softprompt", "--attack-steps", "--n-samples", "digits-text"): assert word in out
    base = ["attack", "--preset", "digits-text", "--model", "retrain", "--seeds", "1", "--attack-steps", "1",
            "--n-samples", "3", "--n-heldout", "4", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(base) == 0
    cap = capsys.readouterr()
    assert "concept inversion" in cap.out and "soft prompt" in cap.out and '"computed": 2' in cap.out
    for f in ("table.md", "table.json", "runs/retrain/inversion/seed0.json", "runs/retrain/softprompt/seed0.json"):
        assert (tmp_path / "o" / f).is_file(), f
    assert main(base) == 0 and '"reused": 2' in capsys.readouterr().out
    cases = [(["--attack", "relearn"], "--attack"), (["--attack", "inversion", "labels"], "--attack"),
             (["--n-images", "3"], "--n-images"), (["--steps", "0", "1"], "--steps"), (["--forget", "8"], "--forget"),
             (["--lr", "1e-3"], "--lr"), (["--n-per-class", "2"], "--n-per-class"), (["--device", "cuda"], "--device"),
             (["--attack-steps", "-1"], "--attack-steps"), (["--n-samples", "0"], "--n-samples"),
             (["--n-heldout", "500"], "--n-heldout"), (["--forget-prompt", "seven or 8"], "--forget-prompt"),
             (["--model", "m=" + str(tmp_path / "none")], "--model"), (["--seeds", "0"], "--seeds")]
    for extra, flag in cases:
        argv = ["attack", "--preset", "digits-text", "--out", str(tmp_path / "x"), "--quiet"] + (
            [] if "--model" in extra else ["--model", "retrain"]) + extra
        assert _exits(argv) == 2, extra
        last = capsys.readouterr().err.strip().splitlines()[-1]          # argparse prints its usage first
        assert last.startswith("erasediff attack: error: ") and flag in last, (extra, last)
        assert not (tmp_path / "x").exists()
    for extra, flag in ((["--attack", "softprompt"], "--attack"), (["--n-samples", "4"], "--n-samples"),
                        (["--attack-steps", "2"], "--attack-steps"), (["--n-heldout", "3"], "--n-heldout"),
                        (["--forget-prompt", "eight"], "--forget-prompt")):
        assert _exits(["attack", "--model", "retrain", "--out", str(tmp_path / "x"), "--quiet"] + extra) == 2, extra
        assert flag in capsys.readouterr().err, extra


def test_ratios_resample_seeds_in_pairs():
    "Seeds that are hard for both models alike (the same attack images) do not widen the ratio's interval when paired."
    def recs(scale, seeds):
        levels = [0.15, 0.45, 0.25, 0.6, 0.35]                     # how fast each seed's images teach the class
        return [{"seed": s, "points": [{"step": t, "counts": {"0": [[int(round(min(1.0, scale * q * f) * 1000)), 1000]]}}
                                       for t, f in zip((0, 10, 20), (0.0, 1.0, 1.6))]} for s, q in zip(seeds, levels)]
    ref, method = recs(1.0, range(5)), recs(1.2, range(5))
    paired = recovery_summary(method, ref, tag="pairs")
    unpaired = recovery_summary(recs(1.2, range(10, 15)), ref, tag="pairs")     # other seed numbers: drawn apart
    assert paired["paired"] and not unpaired["paired"]
    assert paired["auc_ratio"]["value"] == pytest.approx(unpaired["auc_ratio"]["value"])
    lo, hi = paired["auc_ratio"]["ci95"]
    assert 1.0 < lo and hi - lo < 0.5 * (unpaired["auc_ratio"]["ci95"][1] - unpaired["auc_ratio"]["ci95"][0])
    assert unpaired["auc_ratio"]["ci95"][0] < 1.0                  # drawn apart, the same data cannot tell them apart
