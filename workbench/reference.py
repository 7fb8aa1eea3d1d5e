"""The reference: HF transformers on the same checkpoint, greedy, token by token.

The engine is correct when it picks the same greedy tokens as this loop and its logits are
close. The loop is deliberately plain (full recompute each step, no cache): slow, obviously right.
"""
from __future__ import annotations

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
    ids = torch.tensor([prompt_ids], device=device)
    tokens, logits, past = [], [], None
    step_input = ids
    for _ in range(max_new_tokens):
        out = model(input_ids=step_input if use_cache else ids, past_key_values=past, use_cache=use_cache)
        last = out.logits[0, -1].float()
        token = int(last.argmax())
        tokens.append(token)
        logits.append(last.cpu())
        ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
        past = out.past_key_values if use_cache else None
        step_input = ids[:, -1:]
    return tokens, torch.stack(logits)


def compare(engine_tokens: list[list[int]], engine_logits: list[torch.Tensor],
            ref_tokens: list[list[int]], ref_logits: list[torch.Tensor]) -> dict:
    """Token match rate, and the logit error of the first step (before any divergence).

    rel error = max |engine - ref| / max |ref| over the vocabulary, worst over prompts."""
    matched = total = 0
    first_step_err = 0.0
    for et, el, rt, rl in zip(engine_tokens, engine_logits, ref_tokens, ref_logits):
        for a, b in zip(et, rt):   # count up to the first divergence: after it, inputs differ
            if a != b:
                break
            matched += 1
        total += len(rt)
        first_step_err = max(first_step_err, float((el[0] - rl[0]).abs().max() / rl[0].abs().max()))
    return {"token_match_rate": matched / max(total, 1), "first_step_logit_rel_err": first_step_err}
