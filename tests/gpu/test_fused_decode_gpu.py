"""fused_decode (Optimizations.fused_decode) on the GPU: the folded kernels at the Qwen3-0.6B shapes
in bf16 against the unfused forms, inside a CUDA graph and under torch.compile, and the engine's
greedy parity with the switch on (graphs on) against all-off.
Run: pytest -m gpu tests/gpu/test_fused_decode_gpu.py
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HIDDEN, QKV, GATE_UP, INTER = 1024, 4096, 6144, 3072   # Qwen3-0.6B


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
    _, copy = rms_norm_linear(args[0], None, *args[2:])   # first layer: no residual yet
    assert torch.equal(copy, args[0])


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
