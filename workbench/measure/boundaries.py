"""What one dependent step of a batch-1 decode costs: as kernels, as PDL kernels, as one persistent kernel.

Session 17 (docs/perf-notes.md) found every layer GEMV of the decode step loading its whole weight
before its PDL wait: the weight streams are already hidden, and a layer (7 kernels, ~31 MB) takes
~20 us where its bytes alone take ~8. What is left looks like the price of each of the ~7
dependent boundaries a layer: the kernel before must finish and flush, the wait must release,
the first dependent load must come back. This probe measures that price with nothing else in the
way, on a chain of STAGES steps, each of which (like a GEMV with the norm folded in) reads the
whole vector the step before wrote, reduces it, and writes its own slice of the next vector:

  kernels        one kernel a step, plain stream order, the chain in one CUDA graph
  kernels+pdl    the same launched with programmatic dependent launch: wait, then let the next
                 kernel be scheduled (what workbench/kernels/pdl.py does)
  kernels+pdl-early  the next kernel let in first thing, before the wait (session 11's early
                 trigger, measured here alone)
  persistent     one kernel for the whole chain, one program an SM; between steps a grid barrier
                 (an atomic counter each program adds to, then polls) instead of a kernel boundary
  persistent-flags  the same, but each program publishes a flag of its own after its step and
                 polls the flags of the programs it reads: no single counter that every program
                 adds to (session 21)
  persistent-flags-head  each step reads only its values' head (HEAD values: the per-head
                 dependency of qkv -> RoPE -> attention -> merge) and waits only for the programs
                 that wrote that head, so heads run ahead of each other (session 21). With 8
                 programs a slice is a head: no program waits for another, the floor of a step
                 with a flag and no cross-program wait
  persistent-tagged(-head)  no flags and no fences: every value travels in one 64-bit word with
                 its step number (the tag) in the high half, stored relaxed; a reader polls the
                 words it needs until each carries the step it wants. One aligned 64-bit access is
                 all or nothing, so a word with the right tag holds the right value: the data is
                 its own flag (NCCL's low-latency protocol). A step is then the store reaching L2
                 and one load seeing it, against the flags' three round trips (session 22)
  persistent-tagged-spread  a head's worth of values (HEAD), but one every D / HEAD: the head
                 form's bytes from the all-to-all form's writers -- which of the two sets the cost
  kernels+pdl-tagged(-head)  the tagged words between kernels: each kernel polls the words it
                 reads instead of PDL's wait for the kernel before, then lets the next one in

The numbers are int32 and wrap, so any stale read (a missing or broken barrier) changes the final
vector: each form is checked against the same chain computed on the host before it is timed.
Reading: the microseconds a step of each form, against the ~2.9 us a kernel the decode step's
layers take (563 us / 196 kernels, session 17's profiled step). If the persistent barrier costs
much less than a kernel boundary, a persistent decode kernel is the way toward the roofline; if
not, fewer steps is the only lever left. The flag forms ask the same of a wait with no shared
counter (persistent-flags) and of a wait on one head's writers only (persistent-flags-head): if
either costs much less than the grid barrier (session 19: ~1.3 us a step), a layer kernel whose
programs wait on flags per head could overlap the per-head steps of a layer.

Part 2 puts weights back: the same chain as GEMVs with the norm folded in (bf16 H x H), as PDL
kernels with their weight rows loaded before the wait (as the engine's; or only a share of them,
the rest after it: `kernels+pdl-half`, `-quarter`, session 27) and as persistent kernels
that ask for later steps' rows into registers (one or two steps ahead) or of L2 (prefetches, the
rows loaded after the barrier), or -- the persistent-ws forms, streamed_chain.py (Gluon, Hopper)
-- have a producer warp stream them into a ring in shared memory across the waits (session 25);
% of the copy bandwidth measured in the same run.

On a GPU: python -m workbench measure boundaries [--json OUT] (CUDA graphs, events, medians;
chapter 09, section 15). On a CPU (Triton's interpreter, a few steps, correctness only):
tests/test_boundary_probe.py.
"""
from __future__ import annotations

import os
import statistics

import torch
import triton
import triton.language as tl

from workbench.kernels.gemv import _prefetch_l2, as_bytes
from workbench.kernels.pdl import pdl_wait
from workbench.kernels.tagged import poll_tagged, store_tagged   # the engine's tagged words (decode attention's merge)
from workbench.measure import phase_timer, streamed_chain
from workbench.measure.timing import cuda_event_times

D = 1024   # the hidden size of Qwen3-0.6B: the vector every step reads whole
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"   # Triton's interpreter: one program at a time, no asm


@triton.jit
def _step(src, dst, D, stage, pid, READ: tl.constexpr, SLICE: tl.constexpr):
    """One step of the chain: read the first READ values of `src` (all D of them but in the
    control; from L2: other programs wrote them), reduce, write this program's slice of `dst`."""
    offs = tl.arange(0, READ)
    x = tl.load(src + offs, mask=offs < D, other=0, cache_modifier=".cg")   # .cg: skip L1, it may be stale
    total = tl.sum(x, axis=0)
    j = pid * SLICE + tl.arange(0, SLICE)
    own = tl.load(src + j, mask=j < D, other=0, cache_modifier=".cg")
    # + own: the sum of the next vector is then an odd multiple of this one's plus a constant, so no
    # step forgets where the chain started (3 * total alone would multiply it by 3 * 1,024 each step)
    tl.store(dst + j, total * 3 + own + j + stage, mask=j < D)


@triton.jit
def _trigger_early(EARLY: tl.constexpr):
    """Let the next kernel be scheduled (if EARLY). The `-early` forms call it first thing, before
    this kernel waits (the engine's kernels trigger only after their wait: kernels/pdl.py) -- safe,
    the next kernel reads nothing this one writes before its own wait, which waits for this one to
    finish; the tagged kernels call it once their words are in (_tagged_step)."""
    if EARLY:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _stage_kernel(buf, D, stage, READ: tl.constexpr, SLICE: tl.constexpr, USE_PDL: tl.constexpr,
                  EARLY: tl.constexpr = False):
    _trigger_early(EARLY)
    pdl_wait(USE_PDL)   # the decode kernels' own: wait for the kernel before, then let the next be scheduled
    _step(buf + (stage % 2) * D, buf + ((stage + 1) % 2) * D, D, stage, tl.program_id(0), READ, SLICE)


@triton.jit
def _arrive(count):
    """This program's arrival at a grid barrier: every thread's stores done (bar.sync), then one
    atomic a program (Triton runs a scalar atomic on one thread), release: the stores before it
    are visible to whoever acquires the count."""
    tl.debug_barrier()
    tl.atomic_add(count, 1, sem="release", scope="gpu")


@triton.jit
def _wait_for(count, target):
    """Poll the count until `target` arrivals (acquire: the arrivals' stores are visible after)."""
    arrived = tl.atomic_add(count, 0, sem="acquire", scope="gpu")
    while arrived < target:
        arrived = tl.atomic_add(count, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _head_offsets(pid, SLICE: tl.constexpr, HEAD: tl.constexpr, HEADS: tl.constexpr, WIDTH: tl.constexpr):
    """A program's heads ([HEADS, HEAD]: the values it reads) and its slice within them ([HEADS,
    WIDTH]: the values it writes); a slice within one head: HEADS 1, WIDTH SLICE."""
    first = pid * SLICE // HEAD * HEAD   # where this program's first head starts
    heads = first + tl.arange(0, HEADS)[:, None] * HEAD + tl.arange(0, HEAD)[None, :]
    return heads, pid * SLICE + tl.arange(0, HEADS)[:, None] * WIDTH + tl.arange(0, WIDTH)[None, :]


@triton.jit
def _step_head(src, dst, D, stage, pid, SLICE: tl.constexpr, HEAD: tl.constexpr, HEADS: tl.constexpr,
               WIDTH: tl.constexpr):
    """`_step` with each value's total taken over its own head (HEAD values), not the first READ."""
    offs, j = _head_offsets(pid, SLICE, HEAD, HEADS, WIDTH)
    totals = tl.sum(tl.load(src + offs, mask=offs < D, other=0, cache_modifier=".cg"), axis=1)
    own = tl.load(src + j, mask=j < D, other=0, cache_modifier=".cg")
    tl.store(dst + j, totals[:, None] * 3 + own + j + stage, mask=j < D)


@triton.jit
def _publish(flags, pid, value):
    """This program's step is done: every thread's stores (bar.sync), then its own flag set with
    release -- one store a program, to an address no other program writes."""
    tl.debug_barrier()
    tl.atomic_xchg(flags + pid, value, sem="release", scope="gpu")


@triton.jit
def _wait_flags(flags, first, n, target, BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    """Poll the flags of programs first .. first + n - 1 until all reach `target`. Plain volatile
    loads (an atomic each, as the counter's poll, would queue every program on the same lines),
    then an acquire fence: a release observed by a relaxed load and followed by a fence
    synchronizes with it (the PTX memory model), so their stores are visible after it."""
    offs = first + tl.arange(0, BLOCK)
    mask = tl.arange(0, BLOCK) < n
    # the loop carries the scalar least flag, not the vector of flags: Triton 3.6 (the device's)
    # failed to compile a while loop carrying 128 flags and reducing them in its condition
    least = tl.min(tl.load(flags + offs, mask=mask, other=target, volatile=True), axis=0)
    while least < target:
        least = tl.min(tl.load(flags + offs, mask=mask, other=target, volatile=True), axis=0)
    if not INTERPRET:   # (the interpreter runs programs one after another: nothing to order)
        tl.inline_asm_elementwise("fence.acq_rel.gpu; mov.u32 $0, 0;", "=r,r", [tl.full([1], 0, tl.int32)],
                                  dtype=tl.int32, is_pure=False, pack=1)
    tl.debug_barrier()


@triton.jit
def _persistent_flags_kernel(buf, flags, D, STAGES: tl.constexpr, SLICE: tl.constexpr, HEAD: tl.constexpr,
                             HEADS: tl.constexpr, WIDTH: tl.constexpr, BY_HEAD: tl.constexpr, WAIT_N: tl.constexpr,
                             BLOCK: tl.constexpr, INTERPRET: tl.constexpr, READ: tl.constexpr):
    """persistent-flags(-head): every step in one launch, each program waiting on the flags of the
    programs it reads (BY_HEAD: those of its head; else all). Writing step s + 1's values over the
    half that step s read is safe: the programs that read this program's slice at step s are the
    ones it waits for (every one, or its head's), and each sets its flag only after its reads."""
    pid = tl.program_id(0)
    if BY_HEAD:   # the first program it waits for (WAIT_N of them): its heads' writers
        first = pid * SLICE // HEAD * HEAD // SLICE
    else:         # every program
        first = pid * 0
    for stage in range(STAGES):
        if BY_HEAD:
            _step_head(buf + (stage % 2) * D, buf + ((stage + 1) % 2) * D, D, stage, pid, SLICE, HEAD, HEADS, WIDTH)
        else:
            _step(buf + (stage % 2) * D, buf + ((stage + 1) % 2) * D, D, stage, pid, READ, SLICE)   # READ: all D
        _publish(flags, pid, stage + 1)
        _wait_flags(flags, first, WAIT_N, stage + 1, BLOCK, INTERPRET)


@triton.jit
def _persistent_tagged_kernel(words, D: tl.constexpr, STAGES: tl.constexpr, SLICE: tl.constexpr, HEAD: tl.constexpr,
                              HEADS: tl.constexpr, WIDTH: tl.constexpr, BY_HEAD: tl.constexpr,
                              INTERPRET: tl.constexpr, MAX_POLLS: tl.constexpr = 1 << 16, SPREAD: tl.constexpr = False,
                              polls_out=None):
    """persistent-tagged(-head, -spread): the flag kernel's chain with each value in a tagged word.
    Step s reads words tagged s + 1 from half s % 2 and writes words tagged s + 2 into the other
    half; the words it overwrites (tagged s) were read by the programs whose step-s words it has
    just seen, each written after that program's reads. Every slice divides D: no masks.
    polls_out (tests): each program's reads in its last step's poll."""
    polls = 0
    for stage in range(STAGES):
        polls = _tagged_step(words, D, stage, tl.program_id(0), SLICE, HEAD, HEADS, WIDTH, BY_HEAD, INTERPRET,
                             MAX_POLLS, False, SPREAD)
    if polls_out is not None:
        tl.store(polls_out + tl.program_id(0), polls)


@triton.jit
def _tagged_step(words, D: tl.constexpr, stage, pid, SLICE: tl.constexpr, HEAD: tl.constexpr, HEADS: tl.constexpr,
                 WIDTH: tl.constexpr, BY_HEAD: tl.constexpr, INTERPRET: tl.constexpr, MAX_POLLS: tl.constexpr,
                 TRIGGER: tl.constexpr, SPREAD: tl.constexpr = False):
    """One step on tagged words: _step (or _step_head, BY_HEAD) reading words tagged stage + 1 from
    half stage % 2 and writing words tagged stage + 2 into the other half (tags start at 1, so a
    zeroed word never passes for data); returns the reads its poll took. TRIGGER: let the next
    kernel be scheduled once the words are in (PDL's trigger, where pdl_wait would put it). SPREAD:
    HEAD values, one every D / HEAD: a head's bytes, from as many writers as the whole vector's."""
    src, dst = words + (stage % 2) * D, words + ((stage + 1) % 2) * D
    if BY_HEAD:   # each value's total over its own head, as _step_head
        offs, j = _head_offsets(pid, SLICE, HEAD, HEADS, WIDTH)
    else:         # the whole vector, as _step; or HEAD values spread over it (every slice holds some: programs <= HEAD)
        offs = tl.arange(0, HEAD) * (D // HEAD) if SPREAD else tl.arange(0, D)
        j = pid * SLICE + tl.arange(0, SLICE)
    # offs and j (this program's slice, among them) read together, whole shapes: no masks. After
    # MAX_POLLS reads it gives up and returns what it has: a broken chain fails its check instead of
    # spinning forever (a step needs a few hundred polls at most)
    x, own, _, polls = poll_tagged(src + offs, None, src + j, None, stage + 1, MAX_POLLS)
    _trigger_early(TRIGGER)
    if BY_HEAD:
        totals = tl.sum(x, axis=1)[:, None]
    else:
        totals = tl.sum(x, axis=0)
    store_tagged(dst + j, totals * 3 + own + j + stage, stage + 2, None, INTERPRET)
    return polls


@triton.jit
def _tagged_stage_kernel(words, D: tl.constexpr, stage, SLICE: tl.constexpr, HEAD: tl.constexpr,
                         HEADS: tl.constexpr, WIDTH: tl.constexpr, BY_HEAD: tl.constexpr, INTERPRET: tl.constexpr,
                         MAX_POLLS: tl.constexpr = 1 << 16):
    """kernels+pdl-tagged(-head): one kernel a step, launched with PDL, that never waits for the one
    before to finish: it polls the tagged words it reads instead, then lets the next kernel in (as
    our PDL kernels trigger after their wait: a kernel still finishing, this one and the next one
    polling are all the chain has in flight). The
    kernel before let this one in only once all its programs had their words, so the programs whose
    words a program polls are all running. (Session 22's first GPU run of a form that let the next
    kernel in first thing, with polls that had no limit yet, did not finish: see perf-notes.)"""
    _tagged_step(words, D, stage, tl.program_id(0), SLICE, HEAD, HEADS, WIDTH, BY_HEAD, INTERPRET, MAX_POLLS,
                 not INTERPRET)


@triton.jit
def _persistent_kernel(buf, count, D, STAGES: tl.constexpr, READ: tl.constexpr, SLICE: tl.constexpr):
    """Every step in one launch. Needs all its programs resident at once (one an SM, or fewer):
    a program spinning at the barrier would otherwise wait for one that can never start."""
    pid, programs = tl.program_id(0), tl.num_programs(0)
    for stage in range(STAGES):
        _step(buf + (stage % 2) * D, buf + ((stage + 1) % 2) * D, D, stage, pid, READ, SLICE)
        _arrive(count)
        _wait_for(count, programs * (stage + 1))


def slice_for(programs: int) -> int:
    """Each program's share of the D outputs (a power of two, as tl.arange needs)."""
    return triton.next_power_of_2(triton.cdiv(D, programs))


HEAD = 128   # persistent-flags-head, -tagged-head: a head's values (Qwen3's head_dim), the unit a step reads
FLAG_FORMS = ("persistent-flags", "persistent-flags-head")
TAGGED_FORMS = ("persistent-tagged", "persistent-tagged-head", "persistent-tagged-spread", "kernels+pdl-tagged",
                "kernels+pdl-tagged-head")


def expected(stages: int, start: torch.Tensor, read: int = D, runs: int = 1, by_head: bool = False,
             stride: int = 1) -> torch.Tensor:
    """The chain on the host, int32 arithmetic wrapping as the GPU's does. A chain run again (as
    the timed graph replays are) continues from its last result when `stages` is even: it lands in
    the half the next run starts from; `runs` follows that many runs. by_head: each value's total
    is its head's (persistent-flags-head), not the first `read` values'. stride: `read` values
    every stride-th (persistent-tagged-spread: one from each of 128 places)."""
    x = start.to(torch.int64).cpu()
    j = torch.arange(D, dtype=torch.int64)
    for stage in [s for _ in range(runs) for s in range(stages)]:
        if by_head:
            total = x.view(-1, HEAD).sum(1).repeat_interleave(HEAD) % 2**32
        else:
            total = int(x[:read * stride:stride].sum()) % 2**32
        x = (total * 3 + x + j + stage) % 2**32
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def expected_for(form: str, stages: int, start: torch.Tensor, read: int = D, runs: int = 1) -> torch.Tensor:
    """`expected` for a form: its head's total (the -head forms), HEAD values one every D / HEAD
    (-spread), or the first `read` values (the others)."""
    if form.endswith("-spread"):
        return expected(stages, start, HEAD, runs, stride=D // HEAD)
    return expected(stages, start, read, runs, by_head=form.endswith("-head"))


def _refuse_unless_resident(form: str, grid: int, device: torch.device) -> None:
    """A grid barrier waits for every program: all must be resident at once, or it spins forever.
    Triton's interpreter runs one program after another, so there only one program can use it."""
    if not form.startswith("persistent") or grid == 1:
        return
    if _INTERPRET:
        raise ValueError(f"{form} with {grid} programs under Triton's interpreter would spin at its first "
                         "barrier forever (programs run one at a time there): use one program")
    if device.type == "cuda" and grid > torch.cuda.get_device_properties(device).multi_processor_count:
        raise ValueError(f"{form} with {grid} programs: more than this GPU's SMs, so not all can be resident "
                         "at once and its grid barrier could wait forever; use at most one program an SM")


def flag_shape(form: str, programs: int) -> dict:
    """The flag kernel's constants for a form and program count: a program's slice, the heads it
    covers (HEADS, WIDTH values of each) and how many programs it waits for (WAIT_N: its heads'
    writers, from the first one the kernel computes; or every program)."""
    slice_ = slice_for(programs)
    by_head = form.endswith("-head")
    heads = max(1, slice_ // HEAD)
    wait_n = max(1, heads * HEAD // slice_) if by_head else triton.cdiv(D, slice_)
    return dict(SLICE=slice_, HEAD=HEAD, HEADS=heads, WIDTH=min(slice_, HEAD), BY_HEAD=by_head, WAIT_N=wait_n,
                BLOCK=triton.next_power_of_2(wait_n), INTERPRET=_INTERPRET, READ=D)


def tagged_shape(form: str, programs: int) -> dict:
    """The tagged kernels' constants: flag_shape's slice and heads, without the flag kernel's own."""
    shape = {k: v for k, v in flag_shape(form, programs).items() if k not in ("WAIT_N", "BLOCK", "READ")}
    return {**shape, "SPREAD": True} if form.endswith("-spread") else shape


def chain(form: str, programs: int, stages: int, buf: torch.Tensor, count: torch.Tensor, read: int = D):
    """A function that runs the whole chain once (buf's first half in, the result in the half
    `stages % 2` points at); each step's programs read the first `read` values (the flag and
    tagged forms ignore it: they read all D, each value's head, or -spread's HEAD values)."""
    slice_ = slice_for(programs)
    grid = (triton.cdiv(D, slice_),)
    if form.startswith("persistent") and not (form.endswith("-head") and slice_ >= HEAD):   # (there each
        # program reads only its own heads: it never waits for another; the kernels+pdl forms' programs
        # wait only on the kernel before's, all of them started by then)
        _refuse_unless_resident(form, grid[0], buf.device)
    if form == "persistent":
        def run():
            count.zero_()
            _persistent_kernel[grid](buf, count, D, STAGES=stages, READ=read, SLICE=slice_, num_warps=4)
        return run
    if form in TAGGED_FORMS:
        words = torch.zeros(2 * D, dtype=torch.int64, device=buf.device)   # kept by run
        shape = tagged_shape(form, programs)

        def run():   # the int32 chain in (tagged 1) and out: six small torch kernels a run, timed with the
            # chain (~0.05 us a step of 196, not subtracted: against the tagged forms)
            words.zero_()
            words[:D] = (buf[:D].to(torch.int64) & 0xFFFFFFFF) | (1 << 32)
            if form.startswith("persistent"):
                _persistent_tagged_kernel[grid](words, D, STAGES=stages, **shape, num_warps=4)
            else:   # (-spread is persistent only: the kernel form takes no SPREAD)
                for stage in range(stages):
                    _tagged_stage_kernel[grid](words, D, stage, **shape, num_warps=4,
                                               **({} if _INTERPRET else {"launch_pdl": True}))
            buf.view(2, D)[stages % 2] = words.view(2, D)[stages % 2].to(torch.int32)   # the low halves
        return run
    if form in FLAG_FORMS:
        flags = torch.zeros(grid[0], dtype=torch.int32, device=buf.device)   # one a program, kept by run
        shape = flag_shape(form, programs)

        def run():
            flags.zero_()   # each run's flags count its steps from 0
            _persistent_flags_kernel[grid](buf, flags, D, STAGES=stages, **shape, num_warps=4)
        return run
    pdl, early = form.startswith("kernels+pdl"), form.endswith("-early")
    options = {"launch_pdl": True} if pdl else {}

    def run():
        for stage in range(stages):
            _stage_kernel[grid](buf, D, stage, READ=read, SLICE=slice_, USE_PDL=pdl, EARLY=early, num_warps=4,
                                **options)
    return run


def check(form: str, programs: int, stages: int, device: str, run_stages: int | None = None, read: int = D) -> bool:
    """Run the chain once from a random start: does the result match the host's? (run_stages:
    run that many steps instead, a planted defect the check must catch)"""
    start = torch.randint(-1000, 1000, (D,), dtype=torch.int32)
    buf = torch.zeros(2 * D, dtype=torch.int32, device=device)
    buf[:D] = start.to(device)
    count = torch.zeros(1, dtype=torch.int32, device=device)
    chain(form, programs, stages if run_stages is None else run_stages, buf, count, read)()
    got = buf.view(2, D)[stages % 2].cpu()
    return torch.equal(got, expected_for(form, stages, start, read))


# --- the same chain with weights: each step a GEMV with the norm folded in ---------------------
@triton.jit
def _gemv_step(w, src, dst, rows, cols, H, eps):
    """y[rows] = (W[rows] . x) / rms(x), x read whole from `src` (another program wrote it)."""
    x = tl.load(src + cols, mask=cols < H, other=0.0, cache_modifier=".cg")
    inv_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / H + eps)
    y = tl.sum(w.to(tl.float32) * x[None, :], axis=1) * inv_rms
    tl.store(dst + rows, y)


@triton.jit
def _gemv_step_rest(w_ptr, src, dst, rows, H, eps, first, PART: tl.constexpr, BLOCK_H: tl.constexpr):
    """_gemv_step with only the rows' first PART columns loaded before the wait (`first`): the rest
    loaded here, after it, PART columns at a time, and x with them."""
    cols = tl.arange(0, PART)
    x = tl.load(src + cols, cache_modifier=".cg")
    squares = tl.sum(x * x, axis=0)
    acc = tl.sum(first.to(tl.float32) * x[None, :], axis=1)
    for part in tl.static_range(1, BLOCK_H // PART):
        x = tl.load(src + part * PART + cols, cache_modifier=".cg")
        w = tl.load(w_ptr + rows[:, None] * H + (part * PART + cols)[None, :])
        squares += tl.sum(x * x, axis=0)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    tl.store(dst + rows, acc / tl.sqrt(squares / H + eps))


@triton.jit
def _program_rows(H, ROWS: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's output rows, the columns, and its rows' offsets in one step's H x H weight."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_H)
    return rows, cols, rows[:, None] * H + cols[None, :]


_PDL_POINTS = tl.constexpr(len(phase_timer.PDL_POINTS))   # (a kernel reads a module's constant only as a constexpr)


@triton.jit
def _gemv_step_kernel(w_ptr, src, dst, H, eps, stamps, stage, stages, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
                      USE_PDL: tl.constexpr, EARLY: tl.constexpr = False, TIMED: tl.constexpr = False,
                      BEFORE: tl.constexpr = 0):
    """One step as the engine's decode GEMVs run it: the weight rows first (no kernel writes them),
    then the wait, then x. EARLY: the next kernel may start (and load its rows) before this one waits.
    TIMED: the phase timer's build (phase_timer.py, PDL_POINTS), step `stage` of `stages`.
    BEFORE: only the rows' first BEFORE columns before the wait, the rest after (0: all before)."""
    if TIMED:
        phase_timer.stamp(stamps, stage, stages, 0, _PDL_POINTS)   # the program starts
    _trigger_early(EARLY)
    rows, cols, w_tile = _program_rows(H, ROWS, BLOCK_H)
    if BEFORE == 0:
        w = tl.load(w_ptr + w_tile, mask=cols[None, :] < H)
    else:   # (the probe's H is a power of two: BLOCK_H = H, no mask)
        w = tl.load(w_ptr + rows[:, None] * H + tl.arange(0, BEFORE)[None, :])
    pdl_wait(USE_PDL)
    if TIMED:
        phase_timer.stamp(stamps, stage, stages, 1, _PDL_POINTS)   # the wait returned
    if BEFORE == 0:
        _gemv_step(w, src, dst, rows, cols, H, eps)
    else:
        _gemv_step_rest(w_ptr, src, dst, rows, H, eps, w, BEFORE, BLOCK_H)
    if TIMED:
        phase_timer.stamp(stamps, stage, stages, 2, _PDL_POINTS)   # x read, multiplied, the rows' stores issued


@triton.jit
def _persistent_gemv_kernel(w_ptr, vec, count, H, eps, STAGES: tl.constexpr, ROWS: tl.constexpr,
                            BLOCK_H: tl.constexpr):
    """Every GEMV in one launch, one program an SM. The next step's weight rows are asked for right
    after this program arrives at the barrier, so they stream while the grid gathers."""
    programs = tl.num_programs(0)
    rows, cols, w_tile = _program_rows(H, ROWS, BLOCK_H)
    w = tl.load(w_ptr + w_tile, mask=cols[None, :] < H)
    for stage in range(STAGES):
        _gemv_step(w, vec + (stage % 2) * H, vec + ((stage + 1) % 2) * H, rows, cols, H, eps)
        _arrive(count)
        following = tl.minimum(stage + 1, STAGES - 1).to(tl.int64)   # the last step reads its own again: unused
        w = tl.load(w_ptr + following * H * H + w_tile, mask=cols[None, :] < H)
        _wait_for(count, programs * (stage + 1))


@triton.jit
def _persistent_gemv_2ahead_kernel(w_ptr, vec, count, H, eps, STAGES: tl.constexpr, ROWS: tl.constexpr,
                                   BLOCK_H: tl.constexpr):
    """As _persistent_gemv_kernel, the weight rows asked for two steps ahead (two tiles held in
    registers: one program an SM may use them), so a step's weights have a barrier and a GEMV's
    time to arrive."""
    programs = tl.num_programs(0)
    rows, cols, w_tile = _program_rows(H, ROWS, BLOCK_H)
    w = tl.load(w_ptr + w_tile, mask=cols[None, :] < H)
    w_next = tl.load(w_ptr + tl.minimum(1, STAGES - 1) * H * H + w_tile, mask=cols[None, :] < H)
    for stage in range(STAGES):
        _gemv_step(w, vec + (stage % 2) * H, vec + ((stage + 1) % 2) * H, rows, cols, H, eps)
        _arrive(count)
        w = w_next
        after_next = tl.minimum(stage + 2, STAGES - 1).to(tl.int64)   # past the end: the last step's again, unused
        w_next = tl.load(w_ptr + after_next * H * H + w_tile, mask=cols[None, :] < H)
        _wait_for(count, programs * (stage + 1))


@triton.jit
def _persistent_gemv_l2_kernel(w_ptr, w_bytes, vec, count, H, eps, STAGES: tl.constexpr, ROWS: tl.constexpr,
                               BLOCK_H: tl.constexpr, AHEAD: tl.constexpr, PREFETCH: tl.constexpr):
    """As _persistent_gemv_kernel, but at each arrival the program asks L2 (prefetch.global.L2: no
    register waits for it) for its rows AHEAD steps on, and loads a step's rows into registers only
    after that step's barrier -- from L2, if they came in time. Tests whether weights can stream
    across the barriers when no load of the polling thread is in flight at its poll. (PREFETCH
    False: Triton's interpreter, which cannot run the asm; the values are the same, a prefetch is
    a hint.)"""
    programs = tl.num_programs(0)
    rows, cols, w_tile = _program_rows(H, ROWS, BLOCK_H)
    LINES: tl.constexpr = ROWS * BLOCK_H * 2 // 128   # this program's rows of one step: contiguous 128-byte lines
    step_bytes = H * H * 2
    if PREFETCH:
        for ahead in tl.static_range(0, AHEAD):   # the steps the first arrivals will not ask for
            if ahead < STAGES:
                _prefetch_l2(w_bytes + ahead * step_bytes, step_bytes, LINES)
    for stage in range(STAGES):
        _wait_for(count, programs * stage)   # the step before: every program's output stored
        w = tl.load(w_ptr + tl.cast(stage, tl.int64) * H * H + w_tile, mask=cols[None, :] < H)
        _gemv_step(w, vec + (stage % 2) * H, vec + ((stage + 1) % 2) * H, rows, cols, H, eps)
        _arrive(count)
        if PREFETCH:
            later = stage + AHEAD
            if later < STAGES:
                _prefetch_l2(w_bytes + tl.cast(later, tl.int64) * step_bytes, step_bytes, LINES)


# the persistent forms that stream through L2, and how many steps ahead they ask for
L2_AHEAD = {"persistent-l2": 1, "persistent-l2x2": 2}


# session 27: PDL kernels that load only a share of their rows before the wait (1/2, 1/4), the rest
# after it. Does the boundary's hop shrink with less asked for before it (the previous grid's end
# waiting behind the next one's loads, as persistent-ws's release seemed to)?
PART_BEFORE_THE_WAIT = {"kernels+pdl-half": 2, "kernels+pdl-quarter": 4}


def gemv_chain(form: str, weights: torch.Tensor, vec: torch.Tensor, count: torch.Tensor, stages: int,
               programs: int):
    """A function that runs `stages` GEMVs once (weights [stages, H, H] bf16; vec [2, H] fp32, the
    first row in, the result in row `stages % 2`)."""
    hidden = weights.shape[-1]
    rows = hidden // programs
    _refuse_unless_resident(form, programs, weights.device)
    if form in streamed_chain.FORMS:
        return streamed_chain.streamed_chain(form, weights, vec, count, stages, programs)
    if form in L2_AHEAD:
        w_bytes = as_bytes(weights)   # _prefetch_l2's offsets count bytes

        def run():
            count.zero_()
            _persistent_gemv_l2_kernel[(programs,)](weights, w_bytes, vec, count, hidden, 1e-6, STAGES=stages, ROWS=rows,
                                                    BLOCK_H=hidden, AHEAD=L2_AHEAD[form], PREFETCH=not _INTERPRET,
                                                    num_warps=8, num_stages=1)
        return run
    if form.startswith("persistent"):
        kernel = _persistent_gemv_2ahead_kernel if form == "persistent-2ahead" else _persistent_gemv_kernel

        def run():
            count.zero_()
            kernel[(programs,)](weights, vec, count, hidden, 1e-6, STAGES=stages, ROWS=rows, BLOCK_H=hidden,
                                num_warps=8, num_stages=1)
        return run
    # (Triton's interpreter has no PDL: there the pdl forms run as plain kernels, values the same)
    pdl, early = form.startswith("kernels+pdl") and not _INTERPRET, form.endswith("-early")
    before = hidden // PART_BEFORE_THE_WAIT[form] if form in PART_BEFORE_THE_WAIT else 0
    options = {"launch_pdl": True} if pdl else {}
    warps = 8 if rows * hidden >= 16384 else 4   # <= 64 registers of weights a thread (no spills)

    def run(stamps: torch.Tensor | None = None):   # stamps: the phase timer's build (phases())
        for stage in range(stages):
            _gemv_step_kernel[(programs,)](weights[stage], vec[stage % 2], vec[(stage + 1) % 2], hidden, 1e-6,
                                           vec if stamps is None else stamps, 0 if stamps is None else stage, stages,
                                           ROWS=rows, BLOCK_H=hidden, USE_PDL=pdl, EARLY=early, TIMED=stamps is not None,
                                           BEFORE=before, num_warps=warps, **options)
    return run


# the part-2 forms the phase timer can stamp, and where in a step (phase_timer.py)
TIMED_FORMS = {**{form: phase_timer.PDL_POINTS for form in ("kernels+pdl", *PART_BEFORE_THE_WAIT)},
               **{form: phase_timer.POLL_POINTS for form in streamed_chain.FORMS}}


def phases(form: str, run, programs: int, stages: int) -> dict:
    """Where a step of the chain goes: one more run in the phase timer's build of its kernel, captured
    in a CUDA graph as the timed runs are, folded (phase_timer.fold). Not the timed run: the stamps'
    stores would be in it. The chain moves on by a run (its result is checked before)."""
    points = TIMED_FORMS[form]
    stamps = phase_timer.empty_stamps(programs, stages, points, "cuda")
    run(stamps)   # compiles the timed build
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(stamps)
    stamps.zero_()
    graph.replay()
    torch.cuda.synchronize()
    return phase_timer.fold(stamps.cpu(), points, seen="waited", published=points[-1])


def gemv_weights(stages: int, hidden: int, device: str) -> torch.Tensor:
    """Random bf16 weights scaled so that a step keeps the vector's size (the norm does the rest)."""
    g = torch.Generator(device=device).manual_seed(0)
    return (torch.randn(stages, hidden, hidden, generator=g, device=device) / hidden ** 0.5).to(torch.bfloat16)


def reference_gemv(weights: torch.Tensor, x: torch.Tensor, runs: int = 1) -> torch.Tensor:
    """The GEMV chain in torch's fp32, `runs` times over (a run continues from the last one's result)."""
    for _ in range(runs):
        for w in weights:
            x = (w.float() @ x) / (x.square().mean() + 1e-6).sqrt()
    return x


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def check_gemv(form: str, weights: torch.Tensor, programs: int, run_stages: int | None = None) -> float:
    """The chain's result against torch's fp32 on the same weights: ||got - ref|| / ||ref|| (a stale
    read or a missing step gives ~1; accumulation order ~1e-6)."""
    stages, hidden, device = weights.shape[0], weights.shape[-1], weights.device
    vec = torch.zeros(2, hidden, device=device)
    vec[0] = torch.randn(hidden, generator=torch.Generator().manual_seed(1)).to(device)
    want = reference_gemv(weights, vec[0].clone())
    count = torch.zeros(1, dtype=torch.int32, device=device)
    gemv_chain(form, weights, vec, count, stages if run_stages is None else run_stages, programs)()
    return rel_err(vec[stages % 2], want)


def time_graph(run, steps: int, replays: int = 50) -> dict:
    """Run once (compiling), capture `run` in a CUDA graph, replay it: microseconds a step (median
    over replays) and `runs`, how many times the chain ran (the caller checks the result of all)."""
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):   # captured, not run
        run()
    times = [seconds * 1e6 / steps for seconds in cuda_event_times(graph.replay, replays)]
    return {"us_a_step": statistics.median(times), "us_a_step_min": min(times), "us_a_step_max": max(times),
            "runs": 1 + replays}


STEP_FORMS = ("kernels", "kernels+pdl", "kernels+pdl-early", "persistent", "persistent-flags", "persistent-flags-head",
              "persistent-tagged", "persistent-tagged-head", "persistent-tagged-spread", "kernels+pdl-tagged",
              "kernels+pdl-tagged-head")   # part 1's forms
GEMV_FORMS = ("kernels", "kernels+pdl", "kernels+pdl-early", *PART_BEFORE_THE_WAIT, "persistent", "persistent-2ahead",
              *L2_AHEAD, *streamed_chain.FORMS)   # part 2's


def check_forms(forms, parts=(1, 2)) -> None:
    """Refuse a form name that none of the chosen parts has, naming the ones they do."""
    known = dict.fromkeys([*(STEP_FORMS if 1 in parts else ()), *(GEMV_FORMS if 2 in parts else ())])
    unknown = [f for f in forms or () if f not in known]
    if unknown:
        raise ValueError(f"measure boundaries: no form {', '.join(unknown)} in part {' or '.join(map(str, parts))}; "
                         f"choose from {', '.join(known)}")


def measure_boundaries(stages: int = 196, forms=None, parts=(1, 2), hidden_sizes=(1024, 2048)) -> list[dict]:
    """The chosen parts on this GPU (both by default), printed as they go; the rows. forms: only
    these (names from STEP_FORMS, GEMV_FORMS; all by default). `checked`: the first run of a form
    matched the host, and so did its buffer after every timed replay (the replays continue the
    chain: `stages` must be even). 196: a decode step's layer kernels, 28 layers x 7."""
    from workbench.measure.roofline import measure_copy_bandwidth
    if stages % 2:
        raise ValueError(f"stages={stages}: an even number, so each run starts where the last one ended")
    check_forms(forms, parts)
    device = torch.device("cuda")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    gpu = torch.cuda.get_device_name(device)
    pdl_here = torch.cuda.get_device_capability(device)[0] >= 9   # PDL: Hopper and newer
    copy = measure_copy_bandwidth("cuda")
    print(f"{gpu} ({sms} SMs), {copy}" + ("" if pdl_here else "; no PDL before Hopper: its forms are left out"))
    if 1 in parts:
        print(f"1. {stages} dependent steps, no weights, one CUDA graph: us a step, median of 50 replays "
              f"[min-max]; each program reads the first `read` of the {D} values the step before wrote")
        print(f"{'form':>21} {'read':>5} {'programs':>8} {'us a step':>10} {'range':>13} {'checked':>8}")
    rows = []

    def fits(p: int) -> bool:   # a persistent form's programs all resident: at most one an SM
        return triton.cdiv(D, slice_for(p)) <= sms
    plain = ["kernels"] + (["kernels+pdl"] if pdl_here else [])
    cases = [(form, p, D) for form in plain + (["kernels+pdl-early"] if pdl_here else []) for p in (128, 512, 1024)]
    cases += [(form, p, D) for form in ("persistent", "persistent-flags") for p in (32, 64, 128)
              if fits(p)]
    cases += [("persistent-flags-head", p, HEAD) for p in (8, 64, 128) if fits(p)]
    cases += [("persistent-tagged", p, D) for p in (32, 64, 128) if fits(p)]
    cases += [("persistent-tagged-head", p, HEAD) for p in (8, 64, 128) if fits(p)]
    # a head's bytes from every writer: is it the bytes polled or the writers waited on that cost?
    cases += [("persistent-tagged-spread", p, HEAD) for p in (32, 128) if fits(p)]
    if pdl_here:   # the same waits between kernels: each polls the words it reads, then lets the next in
        cases += [("kernels+pdl-tagged", p, D) for p in (32, 128)]
        cases += [("kernels+pdl-tagged-head", p, HEAD) for p in (8, 128)]
    # the control: each program reads 32 values (128 bytes), so the L2 reads no longer grow with the programs
    cases += [(form, p, 32) for form in plain[-1:] for p in (128, 512, 1024)]
    cases += [("persistent", p, 32) for p in (128,) if fits(p)]
    cases = [c for c in cases if 1 in parts and (forms is None or c[0] in forms)]

    def left_out(verdict: str, reason: str) -> None:   # a row that has no time, and why
        rows.append({"probe": "steps", "form": form, "read": read, "programs": programs, "stages": stages,
                     "checked": False, "error": reason, "gpu": gpu})
        print(f"{form:>21} {read:5d} {programs:8d}   {verdict}: {reason}", flush=True)
    for form, programs, read in cases:
        try:   # a form this Triton cannot compile is reported, and the other forms still run
            ok = check(form, programs, 16, "cuda", read=read) and check(form, programs, stages, "cuda", read=read)
        except (triton.CompilationError, RuntimeError) as error:
            torch.cuda.synchronize()   # a device fault raises again here and stops the probe: the context is gone
            left_out("not run", (str(error).strip().splitlines() or [type(error).__name__])[-1][:120])
            continue
        if not ok:   # a wrong chain's time means nothing (and a broken wait may poll to its limit each step)
            left_out("WRONG", "its result did not match the host's: not timed")
            continue
        start = torch.randint(-1000, 1000, (D,), dtype=torch.int32)
        buf = torch.zeros(2 * D, dtype=torch.int32, device=device)
        buf[:D] = start.to(device)
        count = torch.zeros(1, dtype=torch.int32, device=device)
        timing = time_graph(chain(form, programs, stages, buf, count, read), stages)
        ok = ok and torch.equal(buf[:D].cpu(), expected_for(form, stages, start, read, runs=timing["runs"]))
        grid = triton.cdiv(D, slice_for(programs))
        rows.append({"probe": "steps", "form": form, "read": read, "programs": grid, "stages": stages, "checked": ok,
                     **timing, "gpu": gpu})
        print(f"{form:>21} {read:5d} {grid:8d} {timing['us_a_step']:10.2f} "
              f"{timing['us_a_step_min']:6.2f}-{timing['us_a_step_max']:<6.2f} {'ok' if ok else 'WRONG':>8}",
              flush=True)
    if 2 not in parts or (forms is not None and not set(forms) & set(GEMV_FORMS)):
        return rows
    print(f"\n2. {stages} dependent GEMVs (bf16 H x H weights, the norm folded in), one CUDA graph; "
          f"% of the copy bandwidth measured above")
    print(f"{'form':>17} {'H':>5} {'MB a step':>9} {'programs':>8} {'us a step':>10} {'range':>13} "
          f"{'% copy bw':>9} {'rel err':>8}")
    why_no_ws = streamed_chain.why_not(device)
    if why_no_ws and (forms is None or set(forms) & set(streamed_chain.FORMS)):
        print(f"(the persistent-ws forms are left out: {why_no_ws})")
    for hidden in hidden_sizes:
        weights = gemv_weights(stages, hidden, "cuda")
        step_bytes = hidden * hidden * 2
        pdl_cases = [("kernels+pdl", p) for p in (hidden // 4, 128, 256, 512, 1024)] if pdl_here else []
        pdl_cases += [("kernels+pdl-early", p) for p in (hidden // 4, 128)] if pdl_here else []
        pdl_cases += [(form, p) for form in PART_BEFORE_THE_WAIT for p in (128, 256)] if pdl_here else []
        cases = list(dict.fromkeys([("kernels", hidden // 4), *pdl_cases, ("persistent", 128), ("persistent-2ahead", 128),
                                    *[(form, 128) for form in L2_AHEAD],
                                    *[(form, 128) for form in streamed_chain.FORMS if why_no_ws is None]]))
        for form, programs in cases:
            if (form.startswith("persistent") and programs > sms) or (forms is not None and form not in forms):
                continue
            if hidden % programs:   # (small H: more programs than rows)
                continue
            err = check_gemv(form, weights, programs)
            vec = torch.zeros(2, hidden, device=device)
            vec[0] = torch.randn(hidden, generator=torch.Generator().manual_seed(2)).to(device)
            start = vec[0].clone()
            count = torch.zeros(1, dtype=torch.int32, device=device)
            timing = time_graph(gemv_chain(form, weights, vec, count, stages, programs), stages)
            err = max(err, rel_err(vec[0], reference_gemv(weights, start, runs=timing["runs"])))
            of_copy = step_bytes / (timing["us_a_step"] * 1e-6) / copy.bandwidth if copy.available else None
            step_phases = None
            if form in TIMED_FORMS:   # where its step goes: one more run, with the phase timer
                step_phases = phases(form, gemv_chain(form, weights, vec, count, stages, programs), programs, stages)
            rows.append({"probe": "gemvs", "form": form, "hidden": hidden, "step_bytes": step_bytes,
                         "programs": programs, "stages": stages, "rel_err": err, "checked": err < 1e-3,
                         "of_copy_bandwidth": of_copy, "copy_bandwidth": copy.bandwidth, **timing, "gpu": gpu,
                         **({"phases_us": step_phases} if step_phases else {})})
            print(f"{form:>17} {hidden:5d} {step_bytes / 1e6:9.1f} {programs:8d} {timing['us_a_step']:10.2f} "
                  f"{timing['us_a_step_min']:6.2f}-{timing['us_a_step_max']:<6.2f} "
                  f"{'n/a' if of_copy is None else f'{100 * of_copy:.0f} %':>9} {err:8.1e}", flush=True)
            if step_phases:
                print(f"{'':>17} a step's phases, us (medians, one run with the phase timer): "
                      + ", ".join(f"{name} {us:.2f}" for name, us in step_phases.items() if us is not None), flush=True)
        del weights
    return rows
