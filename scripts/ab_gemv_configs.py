"""A/B the decode GEMV's configs inside the engine (all on, PDL on), on the GPU, in one call.

    python scripts/ab_gemv_configs.py OUT.json [--rounds 2] [--variants current,one-tile,one-tile-wide]

Why not `measure gemv`: it times each GEMV alone with PDL off, but in the engine a GEMV runs
under PDL between other kernels, where what matters is what it can do before its wait. Under PDL
a GEMV loads its first weight tile before the wait (kernels/gemv.py), so o_proj (K = 2,048, two
tiles of 1,024) and down_proj (K = 3,072, three) read half and a third of their weights early;
with one tile as wide as K they read all of it early. And a grid that fills every SM (o_proj:
1,024 programs of 8 warps, 62 of 64 warp slots an SM) leaves no room for the next kernel's
programs to start early. The variants (compiled for sm_90a by scripts/gemv_ptx_audit.py first:
no spills; registers and waves in docs/perf-notes.md, session 8):

  current        CONFIGS as committed
  one-tile       o_proj bn1 bk2048 w4, down bn1 bk4096 w4 (the whole weight slice before the
                 wait; half the warp slots)
  one-tile-wide  one-tile with two rows a program, and gate_up bn8 (a quarter of the slots)

Each variant runs in its own process (torch.compile and the graph capture bake the configs in),
in the order A B C A B C ...: `bench single` with all on, greedy 128 + 512 tokens, 8 decode steps
a round, 3 repeats; prints a row per run as it goes and the medians per variant at the end.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {   # (N, K, bucket) -> (block_n, block_k, num_warps); the rest of GemvConfig as default
    "current": {},
    "one-tile": {(1024, 2048, "m1"): (1, 2048, 4), (1024, 3072, "m1"): (1, 4096, 4)},
    "one-tile-wide": {(1024, 2048, "m1"): (2, 2048, 4), (1024, 3072, "m1"): (2, 4096, 4),
                      (6144, 1024, "m1"): (8, 1024, 4)},
}


def child(variant: str, workdir: str, preset: str, new_tokens: int) -> None:
    """One variant, in this process: patch CONFIGS before the engine exists, bench, print JSON."""
    from workbench import Optimizations
    from workbench.kernels import gemv
    from workbench.measure import bench
    from workbench.model import ModelConfig, random_checkpoint
    for key, (bn, bk, warps) in VARIANTS[variant].items():
        gemv.CONFIGS[key] = gemv.GemvConfig(block_n=bn, block_k=bk, split_k=1, num_warps=warps, num_stages=1)
    path = random_checkpoint(preset, workdir)
    load = bench.make_workload("single", ModelConfig.from_hf(path).vocab_size, new_tokens=new_tokens)
    r = bench.bench_engine(path, Optimizations.all_on(), load, repeats=3, decode_steps=8, max_num_seqs=1)
    print("RESULT " + json.dumps({"variant": variant, **r.to_dict()}, default=str), flush=True)


def _us(row: dict) -> str:
    us = row["gpu_kernel_us_per_step"]
    return "unavailable (no CUDA)" if us is None else f"{us:7,.1f} us"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="?")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--preset", default="qwen3-0.6b", help="tiny: a smoke test of this script on a CPU")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.workdir, args.preset, args.new_tokens)
        return 0
    from workbench.measure.results import stamp
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not args.json:
        ap.error(f"give OUT.json and variants from {', '.join(VARIANTS)}" + (f" (unknown: {unknown})" if unknown else ""))
    rows = []
    for round_ in range(args.rounds):
        for name in names:
            done = subprocess.run([sys.executable, __file__, "--child", name, "--workdir", args.workdir,
                                   "--preset", args.preset, "--new-tokens", str(args.new_tokens)],
                                  capture_output=True, text=True, cwd=REPO)
            found = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if not found:   # say why, keep going with the other variants
                print(f"round {round_ + 1} {name}: failed\n{done.stderr[-2000:]}", flush=True)
                continue
            row = json.loads(found[0])
            rows.append(row)
            print(f"round {round_ + 1} {name:<14} {row['tok_s']:8,.0f} tok/s  GPU {_us(row)} a step  "
                  f"{row['kernels_per_step'] or '-'} kernels", flush=True)
            command = "python scripts/ab_gemv_configs.py " + " ".join(sys.argv[1:])
            Path(args.json).write_text(json.dumps(stamp(rows, command), indent=1, default=str))
    print(f"\nmedians over {args.rounds} rounds (measured on {rows[0]['gpu'] if rows else '-'}):")
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        if mine:
            gpu = [r["gpu_kernel_us_per_step"] for r in mine if r["gpu_kernel_us_per_step"] is not None]
            print(f"  {name:<14} {statistics.median(r['tok_s'] for r in mine):8,.0f} tok/s  "
                  f"GPU {f'{statistics.median(gpu):7,.1f} us' if gpu else 'unavailable (no CUDA)'} a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
