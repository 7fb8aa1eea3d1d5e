"""Benchmarks: the same workload under different switch settings, and peers, in one run.

Every number here is measured in this process, after warm-up (JIT, graph capture, compile),
with the GPU synchronized; ratios are against a baseline measured in the same run.

Workloads (Qwen3-0.6B shape, random weights: speed does not depend on weight values):
    single      one sequence, 128-token prompt, 512 new tokens: decode tok/s, TTFT, TPOT
    batch       64 sequences, 128-token prompts, 512 new tokens each
    throughput  the project's own: 256 sequences, prompt and output lengths uniform in
                [100, 1024], random token ids, EOS ignored, greedy: output tok/s
    nanovllm    nano-vLLM's bench.py exactly: the same Python `random` draws (seed 0, ids
                randint(0, 10000), lengths randint(100, 1024), then each max_tokens), temperature
                0.6, EOS ignored, max_model_len 4096: 133,966 output tokens; the engine's step
                holds up to 16,384 tokens, as nano-vLLM's does (the others: 8,192)

Every workload is greedy unless it says otherwise; `temperature` overrides that for any of them
(e.g. single-stream rows at nano-vLLM's 0.6).

Settings compared on a shared machine: `bench_in_turns` times them in alternating rounds and keeps
each one's slowest and fastest round, for the overlap rule (timing.faster_of).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import statistics
from dataclasses import asdict, dataclass, field
from functools import partial

import torch

from workbench.optimizations.board import Optimizations

from .timing import take_turns, time_runs


@dataclass
class BenchResult:
    workload: str
    engine: str                 # "workbench" or a peer's name
    setting: str                # switch label, or the peer's mode
    output_tokens: int
    seconds: float | None       # timed region only, median over repeats (None: unavailable)
    tok_s: float | None         # output tokens / seconds
    prefill_tok_s: float | None = None  # prompt tokens / seconds of pure-prefill steps
    decode_tok_s: float | None = None   # tokens / seconds of pure-decode steps (all sequences)
    ttft_ms: float | None = None        # median over requests (from each one's arrival)
    ttft_p90_ms: float | None = None    # the 90th percentile (nearest rank)
    tpot_ms: float | None = None
    # The spread a verdict must clear (timing.faster_of): tok/s of the slowest and the fastest timed
    # generate; bench_in_turns also keeps the lowest and highest of its rounds' TPOTs
    tok_s_min: float | None = None
    tok_s_max: float | None = None
    tpot_ms_min: float | None = None
    tpot_ms_max: float | None = None
    warmup: dict = field(default_factory=dict)   # load / compile / graph-capture seconds
    host_ms_per_step: dict = field(default_factory=dict)   # engine host time by phase (LLM.stats)
    ratio: float | None = None  # tok_s / baseline tok_s (same run)
    gpu: str = ""
    note: str = ""
    temperature: float | None = None   # of the workload's sampling (0: greedy)
    # A decode step seen from inside (rows on a GPU; step_profile): kernels and GPU kernel time
    # per step (torch.profiler), and the step's time against the bandwidth floor (single stream:
    # the timed TPOT; several sequences: one representative step, its note says which)
    kernels_per_step: float | None = None
    gpu_kernel_us_per_step: float | None = None
    of_copy_bandwidth: float | None = None   # floor (modelled bytes / measured copy bandwidth) / step time

    def to_dict(self) -> dict:
        return asdict(self)


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no GPU)"


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Workload:
    name: str
    prompts: list[list[int]]
    output_lens: list[int]
    temperature: float = 0.0            # 0: greedy
    max_model_len: int | None = None    # None: just long enough for the longest sequence
    max_num_batched_tokens: int = 8192  # tokens a step may hold (the bench's --max-batched-tokens overrides)
    arrival_s: list[float] | None = None   # when each request joins, seconds from the start (None: all at once)
    note: str = ""

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)


NANOVLLM_MAX_ID = 10_000   # bench.py's randint(0, 10000): ids 0..10000 inclusive


def nanovllm_workload(vocab: int, num_seqs: int = 256) -> Workload:
    """nano-vLLM's bench.py (GeeeekExplorer/nano-vllm), draw for draw: `seed(0)`, then every
    prompt (its length first, then its ids), then every sequence's max_tokens, all from Python's
    global `random` -- a fresh `random.Random(0)` makes the same draws. A model whose vocabulary
    cannot hold id 10,000 (the tiny test model) gets the ids modulo its vocabulary: every length,
    hence every token count, stays nano-vLLM's."""
    rng = random.Random(0)
    prompts = [[rng.randint(0, NANOVLLM_MAX_ID) for _ in range(rng.randint(100, 1024))] for _ in range(num_seqs)]
    output_lens = [rng.randint(100, 1024) for _ in range(num_seqs)]
    note = ""
    if vocab <= NANOVLLM_MAX_ID:
        prompts = [[t % vocab for t in p] for p in prompts]
        note = f"token ids modulo vocab {vocab} (nano-vLLM draws ids up to {NANOVLLM_MAX_ID})"
    # nano-vLLM's Config defaults: max_model_len 4096 (bench.py's own), max_num_batched_tokens 16,384
    return Workload("nanovllm", prompts, output_lens, temperature=0.6, max_model_len=4096,
                    max_num_batched_tokens=16384, note=note)


def make_workload(name: str, vocab: int, *, seed: int = 0, num_seqs: int | None = None,
                  prompt_len: int = 128, new_tokens: int = 512, min_len: int = 100, max_len: int = 1024,
                  temperature: float | None = None, arrival_rate: float | None = None) -> Workload:
    """`temperature`: None keeps the workload's own (0, greedy; nanovllm: 0.6). `arrival_rate`:
    requests a second, arriving as a Poisson process (seeded: the same times every run) in the
    workload's order, the first at 0; None: all at once."""
    rng = random.Random(seed)
    if name == "nanovllm":
        load = nanovllm_workload(vocab, num_seqs or 256)
    elif name == "throughput":
        num_seqs = num_seqs or 256
        prompts = [[rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))] for _ in range(num_seqs)]
        load = Workload(name, prompts, [rng.randint(min_len, max_len) for _ in range(num_seqs)])
    elif name in ("single", "batch"):
        num_seqs = 1 if name == "single" else num_seqs or 64
        prompts = [[rng.randrange(vocab) for _ in range(prompt_len)] for _ in range(num_seqs)]
        load = Workload(name, prompts, [new_tokens] * num_seqs)
    else:
        raise ValueError(f"unknown workload {name!r}; choose single, batch, throughput or nanovllm")
    if temperature is not None:
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
        load.temperature = temperature
    if arrival_rate is not None:
        if not arrival_rate > 0:
            raise ValueError(f"arrival_rate={arrival_rate} must be > 0 requests a second (or None: all at once)")
        gaps = random.Random(seed + 1)
        load.arrival_s = [0.0]
        for _ in load.prompts[1:]:
            load.arrival_s.append(load.arrival_s[-1] + gaps.expovariate(arrival_rate))
        load.note = "; ".join(filter(None, [load.note, f"requests arrive at {arrival_rate:g}/s (Poisson, seeded)"]))
    return load


def _rate(tokens: int, seconds: float) -> float | None:
    return tokens / seconds if tokens and seconds > 0 else None


def time_generate(llm, workload: Workload, *, repeats: int = 3, full_warmup: bool = False,
                  around_warmup=None) -> dict:
    """Warm up outside the timed region (a short generate, or the whole workload once), then
    time `repeats` generates of the workload with the GPU synchronized; medians, and the tok/s of
    the slowest and the fastest generate (tok_s_min, tok_s_max: the spread a verdict must clear).
    `around_warmup`: a context manager the warm-up runs inside (the dashboard's telemetry panel
    follows the warm-up live; the timed passes run unwatched)."""
    params = _sampling(workload)
    with around_warmup or contextlib.nullcontext():
        _warm_up(llm, workload, params, full_warmup)
    st = llm.stats
    host_before, steps_before = dict(st.host_seconds), st.steps
    kind_s_before, kind_tok_before = dict(st.step_kind_seconds), dict(st.step_kind_tokens)
    spread = time_runs(_timed_call(llm, workload, params), repeats=repeats, warmup=0, sync=_sync)
    outs = spread.last
    tokens, seconds = sum(len(o.token_ids) for o in outs), spread.median / 1e3
    tpots = [o.tpot for o in outs if o.tpot]
    ttfts = sorted(o.ttft for o in outs)
    return {"output_tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds,
            "tok_s_min": tokens / (spread.max / 1e3), "tok_s_max": tokens / (spread.min / 1e3),
            "ttft_ms": statistics.median(ttfts) * 1e3,
            "ttft_p90_ms": ttfts[min(int(0.9 * len(ttfts)), len(ttfts) - 1)] * 1e3,
            "tpot_ms": statistics.median(tpots) * 1e3 if tpots else None,
            **{f"{kind}_tok_s": _rate(st.step_kind_tokens[kind] - kind_tok_before[kind],
                                      st.step_kind_seconds[kind] - kind_s_before[kind])
               for kind in ("prefill", "decode")},
            "host_ms_per_step": {phase: round(1e3 * (total - host_before[phase]) /
                                              max(llm.stats.steps - steps_before, 1), 4)
                                 for phase, total in llm.stats.host_seconds.items()}}


def _sampling(workload: Workload) -> list:
    """Each request's sampling: the workload's temperature, its own output length, EOS ignored."""
    from workbench.engine import SamplingParams
    return [SamplingParams(temperature=workload.temperature, max_tokens=n, ignore_eos=True)
            for n in workload.output_lens]


def _warm_up(llm, workload: Workload, params: list, full_warmup: bool = False) -> None:
    """The untimed warm-up: a short generate of two requests, or the whole workload once."""
    from workbench.engine import SamplingParams
    if full_warmup:   # also covers compile's re-specializations on this workload's shapes
        llm.generate(workload.prompts, params, use_tqdm=False)
    else:
        llm.generate(workload.prompts[:2], SamplingParams(temperature=workload.temperature, max_tokens=8,
                                                          ignore_eos=True),
                     use_tqdm=False)


def _timed_call(llm, workload: Workload, params: list):
    """What a timed run calls: every request at once, or each joining at its arrival time (its TTFT
    then counts from there)."""
    if workload.arrival_s is not None:
        return partial(llm.generate_arriving, workload.prompts, params, workload.arrival_s)
    return partial(llm.generate, workload.prompts, params, use_tqdm=False)


def bench_in_turns(model_dir, settings: dict[str, Optimizations], workload: Workload, *, rounds: int = 6,
                   **engine_kwargs) -> dict[str, BenchResult]:
    """bench_engine for several settings at once, their timed runs taking turns: every engine is
    built (its start-up timed, as bench_engine's) and warmed up, then each round runs the workload
    once on each engine, the order swapped every round (timing.take_turns). A slow moment of a
    shared machine then falls on every setting alike; timed one after the other, two settings can
    differ by more than the switch does (chapter 06 on a CPU: 0.89x in one run, 1.19x in the next).

    {name: BenchResult}, names as in `settings`: tok_s and seconds from the median round, tok_s_min
    and tok_s_max from the slowest and the fastest; tpot_ms the median of the rounds' TPOTs (a
    round's TPOT: the median over its sequences), tpot_ms_min and tpot_ms_max the lowest and the
    highest; ttft_ms the median of the rounds' medians. Compare two settings with timing.faster_of
    on those ranges. No step columns (bench_engine's step_profile).

    The engines are open together, so each KV cache holds just the workload's sequences at full
    length (num_kv_blocks), unless engine_kwargs sets num_kv_blocks or kv_cache_gib: on a GPU an
    engine sizes its cache from the memory left, and the second would find none."""
    from workbench.config import EngineConfig
    from workbench.engine import LLM
    engine_kwargs = _engine_kwargs(workload, engine_kwargs)
    if engine_kwargs.get("num_kv_blocks") is None and engine_kwargs.get("kv_cache_gib") is None:
        size = engine_kwargs.get("block_size", EngineConfig.block_size)
        engine_kwargs["num_kv_blocks"] = sum(-(-(len(p) + n) // size)
                                             for p, n in zip(workload.prompts, workload.output_lens))
    params = _sampling(workload)
    outputs = {name: [] for name in settings}   # every round's outputs, for its TPOT

    def keeping(name, call):
        def run():
            outs = call()
            outputs[name].append(outs)   # (one list append: nothing against a generate)
            return outs
        return run

    with contextlib.ExitStack() as engines:
        llms = {name: engines.enter_context(LLM(model_dir, opts=opts, **engine_kwargs))
                for name, opts in settings.items()}
        for llm in llms.values():
            _warm_up(llm, workload, params)
        spreads = take_turns({name: keeping(name, _timed_call(llm, workload, params)) for name, llm in llms.items()},
                             rounds=rounds, warmup=0, sync=_sync)
        warmups = {name: {k: round(v, 2) for k, v in llm.timings().items()} for name, llm in llms.items()}
    results = {}
    for name, spread in spreads.items():
        tokens = sum(len(o.token_ids) for o in outputs[name][-1])
        tpots = [statistics.median(t) * 1e3 for t in ([o.tpot for o in outs if o.tpot] for outs in outputs[name]) if t]
        ttfts = [statistics.median(o.ttft for o in outs) * 1e3 for outs in outputs[name]]
        others = ", ".join(other for other in settings if other != name)
        results[name] = BenchResult(
            workload.name, "workbench", settings[name].label(), tokens, spread.median / 1e3,
            tokens / (spread.median / 1e3), ttft_ms=statistics.median(ttfts),
            tpot_ms=statistics.median(tpots) if tpots else None,
            tok_s_min=tokens / (spread.max / 1e3), tok_s_max=tokens / (spread.min / 1e3),
            tpot_ms_min=min(tpots, default=None), tpot_ms_max=max(tpots, default=None),
            warmup=warmups[name], gpu=gpu_name(), temperature=workload.temperature,
            note=f"timed in turns with {others}: {rounds} rounds")
    return results


@functools.cache
def _copy_bandwidth(device: str):
    """The copy bandwidth, measured once per process: every row of a run shares one figure."""
    from .roofline import step_bandwidth
    return step_bandwidth(device)


def step_profile(llm, workload: Workload, tpot_ms: float | None) -> dict:
    """The step columns of a row on a GPU: kernels and GPU kernel time of a decode step, and how
    close its time came to the floor (modelled bytes of the step / the copy bandwidth measured
    here / the step's time). Profiled at the workload's temperature (a sampled step runs the
    sampler's kernels, a greedy one an argmax), after the timed runs.

    Single stream: two decode steps profiled after a prompt of the workload's length; the step's
    time is the timed TPOT, the bytes those of the mean context. Several sequences: a batch step
    depends on its mix, so the row measures one representative step and says so in its note --
    the workload's sequences (at most max_num_seqs) decoding together at its mean context (mean
    prompt + half the mean output), prefilled before the profiler starts; the step's time is the
    median of five such steps timed without the profiler."""
    if not str(llm.device).startswith("cuda"):
        return {"note": "no step columns on a CPU (they count GPU kernels)"}
    try:   # the timed row stands whatever happens here (a busy profiler, a batch that does not
        # fit): the columns are left empty and the note says why
        return _step_columns(llm, workload, tpot_ms)
    except Exception as err:   # RuntimeError: our own sentence; anything else: its type too
        return {"note": f"no step columns: {err if isinstance(err, RuntimeError) else f'{type(err).__name__}: {err}'}"}


def _step_columns(llm, workload: Workload, tpot_ms: float | None) -> dict:
    from .roofline import decode_step
    from .steps import unprofiled_step_us
    from .timeline import profile_engine_steps, sweep
    single = len(workload.prompts) == 1
    if single:
        batch, context = 1, len(workload.prompts[0])
    else:
        batch = min(len(workload.prompts), llm.config.max_num_seqs)
        context = round(statistics.fmean(map(len, workload.prompts)) + statistics.fmean(workload.output_lens) / 2)
    tl = profile_engine_steps(llm, batch=batch, prompt_len=context, decode_steps=2,
                              temperature=workload.temperature, prefilled=not single)
    decodes = tl.decode_steps()
    if not decodes:
        return {"note": "no step columns: the profiled steps held no decode step"}
    kernels = [tl.row("gpu", w.index) for w in decodes]
    busy = [sum(sweep(k, w.start_us, w.end_us)[0].values()) for k, w in zip(kernels, decodes)]
    out = {"kernels_per_step": statistics.fmean(len(k) for k in kernels),
           "gpu_kernel_us_per_step": statistics.fmean(busy)}
    if single:
        step_ms, lens = tpot_ms, [context + workload.output_lens[0] // 2]
    else:   # the bytes of the step profiled: its sequences' own lengths
        step_ms = unprofiled_step_us(llm, batch, context, "decode", temperature=workload.temperature) / 1e3
        lens = decodes[-1].context_lens
        out["note"] = (f"step columns: one decode step of {len(lens)} sequences at context ~{context} (the "
                       "workload's means), profiled and timed apart from the run")
    bandwidth = _copy_bandwidth(str(llm.device))
    if step_ms and bandwidth.available:
        floor = decode_step(llm.model_config, lens, torch.finfo(llm.dtype).bits // 8).bytes
        out["of_copy_bandwidth"] = floor / bandwidth.bandwidth / (step_ms / 1e3)
    return out


def _engine_kwargs(workload: Workload, engine_kwargs: dict) -> dict:
    """The engine a bench builds for `workload`: long enough for its longest sequence (nanovllm:
    its own 4096), no prefix caching, the workload's tokens a step; engine_kwargs win."""
    max_len = max(len(p) for p in workload.prompts) + max(workload.output_lens) + 1
    max_len = workload.max_model_len or max(max_len, 256)
    return {"max_model_len": max_len, "enable_prefix_caching": False,
            "max_num_batched_tokens": workload.max_num_batched_tokens, **engine_kwargs}


def bench_engine(model_dir, opts: Optimizations, workload: Workload, *, repeats: int = 3,
                 **engine_kwargs) -> BenchResult:
    """Build the engine (its warm-up included), time the workload (time_generate), then look
    inside one decode step (step_profile: untimed, after the timed runs)."""
    from workbench.engine import LLM
    with LLM(model_dir, opts=opts, **_engine_kwargs(workload, engine_kwargs)) as llm:
        timed = time_generate(llm, workload, repeats=repeats)
        warmup = {k: round(v, 2) for k, v in llm.timings().items()}
        inside = step_profile(llm, workload, timed["tpot_ms"])
    return BenchResult(workload.name, "workbench", opts.label(), timed["output_tokens"], timed["seconds"],
                       timed["tok_s"], prefill_tok_s=timed["prefill_tok_s"], decode_tok_s=timed["decode_tok_s"],
                       ttft_ms=timed["ttft_ms"], ttft_p90_ms=timed["ttft_p90_ms"], tpot_ms=timed["tpot_ms"],
                       tok_s_min=timed["tok_s_min"], tok_s_max=timed["tok_s_max"], warmup=warmup,
                       host_ms_per_step=timed["host_ms_per_step"], gpu=gpu_name(),
                       temperature=workload.temperature, **inside)


# Peers ----------------------------------------------------------------------------------------
def bench_hf_generate(model_dir, workload: Workload, *, static_compile: bool = False, repeats: int = 2) -> BenchResult:
    """HF transformers `generate`, one sequence at a time: eager with a DynamicCache, or with a
    static cache, for which `generate` compiles the forward itself on a GPU (its compile_config).
    Wrapping model.forward in torch.compile by hand instead fails on the H100 (torch 2.11):
    the cache update reads a CUDA-graph output a later replay has overwritten."""
    from workbench.reference import load_hf_model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_hf_model(str(model_dir), dtype=torch.bfloat16 if device == "cuda" else torch.float32, device=device)
    model.config._attn_implementation = "sdpa"
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if static_compile:
        model.generation_config.cache_implementation = "static"

    def run():
        tokens = 0
        for prompt, n in zip(workload.prompts, workload.output_lens):
            ids = torch.tensor([prompt], device=device)
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
            tokens += out.shape[1] - ids.shape[1]
        return tokens

    warm = time_runs(run, repeats=1, warmup=0, sync=_sync).median / 1e3   # warm-up (compiles, captures)
    spread = time_runs(run, repeats=repeats, warmup=0, sync=_sync)
    tokens, seconds = spread.last, spread.median / 1e3
    mode = ("generate static cache" + (" (+ HF's auto-compile)" if device == "cuda" else "")
            if static_compile else "generate eager")
    return BenchResult(workload.name, "hf-transformers", mode, tokens, seconds, tokens / seconds,
                       warmup={"first_run_s": round(warm, 2)}, gpu=gpu_name())


def bench_hf_generate_batch(model_dir, workload: Workload) -> BenchResult:
    """HF transformers' continuous batching (paged attention), on the same requests as the
    engine: each with its own output length, EOS ignored. Its manager is the one
    `generate_batch` uses; requests go in one by one so each keeps its length. The manager's
    warm-up (graph pre-capture) runs before the clock starts."""
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16,
                                                 attn_implementation="paged|sdpa").to(device).eval()
    config = GenerationConfig(max_new_tokens=max(workload.output_lens), do_sample=False, eos_token_id=-1,
                              pad_token_id=0)
    hints = WorkloadHints(max_prompt_length=max(len(p) for p in workload.prompts),
                          max_generated_length=max(workload.output_lens), num_requests=len(workload.prompts))
    with torch.no_grad(), model.continuous_batching_context_manager(
            generation_config=config, block=True, timeout=30, workload_hints=hints) as manager:
        def serve() -> int:
            for i, (prompt, n) in enumerate(zip(workload.prompts, workload.output_lens)):
                manager.add_request(prompt, request_id=f"req_{i}", max_new_tokens=n)
            tokens = finished = 0
            while finished < len(workload.prompts):
                result = manager.get_result(timeout=1)
                if result is not None and result.is_finished():
                    tokens, finished = tokens + len(result.generated_tokens), finished + 1
                elif result is None and not manager.is_running():
                    raise RuntimeError(f"HF's batching loop stopped after {finished} of "
                                       f"{len(workload.prompts)} requests")
            return tokens

        spread = time_runs(serve, repeats=1, warmup=0, sync=_sync)   # one run: the requests are used up
        tokens, seconds = spread.last, spread.median / 1e3
    del model
    return BenchResult(workload.name, "hf-transformers", "generate_batch", tokens, seconds, tokens / seconds,
                       gpu=gpu_name())


def peer_or_unavailable(run, workload: Workload, mode: str) -> BenchResult:
    """run() -> BenchResult, or, when the peer fails, a row that says why and holds no numbers:
    one peer's failure must not lose the measurements made before it."""
    try:
        return run()
    except Exception as err:   # noqa: BLE001 -- any failure of a third-party peer is reported
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
        print(f"  peer {mode} unavailable: {reason}", flush=True)
        return BenchResult(workload.name, "hf-transformers", mode, 0, None, None,
                           gpu=gpu_name(), note=f"unavailable: {reason}")


# Ladders and named settings ------------------------------------------------------------------
def bench_presets() -> dict[str, tuple[str, "Optimizations"]]:
    """--settings names: all_off, all_on, and all_on-<switch> (all on but that one switch, e.g.
    all_on-decode_attention: one rung measured against the full stack); all_on+<switch> for a
    switch all_on leaves off (a rung not yet measured, on top of the stack);
    all_on_cublas: all on with every decode matmul on cuBLAS (no decode_gemv, no fused_decode)."""
    from workbench.optimizations.board import SWITCHES
    all_on = Optimizations.all_on()
    presets = {"all_off": ("all off", Optimizations.all_off()), "all_on": ("all on", all_on),
               "all_on_cublas": ("all on, cuBLAS", dataclasses.replace(all_on, decode_gemv=False, fused_decode=False))}
    for name in SWITCHES:
        if name in all_on.switched_on():
            off = {"attention": "sdpa"} if name == "flash" else {name: False}
            presets[f"all_on-{name}"] = (f"all on -{name}", dataclasses.replace(all_on, **off))
        else:
            presets[f"all_on+{name}"] = (f"all on +{name}", dataclasses.replace(all_on, **{name: True}))
    return presets


def stack_settings() -> list[tuple[str, Optimizations]]:
    """The cumulative ladder, then each switch alone on top of the naive baseline."""
    ladder = [("all off", Optimizations.all_off()),
              ("+flash", Optimizations(attention="flash")),
              ("+fused", Optimizations(attention="flash", fused_kernels=True)),
              ("+graphs", Optimizations(attention="flash", fused_kernels=True, cuda_graphs=True)),
              ("+gemv", Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, cuda_graphs=True)),
              ("+fold", Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, fused_decode=True,
                                      cuda_graphs=True)),
              ("+dattn", Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, fused_decode=True,
                                       decode_attention=True, cuda_graphs=True)),
              ("+compile", dataclasses.replace(Optimizations.all_on(), pdl=False)),
              ("+pdl (all on)", Optimizations.all_on())]
    alone = [("flash alone", Optimizations(attention="flash")),
             ("fused alone", Optimizations(attention="naive", fused_kernels=True)),
             ("gemv alone", Optimizations(attention="naive", decode_gemv=True)),
             ("fold alone", Optimizations(attention="naive", fused_decode=True)),
             ("dattn alone", Optimizations(attention="naive", decode_attention=True)),
             ("graphs alone", Optimizations(attention="naive", cuda_graphs=True)),
             ("compile alone", Optimizations(attention="naive", compile=True))]
    # (no "pdl alone": it changes how the other switches' kernels launch; with none on, nothing)
    return ladder + [a for a in alone if a[1] not in [s for _, s in ladder]]


def with_ratios(results: list[BenchResult], baseline: BenchResult) -> list[BenchResult]:
    for r in results:
        r.ratio = r.tok_s / baseline.tok_s if baseline.tok_s and r.tok_s is not None else None
    return results
