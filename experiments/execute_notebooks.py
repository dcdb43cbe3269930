"""Execute chapter notebooks in place so that they are committed with their outputs (what a reader sees on GitHub,
in Colab or in JupyterLab before running anything).

    python experiments/execute_notebooks.py                      # every nbs/*.ipynb, `#| slow` cells keep their outputs
    python experiments/execute_notebooks.py nbs/04_baselines.ipynb --slow  # also (re)run the slow cells
    python experiments/execute_notebooks.py --metadata-only               # only the notebook metadata, see below

Writes each notebook back in place (nbs/*.ipynb) and prints its seconds. Each runs in its own folder (as nbdev-test
runs it); progress bars and temporary paths (replaced by `<tmpdir>`) are kept out of the saved outputs and
`nbdev-clean` strips the execution metadata. The notebook's metadata is then written as JupyterLab writes it when it
opens a notebook (the kernel's display name and `language_info`), so that a notebook opens unmodified. A `#| slow`
cell that is not run keeps the outputs it had. Stops at the first error without writing that notebook."""
import argparse
import copy
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient

SLOW = re.compile(r"^#\|\s*slow\b", re.M)
TMP = re.compile(r"/tmp/tmp[\w-]+|/var/folders/[\w/-]+/T/tmp[\w-]+")


def _noise(o) -> bool:
    "A progress-bar output: tqdm's stderr text or a widget."
    if o.get("name") == "stderr" and ("it/s]" in o.get("text", "") or "s/it]" in o.get("text", "") or "%|" in o.get("text", "")):
        return True
    return "application/vnd.jupyter.widget-view+json" in o.get("data", {})


def _clean(o):
    s = nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[o])]))
    return nbformat.reads(TMP.sub("<tmpdir>", s), as_version=4).cells[0].outputs[0]


def language_info() -> dict:
    "The `language_info` the python3 kernel reports (what JupyterLab writes into a notebook it opens)."
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.kernel_info()
        return kc.get_shell_msg(timeout=60)["content"]["language_info"]
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)


def normalize_metadata(path: Path, info: dict) -> None:
    "Write the notebook's kernelspec and language_info as JupyterLab does on opening it: it then opens unmodified."
    nb = nbformat.read(path, as_version=4)
    spec = KernelSpecManager().get_kernel_spec("python3")
    nb.metadata["kernelspec"] = {"display_name": spec.display_name, "language": spec.language, "name": "python3"}
    nb.metadata["language_info"] = info
    nbformat.write(nb, path)


def execute(path: Path, slow: bool = False, timeout: int = 3600) -> float:
    "Run `path` in place; returns the seconds it took."
    nb = nbformat.read(path, as_version=4)
    run = copy.deepcopy(nb)
    skipped = set()
    for i, c in enumerate(run.cells):
        if c.cell_type == "code" and SLOW.search(c.source) and not slow:
            c.source, _ = "pass", skipped.add(i)
    t = time.perf_counter()
    NotebookClient(run, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
    for i, (c, r) in enumerate(zip(nb.cells, run.cells)):
        if c.cell_type != "code" or i in skipped: continue
        c.outputs = [_clean(o) for o in r.outputs if not _noise(o)]
        c.execution_count = r.execution_count
    nbformat.write(nb, path)
    clean = Path(sys.executable).parent / "nbdev-clean"           # the environment's, activated or not
    subprocess.run([str(clean) if clean.exists() else "nbdev-clean", "--fname", str(path)], check=True)
    normalize_metadata(path, dict(run.metadata.language_info))
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every nbs/*.ipynb")
    ap.add_argument("--slow", action="store_true", help="also run the `#| slow` cells")
    ap.add_argument("--metadata-only", action="store_true", help="only write the metadata as JupyterLab would (no run)")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted(Path(__file__).resolve().parent.parent.glob("nbs/*.ipynb"))
    for p in paths:
        if not p.is_file(): ap.error(f"no notebook {p}")
    if args.metadata_only:
        info = language_info()
        for p in paths: normalize_metadata(p, info)
        print(f"{len(paths)} notebooks: kernelspec and language_info (Python {info.get('version')}) as JupyterLab writes them")
        return 0
    for p in paths:
        print(f"{p}: {execute(p, args.slow):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
