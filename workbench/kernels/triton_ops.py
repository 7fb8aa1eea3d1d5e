"""Hand-written Triton kernels: the lesson is kernel fusion.

In plain PyTorch, `rmsnorm(x + residual)` is several kernels (add, cast, square, mean, rsqrt,
multiply, cast, multiply), and each one reads its input from HBM and writes its output back.
These small element-wise ops are memory-bound: their cost is the bytes moved, not the math.
A fused kernel loads each input once, keeps every intermediate in registers, and writes only
the final results -- same numbers, a fraction of the traffic and one launch instead of many.

Kernels here (each: one short @triton.jit function and a Python wrapper):
  store_kvcache       scatter the step's new K/V rows into the paged KV cache
  fused_add_rms_norm  residual add + RMSNorm (also rms_norm, without the residual)
  silu_and_mul        SwiGLU's silu(gate) * up
  apply_rope          rotary embedding of q and k, into new tensors
  qk_norm_rope        Qwen3's per-head q/k RMSNorm, then the rotary embedding, into new tensors

All math runs in float32; results are stored in the input dtype. The wrappers accept strided
views (e.g. q/k/v sliced out of one fused QKV projection) without copying them.
Each kernel takes USE_PDL (kernels/pdl.py: the pdl switch; off, it compiles away).
Otherwise only long-stable Triton APIs are used, so the same code runs on old and new Triton versions and
under the interpreter (TRITON_INTERPRET=1, CPU tensors) in the CPU test suite.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .pdl import pdl_wait   # by name, not pdl.wait: torch.compile copies a traced kernel's helpers by name


# --- KV-cache store ----------------------------------------------------------------------------
@triton.jit
def _store_kvcache_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                          k_stride, v_stride, ROW: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token)
    if slot < 0:          # padding token (CUDA-graph bucket): it owns no cache slot
        return
    # one row = all KV heads of this token, Hkv * D contiguous values; slot is int64: no overflow
    _copy_row(k_ptr + token * k_stride, k_cache_ptr + slot * ROW, ROW, BLOCK)
    _copy_row(v_ptr + token * v_stride, v_cache_ptr + slot * ROW, ROW, BLOCK)


@triton.jit
def _copy_row(src_ptr, dst_ptr, ROW: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < ROW
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask), mask=mask)


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """[T, H, D] with each token's H*D values contiguous (a token stride of its own is fine)."""
    if t.stride(-1) == 1 and t.stride(-2) == t.shape[-1]:
        return t
    return t.contiguous()


def store_kvcache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slot_mapping: torch.Tensor) -> None:
    """k, v [T, Hkv, D] -> k_cache, v_cache [num_blocks, block_size, Hkv, D] at slot_mapping [T]."""
    k, v = _rows_contiguous(k), _rows_contiguous(v)
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.dtype == k.dtype
    assert slot_mapping.dtype == torch.int64, "slot_mapping must be int64 (slot * row overflows int32)"
    row = k.shape[1] * k.shape[2]
    assert k_cache.shape[2] * k_cache.shape[3] == row, "cache heads/head_dim differ from k"
    T = k.shape[0]
    if T == 0:
        return
    _store_kvcache_kernel[(T,)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), v.stride(0),
                                ROW=row, BLOCK=triton.next_power_of_2(row), **pdl.launch_options())


# --- residual add + RMSNorm --------------------------------------------------------------------
@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
                         heads, x_s0, x_s1, r_s0, r_s1, eps,
                         N: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    # One program normalizes one row. Inputs are [tokens, heads, N] views (heads = 1 for a
    # plain [tokens, N] matrix); outputs are contiguous, row-major.
    row = tl.program_id(0)
    tok, head = row // heads, row % heads
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + tok * x_s0 + head * x_s1 + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + tok * r_s0 + head * r_s1 + offs, mask=mask, other=0.0)
        # Round the sum to the input dtype, exactly as torch's `x + residual` does.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * N + offs, x, mask=mask)
    s = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=0) / N + eps)
    # Same two roundings as the unfused form: (normalized -> input dtype) * weight.
    normed = (s * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + offs, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def _as_3d(t: torch.Tensor) -> torch.Tensor:
    """View [tokens, N] or [tokens, heads, N] as [tokens, heads, N] (no copy when possible)."""
    t = t.unsqueeze(1) if t.dim() == 2 else t
    return t if t.stride(-1) == 1 else t.contiguous()


def _rms_norm(x, residual, weight, eps):
    assert x.dim() in (2, 3) and weight.shape == (x.shape[-1],)
    x3 = _as_3d(x)
    r3 = _as_3d(residual) if residual is not None else x3
    assert r3.shape == x3.shape, "residual must have the shape of x"
    tokens, heads, n = x3.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    new_res = torch.empty_like(out) if residual is not None else x
    if out.numel():
        _add_rms_norm_kernel[(tokens * heads,)](
            x3, r3, weight, out, new_res, heads, x3.stride(0), x3.stride(1),
            r3.stride(0), r3.stride(1), eps, N=n, HAS_RESIDUAL=residual is not None,
            BLOCK=triton.next_power_of_2(n), **pdl.launch_options())
    return out, new_res


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rmsnorm(x + residual) * weight, x + residual); with residual=None, (rmsnorm(x), x)."""
    return _rms_norm(x, residual, weight, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim of [N, H] or [N, heads, D] (per-head q/k norm)."""
    return _rms_norm(x, None, weight, eps)[0]


# --- SwiGLU activation -------------------------------------------------------------------------
@triton.jit
def _silu_and_mul_kernel(gu_ptr, out_ptr, gu_stride, inter, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    token = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    gate = tl.load(gu_ptr + token * gu_stride + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + token * gu_stride + inter + offs, mask=mask, other=0.0).to(tl.float32)
    silu = gate / (1.0 + tl.exp(-gate))
    tl.store(out_ptr + token * inter + offs, (silu * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] = concat(gate, up) -> silu(gate) * up, [T, I]."""
    if gate_up.stride(-1) != 1:
        gate_up = gate_up.contiguous()
    lead, inter = gate_up.shape[:-1], gate_up.shape[-1] // 2
    gu = gate_up.reshape(-1, 2 * inter)
    out = torch.empty(gu.shape[0], inter, dtype=gate_up.dtype, device=gate_up.device)
    if out.numel():
        block = min(1024, triton.next_power_of_2(inter))
        _silu_and_mul_kernel[(gu.shape[0], triton.cdiv(inter, block))](
            gu, out, gu.stride(0), inter, BLOCK=block, **pdl.launch_options())
    return out.view(*lead, inter)


# --- rotary embedding (optionally after Qwen3's q/k norm) ------------------------------------
@triton.jit
def _rotate_heads(ptr, out_row_ptr, tok_stride, head_stride, token, n_heads, cos, sin, w_ptr, eps,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                  NORM: tl.constexpr):
    # All heads of one token as a [BLOCK_H, BLOCK_D] tile; x1 = first half, x2 = second half.
    # Reads a strided view (q or k inside the QKV output), writes the token's heads contiguously
    # at out_row_ptr (its row of a contiguous [T, H, 2*HALF], or its slot of the KV cache).
    # In three steps, so a kernel may order the loads itself (qk_norm_rope_store's inputs_early).
    x1, x2 = _load_heads(ptr, tok_stride, head_stride, token, n_heads, HALF, BLOCK_H, BLOCK_D)
    if NORM:
        w1, w2 = _load_halves(w_ptr, HALF, BLOCK_D)
    else:
        w1, w2 = cos, sin   # unused without the norm
    _norm_rotate_store(x1, x2, w1, w2, eps, cos, sin, out_row_ptr, n_heads, HALF, BLOCK_H, BLOCK_D, NORM)


@triton.jit
def _load_heads(ptr, tok_stride, head_stride, token, n_heads, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """(x1, x2): the first and second halves of the token's heads, as float32 [BLOCK_H, BLOCK_D]."""
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < n_heads) & (d < HALF)
    p1 = ptr + token * tok_stride + h * head_stride + d
    return (tl.load(p1, mask=mask, other=0.0).to(tl.float32),
            tl.load(p1 + HALF, mask=mask, other=0.0).to(tl.float32))


@triton.jit
def _load_halves(w_ptr, HALF: tl.constexpr, BLOCK_D: tl.constexpr):
    """A norm's weight (one head's 2*HALF values) as two float32 [1, BLOCK_D] halves."""
    d = tl.arange(0, BLOCK_D)[None, :]
    return (tl.load(w_ptr + d, mask=d < HALF, other=0.0).to(tl.float32),
            tl.load(w_ptr + HALF + d, mask=d < HALF, other=0.0).to(tl.float32))


@triton.jit
def _norm_rotate_store(x1, x2, w1, w2, eps, cos, sin, out_row_ptr, n_heads, HALF: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, NORM: tl.constexpr):
    """RMSNorm each head (NORM), rotate it, store it at out_row_ptr in out_row_ptr's dtype."""
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < n_heads) & (d < HALF)
    o1 = out_row_ptr + h * (2 * HALF) + d
    dt = out_row_ptr.dtype.element_ty   # the input's dtype: every caller writes what it read
    if NORM:   # RMSNorm of each head (a row of the tile: both halves) before rotating it
        ms = (tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF)
        rstd = (1.0 / tl.sqrt(ms + eps))[:, None]
        # Round where the unfused torch ops do: normalized -> input dtype, * weight -> input dtype.
        x1 = ((x1 * rstd).to(dt).to(tl.float32) * w1).to(dt).to(tl.float32)
        x2 = ((x2 * rstd).to(dt).to(tl.float32) * w2).to(dt).to(tl.float32)
    # rotate_half: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]
    tl.store(o1, (x1 * cos - x2 * sin).to(dt), mask=mask)
    tl.store(o1 + HALF, (x2 * cos + x1 * sin).to(dt), mask=mask)


@triton.jit
def _load_cos_sin(pos_ptr, cos_sin_ptr, token, HALF: tl.constexpr, BLOCK_D: tl.constexpr):
    # Row `pos` of the table: [cos(pos * f_0..), sin(pos * f_0..)], loaded once for all heads.
    pos = tl.load(pos_ptr + token)
    d = tl.arange(0, BLOCK_D)[None, :]
    cos = tl.load(cos_sin_ptr + pos * (2 * HALF) + d, mask=d < HALF, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * (2 * HALF) + HALF + d, mask=d < HALF, other=0.0)
    return cos, sin


@triton.jit
def _rope_kernel(q_ptr, k_ptr, q_out_ptr, k_out_ptr, pos_ptr, cos_sin_ptr, q_s0, q_s1, k_s0, k_s1,
                 n_q, n_k, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                 BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    token = tl.program_id(0)
    cos, sin = _load_cos_sin(pos_ptr, cos_sin_ptr, token, HALF, BLOCK_D)
    # no norm: the weight pointer and eps are unused
    _rotate_heads(q_ptr, q_out_ptr + token * n_q * (2 * HALF), q_s0, q_s1, token, n_q, cos, sin, q_ptr, 0.0,
                  HALF, BLOCK_HQ, BLOCK_D, NORM=False)
    _rotate_heads(k_ptr, k_out_ptr + token * n_k * (2 * HALF), k_s0, k_s1, token, n_k, cos, sin, k_ptr, 0.0,
                  HALF, BLOCK_HK, BLOCK_D, NORM=False)


@triton.jit
def _qk_norm_rope_kernel(q_ptr, k_ptr, q_out_ptr, k_out_ptr, pos_ptr, cos_sin_ptr, q_s0, q_s1, k_s0,
                         k_s1, n_q, n_k, q_w_ptr, k_w_ptr, q_eps, k_eps, HALF: tl.constexpr,
                         BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr,
                         USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    # One program per token: its q and k heads are read once, normalized and rotated in
    # registers and written once -- one launch instead of q_norm + k_norm + rope.
    token = tl.program_id(0)
    cos, sin = _load_cos_sin(pos_ptr, cos_sin_ptr, token, HALF, BLOCK_D)
    _rotate_heads(q_ptr, q_out_ptr + token * n_q * (2 * HALF), q_s0, q_s1, token, n_q, cos, sin, q_w_ptr, q_eps,
                  HALF, BLOCK_HQ, BLOCK_D, NORM=True)
    _rotate_heads(k_ptr, k_out_ptr + token * n_k * (2 * HALF), k_s0, k_s1, token, n_k, cos, sin, k_w_ptr, k_eps,
                  HALF, BLOCK_HK, BLOCK_D, NORM=True)


def _launch_rope(kernel, q, k, positions, cos_sin_cache, *norm_args):
    """One program per token over q [T, Hq, D] and k [T, Hkv, D] (views into the QKV output);
    returns rotated copies. Out of place on purpose: under torch.compile, a kernel that writes
    into views makes the compiler copy them out and back (two extra kernels per layer), and with
    inductor's own batch-1 matmuls that copy-back went wrong on an H100 (docs/perf-notes.md)."""
    assert q.stride(-1) == 1 and k.stride(-1) == 1, "head_dim must be contiguous"
    assert cos_sin_cache.dtype == torch.float32 and cos_sin_cache.is_contiguous()
    T, n_q, dim = q.shape
    assert dim % 2 == 0 and cos_sin_cache.shape[1] == dim
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)   # contiguous, as the kernel writes
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if T:
        kernel[(T,)](q, k, q_out, k_out, positions, cos_sin_cache, q.stride(0), q.stride(1), k.stride(0),
                     k.stride(1), n_q, k.shape[1], *norm_args, HALF=dim // 2,
                     BLOCK_HQ=triton.next_power_of_2(n_q), BLOCK_HK=triton.next_power_of_2(k.shape[1]),
                     BLOCK_D=triton.next_power_of_2(dim // 2), **pdl.launch_options())
    return q_out, k_out


def apply_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
               cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D] and k [T, Hkv, D] rotated by their tokens' positions [T] (new tensors)."""
    return _launch_rope(_rope_kernel, q, k, positions, cos_sin_cache)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                 cos_sin_cache: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 q_eps: float, k_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm each head of q [T, Hq, D] (weight q_weight [D]) and of k [T, Hkv, D] (k_weight),
    then rotate both by their tokens' positions [T]; new tensors. = rms_norm + apply_rope."""
    assert q_weight.shape == k_weight.shape == (q.shape[-1],)
    assert q_weight.is_contiguous() and k_weight.is_contiguous()
    return _launch_rope(_qk_norm_rope_kernel, q, k, positions, cos_sin_cache,
                        q_weight, k_weight, q_eps, k_eps)
