"""Launch counts of a real engine: one prefill step and N decode steps, any switch setting.

Wraps count_launches around LLM.step(): the prefill call queues a fresh batch and runs the one
step that prefills it; the decode call runs one step of that batch. With CUDA graphs on, a
decode step should cost the CPU a handful of launches while the GPU still runs every kernel.
"""
from __future__ import annotations

import dataclasses
import random
import statistics
import time

from .launches import LaunchRecord, count_launches
from .timing import device_sync, time_runs


def queue_random_prompts(llm, batch: int, prompt_len: int, params, rng: random.Random) -> None:
    """Drop whatever the engine holds, then queue `batch` random prompts of `prompt_len` tokens.
    params.max_tokens counts the tokens a request must still have once its batch is prefilled:
    each gets prefill_steps more, since the scheduler decodes the sequences prefilled first
    alongside the others' chunks (else a big batch drains while it is being prefilled)."""
    llm.abort_all()
    params = dataclasses.replace(params, max_tokens=params.max_tokens + prefill_steps(llm, batch, prompt_len))
    for _ in range(batch):
        llm.add_request([rng.randrange(llm.model_config.vocab_size) for _ in range(prompt_len)], params)


def prefill_steps(llm, batch: int, prompt_len: int) -> int:
    """How many steps a batch's prompts take to prefill (chunked: max_num_batched_tokens a step),
    at most."""
    return -(-batch * prompt_len // llm.config.max_num_batched_tokens) + 1


def start_decoding(llm, batch: int, prompt_len: int, params, rng: random.Random) -> None:
    """Queue random prompts and prefill them all (big batches take several steps): the engine's
    next step is a pure decode step of all `batch` sequences (else a RuntimeError says why not)."""
    queue_random_prompts(llm, batch, prompt_len, params, rng)
    llm.prefill_all()
    decoding = len(llm.scheduler.running)
    if decoding != batch:
        raise RuntimeError(f"{decoding} of {batch} sequences are decoding after the prefill (the others finished "
                           f"or were preempted during it): give the requests more max_tokens or the engine more "
                           f"KV blocks")


def engine_launches(llm, *, batch: int = 1, prompt_len: int = 128, decode_steps: int = 8,
                    seed: int = 0) -> dict[str, LaunchRecord]:
    from workbench.engine import SamplingParams
    rng = random.Random(seed)
    # enough tokens that every decode call (warm-up, timed pass, profiled pass) has work
    params = SamplingParams(temperature=0, max_tokens=3 * decode_steps + 8, ignore_eos=True)

    def prefill():
        queue_random_prompts(llm, batch, prompt_len, params, rng)
        llm.step()

    label = llm.opts.label()
    # Counts are per model step: with multi-step decoding one llm.step() would run several.
    try:
        with llm.decode_steps_override(1):
            records = {"prefill": count_launches(prefill, warmup=1, steps=1, label=f"{label} prefill")}
            start_decoding(llm, batch, prompt_len, params, rng)
            records["decode"] = count_launches(llm.step, warmup=1, steps=decode_steps, label=f"{label} decode")
    finally:
        llm.abort_all()
    return records


def unprofiled_step_us(llm, batch: int, prompt_len: int, phase: str, steps: int = 5,
                       temperature: float = 0.0) -> float:
    """Median wall time of `steps` steps of `phase` (decode | prefill) of `batch` random prompts
    without the profiler (its overhead is not free)."""
    from workbench.engine import SamplingParams

    if phase == "prefill":   # a fresh batch each time: its first step is the prefill
        params, rng = SamplingParams(temperature=temperature, max_tokens=2, ignore_eos=True), random.Random(1)
        sync = device_sync(llm.device)

        def one_prefill() -> float:
            queue_random_prompts(llm, batch, prompt_len, params, rng)
            sync()
            start = time.perf_counter()
            llm.step()
            sync()
            elapsed = time.perf_counter() - start
            llm.abort_all()
            return elapsed
        with llm.decode_steps_override(1):
            return statistics.median(one_prefill() for _ in range(steps)) * 1e6
    try:
        with llm.decode_steps_override(1):
            start_decoding(llm, batch, prompt_len,
                           SamplingParams(temperature=temperature, max_tokens=steps + 4, ignore_eos=True),
                           random.Random(1))
            spread = time_runs(llm.step, repeats=steps, warmup=0, sync=device_sync(llm.device))
    finally:
        llm.abort_all()
    return spread.median * 1e3
