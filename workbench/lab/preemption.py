"""Exercise 02b: which request to preempt when the KV cache is full.

    pick_victim(running: list[Sequence]) -> Sequence

`running` is the candidates, in admission order (oldest first): the sequence that needs room and
those admitted after it (the ones that already ran this step are not offered). Each is the engine's
Sequence (workbench/engine/sequence.py): seq.request_id, seq.num_computed_tokens (tokens whose K/V
are in the cache), len(seq) (its tokens, prompt and output, computed or not). The victim's
blocks are freed and it is recomputed later from its tokens, so its output does not change --
but its computed tokens are work thrown away. Pick the candidate with the fewest computed tokens
(seq.num_computed_tokens); on a tie, the newest. Return one of the objects in `running`; do not
change the list (the scheduler does that).

Plugs in as `LLM(..., overrides={"preemption": fn})`. Built-in: the newest, running[-1].
"""
from __future__ import annotations

from workbench.engine.sampling_params import SamplingParams
from workbench.engine.sequence import Sequence, Status

from .exercise import Exercise, Wrong, machine, once_per_check, prompts_for, run_engine, same_tokens


def _seqs(case):
    """Running Sequences, oldest first, from (computed tokens, tokens held) pairs."""
    seqs = []
    for i, (computed, held) in enumerate(case):
        seq = Sequence(i, list(range(3, 3 + held)), SamplingParams(temperature=0.0))
        seq.status, seq.num_computed_tokens = Status.RUNNING, computed
        seqs.append(seq)
    return seqs


# (computed, held) per candidate; most are decoding (one token not computed yet), a few are part-way
# through a long prompt (chunked prefill): the fewest tokens held is not the least work done
CASES = [[(40, 41), (12, 72), (30, 31)], [(5, 6)], [(20, 21), (20, 21), (20, 21)],
         [(8, 9), (30, 31), (8, 40), (50, 51)], [(0, 16), (64, 65), (16, 17)]]


def alone(fn) -> None:
    for case in CASES:
        running, computed = _seqs(case), [c for c, _ in case]
        before = list(running)
        victim = fn(running)
        if running != before:
            raise Wrong("your function changed the `running` list: return the victim and let the scheduler "
                        "remove it (it also frees the victim's blocks).")
        if not any(victim is s for s in running):
            raise Wrong(f"returned {victim!r}, which is not one of the running sequences: return the object "
                        f"itself, not its id or a copy.")
        least = min(computed)
        if victim.num_computed_tokens != least:
            by_length = len(victim) == min(len(s) for s in running)
            raise Wrong(f"running sequences with {computed} computed tokens (holding {[h for _, h in case]} "
                        f"tokens): you preempt the one with {victim.num_computed_tokens} computed, throwing that "
                        f"much work away; the one with {least} loses the least"
                        + (" (count seq.num_computed_tokens, the work done, not len(seq), the tokens held)."
                           if by_length else "."))
        newest = max(i for i, c in enumerate(computed) if c == least)
        position = next(i for i, s in enumerate(running) if s is victim)
        if position != newest:
            raise Wrong(f"computed tokens {computed}: on a tie take the newest (the last such in `running`), "
                        f"you took position {position}: it has waited longest, let it finish.")


# Prompt lengths where the newest request is not always the one with the least work done, in a
# cache of TIGHT_BLOCKS blocks of 8: there "fewest computed tokens" and the built-in "newest" pick
# different victims, and the measure stage shows what that is worth. (Neither policy wins on every
# workload; on this one the fewest wins, and the oldest loses to both.)
WORKLOAD, TIGHT_BLOCKS = (6, 24, 10, 30, 16), 10


def _tight(fn=None):
    """A KV cache too small for all requests at once: preemptions must happen. The student's run
    is made once per check (its engine and measure stages share it)."""
    if fn is not None:
        return once_per_check("preemption", lambda: _tight_run(fn))
    return _tight_run(None)


def _tight_run(fn):
    recomputed = []

    def counting(running):
        victim = (fn or (lambda r: r[-1]))(running)
        recomputed.append(victim.num_computed_tokens)
        return victim
    prompts = prompts_for(2, lengths=WORKLOAD)
    tokens, stats, seconds = run_engine(prompts, overrides={"preemption": counting}, max_tokens=24,
                                        num_kv_blocks=TIGHT_BLOCKS, block_size=8, enable_prefix_caching=False)
    return tokens, stats, sum(recomputed)


def engine(fn) -> None:
    want, _, _ = run_engine(prompts_for(2, lengths=WORKLOAD), max_tokens=24)   # roomy cache
    got, stats, _ = _tight(fn)
    if stats.preemptions == 0:
        raise Wrong("no preemption happened: the workload is meant to overflow the cache (a check defect).")
    same_tokens(got, want, "Preemption must be invisible in the output: the victim is recomputed from its tokens.")


def measure(fn) -> dict:
    _, stats, lost = _tight(fn)
    _, ref_stats, ref_lost = _tight()
    effect = dict(preemptions=stats.preemptions, recomputed_tokens=lost, builtin_recomputed_tokens=ref_lost,
                  machine=machine(), bar="recomputed tokens <= the built-in policy's (the newest)",
                  summary=f"{stats.preemptions} preemptions threw away {lost} computed tokens; the built-in "
                          f"'newest' policy: {ref_stats.preemptions} and {ref_lost}")
    if lost > ref_lost:
        raise Wrong(f"{effect['summary']}: above the bar.")
    return effect


EXERCISE = Exercise("preemption", "02", "pick_victim(running) -> Sequence", alone, engine, measure)
