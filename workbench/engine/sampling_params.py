"""How one request wants its tokens chosen, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    temperature: float = 1.0      # 0 = greedy
    top_k: int = -1               # -1 = all tokens
    top_p: float = 1.0            # nucleus: smallest set of tokens whose probability reaches top_p
    max_tokens: int = 64
    seed: int | None = None       # per-request seed: same seed, same tokens, whatever the batch
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    return_logits: bool = False   # keep each step's float32 logits (tests, the correctness notebook)

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, f"temperature={self.temperature} must be >= 0 (0 means greedy)"),
            (0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1] (1 disables nucleus sampling)"),
            (self.top_k == -1 or self.top_k >= 1,
             f"top_k={self.top_k} must be -1 (disabled) or >= 1"),
            (self.max_tokens >= 1, f"max_tokens={self.max_tokens} must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
