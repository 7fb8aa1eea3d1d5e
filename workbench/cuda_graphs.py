"""CUDA-graph decode: record a decode step once per batch size, replay it every step.

A decode step of a 28-layer model launches hundreds of small kernels; with one token per
sequence, the CPU time to launch them exceeds the GPU time to run them. A CUDA graph records the
whole launch sequence once and replays it with a single call.

Graphs replay fixed shapes and fixed addresses, so:
- inputs live in static buffers that each step copies into before replay;
- batch sizes are rounded up to a bucket (1, 2, 4, 8, 16, 32, 48, ...), one graph per bucket,
  the padding rows pointed at no cache slot (slot -1) and given a 1-token context;
- the attention metadata uses the full block-table width and max_model_len as its bounds.
Prefill stays eager: its shapes change every step.
"""
from __future__ import annotations

import time

import torch

from workbench.attention import AttentionMetadata


def decode_buckets(max_num_seqs: int) -> list[int]:
    buckets = [b for b in (1, 2, 4, 8, 16) if b < max_num_seqs]
    buckets += list(range(32, max_num_seqs, 16)) + [max_num_seqs]
    return sorted(set(buckets))


class DecodeGraphs:
    def __init__(self, forward, *, max_num_seqs: int, max_blocks_per_seq: int, max_model_len: int,
                 device: torch.device):
        self.forward = forward
        self.max_model_len = max_model_len
        self.buckets = decode_buckets(max_num_seqs)
        n = self.buckets[-1]
        i32 = dict(dtype=torch.int32, device=device)
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(n, **i32)
        self.block_tables = torch.zeros(n, max_blocks_per_seq, **i32)
        self.cu_seqlens_q = torch.arange(n + 1, **i32)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.capture_seconds = 0.0

    def _meta(self, batch: int) -> AttentionMetadata:
        return AttentionMetadata(cu_seqlens_q=self.cu_seqlens_q[:batch + 1], seq_lens=self.seq_lens[:batch],
                                 block_tables=self.block_tables[:batch], slot_mapping=self.slot_mapping[:batch],
                                 max_seqlen_q=1, max_seqlen_k=self.max_model_len, is_decode=True)

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up and record one graph per bucket, largest first so all share one memory pool."""
        start = time.perf_counter()
        pool = None
        for batch in reversed(self.buckets):
            args = (self.input_ids[:batch], self.positions[:batch], self._meta(batch))
            self.forward(*args)   # warm-up: JIT kernels (Triton, flash-attn) compile outside capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[batch] = self.forward(*args)
            pool = graph.pool()
            self.graphs[batch] = graph
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - start

    def can_run(self, meta: AttentionMetadata) -> bool:
        return meta.is_decode and meta.num_seqs <= self.buckets[-1]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        batch = meta.num_seqs
        bucket = next(b for b in self.buckets if b >= batch)
        self.input_ids[:batch] = input_ids
        self.positions[:batch] = positions
        self.slot_mapping[:batch] = meta.slot_mapping
        self.slot_mapping[batch:bucket] = -1          # padding rows write nowhere ...
        self.seq_lens[:batch] = meta.seq_lens
        self.seq_lens[batch:bucket] = 1               # ... and attend to one (ignored) key
        self.block_tables[:batch, :meta.block_tables.shape[1]] = meta.block_tables
        self.graphs[bucket].replay()
        return self.outputs[bucket][:batch]
