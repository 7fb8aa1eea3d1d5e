"""Switch `decode_steps` (EngineConfig): K decode steps per scheduling round -- attacks the host
time between decode steps (schedule, pack inputs, wait for the sampled token).

Each round's later steps take the previous step's sampled tokens on the GPU, so the host packs
step i+1 while the GPU runs step i and waits once per round. The price: a request that arrives
waits up to K steps to join, and a sequence that reaches a stop token or its max_tokens inside a
round runs to the round's end (its extra tokens are computed and dropped) rather than cut the
round short for the whole batch (Scheduler.plan_decode_steps).

Chapter: notebooks/07 (stack them all: the dashboard's "decode steps/round"). Measurement: the
bench's `--decode-steps 1,8` rows (host ms per step by phase).

Installed: not a model change. The scheduler plans the round (Scheduler.plan_decode_steps, KV
room for every step) and the runner runs it (ModelRunner.execute_decode_steps).

A round in one graph (EngineConfig.graph_rounds, a candidate; needs cuda_graphs). With graphs, a
round still replays one graph a step, and between two replays the GPU runs the step's input
copies, the sampled ids' copy, the argmax and the graph launch -- and the next replay's first
kernel cannot start early under PDL. With graph_rounds, a greedy round of decode_steps steps is
captured as ONE graph (cuda_graphs.DecodeGraphs.capture_rounds): after each step's logits the
argmax, then `advance` below moves the graph's own inputs to the next step on the device. The
round's inputs are copied in once; its tokens come out once. Greedy rounds only (the eager
sampler's generators cannot be captured) -- unless graph_sampling is on, whose fused sampler
needs no generator: then temperature rounds too, except a round with a top-k/top-p row (its eager
pass cannot run between the graph's steps). Every other round replays a step at a time.
"""
from __future__ import annotations

import torch


def why_not(device: str, tp_size: int = 1) -> str | None:
    if tp_size > 1:
        return ("not implemented with tensor parallelism (the worker ranks run one step per "
                "broadcast); use decode_steps=1 with tensor_parallel_size > 1")
    return None


def advance(input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor, seq_lens: torch.Tensor,
            block_tables: torch.Tensor, sampled: torch.Tensor, block_size: int) -> None:
    """In place, on the device: the inputs of the decode step after this one (graph_rounds), as
    next_decode_step (engine/step_inputs.py) makes them on the host. Each real row takes its
    sampled id at the next position, one key longer, its slot from the block table (which holds
    room for the whole round: Scheduler.plan_decode_steps). Padding rows (slot -1: a graph's
    bucket is larger than the batch) stay as they are: they write nowhere and see one key."""
    real = slot_mapping >= 0
    input_ids.copy_(torch.where(real, sampled, input_ids))
    positions.add_(real.to(positions.dtype))
    seq_lens.add_(real.to(seq_lens.dtype))
    block = block_tables.gather(1, (positions // block_size).unsqueeze(1)).squeeze(1).to(slot_mapping.dtype)
    slot_mapping.copy_(torch.where(real, block * block_size + positions % block_size, slot_mapping))
