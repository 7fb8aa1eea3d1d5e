"""Continuous batching: which sequences run in the next step, and how many tokens each.

Each step has a token budget (max_num_batched_tokens) and a sequence cap (max_num_seqs).
Sequences join and leave the batch at every step -- no waiting for the slowest member.

Two policies, one switch (chunked_prefill):
- off: a step is either all prefill (whole prompts, new requests first) or all decode.
- on:  running sequences go first (decodes take 1 token each), and the rest of the budget goes
       to prompt chunks, so a long prompt is split across steps and never stalls the decodes.

When the KV cache runs out of blocks, the newest running sequence is preempted (the policy is
a seam: `preemption`, see engine/overrides.py; the built-in is `newest` below): its blocks are
freed and it goes back to the front of the queue to be recomputed later (its tokens are kept,
so its output does not change).
"""
from __future__ import annotations

from collections import deque

from .block_manager import BlockManager
from .sequence import Sequence, Status


def newest(running: list) -> object:
    """The built-in preemption policy: the newest candidate has the least work to lose."""
    return running[-1]


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int,
                 chunked_prefill: bool, preemption=newest):
        self.blocks = block_manager
        self.preemption = preemption   # candidates (oldest first) -> the one to preempt
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def prefill_pending(self) -> bool:
        """Some prompt still has tokens to prefill (so the next step is not a pure decode)."""
        return bool(self.waiting) or any(s.num_computed_tokens < s.num_prompt_tokens for s in self.running)

    def schedule(self) -> list[tuple[Sequence, int]]:
        """Pick (sequence, number of new tokens) pairs for the next step."""
        budget = self.max_num_batched_tokens
        if self.chunked_prefill:
            scheduled, budget, preempted = self._schedule_running(budget)
            if not preempted or not scheduled:   # (a step must make progress)
                scheduled += self._schedule_waiting(budget, chunk=True)
            return scheduled
        scheduled = self._schedule_waiting(budget, chunk=False)   # prefill step if any prompt fits
        return scheduled or self._schedule_running(budget)[0]

    def _schedule_running(self, budget: int):
        scheduled, preempted = [], False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            while not self.blocks.allocate(seq, n):
                candidates = self.running[i:]   # seq and those after it: none has run this step yet
                victim = self.preemption(list(candidates))
                if not any(victim is c for c in candidates):
                    raise ValueError(f"the preemption policy returned {victim!r}, not one of the running "
                                     "sequences it was given: return an element of its argument")
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status != Status.RUNNING:   # seq itself gave way: the next one now sits at i
                continue
            scheduled.append((seq, n))
            budget -= n
            i += 1
        return scheduled, budget, preempted

    def _schedule_waiting(self, budget: int, *, chunk: bool):
        scheduled = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = self.blocks.lookup_prefix(seq)
            n = len(seq) - len(hits) * self.blocks.block_size
            if chunk:
                n = min(n, budget)
            elif n > budget and scheduled:   # whole prompts only; an oversized one runs alone
                break
            if not self.blocks.allocate(seq, n, hits):
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append((seq, n))
            budget -= n
        return scheduled

    def plan_decode_steps(self, scheduled: list[tuple[Sequence, int]], max_steps: int, max_model_len: int) -> int:
        """Multi-step decoding: how many decode steps `scheduled` may run before the next
        schedule(), with KV room allocated here for all of them. 1 unless the step is a pure
        decode, nobody waits to join (they would wait max_steps steps), and no sequence asked for
        logits. Capped so that no sequence passes max_model_len (its cache has no room past it), and
        at the most tokens any sequence still wants. A sequence that reaches max_tokens or a stop
        token inside the round ends there: its extra tokens are computed and dropped. Cutting the
        round at the first sequence to finish instead would cut most rounds of a big batch short
        (nano-vLLM's workload, 256 sequences ending at different steps: 261 rounds of 3.9 steps on
        average instead of 128 of 8), each a host round trip the GPU waits through."""
        if max_steps == 1 or self.waiting or not scheduled:
            return 1
        for seq, n in scheduled:
            if n != 1 or seq.num_computed_tokens + 1 != len(seq) or seq.params.return_logits:
                return 1
        return max(self._round_length([seq for seq, _ in scheduled], 0, max_steps, max_model_len), 1)

    def plan_next_round(self, seqs: list[Sequence], ahead: int, max_steps: int, max_model_len: int
                        ) -> tuple[list[int], int]:
        """async_rounds: the round after one of `ahead` steps that is launched but not read yet --
        which of its sequences go on (by row) and for how many steps, KV room allocated here for
        them. A sequence goes on unless it is finished or that round takes it to max_tokens or
        max_model_len (a stop token inside it is not known yet: multi_step drops such tokens).
        ([], 0): no next round now -- someone waits to join, nobody goes on, or no room."""
        if self.waiting:
            return [], 0
        rows = [row for row, seq in enumerate(seqs) if not seq.is_finished and
                seq.num_output_tokens + ahead < seq.params.max_tokens and len(seq) + ahead < max_model_len]
        if not rows:
            return [], 0
        steps = self._round_length([seqs[row] for row in rows], ahead, max_steps, max_model_len)
        return (rows, steps) if steps else ([], 0)

    def _round_length(self, seqs: list[Sequence], ahead: int, max_steps: int, max_model_len: int) -> int:
        """Steps for a round of these sequences, `ahead` tokens past what the host has read: at
        most max_steps and the most tokens any still wants, none past max_model_len, and with KV
        room for every step (allocated here); 0 if not even one step has room."""
        wanted = max(seq.params.max_tokens - seq.num_output_tokens - ahead for seq in seqs)
        steps = min([max_steps, wanted] + [max_model_len - len(seq) - ahead for seq in seqs])
        while steps >= 1:   # a cache too full for the whole round: try half as many steps
            if all(self.blocks.allocate(seq, ahead + steps) for seq in seqs):
                return steps   # (a failed allocate leaves extra blocks on the others: they use them later)
            steps //= 2
        return 0

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = Status.WAITING
        seq.stats.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        self.running.remove(seq)
        self.blocks.free(seq)
