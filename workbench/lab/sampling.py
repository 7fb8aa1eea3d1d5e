"""Exercise 00: top-k / top-p sampling with a seed.

    sample_row(logits: Tensor[V] float32, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator) -> int

Divide by the temperature; keep the top_k largest logits (top_k=0: all); softmax over those;
keep the smallest set of most likely tokens whose probabilities reach top_p (the token that
crosses top_p is kept); renormalize and draw one token using `generator` only, so a seeded
request is reproducible. temperature > 0 here (greedy requests never reach this function).

Plugs in as `LLM(..., overrides={"sampler": fn})` (the lab wraps it per row).
To compare with once yours passes: the probabilities of workbench.engine.sampler (its top-k/top-p filter, then softmax).
"""
from __future__ import annotations

import torch

from workbench.engine.sampler import _filter_top_k_top_p
from workbench.measure.timing import take_turns

from .exercise import Exercise, Wrong, machine, prompts_for, run_engine, same_tokens

# (temperature, top_k, top_p) on one fixed row of logits
# (1.0, 4, 0.8): top-k then top-p keeps 3 tokens, top-p then top-k 4 -- the order matters
# (0.3, 0, 1.0): one token dominates (p ~ 0.74), yet the others must still be drawn at their rates
SETTINGS = [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 6, 0.7), (1.0, 4, 0.8), (0.3, 0, 1.0)]
LOGITS = torch.tensor([2.0, 1.5, 1.4, 0.3, 0.2, -0.1, -0.5, -1.0, -2.0, 0.9])


def reference_probs(logits, temperature, top_k, top_p) -> torch.Tensor:
    k = torch.tensor([top_k if top_k > 0 else logits.shape[-1]])
    return _filter_top_k_top_p(logits[None] / temperature, k, torch.tensor([top_p]))[0].softmax(-1)


def _kept_in_vocab_order(logits, temperature, top_k, top_p) -> torch.Tensor:
    """The tokens a nucleus keeps when its cumulative sum runs in vocabulary order, unsorted (a mistake)."""
    probs = reference_probs(logits, temperature, top_k, 1.0)
    return (probs > 0) & (probs.cumsum(-1) - probs < top_p)


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), stat / 2)) if df > 0 else 1.0


def alone(fn, samples: int = 4000) -> None:
    for temperature, top_k, top_p in SETTINGS:
        where = f"temperature={temperature}, top_k={top_k}, top_p={top_p}"
        draw = lambda seed: [int(fn(LOGITS.clone(), temperature, top_k, top_p,
                                    torch.Generator().manual_seed(seed))) for _ in range(1)]
        probs = reference_probs(LOGITS, temperature, top_k, top_p)
        top = int(probs.argmax())
        seeded = {tuple(draw(s)) for s in range(40)}
        if seeded == {(top,)} and [draw(7) for _ in range(3)] == [draw(7)] * 3:
            raise Wrong(f"{where}: 40 seeds all gave token {top}, the most likely (probability "
                        f"{float(probs[top]):.2f}): sampling draws every kept token at its probability -- "
                        f"torch.multinomial(probs, 1, generator=generator), never the argmax, however dominant.")
        if [draw(7) for _ in range(3)] != [draw(7)] * 3 or len(seeded) == 1:
            raise Wrong(f"{where}: the same seed must give the same token and other seeds others: draw with "
                        f"generator=generator (torch.multinomial(..., generator=...)), not the global RNG.")
        g = torch.Generator().manual_seed(0)
        tokens = torch.tensor([int(fn(LOGITS.clone(), temperature, top_k, top_p, g)) for _ in range(samples)])
        counts = torch.bincount(tokens, minlength=LOGITS.shape[0]).float()
        outside = ((probs == 0) & (counts > 0)).nonzero().flatten().tolist()
        if outside:
            t = outside[0]
            unsorted = _kept_in_vocab_order(LOGITS, temperature, top_k, top_p)
            fix = ("sort the probabilities in descending order before the cumulative sum (torch.sort), then map "
                   "the kept ones back to their token ids: a cumulative sum in vocabulary order keeps the first "
                   "tokens by id, not the most likely" if bool(unsorted[counts > 0].all()) else
                   "set the dropped logits to -inf before sampling (top-k first, then the top-p nucleus over the "
                   "top-k's renormalized probabilities, where the token crossing top_p stays)")
            raise Wrong(f"{where}: token {t} was drawn {int(counts[t])} times but is outside the kept set "
                        f"{(probs > 0).nonzero().flatten().tolist()}: {fix}.")

        never = ((probs * samples > 25) & (counts == 0)).nonzero().flatten().tolist()
        if never:
            t = never[0]
            raise Wrong(f"{where}: token {t} is in the kept set {(probs > 0).nonzero().flatten().tolist()} but was "
                        f"never drawn in {samples} draws (expected ~{float(probs[t]) * samples:.0f}): your filter "
                        f"drops it. Top-k keeps the top_k largest logits; then, over those, the nucleus keeps the "
                        f"token whose probability crosses top_p (compare the sum of the tokens *before* it with top_p).")
        p = _chi2_pvalue(counts, probs)
        if p < 1e-3:
            worst = int(((counts / samples - probs).abs()).argmax())
            raise Wrong(f"{where}: {samples} draws do not follow the expected distribution (chi-square "
                        f"p={p:.1e}); token {worst} came {counts[worst] / samples:.3f} of the time, expected "
                        f"{probs[worst]:.3f}. Divide by the temperature before the softmax, and renormalize "
                        f"over the kept tokens.")


def as_sampler(fn):
    """Wrap sample_row into the engine's sampler seam: row by row, each with its request's generator."""
    def sampler(logits, seqs):
        out = []
        for row, seq in zip(logits, seqs):
            p = seq.params
            if p.greedy:
                out.append(int(row.argmax()))
                continue
            out.append(int(fn(row.float(), p.temperature, p.top_k, p.top_p, seq.generator)))
        return torch.tensor(out, dtype=torch.long, device=logits.device)
    return sampler


def engine(fn) -> None:
    from workbench import SamplingParams
    prompts = prompts_for(3)
    want, _, _ = run_engine(prompts)
    got, _, _ = run_engine(prompts, overrides={"sampler": as_sampler(fn)})
    same_tokens(got, want, "Greedy requests must still take the argmax.")
    seeded = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=11, max_tokens=8, ignore_eos=True)
    first, _, _ = run_engine(prompts, overrides={"sampler": as_sampler(fn)}, params=seeded)
    again, _, _ = run_engine(prompts, overrides={"sampler": as_sampler(fn)}, params=seeded)
    if first != again:
        raise Wrong("two runs of the same seeded requests gave different tokens: use only the generator passed in.")


def measure(fn, rows: int = 200, vocab: int = 32000, rounds: int = 3) -> dict:
    """Your sampler row by row against the engine's batched one, the two taking turns (a warm-up
    each first); above the bar only if even your fastest pass is over 200x its slowest."""
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0))
    k, p = torch.full((rows,), 50), torch.full((rows,), 0.9)

    def yours():
        for row in logits:
            fn(row, 0.8, 50, 0.9, torch.Generator().manual_seed(0))

    def batched():
        probs = _filter_top_k_top_p(logits / 0.8, k, p).softmax(-1)
        (probs / torch.empty_like(probs).exponential_()).argmax(-1)
    runs = take_turns({"yours": yours, "batched": batched}, rounds=rounds)
    mine, ref = (1e3 * runs[name].median / rows for name in ("yours", "batched"))   # us a row
    spread = {name: (1e3 * runs[name].min / rows, 1e3 * runs[name].max / rows) for name in runs}
    effect = dict(student_us_per_row=mine, batched_reference_us_per_row=ref, vocab=vocab, machine=machine(),
                  bar="<= 200x the engine's batched sampler per row (your fastest pass against its slowest)",
                  summary=f"{mine:.0f} us per row ({spread['yours'][0]:.0f}-{spread['yours'][1]:.0f}) at vocab "
                          f"{vocab}; the engine's batched sampler {ref:.0f} us per row ({spread['batched'][0]:.0f}-"
                          f"{spread['batched'][1]:.0f}); your time {mine / ref:.1f}x the engine's (medians of "
                          f"{rounds} passes, taking turns) on {machine()}")
    if spread["yours"][0] > 200 * spread["batched"][1]:
        raise Wrong(f"{effect['summary']}: above the bar; avoid Python loops over the vocabulary.")
    return effect


EXERCISE = Exercise("sampling", "00", "sample_row(logits, temperature, top_k, top_p, generator) -> int",
                    alone, engine, measure)
