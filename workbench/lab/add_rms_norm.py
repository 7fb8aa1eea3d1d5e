"""Exercise 04: residual add + RMSNorm as one Triton kernel.

    add_rms_norm(x [T, N], residual [T, N] | None, weight [N], eps) -> (normed [T, N], new_residual [T, N])

new_residual = x + residual (x itself when residual is None); normed = new_residual /
sqrt(mean(new_residual**2) + eps) * weight, computed in float32 and stored in x's dtype. One
program per row: load x and residual once, write both outputs once -- the unfused torch form
round-trips every intermediate through memory. On a CPU, run it under TRITON_INTERPRET=1
(set before triton is imported).

Plugs in as `LLM(..., overrides={"add_rms_norm": fn})`. To compare with once yours passes: the model's unfused RMSNorm.
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .exercise import (Exercise, Skip, Wrong, close, kernel_device, leaving_torch, machine, prompts_for, run_engine,
                       same_tokens)


def reference(x, residual, weight, eps):
    new_res = x if residual is None else x + residual
    s = new_res.float()
    normed = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return normed.to(x.dtype), new_res   # computed in float32, stored in x's dtype (as the text says)


def _inputs(tokens=6, n=64, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x, r = torch.randn(tokens, n, generator=g) * scale, torch.randn(tokens, n, generator=g) * scale
    if tokens > 2:
        x[2] *= 1e-3
        r[2] *= 1e-3        # row 2 is tiny: eps decides its scale
    w = torch.rand(n, generator=g) + 0.5
    return tuple(t.to(kernel_device(), dtype) for t in (x, r, w))


# (tokens, n, dtype, scale): 48 is not a power of two (the block needs a mask); [10, 1000]: more rows
# than a fixed grid and a row wider than a fixed block; float16 at +-300: its sum of squares overflows
# float16 (max 65504) unless the kernel computes in float32
CASES = [(6, 64, torch.float32, 1.0), (5, 48, torch.float32, 1.0), (1, 128, torch.float32, 1.0),
         (10, 1000, torch.float32, 1.0), (3, 96, torch.float16, 150.0)]


def _unwritten(got: torch.Tensor, want: torch.Tensor, tokens: int, n: int, atol: float) -> str:
    """A hint where the wrong elements are all the rows from some row on, or all the columns from some
    column on: parts of the output no program wrote (what is there is whatever memory held)."""
    bad = ~torch.isclose(got.float(), want.float(), atol=atol, rtol=atol)
    rows, cols = bad.any(-1).nonzero().flatten(), bad.any(0).nonzero().flatten()
    if len(rows) and 0 < int(rows[0]) and len(rows) == tokens - int(rows[0]):
        return (f"rows {int(rows[0])}..{tokens - 1} of {tokens} are wrong, the rows before them right: no "
                f"program wrote them? Launch one program per row, grid = (T,) with T = x.shape[0]")
    if len(cols) and 0 < int(cols[0]) and len(cols) == n - int(cols[0]):
        return (f"columns {int(cols[0])}..{n - 1} of N={n} are wrong, the columns before them right: one "
                f"program must cover the whole row, BLOCK = triton.next_power_of_2(N), not a fixed size")
    return ""


def alone(fn) -> None:
    for tokens, n, dtype, scale in CASES:
        x, r, w = _inputs(tokens, n, dtype=dtype, scale=scale)
        eps, atol = 1e-2, (1e-4 if dtype == torch.float32 else 2e-3)
        got = fn(x.clone(), r.clone(), w, eps)
        if not isinstance(got, tuple) or len(got) != 2:
            raise Wrong("return a pair (normed, new_residual): the next layer adds its output to new_residual.")
        want = reference(x, r, w, eps)
        where = f"[{tokens}, {n}] {str(dtype).removeprefix('torch.')}"
        for out, expected, name in ((got[1], want[1], "new_residual"), (got[0], want[0], "normed")):
            if isinstance(out, torch.Tensor) and out.shape == expected.shape and (
                    hint := _unwritten(out, expected, tokens, n, atol)):
                raise Wrong(f"{name} for {where}: {hint}.")
        close(got[1], want[1], f"new_residual for {where}", atol=atol, rtol=atol, hint="new_residual is x + residual.")
        bad = ~torch.isclose(got[0].float(), want[0].float(), atol=atol, rtol=atol).all(-1)
        if bad.any():
            row = int(bad.nonzero()[0])
            rms = float(((got[0][row].float() / w.float()).pow(2).mean().sqrt()))
            s = want[1].float()
            eps_outside = w * s / (s.pow(2).mean(-1, keepdim=True).sqrt() + eps)
            if dtype != torch.float32:
                hint = (f"in {str(dtype).removeprefix('torch.')} (largest value 65504) the sum of squares "
                        f"overflows: load with .to(tl.float32), compute in float32, store in x's dtype")
            elif torch.allclose(got[0], eps_outside, atol=1e-4):
                hint = "you add eps outside the square root: it belongs inside, rsqrt(mean(x**2) + eps)"
            elif n & (n - 1):
                hint = (f"N={n} is not a power of two: one program covers the whole row (BLOCK = "
                        f"triton.next_power_of_2(N), not a fixed size), masks the loads beyond N (other=0) "
                        f"and divides the sum of squares by N, not by BLOCK")
            else:
                hint = ("normalize x + residual (not x) by the root of the *mean* of squares over the row, "
                        "then multiply by weight")
            raise Wrong(f"{where}: row {row} of normed / weight has RMS {rms:.3g}, expected "
                        f"{float((want[0][row].float() / w.float()).pow(2).mean().sqrt()):.3g}: {hint}.")
    x, _, w = _inputs()
    got = fn(x, None, w, 1e-6)
    close(got[0], reference(x, None, w, 1e-6)[0], "normed with residual=None",
          hint="with no residual, normalize x itself and return x as new_residual.")
    x, r, w = _inputs()
    for residual in (r, None):   # with a residual and without (the first layer's call)
        _one_launch(fn, x, residual, w)


def _one_launch(fn, x, r, w) -> None:
    fn(x, r, w, 1e-6)   # (once first: an autotuned kernel launches many times on its first call)
    with triton_launches() as launched:   # right numbers from torch ops are the unfused form, not the exercise
        fn(x, r, w, 1e-6)
    call = "one call" + (" with residual=None" if r is None else "")
    if launched.count != 1:
        raise Wrong(f"{launched.count} Triton kernel launches for {call}: the exercise is the add and the norm "
                    "as ONE Triton kernel (@triton.jit, launched as kernel[grid](...)) -- "
                    + ("torch ops give the right numbers, but they are the unfused form this replaces."
                       if launched.count == 0 else "fuse them into one program per row."))
    if launched.torch_math:
        raise Wrong(f"torch computed {', '.join(launched.torch_math)} outside your kernel ({call}): the add and the norm "
                    "both belong inside the one Triton kernel (torch may only allocate the outputs).")
    if launched.left_torch:
        raise Wrong(f"your function took tensors out of torch outside the kernel ({', '.join(launched.left_torch)}): "
                    "math done in numpy or Python is not the exercise -- the add and the norm belong inside "
                    "the one Triton kernel.")


# torch ops a fused answer may run outside its kernel: allocations, views and copies, no math
_NOT_MATH = ("empty", "new_empty", "zeros", "full", "set_", "copy_", "_to_copy", "clone", "contiguous", "view",
             "_unsafe_view", "as_strided", "reshape", "expand", "detach", "alias", "lift_fresh", "slice", "select",
             "squeeze", "unsqueeze", "t", "transpose", "permute", "fill_", "zero_")


class _Launches(TorchDispatchMode):
    """What one call did: Triton kernel launches (`count`), the torch ops that computed something
    outside them (`torch_math`, by name; ops the interpreter runs inside a launch are not the
    student's), and tensors taken out of torch outside them (`left_torch`: .numpy() and the like,
    where math escapes the count; the interpreter itself runs kernels in numpy, inside a launch)."""
    def __init__(self):
        super().__init__()
        self.count, self.inside, self.torch_math, self.left_torch = 0, 0, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if not self.inside and not name.startswith(_NOT_MATH) and name not in self.torch_math:
            self.torch_math.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def triton_launches():
    """Counts the Triton kernel launches made while open, compiled or under the interpreter
    (kernel[grid](...) calls its class's `run`), and records torch's math outside them."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    mode, plain = _Launches(), {cls: cls.run for cls in (JITFunction, InterpretedFunction)}

    def counted(run):
        def run_and_count(self, *args, **kwargs):
            mode.count += 1
            mode.inside += 1
            try:
                return run(self, *args, **kwargs)
            finally:
                mode.inside -= 1
        return run_and_count
    for cls, run in plain.items():
        cls.run = counted(run)
    try:   # (the interpreter itself runs a kernel in numpy: inside a launch, not the student's)
        with leaving_torch(allowed=lambda: mode.inside > 0) as left, mode:
            mode.left_torch = left
            yield mode
    finally:
        for cls, run in plain.items():
            cls.run = run


def engine(fn) -> None:
    prompts = prompts_for(4)
    want, _, _ = run_engine(prompts)
    got, _, _ = run_engine(prompts, overrides={"add_rms_norm": fn})
    same_tokens(got, want, "Every decoder layer calls this twice, on shapes the alone cases do not cover (as many "
                           "rows as the step has tokens, N = the model's hidden size): a small error grows layer "
                           "by layer, and a token that changes from run to run points at output rows or columns "
                           "your kernel never writes (check the grid and BLOCK against x.shape).")


def measure(fn, tokens: int = 64, n: int = 1024, repeats: int = 50) -> dict:
    if not torch.cuda.is_available():
        raise Skip("timing needs a CUDA GPU: under TRITON_INTERPRET=1 the kernel runs as numpy on the CPU, "
                   "so its time says nothing about memory traffic")
    x, r = (torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    w = torch.ones(n, device="cuda", dtype=torch.bfloat16)

    def per_call(f):
        for _ in range(3):
            f(x, r, w, 1e-6)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            f(x, r, w, 1e-6)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e3 / repeats
    mine, unfused = per_call(fn), per_call(reference)
    fused_bytes = 5 * tokens * n * 2   # read x, residual (+weight, small); write normed, new_residual
    effect = dict(student_us=mine, unfused_us=unfused, min_bytes=fused_bytes, machine=machine(),
                  bar="time <= the unfused torch ops'",
                  summary=f"[{tokens}, {n}] bf16: {mine:.1f} us per call vs unfused {unfused:.1f} us "
                          f"({unfused / mine:.2f}x) on {machine()}")
    if mine > unfused:
        raise Wrong(f"{effect['summary']}: slower than the unfused ops. One program per row, one load and one "
                    f"store per tensor?")
    return effect


EXERCISE = Exercise("add_rms_norm", "04", "add_rms_norm(x, residual, weight, eps) -> (normed, new_residual)",
                    alone, engine, measure)
