"""Switch `decode_gemv`: the linear layers' matmuls at <= 16 tokens (decode) as a Triton split-K
GEMV instead of cuBLAS -- attacks the weight bytes read per microsecond of a decode step.

Chapter: notebooks/09 (the last mile: batch-1 decode against the bandwidth roofline).
Measurement: measure/gemv.py (each projection's GB/s against the HBM roofline, kernel vs cuBLAS).
The kernel: workbench/kernels/gemv.py.

Installed: `install(model, on)` sets the one hook every linear layer runs through
(`Linear.decode_gemv`, workbench/parallel/tensor_parallel.py).
"""
from __future__ import annotations

from workbench.parallel.tensor_parallel import Linear

from .fused_kernels import triton_on_cuda


def why_not(device: str, tp_size: int = 1) -> str | None:
    return triton_on_cuda(device)


def install(model, on: bool) -> None:
    """Set the decode-GEMV hook of every Linear in `model`: the kernel's `linear` (on) or None."""
    fn = None
    if on:   # imported here: workbench.kernels needs Triton, which a CPU-only install may lack
        from workbench.kernels.gemv import linear as fn
    for module in model.modules():
        if isinstance(module, Linear):
            module.decode_gemv = fn
