"""The reference: HF transformers on the same checkpoint, greedy, token by token.

The engine is correct when it picks the same greedy tokens as this loop and its logits are
close. The loop is deliberately plain (full recompute each step, no cache): slow, obviously right.
"""
from __future__ import annotations

import inspect

import torch


def load_hf_model(model_dir: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    return model.to(device).eval()


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int, *, use_cache: bool = True
              ) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens and the float32 logits that chose them ([max_new_tokens, vocab], on CPU).

    EOS is ignored, like SamplingParams(ignore_eos=True), so every prompt yields the same count."""
    device = next(model.parameters()).device
    # transformers renamed `past_key_values` to `cache` (5.2x); use whichever this version takes
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = torch.tensor([prompt_ids], device=device)
    tokens, logits, past = [], [], None
    step_input = ids
    for _ in range(max_new_tokens):
        out = model(input_ids=step_input if use_cache else ids, use_cache=use_cache, **{cache_arg: past})
        last = out.logits[0, -1].float()
        token = int(last.argmax())
        tokens.append(token)
        logits.append(last.cpu())
        ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
        past = getattr(out, cache_arg) if use_cache else None
        step_input = ids[:, -1:]
    return tokens, torch.stack(logits)


def compare(engine_tokens: list[list[int]], engine_logits: list[torch.Tensor],
            ref_tokens: list[list[int]], ref_logits: list[torch.Tensor], *, tie_tol: float = 2e-2) -> dict:
    """Greedy agreement between two runs of the same prompts.

    token_match_rate    tokens equal up to each sequence's first divergence, over all tokens
                        (after a divergence the two runs see different inputs: not comparable).
    near_tie_divergences  divergences where the reference itself barely preferred its token:
                        its logit margin over the engine's pick was <= tie_tol x max|logit|.
                        bf16 rounding (~1e-2 relative) flips such near-ties; random-weight
                        models, whose logits are nearly flat, have many of them.
    match_rate_excl_ties  as token_match_rate, but a sequence that diverged at a near-tie is
                        counted only up to that point. Where every sequence diverged at its
                        first token at a near-tie, no token is left that could mismatch: 1.0
                        (nothing compared at all: 0.0, like token_match_rate).
    first_step_logit_rel_err  max |engine - ref| / max |ref| at the first step (worst prompt).
    """
    matched = total = total_excl = ties = 0
    first_step_err = 0.0
    for et, el, rt, rl in zip(engine_tokens, engine_logits, ref_tokens, ref_logits):
        step = next((i for i, (a, b) in enumerate(zip(et, rt)) if a != b), None)
        matched += len(rt) if step is None else step
        total += len(rt)
        total_excl += len(rt)
        if step is not None:
            margin = float(rl[step][rt[step]] - rl[step][et[step]])
            if margin <= tie_tol * float(rl[step].abs().max()):
                ties += 1
                total_excl -= len(rt) - step
        first_step_err = max(first_step_err, float((el[0] - rl[0]).abs().max() / rl[0].abs().max()))
    if total_excl:
        excl_ties = matched / total_excl
    else:   # every token lies after a near-tie divergence (1.0), or there were no tokens (0.0)
        excl_ties = 1.0 if total else 0.0
    return {"token_match_rate": matched / max(total, 1), "near_tie_divergences": ties,
            "match_rate_excl_ties": excl_ties, "first_step_logit_rel_err": first_step_err}
