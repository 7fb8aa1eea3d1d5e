"""Sweep the decode GEMV's configs per layer shape of Qwen3-0.6B, on the GPU, in one call.

    python scripts/sweep_gemv.py results/gemv-sweep.json [--ms 1,4,16] [--budget-s 200]

For each (layer shape, M): every config of a small grid (BLOCK_N, BLOCK_K, SPLIT_K), then the
best one's neighbours in num_warps and num_stages. Each config is first checked against F.linear
(float32 reference of the same bf16 inputs, ||got - ref|| / ||ref|| < 1e-2; a failing config is
reported and never timed), then timed exactly as `measure gemv` times things
(workbench.measure.gemv.time_layer: one call per layer, each on its own weight, one CUDA graph,
median replay; the same bandwidth arithmetic). cuBLAS is timed the same way as the baseline.
Prints a row per config as it goes, then the best config per shape as a dict literal for
workbench/kernels/gemv.py's CONFIGS, and writes every row as JSON to the path given. A time budget stops the grid early (said so).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench.kernels.gemv import GemvConfig, gemv
from workbench.measure import measure_copy_bandwidth
from workbench.measure.results import stamp
from workbench.measure.gemv import gemv_shapes, time_layer
from workbench.model import ModelConfig


def grid(m: int, k: int):
    """Phase 1: block shapes and split-K (M = 1: elementwise path; M > 1: tl.dot, BLOCK_N >= 16)."""
    block_ns, block_ks = ((1, 2, 4, 8), (256, 512, 1024)) if m == 1 else ((16, 32, 64), (64, 128, 256))
    for bn, bk, split in itertools.product(block_ns, block_ks, (1, 2, 4, 8)):
        if k // split >= bk:   # each slice gets at least one whole block
            yield GemvConfig(block_n=bn, block_k=bk, split_k=split, num_warps=4, num_stages=1)


def neighbours(best: GemvConfig):
    """Phase 2: warps and pipelining depth around the phase-1 winner."""
    for warps, stages in itertools.product((2, 4, 8), (1, 2, 3, 4)):
        cfg = replace(best, num_warps=warps, num_stages=stages)
        if cfg != best:
            yield cfg


def rel_err(m: int, k: int, n: int, cfg: GemvConfig | None) -> float:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    got = gemv(x, w, b, cfg).float()
    ref = F.linear(x.float(), w.float(), b.float())
    return ((got - ref).norm() / ref.norm()).item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="write every row here")
    ap.add_argument("--ms", default="1,4,16", help="token counts M to sweep")
    ap.add_argument("--budget-s", type=float, default=200.0, help="stop the grid after this many seconds")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: this sweep times CUDA-graph replays; run it on the GPU machine")
        return 1
    start = time.perf_counter()
    copy = measure_copy_bandwidth()
    bw = copy.bandwidth if copy.available else None
    print(f"{torch.cuda.get_device_name()}: {copy}", flush=True)
    cfg = ModelConfig.from_preset("qwen3-0.6b")
    rows, best = [], {}
    ms = [int(v) for v in args.ms.split(",")]
    print(f"{'layer':<13}{'M':>3} {'K':>5} {'N':>7}  {'impl/config':<44}{'err':>9}{'us':>9}{'TB/s':>7}{'of copy':>8}")
    for m, (name, (k, n)) in itertools.product(ms, gemv_shapes(cfg).items()):
        if name == "lm_head" and m > 1:
            continue   # the engine computes logits of the last token of each sequence: M = batch,
            # but the 311 MB head is at copy bandwidth under cuBLAS already (measure gemv)

        def record(impl, config, err):
            timed = (time_layer(cfg, name, impl, m=m, config=config, copy_bandwidth=bw)
                     if err is None or err < 1e-2 else None)   # a wrong config is never timed
            us = timed.us_per_call if timed else None
            tbs = timed.bandwidth / 1e12 if timed else None
            row = dict(layer=name, m=m, k=k, n=n, impl=impl, config=config.as_dict() if config else None,
                       rel_err=err, us_per_call=us, tb_per_s=tbs, of_copy=timed.of_copy_bandwidth if timed else None)
            rows.append(row)
            label = impl if config is None else (f"bn{config.block_n} bk{config.block_k} sk{config.split_k} "
                                                 f"w{config.num_warps} s{config.num_stages}")
            cell = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
            print(f"{name:<13}{m:>3} {k:>5} {n:>7}  {label:<44}{cell(err, '9.1e')}{cell(us, '9.2f')}"
                  f"{cell(tbs, '7.2f')}{cell(row['of_copy'], '8.0%')}" + ("  WRONG" if err and err >= 1e-2 else ""),
                  flush=True)
            return row

        base = record("cublas", None, None)
        record("triton", None, rel_err(m, k, n, None))   # the shipped choice: CONFIGS or the heuristic
        phase1 = []
        for config in grid(m, k):
            if time.perf_counter() - start > args.budget_s:
                print(f"  budget of {args.budget_s:.0f} s spent: {name} M={m} grid stopped early", flush=True)
                break
            phase1.append(record("triton", config, rel_err(m, k, n, config)))
        timed = [r for r in phase1 if r["us_per_call"]]
        if not timed:
            continue
        winner = min(timed, key=lambda r: r["us_per_call"])
        for config in neighbours(GemvConfig(**winner["config"])):
            if time.perf_counter() - start > args.budget_s:
                break
            row = record("triton", config, rel_err(m, k, n, config))
            if row["us_per_call"] and row["us_per_call"] < winner["us_per_call"]:
                winner = row
        best[(n, k, "m1" if m == 1 else "m16", m)] = (winner, base)
    print(f"\nbest per shape (measured on {torch.cuda.get_device_name()}, copy bandwidth "
          f"{bw / 1e12 if bw else float('nan'):.2f} TB/s):")
    for (n, k, bucket, m), (w, base) in best.items():
        print(f"  {w['layer']:<13} M={m:<3} {w['us_per_call']:7.2f} us ({w['of_copy'] or 0:.0%} of copy) "
              f"vs cuBLAS {base['us_per_call']:7.2f} us ({base['of_copy'] or 0:.0%})")
    print("\nCONFIGS = {   # paste into workbench/kernels/gemv.py (the largest M of each bucket wins)")
    for (n, k, bucket, m), (w, _) in sorted(best.items(), key=lambda kv: kv[0][3]):
        c = w["config"]
        print(f"    ({n}, {k}, {bucket!r}): GemvConfig({', '.join(f'{a}={v}' for a, v in c.items())}),"
              f"   # M={m}, {w['us_per_call']:.2f} us")
    print("}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    # a results file is a list of records, each saying where, when and how (measure/results.py)
    records = stamp([dict(row, copy_bandwidth=bw) for row in rows], "python scripts/sweep_gemv.py " + args.json)
    Path(args.json).write_text(json.dumps(records, indent=1))
    print(f"wrote {args.json} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
