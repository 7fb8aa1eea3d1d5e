"""The decode GEMV with the op before it folded in: RMSNorm (and the residual add) before qkv_proj
and gate_up_proj -- and gate_up_proj's SiLU-and-mul in its epilogue (silu_out). The `fused_decode`
switch's kernels. (silu_mul_linear, SiLU-and-mul folded into down_proj's load of x instead, is the
form fused_decode ran until session 20, when the epilogue measured faster: kept as the A/B twin.)

Why fold. At batch 1 a decode step is ~300 small kernels, and each costs ~2-3 us on an H200
however little it does (launch, ramp-up, the tail of the kernel before it). The RMSNorm of one
token reads and writes 2 KB; the GEMV after it reads 8-12 MB of weights. Folding the norm into
the GEMV's load of x removes a kernel and its round trip through HBM. RMSNorm divides a token's
row by one number (its rms), so a program multiplies x by the norm weight as it loads it, sums
the squares on the way, and divides its dot products by the rms at the end: (x / r) . w = (x . w)
/ r. (A first version computed the rms first, reading the whole row before its first weight
load: on the H200 that made the step slower than not folding at all. docs/perf-notes.md.)

How. It is the same kernel as kernels/gemv.py -- same split-K structure, same tuned CONFIGS --
with a different X_FORM: what the kernel does to x as it loads each tile.
  rms_norm_linear   x (+ residual) -> RMSNorm -> @ W^T; the programs of the first N-tile also
                    write the new residual x + residual (each K slice once), so it is produced
                    exactly once with no extra kernel and no atomics
  ... silu_out      and silu(gate) * up of that output, [M, N / 2]: each program's rows in
                    (gate j, up j) pairs (gemv.py's SILU_OUT)
  silu_mul_linear   gate_up [M, 2I] -> silu(gate) * up -> @ W^T
The residual sum and the activation round to the input dtype where the unfused torch ops do
(the new residual is bit-exact); the norm does not: unfused, the normalized row is rounded before
the matmul, here x * norm_weight is, and 1/rms is applied in fp32 after it -- equal in exact
arithmetic, a rounding apart in bf16 (the tests allow the fold's bf16 tolerance for it). Both
are registered torch ops with fake impls, like workbench::gemv: torch.compile sees one opaque op,
and CUDA graphs capture the launches (the outputs are fresh torch.empty; without a residual,
rms_norm_linear hands on x itself as the new one, outside the op, as RMSNorm.then's unfused form does).

Both run at M <= MAX_M tokens with the bare GEMV's config for the shape (CONFIGS, else
default_config -- also where CONFIGS marks cuBLAS faster for the bare matmul, since folding removes
a whole kernel), except that the norm never splits K (see _config).
"""
from __future__ import annotations

import dataclasses

import torch

from .gemv import MAX_M, RMS_NORM, SILU_MUL, GemvConfig, check_config, default_config, launch, pick_config


def _config(x: torch.Tensor, weight: torch.Tensor, whole_rows: bool = False) -> GemvConfig:
    """The bare GEMV's config for the shape. whole_rows (the norm): no split-K, since the rms a
    program divides by needs the squares of the whole row, not of one K slice (at M = 1 the tuned
    configs of qkv_proj and gate_up_proj do not split anyway)."""
    m, (n, k) = x.shape[0], weight.shape
    cfg = pick_config(m, n, k, x.device) or default_config(m, n, k)
    return check_config(dataclasses.replace(cfg, split_k=1) if whole_rows else cfg)


@torch.library.custom_op("workbench::rms_norm_gemv", mutates_args=())
def rms_norm_gemv_op(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                     weight: torch.Tensor, bias: torch.Tensor | None,
                     prefetch: torch.Tensor | None = None, silu_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    # the stream's dtype: x's, or the residual's where x is a sum (decode attention's o_proj fold)
    dtype = residual.dtype if residual is not None else x.dtype
    out = torch.empty((x.shape[0], weight.shape[0] // (2 if silu_out else 1)), dtype=dtype, device=x.device)
    # = x + residual; without a residual none is written (rms_norm_linear hands on x itself)
    new_residual = torch.empty_like(residual) if residual is not None else x.new_empty(0)
    launch(x, weight, bias, _config(x, weight, whole_rows=True), out, RMS_NORM, residual, norm_weight, new_residual,
           eps, prefetch=prefetch, silu_out=silu_out)
    return out, new_residual


@rms_norm_gemv_op.register_fake
def _(x, residual, norm_weight, eps, weight, bias, prefetch=None, silu_out=False):
    dtype = residual.dtype if residual is not None else x.dtype
    return (x.new_empty((x.shape[0], weight.shape[0] // (2 if silu_out else 1)), dtype=dtype),
            torch.empty_like(residual) if residual is not None else x.new_empty(0))


@torch.library.custom_op("workbench::silu_mul_gemv", mutates_args=())
def silu_mul_gemv_op(gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     prefetch: torch.Tensor | None = None) -> torch.Tensor:
    out = torch.empty((gate_up.shape[0], weight.shape[0]), dtype=gate_up.dtype, device=gate_up.device)
    launch(gate_up, weight, bias, _config(gate_up, weight), out, SILU_MUL, prefetch=prefetch)
    return out


@silu_mul_gemv_op.register_fake
def _(gate_up, weight, bias, prefetch=None):
    return gate_up.new_empty((gate_up.shape[0], weight.shape[0]))


def _check(x: torch.Tensor, k: int, weight: torch.Tensor, what: str) -> None:
    if x.dim() != 2 or not 1 <= x.shape[0] <= MAX_M or x.shape[1] != k or not weight.is_contiguous():
        raise ValueError(f"{what}: x {tuple(x.shape)} and weight {tuple(weight.shape)}: want x [1..{MAX_M}, "
                         f"{k}] and a contiguous weight; larger batches take the unfused path")


def rms_norm_linear(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                    weight: torch.Tensor, bias: torch.Tensor | None = None,
                    prefetch: torch.Tensor | None = None, silu_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual) * norm_weight @ weight^T + bias, x + residual); x, residual [M, K]
    with M <= MAX_M; residual None: the norm of x alone, and the second output is x itself.
    x may be fp32 where the residual is not (an fp32 sum: decode attention's o_proj fold): it is
    rounded to the residual's dtype first, as the matmul that made it would have, and both
    outputs take the residual's dtype; or int64, the same sum in fixed point (kernels/fixed_point.py).
    prefetch: the next matmul's weight, pulled into L2 meanwhile (gemv.launch).
    silu_out (fused_decode's gate_up since session 20): weight is gate_up's [gate | up], and the
    first output is silu(gate) * up [M, N / 2], made in the epilogue -- down_proj then reads half as much."""
    _check(x, weight.shape[1], weight, "rms_norm_linear")
    if x.dtype == torch.int64 and residual is None:   # (the sum's dtype is no stream's: the residual's is)
        raise ValueError("rms_norm_linear: an int64 x (a fixed-point sum, kernels/fixed_point.py) needs the residual")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"rms_norm_linear: residual {tuple(residual.shape)} must have x's shape {tuple(x.shape)}")
    x = x.contiguous()
    residual = residual.contiguous() if residual is not None else None
    y, new_residual = rms_norm_gemv_op(x, residual, norm_weight.contiguous(), float(eps), weight, bias, prefetch,
                                       silu_out)
    # no residual: x starts the stream, as RMSNorm.then's unfused form hands it on (no copy: under
    # residual-epilogue every folded norm is in this case, and a copy would be a store after the wait)
    return y, (new_residual if residual is not None else x)


def silu_mul_linear(gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    prefetch: torch.Tensor | None = None) -> torch.Tensor:
    """(silu(gate) * up) @ weight^T + bias, gate_up = [gate | up] of shape [M, 2K], M <= MAX_M.
    prefetch: as rms_norm_linear's."""
    _check(gate_up, 2 * weight.shape[1], weight, "silu_mul_linear")
    if gate_up.stride(-1) != 1:
        gate_up = gate_up.contiguous()
    return silu_mul_gemv_op(gate_up, weight, bias, prefetch)
