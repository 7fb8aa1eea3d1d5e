"""What tensor parallelism costs: time in all-reduce per decode step, next to the step's time.

With tensor_parallel_size = N, every decoder layer ends its attention and its MLP with one
all-reduce each (row-parallel o_proj and down_proj), and rank 0 broadcasts each step's inputs
to the other ranks. On rank 0, torch.profiler sees each collective twice:

    c10d::allreduce_, c10d::broadcast_    the call, on the calling thread: it only hands the work
                                          over, so it gives the count, not the time
    gloo:all_reduce, gloo:broadcast       gloo's work, on gloo's own threads (CPU): the exchange,
                                          waiting for the slower rank included
    nccl...AllReduce/Broadcast kernels    NCCL's work, on the GPU: the kernel time the step pays

The calling thread waits at least as long as the work takes: it also pays for handing the work
to gloo's thread and waking up again. The step's wall time is measured twice: without the
profiler (the headline), and for the profiled steps, which the all-reduce share is taken of
(profiled steps run slower, so the two must not be mixed). Bytes per all-reduce are
modelled: [tokens, hidden] activations in the engine's dtype.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .timing import device_sync, loop_seconds, profiled


@dataclass
class CommRecord:
    label: str
    available: bool
    reason: str = ""
    tp_size: int = 1
    backend: str = ""                     # gloo | nccl | "" (tp_size 1)
    batch: int = 0
    steps: int = 0
    step_ms: float = 0.0                  # wall time per decode step, without the profiler
    profiled_step_ms: float = 0.0         # the same, for the profiled steps the times below come from
    all_reduces_per_step: float = 0.0
    all_reduce_ms_per_step: float = 0.0   # gloo's work time (CPU) or NCCL kernel time (GPU), rank 0
    broadcast_ms_per_step: float = 0.0
    all_reduce_share: float = 0.0         # all_reduce_ms_per_step / profiled_step_ms
    all_reduce_bytes: int = 0             # modelled: one [batch, hidden] activation (0 at tp=1: none runs)
    device: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _collective(event, kind: str) -> bool:
    """Is this profiler event the work (not the call) of an all_reduce / broadcast?"""
    from torch.autograd import DeviceType
    name = event.name.lower().replace("_", "")
    if event.device_type == DeviceType.CUDA:
        return "nccl" in name and kind in name
    return name == f"gloo:{kind}"


def decode_comm(llm, *, batch: int = 1, prompt_len: int = 32, steps: int = 8, seed: int = 0) -> CommRecord:
    """Queue `batch` prompts, prefill them, then time and profile `steps` decode steps."""
    import random

    from workbench.engine import SamplingParams

    from .steps import start_decoding

    where = llm.placement()
    tp = where["tp_size"]
    label = f"{llm.opts.label()} tp={tp}"
    params = SamplingParams(temperature=0, max_tokens=3 * steps + 4, ignore_eos=True)
    sync = device_sync(where["device"])
    try:
        start_decoding(llm, batch, prompt_len, params, random.Random(seed))
        llm.step()   # warm-up decode step
        step_s = loop_seconds(llm.step, steps, sync)
        run = profiled(llm.step, steps, cuda=where["device"].type == "cuda", sync=sync)
    finally:
        llm.abort_all()
    if run.unavailable:
        return CommRecord(label, False, run.unavailable, tp_size=tp, batch=batch, steps=steps, step_ms=step_s * 1e3)
    events, profiled_s = run.events, run.seconds
    calls = sum(e.name == "c10d::allreduce_" for e in events)
    reduce_ms = sum(e.time_range.elapsed_us() for e in events if _collective(e, "allreduce")) / 1e3 / steps
    broadcast_ms = sum(e.time_range.elapsed_us() for e in events if _collective(e, "broadcast")) / 1e3 / steps
    return CommRecord(label, True, tp_size=tp, backend=where["backend"],
                      batch=batch, steps=steps, step_ms=step_s * 1e3, all_reduces_per_step=calls / steps,
                      profiled_step_ms=profiled_s * 1e3,
                      all_reduce_ms_per_step=reduce_ms, broadcast_ms_per_step=broadcast_ms,
                      all_reduce_share=reduce_ms / (profiled_s * 1e3),
                      # one rank reduces nothing: no bytes where no all-reduce runs
                      all_reduce_bytes=batch * llm.model_config.hidden_size * where["dtype"].itemsize if calls else 0,
                      device=where["device_name"])
