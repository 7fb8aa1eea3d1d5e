"""Writing the step's new K/V into the paged cache.

Each new token has a slot (block_id * block_size + offset) chosen by the block manager. On a GPU
one Triton kernel does the scatter; on a CPU plain tensor indexing does. Attention backends then
read keys only from the cache, so prefix-cache hits and earlier chunks are just 'more keys'.
"""
from __future__ import annotations

import torch


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    if k.is_cuda:
        from workbench.kernels import store_kvcache
        store_kvcache(k, v, k_cache, v_cache, slot_mapping)
        return
    keep = slot_mapping >= 0   # -1 marks padding tokens that own no slot
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep]
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep]
