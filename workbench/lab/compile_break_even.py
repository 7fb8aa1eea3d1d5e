"""Exercise 06: when does torch.compile pay for itself? From your own measured numbers.

    break_even_tokens(compile_s: float, eager_tok_s: float, compiled_tok_s: float) -> float

Compiling costs compile_s seconds once; after that each token saves 1/eager - 1/compiled
seconds. Return the number of generated tokens after which the compiled engine is ahead:
compile_s / (1/eager_tok_s - 1/compiled_tok_s); math.inf when compiling does not speed a token
up (compiled_tok_s <= eager_tok_s). Raise ValueError for a non-positive rate or negative time.

No engine seam: pass your measured compile_s and rates to check(...) (the lab measures them with
measure_compile above; chapter 06 measures them too).
"""
from __future__ import annotations

import functools
import math
import statistics

from workbench.measure.timing import faster_of, time_runs

from .exercise import Exercise, Skip, Wrong, call, machine

CASES = [(30.0, 100.0, 150.0), (60.0, 1000.0, 1100.0), (5.0, 20.0, 20.0), (5.0, 20.0, 15.0), (0.0, 10.0, 20.0)]


def _formula(compile_s, eager, compiled):   # the stated formula, used to judge the student's numbers
    return math.inf if compiled <= eager else compile_s / (1 / eager - 1 / compiled)


def alone(fn) -> None:
    for args in CASES:
        want = _formula(*args)
        got = call(fn, "break_even_tokens", *args, expected=want)
        if want == math.inf and got != math.inf:
            raise Wrong(f"break_even_tokens{args} = {got!r}: when the compiled engine is not faster it never "
                        f"catches up; return math.inf.")
        if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            ratio = args[2] / args[1]
            hint = ("A speed-up ratio is not a time saved per token: the saving is 1/eager - 1/compiled seconds."
                    if ratio > 1 and math.isclose(got, args[0] * args[1] / (ratio - 1), rel_tol=1e-6) else
                    "A negative count: you subtracted in the wrong order -- the saving per token is 1/eager - "
                    "1/compiled (eager's seconds per token minus compiled's)."
                    if want > 0 and math.isclose(got, -want, rel_tol=1e-6) else "")
            raise Wrong(f"break_even_tokens{args} = {got!r}, expected {want:.6g} tokens: compile_s divided by "
                        f"the seconds saved per token. {hint}")
    for bad in ((1.0, 0.0, 10.0), (1.0, 10.0, -1.0), (-1.0, 10.0, 20.0)):
        try:
            fn(*bad)
            what = "returned"
        except ValueError:
            continue
        except Wrong:   # (the check's own: the function returned None)
            what = "returned None"
        except Exception as err:   # e.g. ZeroDivisionError: the input was not checked first
            what = f"raised {type(err).__name__}"
        raise Wrong(f"break_even_tokens{bad} {what} instead of raising ValueError: a rate must be > 0 and a "
                    f"time >= 0 -- a typo in a measured number should not give a plausible answer.")


def measure(fn, compile_s: float | None = None, eager_tok_s: float | None = None,
            compiled_tok_s: float | None = None, eager_range: tuple | None = None,
            compiled_range: tuple | None = None) -> dict:
    """The break-even on the student's own numbers (measure_compile's: medians, and each rate's
    (slowest, fastest) run as *_range). Where the two ranges overlap, the machine did not resolve
    compile's gain per token: the summary says so instead of reading a break-even off the medians."""
    if None in (compile_s, eager_tok_s, compiled_tok_s):
        raise Skip("not measured: pass your measured numbers, check(fn, compile_s=..., eager_tok_s=..., "
                   "compiled_tok_s=...) (the lab's measure_compile, or chapter 06)")
    tokens = fn(compile_s, eager_tok_s, compiled_tok_s)
    if not math.isclose(tokens, _formula(compile_s, eager_tok_s, compiled_tok_s), rel_tol=1e-6):
        raise Wrong("your function disagrees with the formula on your own measured numbers.")
    overlap = (eager_range is not None and compiled_range is not None
               and faster_of(eager_range, compiled_range, higher_is_better=True) is None)   # rates: tok/s
    if overlap:
        summary = (f"the two rates' runs overlap (eager {eager_range[0]:.1f}-{eager_range[1]:.1f}, compiled "
                   f"{compiled_range[0]:.1f}-{compiled_range[1]:.1f} tok/s): this machine did not resolve what "
                   f"compiling saves a token, so no break-even can be read from them (the formula on their "
                   f"medians: {tokens:,.0f} tokens)")
    elif tokens == math.inf:
        summary = (f"on these numbers the compiled engine is not faster ({compiled_tok_s:.1f} vs {eager_tok_s:.1f} "
                   f"tok/s): compiling never pays off here")
    else:
        summary = (f"compile pays off after {tokens:,.0f} generated tokens, "
                   f"{tokens / compiled_tok_s / 60:.1f} minutes of compiled generation")
    summary += (f" -- numbers measured by this run of the notebook, on {machine()} (in the grader's "
                f"feedback: its own re-run on the grading machine, not the numbers you saw)")
    return dict(break_even_tokens=tokens, compile_s=compile_s, eager_tok_s=eager_tok_s,
                compiled_tok_s=compiled_tok_s, machine=machine(), bar="equals the formula on your numbers",
                summary=summary)


EXERCISE = Exercise("compile_break_even", "06", "break_even_tokens(compile_s, eager_tok_s, compiled_tok_s)",
                    alone, None, measure)


def measure_compile(model=None, max_tokens: int = 64, repeats: int = 5, **engine_kwargs) -> dict:
    """Measure compile_s, eager_tok_s and compiled_tok_s on this machine (decode of one request):
    each rate the median of `repeats` timed generates after the first, with the slowest and fastest
    run beside it (eager_tok_s_range, compiled_tok_s_range: a break-even needs the two apart).

    compile_s is what compiling cost: the engine compiles its first forward while it starts
    (runner.timings["compile_s"]), and the first generate may compile more shapes -- so it is that
    time plus the extra the compiled engine's first generate takes over the eager one's. Measure in
    a fresh kernel: in a process that compiled the same model before, torch reuses what it compiled,
    and inductor caches its kernels on disk, so a second measurement on this machine reads less."""
    import time

    from workbench import LLM, Optimizations, SamplingParams
    from .exercise import tiny_model
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    numbers = {}
    for label, opts in (("eager", Optimizations()), ("compiled", Optimizations(compile=True))):
        with LLM(model or tiny_model(), opts=opts, **engine_kwargs) as llm:
            if opts.compile:   # what the engine compiled while it started (runner.warm_up)
                numbers["compile_at_start_s"] = llm.runner.timings["compile_s"]
            start = time.perf_counter()
            llm.generate([[5, 6, 7, 8]], params, use_tqdm=False)   # first call: includes compiling
            first = time.perf_counter() - start
            spread = time_runs(functools.partial(llm.generate, [[5, 6, 7, 8]], params, use_tqdm=False),
                               repeats=repeats, warmup=0)
        rates = [max_tokens / (ms / 1e3) for ms in spread.times_ms]
        numbers[f"{label}_tok_s"] = statistics.median(rates)
        numbers[f"{label}_tok_s_range"] = (min(rates), max(rates))
        numbers[f"{label}_first_s"] = first
    numbers["first_generate_extra_s"] = max(numbers.pop("compiled_first_s") - numbers.pop("eager_first_s"), 0.0)
    numbers["compile_s"] = numbers["compile_at_start_s"] + numbers["first_generate_extra_s"]
    numbers["machine"] = machine()
    return numbers
