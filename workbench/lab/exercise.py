"""The lab framework: an exercise is a signature, a reference, hidden cases and a check.

`check(student_fn)` grades in three stages, each a lesson of its own:
  alone    the function against the reference on visible and hidden cases (allclose, edge cases);
  engine   the function plugged into the real engine through a public seam
           (`LLM(..., overrides={...})`): greedy tokens must equal the reference engine's;
  measure  what it changed on this machine against the reference, with a stated bar.
A stage that cannot run here (no GPU, no seam for this piece) is *skipped* with the reason, never
faked; the score counts only the stages that ran. A failure raises `Wrong(message)`, and the
message says what was wrong and where to look -- the lesson, not just "assert failed".

The reference is the engine's own implementation wherever one exists; the solutions themselves
live only in the instructors' master notebooks (labs/), never in this package.
"""
from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

STAGES = ("alone", "engine", "measure")


class Wrong(AssertionError):
    """A check found a mistake; the message explains it in terms of the lesson."""


class Skip(Exception):
    """A stage cannot run on this machine; the message says why (e.g. 'needs a CUDA GPU')."""


@dataclass
class Result:
    exercise: str
    stages: dict[str, str] = field(default_factory=dict)      # stage -> 'pass' | 'fail' | 'skip'
    messages: list[str] = field(default_factory=list)
    effect: dict = field(default_factory=dict)                 # measured numbers, the bar, the machine

    @property
    def score(self) -> float:
        ran = [s for s in self.stages.values() if s != "skip"]
        return sum(s == "pass" for s in ran) / len(ran) if ran else 0.0

    @property
    def passed(self) -> bool:
        return "fail" not in self.stages.values() and self.stages.get("alone") == "pass"

    def __str__(self) -> str:
        marks = {"pass": "ok", "fail": "FAILED", "skip": "skipped"}
        ran = any(s != "skip" for s in self.stages.values())
        lines = [f"{self.exercise}: score {self.score:.2f}" if ran else
                 f"{self.exercise}: not checked (every stage skipped here, the reasons below)"]
        lines += [f"  {stage:8s} {marks[state]}" for stage, state in self.stages.items()]
        lines += [f"  - {m}" for m in self.messages]
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):   # IPython shows the report, not a dataclass dump
        p.text(str(self))


@dataclass
class Exercise:
    """One lab piece. `alone`, `engine` and `measure` take the student's function and raise
    Wrong or Skip; `measure` returns the effect dict (numbers + 'bar' + 'machine')."""
    name: str
    chapter: str
    signature: str
    alone: Callable
    engine: Callable | None = None
    measure: Callable | None = None
    may_return_none: bool = False   # None is an answer (graph_buckets: no bucket holds the batch)

    def check(self, student_fn, *, engine: bool = True, measure: bool = True, **measure_args) -> Result:
        _CHECK_RUNS.append({})   # the student's engine runs, shared by this check's stages
        try:
            return self._check(student_fn, engine, measure, measure_args)
        finally:
            _CHECK_RUNS.pop()

    def _check(self, student_fn, engine: bool, measure: bool, measure_args: dict) -> Result:
        result = Result(self.name)
        if (home := _engine_home(student_fn)) is not None:   # the engine's own piece handed in: nothing written
            result.stages = {"alone": "fail", "engine": "skip", "measure": "skip"}
            result.messages.append(f"alone: this is the engine's own implementation ({home}), not yours: write "
                                   "the function yourself (you may compare against it, not hand it in)")
            return result
        if not self.may_return_none:
            student_fn = _none_is_unwritten(student_fn, self.signature)
        stages = [("alone", self.alone), ("engine", self.engine if engine else None),
                  ("measure", self.measure if measure else None)]
        for stage, run in stages:
            if run is None:
                result.stages[stage] = "skip"
                if stage == "engine" and engine:   # the exercise has no seam into the engine, by design
                    result.messages.append("engine skipped: this piece has no seam into the engine (by design)")
                continue
            if stage != "alone" and result.stages.get("alone") != "pass":
                result.stages[stage] = "skip"
                result.messages.append(f"{stage}: not run, as the alone stage was skipped (its reason above)"
                                       if result.stages.get("alone") == "skip" else
                                       f"{stage}: not run until the function passes on its own")
                continue
            try:
                out = run(student_fn, **measure_args) if stage == "measure" else run(student_fn)
                result.stages[stage] = "pass"
                if stage == "measure" and out:
                    result.effect = out
                    result.messages.append(f"measure: {out.get('summary', out)}"
                                           + (f"; bar: {out['bar']} -- met" if "bar" in out else ""))
            except Skip as why:
                result.stages[stage] = "skip"
                result.messages.append(f"{stage} skipped: {why}")
            except Wrong as why:
                result.stages[stage] = "fail"
                result.messages.append(f"{stage}: {why}")
            except Exception as err:   # the student's code crashed: say where, keep grading honest
                result.stages[stage] = "fail"
                result.messages.append(f"{stage}: your function raised {type(err).__name__}: {err}")
        return result


def _engine_home(fn) -> str | None:
    """The workbench module `fn` comes from, if it is one of the engine's own pieces: a function, a
    class instance (a module such as NaiveAttention()), or a functools.partial of either. A student's
    function defined in a notebook lives in __main__; a wrapper that calls the engine is not caught."""
    inner = getattr(fn, "func", fn)   # functools.partial
    for candidate in (inner, type(inner)):
        module = getattr(candidate, "__module__", None) or ""
        if module == "workbench" or module.startswith("workbench."):
            return f"{module}.{getattr(candidate, '__qualname__', type(candidate).__name__)}"
    return None


@contextlib.contextmanager
def leaving_torch(allowed: Callable[[], bool] = lambda: False):
    """While open, note every way a tensor leaves torch (.numpy(), np.asarray's __array__, .tolist())
    unless `allowed()` says so at that moment; yields the list of those ways. A check that counts what
    torch does cannot see math done in numpy: it refuses a function that left."""
    left: list[str] = []
    escapes = {name: getattr(torch.Tensor, name) for name in ("numpy", "__array__", "tolist")}

    def noted(name, method):   # noted, and let through: the caller decides
        def leave(self, *args, **kwargs):
            if not allowed() and name not in left:
                left.append(name)
            return method(self, *args, **kwargs)
        return leave
    for name, method in escapes.items():
        setattr(torch.Tensor, name, noted(name, method))
    try:
        yield left
    finally:
        for name, method in escapes.items():
            setattr(torch.Tensor, name, method)


def _none_is_unwritten(fn, signature: str):
    """fn, saying so where it returns None -- a function not written yet (its body still `...` or
    `pass`) -- instead of letting a check trip over the None with an error about something else."""
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        out = fn(*args, **kwargs)
        if out is None:
            raise Wrong(f"your function returned None: not written yet? It must return "
                        f"{signature.partition('->')[2].strip() or 'a value'} ({signature}).")
        return out
    return guarded


# Shared helpers ----------------------------------------------------------------------------------
_CHECK_RUNS: list[dict] = []   # one dict per check() in progress (innermost last)


def once_per_check(key: str, run: Callable):
    """run() once per check(): its engine and measure stages share the result of the same student
    engine run. Outside a check (a stage called by itself) it simply runs."""
    if not _CHECK_RUNS:
        return run()
    runs = _CHECK_RUNS[-1]
    if key not in runs:
        runs[key] = run()
    return runs[key]


def call(fn, name: str, *args, expected=None):
    """fn(*args), where an exception it raises becomes Wrong naming the call and the answer expected
    (an error without its inputs leaves the student guessing which case broke)."""
    try:
        return fn(*args)
    except Wrong:
        raise
    except Exception as err:
        raise Wrong(f"{name}({', '.join(map(repr, args))}) raised {type(err).__name__}: {err}; expected "
                    f"{expected!r}") from err


def close(got: torch.Tensor, want: torch.Tensor, what: str, atol=1e-4, rtol=1e-4, hint: str = "") -> None:
    """allclose with a message naming the first wrong element and a hint."""
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{what}: expected a tensor, got {type(got).__name__}")
    if got.shape != want.shape:
        raise Wrong(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    bad = ~torch.isclose(got.float(), want.float(), atol=atol, rtol=rtol)
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise Wrong(f"{what}: element {index} is {got[index].item():.5g}, expected {want[index].item():.5g}"
                    + (f" ({int(bad.sum())} of {bad.numel()} wrong). {hint}" if hint else ""))


def kernel_device() -> str:
    """Where a Triton exercise's test tensors live: on the GPU when there is one, on the CPU under
    TRITON_INTERPRET=1 (the interpreter runs kernels as numpy; a compiled kernel cannot read CPU memory)."""
    import os
    return "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"


_TINY: dict[str, Path] = {}


def tiny_model() -> Path:
    """A tiny random-weight checkpoint (made once per process): real engine, seconds on a CPU."""
    if "path" not in _TINY:
        from workbench.model import make_checkpoint
        _TINY["path"] = make_checkpoint(Path(tempfile.mkdtemp(prefix="lab-tiny-")), "tiny", seed=0)
    return _TINY["path"]


_REFERENCE_RUNS: dict[str, tuple] = {}


def run_engine(prompts, overrides: dict | None = None, *, max_tokens: int = 8, params=None, **engine_kwargs):
    """Run prompts through a fresh engine; returns (token lists, engine stats, seconds).

    overrides plugs student code in through the public seam; None runs the reference engine, whose
    tokens and counters are remembered for the process (its seconds are re-measured by nobody)."""
    if overrides is None:
        key = repr((prompts, max_tokens, params, sorted(engine_kwargs.items())))
        if key not in _REFERENCE_RUNS:
            _REFERENCE_RUNS[key] = _run_engine(prompts, None, max_tokens, params, engine_kwargs)
        return _REFERENCE_RUNS[key]
    return _run_engine(prompts, overrides, max_tokens, params, engine_kwargs)


def _run_engine(prompts, overrides, max_tokens, params, engine_kwargs):
    from workbench import LLM, SamplingParams
    engine_kwargs = {"dtype": "float32", **engine_kwargs}   # fp32 on a GPU too: greedy tokens compare exactly
    params = params or SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    kwargs = dict(engine_kwargs, overrides=overrides) if overrides else engine_kwargs
    try:
        llm = LLM(tiny_model(), **kwargs)
    except TypeError as err:
        if "overrides" in str(err):
            raise Skip("this engine has no LLM(..., overrides=...) seam yet") from err
        raise
    with llm:
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        return [o.token_ids for o in outs], llm.stats, seconds


def same_tokens(student: list[list[int]], reference: list[list[int]], where: str) -> None:
    for i, (got, want) in enumerate(zip(student, reference)):
        if got != want:
            step = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise Wrong(f"request {i}: greedy token {step} is {got[step] if step < len(got) else None}, the "
                        f"reference engine gives {want[step] if step < len(want) else None}. {where}")


def prompts_for(seed: int = 0, lengths=(5, 23, 40)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 200, (n,), generator=g).tolist() for n in lengths]
