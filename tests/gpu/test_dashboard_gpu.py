"""The dashboard's timeline panel on a GPU (run on the device, with the Jupyter wheels carried):
a graphed decode step is drawn as the GPU's kernels, not one opaque graph launch."""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.gpu
pytest.importorskip("ipywidgets")

from workbench import Optimizations  # noqa: E402
from workbench.assets import DEFAULT_MODEL_DIR  # noqa: E402
from workbench.ui import Switchboard  # noqa: E402


def test_timeline_panel_draws_the_kernels_inside_a_graph_replay():
    board = Switchboard(DEFAULT_MODEL_DIR, device="cuda", batch=2, prompt_len=16, new_tokens=8)
    board.select(Optimizations(attention="sdpa", fused_kernels=True, cuda_graphs=True))
    board.timeline.value = True
    assert board.run() is not None, board.status.value
    tl = board.timeline_panel.timeline
    assert tl is not None and tl.on_gpu and not tl.gpu_note, tl and tl.gpu_note
    decode = tl.only("decode")
    assert len(decode.steps) == 2
    gpu = [s for s in decode.spans if s.row == "gpu"]
    launches = [s for s in decode.spans if s.row == "launches"]
    # a replay is one cudaGraphLaunch a step on the launch row, but many kernels on the GPU row
    assert len(gpu) > 10 * len(decode.steps), len(gpu)
    assert len(launches) <= 4 * len(decode.steps), [s.name for s in launches]
    assert {s.family for s in gpu} >= {"matmul", "attention"}
    ax = board.timeline_panel.figure.axes[0]
    assert "decode" in ax.get_title() and "perfetto" in ax.get_title()
    if os.environ.get("WORKBENCH_SAVE_FIGURES"):   # the device run keeps the panel as a file
        path = os.path.join(os.environ["WORKBENCH_SAVE_FIGURES"], "dashboard-timeline-panel.png")
        with open(path, "wb") as f:
            f.write(bytes(board.timeline_panel.image.value))
