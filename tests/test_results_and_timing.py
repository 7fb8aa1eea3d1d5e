"""Results files carry their GPU and are picked per GPU; CPU timings pin threads and show spread."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workbench.measure import results, timing

REPO = Path(__file__).resolve().parents[1]
H100, H200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"


def _write(folder: Path, name: str, gpu: str, date: str, tok_s: float) -> None:
    (folder / name).write_text(json.dumps([{"setting": "naive", "tok_s": tok_s, "gpu": gpu, "date": date}]))


def test_timed_runs_reads_the_files_command():
    """--repeats N from the command a results file records, None where it names none (seen failing with
    the count taken from the first number in the command, the 128 of --prompt-len)."""
    def measured(command):
        return results.Measured("x-h200.json", [], H200, "2026-12-05", command)
    assert measured("python -m workbench bench stack --prompt-len 128 --repeats 1 --json o.json").timed_runs == 1
    assert measured("python -m workbench bench single --repeats 3").timed_runs == 3
    assert measured("python -m workbench measure launches --prompt-len 128").timed_runs is None


def test_gpu_tag():
    assert results.gpu_tag(H100) == "h100"
    assert results.gpu_tag(H200) == "h200"
    assert results.gpu_tag("NVIDIA GeForce RTX 4090") == "rtx4090"


def test_latest_prefers_this_gpu_then_the_newest(tmp_path):
    _write(tmp_path, "stack-single-h100.json", H100, "2026-11-25", 1.0)
    _write(tmp_path, "stack-single-h200.json", H200, "2026-12-01", 2.0)
    _write(tmp_path, "stack-single-extra-h200.json", H200, "2026-12-09", 3.0)   # another kind
    on_h100 = results.latest("stack-single", tmp_path, gpu_here=H100)
    assert on_h100.name == "stack-single-h100.json" and on_h100.this_gpu
    assert "(not this machine)" not in on_h100.source
    on_cpu = results.latest("stack-single", tmp_path, gpu_here=None)
    assert on_cpu.name == "stack-single-h200.json" and on_cpu.gpu == H200 and on_cpu.date == "2026-12-01"
    assert "NVIDIA H200 (not this machine), 2026-12-01" in on_cpu.source
    with pytest.raises(FileNotFoundError, match="no results file launches-<gpu>.json"):
        results.latest("launches", tmp_path, gpu_here=None)


def test_stamp_adds_gpu_date_command_without_overwriting():
    rows = results.stamp([{"a": 1}, {"a": 2, "device": H100}, {"a": 3, "gpu": H200, "date": "x"}], command="cmd")
    assert rows[0]["gpu"] in ("cpu",) or rows[0]["gpu"].startswith("NVIDIA")
    assert rows[1]["gpu"] == H100 and rows[2]["gpu"] == H200 and rows[2]["date"] == "x"
    assert all(r["command"] == "cmd" and r["date"] for r in rows)


def test_committed_results_carry_their_gpu_and_date():
    for path in sorted((REPO / "docs" / "results").glob("*.json")):
        tag = path.stem.rsplit("-", 1)[-1]   # <kind>-<gpu tag>.json: the tag names the records' GPU
        for record in json.loads(path.read_text()):
            assert record.get("gpu") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", record.get("date", "")), path.name
            assert results.gpu_tag(record["gpu"]) == tag, (path.name, record["gpu"])


def test_notebooks_name_no_gpu_specific_results_file():
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code":
                assert not re.search(r"-h\d00\.(json|png)", source), f"{path.name}: {source[:200]}"


def test_chosen_threads(monkeypatch):
    monkeypatch.delenv("WORKBENCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert timing.chosen_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert timing.chosen_threads() == 2
    monkeypatch.setenv("WORKBENCH_THREADS", "3")
    assert timing.chosen_threads() == 3
    monkeypatch.setenv("WORKBENCH_THREADS", "many")
    with pytest.raises(ValueError, match="positive whole number"):
        timing.chosen_threads()


def test_busy_warning(monkeypatch):
    monkeypatch.setattr(timing.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert timing.busy_warning() is None
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (3.2, 1.0, 1.0))
    assert "load average 3.2 on 2 cores" in timing.busy_warning()


def test_time_runs_keeps_every_run():
    calls = []
    spread = timing.time_runs(calls.append, 1, repeats=4, warmup=2)
    assert len(calls) == 6 and len(spread.times_ms) == 4
    assert spread.min <= spread.median <= spread.max
    assert "4 runs" in str(spread) and "torch thread" in str(spread)
    with pytest.raises(ValueError, match="at least one run"):
        timing.time_runs(calls.append, 1, repeats=0)


def test_time_runs_returns_the_last_result_and_loop_seconds_counts_calls():
    calls = []
    spread = timing.time_runs(lambda: calls.append(1) or len(calls), repeats=3, warmup=1)
    assert spread.last == 4 and len(spread.times_ms) == 3
    assert timing.loop_seconds(lambda: calls.append(1), 5) >= 0 and len(calls) == 9


def test_profiled_records_the_calls_on_cpu():
    import torch
    run = timing.profiled(lambda: torch.ones(8).mul(2), 3)
    assert not run.unavailable and run.seconds > 0
    assert sum(e.name == "aten::mul" for e in run.events) == 3



def test_profiler_notes_stay_out_of_the_output_other_lines_pass(capfd):
    """kineto writes 'USDT: ... profiler_start/stop' to fd 2 on every start and stop: Jupyter
    showed a pair per profiled step in chapter 07's cell. Anything else still reaches stderr."""
    import os

    import torch
    with timing._without_kineto_status_lines():
        os.write(2, b"USDT:2026-12-02 SyncActivityProfilerHandler.cpp:52] profiler_start\nkeep this\n")
        os.write(2, b"STAGE:2026-12-02 Completed Stage: Warm Up\n")
    timing.profiled(lambda: torch.ones(8).mul(2), 2)
    err = capfd.readouterr().err
    assert "keep this" in err and "USDT:" not in err and "STAGE:" not in err, err


def test_profiled_says_why_when_the_profiler_cannot_start(monkeypatch):
    import torch.profiler

    class Broken:   # what a missing CUPTI looks like from python: the profiler fails to start
        def __init__(self, **kw):
            pass

        def __enter__(self):
            raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")

    monkeypatch.setattr(torch.profiler, "profile", Broken)
    ran = []
    run = timing.profiled(lambda: ran.append(1), 2)
    assert ran == [1, 1] and run.events == [] and run.prof is None
    assert "CUPTI_ERROR_NOT_INITIALIZED" in run.unavailable and "CUPTI is installed" in run.unavailable


def test_take_turns_swaps_the_order_every_round_and_keeps_each_spread():
    """take_turns: warm-ups first, then each function once a round, the order swapped every round
    (a slow moment falls on both alike); a Spread of `rounds` times each (seen failing with the
    order kept the same every round)."""
    from workbench.measure.timing import take_turns
    calls = []
    runs = take_turns({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=4, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(len(spread.times_ms) == 4 for spread in runs.values())


def _spread(*times_ms):
    return timing.Spread(list(times_ms), threads=1)


def test_faster_of_names_the_spread_whose_every_run_beat_the_others():
    """Times: lower is faster; the spread itself comes back, whichever order it is passed in (seen
    failing with the direction flipped, and with only the first argument able to win)."""
    quick, slow = _spread(1.0, 1.4, 1.2), _spread(2.0, 1.5, 3.0)
    assert timing.faster_of(quick, slow) is quick
    assert timing.faster_of(slow, quick) is quick


def test_faster_of_gives_no_verdict_where_the_spreads_overlap_or_touch():
    """Medians far apart are no verdict while one run of each crosses the other's range; ranges that
    touch (one's slowest run equals the other's fastest) are no verdict either (seen failing with
    <= for <, and with the fastest runs compared alone)."""
    assert timing.faster_of(_spread(1.0, 1.1, 2.5), _spread(2.0, 2.9, 3.0)) is None
    assert timing.faster_of(_spread(1.0, 2.0), _spread(2.0, 3.0)) is None
    assert timing.faster_of((2.0, 3.0), (1.0, 2.0)) is None
    assert timing.faster_of((1.0, 5.0), (2.0, 3.0)) is None   # one range inside the other


def test_faster_of_sets_aside_a_tenth_of_each_long_spread():
    """Thirty runs, one of them stalled 10x: the fastest and slowest tenth of each spread (3 runs)
    are set aside, so the stall cannot veto a setting that won clearly (seen failing with min..max,
    the old rule). Below ten runs every run still counts, and trimming does not hide ranges whose
    middles overlap (seen failing with a cut of 4 runs a side)."""
    quick = _spread(*([1.0 + i / 100 for i in range(29)] + [12.0]))
    slow = _spread(*[2.0 + i / 100 for i in range(30)])
    assert timing.verdict_range(quick) == (1.03, 1.26)
    assert timing.faster_of(quick, slow) is quick
    assert timing.faster_of(_spread(*([1.0] * 8 + [12.0])), _spread(*[2.0] * 9)) is None   # 9 runs: all count
    mixed = _spread(*([1.0] * 26 + [2.5] * 4))   # four slow runs of thirty: more than a tenth
    assert timing.faster_of(mixed, _spread(*[2.0] * 30)) is None
    assert timing.verdict_range((1.0, 12.0)) == (1.0, 12.0)   # a plain range: as given


def test_faster_of_reads_rates_with_higher_is_better():
    """Plain (min, max) ranges of tok/s: the higher range is the faster one; read as times, the
    same ranges name the other one (seen failing with the flag ignored, and with its direction flipped)."""
    eager, compiled = (90.0, 110.0), (150.0, 170.0)
    assert timing.faster_of(eager, compiled, higher_is_better=True) is compiled
    assert timing.faster_of(compiled, eager, higher_is_better=True) is compiled
    assert timing.faster_of(eager, compiled) is eager
    assert timing.faster_of((100.0, 150.0), (150.0, 170.0), higher_is_better=True) is None


def test_faster_of_refuses_a_range_given_max_first():
    """A (max, min) range would turn the verdict around silently (seen failing without the check)."""
    with pytest.raises(ValueError, match="pass \\(min, max\\)"):
        timing.faster_of((3.0, 1.0), (4.0, 5.0))
