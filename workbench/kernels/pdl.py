"""Programmatic dependent launch (PDL, Hopper and newer): the decode kernels' side of the `pdl` switch.

Why. A batch-1 decode step is ~7 of our kernels a layer, each a few microseconds. Launched the
ordinary way, kernel B starts only when kernel A has finished and flushed: every boundary costs
A's tail (its last programs running on a few SMs), B's launch and ramp-up, and B's first memory
latency. With PDL, B is launched with an attribute that lets the GPU start it while A still
runs; B's programs do whatever does not depend on A, then wait (`gdc_wait`) until A has finished
and its writes are visible. A calls `gdc_launch_dependents` early to say "B may be scheduled now".

What may run before the wait: reads of data the kernel directly before does not write. Each of
our kernels calls gdc_launch_dependents only after its own wait (pdl_wait below; the one
exception, USE_PDL == 2, is a candidate a launch asks for by name: below), so when B
starts, every kernel two or more before it has finished and its writes are visible; only A may
still be running. So B may read early: the weights (no kernel writes them), the K/V of keys
cached by earlier steps, and the step's inputs (positions, slots, lengths, block tables: written
before the step's first kernel). A decode GEMV loads its first weight tile, then waits, then
loads x (CUTLASS's "weight prefetch" example does the same); decode attention reads its lengths,
block ids and first K/V tile early (kernels/decode_attention.py, Choice 5); a GEMV given `add` (the
residual stream, two or more kernels old where the A/B candidate residual-epilogue uses it) reads
it early too. What A writes (its
output, the newest token's K/V) and every store come after the wait. Each kernel waits before
its first read of A's output and before any store, so PDL on is as correct as PDL off, whatever
runs before or after it (a torch op or cuBLAS kernel in between is launched normally: plain
stream order, and it never lets its dependent start early).

A candidate for one launch at a time (`launch_options(early_trigger=True)`, USE_PDL == 2; the A/B
variant gate-up-early asks it of o_proj's GEMV): the kernel lets its dependent be scheduled *before*
it waits, so the dependent may start while the kernel before this one still runs -- the rule above
no longer holds for that dependent: what it reads before its own wait must be three or more
launches old, or written by no kernel of the step (gate_up's GEMV: its weights); after its wait every
kernel before it has finished, as always. (Session 11 measured the early trigger on every kernel
at once, which let the whole chain launch ahead: slower; this asks it of one boundary.)

A kernel that does not wait at all (`pdl_trigger`): decode attention's merge="tagged" candidate polls
the tagged words it reads (kernels/tagged.py) instead of waiting for the kernel before to finish,
then lets its dependent in. Then the rule above is weaker for the two kernels after it: when the
merge's dependent (o_proj's GEMV) starts, the split kernel has done every read and write the merge
polled for, but nothing says its grid has ended. o_proj reads nothing before its own wait but its
weights, and its wait (for the merge to finish) is all it needs after; the kernels after o_proj
are back under the rule, since o_proj triggers after its wait.

How the flag reaches the kernels: one process-wide setting, `ENABLED`, which the switch's install()
sets (workbench/optimizations/pdl.py); each engine's runner calls it with its own switch before
each of its steps and its graph capture, so two engines in one process each launch as they say. Every decode kernel's launch wrapper
adds `**launch_options()`: the kernel's constexpr USE_PDL and, when on, Triton's `launch_pdl=True`.
With USE_PDL False the `if USE_PDL:` branches compile away: the kernel is exactly the one without
PDL. Under torch.compile's tracing (the fused_kernels forms are traced; our custom ops and the
compiler-disabled attention are not), the options are off: the tracer does not know `launch_pdl`.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

ENABLED = False   # the pdl switch (set by workbench/optimizations/pdl.py's install)


def set_enabled(on: bool) -> None:
    global ENABLED
    ENABLED = bool(on)


@contextlib.contextmanager
def launching(on: bool):
    """PDL on or off for the launches inside the block, whatever the last engine step set: a
    microbenchmark says which one it times (measure gemv and decode-attention: off, the kernel alone)."""
    global ENABLED
    before, ENABLED = ENABLED, bool(on)
    try:
        yield
    finally:
        ENABLED = before


def launch_options(early_trigger: bool = False) -> dict:
    """The keyword arguments a decode kernel's launch adds: its USE_PDL constexpr and, when on,
    the launch attribute. The two always go together: a kernel launched with the attribute must
    wait (USE_PDL) before reading what the kernel before it wrote. early_trigger (USE_PDL == 2):
    the dependent scheduled before the wait -- the module docstring says where that is safe."""
    if ENABLED and not torch.compiler.is_compiling():
        return {"USE_PDL": 2 if early_trigger else True, "launch_pdl": True}
    return {"USE_PDL": False}


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    """Wait for the kernel before to finish (its writes visible), then let the next one be
    scheduled (USE_PDL == 2, the early trigger: let it be scheduled first, then wait). Call before
    the first read of anything a kernel writes, and before any store."""
    if USE_PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    elif USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def pdl_trigger(USE_PDL: tl.constexpr):
    """Let the next kernel be scheduled, in a kernel that polls tagged words instead of waiting for
    the one before to finish (the module docstring): call it once the words are in."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
