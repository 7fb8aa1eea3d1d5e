"""Where a layer's microseconds go: one decode step's GPU kernels, folded into its layers.

Every layer of a decode step launches the same kernels in the same order, so one profiled step
holds the layer's cost as many times as the model has layers. Two things make reading it right:

- **What a kernel adds, not its span.** Under PDL a kernel starts while the one before it runs and
  its span includes its wait, so spans overlap and their sum counts time twice. What a kernel adds
  to the step is its end minus the latest end before it (`wall_added`); these sum to the step,
  first start to last end. A kernel whose weights load under the kernel before adds little even
  with a long span.
- **The layer from the names alone.** `fold_layers` finds the shortest run of kernel names that
  repeats once a layer, back to back; what stands before it (the embedding) and after it (the
  final norm, the LM head, the sampler) is kept apart. Each kernel of the layer gets the median
  over layers of what it added.

`profile_layers(llm, layers)` profiles one decode step of a live engine (torch.profiler through
measure/timeline.py) and folds it; `scripts/ab_decode_candidates.py` keeps the same
[name, span, end] lists of its profiled steps in its JSON, which `fold_layers` reads as well.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass


def wall_added(kernels: list[list]) -> list[float]:
    """What each kernel added to the step's elapsed time: its end minus the latest end before it.
    kernels: [name, span us, end us] in launch order. Rows without ends (recorded before session
    15): their spans, which overlap under PDL."""
    if not kernels or len(kernels[0]) < 3:
        return [k[1] for k in kernels]
    added, latest = [], 0.0
    for k in kernels:
        added.append(max(k[2] - latest, 0.0))
        latest = max(latest, k[2])
    return added


def decode_step_kernels(timeline) -> list[list]:
    """[name, span us, end us] of each GPU kernel of the timeline's last decode step, in launch
    order; ends are measured from the step's first kernel's start."""
    steps = timeline.decode_steps()
    if not steps:
        return []
    spans = timeline.row("gpu", steps[-1].index)
    origin = min((s.start_us for s in spans), default=0.0)
    return [[s.name, round(s.end_us - s.start_us, 2), round(s.end_us - origin, 2)] for s in spans]


@dataclass(frozen=True)
class LayerFold:
    names: list[str]                   # one layer's kernels, in launch order
    added_us: list[float]              # each one's median over layers of what it added to the step
    span_us: list[float]               # ... and of its own span (its PDL wait included)
    layer_us: list[float]              # each layer's sum of what its kernels added
    before: list[tuple[str, float]]    # kernels before the first layer: (name, what it added)
    after: list[tuple[str, float]]     # kernels after the last layer

    @property
    def median_layer_us(self) -> float:
        return statistics.median(self.layer_us)

    @property
    def step_us(self) -> float:
        """The whole step, first kernel's start to last kernel's end (all that was added)."""
        return sum(self.layer_us) + sum(us for _, us in self.before) + sum(us for _, us in self.after)


def fold_layers(kernels: list[list], layers: int) -> LayerFold:
    """Fold one decode step ([name, span us, end us] a kernel, launch order) into `layers` layers.
    The layer is the shortest run of names repeated `layers` times back to back (the earliest such
    run if several); ValueError if none is: a step of another model, or not a decode step."""
    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}")
    if kernels and len(kernels[0]) < 3:
        raise ValueError("these kernels have no end times (recorded before session 15): "
                         "what each adds under PDL cannot be told from spans that overlap")
    names = [k[0] for k in kernels]
    for period in range(1, len(names) // layers + 1):
        for start in range(len(names) - period * layers + 1):
            one = names[start:start + period]
            if all(names[start + i * period:start + (i + 1) * period] == one for i in range(1, layers)):
                return _fold(kernels, start, period, layers)
    raise ValueError(f"no run of kernel names repeats {layers} times back to back in these {len(names)} "
                     "kernels: is this a decode step of a model with that many layers?")


def _fold(kernels: list[list], start: int, period: int, layers: int) -> LayerFold:
    added = wall_added(kernels)
    end = start + period * layers
    rows = [range(start + i * period, start + (i + 1) * period) for i in range(layers)]
    return LayerFold(
        names=[k[0] for k in kernels[start:start + period]],
        added_us=[statistics.median(added[row[j]] for row in rows) for j in range(period)],
        span_us=[statistics.median(kernels[row[j]][1] for row in rows) for j in range(period)],
        layer_us=[sum(added[i] for i in row) for row in rows],
        before=[(kernels[i][0], added[i]) for i in range(start)],
        after=[(kernels[i][0], added[i]) for i in range(end, len(kernels))])


LAYER_GEMVS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")   # a layer's projections, in launch order


def gemv_weights(fold: LayerFold, shape, item_bytes: int = 2) -> dict[int, tuple[str, int]]:
    """{position in the layer: (projection, its weight bytes)} where the layer launches one decode
    GEMV (`_gemv_kernel`) per projection, as with fused_decode on; {} for any other layer (cuBLAS's
    kernels, unfused projections), whose kernels cannot be matched to weights by name."""
    from .gemv import gemv_shapes
    positions = [i for i, name in enumerate(fold.names) if name == "_gemv_kernel"]
    if len(positions) != len(LAYER_GEMVS):
        return {}
    shapes = gemv_shapes(shape)
    return {i: (proj, shapes[proj][0] * shapes[proj][1] * item_bytes) for i, proj in zip(positions, LAYER_GEMVS)}


def profile_layers(llm, layers: int, prompt_len: int = 128) -> LayerFold:
    """Profile decode steps of a live engine at batch 1 after a prompt of prompt_len tokens and fold
    the last one (GPU only: the fold reads GPU kernels)."""
    from .timeline import profile_engine_steps
    if not str(llm.device).startswith("cuda"):
        raise RuntimeError("profile_layers folds GPU kernels: on a CPU, fold a recorded step "
                           "(fold_layers on an A/B file's step_kernels)")
    timeline = profile_engine_steps(llm, batch=1, prompt_len=prompt_len, decode_steps=2)
    return fold_layers(decode_step_kernels(timeline), layers)
