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
    settings = [Optimizations(attention="flash", fused_kernels=True, decode_gemv=True),
                Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, cuda_graphs=True),
                Optimizations.all_on()]
    assert Optimizations.all_on().decode_gemv
    assert_engine_parity(tmp_path_factory.mktemp("q06b"), settings, prompts, max_num_seqs)


@pytest.mark.parametrize("m,use_pdl", list(itertools.product((1, 4), (False, True))))
def test_l2_prefetch_changes_no_value(m, use_pdl):
    """EngineConfig.l2_prefetch: each layer shape's GEMV (and the two folded forms) handed another
    weight to pull into L2 gives bit for bit the output it gives without -- eagerly and replayed
    from a CUDA graph, PDL off and on."""
    from workbench.kernels import pdl
    from workbench.kernels.fused_gemv import rms_norm_linear, silu_mul_linear
    from workbench.kernels.gemv import default_config, gemv, pick_config
    shapes = list(_shapes().values())
    nxt = torch.randn(6144, 1024, device="cuda", dtype=torch.bfloat16)   # gate_up's: the largest layer weight
    for k, n in shapes:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        config = pick_config(m, n, k, x.device) or default_config(m, n, k)   # the kernel, even where cuBLAS won
        calls = {"plain": lambda p: gemv(x, w, None, config, prefetch=p),
                 "rms_norm": lambda p: rms_norm_linear(x, x.flip(0), torch.ones(k, device="cuda", dtype=x.dtype), 1e-6, w,
                                                       prefetch=p)[0]}
        gate_up = torch.cat([x, x.flip(1)], 1)   # [M, 2K]: silu(gate) * up -> @ W^T
        calls["silu_mul"] = lambda p: silu_mul_linear(gate_up, w, prefetch=p)
        with pdl.launching(use_pdl):
            for form, call in calls.items():
                want, got = call(None), call(nxt)
                assert torch.equal(got, want), f"{form} {n}x{k} M={m} pdl={use_pdl}: prefetch changed the output"
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    replayed = call(nxt)
                graph.replay()
                assert torch.equal(replayed, want), f"{form} {n}x{k} M={m} pdl={use_pdl}: the replay differs"


def test_engine_tokens_with_l2_prefetch(tmp_path_factory):
    """all_on with l2_prefetch against all_on without, 8 steps a round, one and several sequences:
    the same greedy tokens, and for requests that keep their logits (run step by step) the same
    logits, bit for bit: a prefetch moves no value."""
    from workbench import LLM, Optimizations, SamplingParams
    from workbench.check import random_prompts
    from workbench.model import make_checkpoint
    path = make_checkpoint(tmp_path_factory.mktemp("q06b-l2"), "qwen3-0.6b", seed=0, dtype="bfloat16")
    prompts = random_prompts(4, 151936)
    rounds = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)   # in rounds of 8 steps
    logits = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, return_logits=True)   # step by step
    runs = []
    for on in (False, True):
        with LLM(path, opts=Optimizations.all_on(), decode_steps=8, max_num_seqs=4, l2_prefetch=on,
                 enable_prefix_caching=False) as llm:
            assert (llm.runner.model.layers[0].self_attn.qkv_proj.prefetch_next is not None) == on
            runs.append([*llm.generate(prompts, rounds, use_tqdm=False), *llm.generate(prompts[:1], rounds, use_tqdm=False),
                         *llm.generate(prompts[:2], logits, use_tqdm=False)])
    for base, prefetched in zip(*runs):
        assert prefetched.token_ids == base.token_ids
        if base.logits is not None:   # the step-by-step requests
            assert torch.equal(prefetched.logits, base.logits)


def test_engine_tokens_with_l2_prefetch_from_a_side_stream(tmp_path_factory, monkeypatch):
    """l2_prefetch's side-stream form (an A/B candidate, session 17): a prefetch-only kernel on a
    stream of its own at each decode attention, joined before the LM head, captured in the decode
    graphs. The same greedy tokens and step-by-step logits bit for bit as without it, and the fork
    made at every layer (counted in Python: at capture and eager warm-up). That the kernel asks for
    each line of the weight: tests/test_gemv_compile.py."""
    from workbench import LLM, Optimizations, SamplingParams
    from workbench.check import random_prompts
    from workbench.model import make_checkpoint
    from workbench.optimizations import l2_prefetch
    path = make_checkpoint(tmp_path_factory.mktemp("q06b-side"), "qwen3-0.6b", seed=0, dtype="bfloat16")
    prompts = random_prompts(4, 151936)
    rounds = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    logits = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, return_logits=True)
    forks, at_layer = [], l2_prefetch.SidePrefetch.at_layer
    monkeypatch.setattr(l2_prefetch.SidePrefetch, "at_layer", lambda self, i: forks.append(i) or at_layer(self, i))
    runs = []
    for form in (None, "mlp+qkv"):
        install = l2_prefetch.install
        monkeypatch.setattr(l2_prefetch, "install", lambda model, on: (install(model, on), l2_prefetch.install_side(model, form)))
        with LLM(path, opts=Optimizations.all_on(), decode_steps=8, max_num_seqs=4, enable_prefix_caching=False) as llm:
            assert (llm.runner.model.layers[0].self_attn.side_prefetch is not None) == (form is not None)
            runs.append([*llm.generate(prompts, rounds, use_tqdm=False), *llm.generate(prompts[:2], logits, use_tqdm=False)])
        monkeypatch.setattr(l2_prefetch, "install", install)
    assert len(forks) >= 28 and set(forks) == set(range(28)), "the side prefetch never ran at every layer"
    for base, prefetched in zip(*runs):
        assert prefetched.token_ids == base.token_ids
        if base.logits is not None:
            assert torch.equal(prefetched.logits, base.logits)


def _graph_under_pdl_equals_off(chain, source: torch.Tensor, replays: int = 10) -> None:
    """Capture `chain` (our kernels) with PDL in a CUDA graph, then replay it on fresh `source`
    values: its outputs bit for bit those of the chain run without PDL."""
    from workbench.kernels import pdl
    with pdl.launching(True):
        chain()   # compile the PDL forms before capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = chain()
    for _ in range(replays):
        source.copy_(torch.randn_like(source))
        graph.replay()
        with pdl.launching(False):
            want = chain()
        assert all(torch.equal(o, w) for o, w in zip(out, want))


@pytest.mark.parametrize("m,cfg", [(1, None), (1, "split"), (8, "whole")])
def test_add_in_the_epilogue_is_torchs_sum(m, cfg):
    """gemv's `add` (the A/B variant residual-epilogue) at o_proj's and down_proj's shapes: bit for
    bit torch's `gemv(x, w) + residual` (the product rounded to bf16, then the sum), with the tuned
    config, split K (the reduce kernel adds it) or one whole-K tile at M = 8 (the tl.dot epilogue);
    and under PDL in a CUDA graph in the variant's own chain -- o_proj, the gate_up fold, down_proj
    adding o_proj's output: at M = 1 the residual is exactly two kernels old when it is read."""
    from workbench.kernels.fused_gemv import rms_norm_linear
    from workbench.kernels.gemv import GemvConfig, gemv
    cfg = {None: None, "split": GemvConfig(block_n=4, block_k=256, split_k=4),
           "whole": GemvConfig(block_n=16, block_k=256, split_k=1)}[cfg]
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    for n, k in ((1024, 2048), (1024, 3072)):
        x, w, r = torch.randn(m, k, **bf16), torch.randn(n, k, **bf16) / k ** 0.5, torch.randn(m, n, **bf16)
        assert torch.equal(gemv(x, w, None, cfg, add=r), gemv(x, w, None, cfg) + r), (n, k)
    attn_out, norm_w = torch.randn(m, 2048, **bf16), torch.ones(1024, **bf16)
    w_o, w_gu, w_d = (torch.randn(*s, **bf16) / s[1] ** 0.5 for s in ((1024, 2048), (6144, 1024), (1024, 3072)))

    def layer_tail():   # o_proj (tuned: one kernel at M = 1), the gate_up fold, down_proj adding o_proj's output
        residual_stream = gemv(attn_out, w_o)
        gated, _ = rms_norm_linear(residual_stream, None, norm_w, 1e-6, w_gu, silu_out=True)
        return (gemv(gated, w_d, None, cfg, add=residual_stream),)
    _graph_under_pdl_equals_off(layer_tail, attn_out)


def test_the_early_trigger_chain_equals_pdl_off():
    """gemv(early_trigger=True) (the A/B variant gate-up-early) on o_proj, in the variant's chain, all
    our PDL kernels: one writing the residual, a merge-like GEMV writing o_proj's input, o_proj letting
    the gate_up fold in before its wait (so gate_up may start while the merge-like kernel runs), then
    down_proj -- captured with PDL, replayed on fresh inputs, bit for bit the chain without PDL. A gate_up
    that read its x or residual before its wait could see the last replay's values. Seen failing on an
    H200 (session 22) with the GEMV's first x tile read before its wait. Not with the early form
    made never to wait at all: in 10 replays o_proj never read x before the merge-like kernel had
    written it -- its programs apparently start only once that kernel's are done (the A/B's spans
    say the same of gate_up). So this test catches a kernel that reads its input before its wait;
    it cannot show that a missing wait in the early form is harmless."""
    from workbench.kernels.fused_gemv import rms_norm_linear
    from workbench.kernels.gemv import gemv
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    norm_w = torch.ones(1024, **bf16)
    w_o, w_gu, w_d = (torch.randn(*s, **bf16) / s[1] ** 0.5 for s in ((1024, 2048), (6144, 1024), (1024, 3072)))
    w_r, w_m = torch.randn(1024, 2048, **bf16) / 45, torch.randn(2048, 2048, **bf16) / 45
    source = torch.randn(1, 2048, **bf16)

    def layer_tail():
        resid = gemv(source, w_r)                  # gate_up's residual: our kernel, three before gate_up
        attn_out = gemv(source, w_m)               # the merge's place: our kernel, triggering after its wait
        hidden = gemv(attn_out, w_o, early_trigger=True)
        gated, new_residual = rms_norm_linear(hidden, resid, norm_w, 1e-6, w_gu, silu_out=True)
        return gemv(gated, w_d), new_residual
    _graph_under_pdl_equals_off(layer_tail, source)
