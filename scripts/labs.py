"""Instructor workflow for labs/ (otter-grader): build student versions, grade submissions.

    python scripts/labs.py build [--out build/labs] [--run-tests]
        otter assign every labs/lab*.ipynb master -> OUT/<lab>/student/<lab>.ipynb (solutions and
        hidden tests stripped: hand these out) and OUT/<lab>/autograder/*.zip (keep these).
    python scripts/labs.py grade SUBMISSIONS [--out build/labs] [--table grades.csv]
        every *.ipynb under SUBMISSIONS is matched to its lab by file name (alice/lab03_attention.ipynb
        or alice_lab03_attention.ipynb), run by `otter run` in this environment (no Docker), and
        the per-student scores are written as one CSV row per student and printed; each submission's
        feedback (OUT's table folder/feedback/<student>_<lab>.txt) holds otter's output per question,
        then what the grader measured: every hidden test's lab.grade summary, pass or fail.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
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


def _who_and_lab(path: Path, labs: list[str]) -> tuple[str, str] | None:
    lab = next((name for name in labs if name in path.name), None)
    if lab is None:
        return None
    prefix = path.name.replace(lab, "").replace(".ipynb", "").strip("_- ")
    return (prefix or path.parent.name), lab


def grade(submissions: Path, out: Path, table: Path) -> list[dict]:
    labs = [m.stem for m in master_notebooks()]
    rows: dict[str, dict] = {}
    for path in sorted(submissions.rglob("*.ipynb")):
        match = _who_and_lab(path, labs)
        if match is None:
            print(f"skipping {path}: its name names no lab ({', '.join(labs)})")
            continue
        student, lab = match
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "measured.jsonl"   # lab.grade appends here, in otter's kernel (env inherited)
            run = subprocess.run(OTTER + ["run", "--no-logo", "-a", str(_autograder(out, lab)), "-o", tmp, str(path)],
                                 cwd=REPO, capture_output=True, text=True, env={**os.environ, REPORT_ENV: str(report)})
            results = Path(tmp) / "results.json"
            if not results.exists():
                print(f"{path}: otter could not grade it:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
                score = 0.0
            else:
                data = json.loads(results.read_text())
                score = _total(data)
                feedback = table.parent / "feedback" / f"{student}_{lab}.txt"
                feedback.parent.mkdir(parents=True, exist_ok=True)
                feedback.write_text(_feedback(data, report))
        rows.setdefault(student, {"student": student})[lab] = score
    columns = ["student"] + labs + ["total"]
    for row in rows.values():
        row["total"] = sum(row.get(lab, 0.0) for lab in labs)
    table.parent.mkdir(parents=True, exist_ok=True)
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows.values())
    print(table.read_text())
    return list(rows.values())


def _feedback(results: dict, report: Path) -> str:
    """otter's output per question (not the 'Public Tests' summary, which has no score and repeats
    them), then the grader's own summary for each exercise lab.grade reported (its last, should a
    notebook grade one twice): what was measured, which otter's 'passed' leaves out."""
    text = "\n\n".join(t.get("output", "") for t in results["tests"] if _scored(t))
    measured = {}
    for line in report.read_text(encoding="utf-8").splitlines() if report.exists() else []:
        try:
            entry = json.loads(line)
            measured[entry["exercise"]] = entry["summary"]
        except (ValueError, KeyError, TypeError):   # not lab.grade's line: the notebook wrote to the file
            continue
    if measured:
        text += "\n\nWhat the grader measured\n------------------------\n" + "\n\n".join(measured.values())
    return text


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
    g.add_argument("--table", type=Path, default=REPO / "build" / "labs" / "grades.csv")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        build(args.out, args.run_tests)
    else:
        grade(args.submissions, args.out, args.table)


if __name__ == "__main__":
    main()
