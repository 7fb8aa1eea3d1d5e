"""Switch `cuda_graphs`: record a decode step once per batch size, replay it every step --
attacks the CPU's launch overhead (hundreds of small kernels a decode step).

Chapter: notebooks/05 (CUDA graphs: launches per step). Measurement: measure/launches.py via
`LLM.step` (CPU launch calls vs GPU kernels per decode step). Installed: the runner builds
`DecodeGraphs(runner.forward_logits, ...)` and replays it for every pure-decode step it can run.

A decode step of a 28-layer model launches hundreds of small kernels; with one token per
sequence, the CPU time to launch them exceeds the GPU time to run them. A CUDA graph records the
whole launch sequence once and replays it with a single call.

Graphs replay fixed shapes and fixed addresses, so:
- inputs live in static device buffers; each step writes its host arrays into a pinned staging
  copy of them and moves it in two copies (one int64, one int32) before the replay;
- batch sizes are rounded up to a bucket (1, 2, 4, 8, 16, 32, 48, ...), one graph per bucket,
  the padding rows pointed at no cache slot (slot -1) and given a 1-token context;
- the attention metadata uses the full block-table width and max_model_len as its bounds.
The graph records the LM head too: a decode step samples from every row, so the whole step up to
the logits is one replay (with graph_sampling, graph_sampling.py, the sampler as well). Prefill
stays eager: its shapes change every step (prefill_graphs.py, on with this switch, pads one
sequence's prefill to a fixed size).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from workbench.attention import AttentionMetadata

from .availability import needs_cuda

from .graph_sampling import GraphSampling

if TYPE_CHECKING:   # (a type only: the engine imports this module, not the other way round)
    from workbench.engine.step_inputs import HostStep


def why_not(device: str, tp_size: int = 1) -> str | None:
    if why := needs_cuda(device):
        return why
    if tp_size > 1:   # capturing NCCL all-reduces inside each rank's graph works in principle, but
        # it was never verified on a multi-GPU machine: an error beats a silently wrong or hung engine
        return f"untested with tensor_parallel_size={tp_size} (graph capture of the all-reduces was never verified)"
    return None


def decode_buckets(max_num_seqs: int) -> list[int]:
    buckets = [b for b in (1, 2, 4, 8, 16) if b < max_num_seqs]
    buckets += list(range(32, max_num_seqs, 16)) + [max_num_seqs]
    return sorted(set(buckets))


class DecodeGraphs:
    """forward_logits(input_ids, positions, meta) -> logits [B, vocab]: what each graph records;
    with sample_in_graph (graph_sampling.py) each graph records the sampler after it too."""

    def __init__(self, forward_logits, *, max_num_seqs: int, max_blocks_per_seq: int, max_model_len: int,
                 device: torch.device, sample_in_graph: bool = False):
        self.forward_logits = forward_logits
        self.max_model_len = max_model_len
        self.buckets = decode_buckets(max_num_seqs)
        n = self.buckets[-1]
        self.n, self.width = n, max_blocks_per_seq
        self.sampling = GraphSampling(n, device) if sample_in_graph else None
        # Two flat buffers, so a step's inputs move in two copies; every field is a contiguous slice.
        self.i64 = torch.zeros(4 * n, dtype=torch.long, device=device)
        self.i32 = torch.zeros(n + n * max_blocks_per_seq, dtype=torch.int32, device=device)
        self.host_i64 = torch.zeros_like(self.i64, device="cpu").pin_memory()
        self.host_i32 = torch.zeros_like(self.i32, device="cpu").pin_memory()
        self.copied = torch.cuda.Event()   # the staging buffers may be rewritten once this fires
        # counts: tokens each row sampled before this step (read only by a graph that samples)
        self.input_ids, self.positions, self.slot_mapping, self.counts = self.i64.view(4, n)
        self.seq_lens = self.i32[:n]
        self.block_tables = self.i32[n:].view(n, max_blocks_per_seq)
        self.seq_lens.fill_(1)
        self.slot_mapping.fill_(-1)
        self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.tokens: dict[int, torch.Tensor] = {}   # graph_sampling: each graph's sampled tokens
        self.capture_seconds = 0.0
        self.round_steps = 0   # > 0: capture_rounds recorded rounds of this many steps
        self.round_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.round_tokens: dict[int, torch.Tensor] = {}
        self._pool = None

    def _meta(self, batch: int) -> AttentionMetadata:
        return AttentionMetadata(cu_seqlens_q=self.cu_seqlens_q[:batch + 1], seq_lens=self.seq_lens[:batch],
                                 block_tables=self.block_tables[:batch], slot_mapping=self.slot_mapping[:batch],
                                 max_seqlen_q=1, max_seqlen_k=self.max_model_len, is_decode=True)

    @torch.inference_mode()
    def capture(self, on_captured=None) -> None:
        """Warm up and record one graph per bucket, largest first so all share one memory pool;
        on_captured() after each (a progress bar)."""
        start = time.perf_counter()
        pool = None
        for batch in reversed(self.buckets):
            args = (self.input_ids[:batch], self.positions[:batch], self._meta(batch))
            self._step(*args)   # warm-up: JIT kernels (Triton, flash-attn) compile outside capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[batch], self.tokens[batch] = self._step(*args)
            pool = graph.pool()
            self.graphs[batch] = graph
            if on_captured is not None:
                on_captured()
        torch.cuda.synchronize()
        self._pool = pool
        self.capture_seconds = time.perf_counter() - start

    def _step(self, input_ids, positions, meta, step: int = 0):
        """What a graph records for one decode step: its logits, and its tokens if it samples."""
        logits = self.forward_logits(input_ids, positions, meta)
        if self.sampling is None:
            return logits, None
        return logits, self.sampling.record(logits, self.counts, step)

    @torch.inference_mode()
    def capture_rounds(self, steps: int, block_size: int, on_captured=None) -> None:
        """After capture(): record one graph per bucket that runs `steps` decode steps (multi_step.py,
        graph_rounds): each step's token -- its argmax, or with graph_sampling the sampler's --
        goes to round_tokens[bucket][:, i] and becomes the next step's input, `advance` moving
        positions, lengths and slots on the device. The buffers are restaged before every replay,
        so what capture leaves in them is harmless."""
        from .multi_step import advance
        start = time.perf_counter()
        for batch in reversed(self.buckets):
            meta = self._meta(batch)
            ids, pos = self.input_ids[:batch], self.positions[:batch]
            tokens = torch.zeros(batch, steps, dtype=torch.long, device=self.i64.device)

            def round_():
                for i in range(steps):
                    logits, sampled = self._step(ids, pos, meta, step=i)
                    tokens[:, i] = logits.argmax(dim=-1) if sampled is None else sampled
                    if i + 1 < steps:
                        advance(ids, pos, meta.slot_mapping, meta.seq_lens, meta.block_tables, tokens[:, i],
                                block_size)
            self.slot_mapping[:batch].fill_(-1)   # the warm-up run writes no cache slot
            round_()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                round_()
            self.round_graphs[batch], self.round_tokens[batch] = graph, tokens
            if on_captured is not None:
                on_captured()
        torch.cuda.synchronize()
        self.round_steps = steps
        self.capture_seconds += time.perf_counter() - start

    @property
    def pool(self):
        """The memory pool the graphs share (None before capture): other graphs that never replay
        at the same time as these can share it too (prefill_graphs.py)."""
        return self._pool

    def can_run(self, step: HostStep) -> bool:
        return step.is_decode and step.num_seqs <= self.buckets[-1]

    def run(self, step: HostStep, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replay the graph of the smallest bucket that holds this decode step; logits [B, vocab].
        input_ids (multi-step decoding): the step's tokens as a device tensor, used instead of
        step.input_ids -- the previous step's samples, which the host has not seen yet.
        With graph_sampling, stage the batch's sampling rows first (self.sampling.stage)."""
        bucket = self._stage(step, input_ids)
        self.graphs[bucket].replay()
        return self.outputs[bucket][:step.num_seqs]

    def sampled(self, batch: int) -> torch.Tensor:
        """graph_sampling: the tokens the last replay for `batch` rows sampled, int64 [batch] -- a
        copy, since the next replay overwrites the graph's own."""
        bucket = next(b for b in self.buckets if b >= batch)
        return self.tokens[bucket][:batch].clone()

    def run_round(self, step: HostStep, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replay the round graph (capture_rounds) from this decode step, the round's first: the
        tokens of its round_steps steps, [B, round_steps], on the device (a buffer the next replay
        overwrites). input_ids: as in run() (async_rounds: the previous round's samples)."""
        bucket = self._stage(step, input_ids)
        self.round_graphs[bucket].replay()
        return self.round_tokens[bucket][:step.num_seqs]

    def _stage(self, step: HostStep, input_ids: torch.Tensor | None) -> int:
        """Copy the step's inputs into the graphs' buffers (padding rows made harmless); the bucket."""
        batch, n = step.num_seqs, self.n
        bucket = next(b for b in self.buckets if b >= batch)
        self.copied.synchronize()   # the previous step's copies have left the staging buffers
        i64, i32 = self.host_i64.numpy(), self.host_i32.numpy()
        i64[:batch], i64[n:n + batch] = step.input_ids, step.positions
        # padding rows read token 0 at position 0: never a stale id, such as a multi-step
        # placeholder (-1) that a larger batch left here, which the embedding would index with
        i64[batch:bucket], i64[n + batch:n + bucket] = 0, 0
        i64[2 * n:2 * n + batch] = step.slot_mapping
        i64[2 * n + batch:2 * n + bucket] = -1   # padding rows write nowhere ...
        if self.sampling is not None:
            i64[3 * n:3 * n + batch] = self.sampling.counts(batch)
        i32[:batch] = step.seq_lens
        i32[batch:bucket] = 1                      # ... and attend to one (ignored) key
        tables = i32[n:].reshape(n, self.width)
        tables[:batch, :step.block_tables.shape[1]] = step.block_tables
        self.i64.copy_(self.host_i64, non_blocking=True)
        self.i32.copy_(self.host_i32, non_blocking=True)
        if input_ids is not None:
            self.input_ids[:batch].copy_(input_ids)   # after the staging copy: stream order
        self.copied.record()
        return bucket
