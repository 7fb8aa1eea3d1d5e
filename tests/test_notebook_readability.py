"""What a student sees in each chapter, checked without running it (issue 16, item 6).

- Tables go through `show_table` (HTML whose cells never wrap), never `print(format_table(...))`:
  Jupyter wraps a long printed line, and a wrapped text table is unreadable.
- The "## What you measured" heading is its own markdown cell, directly above the code cell that
  prints what the run measured (chapter 07 once had it at the end of another section's text).
"""
from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def printed_tables(nb) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "print(format_table(" in c.source]


def closing_heading_misplaced(nb) -> str:
    """Where a cell holds the "What you measured" heading, it holds only that, and a code cell follows."""
    cells = nb.cells
    for i, c in enumerate(cells):
        if c.cell_type == "markdown" and "What you measured" in c.source:
            if c.source.strip() != "## What you measured":
                return f"cell {i} mixes the heading with other text: {c.source[:60]!r}"
            if i + 1 == len(cells) or cells[i + 1].cell_type != "code":
                return f"cell {i}: the heading is not followed by its code cell"
    return ""


def test_rules_catch_planted_cases():
    bad = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print(format_table(rows))"),
        nbformat.v4.new_markdown_cell("Read the table.\n\n## What you measured"),
        nbformat.v4.new_code_cell("print(x)"),
    ])
    assert printed_tables(bad) == [0]
    assert closing_heading_misplaced(bad)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tables_are_html_and_the_closing_heading_sits_above_its_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert not printed_tables(nb), f"{path.name}: cells {printed_tables(nb)} print a text table; use show_table"
    assert not closing_heading_misplaced(nb), f"{path.name}: {closing_heading_misplaced(nb)}"
