"""Switch `compile`: torch.compile the model forward -- attacks what a compiler finds: fusions of
element-wise chains and redundant work, without hand-written kernels.

Chapter: notebooks/06 (torch.compile: compile time vs speed-up). Measurement: the bench
(`python -m workbench bench --workload stack`) with the switch off and on; the compile time is
recorded at warm-up (`llm.timings()["compile_s"]`).

Installed: `install(model)` returns the compiled forward that the runner calls instead of
`model.forward`; `warm_up(...)` compiles outside any timed region. Attention stays eager
(`Attention.attend` is excluded from compilation).

Where it pays (EngineConfig.compile_prefill, a candidate). A decode step replays a CUDA graph,
so the compiled forward's host work is paid once, at capture. A prefill step runs eagerly: every
layer's compiled pieces (attention breaks the graph) evaluate dynamo's guards and go through
AOT autograd's wrappers on every step. On an H200 a 16 x 512-token prefill step took 35.6 ms
with all on against 20.7 ms with flash + fused, ~15 ms of kernels in both: the difference is
host time with the GPU idle (docs/results/breakdown-prefill-batch-h200.json). That compile is
its cause is a hypothesis (all on differs by five more switches, decode-only ones); a cProfile of
the compiled prefill (scripts/profile_prefill_host.py) shows dynamo's frames on top.
compile_prefill=False runs steps that carry prompt tokens through the plain forward; decode keeps
inductor's kernels. Measured once (session 13, nano-vLLM's workload at 16,384 tokens a step):
the prefill rate 452k -> 483k tok/s, the run +0.4 % (noise): compile_prefill stays True.
(A one-sequence prefill replayed from a graph, prefill_graphs.py, keeps the compiled forward.)
"""
from __future__ import annotations

import torch


def why_not(device: str, tp_size: int = 1) -> str | None:
    return None   # inductor writes C++ on a CPU and Triton on a GPU


def install(model):
    """The compiled forward (the model itself is unchanged)."""
    # Attention stays eager (graph breaks), so each decoder layer is compiled as its own frames;
    # first-layer/other-layer and size-1 specializations add variants. The default limit (8) was
    # hit on the H100, silently falling back to eager: raise it.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    # Round to bf16 wherever the eager code does (inductor otherwise keeps fused intermediates in
    # fp32): compiled logits then differ from eager's by rounding noise only.
    import torch._inductor.config as inductor_config
    inductor_config.emulate_precision_casts = True
    return torch.compile(model.forward, dynamic=True)
