"""Exercise 03b: FlashAttention's idea in plain torch -- tiled attention with an online softmax.

    tiled_attention(q [Lq, H, D], k [Lk, H, D], v [Lk, H, D], scale, tile) -> [Lq, H, D]

One sequence, causal, the queries being the *last* Lq of the Lk positions (query i sees keys
0 .. Lk - Lq + i). Walk the keys `tile` at a time and keep, per query row, a running max m, a
running sum l and an unnormalized output acc: for each tile, m_new = max(m, rowmax(s)),
rescale l and acc by exp(m - m_new), add exp(s - m_new). Divide by l at the end. The Lq x Lk
matrix must never exist: the check watches every tensor your function creates.

Plugs in as the "attention" override (the lab wraps it per sequence over the paged cache).
To compare with once yours passes: the engine's NaiveAttention (same numbers, the N x N matrix in memory).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .exercise import Exercise, Wrong, leaving_torch, machine
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

    def right(tile):
        out = fn(q, k, v, 0.125, tile)
        return isinstance(out, torch.Tensor) and out.shape == want.shape and torch.allclose(out, want, atol=1e-3)
    for tile in (16, 7, 64):   # tiles that do not divide Lk = 40, and one larger than Lk
        got = fn(q, k, v, 0.125, tile)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            raise Wrong(f"tile={tile}: expected a tensor of shape {tuple(want.shape)} ([Lq, H, D]), got "
                        f"{getattr(got, 'shape', type(got).__name__)}")
        if not torch.allclose(got, want, atol=1e-3, rtol=1e-3):
            rows = (got - want).abs().amax(dim=(1, 2)) > 1e-3
            row = int(rows.nonzero()[0])
            # which mistake: tiles that divide Lk (8, 20) right -> the last, shorter tile; one tile
            # right (no rescaling needed) -> the rescale; neither -> the mask or the final division
            hint = ("with tiles that divide Lk (8, 20) it is right, so the last, shorter tile is lost or "
                    "mishandled: walk the keys up to Lk, the last tile holding Lk mod tile keys"
                    if right(8) and right(20) else
                    "with one tile it is right, so the rescale across tiles is off: multiply l and acc by "
                    "exp(m_old - m_new) each time the max grows" if right(1000)
                    else "check the causal offset (query i sees keys up to Lk - Lq + i) and the final acc / l")
            raise Wrong(f"tile={tile}: query row {row} is wrong (max error "
                        f"{float((got - want).abs().max()):.3g}); {hint}.")
    check_attention_alone(as_backend(fn), atol=1e-3)


def engine(fn) -> None:
    check_in_engine(as_backend(fn))


class _Largest(TorchDispatchMode):
    """Records the largest tensor any op creates (a real count of elements, CPU or GPU), its
    shape and the op that made it. A view (a slice, a transpose) allocates nothing: not counted."""
    def __init__(self):
        super().__init__()
        self.largest, self.shape, self.op = 0, (), ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and not func.is_view and t.numel() > self.largest:
                self.largest, self.shape, self.op = t.numel(), tuple(t.shape), func.__name__
        return out


def largest_tensor(fn, *args) -> _Largest:
    """What running fn(*args) created: .largest elements, of .shape, made by .op. Tensors may not
    leave torch meanwhile (numpy would hold the N x N matrix where the count cannot see it)."""
    with leaving_torch() as left, _Largest() as mode:
        fn(*args)
    if left:
        raise Wrong(f"your function moved tensors out of torch ({', '.join(left)}): the check counts what torch "
                    "creates, so work done elsewhere would go uncounted -- keep the attention in torch ops.")
    return mode


def measure(fn, n: int = 1024, heads: int = 2, dim: int = 16, tile: int = 64, few: int = 4) -> dict:
    """The largest tensor your function creates, against naive attention's, in two shapes: N queries
    over N keys, and `few` queries over 4N keys (a decode-like shape: a dense softmax taken a few
    queries at a time stays Lq x Lk there). Bar: 4 * Lq * heads * max(tile, head_dim) elements."""
    g = torch.Generator().manual_seed(0)
    effect = dict(machine=machine(), bar="largest tensor <= 4 * Lq * heads * max(tile, head_dim)")
    for lq, lk in ((n, n), (few, 4 * n)):
        q = torch.randn(lq, heads, dim, generator=g)
        k, v = torch.randn(lk, heads, dim, generator=g), torch.randn(lk, heads, dim, generator=g)
        yours, dense = largest_tensor(fn, q, k, v, dim ** -0.5, tile), largest_tensor(_dense, q, k, v, dim ** -0.5)
        mine, naive, bar = yours.largest, dense.largest, 4 * lq * heads * max(tile, dim)
        said = (f"Lq={lq}, Lk={lk}: your largest tensor has {mine} elements ({list(yours.shape)}, made by "
                f"{yours.op}), naive attention's {naive}: "
                + (f"{naive / mine:.0f}x yours" if mine and naive >= 1.5 * mine else "about as many")
                + ", counted op by op")
        effect.update({f"student_elements_{lq}x{lk}": mine, f"naive_elements_{lq}x{lk}": naive,
                       f"bar_elements_{lq}x{lk}": bar})
        effect["summary"] = said if "summary" not in effect else f"{effect['summary']}; {said}"
        if mine > bar:
            keys, queries = yours.shape.count(lk), yours.shape.count(lq)
            matrix = keys >= 2 if lq == lk else keys and queries   # an Lq x Lk score matrix
            raise Wrong(f"{said}: above the bar ({bar}). "
                        + ("An Lq x Lk tensor still exists -- compute scores one key tile at a time "
                           "(q @ k_tile^T is Lq x tile)." if matrix else
                           "A tensor spans every key at once: taking a few queries at a time does not help when "
                           "there are few queries and many keys (a decode step's shape) -- walk the keys a tile "
                           "at a time, all the queries together." if keys and lq != lk else
                           "No Lq x Lk tensor, but an intermediate as big as one: keep each to about Lq x "
                           "tile per head (a broadcast product such as q[:, None] * k_tile[None], or p[..., None] "
                           "* v_tile, is Lq x tile x D; a matmul is not)."))
    effect["n"] = n
    return effect


EXERCISE = Exercise("online_softmax", "03", "tiled_attention(q, k, v, scale, tile) -> out", alone, engine, measure)
