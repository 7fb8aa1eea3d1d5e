"""The kernel timeline of engine steps, read from torch.profiler's events (no tracer of our own).

What Nsight Systems or Perfetto show a performance engineer, drawn with matplotlib:

    CPU ops          the top-level ATen ops the Python thread runs (on a CPU: the whole model)
    CPU launch calls cudaLaunchKernel / cuLaunchKernel / cudaGraphLaunch: the host asking the GPU
    GPU kernels      what the GPU stream executed, coloured by family

over one prefill step and a few decode steps of a real engine (any switch setting). The gaps
between GPU kernels are the lesson of CUDA graphs before they are a number: an eager step is a
comb of tiny kernels with the GPU waiting between them; a graph replay packs them together
(CUPTI records the kernels inside a replay one by one, so they are drawn as kernels; if a
driver does not, the timeline says so instead of drawing an opaque block).

`profile_engine_steps(llm)` also writes the profiler's own Chrome trace (`trace_path`): open it
in https://ui.perfetto.dev to zoom into every event. `sweep()` turns a row of spans into busy
time per family plus idle gaps; measure/breakdown.py builds the step's budget from it.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from .hbm import classify_kernel
from .launches import GRAPH_API, LAUNCH_API, SHORT_GAP_US, _is_kernel, short_gaps_us
from .timing import device_sync, profiling

STEP_PREFIX = "workbench.step "
FAMILY_COLORS = {"matmul": "tab:blue", "attention": "tab:red", "norm/elementwise": "tab:green",
                 "sampling": "tab:purple", "copy": "tab:orange", "other": "tab:gray"}
_SAMPLING = re.compile(r"argmax|multinomial|exponential|topk|sort|gumbel|sampl", re.I)
_MATMUL = re.compile(r"^aten::(linear|mm|addmm|bmm|matmul|baddbmm)$", re.I)
_COPY = re.compile(r"memcpy|memset|copy|^aten::(to|index_put_?|index_copy_?)$|store_kvcache", re.I)
_OTHER_OPS = re.compile(r"^aten::(empty\w*|arange|lift_fresh|zeros\w*|full\w*|embedding|tensor)$")
_ELEMENTWISE = re.compile(r"^aten::|rope|silu|swiglu|rotary|rsqrt|reduce", re.I)


def family_of(name: str) -> str:
    """The family of a GPU kernel or CPU ATen op: matmul, attention, norm/elementwise,
    sampling, copy or other (hbm.classify_kernel first, then names it does not know)."""
    if _SAMPLING.search(name):
        return "sampling"
    family = classify_kernel(name)
    if family in ("attention", "matmul"):
        return family
    if _MATMUL.search(name):
        return "matmul"
    if _COPY.search(name):
        return "copy"
    if family in ("norm", "elementwise") or (_ELEMENTWISE.search(name) and not _OTHER_OPS.match(name)):
        return "norm/elementwise"
    return "other"


@dataclass
class Span:
    row: str          # "cpu ops" | "launches" | "gpu"
    name: str
    family: str
    start_us: float
    end_us: float
    step: int         # index into Timeline.steps


@dataclass
class StepWindow:
    index: int
    kind: str             # prefill | decode | mixed (from llm.telemetry)
    start_us: float       # the host's step, as the profiler saw it
    end_us: float
    context_lens: list = field(default_factory=list)   # tokens each sequence attends to (decode)

    @property
    def us(self) -> float:
        return self.end_us - self.start_us


@dataclass
class Timeline:
    label: str
    device: str
    on_gpu: bool
    steps: list[StepWindow]
    spans: list[Span]
    trace_path: str = ""
    gpu_note: str = ""         # why the launch / GPU rows are empty, or what they miss
    graph_launches: int = 0

    def row(self, name: str, step: int | None = None) -> list[Span]:
        return [s for s in self.spans if s.row == name and (step is None or s.step == step)]

    def decode_steps(self) -> list[StepWindow]:
        return [w for w in self.steps if w.kind == "decode"]

    def only(self, kind: str) -> "Timeline":
        """The same timeline cut down to the steps of one kind (e.g. "decode")."""
        keep = {w.index for w in self.steps if w.kind == kind}
        return replace(self, steps=[w for w in self.steps if w.index in keep],
                       spans=[s for s in self.spans if s.step in keep])

    def __str__(self) -> str:
        kinds = ", ".join(w.kind for w in self.steps)
        return (f"timeline {self.label} on {self.device}: {len(self.steps)} steps ({kinds}), "
                f"{len(self.row('gpu'))} GPU kernels, {len(self.row('cpu ops'))} CPU ops (measured by "
                f"torch.profiler); trace: {self.trace_path}" + (f"; {self.gpu_note}" if self.gpu_note else ""))


def sweep(spans: list[Span], start: float, end: float, short_gap_us: float = SHORT_GAP_US):
    """Split the window [start, end] of one row into busy time per family (a stretch covered
    by overlapping spans counts once, for the span that started first), idle gaps between
    spans shorter than `short_gap_us` (launches.short_gaps_us, the one gap rule), and the
    remaining idle time (edges, long waits).
    Returns (busy_by_family, short_gaps_us, long_idle_us); they sum to end - start."""
    busy: dict[str, float] = {}
    covered = []   # the stretches each span adds to the busy time (clipped to the window)
    cursor = start
    for s in sorted(spans, key=lambda s: s.start_us):
        lo, hi = max(s.start_us, start), min(s.end_us, end)
        if hi <= cursor:
            continue
        busy[s.family] = busy.get(s.family, 0.0) + hi - max(lo, cursor)
        covered.append((lo, hi))
        cursor = hi
    short = short_gaps_us(covered, short_gap_us)
    return busy, short, (end - start) - sum(busy.values()) - short


def _has_aten_ancestor(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def _top_aten(event):
    while event is not None and not (event.name.startswith("aten::") and not _has_aten_ancestor(event)):
        event = event.cpu_parent
    return event


def spans_from_events(events, windows: list[StepWindow]) -> tuple[list[Span], int]:
    """torch.profiler FunctionEvents -> spans on three rows, each tagged with its step window."""
    from torch.autograd import DeviceType

    def step_of(t):
        return next((w.index for w in windows if w.start_us <= t <= w.end_us), None)

    spans, graphs = [], 0
    for e in events:
        start, end = e.time_range.start, e.time_range.end
        step = step_of(start)
        if step is None or getattr(e, "is_user_annotation", False) or e.name.startswith(STEP_PREFIX):
            continue
        if e.device_type == DeviceType.CPU:
            if LAUNCH_API.match(e.name) or GRAPH_API.match(e.name):
                graphs += bool(GRAPH_API.match(e.name))
                op = _top_aten(e)   # colour a launch by the op that asked for it
                family = "other" if op is None or GRAPH_API.match(e.name) else family_of(op.name)
                spans.append(Span("launches", e.name, family, start, end, step))
            elif e.name.startswith("aten::") and not _has_aten_ancestor(e):
                spans.append(Span("cpu ops", e.name, family_of(e.name), start, end, step))
        elif e.device_type == DeviceType.CUDA:
            family = family_of(e.name) if _is_kernel(e, DeviceType.CUDA) else "copy"   # memcpy / memset
            spans.append(Span("gpu", e.name, family, start, end, step))
    return spans, graphs


def _engine_view(llm) -> dict:
    """The engine reads a timeline needs, in one place (re-point here if the engine changes)."""
    return {"running_lengths": [len(seq) for seq in llm.scheduler.running],
            "kind": llm.telemetry.rows[-1]["kind"] if llm.telemetry.rows else "?",
            "pending": llm.scheduler.has_unfinished()}


def profile_engine_steps(llm, *, batch: int = 1, prompt_len: int = 32, decode_steps: int = 3,
                         trace_path=None, seed: int = 0, temperature: float = 0.0,
                         prefilled: bool = False) -> Timeline:
    """Profile one prefill step (more if the batch needs them) and `decode_steps` decode steps of
    a fresh batch of random prompts, after a warm-up batch; write the Chrome trace. temperature:
    of the profiled requests (0: greedy; a sampled step runs the sampler's kernels too).
    prefilled: prefill the batch before the profiler starts, so only its decode steps are in it
    (a big batch's prefill is many chunked steps: the profile would be mostly prefill)."""
    import random

    import torch
    from torch.profiler import record_function

    from workbench.engine import SamplingParams

    from .steps import queue_random_prompts, start_decoding
    rng = random.Random(seed)
    params = SamplingParams(temperature=temperature, max_tokens=decode_steps + 4, ignore_eos=True)
    on_gpu = str(llm.device).startswith("cuda")
    sync = device_sync(llm.device)
    try:
        with llm.decode_steps_override(1):   # one model step per llm.step()
            queue_random_prompts(llm, batch, prompt_len, params, rng)    # warm-up: JIT, autotune, caches
            for _ in range(4):
                llm.step()
            if prefilled:
                start_decoding(llm, batch, prompt_len, params, rng)
            else:
                queue_random_prompts(llm, batch, prompt_len, params, rng)
            sync()
            kinds, lens = [], []
            with profiling(cuda=on_gpu) as run:
                while sum(k == "decode" for k in kinds) < decode_steps and _engine_view(llm)["pending"]:
                    lens.append(_engine_view(llm)["running_lengths"])
                    with record_function(f"{STEP_PREFIX}{len(kinds)}"):
                        llm.step()
                        sync()
                    kinds.append(_engine_view(llm)["kind"])
    finally:
        llm.abort_all()
    if run.unavailable:
        raise RuntimeError(f"no timeline: {run.unavailable}")
    prof = run.prof
    label = llm.opts.label()
    safe = re.sub(r"[^\w.-]", "_", label)
    path = Path(trace_path or Path(tempfile.gettempdir()) / f"workbench-timeline-{safe}.json")
    prof.export_chrome_trace(str(path))
    events = run.events
    marks = sorted((e for e in events if e.name.startswith(STEP_PREFIX) and e.device_type.name == "CPU"),
                   key=lambda e: e.time_range.start)
    windows = [StepWindow(i, kinds[i], e.time_range.start, e.time_range.end,
                          lens[i] if kinds[i] == "decode" else []) for i, e in enumerate(marks)]
    spans, graphs = spans_from_events(events, windows)
    note = ""
    if not on_gpu:
        note = (f"no CUDA GPU: the engine runs on {llm.device}, so the host runs every op itself; "
                "there are no launch calls and no GPU kernels to draw")
    elif graphs and not any(s.row == "gpu" for s in spans):
        note = ("CUPTI did not record the kernels inside the CUDA graph replays on this driver: the "
                "GPU row misses them (the graph launches are on the launch row)")
    device = torch.cuda.get_device_name(llm.device) if on_gpu else str(llm.device)
    return Timeline(label, device, on_gpu, windows, spans, str(path), note, graphs)


ROWS = [("cpu ops", "CPU ops"), ("launches", "CPU launch calls"), ("gpu", "GPU kernels")]


def plot_timeline(tl: Timeline, ax=None, width_ms: float | None = None, legend: bool = True):
    """Draw the three rows; `width_ms` fixes the x range (same scale for timelines side by side).
    Each step is labelled with its kind and its idle time: GPU gaps between kernels on a GPU,
    host time outside ATen ops on a CPU."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 2.6))
    t0 = tl.steps[0].start_us if tl.steps else 0.0
    for y, (row, _) in enumerate(reversed(ROWS)):
        for family, color in FAMILY_COLORS.items():
            bars = [((s.start_us - t0) / 1e3, max(s.end_us - s.start_us, 0.5) / 1e3)
                    for s in tl.spans if s.row == row and s.family == family]
            if bars:
                ax.broken_barh(bars, (y - 0.35, 0.7), color=color, linewidth=0)
    end = (tl.steps[-1].end_us - t0) / 1e3 if tl.steps else 1.0
    narrow = []   # steps too short on this scale for their label: numbered, listed in the title
    for w in tl.steps:
        x0, x1 = (w.start_us - t0) / 1e3, (w.end_us - t0) / 1e3
        ax.axvspan(x0, x1, color="0.93" if w.index % 2 else "0.97", zorder=-1)
        row = "gpu" if tl.on_gpu else "cpu ops"
        busy, short, idle = sweep(tl.row(row, w.index), w.start_us, w.end_us)
        gap = (f"GPU idle: {short:.0f} us short gaps + {idle:.0f} us waiting" if tl.on_gpu
               else f"host outside ops {idle + short:.0f} us")
        if x1 - x0 >= 0.15 * (width_ms or end):
            ax.text((x0 + x1) / 2, 2.55, f"{w.kind} {w.us / 1e3:.2f} ms\n{gap}", ha="center", va="bottom", fontsize=6)
        else:
            ax.text((x0 + x1) / 2, 2.55, f"{w.index}", ha="center", va="bottom", fontsize=6)
            narrow.append(f"{w.index}: {w.kind} {w.us / 1e3:.2f} ms")
    if tl.gpu_note:
        ax.text(0.01, 0.5, tl.gpu_note, transform=ax.transAxes, fontsize=7, color="dimgray", va="center")
    ax.set_yticks(range(3), [name for _, name in reversed(ROWS)], fontsize=8)
    ax.set_ylim(-0.6, 3.3)
    ax.set_xlim(0, width_ms or end)
    ax.set_xlabel("ms since the first profiled step (measured by torch.profiler; it adds overhead)", fontsize=8)
    ax.set_title(f"{tl.label} on {tl.device}" + (f"  (steps {', '.join(narrow)})" if narrow else ""), fontsize=9)
    if legend:
        ax.legend(handles=[Patch(color=c, label=f) for f, c in FAMILY_COLORS.items()], fontsize=7,
                  ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    return ax


def plot_timelines(timelines: list[Timeline], height: float = 2.4, same_scale: bool = True):
    """Several timelines stacked, on the same time scale (the longest one's width), or each on
    its own (`same_scale=False`: for settings whose steps differ by orders of magnitude)."""
    import matplotlib.pyplot as plt
    width = max((t.steps[-1].end_us - t.steps[0].start_us) / 1e3 for t in timelines if t.steps) if same_scale else None
    fig, axes = plt.subplots(len(timelines), 1, figsize=(12, height * len(timelines) + 0.6),
                             squeeze=False, layout="constrained")
    for i, (ax, tl) in enumerate(zip(axes[:, 0], timelines)):
        plot_timeline(tl, ax, width_ms=width, legend=i == len(timelines) - 1)
    return fig
