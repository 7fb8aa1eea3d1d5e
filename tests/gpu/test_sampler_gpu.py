"""The sampler on a GPU queues its work and never makes the host wait (run on the device).

A host-to-device copy from pageable memory (`torch.tensor(list, device="cuda")`) synchronizes
the stream: the host stops until every kernel queued before it has run. In multi-step decoding
that would undo the point of the round -- the host preparing step i+1 while the GPU runs step i.
torch's sync debug mode turns every such hidden synchronization into an error."""
import pytest
import torch

from workbench import SamplingParams
from workbench.engine.sampler import Sampler
from workbench.engine.sequence import Sequence

pytestmark = pytest.mark.gpu


def _batch():
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.6),
              SamplingParams(temperature=1.0, seed=7), SamplingParams(temperature=0.8, top_k=20, top_p=0.9)]
    return [Sequence(i, [1], p) for i, p in enumerate(params)]


@pytest.fixture
def no_hidden_syncs():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_sampling_queues_without_a_host_sync(no_hidden_syncs):
    sampler, seqs = Sampler("cuda", seed=0), _batch()
    for seq in seqs:
        seq.generator = sampler.generator_for(seq.params)
    logits = torch.randn(len(seqs), 151_936, device="cuda", dtype=torch.bfloat16)
    rows = sampler.rows(seqs, logits.shape[-1], logits.device)   # once a round
    for _ in range(3):                                           # the round's steps
        tokens = sampler.sample(logits, seqs, rows)
    sampler.sample(logits, seqs)                                 # rows built inside: no sync either
    torch.cuda.set_sync_debug_mode("default")
    assert tokens.shape == (4,) and tokens[0].item() == logits[0].argmax().item()


def test_the_sync_check_catches_a_pageable_copy(no_hidden_syncs):
    """The check can fail: the copy the sampler used to make raises under it."""
    with pytest.raises(RuntimeError, match="synchroniz"):
        torch.tensor([0.6, 1.0], device="cuda")
