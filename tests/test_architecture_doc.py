"""docs/ARCHITECTURE.md's import graph is the one the code has (scripts/architecture_graph.py).
Seen failing on the doc as it was before session 26 redrew it (two edges missing)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("architecture_graph", REPO / "scripts" / "architecture_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_flowchart(markdown: str) -> str:
    """The doc's first ```mermaid block."""
    block = re.search(r"```mermaid\n(.*?)```", markdown, re.S)
    assert block, "docs/ARCHITECTURE.md has no ```mermaid block"
    return block.group(1)


def test_the_documented_import_graph_is_the_codes():
    drawn = _script().flowchart()
    documented = documented_flowchart((REPO / "docs" / "ARCHITECTURE.md").read_text())
    missing = sorted(set(drawn.splitlines()) - set(documented.splitlines()))
    stale = sorted(set(documented.splitlines()) - set(drawn.splitlines()))
    assert not missing and not stale, (
        f"docs/ARCHITECTURE.md's import graph drifted from the code: edges the doc lacks {missing}, edges the code "
        f"no longer has {stale}. Re-draw it: python scripts/architecture_graph.py, and paste it into the mermaid block")

