"""Sampling the next token of every row in two launches: the Gumbel-max trick with Philox noise.

EngineConfig.fused_sampling, on by default on a CUDA GPU since it measured faster on an H200
(session 11: 1.09x at batch 1, temperature 0.6; 1.08x on nano-vLLM's 256-sequence workload);
its twin, the eager sampler, is fused_sampling=False (A/B: scripts/ab_decode_candidates.py,
variant eager-sampling).

Why. The eager sampler (engine/sampler.py) draws a token at temperature T in ~10 kernels over
the whole vocabulary -- float copy, / T, softmax, noise buffer, exponential draws, p / E, argmax,
where -- each a launch and a pass over B x V fp32 values: 600 KB a step at batch 1 (vocab
151,936), 155 MB at batch 256. Here each row's vocabulary is read once, the noise is made in
registers, and nothing but a (value, index) per chunk is written.

The math. The sampler's 'exponential race' picks argmax_i p_i / E_i with E_i ~ Exp(1) i.i.d.,
which returns token i with probability p_i. The log is monotone, so that is

    argmax_i  log p_i - log E_i  =  argmax_i  logits_i / T - log E_i

because log p_i = logits_i / T - log Z and the normalizer Z is the same for every i of a row: no
softmax, no exp over the vocabulary. With E = -log U, U ~ Uniform[0, 1), -log E = -log(-log U)
is a standard Gumbel variable: this is the Gumbel-max trick. (E = -log(1 - U) is Exp(1) too, and
it is the form the kernel uses: _gumbel says why.) Greedy rows (temperature 0) take
argmax_i logits_i, no noise.

The noise. Triton's counter-based generator, tl.rand(key, counter) (Philox-4x32, 10 rounds): a
pure function of a 64-bit key and a 64-bit counter, so it needs no generator state in memory and
nothing from the host. A row's key is its seed (`seeds`, int64, read as 64 bits); the counter of
the draw for vocabulary entry i is (n << 32) | i, where n = counts[row] + step is how many tokens
the row had sampled before this one. So a draw depends only on (seed, n, i): a row's token does
not depend on its batch, its row position, the chunk size, or how many steps a round holds
(the caller makes `counts` once a round and passes the step index; engine/sampler.py says where
seeds come from). Precision: U is k x 2^-31 with k of 31 random bits, exact in a float32 near 0
-- where _gumbel takes the winners' noise from -- so the noise lies in [-2.8, 22.2]: only a token
over e^22 times less likely than its row's best can never win (at V = 151,936 all such tokens
together hold at most 4e-5 of the best one's probability).

The split. One program per row would read 600 KB alone on one SM at batch 1. Each program takes
BLOCK entries of one row, grid (rows, chunks): 149 programs at batch 1 and BLOCK 1,024, more
than the H200's 132 SMs. Each writes its chunk's best (value, index) to a small fp32/int32
scratch; a second tiny kernel, one program per row, takes the best chunk. Two launches, no
atomics, nothing to zero, deterministic; both capture in a CUDA graph (the scratch is a fresh
torch.empty, which capture supports). (BLOCK is a guess, not measured: a GPU sweep may move it.)

Under PDL (`noise_early`). At batch 1 the LM head is one long GEMV (~70 us on an H200,
docs/results/decode-ab-gate-up-early-h200.json's fold), and the pair runs after it. With
noise_early both kernels launch under PDL (kernels/pdl.py) when the pdl switch is on: `_chunk_best`
reads its row's temperature, seed and count and makes its noise *before* its wait -- none of them
is written by the LM head (they are copied in before the step's first kernel) -- and only the
logits after it; `_row_best` waits first thing. The noise is the same numbers in the same order:
the tokens are bit for bit those of the plain launches. PDL does not cross a CUDA graph's end, so
this pays only inside the decode graph: EngineConfig.graph_sampling (optimizations/graph_sampling.py)
records the pair there, right after the LM head (measured on an H200, session 25: the pair 7.8 ->
4.4 us at temperature 0.6). Launched after the replay, as the engine does without that switch,
only `_row_best`'s launch comes earlier.

Ties: the first index wins, as torch.argmax does -- tl.max(..., return_indices_tie_break_left)
within a chunk, and the lowest chunk among equal bests in the reduce (chunks are in vocabulary
order). Only greedy rows tie in practice (noise makes ties measure-zero). A row whose logits are
all -inf returns 0, as torch.argmax does. NaN counts as the maximum, as in torch.argmax (the first
NaN wins): the token is always inside the vocabulary.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .pdl import pdl_wait   # by name, not pdl.wait: the interpreter tests stand a plain function in for it

BLOCK = 1024        # vocabulary entries a program (see 'The split')
NUM_WARPS = 4       # 8 entries a thread at BLOCK 1,024


@triton.jit
def _gumbel(u):
    """Standard Gumbel noise -log E from u = tl.rand's k x 2^-31 (k < 2^31), with E = -log(1 - u')
    ~ Exp(1) and u' = u + 2^-32, the middle of u's cell (so u' is never 0 and E never 0).

    A token wins on LARGE noise, i.e. a tiny E, i.e. u near 0 -- where a float32 holds k x 2^-31
    exactly. E = -log(u) would put the winners at u near 1, where float32 steps are 2^-24: the
    noise would stop at ~16.6 and every token more than e^16.6 times less likely than the row's
    best would (almost) never be drawn -- measured on the H200 as 27 draws of the vocabulary's
    long tail where softmax expects 100. Below u = 2^-6, -log(1 - u') is its series (1 - u' would
    round u's low bits away); above, the log of 1 - u', exact to ~2e-6 of the noise."""
    u = u + 2.3283064e-10   # half of tl.rand's step
    e = tl.where(u < 0.015625, u * (1 + u * (0.5 + u * (0.3333333 + u * 0.25))), -tl.log(1 - u))
    return -tl.log(e)


@triton.jit(do_not_specialize=["step"])   # step changes every call: one compiled kernel for all
def _chunk_best(logits_ptr, stride_row, temps_ptr, seeds_ptr, counts_ptr, step,
                best_value_ptr, best_index_ptr, vocab, num_chunks, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    row, chunk = tl.program_id(0), tl.program_id(1)
    index = chunk * BLOCK + tl.arange(0, BLOCK)
    # The noise first: it needs only the row's parameters, which the LM head does not write (under
    # PDL, noise_early, it is made while the LM head still runs; without PDL the order is moot).
    temperature = tl.load(temps_ptr + row)
    sampled = temperature > 0   # greedy rows (0) keep the raw logits
    noise = tl.zeros([BLOCK], tl.float32)
    if sampled:
        n = tl.load(counts_ptr + row) + step   # tokens this row sampled before this one
        counter = (n.to(tl.int64) << 32) | index.to(tl.int64)   # Philox counter: (n, i)
        noise = _gumbel(tl.rand(tl.load(seeds_ptr + row), counter))
    pdl_wait(USE_PDL)   # the logits are the LM head's output
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + index, mask=index < vocab,
                other=float("-inf")).to(tl.float32)
    if sampled:
        x = x / temperature + noise
    # NaN compares false with everything, so it would lose even to a padding lane's -inf and the
    # token could be an index past the vocabulary. torch.argmax treats NaN as the maximum: so do we.
    x = tl.where(x == x, x, float("inf"))
    x = tl.where(index < vocab, x, float("-inf"))
    value, where = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
    tl.store(best_value_ptr + row * num_chunks + chunk, value)
    tl.store(best_index_ptr + row * num_chunks + chunk, chunk * BLOCK + where)


@triton.jit
def _row_best(best_value_ptr, best_index_ptr, tokens_ptr, num_chunks, CHUNKS: tl.constexpr, USE_PDL: tl.constexpr):
    row = tl.program_id(0)
    pdl_wait(USE_PDL)   # everything it reads is _chunk_best's
    chunk = tl.arange(0, CHUNKS)
    values = tl.load(best_value_ptr + row * num_chunks + chunk, mask=chunk < num_chunks, other=float("-inf"))
    _, first = tl.max(values, axis=0, return_indices=True, return_indices_tie_break_left=True)
    first = tl.minimum(first, num_chunks - 1)   # never a padding chunk (values are never NaN here)
    tl.store(tokens_ptr + row, tl.load(best_index_ptr + row * num_chunks + first).to(tl.int64))


def sample(logits: torch.Tensor, temperatures: torch.Tensor, seeds: torch.Tensor, counts: torch.Tensor,
           step: int = 0, block: int = BLOCK, noise_early: bool = False) -> torch.Tensor:
    """The next token of each row of `logits` [B, V] (any float dtype; rows may be strided),
    as an int64 [B] tensor on the same device; nothing waits for the GPU.

    temperatures: float32 [B], 0 for a greedy row. seeds: int64 [B], the Philox key of each row.
    counts: int64 [B], tokens each row had sampled before step 0; step: added to every count.
    noise_early: with the pdl switch on, both kernels under PDL and the noise made before the
    wait (the module docstring); off, or with PDL off, plain launches."""
    assert logits.dim() == 2, "logits: [B, V]"
    if logits.stride(-1) != 1:   # the loads walk V contiguously
        logits = logits.contiguous()
    rows, vocab = logits.shape
    assert vocab < 2**32, "the Philox counter keeps the vocabulary index in 32 bits"
    for name, t, dtype in (("temperatures", temperatures, torch.float32), ("seeds", seeds, torch.int64),
                           ("counts", counts, torch.int64)):
        assert t.shape == (rows,) and t.dtype == dtype and t.is_contiguous(), f"{name}: {dtype} [{rows}]"
    num_chunks = triton.cdiv(vocab, block)
    best_value = torch.empty(rows, num_chunks, dtype=torch.float32, device=logits.device)
    best_index = torch.empty(rows, num_chunks, dtype=torch.int32, device=logits.device)
    tokens = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return tokens
    launch = pdl.launch_options() if noise_early else {"USE_PDL": False}
    _chunk_best[(rows, num_chunks)](logits, logits.stride(0), temperatures, seeds, counts, step,
                                    best_value, best_index, vocab, num_chunks, BLOCK=block, num_warps=NUM_WARPS,
                                    **launch)
    _row_best[(rows,)](best_value, best_index, tokens, num_chunks,
                       CHUNKS=max(triton.next_power_of_2(num_chunks), 2), num_warps=1, **launch)
    return tokens
