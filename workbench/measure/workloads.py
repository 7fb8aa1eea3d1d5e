"""Small GPU workloads to run under ncu (via hbm_worker) or to time directly.

`attention_workload` is the FlashAttention lesson's experiment: one causal prefill attention of
N tokens, done three ways --
    naive  materializes the N x N scores: q @ k^T, mask, softmax, @ v (each a trip through HBM)
    flash  flash-attn-4 (`flash_attn.cute`): scores stay on-chip, tiles of K/V stream past Q
    sdpa   torch.nn.functional.scaled_dot_product_attention (torch picks a fused kernel)
Inputs are made and each implementation is warmed up (JIT, cuBLAS heuristics) *outside* the NVTX
range "attention"; only the call inside it is what `ncu --nvtx-include attention/` measures.
"""
from __future__ import annotations

import contextlib
import statistics

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def nvtx_range(name: str):
    """An NVTX push/pop range (a no-op without CUDA): what ncu's --nvtx-include filters on."""
    on = torch.cuda.is_available()
    if on:
        torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        if on:
            torch.cuda.nvtx.range_pop()


def naive_attention(q, k, v, mask):
    """q [N, H, D], k/v [N, Hkv, D], mask [N, N] bool (True = hidden) -> [N, H, D]."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)            # GQA: every query head gets its KV head
    v = v.repeat_interleave(group, dim=1)
    q = q * q.shape[-1] ** -0.5                      # scale q (N x D) rather than scores (N x N)
    q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # [H, N, D]
    scores = q @ k.transpose(1, 2)                   # [H, N, N]: written to HBM
    scores.masked_fill_(mask, float("-inf"))         # read + written again
    probs = scores.softmax(dim=-1)                   # read, probs written
    return (probs @ v).transpose(0, 1)               # probs read once more


def sdpa_attention(q, k, v):
    # SDPA's fused backends want [batch, heads, N, D]; with 3-D inputs torch falls back to the
    # math path (which materializes the scores, in fp32).
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return out[0].transpose(0, 1)


def flash_attention(q, k, v, cu_seqlens, n):
    from flash_attn.cute import flash_attn_varlen_func   # flash-attn-4; Hopper/Blackwell only
    out = flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
                                 max_seqlen_q=n, max_seqlen_k=n, causal=True)
    return out[0] if isinstance(out, tuple) else out


def make_attention(impl: str, n: int, device):
    """The chosen implementation as a function of (q, k, v), with its fixed inputs prepared."""
    if impl == "naive":
        mask = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)   # like a model's buffer
        return lambda q, k, v: naive_attention(q, k, v, mask)
    if impl == "sdpa":
        return sdpa_attention
    if impl == "flash":
        cu = torch.tensor([0, n], dtype=torch.int32, device=device)
        return lambda q, k, v: flash_attention(q, k, v, cu, n)
    raise ValueError(f"impl={impl!r}: choose 'naive', 'flash' or 'sdpa'")


def attention_workload(impl: str = "flash", n: int = 4096, heads: int = 16, kv_heads: int = 8,
                       head_dim: int = 128, *, dtype: str = "bfloat16", device: str = "cuda",
                       repeats: int = 0, seed: int = 0) -> dict:
    """One causal prefill attention of one N-token sequence inside NVTX range "attention".

    repeats > 0 also times that many further calls with CUDA events (outside the range) and
    returns their median as time_s -- meaningful when run directly, not under ncu (which
    serializes kernels)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("attention_workload needs a CUDA GPU (or device='cpu' for naive/sdpa)")
    torch.manual_seed(seed)
    dt = getattr(torch, dtype)
    q = torch.randn(n, heads, head_dim, dtype=dt, device=device)
    k = torch.randn(n, kv_heads, head_dim, dtype=dt, device=device)
    v = torch.randn(n, kv_heads, head_dim, dtype=dt, device=device)
    attend = make_attention(impl, n, device)
    attend(q, k, v)                                  # warm-up: JIT compile, library heuristics
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    with nvtx_range("attention"):
        out = attend(q, k, v)
    result = {"impl": impl, "n": n, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
              "dtype": dtype, "out_shape": list(out.shape)}
    if repeats > 0 and device.startswith("cuda"):
        from .roofline import cuda_event_times
        result.update(time_s=statistics.median(cuda_event_times(lambda: attend(q, k, v), repeats)), repeats=repeats)
    return result


def decode_step_workload(model_dir: str, attention: str = "flash", fused_kernels: bool = True,
                         cuda_graphs: bool = True, compile: bool = False, batch: int = 1,
                         context: int = 1024, decode_gemv: bool = False) -> dict:
    """One decode step of the whole engine inside NVTX range "decode": `batch` sequences, each
    with `context` cached tokens. Engine build, prefill and one warm-up decode run first."""
    import random

    from workbench import Optimizations
    from workbench.engine import LLM, SamplingParams
    opts = Optimizations(attention=attention, fused_kernels=fused_kernels, cuda_graphs=cuda_graphs,
                         compile=compile, decode_gemv=decode_gemv)
    with LLM(model_dir, opts=opts, max_num_seqs=batch, enable_prefix_caching=False,
             max_model_len=context + 64) as llm:
        rng = random.Random(0)
        vocab = llm.model_config.vocab_size
        params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
        for _ in range(batch):
            llm.add_request([rng.randrange(vocab) for _ in range(context)], params)
        llm.prefill_all()
        llm.step()   # one warm-up decode
        torch.cuda.synchronize()
        with nvtx_range("decode"):
            llm.step()
        torch.cuda.synchronize()
        return {"setting": opts.label(), "batch": batch, "context": context}
