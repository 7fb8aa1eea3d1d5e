"""One step's model inputs, built on the host as whole numpy arrays, then moved to the device.

The scheduler hands the runner (token ids, block table, start, end) per sequence. Packing them
runs on the CPU every step, between two GPU steps, so it works on arrays, not token by token: a
decode step (one new token per sequence) needs no per-sequence ranges at all.

The arrays stay on the host until a consumer moves them: the eager path copies each to the device
(`to_device`); the CUDA-graph path writes them into its pinned staging buffer and moves them in
two copies (see cuda_graphs.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench.attention import AttentionMetadata


@dataclass
class HostStep:
    input_ids: np.ndarray      # int64 [T]: the new tokens, packed end to end
    positions: np.ndarray      # int64 [T]
    slot_mapping: np.ndarray   # int64 [T]: cache slot of each new token
    cu_seqlens_q: np.ndarray   # int32 [B+1]
    seq_lens: np.ndarray       # int32 [B]
    block_tables: np.ndarray   # int32 [B, max blocks of this step]
    max_seqlen_q: int
    max_seqlen_k: int
    is_decode: bool

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    def to_device(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        def move(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(device, non_blocking=True)

        meta = AttentionMetadata(
            cu_seqlens_q=move(self.cu_seqlens_q), seq_lens=move(self.seq_lens),
            block_tables=move(self.block_tables), slot_mapping=move(self.slot_mapping),
            max_seqlen_q=self.max_seqlen_q, max_seqlen_k=self.max_seqlen_k, is_decode=self.is_decode)
        return move(self.input_ids), move(self.positions), meta


def _slots(tables: np.ndarray, rows: np.ndarray, positions: np.ndarray, block_size: int) -> np.ndarray:
    """Cache slot of each token: its block (from its row of the block table) x block_size + offset."""
    return tables[rows, positions // block_size].astype(np.int64) * block_size + positions % block_size


def _table_array(block_tables: list) -> np.ndarray:
    tables = np.zeros((len(block_tables), max(len(table) for table in block_tables)), dtype=np.int32)
    for row, table in enumerate(block_tables):
        tables[row, :len(table)] = table
    return tables


def pack_step(items, block_size: int) -> HostStep:
    """items: (token_ids, block_table, start, end) per sequence: tokens start..end-1 are new."""
    n = len(items)
    starts = np.fromiter((start for _, _, start, _ in items), np.int64, n)
    ends = np.fromiter((end for _, _, _, end in items), np.int64, n)
    q_lens = ends - starts
    tables = _table_array([table for _, table, _, _ in items])
    is_decode = bool((q_lens == 1).all())
    if is_decode:
        positions, owner = starts, np.arange(n)
        ids = np.fromiter((token_ids[start] for token_ids, _, start, _ in items), np.int64, n)
    else:
        positions = np.concatenate([np.arange(start, end) for start, end in zip(starts, ends)])
        owner = np.repeat(np.arange(n), q_lens)   # which sequence each packed token belongs to
        ids = np.concatenate([np.asarray(t[start:end], dtype=np.int64) for t, _, start, end in items])
    return HostStep(input_ids=ids, positions=positions, slot_mapping=_slots(tables, owner, positions, block_size),
                    cu_seqlens_q=np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32),
                    seq_lens=ends.astype(np.int32), block_tables=tables,
                    max_seqlen_q=int(q_lens.max()), max_seqlen_k=int(ends.max()), is_decode=is_decode)


def next_decode_step(step: HostStep, block_size: int) -> HostStep:
    """The decode step after `step`, for the same sequences, each one token further (multi-step
    decoding). Its input tokens are `step`'s samples, still on the GPU: the ids here are -1
    placeholders the runner replaces. The block tables must already hold room for the new slots."""
    assert step.is_decode, "only a decode step has a next step known in advance"
    positions = step.positions + 1
    slots = _slots(step.block_tables, np.arange(step.num_seqs), positions, block_size)
    return HostStep(input_ids=np.full_like(step.input_ids, -1), positions=positions, slot_mapping=slots,
                    cu_seqlens_q=step.cu_seqlens_q, seq_lens=step.seq_lens + 1, block_tables=step.block_tables,
                    max_seqlen_q=1, max_seqlen_k=step.max_seqlen_k + 1, is_decode=True)


def decode_step_at(block_tables: list, positions: list[int], block_size: int) -> HostStep:
    """A decode step whose input tokens are not on the host yet (async_rounds: the last samples of
    a round still running on the GPU): -1 placeholders the runner replaces. positions: each
    sequence's input position; its block table must already hold that slot."""
    positions = np.asarray(positions, dtype=np.int64)
    n, tables = len(positions), _table_array(block_tables)
    return HostStep(input_ids=np.full(n, -1, dtype=np.int64), positions=positions,
                    slot_mapping=_slots(tables, np.arange(n), positions, block_size),
                    cu_seqlens_q=np.arange(n + 1, dtype=np.int32), seq_lens=(positions + 1).astype(np.int32),
                    block_tables=tables, max_seqlen_q=1, max_seqlen_k=int(positions.max()) + 1, is_decode=True)
