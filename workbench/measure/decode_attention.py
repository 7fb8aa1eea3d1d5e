"""Decode attention per layer call: the `decode_attention` switch's Triton kernel vs flash-attn's
decode call, at the model's shape, over a range of context lengths. How close to the K/V bytes?

A decode step's attention reads each sequence's cached K and V once: batch x context x KV heads x
head_dim x 2 (K and V) x 2 bytes (bf16). Its floor is those bytes over the copy bandwidth; what a
kernel spends above it is fixed cost (launch, a mostly empty query tile, too few programs in
flight to cover HBM latency). Each implementation runs as in a decode step: one call per layer,
each layer on its own cache (no K/V still in L2 from the call before), all captured in one CUDA
graph (no launch overhead). Time per call = replay time / layers (CUDA events, timing.py).

    flash    flash-attn's paged decode (workbench/attention/flash.py, what attention='flash' runs)
    triton   workbench/kernels/decode_attention.py (split-KV, FlashDecoding; a second kernel merges)
    triton-last  the same kernel with merge="last_program": each pair's last split program
             merges, one launch a layer instead of two (a candidate, not the switch's default)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .timing import graph_replay_seconds

IMPLS = ("flash", "triton", "triton-last")


@dataclass
class DecodeAttentionRecord:
    impl: str
    batch: int
    context: int                # keys per sequence
    available: bool
    reason: str = ""
    calls: int = 0              # back-to-back calls per graph replay (one per layer)
    us_per_call: float | None = None        # measured
    kv_bytes: int = 0                       # modelled: the K/V one call must read
    bandwidth: float | None = None          # kv_bytes / measured time, bytes/s
    of_copy_bandwidth: float | None = None  # bandwidth / copy bandwidth measured in the same run
    device: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _attend(impl: str):
    """(q, k_cache, v_cache, meta, scale) -> out, as the engine's decode step calls it."""
    if impl == "flash":
        from workbench.attention.flash import FlashAttention
        return FlashAttention()
    from workbench.kernels.decode_attention import paged_decode_attention
    merge = "last_program" if impl == "triton-last" else "kernel"
    return lambda q, k, v, meta, scale: paged_decode_attention(q, k, v, meta.seq_lens, meta.block_tables, scale,
                                                               merge=merge)


def time_decode_attention(cfg, impl: str, batch: int, context: int, *, block_size: int = 128,
                          max_model_len: int = 4096, replays: int = 20) -> float:
    """Seconds per layer call: `cfg.num_layers` calls on separate bf16 caches in one graph. The
    block table is as wide as the engine's graphs make it (max_model_len), the blocks shuffled."""
    import torch

    from workbench.attention import AttentionMetadata
    attend, layers = _attend(impl), cfg.num_layers
    width = -(-max_model_len // block_size)
    blocks = batch * width
    cache = torch.randn(2, layers, blocks, block_size, cfg.num_kv_heads, cfg.head_dim, device="cuda",
                        dtype=torch.bfloat16)
    table = torch.randperm(blocks, device="cuda").view(batch, width).int()
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    meta = AttentionMetadata(torch.arange(batch + 1, dtype=torch.int32, device="cuda"), seq_lens, table,
                             torch.full((batch,), -1, device="cuda"), 1, max_model_len, is_decode=True)
    q = torch.randn(batch, cfg.num_heads, cfg.head_dim, device="cuda", dtype=torch.bfloat16)
    scale = cfg.head_dim ** -0.5

    def step():
        return [attend(q, cache[0, i], cache[1, i], meta, scale) for i in range(layers)]

    from workbench.kernels.pdl import launching
    with launching(False):   # the kernel alone, launched the ordinary way (see kernels/pdl.py)
        return graph_replay_seconds(step, replays) / layers   # JIT (flash-attn-4, Triton) in its warm-up


def measure_decode_attention(cfg, impls=("flash", "triton"), batches=(1,), contexts=(128, 640, 2048, 4096), *,
                             copy_bandwidth: float | None = None) -> list[DecodeAttentionRecord]:
    """One record per (impl, batch, context)."""
    import torch
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise ValueError(f"unknown decode-attention implementation(s) {unknown}; choose from {list(IMPLS)}")
    cases = [(impl, b, n) for b in batches for n in contexts for impl in impls]
    if not torch.cuda.is_available():
        reason = "no CUDA: decode attention is timed as CUDA-graph replays on a GPU; run this on the GPU machine"
        return [DecodeAttentionRecord(impl, b, n, False, reason) for impl, b, n in cases]
    records = []
    for impl, batch, context in cases:
        kv_bytes = batch * context * cfg.num_kv_heads * cfg.head_dim * 2 * 2   # K and V, bf16
        try:
            seconds = time_decode_attention(cfg, impl, batch, context, max_model_len=max(4096, context))
        except Exception as e:   # e.g. flash-attn missing: say so, keep the others
            records.append(DecodeAttentionRecord(impl, batch, context, False, f"{type(e).__name__}: {str(e)[:200]}",
                                                 kv_bytes=kv_bytes))
            continue
        bandwidth = kv_bytes / seconds
        records.append(DecodeAttentionRecord(
            impl, batch, context, True, calls=cfg.num_layers, us_per_call=seconds * 1e6, kv_bytes=kv_bytes,
            bandwidth=bandwidth, of_copy_bandwidth=bandwidth / copy_bandwidth if copy_bandwidth else None,
            device=torch.cuda.get_device_name()))
    return records
