"""Correctness across the switchboard: every optimization must pick the same greedy tokens.

For each switch setting, run the same prompts greedily and compare with (a) the all-off path of
the engine and (b) HF transformers on the same weights. On a GPU in bf16, small rounding
differences can flip a near-tie, so we report the token match rate (up to the first divergence)
and the first step's max relative logit error instead of demanding bit equality.
"""
from __future__ import annotations

import dataclasses
import itertools
import random
import time

import torch

from workbench.optimizations.board import Optimizations
from workbench.engine import LLM, SamplingParams
from workbench.reference import compare, hf_greedy, load_hf_model


def switch_settings(attentions=("naive", "flash")) -> list[Optimizations]:
    """Every combination of attention x fused x graphs x compile, plus sdpa, plus the decode GEMV
    and then fused_decode and decode attention on the paths where they matter (eager alone, under
    graphs, all on, which includes both), and all on without pdl (all on includes it)."""
    settings = [Optimizations(attention=a, fused_kernels=f, cuda_graphs=g, compile=c)
                for a, f, g, c in itertools.product(attentions, (False, True), (False, True), (False, True))]
    gemv = [Optimizations(attention="naive", decode_gemv=True),
            Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, cuda_graphs=True),
            Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, cuda_graphs=True, compile=True),
            Optimizations(attention="naive", fused_decode=True),
            Optimizations(attention="naive", decode_attention=True),
            Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, fused_decode=True, cuda_graphs=True),
            Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, decode_attention=True,
                          cuda_graphs=True), dataclasses.replace(Optimizations.all_on(), pdl=False), Optimizations.all_on()]
    return settings + [Optimizations(attention="sdpa")] + [g for g in gemv if g.attention in attentions]


def quick_settings() -> list[Optimizations]:
    """`check --quick`: the ladder's rungs one by one, the decode rungs alone on top of it, and
    the two settings that once broke alone (naive under graphs, naive compiled)."""
    rung = dict(attention="flash", fused_kernels=True, cuda_graphs=True)
    return [Optimizations(attention="sdpa"), Optimizations(attention="flash"),
            Optimizations(attention="flash", fused_kernels=True), Optimizations(**rung),
            Optimizations(**rung, decode_gemv=True), Optimizations(**rung, decode_gemv=True, fused_decode=True),
            Optimizations(**rung, decode_attention=True), dataclasses.replace(Optimizations.all_on(), pdl=False),
            Optimizations.all_on(),
            Optimizations(attention="naive", cuda_graphs=True), Optimizations(attention="naive", compile=True)]


def random_prompts(n: int, vocab: int, min_len: int = 4, max_len: int = 300, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(min_len, max_len))] for _ in range(n)]


def run_engine(model_dir, opts: Optimizations, prompts, max_tokens: int, **engine_kwargs) -> dict:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, return_logits=True)
    start = time.perf_counter()
    with LLM(model_dir, opts=opts, **engine_kwargs) as llm:
        warm = llm.timings()
        outs = llm.generate(prompts, params, use_tqdm=False)
    return {"tokens": [o.token_ids for o in outs], "logits": [o.logits for o in outs], "warmup": warm,
            "seconds": time.perf_counter() - start}


def parity_table(model_dir, settings: list[Optimizations], prompts, max_tokens: int = 64, *,
                 with_hf: bool = True, **engine_kwargs) -> list[dict]:
    """One row per switch setting: match rate and logit error vs all-off and vs HF."""
    base = run_engine(model_dir, Optimizations.all_off(), prompts, max_tokens, **engine_kwargs)
    hf_tokens = hf_logits = None
    if with_hf:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        hf = load_hf_model(str(model_dir), dtype=dtype, device=device)
        ref = [hf_greedy(hf, p, max_tokens) for p in prompts]
        hf_tokens, hf_logits = [t for t, _ in ref], [lg for _, lg in ref]
        del hf
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    rows = []
    for opts in settings:
        run = base if opts == Optimizations.all_off() else run_engine(model_dir, opts, prompts, max_tokens,
                                                                       **engine_kwargs)
        vs_all_off = compare(run["tokens"], run["logits"], base["tokens"], base["logits"])
        row = {"setting": opts.label(), **{f"vs_all_off_{k}": v for k, v in vs_all_off.items()}}
        if with_hf:
            row.update({f"vs_hf_{k}": v for k, v in
                        compare(run["tokens"], run["logits"], hf_tokens, hf_logits).items()})
        row.update({k: round(v, 2) for k, v in run["warmup"].items()})
        rows.append(row)
    return rows
