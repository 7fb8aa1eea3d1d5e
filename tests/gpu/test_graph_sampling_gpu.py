"""graph_sampling on a GPU (run on the device): the decode graphs record the fused sampler after
the LM head (optimizations/graph_sampling.py), and the tokens are bit for bit those of the sampler
launched after the replay -- greedy, seeded, unseeded and top-k/top-p rows; one step a schedule,
rounds of 8 (async), and rounds as one graph replay (graph_rounds). CPU twin: the interpreter check
graph_sampling_stages_what_the_sampler_reads in tests/test_sample_kernel.py."""
import random

import pytest

from workbench import LLM, Optimizations, SamplingParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def q06b(tmp_path_factory):   # Qwen3-0.6B's shape, random weights: the real kernels' shapes
    from workbench.model import random_checkpoint
    return random_checkpoint("qwen3-0.6b", tmp_path_factory.mktemp("q06b"))


def _tokens(model, batches, **engine):
    """Token ids per request of each (prompts, params) batch, run one after another in one engine;
    how many decode steps took their tokens from a graph, and how many rounds replayed as one graph
    (per batch)."""
    engine = {"max_num_seqs": 8, "max_model_len": 512, **engine}
    with LLM(model, opts=Optimizations.all_on(), **engine) as llm:
        graphs, counted = llm.runner.graphs, {"steps": 0, "rounds": 0}
        sampled, run_round = graphs.sampled, graphs.run_round

        def count_steps(batch):
            counted["steps"] += 1
            return sampled(batch)

        def count_rounds(step, input_ids=None):
            counted["rounds"] += 1
            return run_round(step, input_ids)
        graphs.sampled, graphs.run_round = count_steps, count_rounds
        out = []
        for prompts, params in batches:
            counted.update(steps=0, rounds=0)
            out.append(([o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)], dict(counted)))
        return out


@pytest.mark.parametrize("engine", [dict(decode_steps=1), dict(decode_steps=8),
                                    dict(decode_steps=8, graph_rounds=True)], ids=["1-step", "rounds", "graph-rounds"])
def test_graph_sampling_gives_the_sampler_tokens(q06b, engine):
    rng = random.Random(4)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (5, 130, 40, 257, 9)]
    mixed = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
             SamplingParams(temperature=0.6, seed=11, max_tokens=33, ignore_eos=True),
             SamplingParams(temperature=0.6, max_tokens=40, ignore_eos=True),        # unseeded: the engine's keys
             SamplingParams(temperature=0.9, top_k=20, top_p=0.9, seed=3, max_tokens=24, ignore_eos=True),
             SamplingParams(temperature=1.0, max_tokens=48, ignore_eos=True)]
    sampled = [SamplingParams(temperature=0.6, seed=s, max_tokens=40, ignore_eos=True) for s in range(4)]
    greedy = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)] * 4
    batches = [(prompts, mixed), (prompts[:4], sampled), (prompts[1:2], sampled[:1]), (prompts[:4], greedy)]
    off = _tokens(q06b, batches, graph_sampling=False, **engine)
    on = _tokens(q06b, batches, graph_sampling=True, **engine)
    for (want, counted_off), (got, counted_on), (_, params) in zip(off, on, batches):
        assert got == want, (params[0], len(params))
        assert counted_off["steps"] == 0 and counted_on["steps"] + counted_on["rounds"] > 0, (counted_off, counted_on)
        if engine.get("graph_rounds") and params is not mixed:   # temperature rounds replay one graph too
            assert counted_on["rounds"] > 0, (params[0], counted_on)


def test_a_prompt_chunk_beside_sampled_rows(q06b):
    """A decode-shaped step whose last row is a 1-token prompt chunk that does not sample: the graph
    samples every row greedily (its tokens unused), the sampler after it takes the sampled rows --
    the same tokens as without graph_sampling (a review found this step crashed the staging). Three
    2-token prompts then a 40-token one, 4 tokens a step: once the three decode, the fourth's
    prompt goes in 1 token a step beside them."""
    prompts = [[11, 12], [13, 14], [15, 16], list(range(100, 140))]
    params = [SamplingParams(temperature=0.6, seed=s, max_tokens=50, ignore_eos=True) for s in range(4)]
    engine = dict(max_num_batched_tokens=4, max_num_seqs=4)
    (want, _), = _tokens(q06b, [(prompts, params)], graph_sampling=False, **engine)
    (got, counted), = _tokens(q06b, [(prompts, params)], graph_sampling=True, **engine)
    assert got == want and counted["steps"] > 0, counted
