"""The Triton kernels vs their plain-torch references, on the CPU, under Triton's interpreter.

TRITON_INTERPRET=1 makes @triton.jit kernels run as numpy code on CPU tensors -- slow, but enough
to check the indexing and the math of small shapes without a GPU. The variable must be set before
triton creates the kernels, so the checks run in one child process (this file, run as a script)
and each pytest test reads its verdict. The same kernels run on CUDA in tests/gpu/.
"""
from __future__ import annotations

import importlib.util
from itertools import product

import pytest

CHECKS = ["store_kvcache", "fused_add_rms_norm", "rms_norm_per_head", "silu_and_mul", "apply_rope",
          "qk_norm_rope", "gemv", "gemv_broken_split_is_caught", "gemv_add", "gemv_fallback_and_hook"]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")


@pytest.fixture(scope="module")
def verdicts() -> dict:
    from kernel_cases import interpreter_verdicts
    return interpreter_verdicts(__file__)


@pytest.mark.parametrize("name", CHECKS)
def test_kernel_matches_torch(verdicts, name):
    assert verdicts[name] == "ok", verdicts[name]


# --- the checks, run in the child process ----------------------------------------------------
# References mirror the unfused forms in workbench/model/layers.py and attention/kv_cache.py.
DTYPES = ("float32", "bfloat16")


def _close(torch, got, want, dtype):
    tol = 0 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol + 1e-5, rtol=tol + 1e-5)


def check_store_kvcache(torch, ops):
    for dtype in (torch.float32, torch.bfloat16):
        T, H, D, blocks, bs = 6, 2, 8, 4, 4
        kv = torch.randn(T, 3 * H * D, dtype=dtype)        # k and v as strided views, like a QKV split
        k, v = kv[:, :H * D].view(T, H, D), kv[:, H * D:2 * H * D].view(T, H, D)
        slots = torch.tensor([5, 0, -1, 15, 9, -1], dtype=torch.int64)   # -1: padding, skipped
        k_cache = torch.full((blocks, bs, H, D), float("nan"), dtype=dtype)
        v_cache = torch.full_like(k_cache, float("nan"))
        ops.store_kvcache(k, v, k_cache, v_cache, slots)
        keep = slots >= 0
        assert torch.equal(k_cache.view(-1, H, D)[slots[keep]], k[keep])
        assert torch.equal(v_cache.view(-1, H, D)[slots[keep]], v[keep])
        untouched = torch.ones(blocks * bs, dtype=torch.bool)
        untouched[slots[keep]] = False
        assert k_cache.view(-1, H, D)[untouched].isnan().all(), "wrote outside its slots"


def _ref_norm(torch, x, weight, eps):
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def check_fused_add_rms_norm(torch, ops):
    for dtype in (torch.float32, torch.bfloat16):
        x, res = torch.randn(5, 48, dtype=dtype), torch.randn(5, 48, dtype=dtype)   # 48: not a power of 2
        w = (1 + 0.1 * torch.randn(48)).to(dtype)
        out, new_res = ops.fused_add_rms_norm(x, res, w, 1e-6)
        # On a GPU the sum rounds exactly like torch's (tests/gpu checks bit-equality); the
        # interpreter truncates float32 -> bfloat16 instead of rounding, so allow 1 bf16 ulp here.
        _close(torch, new_res, x + res, dtype)
        _close(torch, out, _ref_norm(torch, x + res, w, 1e-6), dtype)
        out, new_res = ops.fused_add_rms_norm(x, None, w, 1e-6)
        assert new_res is x
        _close(torch, out, _ref_norm(torch, x, w, 1e-6), dtype)


def check_rms_norm_per_head(torch, ops):
    for dtype in (torch.float32, torch.bfloat16):
        qkv = torch.randn(4, 6 * 16, dtype=dtype)
        q = qkv[:, :4 * 16].view(4, 4, 16)                  # strided [T, heads, D] view
        w = torch.randn(16).to(dtype)
        _close(torch, ops.rms_norm(q, w, 1e-6), _ref_norm(torch, q, w, 1e-6), dtype)


def check_silu_and_mul(torch, ops):
    for dtype in (torch.float32, torch.bfloat16):
        gate_up = 3 * torch.randn(5, 2 * 40, dtype=dtype)
        gate, up = gate_up.float().chunk(2, dim=-1)
        want = (torch.nn.functional.silu(gate) * up).to(dtype)
        _close(torch, ops.silu_and_mul(gate_up), want, dtype)


def check_apply_rope(torch, ops):
    for dtype in (torch.float32, torch.bfloat16):
        T, Hq, Hk, D, max_pos = 5, 4, 2, 16, 64
        inv_freq = 1.0 / 10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
        freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
        table = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
        qkv = torch.randn(T, (Hq + 2 * Hk) * D, dtype=dtype)
        q, k = qkv[:, :Hq * D].view(T, Hq, D), qkv[:, Hq * D:(Hq + Hk) * D].view(T, Hk, D)
        pos = torch.tensor([0, 7, 3, 63, 1], dtype=torch.int64)
        cos, sin = table[pos].unsqueeze(1).chunk(2, dim=-1)

        def rotate(x):
            x1, x2 = x.float().chunk(2, dim=-1)
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(dtype)

        want_q, want_k, qkv_before = rotate(q), rotate(k), qkv.clone()
        got_q, got_k = ops.apply_rope(q, k, pos, table)
        _close(torch, got_q, want_q, dtype)
        _close(torch, got_k, want_k, dtype)
        assert torch.equal(qkv, qkv_before), "apply_rope must leave its input alone"


def check_qk_norm_rope(torch, ops):
    for heads, dtype, T in product([(4, 2, 16), (16, 8, 128)], (torch.float32, torch.bfloat16),
                                   (1, 7, 33)):   # tiny and Qwen3-0.6B heads
        _check_qk_norm_rope_case(torch, *heads, dtype, T)


def _check_qk_norm_rope_case(torch, Hq, Hk, D, dtype, T):
    """Fused q/k norm + RoPE (one kernel) vs the unfused modules, on strided q/k of one QKV."""
    from kernel_cases import qk_norm_rope_outputs   # tests/ is this script's folder
    _, _, (want_q, want_k), (got_q, got_k) = qk_norm_rope_outputs(torch, Hq, Hk, D, dtype, T)
    # float32: the same math up to summation order. bfloat16: the interpreter truncates (not
    # rounds) at each of the three casts, up to ~2 bf16 ulps of |x| ~ 4; tests/gpu checks
    # that on a GPU the rounding is torch's own.
    atol, rtol = (2e-6, 1e-6) if dtype == torch.float32 else (8e-2, 2e-2)
    for got, want in ((got_q, want_q), (got_k, want_k)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol,
                                   msg=lambda m: f"{Hq, Hk, D, dtype, T}: {m}")


def check_gemv(torch, ops):
    """The decode GEMV vs float64 F.linear: M in {1, 3, 16}, with/without bias, split-K on/off, odd shapes."""
    from kernel_cases import gemv_interpreter_cases, gemv_rel_err

    from workbench.kernels.gemv import GemvConfig
    for (m, n, k, cfg), bias in product(gemv_interpreter_cases(GemvConfig), (False, True)):
        err = gemv_rel_err(torch, m, n, k, torch.bfloat16, bias, cfg, x_stride=k + 24)
        assert err < 1e-2, f"M={m} N={n} K={k} bias={bias} {cfg}: rel err {err:.3g}"
    err = gemv_rel_err(torch, 2, 40, 72, torch.float32, True, GemvConfig(block_n=16, block_k=32, split_k=3))
    assert err < 1e-5, f"float32: rel err {err:.3g}"


def check_gemv_broken_split_is_caught(torch, ops):
    """A deliberately wrong launch (each K slice half as long as it must be: half of K is never
    read) must fail the same check that the real launches pass."""
    import triton

    from workbench.kernels import gemv as g
    x, w = torch.randn(1, 256, dtype=torch.bfloat16), torch.randn(16, 256, dtype=torch.bfloat16)
    part, out = torch.empty(2, 1, 16), torch.empty(1, 16, dtype=torch.bfloat16)
    g._gemv_kernel[(triton.cdiv(16, 4), 2)](x, w, w, part, 1, 16, 256, 256, 64, x, x, x, 0.0, x, 0, X_FORM=g.PLAIN,
                                            HAS_RES=False, HAS_BIAS=False, SPLIT=True,
                                            EVEN_K=False, EVEN_N=True, DOT_FP32=True, BLOCK_M=1, BLOCK_N=4,
                                            BLOCK_K=32, USE_PDL=False)
    g._splitk_reduce_kernel[(1,)](part, w, out, 16, 16, SPLIT_K=2, HAS_BIAS=False, BLOCK=1024, USE_PDL=False)
    ref = torch.nn.functional.linear(x.double(), w.double())
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err > 0.3, f"the broken launch passed the check (rel err {err:.3g}): the check cannot fail"


def check_gemv_add(torch, ops):
    """gemv's `add` (the residual stream in the epilogue; the A/B variant residual-epilogue) equals
    torch's `gemv(x, w) + residual` -- the product rounded, then the sum -- with and without
    split-K (the reduce kernel adds it then): float32 bit for bit; bf16 within rtol 2^-7 (a bf16
    step or two), as the interpreter rounds to bf16 toward zero where torch rounds to nearest (the
    GPU test asks bit for bit); a wrong shape, dtype or layout is refused, not copied (a copy would
    be a kernel just before the GEMV, whose output the GEMV may not read before its wait)."""
    from kernel_cases import gemv_interpreter_cases

    from workbench.kernels.gemv import GemvConfig, gemv
    for (m, n, k, cfg), dtype in product(gemv_interpreter_cases(GemvConfig), (torch.bfloat16, torch.float32)):
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        b, residual = torch.randn(n, dtype=dtype), 4 * torch.randn(m, n, dtype=dtype)
        want = gemv(x, w, b, cfg) + residual
        got = gemv(x, w, b, cfg, add=residual)
        ulp = 0 if dtype == torch.float32 else 2 ** -7
        torch.testing.assert_close(got, want, rtol=ulp, atol=0, msg=lambda e: f"M={m} N={n} K={k} {dtype} {cfg}: {e}")
    for bad in (residual[:, :-1], residual.double(), torch.randn(n, m, dtype=dtype).t()):
        try:
            gemv(x, w, b, cfg, add=bad)
        except ValueError:
            continue
        raise AssertionError(f"an add {tuple(bad.shape)} {bad.dtype} stride {bad.stride()} was taken")
    try:   # with the early trigger, `add` would have to be three launches old: refused (gemv.launch)
        gemv(x, w, b, cfg, add=residual, early_trigger=True)
    except ValueError:
        pass
    else:
        raise AssertionError("add with early_trigger was taken")


def check_gemv_fallback_and_hook(torch, ops):
    """More than MAX_M tokens go to F.linear (bit-exact); the model's Linear hook runs the GEMV."""
    from workbench.kernels import gemv as g
    from workbench.optimizations import decode_gemv
    from workbench.parallel.tensor_parallel import Linear
    layer = Linear(64, 40, bias=True).to(torch.bfloat16)
    decode_gemv.install(layer, True)
    big = torch.randn(g.MAX_M + 1, 64, dtype=torch.bfloat16)
    real, calls = g.gemv, []
    g.gemv = lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw)
    try:
        assert torch.equal(layer(big), torch.nn.functional.linear(big, layer.weight, layer.bias))
        assert calls == [], "M > MAX_M must fall back to F.linear"
        x = torch.randn(2, 3, 64, dtype=torch.bfloat16)      # [batch, tokens, K]: 6 rows
        got, want = layer(x), torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
        assert calls == [(6, 64)] and got.shape == (2, 3, 40)
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-2
        calls.clear()   # a shape the sweep measured cuBLAS faster on (CONFIGS says None): F.linear
        g.CONFIGS[(40, 64, "m16")] = None
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias)) and calls == []
        assert layer(x[:1, :1]).shape == (1, 1, 40) and calls == [(1, 64)], "M = 1 is its own bucket"
    finally:
        g.gemv = real
        g.CONFIGS.pop((40, 64, "m16"), None)
    decode_gemv.install(layer, False)
    assert not layer.decode_gemv


def _main() -> None:
    import torch

    from kernel_cases import run_checks   # tests/ is this script's folder
    from workbench.kernels import triton_ops as ops
    torch.manual_seed(0)
    run_checks(CHECKS, globals(), torch, ops)


if __name__ == "__main__":
    _main()
