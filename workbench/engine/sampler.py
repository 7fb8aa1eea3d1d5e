"""Logits -> next token, per request: greedy, temperature, top-k, top-p, seeded.

Sampling uses the 'exponential race': argmax(p_i / E_i) with E_i ~ Exp(1) picks token i with
probability p_i. It needs no cumulative sum and no sort, and each request can draw its noise
from its own seeded generator, so a seeded request gives the same tokens in any batch.
"""
from __future__ import annotations

import torch

from .sequence import Sequence


def _filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf every logit outside each row's top-k and nucleus (top-p) set."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)
    sorted_logits = sorted_logits.masked_fill(rank[None, :] >= top_k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)   # renormalized over the top-k, as HF and vLLM do
    # A token is outside the nucleus when the tokens ranked above it already reach top_p.
    outside = (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


class Sampler:
    def __init__(self, device: str, seed: int):
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)  # for unseeded requests

    def generator_for(self, params) -> torch.Generator:
        """A request's generator (the one place one is made): its own when seeded, else the
        engine's shared one. LLM sets seq.generator from it when the request is queued."""
        if params.seed is None:
            return self.generator
        return torch.Generator(device=self.device).manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        return self.sample(logits, seqs).tolist()   # .tolist(): waits for the GPU

    def rows(self, seqs: list[Sequence], vocab: int, device: torch.device) -> "SamplingRows":
        """The batch's per-row parameters on the device. Build them once for steps that sample the
        same sequences (multi-step decoding) and pass them to sample()."""
        return SamplingRows(seqs, vocab, device)

    def sample(self, logits: torch.Tensor, seqs: list[Sequence], rows: "SamplingRows | None" = None) -> torch.Tensor:
        """The next token of every row, as a device tensor: nothing here waits for the GPU."""
        # argmax needs no float copy: bf16 -> fp32 is exact and keeps the order (and the first max)
        greedy = logits.argmax(dim=-1)
        if all(seq.params.greedy for seq in seqs):
            return greedy
        rows = rows or self.rows(seqs, logits.shape[-1], logits.device)
        logits = logits.float() / rows.temps[:, None]
        if rows.filter:   # decided on the host: no sync
            logits = _filter_top_k_top_p(logits, rows.top_k, rows.top_p)
        probs = logits.softmax(dim=-1)
        noise = torch.ones_like(probs)
        if rows.shared is not None:   # unseeded rows: one draw from the engine's generator
            draws = torch.empty(rows.num_shared, probs.shape[-1], device=probs.device)
            noise.index_copy_(0, rows.shared, draws.exponential_(generator=self.generator))
        for row, seq in enumerate(seqs):   # seeded rows: each from its own generator
            if not seq.params.greedy and seq.params.seed is not None:
                if seq.generator is None:   # a Sequence made outside an engine (tests)
                    seq.generator = self.generator_for(seq.params)
                noise[row].exponential_(generator=seq.generator)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(rows.is_greedy, greedy, sampled)


def _on_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A short host list as a device tensor, without waiting for the GPU. `torch.tensor(values,
    device="cuda")` copies from pageable memory, and such a copy synchronizes the stream: the
    host would stop until every kernel queued so far has run, and could no longer prepare the
    next step while the GPU runs this one. From pinned memory the copy is queued like a kernel."""
    host = torch.tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class SamplingRows:
    """Per-row sampling parameters of one batch, on the device (greedy rows: temperature 1,
    torch.where picks their argmax; a tiny temperature would overflow)."""

    def __init__(self, seqs: list[Sequence], vocab: int, device: torch.device):
        params = [seq.params for seq in seqs]
        self.temps = _on_device([1.0 if p.greedy else p.temperature for p in params], torch.float32, device)
        self.top_k = _on_device([p.top_k if p.top_k > 0 else vocab for p in params], torch.int64, device)
        self.top_p = _on_device([p.top_p for p in params], torch.float32, device)
        self.is_greedy = _on_device([p.greedy for p in params], torch.bool, device)
        self.filter = any(p.top_k > 0 or p.top_p < 1 for p in params)
        shared = [row for row, p in enumerate(params) if not p.greedy and p.seed is None]
        self.num_shared = len(shared)
        self.shared = _on_device(shared, torch.int64, device) if shared else None
