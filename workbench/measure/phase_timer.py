"""The phase timer of `measure boundaries` part 2: where one step of a dependent GEMV chain goes.

Why. The probe's rows time a whole chain and divide: one number a step. To say *why* a form's step
costs what it does -- the wait itself, the read after it, the multiply, the hand-off to the next
step -- the kernel has to say when each happened. A timed build of a chain's kernel (a constexpr,
so the plain build the probe times carries none of it) has one thread of each program read two
clocks at named points of every step and store them:
- the GPU's global timer (`%globaltimer`, ns): the same clock on every SM, so one program's stamp
  can be set against another's -- needed for the hop, which starts in the program that published
  last and ends in the one that saw it;
- the SM's cycle counter (`%clock64`): exact within a step of a program, where the global timer may
  tick in steps too coarse for a phase of a few hundred ns (`timer_step_us` reports its tick as
  seen). Each SM's counter has its own origin, and a kernel chain's program p may run on another SM
  at every step, so only differences within one step are read. Cycles become time at the GPU's
  clock rate, measured from the stamps themselves: all steps' cycle spans over their global-timer
  spans (one clock domain for every SM; the timer's coarse ticks average out over many spans).

The stamps: int64 [programs, stages, 2, points], clock 0 the global timer, clock 1 the cycle
counter. `fold` turns them into medians over programs and steps (the first step left out: nothing
came before it). Two chains carry the timer: the persistent-ws forms (Gluon, streamed_chain.py:
POLL_POINTS) and the PDL kernels (`kernels+pdl`, boundaries.py: PDL_POINTS), so the probe can set
a persistent kernel's hop beside a kernel boundary's, measured the same way.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# The points a step is stamped at, in order. Each phase is named by the point that ends it.
POLL_POINTS = ("poll starts", "waited", "x read", "tiles", "arrival")   # persistent-ws (streamed_chain.py)
PDL_POINTS = ("program starts", "waited", "x read, multiplied, stored")   # one kernel+pdl GEMV (boundaries.py)


@triton.jit
def stamp(stamps, stage, stages, POINT: tl.constexpr, POINTS: tl.constexpr):
    """Stamp point POINT of this program's step `stage`: both clocks, at stamps[program, stage, clock,
    POINT] (stamps: int64 [programs, stages, 2, POINTS]). GPU only: the interpreter runs no asm."""
    ns = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    cycles = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    at = stamps + (tl.program_id(0) * stages + stage) * 2 * POINTS + POINT
    tl.store(at, ns)
    tl.store(at + POINTS, cycles)


def empty_stamps(programs: int, stages: int, points: tuple, device) -> torch.Tensor:
    return torch.zeros(programs, stages, 2, len(points), dtype=torch.int64, device=device)


def fold(stamps: torch.Tensor, points: tuple, seen: str, published: str) -> dict:
    """Median microseconds of each phase of a step, from stamps [programs, stages, 2, len(points)].
    - each point after the first names the phase that ends at it: read on the SM's cycle counter
      within the step, turned into time at the GPU's clock rate (measured from the stamps);
    - `hop`: from the step before's last `published` stamp (over every program) to this program's
      `seen` stamp, on the global timer: what the dependency's hand-over costs once every program
      has published (for a kernel boundary: the kernel's end, the flush, the wait's return);
    - `hop mean`: its mean (read it where the timer's tick is not far below the hop);
    - `step`: from one step's last `published` stamp to the next's: the chain's period;
    - `timer_step_us`: the global timer's smallest tick seen (None if it never moved)."""
    ns, cycles = stamps[:, :, 0].double(), stamps[:, :, 1].double()
    rate = (cycles[:, :, -1] - cycles[:, :, 0]).sum() / (ns[:, :, -1] - ns[:, :, 0]).sum()   # cycles a ns
    phases = {}
    for i in range(1, len(points)):   # within a step: one SM's counter
        span = (cycles[:, :, i] - cycles[:, :, i - 1]) / rate / 1e3
        phases[points[i]] = float(span[:, 1:].median())
    last = ns[:, :, points.index(published)].max(dim=0).values   # [stages]: every program has published
    hop = ns[:, 1:, points.index(seen)] - last[None, :-1]
    ticks = ns.flatten().unique().diff()
    # the hop's mean too: where the timer ticks coarser than a hop, the median is a whole number of
    # ticks, while the mean of many hops that start at random points of a tick is not
    return {"hop": float(hop.median() / 1e3), "hop mean": float(hop.mean() / 1e3), **phases,
            "step": float(last.diff().median() / 1e3),
            "timer_step_us": float(ticks[ticks > 0].min() / 1e3) if (ticks > 0).any() else None}
