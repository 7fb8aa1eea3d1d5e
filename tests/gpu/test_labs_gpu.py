"""The labs on a GPU (run on the device): every reference solution passes every stage that can run,
and the GPU-only stages (fused-kernel timing, CUDA-graph capture and launch count) do run."""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]


def test_reference_solutions_pass_on_the_gpu(tmp_path):
    out = tmp_path / "labs.json"
    proc = subprocess.run([sys.executable, "scripts/lab_results.py", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    import json
    rows = {r["exercise"]: r for r in json.loads(out.read_text())}
    assert rows["cuda_graph"]["stages"] == {"alone": "pass", "engine": "skip", "measure": "pass"}
    assert rows["add_rms_norm"]["stages"]["measure"] == "pass"
