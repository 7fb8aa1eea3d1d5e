"""Bad input is refused by type as well as range, before anything is queued, with a message
that names the value; and the small lifecycle cases (closed engine, idle step, progress bar)."""
import math

import numpy as np
import pytest
import torch

from workbench import LLM, EngineConfig, SamplingParams
from workbench.engine import llm as llm_module
from workbench.engine.sampler import Sampler
from workbench.engine.sequence import Sequence

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_ckpt):
    with LLM(tiny_ckpt, block_size=16, max_model_len=256, num_kv_blocks=64) as engine:
        yield engine


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(seed="abc"), TypeError, "seed='abc' \\(str\\) must be an int"),
    (dict(seed=1.5), TypeError, "seed=1.5 \\(float\\)"),
    (dict(seed=True), TypeError, "seed=True \\(bool\\)"),
    (dict(seed=2**64), ValueError, f"seed={2**64} is outside what torch.Generator.manual_seed accepts"),
    (dict(seed=-2**63 - 1), ValueError, f"seed={-2**63 - 1} is outside"),
    (dict(stop_token_ids=5), TypeError, "stop_token_ids=5 \\(int\\) must be a list of ints"),
    (dict(stop_token_ids=[2, 1.0]), TypeError, "stop_token_ids=\\[2, 1.0\\]"),
    (dict(stop_token_ids=[-1]), ValueError, "stop_token_ids contains -1"),
    (dict(max_tokens=2.5), TypeError, "max_tokens=2.5 \\(float\\) must be an int"),
    (dict(max_tokens=True), TypeError, "max_tokens=True \\(bool\\)"),
    (dict(top_k=2.5), TypeError, "top_k=2.5 \\(float\\)"),
    (dict(temperature="0.5"), TypeError, "temperature='0.5' \\(str\\) must be a number"),
    (dict(temperature=math.nan), ValueError, "temperature=nan must be a finite number"),
    (dict(temperature=math.inf), ValueError, "temperature=inf must be a finite number"),
    (dict(top_p=None), TypeError, "top_p=None"),
    (dict(ignore_eos=1), TypeError, "ignore_eos=1 \\(int\\) must be True or False"),
])
def test_bad_sampling_params_name_the_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        SamplingParams(**kwargs)


def test_good_sampling_params_are_normalized():
    p = SamplingParams(seed=np.int64(3), max_tokens=np.int32(5), top_k=7, temperature=1, stop_token_ids=(4,))
    assert (p.seed, p.max_tokens, p.temperature, p.stop_token_ids) == (3, 5, 1.0, [4])
    assert type(p.seed) is int and type(p.max_tokens) is int
    for seed in (-2**63, -1, 2**64 - 1):   # the whole range manual_seed takes
        torch.Generator().manual_seed(SamplingParams(seed=seed).seed)


@pytest.mark.parametrize("prompts,error,match", [
    ([[1.9, 2.7]], TypeError, "token id 1.9 at position 0 is a float"),
    ([1, 2.7], TypeError, "token id 2.7 at position 1 is a float"),
    ([["5", "6"]], TypeError, "token id '5' at position 0 is a str"),
    ([[1, True]], TypeError, "token id True at position 1 is a bool"),
    (torch.tensor([1.0, 2.0]), TypeError, "a torch.float32 array of shape \\(2,\\) as one prompt"),
    (np.array([[1.5, 2.0]]), TypeError, "a float64 array of shape \\(2,\\) as one prompt"),
    (torch.zeros(1, 2, 2, dtype=torch.long), TypeError, "shape \\(1, 2, 2\\)"),
    ([[1, 2], 7], TypeError, "prompt 7 \\(int\\) is neither a string nor a list"),
    (3, TypeError, "prompts=3 \\(int\\)"),
    ([[1, 2, 3]], ValueError, "stop token id 999 is outside the vocabulary \\[0, 512\\)"),
])
def test_bad_prompts_are_refused_before_anything_is_queued(llm, prompts, error, match):
    params = SamplingParams(max_tokens=4, stop_token_ids=[999]) if error is ValueError else GREEDY
    batch = isinstance(prompts, list) and isinstance(prompts[0], list)
    with pytest.raises(error, match=match):   # (a batch: after a good request, which is not queued either)
        llm.generate([[3, 4]] + prompts if batch else prompts, params, use_tqdm=False)
    with pytest.raises(error, match=match):
        llm.stream(prompts, params)   # refused at the call, not at the first next()
    assert not llm.scheduler.has_unfinished()


def test_integer_arrays_are_token_ids(llm):
    ids = [[3, 4, 5], [6, 7, 8]]
    want = [o.token_ids for o in llm.generate(ids, GREEDY, use_tqdm=False)]
    for batch in (np.array(ids), torch.tensor(ids), [np.array(ids[0], np.int32), torch.tensor(ids[1])]):
        assert [o.token_ids for o in llm.generate(batch, GREEDY, use_tqdm=False)] == want
    assert llm.generate(torch.tensor(ids[1]), GREEDY, use_tqdm=False)[0].token_ids == want[1]   # 1-D: one prompt


def test_tiny_temperatures_are_greedy(llm):
    greedy = llm.generate([[3, 4, 5]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    for t in (1e-39, 1e-30, 1e-6):
        tiny = SamplingParams(temperature=t, max_tokens=8, ignore_eos=True, seed=1)
        assert llm.generate([[3, 4, 5]], tiny, use_tqdm=False)[0].token_ids == greedy[0].token_ids, t
    logits = torch.randn(3, 50) * 30
    rows = [Sequence(0, [1], SamplingParams(temperature=t)) for t in (1e-39, 1.0, 1e-20)]
    picks = Sampler("cpu", seed=0)(logits, rows)   # a batch mixing tiny and normal temperatures
    assert picks[0] == logits[0].argmax() and picks[2] == logits[2].argmax()


@pytest.mark.parametrize("value", [0, -5, 2.5, True])
def test_max_model_len_must_be_a_positive_int(tiny_ckpt, value):
    with pytest.raises(ValueError, match=f"max_model_len={value!r} must be an integer >= 1"):
        EngineConfig(model=str(tiny_ckpt), max_model_len=value)


def test_a_closed_engine_says_so(tiny_ckpt):
    llm = LLM(tiny_ckpt, max_model_len=128, num_kv_blocks=16, block_size=16)
    assert llm.step() == []   # idle: nothing to do is not an error
    llm.close()
    for call in (llm.describe, lambda: llm.generate([[1, 2]], GREEDY), lambda: llm.stream([[1, 2]], GREEDY),
                 lambda: llm.chat([{"role": "user", "content": "hi"}]), llm.step):
        with pytest.raises(RuntimeError, match="this engine is closed"):
            call()


def test_progress_bar_counts_finished_requests(tiny_ckpt, monkeypatch):
    seen = []

    class Bar:   # records the bar's count after every update
        def __init__(self, total, **kwargs):
            self.total, self.n = total, 0

        def update(self, k):
            self.n += k
            seen.append(self.n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(llm_module, "tqdm", Bar)
    with LLM(tiny_ckpt, max_model_len=128, num_kv_blocks=32, block_size=16, decode_steps=8) as llm:
        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (3, 20, 9)]
        llm.generate([[1, 2], [3, 4], [5, 6]], params)
    assert seen[-1] == 3 and max(seen) == 3 and seen == sorted(seen)
