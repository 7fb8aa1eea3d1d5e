"""The decode GEMV (Optimizations.decode_gemv) on the GPU: every Qwen3-0.6B layer shape against
F.linear in bf16, inside a CUDA graph and under torch.compile, and the engine's greedy parity
with the switch on against all-off. Run: pytest -m gpu tests/gpu/test_gemv_gpu.py
"""
from __future__ import annotations

import itertools

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _poison_allocator(mb: int = 512) -> None:
    """Free cached memory full of NaN: an output element the kernel skips shows up as NaN."""
    torch.empty(mb << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)


def _shapes():
    from workbench.measure.gemv import gemv_shapes
    from workbench.model import ModelConfig
    return gemv_shapes(ModelConfig.from_preset("qwen3-0.6b"))


@pytest.mark.parametrize("m,bias,split", list(itertools.product((1, 4, 16), (False, True), (None, 4))))
def test_every_layer_shape_matches_f_linear(m, bias, split):
    from kernel_cases import gemv_rel_err   # tests/ is on sys.path (its conftest.py)

    from workbench.kernels.gemv import GemvConfig, default_config
    for name, (k, n) in _shapes().items():
        config = None if split is None else GemvConfig(**{**default_config(m, n, k).as_dict(), "split_k": split})
        _poison_allocator()
        err = gemv_rel_err(torch, m, n, k, torch.bfloat16, bias, config, device="cuda", x_stride=k + 64)
        assert err < 1e-2, f"{name} M={m} bias={bias} {config}: rel err {err:.3g}"


def test_graph_replay_and_compile_match_eager():
    from workbench.kernels.gemv import GemvConfig, gemv
    k, n = 3072, 1024   # down_proj, split 4 ways: the reduce kernel and its scratch are captured too
    w, b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16), torch.randn(n, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    linear = lambda x, w, b: gemv(x, w, b, GemvConfig(split_k=4))  # noqa: E731
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = linear(x, w, b)
    for _ in range(3):   # fresh inputs each replay: the graph must compute, not replay a result
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(out, linear(x, w, b), rtol=0, atol=0)   # same kernels, same order
    compiled = torch.compile(lambda x: linear(x, w, b), dynamic=False)
    torch.testing.assert_close(compiled(x), linear(x, w, b), rtol=0, atol=0)
    ref = torch.nn.functional.linear(x.float(), w.float(), b.float())
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize("max_num_seqs,prompts", [(1, 4), (16, 16)])   # M = 1 and M up to 16 (tl.dot)
def test_engine_parity_with_decode_gemv(tmp_path_factory, max_num_seqs, prompts):
    from kernel_cases import assert_engine_parity

    from workbench import Optimizations
    from workbench.model import make_checkpoint
    path = make_checkpoint(tmp_path_factory.mktemp("q06b"), "qwen3-0.6b", seed=0, dtype="bfloat16")
    settings = [Optimizations(attention="flash", fused_kernels=True, decode_gemv=True),
                Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, cuda_graphs=True),
                Optimizations.all_on()]
    assert Optimizations.all_on().decode_gemv
    assert_engine_parity(path, settings, prompts, max_num_seqs)
