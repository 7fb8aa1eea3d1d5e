"""How much host memory one engine takes on a CPU: peak RSS, measured, per model shape.

    python scripts/engine_memory.py [--presets tiny qwen3-0.6b] [--out docs/results/engine-memory-cpu.json]

Each preset runs in a fresh Python process (a process's peak RSS never goes down): the
checkpoint is written first (random weights of the preset's shape, in another process), then
the measuring process imports torch and workbench, reads its peak RSS, builds one engine with
the settings below, generates a few tokens, and reads its peak RSS again. The difference is what
the engine added (weights, KV cache, activations, allocator slack); both figures are kept.
For docs/teaching.md (memory per engine). On a GPU use torch.cuda.max_memory_allocated instead.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(device="cpu", max_num_seqs=4, max_model_len=512, enable_prefix_caching=False)

MEASURE = """
import json, resource, sys
import torch, workbench
from workbench import LLM, SamplingParams
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # KiB on Linux
with LLM(sys.argv[1], **json.loads(sys.argv[2])) as llm:
    llm.generate([[1, 2, 3, 4, 5, 6, 7, 8]] * 4, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
                 use_tqdm=False)
    runner = llm.runner
    kv = runner.num_kv_blocks * runner.kv_bytes_per_block
    params = sum(p.numel() for p in runner.model.parameters())
    dtype = str(runner.dtype).replace("torch.", "")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rss_before_engine_bytes": before, "peak_rss_bytes": peak, "engine_peak_rss_bytes": peak - before,
                  "parameters": params, "dtype": dtype, "kv_cache_bytes": kv, "torch": torch.__version__}))
"""


def measure(preset: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", "import sys; from workbench.model import make_checkpoint; "
                        f"make_checkpoint(sys.argv[1], {preset!r})", tmp], check=True, env=env)
        out = subprocess.run([sys.executable, "-c", MEASURE, tmp, json.dumps(SETTINGS)], check=True, env=env,
                             capture_output=True, text=True).stdout
    return {"preset": preset, **json.loads(out.strip().splitlines()[-1]), "settings": SETTINGS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "qwen3-0.6b"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from workbench.measure.results import stamp
    from workbench.ui.notebook import machine
    rows = [{**measure(p), "machine": machine()} for p in args.presets]
    stamp(rows, command="python scripts/engine_memory.py " + " ".join(sys.argv[1:]))
    for r in rows:
        print(f"{r['preset']:<12} {r['parameters']:>13,} parameters ({r['dtype']}), KV cache {r['kv_cache_bytes'] / 2**20:,.1f} MiB: "
              f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB, of which the engine added {r['engine_peak_rss_bytes'] / 2**30:.2f} GiB")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
