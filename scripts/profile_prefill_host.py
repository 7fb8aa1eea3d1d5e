"""Where the host's time goes in one prefill step: cProfile of a single 128-token prompt's first token.

    python scripts/profile_prefill_host.py OUT_DIR [--preset qwen3-0.6b] [--prompt-len 128]

Why. On the H200 the time to the first token was 20-50 ms at every rung (perf-notes, session 10)
where the prefill's kernels need ~1.3 ms (`measure launches`: 316 kernels, 1,272 us of GPU time,
29 ms of wall time with flash + fused): the host, not the GPU, makes the wait. Prefill graphs
(session 11) remove that wait for a single prompt; this profiles the eager prefill they replace,
which batched and long prompts still run. `measure breakdown
--phase prefill` says how much of the step is host time; this says which Python functions spend it.
Per setting: a fresh engine (warmed up, outside the profile), 3 untimed prefills, then 5 profiled
ones (`generate` of one prompt, max_tokens=1, prefix caching off). Prints the top functions by own
time and by cumulative time and writes each profile's stats to OUT_DIR/<setting>.txt.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import time
from pathlib import Path

SETTINGS = {
    "flash+fused": dict(attention="flash", fused_kernels=True),
    "all_on": None,
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--preset", default="qwen3-0.6b")
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--settings", default="flash+fused,all_on")
    args = ap.parse_args()
    from workbench.engine import LLM, SamplingParams
    from workbench.model.checkpoint import random_checkpoint
    from workbench.optimizations.board import Optimizations
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = random_checkpoint(args.preset, args.workdir)
    rng = random.Random(0)
    for label in args.settings.split(","):
        kwargs = SETTINGS[label]
        opts = Optimizations.all_on() if kwargs is None else Optimizations(**kwargs)
        params = SamplingParams(max_tokens=1, temperature=0.0)
        # the eager prefill (prefill_graphs replays a single prompt's from a graph: nothing to profile there)
        with LLM(path, opts=opts, max_num_seqs=1, enable_prefix_caching=False, prefill_graphs=False) as llm:
            prompts = [[rng.randrange(10, min(10000, llm.model_config.vocab_size)) for _ in range(args.prompt_len)] for _ in range(8)]
            for p in prompts[:3]:
                llm.generate([p], params, use_tqdm=False)
            walls, prof = [], cProfile.Profile()
            for p in prompts[3:]:
                t = time.perf_counter()
                prof.enable()
                llm.generate([p], params, use_tqdm=False)
                prof.disable()
                walls.append((time.perf_counter() - t) * 1e3)
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(45)
        (out / f"prefill-host-{label}.txt").write_text(text.getvalue())
        print(f"=== {label}: {len(walls)} profiled prefills of {args.prompt_len} tokens, wall ms "
              f"(profiler on) {', '.join(f'{w:.1f}' for w in walls)}")
        print("\n".join(text.getvalue().splitlines()[:130]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
