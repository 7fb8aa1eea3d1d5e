"""torch's scaled_dot_product_attention over the paged cache (CPU, or GPU without flash-attn).

Same padded layout as the naive backend, but torch picks a fused kernel, so the score matrix
need not be written out in full. With an explicit mask torch may still fall back to a
materializing kernel; that is the price of the generic path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .metadata import AttentionMetadata
from .padded import causal_mask, gather_kv, pad_queries


class SdpaAttention:
    name = "sdpa"

    def __call__(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        q_pad, index = pad_queries(q, meta)
        k, v = gather_kv(k_cache, meta), gather_kv(v_cache, meta)
        mask = causal_mask(meta, k.shape[1], q.device)
        out = F.scaled_dot_product_attention(
            q_pad.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=mask, scale=scale, enable_gqa=True)
        return out.transpose(1, 2).flatten(0, 1)[index]
