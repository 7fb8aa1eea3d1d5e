"""EngineConfig.async_rounds (on by default wherever decode_steps > 1): launch the next decode
round before reading the one running -- attacks the host time between two rounds. Measured on an
H200 (session 13, all on, 8 steps a round, one run each): nano-vLLM's workload 22,493 -> 24,444
tok/s; one sequence, greedy 128 + 512, 1,404 -> 1,458 (3 rounds of 3; docs/perf-notes.md).

Why. With multi-step decoding (multi_step.py) the host waits once a round: it reads the round's
tokens, appends them, checks stops, schedules, packs and launches the next round, and the GPU
idles meanwhile. On nano-vLLM's workload on an H200 that gap was ~4.6 ms a round of ~61 ms
(session 11, docs/perf-notes.md): up to ~7 % of the run.

How. Round r+1's inputs are known before round r's tokens are read, except for the tokens
themselves: each sequence's next position is its last one plus round r's length, its block table
can be grown now (Scheduler.plan_next_round), and its first input token is round r's last sample,
which is already on the GPU. So the engine launches round r+1 first (its input ids handed over on
the GPU, as multi-step hands them between steps) and then waits for round r's tokens while the GPU
runs r+1. The stream orders everything: r+1 starts when r ends, and its kernels read r's samples.

The traps, and what handles them:
- A sequence that stops inside round r (a stop token) already has round r+1 launched: its r+1
  tokens are computed and dropped, as multi-step drops a round's tokens past a stop. Its blocks
  are freed when r is read; r+1 writes into them only past the kept tokens (no hashed block), and
  whoever gets them next writes later on the same stream.
- The fused sampler draws a seeded row's noise from (seed, output token number): round r+1's rows
  start counting k_r tokens ahead (Sampler.rows(..., ahead)), or they would redraw round r's noise.
- The round's tokens go to the host by a copy the stream orders before anything launched after
  it (LaunchedRound below): a plain .tolist() would wait for round r+1 as well.
- The next round is not launched while a request waits (the scheduler decides who joins), nor
  when the KV cache has no room for it (the next schedule() may preempt). The price: a request
  that arrives while rounds run waits for the round already launched, up to decode_steps model
  steps more than with multi-step alone, before its prefill is scheduled.
- Ctrl-C or an error mid-step: the launched round is forgotten (its inputs assumed the round
  before it read whole) and the next schedule() continues from what the host has.

Twin: async_rounds=False, each round read before the next is scheduled (multi_step.py alone).
Measurement: `bench throughput --workload nanovllm --decode-steps 8 --async-rounds off,on`, a row
each in one run (scripts/device_check.sh nanovllm-async).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from workbench.engine.sequence import Sequence


def why_not(decode_steps: int) -> str | None:
    if decode_steps < 2:
        return ("it overlaps one multi-step round with the host work between rounds, and "
                f"decode_steps={decode_steps} makes no rounds: set decode_steps > 1 (e.g. 8)")
    return None


class LaunchedRound:
    """A multi-step round on the GPU that the host has not read yet: its sequences, length, and
    tokens [batch, steps] -- on the device, and on their way to the host."""

    def __init__(self, seqs: "list[Sequence]", num_steps: int, tokens: torch.Tensor):
        self.seqs, self.num_steps, self.tokens = seqs, num_steps, tokens
        self._host, self._copied = tokens, None
        if tokens.is_cuda:   # queued now, so the wait in read() is for this round only
            self._host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            self._host.copy_(tokens, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()

    def last_samples(self, rows: list[int]) -> torch.Tensor:
        """The last token each of these rows sampled, on the device: the next round's inputs."""
        last = self.tokens[:, -1]   # (a column of a graph's buffer: copied out before its next replay)
        if rows == list(range(len(self.seqs))):
            return last.contiguous()   # a column's stride is the round's length: an eager compiled
                                       # forward would recompile for it
        from workbench.engine.sampler import _on_device   # (here: the engine imports this module)
        return last[_on_device(rows, torch.int64, last.device)]   # no wait for the GPU

    def read(self) -> list[list[int]]:
        """Each sequence's tokens of this round (waits for the round, not for what follows it)."""
        if self._copied is not None:
            self._copied.synchronize()
        return self._host.tolist()
