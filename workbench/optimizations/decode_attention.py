"""Switch `decode_attention`: a decode step's attention (one query token per sequence) as a Triton
paged split-KV kernel instead of the attention backend's -- attacks the fixed cost of running a
prefill-shaped kernel for one query row (flash-attn-4: ~6.6 us a layer call on an H200 at batch 1
and a few hundred tokens of context, for < 3 MB of K/V: under 1 us of bytes).

Chapter: notebooks/09 (the last mile: where a batch-1 decode step's microseconds go).
Measurement: measure/decode_attention.py (per-layer time of the kernel vs flash-attn's decode call,
CUDA events), and `bench single` with the switch off and on (scripts/device_check.sh, decode-attn).
The kernel: workbench/kernels/decode_attention.py (FlashDecoding's idea, why each choice).

Installed: `install(model, on, override)` wraps each layer's attention backend (installed first by
attention.py): decode steps go to the kernel, every other step (prefill, chunked prefill, mixed)
to the backend (naive, sdpa or flash). A student's attention override (the `attention` seam)
replaces attention in every step, decode included: then this switch has nothing to wrap.
"""
from __future__ import annotations

from workbench.attention import AttentionMetadata

from .availability import triton_on_cuda


def why_not(device: str, tp_size: int = 1) -> str | None:
    return triton_on_cuda(device)


class DecodeThenBackend:
    """Attention callable: the Triton decode kernel when meta.is_decode, else `backend`."""

    def __init__(self, backend):
        self.backend = backend
        self.name = f"{getattr(backend, 'name', type(backend).__name__)} + Triton decode"
        self.prefetch_next = None   # a weight to ask L2 for (l2_prefetch.install_attention; an A/B candidate)

    def __call__(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float):
        if not meta.is_decode:
            return self.backend(q, k_cache, v_cache, meta, scale)
        from workbench.kernels.decode_attention import paged_decode_attention
        ahead = {} if self.prefetch_next is None else {"prefetch": self.prefetch_next}   # the candidate only
        return paged_decode_attention(q, k_cache, v_cache, meta.seq_lens, meta.block_tables, scale, **ahead)


def install(model, on: bool, override=None) -> None:
    """Wrap (on) or unwrap (off) every layer's attention backend; an override is left alone."""
    if override is not None:
        return
    for layer in model.layers:
        attn = layer.self_attn
        inner = attn.backend.backend if isinstance(attn.backend, DecodeThenBackend) else attn.backend
        attn.backend = DecodeThenBackend(inner) if on else inner
