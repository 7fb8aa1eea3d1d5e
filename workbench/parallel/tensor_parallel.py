"""Tensor parallelism (Megatron-style): one model's layers split across N ranks (GPUs).

A decoder layer has two matmul pairs, and each pair splits with ONE all-reduce:

    attention   qkv_proj  column-parallel: rank r keeps the rows of its query heads and of its
                          kv heads, so it computes q/k/v for num_heads/N and num_kv_heads/N heads
                          (attention is independent per head: no communication needed)
                o_proj    row-parallel: rank r keeps the input columns of its heads; each rank's
                          product is a partial sum of the full output -> all-reduce (sum)
    MLP         gate_up   column-parallel: rank r keeps its slice of gate rows and of up rows
                down      row-parallel: partial sums -> all-reduce (sum)

So every layer moves two [tokens, hidden] tensors through an all-reduce and nothing else. The
embedding and lm_head are replicated on every rank (simplest: no vocabulary split, no gather of
logits; it costs vocab x hidden of memory per rank), and the norms and RoPE are tiny and
replicated. Each rank's KV cache holds only its kv heads, so at a fixed memory budget per GPU
the cache holds N times as many tokens.

The merged projections need care: qkv_proj's rows are [q | k | v] and gate_up_proj's are
[gate | up]. Cutting the merged matrix into N contiguous pieces would give rank 0 all of q and
rank 1 all of k and v. Instead each checkpoint tensor (q_proj, k_proj, ...) is cut on its own
(`shard_tensor`) and the loader concatenates the slices, giving [q_r | k_r | v_r] on rank r.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

# HF checkpoint name pieces: column-parallel (cut the output rows) and row-parallel (cut the
# input columns). Everything else is replicated.
COLUMN_PARALLEL = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
ROW_PARALLEL = ("self_attn.o_proj", "mlp.down_proj")


def shard_tensor(name: str, tensor: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """The part of one checkpoint tensor (by its HF name) that rank `rank` of `size` keeps.

    Rows of q_proj are heads laid end to end (head_dim rows each), so equal contiguous chunks are
    whole heads as long as `size` divides the head count -- which `check_tensor_parallel` ensures.
    With grouped-query attention, rank r's query heads are exactly those that read rank r's kv
    heads, because both are the r-th contiguous 1/size of their heads."""
    if size == 1:
        return tensor
    if any(piece in name for piece in COLUMN_PARALLEL):   # weight [out, in] and bias [out]
        return tensor.chunk(size, dim=0)[rank].contiguous()
    if any(piece in name for piece in ROW_PARALLEL):
        # a row-parallel bias [out] is not split: every rank keeps all of it, and
        # RowParallelLinear adds it once, after the all-reduce
        return tensor.chunk(size, dim=1)[rank].contiguous() if tensor.dim() == 2 else tensor
    return tensor


class Linear(nn.Linear):
    """nn.Linear with the one hook where every linear layer of the model runs: `decode_gemv`, a
    function (x, weight, bias, prefetch) -> y installed by workbench/optimizations/decode_gemv.py
    (Optimizations.decode_gemv: workbench.kernels.gemv.linear, the Triton GEMV on <= 16 tokens and
    F.linear beyond); None (the default): F.linear. `prefetch_next`: the weight of the matmul that
    runs after this one, which the GEMV asks L2 for while it runs (optimizations/l2_prefetch.py)."""

    decode_gemv = None
    prefetch_next = None

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x @ W^T (+ bias) through the hook: subclasses that place the bias themselves (the
        row-parallel layer, after its all-reduce) still get the decode GEMV."""
        if self.decode_gemv is not None:
            return self.decode_gemv(x, self.weight, bias, self.prefetch_next)
        return nn.functional.linear(x, self.weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.bias)


class ColumnParallelLinear(Linear):
    """y_r = x @ W_r^T, W_r = this rank's 1/tp of W's output rows. Input replicated, output split;
    no communication. With tp_size=1 it is nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tp_size: int = 1):
        super().__init__(in_features, out_features // tp_size, bias=bias)


class RowParallelLinear(Linear):
    """y = sum_r x_r @ W_r^T, W_r = this rank's 1/tp of W's input columns, x_r the matching slice
    of the input (which is what the column-parallel layer before it produced). Each rank's product
    is a partial sum; an all-reduce adds them so every rank holds the full output. The bias (whole
    on every rank) is added after the all-reduce: added before it, it would count tp_size times.
    With tp_size=1 it is nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tp_size: int = 1):
        super().__init__(in_features // tp_size, out_features, bias=bias)
        self.tp_size = tp_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return super().forward(x)
        y = all_reduce(self.matmul(x, None))
        return y if self.bias is None else y + self.bias


# Kept out of torch.compile (like attention): the compiled frames end before the all-reduce and
# resume after it, so the collective runs exactly as in eager mode.
@torch.compiler.disable
def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum x over all ranks, in place (every rank runs the same layers in the same order, so the
    collectives pair up)."""
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def check_tensor_parallel(tp_size: int, num_heads: int, num_kv_heads: int, intermediate_size: int,
                          device: str) -> None:
    """Raise a ValueError saying what to change if this model cannot be split `tp_size` ways here."""
    if tp_size == 1:
        return
    if num_heads % tp_size or num_kv_heads % tp_size or intermediate_size % tp_size:
        g = math.gcd(num_heads, num_kv_heads, intermediate_size)
        options = [n for n in range(1, g + 1) if g % n == 0]
        raise ValueError(
            f"tensor_parallel_size={tp_size} must divide num_heads={num_heads}, "
            f"num_kv_heads={num_kv_heads} and intermediate_size={intermediate_size} (every rank "
            f"holds an equal share of whole heads); choose one of {options}")
    if device.startswith("cuda"):
        if device not in ("cuda", "cuda:0"):
            raise ValueError(f"device={device!r} with tensor_parallel_size={tp_size}: pass device='cuda'; "
                             f"rank r runs on cuda:r (choose the GPUs with CUDA_VISIBLE_DEVICES)")
        visible = torch.cuda.device_count()
        if visible < tp_size:
            raise ValueError(f"tensor_parallel_size={tp_size} needs {tp_size} visible GPUs but torch sees "
                             f"{visible}; lower tensor_parallel_size or run on a machine with more GPUs "
                             "(check CUDA_VISIBLE_DEVICES)")


def rank_device(device: str, rank: int, tp_size: int) -> str:
    """Rank r uses cuda:r; on CPU all ranks share the 'cpu' device (separate processes)."""
    if tp_size > 1 and device.startswith("cuda"):
        return f"cuda:{rank}"
    return device


def backend_for(device: str) -> str:
    """NCCL moves GPU tensors over NVLink/PCIe; gloo moves CPU tensors over TCP (tests, laptops)."""
    return "nccl" if device.startswith("cuda") else "gloo"


def agree_on_min(value: int, device: str) -> int:
    """The smallest `value` over all ranks (e.g. KV blocks: every rank must hold the same block ids)."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
