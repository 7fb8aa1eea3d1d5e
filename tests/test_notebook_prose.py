"""No markdown cell in notebooks/ quotes a measured figure: prose cannot follow the measurement.

Prose is written once; numbers change with every run, machine and GPU. So a figure that a run
measures is printed by a code cell from the values, never typed into a markdown cell. The rule:

    A markdown cell may not contain a number with a unit of measurement -- a time (s, ms, us, µs),
    a rate (tok/s, GB/s, TB/s, FLOP/s), a size (B, KB, MB, GB, TB), a percentage (%), a ratio
    (5x, 3–4×), or a count of kernels / launches -- outside inline code and code blocks,
    unless the cell says where the figure comes from, either
      * by naming a committed results file (`docs/results/<name>.json`): the figure is history
        from that file, so say so (e.g. "on the H100, docs/results/gemv-h100.json, ..."); or
      * with a marker `<!-- figures: REASON -->`, REASON one of
          spec      a datasheet or hardware constant (an H100 has 50 MB of L2 cache),
          claim     a claim quoted to be checked (the source chapter's "5–10×"),
          modelled  arithmetic from the model's shape, not a measurement,
          input     a setting the notebook chooses (a 2 % near-tie threshold, prompt lengths).
      The marker is visible in the cell's source: a reviewer checks that the reason is true.

A markdown cell that needs a measured figure says "printed above" or "printed below" and lets
the code print it, with the interpretation that depends on it (see chapter 05's closing cells).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))

_NUMBER = r"(?<![\w.])~?\d[\d,]*(?:\.\d+)?"
_UNITS = (r"(?:tok/s|tokens/s|[GT]?FLOP/s|[KMGT]?B/s|[kKMGT]B|(?<=\s)B|µs|us|ms|s|%|kernels?|launch(?:es)?"
          r"|launch calls?|minutes?|seconds?)")
FIGURE = re.compile(rf"{_NUMBER}(?:\s*[–-]\s*\d[\d,.]*)?\s?{_UNITS}(?![\w/])"      # 1.64 ms, 20–40 %
                    rf"|{_NUMBER}(?:\s*[–-]\s*\d[\d,.]*)?[x×](?![\w])")            # 3–4×, 0.95x
CITES_RESULTS = re.compile(r"docs/results/[\w.-]+\.json")
MARKER = re.compile(r"<!--\s*figures:\s*(spec|claim|modelled|input)\b[^>]*-->")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def quoted_figures(markdown: str) -> list[str]:
    """The measured-looking figures a markdown cell quotes without saying where they come from."""
    if CITES_RESULTS.search(markdown) or MARKER.search(markdown):
        return []
    return [m.group(0) for m in FIGURE.finditer(CODE.sub("", markdown))]


def test_rule_catches_a_planted_figure(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("The step only goes from 1.64 to 1.43 ms: ~400 kernels."),
        nbformat.v4.new_markdown_cell("Graphs gave 2.5x, and 20–40 % was claimed; 8 GB moved."),
        nbformat.v4.new_markdown_cell("No figure here: `block_size=16`, layer 28, N = 4096 tokens."),
        nbformat.v4.new_markdown_cell("The chapter claims 5–10× less I/O. <!-- figures: claim -->"),
        nbformat.v4.new_markdown_cell("On the H100 (docs/results/gemv-h100.json) it took 12 us."),
        nbformat.v4.new_markdown_cell("A bad marker is no escape: 3 ms <!-- figures: because -->"),
    ])
    path = tmp_path / "99_planted.ipynb"
    nbformat.write(nb, path)
    found = [quoted_figures(c.source) for c in nbformat.read(path, as_version=4).cells]
    assert found[0] == ["1.43 ms", "~400 kernels"]          # "1.64" has no unit of its own
    assert found[1] == ["2.5x", "20–40 %", "8 GB"]
    assert found[2] == [] and found[3] == [] and found[4] == []
    assert found[5] == ["3 ms"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_markdown_quotes_no_measured_figure(path):
    nb = nbformat.read(path, as_version=4)
    bad = {cell.get("id", i): figures for i, cell in enumerate(nb.cells)
           if cell.cell_type == "markdown" and (figures := quoted_figures(cell.source))}
    assert not bad, (f"{path.name}: markdown cells quote figures (print them from code, or cite "
                     f"docs/results/<file>.json, or mark <!-- figures: spec|claim|modelled|input -->): {bad}")
