"""Switch `attention`: naive | sdpa | flash -- attacks attention's HBM traffic.

naive materializes the N x N score matrix in HBM; sdpa is torch's fused attention; flash is
flash-attn's varlen prefill and paged decode, which never writes the scores out. The kernels live
in workbench/attention/ (one file a backend); this module picks one and installs it.

Chapter: notebooks/03 (FlashAttention). Measurement: workbench/measure/attention_traffic.py
(bytes and time vs N, under ncu via measure/hbm.py) calls the same backends on unpaged tensors.

Installed: `install(model, name, override)` sets every attention layer's `backend` once, after
the model is built. A student's function plugs in as `LLM(..., overrides={"attention": fn})`:

    fn(q [T, Hq, D], k_cache, v_cache, meta: AttentionMetadata, scale: float) -> out [T, Hq, D]

over the step's packed new tokens; k_cache/v_cache [num_blocks, block_size, Hkv, D] already hold
this step's K/V (workbench/attention/metadata.py explains the layout; naive.py is the reference).
"""
from __future__ import annotations

from workbench.attention import make_backend

from .availability import needs_cuda

BACKENDS = ("naive", "sdpa", "flash")


def why_not(device: str, tp_size: int = 1) -> str | None:
    """Why attention='flash' cannot run here (naive and sdpa run everywhere)."""
    if why := needs_cuda(device):
        return why
    from workbench.attention.flash import flash_status
    name, reason = flash_status()
    return None if name is not None else reason


def install(model, name: str, override=None):
    """Give every layer the backend `name` (or the override); returns the function installed."""
    backend = override if override is not None else make_backend(name)
    for layer in model.layers:
        layer.self_attn.backend = backend
    return backend
