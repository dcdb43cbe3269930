"""The notebooks are the product's front door: they must open in Jupyter/Colab and run headless under papermill."""
import json
import re
import tempfile
from pathlib import Path

import pytest

NBS = sorted((Path(__file__).parents[1] / "nbs").glob("*.ipynb"))


def test_notebooks_found():
    assert len(NBS) >= 6, NBS


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_notebook_has_kernelspec(path):
    "papermill refuses a notebook without a kernel name ('No kernel name found in notebook')."
    ks = json.loads(path.read_text())["metadata"].get("kernelspec", {})
    assert ks.get("name") == "python3", ks


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_notebook_metadata_is_what_jupyterlab_writes(path):
    "Opened in JupyterLab, a notebook is not marked modified: its kernelspec and language_info are the kernel's own "
    "(`python experiments/execute_notebooks.py --metadata-only` writes them; nbdev-clean would undo it)."
    meta = json.loads(path.read_text())["metadata"]
    assert meta["kernelspec"]["display_name"] == "Python 3 (ipykernel)", meta["kernelspec"]
    assert meta.get("language_info", {}).get("name") == "python" and "version" in meta["language_info"], meta


@pytest.mark.parametrize("name, params", [("index", ("forget_classes", "overrides", "seed", "quick")),
                                          ("13_reproduce", ("PRESET", "SEEDS", "OUT", "METHODS"))])
def test_colab_notebook_installs_in_colab_then_takes_parameters(name, params):
    "First code cell: the Colab install (a no-op elsewhere); the next one: papermill's parameters; a badge opens it."
    nb = json.loads((Path(__file__).parents[1] / "nbs" / f"{name}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    colab = "".join(code[0]["source"])
    assert 'if "google.colab" in sys.modules:' in colab and "pip" in colab and "install" in colab
    assert f"colab.research.google.com/github/erasediff/erasediff/blob/main/nbs/{name}.ipynb" in "".join(
        "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    first = code[1]
    assert "parameters" in first.get("metadata", {}).get("tags", []), first.get("metadata")
    src = "".join(first["source"])
    for p in params:
        assert f"\n{p} =" in "\n" + src, p
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"colab.research.google.com/github/erasediff/erasediff/blob/main/nbs/{name}.ipynb" in readme


CHAPTERS = [p for p in NBS if p.name[:2].isdigit() or p.name == "index.ipynb"]   # and the front door
MACHINE = re.compile(r"(?:/(?:tmp|home|root|Users|work|private/var|var/folders)/[\w.+-]+)|(?:[A-Za-z]:\\\\Users\\\\)")


def test_chapters_found():
    assert len(CHAPTERS) >= 7, CHAPTERS


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_notebook_shows_its_results(path):
    "Committed with outputs: at least one figure, no error, nothing that names a path of the machine that ran it."
    nb = json.loads(path.read_text())
    outs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert any(k.startswith("image/") for o in outs for k in o.get("data", {})), f"{path.name}: no image output"
    errors = [o.get("ename") for o in outs if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"
    text = json.dumps(outs)
    for local in {str(Path(__file__).resolve().parents[1]), str(Path.home()), tempfile.gettempdir()}:
        assert local not in text, f"{path.name}: an output names {local}"
    assert not MACHINE.findall(text), f"{path.name}: machine paths in outputs {MACHINE.findall(text)[:3]}"
