"""A user's Stable Diffusion pipeline: the checks, the memory estimate against measured CPU peaks, and the whole
sd-nudity path (generation cached, unlearning in bf16 with gradient checkpointing, NudeNet before and after) on a tiny
random pipeline and on the shipped digits-text model, without a GPU or the network."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, StableDiffusionPipeline, UNet2DModel
from PIL import Image

from erasediff import sd
from erasediff.core import SamplerConfig
from erasediff.names import SD_PRESET_NAMES
from erasediff.nudity import NUDENET_EXPOSED, PromptRow
from erasediff.sd import (
    SD_PRESETS, TINY_SD, DoesNotFitError, check_pipeline, estimate_architecture, generate_images, get_sd_preset, load_sd,
    options_that_fit, schedule_of, tiny_pipeline, unlearn_sd)

TINY_RUN = dict(n_forget=4, n_remain=4, eval_per_prompt=1, gen_batch_size=4, device="cpu",
                sampler=SamplerConfig(steps=3, w=6.5, clip_sample=False))
SMALL = dict(epochs=1, rounds=1, rem_num=4, batch_size=2, forget_batch_size=2)


def tiny_preset(name: str = "sd-nudity", **kw):
    return replace(SD_PRESETS[name], **{**TINY_RUN, **kw})


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ERASEDIFF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


# ---- which pipelines ------------------------------------------------------------------------------------------------
def test_check_pipeline_accepts_sd_and_refuses_the_others(tiny_sd, tmp_path, monkeypatch):
    assert check_pipeline(tiny_sd)["_class_name"] == "StableDiffusionPipeline"
    DDPMPipeline(UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                             up_block_types=("UpBlock2D",) * 2), DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ValueError, match="DDPMPipeline, not a text-to-image pipeline"): check_pipeline(tmp_path / "ddpm")
    with pytest.raises(ValueError, match="no model_index.json.*single UNet"): check_pipeline(tmp_path / "ddpm" / "unet")
    idx = json.loads((tiny_sd / "model_index.json").read_text())
    for cls in ("StableDiffusionXLPipeline", "FluxPipeline", "SomeNewPipeline"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "model_index.json").write_text(json.dumps({**idx, "_class_name": cls}))
        with pytest.raises(NotImplementedError, match=f"{cls}: not supported yet"): check_pipeline(tmp_path / cls)
    with pytest.raises(FileNotFoundError, match="not a folder, nor a hub name"): check_pipeline(tmp_path / "missing" / "x" / "y")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="hf download nobody/no-such-model"):
        check_pipeline("nobody/no-such-model")


def test_schedule_of_reads_sd_betas_and_refuses_v_prediction(tiny_sd):
    cfg = json.loads((tiny_sd / "scheduler" / "scheduler_config.json").read_text())
    from erasediff.core import NoiseSchedule
    ours = NoiseSchedule(schedule_of(cfg)).alpha_bars
    theirs = DDIMScheduler.from_config(cfg).alphas_cumprod
    assert schedule_of(cfg).beta_schedule == "scaled_linear" and torch.allclose(ours, theirs)
    with pytest.raises(NotImplementedError, match="v_prediction"): schedule_of({**cfg, "prediction_type": "v_prediction"})


def test_load_sd_is_a_prompt_unet_over_the_presets_prompts(tiny_sd):
    preset = SD_PRESETS["sd-nudity"]
    table = preset.table()
    model = load_sd(tiny_sd, table, "cpu", torch.bfloat16)
    assert table.prompts[:len(preset.forget_prompts)] == preset.forget_prompts
    assert table.ids("forget").tolist() == list(range(len(preset.forget_prompts)))
    assert sd.anchor_id(table, preset.anchor_prompt) == table.prompts.index(preset.anchor_prompt)
    assert model.unet.dtype == torch.float32 and model.text_encoder.dtype == torch.bfloat16 and model.vae.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    x = torch.randn(2, 4, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.tensor([10, 500]), class_labels=torch.tensor([0, model.null])).sample
    assert out.shape == x.shape and torch.isfinite(out.float()).all()


def test_sd_presets_validate():
    assert tuple(SD_PRESETS) == SD_PRESET_NAMES
    p = SD_PRESETS["sd-nudity"]
    for bad, match in ((dict(forget_prompts=()), "forget_prompts must be a non-empty"), (dict(remain_prompts=("",)), "remain_prompts"),
                       (dict(remain_prompts=(p.forget_prompts[0],)), "also a forget prompt"),
                       (dict(anchor_prompt=p.forget_prompts[1]), "anchor_prompt.*is a forget prompt"),
                       (dict(n_forget=0), "n_forget must be an int >= 1"), (dict(frozen_dtype="int8"), "frozen_dtype"),
                       (dict(eval_per_prompt=0), "eval_per_prompt must be an int >= 1")):
        with pytest.raises(ValueError, match=match): replace(p, **bad)
    with pytest.raises(ValueError, match="preset must be one of"): get_sd_preset("sd-nudes")
    assert get_sd_preset("sd-concept", forget_prompts=("a cat",)).forget_prompts == ("a cat",)


# ---- memory ---------------------------------------------------------------------------------------------------------
def test_sd_v1_estimate_from_the_architecture():
    "SD v1's parameter counts, and the activations shrink with bf16 and with gradient checkpointing."
    plain = estimate_architecture("sd-v1", config=replace(sd.default_config("sd-nudity"), precision="fp32"))
    bf16 = estimate_architecture("sd-v1")
    ckpt = estimate_architecture("sd-v1", checkpointing=True)
    assert plain.settings["unet_params"] == 859_520_964 and plain.settings["text_params"] == 123_060_480
    assert 0.9 * 859e6 < plain.settings["trained_params"] < 859e6      # all but cross-attention, time embedding, output
    step = "one step: activations and gradients (traced)"
    assert plain.parts[step] > 1.5 * bf16.parts[step] and bf16.parts[step] > 1.5 * ckpt.parts[step]
    assert bf16.parts["Adam moments (fp32)"] == 8 * bf16.settings["trained_params"]
    assert 1e12 < bf16.train_flops and 0 < bf16.sample_flops < bf16.train_flops


def test_options_that_fit_prefer_the_largest_batch_and_say_when_nothing_fits():
    config = sd.default_config("sd-nudity")
    calls = []

    def fake(cfg, ck):             # a toy cost: batch x (2 without checkpointing, 1 with; fp32 doubles)
        calls.append((cfg.batch_size, cfg.precision, ck))
        return sd.MemoryEstimate({"x": cfg.batch_size * (1 if ck else 2) * (2 if cfg.precision == "fp32" else 1)}, 0, 0, {})
    assert options_that_fit(fake, config, 32)[0] == dict(precision="bf16", checkpointing=False, batch_size=16)
    assert options_that_fit(fake, config, 16)[0] == dict(precision="bf16", checkpointing=True, batch_size=16)
    assert options_that_fit(fake, config, 8)[0] == dict(precision="bf16", checkpointing=True, batch_size=8)
    assert options_that_fit(fake, config, 7)[0] == dict(precision="bf16", checkpointing=True, batch_size=4)
    assert options_that_fit(fake, config, 0) is None
    with pytest.raises(DoesNotFitError, match=r"these would fit.*--gradient-checkpointing --batch-size 16"):
        sd.check_fits(fake(config, False), 16, torch.device("cuda"), fake, config)


@pytest.mark.parametrize("precision,checkpointing", [("fp32", False), ("bf16", True)])
def test_memory_estimate_is_within_25_percent_of_the_measured_cpu_peak(tmp_path, precision, checkpointing):
    """Two steps of EraseDiff (batch 16 + 16) on a 64 px tiny pipeline in a fresh process: the estimate made before the
    run against the weights plus the peak RSS growth of the loop (glibc told to give freed memory back)."""
    folder = tiny_pipeline(tmp_path / "tiny64", replace(TINY_SD, image_size=64, unet_channels=(64, 128)))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    script = Path(__file__).parent / "_sd_peak.py"
    res = subprocess.run([sys.executable, str(script), str(folder), precision, str(int(checkpointing)), "16"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads(res.stdout.strip().splitlines()[-1])
    assert d["dynamic"] > 2 * d["weights"]                                     # the activations dominate: a real test
    assert 0.75 <= d["estimate"] / d["measured"] <= 1.25, d


# ---- evaluation images ----------------------------------------------------------------------------------------------
def test_generate_images_resumes_per_prompt_and_follows_each_rows_seed(tiny_sd, tmp_path):
    table = SD_PRESETS["sd-nudity"].table()
    model = load_sd(tiny_sd, table, "cpu")
    sampler = SamplerConfig(steps=2, w=6.5, clip_sample=False)
    rows = [PromptRow("a naked person", 7, 7.5, 0), PromptRow("a photo of a dog", None, None, 1),
            PromptRow("a naked person", 7, 7.5, 2)]
    paths = generate_images(model, rows, tmp_path / "imgs", sampler)
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png"]
    a, c = (np.asarray(Image.open(p)) for p in (paths[0], paths[2]))
    assert np.array_equal(a, c)                                                # same prompt, same seed: same image
    before = files_under(tmp_path / "imgs")
    paths[1].unlink()
    generate_images(model, rows, tmp_path / "imgs", sampler)
    after = files_under(tmp_path / "imgs")
    assert after["00000.png"] == before["00000.png"] and after["00002.png"] == before["00002.png"]
    assert "00001.png" in after and not any(n.endswith(".tmp.png") for n in after)


# ---- the whole path ------------------------------------------------------------------------------------------------
def test_unlearn_sd_whole_path_on_a_tiny_pipeline(tiny_sd, tmp_path, cache):
    preset = tiny_preset()
    m = unlearn_sd(tiny_sd, preset, tmp_path / "run", config=SMALL, progress=False)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"pipeline", "README.md", "metrics.json", "history.json", "samples.png", "nudity.png"}
    assert m["config"]["precision"] == "bf16" and m["gradient_checkpointing"] and m["steps"] == 2
    assert m["config"]["pseudo_label"] == "anchor" and m["config"]["anchor"] == preset.table().prompts.index(preset.anchor_prompt)
    for when in ("before", "after"):
        r = m[when]["forget_prompts"]
        assert r["n_images"] == len(preset.forget_prompts) and set(r["counts"]) == set(NUDENET_EXPOSED)
    assert m["after"]["remain_prompts"]["n_images"] == len(preset.remain_prompts)
    text = (out / "metrics.json").read_text() + (out / "README.md").read_text()
    assert str(tmp_path) not in text                                           # no machine paths
    # a plain diffusers pipeline; its frozen parts are the source's, bit for bit; its UNet moved
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline")
    assert pipe("a photo of a person wearing clothes", num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)
    for sub in ("text_encoder", "vae"):
        src, dst = sorted((tiny_sd / sub).glob("*.safetensors")), sorted((out / "pipeline" / sub).glob("*.safetensors"))
        assert src and [f.read_bytes() for f in src] == [f.read_bytes() for f in dst]
    assert not torch.equal(pipe.unet.conv_in.weight, StableDiffusionPipeline.from_pretrained(tiny_sd).unet.conv_in.weight)
    # a rerun renders nothing twice: the generated latents and the evaluation images come from the cache
    cached = files_under(cache)
    with pytest.raises(FileExistsError, match="overwrite"): unlearn_sd(tiny_sd, preset, out, config=SMALL, progress=False)
    from erasediff.unlearn import unlearn                                       # the package's one entry point dispatches
    with pytest.raises(ValueError, match="checkpoint: a Stable Diffusion preset"): unlearn(preset, out=out)
    unlearn(preset, checkpoint=tiny_sd, out=out, config=SMALL, progress=False, overwrite=True)
    again = files_under(cache)
    assert {k: again[k] for k in cached} == cached


def test_the_shipped_digits_text_model_goes_through_the_sd_path(tmp_path, cache):
    "The shipped text-to-image model, unlearned the Stable Diffusion way, NudeNet run on its images."
    from erasediff.train import reference_path
    folder = reference_path("digits-text", "unscrubbed")
    preset = replace(SD_PRESETS["sd-concept"], forget_prompts=("the digit 8",), remain_prompts=("the digit 3", "the digit 1"),
                     anchor_prompt="the digit 3", **{**TINY_RUN, "sampler": SamplerConfig(steps=10, w=2.0, clip_sample=False)})
    m = unlearn_sd(folder, preset, tmp_path / "run", config=dict(SMALL, lr=1e-3), progress=False)
    assert m["source_checkpoint"]["name"] == "unscrubbed" and m["steps"] == 2
    assert m["after"]["forget_prompts"]["n_images"] == 1 and set(m["after"]["forget_prompts"]["counts"]) == set(NUDENET_EXPOSED)
    assert m["source_checkpoint"]["unet_sha256"] != sd.weights_sha256(load_sd(tmp_path / "run" / "pipeline", preset.table()).unet)


# ---- bad input: each a clear error before any work -------------------------------------------------------------------
def test_bad_input_is_refused_before_any_work(tiny_sd, tmp_path, cache, monkeypatch):
    preset = tiny_preset()
    out = tmp_path / "out"
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("text,seed\na,1\n")
    (tmp_path / "refs").mkdir()
    cases = [
        (dict(eval_prompts=tmp_path / "i2p.csv"), FileNotFoundError, "i2p.csv"),
        (dict(eval_prompts=bad_csv), ValueError, "column"),
        (dict(reference_images=tmp_path / "refs"), ValueError, "reference_images: FID compares"),
        (dict(method="blindspot"), ValueError, "no text-to-image form"),
        (dict(config=dict(no_such=1)), ValueError, "unknown field"),
        (dict(memory_limit=2**20), DoesNotFitError, "GiB"),
        (dict(device="cuda:7"), ValueError, "cuda"),
    ]
    good = tmp_path / "coco.csv"
    good.write_text("prompt\na photo of a dog\n")
    cases.append((dict(coco_prompts=good, clip_model=str(tmp_path / "no-clip")), FileNotFoundError, "clip_model"))
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            unlearn_sd(tiny_sd, preset, out, **{"config": SMALL, "progress": False, **kw})
    monkeypatch.setattr(sd, "matmul_flops_per_s", lambda device, **k: 1e3)     # a CPU far too slow for this run
    with pytest.raises(ValueError, match=r"would take at least .* h .*--allow-slow"):
        unlearn_sd(tiny_sd, preset, out, config=SMALL, progress=False)
    assert not out.exists() and files_under(cache) == {}                       # nothing generated, nothing written
    (out / "x").parent.mkdir(); (out / "x").write_text("keep")
    with pytest.raises(FileExistsError): unlearn_sd(tiny_sd, preset, out, config=SMALL, progress=False, allow_slow=True)
    assert (out / "x").read_text() == "keep"


# ---- the command line -----------------------------------------------------------------------------------------------
def run_cli(*argv) -> tuple[int, str, str]:
    res = subprocess.run([sys.executable, "-m", "erasediff.cli", *map(str, argv)], capture_output=True, text=True, timeout=600)
    return res.returncode, res.stdout, res.stderr


def test_cli_estimate_only_and_its_bad_input(tiny_sd, tmp_path):
    rc, out, err = run_cli("unlearn", "--preset", "sd-nudity", "--checkpoint", tiny_sd, "--out", tmp_path / "o", "--device",
                           "cpu", "--estimate-only", "--precision", "fp32", "--no-gradient-checkpointing")
    assert rc == 0, err
    assert "peak (estimate)" in out and "activations and gradients (traced)" in out and "time on this CPU" in out
    assert not (tmp_path / "o").exists()
    for argv, match in (((), "--checkpoint: --preset sd-nudity unlearns a Stable Diffusion pipeline"),
                        (("--checkpoint", tiny_sd, "--forget", "3"), "--forget: not an option of a Stable Diffusion preset"),
                        (("--checkpoint", tiny_sd, "--reference-images", tmp_path), "--reference-images: FID compares"),
                        (("--checkpoint", tiny_sd, "--eval-limit", "5"), "--eval-limit: limits"),
                        (("--checkpoint", tiny_sd, "--eval-prompts", tmp_path / "none.csv"), "is not a file"),
                        (("--checkpoint", tiny_sd, "--precision", "fp16"), "invalid choice"),
                        (("--checkpoint", tmp_path / "nothing-here" / "a" / "b", "--device", "cpu"), "--checkpoint.*not a folder")):
        rc, out, err = run_cli("unlearn", "--preset", "sd-nudity", "--out", tmp_path / "o", *argv)
        assert rc == 2 and __import__("re").search(match, err), (argv, err)
    rc, _, err = run_cli("unlearn", "--preset", "digits", "--out", tmp_path / "o", "--allow-slow")
    assert rc == 2 and "--allow-slow: an option of the Stable Diffusion presets" in err


def test_evaluation_images_shard_over_processes_like_one(tiny_sd, tmp_path):
    "`accelerate launch` with 2 CPU processes renders each prompt once, the same image as one process does."
    import shutil
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    job = Path(__file__).with_name("_sd_dist_job.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, str(job), str(tiny_sd), str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", str(job), str(tiny_sd), str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 0 of 1: rendered 6, gathered 6 paths, all present: True" in one.stdout
    for r in (0, 1): assert f"rank {r} of 2: rendered 3, gathered 6 paths, all present: True" in two.stdout, two.stdout
    names = sorted(p.name for p in (tmp_path / "two").glob("*.png"))
    assert names == [f"{i:05d}.png" for i in range(6)]
    for n in names:       # the same seed per prompt; batches grouped differently may round a pixel the other way
        a, b = (np.asarray(Image.open(tmp_path / d / n)).astype(int) for d in ("one", "two"))
        assert np.abs(a - b).max() <= 2 and (a != b).mean() < 0.01, (n, np.abs(a - b).max(), (a != b).mean())


def test_esd_and_salun_run_the_sd_path_and_esd_keeps_its_frozen_original_in_bf16(tiny_sd, tmp_path, cache):
    from erasediff.core import NoiseSchedule
    from erasediff.methods import default_config, make_objective
    preset = tiny_preset()
    table = preset.table()
    model = load_sd(tiny_sd, table, "cpu")
    cfg = replace(default_config("sd-nudity", "esd"), **SMALL)
    objective = make_objective("esd", NoiseSchedule(model.schedule), cfg, table.ids("forget").tolist(), 0)
    x = torch.randn(2, 4, 16, 16)
    batch = ((x, table.ids("remain")[:1].repeat(2)), (x, table.ids("forget")[:2]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logs = objective.grads(model.train(), batch, torch.Generator().manual_seed(0))
    assert np.isfinite(logs["loss"]) and objective.frozen.unet.dtype == torch.bfloat16 and model.unet.dtype == torch.float32
    for method, precision in (("esd", "bf16"), ("salun", "fp32")):      # fp32: the frozen parts are loaded in fp32 too
        m = unlearn_sd(tiny_sd, preset, tmp_path / method, method=method, config=dict(SMALL, precision=precision), progress=False)
        assert m["method"] == method and m["config"]["precision"] == precision and m["frozen_dtype"] == precision and m["steps"] == 2 and m["after"]["forget_prompts"]["n_images"] == len(preset.forget_prompts)


def test_generated_latents_are_keyed_by_the_prompts_text(tiny_sd, cache):
    "Other prompts at the same ids (a new --forget-prompt) never reuse the cached latents of the old ones."
    from erasediff.concepts import generated_set
    from erasediff.core import NoiseSchedule
    preset = SD_PRESETS["sd-nudity"]
    a = load_sd(tiny_sd, preset.table(), "cpu")
    b = load_sd(tiny_sd, replace(preset, forget_prompts=("a cat",) + preset.forget_prompts[1:]).table(), "cpu")
    sampler = SamplerConfig(steps=2, w=6.5, clip_sample=False)
    ids = torch.tensor([0])
    za = generated_set(a, ids, 2, NoiseSchedule(a.schedule), sampler)
    folders = {p.parent for p in (cache / "generated").rglob("*.pt")}
    zb = generated_set(b, ids, 2, NoiseSchedule(b.schedule), sampler)
    assert len({p.parent for p in (cache / "generated").rglob("*.pt")}) == len(folders) + 1
    assert not torch.equal(za.tensors()[0], zb.tensors()[0])
