"""One request's state as it moves through the engine.

A sequence is its token ids (prompt, then generated), how many of them already have K/V in the
cache (num_computed_tokens), and the KV blocks that hold them (block_table). Preemption resets
num_computed_tokens to 0 and frees the blocks; the tokens stay, so the recompute is exact.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum, auto

from .sampling_params import SamplingParams


class Status(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass
class RequestStats:
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None
    num_cached_prompt_tokens: int = 0   # prompt tokens whose prefill the prefix cache skipped
    num_preemptions: int = 0

    @property
    def ttft(self) -> float | None:
        """Time to first token, seconds."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    def tpot(self, num_output_tokens: int) -> float | None:
        """Time per output token after the first, seconds."""
        if self.finish_time is None or self.first_token_time is None or num_output_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (num_output_tokens - 1)


class Sequence:
    def __init__(self, request_id: int, prompt_token_ids: list[int], params: SamplingParams,
                 prompt: str | None = None):
        self.request_id = request_id
        self.prompt = prompt
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.status = Status.WAITING
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.finish_reason: str | None = None
        self.stats = RequestStats()
        self.generator = None   # torch.Generator: the request's own (seeded) or the engine's (LLM sets it)
        self.logits: list = []  # per output token, only with params.return_logits

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == Status.FINISHED
