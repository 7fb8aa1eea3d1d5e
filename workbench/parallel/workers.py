"""The processes of a tensor-parallel engine: rank 0 (the engine) and ranks 1..N-1 (workers).

    engine process = rank 0                     worker process = rank r (r >= 1)
    ------------------------------              ----------------------------------
    scheduler, block manager, sampler           (none of these)
    ModelRunner(rank=0): shard 0, KV heads 0    ModelRunner(rank=r): shard r, KV heads r
    each step: prepare() -> send_step() ------> receive_step() (same ids, positions, metadata)
               forward   <== all-reduces ==>    forward        (2 per layer, pair up in order)
               logits, sample                   (hidden states dropped)

Rank 0 starts each worker as a fresh interpreter running a module entry point,
`python -m workbench.parallel.worker FD` (worker.py; safe with CUDA, unlike fork), and sends it its
arguments over a socket. Unlike multiprocessing's spawn, this never re-imports the user's
__main__, so a plain script without `if __name__ == "__main__":`, `python -` or a notebook all
work. All ranks join one torch.distributed process group: gloo on CPU, NCCL on GPUs. The group's
rendezvous is a TCPStore that rank 0 opens on a port the OS picks (port 0), so no fixed port
collides when engines are created one after another.

Two channels, on purpose:
- control: one socket per worker (a multiprocessing Connection) carries a small header per
  step ("step" + shapes) or "stop". A worker idles in `recv()` with no timeout, so an engine may sit unused for hours;
  if rank 0 dies the socket closes and the worker exits (EOFError).
- data: the step's integer tensors go in ONE `dist.broadcast` of a packed int64 tensor (on the
  GPU with NCCL, no pickling). Collectives have a timeout, so a stuck rank fails, never hangs.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from multiprocessing.connection import Connection

from workbench.attention import AttentionMetadata
from workbench.engine.step_inputs import HostStep

from .tensor_parallel import backend_for

HOST = "127.0.0.1"
START_TIMEOUT_S = 120        # a spawned worker must report in (interpreter + imports) within this
COLLECTIVE_TIMEOUT_S = 300   # ranks run the same work, so a collective waits only for skew; a wait
                             # this long means a rank is stuck or gone: fail instead of hanging
JOIN_TIMEOUT_S = 30          # a stopped worker frees its model and exits within this


def _set_nccl_env() -> None:
    # NVLink SHARP multicast (NVLS) is off on the machines this is tested on; it must stay off in
    # every rank, set before NCCL creates its communicator.
    os.environ["NCCL_NVLS_ENABLE"] = "0"


# The step message: header (host ints, through the pipe) + payload (one int64 tensor, broadcast) --
def pack_step(step: HostStep, device) -> tuple[tuple, torch.Tensor]:
    """One int64 payload built on the host and moved once: rank 0 unpacks the same tensor."""
    header = ("step", len(step.input_ids), step.num_seqs, step.block_tables.shape[1],
              step.max_seqlen_q, step.max_seqlen_k, step.is_decode)
    payload = np.concatenate([step.input_ids, step.positions, step.slot_mapping, step.cu_seqlens_q,
                              step.seq_lens, step.block_tables.ravel()]).astype(np.int64)
    return header, torch.from_numpy(payload).to(device)


def unpack_step(header: tuple, payload: torch.Tensor):
    _, tokens, seqs, width, max_q, max_k, is_decode = header
    ids, positions, slots, cu, lens, tables = payload.split([tokens, tokens, tokens, seqs + 1, seqs, seqs * width])
    meta = AttentionMetadata(cu_seqlens_q=cu.int(), seq_lens=lens.int(), block_tables=tables.int().view(seqs, width),
                             slot_mapping=slots, max_seqlen_q=max_q, max_seqlen_k=max_k, is_decode=is_decode)
    return ids, positions, meta


def payload_size(header: tuple) -> int:
    _, tokens, seqs, width, *_ = header
    return 3 * tokens + 2 * seqs + 1 + seqs * width


# Rank 0's side ----------------------------------------------------------------------------------
class WorkerProcess:
    """One worker interpreter (subprocess.Popen) with the few methods of multiprocessing.Process
    that rank 0 uses: pid, is_alive(), join(), exitcode, terminate(), kill()."""

    live: "weakref.WeakSet[WorkerProcess]" = weakref.WeakSet()   # for tests and the exit hook

    def __init__(self, popen: subprocess.Popen):
        self.popen, self.pid = popen, popen.pid
        WorkerProcess.live.add(self)

    @classmethod
    def start(cls) -> tuple["WorkerProcess", Connection]:
        ours, theirs = socket.socketpair()
        # the child imports workbench from where this process did, whatever its sys.path
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        popen = subprocess.Popen([sys.executable, "-m", "workbench.parallel.worker", str(theirs.fileno())],
                                 pass_fds=(theirs.fileno(),), env=env,
                                 start_new_session=True)   # a terminal's Ctrl-C goes to rank 0 only
        theirs.close()   # only the worker holds its end now: its death reads as EOF here
        return cls(popen), Connection(ours.detach())

    @property
    def exitcode(self) -> int | None:   # negative: killed by that signal
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self) -> None:
        if self.is_alive():
            self.popen.terminate()

    def kill(self) -> None:
        if self.is_alive():
            self.popen.kill()


@atexit.register
def _stop_live_workers() -> None:
    """Rank 0 is exiting without close(): idle workers see EOF and exit by themselves; one stuck
    in a collective would wait for its timeout, so stop them all now."""
    for proc in list(WorkerProcess.live):
        proc.terminate()
        proc.join(5)
        proc.kill()


class WorkerGroup:
    """Rank 0's handle on ranks 1..N-1: start them, send each step, stop them."""

    def __init__(self, cfg, model_cfg, opts, *, device: str, dtype: torch.dtype, max_model_len: int):
        self.size, self.device = cfg.tensor_parallel_size, device   # device: rank 0's
        self.backend = backend_for(device)
        if dist.is_initialized():
            raise RuntimeError("another tensor-parallel engine is still open in this process (torch.distributed "
                               "has one process group per process): close() it before creating this one")
        if self.backend == "nccl":
            _set_nccl_env()
        self.procs, self.conns, self.broken = [], [], False
        timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        self.store = dist.TCPStore(HOST, 0, self.size, is_master=True, wait_for_workers=False, timeout=timeout)
        try:
            for rank in range(1, self.size):
                proc, conn = WorkerProcess.start()
                self.procs.append(proc)
                self.conns.append(conn)
                conn.send((rank, self.store.port, cfg, model_cfg, opts, device, dtype, max_model_len))
            for rank in range(1, self.size):
                self._expect(rank, "started", START_TIMEOUT_S)
            dist.init_process_group(self.backend, store=self.store, rank=0, world_size=self.size, timeout=timeout)
        except BaseException:
            self.shutdown(clean=False)
            raise

    def _expect(self, rank: int, what: str, timeout_s: float) -> None:
        conn, proc = self.conns[rank - 1], self.procs[rank - 1]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if conn.poll(0.05):
                try:
                    message = conn.recv()
                except EOFError:   # it died before saying anything
                    proc.join(5)
                    message = ("error", f"exited with code {proc.exitcode}")
                if message[0] == what:
                    return
                raise RuntimeError(f"tensor-parallel rank {rank} failed to start:\n{message[1]}")
            if not proc.is_alive():
                raise RuntimeError(f"tensor-parallel rank {rank} exited with code {proc.exitcode} during start-up")
        raise RuntimeError(f"tensor-parallel rank {rank} did not start within {timeout_s} s")

    def failures(self) -> list[str]:
        """What went wrong in the workers, if anything: their tracebacks and exit codes."""
        found = []
        for rank, (conn, proc) in enumerate(zip(self.conns, self.procs), 1):
            try:
                while conn.poll(0):
                    message = conn.recv()
                    if message[0] == "error":
                        found.append(f"rank {rank}:\n{message[1]}")
            except (EOFError, OSError):
                pass
            if not proc.is_alive() and proc.exitcode != 0:
                found.append(f"rank {rank} exited with code {proc.exitcode}")
        return found

    def send_step(self, step: HostStep):
        """Give every worker this step's inputs (call on rank 0 right before its own forward);
        returns rank 0's own (input_ids, positions, meta), views of the same broadcast payload."""
        for rank, proc in enumerate(self.procs, 1):   # cheap (waitpid), and it turns a hang into an error
            if not proc.is_alive():
                raise RuntimeError(f"tensor-parallel rank {rank} is gone (exit code {proc.exitcode})")
        header, payload = pack_step(step, self.device)
        for conn in self.conns:
            conn.send(header)
        dist.broadcast(payload, src=0)
        return unpack_step(header, payload)

    @contextmanager
    def guard(self, what: str):
        """Any error inside (here or in a worker) leaves the ranks out of step -- some are waiting
        in a collective the others will never reach -- so stop the workers and report why.
        A step also holds Ctrl-C until it is over, so that an interrupt leaves a usable engine."""
        if self.broken:
            raise RuntimeError("the tensor-parallel workers were stopped after an earlier error: close() this "
                               "LLM and create a new one")
        with _hold_ctrl_c() if what == "step" else nullcontext():
            try:
                yield
            except BaseException as exc:
                self.broken = True
                found = self.failures()
                self.shutdown(clean=False)
                if found:
                    raise RuntimeError(f"tensor-parallel {what} failed in a worker process:\n"
                                       + "\n".join(found)) from exc
                raise

    def shutdown(self, clean: bool = True) -> None:
        """Stop every worker and leave the process group. clean: ask them to stop and wait for it;
        otherwise (after an error, when they may be blocked in a collective) terminate them."""
        for conn in self.conns:
            if clean:
                try:
                    conn.send(("stop",))
                except OSError:   # that worker is already gone
                    pass
        for proc in self.procs:
            if clean:
                proc.join(JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []
        if dist.is_initialized():
            dist.destroy_process_group()
        self.store = None


@contextmanager
def _hold_ctrl_c():
    """Defer SIGINT to the end of the block. Ctrl-C in the middle of a step would stop rank 0
    between two all-reduces while the workers wait in the next one; held for the few ms (or s)
    the step takes, it arrives between steps, where generate() aborts its requests cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield   # only the main thread receives signals (and may set handlers)
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(*caught[0])   # usually raises KeyboardInterrupt (Python's and Jupyter's handlers)
    elif caught and previous == signal.SIG_DFL:
        raise KeyboardInterrupt
