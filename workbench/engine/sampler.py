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

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """The next token of every row, as a device tensor: nothing here waits for the GPU."""
        # argmax needs no float copy: bf16 -> fp32 is exact and keeps the order (and the first max)
        greedy = logits.argmax(dim=-1)
        if all(seq.params.greedy for seq in seqs):
            return greedy
        logits = logits.float()
        vocab = logits.shape[-1]
        # greedy rows divide by 1 (a tiny temperature would overflow; torch.where picks argmax below)
        temps = torch.tensor([1.0 if seq.params.greedy else seq.params.temperature for seq in seqs],
                             device=logits.device)
        top_k = torch.tensor([seq.params.top_k if seq.params.top_k > 0 else vocab for seq in seqs],
                             device=logits.device)
        top_p = torch.tensor([seq.params.top_p for seq in seqs], device=logits.device)
        logits = logits / temps[:, None]
        if any(seq.params.top_k > 0 or seq.params.top_p < 1 for seq in seqs):   # decided on the host: no sync
            logits = _filter_top_k_top_p(logits, top_k, top_p)
        probs = logits.softmax(dim=-1)
        noise = torch.ones_like(probs)
        shared = [row for row, seq in enumerate(seqs) if not seq.params.greedy and seq.params.seed is None]
        if shared:   # unseeded rows: one draw from the engine's generator
            noise[shared] = torch.empty(len(shared), probs.shape[-1], device=probs.device).exponential_(
                generator=self.generator)
        for row, seq in enumerate(seqs):   # seeded rows: each from its own generator
            if not seq.params.greedy and seq.params.seed is not None:
                if seq.generator is None:   # a Sequence made outside an engine (tests)
                    seq.generator = self.generator_for(seq.params)
                noise[row].exponential_(generator=seq.generator)
        sampled = (probs / noise).argmax(dim=-1)
        is_greedy = torch.tensor([seq.params.greedy for seq in seqs], device=logits.device)
        return torch.where(is_greedy, greedy, sampled)
