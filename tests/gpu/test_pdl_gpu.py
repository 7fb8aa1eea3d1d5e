"""The pdl switch (programmatic dependent launch) on the GPU: every decode kernel computes bit for bit
what it computes without PDL -- alone, and chained as a decode step chains them (each kernel
reading the one before's output: a missing gdc_wait would race there), eagerly, captured in a CUDA
graph and under torch.compile -- and the engine's greedy parity with all_on+pdl against all-off.
Run: pytest -m gpu tests/gpu/test_pdl_gpu.py   (needs sm_90+: an H100/H200)
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 9,
                                 reason="PDL needs compute capability 9.0+ (Hopper)")]

HIDDEN, QKV, GATE_UP, INTER, VOCAB = 1024, 4096, 6144, 3072, 151936   # Qwen3-0.6B
HEADS, KV_HEADS, HEAD_DIM, BLOCK, CONTEXT = 16, 8, 128, 128, 300


def _both(fn, inputs):
    """(fn() with PDL off, fn() with PDL on): each a list of tensors, cloned. Between the two, fn
    runs once more (PDL off) on the `inputs` negated, so every buffer the caching allocator hands
    the PDL-on run, and the cache's newest slot, holds other values than the ones that run must
    produce: a kernel that read what the kernel before it writes before its wait would read those
    and differ (without it the off run leaves the very same values there: the race could not show)."""
    from workbench.kernels import pdl
    outs = []
    for on in (False, True):
        if on:
            for t in inputs:
                t.neg_()
            fn()
            for t in inputs:
                t.neg_()
        pdl.set_enabled(on)
        try:
            outs.append([t.clone() for t in fn()])
            torch.cuda.synchronize()
        finally:
            pdl.set_enabled(False)
    return outs


def _decode_layers(layers: int = 4):
    """(state, step): step() runs `layers` decode layers of the Qwen3-0.6B shape at batch 1 with
    all_on's kernels, each kernel reading the one before's output, then the final norm and the LM
    head; returns every intermediate. state["h"] is the step's input (copy_ into it)."""
    from workbench.kernels.decode_attention import paged_decode_attention
    from workbench.kernels.fused_gemv import rms_norm_linear
    from workbench.kernels.gemv import GemvConfig, gemv
    from workbench.kernels.qk_norm_rope_store import qk_norm_rope_store
    from workbench.kernels.triton_ops import fused_add_rms_norm
    from workbench.model.layers import RMSNorm, RotaryEmbedding
    dev, dt = "cuda", torch.bfloat16
    rnd = lambda *shape, s=1.0: (s * torch.randn(*shape, device=dev)).to(dt)  # noqa: E731
    ones = lambda n: (1 + 0.1 * torch.randn(n, device=dev)).to(dt)  # noqa: E731
    rotary = RotaryEmbedding(HEAD_DIM, 40960, 1e6).to(dev)
    q_norm, k_norm = (RMSNorm(HEAD_DIM, 1e-6).to(dev, dt) for _ in range(2))
    blocks = 8
    table = torch.randperm(blocks, device=dev, dtype=torch.int32)[None, :]   # 1 x 8 blocks, shuffled
    pos = torch.tensor([CONTEXT - 1], device=dev)
    slot = (table[0, (CONTEXT - 1) // BLOCK].long() * BLOCK + (CONTEXT - 1) % BLOCK).view(1)
    lens = torch.tensor([CONTEXT], device=dev, dtype=torch.int32)
    w = [dict(n1=ones(HIDDEN), qkv=rnd(QKV, HIDDEN, s=HIDDEN ** -0.5), o=rnd(HIDDEN, HEADS * HEAD_DIM, s=0.02),
              n2=ones(HIDDEN), gu=rnd(GATE_UP, HIDDEN, s=HIDDEN ** -0.5), d=rnd(HIDDEN, INTER, s=INTER ** -0.5),
              kv=rnd(2, blocks, BLOCK, KV_HEADS, HEAD_DIM)) for _ in range(layers)]
    final, lm_head = ones(HIDDEN), rnd(VOCAB, HIDDEN, s=HIDDEN ** -0.5)
    state = {"h": rnd(1, HIDDEN, s=3.0)}

    def step():
        h, res, outs = state["h"], None, []
        for i, lw in enumerate(w):
            qkv, res = rms_norm_linear(h, res, lw["n1"], 1e-6, lw["qkv"])
            q, k, v = (t.unflatten(-1, (-1, HEAD_DIM)) for t in qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM,
                                                                            KV_HEADS * HEAD_DIM], dim=-1))
            q = qk_norm_rope_store(q, k, v, pos, rotary.cos_sin_cache, lw["kv"][0], lw["kv"][1], slot, q_norm, k_norm)
            a = paged_decode_attention(q, lw["kv"][0], lw["kv"][1], lens, table, HEAD_DIM ** -0.5)   # split + merge
            # o_proj: every other layer split-K (the reduce kernel), the others the tuned config
            h = gemv(a.view(1, -1), lw["o"], None, GemvConfig(block_n=4, block_k=512, split_k=2) if i % 2 else None)
            gated, res = rms_norm_linear(h, res, lw["n2"], 1e-6, lw["gu"], silu_out=True)   # silu(gate) * up
            h = gemv(gated, lw["d"])
            outs += [qkv, q, a, h, gated, res, lw["kv"]]
        normed, res = fused_add_rms_norm(h, res, final, 1e-6)
        return outs + [normed, res, gemv(normed, lm_head)]

    return state, step


def test_the_switch_can_run_here():
    from workbench.optimizations.board import Optimizations
    assert Optimizations(pdl=True).why_not("cuda") == {}


def test_a_decode_step_of_kernels_pdl_equals_off():
    """Every kernel of all_on's decode step, chained as the step chains them, eagerly: PDL on
    changes when a kernel starts, never what it computes."""
    state, step = _decode_layers()
    off, on = _both(step, [state["h"]])
    for i, (a, b) in enumerate(zip(off, on)):
        assert torch.equal(a, b), f"output {i} differs with PDL on"


@pytest.mark.parametrize("T", [1, 4])
def test_the_unfused_kernels_pdl_equal_off(T):
    """fused_kernels' forms (the decode path when fused_decode is off; the final norm always)."""
    from workbench.kernels import triton_ops as ops
    dev, dt = "cuda", torch.bfloat16
    x, r = torch.randn(T, HIDDEN, device=dev, dtype=dt), torch.randn(T, HIDDEN, device=dev, dtype=dt)
    nw, gu = torch.randn(HIDDEN, device=dev, dtype=dt), torch.randn(T, 2 * INTER, device=dev, dtype=dt)
    q, k = torch.randn(T, HEADS, HEAD_DIM, device=dev, dtype=dt), torch.randn(T, KV_HEADS, HEAD_DIM, device=dev, dtype=dt)
    pos, cos_sin = torch.randint(0, 4096, (T,), device=dev), torch.randn(4096, HEAD_DIM, device=dev)
    hw = torch.randn(HEAD_DIM, device=dev, dtype=dt)
    cache, slots = torch.zeros(2, 16, 16, KV_HEADS, HEAD_DIM, device=dev, dtype=dt), torch.randperm(256, device=dev)[:T]

    def run():
        ops.store_kvcache(k, k, cache[0], cache[1], slots)
        return [*ops.fused_add_rms_norm(x, r, nw, 1e-6), ops.rms_norm(x, nw, 1e-6), ops.silu_and_mul(gu),
                *ops.apply_rope(q, k, pos, cos_sin), *ops.qk_norm_rope(q, k, pos, cos_sin, hw, hw, 1e-6, 1e-6), cache]

    off, on = _both(run, [x, r, gu, q, k])
    for i, (a, b) in enumerate(zip(off, on)):
        assert torch.equal(a, b), f"output {i} differs with PDL on"


def test_captured_step_with_pdl_equals_eager():
    """The step captured with PDL on (stream capture records the programmatic edges) and replayed
    on fresh inputs equals the eager step with PDL off, bit for bit."""
    from workbench.kernels import pdl
    state, step = _decode_layers()
    step()   # compile the kernels outside the capture
    pdl.set_enabled(True)
    try:
        step()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = step()
    finally:
        pdl.set_enabled(False)
    for _ in range(3):   # fresh inputs each replay: the graph must compute, not replay a result
        state["h"].copy_(3 * torch.randn_like(state["h"]))
        graph.replay()
        got = [t.clone() for t in outs]
        want = step()   # eager, PDL off
        for i, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a, b), f"replay: output {i} differs from eager"


def test_compiled_custom_ops_with_pdl_equal_eager():
    """Under torch.compile the GEMV ops are opaque: they launch with PDL at run time."""
    from workbench.kernels import pdl
    from workbench.kernels.fused_gemv import rms_norm_linear, silu_mul_linear
    from workbench.kernels.gemv import gemv
    dev, dt = "cuda", torch.bfloat16   # (silu_mul_linear: the SiLU's earlier place, an A/B twin)
    x, nw = torch.randn(1, HIDDEN, device=dev, dtype=dt), torch.ones(HIDDEN, device=dev, dtype=dt)
    w_qkv, w_gu = torch.randn(QKV, HIDDEN, device=dev, dtype=dt) / 32, torch.randn(GATE_UP, HIDDEN, device=dev, dtype=dt) / 32
    w_d, w_o = torch.randn(HIDDEN, INTER, device=dev, dtype=dt) / 55, torch.randn(HIDDEN, HIDDEN, device=dev, dtype=dt) / 32

    def fn(x):
        qkv, res = rms_norm_linear(x, None, nw, 1e-6, w_qkv)
        gated, new_res = rms_norm_linear(qkv[:, :HIDDEN], res, nw, 1e-6, w_gu, silu_out=True)   # the engine's
        gu, _ = rms_norm_linear(qkv[:, :HIDDEN], res, nw, 1e-6, w_gu)   # and the SiLU's earlier place
        return gemv(gemv(gated, w_d), w_o), gemv(silu_mul_linear(gu, w_d), w_o), new_res

    want = fn(x)
    pdl.set_enabled(True)
    try:
        got = torch.compile(fn, dynamic=False)(x)
    finally:
        pdl.set_enabled(False)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("max_num_seqs,prompts", [(1, 4), (16, 16)])   # M = 1 and M up to 16 (tl.dot)
def test_engine_parity_with_pdl(tmp_path_factory, max_num_seqs, prompts):
    from kernel_cases import assert_engine_parity

    from workbench import Optimizations
    on = Optimizations.all_on()
    no_compile = dataclasses.replace(on, compile=False)   # the final norm (a traced kernel under compile) gets PDL too
    assert on.pdl, "all_on() includes pdl since session 7; this test needs it on"
    assert_engine_parity(tmp_path_factory.mktemp("q06b"), [on, no_compile], prompts, max_num_seqs)
