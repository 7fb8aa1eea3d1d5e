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


def test_match_rate_excl_ties_when_every_token_follows_a_near_tie():
    """Where every sequence diverges at its first token at a near-tie, every token is set aside:
    none is left that could mismatch, so the rate outside near-ties is 1.0. It was 0.0 (0 / max(0, 1)),
    the value of a real mismatch: chapter 01's toy printed the same 0.0 for a near-tie flip and a bug."""
    import torch
    reference = torch.tensor([[2.00, 1.99, -1.0]])      # the reference barely prefers token 0
    clear = torch.tensor([[3.0, 1.0, -1.0]])            # the reference clearly prefers token 0
    flipped = torch.tensor([[1.99, 2.00, -1.0]])        # the engine picks token 1
    tie = compare([[1]], [flipped], [[0]], [reference])
    assert tie["near_tie_divergences"] == 1 and tie["token_match_rate"] == 0.0
    assert tie["match_rate_excl_ties"] == 1.0, tie
    bug = compare([[1]], [flipped], [[0]], [clear])
    assert bug["near_tie_divergences"] == 0 and bug["match_rate_excl_ties"] == 0.0, bug
    both = compare([[1], [1]], [flipped, flipped], [[0], [0]], [reference, clear])   # one tie, one bug
    assert both["near_tie_divergences"] == 1 and both["match_rate_excl_ties"] == 0.0, both
    later = compare([[0, 1]], [torch.cat([clear, flipped])], [[0, 0]], [torch.cat([clear, reference])])
    assert later["token_match_rate"] == 0.5 and later["match_rate_excl_ties"] == 1.0, later
    nothing = compare([], [], [], [])                   # nothing compared: no rate can pass
    assert nothing["token_match_rate"] == 0.0 and nothing["match_rate_excl_ties"] == 0.0, nothing
