"""The FlashAttention experiment: HBM bytes and time of one causal attention, naive vs flash.

For each N, the same attention (Qwen3-0.6B head shape: 16 query heads, 8 KV heads, head_dim
128) runs once under Nsight Compute (measured DRAM bytes) and is timed separately with CUDA
events (ncu serializes kernels and fixes clocks, so its durations are not speeds). The model
of the bytes sits beside the measurement, labelled modelled.
"""
from __future__ import annotations

from .hbm import measure_hbm_python
from .roofline import attention_traffic_model
from .workloads import attention_workload


def attention_traffic(ns=(1024, 4096, 8192), impls=("naive", "flash"), *, heads: int = 16,
                      kv_heads: int = 8, head_dim: int = 128, time_repeats: int = 20) -> list[dict]:
    import torch
    rows = []
    for n in ns:
        model = attention_traffic_model(n, heads, head_dim, kv_heads=kv_heads)
        for impl in impls:
            shape = dict(impl=impl, n=n, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
            record = measure_hbm_python(attention_workload, shape)
            row = {"n": n, "impl": impl, "measured_bytes": record.dram_bytes if record.available else None,
                   "modelled_bytes": model.naive_bytes if impl == "naive" else model.flash_bytes,
                   "kernels": len(record.kernels), "time_ms": None,
                   "hbm_unavailable": None if record.available else record.reason}
            if torch.cuda.is_available():
                row["time_ms"] = attention_workload(**shape, repeats=time_repeats)["time_s"] * 1e3
            rows.append(row)
            print(f"  N={n:>5} {impl:<6} measured {row['measured_bytes'] or 0:>16,.0f} B  "
                  f"modelled {row['modelled_bytes']:>16,} B  {row['time_ms'] or 0:8.3f} ms", flush=True)
    for row in rows:   # naive / flash at the same N, measured
        pair = {r["impl"]: r for r in rows if r["n"] == row["n"]}
        if row["impl"] == "naive" and "flash" in pair and row["measured_bytes"] and pair["flash"]["measured_bytes"]:
            row["bytes_vs_flash"] = row["measured_bytes"] / pair["flash"]["measured_bytes"]
            if row["time_ms"] and pair["flash"]["time_ms"]:
                row["time_vs_flash"] = row["time_ms"] / pair["flash"]["time_ms"]
    return rows
