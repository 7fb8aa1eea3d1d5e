"""EngineConfig.l2_prefetch (workbench/optimizations/l2_prefetch.py) on the CPU: which weight each
linear layer prefetches, the refusal without the GEMV switches, and -- under Triton's interpreter,
in a child process as in test_fused_decode_interpret.py -- the engine's tokens with the hooks
installed, every GEMV kernel handed the next matmul's weight. (The interpreter has no inline PTX,
so there the prefetch itself is left out: tests/test_gemv_compile.py compiles it for sm_90a, and
tests/gpu/test_gemv_gpu.py runs it.)
"""
from __future__ import annotations

import importlib.util

import pytest

CHECKS = ["engine_tokens_and_the_weights_handed_on"]


def _model(tiny_ckpt):
    from workbench.model import ModelConfig, load_model
    return load_model(tiny_ckpt, ModelConfig.from_hf(tiny_ckpt), dtype=__import__("torch").float32, device="cpu")


def test_each_matmul_prefetches_the_next_ones_weight(tiny_ckpt):
    from workbench.optimizations import l2_prefetch
    model = _model(tiny_ckpt)
    params = [name for name, _ in model.named_parameters()]
    l2_prefetch.install(model, True)
    first, second, last = model.layers[0], model.layers[1], model.layers[-1]
    pairs = [(first.self_attn.qkv_proj, first.self_attn.o_proj), (first.self_attn.o_proj, first.mlp.gate_up_proj),
             (first.mlp.gate_up_proj, first.mlp.down_proj), (first.mlp.down_proj, second.self_attn.qkv_proj)]
    for linear, following in pairs:
        assert linear.prefetch_next is not None, linear
        assert linear.prefetch_next.data_ptr() == following.weight.data_ptr(), (linear, following)
        assert linear.prefetch_next.shape == following.weight.shape
    order = l2_prefetch.layer_matmuls(model)
    assert len(order) == 4 * len(model.layers) and order[-1] is last.mlp.down_proj
    for linear, following in zip(order, order[1:]):
        assert linear.prefetch_next.data_ptr() == following.weight.data_ptr()
    # the last down_proj: the LM head's first rows, as many bytes as a qkv_proj; the LM head: none
    head_rows = last.mlp.down_proj.prefetch_next
    assert head_rows.data_ptr() == model.lm_head.weight.data_ptr() and head_rows.is_contiguous()
    assert head_rows.shape == first.self_attn.qkv_proj.weight.shape
    assert model.lm_head.prefetch_next is None
    assert [name for name, _ in model.named_parameters()] == params, "a prefetched weight became a parameter"
    l2_prefetch.install(model, True, ahead=2)   # the A/B variant l2-prefetch-2
    assert first.self_attn.qkv_proj.prefetch_next.data_ptr() == first.mlp.gate_up_proj.weight.data_ptr()
    assert first.mlp.down_proj.prefetch_next.data_ptr() == second.self_attn.o_proj.weight.data_ptr()
    gate_up_gets, down_gets = last.mlp.gate_up_proj.prefetch_next, last.mlp.down_proj.prefetch_next
    assert gate_up_gets.data_ptr() == model.lm_head.weight.data_ptr()   # the head's first bytes, then the next
    assert down_gets.data_ptr() == gate_up_gets.data_ptr() + gate_up_gets.numel() * gate_up_gets.element_size()
    for name in ("gate_up_proj", "down_proj"):   # shaped as in every other layer
        assert getattr(last.mlp, name).prefetch_next.shape == getattr(first.mlp, name).prefetch_next.shape, name
    with pytest.raises(ValueError, match="ahead=5"):
        l2_prefetch.install(model, True, ahead=5)
    l2_prefetch.install(model, False)
    assert all(linear.prefetch_next is None for linear in [*order, model.lm_head])


def test_decode_attention_asks_for_its_layers_gate_up_only_when_installed(tiny_ckpt, monkeypatch):
    """install_attention (an A/B candidate): each layer's Triton decode attention gets the layer's
    gate_up weight to ask L2 for, and hands it to the kernel; without the switch, a clear refusal."""
    from workbench.kernels import decode_attention as kernel
    from workbench.optimizations import decode_attention, l2_prefetch
    model = _model(tiny_ckpt)
    with pytest.raises(RuntimeError, match="turn the decode_attention switch on first"):
        l2_prefetch.install_attention(model, True)
    l2_prefetch.install_attention(model, False)   # off without the switch: nothing to do, no error
    decode_attention.install(model, True)
    l2_prefetch.install_attention(model, True)
    for layer in model.layers:
        assert layer.self_attn.backend.prefetch_next.data_ptr() == layer.mlp.gate_up_proj.weight.data_ptr()
    handed = []
    monkeypatch.setattr(kernel, "paged_decode_attention", lambda *args, **kw: handed.append(kw.get("prefetch")))
    meta = type("Meta", (), {"is_decode": True, "seq_lens": None, "block_tables": None})()
    model.layers[1].self_attn.backend(None, None, None, meta, 1.0)
    assert handed[-1].data_ptr() == model.layers[1].mlp.gate_up_proj.weight.data_ptr()
    l2_prefetch.install_attention(model, False)
    model.layers[1].self_attn.backend(None, None, None, meta, 1.0)
    assert handed[-1] is None and all(layer.self_attn.backend.prefetch_next is None for layer in model.layers)


def test_refused_without_the_gemv_switches(tiny_ckpt):
    from workbench import LLM, Optimizations
    with pytest.raises(ValueError, match="l2_prefetch=True: .*decode_gemv and fused_decode are both off"):
        LLM(tiny_ckpt, opts=Optimizations.all_off(), device="cpu", l2_prefetch=True)
    with pytest.raises(ValueError, match="l2_prefetch='yes' must be True or False"):
        LLM(tiny_ckpt, opts=Optimizations.all_off(), device="cpu", l2_prefetch="yes")


@pytest.fixture(scope="module")
def verdicts() -> dict:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    from kernel_cases import interpreter_verdicts
    return interpreter_verdicts(__file__)


@pytest.mark.parametrize("name", CHECKS)
def test_under_the_interpreter(verdicts, name):
    assert verdicts[name] == "ok", verdicts[name]


def check_engine_tokens_and_the_weights_handed_on(torch):
    """Tiny fp32 model, 2 sequences x 5 greedy tokens: all-off against the decode GEMV, its folds
    and l2_prefetch installed into the built model (the CPU engine refuses the switches, so they
    go in as the runner installs them on a GPU). Same tokens, and every GEMV call got the weight
    of the matmul after it (the last down_proj: the LM head's; the LM head: none)."""
    import tempfile

    from workbench import LLM, Optimizations, SamplingParams
    from workbench.kernels import fused_gemv as fg
    from workbench.kernels import gemv as g
    from workbench.model import make_checkpoint
    from workbench.optimizations import decode_gemv, fused_decode, l2_prefetch
    path = make_checkpoint(tempfile.mkdtemp(), "tiny", seed=0)
    prompts = [[5, 17, 99, 3], [42, 7, 250, 11, 64, 9, 1]]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    runs, handed = [], []   # (the op, its weight, the prefetch it got) per GEMV call
    for on in (False, True):
        with LLM(path, opts=Optimizations.all_off(), device="cpu", enable_prefix_caching=False) as llm:
            if on:
                # (the op, where its weight and its prefetch are among its arguments; down_proj,
                # the SiLU in gate_up's epilogue, is a plain gemv_op)
                for name, weight_at, prefetch_at in (("gemv_op", 1, 8), ("rms_norm_gemv_op", 4, 6)):
                    module = g if name == "gemv_op" else fg
                    op = getattr(module, name)

                    def spy(*a, _op=op, _n=name, _w=weight_at, _p=prefetch_at):
                        handed.append((_n, a[_w], a[_p]))
                        return _op(*a)
                    setattr(module, name, spy)
                model = llm.runner.model
                decode_gemv.install(model, True)
                fused_decode.install(model, True)
                l2_prefetch.install(model, True)
            runs.append(llm.generate(prompts, params, use_tqdm=False))
    for base, prefetched in zip(*runs):
        assert prefetched.token_ids == base.token_ids, (base.token_ids, prefetched.token_ids)
    order = l2_prefetch.layer_matmuls(model)
    following = {a.weight.data_ptr(): b.weight.data_ptr() for a, b in zip(order, order[1:])}
    following[order[-1].weight.data_ptr()] = model.lm_head.weight.data_ptr()   # its first rows
    assert {name for name, _, _ in handed} == {"gemv_op", "rms_norm_gemv_op"}, handed
    for name, weight, prefetch in handed:
        want = following.get(weight.data_ptr())   # None: the LM head
        got = None if prefetch is None else prefetch.data_ptr()
        assert got == want, f"{name} on a {tuple(weight.shape)} weight was handed {got}, want {want}"


def _main() -> None:
    import torch
    from kernel_cases import run_checks
    torch.manual_seed(0)
    run_checks(CHECKS, globals(), torch)


if __name__ == "__main__":
    _main()
