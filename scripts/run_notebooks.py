"""Execute notebooks and keep what they produced: executed copies and their figures.

    python scripts/run_notebooks.py OUT_DIR [notebooks/04_kernel_fusion.ipynb ...]   (default: all)

Unlike tests/test_notebooks.py (which only checks that every cell runs, and never writes
figures), this sets WORKBENCH_SAVE_FIGURES=OUT_DIR, so each notebook's `save_figure` calls write
PNGs there, and it writes each executed notebook to OUT_DIR as soon as it finishes -- a run cut
short by a time limit still leaves the notebooks that finished. Used on the GPU machine by
`scripts/device_check.sh notebooks`.
"""
import os
import signal
import sys
import time
from pathlib import Path

import nbclient
import nbformat

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in sys.argv[2:]] or sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    # A time limit's SIGTERM becomes SystemExit, so nbclient's cleanup shuts the kernel down:
    # an orphaned kernel would keep this process's stdout open and hang a pipe reading it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ["WORKBENCH_SAVE_FIGURES"] = str(out)   # the kernel inherits this environment
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    failed = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        try:
            nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                    resources={"metadata": {"path": str(path.parent)}}).execute()
            verdict = "ok"
        except Exception as err:   # keep going: report every notebook
            failed += 1
            verdict = f"FAILED: {type(err).__name__}: {str(err)[-1500:]}"
        nbformat.write(nb, out / path.name)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s, {verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
