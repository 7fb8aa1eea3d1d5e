"""Kernel launches, measured with torch.profiler: what the CPU asked for vs what the GPU ran.

In eager PyTorch every op is one (or a few) CPU-side launch API calls (cudaLaunchKernel, or
cuLaunchKernel for Triton kernels), each costing microseconds of host time. A decode step of a
28-layer model runs hundreds of tiny kernels, so the CPU, not the GPU, sets the pace. A CUDA
graph replays all of them with one cudaGraphLaunch: the GPU still runs every kernel, but the CPU
issues one call. This module counts both sides so the difference can be seen:

    launch_calls   CPU events named cudaLaunchKernel / cuLaunchKernel / ...Ex / ...ExC
    graph_launches CPU events named cudaGraphLaunch / cuGraphLaunch
    kernels        events on the CUDA device that are kernels (not memcpy/memset, not the GPU
                   copies of user annotations) -- the same test torch's own tables use
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from .timing import loop_seconds, profiled

LAUNCH_API = re.compile(r"^cu(da)?Launch(Cooperative)?Kernel(Ex|ExC)?(_v\d+)?$")
GRAPH_API = re.compile(r"^cu(da)?GraphLaunch(_v\d+)?$")
MEMORY_OP = re.compile(r"^(memcpy|memset)", re.I)


@dataclass
class LaunchRecord:
    """Launch counts for `steps` calls of a function (totals, and per step)."""

    label: str
    available: bool
    reason: str = ""
    steps: int = 0
    warmup: int = 0
    device: str = ""
    launch_calls: int = 0               # kernel launch API calls on the CPU
    launch_calls_by_api: dict = field(default_factory=dict)
    graph_launches: int = 0
    kernels: int = 0                    # kernels the GPU executed
    memory_ops: int = 0                 # memcpy / memset on the GPU
    launch_calls_per_step: float = 0.0
    graph_launches_per_step: float = 0.0
    kernels_per_step: float = 0.0
    launch_api_us_per_step: float = 0.0  # CPU time inside launch calls (under the profiler)
    kernel_us_per_step: float = 0.0      # GPU time summed over kernels
    short_gap_us_per_step: float = 0.0   # GPU idle between back-to-back kernels (gaps < SHORT_GAP_US)
    wall_ms_per_step: float = 0.0        # timed separately, without the profiler
    top_kernels: list = field(default_factory=list)   # [{name, calls, total_us}], by GPU time
    modelled: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if not self.available:
            return f"{self.label or 'launches'}: unavailable ({self.reason})"
        return (f"{self.label or 'launches'}: per step {self.launch_calls_per_step:g} launch calls, "
                f"{self.graph_launches_per_step:g} graph launches, {self.kernels_per_step:g} GPU "
                f"kernels, {self.wall_ms_per_step:.3f} ms wall (measured, {self.device})")


SHORT_GAP_US = 20.0   # longer idle stretches are the host's turn between steps, not launch gaps


def short_gaps_us(intervals: list[tuple[float, float]], limit_us: float = SHORT_GAP_US) -> float:
    """Idle time between consecutive kernels (start, end in us, one stream) that is shorter than
    `limit_us`: the GPU waiting for the next kernel of the same step (launch latency, a graph's
    dependency resolution), not for the host to prepare the next step."""
    total, last_end = 0.0, None
    for start, end in sorted(intervals):
        if last_end is not None and 0 < start - last_end < limit_us:
            total += start - last_end
        last_end = end if last_end is None else max(last_end, end)
    return total


def _is_kernel(event, device_cuda) -> bool:
    if event.device_type != device_cuda or getattr(event, "is_user_annotation", False):
        return False
    activity = str(getattr(event, "activity_type", "") or "")
    return "memcpy" not in activity and "memset" not in activity and not MEMORY_OP.match(event.name)


def count_launches(fn, *, warmup: int = 1, steps: int = 1, label: str = "") -> LaunchRecord:
    """Call fn() `warmup` times, then `steps` times under torch.profiler, and count."""
    import torch
    from torch.autograd import DeviceType

    if not torch.cuda.is_available():
        return LaunchRecord(label, False, "no CUDA: kernel launches need a GPU")
    for _ in range(warmup):          # compile, autotune, capture graphs outside the count
        fn()
    wall = loop_seconds(fn, steps, torch.cuda.synchronize)   # without the profiler's overhead
    run = profiled(fn, steps, cuda=True, sync=torch.cuda.synchronize)
    if run.unavailable:
        return LaunchRecord(label, False, run.unavailable)
    events = run.events
    by_api: dict[str, int] = {}
    launch_us = 0.0
    graphs = kernels = memops = 0
    per_kernel: dict[str, list] = {}
    intervals = []
    for e in events:
        if e.device_type == DeviceType.CPU:
            if LAUNCH_API.match(e.name):
                by_api[e.name] = by_api.get(e.name, 0) + 1
                launch_us += e.time_range.elapsed_us()
            elif GRAPH_API.match(e.name):
                graphs += 1
        elif _is_kernel(e, DeviceType.CUDA):
            kernels += 1
            stat = per_kernel.setdefault(e.name, [0, 0.0])
            stat[0] += 1
            stat[1] += e.time_range.elapsed_us()
            intervals.append((e.time_range.start, e.time_range.end))
        elif e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False):
            memops += 1
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:10]
    calls = sum(by_api.values())
    return LaunchRecord(
        label, True, steps=steps, warmup=warmup, device=torch.cuda.get_device_name(),
        launch_calls=calls, launch_calls_by_api=by_api, graph_launches=graphs, kernels=kernels,
        memory_ops=memops, launch_calls_per_step=calls / steps, graph_launches_per_step=graphs / steps,
        kernels_per_step=kernels / steps, launch_api_us_per_step=launch_us / steps,
        kernel_us_per_step=sum(s[1] for s in per_kernel.values()) / steps,
        short_gap_us_per_step=short_gaps_us(intervals) / steps, wall_ms_per_step=wall * 1e3,
        top_kernels=[{"name": n, "calls": c, "total_us": t} for n, (c, t) in top])
