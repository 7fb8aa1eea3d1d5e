"""A static audit of the decode GEMV (workbench/kernels/gemv.py) at batch 1, compiled for sm_90a
on a machine without a GPU: registers, spills, shared memory, how wide the loads are, and how many
are issued before the first multiply-add uses one. No timing: what the compiler made, not how fast.

How. Each engine call (qkv with the norm folded in, o_proj, gate_up with the norm and the SiLU
epilogue, down, the LM head; and the candidates and earlier forms in CASES) runs through its real wrapper with CPU tensors while `_gemv_kernel` is
swapped for a recorder, so the audit sees exactly the arguments, constexprs and config the engine
launches; scripts/kernel_resources.py records and compiles it as Triton's JIT would (pointers and
ints divisible by 16, M = 1 a constant) into PTX and a cubin for sm_90a, and the wheel's
cuobjdump / nvdisasm report registers, local memory and the SASS loads.

  python scripts/gemv_ptx_audit.py            # the table (markdown), ~1 min
  python scripts/gemv_ptx_audit.py --dump DIR # also writes each case's .ptx and .sass
Caveat: the compiler here is this venv's triton, not necessarily the GPU machine's.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))   # its neighbour: recording and compiling a launch
from kernel_resources import Launch, capture, compile_sm90, count_loads  # noqa: E402

from workbench.kernels import fused_gemv, gemv, pdl  # noqa: E402

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
HIDDEN, EPS = 1024, 1e-6

# (name, N, K, the call at batch 1, x's width: the engine's calls with fused_decode on, and the
# forms it ran before: gate_up without the SiLU epilogue and down_proj's SiLU-and-mul fold, which
# reads gate_up [1, 2K], until session 20)
CASES = [
    ("qkv rms_norm", 4096, 1024, lambda x, w: fused_gemv.rms_norm_linear(x, None, _nw(x), EPS, w), 1024),
    ("qkv rms_norm+res", 4096, 1024, lambda x, w: fused_gemv.rms_norm_linear(x, x.clone(), _nw(x), EPS, w), 1024),
    ("o_proj plain", 1024, 2048, lambda x, w: gemv.linear(x, w), 2048),
    ("gate_up rms_norm+res+silu", 6144, 1024,
     lambda x, w: fused_gemv.rms_norm_linear(x, x.clone(), _nw(x), EPS, w, silu_out=True), 1024),
    ("down plain", 1024, 3072, lambda x, w: gemv.linear(x, w), 3072),
    ("gate_up rms_norm+res", 6144, 1024, lambda x, w: fused_gemv.rms_norm_linear(x, x.clone(), _nw(x), EPS, w), 1024),
    ("down silu_mul", 1024, 3072, lambda x, w: fused_gemv.silu_mul_linear(x, w), 6144),
    # the A/B candidate residual-epilogue: the residual added in the epilogue, read before the wait
    ("o_proj plain+add", 1024, 2048, lambda x, w: gemv.gemv(x, w, add=torch.zeros(1, 1024, dtype=x.dtype)), 2048),
    ("down plain+add", 1024, 3072, lambda x, w: gemv.gemv(x, w, add=torch.zeros(1, 1024, dtype=x.dtype)), 3072),
    ("lm_head plain", 151936, 1024, lambda x, w: gemv.linear(x, w), 1024),
]


def _nw(x):
    return torch.ones(x.shape[1], dtype=x.dtype)


def recorded_launch(n: int, k: int, call, use_pdl: bool, x_cols: int | None = None) -> Launch:
    """Run the engine's wrapper for one batch-1 call and return the GEMV launch it would make
    (kernel_resources.capture: Triton's launch replaced by a recorder). x_cols: x's width (K, or
    2K for the SiLU-and-mul fold, which reads gate_up)."""
    x = torch.zeros(1, x_cols or k, dtype=torch.bfloat16)
    w = torch.empty(n, k, dtype=torch.bfloat16)   # never read: only its shape and alignment matter
    with capture() as launches, pdl.launching(use_pdl):
        call(x, w)
    return next(launch for launch in launches if launch.fn is gemv._gemv_kernel)


def _tool(name: str, *args: str) -> str:
    return subprocess.run([str(BIN / name), *args], check=True, capture_output=True, text=True).stdout


def sass_of(cubin: bytes) -> tuple[str, dict]:
    """(the SASS text, {REG, SHARED, LOCAL, STACK}) from the wheel's nvdisasm and cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = _tool("cuobjdump", "-res-usage", f.name)
        sass = _tool("nvdisasm", "-c", f.name)
    res = {k: int(v) for k, v in re.findall(r"\b(REG|SHARED|LOCAL|STACK):(\d+)", usage)}
    return sass, res


def _regs(operands: str, width: int = 1) -> set[int]:
    return {int(r) + i for r in re.findall(r"\bR(\d+)\b", operands) for i in range(width)}


def sass_facts(sass: str) -> dict:
    """The LDGs by width and, reading the SASS in order: how many LDGs are issued before the first
    FFMA (the first product), and before the first instruction that reads a loaded register (where
    the warp first stalls on memory: the loads before it are the ones in flight together);
    how many before the PDL wait (ACQBULK); STL = spill stores; branches."""
    lines = [l.split("*/", 1)[1].strip(" ;") for l in sass.splitlines() if re.search(r"/\*[0-9a-f]{4}\*/", l)]
    ldg_w = [int((re.search(r"LDG\.E(?:\.[US]?(\d+))?", l).group(1) or 32)) for l in lines if "LDG" in l]
    loaded, first_use = set(), len(lines)
    for i, l in enumerate(lines):
        op, _, args = re.sub(r"^@!?U?P\w+\s+", "", l).partition(" ")
        if op.startswith("LDG"):
            wide = re.search(r"\.(64|128)\b", op)   # (LDG.E.U16, a 2-byte load: one register)
            loaded |= _regs(args.split(",")[0], int(wide.group(1)) // 32 if wide else 1)
        elif loaded & _regs(args if op.startswith("ST") else args.partition(",")[2]):
            first_use = i
            break
    first_ffma = next((i for i, l in enumerate(lines) if re.search(r"\bFFMA\b", l)), len(lines))
    wait = next((i for i, l in enumerate(lines) if "ACQBULK" in l), None)
    count = lambda upto: sum("LDG" in l for l in lines[:upto])
    return {"LDG 128/64/32 bit": "/".join(str(ldg_w.count(w)) for w in (128, 64, 32)),
            "LDG before 1st FFMA": count(first_ffma), "LDG before 1st use": count(first_use),
            "LDG before wait": "-" if wait is None else count(wait),
            "STL": sum(l.startswith("STL") for l in lines), "BRA": sum(" BRA " in f" {l} " for l in lines)}


def occupancy(regs: int, shared: int, num_warps: int) -> int:
    """Programs an H200 SM can hold (65,536 registers, allocated per warp in 256s; 64 warps;
    32 blocks; 228 KB shared)."""
    per_warp = -(-regs * 32 // 256) * 256
    by_regs = 65536 // (per_warp * num_warps)
    by_smem = (228 * 1024) // shared if shared else 32
    return min(32, 64 // num_warps, by_regs, by_smem)


def audit(name: str, n: int, k: int, call, x_cols: int, use_pdl: bool, dump: Path | None = None) -> dict:
    launch = recorded_launch(n, k, call, use_pdl, x_cols)
    ck = compile_sm90(launch)
    sass, res = sass_of(ck.asm["cubin"])
    if dump:
        stem = f"{name.replace(' ', '_').replace('+', '_')}_pdl{int(use_pdl)}"
        (dump / f"{stem}.ptx").write_text(ck.asm["ptx"])
        (dump / f"{stem}.sass").write_text(sass)
    c = launch.kwargs
    programs = launch.grid[0] * launch.grid[1]
    per_sm = occupancy(res["REG"], res["SHARED"], c["num_warps"])
    threads = 32 * c["num_warps"]
    return {"case": name, "pdl": use_pdl, "N x K": f"{n}x{k}",
            "cfg": f"bn{c['BLOCK_N']} bk{c['BLOCK_K']} w{c['num_warps']} s{c['num_stages']}",
            "EVEN_K/N": f"{int(c['EVEN_K'])}/{int(c['EVEN_N'])}",
            "regs": res["REG"], "local B": res["LOCAL"], "smem B": res["SHARED"],
            "ptx ld.global": count_loads(ck.asm["ptx"]), **sass_facts(sass),
            "w B/thread/tile": c["BLOCK_N"] * c["BLOCK_K"] * 2 // threads,
            "programs": programs, "per SM": per_sm, "waves": round(programs / (132 * per_sm), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", type=Path, help="write each case's PTX and SASS here")
    ap.add_argument("--only", help="cases whose name contains this")
    a = ap.parse_args()
    if a.dump:
        a.dump.mkdir(parents=True, exist_ok=True)
    rows = [audit(name, n, k, call, x_cols, p, a.dump) for name, n, k, call, x_cols in CASES if not a.only or a.only in name
            for p in (False, True)]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    main()
