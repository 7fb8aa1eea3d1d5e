"""A sum made by atomic adds that comes out the same on every run: add integers, not floats.

Why. When many programs add into one number with atomics, the adds land in whichever order the
programs finish. Float addition is not associative -- (a + b) + c and a + (b + c) can differ in the
last bit -- so the sum changes from run to run, and after a rounding to bf16 so can a near-tie
token. Integer addition is associative (and exact, short of overflow): the same terms give the same
sum in any order. So each term is turned into an integer first, a fixed-point number: y x SCALE
truncated toward zero, in an int64 -- a resolution of 1 / SCALE. (GPU molecular-dynamics codes
accumulate forces the same way, for the same reason.) Used by decode attention's o_proj fold
(kernels/decode_attention.py, Choice 8, `o_proj_fixed_point=True`); gate_up's folded norm turns
the sum back as it loads it (kernels/gemv.py, `_residual_sum`).

The numbers. SCALE = 2^28: a term is off by less than 1 / SCALE (3.7e-9), toward zero. Beside the
residual stream the sum is added to, that is far below a bf16 unit; the sum's own rounding to bf16
(where o_proj's GEMV would have rounded its output) can differ for small values -- below ~2^-5
the truncation can move them across a bf16 rounding boundary -- which the residual add then
swamps. A term beyond +-LIMIT = 2^20 or not finite (inf, NaN) is not held: it adds POISON = 2^56
instead, and the reader turns a sum beyond +-CLEAN = 2^55 into NaN. A NaN or inf would have
turned the float sum into one too; a finite term past 2^20 would not have (fp32 holds it), but no
healthy layer makes one, and a NaN that says so beats a sum that wrapped round. With at most 127
terms a sum: a clean sum stays below 127 x 2^48 < 2^55, and a poisoned one lies between
2^56 - 2^55 and 127 x 2^56 + 2^55 < 2^63, so it never wraps round and is never read as clean.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

SCALE = 2.0 ** 28
LIMIT = 2.0 ** 20
POISON = 2 ** 56
CLEAN = 2 ** 55
# for the kernels; 1 / SCALE as a product, which is exact (a division compiles to an approximate one)
_SCALE, _STEP, _LIMIT, _POISON, _CLEAN = (tl.constexpr(v) for v in (SCALE, 1 / SCALE, LIMIT, POISON, CLEAN))
MAX_TERMS = 127   # terms of one sum (o_proj's fold: one per query head, the bias riding on head 0's)


@triton.jit
def to_fixed(y):
    """fp32 terms -> int64 fixed point: y x SCALE, truncated toward zero (exact in any order of
    adding); POISON for a term beyond LIMIT or not finite."""
    held = tl.abs(y) <= _LIMIT   # False for NaN as well
    return tl.where(held, (tl.where(held, y, 0.0) * _SCALE).to(tl.int64), _POISON)


@triton.jit
def from_fixed(s):
    """An int64 fixed-point sum -> fp32 (NaN where a term was poisoned)."""
    clean = (s < _CLEAN) & (s > -_CLEAN)
    return tl.where(clean, s.to(tl.float32) * _STEP, float("nan"))


def encode(y: torch.Tensor) -> torch.Tensor:
    """to_fixed in torch (tests, and the one-split path that adds no atomics)."""
    held = y.float().abs() <= LIMIT
    return torch.where(held, (torch.where(held, y.float(), 0.0) * SCALE).long(), POISON)


def decode(s: torch.Tensor) -> torch.Tensor:
    """from_fixed in torch."""
    return torch.where(s.abs() < CLEAN, s.float() * (1 / SCALE), float("nan"))
