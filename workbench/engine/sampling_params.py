"""How one request wants its tokens chosen, validated on construction (types as well as ranges).

A wrong type is a TypeError and a wrong value a ValueError, both raised here, before the request
reaches the engine -- never a silent round (max_tokens=2.5) or a failure halfway through generate.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

# Temperatures below this are greedy. logits / T overflows float32 (max 3.4e38) once T is below
# ~1e-35 and the probabilities become NaN; long before that the distribution is one-hot in all but
# name: at T = 1e-5 two logits 1e-3 apart (finer than bf16 resolves logits near 10) get
# probabilities in the ratio exp(-100) ~ 4e-44. So T < 1e-5 is treated as the limit it approaches,
# greedy (vLLM uses the same cut-off, _SAMPLING_EPS).
GREEDY_BELOW = 1e-5

# What torch.Generator.manual_seed accepts: a signed or unsigned 64-bit integer.
SEED_RANGE = (-2**63, 2**64)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)   # True is not a token count


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    temperature: float = 1.0      # 0 = greedy (and so is anything below GREEDY_BELOW)
    top_k: int = -1               # -1 = all tokens
    top_p: float = 1.0            # nucleus: smallest set of tokens whose probability reaches top_p
    max_tokens: int = 64
    seed: int | None = None       # per-request seed: same seed, same tokens, whatever the batch
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    return_logits: bool = False   # keep each step's float32 logits (tests, the correctness notebook)

    def __post_init__(self):
        self._check_types()
        lo, hi = SEED_RANGE
        checks = [
            (math.isfinite(self.temperature) and self.temperature >= 0,
             f"temperature={self.temperature} must be a finite number >= 0 (0 means greedy)"),
            (0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1] (1 disables nucleus sampling)"),
            (self.top_k == -1 or self.top_k >= 1,
             f"top_k={self.top_k} must be -1 (disabled) or >= 1"),
            (self.max_tokens >= 1, f"max_tokens={self.max_tokens} must be >= 1"),
            (self.seed is None or lo <= self.seed < hi,
             f"seed={self.seed} is outside what torch.Generator.manual_seed accepts: use an int in "
             "[-2**63, 2**64) (or None for the engine's shared generator)"),
        ]
        checks += [(t >= 0, f"stop_token_ids contains {t}: token ids are >= 0") for t in self.stop_token_ids]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def _check_types(self) -> None:
        """TypeError for a wrong type; numpy scalars are accepted and turned into Python numbers."""
        def need(ok: bool, name: str, what: str):
            if not ok:
                value = getattr(self, name)
                raise TypeError(f"{name}={value!r} ({type(value).__name__}) must be {what}")

        need(_is_real(self.temperature), "temperature", "a number")
        need(_is_real(self.top_p), "top_p", "a number")
        need(_is_int(self.top_k), "top_k", "an int (-1 for all tokens)")
        need(_is_int(self.max_tokens), "max_tokens", "an int")
        need(self.seed is None or _is_int(self.seed), "seed", "an int or None")
        need(isinstance(self.stop_token_ids, (list, tuple)) and all(_is_int(t) for t in self.stop_token_ids),
             "stop_token_ids", "a list of ints, e.g. [2] (not a bare int)")
        need(isinstance(self.ignore_eos, bool), "ignore_eos", "True or False")
        need(isinstance(self.return_logits, bool), "return_logits", "True or False")
        self.temperature, self.top_p = float(self.temperature), float(self.top_p)
        self.top_k, self.max_tokens = int(self.top_k), int(self.max_tokens)
        self.seed = None if self.seed is None else int(self.seed)
        self.stop_token_ids = [int(t) for t in self.stop_token_ids]

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW
