"""EngineConfig.prefill_graphs (on by default wherever cuda_graphs is): record one sequence's prefill
step once, padded to a fixed token count, and replay it -- attacks the time to the first token. Measured on
an H200 (session 11, all on, 128 + 512 tokens): time to the first token 37.6 -> 1.9 ms, 1,283 ->
1,389 tok/s (docs/results/decode-ab-prefill-pdl-early-h200.json).

Why. The `cuda_graphs` switch makes a decode step one replay, but a prompt's prefill still runs
eagerly, and its host work is the wait: on an H200 a 128-token prompt's prefill launched 316
kernels that ran ~1.3 ms on the GPU in a step of ~29 ms (flash + fused, `measure launches`,
docs/results/launches-h200.json), and the single stream's time to the first token was 20-50 ms at
every rung of the ladder, ~8 % of a 128 + 512 run (docs/perf-notes.md, session 10). The same
trick as decode applies once the shapes are fixed.

How the shapes are fixed. A prefill step of one sequence with T new tokens is padded to the
smallest bucket B >= T (by default the one bucket, 512 tokens: see "How many graphs"). The B - T
padding tokens form a second, dummy sequence: its queries attend only to its own B - T keys, which
it reads through block 0 (whatever that block holds: finite, the cache starts zeroed) and never
writes (slot -1). Every other op of the model works row by row, so the real sequence's keys,
values and last-token logits are those of the unpadded step. Attention's lengths (cu_seqlens_q,
seq_lens) are device buffers, the step's bounds fixed host ints (max_seqlen_q = B, max_seqlen_k =
max_model_len), as in a decode graph. The graph records the forward and the LM head of the last
real token (its row a device buffer too).

How many graphs. Two graphs or more made every later decode step slower, on an H200, all on,
greedy 128 + 512 (session 16, docs/results/decode-ab-prefill-{buckets,count,pools}-h200.json):
time a token 0.657-0.663 ms with one graph (128 or 512 tokens) or none, 0.670 with two (one
round), 0.674-0.685 with three to six (no growth from three to six) -- whatever their shapes (the
128-token graph captured six times costs as six buckets do), in a memory pool of their own or
shared, replayed or not, kept or dropped after capture. The GPU's busy time a token rose ~30 us
with three or more (the matmul family, in the profiler's busy sweep): not the host. Why is open
(docs/perf-notes.md, session 16). So the default is ONE graph, every prompt padded to it: a
128-token prompt's first token came after 2.1 ms in a 512-token graph against 1.7-1.9 ms in a
128-token one, and the 512 tokens after it took 0.663 ms each against six graphs' 0.674-0.685
(other runs). `EngineConfig.prefill_graph_sizes` records others, e.g. (16, 32, ... 512).

Only steps of one sequence: a single stream's first token waits on this; a step that prefills
several prompts is bigger, and the GPU's work. Its twin is the eager prefill (prefill_graphs=False).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from workbench.attention import AttentionMetadata

if TYPE_CHECKING:
    from workbench.engine.step_inputs import HostStep

LARGEST = 512   # tokens: the default single graph's size where a step and a sequence allow it


def prefill_buckets(max_num_batched_tokens: int, max_model_len: int, sizes: tuple[int, ...] | None = None
                    ) -> list[int]:
    """The token counts to record a graph for, smallest first. None (the default): one graph as
    large as a step and a sequence allow, at most LARGEST tokens -- why one, see "How many graphs"
    above. Sizes that do not fit a step or a sequence are the caller's to refuse (`oversized`)."""
    if sizes is None:
        return [min(LARGEST, max_num_batched_tokens, max_model_len)]
    return sorted(set(sizes))


def oversized(sizes: list[int], max_num_batched_tokens: int, max_model_len: int) -> list[int]:
    """The sizes no prefill step can fill: more tokens than a step may hold or a sequence may have."""
    return [n for n in sizes if n > min(max_num_batched_tokens, max_model_len)]


def pad_prefill(step: HostStep, bucket: int, width: int, max_model_len: int) -> HostStep:
    """One sequence's prefill step padded to `bucket` tokens by a dummy second sequence (see the
    module docstring); block tables `width` blocks wide. What a graph replays, as host arrays."""
    from workbench.engine.step_inputs import HostStep
    t = len(step.input_ids)
    assert step.num_seqs == 1 and not step.is_decode and t <= bucket, "one sequence's prefill, within the bucket"
    pad = bucket - t
    tables = np.zeros((2, width), dtype=np.int32)   # row 1, the dummy's: block 0, read only
    tables[0, :step.block_tables.shape[1]] = step.block_tables[0]
    return HostStep(input_ids=np.concatenate([step.input_ids, np.zeros(pad, np.int64)]),
                    positions=np.concatenate([step.positions, np.arange(pad, dtype=np.int64)]),
                    slot_mapping=np.concatenate([step.slot_mapping, np.full(pad, -1, np.int64)]),
                    cu_seqlens_q=np.array([0, t, bucket], dtype=np.int32),
                    seq_lens=np.array([step.seq_lens[0], pad], dtype=np.int32),
                    block_tables=tables, max_seqlen_q=bucket, max_seqlen_k=max_model_len, is_decode=False)


class PrefillGraphs:
    """forward(input_ids, positions, meta) -> hidden [T, hidden]; compute_logits(hidden rows) ->
    logits. One graph per bucket records forward + the last real token's logits [1, vocab]."""

    def __init__(self, forward, compute_logits, *, buckets: list[int], max_blocks_per_seq: int,
                 max_model_len: int, device: torch.device):
        self.forward, self.compute_logits = forward, compute_logits
        self.buckets, self.width, self.max_model_len = buckets, max_blocks_per_seq, max_model_len
        n = self.n = buckets[-1]
        # Two flat buffers (int64: ids, positions, slots, the last row; int32: the lengths and the
        # two block-table rows), each moved by one copy from its pinned twin before a replay.
        self.i64 = torch.zeros(3 * n + 1, dtype=torch.long, device=device)
        self.i32 = torch.zeros(3 + 2 + 2 * max_blocks_per_seq, dtype=torch.int32, device=device)
        self.host_i64 = torch.zeros_like(self.i64, device="cpu").pin_memory()
        self.host_i32 = torch.zeros_like(self.i32, device="cpu").pin_memory()
        self.copied = torch.cuda.Event()
        self.input_ids, self.positions, self.slot_mapping = self.i64[:3 * n].view(3, n)
        self.last_row = self.i64[3 * n:]
        self.cu_seqlens_q, self.seq_lens = self.i32[:3], self.i32[3:5]
        self.block_tables = self.i32[5:].view(2, max_blocks_per_seq)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.replays = 0   # how many prefill steps ran as a replay (tests, measurements)
        self.capture_seconds = 0.0

    def _last_logits(self, bucket: int) -> torch.Tensor:
        meta = AttentionMetadata(cu_seqlens_q=self.cu_seqlens_q, seq_lens=self.seq_lens,
                                 block_tables=self.block_tables, slot_mapping=self.slot_mapping[:bucket],
                                 max_seqlen_q=bucket, max_seqlen_k=self.max_model_len, is_decode=False)
        hidden = self.forward(self.input_ids[:bucket], self.positions[:bucket], meta)
        return self.compute_logits(hidden[self.last_row])

    @torch.inference_mode()
    def capture(self, pool=None, on_captured=None) -> None:
        """Warm up and record one graph per bucket, largest first, in `pool` (the decode graphs'
        memory pool: the two never replay at once)."""
        start = time.perf_counter()
        self.slot_mapping.fill_(-1)   # capture's own runs write no cache slot ...
        self.cu_seqlens_q.copy_(torch.tensor([0, 1, 1], dtype=torch.int32))
        self.seq_lens.copy_(torch.tensor([1, 0], dtype=torch.int32))   # ... and read one key
        for bucket in reversed(self.buckets):
            self.cu_seqlens_q[2] = bucket
            self.seq_lens[1] = bucket - 1
            self._last_logits(bucket)   # warm-up: JIT kernels compile outside capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bucket] = self._last_logits(bucket)
            pool = graph.pool()
            self.graphs[bucket] = graph
            if on_captured is not None:
                on_captured()
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - start

    def can_run(self, step: HostStep) -> bool:
        return not step.is_decode and step.num_seqs == 1 and len(step.input_ids) <= self.n

    def run(self, step: HostStep) -> torch.Tensor:
        """Replay the smallest bucket's graph that holds this prefill step: the logits of its last
        token, [1, vocab] (meaningful when the step reaches the end of the prompt)."""
        bucket = next(b for b in self.buckets if b >= len(step.input_ids))
        padded = pad_prefill(step, bucket, self.width, self.max_model_len)
        n = self.n
        self.copied.synchronize()   # the previous replay's copies have left the staging buffers
        i64, i32 = self.host_i64.numpy(), self.host_i32.numpy()
        i64[:bucket], i64[n:n + bucket] = padded.input_ids, padded.positions
        i64[2 * n:2 * n + bucket] = padded.slot_mapping
        i64[3 * n] = len(step.input_ids) - 1
        i32[:3], i32[3:5] = padded.cu_seqlens_q, padded.seq_lens
        i32[5:] = padded.block_tables.reshape(-1)
        self.i64.copy_(self.host_i64, non_blocking=True)
        self.i32.copy_(self.host_i32, non_blocking=True)
        self.copied.record()
        self.graphs[bucket].replay()
        self.replays += 1
        return self.outputs[bucket]
