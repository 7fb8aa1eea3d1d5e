"""Per-step telemetry: the engine's state after every step, as a table a student can plot.

vLLM exposes gauges (running / waiting requests, KV-cache use, prefix-cache hits, preemptions)
as aggregates for a dashboard; here every LLM.step() appends one row, so a run can be watched
step by step: blocks filling up, a shared prefix hitting, a sequence preempted and coming back.

    llm.generate(prompts, params)
    llm.telemetry.rows          # [{"step": 0, "kind": "prefill", "running": 4, ...}, ...]
    llm.telemetry.to_csv("run.csv"); llm.telemetry.to_json("run.json")

Cost: one read of a handful of counters and one dict per step (microseconds, against a step of
milliseconds). The step's own numbers (its kind, tokens, model steps, time) come from LLM._step,
which computes them anyway; counters that grow over the engine's life (prefix hits, preemptions,
tokens) are stored per step (the change during that step), so summing a column gives the run's
total. All reads of the engine's state live in `engine_state`, the one place to re-point if the
engine is restructured.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

FIELDS = ["step", "time_s", "kind", "model_steps", "running", "waiting", "tokens", "prefill_tokens",
          "decode_tokens", "kv_blocks_used", "kv_blocks_free", "prefix_hit_tokens", "preemptions", "step_ms"]
# Columns that are the change during one step (the rest are the state after it).
PER_STEP = ("model_steps", "prefill_tokens", "decode_tokens", "prefix_hit_tokens", "preemptions")


def engine_state(llm) -> dict:
    """The engine's state after a step: everything telemetry reads from the engine itself."""
    bm, sched = llm.block_manager, llm.scheduler
    return {"running": len(sched.running), "waiting": len(sched.waiting),
            "kv_blocks_free": bm.num_free_blocks, "kv_blocks_used": bm.num_blocks - bm.num_free_blocks}


class Telemetry:
    """One row per engine step. `listeners` are called with each new row (the dashboard's live
    panel); keep them cheap, or throttle them, since they run inside the step loop."""

    def __init__(self, max_rows: int = 1_000_000):
        self.rows: list[dict] = []
        self.max_rows = max_rows           # a long-lived server would otherwise grow without end
        self.listeners: list = []
        self.enabled = True
        self._t0 = time.perf_counter()

    def record(self, llm, *, kind: str, start: float, end: float, model_steps: int, tokens: dict[str, int],
               prefix_hit_tokens: int, preemptions: int) -> dict | None:
        """Append the row of one engine step: its numbers as LLM._step counted them (tokens:
        {"prefill": n, "decode": n}; the counters as changes during the step) and the engine's
        state after it."""
        if not self.enabled:
            return None
        row = dict(engine_state(llm), step=len(self.rows), time_s=start - self._t0, kind=kind,
                   model_steps=model_steps, tokens=tokens["prefill"] + tokens["decode"],
                   prefill_tokens=tokens["prefill"], decode_tokens=tokens["decode"],
                   prefix_hit_tokens=prefix_hit_tokens, preemptions=preemptions, step_ms=(end - start) * 1e3)
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
