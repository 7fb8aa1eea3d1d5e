"""Hand-written Triton kernels (GPU; the CPU tests run them under TRITON_INTERPRET=1)."""
from .triton_ops import apply_rope, fused_add_rms_norm, qk_norm_rope, rms_norm, silu_and_mul, store_kvcache

__all__ = ["apply_rope", "fused_add_rms_norm", "qk_norm_rope", "rms_norm", "silu_and_mul", "store_kvcache"]
