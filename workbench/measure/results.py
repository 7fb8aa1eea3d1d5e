"""Committed measurements (docs/results/*.json): written with the GPU in them, read back per GPU.

A results file is a JSON list of records, named `<kind>-<gpu tag>.json`
(e.g. `stack-single-h200.json`: kind `stack-single`, tag `h200`; a tag has no '-'). Every
record says where and when it was measured: `gpu` (the device name, as torch reports it),
`date` (ISO) and `command`. `stamp` adds these when a command writes --json.

`latest(kind)` picks the file a notebook should show: the newest one measured on the GPU this
notebook runs on, or else the newest of any GPU -- and its `source` line says which GPU and
when, so a figure drawn from it is always labelled with the machine that produced it.
"""
from __future__ import annotations

import datetime
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "results"
_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "instinct"}


def gpu_tag(gpu: str) -> str:
    """A short file-name tag for a device name: 'NVIDIA H200' -> 'h200', '... RTX 4090' -> 'rtx4090'."""
    words = [w for w in re.split(r"\s+", gpu.strip().lower()) if w and w not in _VENDOR_WORDS]
    if not words:
        return "cpu"
    tag = words[0] + (words[1] if words[0].isalpha() and len(words) > 1 else "")
    return re.sub(r"[^a-z0-9]", "", tag) or "unknown"


def this_gpu() -> str | None:
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def stamp(rows: list, command: str | None = None) -> list:
    """Each dict row gets `gpu`, `date` and `command` unless it already has them."""
    gpu = this_gpu() or "cpu"
    command = command or "python -m workbench " + " ".join(sys.argv[1:])
    today = datetime.date.today().isoformat()
    for row in rows:
        if isinstance(row, dict):
            row.setdefault("gpu", row.get("device") or gpu)
            row.setdefault("date", today)
            row.setdefault("command", command)
    return rows


@dataclass
class Measured:
    """Records from one results file, with where they came from."""

    name: str
    records: list
    gpu: str
    date: str
    command: str
    this_gpu: bool = False     # measured on the GPU this process runs on

    @property
    def source(self) -> str:
        where = "" if self.this_gpu else " (not this machine)"
        return f"measured on {self.gpu}{where}, {self.date}, by `{self.command}` (docs/results/{self.name})"

    @property
    def timed_runs(self) -> int | None:
        """Timed runs per setting, as the file's command asked (--repeats N); None where it does not
        say. One run has no spread: a chapter must not read a verdict from it."""
        found = re.search(r"--repeats (\d+)", self.command)
        return int(found[1]) if found else None

    def row(self, **match) -> dict:
        """The first record whose fields equal `match`, e.g. .row(setting='naive')."""
        for record in self.records:
            if all(record.get(k) == v for k, v in match.items()):
                return record
        raise KeyError(f"no record with {match} in {self.name}")


def read(path: Path, gpu_here: str | None = None) -> Measured:
    """One results file; its GPU, date and command from its records (the first that has each)."""
    records = json.loads(Path(path).read_text())

    def first(*keys):
        return next((r[k] for r in records for k in keys if isinstance(r, dict) and r.get(k)), None)
    gpu = first("gpu", "device") or "unknown GPU (file carries none)"
    return Measured(Path(path).name, records, gpu, first("date") or "date unknown",
                    first("command") or "see docs/perf-notes.md", this_gpu=gpu_here is not None and gpu == gpu_here)


def candidates(kind: str, folder: Path = RESULTS_DIR) -> list[Path]:
    """The files `<kind>-<tag>.json` in folder (`launches` does not match `launches-inplace-h100`)."""
    prefix = f"{kind}-"
    return sorted(p for p in folder.glob(f"{kind}-*.json") if "-" not in p.stem[len(prefix):])


def latest(kind: str, folder: Path = RESULTS_DIR, gpu_here: str | None = "auto") -> Measured:
    """The newest `<kind>-*.json` measured on this GPU, else the newest of any GPU."""
    gpu_here = this_gpu() if gpu_here == "auto" else gpu_here
    found = [read(p, gpu_here) for p in candidates(kind, folder)]
    if not found:
        raise FileNotFoundError(f"no results file {kind}-<gpu>.json in {folder}: measure it first "
                                f"(docs/perf-notes.md names the command for each kind)")
    mine = [m for m in found if m.this_gpu]
    return max(mine or found, key=lambda m: (m.date, m.name))
