"""Entry point that ncu launches: import a workload function by name and call it.

    python -m workbench.measure.hbm_worker '{"fn": "pkg.module.func", "kwargs": {...}, "out": "r.json"}'

Why a separate process: ncu profiles a whole program, so the workload runs alone in a fresh
interpreter. The workload marks the part to measure with NVTX ranges (`workloads.nvtx_range`),
and `measure_hbm_python` tells ncu to profile only kernels inside them. The function's return
value (JSON-able) is written to "out" -- not printed, so it cannot mix with ncu's CSV on stdout.
"""
from __future__ import annotations

import importlib
import json
import sys


def load_function(dotted: str):
    """'pkg.module.func' or 'pkg.module:func' -> the function object."""
    module, _, name = dotted.replace(":", ".").rpartition(".")
    if not module:
        raise ValueError(f"{dotted!r} is not a dotted name like 'package.module.function'")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    result = load_function(spec["fn"])(**spec.get("kwargs", {}))
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
