"""The command line on a CPU: every command runs, and says 'unavailable' where it cannot measure."""
import json

import pytest

from workbench.__main__ import main


@pytest.fixture
def no_ncu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))          # no ncu on PATH ...
    monkeypatch.setenv("WORKBENCH_NCU", str(tmp_path / "missing-ncu"))
    import workbench.measure.hbm as hbm
    monkeypatch.setattr(hbm, "NCU_FALLBACK_DIRS", [], raising=False)   # ... nor in CUDA's folder


def test_doctor(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "flash-attn" in out and "ncu" in out


def test_check_on_cpu(capsys, tmp_path, tiny_ckpt):
    out_json = tmp_path / "parity.json"
    assert main(["check", "--model", str(tiny_ckpt), "--quick", "--prompts", "3", "--max-tokens", "6",
                 "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())
    assert {r["setting"] for r in rows} == {"sdpa", "naive+compile"}   # CUDA-only settings skipped, said so
    assert all(r["vs_hf_token_match_rate"] == 1.0 for r in rows)
    assert "skipping" in capsys.readouterr().out


def test_bench_single_on_cpu(tmp_path, tiny_ckpt):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "single", "--model", str(tiny_ckpt), "--new-tokens", "8", "--repeats", "1",
                 "--settings", "all_off", "--json", str(out_json)]) == 0
    row = json.loads(out_json.read_text())[0]
    assert row["output_tokens"] == 8 and row["tok_s"] > 0 and row["gpu"].startswith("cpu")
    assert set(row["host_ms_per_step"]) == {"schedule", "prepare", "launch", "sample", "postprocess"}
    assert row["host_ms_per_step"]["launch"] > 0


def test_bench_keeps_the_rows_of_a_run_stopped_half_way(tmp_path, tiny_ckpt, monkeypatch):
    """A device step's time limit can stop a long bench (the ladder is ~15 engines): every row
    measured before it must already be in the JSON."""
    from workbench.measure import bench
    real, calls = bench.bench_engine, []

    def stopped_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped by a time limit")
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "bench_engine", stopped_on_the_second)
    out_json = tmp_path / "bench.json"
    assert main(["bench", "single", "--model", str(tiny_ckpt), "--new-tokens", "4", "--repeats", "1",
                 "--settings", "all_off", "--decode-steps", "1,2", "--json", str(out_json)]) == 2
    rows = json.loads(out_json.read_text())
    assert len(rows) == 1 and rows[0]["note"].startswith("all off") and rows[0]["ratio"] == 1.0


def test_measure_commands_say_unavailable(capsys, tiny_ckpt, no_ncu):
    assert main(["measure", "launches", "--model", str(tiny_ckpt), "--steps", "2"]) == 0
    assert "no CUDA" in capsys.readouterr().out
    assert main(["measure", "hbm", "--model", str(tiny_ckpt), "--settings", "fast"]) == 0
    out = capsys.readouterr().out
    assert "ncu" in out and "modelled" in out
    assert main(["measure", "roofline", "--model", str(tiny_ckpt)]) == 0
    assert "unavailable" in capsys.readouterr().out


def test_hf_peer_on_cpu(tiny_ckpt):
    from workbench.measure import bench
    load = bench.make_workload("batch", 512, num_seqs=2, prompt_len=16, new_tokens=6)
    for static in (False, True):
        result = bench.bench_hf_generate(tiny_ckpt, load, static_compile=static, repeats=1)
        assert result.engine == "hf-transformers" and result.output_tokens == 12 and result.tok_s > 0


def test_failing_peer_becomes_an_unavailable_row(capsys):
    from workbench.measure import bench, format_table
    load = bench.make_workload("batch", 512, num_seqs=2, prompt_len=16, new_tokens=6)

    def broken():
        raise RuntimeError("accessing tensor output of CUDAGraphs that has been overwritten\nmore")
    row = bench.peer_or_unavailable(broken, load, "generate static cache")
    assert row.tok_s is None and row.note.startswith("unavailable: RuntimeError: accessing")
    assert "unavailable" in capsys.readouterr().out
    base = bench.BenchResult("batch", "workbench", "naive", 12, 1.0, 12.0)
    rows = bench.with_ratios([base, row], base)
    assert rows[1].ratio is None
    assert "nan" not in format_table([r.to_dict() for r in rows])


def test_hf_continuous_batching_peer_keeps_each_output_length(tiny_ckpt):
    from workbench.measure import bench
    load = bench.make_workload("batch", 512, num_seqs=3, prompt_len=16, new_tokens=6)
    load.output_lens = [3, 6, 9]
    result = bench.bench_hf_generate_batch(tiny_ckpt, load)
    assert result.setting == "generate_batch" and result.output_tokens == 18 and result.tok_s > 0


def test_bad_input_is_one_clear_line_not_a_traceback(capsys, tmp_path):
    assert main(["demo", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.json not found" in err and "Traceback" not in err
    assert main(["bench", "single", "--preset", "tiny", "--workdir", str(tmp_path), "--settings", "fastest"]) == 2
    assert "unknown setting(s) fastest; choose from: all_off, all_on" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # argparse: usage error
        main(["bench", "single", "--decode-steps", "0,x"])
    assert "want comma-separated integers >= 1" in capsys.readouterr().err
