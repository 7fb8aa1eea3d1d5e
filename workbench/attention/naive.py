"""Naive attention: softmax(Q K^T / sqrt(d)) V with the full score matrix in memory.

This is the baseline FlashAttention beats. For Lq queries and Lk keys per head it writes an
Lq x Lk score matrix to HBM, reads it back for the softmax, writes the probabilities, and reads
them again for the product with V -- the traffic that grows with N^2.
"""
from __future__ import annotations

import torch

from .metadata import AttentionMetadata
from .padded import causal_mask, gather_kv, pad_queries


class NaiveAttention:
    name = "naive"

    def __call__(self, q, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        q_pad, index = pad_queries(q, meta)                     # [B, Lq, Hq, D]
        k, v = gather_kv(k_cache, meta), gather_kv(v_cache, meta)  # [B, Lk, Hkv, D]
        group = q.shape[1] // k.shape[2]                        # GQA: query heads per KV head
        k = k.repeat_interleave(group, dim=2)
        v = v.repeat_interleave(group, dim=2)
        q_pad, k, v = (t.transpose(1, 2) for t in (q_pad, k, v))  # [B, H, L, D]
        scores = torch.matmul(q_pad, k.transpose(-1, -2)) * scale   # the N x N matrix
        mask = causal_mask(meta, k.shape[2], q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2)            # [B, Lq, Hq, D]
        return out.flatten(0, 1)[index]
