"""The dashboard's timeline panel: the last run's decode steps as torch.profiler saw them.

    panel = TimelinePanel()
    panel.profile(llm, batch=2, prompt_len=8)   # inside the run, while its engine is open
    panel.image                                  # widgets.Image: the drawing (measure/timeline.py)

Profiling is not free (a warm-up batch, a prefill and a few decode steps under the profiler),
so the dashboard only calls `profile` when the student ticks its "timeline" switch; otherwise
the panel says how to get it. On a GPU the rows are the CPU's ops, its launch calls and the
GPU's kernels coloured by family; on a CPU only the ops row has anything to draw, and the
panel prints why the other two are empty (the timeline's own `gpu_note`).
"""
from __future__ import annotations

import io
import textwrap

DECODE_STEPS = 2   # decode steps profiled per run: enough to see one step next to the other


class TimelinePanel:
    def __init__(self):
        import ipywidgets as widgets
        self.image = widgets.Image(format="png")
        self.timeline = None      # the last profiled Timeline (all its steps), or None
        self.workload = ""        # what was profiled: batch and prompt length
        self.figure = None
        self.note = "timeline: not drawn -- tick 'timeline' before Run (profiling adds a few seconds per run)"
        self.draw()

    def profile(self, llm, *, batch: int, prompt_len: int, asked_len: int | None = None) -> None:
        """Profile `llm`'s steps and draw its decode steps (the engine stays usable afterwards).
        asked_len: the run's prompt length, when the profiled prompts had to be shorter (the
        title then says so: a step's attention time depends on the context it reads)."""
        from workbench.measure.timeline import profile_engine_steps
        self.timeline = profile_engine_steps(llm, batch=batch, prompt_len=prompt_len, decode_steps=DECODE_STEPS)
        self.workload = f"batch {batch}, {prompt_len}-token prompts"
        if asked_len is not None and asked_len != prompt_len:
            self.workload += f" (the run's {asked_len} capped to fit the engine's max length)"
        self.note = ""
        self.draw()

    def skip(self, why: str) -> None:
        """The last run was not profiled: the old drawing would belong to another run, so drop it."""
        self.timeline, self.note = None, f"timeline: not drawn -- {why}"
        self.draw()

    def draw(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from workbench.measure.timeline import plot_timeline
        fig = Figure(figsize=(12, 2.8 if self.timeline else 0.5), layout="constrained")
        ax = fig.subplots()
        if self.timeline is None:
            ax.text(0.5, 0.5, textwrap.fill(self.note, 140), ha="center", va="center", fontsize=8,
                    color="dimgray", transform=ax.transAxes)
            ax.set_axis_off()
        else:
            decode = self.timeline.only("decode")
            plot_timeline(decode, ax)   # its title names the setting and device, and any numbered step
            ax.set_title(f"last run's decode steps ({self.workload}), {ax.get_title()} (measured by torch.profiler; "
                         f"open {self.timeline.trace_path} in ui.perfetto.dev)", fontsize=9)
        buf = io.BytesIO()
        FigureCanvasAgg(fig).print_png(buf)
        self.image.value, self.figure = buf.getvalue(), fig
