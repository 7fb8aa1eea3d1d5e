"""Switch `decode_steps` (EngineConfig): K decode steps per scheduling round -- attacks the host
time between decode steps (schedule, pack inputs, wait for the sampled token).

Each round's later steps take the previous step's sampled tokens on the GPU, so the host packs
step i+1 while the GPU runs step i and waits once per round. The price: a request that arrives
waits up to K steps to join, and a stop token ends a sequence up to K-1 tokens late (those
tokens are dropped).

Chapter: notebooks/07 (stack them all: the dashboard's "decode steps/round"). Measurement: the
bench's `--decode-steps 1,8` rows (host ms per step by phase).

Installed: not a model change. The scheduler plans the round (Scheduler.plan_decode_steps, KV
room for every step) and the runner runs it (ModelRunner.execute_decode_steps).
"""
from __future__ import annotations


def why_not(device: str, tp_size: int = 1) -> str | None:
    if tp_size > 1:
        return ("not implemented with tensor parallelism (the worker ranks run one step per "
                "broadcast); use decode_steps=1 with tensor_parallel_size > 1")
    return None
