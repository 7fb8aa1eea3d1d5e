"""Where a layer's microseconds go: one decode step's GPU kernels, folded into its layers.

Every layer of a decode step launches the same kernels in the same order, so one profiled step
holds the layer's cost as many times as the model has layers. Two things make reading it right:

- **What a kernel adds, not its span.** Under PDL a kernel starts while the one before it runs and
  its span includes its wait, so spans overlap and their sum counts time twice. What a kernel adds
  to the step is its end minus the latest end before it (`wall_added`); these sum to the step,
  first start to last end. A kernel whose weights load under the kernel before adds little even
  with a long span.
- **The layer from the names alone.** `fold_layers` finds the run of kernel names repeated
  back to back exactly once a layer; what stands before it (the embedding) and after it (the
  final norm, the LM head, the sampler) is kept apart. Each kernel of the layer gets the median
  over layers of what it added. Where a kernel next to the layers has the name of a layer's own
  first or last kernel, where a layer begins cannot be told from names: the fold refuses.

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
    The layer is a run of names that fills a longest back-to-back stretch exactly `layers` times
    (a stretch with a partial run more, a kernel before or after the layers named as one of the
    layer's own, leaves where a layer begins unknown), itself not a shorter run repeated (a layer
    whose kernels are all one repeated name cannot be told from more layers), covering at least
    half the step; of several, the one covering the most kernels. ValueError otherwise."""
    if layers < 2:
        raise ValueError(f"layers={layers}: a fold finds the layer by its repeats, so it needs at least 2 layers")
    if kernels and len(kernels[0]) < 3:
        raise ValueError("these kernels have no end times (recorded before session 15): "
                         "what each adds under PDL cannot be told from spans that overlap")
    names = [k[0] for k in kernels]
    found = []   # (period, start) of each stretch that is one run repeated exactly `layers` times
    for period in range(1, len(names) // layers + 1):
        for start, length in _stretches(names, period):
            if length == period * layers and _primitive(names[start:start + period]):
                found.append((period, start))
    if found:
        period, start = max(found, key=lambda f: (f[0], -f[1]))   # the most kernels; then the earliest
        if 2 * period * layers >= len(names):
            return _fold(kernels, start, period, layers)
    raise ValueError(f"no run of kernel names repeats exactly {layers} times back to back over most of these "
                     f"{len(names)} kernels: is this a decode step of a model with {layers} layers? (The fold also "
                     "refuses where a kernel next to the layers is named as a layer's own, and layers whose "
                     "kernels are one name repeated: where a layer begins cannot be told from names.)")


def _stretches(names: list[str], period: int) -> list[tuple[int, int]]:
    """(start, length) of each longest stretch in which every name equals the one `period` later
    (the stretch of a run repeated back to back, whatever kernel of the run it starts on)."""
    same = [names[i] == names[i + period] for i in range(len(names) - period)] + [False]
    out, start = [], None
    for i, s in enumerate(same):
        if s and start is None:
            start = i
        elif not s and start is not None:
            out.append((start, i - start + period))
            start = None
    return out


def _primitive(run: list[str]) -> bool:
    """The run is not a shorter run repeated (two identical layers would be)."""
    return not any(len(run) % p == 0 and run == run[:p] * (len(run) // p) for p in range(1, len(run)))


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


def layer_gemv_bytes(fold: LayerFold, shape, item_bytes: int = 2,
                     projections: tuple[str, ...] = LAYER_GEMVS) -> dict[int, tuple[str, int]]:
    """{position in the layer: (projection, its weight bytes)} where the layer launches exactly one
    decode GEMV (`_gemv_kernel`: decode_gemv or fused_decode on) per projection of `projections`, in
    that order; {} for any other layer (cuBLAS's kernels carry no name a weight can be matched to).
    projections: the ones with a GEMV of their own -- a candidate that runs o_proj inside the
    attention merge (A/B variant dattn-o-proj) leaves it out."""
    from .gemv import gemv_shapes
    positions = [i for i, name in enumerate(fold.names) if name == "_gemv_kernel"]
    if len(positions) != len(projections):
        return {}
    shapes = gemv_shapes(shape)
    return {i: (proj, shapes[proj][0] * shapes[proj][1] * item_bytes) for i, proj in zip(positions, projections)}


def profile_layers(llm, layers: int, prompt_len: int = 128) -> LayerFold:
    """Profile decode steps of a live engine at batch 1 after a prompt of prompt_len tokens and fold
    the last one (GPU only: the fold reads GPU kernels)."""
    from .timeline import profile_engine_steps
    if not str(llm.device).startswith("cuda"):
        raise RuntimeError("profile_layers folds GPU kernels: on a CPU, fold a recorded step "
                           "(fold_layers on an A/B file's step_kernels)")
    timeline = profile_engine_steps(llm, batch=1, prompt_len=prompt_len, decode_steps=2)
    return fold_layers(decode_step_kernels(timeline), layers)
