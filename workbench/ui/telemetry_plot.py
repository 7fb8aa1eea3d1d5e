"""The engine over a run: its per-step telemetry (llm.telemetry.rows) as time series.

    llm.generate(prompts, params)
    plot_telemetry(llm.telemetry.rows)        # in a notebook
    TelemetryPanel()                          # the dashboard's live panel (widgets.Image)

Three panels share the step axis: sequences running and waiting; KV blocks in use and free,
with the steps where a shared prefix hit the cache marked; tokens scheduled per step (coloured
by step kind) and each step's wall time. Preemptions are red dotted lines across all three.
Every value plotted is what the engine recorded in this run.
"""
from __future__ import annotations

import io
import time
from contextlib import contextmanager

KIND_COLORS = {"prefill": "tab:orange", "decode": "tab:blue", "mixed": "tab:purple", "idle": "tab:gray"}


def plot_telemetry(rows: list[dict], fig=None, title: str = ""):
    """Draw telemetry rows on `fig` (a matplotlib Figure; default: a new pyplot figure)."""
    if fig is None:
        import matplotlib.pyplot as plt
        fig = plt.figure(figsize=(10, 6), layout="constrained")
    seqs, kv, tokens = fig.subplots(3, 1, sharex=True)
    if not rows:
        seqs.text(0.5, 0.5, "no engine step recorded yet", ha="center", va="center", transform=seqs.transAxes)
        return fig
    x = [r["step"] for r in rows]
    col = lambda key: [r[key] for r in rows]  # noqa: E731
    seqs.plot(x, col("running"), drawstyle="steps-post", label="running")
    seqs.plot(x, col("waiting"), drawstyle="steps-post", label="waiting")
    seqs.set_ylabel("sequences")
    kv.plot(x, col("kv_blocks_used"), drawstyle="steps-post", color="tab:green", label="KV blocks in use")
    kv.plot(x, col("kv_blocks_free"), drawstyle="steps-post", color="tab:gray", label="KV blocks free")
    hits = [(r["step"], r["kv_blocks_used"]) for r in rows if r["prefix_hit_tokens"]]
    if hits:
        kv.scatter(*zip(*hits), marker="*", s=80, color="gold", edgecolor="black", zorder=3,
                   label="prefix-cache hit")
    kv.set_ylabel("KV blocks")
    tokens.bar(x, col("tokens"), color=[KIND_COLORS.get(r["kind"], "black") for r in rows], width=1.0)
    tokens.set_ylabel("tokens scheduled")
    tokens.set_yscale("symlog")
    wall = tokens.twinx()
    wall.plot(x, col("step_ms"), color="black", linewidth=0.8, label="step wall time, ms")
    wall.set_ylabel("ms", fontsize=8)
    from matplotlib.patches import Patch
    kinds = sorted({r["kind"] for r in rows})
    tokens.legend(handles=[Patch(color=KIND_COLORS.get(k, "black"), label=k) for k in kinds], fontsize=7,
                  loc="upper left", ncol=len(kinds))
    wall.legend(fontsize=7, loc="upper right")
    preempted = [r["step"] for r in rows if r["preemptions"]]
    for ax in (seqs, kv, tokens):
        for i, step in enumerate(preempted):
            ax.axvline(step, color="tab:red", linestyle=":", label="preemption" if i == 0 and ax is not tokens else None)
    seqs.legend(fontsize=7, loc="upper right")
    kv.legend(fontsize=7, loc="upper right")
    tokens.set_xlabel("engine step")
    seqs.set_title(title or "the engine, step by step (recorded by llm.telemetry)", fontsize=9)
    return fig


class TelemetryPanel:
    """A widgets.Image that redraws the telemetry of the run being watched, at most every
    `interval_s` seconds while it runs (rendering costs milliseconds: keep it out of timed runs)."""

    def __init__(self, interval_s: float = 0.5):
        import ipywidgets as widgets
        self.interval_s = interval_s
        self.image = widgets.Image(format="png")
        self.rows: list[dict] = []
        self.redraws = 0
        self.figure = None
        self.title = ""

    @contextmanager
    def watch(self, llm, title: str = ""):
        """Follow llm's steps inside the `with` block; draw the last state when it ends."""
        self.rows, self.title, last = [], title, [0.0]

        def on_row(row):
            self.rows.append(row)
            if time.perf_counter() - last[0] >= self.interval_s:
                self.draw()
                last[0] = time.perf_counter()
        llm.telemetry.listeners.append(on_row)
        try:
            yield self
        finally:
            llm.telemetry.listeners.remove(on_row)
            self.draw()

    def draw(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = plot_telemetry(self.rows, Figure(figsize=(12, 4.6), layout="constrained"), self.title)
        buf = io.BytesIO()
        FigureCanvasAgg(fig).print_png(buf)
        self.image.value, self.figure = buf.getvalue(), fig
        self.redraws += 1
