"""The seams: built-in pieces a caller may replace with a function, `LLM(..., overrides={...})`.

Each override replaces one piece for every step; `LLM.describe()` names what was replaced.

    attention     fn(q [T, Hq, D], k_cache, v_cache, meta: AttentionMetadata, scale) -> [T, Hq, D]
                  (workbench/optimizations/attention.py; replaces opts.attention's backend)
    block_hasher  fn(parent_hash: int | None, token_ids: tuple[int, ...]) -> int
                  prefix caching's chain hash of one full block (built-in: block_manager.block_hash)
    preemption    fn(running: list[Sequence]) -> Sequence
                  which sequence to preempt when the KV cache is full; `running` holds the
                  candidates oldest first: the sequence that needs room is running[0] and those
                  already given tokens this step are left out (built-in: scheduler.newest, running[-1])
    sampler       fn(logits [B, V] float32, seqs: list[Sequence]) -> Tensor[B] int64 (same device)
                  seq.params is its SamplingParams; seq.generator its torch.Generator on the
                  logits' device (seeded with params.seed when set, else the engine's shared one,
                  seeded with EngineConfig.seed) (built-in: workbench.engine.sampler.Sampler)
    rms_norm, add_rms_norm, silu_and_mul, rope, qk_norm_rope
                  the layer forms (signatures in workbench/optimizations/fused_kernels.py)
"""
from __future__ import annotations

from workbench.optimizations.fused_kernels import FORM_NAMES

ENGINE_SEAMS = ("attention", "block_hasher", "preemption", "sampler")
SEAMS = ENGINE_SEAMS + FORM_NAMES
MODEL_SEAMS = ("attention",) + FORM_NAMES   # run inside the model: on every rank under TP


def check_overrides(overrides: dict | None, tensor_parallel_size: int = 1) -> dict:
    """A clean copy of `overrides`, or a clear error before anything is loaded."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise TypeError(f"overrides must be a dict of name -> function, not {type(overrides).__name__}")
    unknown = sorted(set(overrides) - set(SEAMS))
    if unknown:
        raise ValueError(f"unknown override {unknown[0]!r}; the seams are {', '.join(SEAMS)}")
    for name, fn in overrides.items():
        if not callable(fn):
            raise TypeError(f"overrides[{name!r}] must be a function (callable), not {type(fn).__name__}")
    in_model = [name for name in overrides if name in MODEL_SEAMS]
    if in_model and tensor_parallel_size > 1:
        raise ValueError(f"overrides {in_model} run inside the model, which tensor parallelism runs in "
                         "other processes too: use tensor_parallel_size=1 with them")
    return dict(overrides)


def describe_overrides(overrides: dict) -> str:
    return ", ".join(f"{name}={getattr(fn, '__qualname__', type(fn).__name__)}" for name, fn in overrides.items())
