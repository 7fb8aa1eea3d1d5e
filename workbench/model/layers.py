"""The decoder's small building blocks, each calling its *forms*: plain torch or fused kernels.

A layer computes through `self.forms`, a LayerForms: five slots (rms_norm, add_rms_norm,
silu_and_mul, rope, qk_norm_rope), plain torch by default. Unfused forms are plain torch: every
op is its own kernel, and every intermediate makes a round trip through HBM. Fused forms call one
hand-written Triton kernel (workbench.kernels) that keeps the intermediates on-chip. The model's
constructors know nothing of the switch: workbench.optimizations.fused_kernels installs the
forms into a built model once (and a student's function can take a slot, see there). Both forms
must produce the same numbers (within bf16 rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


def plain_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def plain_add_rms_norm(x, residual, weight, eps):
    """(rms_norm(x + residual), x + residual): the residual stream's add and the next norm."""
    x = x + residual
    return plain_rms_norm(x, weight, eps), x


def plain_silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return nn.functional.silu(gate) * up


def plain_rope(q, k, positions, cos_sin_cache):
    cos, sin = cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


@dataclass(frozen=True)
class LayerForms:
    """One function per slot (signatures in workbench/optimizations/fused_kernels.py).
    qk_norm_rope=None: Qwen3's q/k norm runs as rms_norm on each head, then rope."""
    rms_norm: Callable = plain_rms_norm
    add_rms_norm: Callable = plain_add_rms_norm
    silu_and_mul: Callable = plain_silu_and_mul
    rope: Callable = plain_rope
    qk_norm_rope: Callable | None = None


PLAIN_FORMS = LayerForms()


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight, optionally after adding the residual stream.

    With a residual, returns (normed, new_residual) where new_residual = x + residual: the
    decoder adds the residual and normalizes in one place, which is what makes fusing them easy.
    """

    forms = PLAIN_FORMS
    # fused_decode installs fold(norm, linear, x, residual, act) -> (y, new_residual), or None where
    # it does not apply (more than 16 tokens): the norm inside the linear's GEMV, one kernel
    fold = None

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return self.forms.rms_norm(x, self.weight, self.eps)
        return self.forms.add_rms_norm(x, residual, self.weight, self.eps)

    def then(self, linear: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None,
             act: "ActAndMul | None" = None):
        """(linear(norm(x + residual)), x + residual): this norm and the linear layer after it.
        residual=None (the first layer): the norm of x, and x starts the residual stream.
        act (the gated MLP's activation): act(gate) * up of the linear's output instead."""
        folded = self.fold(self, linear, x, residual, act) if self.fold is not None else None
        if folded is not None:
            return folded
        if residual is None:
            hidden, residual = self(x), x
        else:
            hidden, residual = self(x, residual)
        y = linear(hidden)
        return (y if act is None else act(y)), residual


# hidden_act (transformers' ACT2FN names) -> the function; config.py refuses any other name
ACTIVATIONS = {"silu": nn.functional.silu, "gelu": nn.functional.gelu,   # gelu: the exact (erf) form
               "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh")}


class ActAndMul(nn.Module):
    """The gated MLP's activation: act(gate) * up, with gate and up packed side by side.

    act = silu is SwiGLU (Qwen, Llama); a few Llama-style configs ask for GELU. The forms' slot
    is silu_and_mul (the fused Triton kernel implements silu only): with another act this one op
    runs in plain torch (correct, just not fused) rather than compute a silu the model never learned."""

    forms = PLAIN_FORMS
    # fused_decode sets this where the activation may run in the epilogue of the GEMV that makes
    # gate_up (the norm before it folded in too: RMSNorm.then's act): silu, not a student's form
    in_gemv = False

    def __init__(self, act: str = "silu"):
        super().__init__()
        self.act_name, self.act = act, ACTIVATIONS[act]

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.act_name == "silu":
            return self.forms.silu_and_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act(gate) * up


class SiluAndMul(ActAndMul):
    """SwiGLU's activation: silu(gate) * up (ActAndMul with act='silu')."""

    def __init__(self):
        super().__init__("silu")


def _llama3_scaled_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.x stretches low frequencies so the model reaches longer contexts."""
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling["original_max_position_embeddings"]   # as transformers' _compute_llama3_parameters
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    is_mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return torch.where(is_mid, mid, scaled)


class RotaryEmbedding(nn.Module):
    """RoPE, 'rotate half' layout (as in HF Qwen/Llama), over the full head dimension.

    cos and sin for every position are computed once at start-up (cos_sin_cache); each step only
    indexes that table with the tokens' positions.
    """

    forms = PLAIN_FORMS

    def __init__(self, head_dim: int, max_position: int, base: float, scaling: dict | None = None):
        super().__init__()
        self.head_dim, self.max_position, self.base, self.scaling = head_dim, max_position, base, scaling
        self.register_buffer("cos_sin_cache", torch.empty(0), persistent=False)
        self.build_cache()

    def build_cache(self, device=None) -> None:
        """(Re)compute the float32 table; the loader calls this after building the model on 'meta'."""
        d = self.head_dim
        inv_freq = 1.0 / (self.base ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
        if self.scaling is not None:
            inv_freq = _llama3_scaled_inv_freq(inv_freq, self.scaling)
        positions = torch.arange(self.max_position, dtype=torch.float32, device=device)
        freqs = torch.outer(positions, inv_freq)
        self.cos_sin_cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        return self.forms.rope(q, k, positions, self.cos_sin_cache)

    def norm_and_rotate(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                        q_norm: RMSNorm, k_norm: RMSNorm):
        """Qwen3: RMSNorm each q and k head, then rotate. Fused: one kernel for what
        is otherwise three (q_norm, k_norm, rope), since all three work head by head."""
        if self.forms.qk_norm_rope is not None:
            return self.forms.qk_norm_rope(q, k, positions, self.cos_sin_cache, q_norm.weight, k_norm.weight,
                                           q_norm.eps, k_norm.eps)
        return self(positions, q_norm(q), k_norm(k))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
