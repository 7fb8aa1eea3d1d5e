"""Tensor parallelism: one model split across several GPUs (NCCL) or CPU processes (gloo).

tensor_parallel.py  what each rank holds (shard functions, column/row-parallel linears) and the
                    all-reduce that joins them
runner.py           the runners of a TP engine: ShardRunner (any rank) and TensorParallelRunner
                    (rank 0, which drives the others); the 1-GPU engine never imports it
workers.py          the worker processes seen from rank 0: start-up, one broadcast per step, shutdown
worker.py           a worker process's entry point (`python -m workbench.parallel.worker FD`)
"""
from .tensor_parallel import (ColumnParallelLinear, RowParallelLinear, backend_for, check_tensor_parallel,
                              rank_device, shard_tensor)

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "backend_for", "check_tensor_parallel",
           "rank_device", "shard_tensor"]
