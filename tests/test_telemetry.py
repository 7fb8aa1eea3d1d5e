"""Per-step telemetry: one row per engine step, and its counters add up to the engine's totals."""
from __future__ import annotations

import csv
import json
import random

from workbench import LLM, SamplingParams
from workbench.engine.telemetry import FIELDS


def test_rows_agree_with_the_engine_totals(tiny_ckpt, tmp_path):
    rng = random.Random(0)
    shared = [rng.randrange(1, 200) for _ in range(32)]        # two full 16-token blocks
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    with LLM(tiny_ckpt, block_size=16, num_kv_blocks=10, max_model_len=128) as llm:
        seen = []
        llm.telemetry.listeners.append(seen.append)
        llm.generate([shared + [rng.randrange(1, 200) for _ in range(4)] for _ in range(4)], params,
                     use_tqdm=False)
        rows, totals, stats = llm.telemetry.rows, llm.telemetry.totals(), llm.stats
        assert seen == rows and len(rows) == stats.steps == len(stats.step_seconds)
        assert [r["step"] for r in rows] == list(range(len(rows)))
        assert totals["prefix_hit_tokens"] == stats.prefix_hit_tokens > 0      # the shared prefix hit
        assert totals["preemptions"] == stats.preemptions > 0                  # 10 blocks are too few
        assert totals["prefill_tokens"] == stats.prefill_tokens
        assert totals["decode_tokens"] == stats.decode_tokens
        assert totals["tokens"] == stats.prefill_tokens + stats.decode_tokens
        assert totals["prefill_steps"] + totals["decode_steps"] + totals["mixed_steps"] == len(rows)
        assert all(r["kv_blocks_used"] + r["kv_blocks_free"] == 10 for r in rows)
        assert totals["kv_blocks_used_peak"] <= 10 and rows[-1]["running"] == rows[-1]["waiting"] == 0
        assert rows[0]["kind"] == "prefill" and rows[-1]["kind"] == "decode"
        preempted = next(i for i, r in enumerate(rows) if r["preemptions"])
        assert rows[preempted]["waiting"] > 0                                  # it went back to the queue...
        assert any(r["kind"] == "prefill" for r in rows[preempted + 1:])       # ...and was prefilled again
        assert abs(sum(r["step_ms"] for r in rows) / 1e3 - sum(stats.step_seconds)) < 0.05 * sum(stats.step_seconds)

        with open(llm.telemetry.to_csv(tmp_path / "t.csv")) as f:
            back = list(csv.DictReader(f))
        assert list(back[0]) == FIELDS and len(back) == len(rows)
        assert json.loads(llm.telemetry.to_json(tmp_path / "t.json").read_text()) == rows


def test_multi_step_rounds_and_a_reset_of_stats(tiny_ckpt):
    from workbench.engine.llm import EngineStats
    params = SamplingParams(temperature=0, max_tokens=9, ignore_eos=True)
    with LLM(tiny_ckpt, decode_steps=4, max_model_len=64) as llm:
        llm.generate([[5, 6, 7]], params, use_tqdm=False)
        llm.stats = EngineStats()                # as notebooks do to time one run: no negative deltas
        llm.telemetry.clear()
        llm.generate([[5, 6, 7]], params, use_tqdm=False)
        rows = llm.telemetry.rows
        assert sum(r["model_steps"] for r in rows) == llm.stats.steps > len(rows)   # rounds of 4 steps
        assert sum(r["decode_tokens"] for r in rows) == llm.stats.decode_tokens
        assert min(r[k] for r in rows for k in ("tokens", "model_steps")) >= 1
