"""Small GPU workloads to run under ncu (via hbm_worker) or to time directly.

`attention_workload` is the FlashAttention lesson's experiment: one causal prefill attention of
N tokens through the engine's own backends (workbench/attention/, what the `attention` switch
installs), on unpaged tensors laid out as a paged cache whose blocks are in order --
    naive  materializes the N x N scores: q @ k^T, mask, softmax, @ v (each a trip through HBM)
    flash  flash-attn-4 (`flash_attn.cute`): scores stay on-chip, tiles of K/V stream past Q
    sdpa   torch.nn.functional.scaled_dot_product_attention (torch picks a kernel)
Inputs are made and each implementation is warmed up (JIT, cuBLAS heuristics) *outside* the NVTX
range "attention"; only the call inside it is what `ncu --nvtx-include attention/` measures.
"""
from __future__ import annotations

import contextlib
import statistics

import torch


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


def as_paged_cache(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """[N, Hkv, D] keys (or values) of one sequence -> the paged cache layout the engine's backends
    read, [blocks, block_size, Hkv, D], the blocks in order: a view when N is a multiple of
    block_size, else a copy padded with zeros (flash reads padded rows before masking them)."""
    n, rest = x.shape[0], x.shape[1:]
    blocks = -(-n // block_size)
    if n == blocks * block_size:
        return x.reshape(blocks, block_size, *rest)
    padded = x.new_zeros(blocks * block_size, *rest)
    padded[:n] = x
    return padded.view(blocks, block_size, *rest)


def prefill_metadata(n: int, block_size: int, device):
    """The AttentionMetadata of one N-token prefill whose cache is blocks 0, 1, 2, ..., built by
    the engine's own step packing (engine/step_inputs.pack_step)."""
    import numpy as np

    from workbench.engine.step_inputs import pack_step
    blocks = -(-n // block_size)
    step = pack_step([(np.zeros(n, dtype=np.int64), list(range(blocks)), 0, n)], block_size)
    return step.to_device(torch.device(device))[2]


def make_attention(impl: str, n: int, device, block_size: int | None = None):
    """The engine's attention backend `impl` (workbench.attention.make_backend, what the
    `attention` switch installs) as a function of unpaged (q [N, H, D], k, v [N, Hkv, D]) for one
    causal N-token prefill. block_size: the engine's default 128 (256 for flash-attn 2)."""
    from workbench.attention import make_backend
    backend = make_backend(impl)   # raises with the reason when flash cannot run here
    block_size = block_size or (256 if getattr(backend, "kind", "") == "fa2" else 128)
    meta = prefill_metadata(n, block_size, device)

    def attend(q, k, v):
        return backend(q, as_paged_cache(k, block_size), as_paged_cache(v, block_size), meta,
                       q.shape[-1] ** -0.5)
    return attend


def attention_workload(impl: str = "flash", n: int = 4096, heads: int = 16, kv_heads: int = 8,
                       head_dim: int = 128, *, dtype: str = "bfloat16", device: str = "cuda",
                       repeats: int = 0, seed: int = 0) -> dict:
    """One causal prefill attention of one N-token sequence inside NVTX range "attention". With N
    a multiple of the block size (128; the experiment's Ns are) the cache layout is a view, so
    nothing but the backend's attention runs inside the range.

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
        from .timing import cuda_event_times
        result.update(time_s=statistics.median(cuda_event_times(lambda: attend(q, k, v), repeats)), repeats=repeats)
    return result


def decode_step_workload(model_dir: str, attention: str = "flash", fused_kernels: bool = True,
                         cuda_graphs: bool = True, compile: bool = False, batch: int = 1,
                         context: int = 1024, decode_gemv: bool = False,
                         fused_decode: bool = False, decode_attention: bool = False, pdl: bool = False,
                         engine: dict | None = None) -> dict:
    """One decode step of the whole engine inside NVTX range "decode": `batch` sequences, each
    with `context` cached tokens. Engine build, prefill and one warm-up decode run first.
    engine: more EngineConfig fields (e.g. {"l2_prefetch": True})."""
    import random

    from workbench import Optimizations
    from workbench.engine import LLM, SamplingParams
    opts = Optimizations(attention=attention, fused_kernels=fused_kernels, cuda_graphs=cuda_graphs,
                         compile=compile, decode_gemv=decode_gemv, fused_decode=fused_decode,
                         decode_attention=decode_attention, pdl=pdl)
    with LLM(model_dir, opts=opts, max_num_seqs=batch, enable_prefix_caching=False,
             max_model_len=context + 64, **(engine or {})) as llm:
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
        return {"setting": opts.label(), "batch": batch, "context": context, "engine": engine or {}}
