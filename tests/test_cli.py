import subprocess
import sys
from pathlib import Path

import pytest

from erasediff.cli import build_parser, main


def test_help_lists_subcommands():
    script = Path(sys.executable).parent / "erasediff"       # the console script installed by pip
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("train", "presets"):
        assert cmd in out.stdout
    mod = subprocess.run([sys.executable, "-m", "erasediff.cli", "presets"], capture_output=True, text=True)
    assert mod.returncode == 0 and "digits" in mod.stdout                  # `python -m erasediff.cli` runs it too


def test_bad_input_is_rejected_before_work(tmp_path, capsys):
    assert main(["train", "--what", "retrain", "--out", str(tmp_path / "r"), "--forget", "3", "99", "--quiet"]) == 2
    assert "--forget" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--what", "nothing", "--out", "x"])


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "cifar10" in out


def exits(argv) -> int:
    "main's exit code, argparse's usage errors (which exit) included."
    try: return main(argv)
    except SystemExit as e: return e.code


def test_unlearn_option_errors_name_the_option(tmp_path, capsys):
    assert exits(["unlearn", "--lam", "abc", "--out", str(tmp_path / "u"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--lam" in err and "auto_cos" in err and not (tmp_path / "u").exists()
    for bad in ("-1", "nan", "inf"):
        assert exits(["unlearn", "--lam", bad, "--out", str(tmp_path / "u"), "--quiet"]) == 2
        assert "--lam" in capsys.readouterr().err
    with pytest.raises(SystemExit):                                 # argparse names the option and its choices
        build_parser().parse_args(["unlearn", "--forget-loss", "laplace", "--out", "x"])
    args = build_parser().parse_args(["unlearn", "--forget-loss", "uniform", "--pseudo-label", "per_sample", "--lam",
                                      "auto_cos", "--out", "x"])
    from erasediff.cli import _overrides
    assert _overrides(args) == {"lam": "auto_cos", "forget_loss": "uniform", "pseudo_label": "per_sample"}


def test_unlearn_unavailable_device_is_a_clear_error(tmp_path, capsys):
    import torch
    if torch.cuda.is_available(): pytest.skip("needs a machine without CUDA")
    assert main(["unlearn", "--device", "cuda", "--out", str(tmp_path / "u"), "--quiet"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "u").exists()


@pytest.mark.parametrize("command", [["train", "--what", "classifier"], ["unlearn"]])
def test_dataset_that_cannot_be_downloaded_says_what_from_where_to_where(command, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torchvision")
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root, out = tmp_path / "cifar", tmp_path / "run"
    rc = main([*command, "--preset", "cifar10", "--device", "cpu", "--data-root", str(root), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    for what in ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz", str(root),
                 "no network in this test", "--data-root"):
        assert what in err, what
    assert not out.exists()


def test_data_root_is_refused_for_the_built_in_dataset(tmp_path, capsys):
    assert main(["train", "--what", "classifier", "--data-root", str(tmp_path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and "'digits'" in err and not (tmp_path / "r").exists()
