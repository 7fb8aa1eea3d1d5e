"""The pdl switch (programmatic dependent launch) on the CPU: its place on the board, that the flag
reaches every decode kernel's launch (recorded through the kernels' names, no GPU), and -- under
Triton's interpreter, with gdc_wait replaced by a no-op (the interpreter cannot run it) -- that the
GEMV's PDL form (first weight tile loaded before the wait) computes exactly what it does without.
On the GPU: tests/gpu/test_pdl_gpu.py. With the flag off, every kernel still passes
test_kernels_interpret.py, test_fused_decode_interpret.py and test_decode_attention.py."""
from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
from pathlib import Path

import pytest
import torch

from workbench.optimizations import pdl as pdl_switch
from workbench.optimizations.board import SWITCHES, Optimizations

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


# --- the board ----------------------------------------------------------------------------------
def test_switch_on_the_board_and_in_all_on_only():
    from workbench.measure.bench import bench_presets, stack_settings
    assert "pdl" in SWITCHES
    for name in ("all_off", "enforce_eager", "default"):
        assert not Optimizations.preset(name).pdl, name
    on = Optimizations.all_on()
    assert on.pdl and on.label().endswith("+compile+pdl")
    off = dataclasses.replace(on, pdl=False)
    assert bench_presets()["all_on-pdl"][1] == off   # the rung measured against the full stack
    assert "all_on+pdl" not in bench_presets()      # it would just be all_on again
    ladder = [s for s in stack_settings() if not s[0].endswith("alone")]
    assert ladder[-2:] == [("+compile", off), ("+pdl (all on)", on)]


def test_refused_on_cpu_with_the_reason():
    assert "needs a CUDA GPU" in Optimizations(pdl=True).why_not("cpu")["pdl"]
    with pytest.raises(ValueError, match="pdl=True"):
        Optimizations(pdl=True).resolve("cpu")
    ran, notes = Optimizations.all_on().resolve("cpu")   # a preset: dropped
    assert not ran.pdl and any(n.startswith("pdl=True: skipped") for n in notes)


@needs_triton
@pytest.mark.parametrize("capability, refused", [((8, 0), True), ((8, 9), True), ((9, 0), False), ((10, 0), False)])
def test_refused_before_hopper(monkeypatch, capability, refused):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    why = pdl_switch.why_not("cuda:0")
    assert (why is not None) == refused
    if refused:
        assert "9.0" in why and f"{capability[0]}.{capability[1]}" in why
    assert "untested with tensor_parallel_size=2" in pdl_switch.why_not("cuda:0", tp_size=2)


@needs_triton   # without Triton, that is the reason given first
def test_asked_about_cuda_without_a_gpu(monkeypatch):
    """all_on.resolve("cuda", ...) is asked on CPU machines too (plans, tests): a reason, not a crash."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "torch sees none" in pdl_switch.why_not("cuda")


# --- the flag reaches every decode kernel launch ------------------------------------------------
@pytest.fixture
def flag():
    """The kernels' flag, set through the switch as the runner does; off again afterwards."""
    kernels_pdl = pytest.importorskip("workbench.kernels.pdl")
    yield kernels_pdl
    pdl_switch.install(None, False)


@needs_triton
def test_install_sets_the_one_flag(flag, monkeypatch):
    pdl_switch.install(None, True)
    assert flag.launch_options() == {"USE_PDL": True, "launch_pdl": True}
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)   # torch.compile tracing: off
    assert flag.launch_options() == {"USE_PDL": False}
    monkeypatch.undo()
    pdl_switch.install(None, False)
    assert flag.launch_options() == {"USE_PDL": False}


@needs_triton
def test_each_engine_launches_with_its_own_flag(flag, tiny_ckpt, monkeypatch):
    """Two engines in one process: the one built last must not decide how the first launches
    (its eager steps: prefill, and every step without CUDA graphs). The CPU refuses pdl, so the
    board is told it may run here; with nothing else on, no Triton kernel launches."""
    from workbench import LLM, SamplingParams
    monkeypatch.setattr(pdl_switch, "why_not", lambda device, tp_size=1: None)
    seen = []
    with LLM(tiny_ckpt, opts=Optimizations(pdl=True), device="cpu") as with_pdl, \
            LLM(tiny_ckpt, opts=Optimizations(), device="cpu") as without:
        for llm in (with_pdl, without, with_pdl):
            forward = llm.runner.forward
            llm.runner.forward = lambda *a, _f=forward: seen.append(flag.launch_options()["USE_PDL"]) or _f(*a)
            llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
            llm.runner.forward = forward
    assert seen == [True] * 2 + [False] * 2 + [True] * 2, seen


# l2_prefetch's side-stream kernel runs on a stream of its own: no kernel of the step's chain
# waits for it or is waited for by it, so it has no PDL flag
OFF_THE_CHAIN = {"_prefetch_only_kernel"}


def _decode_kernels():
    """{name: (module, JITFunction)} of every Triton kernel of the decode path's chain."""
    import triton

    from workbench.kernels import decode_attention, gemv, qk_norm_rope_store, triton_ops
    return {name: (module, obj) for module in (gemv, qk_norm_rope_store, decode_attention, triton_ops)
            for name, obj in vars(module).items()
            if name.endswith("_kernel") and isinstance(obj, triton.JITFunction) and name not in OFF_THE_CHAIN}


def _launch_every_wrapper():
    """Call each decode kernel's Python wrapper once on small CPU tensors (split-K and split-KV on,
    so the second kernels launch too)."""
    from workbench.kernels import triton_ops as ops
    from workbench.kernels.decode_attention import paged_decode_attention
    from workbench.kernels.fused_gemv import rms_norm_linear, silu_mul_linear
    from workbench.kernels.gemv import GemvConfig, gemv
    from workbench.kernels.qk_norm_rope_store import qk_norm_rope_store
    from workbench.model.layers import RMSNorm
    x, w = torch.randn(1, 64), torch.randn(8, 64)
    gemv(x, w, None, GemvConfig(block_n=4, block_k=32, split_k=2))
    rms_norm_linear(x, x, torch.ones(64), 1e-6, w)
    silu_mul_linear(torch.randn(1, 128), w)
    q, k, v = torch.randn(1, 4, 16), torch.randn(1, 2, 16), torch.randn(1, 2, 16)
    pos, cos_sin = torch.zeros(1, dtype=torch.long), torch.randn(8, 16)
    cache = torch.zeros(2, 4, 2, 16)
    qk_norm_rope_store(q, k, v, pos, cos_sin, cache, cache.clone(), torch.zeros(1, dtype=torch.long),
                       RMSNorm(16, 1e-6), RMSNorm(16, 1e-6))
    for merge in ("kernel", "tagged"):
        paged_decode_attention(q, cache, cache.clone(), torch.tensor([3]), torch.zeros(1, 2, dtype=torch.int32), 0.25,
                               splits=2, merge=merge)
    paged_decode_attention(q, cache, cache.clone(), torch.tensor([3]), torch.zeros(1, 2, dtype=torch.int32), 0.25,
                           splits=2, o_proj_weight=torch.randn(8, 64))   # Choice 8: o_proj in the merge
    ops.fused_add_rms_norm(x, x, torch.ones(64), 1e-6)
    ops.silu_and_mul(torch.randn(1, 128))
    ops.apply_rope(q, k, pos, cos_sin)
    ops.qk_norm_rope(q, k, pos, cos_sin, torch.ones(16), torch.ones(16), 1e-6, 1e-6)
    ops.store_kvcache(k, v, cache, cache.clone(), torch.zeros(1, dtype=torch.long))


@needs_triton
@pytest.mark.parametrize("on", [True, False])
def test_the_flag_reaches_every_decode_kernel(flag, monkeypatch, on):
    kernels = _decode_kernels()
    assert len(kernels) == 12, sorted(kernels)   # a new kernel: add it to _launch_every_wrapper
    launches = {}

    class Recorder:   # stands in for a kernel: kernel[grid](*args, **kwargs) records kwargs
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.setdefault(self.name, []).append(kwargs)

    for name, (module, jit_fn) in kernels.items():
        assert "USE_PDL" in jit_fn.arg_names, f"{name} has no USE_PDL flag"
        monkeypatch.setattr(module, name, Recorder(name))
    pdl_switch.install(None, on)
    _launch_every_wrapper()
    assert set(launches) == set(kernels), f"not launched: {set(kernels) - set(launches)}"
    for name, calls in launches.items():
        for kwargs in calls:
            assert kwargs["USE_PDL"] is on, name
            assert kwargs.get("launch_pdl", False) is on, name   # the attribute only with the wait


# --- under the interpreter: the GEMV's PDL form computes what it does without ------------------
CHECKS = ["gemv_pdl_equals_off", "folds_pdl_equal_off"]


@pytest.fixture(scope="module")
def verdicts() -> dict:
    from kernel_cases import interpreter_verdicts
    return interpreter_verdicts(__file__)


@needs_triton
@pytest.mark.parametrize("name", CHECKS)
def test_pdl_form_matches_under_the_interpreter(verdicts, name):
    assert verdicts[name] == "ok", verdicts[name]


def _both(fn):
    """fn() with PDL off, then on (gdc_wait a no-op: the interpreter cannot run it)."""
    from workbench.kernels import decode_attention, gemv, pdl, qk_norm_rope_store, triton_ops

    def no_wait(USE_PDL):   # the interpreter runs kernels as Python: a plain function will do
        pass

    for module in (decode_attention, gemv, qk_norm_rope_store, triton_ops):   # each imports it by name
        module.pdl_wait = no_wait   # for good: the interpreter resolves it once, at a kernel's first run
    pdl.set_enabled(False)
    off = fn()
    pdl.set_enabled(True)
    try:
        on = fn()
    finally:
        pdl.set_enabled(False)
    return off, on


def check_gemv_pdl_equals_off():
    from kernel_cases import gemv_interpreter_cases

    from workbench.kernels.gemv import GemvConfig, gemv
    for m, n, k, cfg in gemv_interpreter_cases(GemvConfig):
        x, w, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(n, k, dtype=torch.bfloat16), torch.randn(n)
        off, on = _both(lambda: gemv(x, w, b.to(torch.bfloat16), cfg))
        assert torch.equal(off, on), (m, n, k, cfg)


def check_folds_pdl_equal_off():
    from workbench.kernels.fused_gemv import rms_norm_linear, silu_mul_linear
    for m in (1, 3):
        x, r = torch.randn(m, 96, dtype=torch.bfloat16), torch.randn(m, 96, dtype=torch.bfloat16)
        nw, w = torch.rand(96, dtype=torch.bfloat16) + 0.5, torch.randn(40, 96, dtype=torch.bfloat16)
        off, on = _both(lambda: rms_norm_linear(x, r, nw, 1e-6, w))
        assert torch.equal(off[0], on[0]) and torch.equal(off[1], on[1]), m
        gu = torch.randn(m, 192, dtype=torch.bfloat16)
        off, on = _both(lambda: silu_mul_linear(gu, w))
        assert torch.equal(off, on), m


if __name__ == "__main__":
    from kernel_cases import run_checks   # tests/ is this script's folder
    torch.manual_seed(0)
    run_checks(CHECKS, globals())


def test_the_early_trigger_is_asked_by_name_and_only_under_pdl(monkeypatch):
    """launch_options(early_trigger=True) is the early form (USE_PDL == 2) only with PDL on; the
    default stays USE_PDL True, so no kernel triggers early unless its launch asks."""
    from workbench.kernels import pdl
    for on in (True, False):
        monkeypatch.setattr(pdl, "ENABLED", on)
        early, default = pdl.launch_options(early_trigger=True), pdl.launch_options()
        assert (early["USE_PDL"], type(early["USE_PDL"])) == ((2, int) if on else (False, bool))
        assert default["USE_PDL"] is on and early.get("launch_pdl", False) is on


def test_launching_sets_the_flag_for_a_block_and_restores_it():
    from workbench.kernels import pdl
    before = pdl.ENABLED
    with pdl.launching(True):
        assert pdl.launch_options() == {"USE_PDL": True, "launch_pdl": True}
        with pdl.launching(False):
            assert pdl.launch_options() == {"USE_PDL": False}
        assert pdl.ENABLED
    assert pdl.ENABLED == before


def test_torch_compile_can_copy_every_traced_kernel_with_its_helpers():
    """torch.compile re-emits a traced Triton kernel (fused_kernels' forms) from its source, with the
    @triton.jit helpers it calls by bare name; a helper reached as `module.attr` is not copied, and
    the compiled kernel fails with a NameError on the GPU (pdl.wait did, in all_on, session 7)."""
    import triton
    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code

    from workbench.kernels import triton_ops
    kernels = {n: k for n, k in vars(triton_ops).items() if isinstance(k, triton.JITFunction) and n.endswith("_kernel")}
    assert kernels
    for name, kernel in kernels.items():
        src = user_defined_triton_kernel_transitive_closure_source_code(kernel)
        path = Path(tempfile.mkdtemp()) / f"copied_{name}.py"   # triton.jit reads its source from a file
        path.write_text("import triton\nimport triton.language as tl\n" + src)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        called = {n for n in kernel.fn.__code__.co_names if isinstance(kernel.fn.__globals__.get(n), triton.JITFunction)}
        missing = called - set(vars(module))
        assert not missing, f"{name}: the copy lacks {missing}"
        assert "pdl." not in src, f"{name} calls a helper as module.attr: torch.compile will not copy it"


TAGGED_KERNELS = {"_attention_merge_tagged_kernel"}   # poll tagged words instead of waiting (pdl_trigger)


def test_every_pdl_kernel_waits_before_it_returns_and_triggers_only_after_waiting():
    """What lets a kernel read, before its wait, data written two or more kernels before it
    (decode attention's lengths and first K/V tile, qk_norm_rope_store's inputs_early): every
    kernel of ours schedules its dependent only after its own wait. So gdc_launch_dependents may
    appear only inside pdl_wait, after gdc_wait -- except in the early-trigger form, USE_PDL == 2,
    which a launch asks for by name (launch_options(early_trigger=True)) where its dependent reads
    nothing before its wait that a kernel writes (kernels/pdl.py) -- and every kernel that takes USE_PDL calls
    pdl_wait on every path, before any return (a kernel that returned first would let its
    dependent start while the kernel before it still ran). The one other form: a kernel that polls
    tagged words instead of waiting (TAGGED_KERNELS, kernels/tagged.py) calls pdl_trigger, after its
    poll_tagged. Read from the kernels' source."""
    import ast
    from pathlib import Path

    import workbench.kernels as kernels
    folder = Path(kernels.__file__).parent
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            names = [n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", None)
                     for n in ast.walk(node) if isinstance(n, (ast.Attribute, ast.Name))]
            where = f"{path.name}:{node.name}"
            if "gdc_launch_dependents" in names and (path.name, node.name) == ("pdl.py", "pdl_trigger"):
                continue   # the tagged kernels' trigger: checked where they call it, below
            if "gdc_launch_dependents" in names:
                assert (path.name, node.name) == ("pdl.py", "pdl_wait"), f"{where} triggers its dependent itself"
                early, default = node.body[-1], node.body[-1].orelse[0]   # if USE_PDL == 2: ... elif USE_PDL: ...
                assert ast.unparse(early.test) == "USE_PDL == 2" and ast.unparse(default.test) == "USE_PDL", where
                calls = [n.func.attr for n in ast.walk(default) if isinstance(n, ast.Call)
                         and isinstance(n.func, ast.Attribute)]
                assert calls.index("gdc_wait") < calls.index("gdc_launch_dependents"), "pdl_wait triggers before waiting"
            is_kernel = any("jit" in ast.unparse(d) for d in node.decorator_list)
            if not is_kernel or "USE_PDL" not in [a.arg for a in node.args.args] or node.name == "pdl_wait":
                continue
            calls = lambda name: [n.lineno for n in ast.walk(node)  # noqa: E731
                                  if isinstance(n, ast.Call) and ast.unparse(n.func) == name]
            waits, returns = calls("pdl_wait"), [n.lineno for n in ast.walk(node) if isinstance(n, ast.Return)]
            if calls("pdl_trigger"):   # a tagged kernel: no wait; its trigger once its words are in
                assert node.name in TAGGED_KERNELS, f"{where} calls pdl_trigger: list it in TAGGED_KERNELS"
                assert not waits and not returns, where
                polls, triggers = calls("poll_tagged"), calls("pdl_trigger")
                assert len(triggers) == 1 and polls and max(polls) < triggers[0], f"{where} triggers before its poll"
                assert any(ast.unparse(s).startswith("pdl_trigger(") for s in node.body), \
                    f"{where}: pdl_trigger inside a loop or a branch (every program must trigger)"
                continue
            assert waits, f"{where} takes USE_PDL but never calls pdl_wait"
            assert all(r > min(waits) for r in returns), f"{where} may return before it waits"
            # the wait is on every path: a top-level call, or a top-level `if USE_PDL:` (off, the
            # wait is a no-op anyway), or a top-level if with the wait in both arms
            top = [s for s in node.body if "pdl_wait" in ast.unparse(s)]
            assert top, f"{where}: pdl_wait only inside a loop or a nested block"
            first = top[0]
            if isinstance(first, ast.If) and ast.unparse(first.test) != "USE_PDL":
                arms = ["".join(map(ast.unparse, arm)) for arm in (first.body, first.orelse)]
                assert all("pdl_wait" in arm for arm in arms), f"{where}: pdl_wait in one arm of an if only"
