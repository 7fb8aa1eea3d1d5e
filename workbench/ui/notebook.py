"""Plumbing shared by the notebooks: which model to run, where committed measurements live, and
how to label them.

Two kinds of numbers appear in the notebooks, and they must never be confused:
- numbers measured *in this run* on this machine (the notebook computes them, then prints them);
- numbers measured earlier on a GPU and committed under docs/results/. `load_measured(kind)`
  returns the newest file of that kind measured on this machine's GPU, or else the newest of any
  GPU, with a `source` line that says on which GPU, when and by which command; every plot or
  table of them carries that line (workbench/measure/results.py).
"""
from __future__ import annotations

import html
import os
from pathlib import Path

from workbench.measure.results import Measured, latest
from workbench.measure.timing import busy_warning, pin_threads

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS_DIR = REPO_ROOT / "docs"
__all__ = ["Measured", "load_measured", "machine", "on_gpu", "pick_model", "save_figure", "show_table",
           "trace_ops", "pin_threads", "busy_warning"]


def load_measured(kind: str) -> Measured:
    """The committed measurement of `kind` (e.g. 'stack-single') for this GPU, else the newest."""
    if kind.endswith(".json"):
        raise ValueError(f"load_measured({kind!r}): pass the kind without GPU and .json, e.g. "
                         f"{kind.rsplit('-', 1)[0]!r}; the file for this machine's GPU is picked for you")
    return latest(kind)


def on_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def machine() -> str:
    """What this run measures on, for labels: the GPU's name, or the CPU and its cores."""
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else host_cpu()


def host_cpu() -> str:
    """This machine's CPU and its cores, for work that runs there even when a GPU is present."""
    import platform

    import torch
    threads = torch.get_num_threads()
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {threads} torch thread{'s' if threads != 1 else ''})"


def show_table(records, columns: list[str] | None = None, caption: str = "") -> None:
    """Show records as an HTML table whose cells do not wrap; plain text outside a notebook."""
    from workbench.measure import format_table, table_cells
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
        in_notebook = get_ipython() is not None
    except ImportError:
        in_notebook = False
    if not in_notebook:
        print((caption + "\n" if caption else "") + format_table(records, columns))
        return
    style = "white-space:nowrap;padding:1px 8px;text-align:right;font-size:85%"
    header, *body = table_cells(records, columns)

    def tr(cells, tag):
        return "<tr>" + "".join(f"<{tag} style='{style}'>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"
    caption_html = (f"<caption style='caption-side:bottom;text-align:left;font-size:80%'>{html.escape(caption)}"
                    "</caption>" if caption else "")
    display(HTML(f"<div style='overflow-x:auto'><table>{caption_html}{tr(header, 'th')}"
                 + "".join(tr(row, "td") for row in body) + "</table></div>"))


def pick_model(cpu_choice: str = "tiny") -> Path:
    """The checkpoint a notebook runs.

    $WORKBENCH_MODEL wins when set: a checkpoint directory, or one of 'sorter' (the embedded
    trained model), 'tiny', 'qwen3-0.6b' (random weights, written once to a temp folder).
    Otherwise: the Qwen3-0.6B shape in bf16 on a GPU, `cpu_choice` on a CPU.
    """
    from workbench.assets import DEFAULT_MODEL_DIR
    from workbench.model.checkpoint import PRESETS, random_checkpoint
    choice = os.environ.get("WORKBENCH_MODEL") or ("qwen3-0.6b" if on_gpu() else cpu_choice)
    if choice == "sorter":
        return DEFAULT_MODEL_DIR
    if choice in PRESETS:
        return random_checkpoint(choice)
    path = Path(choice).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"WORKBENCH_MODEL={choice!r} is neither a checkpoint directory (no config.json) "
                         f"nor one of 'sorter', {', '.join(map(repr, PRESETS))}")
    return path


def save_figure(fig, filename: str) -> Path | None:
    """Save `fig` under docs/ when WORKBENCH_SAVE_FIGURES is set (to 1, or to another folder).

    Off by default, so running the notebooks (as the tests do) never rewrites committed files."""
    target = os.environ.get("WORKBENCH_SAVE_FIGURES")
    if not target:
        return None
    folder = DOCS_DIR if target == "1" else Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"saved {path}")
    return path


def trace_ops(fn, *args, **kwargs) -> list[dict]:
    """Run fn(*args, **kwargs) once, eagerly, and list every ATen operator that ran, in order.

    In eager PyTorch each listed op that is not a view is its own kernel (on a GPU: its own
    launch), reading its input tensors and writing its outputs. `read_bytes`/`write_bytes` are
    those tensors' sizes: what the op would move if each kernel read its inputs once and wrote
    its output once (modelled from the ops that actually ran; caches can do better for small
    tensors). Views (split, chunk, reshape ...) move nothing and are marked `view=True`.
    Compiled code runs eagerly under this trace, so trace the uncompiled function."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    ops: list[dict] = []

    def tensors(tree):
        return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]

    class Trace(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ins, outs = tensors((args, kwargs)), tensors(out)
            view = bool(getattr(func, "is_view", False))
            size = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
            ops.append({"op": func.overloadpacket.__name__, "view": view,
                        "read_bytes": 0 if view else size(ins), "write_bytes": 0 if view else size(outs)})
            return out

    with Trace():
        fn(*args, **kwargs)
    return ops
