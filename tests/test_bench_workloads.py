"""The benchmark workloads: nano-vLLM's bench.py reproduced draw for draw, and sampling at the
workload's temperature reaching every request."""
import json
import random
import time
from types import SimpleNamespace

import pytest

from workbench.__main__ import main
from workbench.measure import bench


def nanovllm_bench_py_draws(num_seqs=256):
    """What nano-vLLM's bench.py draws, written as it writes it (global `random`, seed(0))."""
    random.seed(0)
    prompts = [[random.randint(0, 10000) for _ in range(random.randint(100, 1024))] for _ in range(num_seqs)]
    return prompts, [random.randint(100, 1024) for _ in range(num_seqs)]


def test_nanovllm_workload_is_bench_py_exactly():
    load = bench.make_workload("nanovllm", 151_936)
    prompts, max_tokens = nanovllm_bench_py_draws()
    assert load.output_tokens == 133_966                  # nano-vLLM's "Total: 133966tok"
    assert load.prompts == prompts and load.output_lens == max_tokens
    assert load.temperature == 0.6 and load.max_model_len == 4096 and load.note == ""
    # the project's own throughput workload is a different draw (greedy, ids over the vocabulary)
    own = bench.make_workload("throughput", 151_936)
    assert own.temperature == 0 and own.output_tokens != 133_966


def test_small_vocab_keeps_every_length():
    load = bench.make_workload("nanovllm", 512, num_seqs=8)
    prompts, max_tokens = nanovllm_bench_py_draws(8)
    assert [len(p) for p in load.prompts] == [len(p) for p in prompts] and load.output_lens == max_tokens
    assert max(max(p) for p in load.prompts) < 512 and "modulo" in load.note


def test_temperature_override_and_bad_value():
    assert bench.make_workload("single", 512, temperature=0.6).temperature == 0.6
    assert bench.make_workload("nanovllm", 512, num_seqs=2, temperature=0).temperature == 0
    with pytest.raises(ValueError, match="must be >= 0"):
        bench.make_workload("single", 512, temperature=-1)
    with pytest.raises(ValueError, match="nanovllm"):
        bench.make_workload("nano", 512)


class RecordingLLM:
    """Stands in for the engine: records the sampling params each generate receives."""

    class stats:
        host_seconds, steps, step_kind_seconds, step_kind_tokens = {}, 0, {"prefill": 0, "decode": 0}, \
            {"prefill": 0, "decode": 0}

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, use_tqdm=False):
        params = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append(params)
        return [SimpleNamespace(token_ids=[1] * p.max_tokens, ttft=0.1, tpot=0.01) for p in params]


def test_every_request_gets_the_workload_temperature_and_its_own_max_tokens():
    load = bench.make_workload("nanovllm", 512, num_seqs=3)
    llm = RecordingLLM()
    timed = bench.time_generate(llm, load, repeats=1)
    assert timed["output_tokens"] == sum(load.output_lens)
    warmup_params, timed_params = llm.calls
    assert all(p.temperature == 0.6 for p in warmup_params)   # the warm-up samples the same way
    assert [p.max_tokens for p in timed_params] == load.output_lens
    assert all(p.temperature == 0.6 and p.ignore_eos for p in timed_params)


def test_the_timed_generates_spread_is_reported_from_the_slowest_and_fastest(monkeypatch):
    """tok_s_min / tok_s_max: the tokens over the slowest and the fastest generate's time, around the median's."""
    from workbench.measure.timing import Spread
    load = bench.make_workload("nanovllm", 512, num_seqs=3)
    outs = RecordingLLM().generate(load.prompts, [SimpleNamespace(max_tokens=n) for n in load.output_lens])
    spread = Spread([200.0, 100.0, 400.0], 1, None)
    spread.last = outs
    monkeypatch.setattr(bench, "time_runs", lambda *a, **k: spread)
    timed = bench.time_generate(RecordingLLM(), load, repeats=3)
    tokens = sum(load.output_lens)
    assert timed["tok_s"] == pytest.approx(tokens / 0.2)
    assert (timed["tok_s_min"], timed["tok_s_max"]) == (pytest.approx(tokens / 0.4), pytest.approx(tokens / 0.1))


def test_tiny_model_runs_the_nanovllm_workload(tmp_path, tiny_ckpt):
    load = bench.make_workload("nanovllm", 512, num_seqs=2)
    load.prompts = [p[:16] for p in load.prompts]      # short, for a CPU: the path, not the speed
    load.output_lens = [5, 7]
    result = bench.bench_engine(tiny_ckpt, bench.Optimizations(attention="naive"), load, repeats=1,
                                max_num_seqs=2, max_model_len=64)
    assert result.output_tokens == 12 and result.tok_s > 0 and result.temperature == 0.6


def test_bench_single_at_temperature_on_cpu(tmp_path, tiny_ckpt):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "single", "--model", str(tiny_ckpt), "--new-tokens", "6", "--repeats", "1",
                 "--settings", "all_off", "--temperature", "0.6", "--json", str(out_json)]) == 0
    row = json.loads(out_json.read_text())[0]
    assert row["output_tokens"] == 6 and row["temperature"] == 0.6
    # the step columns count GPU kernels: on a CPU they are empty, and the row says why
    assert row["kernels_per_step"] is None and row["of_copy_bandwidth"] is None
    assert "no step columns on a CPU" in row["note"]


def test_step_columns_never_cost_the_timed_row(monkeypatch):
    """A profiler that cannot start (ncu holds it) leaves the measured row, with a note."""
    from workbench.measure import timeline
    load = bench.make_workload("single", 512, prompt_len=8, new_tokens=4)

    def busy(*args, **kwargs):
        raise RuntimeError("no timeline: torch.profiler failed (another profiler holds CUPTI)")
    monkeypatch.setattr(timeline, "profile_engine_steps", busy)

    from types import SimpleNamespace
    gpu_engine = SimpleNamespace(device="cuda:0")   # all step_profile reads before profiling
    out = bench.step_profile(gpu_engine, load, tpot_ms=1.0)
    assert out == {"note": "no step columns: no timeline: torch.profiler failed (another profiler holds CUPTI)"}


def test_step_columns_profile_the_rows_own_temperature(monkeypatch, tiny_ckpt):
    """A temperature-0.6 row's kernels and GPU time a step come from sampled steps (the sampler's
    kernels run), not from greedy ones: step_profile passes the workload's temperature, and the
    profiled requests (warm-up and measured) carry it."""
    from types import SimpleNamespace

    from workbench import LLM, Optimizations
    from workbench.measure import bench, steps, timeline
    queued, asked = [], []
    queue = steps.queue_random_prompts

    def recording_queue(llm, batch, prompt_len, params, rng):
        queued.append(params.temperature)
        queue(llm, batch, prompt_len, params, rng)
    monkeypatch.setattr(steps, "queue_random_prompts", recording_queue)
    with LLM(tiny_ckpt, opts=Optimizations.all_off(), device="cpu") as llm:
        timeline.profile_engine_steps(llm, prompt_len=8, decode_steps=1, temperature=0.6)
    assert queued == [0.6, 0.6], queued

    def stop(llm, **kwargs):
        asked.append(kwargs["temperature"])
        raise RuntimeError("stop here")
    monkeypatch.setattr(timeline, "profile_engine_steps", stop)
    for temperature in (0.6, 0.0):
        load = bench.make_workload("single", 512, prompt_len=8, new_tokens=4, temperature=temperature)
        bench.step_profile(SimpleNamespace(device="cuda:0"), load, tpot_ms=1.0)
    assert asked == [0.6, 0.0], asked


def test_bench_sampler_choice_reaches_the_engine(capsys, monkeypatch, tiny_ckpt):
    """--sampler fused is passed to the engine (EngineConfig.fused_sampling=True), which refuses it
    on a CPU without Triton's interpreter: a clear error before anything runs, not a silent eager
    row; --sampler eager runs there."""
    from workbench.__main__ import main
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = ["bench", "single", "--model", str(tiny_ckpt), "--settings", "all_off", "--new-tokens", "4", "--repeats", "1"]
    assert main([*args, "--temperature", "0.6", "--sampler", "fused"]) == 2
    assert "fused_sampling=True: its Triton kernel needs a CUDA GPU" in capsys.readouterr().err
    assert main([*args, "--temperature", "0.6", "--sampler", "eager"]) == 0
    assert "eager sampler" in capsys.readouterr().out
    # on a greedy workload the choice would never be used: refused before anything is built
    assert main([*args, "--sampler", "eager"]) == 2
    assert "the single workload is greedy: add --temperature 0.6" in capsys.readouterr().err


def test_batch_rows_profile_one_representative_decode_step(monkeypatch, tiny_ckpt):
    """A several-sequence row's step columns come from one decode step of the workload's
    sequences (at most max_num_seqs) at its mean context, prefilled before the profiler starts:
    the profiled steps are all decode steps of that batch (CPU run of the same profile)."""
    from types import SimpleNamespace

    from workbench import LLM, Optimizations
    from workbench.measure import bench, timeline
    load = bench.make_workload("batch", 512, num_seqs=12, prompt_len=10, new_tokens=6)
    asked = []

    def stop(llm, **kwargs):
        asked.append(kwargs)
        raise RuntimeError("stop here")
    real = timeline.profile_engine_steps
    monkeypatch.setattr(timeline, "profile_engine_steps", stop)
    out = bench.step_profile(SimpleNamespace(device="cuda:0", config=SimpleNamespace(max_num_seqs=8)), load, 1.0)
    assert out == {"note": "no step columns: stop here"}
    (kw,) = asked
    assert kw["batch"] == 8 and kw["prompt_len"] == 10 + 3 and kw["prefilled"] and kw["temperature"] == 0
    with LLM(tiny_ckpt, opts=Optimizations.all_off(), device="cpu", max_num_seqs=8) as llm:
        tl = real(llm, batch=8, prompt_len=13, decode_steps=2, prefilled=True)
    assert [w.kind for w in tl.steps] == ["decode", "decode"]
    assert [len(w.context_lens) for w in tl.steps] == [8, 8] and set(tl.steps[0].context_lens) == {14}
    # a batch whose prefill takes several chunked steps (8 x 40 tokens, 64 a step): the sequences
    # prefilled first decode meanwhile, and must not run out of tokens before the profile
    with LLM(tiny_ckpt, opts=Optimizations.all_off(), device="cpu", max_num_seqs=8,
             max_num_batched_tokens=64) as llm:
        tl = real(llm, batch=8, prompt_len=40, decode_steps=2, prefilled=True)
        from workbench.measure.steps import unprofiled_step_us
        assert unprofiled_step_us(llm, 8, 40, "decode") > 0
    assert [w.kind for w in tl.steps] == ["decode", "decode"] and [len(w.context_lens) for w in tl.steps] == [8, 8]


def test_bench_async_rounds_rows(capsys, tmp_path, tiny_ckpt):
    """--async-rounds off,on: a row each for every --decode-steps value that makes rounds (none at
    1, where the engine would refuse it); on with no rounds at all is refused before anything runs."""
    from workbench.__main__ import main
    out_json = tmp_path / "bench.json"
    args = ["bench", "single", "--model", str(tiny_ckpt), "--settings", "all_off", "--new-tokens", "9", "--repeats", "1"]
    assert main([*args, "--decode-steps", "1,4", "--async-rounds", "off,on", "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())
    assert [row["note"].split(";")[0] for row in rows] == ["all off", "all off, 4 decode steps, rounds read one at a time",
                                                            "all off, 4 decode steps, async rounds"]
    assert {row["output_tokens"] for row in rows} == {9}
    assert main([*args, "--async-rounds", "on"]) == 2
    assert "--async-rounds on overlaps multi-step rounds: add --decode-steps 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # argparse: a usage error
        main([*args, "--async-rounds", "maybe"])


def test_nanovllm_steps_hold_what_nanovllms_do(monkeypatch, tiny_ckpt):
    """The nanovllm workload's engine takes nano-vLLM's max_num_batched_tokens (16,384), the
    others 8,192; --max-batched-tokens overrides both."""
    class Built(Exception):   # stop before anything runs
        pass
    seen = []

    def engine(path, opts=None, **kw):
        seen.append(kw["max_num_batched_tokens"])
        raise Built
    monkeypatch.setattr("workbench.engine.LLM", engine)   # what bench_engine builds
    args = ["bench", "throughput", "--model", str(tiny_ckpt), "--settings", "all_off", "--repeats", "1"]
    for extra in (["--workload", "nanovllm"], [], ["--workload", "nanovllm", "--max-batched-tokens", "4096"]):
        with pytest.raises(Built):
            main([*args, *extra])
    assert seen == [16384, 8192, 4096]


def test_bench_engine_fields(capsys, tmp_path, tiny_ckpt):
    """--engine FIELD=VALUE reaches every row's engine and its note; a field that is not
    EngineConfig's, one the bench sets from its own flag (decode_steps: --decode-steps), or a value
    of the wrong type (a string for a bool: truthy, it would switch nothing off) is a usage error."""
    from workbench.__main__ import main
    out_json = tmp_path / "bench.json"
    args = ["bench", "single", "--model", str(tiny_ckpt), "--settings", "all_off", "--new-tokens", "5", "--repeats", "1"]
    assert main([*args, "--engine", "block_size=32", "--engine", "compile_prefill=false", "--json", str(out_json)]) == 0
    row = json.loads(out_json.read_text())[0]
    assert row["output_tokens"] == 5 and "block_size=32, compile_prefill=False" in row["note"]
    from workbench.measure.cli import _engine_field
    assert _engine_field("prefill_graph_sizes=[128,512]") == ("prefill_graph_sizes", (128, 512))   # a tuple field
    for bad in ("blok_size=32", "decode_steps=8", "block_size=thirty", 'compile_prefill="false"', "compile_prefill=null",
                "prefill_graph_sizes=[]", "prefill_graph_sizes=[16.5]", "prefill_graph_sizes=512"):
        with pytest.raises(SystemExit):
            main([*args, "--engine", bad])
    assert main([*args, "--engine", "block_size=33"]) == 2   # EngineConfig's own check: a clear error
    assert "block_size=33 must be a power of two" in capsys.readouterr().err


def test_requests_arriving_over_time(tiny_ckpt):
    """--arrival-rate: seeded Poisson arrivals, the first at 0; each request joins the engine at
    its time (its TTFT counts from there) and gets the tokens generate gives it; a bad rate or a
    wrong list of times is refused."""
    from workbench import LLM, Optimizations, SamplingParams
    load = bench.make_workload("batch", 512, num_seqs=6, prompt_len=8, arrival_rate=40.0)
    again = bench.make_workload("batch", 512, num_seqs=6, prompt_len=8, arrival_rate=40.0)
    assert load.arrival_s == again.arrival_s and load.arrival_s[0] == 0.0
    assert all(b > a for a, b in zip(load.arrival_s, load.arrival_s[1:])) and load.arrival_s[-1] > 0.02
    params = [SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)] * 6
    with LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), max_model_len=64) as llm:
        want = [o.token_ids for o in llm.generate(load.prompts, params, use_tqdm=False)]
        step, step_s = llm.step, []   # each step's wall time: a request arriving mid-step joins after it

        def timed_step():
            t0 = time.perf_counter()
            try:
                return step()
            finally:
                step_s.append(time.perf_counter() - t0)
        llm.step = timed_step
        outs = llm.generate_arriving(load.prompts, params, load.arrival_s)
        seqs_arrived = [o.stats.arrival_time for o in outs]
        with pytest.raises(ValueError, match="ascending"):
            llm.generate_arriving(load.prompts[:2], params[:2], [0.1, 0.0])
    assert [o.token_ids for o in outs] == want
    # each joined at its time, or after the step running then (on a loaded 2-core machine a
    # step can take 100+ ms): never early, never later than the longest step and some slack
    joined = [t - seqs_arrived[0] for t in seqs_arrived]
    late = max(step_s) + 0.05
    assert all(0 <= got - at < late for got, at in zip(joined, load.arrival_s)), (joined, load.arrival_s, late)
    with pytest.raises(ValueError, match="arrival_rate=0 must be > 0"):
        bench.make_workload("batch", 512, num_seqs=2, arrival_rate=0)


def test_bench_rows_with_arrivals(tmp_path, tiny_ckpt):
    from workbench.__main__ import main
    out_json = tmp_path / "bench.json"
    args = ["bench", "batch", "--model", str(tiny_ckpt), "--settings", "all_off", "--num-seqs", "4",
            "--new-tokens", "4", "--repeats", "1", "--arrival-rate", "50"]
    assert main([*args, "--json", str(out_json)]) == 0
    row = json.loads(out_json.read_text())[0]
    assert row["output_tokens"] == 16 and row["ttft_p90_ms"] >= row["ttft_ms"] > 0
    assert "requests arrive at 50/s" in row["note"]
    assert main([*args, "--peers"]) == 2


def test_bench_engine_keeps_the_spread_of_its_timed_generates(tiny_ckpt):
    """time_generate computed tok_s_min / tok_s_max, and bench_engine's row dropped them: a
    chapter reading the row had no spread to give a verdict from."""
    load = bench.make_workload("batch", 512, num_seqs=2, prompt_len=8, new_tokens=4)
    result = bench.bench_engine(tiny_ckpt, bench.Optimizations(attention="sdpa"), load, repeats=3, max_model_len=64)
    assert result.tok_s_min <= result.tok_s <= result.tok_s_max
    assert {"tok_s_min", "tok_s_max"} <= set(result.to_dict())


class TurnTakingLLM:
    """Stands in for the engine in bench_in_turns: each generate is logged by setting, and a
    setting's sequences get the TPOTs it was given, one list per call."""

    log = []

    def __init__(self, path, opts=None, **kwargs):
        self.name, self.kwargs, self.calls = opts.label(), kwargs, 0
        self.tpots = {"naive": [0.004, 0.002, 0.003, 0.001], "sdpa": [0.001, 0.001, 0.002, 0.001]}[self.name]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def timings(self):
        return {"load_s": 0.5}

    def generate(self, prompts, params, use_tqdm=False):
        params = params if isinstance(params, list) else [params] * len(prompts)
        self.log.append((self.name, max(p.max_tokens for p in params)))
        tpot = 1.0   # a warm-up's: never in a result
        if params[0].max_tokens > 8:   # a timed round (the warm-up asks for 8 tokens)
            tpot, self.calls = self.tpots[self.calls], self.calls + 1
        return [SimpleNamespace(token_ids=[1] * p.max_tokens, ttft=0.1, tpot=tpot) for p in params]


def test_bench_in_turns_alternates_the_settings_and_keeps_each_rounds_tpot(monkeypatch):
    """Chapter 06 timed eager, then compiled: on a shared CPU the ratio came out 0.89x in one run
    and 1.19x in the next. bench_in_turns warms every engine up, then times them in rounds, the
    order swapped every round, and keeps each round's TPOT (a round: the median over its
    sequences), so the ranges can go to the overlap rule."""
    monkeypatch.setattr("workbench.engine.LLM", TurnTakingLLM)
    TurnTakingLLM.log = []
    load = bench.make_workload("batch", 512, num_seqs=3, prompt_len=8, new_tokens=16)
    settings = {"eager": bench.Optimizations(attention="naive"), "other": bench.Optimizations(attention="sdpa")}
    out = bench.bench_in_turns("ckpt", settings, load, rounds=3)
    timed = [name for name, tokens in TurnTakingLLM.log if tokens == 16]
    assert [name for name, tokens in TurnTakingLLM.log[:2]] == ["naive", "sdpa"]   # warm-ups first
    assert timed == ["naive", "sdpa", "sdpa", "naive", "naive", "sdpa"]
    eager, other = out["eager"], out["other"]
    assert (eager.tpot_ms_min, eager.tpot_ms, eager.tpot_ms_max) == pytest.approx((2.0, 3.0, 4.0))
    assert (other.tpot_ms_min, other.tpot_ms, other.tpot_ms_max) == pytest.approx((1.0, 1.0, 2.0))
    assert eager.output_tokens == 48 and eager.tok_s_min <= eager.tok_s <= eager.tok_s_max
    assert eager.warmup == {"load_s": 0.5} and eager.setting == "naive" and "3 rounds" in eager.note


def test_bench_in_turns_sizes_each_cache_for_the_workload(monkeypatch):
    """Two engines share one machine: on a GPU each sizes its cache from the memory left, so the
    second would find none. Each gets the blocks its workload needs, unless the caller says."""
    monkeypatch.setattr("workbench.engine.LLM", TurnTakingLLM)
    built = []
    monkeypatch.setattr(TurnTakingLLM, "__enter__", lambda self: built.append(self.kwargs) or self)
    load = bench.make_workload("batch", 512, num_seqs=3, prompt_len=8, new_tokens=16)   # 24 tokens: 1 block of 128
    settings = {"a": bench.Optimizations(attention="naive"), "b": bench.Optimizations(attention="sdpa")}
    bench.bench_in_turns("ckpt", settings, load, rounds=1)
    bench.bench_in_turns("ckpt", settings, load, rounds=1, block_size=16)
    bench.bench_in_turns("ckpt", settings, load, rounds=1, num_kv_blocks=99)
    assert [kw["num_kv_blocks"] for kw in built] == [3, 3, 6, 6, 99, 99]
