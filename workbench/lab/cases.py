"""Hidden cases for the attention exercises: a paged KV cache and the metadata of one step.

Each case is a few sequences, each with some keys already cached and some new query tokens,
scattered over shuffled cache blocks -- the layout the engine hands every attention backend.
"""
from __future__ import annotations

import torch

from workbench.attention import AttentionMetadata

# (cached tokens, new tokens) per sequence: prefill, prefill after a prefix-cache hit, decode, GQA
CASES = [
    dict(seqs=[(0, 7)], heads=(2, 2)),                       # one prompt, plain multi-head
    dict(seqs=[(0, 5), (0, 19), (0, 1)], heads=(4, 2)),      # packed prompts, GQA, a 1-token prompt
    dict(seqs=[(16, 9), (3, 4)], heads=(4, 1)),              # cached prefix + new chunk (MQA)
    dict(seqs=[(30, 1), (7, 1), (0, 1)], heads=(4, 2)),      # a decode step
]


def make_case(seqs, heads, *, block_size: int = 8, head_dim: int = 16, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hq, hkv = heads
    lens = [c + n for c, n in seqs]
    blocks_per_seq = [-(-n // block_size) for n in lens]
    num_blocks = sum(blocks_per_seq) + 3
    order = torch.randperm(num_blocks, generator=g).tolist()   # blocks are not contiguous
    k_cache = torch.randn(num_blocks, block_size, hkv, head_dim, generator=g, dtype=dtype)
    v_cache = torch.randn(num_blocks, block_size, hkv, head_dim, generator=g, dtype=dtype)
    width = max(blocks_per_seq)
    tables = torch.zeros(len(seqs), width, dtype=torch.int32)
    slots, taken = [], 0
    for b, ((cached, new), nblk) in enumerate(zip(seqs, blocks_per_seq)):
        tables[b, :nblk] = torch.tensor(order[taken:taken + nblk])
        taken += nblk
        for t in range(cached, cached + new):
            slots.append(int(tables[b, t // block_size]) * block_size + t % block_size)
    new_counts = torch.tensor([n for _, n in seqs])
    meta = AttentionMetadata(
        cu_seqlens_q=torch.cat([torch.zeros(1, dtype=torch.int32), new_counts.cumsum(0).int()]),
        seq_lens=torch.tensor(lens, dtype=torch.int32), block_tables=tables,
        slot_mapping=torch.tensor(slots, dtype=torch.int64), max_seqlen_q=int(new_counts.max()),
        max_seqlen_k=max(lens), is_decode=all(n == 1 for _, n in seqs))
    q = torch.randn(int(new_counts.sum()), hq, head_dim, generator=g, dtype=dtype)
    return q, k_cache, v_cache, meta, head_dim ** -0.5


def locate(token: int, meta: AttentionMetadata) -> str:
    """'sequence b, new token i (key position p)' for a packed token index."""
    cu = meta.cu_seqlens_q.tolist()
    b = next(i for i in range(len(cu) - 1) if cu[i] <= token < cu[i + 1])
    new = cu[b + 1] - cu[b]
    pos = int(meta.seq_lens[b]) - new + token - cu[b]
    return f"sequence {b}, new token {token - cu[b]} (position {pos}, {pos + 1} keys visible)"
