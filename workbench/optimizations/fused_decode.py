"""Switch `fused_decode`: at decode (<= 16 tokens) each RMSNorm (with its residual add) runs inside
the GEMV that follows it -- input_layernorm in qkv_proj, post_attention_layernorm in gate_up_proj
-- and SiLU-and-mul in gate_up_proj's epilogue; and q/k norm + RoPE + the KV-cache write of k and
v run as one kernel. Attacks the per-kernel cost of a batch-1 step: four fewer kernels a layer (112
of the ~312 kernels of a Qwen3-0.6B step), each ~1-3 us of launch, ramp-up and tail however little
it computes, and their HBM round trips.

Where the SiLU goes. Until session 20 it ran inside down_proj's GEMV, as that GEMV loaded x
(fused_gemv.silu_mul_linear, still there): each of down_proj's 512 programs read all of gate_up,
12 KB, after its PDL wait, and computed 3,072 silus. In gate_up_proj's epilogue each program makes
its own few outputs' silu (its rows taken in (gate j, up j) pairs) and down_proj, a plain GEMV,
reads 6 KB. Measured on an H200 (session 20, all on, greedy 128 + 512): 1,507 -> 1,571 tok/s, a
layer 20.0 -> 18.8 us (gate_up -0.8, down -0.55); the A/B variant silu-in-down keeps the old form.

Chapter: notebooks/09 (the last mile: batch-1 decode against the bandwidth roofline).
Measurement: kernels and GPU time per step (measure launches) and `bench single` with the switch
off and on (scripts/device_check.sh fused-decode). The kernels: workbench/kernels/fused_gemv.py
(the decode GEMV of kernels/gemv.py with a different load of x) and kernels/qk_norm_rope_store.py
(triton_ops.py's norm + rope, writing k into its cache slot).

Installed: `install(model, on)` sets the `fold` hook of every RMSNorm that feeds a linear layer and
marks every SiLU ActAndMul `in_gemv` (workbench/model/layers.py: `then`); the layer asks
`norm.then(linear, ..., act=...)` and the hook answers with one kernel, or None (more than 16
tokens) for the unfused path; a prompt of up to 16 tokens is folded too (the same math, whatever
the step's kind). Other activations (GELU) run after the folded GEMV: the kernel computes silu
only. Each Attention's
`fold` (workbench/model/qwen3.py) answers rotated q with k and v already cached, or None; it runs
outside torch.compile, as Attention.attend's own cache write; models without q/k norm (Llama,
Qwen2) get the same kernel with the norm off. A layer form replaced by an override (rms_norm,
add_rms_norm, silu_and_mul, rope, qk_norm_rope) is never folded away: its hook stays off.

Independent of decode_gemv: the folded matmuls are that switch's kernel whatever it says, and the
matmuls with nothing folded in (o_proj, down_proj, lm_head) follow decode_gemv. So each switch can be measured
alone, and no rule ties them. One GPU only: the folds were
built and tested on one GPU's whole layer (until session 20 down_proj was folded too, and it is
row-parallel under tensor parallelism: its all-reduce sits between the matmul and the bias). Each
rank's gate_up shard is [gate_r | up_r], so the SiLU epilogue would apply per rank; until a
tensor-parallel GPU test says so, tp_size > 1 is refused.
"""
from __future__ import annotations

from workbench.model.layers import ActAndMul, RMSNorm
from workbench.model.qwen3 import Attention

from .availability import triton_on_cuda


def why_not(device: str, tp_size: int = 1) -> str | None:
    if tp_size > 1:
        return (f"runs on one GPU (tensor_parallel_size={tp_size}: its folds are not tested on tensor-parallel "
                "shards); turn fused_decode off to run tensor parallel")
    return triton_on_cuda(device)


def folds():
    """The two hooks, (fold_norm, fold_rope_store); the kernels are imported once, here (they need
    Triton)."""
    import torch

    from workbench.kernels import qk_norm_rope_store as qrs
    from workbench.kernels.fused_gemv import MAX_M, rms_norm_linear

    def decode_sized(t, dims: int) -> bool:   # 1..MAX_M tokens: what the folded kernels take
        return t.dim() == dims and 1 <= t.shape[0] <= MAX_M

    def fold_norm(norm: RMSNorm, linear, x, residual, act: ActAndMul | None = None):
        """RMSNorm(x + residual) -> linear (-> act, where it is `in_gemv`) as one kernel at 1..16
        tokens; None otherwise."""
        if not decode_sized(x, 2):
            return None
        y, residual = rms_norm_linear(x, residual, norm.weight, norm.eps, linear.weight, linear.bias,
                                      getattr(linear, "prefetch_next", None),
                                      silu_out=act is not None and act.in_gemv)
        if act is not None and not act.in_gemv:   # GELU, or a student's silu_and_mul: after the kernel
            y = act(y)
        return y, residual

    # Out of torch.compile, as Attention.attend's own cache write: the compiler never sees the cache.
    @torch.compiler.disable
    def norm_rope_store(attn: Attention, positions, q, k, v, slot_mapping):
        norms = (attn.q_norm, attn.k_norm) if attn.qk_norm else ()
        return qrs.qk_norm_rope_store(q, k, v, positions, attn.rotary.cos_sin_cache, attn.k_cache, attn.v_cache,
                                      slot_mapping, *norms)

    def fold_rope_store(attn: Attention, positions, q, k, v, meta):
        """q/k norm (Qwen3; none for Llama/Qwen2) + RoPE + k, v into the cache as one kernel at
        1..16 tokens: returns q; None otherwise."""
        if not decode_sized(q, 3):
            return None
        return norm_rope_store(attn, positions, q, k, v, meta.slot_mapping)

    return fold_norm, fold_rope_store


# The layer forms (overrides={name: fn}, fused_kernels.py) each fold computes inside its kernel:
# a student's form must run at every step, so the fold that would bypass it is not installed.
FOLDED_FORMS = {RMSNorm: ("rms_norm", "add_rms_norm"), ActAndMul: ("silu_and_mul",),
                Attention: ("rope", "qk_norm_rope", "rms_norm")}   # rms_norm: Qwen3's q/k norm


def install(model, on: bool, overrides: dict | None = None) -> None:
    """Set (on) or clear (off) the fold hooks of the model's norms and attention, and whether each
    SiLU activation runs in a GEMV's epilogue; one whose forms `overrides` replaces stays off."""
    fold_norm, fold_rope_store = folds() if on else (None, None)
    replaced = set(overrides or {})
    for module in model.modules():
        for kind, fold in ((Attention, fold_rope_store), (RMSNorm, fold_norm)):
            if isinstance(module, kind):
                module.fold = None if replaced & set(FOLDED_FORMS[kind]) else fold
        if isinstance(module, ActAndMul):   # silu only: the epilogue computes nothing else; and the
            # norm's fold is what runs it (a student's norm: no fold, the activation runs on its own)
            forms = set(FOLDED_FORMS[ActAndMul]) | set(FOLDED_FORMS[RMSNorm])
            module.in_gemv = on and module.act_name == "silu" and not replaced & forms
