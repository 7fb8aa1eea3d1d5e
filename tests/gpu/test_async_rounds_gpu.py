"""async_rounds on a GPU (run on the device): the next round launched before the running one is
read gives the tokens of rounds read one at a time -- on the step-by-step graph path, with a round
as one graph replay (graph_rounds), and with the fused sampler's seeded rows (its counters start
past the unread round's tokens). CPU twin: tests/test_async_rounds.py."""
import random

import pytest
import torch

from workbench import LLM, Optimizations, SamplingParams
from workbench.assets import DEFAULT_MODEL_DIR, make_sort_prompts

pytestmark = pytest.mark.gpu
FAST = Optimizations(attention="flash", fused_kernels=True, cuda_graphs=True)


def _generate(model, prompts, params, **engine):
    """Token ids per request; the `ahead` of every round launched (0: read before the next); for
    every round replayed as one graph, whether its input ids came on the device."""
    with LLM(model, **engine) as llm:
        aheads, on_device, launch, run_round = [], [], llm.runner.launch_round, llm.runner.graphs.run_round

        def spy(seqs, num_steps, step, input_ids=None, ahead=0, host_seconds=None):
            aheads.append(ahead)
            return launch(seqs, num_steps, step, input_ids, ahead, host_seconds)

        def spy_round(step, input_ids=None):
            on_device.append(input_ids is not None)
            return run_round(step, input_ids)
        llm.runner.launch_round, llm.runner.graphs.run_round = spy, spy_round
        return [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)], aheads, on_device


@pytest.mark.parametrize("opts", [FAST, Optimizations.all_on()], ids=lambda o: o.label())
def test_async_rounds_same_tokens_on_the_sorter(opts):
    """The sorter's sharp logits: a stop (EOS) inside a round leaves its sequence in the round
    launched after it, so later rounds' batch sizes differ from the rounds read one at a time."""
    prompts = [p for p, _ in make_sort_prompts(48, seed=12)]
    params = [SamplingParams(temperature=0, max_tokens=12),                  # EOS mid-round
              SamplingParams(temperature=0, max_tokens=9, ignore_eos=True),
              SamplingParams(temperature=0.6, seed=5, max_tokens=11)] * 16     # the fused sampler, seeded
    want, sync_aheads, _ = _generate(DEFAULT_MODEL_DIR, prompts, params, opts=opts, decode_steps=8, async_rounds=False)
    got, aheads, _ = _generate(DEFAULT_MODEL_DIR, prompts, params, opts=opts, decode_steps=8, async_rounds=True)
    assert set(sync_aheads) == {0} and max(aheads) == 8, (sync_aheads, aheads)
    assert got == want


@pytest.fixture(scope="module")
def q06b(tmp_path_factory):   # Qwen3-0.6B's shape, random weights: the real kernels' shapes
    from workbench.model import random_checkpoint
    return random_checkpoint("qwen3-0.6b", tmp_path_factory.mktemp("q06b"))


def test_async_rounds_with_graph_rounds_and_seeds(q06b):
    """All on, 8 steps a round: greedy rounds replay one graph each (graph_rounds), their inputs
    the last round's samples on the GPU; a seeded temperature request alone gives the same tokens
    (one sequence: the same kernels either way, so exactly the same noise and logits)."""
    rng = random.Random(1)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (5, 130, 40, 257)]
    greedy = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (40, 24, 64, 33)]
    seeded = SamplingParams(temperature=0.6, seed=9, max_tokens=45, ignore_eos=True)
    engine = dict(opts=Optimizations.all_on(), decode_steps=8, graph_rounds=True, max_num_seqs=8, max_model_len=512)
    for prompt_list, params in ((prompts, greedy), (prompts[1:2], seeded)):
        want, _, _ = _generate(q06b, prompt_list, params, async_rounds=False, **engine)
        got, aheads, on_device = _generate(q06b, prompt_list, params, async_rounds=True, **engine)
        assert max(aheads) == 8 and got == want, aheads
        assert params is seeded or (True in on_device), on_device   # a round graph fed by the last one


def test_launching_the_next_round_never_waits_for_the_gpu(q06b):
    """The point of the switch: launching round r+1 must not wait for round r. Under
    torch.cuda.set_sync_debug_mode("error") any synchronizing copy or stream wait raises -- such
    as an index of the rows that go on copied from pageable memory (a sequence that reaches its
    max_tokens in the unread round leaves the next one)."""
    prompts = [[5, 9, 200, 31], [77, 3, 1000, 8, 64], [400, 2, 2]]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (9, 17, 30)]
    with LLM(q06b, opts=Optimizations.all_on(), decode_steps=4, async_rounds=True, max_num_seqs=4,
             max_model_len=512) as llm:
        launch, fewer = llm._launch_next_round, []

        def strict(launched):
            torch.cuda.set_sync_debug_mode("error")
            try:
                following = launch(launched)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            fewer.append(following is not None and len(following.seqs) < len(launched.seqs))
            return following
        llm._launch_next_round = strict
        outs = llm.generate(prompts, params, use_tqdm=False)
    assert [len(o.token_ids) for o in outs] == [9, 17, 30]
    assert any(fewer), fewer   # rows left: the gather by an index ran
