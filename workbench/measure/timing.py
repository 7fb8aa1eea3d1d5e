"""The one timing harness of measure/: wall clock, CUDA events, and torch.profiler.

Every experiment times the same way, through these helpers (warm-up first, always outside them):
- `time_runs(fn)`: each call timed on the wall clock, the spread kept (min / median / max).
- `loop_seconds(fn, steps)`: one clock around `steps` calls, per call: for calls too short to
  time one by one (a decode step, a kernel launch).
- `cuda_event_times(fn, repeats)`: each call timed on the GPU with CUDA events (no host time).
- `graph_replay_seconds(step)`: step() captured in one CUDA graph, its replays timed with events
  (many small kernels back to back without launch overhead).
- `profiled(fn, steps)` / `profiling()`: the calls under torch.profiler; when the profiler cannot
  run (CUPTI missing, another profiler or ncu attached) the result says so instead of raising.
- `device_sync(device)`: what "wait for the device" means on a GPU and on a CPU.

And four habits for a small, shared machine:
- `pin_threads()`: torch starts one intra-op thread per core. On a 2-core machine those threads
  spin-wait for each other and for the Jupyter kernel's own threads: a batch-1 decode step of the
  tiny model took 84 ms with the default threads and 2.0 ms with one, and conclusions flipped
  between runs (issue 16). One thread is slower for large matmuls but repeatable. The user's
  choice wins: $WORKBENCH_THREADS, else $OMP_NUM_THREADS, else 1.
- `time_runs(fn)`: call fn several times and keep every time, so the spread (min / median /
  max) is shown next to the median, never a single lucky or unlucky run.
- `busy_warning()`: the 1-minute load average against the core count; a loaded machine makes
  every figure noisy, and the student should read that next to the figure.
- `faster_of(a, b)`: the overlap rule, the one way a timing verdict is read: a is faster than b
  only where every run of a beat every run of b (their min..max ranges do not overlap); with ten
  runs or more, the fastest and slowest tenth of each are set aside first.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field


def chosen_threads() -> int:
    """The thread count the user asked for ($WORKBENCH_THREADS, then $OMP_NUM_THREADS), else 1."""
    for name in ("WORKBENCH_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"${name}={value!r}: set it to a positive whole number of threads, e.g. 1")
            return int(value)
    return 1


def pin_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: `chosen_threads()`); returns the count now in use."""
    import torch
    torch.set_num_threads(threads or chosen_threads())
    return torch.get_num_threads()


def busy_warning() -> str | None:
    """A sentence when the machine's 1-minute load average reaches its core count, else None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):   # Windows has no load average
        return None
    cores = os.cpu_count() or 1
    if load < cores:
        return None
    return (f"warning: this machine is busy (1-minute load average {load:.1f} on {cores} cores): "
            f"other processes compete for the CPU, so these timings are noisy; re-run when it is quieter")


@dataclass
class Spread:
    """Every time of a repeated measurement, in milliseconds, and what it ran on."""

    times_ms: list[float]
    threads: int
    busy: str | None = field(default=None)
    last: object = field(default=None, repr=False)   # what the last timed call returned

    @property
    def min(self) -> float:
        return min(self.times_ms)

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def max(self) -> float:
        return max(self.times_ms)

    def __str__(self) -> str:
        return (f"{self.median:.3g} ms (min {self.min:.3g}, max {self.max:.3g}, {len(self.times_ms)} runs, "
                f"{self.threads} torch thread{'s' if self.threads != 1 else ''})")


def faster_of(a, b, *, higher_is_better: bool = False):
    """The overlap rule: `a` or `b` itself, whichever is faster where even its worst run beat the
    other's best, else None (the ranges overlap, or touch: no verdict).

    Why: on a shared 2-core machine one run proves nothing -- another process, a page fault or the
    Jupyter kernel's own threads can slow any run -- so a difference counts only where the two
    spreads lie clear of each other. a and b: Spreads, or plain (min, max) ranges. They hold
    times (lower is faster) unless higher_is_better, for rates such as tok/s.
    A Spread of ten runs or more is read without its fastest and slowest tenth (`verdict_range`):
    one stalled run in thirty would otherwise veto every verdict, however often a setting won."""
    (a_lo, a_hi), (b_lo, b_hi) = verdict_range(a), verdict_range(b)
    if higher_is_better:
        return a if a_lo > b_hi else b if b_lo > a_hi else None
    return a if a_hi < b_lo else b if b_hi < a_lo else None


def verdict_range(spread) -> tuple[float, float]:
    """The range faster_of compares: (min, max) of a Spread's runs, its fastest and slowest tenth
    set aside where it has ten or more (a tenth rounded down: 1 of 10-19 runs each side, 3 of 30);
    a plain (min, max) pair as given. Print it beside a verdict so the student sees what was compared."""
    if isinstance(spread, Spread):
        times = sorted(spread.times_ms)
        cut = len(times) // 10
        return times[cut], times[len(times) - 1 - cut]
    lo, hi = spread
    if lo > hi:
        raise ValueError(f"range ({lo}, {hi}): pass (min, max), the smaller first")
    return lo, hi



def time_runs(fn, *args, repeats: int = 5, warmup: int = 1, sync=None) -> Spread:
    """Call fn(*args) `warmup` times untimed, then `repeats` times timed (sync() around each)."""
    import torch
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: time at least one run")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn(*args)
    busy = busy_warning()
    times, last = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        last = fn(*args)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return Spread(times, torch.get_num_threads(), busy or busy_warning(), last)


def take_turns(fns: dict, *args, rounds: int = 5, warmup: int = 1, sync=None) -> dict:
    """Time each of `fns` (name -> callable) once a round, the order swapped every round, so that a
    slow moment of a shared machine falls on all of them alike: {name: Spread}. Compare the spreads,
    not one run of each."""
    import torch
    sync = sync or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn(*args)
    busy = busy_warning()
    times, last = {name: [] for name in fns}, {}
    for i in range(rounds):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            sync()
            start = time.perf_counter()
            last[name] = fns[name](*args)
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    busy = busy or busy_warning()
    return {name: Spread(times[name], torch.get_num_threads(), busy, last[name]) for name in fns}


def device_sync(device):
    """A function that waits for `device`'s queued work: torch.cuda.synchronize on a GPU; on a
    CPU every op has finished when it returns, so nothing."""
    import torch
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def loop_seconds(fn, steps: int, sync=None) -> float:
    """Seconds per call of `steps` back-to-back calls of fn(), one clock around the loop (the
    device synchronized before and after); warm up first."""
    sync = sync or (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def graph_replay_seconds(step, replays: int = 20, warmups: int = 3) -> float:
    """Median seconds of one replay of a CUDA graph that recorded step(): step() runs `warmups`
    times first (JIT compilation, autotuning, cuBLAS algorithm choice stay outside the capture)."""
    import torch
    for _ in range(warmups):
        step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()   # noqa: F841 -- kept alive: the graph writes into them
    graph.replay()
    return statistics.median(cuda_event_times(graph.replay, replays))


def cuda_event_times(fn, repeats: int, before=None) -> list[float]:
    """Seconds of each of `repeats` calls of fn(), timed on the GPU with CUDA events (no host
    overhead in the figure); call it after a warm-up. before: run before each call, untimed (an
    L2 flush, say)."""
    import torch
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


@dataclass
class Profiled:
    """What a profiled run left: the profiler's events (and the profiler, for its Chrome trace),
    seconds per step under it, or `unavailable`: why the profiler could not run."""

    events: list = field(default_factory=list)
    prof: object = None
    seconds: float = 0.0
    unavailable: str = ""


def _profiler_failed(err: Exception) -> str:
    return (f"torch.profiler failed ({type(err).__name__}: {err}); close other profilers and check "
            "that CUPTI is installed")


@contextlib.contextmanager
def _without_kineto_status_lines():
    """Kineto (torch.profiler's C++ half) writes status lines such as 'USDT:... profiler_start' to
    the process's stderr as the profiler starts and stops, whatever its log level: in a notebook
    they land in the cell's output. Catch fd 2 around the start and stop only, and pass on every
    other line."""
    import sys
    import tempfile
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):   # no real fd 2 (an embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(("USDT:", "STAGE:"))]
            if kept:
                sys.stderr.write("".join(kept))


@contextlib.contextmanager
def profiling(cuda: bool = False):
    """`with profiling(cuda) as run:` profiles the block (CPU ops, plus CUDA kernels when `cuda`);
    afterwards run.events / run.prof hold the result, or run.unavailable says why the profiler
    could not start or stop. The block runs either way; its own errors propagate."""
    from torch.profiler import ProfilerActivity, profile
    run = Profiled()
    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
    with warnings.catch_warnings():   # torch's note about profiler cycles does not apply
        warnings.filterwarnings("ignore", message=".*Profiler clears events.*")
        try:
            with _without_kineto_status_lines():
                prof.__enter__()
        except Exception as err:   # CUPTI missing or busy (another profiler, ncu)
            run.unavailable, prof = _profiler_failed(err), None
        try:
            yield run
        finally:
            if prof is not None:
                try:
                    with _without_kineto_status_lines():
                        prof.__exit__(None, None, None)
                    run.prof, run.events = prof, list(prof.events())
                except Exception as err:
                    run.unavailable = _profiler_failed(err)


def profiled(fn, steps: int = 1, *, cuda: bool = False, sync=None) -> Profiled:
    """`steps` calls of fn() under torch.profiler (see `profiling`), with the seconds per call
    they took there (profiled calls run slower: never mix them with `loop_seconds`)."""
    with profiling(cuda) as run:
        run.seconds = loop_seconds(fn, steps, sync)
    return run
