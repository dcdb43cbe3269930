"""Prompt attacks on a frozen text-to-image model: inputs refused before any work, seeded results, the shapes of the
report, the model left as it was, and the attacks telling the shipped Unscrubbed model from Retrain."""
import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from erasediff.core import generate, NoiseSchedule
from erasediff.prompt_attacks import (
    concept_inversion, heldout_concept_latents, INVERSION, load_prompt_records, prompt_attack_table, PROMPT_ATTACKS,
    prompt_states, PromptAttackConfig, run_prompt_attacks, sample_states, SOFT_PROMPT, soft_prompt_attack)
from erasediff.runtime import weights_sha256
from erasediff.text import decode_latents, load_text_reference, TEXT_PRESETS, tokenize
from erasediff.train import load_reference, reference_path

TINY = dict(steps=3, n_samples=4, curve=(1.0,))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup():
    try:
        models = {w: load_text_reference("digits-text", w) for w in ("unscrubbed", "retrain")}
        clf = load_reference("digits", "classifier")
    except FileNotFoundError as e:
        pytest.skip(f"shipped digits-text models missing: {e}")
    preset = TEXT_PRESETS["digits-text"]
    held = {w: heldout_concept_latents("digits-text", m, 8, 16, seed=0) for w, m in models.items()}
    return models, held, clf, NoiseSchedule(preset.schedule), preset.sampler


def _args(setup, which="unscrubbed"):
    models, held, clf, schedule, sampler = setup
    return models[which], held[which], clf, schedule, sampler


def test_heldout_latents_are_test_eights(setup):
    models, held, clf, *_ = setup
    z = held["unscrubbed"]
    assert z.shape == (16, 4, 8, 8)
    assert torch.equal(z, heldout_concept_latents("digits-text", models["unscrubbed"], 8, 16, seed=0))
    assert not torch.equal(z, heldout_concept_latents("digits-text", models["unscrubbed"], 8, 16, seed=1))
    assert heldout_concept_latents("digits-text", models["unscrubbed"], 8).shape[0] == 35   # every test eight
    x = decode_latents(models["unscrubbed"].vae, z)
    assert (clf(x).argmax(1) == 8).float().mean() > 0.9
    for bad, name in ((dict(n=0), "n must"), (dict(n=36), "n must"), (dict(concept=-1), "concept")):
        kw = {"concept": 8, "n": 4, **bad}
        with pytest.raises(ValueError, match=name):
            heldout_concept_latents("digits-text", models["unscrubbed"], kw["concept"], kw["n"])
    with pytest.raises(ValueError, match="preset"):
        heldout_concept_latents("digits", models["unscrubbed"], 8)


@pytest.mark.parametrize("bad, name", [(dict(steps=-1), "steps"), (dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"),
                                       (dict(n_samples=0), "n_samples"), (dict(batch_size=0), "batch_size"),
                                       (dict(steps=1.5), "steps"), (dict(curve=(0.0, 1.5)), "curve"),
                                       (dict(t_min=0.8, t_max=0.8), "t_min"), (dict(n_tokens=0), "n_tokens")])
def test_config_refuses_bad_values(bad, name):
    with pytest.raises(ValueError, match=name):
        PromptAttackConfig(**bad)


@pytest.mark.parametrize("attack", ["inversion", "soft"])
@pytest.mark.parametrize("bad, name", [(dict(steps=-1), "steps"), (dict(lr=0), "lr"), (dict(n_samples=0), "n_samples"),
                                       (dict(concept=10), "concept"), (dict(concept=-1), "concept"),
                                       (dict(concept=8.0), "concept"), (dict(seed=-1), "seed")])
def test_attacks_refuse_bad_inputs_naming_them(setup, attack, bad, name):
    kw = {"concept": 8, **bad}
    with pytest.raises(ValueError, match=name):
        if attack == "inversion": concept_inversion(*_args(setup), **kw)
        else: soft_prompt_attack(*_args(setup), init_prompt="eight", **kw)


def test_attacks_refuse_bad_models_latents_and_prompts(setup):
    model, held, clf, schedule, sampler = _args(setup)
    for f in (concept_inversion, lambda *a, **k: soft_prompt_attack(*a, init_prompt="eight", **k)):
        with pytest.raises(ValueError, match="latents"): f(model, held[:0], clf, schedule, sampler, concept=8)
        with pytest.raises(ValueError, match="latents"): f(model, held[:, :2], clf, schedule, sampler, concept=8)
        with pytest.raises(ValueError, match="latents"): f(model, held.numpy(), clf, schedule, sampler, concept=8)
        with pytest.raises(ValueError, match="model"): f(model.unet, held, clf, schedule, sampler, concept=8)
        with pytest.raises(ValueError, match="schedule"): f(model, held, clf, None, sampler, concept=8)
        with pytest.raises(ValueError, match="sampler"): f(model, held, clf, schedule, None, concept=8)
    for p in ("", "  ", None):
        with pytest.raises(ValueError, match="init_prompt"):
            soft_prompt_attack(model, held, clf, schedule, sampler, concept=8, init_prompt=p)
    with pytest.raises(ValueError, match="init_prompt"):
        soft_prompt_attack(model, held, clf, schedule, sampler, concept=8, init_prompt="the number eight " * 6)
    with pytest.raises(ValueError, match="init_word"):
        concept_inversion(model, held, clf, schedule, sampler, concept=8, init_word="handwritten digit")
    with pytest.raises(ValueError, match="n_tokens"):
        concept_inversion(model, held, clf, schedule, sampler, concept=8, n_tokens=20)


def test_prompt_states_and_sampling_match_the_prompt(setup):
    model, _, _, schedule, sampler = _args(setup)
    pid = model.table.prompts.index("the digit 8")
    ids = tokenize(model.tokenizer, ["the digit 8"])
    pos = torch.tensor([3])
    with torch.no_grad():
        st = prompt_states(model, ids, pos, model.text_encoder.get_input_embeddings().weight[ids[0, pos]])
        assert torch.allclose(st, model.encode(torch.tensor([pid])), atol=1e-6)
        x = sample_states(model, st, schedule, sampler, 3, seed=2)
        ref = decode_latents(model.vae, generate(model, schedule, torch.full((3,), pid), config=sampler, seed=2,
                                                 progress=False))
    assert torch.allclose(x, ref, atol=1e-5)


@pytest.mark.parametrize("attack", ["inversion", "soft"])
def test_same_seed_same_result_and_model_untouched(setup, attack):
    model = _args(setup)[0]
    before = weights_sha256(model)
    flags = [p.requires_grad for p in model.parameters()]
    run = ((lambda s: concept_inversion(*_args(setup), concept=8, n_tokens=2, seed=s, **TINY)) if attack == "inversion"
           else (lambda s: soft_prompt_attack(*_args(setup), concept=8, init_prompt="the digit 8", seed=s, **TINY)))
    a, b, c = run(0), run(0), run(1)
    assert a["hits"] == b["hits"] and a["history"] == b["history"] and torch.equal(a["embedding"], b["embedding"])
    assert a["history"] != c["history"]
    k = 2 if attack == "inversion" else 3                      # two placeholders; "the digit 8" is three tokens
    assert a["embedding"].shape == (k, 64) and a["states"].shape == (1, 16, 64)
    assert a["n"] == len(a["hits"]) == 4 and set(a["hits"]) <= {0, 1} and len(a["history"]) == 3
    assert a["success"] == sum(a["hits"]) / 4 == a["curve"][3]
    assert a["prompt"] == ("the digit <x> <x>" if attack == "inversion" else "the digit 8")
    assert weights_sha256(model) == before and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_zero_steps_measure_the_starting_prompt(setup):
    r = soft_prompt_attack(*_args(setup), concept=8, init_prompt="eight", steps=0, n_samples=4)
    assert r["history"] == [] and list(r["curve"]) == [0] and r["objective"]["start"] == r["objective"]["end"]


def test_attacks_recover_eight_from_unscrubbed_not_from_retrain(setup):
    "At a small budget: inversion finds an eight in Unscrubbed, not in Retrain; the soft prompt's objective rises."
    inv = {w: concept_inversion(*_args(setup, w), concept=8, steps=20, lr=2e-2, n_samples=24, curve=(0.0, 1.0))
           for w in ("unscrubbed", "retrain")}
    assert inv["unscrubbed"]["curve"][0] < 0.4                  # "the digit digit" draws any digit
    assert inv["unscrubbed"]["success"] >= 0.75 > 0.1           # far above chance
    assert inv["unscrubbed"]["success"] - inv["retrain"]["success"] >= 0.5
    soft = {w: soft_prompt_attack(*_args(setup, w), concept=8, init_prompt="eight", steps=10, n_samples=24,
                                  curve=(1.0,)) for w in ("unscrubbed", "retrain")}
    assert soft["unscrubbed"]["success"] - soft["retrain"]["success"] >= 0.5
    o = soft["retrain"]["objective"]
    assert o["end"] > o["start"] + 1.0, o


SUITE = dict(inversion=replace(INVERSION, **TINY), softprompt=replace(SOFT_PROMPT, **TINY), n_heldout=4, progress=False)


def _unlearned_copy(folder):
    "A copy of the shipped Unscrubbed pipeline in `folder`/pipeline, with an unlearning record beside it."
    shutil.copytree(reference_path("digits-text", "unscrubbed"), folder / "pipeline")
    (folder / "metrics.json").write_text(json.dumps({"method": "esd"}))
    return folder / "pipeline"


def test_suite_records_resume_and_table(setup, tmp_path):
    "Records per (model, attack, seed) with their settings, reused on a rerun, redone when a setting changes; the table."
    method = {0: _unlearned_copy(tmp_path / "m0"), 1: _unlearned_copy(tmp_path / "m1")}
    models, out, notes = {"retrain": "retrain", "method": method}, tmp_path / "out", []
    first = run_prompt_attacks(models, PROMPT_ATTACKS, [0, 1], out, log=notes.append, **SUITE)
    assert (first["computed"], first["reused"]) == (8, 0) and first["unlearned"] == {"retrain": True, "method": True}
    assert not any("never unlearned" in n for n in notes) and sum("success" in n for n in notes) == 8
    r = json.loads((out / "runs" / "method" / "softprompt" / "seed1.json").read_text())
    assert r["model"] == "method" and r["attack"] == "softprompt" and r["seed"] == 1 and r["n"] == len(r["hits"]) == 4
    s = r["settings"]
    assert s["seed"] == 1 and s["config"]["steps"] == 3 and s["concept"] == 8 and s["prompt"] == "eight"
    assert s["weights"] == weights_sha256(load_text_reference("digits-text", "unscrubbed").unet)
    again = run_prompt_attacks(models, PROMPT_ATTACKS, [0, 1], out, log=notes.append, **SUITE)
    assert (again["computed"], again["reused"]) == (0, 8)
    other = run_prompt_attacks({"retrain": "retrain"}, ["inversion"], [0], out, log=notes.append,
                               **{**SUITE, "inversion": replace(INVERSION, **{**TINY, "lr": 1e-2})})
    assert (other["computed"], other["reused"]) == (1, 0)                     # another config: redone
    t = prompt_attack_table(out, ["retrain", "method"], PROMPT_ATTACKS, [0, 1], labels={"method": "ESD"})
    for a in PROMPT_ATTACKS:
        rows = t["attacks"][a]["rows"]
        assert "diff" not in rows["retrain"] and rows["method"]["n"] == 8 and rows["method"]["seeds"] == [0, 1]
        for row in rows.values(): assert 0 <= row["ci95"][0] <= row["success"] <= row["ci95"][1] <= 1
        d = rows["method"]["diff"]
        assert d["ci95"][0] <= d["value"] <= d["ci95"][1]
        assert d["value"] == pytest.approx(100 * (rows["method"]["success"] - rows["retrain"]["success"]))
    md = (out / "prompt_attacks.md").read_text()
    assert "| ESD |" in md and "| retrain |" in md and "reference" in md and "2 seed(s) x 4 samples" in md
    assert json.loads((out / "prompt_attacks.json").read_text())["reference"] == "retrain"
    with pytest.raises(FileNotFoundError, match="run the suite first"):
        load_prompt_records(out, "method", "inversion", [2])


def test_suite_notes_a_model_never_unlearned(setup, tmp_path):
    notes = []
    done = run_prompt_attacks({"plain": reference_path("digits-text", "unscrubbed")}, ["inversion"], [3],
                              tmp_path, log=notes.append, **SUITE)
    assert done["unlearned"] == {"plain": False} and done["computed"] == 1
    assert any("'plain' was never unlearned" in n for n in notes)
    t = prompt_attack_table(tmp_path, ["plain"], ["inversion"], [3], name="t")
    assert t["reference"] is None and "diff" not in t["attacks"]["inversion"]["rows"]["plain"]
    assert "−" not in (tmp_path / "t.md").read_text().split("\n")[2]          # no column against Retrain


@pytest.mark.parametrize("kw, match", [
    (dict(attacks=["relearn"]), "attacks: unknown attack 'relearn'"), (dict(attacks=[]), "attacks"),
    (dict(attacks="inversion"), "attacks"), (dict(attacks=["inversion", "inversion"]), "attacks"),
    (dict(seeds=[-1]), "seeds"), (dict(seeds=[]), "seeds"), (dict(seeds=[0, 0]), "seeds"),
    (dict(models={}), "models"), (dict(models={"a/b": "retrain"}), "models"),
    (dict(models={"m": "no/such/folder"}), "model 'm': .* no such folder"),
    (dict(models={"m": {0: "retrain"}}, seeds=[0, 1]), r"model 'm': no folder for seed\(s\) \[1\]"),
    (dict(models={"m": "."}), "not a text-to-image pipeline folder"), (dict(n_heldout=36), "n_heldout"),
    (dict(forget_prompt="seven or 8"), "forget_prompt"), (dict(forget_prompt="cat"), "forget_prompt"),
    (dict(inversion=dict(steps=3)), "inversion must be a PromptAttackConfig")])
def test_suite_checks_every_input_before_work(setup, tmp_path, kw, match):
    args = {"models": {"retrain": "retrain"}, "attacks": ["inversion"], "seeds": [0], **kw}
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run_prompt_attacks(args.pop("models"), args.pop("attacks"), args.pop("seeds"), tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_measure_script_writes_its_table_and_resumes(setup, tmp_path, capsys):
    "experiments/measure_prompt_attacks.py at a tiny size: the records and the table, and a rerun does nothing again."
    spec = importlib.util.spec_from_file_location(
        "measure_prompt_attacks", Path(__file__).parents[1] / "experiments" / "measure_prompt_attacks.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    argv = ["--no-shipped", "--models", f"un={reference_path('digits-text', 'unscrubbed')}", "--seeds", "0",
            "--inversion-steps", "1", "--soft-steps", "1", "--n-samples", "3", "--n-heldout", "4", "--out", str(tmp_path)]
    assert mod.main(argv) == 0
    first = capsys.readouterr()
    assert first.out.count("seed 0: success") == 2 and "| un |" in first.out and "never unlearned" in first.out
    d = json.loads((tmp_path / "prompt_attacks.json").read_text())
    assert {a: d["attacks"][a]["rows"]["un"]["n"] for a in mod.ATTACKS} == {"inversion": 3, "softprompt": 3}
    assert (tmp_path / "prompt_attacks.md").read_text().startswith("### Prompt attacks on concept 8")
    assert mod.main(argv) == 0 and "seed 0: success" not in capsys.readouterr().out          # every run reused
    with pytest.raises(SystemExit):
        mod.main(["--models", "no-equals-sign", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="twice"):
        mod.parse_models(["retrain=somewhere"], True, [0])
    assert mod.parse_models(["m=a/s{seed}"], False, [0, 2]) == {"m": {0: Path("a/s0"), 2: Path("a/s2")}}
