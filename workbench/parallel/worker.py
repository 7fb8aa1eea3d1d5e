"""Entry point of a tensor-parallel worker process: `python -m workbench.parallel.worker FD`.

Rank 0 (workers.WorkerGroup) starts this module in a fresh interpreter with one end of a socket
pair as file descriptor FD, then sends the worker's arguments through it. Being a module entry
point, it never imports the user's __main__ (multiprocessing's spawn would), so tensor
parallelism starts from any script, from `python -`, and from notebooks alike.
"""
import sys
from multiprocessing.connection import Connection

from workbench.parallel.workers import worker_main


def main() -> None:
    conn = Connection(int(sys.argv[1]))
    rank, port, *rest = conn.recv()   # (rank, port, cfg, model_cfg, opts, device, dtype, max_model_len)
    worker_main(rank, port, conn, *rest)


if __name__ == "__main__":
    main()
