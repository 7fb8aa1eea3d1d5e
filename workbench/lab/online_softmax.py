"""Exercise 03b: FlashAttention's idea in plain torch -- tiled attention with an online softmax.

    tiled_attention(q [Lq, H, D], k [Lk, H, D], v [Lk, H, D], scale, tile) -> [Lq, H, D]

One sequence, causal, the queries being the *last* Lq of the Lk positions (query i sees keys
0 .. Lk - Lq + i). Walk the keys `tile` at a time and keep, per query row, a running max m
(starting at -inf), a running sum l and an unnormalized output acc (both starting at 0): for each
tile, s = scale * q . k_tile (Lq x tile per head), m_new = max(m, rowmax(s)), p = exp(s - m_new);
then l = l * exp(m - m_new) + rowsum(p) and acc = acc * exp(m - m_new) + p @ v_tile. Divide acc
by l at the end.

The Lq x Lk matrix must never exist: the check counts the largest tensor your function creates
(tile 64, 2 heads, head_dim 16) in two shapes, Lq = Lk = 1024, and Lq = 4 queries over Lk = 4096
keys (a decode step's shape). The bar: 4 * Lq * heads * max(tile, head_dim) elements, about Lq x
tile per head -- so walk the keys a tile at a time with all the queries together (a dense softmax
taken a few queries at a time stays Lq x Lk in the second shape).

Plugs in as the "attention" override (the lab wraps it per sequence over the paged cache).
To compare with once yours passes: the engine's NaiveAttention (same numbers, the N x N matrix in memory).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .exercise import Exercise, Wrong, leaving_torch, machine
from .naive_attention import attend, check_attention_alone, check_in_engine, name_mistake, per_sequence_kv


def as_backend(fn, tile: int = 16):
    """Wrap a one-sequence tiled_attention into the engine's attention-backend signature."""
    def backend(q, k_cache, v_cache, meta, scale):
        cu = meta.cu_seqlens_q.tolist()
        return torch.cat([fn(q[cu[b]:cu[b + 1]], k, v, scale, tile)
                          for b, (k, v) in enumerate(per_sequence_kv(k_cache, v_cache, meta, q.shape[1]))])
    return backend


def _dense(q, k, v, scale):
    return attend(q, k, v, scale).to(q.dtype)


TILED = dict(last="Lk - Lq + i", cached="Lk - Lq")   # MISTAKES' words for one sequence's q, k, v


def _every_tile_right(fn, q, k, v, scale) -> None:
    """fn right with tiles that do not divide Lk = 40 and one larger; if not, which mistake."""
    want = _dense(q, k, v, scale)

    def right(tile):
        out = fn(q, k, v, scale, tile)
        return isinstance(out, torch.Tensor) and out.shape == want.shape and torch.allclose(out, want, atol=1e-3)
    for tile in (16, 7, 64):
        got = fn(q, k, v, scale, tile)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            raise Wrong(f"tile={tile}: expected a tensor of shape {tuple(want.shape)} ([Lq, H, D]), got "
                        f"{getattr(got, 'shape', type(got).__name__)}")
        if not torch.allclose(got, want, atol=1e-3, rtol=1e-3):
            rows = (got - want).abs().nan_to_num(nan=float("inf")).amax(dim=(1, 2)) > 1e-3
            row = int(rows.nonzero()[0])
            # which mistake: one of naive attention's (mask, scale); tiles that divide Lk (8, 20) right
            # -> the last, shorter tile; one tile right (no rescaling needed) -> the rescale; else generic
            hint = (name_mistake(got, lambda **mistake: attend(q, k, v, scale, **mistake), 1e-3, TILED) or
                    ("with tiles that divide Lk (8, 20) it is right, so the last, shorter tile is lost or "
                     "mishandled: walk the keys up to Lk, the last tile holding Lk mod tile keys"
                     if right(8) and right(20) else
                     "with one tile it is right, so the rescale across tiles is off: multiply l and acc by "
                     "exp(m_old - m_new) each time the max grows" if right(1000)
                     else "check the causal offset (query i sees keys up to Lk - Lq + i), the scale (scores "
                          "times `scale`, once) and the final acc / l"))
            raise Wrong(f"tile={tile}: query row {row} is wrong (max error "
                        f"{float((got - want).abs().max()):.3g}); {hint}.")


def alone(fn) -> None:
    g = torch.Generator().manual_seed(3)
    dim = 8
    scale = dim ** -0.5   # 1 / sqrt(head_dim), as the engine passes it
    q, k, v = (torch.randn(n, 2, dim, generator=g) for n in (9, 40, 40))
    # big logits: exp() overflows float32 unless the running max is subtracted
    if not torch.isfinite(fn(q * 17, k * 17, v, scale, 16)).all():
        raise Wrong("with large scores your output has inf/nan: subtract the running max m before exp(), "
                    "and rescale l and acc by exp(m_old - m_new) when the max grows.")
    _every_tile_right(fn, q, k, v, scale)             # scores about 1: a mistake is named
    _every_tile_right(fn, q * 17, k * 17, v, scale)   # about 100 times larger
    # every score far below zero: the same scores minus 200 (an extra dimension, q's +a, k's -a, with
    # a * a * scale = 200; v's 0), which leaves the softmax as it was
    a = (200 / scale) ** 0.5
    low = [torch.cat([t, torch.full((*t.shape[:2], 1), float(c))], -1) for t, c in ((q, a), (k, -a), (v, 0))]
    got, want = fn(*low, scale, 16), _dense(*low, scale)
    if not torch.allclose(got, want, atol=1e-3, rtol=1e-3):
        said = "has nan/inf" if not torch.isfinite(got).all() else "is wrong"
        raise Wrong(f"with every score far below zero (about -200: the same scores shifted down, which leaves "
                    f"the softmax unchanged) your output {said}: does your running max m start at 0? Then "
                    f"exp(s - m) underflows to 0 for every key, l stays 0 and acc / l is 0 / 0 -- start m at "
                    f"-inf (the max of no scores yet).")
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
