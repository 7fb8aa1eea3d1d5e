"""EngineConfig.graph_sampling (a candidate, off by default): each decode graph records the sampler
after the LM head, so a decode step's tokens come out of its replay -- attacks the tail of a
batch-1 step, where the sampling kernels run after the graph and wait for it to end.

Why. Without it a decode step is a replay (ending with the LM head's GEMV) and then the sampler's
launches: torch's argmax for greedy rows (a memset and a reduction), or the fused sampler's two
kernels (kernels/sample.py) for temperature rows. Programmatic dependent launch (kernels/pdl.py)
does not cross a graph's end, so none of them starts before the LM head is done. Recorded inside
the graph, the fused pair launches under PDL (`noise_early`): a temperature row's Philox noise is
made while the LM head still streams its 311 MB, and only the logits are read after the wait.
Greedy rows take the same pair at temperature 0 (its argmax, torch's tie rule): one path for all.

What the graph reads, and when it is written (all before the replay, in stream order):
- temperatures and Philox keys (`GraphSampling.temps`, `.seeds`): copied from the SamplingRows
  when the rows change -- once a round with decode_steps > 1 (every step of a round shares them),
  every step with decode_steps=1 (each step builds its rows);
- each row's count of tokens sampled before this one: a field of the decode graphs' int64 input
  buffer, written by the host with the step's other inputs (cuda_graphs.DecodeGraphs._stage): no
  copy of its own. A graph records step 0 and reads the count; a round graph (graph_rounds)
  records step i of its round.
The tokens come out by one copy a step (DecodeGraphs.sampled): the next replay rewrites the graph's own.
Top-k/top-p rows: the graph samples them without the filter, and the eager sampler then samples
them again from the graph's logits and overwrites their tokens (Sampler.finish_fused), as the
fused sampler does outside a graph. A round graph cannot do that between its steps: a round with
such a row replays a step at a time.

Correctness: the same kernels on the same logits, so the tokens are bit for bit those of the
sampler launched after the replay (tests/gpu/test_graph_sampling_gpu.py). Twin:
graph_sampling=False. Measured by decode-ab's variant graph-sampling (scripts/ab_decode_candidates.py)
on an H200, all on, 128 + 512, 8 steps a round (session 25, docs/perf-notes.md): greedy 1,583-1,587
tok/s against 1,568-1,581, 5.7 us less GPU time a step (the argmax's memset and reduction, 12.2 us,
replaced by the pair and its copy out, 5.5); temperature 0.6 1,572-1,573 against 1,569-1,573 (the
pair 3.4 us shorter in the graph, its copy out 2.5). Both under the project's 1 % bar. nano-vLLM's
256-sequence workload at temperature 0.6 (session 27, an H100, off/on/off/on in one call,
docs/results/graph-sampling-nanovllm-h100.json): 19,355 and 19,184 tok/s with it, 19,232 and 19,283
without -- no difference. So it stays off: a candidate kept for its lesson (the sampler's tail
under PDL), not a default.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from workbench.engine.sampler import SamplingRows


def why_not(cuda_graphs: bool, fused_sampling: bool) -> str | None:
    if not cuda_graphs:
        return "it records the sampler in the decode graphs, and cuda_graphs is off"
    if not fused_sampling:
        return "it records the fused sampler (kernels/sample.py), and fused_sampling is off"
    return None


class GraphSampling:
    """The decode graphs' sampling inputs that change once a round (temperatures, Philox keys),
    and the sampling each graph records."""

    def __init__(self, n: int, device: torch.device):
        self.temps = torch.zeros(n, dtype=torch.float32, device=device)   # 0: greedy (padding rows too)
        self.seeds = torch.zeros(n, dtype=torch.int64, device=device)
        self.rows: SamplingRows | None = None   # whose temperatures and keys the buffers hold (None: all greedy)

    def record(self, logits: torch.Tensor, counts: torch.Tensor, step: int = 0) -> torch.Tensor:
        """What a graph records after its LM head: each row's token (int64 [B])."""
        from workbench.kernels.sample import sample   # Triton: imported only where it runs
        rows = logits.shape[0]
        return sample(logits, self.temps[:rows], self.seeds[:rows], counts[:rows], step=step, noise_early=True)

    def stage(self, rows: SamplingRows | None) -> None:
        """Before a replay: the batch's temperatures and keys (rows: fused SamplingRows; None: an
        all-greedy batch). Copied only when the rows change: every step of a round shares them.
        Rows past the batch keep stale values: they are padding, and their tokens are dropped."""
        if rows is self.rows:
            return
        if rows is None:
            self.temps.zero_()
        else:
            batch = rows.kernel_temps.shape[0]
            self.temps[:batch].copy_(rows.kernel_temps)
            self.seeds[:batch].copy_(rows.seeds)
        self.rows = rows

    def counts(self, batch: int) -> list[int]:
        """The host's counts for this step's rows (the staged rows' tokens sampled before it)."""
        if self.rows is None:
            return [0] * batch   # greedy rows draw no noise: the count is never read
        if len(self.rows.host_counts) != batch:
            raise RuntimeError(f"graph_sampling: the staged rows are for {len(self.rows.host_counts)} sequences, this "
                               f"step has {batch}: stage this batch's rows (GraphSampling.stage) before the replay")
        return [n + self.rows.steps_sampled for n in self.rows.host_counts]
