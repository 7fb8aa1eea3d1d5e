"""The bottleneck map: where prefill and decode steps sit on this machine's roofline, measured.

A roofline chart has arithmetic intensity (FLOPs per byte of memory traffic) on x and achieved
FLOP/s on y. Two ceilings bound every point: the memory slope (bandwidth x intensity) and the
flat matmul peak; they meet at the machine balance. A point under the slope is memory-bound
(more bytes per second would help, more FLOP/s would not); a point under the flat part is
compute-bound.

What is measured and what is modelled:
- ceilings: measured here -- a large copy (bandwidth) and a large matmul in the engine's dtype
  (peak), each repeated, median kept;
- each point's time: measured -- a prefill step is the time to first token of B prompts
  prefilled in one step, a decode step the time per output token of B sequences;
- each point's FLOPs and bytes: modelled from the model's shape (workbench.measure.roofline:
  every weight read once, the KV cache read once), so intensity is modelled and achieved FLOP/s
  is modelled FLOPs / measured time. Labelled so wherever it is printed.

Prefill pushes hundreds of tokens through each weight it reads (high intensity: compute-bound);
decode pushes one token per sequence (intensity ~ batch size: memory-bound until the batch is
large). Which switch moves which point is the chapter's experiment: run `measure_points` for two
settings and compare.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from .roofline import decode_step, prefill_step, step_bandwidth
from .timing import device_sync, time_runs


@dataclass
class Ceilings:
    device: str
    bandwidth: float       # bytes/s, measured (copy: bytes read + bytes written)
    peak_flops: float      # FLOP/s, measured (one large matmul)
    dtype: str
    how: str               # what was run, for the figure's label

    @property
    def balance(self) -> float:
        """FLOPs per byte where the two ceilings meet."""
        return self.peak_flops / self.bandwidth


@dataclass
class Point:
    setting: str
    phase: str             # "prefill" | "decode"
    batch: int
    tokens: int            # tokens through the weights in this step
    seconds: float         # measured step time
    flops: int             # modelled
    bytes: int             # modelled
    intensity: float       # modelled FLOPs / modelled bytes
    achieved_flops: float  # modelled FLOPs / measured time

    def to_dict(self) -> dict:
        return asdict(self)


def measure_ceilings(device: str = "cpu", *, repeats: int = 5) -> Ceilings:
    """Copy bandwidth and matmul peak measured on `device`, in the dtype the engine uses there
    (bfloat16 on a GPU, float32 on a CPU). Sizes are large enough to leave every cache."""
    import torch
    on_gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    nbytes = 2**30 if on_gpu else 2**28        # 1 GiB on a GPU; 256 MiB on a CPU (laptops)
    copy = step_bandwidth(device, nbytes=nbytes, repeats=repeats)
    if not copy.available:
        raise ValueError(f"the copy bandwidth on {device} could not be measured: {copy.reason}")
    n = 8192 if on_gpu else 1024               # a CPU thread needs ~0.1 s for 1024^3 x 2 FLOPs
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    # one warm-up call: first touch, allocator, clocks
    mm_s = time_runs(lambda: a @ b, repeats=repeats, warmup=1, sync=device_sync(device)).median / 1e3
    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} torch thread(s)"
    return Ceilings(device=name, bandwidth=copy.bandwidth, peak_flops=2 * n**3 / mm_s,
                    dtype=str(dtype).removeprefix("torch."),
                    how=f"measured: copy of {nbytes / 2**20:.0f} MiB, {n}^3 matmul, median of {repeats}")


def measure_points(llm, shape=None, label: str = "", *, batches=(1, 4, 16), prompt_len: int = 64,
                   decode_tokens: int = 16, dtype_bytes: int | None = None, seed: int = 0) -> list[Point]:
    """One prefill point and one decode point per batch size, on an open engine `llm`, labelled
    `label`. The model's shape and the bytes per value are the engine's (llm.model_config, its
    dtype); `shape` and `dtype_bytes` may still be passed, and must then agree with the engine.

    The engine must prefill a batch in one step (max_num_batched_tokens >= max(batches) *
    prompt_len) and hold it (max_num_seqs >= max(batches)); prefix caching off, so each prefill
    computes every token."""
    import random

    from workbench import SamplingParams
    engine_bytes = llm.dtype.itemsize
    if shape is not None and shape != llm.model_config:
        raise ValueError("shape is not the engine's model: leave it out (measure_points reads llm.model_config)")
    if dtype_bytes is not None and dtype_bytes != engine_bytes:
        raise ValueError(f"dtype_bytes={dtype_bytes} but the engine runs {llm.dtype} ({engine_bytes} bytes): "
                         "leave it out (measure_points reads the engine's dtype)")
    shape, dtype_bytes = llm.model_config, engine_bytes
    rng = random.Random(seed)
    points = []
    for batch in batches:
        prompts = [[rng.randrange(1, shape.vocab_size) for _ in range(prompt_len)] for _ in range(batch)]
        params = SamplingParams(temperature=0, max_tokens=decode_tokens, ignore_eos=True)
        llm.generate(prompts, params, use_tqdm=False)                       # warm-up
        outs = llm.generate(prompts, params, use_tqdm=False)
        prefill_s = statistics.median(o.ttft for o in outs)
        decode_s = statistics.median(o.tpot for o in outs)
        mid = prompt_len + decode_tokens // 2                               # a typical decode step
        for phase, seconds, model in (
                ("prefill", prefill_s, prefill_step(shape, [prompt_len] * batch, dtype_bytes)),
                ("decode", decode_s, decode_step(shape, [mid] * batch, dtype_bytes))):
            points.append(Point(setting=label, phase=phase, batch=batch, tokens=model.new_tokens,
                                seconds=seconds, flops=model.flops, bytes=model.bytes,
                                intensity=model.intensity, achieved_flops=model.flops / seconds))
    return points


def plot_bottleneck_map(ceilings: Ceilings, points: list[Point], ax=None):
    """The roofline with the measured ceilings and one marker per point (shape: phase; colour:
    setting; label: batch size)."""
    import matplotlib.pyplot as plt
    import numpy as np
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.2))
    xs = np.logspace(-1, 4, 200)
    ax.plot(xs, np.minimum(ceilings.bandwidth * xs, ceilings.peak_flops), color="black", lw=1.5,
            label=f"ceilings ({ceilings.how})")
    ax.axvline(ceilings.balance, color="gray", ls=":", lw=1)
    colors = dict(zip(dict.fromkeys(p.setting for p in points), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    rank = {setting: i for i, setting in enumerate(colors)}   # settings at one point: labels stacked
    for p in points:
        ax.scatter(p.intensity, p.achieved_flops, marker="o" if p.phase == "prefill" else "s",
                   color=colors[p.setting], s=36)
        ax.annotate(f"{p.phase[0]}{p.batch}", (p.intensity, p.achieved_flops), fontsize=7, color=colors[p.setting],
                    xytext=(3, 3 - 9 * rank[p.setting]), textcoords="offset points")
    for setting, color in colors.items():
        ax.scatter([], [], color=color, label=setting)
    ax.scatter([], [], marker="o", color="gray", label="prefill (p<batch>)")
    ax.scatter([], [], marker="s", color="gray", label="decode (d<batch>)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity, FLOP per byte [modelled]")
    ax.set_ylabel("achieved FLOP/s [modelled FLOPs / measured time]")
    ax.set_title(f"the bottleneck map on {ceilings.device} ({ceilings.dtype})", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return ax


FAR_UNDER = 0.10   # a point below this share of its roof is set by something else than that roof


def verdicts(ceilings: Ceilings, points: list[Point]) -> list[str]:
    """One sentence per point: which side of the ridge it sits on and how close it gets to its roof,
    from the numbers. The side names the ceiling that *would* bound it; a point far under that roof
    (below FAR_UNDER of it) is held back by something else -- launches, the host, small kernels --
    and the line says so."""
    lines = []
    for p in points:
        roof = min(ceilings.bandwidth * p.intensity, ceilings.peak_flops)
        bound = "memory" if p.intensity < ceilings.balance else "compute"
        share = p.achieved_flops / roof
        lines.append(f"{p.setting:<14} {p.phase:<7} batch {p.batch:>3}: {p.intensity:8.1f} FLOP/B -> "
                     f"{bound}-bound side; achieved {p.achieved_flops / 1e9:9.2f} GFLOP/s = "
                     f"{100 * share:5.1f} % of its ceiling"
                     + (" (far under it: overheads, not this ceiling, set the time)" if share < FAR_UNDER else ""))
    return lines
