"""`python -m workbench {check,bench,measure}`: tables on stdout, JSON for the notebooks.

Every command that needs a model takes --model DIR (your checkpoint) or makes a random-weight
one of --preset's shape (default qwen3-0.6b on a GPU, tiny on a CPU) under --workdir.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def model_dir(args) -> Path:
    import torch

    from workbench.model import random_checkpoint
    if args.model:
        return Path(args.model)
    return random_checkpoint(args.preset or ("qwen3-0.6b" if torch.cuda.is_available() else "tiny"), args.workdir)


def _save(rows, path: str | None, quiet: bool = False) -> None:
    if path:   # every row says on which GPU, when and by which command (measure/results.py)
        from workbench.measure.results import stamp
        Path(path).write_text(json.dumps(stamp(rows), indent=1, default=str))
        if not quiet:
            print(f"wrote {path}")


def runnable(items, opts_of):
    """Drop switch settings this machine cannot run, saying which and why (never silently)."""
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    keep = []
    for item in items:
        blocked = opts_of(item).why_not(device)   # the board's one decision
        if blocked:
            print(f"skipping {opts_of(item).label()}: " + "; ".join(f"{k} {v}" for k, v in blocked.items()))
        else:
            keep.append(item)
    return keep


def _positive_ints(text: str) -> list[int]:
    """'1,8' -> [1, 8], for argparse: a bad value is a usage error, not a traceback."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want comma-separated integers >= 1, e.g. 1,8")
    return values


# EngineConfig fields the bench sets from its own flags (or from the workload, or never)
OWN_FLAGS = {"decode_steps": "--decode-steps", "async_rounds": "--async-rounds", "fused_sampling": "--sampler",
             "max_num_batched_tokens": "--max-batched-tokens", "max_num_seqs": "the workload's size",
             "model": "--model", "opts": "--settings"}


def _engine_field(text: str) -> tuple[str, object]:
    """'compile_prefill=false' -> ('compile_prefill', False), for argparse: one of EngineConfig's
    fields, its value as JSON (true, false, 8, null, [128,512]) of the field's type."""
    import dataclasses
    import types
    import typing

    from workbench.config import EngineConfig
    name, _, value = text.partition("=")
    if name in OWN_FLAGS:
        raise argparse.ArgumentTypeError(f"{name} is set by {OWN_FLAGS[name]}, not --engine")
    types_of = typing.get_type_hints(EngineConfig)
    fields = sorted(f.name for f in dataclasses.fields(EngineConfig) if f.name not in OWN_FLAGS)
    if name not in fields:
        raise argparse.ArgumentTypeError(f"{name!r} is not an EngineConfig field; one of {', '.join(fields)}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be JSON, e.g. {name}=false or {name}=8") from None
    kinds = typing.get_args(types_of[name]) or (types_of[name],)
    if any(typing.get_origin(kind) is tuple for kind in kinds):   # a JSON list for a tuple field (or null)
        if parsed is None:
            return name, None
        if not isinstance(parsed, list) or not parsed or any(type(n) is not int for n in parsed):
            raise argparse.ArgumentTypeError(f"{text!r}: {name} takes a JSON list of integers, e.g. "
                                             f"{name}=[128,512], or null")
        return name, tuple(parsed)
    fits = any(parsed is None if kind is types.NoneType else
               type(parsed) is kind or (kind is float and type(parsed) is int) for kind in kinds)
    if not fits:
        raise argparse.ArgumentTypeError(f"{text!r}: {name} takes {' or '.join(k.__name__ for k in kinds)}")
    return name, parsed


def _on_off(text: str) -> list[bool]:
    values = text.split(",")
    if not values or any(v not in ("off", "on") for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected off, on or off,on")
    return [v == "on" for v in values]


def _chosen(names: str, by_name: dict) -> list:
    """The values of comma-separated `names` in `by_name`; an unknown name is a ValueError that
    lists the known ones."""
    unknown = [name for name in names.split(",") if name not in by_name]
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; choose from: {', '.join(by_name)}")
    return [by_name[name] for name in names.split(",")]


def cmd_check(args) -> int:
    from workbench.check import parity_table, quick_settings, random_prompts, switch_settings
    from workbench.measure import format_table
    from workbench.measure.bench import gpu_name
    from workbench.model import ModelConfig

    path = model_dir(args)
    vocab = ModelConfig.from_hf(path).vocab_size
    settings = switch_settings()
    if args.quick:
        settings = quick_settings()
    if args.settings:
        settings = _chosen(args.settings, {s.label(): s for s in switch_settings()})
    settings = runnable(settings, lambda s: s)
    rows = parity_table(path, settings, random_prompts(args.prompts, vocab), args.max_tokens,
                        with_hf=not args.no_hf, max_num_seqs=args.prompts)
    print(f"\nparity on {gpu_name()}, {args.prompts} prompts x {args.max_tokens} greedy tokens (measured)")
    print(format_table(rows))
    _save(rows, args.json)
    bad = [r for r in rows if r["vs_all_off_match_rate_excl_ties"] < 0.99
           or r["vs_all_off_first_step_logit_rel_err"] > 2e-2]
    print(f"{len(rows) - len(bad)}/{len(rows)} settings pass (>= 99 % tokens matched outside near-ties, "
          "first-step logit rel err < 2e-2)")
    return 1 if bad else 0


def cmd_bench(args) -> int:
    from workbench.optimizations.board import Optimizations
    from workbench.measure import bench, format_table
    from workbench.model import ModelConfig

    path = model_dir(args)
    vocab = ModelConfig.from_hf(path).vocab_size
    workloads = {"single": ["single"], "batch": ["batch"], "throughput": [args.workload],
                 "stack": args.workloads.split(",")}[args.what]
    rows = []
    loads = {name: bench.make_workload(name, vocab, num_seqs=args.num_seqs, new_tokens=args.new_tokens,
                                       temperature=args.temperature, arrival_rate=args.arrival_rate)
             for name in workloads}
    greedy = [name for name, load in loads.items() if load.temperature == 0]
    if args.sampler and greedy:   # before anything runs: the choice would never be used
        raise ValueError(f"--sampler picks how temperature rows are sampled, and the {', '.join(greedy)} workload "
                         f"is greedy: add --temperature 0.6 (the nanovllm workload's own)")
    if args.arrival_rate is not None and args.peers:   # the peers' generate takes every request at once
        raise ValueError("--arrival-rate times requests that join over time, which the peers' rows cannot: "
                         "drop --peers, or --arrival-rate")
    if True in args.async_rounds and max(args.decode_steps) == 1:   # no row would have it: say so now
        raise ValueError("--async-rounds on overlaps multi-step rounds: add --decode-steps 8 (or any value > 1)")
    for name, load in loads.items():
        if load.note:
            print(f"  {name}: {load.note}")
        engine_kwargs = dict(max_num_seqs=max(len(load.prompts), 1))
        if args.max_batched_tokens:   # else the workload's own (bench.Workload)
            engine_kwargs["max_num_batched_tokens"] = args.max_batched_tokens
        engine_kwargs.update(args.engine)
        if args.sampler:   # EngineConfig.fused_sampling: the engine refuses "fused" where it cannot run
            engine_kwargs["fused_sampling"] = args.sampler == "fused"
        if args.what == "stack":
            settings = bench.stack_settings()
        else:
            settings = _chosen(args.settings, bench.bench_presets())
        results = []
        for title, opts in runnable(settings, lambda item: item[1]):
            # multi-step decoding: one row per value, and per async_rounds setting where it has rounds
            for steps, overlap in [(s, a) for s in args.decode_steps for a in args.async_rounds if s > 1 or not a]:
                overlap = steps > 1 if overlap is None else overlap   # None: the engine's default
                rounds = "" if steps == 1 else ", async rounds" if overlap else ", rounds read one at a time"
                note = (title if steps == 1 else f"{title}, {steps} decode steps") + rounds + \
                    (f", {args.sampler} sampler" if args.sampler else "") + \
                    (f", requests arrive at {args.arrival_rate:g}/s" if args.arrival_rate else "") + \
                    "".join(f", {name}={value}" for name, value in args.engine)
                r = bench.bench_engine(path, opts, load, repeats=args.repeats, decode_steps=steps,
                                       async_rounds=overlap, **engine_kwargs)
                r.note = note + (f"; {r.note}" if r.note else "")
                results.append(r)
                host = ", ".join(f"{k} {v:.3f}" for k, v in r.host_ms_per_step.items())
                print(f"  {name:<10} {note:<18} T={load.temperature:<4} {r.tok_s:10,.0f} tok/s   host ms/step: {host}", flush=True)
                # the rows so far, after each one: a run stopped by a time limit keeps what it measured
                _save([x.to_dict() for x in rows + bench.with_ratios(results, results[0])], args.json, quiet=True)
        if not results:
            print(f"  {name}: nothing runnable on this machine")
            continue
        if args.peers:
            peers = ([("generate eager", lambda: bench.bench_hf_generate(path, load)),
                      ("generate static cache", lambda: bench.bench_hf_generate(path, load, static_compile=True))]
                     if name == "single" else
                     [("generate_batch", lambda: bench.bench_hf_generate_batch(path, load))])
            for mode, run in peers:
                results.append(bench.peer_or_unavailable(run, load, mode))
        rows += bench.with_ratios(results, results[0])
    print(f"\nbenchmarks on {bench.gpu_name()} (measured; ratio = tok/s over the first row of its workload)")
    print(format_table(rows, ["workload", "engine", "setting", "note", "temperature", "output_tokens", "seconds", "tok_s",
                              "prefill_tok_s", "decode_tok_s", "ttft_ms", "ttft_p90_ms", "tpot_ms", "ratio", "kernels_per_step",
                              "gpu_kernel_us_per_step", "of_copy_bandwidth"]))
    _save([r.to_dict() for r in rows], args.json)
    return 0


def add_measure_commands(sub) -> None:
    def common(p):
        p.add_argument("--model", help="checkpoint directory (default: a random-weight --preset one)")
        p.add_argument("--preset", help="tiny | qwen3-0.6b (default: qwen3-0.6b on GPU, tiny on CPU)")
        p.add_argument("--workdir", help="where to write the random checkpoint (default: temp dir)")
        p.add_argument("--json", help="also write the rows as JSON here")

    check = sub.add_parser("check", help="greedy-token parity of every switch setting vs all-off and HF")
    common(check)
    check.add_argument("--prompts", type=int, default=32)
    check.add_argument("--max-tokens", type=int, default=64)
    check.add_argument("--quick", action="store_true", help="the representative settings instead of all of them")
    check.add_argument("--settings", help="comma-separated labels, e.g. naive+compile,flash+graphs+compile")
    check.add_argument("--no-hf", action="store_true", help="skip the HF transformers reference")
    check.set_defaults(func=cmd_check)

    b = sub.add_parser("bench", help="throughput/latency: single | batch | throughput | stack")
    b.add_argument("what", choices=["single", "batch", "throughput", "stack"])
    common(b)
    b.add_argument("--workloads", default="single,batch", help="for stack: comma-separated workloads")
    b.add_argument("--workload", default="throughput", choices=["throughput", "nanovllm"],
                   help="for throughput: the project's greedy workload, or nano-vLLM's bench.py exactly "
                        "(seed 0, temperature 0.6, 133,966 output tokens)")
    b.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature for every request (default: the workload's own; 0 = greedy)")
    b.add_argument("--num-seqs", type=int, default=None)
    b.add_argument("--arrival-rate", type=float, default=None,
                   help="requests a second, arriving over time (Poisson, seeded) instead of all at once; the "
                        "time to the first token then counts from each request's arrival (ttft_ms, ttft_p90_ms)")
    b.add_argument("--new-tokens", type=int, default=512)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--max-batched-tokens", type=int, default=None,
                   help="tokens a step may hold (default: the workload's own: 16,384 for nanovllm, as "
                        "nano-vLLM's engine, else 8,192)")
    b.add_argument("--decode-steps", default=[1], type=_positive_ints,
                   help="EngineConfig.decode_steps values, comma-separated (e.g. 1,8: multi-step decoding "
                        "against one step per schedule, one row each)")
    b.add_argument("--async-rounds", default=[None], type=_on_off,
                   help="EngineConfig.async_rounds: off, on, or off,on (a row each, for every --decode-steps "
                        "value > 1): the next round launched before the running one is read (default: the "
                        "engine's, on wherever decode steps > 1)")
    b.add_argument("--settings", default="all_off,all_on", help="for single/batch/throughput: all_off, all_on, "
                   "all_on-<switch> (all on but one switch, e.g. all_on-decode_attention), all_on+<switch> "
                   "(all on plus a switch all_on leaves off), all_on_cublas "
                   "(all on with cuBLAS matmuls: no decode_gemv, no fused_decode)")
    b.add_argument("--engine", action="append", default=[], type=_engine_field, metavar="FIELD=VALUE",
                   help="an EngineConfig field for every row, e.g. compile_prefill=false (repeatable)")
    b.add_argument("--peers", action="store_true", help="also HF transformers generate / generate_batch")
    b.add_argument("--sampler", choices=["fused", "eager"],
                   help="how temperature rows are sampled (EngineConfig.fused_sampling): fused, the Triton kernel "
                        "pair (the default on a GPU), or eager, its twin of torch ops (default: the engine's choice)")
    b.set_defaults(func=cmd_bench)

    add_measure_subcommands(sub, common)


def cmd_measure_launches(args) -> int:
    from workbench.optimizations.board import Optimizations
    from workbench.engine import LLM
    from workbench.measure import format_table
    from workbench.measure.steps import engine_launches

    path = model_dir(args)
    rows = []
    for opts in runnable([Optimizations.all_off(), Optimizations(attention="flash", fused_kernels=True),
                          Optimizations(attention="flash", fused_kernels=True, cuda_graphs=True),
                          Optimizations(attention="flash", fused_kernels=True, cuda_graphs=True, compile=True),
                          Optimizations.all_on()], lambda s: s):
        with LLM(path, opts=opts, max_num_seqs=max(args.batch, 1), enable_prefix_caching=False) as llm:
            for phase, rec in engine_launches(llm, batch=args.batch, decode_steps=args.steps).items():
                rows.append(rec.to_dict() if rec.available else {"label": rec.label, "reason": rec.reason})
    print(format_table(rows, ["label", "launch_calls_per_step", "graph_launches_per_step", "kernels_per_step",
                              "launch_api_us_per_step", "kernel_us_per_step", "short_gap_us_per_step",
                              "wall_ms_per_step", "reason"]))
    _save(rows, args.json)
    return 0


def cmd_measure_attention(args) -> int:
    from workbench.measure import format_table
    from workbench.measure.attention_traffic import attention_traffic
    rows = []
    for n in (int(n) for n in args.n.split(",")):   # one N at a time, saved after each: naive under ncu
        rows += attention_traffic([n], args.impls.split(","))   # at N = 8,192 outlasted a device step
        _save(rows, args.json, quiet=True)
    print("attention alone, one causal sequence, 16/8 heads, head_dim 128, bf16 "
          "(bytes: measured by ncu; modelled_bytes: modelled; time: CUDA events)")
    print(format_table(rows, ["n", "impl", "measured_bytes", "modelled_bytes", "bytes_vs_flash", "time_ms",
                              "time_vs_flash", "kernels", "hbm_unavailable"]))
    _save(rows, args.json)
    return 0


def cmd_measure_roofline(args) -> int:
    from workbench.measure import decode_step, format_table, measure_copy_bandwidth
    from workbench.model import ModelConfig
    shape = ModelConfig.from_hf(model_dir(args))
    bw = measure_copy_bandwidth()
    bandwidth = bw.bandwidth if bw.available else None
    print(f"copy bandwidth: {bw}")
    rows = [decode_step(shape, [args.context] * b, bandwidth=bandwidth, peak_flops=None,
                        source="measured copy" if bandwidth else "").to_dict() for b in (1, 8, 64, 256)]
    print(format_table(rows, ["num_seqs", "bytes", "flops", "intensity", "roofline_time_s", "tokens_per_s_ceiling"]))
    _save(rows, args.json)
    return 0


def cmd_measure_gemv(args) -> int:
    """Each linear layer's batch-1 matmul alone: measured time and bandwidth, cuBLAS vs inductor vs ours."""
    from workbench.measure import format_table, measure_copy_bandwidth
    from workbench.measure.gemv import measure_gemvs
    from workbench.model import ModelConfig
    cfg = ModelConfig.from_hf(model_dir(args))
    copy = measure_copy_bandwidth()
    print(copy)
    records = measure_gemvs(cfg, args.impls.split(","), copy_bandwidth=copy.bandwidth if copy.available else None)
    rows = [r.to_dict() for r in records]
    for row in rows:   # TB/s reads better than bytes/s in a table
        row["tb_per_s"] = row["bandwidth"] / 1e12 if row["bandwidth"] else None
    print("batch-1 GEMVs, bf16, one graph of `calls` back-to-back calls on different weights "
          "(time: measured; weight_bytes: modelled from the shape)")
    print(format_table(rows, ["name", "impl", "k", "n", "calls", "us_per_call", "weight_bytes", "tb_per_s",
                              "of_copy_bandwidth", "reason"]))
    _save(rows, args.json)
    return 0


def cmd_measure_boundaries(args) -> int:
    """What one dependent step costs: kernels, PDL kernels, a persistent kernel's grid barrier."""
    import torch

    from workbench.measure.boundaries import check_forms, measure_boundaries
    forms = [f.strip() for f in args.forms.split(",") if f.strip()] if args.forms else None
    parts = (1, 2) if args.part == "both" else (int(args.part),)
    check_forms(forms, parts)   # a mistyped name is refused here, before the GPU check and any timing
    if not torch.cuda.is_available():
        raise RuntimeError("measure boundaries times kernels on a CUDA GPU and this machine has none; its chains "
                           "run on a CPU only under Triton's interpreter, for correctness: "
                           "pytest tests/test_boundary_probe.py")
    rows = measure_boundaries(forms=forms, parts=parts, hidden_sizes=tuple(args.hidden))
    _save(rows, args.json)
    return 0 if all(row["checked"] for row in rows) else 1


def cmd_measure_layers(args) -> int:
    """One batch-1 decode step folded into its layers: what each kernel of a layer adds (all on)."""
    import torch

    from workbench.measure import format_table, measure_copy_bandwidth
    from workbench.measure.layer_time import fold_layers, layer_gemv_bytes, profile_layers
    from workbench.model import ModelConfig
    bandwidth, item_bytes, origin = None, 2, {}
    if args.from_json:   # a recorded A/B file (scripts/ab_decode_candidates.py keeps each row's profiled step)
        shape = ModelConfig.from_hf(args.model) if args.model else ModelConfig.from_preset(args.preset or "qwen3-0.6b")
        rows = json.loads(Path(args.from_json).read_text())
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{args.from_json}: want a list of rows as scripts/ab_decode_candidates.py writes them")
        steps = {r.get("variant", "current"): r for r in rows if r.get("step_kernels")}   # the last round of each
        if args.variant not in steps:
            raise RuntimeError(f"{args.from_json} has no profiled step of variant {args.variant!r}; its variants "
                               f"with one: {', '.join(steps) or 'none (an A/B file from session 15 on has them)'}")
        row = steps[args.variant]
        fold = fold_layers(row["step_kernels"], shape.num_layers)
        origin = {"gpu": row.get("gpu", "not named"), "date": row.get("date", ""), "source": args.from_json,
                  "variant": args.variant}   # the recorded step's machine and day, not this one's
        print(f"{args.from_json}, variant {args.variant}, its last round ({origin['gpu']}, {origin['date']})")
    else:
        if not torch.cuda.is_available():
            raise RuntimeError("measure layers profiles GPU kernels and this machine has no CUDA GPU; fold a recorded "
                               "step instead: --from-json docs/results/decode-ab-dattn-splits-h200.json")
        from workbench import LLM, Optimizations
        path = model_dir(args)
        shape = ModelConfig.from_hf(path)
        copy = measure_copy_bandwidth()
        print(copy)
        bandwidth = copy.bandwidth if copy.available else None
        with LLM(path, opts=Optimizations.all_on(), max_num_seqs=1, max_model_len=args.prompt_len + 64) as llm:
            item_bytes = llm.dtype.itemsize
            fold = profile_layers(llm, shape.num_layers, prompt_len=args.prompt_len)
    weights = layer_gemv_bytes(fold, shape, item_bytes)
    rows = [{"position": i, "kernel": name, "projection": weights.get(i, ("",))[0],
             "added_us": fold.added_us[i], "span_us": fold.span_us[i],
             "weight_bytes": weights[i][1] if i in weights else None,
             "bytes_us": weights[i][1] / bandwidth * 1e6 if i in weights and bandwidth else None}
            for i, name in enumerate(fold.names)]
    print(f"one layer of a batch-1 decode step, medians over {len(fold.layer_us)} layers (added: its end minus the "
          "latest end before it; span: its own, PDL wait included; bytes_us: weight bytes at the copy bandwidth)")
    print(format_table(rows, ["position", "kernel", "projection", "added_us", "span_us", "weight_bytes", "bytes_us"]))
    print(f"a layer adds {fold.median_layer_us:.2f} us (median); after the last layer "
          f"{sum(us for _, us in fold.after):.1f} us: " + ", ".join(f"{n[:40]} {us:.1f}" for n, us in fold.after))
    rows += [{"position": None, "kernel": name, "part": "after the layers", "added_us": us} for name, us in fold.after]
    _save([{"part": "a layer", **row, "layers": len(fold.layer_us), "median_layer_us": fold.median_layer_us,
            **origin} for row in rows], args.json)
    return 0


def cmd_measure_decode_attention(args) -> int:
    """A decode step's attention per layer call: the Triton split-KV kernel vs flash-attn's decode."""
    from workbench.measure import format_table, measure_copy_bandwidth
    from workbench.measure.decode_attention import measure_decode_attention
    from workbench.model import ModelConfig
    copy = measure_copy_bandwidth()
    print(copy)
    records = measure_decode_attention(ModelConfig.from_hf(model_dir(args)), args.impls.split(","), args.batch,
                                       args.context, copy_bandwidth=copy.bandwidth if copy.available else None)
    rows = [r.to_dict() for r in records]
    print("decode attention per layer call, bf16, one graph of `calls` calls on separate caches "
          "(time: measured; kv_bytes: modelled)")
    print(format_table(rows, ["impl", "batch", "context", "calls", "us_per_call", "kv_bytes", "of_copy_bandwidth",
                              "reason"]))
    _save(rows, args.json)
    return 0


def cmd_measure_tp(args) -> int:
    """Decode step time and the all-reduce time inside it, tp=1 against each --tp size."""
    from workbench.optimizations.board import Optimizations
    from workbench.engine import LLM
    from workbench.measure import format_table
    from workbench.measure.comm import decode_comm
    path = model_dir(args)
    rows = []
    for tp in [1] + [t for t in args.tp if t > 1]:
        # graphs are refused with tp > 1 (unverified with NCCL): off for every size. The preset
        # flag drops what this machine cannot run (on a CPU: flash and the Triton kernels).
        opts = Optimizations(attention="flash", fused_kernels=True, from_preset=True)
        with LLM(path, opts=opts, tensor_parallel_size=tp,
                 max_num_seqs=max(args.batch, 1), enable_prefix_caching=False) as llm:
            rows.append(decode_comm(llm, batch=args.batch, steps=args.steps).to_dict())
    print("decode steps (step_ms: measured wall time; all-reduce: measured on rank 0 by torch.profiler; "
          "all_reduce_bytes: modelled)")
    print(format_table(rows, ["label", "backend", "batch", "step_ms", "profiled_step_ms", "all_reduces_per_step",
                              "all_reduce_ms_per_step",
                              "all_reduce_share", "broadcast_ms_per_step", "all_reduce_bytes", "device", "reason"]))
    _save(rows, args.json)
    return 0


def cmd_measure_hbm(args) -> int:
    """DRAM bytes of one whole-model decode step (measured) next to the modelled minimum."""
    from workbench.measure import decode_step, format_table, measure_hbm_python
    from workbench.measure.workloads import decode_step_workload
    from workbench.model import ModelConfig
    path = model_dir(args)
    settings = {"all_off": {"attention": "naive", "fused_kernels": False, "cuda_graphs": False},
                "fast": {},   # flash + fused + graphs (no compile: faster to build)
                "decode_kernels": {"decode_gemv": True, "fused_decode": True, "decode_attention": True, "pdl": True}}
    unknown = [s for s in args.settings.split(",") if s not in settings]
    if unknown:
        raise ValueError(f"--settings: {', '.join(unknown)} unknown; one or more of {', '.join(settings)}")
    engine = dict(args.engine)
    if engine.get("l2_prefetch") and args.settings != "decode_kernels":   # refused now, not after a build under ncu
        raise ValueError("--engine l2_prefetch=true acts on the decode GEMV: use --settings decode_kernels")
    rows = []
    for setting in args.settings.split(","):
        record = measure_hbm_python(decode_step_workload,
                                    {"model_dir": str(path), "batch": args.batch, "context": args.context,
                                     **settings[setting], "engine": engine},
                                    nvtx_include="decode/", warm_l2=args.warm_l2)   # (what l2_prefetch changes)
        rows.append({"setting": setting + "".join(f" {k}={v}" for k, v in engine.items()),
                     "measured_bytes": record.dram_bytes, "kernels": len(record.kernels),
                     "l2": "kept between kernels" if args.warm_l2 else "flushed before each kernel",
                     "by_family": {k: v.get("dram__bytes_read.sum", 0) + v.get("dram__bytes_write.sum", 0)
                                   for k, v in record.by_family.items()},
                     # in launch order: which kernel read what (l2_prefetch moves bytes to the kernel before)
                     "per_kernel": [[k.name, k.metrics.get("dram__bytes_read.sum"), k.metrics.get("dram__bytes_write.sum")]
                                    for k in record.kernels],
                     "unavailable": None if record.available else record.reason})
    minimum = decode_step(ModelConfig.from_hf(path), [args.context] * args.batch)
    rows.append({"setting": "minimum (modelled: weights + KV read once)", "measured_bytes": None,
                 "modelled_bytes": minimum.bytes})
    print(format_table(rows, ["setting", "measured_bytes", "modelled_bytes", "kernels", "l2", "unavailable"]))
    _save(rows, args.json)
    return 0


def cmd_measure_breakdown(args) -> int:
    """Each setting's decode (or prefill) step split into kernel families, gaps and host time,
    beside its floor (decode only)."""
    from workbench.measure import format_table
    from workbench.measure.breakdown import ladder_settings, measure_settings, plot_breakdowns, read_breakdowns
    if args.from_json:
        measuring_only = [flag for flag, value in (("--timeline-figure", args.timeline_figure),
                                                   ("--settings", args.settings), ("--json", args.json),
                                                   ("--trace-dir", args.trace_dir),
                                                   ("--phase", args.phase != "decode"),
                                                   ("--prompt-len", args.prompt_len != 32)) if value]
        if measuring_only:   # a results file keeps each step's parts, not its spans: refuse, never ignore
            raise ValueError(f"--from-json redraws --figure from a results file and measures nothing; "
                             f"{', '.join(measuring_only)} need(s) a measuring run: drop --from-json")
        found, source = read_breakdowns(args.from_json)
    else:
        if args.phase == "prefill" and args.steps is not None:   # refused, never ignored
            raise ValueError("--steps counts decode steps; --phase prefill breaks down the batch's one prefill "
                             "step: drop --steps")
        ladder = ladder_settings()
        if args.settings:   # a few rungs of the ladder, by label (naive, flash+fused, ...)
            ladder = _chosen(args.settings, {s.label(): s for s in ladder})
        measured = measure_settings(model_dir(args), runnable(ladder, lambda s: s), batch=args.batch,
                                    decode_steps=args.steps or 3, prompt_len=args.prompt_len, phase=args.phase,
                                    trace_dir=args.trace_dir)
        found, source = [b for b, _ in measured], ""
    rows = [b.row() for b in found]
    phase = " / ".join(sorted({b.phase for b in found}))
    floor = ("; floor_us: modelled bytes / measured copy bandwidth" if "decode" in phase
             else "; no floor_us: a prefill step's floor is set by FLOPs as well as bytes")
    print(f"\nus per {phase} step (parts and step: measured by torch.profiler{floor})" + (f"; {source}" if source else ""))
    print(format_table(rows))
    if args.figure:
        import matplotlib
        matplotlib.use("Agg")
        note = "\n".join(s for s in (source, args.note) if s)
        plot_breakdowns(found, source=note).figure.savefig(args.figure, dpi=110, bbox_inches="tight")
        print(f"wrote {args.figure}")
    if args.timeline_figure:
        _draw_timelines([tl for _, tl in measured], args.timeline_figure)
    if not args.from_json:   # a redraw writes no results file: its records keep their own gpu and date
        _save([b.to_dict() for b in found], args.json)
    return 0


def _draw_timelines(timelines, path) -> None:
    """Each setting's decode steps on its own time scale: an eager naive step is ~30x a graphed
    one, so on a shared axis the fast ones would be slivers (each row's axis says its width)."""
    import matplotlib
    matplotlib.use("Agg")
    from workbench.measure.timeline import plot_timelines
    fig = plot_timelines([tl.only("decode") for tl in timelines], same_scale=False)
    fig.suptitle("decode steps per setting, each on its own time scale (measured by torch.profiler)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")


def add_measure_subcommands(sub, common) -> None:
    m = sub.add_parser("measure", help="launches | breakdown | hbm | attention-traffic | gemv | decode-attention | "
                       "boundaries | layers | tp | roofline")
    msub = m.add_subparsers(dest="what", required=True)
    launches = msub.add_parser("launches", help="CPU launch calls vs GPU kernels per prefill/decode step")
    common(launches)
    launches.add_argument("--batch", type=int, default=1)
    launches.add_argument("--steps", type=int, default=8)
    launches.set_defaults(func=cmd_measure_launches)
    breakdown = msub.add_parser("breakdown", help="where a decode (or prefill) step's microseconds go, per "
                                                  "setting, beside its floor")
    common(breakdown)
    breakdown.add_argument("--batch", type=int, default=1)
    breakdown.add_argument("--steps", type=int, default=None, help="decode steps profiled (their mean is shown; "
                                                                   "default 3)")
    breakdown.add_argument("--phase", choices=["decode", "prefill"], default="decode",
                           help="which step to break down: decode (default) or the batch's prefill (time to first token)")
    breakdown.add_argument("--prompt-len", type=int, default=32, help="tokens of each profiled prompt")
    breakdown.add_argument("--figure", help="also draw the stacked bars to this PNG")
    breakdown.add_argument("--settings", help="comma-separated labels of the ladder's rungs (default: all of "
                           "naive, sdpa, flash+fused, flash+fused+graphs, all on)")
    breakdown.add_argument("--timeline-figure", help="also draw each setting's profiled decode steps (a "
                           "timeline) to this PNG")
    breakdown.add_argument("--trace-dir", help="write each setting's Chrome trace here (open in ui.perfetto.dev)")
    breakdown.add_argument("--from-json", help="measure nothing: redraw --figure from a --json file (no GPU needed)")
    breakdown.add_argument("--note", default="", help="a line printed under the figure")
    breakdown.set_defaults(func=cmd_measure_breakdown)
    hbm = msub.add_parser("hbm", help="ncu DRAM bytes of one decode step vs the modelled minimum")
    common(hbm)
    hbm.add_argument("--settings", default="all_off,fast", help="all_off, fast (flash+fused+graphs) and/or "
                     "decode_kernels (fast + decode_gemv, fused_decode, decode_attention, pdl; no compile)")
    hbm.add_argument("--batch", type=int, default=1)
    hbm.add_argument("--context", type=int, default=1024)
    hbm.add_argument("--engine", action="append", default=[], type=_engine_field, metavar="FIELD=VALUE",
                     help="an EngineConfig field for every row, e.g. l2_prefetch=true (repeatable)")
    hbm.add_argument("--warm-l2", action="store_true", help="keep L2 between kernels (ncu --cache-control none; "
                     "default: flushed before each): each kernel's DRAM bytes are what it missed in L2")
    hbm.set_defaults(func=cmd_measure_hbm)
    attention = msub.add_parser("attention-traffic", help="naive vs flash attention: ncu DRAM bytes and time vs N")
    attention.add_argument("--n", default="1024,4096,8192")
    attention.add_argument("--impls", default="naive,flash")
    attention.add_argument("--json")
    attention.set_defaults(func=cmd_measure_attention)
    gemv = msub.add_parser("gemv", help="batch-1 matmul of each linear layer: time and bandwidth, cuBLAS vs inductor vs "
                          "the decode GEMV")
    common(gemv)
    gemv.add_argument("--impls", default="cublas,inductor,triton",
                      help="cublas, inductor and/or triton (the decode_gemv switch's kernel)")
    gemv.set_defaults(func=cmd_measure_gemv)
    dattn = msub.add_parser("decode-attention", help="decode attention per layer call: the decode_attention "
                            "switch's Triton kernel vs flash-attn's decode, by context length")
    common(dattn)
    dattn.add_argument("--impls", default="flash,triton",
                       help="flash, triton and/or triton-last (the Triton kernel merging in its last program)")
    dattn.add_argument("--batch", type=_positive_ints, default=[1], help="comma-separated batch sizes")
    dattn.add_argument("--context", type=_positive_ints, default=[128, 640, 2048, 4096],
                       help="comma-separated context lengths (keys per sequence)")
    dattn.set_defaults(func=cmd_measure_decode_attention)
    tp = msub.add_parser("tp", help="tensor parallelism: decode step time and its all-reduce time, tp=1 vs --tp")
    common(tp)
    tp.add_argument("--tp", type=_positive_ints, default=[2], help="comma-separated tensor-parallel sizes to compare with 1")
    tp.add_argument("--batch", type=int, default=1)
    tp.add_argument("--steps", type=int, default=8)
    tp.set_defaults(func=cmd_measure_tp)
    bounds = msub.add_parser("boundaries", help="what one dependent step of a decode costs: kernels, PDL "
                             "kernels, a persistent kernel's grid barrier; then as GEMVs (GPU only)")
    bounds.add_argument("--json", help="write the rows here")
    bounds.add_argument("--forms", help="comma-separated forms to run (default: all; e.g. "
                        "kernels+pdl,persistent-tagged-head); a name no chosen part has is refused with the list")
    bounds.add_argument("--part", choices=("1", "2", "both"), default="both",
                        help="1: dependent steps without weights; 2: dependent GEMVs; both (default)")
    bounds.add_argument("--hidden", type=_positive_ints, default=[1024, 2048],
                        help="part 2: comma-separated sizes H of the H x H weights (default 1024,2048; e.g. 512 "
                             "for a step that is mostly its wait)")
    bounds.set_defaults(func=cmd_measure_boundaries)
    layers = msub.add_parser("layers", help="a batch-1 decode step (all on) folded into its layers: what each "
                             "kernel of a layer adds, beside its span and its weight bytes' time (GPU, or --from-json)")
    common(layers)
    layers.add_argument("--prompt-len", type=int, default=128, help="tokens of the prompt before the profiled step")
    layers.add_argument("--from-json", help="measure nothing: fold a recorded A/B file's profiled step (no GPU needed)")
    layers.add_argument("--variant", default="current", help="with --from-json: which variant's step")
    layers.set_defaults(func=cmd_measure_layers)
    roof = msub.add_parser("roofline", help="modelled bytes/FLOPs per decode step over measured bandwidth")
    common(roof)
    roof.add_argument("--context", type=int, default=1024)
    roof.set_defaults(func=cmd_measure_roofline)
