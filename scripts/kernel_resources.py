"""Registers, spills and shared memory of this repo's Triton kernels on a Hopper GPU (sm_90a),
found on a machine with no GPU.

    python scripts/kernel_resources.py decode-attention [--merge last_program] [--pdl] [--loads]
    python scripts/kernel_resources.py decode-attention --no-hints   # what a compile without the JIT's hints gives

Why look. Each thread of a kernel gets at most 255 registers. A kernel that needs more "spills":
ptxas parks values in local memory (per-thread slices of DRAM, cached in L1/L2) and reloads them,
which adds memory traffic and latency inside the loop. More registers per thread also means fewer
warps per SM (65,536 registers an SM), so less latency hiding. Both show up in `ptxas -v`.

How, in four steps (each a function below):
1. `capture`: call the kernel's Python wrapper (e.g. paged_decode_attention) on CPU tensors of the
   model's shape with Triton's launch replaced by a recorder. We get every kernel the wrapper
   launches with its arguments exactly as the engine passes them: strides, constexprs, num_warps.
2. `compile_sm90`: specialize the arguments as Triton's JIT does at a real launch (Triton 3.9's own
   binder), then `triton.compile` for GPUTarget("cuda", 90, 32) down to PTX and a cubin. This
   needs only ptxas, which Triton's wheel ships; no driver, no GPU.
   The specialization matters: a pointer that is 16-byte aligned or an int divisible by 16 gets
   the hint `tt.divisibility=16`, which is what lets Triton prove that 8 consecutive bf16 are one
   16-byte load. Without the hints (--no-hints) every element is its own 2-byte load through its own
   64-bit address, and the decode attention kernel needs 255 registers and spills ~400 bytes.
3. `ptxas_report`: run ptxas -v on the PTX (the same ptxas Triton used) and read registers and
   spill bytes from what it prints; shared memory comes from Triton's metadata.
4. `count_loads`: count the PTX's global loads by width (ld.global.v4 = 4 words in one
   instruction, etc.) and its cp.async copies (global -> shared, how Triton pipelines K/V tiles).

The counts are for this machine's Triton and ptxas; another Triton version (the GPU's) may
allocate differently: check there with the launched kernel's n_regs / n_spills.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere: the repo's workbench

TARGET = ("cuda", 90, 32)   # H100 / H200: compute capability 9.0 (Triton compiles it as sm_90a), warps of 32


@dataclasses.dataclass
class Launch:
    """One kernel launch the wrapper made: the JIT function, its arguments and grid, not run."""
    fn: object
    args: tuple
    kwargs: dict
    grid: tuple = ()


@dataclasses.dataclass
class Resources:
    kernel: str
    num_warps: int
    registers: int           # per thread, from ptxas -v
    spill_stores: int        # bytes per thread, from ptxas -v
    spill_loads: int
    shared_bytes: int        # per program, from Triton's metadata
    loads: dict              # PTX instruction -> count (count_loads)
    ptx: str = dataclasses.field(repr=False, default="")


@contextlib.contextmanager
def capture():
    """Inside the block, `kernel[grid](...)` records a Launch instead of running anything."""
    from triton.runtime.jit import JITFunction
    launches: list[Launch] = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs, tuple(grid)))

    original, JITFunction.run = JITFunction.run, record
    try:
        yield launches
    finally:
        JITFunction.run = original


def compile_sm90(launch: Launch, hints: bool = True):
    """The kernel as a launch on an sm_90 GPU would compile it (Triton's CompiledKernel)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    target = GPUTarget(*TARGET)
    backend = make_backend(target)
    fn = launch.fn
    # Triton's JIT, step by step (JITFunction.run in triton 3.9): bind the arguments and
    # specialize each (its type; tt.divisibility=16 where aligned), split off the options.
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, specialization, options)
    source = ASTSource(fn, signature, constexprs, attrs if hints else {})
    return triton.compile(source, target=target, options=options.__dict__)


def ptxas_report(ptx: str) -> dict:
    """Registers and spill bytes per thread, as `ptxas -v` prints them for this PTX."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    ptxas = get_ptxas(TARGET[1]).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        run = subprocess.run([ptxas, "-v", f"--gpu-name={sm_arch_from_capability(TARGET[1])}", str(src),
                              "-o", str(src.with_suffix(".cubin"))], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"ptxas failed:\n{run.stderr}")
    log = run.stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"registers": int(registers.group(1)), "spill_stores": int(spills.group(1)),
            "spill_loads": int(spills.group(2)), "log": log}


def count_loads(ptx: str) -> dict:
    """How the kernel reads global memory: wide loads (v4, v2), scalar ones, async copies to shared."""
    kinds = {"ld.global.v4": r"ld\.global(\.\w+)*\.v4\.", "ld.global.v2": r"ld\.global(\.\w+)*\.v2\.",
             "ld.global scalar": r"ld\.global(\.\w+)*\.[bfsu]\d+\s", "cp.async": r"cp\.async\.c[ag]\."}
    return {name: len(re.findall(pattern, ptx)) for name, pattern in kinds.items()}


def resources(launch: Launch, hints: bool = True) -> Resources:
    kernel = compile_sm90(launch, hints)
    ptx = kernel.asm["ptx"]
    report = ptxas_report(ptx)
    return Resources(kernel.name, kernel.metadata.num_warps, report["registers"], report["spill_stores"],
                     report["spill_loads"], kernel.metadata.shared, count_loads(ptx), ptx)


# --- cases: a wrapper called at a model's shape on CPU tensors --------------------------------
def decode_attention_launches(preset: str = "qwen3-0.6b", batch: int = 1, context: int = 640,
                              block_size: int = 128, max_model_len: int = 4096, merge: str = "kernel",
                              pdl: bool = False, prefetch_mb: float = 0.0, m_l_first: bool = False,
                              o_proj: bool = False, fixed_point: bool = False) -> list[Launch]:
    """paged_decode_attention's launches as the engine's decode step makes them (bf16 cache,
    a block table as wide as max_model_len; the context only sets the lengths, read on device).
    prefetch_mb > 0: with that many MB of weight to ask L2 for (Choice 6; needs pdl). m_l_first: the
    tagged merge's other form (Choice 7); o_proj: o_proj folded into the merge (Choice 8), its sum in
    fixed point with fixed_point."""
    import torch

    from workbench.kernels import pdl as pdl_switch
    from workbench.kernels.decode_attention import paged_decode_attention
    from workbench.model import ModelConfig
    cfg = ModelConfig.from_preset(preset)
    width = -(-max_model_len // block_size)
    q = torch.zeros(batch, cfg.num_heads, cfg.head_dim, dtype=torch.bfloat16)
    cache = torch.zeros(2, batch * width, block_size, cfg.num_kv_heads, cfg.head_dim, dtype=torch.bfloat16)
    table = torch.arange(batch * width, dtype=torch.int32).view(batch, width)
    lens = torch.full((batch,), context, dtype=torch.int32)
    ahead = torch.empty(int(prefetch_mb * 1e6) // 2, dtype=torch.bfloat16) if prefetch_mb else None
    with capture() as launches, pdl_switch.launching(pdl):
        w_o = torch.zeros(cfg.hidden_size, cfg.num_heads * cfg.head_dim, dtype=torch.bfloat16) if o_proj else None
        paged_decode_attention(q, cache[0], cache[1], lens, table, cfg.head_dim ** -0.5, merge=merge, prefetch=ahead,
                               m_l_first=m_l_first, o_proj_weight=w_o, o_proj_fixed_point=fixed_point)
    return launches


CASES = {"decode-attention": decode_attention_launches}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--preset", default="qwen3-0.6b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--merge", default="kernel", help="decode-attention: kernel or last_program")
    parser.add_argument("--pdl", action="store_true", help="launch as with the pdl switch on")
    parser.add_argument("--no-hints", action="store_true", help="compile without the JIT's divisibility hints")
    parser.add_argument("--loads", action="store_true", help="also count the PTX's global loads by width")
    parser.add_argument("--ptx", type=Path, help="write each kernel's PTX into this folder")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels this script compiles")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # as the GPU's Triton compiles (3.9 warns otherwise)
    launches = CASES[args.case](preset=args.preset, batch=args.batch, merge=args.merge, pdl=args.pdl)
    print(f"sm_{TARGET[1]}a, compiled on this machine (no GPU); ptxas -v per thread:")
    for launch in launches:
        r = resources(launch, hints=not args.no_hints)
        print(f"  {r.kernel}: {r.registers} registers, spills {r.spill_stores} B stored / {r.spill_loads} B loaded, "
              f"{r.shared_bytes} B shared memory, num_warps={r.num_warps}")
        if args.loads:
            print("    " + ", ".join(f"{k}: {v}" for k, v in r.loads.items()))
        if args.ptx:
            args.ptx.mkdir(parents=True, exist_ok=True)
            (args.ptx / f"{r.kernel}.ptx").write_text(r.ptx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
