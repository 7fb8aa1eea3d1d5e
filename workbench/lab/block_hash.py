"""Exercise 02: the block hash chain of prefix caching.

    block_hasher(parent_hash: int | None, token_ids: tuple[int, ...]) -> int

A full KV block is reused by a later prompt when their hashes match. The hash must cover the
block's tokens *and everything before them*: K/V at a position depend on the whole prefix, so
hash(block) = H(parent_hash, tokens), a chain. Return an unsigned 64-bit int, in [0, 2**64)
(xxhash or hashlib are fine; Python's hash() is signed: mask it, h & (2**64 - 1)).

Plugs in as `LLM(..., overrides={"block_hasher": fn})`. To compare with once yours passes: block_hash in
workbench/engine/block_manager.py.
"""
from __future__ import annotations

import torch

from .exercise import Exercise, Wrong, machine, once_per_check, run_engine, same_tokens

BLOCK = 16


def _in_range(fn):
    """fn, with every hash it returns checked: a Python int in [0, 2**64). (Checking one is not
    enough: Python's hash() is signed, so an unmasked answer passes or fails with the values.)"""
    def checked(parent, tokens):
        h = fn(parent, tokens)
        if not isinstance(h, int) or isinstance(h, bool) or not 0 <= h < 2 ** 64:
            raise Wrong(f"block_hasher returned {h!r}: return a Python int in [0, 2**64) (e.g. xxhash's "
                        "intdigest(); Python's hash() can be negative: mask it, h & (2**64 - 1)).")
        return h
    return checked


def alone(fn) -> None:
    fn = _in_range(fn)
    a, b = tuple(range(16)), tuple(range(1, 17))
    h = fn(None, a)
    for parent in (h, 0, 2 ** 64 - 1):   # more values through the range check: a sign shows on one of them
        for tokens in (a, b, a[::-1]):
            fn(parent, tokens)
    if fn(None, a) != h or fn(h, b) != fn(h, b):
        raise Wrong("the same (parent, tokens) gave two different hashes: the hash must be deterministic "
                    "(Python's hash() of a tuple, masked to 64 bits, is fine within one process; a random "
                    "salt is not).")
    if fn(None, a) == fn(None, b):
        raise Wrong("two different token blocks got the same hash: hash the token ids themselves.")
    if fn(None, a) == fn(None, a[::-1]):
        raise Wrong("a block and its reverse got the same hash: a sum or a set of tokens loses their order; "
                    "hash the ordered ids.")
    if fn(fn(None, a), b) == fn(fn(None, b), b):
        raise Wrong("the same tokens after two different prefixes got the same hash: your hasher ignores "
                    "parent_hash. K/V at a position depend on every earlier token, so a block may only be "
                    "reused after the same whole prefix -- mix parent_hash into the hash.")
    if fn(None, a) == fn(0, a):
        raise Wrong("the first block (parent None) and a block whose parent hash is 0 collide: treat None "
                    "differently from any real parent.")
    for i in range(len(a)):   # blocks differing in one id only, small ids: an off-by-one slice shows here
        other = a[:i] + (a[i] + 100,) + a[i + 1:]
        if fn(None, a) == fn(None, other):
            which = "the last token" if i == len(a) - 1 else f"token {i} of the block"
            raise Wrong(f"blocks differing only in token {i} (of {len(a)}: {a[i]} vs {other[i]}) got the same hash: "
                        f"your hash ignores {which}. Hash every id of token_ids (a slice such as token_ids[:-1] "
                        f"or token_ids[1:] drops one).")
    # ids that agree in their low 8 or 16 bits: a real vocabulary (Qwen3's: 151,936) needs more than either
    for last, other in ((256, 0), (151_935, 151_935 - 2 ** 16)):
        x, y = a[:-1] + (last,), a[:-1] + (other,)
        if fn(None, x) == fn(None, y):
            raise Wrong(f"blocks ending in token {x[-1]:,} and in token {y[-1]:,} got the same hash: keep every "
                        "bit of each id (a vocabulary has 151,936 ids; a byte or a narrow integer type drops some).")
    if fn(None, (1, 23) + a[2:]) == fn(None, (12, 3) + a[2:]):
        raise Wrong("blocks starting (1, 23, ...) and (12, 3, ...) got the same hash: ids written one after "
                    "another with no separator run together; hash the ids themselves (e.g. as int64 bytes).")


def _workload():
    g = torch.Generator().manual_seed(5)
    system = torch.randint(3, 200, (2 * BLOCK,), generator=g).tolist()   # a shared 'system prompt'
    tails = [torch.randint(3, 200, (n,), generator=g).tolist() for n in (5, 9, 12)]
    return [system + t for t in tails] + [system[BLOCK:] + tails[0]]   # the last starts with block 2's tokens


def _runs(fn):
    """The workload through the reference engine and with fn (each run once per check): prompts,
    then (tokens, stats, seconds) of each. One request at a time, so later prompts can hit."""
    prompts = _workload()
    reference = once_per_check("block_hash reference", lambda: run_engine(prompts, max_num_seqs=1, block_size=BLOCK))
    student = once_per_check("block_hash", lambda: run_engine(prompts, overrides={"block_hasher": fn},
                                                              max_num_seqs=1, block_size=BLOCK))
    return prompts, reference, student


def engine(fn) -> dict:
    _, (want, ref_stats, _), (got, stats, _) = _runs(fn)
    same_tokens(got, want, "A prefix-cache hit gave a block computed after a different prefix: does your "
                           "hash chain through parent_hash?")
    assert ref_stats.prefix_hit_tokens > 0, "check defect: the workload must share prefixes"
    if stats.prefix_hit_tokens > ref_stats.prefix_hit_tokens:
        raise Wrong(f"the prefix cache reused {stats.prefix_hit_tokens} prompt tokens with your hasher, only "
                    f"{ref_stats.prefix_hit_tokens} with the engine's: a block was reused after a different "
                    f"prefix (its K/V were computed at other positions). Chain parent_hash into the hash.")
    if stats.prefix_hit_tokens < ref_stats.prefix_hit_tokens:
        raise Wrong(f"the prefix cache skipped {stats.prefix_hit_tokens} prompt tokens with your hasher, "
                    f"{ref_stats.prefix_hit_tokens} with the engine's: equal prefixes must give equal hashes.")
    return dict(hits=stats.prefix_hit_tokens, reference_hits=ref_stats.prefix_hit_tokens)


def measure(fn) -> dict:
    prompts, (_, ref, _), (_, got, _) = _runs(fn)
    total = sum(len(p) for p in prompts)
    effect = dict(prompt_tokens=total, prefilled=got.prefill_tokens, reference_prefilled=ref.prefill_tokens,
                  cache_hit_tokens=got.prefix_hit_tokens, machine=machine(),
                  bar="prefilled tokens == the engine's (every shared block reused)",
                  summary=f"{got.prefill_tokens} of {total} prompt tokens prefilled ({got.prefix_hit_tokens} "
                          f"skipped by cache hits); the engine's hasher: {ref.prefill_tokens}")
    if got.prefill_tokens != ref.prefill_tokens:
        raise Wrong(f"{effect['summary']}: the bar is equality.")
    return effect


EXERCISE = Exercise("block_hash", "02", "block_hasher(parent_hash, token_ids) -> int", alone, engine, measure)
