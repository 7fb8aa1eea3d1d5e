"""The runners of a tensor-parallel engine: the engine's ModelRunner, plus what TP adds.

ShardRunner (every rank): a ModelRunner on this rank's shard whose KV-cache size all ranks agree
on (one block manager, on rank 0, hands out block ids that must be valid on every rank).
TensorParallelRunner (rank 0): also starts ranks 1..N-1 (workers.py) and hands each step's
inputs to them right before its own forward; any error stops them all (WorkerGroup.guard).
The 1-GPU engine never imports this module: LLM picks it when tensor_parallel_size > 1.
"""
from __future__ import annotations

import torch

from workbench.engine.runner import ModelRunner

from .tensor_parallel import agree_on_min, rank_device
from .workers import WorkerGroup


class ShardRunner(ModelRunner):
    def _plan_kv_blocks(self) -> int:
        return agree_on_min(super()._plan_kv_blocks(), str(self.device))


class TensorParallelRunner(ShardRunner):
    def __init__(self, cfg, model_cfg, opts, *, device: str, dtype: torch.dtype, max_model_len: int,
                 overrides: dict | None = None):
        self.workers = WorkerGroup(cfg, model_cfg, opts, device=device, dtype=dtype, max_model_len=max_model_len)
        with self.workers.guard("start-up"):   # loading, sizing and warm-up involve every rank
            super().__init__(cfg, model_cfg, opts, device=rank_device(device, 0, cfg.tensor_parallel_size),
                             dtype=dtype, max_model_len=max_model_len, rank=0, overrides=overrides)

    def _guard(self, what: str):
        return self.workers.guard(what)

    def _step_inputs(self, step):
        return self.workers.send_step(step)   # ranks 1.. get the same inputs, run this forward on their shards

    def close(self) -> None:
        if self.workers is not None:   # stop ranks 1.. and leave the process group
            self.workers.shutdown()
            self.workers = None
        super().close()
