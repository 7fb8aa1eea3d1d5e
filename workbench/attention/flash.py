"""FlashAttention over the paged KV cache: flash-attn-4 (Hopper/Blackwell) or flash-attn 2.

Flash attention never writes the Lq x Lk score matrix to HBM: it streams K/V tiles through
on-chip memory with an online softmax. Here it also reads K/V straight out of the paged cache
through the block table, so cached prefixes and earlier prefill chunks are just more keys.
Writing the step's new K/V into the cache is our own kernel (store_kvcache); it runs first.

Backend, picked at run time (the import takes ~6-9 s, so it happens on first use, not on
`import workbench`):
  flash-attn-4  `flash_attn.cute.flash_attn_varlen_func` (pip install flash-attn-4), one call for
                prefill and decode. Measured on an H100: page sizes 1, 16, 32, 64, 128 and 256
                all give correct results; 128 equals the SM90 kernel's key tile for head_dim
                128, so those pages load by TMA -- why EngineConfig.block_size defaults to 128.
                JIT-compiles per shape key on first call (~4-6 s): warm up before timing or
                graph capture. With TMA pages, cache rows past a sequence's length in its last
                page are read (then masked): they must be finite -- allocate the cache zeroed.
  flash-attn 2  `flash_attn.flash_attn_varlen_func(block_table=...)` for prefill and
                `flash_attn_with_kvcache` for decode; its paged KV needs a block size that is a
                multiple of 256.
Causal masking in both is aligned bottom-right (query i of Lq sees keys 0 .. Lk - Lq + i), which
is what a query chunk at the end of a longer cached sequence needs.

flash-attn-4 is plain Python calling JIT kernels, not a torch op, so torch.compile cannot
trace it: the decoder keeps attention outside the compiled region (Attention.attend).
"""
from __future__ import annotations

import functools
import importlib.metadata
import warnings

import torch

from .metadata import AttentionMetadata

_FA4_HINT = "install with `pip install flash-attn-4` (Hopper/Blackwell GPUs)"


@functools.cache
def _backend() -> tuple[str | None, str, str | None]:
    """(name, reason, kind) with kind 'fa4', 'fa2' or None. Imports flash-attn: slow, cached."""
    if not torch.cuda.is_available():
        return None, "needs CUDA (no GPU visible)", None
    reasons = []
    major, minor = torch.cuda.get_device_capability()
    if major >= 9:
        try:
            from flash_attn.cute import flash_attn_varlen_func  # noqa: F401
            version = importlib.metadata.version("flash-attn-4")
            # flash-attn-4's JIT notes, on every new shape, that one argument is not a JIT
            # argument (it is passed another way and the kernel is right): noise in every cell.
            warnings.filterwarnings("ignore", message=r"Argument aux_data .* cannot be converted to a JitArgument")
            return f"flash-attn-4 {version}", f"flash_attn.cute on sm_{major}{minor}", "fa4"
        except Exception as err:   # ImportError, or a broken install (missing CUDA libs)
            reasons.append(f"flash_attn.cute not importable: {err}; {_FA4_HINT}")
    else:
        reasons.append(f"flash-attn-4 needs Hopper/Blackwell (sm_90+), this GPU is sm_{major}{minor}")
    try:
        import flash_attn
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache  # noqa: F401
        return f"flash-attn {flash_attn.__version__}", "flash_attn (2.x) importable", "fa2"
    except Exception as err:
        reasons.append(f"flash_attn 2.x not importable: {err}")
    return None, "; ".join(reasons), None


def flash_status() -> tuple[str | None, str]:
    """(backend name such as 'flash-attn-4 4.0.0b36', or None; a human-readable reason)."""
    name, reason, _ = _backend()
    return name, reason


# --- the calls -------------------------------------------------------------------------------
def _fa4(q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, max_seqlen_q, max_seqlen_k,
         scale, is_decode):
    from flash_attn.cute import flash_attn_varlen_func
    if is_decode:
        # No cu_seqlens_q: q is read as [batch, seqlen_q=1, H, D]. max_seqlen_k is left out on
        # purpose: FA4 then bounds it by the page table's width, which stays valid for every
        # replay of a captured CUDA graph (a host int from capture time would not).
        out, _ = flash_attn_varlen_func(
            q.unsqueeze(1), k_cache, v_cache, seqused_k=seq_lens, page_table=block_tables,
            softmax_scale=scale, causal=True)
        return out.squeeze(1)
    out, _ = flash_attn_varlen_func(
        q, k_cache, v_cache, cu_seqlens_q=cu_seqlens_q, max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k, seqused_k=seq_lens, page_table=block_tables,
        softmax_scale=scale, causal=True)
    return out


def _fa2(q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, max_seqlen_q, max_seqlen_k,
         scale, is_decode):
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
    if is_decode:
        out = flash_attn_with_kvcache(q.unsqueeze(1), k_cache, v_cache, cache_seqlens=seq_lens,
                                      block_table=block_tables, softmax_scale=scale, causal=True)
        return out.squeeze(1)
    # FA2 wants key lengths as prefix sums, even with a block table.
    cu_seqlens_k = torch.nn.functional.pad(seq_lens.cumsum(0, dtype=torch.int32), (1, 0))
    return flash_attn_varlen_func(q, k_cache, v_cache, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k, softmax_scale=scale, causal=True,
                                  block_table=block_tables)


_IMPLS = {"fa4": _fa4, "fa2": _fa2}


class FlashAttention:
    """Backend callable: (q [T, Hq, D], k_cache, v_cache, meta, scale) -> out [T, Hq, D]."""

    def __init__(self):
        name, reason, kind = _backend()
        if kind is None:
            raise RuntimeError(f"attention='flash' is unavailable: {reason}")
        self.name, self.kind = name, kind

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: AttentionMetadata, scale: float) -> torch.Tensor:
        block_size = k_cache.shape[1]
        if self.kind == "fa2" and block_size % 256 != 0:
            raise ValueError(
                f"flash-attn 2's paged KV cache needs block_size to be a multiple of 256, got "
                f"{block_size}: set EngineConfig(block_size=256), or {_FA4_HINT}")
        # Decode reads neither bound (a graph replay must not depend on a host int of capture time).
        max_q, max_k = (1, 0) if meta.is_decode else (meta.max_seqlen_q, meta.max_seqlen_k)
        return _IMPLS[self.kind](q, k_cache, v_cache, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables,
                                 max_q, max_k, float(scale), meta.is_decode)
