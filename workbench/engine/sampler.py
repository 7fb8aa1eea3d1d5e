"""Logits -> next token, per request: greedy, temperature, top-k, top-p, seeded.

Sampling uses the 'exponential race': argmax(p_i / E_i) with E_i ~ Exp(1) picks token i with
probability p_i. It needs no cumulative sum and no sort, and each request can draw its noise
from its own seeded generator, so a seeded request gives the same tokens in any batch.
"""
from __future__ import annotations

import torch

from .sequence import Sequence


def _exponential(shape: tuple, device, generator: torch.Generator) -> torch.Tensor:
    """Exp(1) draws, made in float64 and returned as float32. A token wins the race on a tiny E,
    and torch's float32 exponential_ on CUDA cannot give one under ~6e-8 (it takes -log of a
    uniform near 1, where float32 steps are 2^-24): a token over e^16.6 times less likely than
    its row's best would almost never be drawn -- the fused sampler's first noise had the same
    cap and drew a 151,936-token row's long tail 27 times where softmax expects 100 (H200). In
    float64 the cap is ~e^36.7, and such an E still fits a float32."""
    return torch.empty(shape, dtype=torch.float64, device=device).exponential_(generator=generator).float()


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


def philox_key(seed: int) -> int:
    """A request's seed as the fused kernel's 64-bit Philox key (an int64's bits): seed mod 2**64,
    so every seed SamplingParams accepts, [-2**63, 2**64), has its own key."""
    key = seed % 2**64
    return key - 2**64 if key >= 2**63 else key


class Sampler:
    def __init__(self, device: str, seed: int, fused: bool = False):
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)  # for unseeded requests
        self.fused = fused   # the candidate (module docstring): kernels/sample.py where it applies

    def generator_for(self, params) -> torch.Generator:
        """A request's generator (the one place one is made): its own when seeded, else the
        engine's shared one. LLM sets seq.generator from it when the request is queued."""
        if params.seed is None:
            return self.generator
        return torch.Generator(device=self.device).manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        return self.sample(logits, seqs).tolist()   # .tolist(): waits for the GPU

    def rows(self, seqs: list[Sequence], vocab: int, device: torch.device, ahead: int = 0) -> "SamplingRows":
        """The batch's per-row parameters on the device. Build them once for steps that sample the
        same sequences (multi-step decoding) and pass them to sample(). ahead: tokens each sequence
        samples in a round already launched but not yet read (async_rounds), before these rows'."""
        return SamplingRows(seqs, vocab, device, self.generator if self.fused else None, ahead)

    def sample(self, logits: torch.Tensor, seqs: list[Sequence], rows: "SamplingRows | None" = None) -> torch.Tensor:
        """The next token of every row, as a device tensor: nothing here waits for the GPU."""
        if all(seq.params.greedy for seq in seqs):
            # argmax needs no float copy: bf16 -> fp32 is exact and keeps the order (and the first max)
            return logits.argmax(dim=-1)
        rows = rows or self.rows(seqs, logits.shape[-1], logits.device)
        if rows.fused:
            return self._sample_fused(logits, seqs, rows)
        return self._sample_eager(logits, seqs, rows)

    def _sample_fused(self, logits: torch.Tensor, seqs: list[Sequence], rows: "SamplingRows") -> torch.Tensor:
        from workbench.kernels.sample import sample   # Triton: imported only when the candidate runs
        tokens = sample(logits, rows.kernel_temps, rows.seeds, rows.counts, step=rows.steps_sampled)
        return self.finish_fused(tokens, logits, seqs, rows)

    def finish_fused(self, tokens: torch.Tensor, logits: torch.Tensor, seqs: list[Sequence],
                     rows: "SamplingRows | None") -> torch.Tensor:
        """The fused kernels' tokens made final (here, or by a decode graph: graph_sampling):
        the top-k/top-p rows, which the kernels sample unfiltered, sampled again by the eager path.
        rows None: an all-greedy batch, whose argmax the kernels gave."""
        if rows is None:
            return tokens
        rows.steps_sampled += 1   # the next call with these rows samples each sequence's next token
        if rows.filtered is not None:   # top-k/top-p rows: the eager path, on their rows only
            subset = [seqs[row] for row in rows.filtered_list]
            eager = self._sample_eager(logits.index_select(0, rows.filtered), subset, rows.filtered_rows)
            tokens.index_copy_(0, rows.filtered, eager)
        return tokens

    def _sample_eager(self, logits: torch.Tensor, seqs: list[Sequence], rows: "SamplingRows") -> torch.Tensor:
        greedy = logits.argmax(dim=-1)
        logits = logits.float() / rows.temps[:, None]
        if rows.filter:   # decided on the host: no sync
            logits = _filter_top_k_top_p(logits, rows.top_k, rows.top_p)
        probs = logits.softmax(dim=-1)
        noise = torch.ones_like(probs)
        if rows.shared is not None:   # unseeded rows: one draw from the engine's generator
            draws = _exponential((rows.num_shared, probs.shape[-1]), probs.device, self.generator)
            noise.index_copy_(0, rows.shared, draws)
        for row, seq in enumerate(seqs):   # seeded rows: each from its own generator
            if not seq.params.greedy and seq.params.seed is not None:
                if seq.generator is None:   # a Sequence made outside an engine (tests)
                    seq.generator = self.generator_for(seq.params)
                noise[row] = _exponential((probs.shape[-1],), probs.device, seq.generator)
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


def _filters(p) -> bool:
    """Whether a request's parameters ask for a top-k or top-p filter."""
    return p.top_k > 0 or p.top_p < 1


class SamplingRows:
    """Per-row sampling parameters of one batch, on the device, for the path that will read them.
    Eager (the default): temperatures (greedy rows: 1, torch.where picks their argmax; a tiny
    temperature would overflow), top-k, top-p, which rows are greedy. With `key_generator` (fused
    sampling: the engine's generator) the fused kernel's instead: temperatures (0: greedy), Philox
    keys, tokens sampled so far, and the eager path's rows for the top-k/top-p requests."""

    def __init__(self, seqs: list[Sequence], vocab: int, device: torch.device,
                 key_generator: torch.Generator | None = None, ahead: int = 0):
        params = [seq.params for seq in seqs]
        shared = [row for row, p in enumerate(params) if not p.greedy and p.seed is None]
        self.num_shared = len(shared)
        self.shared = _on_device(shared, torch.int64, device) if shared else None
        self.fused = key_generator is not None
        if self.fused:
            self._fused_rows(seqs, params, vocab, device, key_generator, ahead)
        else:
            self._eager_rows(params, vocab, device)

    def _eager_rows(self, params: list, vocab: int, device: torch.device):
        self.temps = _on_device([1.0 if p.greedy else p.temperature for p in params], torch.float32, device)
        self.top_k = _on_device([p.top_k if p.top_k > 0 else vocab for p in params], torch.int64, device)
        self.top_p = _on_device([p.top_p for p in params], torch.float32, device)
        self.is_greedy = _on_device([p.greedy for p in params], torch.bool, device)
        self.filter = any(_filters(p) for p in params)

    def _fused_rows(self, seqs: list[Sequence], params: list, vocab: int, device: torch.device,
                    generator: torch.Generator, ahead: int):
        self.kernel_temps = _on_device([0.0 if p.greedy else p.temperature for p in params], torch.float32, device)
        self.seeds = _on_device([0 if p.seed is None else philox_key(p.seed) for p in params], torch.int64, device)
        if self.shared is not None:   # unseeded rows: fresh keys from the engine's generator, on the device
            keys = torch.randint(-2**63, 2**63 - 1, (self.num_shared,), generator=generator,
                                 dtype=torch.int64, device=device)
            self.seeds.index_copy_(0, self.shared, keys)
        # the fused kernel's step 0 samples each sequence's output token number num_output_tokens
        # (+ ahead: tokens of a launched round the host has not read yet); a seeded row's noise is
        # a function of (seed, that number), so a wrong count would redraw an earlier token's noise
        self.host_counts = [seq.num_output_tokens + ahead for seq in seqs]   # (graph_sampling stages them)
        self.counts = _on_device(self.host_counts, torch.int64, device)
        self.steps_sampled = 0   # sample() calls so far with these rows (the round's steps)
        self.filtered_list = [row for row, p in enumerate(params) if not p.greedy and _filters(p)]
        self.filtered = self.filtered_rows = None
        if self.filtered_list:
            self.filtered = _on_device(self.filtered_list, torch.int64, device)
            self.filtered_rows = SamplingRows([seqs[row] for row in self.filtered_list], vocab, device)
