"""What every attention backend needs to know about one engine step.

The model runs on *packed* tokens: the new tokens of all scheduled sequences laid end to end,
shape [T, ...], no padding. Sequence b owns tokens cu_seqlens_q[b]:cu_seqlens_q[b+1]; its keys
are the first seq_lens[b] slots of its paged cache (cached prefix + the new tokens), found
through block_tables[b]. One layout serves prefill, chunked prefill, prefix-cache hits and
decode: decode is just the case where every sequence brings one new token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    cu_seqlens_q: torch.Tensor   # int32 [B+1]: prefix sums of new-token counts
    seq_lens: torch.Tensor       # int32 [B]: keys per sequence = cached + new tokens
    block_tables: torch.Tensor   # int32 [B, max_blocks]: KV block ids per sequence (pad: 0)
    slot_mapping: torch.Tensor   # int64 [T]: cache slot (block * block_size + offset) per new token; -1 = skip
    max_seqlen_q: int            # host ints: kernels size their grids with these
    max_seqlen_k: int
    is_decode: bool              # every sequence has exactly one new token

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]
