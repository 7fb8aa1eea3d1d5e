"""Test helper: a 'submission' = the student notebook with the master's solution cells pasted in."""
from __future__ import annotations

import nbformat


def solution_cells(master) -> list[str]:
    """Sources of the code cells holding solutions in a master notebook."""
    return [c.source for c in master.cells if c.cell_type == "code" and "# BEGIN SOLUTION" in c.source]


def fill(student_path, master_path, out_path, replace=None) -> None:
    """Paste each master solution over the student cell with the same first line.

    replace: {first line: new source} to submit a wrong solution instead."""
    student, master = nbformat.read(student_path, 4), nbformat.read(master_path, 4)
    answers = {src.splitlines()[0]: src for src in solution_cells(master)}
    answers.update(replace or {})
    for cell in student.cells:
        if cell.cell_type == "code" and cell.source and cell.source.splitlines()[0] in answers:
            cell.source = answers[cell.source.splitlines()[0]]
    nbformat.write(student, out_path)
