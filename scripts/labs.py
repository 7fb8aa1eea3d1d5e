"""Instructor workflow for labs/ (otter-grader): build student versions, grade submissions.

    python scripts/labs.py build [--out build/labs] [--run-tests]
        otter assign every labs/lab*.ipynb master -> OUT/<lab>/student/<lab>.ipynb (solutions and
        hidden tests stripped: hand these out) and OUT/<lab>/autograder/*.zip (keep these).
    python scripts/labs.py grade SUBMISSIONS [--out build/labs] [--table OUT/grades.csv]
        every *.ipynb under SUBMISSIONS named by the rule <student>/<lab>.ipynb or
        <student>_<lab>.ipynb is run by `otter run` in this environment (no Docker); Jupyter's
        checkpoint copies (.ipynb_checkpoints/, *-checkpoint.ipynb, any dot-folder) are passed over,
        and any other name (lab03_attention-Copy1.ipynb, a <lab>.ipynb at the top with no student
        folder, a second copy of one student's lab) is listed as not graded. The scores are written
        as one CSV row per student (a column per lab, total, and max: the points of the labs that
        student handed in) and printed; each submission's feedback (the table's folder/feedback/
        <student>_<lab>.txt) holds each question's points and a line per test (public or hidden,
        passed or failed), then what the grader measured: every hidden test's lab.grade summary.
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from workbench.lab import REPORT_ENV, master_notebooks

REPO = Path(__file__).resolve().parents[1]
OTTER = [sys.executable, "-m", "otter"]


def build(out: Path, run_tests: bool = False) -> list[Path]:
    students = []
    for master in master_notebooks():
        dest = out / master.stem
        cmd = OTTER + ["assign", "--no-pdfs"] + ([] if run_tests else ["--no-run-tests"]) + [str(master), str(dest)]
        subprocess.run(cmd, check=True, cwd=REPO)
        students.append(dest / "student" / master.name)
        print(f"{master.name}: student version {students[-1]}")
    return students


def _autograder(out: Path, lab: str) -> Path:
    zips = sorted((out / lab / "autograder").glob("*.zip"))
    if not zips:
        raise SystemExit(f"no autograder for {lab} under {out}: run `make labs` first")
    return zips[-1]


NAMING = "<student>/<lab>.ipynb or <student>_<lab>.ipynb"


def _who_and_lab(relative: Path, labs: list[str]) -> tuple[str, str] | None:
    """(student, lab) of a submission by the naming rule, or None where its name does not follow it."""
    for lab in labs:
        if relative.name == f"{lab}.ipynb" and len(relative.parts) > 1:   # alice/lab03_attention.ipynb
            return relative.parent.name, lab
        suffix = f"_{lab}.ipynb"
        if relative.name.endswith(suffix) and len(relative.name) > len(suffix):   # alice_lab03_attention.ipynb
            return relative.name[:-len(suffix)], lab
    return None


def submissions(folder: Path, labs: list[str]) -> tuple[list[tuple[Path, str, str]], list[str]]:
    """(path, student, lab) of every submission under `folder`, and a line for each notebook not
    graded: a name off the rule, or a second copy of one student's lab (the first, in sorted order,
    is graded). Jupyter's autosave copies (.ipynb_checkpoints/, *-checkpoint.ipynb) and anything in
    a dot-folder are not submissions: passed over."""
    found, refused, seen = [], [], {}
    for path in sorted(folder.rglob("*.ipynb")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.stem.endswith("-checkpoint"):
            continue
        match = _who_and_lab(relative, labs)
        if match is None:
            refused.append(f"{relative}: not graded: name it {NAMING} (a lab: {', '.join(labs)})")
        elif match in seen:
            refused.append(f"{relative}: not graded: {seen[match]} is already {match[0]}'s {match[1]}")
        else:
            seen[match] = relative
            found.append((path, *match))
    return found, refused


def grade(submitted: Path, out: Path, table: Path | None = None) -> list[dict]:
    labs = [m.stem for m in master_notebooks()]
    table = table or out / "grades.csv"
    found, refused = submissions(submitted, labs)
    rows: dict[str, dict] = {}
    maxima: dict[str, float] = {}   # lab -> its points, from otter's results
    for path, student, lab in found:
        autograder = _autograder(out, lab)
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "measured.jsonl"   # lab.grade appends here, in otter's kernel (env inherited)
            run = subprocess.run(OTTER + ["run", "--no-logo", "-a", str(autograder), "-o", tmp, str(path)],
                                 cwd=REPO, capture_output=True, text=True, env={**os.environ, REPORT_ENV: str(report)})
            results = Path(tmp) / "results.json"
            if not results.exists():
                print(f"{path}: otter could not grade it:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
                score = 0.0
            else:
                data = json.loads(results.read_text())
                score = _total(data)
                maxima[lab] = float(sum(t.get("max_score", 0.0) for t in data["tests"] if _scored(t)))
                feedback = table.parent / "feedback" / f"{student}_{lab}.txt"
                feedback.parent.mkdir(parents=True, exist_ok=True)
                data["tests"].sort(key=_notebook_order(lab))   # otter's order varies from run to run
                feedback.write_text(_feedback(data, report, _hidden_cases(autograder), _syntax_errors(path)))
        rows.setdefault(student, {"student": student})[lab] = score
    columns = ["student"] + labs + ["total", "max"]
    for row in rows.values():
        row["total"] = sum(row.get(lab, 0.0) for lab in labs)
        row["max"] = sum(points for lab, points in maxima.items() if lab in row)   # the labs handed in
    table.parent.mkdir(parents=True, exist_ok=True)
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows.values())
    print(table.read_text())
    if maxima:
        print("points per lab: " + ", ".join(f"{lab} {points:g}" for lab, points in maxima.items())
              + " (max: the sum over the labs that student handed in)")
    if refused:
        print("Not graded (rename, then grade again):\n  " + "\n  ".join(refused))
    return list(rows.values())


def _notebook_order(lab: str):
    """A sort key putting otter's questions in the order of the lab's master notebook (unknown last)."""
    master = next(m for m in master_notebooks() if m.stem == lab)
    cells = json.loads(master.read_text(encoding="utf-8"))["cells"]
    names = re.findall(r"BEGIN QUESTION\s+name: (\w+)", "\n".join("".join(c["source"]) for c in cells))
    return lambda test: names.index(test["name"]) if test["name"] in names else len(names)


def _hidden_cases(autograder: Path) -> dict[str, list[bool]]:
    """question -> whether each of its test cases is hidden, read from the autograder's tests/*.py
    (otter's OK format: `test = {...}`, a literal)."""
    cases = {}
    with zipfile.ZipFile(autograder) as z:
        for name in z.namelist():
            if name.startswith("tests/") and name.endswith(".py"):
                for node in ast.parse(z.read(name)).body:
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "test":
                        test = ast.literal_eval(node.value)
                        cases[test["name"]] = [c.get("hidden", True) for suite in test["suites"]
                                               for c in suite["cases"]]
    return cases


def _syntax_errors(notebook: Path) -> list[str]:
    """A line for each code cell of the notebook that Python cannot parse (IPython's %magic and
    !shell lines aside): such a cell runs none of its lines, and the tests then fail with a
    NameError that names the function, not the syntax error."""
    errors = []
    cells = [c for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    for number, cell in enumerate(cells, 1):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
        try:
            compile("\n".join(lines), f"cell {number}", "exec")
        except SyntaxError as err:
            first = next((line for line in lines if line.strip()), "")
            errors.append(f"the code cell starting `{first.strip()[:60]}` (code cell {number}), its line "
                          f"{err.lineno}: {err.msg}")
    return errors


def _feedback(results: dict, report: Path, hidden: dict[str, list[bool]] | None = None,
              syntax_errors: list[str] = ()) -> str:
    """What a student reads: syntax errors first; then each scored question's points and one line
    per test case (public or hidden, passed or failed; a failure's error where the grader's summary
    does not already hold it -- otter's doctest log is left out); then "What the grader measured":
    the lab.grade summary of each exercise graded (its last, should a notebook grade one twice)."""
    measured = {}
    for line in report.read_text(encoding="utf-8").splitlines() if report.exists() else []:
        try:
            entry = json.loads(line)
            measured[entry["exercise"]] = entry["summary"]
        except (ValueError, KeyError, TypeError):   # not lab.grade's line: the notebook wrote to the file
            continue
    parts = []
    if syntax_errors:
        parts.append("Your notebook has a syntax error: a cell with one runs none of its lines, so what it "
                     "defines is missing and the tests that use it fail with a NameError.\n  "
                     + "\n  ".join(syntax_errors))
    for test in results["tests"]:
        if _scored(test):
            parts.append(_question(test, (hidden or {}).get(test["name"]), measured, bool(syntax_errors)))
    text = "\n\n".join(parts)
    if measured:
        text += "\n\nWhat the grader measured\n------------------------\n" + "\n\n".join(measured.values())
    return text


def _question(test: dict, hidden: list[bool] | None, measured: dict, syntax_error: bool) -> str:
    """'q: 1.5 of 3 points' and a line per test case, from otter's output for the question."""
    output, name = test.get("output", ""), test["name"]
    failed, listed = {}, []   # case number -> its failure, from otter's doctest log (listed only if one failed)
    for number, block in re.findall(rf"^\s*{re.escape(name)} - (\d+) result:\n(.*?)(?=^\s*{re.escape(name)} - \d+ "
                                    rf"result:|\Z)", output, flags=re.M | re.S):
        listed.append(int(number))
        if "Test case failed" in block:
            failed[int(number)] = _error(block)
    unscored = test.get("max_score") == 0   # e.g. the CUDA-graph capture: its check skips without a GPU
    lines = [f"{name}: not scored (0 points): a test 'ran' here may have checked nothing -- on a machine "
             f"without the hardware its check skips" if unscored else
             f"{name}: {test['score']:g} of {test.get('max_score', float('nan')):g} points"]
    count = len(hidden) if hidden else max(listed, default=0)
    if not count:   # otter's "All test cases passed!", with no count of them
        lines.append("  every test passed")
    for number in range(1, count + 1):
        kind = "" if hidden is None else ("hidden " if hidden[number - 1] else "public ")
        if number not in failed:
            lines.append(f"  {kind}test {number}: {'ran' if unscored else 'passed'}")
            continue
        error = failed[number]
        said = re.match(r"AssertionError: (\w+): score", error)
        if said and said.group(1) in measured:
            why = f"{error.splitlines()[0].partition(': ')[2]}; its messages are under 'What the grader measured'"
        elif error.startswith("NameError: name"):
            why = (f"{error} -- the grader ran your notebook top to bottom and it was not defined: "
                   + ("see the syntax error above" if syntax_error else
                      "did the cell that defines it raise an error, or is it renamed? Restart the kernel and "
                      "run all cells to see"))
        else:
            why = error
        lines.append(f"  {kind}test {number}: failed ({why})")
    return "\n".join(lines)


def _error(block: str) -> str:
    """The first exception a failed doctest case raised (its message, continuation lines kept),
    without the traceback; the block's last line where there is none."""
    lines = block.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Traceback (most recent call last):"), None)
    if start is None:
        return next((line.strip() for line in reversed(lines) if line.strip()), "failed")
    indent = len(lines[start]) - len(lines[start].lstrip())
    message = []
    for line in lines[start + 1:]:
        depth = len(line) - len(line.lstrip())
        if message and (depth < indent or not line.strip() or (depth == indent and line.strip() == "Trying:")):
            break
        if depth == indent or message:
            message.append(line[indent:])
    return "\n".join(message).strip()


def _scored(test: dict) -> bool:
    """A question's entry in otter's results.json, not the 'Public Tests' summary (no score: NaN)."""
    return isinstance(test.get("score"), (int, float)) and test["score"] == test["score"]


def _total(results: dict) -> float:
    """Points earned in otter's results.json (Gradescope format: one entry per question)."""
    return float(sum(t["score"] for t in results["tests"] if _scored(t)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", type=Path, default=REPO / "build" / "labs")
    b.add_argument("--run-tests", action="store_true", help="also run the masters' tests (slower)")
    g = sub.add_parser("grade")
    g.add_argument("submissions", type=Path)
    g.add_argument("--out", type=Path, default=REPO / "build" / "labs")
    g.add_argument("--table", type=Path, default=None, help="default: OUT/grades.csv (feedback/ beside it)")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        build(args.out, args.run_tests)
    else:
        grade(args.submissions, args.out, args.table)


if __name__ == "__main__":
    main()
