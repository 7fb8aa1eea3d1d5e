"""The kernel timeline and the decode-step breakdown, from a real profiler run of the tiny engine."""
from __future__ import annotations

import json
import re

import pytest

from workbench import LLM, Optimizations
from workbench.measure.breakdown import (CPU_IDLE_PART, IDLE_PART, Breakdown, breakdown_of, measure_breakdown, plot_breakdowns,
                                        read_breakdowns)
from workbench.measure.timeline import Span, family_of, plot_timelines, sweep


@pytest.fixture(scope="module")
def profiled(tiny_ckpt, tmp_path_factory):
    trace = tmp_path_factory.mktemp("trace") / "timeline.json"
    with LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), device="cpu", max_num_seqs=2,
             enable_prefix_caching=False) as llm:
        breakdown, timeline = measure_breakdown(llm, batch=2, decode_steps=3, trace_path=trace)
        shape = llm.model_config
    return breakdown, timeline, shape


def test_timeline_has_the_steps_and_families(profiled):
    _, tl, _ = profiled
    assert [w.kind for w in tl.steps] == ["prefill", "decode", "decode", "decode"]
    families = {s.family for s in tl.row("cpu ops")}
    assert {"matmul", "attention", "norm/elementwise", "sampling", "copy"} <= families, families
    assert all(s.step is not None and tl.steps[s.step].start_us <= s.start_us for s in tl.spans)
    assert not tl.row("gpu") and not tl.row("launches") and "no CUDA" in tl.gpu_note   # says why
    assert all(len(w.context_lens) == 2 for w in tl.decode_steps())
    trace = json.loads(open(tl.trace_path).read())            # the file Perfetto opens
    assert any(e.get("name", "").startswith("workbench.step") for e in trace["traceEvents"])
    fig = plot_timelines([tl, tl])
    assert len(fig.axes) == 2 and fig.axes[0].get_xlim() == fig.axes[1].get_xlim()


def test_breakdown_sums_to_the_profiled_step(profiled):
    b, tl, shape = profiled
    step = sum(w.us for w in tl.decode_steps()) / 3
    assert b.step_us == pytest.approx(step)
    assert abs(b.parts_sum_us - b.step_us) <= 0.05 * b.step_us, b
    assert CPU_IDLE_PART in b.parts and b.parts["CPU matmul"] > 0
    # the parts are measured apart from the step: ops alone fall short of it, by the host's share
    ops = sum(v for k, v in b.parts.items() if k != CPU_IDLE_PART)
    assert ops < b.step_us and b.parts[CPU_IDLE_PART] > 0
    assert b.floor_bytes > 0 and b.floor_us > 0 and "CPU memcpy" in b.floor_source
    assert b.unprofiled_step_us > 0 and "sum of the parts" in str(b)
    ax = plot_breakdowns([b])
    assert len(ax.patches) == len(b.parts)
    again = breakdown_of(tl, shape=shape, dtype_bytes=4)       # no bandwidth: the floor says so
    assert again.floor_us is None and "no bandwidth" in again.floor_source


def test_prefill_breakdown_sums_to_the_prefill_step(profiled):
    """The same timeline, its prefill step: the parts sum to that step, no floor (FLOPs set it
    too), the phase named in the record and the printout; an unknown phase is refused."""
    _, tl, shape = profiled
    b = breakdown_of(tl, shape=shape, dtype_bytes=4, phase="prefill")
    prefill = [w for w in tl.steps if w.kind == "prefill"]
    assert b.steps == len(prefill) == 1 and b.step_us == pytest.approx(prefill[0].us)
    assert b.step_us != pytest.approx(sum(w.us for w in tl.decode_steps()) / 3)   # not the decode steps
    assert abs(b.parts_sum_us - b.step_us) <= 0.05 * b.step_us and b.parts["CPU matmul"] > 0
    assert b.phase == "prefill" and b.floor_us is None and b.floor_bytes == 0
    assert "prefill step on" in str(b) and "floor" not in str(b)
    assert Breakdown.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    with pytest.raises(ValueError, match="phase='prefil': 'decode' or 'prefill'"):
        breakdown_of(tl, phase="prefil")


def test_breakdown_round_trips_through_its_record(profiled, tmp_path):
    b, _, _ = profiled
    assert Breakdown.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    record = {**b.to_dict(), "gpu": "cpu", "date": "2026-12-02", "command": "python -m workbench x"}
    path = tmp_path / "breakdown-cpu.json"
    path.write_text(json.dumps([record]))
    found, source = read_breakdowns(path)
    assert found == [b] and "2026-12-02" in source and "python -m workbench x" in source
    tampered = {**record, "parts": {**b.parts, CPU_IDLE_PART: b.parts[CPU_IDLE_PART] + b.step_us}}
    with pytest.raises(ValueError, match="edited or is damaged"):
        Breakdown.from_dict(tampered)
    with pytest.raises(ValueError, match="edited or is damaged"):   # the step edited: the parts no longer sum to it
        Breakdown.from_dict({k: v for k, v in {**record, "step_us": 2 * b.step_us}.items() if k != "parts_sum_us"})
    with pytest.raises(ValueError, match=re.escape(f"not a breakdown record ({b.label}: no step_us")):
        Breakdown.from_dict({k: v for k, v in record.items() if k != "step_us"})


def test_committed_breakdown_rebuilds():
    from workbench.measure.results import RESULTS_DIR
    found, source = read_breakdowns(RESULTS_DIR / "breakdown-h200.json")
    assert [b.label for b in found][:2] == ["naive", "sdpa"]
    assert source.startswith("drawn from docs/results/breakdown-h200.json: measured on NVIDIA H200")
    assert all(abs(b.parts_sum_us - b.step_us) <= 0.05 * b.step_us and b.floor_us for b in found)


def _bar(label: str, us: float) -> Breakdown:
    return Breakdown(label, "cpu", 1, us, {"GPU matmul": us / 4, IDLE_PART: 3 * us / 4}, floor_us=us / 10)


def test_plot_zooms_on_the_fast_settings():
    slow, fast, faster = _bar("slow", 100_000), _bar("fast", 2_800), _bar("faster", 2_000)
    ax = plot_breakdowns([slow, fast, faster], source="drawn from nowhere")
    overview, zoom = ax.figure.axes[:2]
    assert len(overview.patches) == 3 * 2 and len(zoom.patches) == 2 * 2      # slow left out of the zoom
    assert [t.get_text() for t in zoom.get_xticklabels()] == ["fast", "faster"]
    assert zoom.get_ylim()[1] < 10_000 and overview.get_ylim()[1] >= 100_000
    assert any("drawn from nowhere" in t.get_text() for t in overview.texts)
    legend = overview.figure.legends or [a.get_legend() for a in ax.figure.axes if a.get_legend()]
    assert len(legend) == 1 and len(legend[0].get_texts()) == 3             # two parts + the floor, once
    one = plot_breakdowns([fast, faster])                                     # within 10x: one panel
    assert len(one.figure.axes) == 1


def test_sweep_counts_overlaps_once_and_splits_gaps():
    spans = [Span("gpu", "gemm", "matmul", 10, 20, 0), Span("gpu", "gemm2", "matmul", 15, 25, 0),
             Span("gpu", "rms_norm", "norm/elementwise", 30, 40, 0), Span("gpu", "x", "other", 100, 110, 0)]
    busy, short, idle = sweep(spans, 0, 120)
    assert busy == {"matmul": 15, "norm/elementwise": 10, "other": 10}
    assert short == 5 and idle == 10 + 60 + 10                  # edges and the long wait
    assert sum(busy.values()) + short + idle == 120


def test_families():
    assert family_of("void cutlass::Kernel2<cutlass_80_wmma_tensorop_gemm>") == "matmul"
    assert family_of("flash_fwd_splitkv_kernel") == "attention"
    assert family_of("_add_rms_norm_kernel") == "norm/elementwise"
    assert family_of("aten::argmax") == "sampling"
    assert family_of("Memcpy HtoD (Pageable -> Device)") == "copy"
    assert family_of("aten::linear") == "matmul" and family_of("aten::mul") == "norm/elementwise"
    assert family_of("aten::arange") == "other"


@pytest.mark.gpu
def test_gpu_timeline_eager_and_graphs(tiny_ckpt):
    from workbench.attention.flash import flash_status
    attention = "flash" if flash_status()[0] else "sdpa"
    found = {}
    for graphs in (False, True):
        with LLM(tiny_ckpt, opts=Optimizations(attention=attention, fused_kernels=True, cuda_graphs=graphs),
                 max_num_seqs=1, enable_prefix_caching=False) as llm:
            found[graphs] = measure_breakdown(llm, batch=1, decode_steps=3)
    for graphs, (b, tl) in found.items():
        assert tl.on_gpu and tl.row("launches")
        assert tl.row("gpu") or tl.gpu_note                   # kernels, or a sentence why not
        assert abs(b.parts_sum_us - b.step_us) <= 0.05 * b.step_us
        assert b.floor_us and "HBM" in b.floor_source
    assert found[True][1].graph_launches >= 3 and found[False][1].graph_launches == 0


def test_cli_breakdown(capsys, tiny_ckpt, tmp_path):
    from workbench.__main__ import main
    out_json, figure = tmp_path / "b.json", tmp_path / "b.png"
    assert main(["measure", "breakdown", "--model", str(tiny_ckpt), "--steps", "1", "--json", str(out_json),
                 "--figure", str(figure), "--trace-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "skipping flash+fused: flash needs a CUDA GPU" in out and "CPU memcpy bandwidth, measured" in out
    rows = json.loads(out_json.read_text())
    assert [r["label"] for r in rows] == ["naive", "sdpa"]
    assert all(abs(r["parts_sum_us"] - r["step_us"]) <= 0.05 * r["step_us"] for r in rows)
    assert figure.read_bytes().startswith(b"\x89PNG") and (tmp_path / "timeline-naive.json").is_file()


def test_cli_prefill_breakdown(capsys, tiny_ckpt, tmp_path):
    from workbench.__main__ import main
    out_json = tmp_path / "p.json"
    assert main(["measure", "breakdown", "--model", str(tiny_ckpt), "--phase", "prefill",
                 "--prompt-len", "24", "--settings", "naive", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "naive prefill step on" in out and "us per prefill step" in out and "no floor_us" in out
    (row,) = json.loads(out_json.read_text())
    assert row["phase"] == "prefill" and row["steps"] == 1 and row["floor_us"] is None
    assert abs(row["parts_sum_us"] - row["step_us"]) <= 0.05 * row["step_us"] and row["unprofiled_step_us"] > 0
    # --steps counts decode steps: with --phase prefill it is refused, not ignored
    assert main(["measure", "breakdown", "--model", str(tiny_ckpt), "--phase", "prefill", "--steps", "2"]) == 2
    assert "--phase prefill breaks down the batch's one prefill step: drop --steps" in capsys.readouterr().err


def test_cli_redraws_from_a_results_file(capsys, tmp_path):
    from workbench.__main__ import main
    from workbench.measure.results import RESULTS_DIR
    figure = tmp_path / "redrawn.png"
    assert main(["measure", "breakdown", "--from-json", str(RESULTS_DIR / "breakdown-h200.json"),
                 "--figure", str(figure), "--note", "a note"]) == 0
    out = capsys.readouterr().out
    assert "drawn from docs/results/breakdown-h200.json: measured on NVIDIA H200" in out and "naive" in out
    assert figure.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("flag", [["--timeline-figure", "t.png"], ["--json", "again.json"], ["--settings", "naive"],
                                  ["--phase", "prefill"], ["--prompt-len", "128"]])
def test_cli_redraw_refuses_what_only_a_measuring_run_does(capsys, tmp_path, flag):
    """A results file keeps each step's parts, not its spans, and a redraw must not re-stamp a
    record with today's date: these flags are refused, not ignored."""
    from workbench.__main__ import main
    from workbench.measure.results import RESULTS_DIR
    assert main(["measure", "breakdown", "--from-json", str(RESULTS_DIR / "breakdown-h200.json"),
                 "--figure", str(tmp_path / "f.png"), *flag]) == 2
    err = capsys.readouterr().err
    assert f"{flag[0]} need(s) a measuring run: drop --from-json" in err
    assert not (tmp_path / "f.png").exists()
