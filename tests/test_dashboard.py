"""The switchboard, driven from code on the embedded sorter model (no browser, no threads)."""
from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from workbench import Optimizations  # noqa: E402
from workbench.assets import DEFAULT_MODEL_DIR  # noqa: E402
from workbench.ui import Switchboard  # noqa: E402

@pytest.fixture(scope="module")
def board():
    # device="cpu" even on a GPU box: the CUDA-only switches must then be disabled too.
    return Switchboard(DEFAULT_MODEL_DIR, device="cpu", batch=2, prompt_len=8, new_tokens=6)


def test_run_appends_history_and_plots(board):
    assert board.history == [] and board.plotted_runs() == 0
    board.attention.value = "naive"
    board.run_button.click()                       # synchronous: the run is done when click() returns
    assert len(board.history) == 1, board.status.value
    assert board.plotted_runs() == 1
    row = board.history[-1]
    assert row["setting"] == "naive" and row["device"] == "cpu"
    assert row["tok_s"] > 0 and row["tpot_ms"] > 0 and row["output_tokens"] == 2 * 6
    assert row["load_s"] is not None and row["compile_s"] is None
    # No GPU here: launches and HBM are reported as unavailable, with a reason, never a number.
    assert row["launch_calls_per_step"] is None and "CUDA" in row["launches_note"]
    assert row["hbm_bytes_per_step"] is None and row["hbm_note"]
    assert board.progress.value == 4 and "tok/s" in board.status.value
    assert bytes(board.plot.value).startswith(b"\x89PNG")
    assert "<td>naive</td>" in board.table.value

    board.attention.value = "sdpa"
    board.batch.value = 3
    board.run_button.click()
    assert [r["setting"] for r in board.history] == ["naive", "sdpa"]
    assert board.history[-1]["batch"] == 3 and board.history[-1]["output_tokens"] == 3 * 6
    assert board.plotted_runs() == 2
    assert not board.run_button.disabled

    board.decode_steps.value = 4                   # multi-step decoding: a workload knob, labelled
    board.run_button.click()
    row = board.history[-1]
    assert row["decode_steps"] == 4 and row["setting"] == "sdpa, 4 steps/round, async rounds"
    assert row["output_tokens"] == 3 * 6 and board.plotted_runs() == 3
    board.decode_steps.value = 1



def test_panels_that_cannot_run_collapse_to_lines_that_fit(board):
    """On a CPU the launch and HBM panels are not drawn: one line each under the plots says why,
    inside the figure (a single line of both reasons ran off both edges of the image)."""
    fig = board.figure
    assert len(fig.axes) == 2                      # only throughput and TPOT are drawn
    note = fig._supxlabel
    assert "launches per step" in note.get_text() and "HBM bytes per step" in note.get_text()
    renderer = fig.canvas.get_renderer() if hasattr(fig.canvas, "get_renderer") else None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = renderer or FigureCanvasAgg(fig).get_renderer()
    box = note.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)
    # the runs above had different workloads: the figure says so, and each tick names its own
    assert "different workloads" in fig._suptitle.get_text()
    assert all("x(" in t.get_text() for t in fig.axes[0].get_xticklabels()[:len(board.history)])

def test_cuda_only_switches_are_disabled_with_a_reason(board):
    for toggle in (board.fused, board.graphs, board.hbm):
        assert toggle.disabled
        assert toggle.tooltip.startswith("UNAVAILABLE here:"), toggle.tooltip
    assert "CUDA" in board.fused.tooltip and "CUDA" in board.graphs.tooltip
    assert not board.compile.disabled                 # torch.compile works on a CPU
    assert "flash" not in board.attention.options     # flash-attn needs a GPU
    assert "flash" in board.attention.tooltip and "UNAVAILABLE" in board.attention.tooltip
    assert board.blocked(Optimizations(attention="flash", cuda_graphs=True))
    with pytest.raises(ValueError, match="cannot run here"):
        board.select(Optimizations(attention="naive", fused_kernels=True))


def test_a_failed_run_is_reported_not_recorded(board):
    before = len(board.history)
    board.new_tokens.value = board.new_tokens.max
    board.prompt_len.value = board.prompt_len.max
    board.batch.value = 1
    board.attention.value = "naive"
    board.graphs.value = True                          # a disabled switch, set from code anyway
    assert board.run() is None
    assert board.status.value.startswith("error:") and len(board.history) == before
    board.graphs.value = False
    assert board.run() is not None and len(board.history) == before + 1


def test_export_csv_and_json(board, tmp_path):
    if not board.history:
        board.run_button.click()
    path = board.export_csv(tmp_path / "history.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(board.history)
    assert rows[0]["setting"] == board.history[0]["setting"]
    assert float(rows[0]["tok_s"]) == pytest.approx(board.history[0]["tok_s"])
    data = json.loads(board.export_json(tmp_path / "history.json").read_text())
    assert data == json.loads(json.dumps(board.history))
    board.export_path.value = str(tmp_path / "from-button")
    board.widget.children[-1].children[1].click()       # the "Export CSV" button
    assert (tmp_path / "from-button.csv").is_file() and "wrote" in board.status.value


def test_telemetry_panel_follows_the_run_live(board, tmp_path):
    board.telemetry.interval_s = 0.0             # redraw at every step, to see it update mid-run
    before = board.telemetry.redraws
    board.attention.value, board.batch.value, board.new_tokens.value, board.prompt_len.value = "naive", 2, 6, 8
    row = board.run()
    assert row is not None, board.status.value
    rows = board.telemetry.rows
    assert rows and rows[0]["kind"] == "prefill" and rows[-1]["running"] == 0
    # the watched pass is the warm-up, the whole workload once: 2 prompts of 8, 6 new tokens each
    # (the first from the prefill step)
    assert sum(r["decode_tokens"] for r in rows) + sum(r["prefill_tokens"] for r in rows) == 2 * (8 + 5)
    # drawn once per step while the pass ran, and once more when it ended
    assert board.telemetry.redraws - before == len(rows) + 1
    assert bytes(board.telemetry.image.value).startswith(b"\x89PNG")
    axes = board.telemetry.figure.axes
    assert len(axes) == 4 and axes[0].lines and len(axes[0].lines[0].get_xdata()) == len(rows)
    path = board.export_telemetry("csv", tmp_path / "t.csv")
    with open(path) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert json.loads(board.export_telemetry("json", tmp_path / "t.json").read_text()) == rows


def test_timeline_panel_draws_only_when_asked(board):
    board.attention.value, board.batch.value, board.new_tokens.value, board.prompt_len.value = "sdpa", 2, 6, 8
    board.timeline.value = False
    assert board.run() is not None, board.status.value
    panel = board.timeline_panel
    assert panel.timeline is None and "tick 'timeline'" in panel.note     # not profiled: says how to get it
    assert not any(ax.collections for ax in panel.figure.axes)

    board.timeline.value = True
    assert board.run() is not None, board.status.value
    tl = panel.timeline
    assert tl is not None and tl.label == "sdpa" and [w.kind for w in tl.steps].count("decode") == 2
    assert bytes(panel.image.value).startswith(b"\x89PNG")
    ax = panel.figure.axes[0]
    assert "decode" in ax.get_title() and "perfetto" in ax.get_title()
    assert "batch 2, 8-token prompts" in ax.get_title() and "capped" not in ax.get_title()
    # the CPU ops row is drawn; the launch and GPU rows are empty and the panel says why
    assert ax.collections and all(s.row == "cpu ops" for s in tl.spans)
    assert any("no CUDA" in t.get_text() for t in ax.texts)
    # the decode steps only: each labelled in place, or -- a step too narrow on this scale for its
    # label (one step can take several times the other on a busy machine) -- by its index, listed
    # with its kind in the title
    labels = [t.get_text() for t in ax.texts if t.get_text().startswith(("decode", "prefill"))]
    numbered = [t.get_text() for t in ax.texts if t.get_text().isdigit()]
    assert len(labels) + len(numbered) == 2 and all(t.startswith("decode") for t in labels), (labels, numbered)
    assert all(f"{i}: decode" in ax.get_title() for i in numbered), ax.get_title()
    board.timeline.value = False


def test_a_profiler_that_cannot_start_costs_the_timeline_not_the_run(board, monkeypatch):
    from workbench.measure import timeline

    def busy(*args, **kwargs):
        raise RuntimeError("no timeline: torch.profiler failed (another profiler holds CUPTI)")
    monkeypatch.setattr(timeline, "profile_engine_steps", busy)
    board.attention.value, board.batch.value, board.new_tokens.value, board.prompt_len.value = "sdpa", 1, 4, 8
    board.timeline.value = True
    before = len(board.history)
    row = board.run()
    board.timeline.value = False
    assert row is not None and len(board.history) == before + 1, board.status.value
    assert board.timeline_panel.timeline is None and "profiler could not run" in board.timeline_panel.note
