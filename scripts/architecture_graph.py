"""Draw workbench's package-level import graph (a Mermaid flowchart) from the code's own imports.

    python scripts/architecture_graph.py > docs/architecture_graph.mmd

docs/ARCHITECTURE.md embeds its output; re-run it after moving code (tests/test_architecture_doc.py
fails while the picture and the code disagree).
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "workbench"


def unit(path: Path) -> str:
    """A file's unit in the picture: its subpackage, or the top-level module's name."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0] if len(parts) > 1 else parts[0].strip("_")


def imported_units(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("workbench."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and path.name != "__init__.py" and len(
                path.relative_to(ROOT).parts) == 1 and node.module:
            found.add(node.module.split(".")[0])
    return found


def flowchart() -> str:
    """The Mermaid flowchart of the package-level imports, one edge a line, sorted."""
    edges = set()
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        src = unit(path)
        edges |= {(src, dst) for dst in imported_units(path) if dst != src and (ROOT / dst).exists()
                  or (ROOT / f"{dst}.py").exists() and dst != src}
    return "\n".join(["flowchart TD", *(f"    {src} --> {dst}" for src, dst in sorted(edges))]) + "\n"


def main() -> None:
    print(flowchart(), end="")


if __name__ == "__main__":
    sys.exit(main())
