"""The batch-1 matmuls of a decode step, one weight shape at a time: how close to the bandwidth?

At batch 1 every linear layer is a GEMV, y[1, N] = x[1, K] @ W[N, K]^T: it reads K x N weights
to do 2 K N FLOPs, so its time is at best (weight bytes) / (HBM bandwidth). The roofline module
models that floor; this module measures how far each shape of the model stays above it, for two
library kernels:

    cublas     torch's F.linear (what the engine runs)
    inductor   torch.compile's own Triton reduction for M = 1 (`coordinate_descent_tuning`,
               gpt-fast's recipe); it rewrites x @ W^T as a multiply-and-sum and tunes its blocks
    triton     the project's decode GEMV (workbench.kernels.gemv, the `decode_gemv` switch), with
               its per-shape config (scripts/sweep_gemv.py tries others through `config=`)

Each shape runs as it does in a decode step: one call per layer, each on its own weight (so no
weight is still in the 50 MB L2 from the call before), all captured in one CUDA graph (no launch
overhead). Time per call = replay time / layers. Bandwidth = weight bytes (modelled from the
shape) / measured time, next to the copy bandwidth measured in the same run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .timing import graph_replay_seconds

IMPLS = ("cublas", "inductor", "triton")


@dataclass
class GemvRecord:
    name: str                   # which linear layer, e.g. "gate_up_proj"
    impl: str
    available: bool
    reason: str = ""
    k: int = 0                  # input features
    n: int = 0                  # output features
    calls: int = 0              # back-to-back calls per graph replay (one per layer)
    us_per_call: float | None = None       # measured
    weight_bytes: int = 0                  # modelled: K x N x dtype size
    bandwidth: float | None = None         # weight_bytes / measured time, bytes/s
    of_copy_bandwidth: float | None = None  # bandwidth / copy bandwidth measured in the same run
    device: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def gemv_shapes(cfg) -> dict[str, tuple[int, int]]:
    """(K, N) of each linear layer of a workbench ModelConfig, as the engine stores it (q/k/v in
    one qkv_proj, gate and up in one gate_up_proj)."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"qkv_proj": (cfg.hidden_size, q + 2 * kv), "o_proj": (q, cfg.hidden_size),
            "gate_up_proj": (cfg.hidden_size, 2 * cfg.intermediate_size),
            "down_proj": (cfg.intermediate_size, cfg.hidden_size),
            "lm_head": (cfg.hidden_size, cfg.vocab_size)}


def _linear(impl: str, config=None):
    import torch
    import torch.nn.functional as F
    if impl == "cublas":
        return F.linear
    if impl == "triton":
        from workbench.kernels.gemv import gemv
        return lambda x, w: gemv(x, w, None, config)
    import torch._inductor.config as inductor_config
    torch._dynamo.reset()   # compiled code is cached per function; start from a clean slate
    compiled = torch.compile(lambda x, w: F.linear(x, w), dynamic=False)   # M = 1 stays static

    def linear(x, w):
        # the knob is read while compiling, which happens at the first call of each shape
        with inductor_config.patch(coordinate_descent_tuning=True):
            return compiled(x, w)
    return linear


def time_gemv(k: int, n: int, calls: int, impl: str, *, m: int = 1, config=None, replays: int = 20) -> float:
    """Seconds per call of bf16 [m, k] x [k, n], `calls` different weights back to back in one graph.
    config: the triton impl's GemvConfig (None: its own table/heuristic)."""
    import torch
    linear = _linear(impl, config)
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(calls)]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

    def step():
        return [linear(x, w) for w in weights]

    from workbench.kernels.pdl import launching
    with launching(False):   # the kernel alone, launched the ordinary way (see kernels/pdl.py)
        return graph_replay_seconds(step, replays) / calls   # compile, tune, cuBLAS: in its warm-up


def layer_record(cfg, name: str, impl: str, available: bool, reason: str = "") -> GemvRecord:
    """A record of one linear layer's shape as a decode step runs it: K, N, calls per graph (the
    LM head once, the others once per decoder layer) and the weight bytes each call reads."""
    k, n = gemv_shapes(cfg)[name]
    return GemvRecord(name, impl, available, reason, k=k, n=n, calls=1 if name == "lm_head" else cfg.num_layers,
                      weight_bytes=k * n * 2)   # bf16


def time_layer(cfg, name: str, impl: str, *, m: int = 1, config=None,
               copy_bandwidth: float | None = None) -> GemvRecord:
    """Time one linear layer's [m, K] x [K, N] and do the per-shape arithmetic: microseconds per
    call, bandwidth (weight bytes / time), share of the copy bandwidth."""
    import torch
    record = layer_record(cfg, name, impl, True)
    seconds = time_gemv(record.k, record.n, record.calls, impl, m=m, config=config)
    record.us_per_call, record.bandwidth = seconds * 1e6, record.weight_bytes / seconds
    record.of_copy_bandwidth = record.bandwidth / copy_bandwidth if copy_bandwidth else None
    record.device = torch.cuda.get_device_name()
    return record


def measure_gemvs(cfg, impls=IMPLS, *, copy_bandwidth: float | None = None) -> list[GemvRecord]:
    """One record per (linear layer, impl); the LM head runs once per graph, the others once per layer."""
    import torch
    shapes = gemv_shapes(cfg)
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise ValueError(f"unknown GEMV implementation(s) {unknown}; choose from {list(IMPLS)}")
    if not torch.cuda.is_available():
        reason = "no CUDA: the GEMVs are timed as CUDA-graph replays on a GPU; run this on the GPU machine"
        return [GemvRecord(name, impl, False, reason, k=k, n=n) for name, (k, n) in shapes.items() for impl in impls]
    records = []
    for name in shapes:
        for impl in impls:
            try:
                records.append(time_layer(cfg, name, impl, copy_bandwidth=copy_bandwidth))
            except Exception as e:   # e.g. inductor cannot compile here: say so, keep the others
                records.append(layer_record(cfg, name, impl, False, f"{type(e).__name__}: {str(e)[:200]}"))
    return records
