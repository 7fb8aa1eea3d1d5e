"""Plumbing shared by the notebooks: which model to run, where committed measurements live, and
how to label them.

Two kinds of numbers appear in the notebooks, and they must never be confused:
- numbers measured *in this run* on this machine (the notebook computes them, then prints them);
- numbers measured earlier on an H100 and committed under docs/results/. `load_measured` returns
  them together with a `source` line that says where, when and by which command they were taken,
  and every plot or table of them carries that line.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "docs" / "results"
DOCS_DIR = REPO_ROOT / "docs"

# How each committed file was produced (docs/perf-notes.md has the runs, session by session).
_H100 = "NVIDIA H100 80GB HBM3"
_DATE = "2026-11-25"
_COMMANDS = {
    "stack-single-h100.json": "python -m workbench bench stack --workloads single --new-tokens 512 --repeats 1",
    "launches-h100.json": "python -m workbench measure launches",
    "launches-inplace-h100.json": "python -m workbench measure launches (session 2, before the fused RoPE "
                                  "kernels wrote new tensors instead of views)",
    "inductor-gemv-h100.json": "python scripts/experiment_inductor_gemv.py (twice: both settings, then all on again)",
    "gemv-h100.json": "python -m workbench measure gemv",
    "parity-h100.json": "python -m workbench check (the 5 compile rows without fused kernels re-run in session 3, "
                        "and 3 fused rows in session 4, with `check --settings ...`)",
    "hbm-h100.json": "python -m workbench measure hbm",
    "throughput-h100.json": "python -m workbench bench throughput --settings all_on --repeats 1 --decode-steps 1,8",
    "multistep-single-h100.json": "python -m workbench bench single --settings all_on --new-tokens 512 "
                                  "--repeats 1 --decode-steps 1,4,8",
    "peers-batch-h100.json": "python -m workbench bench batch --num-seqs 64 --new-tokens 128 --repeats 1 --peers",
    "peers-single-h100.json": "python -m workbench bench single --new-tokens 256 --repeats 1 --peers",
    "throughput-peers-h100.json": "python -m workbench bench throughput --settings all_on --repeats 1 --peers",
    "attention-h100.json": "python -m workbench measure attention-traffic --n 512,1024,2048,4096,8192 "
                           "(the SDPA row: session 1, measure_hbm_python(attention_workload))",
}


@dataclass
class Measured:
    """Records from docs/results/<name>, with where they came from."""

    name: str
    records: list
    gpu: str
    date: str
    command: str

    @property
    def source(self) -> str:
        return f"measured on {self.gpu}, {self.date}, by `{self.command}`"

    def row(self, **match) -> dict:
        """The first record whose fields equal `match`, e.g. .row(setting='naive')."""
        for record in self.records:
            if all(record.get(k) == v for k, v in match.items()):
                return record
        raise KeyError(f"no record with {match} in {self.name}")


def load_measured(name: str) -> Measured:
    path = RESULTS_DIR / name
    records = json.loads(path.read_text())
    gpu = next((r.get("gpu") or r.get("device") for r in records if r.get("gpu") or r.get("device")), _H100)
    return Measured(name, records, gpu, _DATE, _COMMANDS.get(name, f"see docs/perf-notes.md ({name})"))


def on_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def machine() -> str:
    """What this run measures on, for labels: the GPU's name, or the CPU and its cores."""
    import platform

    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


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
