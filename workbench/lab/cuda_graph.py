"""Exercise 05: capture a decode step in a CUDA graph and replay it; pick its batch bucket.

    capture(step, static_inputs: list[Tensor]) -> replay(*inputs) -> Tensor
    bucket_for(batch_size: int, buckets: list[int]) -> int | None

capture: warm `step` up on a side stream, record one call into torch.cuda.CUDAGraph on the
static inputs, and return a replay function that copies its arguments into the static inputs,
replays the graph and returns the static output. A replay is one launch instead of one per op.
bucket_for: graphs are captured per batch size, so a batch is padded up to the smallest
bucket that holds it; None when it exceeds every bucket (that step runs eagerly). `buckets` is
in ascending order, as the engine makes it (decode_buckets).

A GPU is needed for capture (on a CPU: a clear skip, not graded; bucket_for runs anywhere, and so
does the buckets quiz of notebooks/05_cuda_graphs.ipynb). To compare with once yours passes: workbench.optimizations.cuda_graphs (decode_buckets, DecodeGraphs).
"""
from __future__ import annotations

import torch

from workbench.optimizations.cuda_graphs import decode_buckets

from .exercise import Exercise, Skip, Wrong, call, close, machine


def bucket_alone(fn) -> None:
    for max_seqs in (1, 8, 40, 256):
        buckets = decode_buckets(max_seqs)
        for batch in range(1, max_seqs + 2):
            want = next((b for b in buckets if b >= batch), None)
            got = call(fn, "bucket_for", batch, buckets, expected=want)
            if got != want:
                why = ("a batch larger than every bucket has no graph: return None (it runs eagerly)"
                       if want is None else "the smallest bucket that holds the batch: fewer bucket "
                       "rows means less padding computed for nothing" if got is not None and got > want else
                       f"bucket {want} holds it; None only when the batch exceeds every bucket" if got is None
                       else "a bucket smaller than the batch would drop sequences")
                raise Wrong(f"batch {batch}, buckets {buckets}: you chose {got}, expected {want}: {why}.")


def bucket_waste(fn, max_seqs: int = 256) -> dict:
    buckets = decode_buckets(max_seqs)
    padded = sum(fn(b, buckets) - b for b in range(1, max_seqs + 1))
    rows = sum(range(1, max_seqs + 1))
    return dict(padding_rows=padded, real_rows=rows, machine="any (a count, not a timing)",
                bar="exact: the counts follow from the buckets",
                summary=f"modelled, if every batch size 1..{max_seqs} is equally common, over buckets {buckets}: "
                        f"{padded} padded rows for {rows} real ones ({100 * padded / rows:.1f} % extra rows "
                        f"computed in decode steps)")


def _step(x, w):   # a decode-like step: many small ops, each one kernel launch when eager
    for _ in range(8):
        x = torch.nn.functional.silu(x @ w) + x
    return x


def capture_alone(fn) -> None:
    if not torch.cuda.is_available():
        raise Skip("CUDA graphs need a CUDA GPU: not graded on a CPU (do bucket_for, and the buckets quiz of "
                   "notebooks/05_cuda_graphs.ipynb)")
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(64, 64, device="cuda", generator=g) / 8
    static = torch.zeros(4, 64, device="cuda")
    replay = fn(lambda x: _step(x, w), [static])
    for i in range(3):
        x = torch.randn(4, 64, device="cuda", generator=g)
        got = replay(x)
        if i and torch.allclose(got, _step(prev_x, w), atol=1e-4) and not torch.allclose(got, _step(x, w), atol=1e-4):
            raise Wrong("replay returned the output for the previous inputs: copy the new inputs into the static "
                        "tensors (static.copy_(new)) before graph.replay().")
        close(got, _step(x, w), f"replay {i}", atol=1e-4, hint="the graph must compute the eager step exactly.")
        prev_x = x


def launches(fn) -> dict:
    if not torch.cuda.is_available():
        raise Skip("counting launches needs a CUDA GPU (torch.profiler's CUDA activity)")
    from torch.profiler import ProfilerActivity, profile
    w = torch.randn(64, 64, device="cuda") / 8
    replay = fn(lambda x: _step(x, w), [torch.zeros(4, 64, device="cuda")])
    x = torch.randn(4, 64, device="cuda")

    def count(f):
        f(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            f(x)
            torch.cuda.synchronize()
        names = [e.name for e in prof.events()]
        return sum("LaunchKernel" in n for n in names), sum("GraphLaunch" in n for n in names)
    eager_k, _ = count(lambda t: _step(t, w))
    kernels, graphs = count(replay)
    effect = dict(eager_kernel_launches=eager_k, replay_kernel_launches=kernels, graph_launches=graphs,
                  machine=machine(), bar="a replay launches no kernel one by one, one graph",
                  summary=f"eager step: {eager_k} kernel launches; your replay: {kernels} kernel launches and "
                          f"{graphs} graph launch(es) on {machine()}")
    if kernels or graphs != 1:
        raise Wrong(f"{effect['summary']}: replay must be a single graph launch (graph.replay()), not a call "
                    f"of the step.")
    return effect


EXERCISE = Exercise("cuda_graph", "05", "capture(step, static_inputs) -> replay", capture_alone, None, launches)
BUCKETS = Exercise("graph_buckets", "05", "bucket_for(batch_size, buckets) -> int | None", bucket_alone,
                   None, bucket_waste, may_return_none=True)
