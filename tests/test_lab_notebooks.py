"""The instructor workflow end to end (otter-grader): student versions carry no solution, every
master notebook runs top to bottom on this machine, and `scripts/labs.py grade` gives a
reference submission full marks and a wrong one less, with the check's message and what the grader
measured as feedback.

Time (CI has 2 cores): every master runs once, here, with its hidden tests inline, so each lab's
reference passes its own tests; the stripping check covers every lab. `otter run` executes a
whole submission again, so the grading pipeline (solutions pasted into the student version,
otter's autograder, the score table, the feedback) is proven on one lab: its reference and one
wrong submission."""
from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("otter")

from jupyter_client.manager import KernelManager  # noqa: E402
from lab_fill import fill, solution_cells  # noqa: E402
from test_notebooks import ThisPython  # noqa: E402
from workbench.lab import LABS_DIR, master_notebooks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MASTERS = master_notebooks()
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           OMP_NUM_THREADS="1", TQDM_DISABLE="1")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("labs")
    subprocess.run([sys.executable, "scripts/labs.py", "build", "--out", str(out)], cwd=REPO, env=ENV,
                   check=True, capture_output=True)
    return out


def test_four_labs_cover_the_exercises():
    from workbench.lab import MODULES
    text = "".join(p.read_text() for p in MASTERS)
    assert len(MASTERS) >= 4 and all(f'lab.check(\\"{name}\\"' in text for name in MODULES)


def test_student_versions_strip_every_solution(built):
    for master in MASTERS:
        student = built / master.stem / "student" / master.name
        text = student.read_text()
        for src in solution_cells(nbformat.read(master, 4)):
            body, inside = [], False
            for line in src.splitlines():
                if "# END SOLUTION" in line:
                    inside = False
                elif inside and len(line.strip()) > 12:
                    body.append(line.strip())
                elif "# BEGIN SOLUTION" in line:
                    inside = True
            assert body, f"{master.name}: a solution cell with no solution body?"
            leaked = [line for line in body if line in text]
            assert not leaked, f"{student.name} ships solution lines: {leaked}"
        assert "# HIDDEN" not in text and "BEGIN SOLUTION" not in text


@pytest.mark.parametrize("master", MASTERS, ids=[m.stem for m in MASTERS])
def test_master_runs_top_to_bottom(master):
    nb = nbformat.read(master, 4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
    nbclient.NotebookClient(nb, km=km, timeout=300, allow_errors=False,
                            resources={"metadata": {"path": str(LABS_DIR)}}).execute()


def test_grading_table(built, tmp_path):
    master = LABS_DIR / "lab02_kv_cache.ipynb"
    student = built / master.stem / "student" / master.name
    subs = tmp_path / "subs"
    (subs / "ref").mkdir(parents=True)
    fill(student, master, subs / "ref" / master.name)
    wrong = {"def pick_victim(running):": "def pick_victim(running):\n    return running[0]"}
    fill(student, master, subs / "oldest_lab02_kv_cache.ipynb", replace=wrong)
    table = tmp_path / "grades.csv"
    subprocess.run([sys.executable, "scripts/labs.py", "grade", str(subs), "--out", str(built), "--table", str(table)],
                   cwd=REPO, env=ENV, check=True, capture_output=True)
    rows = {r["student"]: r for r in csv.DictReader(table.open())}
    full = sum(float(re.search(r"points:\s*([\d.]+)", c.source).group(1))
               for c in nbformat.read(master, 4).cells if "BEGIN QUESTION" in c.source)
    assert full > 0 and float(rows["ref"][master.stem]) == full, rows["ref"]
    assert float(rows["oldest"][master.stem]) == full - 3.0, rows["oldest"]   # pick_victim's 3 points lost
    feedback = (tmp_path / "feedback" / "oldest_lab02_kv_cache.txt").read_text()
    assert "loses the least" in feedback
    # what lab.grade measured in otter's kernel (the report file reached it through the environment)
    for student, marks in (("ref", ["block_hash: score 1.00", "preemption: score 1.00"]),
                           ("oldest", ["block_hash: score 1.00", "preemption: score 0.00"])):
        measured = (tmp_path / "feedback" / f"{student}_lab02_kv_cache.txt").read_text().partition(
            "What the grader measured")[2]
        assert all(mark in measured for mark in marks) and "- measure: " in measured, (student, measured)


def test_feedback_adds_what_the_grader_measured(tmp_path):
    """The feedback file: otter's output per scored question, then each exercise's lab.grade summary
    from the report file (the last, if graded twice; a line not lab.grade's is passed over)."""
    spec = importlib.util.spec_from_file_location("labs_script", REPO / "scripts" / "labs.py")
    labs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(labs)
    results = {"tests": [{"name": "Public Tests", "score": float("nan"), "output": "public summary"},
                         {"name": "q1", "score": 3.0, "output": "q1 results: All test cases passed!"},
                         {"name": "q2", "score": 0.0, "output": "q2 results: failed"}]}
    report = tmp_path / "measured.jsonl"
    assert labs._feedback(results, report) == "q1 results: All test cases passed!\n\nq2 results: failed"
    report.write_text('{"exercise": "block_hash", "summary": "block_hash: score 0.00 (first try)"}\n'
                      'not json: the notebook wrote here\n'
                      '{"exercise": "preemption", "summary": "preemption: score 0.00\\n  - alone: 40 lost"}\n'
                      '{"exercise": "block_hash", "summary": "block_hash: score 1.00\\n  - measure: 79 of 143"}\n')
    assert labs._feedback(results, report) == (
        "q1 results: All test cases passed!\n\nq2 results: failed\n\n"
        "What the grader measured\n------------------------\n"
        "block_hash: score 1.00\n  - measure: 79 of 143\n\npreemption: score 0.00\n  - alone: 40 lost")
