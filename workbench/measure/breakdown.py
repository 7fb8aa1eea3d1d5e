"""Where the microseconds of one decode (or prefill) step go: a budget that sums to the measured step.

From a profiled timeline (measure/timeline.py), each decode step's window is split into:

    GPU <family>          time the GPU spent in kernels of that family (matmul, attention, ...)
    GPU short gaps        the GPU idle between two kernels for less than 20 us: launch latency
    host, GPU idle        the rest: the GPU waiting for the host (Python, scheduling, launching,
                          reading the sampled tokens back) -- host time not overlapped with the GPU

On a CPU there is no GPU: the parts are the host's own ATen ops per family, and the host time
outside them (Python, the scheduler, the profiler's own bookkeeping). Either way the parts are
measured separately (`timeline.sweep`) and must add up to the profiled step time: the check is
printed with every breakdown. Next to it, the floor: the bytes a decode step must move
(roofline.decode_step, modelled) over a measured copy bandwidth (HBM on a GPU, a CPU memcpy on
a CPU, labelled). Per switch setting, the bars show which switch removed which slice.

`phase="prefill"` splits the timeline's prefill step the same way: the time to the first token
is mostly that step, and a prompt of 128 tokens should take the GPU about as long as a few decode
steps. It has no floor drawn: a prefill step's floor is set by FLOPs as well as bytes (chapter
09's bottleneck map).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .roofline import BandwidthRecord, decode_step, step_bandwidth
from .steps import unprofiled_step_us
from .timeline import FAMILY_COLORS, Timeline, profile_engine_steps, sweep

GAP_PART, IDLE_PART = "GPU idle, short gaps between kernels", "host time, GPU idle (not overlapped)"
CPU_IDLE_PART = "host outside ATen ops (Python, scheduler)"


@dataclass
class Breakdown:
    label: str
    device: str
    steps: int                        # steps of the phase averaged
    step_us: float                    # profiled wall time of a step (mean)
    parts: dict = field(default_factory=dict)    # part -> us per step (mean); sums to step_us
    floor_us: float | None = None     # modelled bytes / measured bandwidth
    floor_bytes: int = 0              # modelled
    bandwidth: float | None = None    # bytes/s, measured
    floor_source: str = ""
    unprofiled_step_us: float | None = None      # median step timed without the profiler
    modelled: bool = False            # the parts are measured; floor_us alone is modelled
    phase: str = "decode"             # decode | prefill

    @property
    def parts_sum_us(self) -> float:
        return sum(self.parts.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "parts_sum_us": self.parts_sum_us}

    @classmethod
    def from_dict(cls, record: dict) -> Breakdown:
        """Back from `to_dict` or a committed results record: the fields it derives or stamps
        (parts_sum_us; gpu, date, command) are dropped, and the parts must still sum to the step."""
        names = {f.name for f in fields(cls)}
        if "decode_steps" in record:   # files written before prefill breakdowns (sessions 1-9)
            record = {**{k: v for k, v in record.items() if k != "decode_steps"}, "steps": record["decode_steps"]}
        missing = {"label", "device", "steps", "step_us", "parts"} - set(record)
        if missing:
            which = record.get("label") or record.get("setting") or f"keys {', '.join(sorted(record)[:4])}"
            raise ValueError(f"not a breakdown record ({which}: no {', '.join(sorted(missing))}): "
                             f"write one with `python -m workbench measure breakdown --json`")
        out = cls(**{k: v for k, v in record.items() if k in names})
        for what, us in (("its step", out.step_us), ("its parts_sum_us", record.get("parts_sum_us", out.step_us))):
            if abs(out.parts_sum_us - us) > 1e-6 * out.step_us:   # measured, they sum exactly (sweep)
                raise ValueError(f"{out.label}: its parts sum to {out.parts_sum_us:,.1f} us, {what} says "
                                 f"{us:,.1f}: the file was edited or is damaged")
        return out

    def row(self) -> dict:
        """A flat row for a table: one column per part, in us."""
        return {"setting": self.label, "step_us": self.step_us, **{k: v for k, v in self.parts.items()},
                "parts_sum_us": self.parts_sum_us, "floor_us": self.floor_us,
                "unprofiled_step_us": self.unprofiled_step_us}

    def __str__(self) -> str:
        lines = [f"{self.label} {self.phase} step on {self.device}: {self.step_us:,.0f} us under the profiler "
                 f"(mean of {self.steps}; measured)"]
        lines += [f"  {k:<42} {v:10,.1f} us  {v / self.step_us:6.1%}" for k, v in self.parts.items()]
        lines.append(f"  {'sum of the parts':<42} {self.parts_sum_us:10,.1f} us  "
                     f"{self.parts_sum_us / self.step_us:6.1%} of the step")
        if self.unprofiled_step_us is not None:
            lines.append(f"  same step without the profiler (median)    {self.unprofiled_step_us:10,.1f} us")
        if self.phase == "decode":
            lines.append(f"  floor [modelled]: {self.floor_bytes:,} bytes / {self.floor_source} = "
                         + (f"{self.floor_us:,.1f} us" if self.floor_us is not None else "unavailable"))
        return "\n".join(lines)


def breakdown_of(tl: Timeline, *, shape=None, dtype_bytes: int = 2, bandwidth: BandwidthRecord | None = None,
                 unprofiled_step_us: float | None = None, phase: str = "decode") -> Breakdown:
    """The mean budget of the timeline's steps of `phase` (see the module docstring)."""
    if phase not in ("decode", "prefill"):
        raise ValueError(f"phase={phase!r}: 'decode' or 'prefill'")
    windows = [w for w in tl.steps if w.kind == phase]
    if not windows:
        raise ValueError(f"the timeline has no {phase} step: profile at least one "
                         f"({'decode_steps >= 1' if phase == 'decode' else 'a fresh batch starts with one'})")
    parts: dict[str, float] = {}
    for w in windows:
        if tl.on_gpu:
            busy, short, idle = sweep(tl.row("gpu", w.index), w.start_us, w.end_us)
            named = {**{f"GPU {k}": v for k, v in busy.items()}, GAP_PART: short, IDLE_PART: idle}
        else:   # no short-gap notion on the host: every stretch outside ops is host work
            busy, short, idle = sweep(tl.row("cpu ops", w.index), w.start_us, w.end_us, short_gap_us=0)
            named = {**{f"CPU {k}": v for k, v in busy.items()}, CPU_IDLE_PART: short + idle}
        for k, v in named.items():
            parts[k] = parts.get(k, 0.0) + v / len(windows)
    order = [f"{p} {f}" for p in ("GPU", "CPU") for f in FAMILY_COLORS] + [GAP_PART, IDLE_PART, CPU_IDLE_PART]
    parts = {k: parts[k] for k in order if k in parts}
    out = Breakdown(tl.label, tl.device, len(windows), statistics.fmean(w.us for w in windows), parts,
                    unprofiled_step_us=unprofiled_step_us, phase=phase)
    if shape is not None and phase == "decode":
        model = decode_step(shape, windows[-1].context_lens, dtype_bytes)
        out.floor_bytes = model.bytes
        if bandwidth is not None and bandwidth.available:
            out.bandwidth, out.floor_us = bandwidth.bandwidth, model.bytes / bandwidth.bandwidth * 1e6
            kind = "HBM copy" if tl.on_gpu else "CPU memcpy"
            out.floor_source = f"{bandwidth.bandwidth / 1e9:,.1f} GB/s ({kind} bandwidth, measured)"
        else:
            out.floor_source = f"no bandwidth ({bandwidth.reason if bandwidth else 'not measured'})"
    return out


def measure_breakdown(llm, *, batch: int = 1, prompt_len: int = 32, decode_steps: int = 3,
                      bandwidth: BandwidthRecord | None = None, trace_path=None,
                      phase: str = "decode") -> tuple[Breakdown, Timeline]:
    """Profile the engine's steps, then break its steps of `phase` down (decode: the mean of
    `decode_steps`; prefill: the batch's first step). Pass `bandwidth` to measure it once for
    several settings (default: measured here, on the engine's device; decode only)."""
    import torch
    tl = profile_engine_steps(llm, batch=batch, prompt_len=prompt_len, decode_steps=decode_steps,
                              trace_path=trace_path)
    unprofiled = unprofiled_step_us(llm, batch, prompt_len, phase)
    dtype_bytes = torch.finfo(llm.dtype).bits // 8
    bw = (bandwidth or step_bandwidth(llm.device)) if phase == "decode" else None
    return breakdown_of(tl, shape=llm.model_config, dtype_bytes=dtype_bytes, bandwidth=bw,
                        unprofiled_step_us=unprofiled, phase=phase), tl


def read_breakdowns(path) -> tuple[list[Breakdown], str]:
    """The breakdowns of a results file (`measure breakdown --json`), and where they come from."""
    from .results import RESULTS_DIR, read
    found, path = read(path), Path(path).resolve()
    shown = path.relative_to(RESULTS_DIR.parents[1]) if path.is_relative_to(RESULTS_DIR.parents[1]) else path
    return ([Breakdown.from_dict(r) for r in found.records],
            f"drawn from {shown.as_posix()}: measured on {found.gpu}, {found.date}, by `{found.command}`")


def ladder_settings():
    """The settings `measure breakdown` compares: the naive baseline, then the rungs that each
    remove a slice (flash + fused: the GPU work; graphs: the host time; all on: the decode kernels)."""
    from workbench.optimizations.board import Optimizations
    return [Optimizations.all_off(), Optimizations(attention="sdpa"),
            Optimizations(attention="flash", fused_kernels=True),
            Optimizations(attention="flash", fused_kernels=True, cuda_graphs=True), Optimizations.all_on()]


def measure_settings(model_dir, settings, *, batch: int = 1, decode_steps: int = 3, prompt_len: int = 32,
                     phase: str = "decode", trace_dir=None) -> list[tuple[Breakdown, Timeline]]:
    """A fresh engine per setting, its decode step broken down (printed as it comes) beside the
    timeline it was read from; the copy bandwidth is measured once, on the first engine's
    device, and shared by every floor."""
    from workbench.engine import LLM
    bandwidth, found = None, []
    for opts in settings:
        with LLM(model_dir, opts=opts, max_num_seqs=max(batch, 1), enable_prefix_caching=False) as llm:
            if phase == "decode":
                bandwidth = bandwidth or step_bandwidth(llm.device)
            trace = Path(trace_dir) / f"timeline-{opts.label()}.json" if trace_dir else None
            found.append(measure_breakdown(llm, batch=batch, decode_steps=decode_steps, prompt_len=prompt_len,
                                           bandwidth=bandwidth, trace_path=trace, phase=phase))
            print(found[-1][0], flush=True)
    return found


def plot_breakdowns(breakdowns: list[Breakdown], ax=None, *, zoom: float = 10.0, source: str = ""):
    """One stacked bar per setting (us per decode step), the floor drawn as a black tick.

    The ladder spans two orders of magnitude (an eager naive step against a graphed one), so on one
    linear axis the fast settings are slivers. When the slowest step is over `zoom` times the
    fastest (and no `ax` is given), a second panel redraws only the settings within `zoom` times
    the fastest, on their own scale, each bar labelled with its step time. `source` is printed under
    the figure (where the numbers come from). Returns the first panel's axes; the zoomed one, if
    drawn, is `ax.figure.axes[1]`."""
    import matplotlib.pyplot as plt
    fastest = min(b.step_us for b in breakdowns)
    near = [b for b in breakdowns if b.step_us <= zoom * fastest]
    two = ax is None and len(near) < len(breakdowns)
    if ax is None:
        width = 1.6 * len(breakdowns) + 3 + (1.6 * len(near) + 1 if two else 0)
        _, axes = plt.subplots(1, 2 if two else 1, figsize=(max(5, width), 3.8), squeeze=False,
                               gridspec_kw={"width_ratios": [len(breakdowns), len(near) + 0.5]} if two else None)
        axes = list(axes[0])
    else:
        axes = [ax]
    colors = {**{f"{p} {f}": c for p in ("GPU", "CPU") for f, c in FAMILY_COLORS.items()},
              GAP_PART: "gold", IDLE_PART: "0.75", CPU_IDLE_PART: "0.75"}
    legend = {}                       # part -> a handle, once per figure
    for panel, shown in zip(axes, (breakdowns, near)):
        for x, b in enumerate(shown):
            bottom = 0.0
            for part, us in b.parts.items():
                legend[part] = panel.bar(x, us, bottom=bottom, color=colors.get(part, "black"), width=0.6)
                bottom += us
            if b.floor_us is not None:
                legend["floor: modelled bytes / measured bandwidth"], = panel.plot(
                    [x - 0.35, x + 0.35], [b.floor_us] * 2, color="black", linewidth=2)
            if panel is not axes[0]:  # the zoom: its bars' totals, which the overview cannot show
                panel.annotate(f"{b.step_us:,.0f} us", (x, max(bottom, b.floor_us or 0)), ha="center",
                               va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        panel.set_xticks(range(len(shown)), [b.label.replace("+", "+\n") for b in shown], fontsize=8)
    phase = " / ".join(sorted({b.phase for b in breakdowns}))
    axes[0].set_ylabel(f"us per {phase} step (profiled)")
    devices = sorted({b.device for b in breakdowns})
    axes[0].set_title(f"where a {phase} step's time goes (measured on {', '.join(devices)})", fontsize=9)
    if two:
        axes[1].set_title(f"zoom: the settings within {zoom:g}x of the fastest", fontsize=9)
        axes[1].margins(y=0.12)
    axes[-1].legend(legend.values(), legend.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    axes[0].set_xlabel("switch setting", fontsize=8)
    if source:   # under the x label (so under the tallest tick label), from the panel's left edge
        axes[0].annotate(source, (0, 0), xycoords=("axes fraction", axes[0].xaxis.label), xytext=(0, -4),
                         textcoords="offset points", va="top", fontsize=7)
    return axes[0]
