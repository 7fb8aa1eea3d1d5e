"""Entry point that ncu launches: import a workload function by its module and name, and call it.

    python -m workbench.measure.hbm_worker '{"module": "pkg.mod", "name": "func", "kwargs": {...}, "out": "r.json"}'

Callers never write that spec: they pass the function itself to `measure_hbm_python`, which
takes its module and name (`hbm.workload_address`).

Why a separate process: ncu profiles a whole program, so the workload runs alone in a fresh
interpreter. The workload marks the part to measure with NVTX ranges (`workloads.nvtx_range`),
and `measure_hbm_python` tells ncu to profile only kernels inside them. The function's return
value (JSON-able) is written to "out" -- not printed, so it cannot mix with ncu's CSV on stdout.
"""
from __future__ import annotations

import importlib
import json
import sys


def load_function(spec: dict):
    """{"module": "pkg.mod", "name": "func"} -> the function object."""
    if not spec.get("module") or not spec.get("name"):
        raise ValueError(f"{spec!r} names no workload: give 'module' and 'name' (hbm.workload_address)")
    return getattr(importlib.import_module(spec["module"]), spec["name"])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    result = load_function(spec)(**spec.get("kwargs", {}))
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()          # every kernel finished before the process exits
    except ImportError:
        pass
    if spec.get("out"):
        with open(spec["out"], "w") as f:
            json.dump(result, f, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
