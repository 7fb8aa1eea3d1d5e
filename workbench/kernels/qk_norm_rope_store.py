"""q/k norm + RoPE + the KV-cache write as one kernel (the fused_decode switch, at decode).

Unfused, a decode step does per layer: `_qk_norm_rope_kernel` (q and k normed and rotated into
new tensors), then `_store_kvcache_kernel` (k and v copied into their cache slots) -- two launches,
each ~2-3 us on an H200 however little it moves, and rotated k makes a round trip through HBM.
Here one program per token reads its q, k and v heads from the QKV output once, writes rotated q
(the attention backend's query) and writes rotated k and v straight into the token's cache slot.

The pieces are triton_ops.py's (_load_cos_sin, _rotate_heads, _copy_row): only where k lands
differs. NORM=False is plain RoPE (Llama, Qwen2: no q/k norm). A token whose slot is < 0 (a
padding row of a CUDA-graph bucket) still gets its q, as unfused, but writes nothing to the cache.

Inputs early (`inputs_early`, on by default since an H200 A/B inside the engine, session 10: all
on, 672.0 -> 652.9 us of GPU time a decode step, 2 rounds each, docs/results/
decode-ab-rope-early-h200.json; under PDL only; False keeps the plain order as a lesson): the token's
position, its cos/sin row, its cache slot and the norms' weights read *before* the PDL wait, and
q, k and v loaded together right after it. Without it, the code after the wait is a chain: q,
its norm, the position and cos/sin, q's store, then k, then v -- several dependent round trips on
the critical path (the compiled code keeps that order: it cannot prove the stores do not alias
the later loads). None of the early reads is written by the kernel before (the QKV GEMV):
positions and slots are the step's inputs, written before the step's first kernel (by the host's
copy, or by the round graph's `advance` at the end of the step before); the table and the weights
are constants. Why that is safe under PDL: each of our kernels lets its dependent be scheduled
only after its own wait (kernels/pdl.py; tests/test_pdl.py checks it in the source), so when this
kernel starts, every kernel two or more before it has finished and its writes are visible. The
same argument lets decode attention read its lengths and block table early
(kernels/decode_attention.py, Choice 5).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .pdl import pdl_wait   # by name, not pdl.wait: torch.compile copies a traced kernel's helpers by name
from .triton_ops import _copy_row, _load_cos_sin, _load_halves, _load_heads, _norm_rotate_store, _rotate_heads


@triton.jit
def _qk_norm_rope_store_kernel(q_ptr, k_ptr, v_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, pos_ptr,
                               cos_sin_ptr, q_s0, q_s1, k_s0, k_s1, v_s0, n_q, q_w_ptr, k_w_ptr, q_eps, k_eps,
                               N_K: tl.constexpr, HALF: tl.constexpr, BLOCK_HQ: tl.constexpr,
                               BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_ROW: tl.constexpr,
                               NORM: tl.constexpr, USE_PDL: tl.constexpr, INPUTS_EARLY: tl.constexpr):
    token = tl.program_id(0)
    row = N_K * (2 * HALF)   # a cache slot: all KV heads of one token; slot is int64: no overflow
    if INPUTS_EARLY:   # (with USE_PDL only) before the wait, all that the QKV GEMV does not write
        cos, sin = _load_cos_sin(pos_ptr, cos_sin_ptr, token, HALF, BLOCK_D)
        slot = tl.load(slot_ptr + token)
        if NORM:
            qw1, qw2 = _load_halves(q_w_ptr, HALF, BLOCK_D)
            kw1, kw2 = _load_halves(k_w_ptr, HALF, BLOCK_D)
        else:
            qw1, qw2, kw1, kw2 = cos, sin, cos, sin   # unused without the norm
        pdl_wait(USE_PDL)
        # after it, q, k and v at once: one round trip, then the math and the stores
        q1, q2 = _load_heads(q_ptr, q_s0, q_s1, token, n_q, HALF, BLOCK_HQ, BLOCK_D)
        k1, k2 = _load_heads(k_ptr, k_s0, k_s1, token, N_K, HALF, BLOCK_HK, BLOCK_D)
        cols = tl.arange(0, BLOCK_ROW)
        v = tl.load(v_ptr + token * v_s0 + cols, mask=cols < row)
        _norm_rotate_store(q1, q2, qw1, qw2, q_eps, cos, sin, q_out_ptr + token * n_q * (2 * HALF), n_q,
                           HALF, BLOCK_HQ, BLOCK_D, NORM)
        if slot >= 0:   # < 0: a padding token, it owns no cache slot
            _norm_rotate_store(k1, k2, kw1, kw2, k_eps, cos, sin, k_cache_ptr + slot * row, N_K,
                               HALF, BLOCK_HK, BLOCK_D, NORM)
            tl.store(v_cache_ptr + slot * row + cols, v, mask=cols < row)
    else:
        pdl_wait(USE_PDL)   # everything here (q/k/v, positions, slots, the cache) after the wait
        cos, sin = _load_cos_sin(pos_ptr, cos_sin_ptr, token, HALF, BLOCK_D)
        _rotate_heads(q_ptr, q_out_ptr + token * n_q * (2 * HALF), q_s0, q_s1, token, n_q, cos, sin, q_w_ptr,
                      q_eps, HALF, BLOCK_HQ, BLOCK_D, NORM)
        slot = tl.load(slot_ptr + token)
        if slot >= 0:   # < 0: a padding token, it owns no cache slot
            _rotate_heads(k_ptr, k_cache_ptr + slot * row, k_s0, k_s1, token, N_K, cos, sin, k_w_ptr, k_eps,
                          HALF, BLOCK_HK, BLOCK_D, NORM)
            _copy_row(v_ptr + token * v_s0, v_cache_ptr + slot * row, row, BLOCK_ROW)


def qk_norm_rope_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                       cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor, q_norm=None, k_norm=None, *,
                       inputs_early: bool = True) -> torch.Tensor:
    """q [T, Hq, D], k and v [T, Hkv, D] (views into the QKV output): returns q normed (q_norm, an
    RMSNorm; None: no norm) and rotated, new and contiguous; writes k normed (k_norm) and rotated,
    and v, into k_cache/v_cache [num_blocks, block_size, Hkv, D] at slot_mapping [T] (< 0: skipped).
    = rotary.norm_and_rotate (or rotary) then store_kv. inputs_early: under PDL, the position,
    cos/sin, slot and norm weights before the wait, q/k/v together after it (the module
    docstring)."""
    T, n_q, dim = q.shape
    n_k = k.shape[1]
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1 and v.stride(-2) == dim, "heads must be contiguous"
    assert cos_sin_cache.dtype == torch.float32 and cos_sin_cache.is_contiguous() and cos_sin_cache.shape[1] == dim
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.dtype == k.dtype == v_cache.dtype
    assert k_cache.shape[2:] == (n_k, dim), "cache heads/head_dim differ from k"
    assert slot_mapping.dtype == torch.int64, "slot_mapping must be int64 (slot * row overflows int32)"
    assert (q_norm is None) == (k_norm is None), "q and k are normed together or not at all"
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    norm = q_norm is not None
    launch = pdl.launch_options()
    if T:
        _qk_norm_rope_store_kernel[(T,)](
            q, k, v, q_out, k_cache, v_cache, slot_mapping, positions, cos_sin_cache,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), n_q,
            q_norm.weight if norm else q, k_norm.weight if norm else k,   # no norm: weights unused
            q_norm.eps if norm else 0.0, k_norm.eps if norm else 0.0,
            N_K=n_k, HALF=dim // 2, BLOCK_HQ=triton.next_power_of_2(n_q), BLOCK_HK=triton.next_power_of_2(n_k),
            BLOCK_D=triton.next_power_of_2(dim // 2), BLOCK_ROW=triton.next_power_of_2(n_k * dim), NORM=norm,
            **launch, INPUTS_EARLY=inputs_early and launch["USE_PDL"])
    return q_out
