"""Attention backends. Each is a callable (q, k_cache, v_cache, meta, scale) -> out over packed tokens."""
from __future__ import annotations

from .kv_cache import store_kv
from .metadata import AttentionMetadata


def make_backend(name: str):
    if name == "naive":
        from .naive import NaiveAttention
        return NaiveAttention()
    if name == "sdpa":
        from .sdpa import SdpaAttention
        return SdpaAttention()
    if name == "flash":
        from .flash import FlashAttention
        return FlashAttention()
    raise ValueError(f"unknown attention backend {name!r}; choose naive, sdpa or flash")


__all__ = ["AttentionMetadata", "make_backend", "store_kv"]
