"""Entry point of a tensor-parallel worker process: `python -m workbench.parallel.worker FD`.

Rank 0 (workers.WorkerGroup) starts this module in a fresh interpreter with one end of a socket
pair as file descriptor FD, then sends the worker's arguments through it. Being a module entry
point, it never imports the user's __main__ (multiprocessing's spawn would), so tensor
parallelism starts from any script, from `python -`, and from notebooks alike.
"""
import os
import signal
import sys
import traceback
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from workbench.parallel.runner import ShardRunner
from workbench.parallel.tensor_parallel import backend_for, rank_device
from workbench.parallel.workers import COLLECTIVE_TIMEOUT_S, HOST, _set_nccl_env, payload_size, unpack_step


# A worker's side -------------------------------------------------------------------------------
def worker_main(rank, port, conn, cfg, model_cfg, opts, device, dtype, max_model_len) -> None:
    """Entry point of rank `rank`: join the group, build this rank's ModelRunner (its shard of the
    weights, its KV heads), then run a forward for every step rank 0 sends, until "stop"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is rank 0's to handle (it stops us)
    try:
        conn.send(("started",))
        size = cfg.tensor_parallel_size
        device = rank_device(device, rank, size)
        if backend_for(device) == "nccl":
            _set_nccl_env()
            torch.cuda.set_device(device)
        else:   # ranks share the CPU's cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
        timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        store = dist.TCPStore(HOST, port, size, is_master=False, timeout=timeout)
        dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=size, timeout=timeout)
        runner = ShardRunner(cfg, model_cfg, opts, device=device, dtype=dtype, max_model_len=max_model_len,
                             rank=rank)
        with torch.inference_mode():
            while True:
                try:
                    header = conn.recv()
                except EOFError:   # rank 0 is gone
                    break
                if header[0] == "stop":
                    break
                payload = torch.empty(payload_size(header), dtype=torch.int64, device=device)
                dist.broadcast(payload, src=0)
                runner.forward(*unpack_step(header, payload))
        runner.close()
        dist.destroy_process_group()
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
        raise


def main() -> None:
    conn = Connection(int(sys.argv[1]))
    rank, port, *rest = conn.recv()   # (rank, port, cfg, model_cfg, opts, device, dtype, max_model_len)
    worker_main(rank, port, conn, *rest)


if __name__ == "__main__":
    main()
