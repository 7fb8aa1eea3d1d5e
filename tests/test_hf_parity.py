"""Same weights through HF transformers and through the engine: same greedy tokens, close logits."""
import random

import pytest

from workbench import LLM, Optimizations, SamplingParams
from workbench.reference import compare, hf_greedy, load_hf_model

LENGTHS = [1, 5, 17, 64, 127, 128, 129, 300, 333]
NEW_TOKENS = 32


def _prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(n)] for n in LENGTHS]


@pytest.mark.parametrize("ckpt_name,attention", [("tiny_ckpt", "sdpa"), ("tiny_ckpt", "naive"),
                                                 ("tiny_llama_ckpt", "sdpa")])
def test_engine_matches_hf(ckpt_name, attention, request):
    ckpt = request.getfixturevalue(ckpt_name)
    hf = load_hf_model(str(ckpt))
    prompts = _prompts(hf.config.vocab_size)
    ref = [hf_greedy(hf, p, NEW_TOKENS) for p in prompts]
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, return_logits=True)
    with LLM(ckpt, opts=Optimizations(attention=attention), block_size=16,
             max_num_batched_tokens=256, max_model_len=512) as llm:
        outs = llm.generate(prompts, params, use_tqdm=False)
    report = compare([o.token_ids for o in outs], [o.logits for o in outs],
                     [t for t, _ in ref], [lg for _, lg in ref])
    assert report["token_match_rate"] == 1.0, report
    worst = max(float((o.logits - lg).abs().max() / lg.abs().max()) for o, (_, lg) in zip(outs, ref))
    assert worst < 1e-4, worst
