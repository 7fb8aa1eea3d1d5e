"""The fused_decode kernels (workbench/kernels/fused_gemv.py) on the CPU, under Triton's interpreter:
RMSNorm(+residual) -> GEMV and SiLU-and-mul -> GEMV against the unfused torch forms, and the engine's
greedy tokens with the switch's hooks installed against all-off. As in test_kernels_interpret.py,
the checks run in one child process (TRITON_INTERPRET=1) and each pytest test reads its verdict;
the GPU twin is tests/gpu/test_fused_decode_gpu.py.
"""
from __future__ import annotations

import importlib.util
from itertools import product

import pytest

CHECKS = ["rms_norm_linear", "fp32_x_is_rounded_first", "fixed_point_poison_reaches_the_stream", "silu_mul_linear", "silu_out", "broken_fold_is_caught",
          "qk_norm_rope_store",
          "qk_norm_rope_store_inputs_early", "engine_tokens_match_all_off", "ab_layer_forms_match_the_engine"]
SHAPES = ((40, 72), (32, 256))   # (N, K): N not a multiple of the block, K not of split x block

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture(scope="module")
def verdicts() -> dict:
    from kernel_cases import interpreter_verdicts
    return interpreter_verdicts(__file__)


@pytest.mark.parametrize("name", CHECKS)
def test_fused_decode_matches_unfused(verdicts, name):
    assert verdicts[name] == "ok", verdicts[name]


# (the SiLU runs in the folded norm's GEMV: a norm override leaves it unfolded too)
@pytest.mark.parametrize("seam, left_alone", [("add_rms_norm", ("RMSNorm", "ActAndMul")), ("silu_and_mul", ("ActAndMul",)),
                                               ("rms_norm", ("RMSNorm", "Attention", "ActAndMul")),   # + q/k norm
                                               ("qk_norm_rope", ("Attention",)), ("rope", ("Attention",))])
def test_a_form_override_is_not_folded_away(tiny_ckpt, seam, left_alone):
    """A student's layer form (overrides={'add_rms_norm': fn}, ...) runs at every step: the folds
    that would compute that form inside a kernel are not installed; the others are."""
    from workbench import LLM, Optimizations
    from workbench.optimizations import fused_decode
    with LLM(tiny_ckpt, opts=Optimizations.all_off(), device="cpu") as llm:
        model = llm.runner.model
        fused_decode.install(model, True, {seam: lambda *a: None})
        folded = {type(m).__name__: m.fold is not None for m in model.modules()
                  if type(m).__name__ in ("RMSNorm", "Attention")}
        folded.update({type(m).__name__: m.in_gemv for m in model.modules() if type(m).__name__ == "ActAndMul"})
    for kind in left_alone:
        assert not folded.pop(kind), f"{seam} overridden, yet {kind} folds it away"
    assert all(folded.values()), folded


def test_a_fixed_point_x_needs_the_residual():
    """An int64 x (a fixed-point sum, kernels/fixed_point.py) takes the residual's dtype for its
    outputs: without a residual there is none to take, so it is refused before any launch."""
    import torch

    from workbench.kernels.fused_gemv import rms_norm_linear
    with pytest.raises(ValueError, match="needs the residual"):
        rms_norm_linear(torch.zeros(1, 8, dtype=torch.int64), None, torch.ones(8), 1e-6, torch.ones(4, 8))


# --- the checks, run in the child process ----------------------------------------------------
def _rel_err(got, want) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def _tol(torch, dtype) -> float:
    # bf16: 2e-2, not the GPU test's 1e-2 -- the interpreter (Triton 3.9) rounds fp32 -> bf16 toward
    # zero where the GPU and torch round to nearest, and the fold rounds twice more than a GEMV
    return 1e-5 if dtype == torch.float32 else 2e-2


def _cases(torch, g, extra=((),)):
    """(dtype, M, (N, K), *extra) for every check, first with the heuristic configs, then (bf16)
    with tuned entries for the test shapes that split K three ways (the fold must not care)."""
    split = {(n, k, b): g.GemvConfig(block_n=4 if b == "m1" else 16, block_k=32, split_k=3)
             for (n, k), b in product(SHAPES, ("m1", "m16"))}
    yield from ((d, m, s, *e) for d, m, s, e in product((torch.float32, torch.bfloat16), (1, 3, 16), SHAPES, extra))
    g.CONFIGS.update(split)
    try:
        yield from ((torch.bfloat16, m, s, *e) for m, s, e in product((1, 3, 16), SHAPES, extra))
    finally:
        [g.CONFIGS.pop(key) for key in split]


def norm_linear_err(torch, m, n, k, dtype, with_residual, bias, residual_for_ref=None):
    """rms_norm_linear against the unfused forms (layers.py) + float64 F.linear; returns the
    output's relative error, after checking the new residual is exactly x + residual."""
    from workbench.kernels.fused_gemv import rms_norm_linear
    from workbench.model.layers import plain_add_rms_norm, plain_rms_norm
    x = 3 * torch.randn(m, k, dtype=dtype)   # rms far from 1: a skipped norm shows
    res = torch.randn(m, k, dtype=dtype) if with_residual else None
    nw, eps = (1 + 0.1 * torch.randn(k)).to(dtype), 1e-6
    w, b = torch.randn(n, k, dtype=dtype), (torch.randn(n, dtype=dtype) if bias else None)
    ref_res = res if residual_for_ref is None else residual_for_ref(x)
    normed, want_res = plain_add_rms_norm(x, ref_res, nw, eps) if ref_res is not None else (plain_rms_norm(x, nw, eps), x)
    got, got_res = rms_norm_linear(x, res, nw, eps, w, b)
    assert got.shape == (m, n) and got.dtype == dtype and torch.isfinite(got).all()
    if res is None:   # no residual: x itself starts the stream (as RMSNorm.then's unfused form), no copy
        assert got_res is x
    elif residual_for_ref is None:   # exactly x + residual; bf16: 1 ulp, as _tol says
        ulp = 0 if dtype == torch.float32 else 2 ** -7
        torch.testing.assert_close(got_res, want_res, rtol=ulp, atol=0)
    want = torch.nn.functional.linear(normed.double(), w.double(), None if b is None else b.double())
    return _rel_err(got, want)


def check_rms_norm_linear(torch):
    from workbench.kernels import gemv as g
    for dtype, m, (n, k), with_res in _cases(torch, g, extra=((False,), (True,))):
        err = norm_linear_err(torch, m, n, k, dtype, with_res, bias=m != 3)
        assert err < _tol(torch, dtype), f"{dtype} M={m} N={n} K={k} residual={with_res}: rel err {err:.3g}"


def check_fp32_x_is_rounded_first(torch):
    """An fp32 x with a bf16 residual (decode attention's o_proj fold hands on an fp32 sum) gives,
    bit for bit, what x rounded to bf16 gives -- both outputs, with and without silu_out -- and
    both outputs are bf16: the stream keeps its dtype. The same for x as an int64 fixed-point sum
    (o_proj_fixed_point; kernels/fixed_point.py), turned into fp32 first (seen failing with
    from_fixed's scale off by a factor of two)."""
    from workbench.kernels import fixed_point
    from workbench.kernels.fused_gemv import rms_norm_linear
    g = torch.Generator().manual_seed(7)
    for m, silu in ((1, False), (3, True)):
        # fp32 x a little off bf16 values, away from zero by 0.4 of their last place: nearest
        # rounding (the GPU's) and truncation (the interpreter's numpy casts) both give them back
        exact = torch.randn(m, 96, generator=g).bfloat16().float()
        x = exact + exact.sign() * 0.4 * 2.0 ** (torch.frexp(exact).exponent.float() - 8)
        assert torch.equal(x.bfloat16().float(), exact) and not torch.equal(x, exact)
        r = torch.randn(m, 96, generator=g).bfloat16()
        nw, w = (torch.rand(96, generator=g) + 0.5).bfloat16(), torch.randn(40, 96, generator=g).bfloat16()
        # (the fixed-point form is off by < 4e-9 toward zero: far inside the 0.4 of a bf16 place)
        assert torch.equal(fixed_point.decode(fixed_point.encode(x)).bfloat16().float(), exact)
        want = rms_norm_linear(x.bfloat16(), r, nw, 1e-6, w, silu_out=silu)
        for form in (x, fixed_point.encode(x)):
            got = rms_norm_linear(form, r, nw, 1e-6, w, silu_out=silu)
            assert got[0].dtype == got[1].dtype == torch.bfloat16, (got[0].dtype, got[1].dtype)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), f"m={m} silu_out={silu} x {form.dtype}"
        unrounded = (x + r.float()).bfloat16()   # x added in fp32, not rounded first: what the check must catch
        assert not torch.equal(unrounded, want[1]), "rounding x first changes nothing here: the check could not fail"


def check_fixed_point_poison_reaches_the_stream(torch):
    """A poisoned fixed-point sum (a term kernels/fixed_point.py could not hold) comes out of gate_up's
    fold as NaN -- in the residual stream at its entries and in those tokens' outputs -- and the
    other tokens are untouched (seen failing with from_fixed's poison check removed: the stream then
    carried 2^28 where the NaN belongs)."""
    from workbench.kernels import fixed_point
    from workbench.kernels.fused_gemv import rms_norm_linear
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 96, generator=g)
    s = fixed_point.encode(x)
    s[0, 5] = fixed_point.encode(torch.tensor(2.0 ** 21))   # beyond LIMIT: a poisoned sum
    s[1, 9] = fixed_point.encode(torch.tensor(float("nan")))
    r = torch.randn(3, 96, generator=g).bfloat16()
    nw, w = (torch.rand(96, generator=g) + 0.5).bfloat16(), torch.randn(40, 96, generator=g).bfloat16()
    for silu in (False, True):
        y, stream = rms_norm_linear(s, r, nw, 1e-6, w, silu_out=silu)
        assert stream[0, 5].isnan() and stream[1, 9].isnan(), (stream[0, 5], stream[1, 9])
        assert y[:2].isnan().all() and not y[2].isnan().any(), f"silu_out={silu}: NaN where {y.isnan().any(1)}"
        assert not stream[2].isnan().any() and stream.isnan().sum() == 2


def silu_linear_err(torch, m, n, k, dtype, bias, act_for_ref=None):
    """silu_mul_linear on a strided gate_up view against plain_silu_and_mul + float64 F.linear."""
    from workbench.kernels.fused_gemv import silu_mul_linear
    from workbench.model.layers import plain_silu_and_mul
    gate_up = torch.randn(m, 2 * k + 8, dtype=dtype)[:, :2 * k]   # rows 2K + 8 apart
    w, b = torch.randn(n, k, dtype=dtype), (torch.randn(n, dtype=dtype) if bias else None)
    got = silu_mul_linear(gate_up, w, b)
    assert got.shape == (m, n) and got.dtype == dtype and torch.isfinite(got).all()
    act = (act_for_ref or plain_silu_and_mul)(gate_up)
    want = torch.nn.functional.linear(act.double(), w.double(), None if b is None else b.double())
    return _rel_err(got, want)


def check_silu_mul_linear(torch):
    from workbench.kernels import gemv as g
    for dtype, m, (n, k) in _cases(torch, g):
        err = silu_linear_err(torch, m, n, k, dtype, bias=m != 3)
        assert err < _tol(torch, dtype), f"{dtype} M={m} N={n} K={k}: rel err {err:.3g}"


def silu_out_err(torch, m, n, k, dtype, bias, act_for_ref=None):
    """rms_norm_linear(silu_out=True), gate_up with silu-and-mul in its epilogue, against
    plain_silu_and_mul of the fold's own gate_up (rms_norm_linear, checked above against the
    unfused forms); first checks that the down_proj after it equals the fold it replaces
    (rms_norm_linear -> silu_mul_linear) bit for bit at M = 1."""
    from workbench.kernels.fused_gemv import rms_norm_linear, silu_mul_linear
    from workbench.kernels.gemv import gemv
    from workbench.model.layers import plain_silu_and_mul
    x, res = 3 * torch.randn(m, k, dtype=dtype), torch.randn(m, k, dtype=dtype)
    nw, eps = (1 + 0.1 * torch.randn(k)).to(dtype), 1e-6
    w, b = torch.randn(n, k, dtype=dtype), (torch.randn(n, dtype=dtype) if bias else None)   # [gate | up]
    got, got_res = rms_norm_linear(x, res, nw, eps, w, b, silu_out=True)
    assert got.shape == (m, n // 2) and got.dtype == dtype and torch.isfinite(got).all()
    gate_up, want_res = rms_norm_linear(x, res, nw, eps, w, b)
    assert torch.equal(got_res, want_res), "silu_out changed the new residual"
    if m == 1:   # (M > 1: tl.dot, whose sums the interpreter may order by the rows' layout)
        w_down = torch.randn(24, n // 2, dtype=dtype)
        assert torch.equal(gemv(got, w_down), silu_mul_linear(gate_up, w_down)), "down_proj differs"
    return _rel_err(got, (act_for_ref or plain_silu_and_mul)(gate_up).double())


def check_silu_out(torch):
    from workbench.kernels import gemv as g
    for dtype, m, (n, k) in _cases(torch, g):
        err = silu_out_err(torch, m, n, k, dtype, bias=m != 3)
        assert err < _tol(torch, dtype), f"{dtype} M={m} N={n} K={k}: rel err {err:.3g}"
    uneven = {(36, 72, "m1"): g.GemvConfig(block_n=8, block_k=32)}   # 18 outputs, 4 a program: the last masked
    g.CONFIGS.update(uneven)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            err = silu_out_err(torch, 1, 36, 72, dtype, bias=True)
            assert err < _tol(torch, dtype), f"{dtype} M=1 N=36 K=72, block_n 8: rel err {err:.3g}"
    finally:
        g.CONFIGS.pop((36, 72, "m1"))
    try:
        g.launch(torch.ones(1, 8), torch.ones(6, 8), None, g.GemvConfig(block_n=3, block_k=8), torch.empty(1, 3),
                 silu_out=True)
    except ValueError:
        pass
    else:
        raise AssertionError("an odd block_n was taken for silu_out: its pairs would straddle programs")


def check_broken_fold_is_caught(torch):
    """The same checks, fed a wrong reference (the residual forgotten; gate and up swapped), must
    fail: they can tell a fold that skips part of the op."""
    err = norm_linear_err(torch, 1, 40, 72, torch.float32, False, False, residual_for_ref=torch.randn_like)
    assert err > 0.05, f"a forgotten residual passed (rel err {err:.3g}): the check cannot fail"
    swapped = lambda gu: torch.nn.functional.silu(gu.chunk(2, -1)[1]) * gu.chunk(2, -1)[0]  # noqa: E731
    err = silu_linear_err(torch, 3, 40, 72, torch.float32, True, act_for_ref=swapped)
    assert err > 0.05, f"a swapped gate/up passed (rel err {err:.3g}): the check cannot fail"
    err = silu_out_err(torch, 3, 40, 72, torch.float32, True, act_for_ref=swapped)
    assert err > 0.05, f"silu_out: a swapped gate/up passed (rel err {err:.3g}): the check cannot fail"


def check_qk_norm_rope_store(torch):
    """q/k norm + RoPE + cache write in one kernel against the unfused path: q and the cache equal
    fused_kernels' forms + store_kv exactly (the same rounding), plain torch's within _tol; the
    padding rows' slots and every unwritten slot keep the noise the cache started with."""
    from kernel_cases import qk_norm_rope_store_outputs
    for dtype, T, norm in product((torch.float32, torch.bfloat16), (1, 5, 16), (True, False)):
        outs, before, slots = qk_norm_rope_store_outputs(torch, 4, 2, 16, dtype, T, norm)
        what = f"{dtype} T={T} norm={norm}"
        for got, fused, plain in zip(*(outs[w] for w in ("one", "fused", "plain"))):
            assert torch.equal(got, fused), f"{what}: differs from the fused forms + store_kv"
            err = _rel_err(got, plain.double())
            assert err < _tol(torch, dtype), f"{what}: rel err {err:.3g} against plain torch"
        written = torch.zeros(before.shape[1] * before.shape[2], dtype=torch.bool)
        written[slots[slots >= 0]] = True
        for cache, start in zip(outs["one"][1:], before):
            assert torch.equal(cache.flatten(0, 1)[~written], start.flatten(0, 1)[~written]), f"{what}: stray write"


WAIT_HOOK = []   # what the (stubbed) PDL wait does: the kernel before finishing its writes


def check_qk_norm_rope_store_inputs_early(torch):
    """inputs_early=True (under PDL: position, cos/sin and slot before the wait) equals the kernel
    without it, bit for bit -- q and the cache -- and reads nothing of the kernel before's output
    before the wait: the QKV buffer holds NaN until the (stubbed) wait writes it, as the QKV GEMV
    would finish it. A read of q, k or v moved above the wait returns NaN."""
    from workbench.kernels import pdl
    from workbench.kernels.qk_norm_rope_store import qk_norm_rope_store
    from workbench.model.layers import RMSNorm, RotaryEmbedding
    Hq, Hk, D, T = 4, 2, 16, 5
    rotary = RotaryEmbedding(D, 64, 1e6)
    norms = [RMSNorm(D, 1e-6) for _ in range(2)]
    for n in norms:
        n.weight.data = 1 + 0.1 * torch.randn(D)
    real = 3 * torch.randn(T, (Hq + 2 * Hk) * D)
    pos, slots = torch.randint(0, 64, (T,)), torch.randperm(32)[:T]
    slots[1] = -1   # a padding row
    cache = torch.randn(2, 8, 4, Hk, D)

    def run(buf, early, qk_norms):
        kc, vc = cache[0].clone(), cache[1].clone()
        q, k, v = buf.split([Hq * D, Hk * D, Hk * D], dim=-1)
        q, k, v = q.unflatten(-1, (Hq, D)), k.unflatten(-1, (Hk, D)), v.unflatten(-1, (Hk, D))
        return qk_norm_rope_store(q, k, v, pos, rotary.cos_sin_cache, kc, vc, slots, *qk_norms,
                                  inputs_early=early), kc, vc
    for qk_norms in (norms, ()):   # Qwen3 (q/k norm) and Llama (RoPE alone)
        want = run(real.clone(), False, qk_norms)
        buf = torch.full_like(real, float("nan"))
        WAIT_HOOK[:] = [lambda: buf.copy_(real)]
        try:
            with pdl.launching(True):
                got = run(buf, True, qk_norms)
        finally:
            WAIT_HOOK.clear()
        for name, g, w in zip(("q", "k cache", "v cache"), got, want):
            assert torch.equal(g, w), (f"inputs_early, norm={bool(qk_norms)}: {name} differs (NaN: read before "
                                       f"the wait): {g.isnan().sum()} NaN")


def _tiny_outputs(path, prompts, params, fold: bool, before_install=lambda: None):
    """The CPU engine (all off) on the tiny checkpoint at `path`; fold: with fused_decode's hooks
    installed into the built model, as the runner does on a GPU (the CPU engine refuses the switch).
    before_install: called once the engine is built, before the hooks go in (the spies)."""
    from workbench import LLM, Optimizations
    from workbench.optimizations import fused_decode
    with LLM(path, opts=Optimizations.all_off(), device="cpu", enable_prefix_caching=False) as llm:
        if fold:
            before_install()
            fused_decode.install(llm.runner.model, True)
        return llm.generate(prompts, params, use_tqdm=False)


def _assert_same_outputs(torch, want, got, what: str) -> None:
    """The same greedy tokens, and logits within fp32's 1e-4."""
    for base, other in zip(want, got):
        assert other.token_ids == base.token_ids, (what, base.token_ids, other.token_ids)
        torch.testing.assert_close(other.logits, base.logits, rtol=1e-4, atol=1e-4)


def check_engine_tokens_match_all_off(torch):
    """Tiny fp32 model, 2 sequences x 5 greedy tokens: all-off against all-off with the
    fused_decode hooks installed -- the CPU engine refuses the switch, so it is installed into the
    built model, as the runner does on a GPU (decode_gemv stays off: the fold does not need it)."""
    import tempfile

    from workbench import SamplingParams
    from workbench.kernels import fused_gemv as fg
    from workbench.kernels import qk_norm_rope_store as qrs
    from workbench.model import make_checkpoint
    path = make_checkpoint(tempfile.mkdtemp(), "tiny", seed=0)
    prompts, params = [[5, 17, 99, 3], [42, 7, 250, 11, 64, 9, 1]], SamplingParams(
        temperature=0, max_tokens=5, ignore_eos=True, return_logits=True)
    calls = []

    def spy_on_the_folds():
        for module, name in ((fg, "rms_norm_gemv_op"), (qrs, "qk_norm_rope_store")):   # count the calls
            op = getattr(module, name)   # (rms_norm_gemv_op's last argument: silu_out)
            setattr(module, name, lambda *a, _op=op, _n=name: calls.append(_n + " silu" * (a[-1] is True)) or _op(*a))
    base = _tiny_outputs(path, prompts, params, fold=False)
    folded = _tiny_outputs(path, prompts, params, fold=True, before_install=spy_on_the_folds)
    want = {"rms_norm_gemv_op", "rms_norm_gemv_op silu", "qk_norm_rope_store"}
    assert want <= set(calls), f"the folds never ran: {set(calls)}"
    _assert_same_outputs(torch, base, folded, "fused_decode")


def check_ab_layer_forms_match_the_engine(torch):
    """The A/B script's layer forms (scripts/ab_decode_candidates.py: silu-in-down, the SiLU's earlier
    place; residual-epilogue, the residual in o_proj's and down_proj's epilogues; gate-up-early,
    o_proj's early trigger, a no-op on the CPU but the layer form is its own) give the engine's
    tokens with fused_decode's hooks installed (a tiny fp32 model, a 20-token prompt beside two short
    ones: the prefill past 16 tokens takes the layer's own path), and each really ran its kernels."""
    import sys
    import tempfile
    from pathlib import Path

    from workbench import SamplingParams
    from workbench.kernels import fused_gemv as fg
    from workbench.kernels import gemv as g
    from workbench.model import make_checkpoint
    from workbench.model.qwen3 import Attention, CausalLM, DecoderLayer
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import ab_decode_candidates as ab
    path = make_checkpoint(tempfile.mkdtemp(), "tiny", seed=0)
    prompts = [[5, 17, 99, 3], list(range(3, 23)), [42, 7, 250]]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, return_logits=True)
    spies = {"silu-in-down": (fg, "silu_mul_gemv_op", lambda a: True),   # gemv_op's last two arguments:
             "residual-epilogue": (g, "gemv_op", lambda a: a[-2] is not None),   # add,
             "gate-up-early": (g, "gemv_op", lambda a: a[-1] is True)}           # early_trigger
    base = _tiny_outputs(path, prompts, params, fold=True)
    for form, (module, name, counts) in spies.items():
        op, forwards, calls = getattr(module, name), (DecoderLayer.forward, CausalLM.forward, Attention.forward), []
        setattr(module, name, lambda *a, _op=op, _counts=counts: calls.append(_counts(a)) or _op(*a))
        try:
            ab.PATCHED[form]()   # patches DecoderLayer.forward, CausalLM.forward or Attention.forward: put back below
            runs = _tiny_outputs(path, prompts, params, fold=True)
        finally:
            DecoderLayer.forward, CausalLM.forward, Attention.forward = forwards
            setattr(module, name, op)
        assert any(calls), f"{form}: its kernels never ran"
        _assert_same_outputs(torch, base, runs, form)


def _main() -> None:
    import torch
    from kernel_cases import run_checks
    from kernel_cases import stub_pdl_wait

    from workbench.kernels import qk_norm_rope_store
    torch.manual_seed(0)
    stub_pdl_wait(qk_norm_rope_store, WAIT_HOOK)
    run_checks(CHECKS, globals(), torch)


if __name__ == "__main__":
    _main()
