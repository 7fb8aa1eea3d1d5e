"""Wall-clock timing a student can trust on a small, shared machine.

Three habits, one helper each:
- `pin_threads()`: torch starts one intra-op thread per core. On a 2-core machine those threads
  spin-wait for each other and for the Jupyter kernel's own threads: a batch-1 decode step of the
  tiny model took 84 ms with the default threads and 2.0 ms with one, and conclusions flipped
  between runs (issue 16). One thread is slower for large matmuls but repeatable. The user's
  choice wins: $WORKBENCH_THREADS, else $OMP_NUM_THREADS, else 1.
- `time_runs(fn)`: call fn several times and keep every time, so the spread (min / median /
  max) is shown next to the median, never a single lucky or unlucky run.
- `busy_warning()`: the 1-minute load average against the core count; a loaded machine makes
  every figure noisy, and the student should read that next to the figure.
"""
from __future__ import annotations

import os
import statistics
import time
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


def time_runs(fn, *args, repeats: int = 5, warmup: int = 1, sync=None) -> Spread:
    """Call fn(*args) `warmup` times untimed, then `repeats` times timed (sync() around each)."""
    import torch
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: time at least one run")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn(*args)
    busy = busy_warning()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn(*args)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return Spread(times, torch.get_num_threads(), busy or busy_warning())
