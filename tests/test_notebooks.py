"""The notebooks are the product's front door: they must open in Jupyter/Colab and run headless under papermill."""
import json
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


def test_unlearn_notebook_first_code_cell_is_parameters():
    nb = json.loads((Path(__file__).parents[1] / "nbs" / "03_unlearn.ipynb").read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "parameters" in first.get("metadata", {}).get("tags", []), first.get("metadata")
    src = "".join(first["source"])
    for name in ("forget_classes", "overrides", "seed", "quick"):
        assert f"\n{name} =" in "\n" + src, name
