"""Course labs: write the key piece, plug it into the real engine, get graded and measured.

    from workbench import lab
    result = lab.check("naive_attention", my_attention)   # -> Result: score, messages, effect
    print(result)

Each exercise module's docstring is the assignment (signature and what to get right).
"""
from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import os
import sys
from pathlib import Path

from .exercise import Exercise, Result, Skip, Wrong

LABS_DIR = Path(__file__).resolve().parents[2] / "labs"   # in a checkout of the repository
REPORT_ENV = "WORKBENCH_LAB_REPORT"   # set to a file: grade() appends what it measured (scripts/labs.py grade)

MODULES = {   # exercise name -> (module, attribute)
    "sampling": ("sampling", "EXERCISE"),
    "block_hash": ("block_hash", "EXERCISE"),
    "preemption": ("preemption", "EXERCISE"),
    "naive_attention": ("naive_attention", "EXERCISE"),
    "online_softmax": ("online_softmax", "EXERCISE"),
    "add_rms_norm": ("add_rms_norm", "EXERCISE"),
    "cuda_graph": ("cuda_graph", "EXERCISE"),
    "graph_buckets": ("cuda_graph", "BUCKETS"),
    "compile_break_even": ("compile_break_even", "EXERCISE"),
}


def exercise(name: str) -> Exercise:
    if name not in MODULES:
        raise ValueError(f"unknown exercise {name!r}; choose one of {sorted(MODULES)}")
    module, attr = MODULES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


def master_notebooks() -> list[Path]:
    """The instructors' master notebooks (solutions inside), labs/lab*.ipynb, in order; the
    student versions are built from them (scripts/labs.py)."""
    return sorted(LABS_DIR.glob("lab*.ipynb"))


_COPIES = itertools.count()   # grade()'s fresh copies of this package, each under a name of its own


def check(name: str, student_fn, **kwargs) -> Result:
    """Grade `student_fn` for exercise `name`; kwargs go to Exercise.check (e.g. engine=False).

    Every call checks afresh: a helper the function calls, fixed since, counts at once (nothing is
    remembered between calls, so a re-run check and the grader see the same code)."""
    return exercise(name).check(student_fn, **kwargs)


def grade(name: str, student_fn, **kwargs) -> Result:
    """The hidden tests' check: the exercise graded by a copy of this package loaded afresh from its
    files under a name of its own -- so nothing a notebook did to workbench.lab (a replaced `check`,
    a patched Exercise) reaches the grade. The hidden cell reloads this package first, so `grade`
    itself is the file's: `importlib.reload(importlib.import_module("workbench.lab")).grade(...)`.

    Where the environment names a file in REPORT_ENV, the result's summary is appended to it as one
    JSON line {"exercise", "summary"}: the grader's feedback shows the student what was measured,
    which otter's per-question output ('passed') does not."""
    fresh = f"_workbench_lab_graded_{next(_COPIES)}"
    spec = importlib.util.spec_from_file_location(fresh, Path(__file__),
                                                  submodule_search_locations=[str(Path(__file__).parent)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[fresh] = package   # its `from .exercise import ...` loads the copy's own modules
    try:
        spec.loader.exec_module(package)
        result = package.exercise(name).check(student_fn, **kwargs)   # the copy's exercise(): the copy's modules
    finally:
        for loaded in [m for m in sys.modules if m == fresh or m.startswith(fresh + ".")]:
            del sys.modules[loaded]
    if os.environ.get(REPORT_ENV):
        with open(os.environ[REPORT_ENV], "a", encoding="utf-8") as report:
            report.write(json.dumps({"exercise": name, "summary": str(result)}) + "\n")
    return result


__all__ = ["Exercise", "Result", "Skip", "Wrong", "check", "exercise", "grade", "master_notebooks", "MODULES",
           "REPORT_ENV"]
