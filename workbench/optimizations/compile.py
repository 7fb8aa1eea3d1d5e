"""Switch `compile`: torch.compile the model forward -- attacks what a compiler finds: fusions of
element-wise chains and redundant work, without hand-written kernels.

Chapter: notebooks/06 (torch.compile: compile time vs speed-up). Measurement: the bench
(`python -m workbench bench --workload stack`) with the switch off and on; the compile time is
recorded at warm-up (`llm.timings()["compile_s"]`).

Installed: `install(model)` returns the compiled forward that the runner calls instead of
`model.forward`; `warm_up(...)` compiles outside any timed region. Attention stays eager
(`Attention.attend` is excluded from compilation).
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
