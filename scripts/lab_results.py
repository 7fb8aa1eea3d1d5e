"""Run every lab exercise's reference solution (from the master notebooks) through lab.check on this
machine and write what a student sees: python scripts/lab_results.py [--out docs/results/labs-<gpu>.json]

On a CPU the GPU-only stages are reported as skipped with their reason; nothing is filled in.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is imported by a solution cell


def solutions() -> dict:
    """The masters' solution cells as one module in a temp file (triton.jit reads its source file)."""
    import importlib.util
    import tempfile

    from workbench.lab import master_notebooks
    cells = ["import math\nimport torch"]
    for master in master_notebooks():   # a notebook is JSON: no Jupyter package needed on a bare GPU box
        sources = ["".join(c["source"]) for c in json.loads(master.read_text())["cells"] if c["cell_type"] == "code"]
        cells += [src for src in sources if "# BEGIN SOLUTION" in src]
    path = Path(tempfile.mkdtemp()) / "lab_reference_solutions.py"
    path.write_text("\n\n".join(cells) + "\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


FUNCTIONS = {"sampling": "sample_row", "block_hash": "block_hasher", "preemption": "pick_victim",
             "naive_attention": "attention", "online_softmax": "tiled_attention", "add_rms_norm": "add_rms_norm",
             "graph_buckets": "bucket_for", "cuda_graph": "capture", "compile_break_even": "break_even_tokens"}


def main(argv=None) -> list[dict]:
    from workbench import lab
    from workbench.lab.exercise import machine
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--compile", action="store_true", help="also measure compile for the break-even")
    args = parser.parse_args(argv)
    ns, rows = solutions(), []
    for name, fn in FUNCTIONS.items():
        kwargs = {}
        if name == "compile_break_even" and (args.compile or torch.cuda.is_available()):
            from workbench.lab.compile_break_even import measure_compile
            m = measure_compile()
            kwargs = {k: m[k] for k in ("compile_s", "eager_tok_s", "compiled_tok_s")}
        result = lab.check(name, ns[fn], **kwargs)
        print(result)
        rows.append(dict(exercise=name, score=result.score, stages=result.stages, messages=result.messages,
                         effect=result.effect, machine=machine(), torch=torch.__version__))
    if args.out:
        from workbench.measure.results import stamp   # every record names its gpu, date and command
        command = "python scripts/lab_results.py " + " ".join(sys.argv[1:])
        args.out.write_text(json.dumps(stamp(rows, command), indent=1, default=str))
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    sys.exit(0 if all(r["score"] == 1.0 or "fail" not in r["stages"].values() for r in main()) else 1)
