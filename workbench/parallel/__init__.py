"""Tensor parallelism: one model split across several GPUs (NCCL) or CPU processes (gloo).

tensor_parallel.py  what each rank holds (shard functions, column/row-parallel linears) and the
                    all-reduce that joins them
workers.py          the worker processes: start-up, one broadcast per step, shutdown
"""
from .tensor_parallel import (ColumnParallelLinear, RowParallelLinear, backend_for, check_tensor_parallel,
                              rank_device, shard_tensor)
from .workers import WorkerGroup

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "WorkerGroup", "backend_for", "check_tensor_parallel",
           "rank_device", "shard_tensor"]
