"""workbench/measure/boundaries.py on the CPU: its chains are right under Triton's interpreter (a
child process, TRITON_INTERPRET=1), its checks catch a step left out, and its persistent kernels
compile for sm_90a with the barrier's release and acquire in place and no spills. The timing is the
GPU's (`python -m workbench measure boundaries`); the interpreter runs one program after another,
so the persistent forms run here with one program only (more would spin at the first barrier forever).
"""
from __future__ import annotations

import importlib.util
import re

import pytest
import torch

CHECKS = ["kernels_chain_matches_the_host", "persistent_chain_matches_the_host", "flag_chains_match_the_host",
          "tagged_chains_match_the_host", "tagged_words_carry_their_step", "a_poll_waits_for_its_tag_and_gives_up",
          "the_spread_form_reads_one_value_every_eight", "every_step_form_runs_on_the_host",
          "a_head_step_at_many_programs_matches_the_host",
          "a_missing_step_is_caught",
          "a_run_again_continues_the_chain", "the_control_reads_less", "a_grid_barrier_refuses_to_spin_forever",
          "gemv_chains_match_torch", "a_missing_gemv_is_caught"]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture(scope="module")
def verdicts() -> dict:
    from kernel_cases import interpreter_verdicts
    return interpreter_verdicts(__file__)


@pytest.mark.parametrize("name", CHECKS)
def test_boundary_probe_on_the_interpreter(verdicts, name):
    assert verdicts[name] == "ok", verdicts[name]


def test_the_persistent_barrier_and_the_early_trigger_compile_as_meant():
    from test_kernel_resources import _script   # skips where this Triton cannot compile for sm_90a
    import torch
    kernel_resources = _script()
    probe = _probe()
    buf, count = torch.zeros(2 * probe.D, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    weights, vec = torch.zeros(2, 2048, 2048, dtype=torch.bfloat16), torch.zeros(2, 2048)
    with kernel_resources.capture() as launches:
        probe.chain("persistent", 128, 8, buf, count)()
        probe.gemv_chain("persistent", weights, vec, count, 2, 128)()   # the device's largest case
        probe.gemv_chain("persistent-2ahead", weights, vec, count, 2, 128)()
        probe.gemv_chain("persistent-l2x2", weights, vec, count, 4, 128)()
        probe.gemv_chain("kernels+pdl-early", weights, vec, count, 1, 512)()
        probe.gemv_chain("kernels+pdl-half", weights, vec, count, 1, 128)()
        probe.gemv_chain("kernels+pdl-quarter", weights, vec, count, 1, 256)()
        probe.chain("persistent-flags", 128, 8, buf, count)()
        probe.chain("persistent-flags-head", 128, 8, buf, count)()
        probe.chain("persistent-tagged", 128, 196, buf, count)()   # (the probe's own stage count)
        probe.chain("persistent-tagged-head", 128, 196, buf, count)()
        probe.chain("kernels+pdl-tagged-head", 128, 1, buf, count)()
        probe.chain("kernels+pdl-tagged", 128, 1, buf, count)()
        probe.chain("persistent-tagged-spread", 128, 196, buf, count)()
    for launch in launches:
        kernel = kernel_resources.compile_sm90(launch)
        ptx = kernel.asm["ptx"]
        if "flags" in kernel.name:   # each program's own flag, released; the others' polled, then a fence
            assert re.search(r"atom\.global\.gpu\.release\.exch", ptx), "the flag must publish the step's stores"
            assert "ld.volatile.global" in ptx, "the poll must read the flags afresh each time"
            assert "fence.acq_rel.gpu" in ptx, "a fence after the poll orders the reads after it"   # (the loop's
            # blocks are laid out out of order in the PTX text: where it sits is not checked here)
            assert "ld.global.cg" in ptx and kernel_resources.ptxas_report(ptx)["spill_stores"] == 0, kernel.name
            continue
        if "tagged" in kernel.name:   # the data is its own flag: relaxed 64-bit stores, volatile polls, no fence
            assert "st.relaxed.gpu.global.b64" in ptx, "each tagged word must be stored whole, relaxed, GPU-wide"
            assert "ld.volatile.global" in ptx, "the poll must read the words afresh each time"
            widths = set(re.findall(r"ld\.volatile\.global(?:\.v\d)?\.(\w+)", ptx))
            assert widths <= {"b64", "u64", "s64"}, f"a tag and its value must be read in one 64-bit access: {widths}"
            assert "fence." not in ptx and "atom." not in ptx, "no fence and no atomic: the tag is the only signal"
            assert kernel_resources.ptxas_report(ptx)["spill_stores"] == 0, kernel.name
            if "stage" in kernel.name:   # the kernel form: the next kernel let in, no wait for the one before
                assert "griddepcontrol.launch_dependents" in ptx and "griddepcontrol.wait" not in ptx, kernel.name
                assert ptx.rindex("ld.volatile.global") < ptx.index("griddepcontrol.launch_dependents"), \
                    "every read of the poll, then the trigger"
            continue
        if launch.kwargs.get("EARLY"):   # the early form lets the next kernel in before it waits
            assert ptx.index("griddepcontrol.launch_dependents") < ptx.index("griddepcontrol.wait"), kernel.name
            continue
        if launch.kwargs.get("BEFORE"):   # a share of the rows loaded before the wait, the rest after it
            wait = ptx.index("griddepcontrol.wait")
            loads = [m.start() for m in re.finditer(r"ld\.global(?!\.cg)[.\w]*\.(?:v\d\.)?b\d+", ptx)]
            assert any(at < wait for at in loads) and any(at > wait for at in loads), kernel.name
            assert kernel_resources.ptxas_report(ptx)["spill_stores"] == 0, kernel.name
            continue
        assert re.search(r"(red|atom)\.global\.gpu\.release\.add", ptx), "the arrival must publish the step's stores"
        assert re.search(r"(ld|atom)\.global\.gpu\.acquire", ptx), "the poll must acquire what others published"
        assert "ld.global.cg" in ptx, "the vector must be read past L1 (another SM wrote it)"
        assert kernel_resources.ptxas_report(ptx)["spill_stores"] == 0, kernel.name
        if "l2" in kernel.name:   # the L2 form's prefetches: the first steps' before the loop, later ones in it
            assert ptx.count("prefetch.global.L2") >= 2, "the L2 form must ask L2 for later steps' rows"


def _compile_streamed_chain(rows: int, slots: int, per_slot: int = 1, timed: bool = False, late: bool = False):
    """streamed_chain's kernel compiled for sm_90a, on this machine, no GPU (Gluon has no interpreter)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    import triton
    from workbench.measure import streamed_chain
    layout = gl.NVMMASharedLayout.get_default_for([rows, streamed_chain.BLOCK_K], gl.bfloat16)
    signature = {"w_desc": f"tensordesc<bf16[{rows},{streamed_chain.BLOCK_K}],{layout!r}>", "vec": "*fp32",
                 "count": "*i32", "stages": "i32", "eps": "fp32", "stamps": "*i64" if timed else "*i32",
                 "HIDDEN": "constexpr", "NSLOTS": "constexpr", "PER_SLOT": "constexpr", "TIMED": "constexpr",
                 "LATE": "constexpr"}
    source = GluonASTSource(streamed_chain._streamed_chain_kernel, signature,   # 128 programs: H = 128 x rows
                            constexprs={"HIDDEN": rows * 128, "NSLOTS": slots, "PER_SLOT": per_slot, "TIMED": timed,
                                        "LATE": late})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": streamed_chain.CONSUMER_WARPS, "maxnreg": 128})


H200_SHARED_BYTES = 232448   # the most shared memory one block may ask for on an H100/H200 (227 KB)


def test_the_streamed_chain_compiles_for_hopper_as_meant():
    """The persistent-ws kernel (measure/streamed_chain.py): TMA copies into the ring, mbarrier waits,
    the counter polled with acquire and added to with release, one worker warp group beside the
    consumers' four warps, no spills, and its largest ring (48 slots at H = 2,048: 16 rows a program)
    within a block's shared memory -- compiled only: it runs on the device (`measure boundaries`)."""
    from test_kernel_resources import _script
    kernel_resources = _script()   # skips where this Triton cannot compile for sm_90a
    from workbench.measure import streamed_chain
    if not streamed_chain.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon Hopper API")
    for rows in (4, 8, 16):   # H = 512, 1,024 and 2,048 over 128 programs
        tiles = rows * 128 // streamed_chain.BLOCK_K   # a step's tiles: the step form's slot
        rings = [(slots, 1, form in streamed_chain.LATE_FREE) for form, slots in streamed_chain.SLOTS.items()]
        rings += [(slots, tiles, form in streamed_chain.LATE_FREE) for form, slots in streamed_chain.STEP_SLOTS.items()]
        for slots, per_slot, late in rings:
            kernel = _compile_streamed_chain(rows, slots, per_slot, late=late)
            ptx = kernel.asm["ptx"]
            # the consumer's slot hand-backs (plain arrives; the producer's carry expect_tx): before the
            # release, or -- the late forms -- all after it
            release = re.search(r"(red|atom)\.global\.gpu\.release\.add", ptx).start()
            hand_backs = [m.start() for m in re.finditer(r"mbarrier\.arrive\.shared::cta\.b64", ptx)]
            assert hand_backs and all((at > release) == late for at in hand_backs), (rows, slots, per_slot, late)
            assert "cp.async.bulk.tensor" in ptx, "the producer must copy tiles with the TMA unit"
            assert "mbarrier.try_wait" in ptx and "expect_tx" in ptx, "slots must be handed over by mbarriers"
            assert re.search(r"(ld|atom)\.global\.gpu\.acquire", ptx), "the poll must acquire the other programs' rows"
            assert re.search(r"(red|atom)\.global\.gpu\.release\.add", ptx), "the arrival must release this program's"
            assert "setmaxnreg" in ptx and kernel.metadata.num_warps == 8, "a worker warp group beside 4 consumer warps"
            assert kernel_resources.ptxas_report(ptx)["spill_stores"] == 0, (rows, slots, per_slot)
            assert kernel.metadata.shared <= H200_SHARED_BYTES, (rows, slots, per_slot, kernel.metadata.shared)
            assert "%globaltimer" not in ptx, "the timed runs must not carry the phase timer's stamps"
    timed = _compile_streamed_chain(16, max(streamed_chain.SLOTS.values()), timed=True)   # the phase timer's build
    ptx = timed.asm["ptx"]
    assert "%globaltimer" in ptx and "%clock64" in ptx, "the phase timer reads both clocks"
    assert len(re.findall(r"st\.global\.b64", ptx)) >= 2 * streamed_chain.PHASES, "both clocks at every phase"
    assert kernel_resources.ptxas_report(ptx)["spill_stores"] == 0 and timed.metadata.shared <= H200_SHARED_BYTES


def test_the_pdl_chains_timed_build_stamps_and_the_plain_one_does_not():
    """kernels+pdl's phase timer (boundaries._gemv_step_kernel, TIMED): both clocks at its three points,
    after the wait for the last two; the build the probe times carries none of it. Compiled for sm_90a."""
    from test_kernel_resources import _script
    kernel_resources = _script()   # skips where this Triton cannot compile for sm_90a
    from workbench.measure import phase_timer
    probe = _probe()
    weights, vec, count = torch.zeros(2, 2048, 2048, dtype=torch.bfloat16), torch.zeros(2, 2048), torch.zeros(1)
    stamps = phase_timer.empty_stamps(256, 2, phase_timer.PDL_POINTS, "cpu")
    for form in ("kernels+pdl", *probe.PART_BEFORE_THE_WAIT):   # (and the forms with a share before the wait)
        with kernel_resources.capture() as launches:
            probe.gemv_chain(form, weights, vec, count, 1, 256)()
            probe.gemv_chain(form, weights, vec, count, 1, 256)(stamps)
        plain, timed = (kernel_resources.compile_sm90(launch).asm["ptx"] for launch in launches)
        assert "%globaltimer" not in plain and "%clock64" not in plain
        assert timed.count("%globaltimer") == timed.count("%clock64") == len(phase_timer.PDL_POINTS), form
        assert timed.index("griddepcontrol.wait") < timed.rindex("%globaltimer"), "the last stamps after the wait"
        assert kernel_resources.ptxas_report(timed)["spill_stores"] == 0, form


def _stamps(programs, stages, hop_ns, x_ns, tiles_ns, arrival_ns, rate, skew_ns):
    """Phase-timer stamps [programs, stages, 2, 5] of a made-up chain: each program's poll starts at
    its own time, sees the step before's last arrival hop_ns later, then x, tiles and its arrival
    take the given ns; the cycle counter runs at `rate` cycles a ns from an origin of its own at
    every (program, step), as a kernel chain's program may run on another SM each step."""
    from workbench.measure import phase_timer
    stamps = torch.zeros(programs, stages, 2, len(phase_timer.POLL_POINTS), dtype=torch.int64)
    last_arrival = 0
    for stage in range(stages):
        arrivals = []
        for p in range(programs):
            t0 = last_arrival - 300 + skew_ns[p]   # a program polls before the others have arrived
            t1 = last_arrival + hop_ns + skew_ns[p]
            ns = [t0, t1, t1 + x_ns, t1 + x_ns + tiles_ns, t1 + x_ns + tiles_ns + arrival_ns]
            stamps[p, stage, 0] = torch.tensor([10_000 + t for t in ns])
            stamps[p, stage, 1] = torch.tensor([int(rate * t) + 777 * p + 50_000 * stage for t in ns])
            arrivals.append(ns[-1])
        last_arrival = max(arrivals)
    return stamps


def test_the_phase_timer_folds_its_stamps_into_the_phases_of_a_step():
    """phase_timer.fold on a chain whose every phase is known: hop from the global timer across programs,
    the rest from each step's cycle counter at the GPU's rate. Seen failing with the hop read from the
    step's own last arrival, with the clocks swapped, and with a program's rate taken across steps
    (its counter's origin moves when it runs on another SM)."""
    from workbench.measure import phase_timer
    stamps = _stamps(3, 6, hop_ns=700, x_ns=400, tiles_ns=900, arrival_ns=200, rate=1.755, skew_ns=(0, 40, 100))
    phases = phase_timer.fold(stamps, phase_timer.POLL_POINTS, seen="waited", published="arrival")
    assert list(phases) == ["hop", "hop mean", *phase_timer.POLL_POINTS[1:], "step", "timer_step_us"]
    assert phases["hop mean"] == pytest.approx(0.7 + 0.14 / 3, abs=0.01)   # skews 0, 40 and 100 ns
    assert phases["hop"] == pytest.approx(0.74, abs=0.01)     # the median program: 700 + its skew of 40
    assert phases["x read"] == pytest.approx(0.4, abs=1e-3)
    assert phases["tiles"] == pytest.approx(0.9, abs=1e-3)
    assert phases["arrival"] == pytest.approx(0.2, abs=1e-3)
    assert phases["waited"] == pytest.approx(1.0, abs=1e-3)   # polled 300 ns before the arrival, and the hop
    assert phases["step"] == pytest.approx(0.1 + 0.7 + 0.4 + 0.9 + 0.2, abs=1e-3)   # the slowest program sets it
    assert phases["timer_step_us"] is not None and phases["timer_step_us"] <= 0.04


def test_the_command_says_it_needs_a_gpu(capsys):
    import torch

    from workbench.__main__ import main
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the command would run")
    assert main(["measure", "boundaries"]) == 2
    assert "error: measure boundaries times kernels on a CUDA GPU" in capsys.readouterr().err


def test_a_mistyped_form_is_refused_with_the_list(capsys):
    """--forms names are checked before anything else (here, before the missing GPU is noticed)."""
    from workbench.__main__ import main
    assert main(["measure", "boundaries", "--forms", "kernels+pdl,persistent-taged-head"]) == 2
    err = capsys.readouterr().err
    assert "no form persistent-taged-head" in err and "persistent-tagged-head" in err, err
    assert main(["measure", "boundaries", "--part", "2", "--forms", "persistent-tagged"]) == 2   # part 1's only
    assert "no form persistent-tagged in part 2" in capsys.readouterr().err


def check_every_step_form_runs_on_the_host(probe):
    """Each of part 1's forms by the name --forms takes (STEP_FORMS), one program, three steps: the
    list and chain() agree, and each matches the host's chain. (kernels+pdl and -early wait with
    PDL's own instruction, which the interpreter does not have: the sm_90a test compiles them.)"""
    for form in probe.STEP_FORMS:
        if form in ("kernels+pdl", "kernels+pdl-early"):
            continue
        assert probe.check(form, 1, 3, "cpu", read=probe.HEAD if form.endswith("-spread") else probe.D), form


def _probe():
    from workbench.measure import boundaries
    return boundaries


# --- the checks, run in the child process ----------------------------------------------------
def check_kernels_chain_matches_the_host(probe):
    for programs in (128, 512):
        assert probe.check("kernels", programs, 5, "cpu"), programs


def check_persistent_chain_matches_the_host(probe):
    assert probe.check("persistent", 1, 5, "cpu")


def check_flag_chains_match_the_host(probe):
    """One program (all forms), and the head form with 8 (a slice a head: each program reads only the
    head it writes, so none waits for another and the interpreter's one-at-a-time order is safe).
    A head form whose programs summed the first 128 values instead of their own head would still
    match with one program at its first head only: the 8-program run reads every head."""
    import torch
    assert probe.check("persistent-flags", 1, 5, "cpu")
    for programs in (1, 8):
        assert probe.check("persistent-flags-head", programs, 5, "cpu"), programs
    start = torch.randint(-1000, 1000, (probe.D,), dtype=torch.int32)
    assert not torch.equal(probe.expected(5, start, by_head=True), probe.expected(5, start, read=probe.HEAD))


def check_tagged_chains_match_the_host(probe):
    """The tagged forms as the flag forms above: one program, and the head form with 8 (none waits for
    another); the kernel forms at 32 and 128 programs; an even chain run twice continues from its
    result (each run copies it in, tagged 0)."""
    import torch
    assert probe.check("persistent-tagged", 1, 5, "cpu")
    for programs in (1, 8):
        assert probe.check("persistent-tagged-head", programs, 5, "cpu"), programs
    for programs in (32, 128):   # a kernel a step: every program reads words the kernel before wrote
        assert probe.check("kernels+pdl-tagged", programs, 5, "cpu"), programs
        assert probe.check("kernels+pdl-tagged-head", programs, 5, "cpu"), programs
    start = torch.randint(-1000, 1000, (probe.D,), dtype=torch.int32)
    buf = torch.cat([start, torch.zeros(probe.D, dtype=torch.int32)])
    run = probe.chain("persistent-tagged-head", 8, 4, buf, torch.zeros(1, dtype=torch.int32))
    run()
    run()
    assert torch.equal(buf[:probe.D], probe.expected(4, start, runs=2, by_head=True))


def _start_words(probe, start, tag=1):
    """The chain's start as the tagged kernels take it: half 0 tagged (1, the first step's), half 1 zero."""
    import torch
    return torch.cat([(start.to(torch.int64) & 0xFFFFFFFF) | (tag << 32), torch.zeros(probe.D, dtype=torch.int64)])


def check_tagged_words_carry_their_step(probe):
    """One step from words tagged 1 (the start's tag: no program waits) writes words tagged 2, the tag
    the next step waits for, holding the host's step -- with 8 programs, and with 64 and 128 (8 and
    16 writers a head, which the chains cannot run here). Three steps leave tags 4 and 3 (the chain
    above checks their values). A writer with the wrong tag fails here at one step, before any
    reader would poll for it up to its limit."""
    import torch
    start = torch.randint(-1000, 1000, (probe.D,), dtype=torch.int32)

    def run(programs, stages):
        words = _start_words(probe, start)
        probe._persistent_tagged_kernel[(programs,)](words, probe.D, STAGES=stages,
                                                     **probe.tagged_shape("persistent-tagged-head", programs))
        return words.view(2, probe.D)
    for programs in (8, 64, 128):
        words = run(programs, 1)
        assert torch.equal(words[1] >> 32, torch.full((probe.D,), 2)), f"{programs}: step 0 must write tag 2"
        assert torch.equal(words[1].to(torch.int32), probe.expected(1, start, by_head=True)), programs
    words = run(8, 3)
    assert torch.equal(words[1] >> 32, torch.full((probe.D,), 4))
    assert torch.equal(words[0] >> 32, torch.full((probe.D,), 3))


def check_the_spread_form_reads_one_value_every_eight(probe):
    """persistent-tagged-spread: 128 values, one every D / 128, from every writer. With one program
    the chain; with 32 and 128 programs one step from the start's words (none waits); against a host
    chain that differs from the first 128 values' (a kernel reading those would fail here)."""
    import torch
    assert probe.check("persistent-tagged-spread", 1, 5, "cpu")
    start = torch.randint(-1000, 1000, (probe.D,), dtype=torch.int32)
    assert not torch.equal(probe.expected_for("persistent-tagged-spread", 3, start), probe.expected(3, start, read=128))
    for programs in (32, 128):
        words = _start_words(probe, start)
        probe._persistent_tagged_kernel[(programs,)](words, probe.D, STAGES=1,
                                                     **probe.tagged_shape("persistent-tagged-spread", programs))
        assert torch.equal(words[probe.D:].to(torch.int32), probe.expected_for("persistent-tagged-spread", 1, start))


def check_a_poll_waits_for_its_tag_and_gives_up(probe):
    """The waiting side, which the chains cannot show (the interpreter runs programs one at a time,
    so every word is there when read): words with the wanted tag take one read; words with a tag no
    step wants (a zeroed buffer's 0, or 7) are read again until MAX_POLLS reads, then the kernel gives
    up and returns (a poll that never waited would read once; one with no limit would hang here --
    seen once, with MAX_POLLS at 2**30, as a timeout)."""
    import torch
    shape = probe.tagged_shape("persistent-tagged", 1)
    start = torch.randint(-1000, 1000, (probe.D,), dtype=torch.int32)
    for tag, reads in ((1, 1), (0, 4), (7, 4)):
        polls = torch.zeros(1, dtype=torch.int32)
        probe._persistent_tagged_kernel[(1,)](_start_words(probe, start, tag), probe.D, STAGES=1, **shape, MAX_POLLS=4,
                                              polls_out=polls)
        assert int(polls) == reads, f"start words tagged {tag}: {int(polls)} reads, want {reads}"


def check_a_head_step_at_many_programs_matches_the_host(probe):
    """The head form where a slice is part of a head (64, 128 programs: 8, 16 writers a head), which
    the chains above cannot run here (a program would wait for one the interpreter has not started):
    one step with every flag already set, so none waits, against the host's step."""
    import torch
    for programs in (64, 128):
        start = torch.randint(-1000, 1000, (probe.D,), dtype=torch.int32)
        buf = torch.cat([start, torch.zeros(probe.D, dtype=torch.int32)])
        flags = torch.full((programs,), 100, dtype=torch.int32)
        probe._persistent_flags_kernel[(programs,)](buf, flags, probe.D, STAGES=1,
                                                    **probe.flag_shape("persistent-flags-head", programs))
        assert torch.equal(buf[probe.D:], probe.expected(1, start, by_head=True)), programs


def test_each_program_waits_for_exactly_its_heads_writers():
    """The wait set the kernel computes (its first program in the kernel, WAIT_N from flag_shape)
    against the programs whose slices overlap the heads it reads, counted out by brute force."""
    probe = _probe()
    for programs in (1, 8, 16, 64, 128):
        shape = probe.flag_shape("persistent-flags-head", programs)
        s, head = shape["SLICE"], shape["HEAD"]
        for p in range(probe.D // s):
            first = p * s // head * head // s   # as _persistent_flags_kernel computes it
            start = p * s // head * head                        # the heads it reads: [start, stop)
            stop = start + shape["HEADS"] * head
            writers = {q for q in range(probe.D // s) if q * s < stop and start < (q + 1) * s}   # slices overlapping them
            assert set(range(first, first + shape["WAIT_N"])) == writers, (programs, p)
    assert probe.flag_shape("persistent-flags", 128)["WAIT_N"] == 128


def check_a_missing_step_is_caught(probe):
    assert not probe.check("kernels", 128, 5, "cpu", run_stages=4)
    assert not probe.check("persistent", 1, 5, "cpu", run_stages=4)
    for form, programs in (("persistent-flags", 1), ("persistent-flags-head", 8)):
        assert not probe.check(form, programs, 5, "cpu", run_stages=4), form
    # (3, not 4: a tagged run copies back the half its own steps end in, so a step short must end in
    # the same half as the chain, or the check would compare a half no run wrote)
    for form, programs in (("persistent-tagged", 1), ("persistent-tagged-head", 8), ("kernels+pdl-tagged", 128)):
        assert not probe.check(form, programs, 5, "cpu", run_stages=3), form


def check_a_run_again_continues_the_chain(probe):
    """What the timed replays are checked against: two runs of an even chain = expected(runs=2)."""
    import torch
    start = torch.randint(-1000, 1000, (probe.D,), dtype=torch.int32)
    buf = torch.zeros(2 * probe.D, dtype=torch.int32)
    buf[:probe.D] = start
    run = probe.chain("kernels", 128, 4, buf, torch.zeros(1, dtype=torch.int32))
    run()
    run()
    assert torch.equal(buf[:probe.D], probe.expected(4, start, runs=2))
    assert not torch.equal(buf[:probe.D], probe.expected(4, start, runs=1))


def test_the_chain_remembers_its_start_at_the_probes_own_settings():
    """The timed replays are checked against expected(runs=51): that must differ from one run (a graph
    whose replays did nothing) and from 50, with every value read and with the control's 32. (An
    arithmetic whose step multiplied the sum by 3 x 1,024 forgot the start after five steps.)"""
    import torch
    probe = _probe()
    start = torch.randint(-1000, 1000, (probe.D,), dtype=torch.int32)
    for read in (probe.D, 32):
        after = {runs: probe.expected(196, start, read, runs=runs) for runs in (1, 50, 51)}
        assert not torch.equal(after[51], after[1]) and not torch.equal(after[51], after[50]), read


def check_the_control_reads_less(probe):
    assert probe.check("kernels", 128, 5, "cpu", read=32)
    assert not probe.check("kernels", 128, 5, "cpu", read=32, run_stages=4)


def check_a_grid_barrier_refuses_to_spin_forever(probe):
    import torch
    buf, count = torch.zeros(2 * probe.D, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    try:
        probe.chain("persistent", 128, 4, buf, count)
    except ValueError as err:
        assert "spin" in str(err)
    else:
        raise AssertionError("128 programs under the interpreter must be refused")


# (the pdl forms run as plain kernels on the interpreter: their rows' loads split around the wait
# are what is checked, the wait itself is compiled for sm_90a above)
_GEMV_CASES = (("kernels", 16), ("kernels+pdl", 16), ("kernels+pdl-half", 16), ("kernels+pdl-quarter", 16),
               ("persistent", 1), ("persistent-2ahead", 1), ("persistent-l2x2", 1))


def check_gemv_chains_match_torch(probe):
    weights = probe.gemv_weights(4, 64, "cpu")
    for form, programs in _GEMV_CASES:
        assert probe.check_gemv(form, weights, programs) < 1e-5, form


def check_a_missing_gemv_is_caught(probe):
    weights = probe.gemv_weights(4, 64, "cpu")
    for form, programs in _GEMV_CASES:
        assert probe.check_gemv(form, weights, programs, run_stages=3) > 0.1, form


if __name__ == "__main__":
    from kernel_cases import run_checks
    run_checks(CHECKS, globals(), _probe())
