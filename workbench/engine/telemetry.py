"""Per-step telemetry: the engine's state after every step, as a table a student can plot.

vLLM exposes gauges (running / waiting requests, KV-cache use, prefix-cache hits, preemptions)
as aggregates for a dashboard; here every LLM.step() appends one row, so a run can be watched
step by step: blocks filling up, a shared prefix hitting, a sequence preempted and coming back.

    llm.generate(prompts, params)
    llm.telemetry.rows          # [{"step": 0, "kind": "prefill", "running": 4, ...}, ...]
    llm.telemetry.to_csv("run.csv"); llm.telemetry.to_json("run.json")

Cost: two reads of a handful of counters and one dict per step (microseconds, against a step of
milliseconds). Counters that grow over the engine's life (prefix hits, preemptions, tokens) are
stored per step (the change during that step), so summing a column gives the run's total.
All reads of the engine's insides live in `engine_counters`, the one place to re-point if the
engine is restructured.
"""
from __future__ import annotations

import csv
import json
import time
from contextlib import contextmanager
from pathlib import Path

FIELDS = ["step", "time_s", "kind", "model_steps", "running", "waiting", "tokens", "prefill_tokens",
          "decode_tokens", "kv_blocks_used", "kv_blocks_free", "prefix_hit_tokens", "preemptions", "step_ms"]
# Columns that are the change during one step (the rest are the state after it).
PER_STEP = ("model_steps", "prefill_tokens", "decode_tokens", "prefix_hit_tokens", "preemptions")


def engine_counters(llm) -> dict:
    """Everything telemetry reads from the engine, in one place."""
    bm, sched, stats = llm.block_manager, llm.scheduler, llm.stats
    return {"running": len(sched.running), "waiting": len(sched.waiting),
            "kv_blocks_free": bm.num_free_blocks, "kv_blocks_used": bm.num_blocks - bm.num_free_blocks,
            "prefix_hit_tokens": bm.prefix_hit_tokens, "preemptions": sched.num_preemptions,
            # llm.stats may be replaced by a fresh EngineStats between steps (to time one run):
            # a delta is only taken against the same object
            "_stats": stats, "model_steps": stats.steps, "prefill_tokens": stats.prefill_tokens,
            "decode_tokens": stats.decode_tokens}


class Telemetry:
    """One row per engine step. `listeners` are called with each new row (the dashboard's live
    panel); keep them cheap, or throttle them, since they run inside the step loop."""

    def __init__(self, max_rows: int = 1_000_000):
        self.rows: list[dict] = []
        self.max_rows = max_rows           # a long-lived server would otherwise grow without end
        self.listeners: list = []
        self.enabled = True
        self._t0 = time.perf_counter()

    @contextmanager
    def step(self, llm):
        """Wrap one engine step: read the counters before and after, append the row."""
        if not self.enabled:
            yield
            return
        before, start = engine_counters(llm), time.perf_counter()
        yield
        end = time.perf_counter()
        self.record(before, engine_counters(llm), start, end)

    def record(self, before: dict, after: dict, start: float, end: float) -> dict:
        same = before["_stats"] is after["_stats"]
        row = {k: after[k] for k in ("running", "waiting", "kv_blocks_used", "kv_blocks_free")}
        for k in PER_STEP:
            row[k] = after[k] - (before[k] if same or k in ("prefix_hit_tokens", "preemptions") else 0)
        row["tokens"] = row["prefill_tokens"] + row["decode_tokens"]
        kinds = [name for name in ("prefill", "decode") if row[f"{name}_tokens"]]
        row.update(step=len(self.rows), time_s=start - self._t0, step_ms=(end - start) * 1e3,
                   kind=kinds[0] if len(kinds) == 1 else "mixed" if kinds else "idle")
        row = {k: row[k] for k in FIELDS}
        if len(self.rows) < self.max_rows:
            self.rows.append(row)
        for listener in self.listeners:
            listener(row)
        return row

    def clear(self) -> None:
        """Forget the rows (e.g. after a warm-up); the clock restarts too."""
        self.rows.clear()
        self._t0 = time.perf_counter()

    def totals(self) -> dict:
        """Sums of the per-step columns, steps by kind, and the peak KV blocks in use."""
        out = {k: sum(r[k] for r in self.rows) for k in PER_STEP + ("tokens",)}
        out["steps"] = len(self.rows)
        out["kv_blocks_used_peak"] = max((r["kv_blocks_used"] for r in self.rows), default=0)
        for kind in ("prefill", "decode", "mixed"):
            out[f"{kind}_steps"] = sum(r["kind"] == kind for r in self.rows)
        return out

    def to_csv(self, path) -> Path:
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def to_json(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.rows, indent=1))
        return path

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"Telemetry({len(self.rows)} steps; .rows, .totals(), .to_csv(path), .to_json(path))"
