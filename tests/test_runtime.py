"""Tests of erasediff.runtime: atomic files and folders, checkpoints, strict JSON, devices."""
import json
import pytest
import torch
from diffusers import UNet2DModel
from erasediff.runtime import atomic_dir, atomic_write_json, load_unet, save_unet, sha256_path


def test_checkpoint_round_trip_through_from_pretrained(tiny_unet, tmp_path):
    save_unet(tiny_unet, tmp_path / "ckpt")
    loaded = UNet2DModel.from_pretrained(tmp_path / "ckpt")
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([10, 900]), torch.tensor([4, 10])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, class_labels=y).sample, tiny_unet(x, t, class_labels=y).sample)
    # a pipeline-style folder (unet/ subfolder) loads too
    save_unet(tiny_unet, tmp_path / "pipe" / "unet")
    assert isinstance(load_unet(tmp_path / "pipe"), UNet2DModel)


def test_load_unet_errors(tiny_unet, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_unet(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_unet(tmp_path / "empty")
    save_unet(tiny_unet, tmp_path / "bad")
    (tmp_path / "bad" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load_unet(tmp_path / "bad")


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "result"
    with atomic_dir(target) as d:
        (d / "a.txt").write_text("old")
    h = sha256_path(target)
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "a.txt").write_text("new, half-written")
            raise RuntimeError("crash")
    assert sha256_path(target) == h and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_dir(target, overwrite=False):
            pass
    atomic_write_json(tmp_path / "m.json", {"x": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1}


def test_results_get_the_modes_of_a_plain_write(tmp_path):
    """Atomic writes give files and folders the modes open()/mkdir would (umask respected), not the private 0o600 /
    0o700 of their temporary names: on a shared server others must be able to read a model and its metrics."""
    import os, stat
    from erasediff.runtime import atomic_dir, atomic_write_bytes
    old = os.umask(0o022)
    try:
        f = atomic_write_bytes(tmp_path / "a.json", b"{}")
        with atomic_dir(tmp_path / "run") as d: (d / "x.txt").write_text("x")
        assert stat.S_IMODE(f.stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
        os.umask(0o077)                                              # a private umask is honoured too
        g = atomic_write_bytes(tmp_path / "b.json", b"{}")
        with atomic_dir(tmp_path / "run2") as d: pass
        assert stat.S_IMODE(g.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "run2").stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_nonfinite_weights_are_never_saved(tiny_unet, tmp_path):
    "A diverged model is refused before anything is written: no folder, and an existing checkpoint stays as it was."
    save_unet(tiny_unet, tmp_path / "ckpt")
    before = sha256_path(tmp_path / "ckpt")
    with torch.no_grad(): next(tiny_unet.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match="non-finite weights"):
        save_unet(tiny_unet, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="non-finite weights"):
        save_unet(tiny_unet, tmp_path / "new")
    assert sha256_path(tmp_path / "ckpt") == before and not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]          # no temporary folder left


def test_metrics_json_is_strict_json(tmp_path):
    "NaN and infinities become null and are listed, so any JSON reader (allow_nan=False) reads the file."
    atomic_write_json(tmp_path / "m.json", {"acc": float("nan"), "by_w": {"0": [0.5, float("-inf")]}, "n": 3})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert m == {"acc": None, "by_w": {"0": [0.5, None]}, "n": 3, "nonfinite_as_null": ["acc", "by_w.0.1"]}


def test_saved_weights_follow_the_umask(tiny_unet, tmp_path):
    "safetensors writes its file 0o600; a saved model's files get what a plain write would (others can read them)."
    import os, stat
    old = os.umask(0o022)
    try:
        save_unet(tiny_unet, tmp_path / "ckpt")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt").iterdir()}
    finally:
        os.umask(old)
    assert modes and set(modes.values()) == {0o644}, modes


def test_check_device():
    import torch
    from erasediff.runtime import check_device
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device name"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_device("cuda")


def _commit_many(out: str, n: int, tag: str, q) -> None:
    "A writer process: `n` tries at replacing `out` under its lock; reports (refused, committed, other errors)."
    from erasediff.runtime import atomic_dir, claim_output, ResultsInUseError
    refused = committed = 0; errors = []
    for i in range(n):
        try:
            with claim_output(out):
                with atomic_dir(out) as tmp:
                    (tmp / "a.txt").write_text(f"{tag}{i}"); (tmp / "b.txt").write_text(f"{tag}{i}")
            committed += 1
        except ResultsInUseError: refused += 1
        except Exception as e: errors.append(repr(e))
    q.put((refused, committed, errors))


def test_two_processes_replacing_one_folder_never_collide(tmp_path):
    "Two writers, 200 replacements each: every try either commits or is refused by the lock; nothing is left over."
    import multiprocessing as mp
    ctx = mp.get_context("fork"); q = ctx.Queue()
    out = str(tmp_path / "out")
    procs = [ctx.Process(target=_commit_many, args=(out, 200, tag, q)) for tag in "xy"]
    for p in procs: p.start()
    results = [q.get(timeout=300) for _ in procs]
    for p in procs: p.join()
    assert all(not errors for _, _, errors in results), results
    assert sum(c for _, c, _ in results) + sum(r for r, _, _ in results) == 400 and all(c > 0 for _, c, _ in results)
    a, b = ((tmp_path / "out" / f).read_text() for f in ("a.txt", "b.txt"))
    assert a == b                                                     # one writer's folder, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]     # no temporaries, no lock file


def test_check_out_names_an_unwritable_place(tmp_path, monkeypatch):
    import erasediff.runtime as RT
    def refuse(*a, **k): raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(RT.tempfile, "mkdtemp", refuse)            # what a read-only folder does (even for root)
    with pytest.raises(ValueError, match="--out: nothing can be written under .*Permission denied"):
        RT.check_out(tmp_path / "new" / "run", "--out")
    assert list(tmp_path.iterdir()) == []
