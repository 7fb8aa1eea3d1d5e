"""fused_decode (Optimizations.fused_decode) on the GPU: the folded kernels at the Qwen3-0.6B shapes
in bf16 against the unfused forms (the norm and SiLU GEMVs; q/k norm + RoPE + the KV-cache write),
inside a CUDA graph and under torch.compile, and the engine's
greedy parity with the switch on (graphs on) against all-off.
Run: pytest -m gpu tests/gpu/test_fused_decode_gpu.py
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HIDDEN, QKV, GATE_UP, INTER = 1024, 4096, 6144, 3072   # Qwen3-0.6B
HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128


def _norm_case(m, n, bias):
    from workbench.model.layers import plain_add_rms_norm
    dev, dt = "cuda", torch.bfloat16
    x, res = 3 * torch.randn(m, HIDDEN, device=dev, dtype=dt), torch.randn(m, HIDDEN, device=dev, dtype=dt)
    nw = (1 + 0.1 * torch.randn(HIDDEN, device=dev)).to(dt)
    w = torch.randn(n, HIDDEN, device=dev, dtype=dt) / HIDDEN ** 0.5
    b = torch.randn(n, device=dev, dtype=dt) if bias else None
    normed, want_res = plain_add_rms_norm(x, res, nw, 1e-6)
    want = torch.nn.functional.linear(normed.float(), w.float(), None if b is None else b.float())
    return (x, res, nw, 1e-6, w, b), want, want_res


def _rel(got, want):
    return ((got.float() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("m", [1, 2, 8, 16])
@pytest.mark.parametrize("n", [QKV, GATE_UP])
@pytest.mark.parametrize("bias", [False, True])
def test_rms_norm_linear_matches_unfused(m, n, bias):
    from workbench.kernels.fused_gemv import rms_norm_linear
    args, want, want_res = _norm_case(m, n, bias)
    torch.empty(512 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)   # NaN-filled free memory
    got, got_res = rms_norm_linear(*args)
    assert torch.equal(got_res, want_res), "the new residual must be exactly x + residual"
    assert _rel(got, want) < 1e-2, f"M={m} N={n}: rel err {_rel(got, want):.3g}"
    x_before = args[0].clone()
    _, first = rms_norm_linear(args[0], None, *args[2:])   # first layer: no residual yet
    assert first.data_ptr() == args[0].data_ptr(), "x itself starts the residual stream (as unfused)"
    assert torch.equal(args[0], x_before), "the kernel must not write x"


@pytest.mark.parametrize("m", [1, 2, 8, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_silu_mul_linear_matches_unfused(m, bias):
    from workbench.kernels.fused_gemv import silu_mul_linear
    from workbench.model.layers import plain_silu_and_mul
    gate_up = torch.randn(m, 2 * INTER, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(HIDDEN, INTER, device="cuda", dtype=torch.bfloat16) / INTER ** 0.5
    b = torch.randn(HIDDEN, device="cuda", dtype=torch.bfloat16) if bias else None
    want = torch.nn.functional.linear(plain_silu_and_mul(gate_up).float(), w.float(), None if b is None else b.float())
    got = silu_mul_linear(gate_up, w, b)
    assert _rel(got, want) < 1e-2, f"M={m}: rel err {_rel(got, want):.3g}"


@pytest.mark.parametrize("m", [1, 2, 16])
def test_silu_out_matches_the_fold_it_replaces(m):
    """gate_up with silu-and-mul in its epilogue (rms_norm_linear's silu_out: fused_decode's form
    since session 20) at the 0.6B shapes: the new residual unchanged, and the down_proj after it
    equal to the earlier form's (rms_norm_linear -> silu_mul_linear), bit for bit at M = 1 (the
    same sums in the same order)."""
    from workbench.kernels.fused_gemv import rms_norm_linear, silu_mul_linear
    from workbench.kernels.gemv import linear
    args, _, _ = _norm_case(m, GATE_UP, False)
    act, res = rms_norm_linear(*args, silu_out=True)
    gate_up, want_res = rms_norm_linear(*args)
    assert act.shape == (m, INTER) and torch.equal(res, want_res)
    w_down = torch.randn(HIDDEN, INTER, device="cuda", dtype=torch.bfloat16) / INTER ** 0.5
    got, want = linear(act, w_down), silu_mul_linear(gate_up, w_down)
    if m == 1:
        assert torch.equal(got, want), f"M=1: max diff {(got.float() - want.float()).abs().max():.3g}"
    assert _rel(got, want.float()) < 1e-2, f"M={m}: rel err {_rel(got, want.float()):.3g}"


def test_graph_replay_and_compile_match_eager():
    from workbench.kernels.fused_gemv import rms_norm_linear, silu_mul_linear
    args, _, _ = _norm_case(1, QKV, True)
    gate_up = torch.randn(1, 2 * INTER, device="cuda", dtype=torch.bfloat16)
    w_down = torch.randn(HIDDEN, INTER, device="cuda", dtype=torch.bfloat16)
    step = lambda: (*rms_norm_linear(*args), silu_mul_linear(gate_up, w_down))  # noqa: E731
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for _ in range(3):   # fresh inputs each replay: the graph must compute, not replay a result
        args[0].copy_(torch.randn_like(args[0]))
        gate_up.copy_(torch.randn_like(gate_up))
        graph.replay()
        for got, want in zip(outs, step()):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    compiled = torch.compile(step, dynamic=False)
    for got, want in zip(compiled(), step()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("T", [1, 5, 16])
@pytest.mark.parametrize("norm", [True, False])   # Qwen3; Llama/Qwen2 (RoPE alone)
def test_qk_norm_rope_store_matches_unfused(T, norm):
    """q and the cache equal fused_kernels' forms + store_kv exactly, plain torch's within bf16
    rounding; padding rows (slot -1) and unwritten slots keep the cache's noise."""
    from kernel_cases import qk_norm_rope_store_outputs
    outs, before, slots = qk_norm_rope_store_outputs(torch, HEADS, KV_HEADS, HEAD_DIM, torch.bfloat16, T, norm,
                                                     device="cuda", max_pos=40960, blocks=(64, 16))
    for got, fused, plain in zip(*(outs[w] for w in ("one", "fused", "plain"))):
        assert torch.equal(got, fused)
        assert _rel(got, plain.float()) < 1e-2
    written = torch.zeros(64 * 16, dtype=torch.bool, device="cuda")
    written[slots[slots >= 0]] = True
    for cache, start in zip(outs["one"][1:], before):
        assert torch.equal(cache.flatten(0, 1)[~written], start.flatten(0, 1)[~written]), "stray write"


def test_qk_norm_rope_store_graph_replay():
    """Captured once, replayed with fresh q/k/v, positions and slots (the last row padding): the
    graph must compute and write where the slots say, as the eager call does."""
    from workbench.kernels.qk_norm_rope_store import qk_norm_rope_store
    from workbench.model.layers import RMSNorm, RotaryEmbedding
    dev, dt, T = "cuda", torch.bfloat16, 4
    rotary = RotaryEmbedding(HEAD_DIM, 40960, 1e6).to(dev)
    norms = [RMSNorm(HEAD_DIM, 1e-6).to(dev, dt) for _ in range(2)]
    qkv = torch.randn(T, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device=dev, dtype=dt)
    pos, slots = torch.zeros(T, dtype=torch.long, device=dev), torch.full((T,), -1, dtype=torch.long, device=dev)
    caches = torch.zeros(2, 64, 16, KV_HEADS, HEAD_DIM, device=dev, dtype=dt)

    def step(kc, vc):
        q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
        q, k, v = (t.unflatten(-1, (-1, HEAD_DIM)) for t in (q, k, v))
        return qk_norm_rope_store(q, k, v, pos, rotary.cos_sin_cache, kc, vc, slots, *norms)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q_out = step(*caches)
    for _ in range(3):
        qkv.copy_(torch.randn_like(qkv))
        pos.copy_(torch.randint(0, 40960, (T,), device=dev))
        slots.copy_(torch.randperm(64 * 16, device=dev)[:T])
        slots[-1] = -1
        want_caches = caches.clone()
        want_q = step(*want_caches)
        graph.replay()
        assert torch.equal(q_out, want_q) and torch.equal(caches, want_caches)


@pytest.mark.parametrize("max_num_seqs,prompts", [(1, 4), (16, 16)])   # M = 1 and M up to 16 (tl.dot)
def test_engine_parity_with_fused_decode(tmp_path_factory, max_num_seqs, prompts):
    from kernel_cases import assert_engine_parity

    from workbench import Optimizations
    settings = [Optimizations(attention="flash", fused_decode=True),
                Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, fused_decode=True,
                              cuda_graphs=True),
                Optimizations.all_on()]
    assert Optimizations.all_on().fused_decode
    assert_engine_parity(tmp_path_factory.mktemp("q06b"), settings, prompts, max_num_seqs)
