"""Experiment: let torch.compile write the batch-1 matmuls (GEMVs) instead of cuBLAS.

With `torch._inductor.config.coordinate_descent_tuning`, inductor rewrites a matmul whose M is
statically 1 as a multiply-and-sum (a Triton reduction it generates, and can fuse with the ops
around it), then tunes each such kernel's block sizes by timing them. gpt-fast decodes this way.
Session 3 measured the layer GEMVs of a batch-1 decode step at ~1.3 TB/s of the 2.89 TB/s copy
bandwidth, under cuBLAS: this checks whether inductor's kernels get closer.

For two compile settings, with the knob off and on, in one process on one GPU:
  - single-stream speed (128-token prompt, 256 new tokens), as `bench single` times it;
  - GPU kernels and kernel time per decode step (torch.profiler), and the top kernels;
  - greedy tokens and logits of 8 prompts decoded one at a time (so every decode step has M = 1),
    against the same setting with the knob off.

    python scripts/experiment_inductor_gemv.py [--workdir /tmp] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import torch

from workbench.check import random_prompts, switch_settings
from workbench import Optimizations
from workbench.engine import LLM, SamplingParams
from workbench.measure import format_table
from workbench.measure.bench import gpu_name, make_workload, time_generate
from workbench.measure.steps import engine_launches
from workbench.model import random_checkpoint
from workbench.reference import compare

DEFAULT_SETTINGS = "flash+fused+graphs+compile,flash+graphs+compile"


def one_by_one(llm, prompts, max_tokens: int) -> tuple[list, list]:
    """Greedy tokens and logits, one prompt at a time: decode runs at batch 1 throughout."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, return_logits=True)
    outs = [llm.generate([p], params, use_tqdm=False)[0] for p in prompts]
    return [o.token_ids for o in outs], [o.logits for o in outs]


def max_logit_rel_err(logits, ref_logits, tokens, ref_tokens) -> float:
    """Worst |a - b| / max|b| over the steps both runs share (up to the first divergence)."""
    worst = 0.0
    for lg, rl, t, rt in zip(logits, ref_logits, tokens, ref_tokens):
        same = next((i for i, (a, b) in enumerate(zip(t, rt)) if a != b), len(rt) - 1)
        for i in range(same + 1):
            worst = max(worst, float((lg[i] - rl[i]).abs().max() / rl[i].abs().max()))
    return worst


def run(opts: Optimizations, tuned: bool, model_dir, prompts, speed: bool = True) -> dict:
    import sys

    import torch._inductor.config as inductor_config
    print(f"=== {opts.label()}, coordinate_descent_tuning={tuned}", file=sys.stderr)   # marks TORCH_LOGS output
    torch._dynamo.reset()   # compiled code is cached per function: without this the knob is ignored
    inductor_config.coordinate_descent_tuning = tuned
    workload = make_workload("single", 151_936, new_tokens=256)
    with LLM(model_dir, opts=opts, max_model_len=512, enable_prefix_caching=False) as llm:
        tokens, logits = one_by_one(llm, prompts, max_tokens=32)
        row = {"setting": opts.label(), "coordinate_descent_tuning": tuned, "tokens": tokens, "logits": logits,
               **{k: round(v, 1) for k, v in llm.timings().items()}, "top_kernels": []}
        if speed:
            timed = time_generate(llm, workload, repeats=3)
            decode = engine_launches(llm, batch=1, decode_steps=16)["decode"]
            row.update(tok_s=timed["tok_s"], tpot_ms=timed["tpot_ms"], kernels_per_step=decode.kernels_per_step,
                       kernel_us_per_step=decode.kernel_us_per_step,
                       short_gap_us_per_step=decode.short_gap_us_per_step, wall_ms_per_step=decode.wall_ms_per_step,
                       top_kernels=[dict(k, us_per_step=k["total_us"] / decode.steps) for k in decode.top_kernels])
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated compile settings")
    ap.add_argument("--agreement-only", action="store_true", help="skip the speed and kernel measurements")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("unavailable: this experiment needs a CUDA GPU (inductor keeps cuBLAS-free GEMVs for GPUs)")
        return 2
    model_dir = random_checkpoint("qwen3-0.6b", args.workdir)
    prompts = random_prompts(8, 151_936, min_len=16, max_len=200)
    rows = []
    by_label = {o.label(): o for o in switch_settings()}
    for name in args.settings.split(","):
        base = run(by_label[name], False, model_dir, prompts, speed=not args.agreement_only)
        tuned = run(by_label[name], True, model_dir, prompts, speed=not args.agreement_only)
        agree = compare(tuned["tokens"], tuned["logits"], base["tokens"], base["logits"])
        if "tok_s" in base:
            tuned["speedup"], base["speedup"] = tuned["tok_s"] / base["tok_s"], 1.0
        tuned["token_match_rate"] = agree["token_match_rate"]
        tuned["match_rate_excl_ties"] = agree["match_rate_excl_ties"]
        tuned["max_logit_rel_err"] = max_logit_rel_err(tuned["logits"], base["logits"], tuned["tokens"],
                                                       base["tokens"])
        rows += [base, tuned]
    print(f"\nbatch-1 GEMVs: cuBLAS vs inductor (coordinate_descent_tuning), measured on {gpu_name()}; "
          "speedup and agreement are against the same setting with the knob off, same run")
    cols = ["setting", "coordinate_descent_tuning", "tok_s", "speedup", "tpot_ms", "kernels_per_step",
            "kernel_us_per_step", "short_gap_us_per_step", "wall_ms_per_step", "compile_s", "graph_capture_s", "token_match_rate",
            "match_rate_excl_ties", "max_logit_rel_err"]
    print(format_table(rows, cols))
    for r in rows:
        print(f"\ntop kernels, {r['setting']}, tuning {'on' if r['coordinate_descent_tuning'] else 'off'}:")
        for k in r["top_kernels"]:
            print(f"  {k['us_per_step']:7.1f} us/step  {k['name'][:110]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k not in ("tokens", "logits")} | {"gpu": gpu_name()}
                       for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
