"""Does a kernel that asks L2 for bytes (`prefetch.global.L2`) last until those bytes arrive?

Session 15 (docs/perf-notes.md) found that a decode GEMV which prefetched the next weight got as
long as that weight's stream. Two readings: the kernel cannot finish while its prefetches are in
flight (then a prefetch only pays from a kernel whose own time covers it), or the prefetch
traffic slowed the GEMV's own loads (then a kernel that reads almost nothing -- attention's
chain at batch 1 -- could issue them for free). This probe separates the two on the GPU:

  empty      a kernel of P programs that stores one value each: its time alone
  prefetch   the same kernel, its programs also prefetching a W-byte weight into L2
  read cold  a kernel reading the W bytes after L2 was flushed
  read warm  the same read right after the prefetch kernel (did the bytes land in L2?)

Times: CUDA events around each launch, L2 flushed (a 256 MB write) before each repeat, medians.
Reading: prefetch ~ empty -> fire and forget; prefetch ~ W / copy bandwidth -> the kernel waits.
Run on the device: python scripts/prefetch_probe.py [OUT.json]
"""
from __future__ import annotations

import json
import statistics
import sys

import torch
import triton
import triton.language as tl

from workbench.kernels.gemv import _prefetch_l2, as_bytes
from workbench.measure.timing import cuda_event_times


@triton.jit
def _probe_kernel(out_ptr, w_ptr, w_bytes, LINES: tl.constexpr):
    if LINES > 0:
        _prefetch_l2(w_ptr, w_bytes, LINES)
    tl.store(out_ptr + tl.program_id(0), tl.program_id(0).to(tl.float32))


@triton.jit
def _read_kernel(out_ptr, w_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    w = tl.load(w_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + tl.program_id(0), tl.sum(w.to(tl.float32), 0))


def timed(launch, before, repeats: int = 30) -> float:
    """Median microseconds of `launch`, `before` (the flush, maybe a prefetch) run first each time."""
    return statistics.median(cuda_event_times(launch, repeats, before)) * 1e6


def main() -> int:
    dev = torch.device("cuda")
    flush_buf = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
    flush = lambda: flush_buf.fill_(1)   # noqa: E731 -- evicts L2 (50 MB on an H200)
    out = torch.empty(4096, dtype=torch.float32, device=dev)
    rows = []
    print(f"{torch.cuda.get_device_name()}: microseconds, median of 30 (events; L2 flushed before each)")
    print(f"{'weight MB':>9} {'programs':>8} {'empty':>7} {'prefetch':>8} {'read cold':>9} {'read warm':>9}")
    for mb in (4.2, 12.6, 25.2):
        w = torch.randn(int(mb * 1e6) // 2, dtype=torch.bfloat16, device=dev)
        w_bytes = as_bytes(w)   # _prefetch_l2's offsets count bytes
        nbytes, lines = w_bytes.numel(), triton.cdiv(w_bytes.numel(), 128)
        block = 4096
        read = lambda: _read_kernel[(triton.cdiv(w.numel(), block),)](out, w, w.numel(), BLOCK=block)  # noqa: E731
        cold = timed(read, flush)
        for programs in (24, 64, 132, 264):
            per = triton.next_power_of_2(triton.cdiv(lines, programs))
            grid = (triton.cdiv(lines, per),)   # every line asked for once (the last program's extra skipped)
            empty = lambda: _probe_kernel[grid](out, w_bytes, nbytes, LINES=0)   # noqa: E731
            pf = lambda: _probe_kernel[grid](out, w_bytes, nbytes, LINES=per)    # noqa: E731
            t_empty, t_pf = timed(empty, flush), timed(pf, flush)
            warm = timed(read, lambda: (flush(), pf()))
            row = {"weight_mb": mb, "programs": grid[0], "lines_per_program": per, "empty_us": t_empty,
                   "prefetch_us": t_pf, "read_cold_us": cold, "read_after_prefetch_us": warm,
                   "gpu": torch.cuda.get_device_name()}
            rows.append(row)
            print(f"{mb:9.1f} {grid[0]:8d} {t_empty:7.2f} {t_pf:8.2f} {cold:9.2f} {warm:9.2f}", flush=True)
    if len(sys.argv) > 1:
        from workbench.measure.results import stamp
        with open(sys.argv[1], "w") as f:
            json.dump(stamp(rows, "python " + " ".join(sys.argv)), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
