"""The decode attention kernel compiled for an H100/H200 (sm_90a) on this CPU machine: no spills.

scripts/kernel_resources.py compiles the kernel as the engine's launch would (Qwen3-0.6B's shape,
the JIT's alignment hints) with the Triton and ptxas installed here, and reads `ptxas -v`. A GPU
with another Triton version may allocate differently (tests/gpu/test_decode_attention_gpu.py runs
the kernel there). The per-tile block lookup brought the kernel from 94 registers to 72 here; with
the hints taken away (every load scalar, the worst case) the old per-row lookup spilled ~400 bytes.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kernel_resources.py"


def _script():
    """scripts/kernel_resources.py as a module, or a skip that says why it cannot run here."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 replaces the kernels with the interpreter: nothing to compile")
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(90).path
    except Exception as e:   # a Triton without its CUDA backend or bundled ptxas
        pytest.skip(f"this triton install cannot compile for CUDA (no ptxas for sm_90): {e}")
    if not Path(ptxas).is_file():
        pytest.skip(f"ptxas not found at {ptxas}: cannot compile for sm_90a here")
    if "kernel_resources" not in sys.modules:   # registered first: its dataclasses look themselves up
        spec = importlib.util.spec_from_file_location("kernel_resources", SCRIPT)
        sys.modules["kernel_resources"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return sys.modules["kernel_resources"]


@pytest.mark.parametrize("merge", ["kernel", "last_program", "tagged", "tagged, m and l first", "kernel, o_proj folded",
                                   "kernel, o_proj folded, fixed point"])
def test_split_kernel_does_not_spill_at_the_engines_launch(merge):
    kr = _script()
    launches = kr.decode_attention_launches("qwen3-0.6b", merge=merge.split(",")[0], m_l_first="first" in merge,
                                            o_proj="o_proj" in merge, fixed_point="fixed" in merge)
    split = kr.resources(launches[0])
    assert split.kernel == "_attention_split_kernel"
    # Only spills are asserted: register counts move with every Triton/ptxas release (72 a thread
    # with triton 3.9 here, 94 before the per-tile lookup); see them with the script.
    assert (split.spill_stores, split.spill_loads) == (0, 0), (
        f"merge={merge}: {split}; see what grew with `python scripts/kernel_resources.py decode-attention --loads`")
    if merge.startswith("tagged"):   # its merge holds 33 splits' words as int64: 4 warps spilled, 8 do not
        tagged = kr.resources(launches[1])
        assert tagged.kernel == "_attention_merge_tagged_kernel"
        assert (tagged.spill_stores, tagged.spill_loads) == (0, 0), f"{tagged}"
        assert split.ptx.count("st.relaxed.gpu.global.b64") and tagged.ptx.count("ld.volatile.global")
    if "o_proj" in merge:   # its merge holds a 128 x 128 tile of W_o and the partials: 8 warps
        folded = kr.resources(launches[1])
        assert folded.kernel == "_attention_merge_o_proj_kernel"
        assert (folded.spill_stores, folded.spill_loads) == (0, 0), f"{folded}"
        add = r"\b(red|atom)\.global\.gpu\.relaxed\.add\." + ("u64" if "fixed" in merge else "f32")
        assert re.search(add, folded.ptx), f"no relaxed atomic add of the sum's type ({add})"


def test_split_kernel_does_not_spill_even_without_alignment_hints():
    """The margin: compiled without tt.divisibility every K/V element is its own load through its
    own 64-bit address; with one block id a tile the kernel still fits in 255 registers."""
    kr = _script()
    split = kr.resources(kr.decode_attention_launches("qwen3-0.6b")[0], hints=False)
    assert (split.spill_stores, split.spill_loads) == (0, 0), f"{split}"


@pytest.mark.parametrize("prefetch_mb", [0.0, 12.6])   # nothing; a Qwen3-0.6B gate_up weight
def test_split_kernel_asks_l2_for_the_next_weight_before_its_wait_only_when_asked(prefetch_mb):
    """Choice 6 (l2_prefetch.install_attention): under PDL the programs' prefetches come before the
    wait, and no kernel the engine launches today carries one."""
    kr = _script()
    split = kr.resources(kr.decode_attention_launches("qwen3-0.6b", pdl=True, prefetch_mb=prefetch_mb)[0])
    prefetches = split.ptx.count("prefetch.global.L2")
    assert (split.spill_stores, split.spill_loads) == (0, 0), f"{split}"
    if not prefetch_mb:
        assert prefetches == 0 and "%nctaid.y" not in split.ptx
        return
    assert prefetches >= 1 and split.ptx.index("prefetch.global.L2") < split.ptx.index("griddepcontrol.wait")
    # each program its own share: the index counts the grid's second and third axes (KV heads, splits)
    assert "%nctaid.y" in split.ptx, "the prefetch's program index ignores the grid's later axes"
