"""Multi-step decoding (EngineConfig.decode_steps > 1) changes how often the host looks, never
the tokens: greedy and seeded sampling, stop tokens, max_tokens, preemption and streaming."""
import random

import pytest

from workbench import LLM, Optimizations, SamplingParams

ENGINE = {"block_size": 16, "max_model_len": 512}


def _run(ckpt, prompts, params, **kwargs):
    with LLM(ckpt, opts=Optimizations(attention="sdpa"), **{**ENGINE, **kwargs}) as llm:
        outs = llm.generate(prompts, params, use_tqdm=False)
        return [(o.token_ids, o.finish_reason) for o in outs], llm.stats


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(2)
    return [[rng.randrange(1, 512) for _ in range(n)] for n in (3, 40, 150, 7, 90, 33)]


def _mixed_params(reference_tokens):
    """Greedy with different lengths, a stop token met mid-way, and seeded sampling."""
    rng = random.Random(3)
    params = []
    for i, tokens in enumerate(reference_tokens):
        if i % 3 == 0:
            params.append(SamplingParams(temperature=0, max_tokens=rng.randint(1, 30), ignore_eos=True))
        elif i % 3 == 1:   # stop at a token the greedy run produces at step 5: mid-way through a round
            params.append(SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop_token_ids=[tokens[5]]))
        else:
            params.append(SamplingParams(temperature=0.8, top_p=0.9, seed=100 + i, max_tokens=25, ignore_eos=True))
    return params


@pytest.mark.parametrize("async_rounds", [False, True])   # (async_rounds: tests/test_async_rounds.py)
@pytest.mark.parametrize("decode_steps", [2, 4, 7])
def test_multi_step_same_tokens(tiny_ckpt, prompts, decode_steps, async_rounds):
    greedy, _ = _run(tiny_ckpt, prompts, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    params = _mixed_params([tokens for tokens, _ in greedy])
    want, one_stats = _run(tiny_ckpt, prompts, params)
    got, stats = _run(tiny_ckpt, prompts, params, decode_steps=decode_steps, async_rounds=async_rounds)
    assert got == want
    assert len(stats.step_seconds) < len(one_stats.step_seconds)   # fewer rounds of the host loop
    assert stats.decode_tokens == one_stats.decode_tokens           # no dropped token counted as work done
    assert sum(stats.step_kind_tokens.values()) == sum(one_stats.step_kind_tokens.values())


@pytest.mark.parametrize("async_rounds", [False, True])
def test_multi_step_with_preemption(tiny_ckpt, prompts, async_rounds):
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    want, _ = _run(tiny_ckpt, prompts, params, num_kv_blocks=200)
    got, stats = _run(tiny_ckpt, prompts, params, num_kv_blocks=24, decode_steps=4,   # too few blocks
                      async_rounds=async_rounds)
    assert stats.preemptions > 0
    assert got == want


@pytest.mark.parametrize("async_rounds", [False, True])
def test_multi_step_streams_every_token_once(tiny_ckpt, prompts, async_rounds):
    params = SamplingParams(temperature=0, max_tokens=13, ignore_eos=True)
    with LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), decode_steps=4, async_rounds=async_rounds,
             **ENGINE) as llm:
        events = list(llm.stream(prompts[:3], params))
        want = [o.token_ids for o in llm.generate(prompts[:3], params, use_tqdm=False)]
    for rid, tokens in zip(sorted({e.request_id for e in events}), want):
        mine = [e for e in events if e.request_id == rid]
        assert [e.token_id for e in mine] == tokens
        assert [e.finished for e in mine] == [False] * (len(tokens) - 1) + [True]


def test_decode_steps_must_be_positive(tiny_ckpt):
    with pytest.raises(ValueError, match="decode_steps"):
        LLM(tiny_ckpt, decode_steps=0)


def test_advance_on_the_device_is_next_decode_step_on_the_host():
    """graph_rounds moves a captured round's inputs on the device (multi_step.advance); they must be
    what the host makes for the same step (step_inputs.next_decode_step), step after step, and a
    graph's padding rows (slot -1, one key) must stay as they are."""
    import numpy as np
    import torch

    from workbench.engine.step_inputs import next_decode_step, pack_step
    from workbench.optimizations.multi_step import advance
    bs, width, pad = 4, 6, 2
    rng = np.random.default_rng(0)
    tables = [list(rng.permutation(40)[:width]) for _ in range(3)]
    lengths = [1, 4, 9]   # the newest token at a block's start, its end, and inside one
    step = pack_step([(list(range(n)), table, n - 1, n) for n, table in zip(lengths, tables)], bs)
    ids = torch.tensor(list(step.input_ids) + [0] * pad)
    pos = torch.tensor(list(step.positions) + [0] * pad)
    slots = torch.tensor(list(step.slot_mapping) + [-1] * pad)
    lens = torch.tensor(list(step.seq_lens) + [1] * pad, dtype=torch.int32)
    table = torch.tensor(np.vstack([step.block_tables, rng.integers(0, 40, (pad, width))]), dtype=torch.int32)
    for i in range(width * bs - max(lengths)):
        sampled = torch.arange(100 + 10 * i, 105 + 10 * i)
        advance(ids, pos, slots, lens, table, sampled, bs)
        step = next_decode_step(step, bs)
        assert ids[:3].tolist() == sampled[:3].tolist() and ids[3:].tolist() == [0] * pad, i
        assert pos[:3].tolist() == step.positions.tolist() and pos[3:].tolist() == [0] * pad, i
        assert slots[:3].tolist() == step.slot_mapping.tolist() and slots[3:].tolist() == [-1] * pad, i
        assert lens[:3].tolist() == step.seq_lens.tolist() and lens[3:].tolist() == [1] * pad, i


def test_graph_rounds_needs_steps_and_graphs(tiny_ckpt):
    with pytest.raises(ValueError, match="set decode_steps > 1"):
        LLM(tiny_ckpt, graph_rounds=True)
    with pytest.raises(ValueError, match="turn cuda_graphs on"):
        LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), graph_rounds=True, decode_steps=4)


def test_graph_sampling_needs_graphs_and_the_fused_sampler(tiny_ckpt):
    """graph_sampling (optimizations/graph_sampling.py) is refused where it cannot run, never ignored."""
    with pytest.raises(ValueError, match="graph_sampling=True: it records the sampler in the decode graphs, "
                                         "and cuda_graphs is off.*or graph_sampling=False"):
        LLM(tiny_ckpt, opts=Optimizations.all_on(), graph_sampling=True)   # (a CPU: the preset drops graphs)
    with pytest.raises(ValueError, match="graph_sampling=.* must be True or False"):
        LLM(tiny_ckpt, graph_sampling="yes")
    with LLM(tiny_ckpt, opts=Optimizations.all_off()) as llm:
        assert "graph_sampling" not in llm.describe()
    from types import SimpleNamespace

    from workbench.engine.describe import _rounds_text, _sampling_text
    on = SimpleNamespace(fused_sampling=True, graph_sampling=True, graph_rounds=True, decode_steps=8, async_rounds=True)
    assert "recorded in each decode graph" in _sampling_text(on) and "top-k/top-p" in _sampling_text(on)
    assert "a round without top-k/top-p rows one graph replay" in _rounds_text(on)
    off = SimpleNamespace(**{**vars(on), "graph_sampling": False})
    assert "after each step's forward" in _sampling_text(off) and "a greedy round" in _rounds_text(off)


def test_a_sequence_near_its_end_does_not_cut_the_round_short(tiny_ckpt, prompts):
    """Two sequences, 2 and 17 tokens wanted, 8 steps a round: the first ends inside the first
    round (its extra tokens dropped) instead of cutting that round to 1 step for both -- a prefill
    step, then 2 rounds of 8 (cut at the first to finish: a prefill step, then 1 + 8 + 7)."""
    params = [SamplingParams(temperature=0, max_tokens=2, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=17, ignore_eos=True)]
    want, one_stats = _run(tiny_ckpt, prompts[:2], params)
    got, stats = _run(tiny_ckpt, prompts[:2], params, decode_steps=8)
    assert got == want and [len(tokens) for tokens, _ in got] == [2, 17]
    assert stats.decode_tokens == one_stats.decode_tokens   # the 7 dropped tokens are not counted as work
    assert len(stats.step_seconds) == 3, len(stats.step_seconds)


def test_a_cache_too_full_for_the_round_gets_a_shorter_round():
    """plan_decode_steps: blocks for 8 more steps do not fit (3 blocks of 4 tokens, 7 computed),
    blocks for 4 do: a round of 4, not a fall back to 1 step."""
    from workbench.engine.block_manager import BlockManager
    from workbench.engine.scheduler import Scheduler
    from workbench.engine.sequence import Sequence
    blocks = BlockManager(3, 4, enable_prefix_caching=False)
    scheduler = Scheduler(blocks, max_num_seqs=1, max_num_batched_tokens=64, chunked_prefill=True)
    seq = Sequence(0, list(range(7)), SamplingParams(temperature=0, max_tokens=100))
    seq.token_ids.append(7)          # its first token, sampled by the prefill
    seq.num_computed_tokens = 7
    assert blocks.allocate(seq, 1)   # what schedule() reserves for the step itself
    assert scheduler.plan_decode_steps([(seq, 1)], max_steps=8, max_model_len=100) == 4
    assert len(seq.block_table) == 3
