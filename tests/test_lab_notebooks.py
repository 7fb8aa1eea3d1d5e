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
import json
import os
import re
import shutil
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


def test_each_lab_ends_with_how_to_hand_it_in(built):
    """The student version's last cell states the file-name rule the grader matches (seen failing:
    the rule was only in the instructors' docs)."""
    for master in MASTERS:
        last = nbformat.read(built / master.stem / "student" / master.name, 4).cells[-1]
        assert last.cell_type == "markdown" and f"<your name>/{master.stem}.ipynb" in last.source \
            and f"<your name>_{master.stem}.ipynb" in last.source, (master.name, last.source)


def test_grading_table(built, tmp_path):
    master = LABS_DIR / "lab02_kv_cache.ipynb"
    student = built / master.stem / "student" / master.name
    subs = tmp_path / "subs"
    (subs / "ref" / ".ipynb_checkpoints").mkdir(parents=True)
    fill(student, master, subs / "ref" / master.name)
    wrong = {"def pick_victim(running):": "def pick_victim(running):\n    return running[0]"}
    fill(student, master, subs / "oldest_lab02_kv_cache.ipynb", replace=wrong)
    # not submissions (seen graded as students "checkpoint", "Copy1" and "subs"): Jupyter's autosave
    # copy, a renamed copy, a file at the top with no student's name
    for copy in (subs / "ref" / ".ipynb_checkpoints" / "lab02_kv_cache-checkpoint.ipynb",
                 subs / "ref" / "lab02_kv_cache-Copy1.ipynb", subs / "lab02_kv_cache.ipynb"):
        shutil.copy(subs / "ref" / master.name, copy)
    out = tmp_path / "out"   # grades.csv and feedback/ go under --out (seen written to the repository's build/)
    shutil.copytree(built / master.stem, out / master.stem)
    run = subprocess.run([sys.executable, "scripts/labs.py", "grade", str(subs), "--out", str(out)],
                         cwd=REPO, env=ENV, check=True, capture_output=True, text=True)
    assert "lab02_kv_cache-Copy1.ipynb: not graded" in run.stdout and "lab02_kv_cache.ipynb: not graded" in run.stdout
    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    full = sum(float(re.search(r"points:\s*([\d.]+)", c.source).group(1))
               for c in nbformat.read(master, 4).cells if "BEGIN QUESTION" in c.source)
    assert set(rows) == {"ref", "oldest"}, rows
    assert full > 0 and float(rows["ref"][master.stem]) == full == float(rows["ref"]["max"]), rows["ref"]
    assert float(rows["oldest"][master.stem]) == full - 3.0, rows["oldest"]   # pick_victim's 3 points lost
    feedback = (out / "feedback" / "oldest_lab02_kv_cache.txt").read_text()
    assert "loses the least" in feedback and "pick_victim: 0 of 3 points" in feedback, feedback
    assert "Trying:" not in feedback and "Traceback" not in feedback, feedback   # otter's doctest log left out
    # what lab.grade measured in otter's kernel (the report file reached it through the environment)
    for student, marks in (("ref", ["block_hash: score 1.00", "preemption: score 1.00"]),
                           ("oldest", ["block_hash: score 1.00", "preemption: score 0.00"])):
        measured = (out / "feedback" / f"{student}_lab02_kv_cache.txt").read_text().partition(
            "What the grader measured")[2]
        assert all(mark in measured for mark in marks) and "- measure: " in measured, (student, measured)


def _labs_script():
    spec = importlib.util.spec_from_file_location("labs_script", REPO / "scripts" / "labs.py")
    labs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(labs)
    return labs


def test_submissions_follow_the_naming_rule(tmp_path):
    """Who handed in which lab comes from the file name alone: checkpoint copies and dot-folders are
    passed over; a copy, a file with no student, a second copy of one student's lab are listed."""
    names = ["alice/lab03_attention.ipynb", "alice_lab03_attention.ipynb", "al_smith_lab02_kv_cache.ipynb",
             "alice/.ipynb_checkpoints/lab03_attention-checkpoint.ipynb", ".trash/bob/lab03_attention.ipynb",
             "bob/lab03_attention-checkpoint.ipynb", "bob/lab03_attention-Copy1.ipynb", "lab03_attention.ipynb",
             "carol/notes.ipynb"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    found, refused = _labs_script().submissions(tmp_path, ["lab02_kv_cache", "lab03_attention"])
    assert [(p.relative_to(tmp_path).as_posix(), who, lab) for p, who, lab in found] == [
        ("al_smith_lab02_kv_cache.ipynb", "al_smith", "lab02_kv_cache"),
        ("alice/lab03_attention.ipynb", "alice", "lab03_attention")]
    assert [line.partition(":")[0] for line in refused] == [
        "alice_lab03_attention.ipynb", "bob/lab03_attention-Copy1.ipynb", "carol/notes.ipynb",
        "lab03_attention.ipynb"], refused
    assert "alice/lab03_attention.ipynb is already alice's lab03_attention" in refused[0]


def _otter_case(question: str, number: int, error: str, code: str = "assert r.passed, str(r)") -> str:
    """One failed test case as otter's results.json prints it (a doctest log)."""
    return (f"    {question} - {number} result:\n        \u274c Test case failed\n        Trying:\n            {code}\n"
            f"        Expecting nothing\n        {'*' * 70}\n        Line 1, in {question} {number - 1}\n"
            f"        Failed example:\n            {code}\n        Exception raised:\n"
            f"            Traceback (most recent call last):\n"
            f'              File "/usr/lib/python3.11/doctest.py", line 1353, in __run\n'
            f'                exec(compile(example.source, filename, "single",\n'
            f'              File "<doctest {question} {number - 1}[1]>", line 1, in <module>\n'
            f"                {code}\n"
            + "".join(f"            {line}\n" for line in error.splitlines()))


def test_feedback_is_a_line_per_test_then_what_the_grader_measured(tmp_path):
    """The feedback file: per scored question its points and one line per test case (public or
    hidden, passed or failed, and a failure's error where the grader's summary does not hold it),
    then each exercise's lab.grade summary from the report file (the last, if graded twice; a line
    not lab.grade's is passed over). Seen failing with otter's doctest log (each failure three times)."""
    labs = _labs_script()
    summary = "preemption: score 0.00\n  alone    FAILED\n  - alone: 40 lost"
    results = {"tests": [
        {"name": "Public Tests", "score": float("nan"), "output": "public summary"},
        {"name": "q1", "score": 3.0, "max_score": 3.0, "output": "q1 results: All test cases passed!"},
        {"name": "q2", "score": 0.0, "max_score": 3.0, "output": "q2 results:\n" + _otter_case("q2", 1, (
            "AssertionError: " + summary)) + "\n" + _otter_case("q2", 2, "AssertionError: " + summary)},
        {"name": "q3", "score": 0.0, "max_score": 3.0, "output": "q3 results:\n" + _otter_case(
            "q3", 1, "NameError: name 'tiled_attention' is not defined", "r = lab.check('x', tiled_attention)")}]}
    hidden = {"q1": [False, True], "q2": [False, True], "q3": [False, True]}
    report = tmp_path / "measured.jsonl"
    report.write_text('{"exercise": "block_hash", "summary": "block_hash: score 0.00 (first try)"}\n'
                      'not json: the notebook wrote here\n'
                      + json.dumps({"exercise": "preemption", "summary": summary}) + "\n"
                      '{"exercise": "block_hash", "summary": "block_hash: score 1.00\\n  - measure: 79 of 143"}\n')
    text = labs._feedback(results, report, hidden, ["the code cell starting `def tiled_attention(q, k, v, scale, "
                                                    "tile):` (code cell 4), its line 2: '(' was never closed"])
    assert "Trying:" not in text and "Traceback" not in text and "public summary" not in text, text
    assert text.startswith("Your notebook has a syntax error"), text
    assert ("q1: 3 of 3 points\n  public test 1: passed\n  hidden test 2: passed\n\n"
            "q2: 0 of 3 points\n  public test 1: failed (preemption: score 0.00; its messages are under "
            "'What the grader measured')\n  hidden test 2: failed (preemption: score 0.00; its messages") in text, text
    assert "NameError: name 'tiled_attention' is not defined" in text and "syntax error" in text.partition("q3:")[2]
    capture = {"tests": [{"name": "capture", "score": 0.0, "max_score": 0.0, "output": "All test cases passed!"}]}
    text0 = labs._feedback(capture, tmp_path / "none.jsonl", {"capture": [False]})
    assert "capture: not scored (0 points)" in text0 and "public test 1: ran" in text0, text0   # (seen: "passed")
    assert text.endswith("What the grader measured\n------------------------\n"
                         "block_hash: score 1.00\n  - measure: 79 of 143\n\n" + summary), text


def test_feedback_lists_questions_in_the_notebooks_order():
    """otter's results.json lists questions in an order that varies between runs: the feedback sorts
    them as the master notebook has them (seen varying before this key existed)."""
    key = _labs_script()._notebook_order("lab04_kernels_graphs")
    names = ["capture", "unknown", "bucket_for", "add_rms_norm"]
    assert [n for n in sorted(names, key=lambda n: key({"name": n}))] == [
        "add_rms_norm", "bucket_for", "capture", "unknown"]
