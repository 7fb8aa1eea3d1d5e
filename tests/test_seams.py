"""The seams (engine/overrides.py): each replacement changes behaviour observably, and one that is
equivalent to the built-in leaves greedy tokens identical."""
import itertools
import random

import pytest
import torch

from workbench import LLM, SamplingParams
from workbench.assets import DEFAULT_MODEL_DIR, make_sort_prompts
from workbench.attention.sdpa import SdpaAttention
from workbench.engine.block_manager import block_hash
from workbench.model.layers import plain_add_rms_norm, plain_rope

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
KW = {"block_size": 16, "max_model_len": 256}


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(3)
    return [[rng.randrange(1, 512) for _ in range(n)] for n in (5, 40, 70)]


def _tokens(ckpt, prompts, overrides=None, params=GREEDY, **kwargs):
    with LLM(ckpt, overrides=overrides, **{**KW, **kwargs}) as llm:
        return [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def reference(tiny_ckpt, prompts):
    return _tokens(tiny_ckpt, prompts)


# The trained sorter shows a wrong piece at once (the random tiny model repeats one token anyway).
SORT = [prompt for prompt, _ in make_sort_prompts(4, seed=5, min_len=5)]
SORT_PARAMS = SamplingParams(temperature=0, max_tokens=10)


@pytest.fixture(scope="module")
def sorted_ref():
    return _tokens(DEFAULT_MODEL_DIR, SORT, params=SORT_PARAMS, max_model_len=64)


def counting(fn):
    def wrapper(*args):
        wrapper.calls += 1
        return fn(*args)
    wrapper.calls = 0
    return wrapper


def test_bad_overrides_are_refused_before_loading(tiny_ckpt):
    with pytest.raises(ValueError, match="unknown override 'attn'.*block_hasher.*sampler.*add_rms_norm"):
        LLM(tiny_ckpt, overrides={"attn": print})
    with pytest.raises(TypeError, match=r"overrides\['sampler'\] must be a function"):
        LLM(tiny_ckpt, overrides={"sampler": 3})
    with pytest.raises(TypeError, match="must be a dict"):
        LLM(tiny_ckpt, overrides=[print])
    with pytest.raises(ValueError, match="tensor_parallel_size=1"):
        LLM(tiny_ckpt, overrides={"attention": print}, tensor_parallel_size=2, device="cpu")


def test_attention_wrapper_counts_calls_and_keeps_tokens(tiny_ckpt, prompts, reference):
    attn = counting(SdpaAttention())
    with LLM(tiny_ckpt, overrides={"attention": attn}, **KW) as llm:
        tokens = [o.token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
        assert "attention=" in llm.describe()
        layers, steps = llm.model_config.num_layers, llm.stats.steps
    assert tokens == reference
    assert attn.calls == layers * steps   # every layer, every step goes through the student's function


def test_attention_that_ignores_the_cache_changes_tokens(sorted_ref):
    def zeros(q, k_cache, v_cache, meta, scale):
        return torch.zeros_like(q)
    assert _tokens(DEFAULT_MODEL_DIR, SORT, {"attention": zeros}, SORT_PARAMS, max_model_len=64) != sorted_ref


def test_block_hasher_is_called_and_a_chaotic_one_kills_prefix_hits(tiny_ckpt, prompts):
    prompt = prompts[2]   # 70 tokens: 4 full blocks of 16 can be reused
    hasher = counting(block_hash)
    fresh = itertools.count()
    for overrides, want_hits in (({"block_hasher": hasher}, 64), ({"block_hasher": lambda p, t: next(fresh)}, 0)):
        with LLM(tiny_ckpt, overrides=overrides, **KW) as llm:
            first = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
            again = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
        assert again.token_ids == first.token_ids
        assert again.stats.num_cached_prompt_tokens == want_hits
    assert hasher.calls > 0


def test_preemption_policy_picks_the_victim(tiny_ckpt):
    rng = random.Random(1)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (60, 50, 40, 30)]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    tight = {"num_kv_blocks": 10, "enable_prefix_caching": False}   # 160 slots for 4 growing requests

    def run(overrides):
        with LLM(tiny_ckpt, overrides=overrides, **KW, **tight) as llm:
            outs = llm.generate(prompts, params, use_tqdm=False)
        return [o.token_ids for o in outs], [o.stats.num_preemptions for o in outs]

    base_tokens, base_victims = run(None)
    oldest_tokens, oldest_victims = run({"preemption": lambda running: running[0]})
    assert sum(base_victims) > 0 and sum(oldest_victims) > 0
    assert oldest_victims != base_victims   # another request paid for the shortage
    assert oldest_tokens == base_tokens     # preemption recomputes: tokens never change
    with pytest.raises(ValueError, match="preemption policy returned"):
        run({"preemption": lambda running: None})


def test_sampler_override(tiny_ckpt, prompts, reference):
    seen = []

    def argmax(logits, seqs):
        seen.extend((seq.params.seed, seq.generator) for seq in seqs)
        assert logits.dtype == torch.float32 and logits.shape[0] == len(seqs)
        return logits.argmax(dim=-1)

    assert _tokens(tiny_ckpt, prompts, {"sampler": argmax}) == reference
    assert all(isinstance(g, torch.Generator) for _, g in seen)
    zero = _tokens(tiny_ckpt, prompts, {"sampler": lambda logits, seqs: torch.zeros(len(seqs), dtype=torch.int64)})
    assert all(t == 0 for out in zero for t in out)
    with pytest.raises(TypeError, match="int64 tensor of shape"):
        _tokens(tiny_ckpt, prompts, {"sampler": lambda logits, seqs: logits.argmax(-1).tolist()})


def test_seeded_request_has_its_own_generator(tiny_ckpt, prompts):
    gens = {}

    def record(logits, seqs):
        for seq in seqs:
            gens.setdefault(seq.request_id, seq.generator)
        return logits.argmax(dim=-1)

    params = [SamplingParams(max_tokens=2, seed=7), SamplingParams(max_tokens=2), SamplingParams(max_tokens=2)]
    with LLM(tiny_ckpt, overrides={"sampler": record}, **KW) as llm:
        llm.generate(prompts, params, use_tqdm=False)
        shared = llm.runner.generator
    assert gens[0] is not shared and gens[0].initial_seed() == 7
    assert gens[1] is shared and gens[2] is shared


def test_layer_forms_are_seams(tiny_ckpt, prompts, reference):
    add_norm, rope = counting(plain_add_rms_norm), counting(plain_rope)
    assert _tokens(tiny_ckpt, prompts, {"add_rms_norm": add_norm, "rope": rope}) == reference
    assert add_norm.calls > 0 and rope.calls > 0   # rope also serves Qwen3's q/k norm path

def test_a_wrong_layer_form_changes_tokens(sorted_ref):
    wrong = _tokens(DEFAULT_MODEL_DIR, SORT, {"silu_and_mul": lambda gate_up: gate_up.chunk(2, dim=-1)[1]},
                    SORT_PARAMS, max_model_len=64)
    assert wrong != sorted_ref
