"""Exercise 03b: FlashAttention's idea in plain torch -- tiled attention with an online softmax.

    tiled_attention(q [Lq, H, D], k [Lk, H, D], v [Lk, H, D], scale, tile) -> [Lq, H, D]

One sequence, causal, the queries being the *last* Lq of the Lk positions (query i sees keys
0 .. Lk - Lq + i). Walk the keys `tile` at a time and keep, per query row, a running max m, a
running sum l and an unnormalized output acc: for each tile, m_new = max(m, rowmax(s)),
rescale l and acc by exp(m - m_new), add exp(s - m_new). Divide by l at the end. The Lq x Lk
matrix must never exist: the check watches every tensor your function creates.

Plugs in as the "attention" override (the lab wraps it per sequence over the paged cache).
Reference: the engine's NaiveAttention (same numbers, the N x N matrix in memory).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .exercise import Exercise, Wrong, machine
from .naive_attention import check_attention_alone, check_in_engine, per_sequence_kv


def as_backend(fn, tile: int = 16):
    """Wrap a one-sequence tiled_attention into the engine's attention-backend signature."""
    def backend(q, k_cache, v_cache, meta, scale):
        cu = meta.cu_seqlens_q.tolist()
        return torch.cat([fn(q[cu[b]:cu[b + 1]], k, v, scale, tile)
                          for b, (k, v) in enumerate(per_sequence_kv(k_cache, v_cache, meta, q.shape[1]))])
    return backend


def _dense(q, k, v, scale):
    lq, lk = q.shape[0], k.shape[0]
    s = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    s = s.masked_fill(torch.arange(lk)[None, :] > torch.arange(lq)[:, None] + lk - lq, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v.float()).to(q.dtype)


def alone(fn) -> None:
    g = torch.Generator().manual_seed(3)
    # big logits: exp() overflows float32 unless the running max is subtracted
    q = torch.randn(9, 2, 8, generator=g) * 30
    k, v = torch.randn(40, 2, 8, generator=g) * 30, torch.randn(40, 2, 8, generator=g)
    got = fn(q, k, v, 0.125, 16)
    if not torch.isfinite(got).all():
        raise Wrong("with large scores your output has inf/nan: subtract the running max m before exp(), "
                    "and rescale l and acc by exp(m_old - m_new) when the max grows.")
    want = _dense(q, k, v, 0.125)
    for tile in (16, 7, 64):   # a tile that does not divide Lk, and one larger than Lk
        got = fn(q, k, v, 0.125, tile)
        if not torch.allclose(got, want, atol=1e-3, rtol=1e-3):
            rows = (got - want).abs().amax(dim=(1, 2)) > 1e-3
            row = int(rows.nonzero()[0])
            single = fn(q, k, v, 0.125, 1000)   # one tile: no rescaling needed
            hint = ("with one tile it is right, so the rescale across tiles is off: multiply l and acc by "
                    "exp(m_old - m_new) each time the max grows" if torch.allclose(single, want, atol=1e-3)
                    else "check the causal offset (query i sees keys up to Lk - Lq + i) and the final acc / l")
            raise Wrong(f"tile={tile}: query row {row} is wrong (max error "
                        f"{float((got - want).abs().max()):.3g}); {hint}.")
    check_attention_alone(as_backend(fn), atol=1e-3)


def engine(fn) -> None:
    check_in_engine(as_backend(fn))


class _Largest(TorchDispatchMode):
    """Records the largest tensor any op creates (a real count of elements, CPU or GPU)."""
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def largest_tensor(fn, *args) -> int:
    with _Largest() as mode:
        fn(*args)
    return mode.largest


def measure(fn, n: int = 1024, heads: int = 2, dim: int = 16, tile: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, heads, dim, generator=g) for _ in range(3))
    mine, naive = largest_tensor(fn, q, k, v, dim ** -0.5, tile), largest_tensor(_dense, q, k, v, dim ** -0.5)
    bar = 4 * n * heads * max(tile, dim)
    effect = dict(n=n, student_elements=mine, naive_elements=naive, bar_elements=bar, machine=machine(),
                  bar=f"largest tensor <= 4 * N * heads * max(tile, head_dim) = {bar}",
                  summary=f"N={n}: your largest tensor has {mine} elements, naive attention's {naive} "
                          f"({naive / max(mine, 1):.0f}x more), counted op by op")
    if mine > bar:
        raise Wrong(f"{effect['summary']}: above the bar ({bar}). Something of size Lq x Lk still exists -- "
                    f"compute scores one key tile at a time (q @ k_tile^T is Lq x tile).")
    return effect


EXERCISE = Exercise("online_softmax", "03", "tiled_attention(q, k, v, scale, tile) -> out", alone, engine, measure)
