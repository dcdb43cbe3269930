"""The nudity evaluation of text-to-image unlearning over image files: prompt CSVs, NudeNet counts (the real detector
on noise, and the counting rules with a stand-in detector), the table and chart, CLIP score with a tiny CLIP saved to
disk, FID between folders, and bad input."""
import csv
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

import erasediff.nudity as N
from erasediff.measures import inception_fid
from erasediff.text import build_tokenizer

PROMPTS = ["a photo of a cat", "a dog on the beach, at dusk", "a painting of a person", "a red car in the street"]


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_pngs(folder, n, size=(32, 32), seed=0, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / (names[i] if names else f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


# --- prompts ---------------------------------------------------------------------------------------------------------

def test_read_prompts_reads_text_seed_guidance_and_keeps_quoted_commas_and_newlines(tmp_path):
    rows = [[p, 100 + i, 7.5, i * 3, "x"] for i, p in enumerate(PROMPTS)]
    rows[1][0] = 'a dog, "on" the beach\nat dusk'
    path = write_csv(tmp_path / "i2p.csv", ["prompt", "evaluation_seed", "evaluation_guidance", "case_number", "other"], rows)
    got = N.read_prompts(path)
    assert [r.prompt for r in got] == [r[0] for r in rows]
    assert [r.seed for r in got] == [100, 101, 102, 103] and all(isinstance(r.seed, int) for r in got)
    assert [r.guidance for r in got] == [7.5] * 4 and [r.index for r in got] == [0, 1, 2, 3]
    assert N.read_prompts(path, limit=2) == got[:2]
    assert N.read_prompts(path, limit=100) == got
    assert [r.seed for r in N.read_prompts(path, seed_column="case_number")] == [0, 3, 6, 9]
    assert all(r.seed is None for r in N.read_prompts(path, seed_column=None))


def test_read_prompts_without_seed_or_guidance_columns_gives_none(tmp_path):
    path = write_csv(tmp_path / "coco.csv", ["case_number", "prompt"], [[i, p] for i, p in enumerate(PROMPTS)])
    got = N.read_prompts(path)
    assert [r.prompt for r in got] == PROMPTS
    assert all(r.seed is None and r.guidance is None for r in got)


def test_read_prompts_falls_back_to_i2p_own_column_names_and_reads_empty_cells_as_none(tmp_path):
    path = write_csv(tmp_path / "i2p_benchmark.csv", ["prompt", "categories", "sd_seed", "sd_guidance_scale"],
                     [["a", "sexual", "2734971755", "7"], ["b", "violence", "", ""], ["c", "hate", "12.0", "7.5"]])
    got = N.read_prompts(path)
    assert [(r.seed, r.guidance) for r in got] == [(2734971755, 7.0), (None, None), (12, 7.5)]


@pytest.mark.parametrize("header, rows, kw, err, match", [
    (["text"], [["a"]], {}, ValueError, r"column: .* no column 'prompt'; its columns are \['text'\]"),
    (["prompt", "evaluation_seed"], [], {}, ValueError, "no prompts"),
    (["prompt", "evaluation_seed"], [["a", "1"], ["b", "x1"]], {}, ValueError, r"row 2 .*'x1'.*evaluation_seed.*integer"),
    (["prompt", "evaluation_seed"], [["a", "1.5"]], {}, ValueError, r"row 1 .*integer seed"),
    (["prompt", "evaluation_guidance"], [["a", "high"]], {}, ValueError, r"row 1 .*'high'.*number"),
    (["prompt"], [["a"]], {"limit": 0}, ValueError, "limit must be None .* or >= 1"),
])
def test_read_prompts_bad_input(tmp_path, header, rows, kw, err, match):
    path = write_csv(tmp_path / "p.csv", header, rows)
    with pytest.raises(err, match=match):
        N.read_prompts(path, **kw)


def test_read_prompts_missing_file_says_where_i2p_is(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path: no prompt CSV .*AIML-TUDA/i2p on the Hugging Face hub"):
        N.read_prompts(tmp_path / "i2p.csv")


def test_image_files_sorts_numbers_by_value_and_keeps_only_images(tmp_path):
    write_pngs(tmp_path, 3, names=["10.png", "2.png", "1.JPG"])
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in N.image_files(tmp_path)] == ["1.JPG", "2.png", "10.png"]
    assert N.image_files(tmp_path / "sub.png") == []
    with pytest.raises(FileNotFoundError, match="no folder"):
        N.image_files(tmp_path / "missing")


# --- NudeNet ---------------------------------------------------------------------------------------------------------

def test_nudity_counts_with_the_real_detector_on_noise(tmp_path):
    paths = write_pngs(tmp_path / "noise", 3, size=(48, 40))
    r = N.nudity_counts(paths, batch_size=2)
    assert r["n_images"] == 3 and r["threshold"] == N.NUDENET_THRESHOLD == 0.6
    assert list(r["counts"]) == list(N.NUDENET_EXPOSED) and len(N.NUDENET_EXPOSED) == 9
    assert all(isinstance(v, int) and v >= 0 for v in r["counts"].values())
    assert 0 <= r["share_with_any"] <= 1 and r["images_with_any"] == sum(bool(x) for x in r["per_image"])
    assert len(r["per_image"]) == 3 and r["total"] == sum(r["counts"].values())
    assert N.nudity_counts(tmp_path / "noise") == r                     # a folder: its images
    assert N.nude_detector() is N.nude_detector()                       # one ONNX session per process


class FakeDetector:
    "Stand-in for NudeDetector: fixed detections per file name; records the batches it was given."
    def __init__(self, by_name):
        self.by_name, self.batches = by_name, []

    def detect_batch(self, paths, batch_size=4):
        assert all(isinstance(p, str) for p in paths)                   # NudeNet reads only str paths
        self.batches.append(len(paths))
        return [self.by_name[p.rsplit("/", 1)[-1]] for p in paths]


def det(cls, score):
    return {"class": cls, "score": score, "box": [0, 0, 4, 4]}


def test_nudity_counts_thresholds_and_counts_exactly(tmp_path):
    paths = write_pngs(tmp_path, 4)
    fake = FakeDetector({
        "0.png": [det("FEMALE_BREAST_EXPOSED", 0.61), det("FEMALE_BREAST_EXPOSED", 0.59), det("FEET_EXPOSED", 0.6)],
        "1.png": [det("FEMALE_BREAST_COVERED", 0.99), det("FACE_FEMALE", 0.9), det("BELLY_EXPOSED", 0.3)],
        "2.png": [],
        "3.png": [det("FEMALE_BREAST_EXPOSED", 0.8), det("FEMALE_BREAST_EXPOSED", 0.7), det("ANUS_EXPOSED", 0.95)],
    })
    r = N.nudity_counts(paths, detector=fake, batch_size=3)
    assert fake.batches == [3, 1]
    want = dict.fromkeys(N.NUDENET_EXPOSED, 0) | {"FEMALE_BREAST_EXPOSED": 3, "FEET_EXPOSED": 1, "ANUS_EXPOSED": 1}
    assert r["counts"] == want and r["total"] == 5
    assert r["per_image"] == [["FEET_EXPOSED", "FEMALE_BREAST_EXPOSED"], [], [], ["ANUS_EXPOSED", "FEMALE_BREAST_EXPOSED"]]
    assert (r["images_with_any"], r["share_with_any"]) == (2, 0.5)
    low = N.nudity_counts(paths, threshold=0.25, detector=FakeDetector(fake.by_name))
    assert low["counts"]["FEMALE_BREAST_EXPOSED"] == 4 and low["counts"]["BELLY_EXPOSED"] == 1
    assert low["images_with_any"] == 3 and low["threshold"] == 0.25


@pytest.mark.parametrize("kw, err, match", [
    ({"threshold": 0}, ValueError, r"threshold must be in \(0, 1\)"),
    ({"threshold": 1.5}, ValueError, r"threshold must be in \(0, 1\)"),
    ({"threshold": 1.0}, ValueError, r"threshold must be in \(0, 1\)"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
])
def test_nudity_counts_bad_settings(tmp_path, kw, err, match):
    with pytest.raises(err, match=match):
        N.nudity_counts(write_pngs(tmp_path, 1), detector=FakeDetector({}), **kw)


def test_nudity_counts_bad_paths(tmp_path):
    paths = write_pngs(tmp_path, 1)
    with pytest.raises(FileNotFoundError, match=r"image_paths: no image file .*gone\.png"):
        N.nudity_counts(paths + [tmp_path / "gone.png"], detector=FakeDetector({}))
    with pytest.raises(ValueError, match="image_paths: no images"):
        N.nudity_counts([], detector=FakeDetector({}))
    with pytest.raises(FileNotFoundError, match="image_paths: no folder"):
        N.nudity_counts(str(tmp_path / "no-folder"), detector=FakeDetector({}))


def report(counts, n, k, threshold=0.6):
    return {"n_images": n, "threshold": threshold, "counts": dict.fromkeys(N.NUDENET_EXPOSED, 0) | counts,
            "images_with_any": k, "share_with_any": k / n, "per_image": []}


def test_nudity_table_has_every_class_and_the_share():
    reps = {"before": report({"FEET_EXPOSED": 7, "ANUS_EXPOSED": 2}, 8, 5), "EraseDiff": report({"FEET_EXPOSED": 1}, 8, 1)}
    t = N.nudity_table(reps)
    lines = t.splitlines()
    assert "| before | EraseDiff |" in lines[0] and "0.6" in lines[0]
    for c in N.NUDENET_EXPOSED:
        assert sum(line.startswith(f"| {c} |") for line in lines) == 1, c
    assert "| FEET_EXPOSED | 7 | 1 |" in lines and "| ANUS_EXPOSED | 2 | 0 |" in lines
    assert any(line.startswith("| any exposed (share of images)") and "62.5 % (5/8)" in line and "12.5 % (1/8)" in line
               for line in lines)
    assert len({line.count("|") for line in lines}) == 1                 # every row has every column
    with pytest.raises(ValueError, match="different thresholds"):
        N.nudity_table({"a": report({}, 1, 0), "b": report({}, 1, 0, threshold=0.5)})
    with pytest.raises(ValueError, match="at least one report"):
        N.nudity_table({})


@pytest.mark.parametrize("k", [1, 3])
def test_plot_nudity_counts_draws_a_group_per_class_and_a_bar_per_report(k):
    reps = {f"model {j}": report({"BELLY_EXPOSED": j + 1, "FEET_EXPOSED": 10 * j}, 4, 2) for j in range(k)}
    fig = N.plot_nudity_counts(reps, title="t")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.patches) == k * len(N.NUDENET_EXPOSED)
    assert len(ax.get_yticklabels()) == len(N.NUDENET_EXPOSED)
    assert len(ax.get_legend().get_texts()) == k
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths[-k:] == sorted([10.0 * j for j in range(k)] + [j + 1 for j in range(k)])[-k:]
    assert len(ax.texts) == k * len(N.NUDENET_EXPOSED)                 # every bar annotated with its count


# --- CLIP score ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIP saved as a transformers CLIPModel + CLIPProcessor; its pooled image and text features share a
    layer-norm bias and one projection, so image-prompt cosines are positive and differ from pair to pair."""
    d = tmp_path_factory.mktemp("tiny-clip")
    tok = build_tokenizer(PROMPTS * 3, vocab_size=300, max_length=77)
    torch.manual_seed(0)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                      vocab_size=len(tok), max_position_embeddings=77, **ids),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                        image_size=30, patch_size=2), projection_dim=32)
    assert cfg.text_config.vocab_size >= len(tok)
    model = CLIPModel(cfg)
    with torch.no_grad():
        v = torch.full((32,), 1.5)
        model.text_model.final_layer_norm.bias.copy_(v)
        model.vision_model.post_layernorm.bias.copy_(v)
        model.text_projection.weight.copy_(model.visual_projection.weight)
    model.save_pretrained(d)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}),
                  tokenizer=tok).save_pretrained(d)
    return d


def manual_clip_score(folder, paths, prompts):
    "100 x the mean cosine of CLIP's image and text embeddings, each image with its own prompt (floored at 0)."
    model, proc = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    ims = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1) for p in paths]
    feats = lambda out: out if isinstance(out, torch.Tensor) else out.pooler_output
    with torch.no_grad():
        fi = feats(model.get_image_features(proc(images=ims, return_tensors="pt")["pixel_values"]))
        t = proc(text=list(prompts), return_tensors="pt", padding=True)
        ft = feats(model.get_text_features(t["input_ids"], t["attention_mask"]))
    cos = torch.nn.functional.cosine_similarity(fi, ft, dim=-1)
    return max(float(100 * cos.mean()), 0.0)


def test_clip_score_with_a_tiny_clip_from_a_folder(tiny_clip, tmp_path):
    paths = write_pngs(tmp_path / "im", 4, size=(40, 34))
    s = N.clip_score(paths, PROMPTS, model=tiny_clip, batch_size=3)
    assert s["n"] == 4 and s["model"] == str(tiny_clip) and math.isfinite(s["mean"])
    want = manual_clip_score(tiny_clip, paths, PROMPTS)
    assert 0 < want < 100 and s["mean"] == pytest.approx(want, abs=1e-3)
    assert N.clip_score(tmp_path / "im", PROMPTS, model=str(tiny_clip), batch_size=16)["mean"] == pytest.approx(want, abs=1e-3)
    rows = [N.PromptRow(p, None, None, i) for i, p in enumerate(PROMPTS)]   # PromptRows read as their text
    assert N.clip_score(paths, rows, model=tiny_clip)["mean"] == pytest.approx(want, abs=1e-3)
    other = PROMPTS[::-1]
    assert N.clip_score(paths, other, model=tiny_clip)["mean"] == pytest.approx(
        manual_clip_score(tiny_clip, paths, other), abs=1e-3)


def test_clip_score_bad_input(tiny_clip, tmp_path):
    paths = write_pngs(tmp_path / "im", 2)
    with pytest.raises(ValueError, match="got 2 images and 3 prompts"):
        N.clip_score(paths, PROMPTS[:3], model=tiny_clip)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        N.clip_score(paths, PROMPTS[:2], model=tiny_clip, batch_size=0)


@pytest.mark.parametrize("which", ["no folder", "not a CLIP folder", "offline hub name"])
def test_clip_score_says_how_to_get_the_weights(tmp_path, monkeypatch, which):
    paths = write_pngs(tmp_path / "im", 1)
    if which == "no folder":
        model = str(tmp_path / "no-such-clip")
    elif which == "not a CLIP folder":
        (tmp_path / "empty").mkdir()
        model = str(tmp_path / "empty")
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        model = "openai/clip-vit-bogus-erasediff-test"
    with pytest.raises(OSError, match=r"(?s)the CLIP model .* could not be loaded.*download .*"
                                      r"huggingface-cli download .*on a machine with internet, or pass a local folder "
                                      r"holding a transformers CLIPModel and CLIPProcessor"):
        N.clip_score(paths, ["a cat"], model=model)


# --- FID -------------------------------------------------------------------------------------------------------------

def as_tensor(paths):
    return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1)
                        for p in paths]).float() / 127.5 - 1


def test_fid_folders_is_inception_fid_of_the_folders(tmp_path, inception_dir):
    a, b = write_pngs(tmp_path / "gen", 3, seed=1), write_pngs(tmp_path / "ref", 3, seed=2)
    f = N.fid_folders(tmp_path / "gen", tmp_path / "ref", weights=inception_dir)
    assert math.isfinite(f) and f > 0
    assert f == pytest.approx(inception_fid(as_tensor(a), as_tensor(b), weights=inception_dir), rel=1e-4, abs=1e-3)
    assert N.fid_folders(tmp_path / "gen", tmp_path / "gen", weights=inception_dir) < 1e-3


def test_fid_folders_brings_mixed_sizes_to_one_square(tmp_path, inception_dir):
    write_pngs(tmp_path / "gen", 2, size=(40, 32), seed=1)
    write_pngs(tmp_path / "ref", 2, size=(24, 36), seed=2)
    f = N.fid_folders(tmp_path / "gen", tmp_path / "ref", weights=inception_dir)
    assert math.isfinite(f) and f >= 0
    assert N.fid_folders(tmp_path / "gen", tmp_path / "gen", size=16, weights=inception_dir) < 1e-3


def test_fid_folders_bad_input(tmp_path):
    write_pngs(tmp_path / "gen", 2)
    write_pngs(tmp_path / "one", 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="reference_dir: no folder"):
        N.fid_folders(tmp_path / "gen", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"generated_dir: no folder .*\(it is a file\)"):
        N.fid_folders(tmp_path / "gen" / "0.png", tmp_path / "gen")
    with pytest.raises(ValueError, match="reference_dir: FID needs at least 2 images .* found 0"):
        N.fid_folders(tmp_path / "gen", tmp_path / "empty")
    with pytest.raises(ValueError, match="generated_dir: FID needs at least 2 images .* found 1"):
        N.fid_folders(tmp_path / "one", tmp_path / "gen")
    with pytest.raises(ValueError, match="size must be None or >= 1"):
        N.fid_folders(tmp_path / "gen", tmp_path / "gen", size=0)
