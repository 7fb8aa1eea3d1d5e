"""Chunked prefill, prefix caching and preemption change *how* the work is done, never the tokens."""
import random

import pytest

from workbench import LLM, Optimizations, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _run(ckpt, prompts, **kwargs):
    kwargs = {"block_size": 16, "max_model_len": 512, **kwargs}
    with LLM(ckpt, opts=Optimizations(attention="sdpa"), **kwargs) as llm:
        outs = llm.generate(prompts, GREEDY, use_tqdm=False)
        return [o.token_ids for o in outs], llm.stats


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(1)
    return [[rng.randrange(1, 512) for _ in range(n)] for n in (3, 40, 150, 200, 260, 7, 90, 33)]


@pytest.fixture(scope="module")
def reference(tiny_ckpt, prompts):
    tokens, _ = _run(tiny_ckpt, prompts, chunked_prefill=False, enable_prefix_caching=False,
                     max_num_batched_tokens=4096)
    return tokens


def test_chunked_prefill_same_tokens(tiny_ckpt, prompts, reference):
    # a 64-token budget splits every long prompt into several chunks that share steps with decodes
    tokens, stats = _run(tiny_ckpt, prompts, chunked_prefill=True, enable_prefix_caching=False,
                         max_num_batched_tokens=64)
    assert tokens == reference
    assert stats.steps > GREEDY.max_tokens + 4   # prompt chunks took steps of their own


def test_prefix_caching_same_tokens_and_skips_prefill(tiny_ckpt, prompts, reference):
    shared = prompts[4][:128]   # 8 full blocks of 16 shared by every prompt
    with_prefix = [shared + p for p in prompts]
    expected, off_stats = _run(tiny_ckpt, with_prefix, enable_prefix_caching=False, max_num_batched_tokens=256)
    tokens, on_stats = _run(tiny_ckpt, with_prefix, enable_prefix_caching=True, max_num_batched_tokens=256)
    assert tokens == expected
    assert off_stats.prefix_hit_tokens == 0
    # the first prompt computes the shared blocks, later ones (admitted in later steps) reuse them
    assert on_stats.prefix_hit_tokens >= 128
    assert on_stats.prefill_tokens == off_stats.prefill_tokens - on_stats.prefix_hit_tokens


def test_prefix_cache_hit_on_repeat_request(tiny_ckpt, prompts):
    with LLM(tiny_ckpt, block_size=16, max_model_len=512) as llm:
        first = llm.generate([prompts[3]], GREEDY, use_tqdm=False)[0]
        again = llm.generate([prompts[3]], GREEDY, use_tqdm=False)[0]
    assert again.token_ids == first.token_ids
    assert again.stats.num_cached_prompt_tokens == (len(prompts[3]) - 1) // 16 * 16


@pytest.mark.parametrize("chunked", [True, False])
def test_preemption_same_tokens(tiny_ckpt, prompts, reference, chunked):
    # 24 blocks of 16 tokens hold one 284-token sequence, not 8 sequences of 27 to 284 tokens
    tokens, stats = _run(tiny_ckpt, prompts, num_kv_blocks=24, chunked_prefill=chunked,
                         enable_prefix_caching=False, max_num_batched_tokens=4096)
    assert stats.preemptions > 0
    assert tokens == reference
