"""The roofline: how fast a step *could* be, from the model's shape alone.

Everything here except the copy-bandwidth measurements at the end (`measure_copy_bandwidth` on a
GPU, `cpu_copy_bandwidth`, and `step_bandwidth` that picks one) is arithmetic, not measurement, so
every other record carries `modelled=True` and prints "[modelled]". The model counts the bytes a step cannot avoid
moving (each weight read once, the KV cache read once, new K/V written once) and the FLOPs of its
matmuls and attention. Dividing by the GPU's bandwidth and peak FLOP/s gives two lower bounds on
the step's time; the larger one is the roofline, and it names the bottleneck:

    decode  (1 token per sequence): bytes dominate -> memory-bound -> batch to amortize weights
    prefill (many tokens):          FLOPs dominate -> compute-bound

The bandwidth should be *measured* on the same GPU in the same run (`measure_copy_bandwidth`),
so "measured vs ceiling" compares like with like. `shape` is a workbench ModelConfig (from a
checkpoint, or ModelConfig.from_preset("qwen3-0.6b")). Activations, logits and kernel launch gaps
are left out on purpose: the roofline is a floor, and the gap above it is what we optimize.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from functools import partial

from .timing import cuda_event_times, time_runs

# Vendor datasheet peaks (dense, no sparsity). Not measured: use them only as labelled ceilings.
DATASHEET_PEAK_FLOPS = {"H100 SXM bf16": 989.4e12, "H200 bf16": 989.4e12}


@dataclass
class ParamCount:
    """Parameter counts by part. `matmul_per_token`: weights each token multiplies through."""

    embedding: int
    lm_head: int                 # 0 when tied: the embedding table doubles as the LM head
    attention_per_layer: int
    mlp_per_layer: int
    norms: int
    total: int
    layer_matmul: int            # all layers' linear weights
    matmul_per_token: int        # layer_matmul + the LM head's vocab x hidden (tied or not)
    modelled: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(shape) -> ParamCount:
    s = shape
    q, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    attn_matmul = s.hidden_size * (q + 2 * kv) + q * s.hidden_size     # q, k, v, o projections
    attention = attn_matmul + (q + 2 * kv if s.attention_bias else 0)
    mlp = 3 * s.hidden_size * s.intermediate_size                       # gate, up, down
    norms_per_layer = 2 * s.hidden_size + (2 * s.head_dim if s.qk_norm else 0)
    norms = s.num_layers * norms_per_layer + s.hidden_size              # + the final norm
    embedding = s.vocab_size * s.hidden_size
    lm_head = 0 if s.tie_word_embeddings else embedding
    layer_matmul = s.num_layers * (attn_matmul + mlp)
    total = embedding + lm_head + s.num_layers * (attention + mlp) + norms
    return ParamCount(embedding=embedding, lm_head=lm_head, attention_per_layer=attention,
                      mlp_per_layer=mlp, norms=norms, total=total, layer_matmul=layer_matmul,
                      matmul_per_token=layer_matmul + embedding)


def kv_bytes_per_token(shape, dtype_bytes: int = 2) -> int:
    """K and V, every layer, every KV head: what one cached token costs."""
    s = shape
    return 2 * s.num_layers * s.num_kv_heads * s.head_dim * dtype_bytes


def weight_bytes_read(shape, dtype_bytes: int = 2, tokens: int = 1) -> int:
    """Weights a forward pass must read once. An untied embedding table is only gathered
    (one row per token); a tied one is read whole anyway, as the LM head."""
    s, p = shape, count_params(shape)
    if s.tie_word_embeddings:
        return p.total * dtype_bytes
    return (p.total - p.embedding + tokens * s.hidden_size) * dtype_bytes


@dataclass
class StepModel:
    """Modelled bytes, FLOPs and (given bandwidth and peak) roofline time of one engine step."""

    phase: str                       # "decode" | "prefill"
    num_seqs: int
    new_tokens: int                  # tokens pushed through the weights this step
    attended_tokens: int             # sum over new tokens of the keys each attends to
    dtype_bytes: int
    weight_bytes: int
    kv_read_bytes: int
    kv_write_bytes: int
    bytes: int
    flops: int
    intensity: float                 # FLOPs per byte
    bandwidth: float | None = None   # bytes/s
    peak_flops: float | None = None  # FLOP/s
    ceiling_source: str = ""         # where bandwidth/peak came from ("measured copy", "datasheet")
    memory_time_s: float | None = None
    compute_time_s: float | None = None
    roofline_time_s: float | None = None
    bound: str | None = None         # "memory" | "compute"
    tokens_per_s_ceiling: float | None = None
    modelled: bool = True

    def with_roofline(self, bandwidth: float, peak_flops: float, source: str = "") -> "StepModel":
        mem, comp = self.bytes / bandwidth, self.flops / peak_flops
        t = max(mem, comp)
        return replace(self, bandwidth=bandwidth, peak_flops=peak_flops, ceiling_source=source,
                       memory_time_s=mem, compute_time_s=comp, roofline_time_s=t,
                       bound="memory" if mem >= comp else "compute",
                       tokens_per_s_ceiling=self.new_tokens / t)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        text = (f"[modelled] {self.phase}: {self.num_seqs} seq, {self.new_tokens} new tokens, "
                f"{self.bytes / 1e9:.3f} GB, {self.flops / 1e12:.3f} TFLOP, "
                f"{self.intensity:.1f} FLOP/B")
        if self.roofline_time_s is not None:
            text += (f"; roofline {self.roofline_time_s * 1e3:.3f} ms ({self.bound}-bound, "
                     f"{self.tokens_per_s_ceiling:,.0f} tok/s ceiling; {self.ceiling_source})")
        return text


def _step(phase, shape, num_seqs, new_tokens, attended, kv_read_tokens, lm_head_rows,
          dtype_bytes, bandwidth, peak_flops, source) -> StepModel:
    s, p = shape, count_params(shape)
    per_tok = kv_bytes_per_token(s, dtype_bytes)
    weights = weight_bytes_read(s, dtype_bytes, tokens=new_tokens)
    kv_read, kv_write = per_tok * kv_read_tokens, per_tok * new_tokens
    total = weights + kv_read + kv_write
    # A matmul of a token through a K x N weight costs 2*K*N FLOPs (multiply + add). Attention:
    # q.k^T and p.v each cost 2*head_dim per (query head, key) pair -> 4*head_dim.
    flops = (2 * p.layer_matmul * new_tokens + 2 * s.vocab_size * s.hidden_size * lm_head_rows
             + 4 * s.num_layers * s.num_heads * s.head_dim * attended)
    step = StepModel(phase=phase, num_seqs=num_seqs, new_tokens=new_tokens, attended_tokens=attended,
                     dtype_bytes=dtype_bytes, weight_bytes=weights, kv_read_bytes=kv_read,
                     kv_write_bytes=kv_write, bytes=total, flops=flops, intensity=flops / total)
    if bandwidth is not None and peak_flops is not None:
        step = step.with_roofline(bandwidth, peak_flops, source)
    return step


def decode_step(shape, context_lens, dtype_bytes: int = 2, *, bandwidth: float | None = None,
                peak_flops: float | None = None, source: str = "") -> StepModel:
    """One decode step: one new token for each sequence b, attending to context_lens[b] cached
    tokens. Reads every weight once and each sequence's KV once; writes one token's K/V each."""
    lens = [int(x) for x in context_lens]
    b = len(lens)
    return _step("decode", shape, b, b, sum(lens), sum(lens), b, dtype_bytes,
                 bandwidth, peak_flops, source)


def prefill_step(shape, prompt_lens, dtype_bytes: int = 2, *, bandwidth: float | None = None,
                 peak_flops: float | None = None, source: str = "") -> StepModel:
    """Prefill of whole prompts (no cached prefix). Causal: the i-th token attends to i keys,
    N(N+1)/2 in all. K/V are written once and read back once by attention. Only each sequence's
    last token goes through the LM head (that is all sampling needs)."""
    lens = [int(x) for x in prompt_lens]
    attended = sum(n * (n + 1) // 2 for n in lens)
    return _step("prefill", shape, len(lens), sum(lens), attended, sum(lens), len(lens),
                 dtype_bytes, bandwidth, peak_flops, source)


@dataclass
class AttentionTraffic:
    """Modelled HBM bytes of one causal attention over N tokens: naive vs flash."""

    n: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    naive_bytes: int
    flash_bytes: int
    naive_breakdown: dict = field(default_factory=dict)
    flash_breakdown: dict = field(default_factory=dict)
    modelled: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"[modelled] attention N={self.n}: naive {self.naive_bytes / 1e6:,.1f} MB, "
                f"flash {self.flash_bytes / 1e6:,.1f} MB ({self.naive_bytes / self.flash_bytes:.1f}x)")


def attention_traffic_model(n: int, heads: int, head_dim: int, dtype_bytes: int = 2, *,
                            kv_heads: int | None = None, causal: bool = True,
                            gqa_repeat: bool = True) -> AttentionTraffic:
    """Bytes that must cross HBM, assuming each kernel reads its inputs once and writes its output
    once (caches may do better for small N; they cannot for N x N matrices at large N).

    Naive (the textbook kernel sequence): scores = q @ k^T written; causal mask applied in
    place (scores read + written, an N x N bool mask read); softmax reads scores, writes probs;
    probs @ v reads probs. Flash keeps scores on-chip: Q, K, V read once, O written once. The
    engine's naive backend (attention/naive.py, what measure attention-traffic runs) makes more
    passes than this floor (scaling, an out-of-place mask, an fp32 softmax).
    """
    kv_heads = kv_heads or heads
    b = dtype_bytes
    q = o = n * heads * head_dim * b
    k = v = n * kv_heads * head_dim * b
    nn_ = heads * n * n * b                             # one N x N matrix per query head
    naive = {"q_read": q, "k_read": k, "v_read": v, "o_write": o,
             "scores_write": nn_, "scores_read": nn_, "probs_write": nn_, "probs_read": nn_}
    if causal:
        naive["mask_pass"] = 2 * nn_ + n * n            # read + write scores, read bool mask
    if gqa_repeat and kv_heads != heads:
        rep = n * heads * head_dim * b                  # K (or V) repeated to every query head
        naive["gqa_repeat"] = 2 * (k + rep)             # read K and V, write the repeated copies
        naive["k_read"] = naive["v_read"] = rep         # the matmuls then read the copies
    flash = {"q_read": q, "k_read": k, "v_read": v, "o_write": o}
    return AttentionTraffic(n=n, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                            dtype_bytes=dtype_bytes, naive_bytes=sum(naive.values()),
                            flash_bytes=sum(flash.values()), naive_breakdown=naive,
                            flash_breakdown=flash)


@dataclass
class BandwidthRecord:
    """Measured device-to-device copy bandwidth: (bytes read + bytes written) / CUDA-event time."""

    available: bool
    reason: str = ""
    device: str = ""
    buffer_bytes: int = 0
    repeats: int = 0
    bandwidth: float | None = None          # bytes/s, median over repeats
    samples_s: list = field(default_factory=list)
    modelled: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if not self.available:
            return f"copy bandwidth: unavailable ({self.reason})"
        return (f"copy bandwidth on {self.device}: {self.bandwidth / 1e12:.2f} TB/s measured "
                f"(median of {self.repeats}, {self.buffer_bytes / 2**30:.1f} GiB buffer)")


def measure_copy_bandwidth(device="cuda", *, nbytes: int = 2**30, repeats: int = 10) -> BandwidthRecord:
    """Copy a buffer much larger than L2 (50 MB on H100) so every byte goes to HBM and back."""
    import torch

    if nbytes < 2**30:
        raise ValueError(f"nbytes={nbytes} is below 1 GiB: a smaller buffer partly lives in L2 "
                         "and flatters the bandwidth")
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return BandwidthRecord(False, f"no CUDA on device {str(dev)!r}: HBM bandwidth is measured "
                               "on a GPU; run this on the GPU machine with device='cuda'")
    try:
        src = torch.empty(nbytes, dtype=torch.uint8, device=dev).fill_(1)
        dst = torch.empty_like(src)
    except torch.cuda.OutOfMemoryError as e:
        return BandwidthRecord(False, f"out of GPU memory allocating 2 x {nbytes / 2**30:.1f} GiB "
                               f"({str(e).splitlines()[0]}); free memory or pass a smaller nbytes")
    for _ in range(2):                      # warm-up: first touches, clocks ramping up
        dst.copy_(src)
    times = cuda_event_times(partial(dst.copy_, src), repeats)
    del src, dst
    return BandwidthRecord(True, device=torch.cuda.get_device_name(dev), buffer_bytes=nbytes,
                           repeats=repeats, bandwidth=2 * nbytes / statistics.median(times),
                           samples_s=times)


def cpu_copy_bandwidth(nbytes: int = 2**26, repeats: int = 5) -> BandwidthRecord:
    """Host memcpy bandwidth, (read + write bytes) / time of copying a buffer larger than a CPU's
    last-level cache: the CPU's counterpart of measure_copy_bandwidth (measured)."""
    import torch
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    times = [ms / 1e3 for ms in time_runs(dst.copy_, src, repeats=repeats).times_ms]
    return BandwidthRecord(True, device="cpu", buffer_bytes=nbytes, repeats=repeats,
                           bandwidth=2 * nbytes / statistics.median(times), samples_s=times)


def step_bandwidth(device, *, nbytes: int | None = None, repeats: int | None = None) -> BandwidthRecord:
    """The copy bandwidth a step's bytes are measured against, on the engine's device: HBM on a
    GPU (measure_copy_bandwidth), host memory on a CPU (cpu_copy_bandwidth); None keeps each one's
    default buffer size and repeats."""
    given = {name: value for name, value in (("nbytes", nbytes), ("repeats", repeats)) if value is not None}
    if str(device).startswith("cuda"):
        return measure_copy_bandwidth(device, **given)
    return cpu_copy_bandwidth(**given)
