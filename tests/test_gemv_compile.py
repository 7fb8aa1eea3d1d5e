"""The decode GEMV as the engine launches it at batch 1 (all_on: fused_decode + pdl), compiled for
sm_90a on the CPU (Triton builds PTX and a cubin without a GPU; scripts/gemv_ptx_audit.py reads
them, scripts/kernel_resources.py records and compiles the launch). Two defects found at compile time (docs/perf-notes.md, "Session 7: the
decode GEMV at compile time") must stay fixed:
  - a runtime K loop kept a [BLOCK_N, BLOCK_K] fp32 tile live across it: 167 registers for qkv,
    6 programs an SM, so its 1,024 programs took 1.3 waves (now one)
  - the RMSNorm weight was loaded after the residual store, so it waited for x's loads (a load
    cannot move above a store that may alias it): every load must come before the first store.
Skipped where this triton cannot compile for CUDA (no nvidia backend or ptxas in its wheel)."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _audit_module():
    if importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("needs triton's compiler (not its interpreter)")
    try:
        spec = importlib.util.spec_from_file_location("gemv_ptx_audit", ROOT / "scripts" / "gemv_ptx_audit.py")
        audit = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(audit)
    except ImportError as e:   # no nvidia backend in this triton
        pytest.skip(f"this triton cannot compile for CUDA: {e}")
    if not (audit.BIN / "ptxas").exists():
        pytest.skip(f"this triton has no ptxas ({audit.BIN}): it cannot compile for sm_90a")
    return audit


@pytest.fixture(scope="module")
def audit():
    return _audit_module()


# the engine's batch-1 calls with fused_decode on (qkv: the residual form, as every layer but the
# first; gate_up with the SiLU in its epilogue, then down_proj plain), and the SiLU's earlier place
CASES = ["qkv rms_norm+res", "o_proj plain", "gate_up rms_norm+res+silu", "down plain", "lm_head plain",
         "gate_up rms_norm+res", "down silu_mul"]


@pytest.mark.parametrize("name", CASES)
def test_batch1_gemv_compiles_without_the_known_defects(audit, name):
    _, n, k, call, x_cols = next(c for c in audit.CASES if c[0] == name)
    launch = audit.recorded_launch(n, k, call, use_pdl=True, x_cols=x_cols)
    ck = audit.compile_sm90(launch)
    sass, res = audit.sass_of(ck.asm["cubin"])
    facts = audit.sass_facts(sass)
    assert res["LOCAL"] == 0 and facts["STL"] == 0, f"{name}: spills ({res})"
    programs = launch.grid[0] * launch.grid[1]
    if programs <= 132 * 16:   # not the LM head: its 19k programs take many waves whatever it does
        per_sm = audit.occupancy(res["REG"], res["SHARED"], launch.kwargs["num_warps"])
        # ~one wave, with room for another Triton's allocation (gate_up: 1.16 waves under triton
        # 3.6 with PDL); before the constexpr loop, qkv took 1.29 and gate_up 1.94
        assert programs <= 1.2 * 132 * per_sm, (f"{name}: {res['REG']} registers -> {per_sm} programs an SM: "
                                          f"{programs} programs take {programs / (132 * per_sm):.2f} waves")
    ptx = ck.asm["ptx"]
    stores = [m.start() for m in re.finditer(r"\bst\.global", ptx)]
    last_load = max(m.start() for m in re.finditer(r"\bld\.global", ptx))
    assert last_load < min(stores), f"{name}: a load after a store waits for the loads before the store"


@pytest.mark.parametrize("plain", ["o_proj plain", "down plain"])
def test_the_residual_add_is_read_before_the_wait(audit, plain):
    """gemv's `add` (the A/B candidate residual-epilogue) compiles to one more load before the PDL
    wait (ACQBULK) than the same GEMV without it, and costs no spill."""
    before = {}
    for name in (plain, plain + "+add"):
        _, n, k, call, x_cols = next(c for c in audit.CASES if c[0] == name)
        sass, res = audit.sass_of(audit.compile_sm90(audit.recorded_launch(n, k, call, True, x_cols)).asm["cubin"])
        assert res["LOCAL"] == 0, f"{name}: spills ({res})"
        before[name] = audit.sass_facts(sass)["LDG before wait"]
    assert before[plain + "+add"] == before[plain] + 1, before


@pytest.mark.parametrize("use_pdl", [False, True])
def test_l2_prefetch_compiles_to_l2_prefetches_before_the_wait(audit, use_pdl):
    """EngineConfig.l2_prefetch: o_proj's GEMV given gate_up's weight asks L2 for its share of it
    (CCTL.E.PF2 = prefetch.global.L2) -- enough lines to cover the whole weight, after the program's
    own first weight loads and, under PDL, before the wait (ACQBULK); without it, no prefetch."""
    import torch

    from workbench.kernels import gemv, pdl

    def compiled(prefetch):
        x, w = torch.zeros(1, 2048, dtype=torch.bfloat16), torch.empty(1024, 2048, dtype=torch.bfloat16)
        with audit.capture() as launches, pdl.launching(use_pdl):
            gemv.linear(x, w, prefetch=prefetch)
        launch = next(launch for launch in launches if launch.fn is gemv._gemv_kernel)
        sass, _ = audit.sass_of(audit.compile_sm90(launch).asm["cubin"])
        lines = [line.split("*/", 1)[1].strip() for line in sass.splitlines() if re.search(r"/\*[0-9a-f]{4}\*/", line)]
        return launch, lines

    _, plain = compiled(None)
    assert not any("CCTL" in line for line in plain), "a prefetch without l2_prefetch"
    nxt = torch.empty(6144, 1024, dtype=torch.bfloat16)   # gate_up_proj's weight, 12.6 MB
    launch, lines = compiled(nxt)
    programs, threads = launch.grid[0] * launch.grid[1], 32 * launch.kwargs["num_warps"]
    assert launch.kwargs["PREFETCH_LINES"] * 128 * programs >= nxt.numel() * 2, "the lines miss part of the weight"
    assert launch.kwargs["PREFETCH_LINES"] >= threads, "fewer lines than threads: two threads ask for each line"
    prefetches = [i for i, line in enumerate(lines) if re.match(r"(@!?P\d+ )?CCTL\.E\.PF2", line)]
    assert len(prefetches) == launch.kwargs["PREFETCH_LINES"] // threads, f"{len(prefetches)} prefetches a thread"
    assert all(lines[i].startswith("@") for i in prefetches), "lines past the weight's end are not skipped (no predicate)"
    first_load = next(i for i, line in enumerate(lines) if line.startswith("LDG"))
    assert first_load < prefetches[0], "the prefetches go ahead of the program's own first weight tile"
    if use_pdl:
        wait = next(i for i, line in enumerate(lines) if "ACQBULK" in line)
        assert prefetches[-1] < wait, "the prefetches wait for the kernel before (they read nothing it writes)"


def test_the_side_prefetch_asks_for_each_line_of_the_weight(audit):
    """l2_prefetch's side-stream kernel (gemv.prefetch_l2) gets the weight as bytes -- _prefetch_l2's
    offsets count bytes; on the bf16 tensor itself (session 17's first run) every offset stepped 2
    bytes: every other line, and as far again past the end -- and just enough programs to cover it."""
    import torch

    from workbench.kernels import gemv
    w = torch.empty(6144, 1024, dtype=torch.bfloat16)   # gate_up_proj's weight, 12.6 MB
    with audit.capture() as launches:
        gemv.prefetch_l2(w)
    (launch,) = launches
    data, nbytes, lines, (programs,) = launch.args[0], launch.args[1], launch.kwargs["LINES"], launch.grid
    assert data.dtype == torch.uint8 and data.data_ptr() == w.data_ptr(), "the pointer does not count bytes"
    assert nbytes == data.numel() == w.numel() * w.element_size()
    assert (programs - 1) * lines * 128 < nbytes <= programs * lines * 128, "too few or too many programs"


@pytest.mark.parametrize("early", [False, True])
def test_the_early_trigger_lets_the_next_kernel_in_before_the_wait(audit, early):
    """gemv(early_trigger=True) under PDL (the A/B candidate gate-up-early, on o_proj): the PTX
    triggers its dependent before it waits, and still loads its weights before the wait, with no
    spill; the default triggers after (kernels/pdl.py)."""
    import torch

    from workbench.kernels import gemv, pdl
    x, w = torch.zeros(1, 2048, dtype=torch.bfloat16), torch.empty(1024, 2048, dtype=torch.bfloat16)   # o_proj
    with audit.capture() as launches, pdl.launching(True):
        gemv.gemv(x, w, early_trigger=early)
    ck = audit.compile_sm90(next(launch for launch in launches if launch.fn is gemv._gemv_kernel))
    ptx = ck.asm["ptx"]
    trigger, wait = ptx.index("griddepcontrol.launch_dependents"), ptx.index("griddepcontrol.wait")
    assert (trigger < wait) is early, f"early={early}: the trigger at {trigger}, the wait at {wait}"
    assert re.search(r"\bld\.global", ptx).start() < wait, "the weights load before the wait"
    assert audit.sass_of(ck.asm["cubin"])[1]["LOCAL"] == 0, "spills"
