"""What a switch needs from the machine, asked once: the reasons the switches' why_not() give.

    needs_cuda("cpu")      -> "needs a CUDA GPU (running on cpu)"
    triton_on_cuda("cpu")  -> the same; on a GPU without Triton installed, says how to install it
"""
from __future__ import annotations

import importlib.util


def needs_cuda(device: str) -> str | None:
    """Why a CUDA-only switch cannot run on `device` (None: it can)."""
    if not device.startswith("cuda"):
        return f"needs a CUDA GPU (running on {device})"
    return None


def triton_on_cuda(device: str) -> str | None:
    """Why a Triton kernel cannot run on `device` (None: it can); fused_kernels and decode_gemv ask."""
    if why := needs_cuda(device):
        return why
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    return None
