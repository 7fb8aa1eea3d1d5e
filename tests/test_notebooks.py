"""Every notebook runs top to bottom, headless, on CPU, without an error.

Which Python runs the kernel: always this interpreter (`sys.executable`). jupyter_client looks
kernel specs up by name, and a spec named "python3" in ~/.local/share/jupyter/kernels (or a
system folder) may point at another Python, one without workbench or with an older copy.
`ThisPython` resolves every kernel name to ipykernel's own spec built around sys.executable, so
nothing has to be registered (`ipykernel install`) and a fresh venv in CI behaves like a laptop.

The kernel runs in notebooks/ (as in JupyterLab) with the repository root on PYTHONPATH, so the
notebooks import this checkout even when workbench is not pip-installed.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# On a GPU the chapters run the 0.6B shape: compile and graph capture per engine take minutes.
ON_GPU = torch.cuda.is_available()
CELL_TIMEOUT_S = 600 if ON_GPU else 120


class ThisPython(KernelSpecManager):
    """Every kernel name resolves to an ipykernel running in this very interpreter."""

    def get_kernel_spec(self, kernel_name):
        from ipykernel.kernelspec import RESOURCES, get_kernel_dict
        spec = get_kernel_dict()                      # argv = [sys.executable, -m, ipykernel_launcher, ...]
        spec["env"] = {
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "WORKBENCH_SAVE_FIGURES": "",             # never rewrite docs/*.png from a test
            "TQDM_DISABLE": "1",
            # One intra-op thread: on a small shared runner, two OpenMP threads that spin-wait
            # for each other while another process holds a core slow the tiny model's steps
            # down 10-30x (seen on a 2-core box). The tests check that cells run, not speeds.
            "OMP_NUM_THREADS": os.environ.get("WORKBENCH_NOTEBOOK_THREADS", "1"),
        }
        return KernelSpec(resource_dir=RESOURCES, **spec)


def test_notebooks_exist():
    names = [p.stem[:2] for p in NOTEBOOKS]
    assert names == [f"{i:02d}" for i in range(10)], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False,
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    assert ON_GPU or seconds < 300, f"{path.name} took {seconds:.0f} s; keep notebooks light on CPU"
    # Every notebook ends by printing what this run measured.
    last = next(c for c in reversed(nb.cells) if c.cell_type == "code")
    text = "".join(o.get("text", "") for o in last.get("outputs", []) if o.get("output_type") == "stream")
    assert text.strip(), f"{path.name}: the closing 'What you measured' cell printed nothing"
    print(f"{path.name}: {seconds:.1f} s", file=sys.stderr)
