"""The `persistent-ws` forms of `measure boundaries` part 2: a persistent GEMV chain whose weights a
producer warp streams into shared memory *across* the waits between steps (Gluon, Hopper).

Why. Part 2's persistent forms (boundaries.py) are ordinary Triton programs: a weight load is a
register load, so a program that waits at the grid barrier holds at most what its registers can
take (one or two steps ahead), and its HBM stream stops while it polls. Session 18 found they
did not keep up with the PDL kernels. The published batch-1 megakernels keep the stream going
with warp specialization: some warps only load, into a ring of shared-memory buffers, and never
wait on another program; the other warps wait, compute from shared memory, and hand each buffer
back. This module is that structure, on part 2's chain, to measure whether the stream survives
the waits:

- producer (1 warp): for every step and every tile of this program's rows, waits until the ring
  slot is free, then asks the TMA unit to copy the tile there (`expect` tells the slot's `ready`
  barrier how many bytes to count);
- consumer (the kernel's 4 warps): waits for every program's part of the step before (a counter,
  read with acquire semantics), reads x, then for each tile waits for its slot, computes from
  shared memory, and frees the slot; stores its rows, then adds 1 to the counter (release).

The ring holds SLOTS tiles of ROWS x 128 bf16 values: 48 x 4 KB = 192 KB runs 3 steps ahead at
H = 2,048 (a program's rows of a step are 16 tiles). `persistent-ws-4` (4 slots) cannot run ahead
past a wait: the control for "it is the streaming across the waits that pays". `persistent-ws-step`
(session 25; first run in session 27): 3 slots of a whole step's rows each, so one `expect`, one wait and one
hand-off a step instead of 16 -- does the consumer's per-tile hand-off cost the step its time?
`persistent-ws-late` and `persistent-ws-step-late` (session 27): the same two rings, a step's slots
handed back after the program's release instead of before it (so the producer runs one step less
far ahead: a step's slots stay held through that step).

Measured on an H200 (session 25, docs/results/boundary-probe-ws-run3-h200.json, 196 steps, 128 programs):
at H = 2,048 (8.4 MB a step) 3.93 us a step with 48 slots, 3.88 with 16, 4.63 with 4 -- the ring
does keep the stream going across the waits -- against 3.16 us for the PDL kernels: what follows
each wait (the counter's round trip, x's read, the tiles' hand-offs) costs more than a kernel
boundary under PDL.

The phase timer (phase_timer.py; session 26): `measure boundaries` runs each form once more in a
build of the kernel (TIMED) whose consumer warps stamp two clocks at five points of each step
(POLL_POINTS: the poll starts, the poll has seen every arrival, x is in shared memory, the rows are
summed and stored, the arrival is added) and prints the median of each phase: the hop (a step's last
arrival to a program's poll seeing it), x's read, the tiles, the arrival, the step. First run in
session 27, on an H100 (docs/results/boundary-probe-ws-run1-h100.json): the counter's hop is cheap
(~0.35 us, under the PDL kernels' boundary); the time goes after it, and the step form's arrival --
the warps' barrier and one release -- took 3 us at H = 2,048, about as long as the 64 KB copy its
hand-back had just asked for would take at one SM's share of the bandwidth. The hypothesis that the
release waits behind that copy is what the `-late` forms (LATE_FREE) test: the same kernels handing
a step's slots back only after the release. Session 28 (H100, docs/results/boundary-probe-ws-h100.json):
the arrival fell as the hypothesis said (the step form's 3.04 -> 0.42 us), but the wait moved into the
next step's hop and x read; 4.58 us a step against the PDL kernels' 3.71, so the route stopped here.

Gluon (triton.experimental.gluon) is Triton's lower-level dialect: layouts, shared memory and
barriers are written out. It does not run under Triton's interpreter: on a CPU the kernel is only
compiled for sm_90a (tests/test_boundary_probe.py). Designed from a read of Triton 3.6's Gluon
source (the device's version; 3.9 renamed the TMA load and the barrier, see `_tma_load`).
"""
from __future__ import annotations

import torch
import triton

from workbench.measure.phase_timer import POLL_POINTS

try:   # Gluon's Hopper pieces: Triton 3.6+ (a missing one means the forms are left out)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    HAVE_GLUON = True
except ImportError:
    HAVE_GLUON = False

SLOTS = {"persistent-ws": 48, "persistent-ws-16": 16, "persistent-ws-4": 4,
         "persistent-ws-late": 48}   # ring slots of one tile, per form
STEP_SLOTS = {"persistent-ws-step": 3, "persistent-ws-step-late": 3}   # ring slots of a whole step's rows (one hand-off a step)
# the forms that hand a step's slots back only after their arrival (session 27): no weight copy is
# asked for between a program's stores and its release, so the release cannot wait behind one
LATE_FREE = {"persistent-ws-late", "persistent-ws-step-late"}
FORMS = (*SLOTS, *STEP_SLOTS)   # every form this module runs
BLOCK_K = 128      # a tile's columns: 256 bytes of a weight row
CONSUMER_WARPS = 4
PHASES = len(POLL_POINTS)   # the phase timer's stamps a step (phase_timer.py)

if HAVE_GLUON:
    # Triton 3.6 (the device) calls the TMA load async_copy_global_to_shared; 3.9 calls it async_load
    # (and keeps the old name as an error)
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _barrier = getattr(gl, "thread_barrier", None) or gl.barrier   # (3.9: barrier)
    _PHASES = gl.constexpr(PHASES)   # (a kernel reads a module's constant only as a constexpr)

    @gluon.jit
    def _producer(w_desc, ring, ready, empty, stages, HIDDEN: gl.constexpr, PER_SLOT: gl.constexpr):
        """One warp: every tile this program will need, in the order the consumer uses them, PER_SLOT
        tiles to a slot (the ring holds NSLOTS x PER_SLOT tiles)."""
        ROWS: gl.constexpr = w_desc.block_type.shape[0]
        BK: gl.constexpr = w_desc.block_type.shape[1]
        NSLOTS: gl.constexpr = ring.type.shape[0] // PER_SLOT
        first_row = gl.program_id(0) * ROWS
        t = 0
        for stage in range(stages):
            for group in range(HIDDEN // BK // PER_SLOT):
                slot = t % NSLOTS
                # a fresh barrier counts as phase 1 done: the first pass over the ring does not wait
                mbarrier.wait(empty.index(slot), ((t // NSLOTS) & 1) ^ 1)
                mbarrier.expect(ready.index(slot), PER_SLOT * w_desc.block_type.nbytes)
                for j in gl.static_range(PER_SLOT):
                    _tma_load(w_desc, [stage * HIDDEN + first_row, (group * PER_SLOT + j) * BK], ready.index(slot),
                              ring.index(slot * PER_SLOT + j))
                t += 1

    @gluon.jit
    def _stamp(stamps, stage, stages, point: gl.constexpr):
        """Point `point` of this program's step `stage` (POLL_POINTS): the GPU's global timer and this SM's
        cycle counter at stamps[program, stage, clock, point] -- phase_timer.stamp's Gluon twin."""
        ns = gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)
        cycles = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)
        at = stamps + (gl.program_id(0) * stages + stage) * 2 * _PHASES + point
        gl.store(at, ns)
        gl.store(at + _PHASES, cycles)

    @gluon.jit
    def _consumer(vec, count, ring, ready, empty, x_tiles, stages, eps, stamps, HIDDEN: gl.constexpr,
                  ROWS: gl.constexpr, BK: gl.constexpr, PER_SLOT: gl.constexpr, TIMED: gl.constexpr,
                  LATE: gl.constexpr):
        """The kernel's warps: y[rows] = (W[rows] . x) / rms(x) each step, x the vector every
        program wrote the step before (boundaries._gemv_step's math, from shared memory). x is
        read whole at once, all its loads in flight together, into shared memory: read tile by
        tile inside the loop, each load would wait its own round trip to L2 (measured: 10 us a
        step at H = 2,048, whatever the ring's size)."""
        NSLOTS: gl.constexpr = ring.type.shape[0] // PER_SLOT
        TILES: gl.constexpr = HIDDEN // BK
        ROW_THREADS: gl.constexpr = ROWS // gl.num_warps()   # a warp's threads: ROW_THREADS rows x the rest along K
        L: gl.constexpr = gl.BlockedLayout([1, 8], [ROW_THREADS, 32 // ROW_THREADS], [gl.num_warps(), 1], [1, 0])
        programs = gl.num_programs(0)
        rows = gl.program_id(0) * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, L))
        XL: gl.constexpr = gl.BlockedLayout([4], [32], [gl.num_warps()], [0])   # x whole: 16-byte loads
        x_offsets = gl.arange(0, HIDDEN, layout=XL)
        t = 0
        for stage in range(stages):
            if TIMED:
                _stamp(stamps, stage, stages, 0)   # the step begins: the poll starts
            # every program's rows of the step before are stored (acquire: their stores are visible)
            seen = gl.atomic_add(count, 0, sem="acquire", scope="gpu")
            while seen < programs * stage:
                seen = gl.atomic_add(count, 0, sem="acquire", scope="gpu")
            if TIMED:
                _stamp(stamps, stage, stages, 1)   # the poll saw every program's arrival
            x = gl.load(vec + (stage % 2) * HIDDEN + x_offsets, cache_modifier=".cg")   # .cg: other SMs wrote it
            inv_rms = 1.0 / gl.sqrt(gl.sum(x * x, axis=0) / HIDDEN + eps)
            x_tiles.store(x)
            _barrier()   # every warp's part of x stored before any warp reads a tile of it
            if TIMED:
                _stamp(stamps, stage, stages, 2)   # x read and in shared memory
            # products summed element-wise, the rows reduced across threads once a step, not once a tile
            acc = gl.zeros([ROWS, BK], gl.float32, layout=L)
            for group in gl.static_range(TILES // PER_SLOT):   # unrolled: a slice of shared memory starts at a constant
                slot = t % NSLOTS
                mbarrier.wait(ready.index(slot), (t // NSLOTS) & 1)
                for j in gl.static_range(PER_SLOT):
                    x_tile = x_tiles.slice((group * PER_SLOT + j) * BK, BK).load(gl.SliceLayout(0, L))
                    acc += ring.index(slot * PER_SLOT + j).load(L).to(gl.float32) * x_tile[None, :]
                # the slot goes back to the producer. The compiler puts a barrier of the 4 warps before
                # the one thread's arrive, so every warp has read it; the fence orders those reads
                # (generic proxy) before the TMA's next write (async proxy) into it
                if not LATE:
                    fence_async_shared()
                    mbarrier.arrive(empty.index(slot), count=1)
                t += 1
            gl.store(vec + ((stage + 1) % 2) * HIDDEN + rows, gl.sum(acc, axis=1) * inv_rms)
            if TIMED:   # (a stamp between the last tile and the sum made the compiler spill: the sum is in this phase)
                _stamp(stamps, stage, stages, 3)   # every tile multiplied, the rows summed and their stores issued
            _barrier()   # all 4 warps' stores issued (and x_tiles read) before the one release below
            gl.atomic_add(count, 1, sem="release", scope="gpu")
            if TIMED:
                _stamp(stamps, stage, stages, 4)   # rows stored, the arrival added
            if LATE:   # this step's slots back to the producer only now, after the release
                fence_async_shared()
                for group in gl.static_range(TILES // PER_SLOT):
                    mbarrier.arrive(empty.index((t - TILES // PER_SLOT + group) % NSLOTS), count=1)

    @gluon.jit
    def _streamed_chain_kernel(w_desc, vec, count, stages, eps, stamps, HIDDEN: gl.constexpr, NSLOTS: gl.constexpr,
                               PER_SLOT: gl.constexpr, TIMED: gl.constexpr, LATE: gl.constexpr = False):
        ROWS: gl.constexpr = w_desc.block_type.shape[0]
        BK: gl.constexpr = w_desc.block_type.shape[1]
        ring = gl.allocate_shared_memory(w_desc.dtype, [NSLOTS * PER_SLOT, ROWS, BK], w_desc.layout)
        x_tiles = gl.allocate_shared_memory(gl.float32, [HIDDEN], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
        ready = gl.allocate_shared_memory(gl.int64, [NSLOTS, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [NSLOTS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(NSLOTS):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        # the default partition (the kernel's warps) consumes; one worker warp (24 registers: it
        # holds no data) produces
        gl.warp_specialize([(_consumer, (vec, count, ring, ready, empty, x_tiles, stages, eps, stamps, HIDDEN, ROWS,
                                         BK, PER_SLOT, TIMED, LATE)),
                            (_producer, (w_desc, ring, ready, empty, stages, HIDDEN, PER_SLOT))], [1], [24])


def why_not(device: torch.device) -> str | None:
    """Why the persistent-ws forms cannot run here, if they cannot."""
    if not HAVE_GLUON:
        return f"Triton {triton.__version__} has no Gluon Hopper API (triton.experimental.gluon)"
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return "TMA and warp specialization need a Hopper GPU or newer"
    return None


def weight_descriptor(weights: torch.Tensor, programs: int):
    """The TMA descriptor of weights [stages, H, H] bf16 seen as [stages * H, H], in tiles of one
    program's rows x BLOCK_K columns."""
    stages, hidden, _ = weights.shape
    rows = hidden // programs
    layout = gl.NVMMASharedLayout.get_default_for([rows, BLOCK_K], gl.bfloat16)
    return TensorDescriptor.from_tensor(weights.view(stages * hidden, hidden), [rows, BLOCK_K], layout)


def streamed_chain(form: str, weights: torch.Tensor, vec: torch.Tensor, count: torch.Tensor, stages: int,
                   programs: int):
    """boundaries.gemv_chain for the persistent-ws forms: a function that runs `stages` GEMVs once."""
    hidden = weights.shape[-1]
    rows = hidden // programs
    if hidden % programs or rows & (rows - 1) or not CONSUMER_WARPS <= rows <= 32 * CONSUMER_WARPS or hidden % BLOCK_K:
        raise ValueError(f"{form}: {programs} programs give {rows} rows each; the consumer's layout wants a power "
                         f"of two from {CONSUMER_WARPS} to {32 * CONSUMER_WARPS}, and H a multiple of {BLOCK_K}")
    desc = weight_descriptor(weights, programs)
    slots, per_slot = (SLOTS[form], 1) if form in SLOTS else (STEP_SLOTS[form], hidden // BLOCK_K)
    late = form in LATE_FREE
    if late and slots * per_slot < hidden // BLOCK_K:   # a step's tiles wait for slots only its own end frees
        raise ValueError(f"{form}: {slots} slots of {per_slot} tiles hold less than one step's {hidden // BLOCK_K} "
                         "tiles; with the slots handed back after the arrival the chain would wait for itself")

    def run(stamps: torch.Tensor | None = None):
        """One pass of the chain; with `stamps` (int64 [programs, stages, 2, PHASES]) the phase timer's
        build of the kernel, which writes its clocks there (boundaries.phases)."""
        count.zero_()
        _streamed_chain_kernel[(programs,)](desc, vec, count, stages, 1e-6, count if stamps is None else stamps,
                                            HIDDEN=hidden, NSLOTS=slots, PER_SLOT=per_slot, TIMED=stamps is not None,
                                            LATE=late,
                                            num_warps=CONSUMER_WARPS, maxnreg=128)
    return run

