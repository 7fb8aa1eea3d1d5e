"""What the engine hands back: one request's output, and the engine's running counters."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .sequence import RequestStats


@dataclass
class RequestOutput:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str            # 'stop' (EOS / stop token), 'length' (max_tokens / max_model_len)
    stats: RequestStats
    logits: torch.Tensor | None = None   # [num_output_tokens, vocab] float32, if asked for

    @property
    def ttft(self) -> float | None:
        return self.stats.ttft

    @property
    def tpot(self) -> float | None:
        return self.stats.tpot(len(self.token_ids))


@dataclass
class EngineStats:
    steps: int = 0
    prefill_tokens: int = 0       # prompt tokens run through the model (cache hits excluded)
    decode_tokens: int = 0
    preemptions: int = 0
    prefix_hit_tokens: int = 0
    step_seconds: list[float] = field(default_factory=list)
    # Host seconds per phase, summed over steps. The GPU runs asynchronously, so "launch" is the
    # time to *enqueue* the forward, and "sample" includes waiting for the GPU to finish it.
    host_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("schedule", "prepare", "launch", "sample", "postprocess"), 0.0))

    # Wall seconds and tokens of steps that were pure prefill, pure decode, or mixed (chunked
    # prefill beside decodes): prefill and decode tok/s measured separately.
    step_kind_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("prefill", "decode", "mixed"), 0.0))
    step_kind_tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("prefill", "decode", "mixed"), 0))

    def host_ms_per_step(self) -> dict[str, float]:
        return {phase: 1e3 * total / max(self.steps, 1) for phase, total in self.host_seconds.items()}
