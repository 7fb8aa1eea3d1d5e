"""Switch `fused_kernels`: which forms of the small layers the model runs -- attacks the HBM
round trips between small element-wise ops.

Plain torch runs residual-add, RMSNorm, SwiGLU and RoPE as several kernels, each writing its
intermediate to HBM; the fused forms are one Triton kernel each (workbench/kernels/triton_ops.py).

Chapter: notebooks/04 (kernel fusion). Measurement: launches per step (measure/launches.py) and
HBM bytes per step (measure/hbm.py) with the switch off and on.

Installed: `install(model, fused, overrides)` hands every layer one LayerForms
(workbench/model/layers.py) after the model is built; the constructors never see the switch.
The slots, each replaceable by `LLM(..., overrides={name: fn})`:

    rms_norm(x, weight, eps) -> normed                               (x [..., H])
    add_rms_norm(x, residual, weight, eps) -> (normed, x + residual)
    silu_and_mul(gate_up [T, 2I]) -> silu(gate) * up [T, I]          (only for hidden_act='silu')
    rope(q [T, Hq, D], k [T, Hkv, D], positions [T], cos_sin_cache [P, D]) -> (q, k) rotated
    qk_norm_rope(q, k, positions, cos_sin_cache, q_weight, k_weight, q_eps, k_eps) -> (q, k)
                 (Qwen3: per-head RMSNorm of q and k, then rope; None = rms_norm then rope)

Replacing rms_norm or rope (and not qk_norm_rope) also routes Qwen3's q/k norm through them.
"""
from __future__ import annotations

import dataclasses

from workbench.model.layers import PLAIN_FORMS, ActAndMul, LayerForms, RMSNorm, RotaryEmbedding

from .availability import triton_on_cuda   # (decode_gemv still imports it from here)

FORM_NAMES = tuple(f.name for f in dataclasses.fields(LayerForms))


def why_not(device: str, tp_size: int = 1) -> str | None:
    return triton_on_cuda(device)


def fused_forms() -> LayerForms:
    """The Triton forms (importing workbench.kernels needs Triton)."""
    from workbench import kernels
    return LayerForms(rms_norm=kernels.rms_norm, add_rms_norm=kernels.fused_add_rms_norm,
                      silu_and_mul=kernels.silu_and_mul, rope=kernels.apply_rope,
                      qk_norm_rope=kernels.qk_norm_rope)


def forms_for(fused: bool, overrides: dict | None = None) -> LayerForms:
    """The forms the switch picks, with any slot an override replaces."""
    forms = fused_forms() if fused else PLAIN_FORMS
    slots = {name: fn for name, fn in (overrides or {}).items() if name in FORM_NAMES}
    if ("rms_norm" in slots or "rope" in slots) and "qk_norm_rope" not in slots:
        slots["qk_norm_rope"] = None
    return dataclasses.replace(forms, **slots)


def install(model, fused: bool, overrides: dict | None = None) -> LayerForms:
    """Hand every layer that computes through forms (norms, activation, rotary) the same forms."""
    forms = forms_for(fused, overrides)
    for module in model.modules():
        if isinstance(module, (RMSNorm, ActAndMul, RotaryEmbedding)):
            module.forms = forms
    return forms
