"""Exercise 03a: causal attention over the paged KV cache, written plainly.

    attention(q [T, Hq, D], k_cache, v_cache [blocks, block_size, Hkv, D], meta, scale) -> [T, Hq, D]

Tokens are packed (see workbench/attention/metadata.py): sequence b's queries are
q[cu_seqlens_q[b]:cu_seqlens_q[b+1]], its keys the first seq_lens[b] slots reached through
block_tables[b]. The new tokens are the *last* ones of the sequence, so new token i sees keys
0 .. seq_len - new + i (causal), and query head h reads KV head h // (Hq // Hkv) (GQA).
k_cache and v_cache already hold this step's keys and values: the engine wrote the new tokens'
K/V at meta.slot_mapping before calling you, so read every key, the new ones too, from the cache.

Plugs in as `LLM(..., overrides={"attention": fn})`. To compare with once yours passes: the engine's NaiveAttention.
"""
from __future__ import annotations

import torch

from workbench.attention.naive import NaiveAttention
from workbench.attention.padded import gather_kv
from workbench.measure.timing import take_turns

from .cases import CASES, locate, make_case
from .exercise import Exercise, Wrong, machine, prompts_for, run_engine, same_tokens

REFERENCE = NaiveAttention()


def per_sequence_kv(k_cache, v_cache, meta, q_heads: int, interleave: bool = True):
    """Each sequence's keys and values [seq_len, q_heads, D], through the engine's block-table
    gather (workbench/attention/padded.py) and repeated per query head (GQA: query heads
    h * group .. (h + 1) * group - 1 share KV head h; interleave=False: the classic mistake, query
    head h reading KV head h % num_kv_heads)."""
    keys, values = gather_kv(k_cache, meta), gather_kv(v_cache, meta)
    group = q_heads // k_cache.shape[2]
    for b in range(meta.num_seqs):
        n = int(meta.seq_lens[b])
        k, v = keys[b, :n], values[b, :n]
        yield ((k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)) if interleave else
               (k.repeat(1, group, 1), v.repeat(1, group, 1)))


def attend(q, k, v, scale, *, causal=True, offset=True, sees_itself=True, scale_power=1):
    """One sequence's attention, dense, in fp32: q [new, H, D] the last `new` of the n positions of
    k, v [n, H, D] (heads already matched). A keyword argument switches one classic mistake on
    (MISTAKES): no mask, a mask that ignores the cached prefix or hides a token's own key, the
    scores times scale ** scale_power (0: no scale, 2: scaled twice, -1: divided by it)."""
    new, n = q.shape[0], k.shape[0]
    s = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale ** scale_power
    if causal:
        pos = torch.arange(new, device=q.device)[:, None] + (n - new if offset else 0)
        keys = torch.arange(n, device=q.device)[None, :]
        s = s.masked_fill(keys > pos if sees_itself else keys >= pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v.float())


def _variant(q, k_cache, v_cache, meta, scale, *, interleave=True, **mistake):
    """The reference with one classic mistake switched on (attend's, or GQA's head mapping)."""
    cu = meta.cu_seqlens_q.tolist()
    return torch.cat([attend(q[cu[b]:cu[b + 1]], k, v, scale, **mistake) for b, (k, v) in
                      enumerate(per_sequence_kv(k_cache, v_cache, meta, q.shape[1], interleave))]).to(q.dtype)


# (mistake, what the student reads); {last} and {cached} name new token i's position and the cached
# keys in the exercise's own terms (PAGED here; the tiled exercise's Lk - Lq + i)
MISTAKES = [
    (dict(causal=False), "your output matches attention *without* the causal mask: new token i may only "
                         "see keys up to its own position ({last})"),
    (dict(offset=False), "your mask ignores the cached prefix: with {cached} keys before the new tokens, "
                         "new token i sits at position {last}, not i"),
    (dict(sees_itself=False), "your mask hides each new token's own key: new token i sees keys 0 .. "
                              "{last}, its own position included (mask key > position, not >=)"),
    (dict(scale_power=0), "your output matches attention without the scale: multiply the scores q . k by "
                          "`scale` (1 / sqrt(head_dim)) before the softmax"),
    (dict(scale_power=2), "your output matches the scores scaled twice: `scale` is 1 / sqrt(head_dim) "
                          "already, so multiply q . k by it once (not by scale again, nor by 1 / sqrt(head_dim))"),
    (dict(scale_power=-1), "your output matches the scores divided by `scale`: multiply q . k by `scale` "
                           "(it is 1 / sqrt(head_dim) already)"),
    (dict(interleave=False), "your output matches query head h reading KV head h % num_kv_heads: with GQA "
                             "query heads h * group .. (h + 1) * group - 1 share KV head h (repeat_interleave "
                             "along the head dimension, not repeat)"),
]
PAGED = dict(last="seq_len - new_tokens + i", cached="seq_len - new_tokens")


def name_mistake(got, variant, atol, words=PAGED) -> str | None:
    """The MISTAKES message whose variant `got` matches, variant(**mistake) giving that output; a
    mistake the variant cannot take (TypeError: GQA where heads are already matched) is passed over."""
    for mistake, why in MISTAKES:
        try:
            wrong = variant(**mistake)
        except TypeError:
            continue
        # (equal_nan: a mask that hides a row's every key makes that row NaN, in both)
        if torch.allclose(got.float(), wrong.float(), atol=atol, equal_nan=True):
            return why.format(**words)
    return None


def check_attention_alone(fn, cases=CASES, atol=1e-4) -> None:
    for n, case in enumerate(cases):
        q, kc, vc, meta, scale = make_case(**case, seed=n)
        want = REFERENCE(q, kc, vc, meta, scale)
        got = fn(q.clone(), kc.clone(), vc.clone(), meta, scale)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            raise Wrong(f"case {n}: expected a tensor of shape {tuple(want.shape)} ([T, Hq, D]), got "
                        f"{getattr(got, 'shape', type(got).__name__)}")
        # (NaN compares False: counted as wrong, not as close)
        bad = (got.float() - want.float()).abs().nan_to_num(nan=float("inf")).amax(dim=(1, 2)) > atol
        if bad.any():
            if why := name_mistake(got, lambda **mistake: _variant(q, kc, vc, meta, scale, **mistake), atol):
                raise Wrong(f"case {n}: {why}.")
            token = int(bad.nonzero()[0])
            seqs = case["seqs"]
            raise Wrong(f"case {n} ({len(seqs)} sequence{'s' * (len(seqs) > 1)} of (cached, new) tokens {seqs}, "
                        f"block_size {kc.shape[1]}, {q.shape[1]} query and {kc.shape[2]} KV heads): wrong output "
                        f"at {locate(token, meta)}, max error {float((got - want).abs().max()):.3g}; check the "
                        f"block-table gather (token t is in block_tables[b, t // block_size] at offset "
                        f"t % block_size), the GQA head mapping (query head h reads KV head h // (Hq // Hkv)) "
                        f"and the scale (q . k times `scale`, once).")


def check_in_engine(fn, where: str = "attention") -> None:
    prompts = prompts_for(1)
    want, _, _ = run_engine(prompts, opts="enforce_eager")
    got, _, _ = run_engine(prompts, overrides={where: fn}, opts="enforce_eager")
    same_tokens(got, want, "Run check_attention_alone's cases: a prefill bug shows on token 0, "
                           "a decode bug (one query, many cached keys) from token 1 on.")


def engine_stage(fn) -> None:
    check_in_engine(fn)


def measure(fn, repeats: int = 5) -> dict:
    """Time per call on a long prefill case, against the engine's naive backend (same algorithm),
    the two taking turns; above the bar only if even your fastest call is over 20x its slowest."""
    q, kc, vc, meta, scale = make_case(seqs=[(0, 256), (64, 128)], heads=(4, 2), block_size=16)
    runs = take_turns({"reference": REFERENCE, "yours": fn}, q, kc, vc, meta, scale, rounds=repeats)
    ref, got = runs["reference"], runs["yours"]
    ratio = got.median / ref.median
    effect = dict(student_ms=got.median, reference_ms=ref.median, ratio=ratio, machine=machine(),
                  bar="time <= 20x the engine's naive (your fastest call against its slowest)",
                  summary=f"{got.median:.2f} ms per call ({got.min:.2f}-{got.max:.2f}) vs the engine's naive "
                          f"{ref.median:.2f} ms ({ref.min:.2f}-{ref.max:.2f}), {ratio:.1f}x its time (medians of "
                          f"{repeats}, taking turns) on {machine()}")
    if got.min > 20 * ref.max:
        raise Wrong(f"{effect['summary']}: above the bar (20x). A Python loop over tokens or heads? "
                    f"Batch the heads with one matmul per sequence.")
    return effect


EXERCISE = Exercise("naive_attention", "03", __doc__.split("\n")[2].strip(), check_attention_alone,
                    engine_stage, measure)
