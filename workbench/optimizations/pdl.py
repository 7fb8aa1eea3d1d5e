"""Switch `pdl`: programmatic dependent launch (Hopper, sm_90+) for the decode path's Triton kernels
-- attacks the gaps between a batch-1 step's ~7 kernels a layer: each kernel's launch, ramp-up and
first memory latency, paid after the kernel before has drained. With PDL a kernel is started while
the one before it finishes; it waits (`gdc_wait`) only before it reads that kernel's output. The
decode GEMV loads its first weight tile before the wait, so the weight stream of one matmul starts
under the tail of the kernel before (the weights are the one input no kernel writes).

Chapter: notebooks/09 (the last mile). Measurement: `bench single --settings all_on-pdl,all_on`
(scripts/device_check.sh pdl): kernels per step unchanged, GPU time and tok/s (an H200, session 7:
204 kernels either way, 892 -> 784 us of GPU kernel time a step, 1.10x tok/s; docs/results/
pdl-single-h200.json), so it is in all_on. The mechanism and the rules: workbench/kernels/pdl.py.

Installed: `install(model, on)` sets the kernels' one process-wide flag; the runner calls it with
its engine's switch before its graph capture (the graphs record the PDL edges) and before each of
its steps, so an engine built later in the process does not change how this one launches. (Every
launch that reads the flag waits before its first dependent read: a wrong flag would change
speed, never results.) It acts on the kernels of the other switches (decode_gemv, fused_decode,
decode_attention, fused_kernels): with none of them on it changes nothing.
"""
from __future__ import annotations

import sys

from .availability import triton_on_cuda


def why_not(device: str, tp_size: int = 1) -> str | None:
    if why := triton_on_cuda(device):
        return why
    import torch
    if not torch.cuda.is_available():   # asked about "cuda" on a machine without one (a plan, a test)
        return "needs a CUDA GPU, and torch sees none here"
    if tp_size > 1:   # the worker ranks' launches with PDL were never run: refuse, do not guess
        return f"untested with tensor_parallel_size={tp_size} (never run under tensor parallelism)"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 9:
        return (f"needs a Hopper or newer GPU (compute capability 9.0+; this one is {major}.{minor}): "
                "programmatic dependent launch is an sm_90 feature")
    return None


def install(model, on: bool) -> None:
    """Turn PDL on or off for every decode kernel launched from now on (`model` is not touched)."""
    if on:   # imported here: workbench.kernels needs Triton, which a CPU-only install may lack
        from workbench.kernels import pdl
        pdl.set_enabled(True)
    elif (pdl := sys.modules.get("workbench.kernels.pdl")) is not None:   # off: no Triton import to say so
        pdl.set_enabled(False)
