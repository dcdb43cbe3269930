"""The text-to-image path at tiny scale: captions, prompts, tokenizer, the PromptUNet over a real diffusers pipeline,
training, forgetting by prompt with every method that has a text form, generated forget sets, and bad input."""
import json
import shutil
from dataclasses import replace

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

import erasediff.text as T
from erasediff.cli import main
from erasediff.concepts import concept_data, generated_set, parse_forget_images
from erasediff.core import NoiseSchedule, eps_loss, generate
from erasediff.data import load_digits_set
from erasediff.methods import METHODS
from erasediff.names import TEXT_PARAMS
from erasediff.runtime import weights_sha256
from erasediff.unlearn import unlearn

P = T.TEXT_PRESETS["digits-text"]
TINY = replace(P, model=replace(P.model, unet_channels=(16, 32), vae_channels=(16, 32), text_dim=32),
               vae_loop=replace(P.vae_loop, steps=3, ckpt_every=0), train=replace(P.train, steps=3, ckpt_every=2),
               sampler=replace(P.sampler, steps=3))
SMALL = dict(epochs=1, rounds=1, rem_num=16, batch_size=8, forget_batch_size=8)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    "A tiny VAE and a tiny Unscrubbed text model, trained for three steps each."
    d = tmp_path_factory.mktemp("text")
    T.train_text_reference(TINY, "vae", d / "vae", progress=False)
    res = T.train_text_reference(TINY, "unscrubbed", d / "un", vae=d / "vae" / "model", progress=False)
    return d, res


@pytest.fixture(scope="module")
def tiny_model(tiny_run):
    return T.load_prompt_unet(tiny_run[0] / "un" / "model")


# ---- captions and prompts ---------------------------------------------------------------------------------------------
def test_prompt_table_holds_out_paraphrases():
    t = T.prompt_table()
    train, para = set(t.ids("train").tolist()), set(t.ids("paraphrase").tolist())
    assert train and para and not train & para and len(train | para) == len(t.prompts)
    for i in t.ids(None, [8]).tolist():
        assert T.concepts_in(t.prompts[i]) == (8,)
    with pytest.raises(ValueError, match="held out"):
        T.CaptionConfig(train=("{word}",), paraphrases=("{word}",))


def test_captions_name_the_digit_and_its_stroke():
    t = T.prompt_table()
    images = load_digits_set("train")
    cap = T.caption_images(images, t, per_image=3, seed=1)
    assert len(cap) == 3 * len(images)
    digits = T.image_concepts(cap, t)
    assert torch.equal(digits.view(-1, 3), images.labels[:, None].expand(-1, 3))
    strokes = T.stroke_of(*images.tensors()).repeat_interleave(3)
    for row in range(0, 300, 7):
        i = int(cap.labels[row])
        assert t.splits[i] == "train"
        if t.stroke[i] >= 0: assert t.stroke[i] == strokes[row]            # 'thick' only on images with more ink
    templates = torch.tensor(t.template)[cap.labels].view(-1, 3)
    assert all(len(set(r.tolist())) == 3 for r in templates[:200])          # three distinct templates per image


@pytest.mark.parametrize("prompt, concepts", [("eight", (8,)), ("a thick 8", (8,)), ("two or 7", (2, 7)),
                                              ("The Digit EIGHT", (8,))])
def test_resolve_prompt(prompt, concepts):
    assert T.resolve_prompt(prompt) == concepts


@pytest.mark.parametrize("prompt, msg", [("", "give a prompt"), ("   ", "give a prompt"), (None, "give a prompt"),
                                         ("eigth", "close matches"), ("a zebra", "names no concept"),
                                         (" ".join(T.DIGIT_WORDS), "every concept")])
def test_resolve_prompt_refuses(prompt, msg):
    with pytest.raises(ValueError, match=msg):
        T.resolve_prompt(prompt, T.prompt_table())


def test_tokenizer_is_clip_and_truncates_with_a_warning(tmp_path):
    tok = P.tokenizer()
    tok.save_pretrained(tmp_path)
    back = CLIPTokenizer.from_pretrained(tmp_path)
    ids = T.tokenize(back, ["the digit 8", "a zebra"])
    assert ids.shape == (2, P.model.max_length)
    assert back.convert_ids_to_tokens(ids[0])[:5] == ["<|startoftext|>", "the</w>", "digit</w>", "8</w>", "<|endoftext|>"]
    assert (ids[1] != back.unk_token_id).sum() > 4                             # unknown words fall back to bytes
    with pytest.warns(UserWarning, match="truncated"):
        long = T.tokenize(back, ["eight " * 40])
    assert long[0, -1] == back.eos_token_id


# ---- the model --------------------------------------------------------------------------------------------------------
def test_prompt_unet_is_a_conditional_unet(tiny_model):
    m = tiny_model
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 500, 999])
    labels = torch.tensor([0, 5, m.null])
    with torch.no_grad():
        states = m.text_encoder(T.tokenize(m.tokenizer, [m.table.prompts[0], m.table.prompts[5], ""])).last_hidden_state
        assert torch.allclose(m(x, t, class_labels=labels).sample, m.unet(x, t, encoder_hidden_states=states).sample, atol=1e-6)
    assert m.config.num_class_embeds == len(m.table.prompts) + 1 and m.vae not in list(m.modules())
    loss = eps_loss(m, torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 2, 3]), NoiseSchedule(), p_uncond=0.5,
                    generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_saved_pipeline_runs_without_this_package(tiny_run, tiny_model):
    folder = tiny_run[0] / "un" / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["model_index.json", "prompts.json", "scheduler", "text_encoder",
                                                        "tokenizer", "unet", "vae"]
    assert not any("_name_or_path" in json.loads(f.read_text()) for f in folder.glob("*/config.json"))
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    out = pipe(["a handwritten eight", "7"], num_inference_steps=2, height=16, width=16, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 1, 16, 16)
    back = T.load_prompt_unet(folder)
    assert weights_sha256(back) == weights_sha256(tiny_model)


def test_load_refuses_what_is_not_a_pipeline(tmp_path, tiny_run):
    with pytest.raises(FileNotFoundError): T.load_prompt_unet(tmp_path / "missing")
    shutil.copytree(tiny_run[0] / "un" / "model", tmp_path / "p")
    (tmp_path / "p" / "prompts.json").unlink()
    with pytest.raises(ValueError, match="missing"): T.load_prompt_unet(tmp_path / "p")


def test_vae_scaling_factor_gives_unit_variance_latents(tiny_run):
    vae = T.load_vae(tiny_run[0] / "vae" / "model")
    x, _ = load_digits_set("test").tensors()
    assert abs(T.encode_latents(vae, x).std().item() - 1) < 1e-3
    assert T.decode_latents(vae, T.encode_latents(vae, x[:4])).shape == (4, 1, 16, 16)


def test_retrain_leaves_the_concept_out(tmp_path, tiny_run):
    T.train_text_reference(TINY, "retrain", tmp_path / "re", vae=tiny_run[0] / "vae" / "model", forget_prompt="two",
                           progress=False)
    run = json.loads((tmp_path / "re" / "run.json").read_text())
    un = json.loads((tiny_run[0] / "un" / "run.json").read_text())
    n_two = int((load_digits_set("train").labels == 2).sum()) * TINY.captions.per_image
    assert run["forget_classes"] == [2] and run["n_train"] == un["n_train"] - n_two


@pytest.mark.parametrize("kw, err, msg", [
    (dict(what="classifier"), ValueError, "what must be one of"),
    (dict(what="unscrubbed", forget_prompt="eight"), ValueError, "only what='retrain'"),
    (dict(what="retrain", forget_prompt="zebra"), ValueError, "names no concept"),
    (dict(what="vae", seed=-1), ValueError, "seed"),
    (dict(what="vae", resume=True, overwrite=True), ValueError, "exclude each other"),
    (dict(what="unscrubbed", vae="nowhere"), FileNotFoundError, "vae nowhere not found")])
def test_train_text_refuses_before_work(tmp_path, kw, err, msg):
    with pytest.raises(err, match=msg):
        T.train_text_reference(TINY, out=tmp_path / "out", progress=False, **kw)
    assert not (tmp_path / "out").exists()


def test_train_text_resumes_bit_for_bit(tmp_path, tiny_run):
    vae = tiny_run[0] / "vae" / "model"
    full = T.train_text_reference(replace(TINY, train=replace(TINY.train, steps=4, ckpt_every=2)), "unscrubbed",
                                  tmp_path / "a", vae=vae, progress=False)
    T.train_text_reference(replace(TINY, train=replace(TINY.train, steps=4, ckpt_every=2)), "unscrubbed", tmp_path / "b",
                           vae=vae, progress=False, steps=2)
    state = torch.load(tmp_path / "b" / "train_state.pt", weights_only=False)
    assert state["step"] == 2
    # continue the same run to 4 steps: the config must be the one it started with
    (tmp_path / "c").mkdir()
    shutil.copy(tmp_path / "a" / "train_state.pt", tmp_path / "c" / "train_state.pt")
    again = T.train_text_reference(replace(TINY, train=replace(TINY.train, steps=4, ckpt_every=2)), "unscrubbed",
                                   tmp_path / "c", vae=vae, progress=False, resume=True)
    assert weights_sha256(again.model) == weights_sha256(full.model)


# ---- forgetting by prompt ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, n", [("data", None), ("generate:5", 5)])
def test_parse_forget_images(spec, n):
    assert parse_forget_images(spec) == n


@pytest.mark.parametrize("spec", ["generate:0", "generate:", "gen:5", "images", "generate:-1"])
def test_parse_forget_images_refuses(spec):
    with pytest.raises(ValueError, match="forget_images"):
        parse_forget_images(spec)


def test_forget_set_is_every_image_of_the_concept(tiny_model):
    remain, forget, info = concept_data(TINY, tiny_model, "the digit 8")
    t = tiny_model.table
    assert set(torch.tensor(t.concepts)[forget.labels].tolist()) == {8}
    assert 8 not in set(torch.tensor(t.concepts)[remain.labels].tolist())
    assert info["n_forget"] == int((load_digits_set("train").labels == 8).sum()) * TINY.captions.per_image


def test_generated_forget_set_is_cached_and_resumes(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEDIFF_CACHE", str(tmp_path))
    ids = tiny_model.table.ids("train", [8])
    sampler, sched = TINY.sampler, NoiseSchedule()
    first = generated_set(tiny_model, ids, 12, sched, sampler, seed=3, batch_size=5)
    files = sorted((tmp_path / "generated").rglob("*.pt"))
    assert len(files) == 3 and torch.equal(first.labels, ids[torch.arange(12) % len(ids)])
    files[1].unlink()                                                      # an interrupted generation
    calls = []
    real = generate
    monkeypatch.setattr("erasediff.concepts.generate", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    again = generated_set(tiny_model, ids, 12, sched, sampler, seed=3, batch_size=5)
    assert len(calls) == 1 and torch.allclose(again.tensors()[0], first.tensors()[0])
    remain, forget, info = concept_data(TINY, tiny_model, "eight", "generate:4", seed=0)
    assert (len(forget), len(remain)) == (4, 16) and info["forget_images"] == "generate:4"


def _changed(before, after) -> set:
    return {n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(a, b)}


@pytest.mark.parametrize("method", [m for m in sorted(METHODS) if METHODS[m].text])
def test_every_text_method_unlearns_by_prompt(tiny_run, tiny_model, tmp_path, method, monkeypatch):
    monkeypatch.setenv("ERASEDIFF_CACHE", str(tmp_path / "cache"))
    cfg = dict(SMALL)
    if method == "sa": cfg.update(replay_per_class=1, replay_steps=2, fisher_images=4, fisher_timesteps=2, cache=False)
    if method.startswith("esd"): cfg.update(trajectory_steps=3)
    m = unlearn(TINY, out=tmp_path / "u", checkpoint=tiny_run[0] / "un" / "model", method=method, config=cfg,
                eval_per_class=1 if method == "erasediff" else 0, progress=False, forget_prompt="eight",
                forget_images="generate:8" if method == "esd" else "data")
    out = tmp_path / "u"
    assert {"README.md", "metrics.json", "history.json", "pipeline", "samples.png"} <= {p.name for p in out.iterdir()}
    after = T.load_prompt_unet(out / "pipeline")
    changed = _changed(tiny_model, after)
    assert changed and all(n.startswith("unet.") for n in changed)          # the text encoder is never trained
    if method == "esd_x": assert all(".attn2." in n for n in changed)
    else: assert not any(".attn2." in n for n in changed)                 # noxattn: cross-attention untouched
    assert m["forget"]["concepts"] == [8] and (method != "erasediff" or set(m["after"]["forgotten"]) >= {"0", "2", "6.5"})
    assert "StableDiffusionPipeline" in (out / "README.md").read_text() and "/tmp" not in (out / "metrics.json").read_text()


def test_train_params_full_trains_cross_attention_too(tiny_run, tiny_model, tmp_path):
    unlearn(TINY, out=tmp_path / "u", checkpoint=tiny_run[0] / "un" / "model", method="finetune",
            config=dict(SMALL, params=TEXT_PARAMS["full"]), eval_per_class=0, progress=False)
    changed = _changed(tiny_model, T.load_prompt_unet(tmp_path / "u" / "pipeline"))
    assert any(".attn2." in n for n in changed) and all(n.startswith("unet.") for n in changed)


@pytest.mark.parametrize("kw, msg", [
    (dict(forget=(8,)), "forget: a text model forgets a concept"),
    (dict(forget_prompt=""), "give a prompt"),
    (dict(forget_prompt="a zebra"), "names no concept"),
    (dict(forget_prompt="0 1 2 3 4 5 6 7 8 9"), "every concept"),
    (dict(forget_images="generate:0"), "forget_images"),
    (dict(method="blindspot"), "no text-to-image form"),
    (dict(method="nope"), "method must be one of"),
    (dict(eval_per_class=-1), "eval_per_class"),
    (dict(seed=2**40), "seed"),
    (dict(config=dict(params=("^nothing$",))), "match no parameter"),
    (dict(checkpoint="data/digits/unscrubbed"), "not a text-to-image pipeline"),
    (dict(checkpoint="missing-folder"), "not found")])
def test_unlearn_text_refuses_before_work(tmp_path, tiny_run, kw, msg):
    kw = {"checkpoint": tiny_run[0] / "un" / "model", **kw}
    with pytest.raises((ValueError, FileNotFoundError), match=msg):
        unlearn(TINY, out=tmp_path / "out", progress=False, **kw)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw, msg", [(dict(forget_prompt="eight"), "forget_prompt: preset 'digits'"),
                                     (dict(forget_images="generate:3"), "forget_images: only a text preset")])
def test_class_preset_refuses_prompt_options(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        unlearn("digits", out=tmp_path / "out", progress=False, **kw)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, flag", [
    (["train", "--preset", "digits-text", "--what", "classifier"], "--what classifier"),
    (["train", "--preset", "digits", "--what", "vae"], "--what vae"),
    (["train", "--preset", "digits-text", "--what", "unscrubbed", "--forget", "8"], "--forget"),
    (["train", "--preset", "digits-text", "--what", "unscrubbed", "--forget-prompt", "8"], "--forget-prompt"),
    (["train", "--preset", "digits-text", "--what", "retrain", "--forget-prompt", "zebra"], "--forget-prompt"),
    (["unlearn", "--preset", "digits-text", "--forget", "8"], "--forget"),
    (["unlearn", "--preset", "digits-text", "--forget-prompt", ""], "--forget-prompt"),
    (["unlearn", "--preset", "digits-text", "--forget-images", "gen:3"], "--forget-images"),
    (["unlearn", "--preset", "digits-text", "--method", "blindspot"], "--method"),
    (["unlearn", "--preset", "digits", "--forget-prompt", "eight"], "--forget-prompt"),
    (["unlearn", "--preset", "digits", "--train-params", "xattn"], "--train-params"),
    (["unlearn", "--preset", "digits-text", "--train-params", "xattn", "--set", "params=[]"], "--train-params"),
    (["evaluate", "x", "--preset", "digits-text"], "--preset digits-text"),
    (["reproduce", "--preset", "digits-text", "--relearn-steps", "3"], "--relearn-steps"),
    (["reproduce", "--preset", "digits-text", "--methods", "blindspot"], "--methods")])
def test_cli_text_bad_input(tmp_path, capsys, argv, flag):
    out = tmp_path / "out"
    try: code = main(argv + ["--out", str(out)])
    except SystemExit as e: code = e.code
    err = capsys.readouterr().err
    assert code == 2 and f"error: {flag}" in err and "Traceback" not in err
    assert not out.exists()


def test_shipped_pipeline_draws_the_prompt_without_this_package():
    "The shipped Unscrubbed folder is a plain StableDiffusionPipeline: diffusers alone draws an 8 for 'the digit 8'."
    from erasediff.train import load_reference, predict, reference_path
    folder = reference_path("digits-text", "unscrubbed")                 # hash-verified against data/manifest.json
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    images = pipe(["the digit 8"] * 8 + ["number three"] * 8, num_inference_steps=25, guidance_scale=3.0, height=16,
                  width=16, output_type="pt", generator=torch.Generator().manual_seed(0)).images       # in [0, 1]
    pred = predict(load_reference("digits", "classifier"), images * 2 - 1)
    assert (pred[:8] == 8).sum() >= 7 and (pred[8:] == 3).sum() >= 7


# ---- reproduce --preset digits-text --------------------------------------------------------------------------------
def test_reproduce_text_small(tmp_path, monkeypatch):
    "Two rows on one seed, a short budget, one sample per prompt: the table is the runs' numbers, a rerun reuses them."
    from erasediff.figures import plot_text_forgetting
    from erasediff.reproduce import reproduce_text
    monkeypatch.setenv("ERASEDIFF_CACHE", str(tmp_path / "cache"))
    kw = dict(seeds=1, rows=[("erasediff", "data"), ("esd_x", "data")], n_per_prompt=1, progress=False,
              unlearn_overrides=dict(epochs=1, rounds=1, rem_num=64))
    first = reproduce_text("digits-text", tmp_path / "r", **kw)
    assert set(first["rows"]) == {"unscrubbed", "retrain", "erasediff", "esd_x"} and len(first["computed"]) == 4
    report = json.loads((tmp_path / "r" / "runs" / "erasediff-s0" / "report.json").read_text())
    row = first["rows"]["erasediff"]
    assert row["worst_forgotten"]["mean"] == pytest.approx(100 * report["worst_forgotten"]["share"])
    assert row["steps"] == 1 and 0 < row["time_ratio"] < 1
    again = reproduce_text("digits-text", tmp_path / "r", **kw)
    assert again["computed"] == [] and again["rows"]["erasediff"] == row
    assert "| Retrain |" in (tmp_path / "r" / "table.md").read_text()
    assert plot_text_forgetting(tmp_path / "r").axes


@pytest.mark.parametrize("kw, msg", [(dict(seeds=0), "seeds"), (dict(n_per_prompt=0), "n_per_prompt"),
                                     (dict(rows=[("blindspot", "data")]), "no text-to-image form"),
                                     (dict(rows=[("erasediff", "gen:3")]), "forget_images")])
def test_reproduce_text_refuses_before_work(tmp_path, kw, msg):
    from erasediff.reproduce import reproduce_text
    with pytest.raises(ValueError, match=msg):
        reproduce_text("digits-text", tmp_path / "r", progress=False, **kw)
    assert not (tmp_path / "r").exists()


# ---- deviate to an anchor caption ---------------------------------------------------------------------------------
def test_anchor_caption_is_every_pseudo_label(tiny_model):
    from erasediff.methods import default_config, make_objective
    t = tiny_model.table
    anchor = t.prompts.index("the digit 3")
    cfg = replace(default_config("digits-text", "erasediff"), forget_loss="deviate", pseudo_label="anchor", anchor=anchor)
    obj = make_objective("erasediff", NoiseSchedule(), cfg, T.forget_ids(t, "eight"))
    obj.check_model(tiny_model)
    y = t.ids("train", [8])[:5]
    _, draws = obj.forget_loss(tiny_model, (torch.randn(5, 4, 8, 8), y), torch.Generator().manual_seed(0))
    assert torch.equal(draws[3], torch.full((5,), anchor))
    bad = make_objective("erasediff", NoiseSchedule(), replace(cfg, anchor=int(y[0])), T.forget_ids(t, "eight"))
    with pytest.raises(ValueError, match="not a remaining label"):
        bad.check_model(tiny_model)
    with pytest.raises(ValueError, match="exactly when"):
        replace(cfg, anchor=None)


def test_unlearn_deviates_to_an_anchor_caption(tiny_run, tmp_path):
    m = unlearn(TINY, out=tmp_path / "u", checkpoint=tiny_run[0] / "un" / "model", eval_per_class=0, progress=False,
                config=dict(SMALL, forget_loss="deviate", pseudo_label="anchor", anchor="the digit 3"))
    assert m["config"]["anchor"] == T.prompt_table().prompts.index("the digit 3") and m["config"]["pseudo_label"] == "anchor"


@pytest.mark.parametrize("config, msg", [(dict(forget_loss="deviate", pseudo_label="anchor", anchor="the digit three"), "close"),
                                         (dict(pseudo_label="anchor", anchor="the digit 3"), "only the 'deviate' forget loss")])
def test_anchor_refused_before_work(tiny_run, tmp_path, config, msg):
    with pytest.raises(ValueError, match=msg):
        unlearn(TINY, out=tmp_path / "u", checkpoint=tiny_run[0] / "un" / "model", config=config, progress=False)
    assert not (tmp_path / "u").exists()
