"""Gather a step's queries and keys into padded [batch, length, heads, dim] tensors.

Naive and SDPA attention want rectangular tensors, the engine has packed tokens and a paged
cache. This file does the translation: queries are scattered into rows per sequence, and each
sequence's keys are gathered block by block through its block table.
"""
from __future__ import annotations

import torch

from .metadata import AttentionMetadata


def pad_queries(q: torch.Tensor, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, H, D] packed -> ([B, Lq, H, D] padded, index of each packed token in the padded rows)."""
    batch, lq = meta.num_seqs, meta.max_seqlen_q
    if meta.is_decode:   # one token per sequence: padding is a reshape
        return q.unsqueeze(1), torch.arange(batch, device=q.device)
    cu = meta.cu_seqlens_q.long()
    token = torch.arange(q.shape[0], device=q.device)
    seq = torch.searchsorted(cu[1:], token, right=True)
    flat_index = seq * lq + (token - cu[seq])
    padded = q.new_zeros(batch * lq, *q.shape[1:])
    padded[flat_index] = q
    return padded.view(batch, lq, *q.shape[1:]), flat_index


def gather_kv(cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    """Paged cache [blocks, block_size, H, D] -> keys per sequence [B, max_blocks*block_size, H, D]."""
    table = meta.block_tables
    blocks = cache.index_select(0, table.flatten())    # [B * max_blocks, block_size, H, D]
    return blocks.view(table.shape[0], -1, *cache.shape[2:])


def causal_mask(meta: AttentionMetadata, lk: int, device) -> torch.Tensor:
    """Bool [B, 1, Lq, Lk]: query i of sequence b sees key j iff j <= (cached_b + i) and j < len_b.

    The new tokens are the *last* ones of each sequence, so the causal diagonal is shifted by the
    number of keys already cached (bottom-right alignment)."""
    seq_lens = meta.seq_lens.long()
    q_lens = (meta.cu_seqlens_q[1:] - meta.cu_seqlens_q[:-1]).long()
    cached = (seq_lens - q_lens)[:, None, None]
    i = torch.arange(meta.max_seqlen_q, device=device)[None, :, None]
    j = torch.arange(lk, device=device)[None, None, :]
    return ((j <= cached + i) & (j < seq_lens[:, None, None])).unsqueeze(1)
