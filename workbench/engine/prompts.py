"""What a prompt may be, checked by type before anything is queued.

A prompt is text (a str, tokenized by the checkpoint's tokenizer with its defaults, so a
tokenizer that adds BOS adds it here too), a conversation (chat(): the tokenizer's chat
template makes the ids, as HF's apply_chat_template does) or token ids: a list of ints,
or a 1-D integer numpy array / torch tensor (converted to a list). A batch is a list of prompts
or a 2-D integer array. Anything else -- float ids, string ids, a float tensor -- is a TypeError
that names the value: silently turning 1.9 into 1 would give a wrong answer with no warning.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from .sampling_params import SamplingParams

_ARRAYS = (np.ndarray, torch.Tensor)


def prompt_list(prompts) -> list:
    """One prompt or a batch of them -> a list of prompts."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, _ARRAYS):
        if prompts.ndim not in (1, 2):
            raise TypeError(f"a token-id array of shape {tuple(prompts.shape)}: give one prompt as a 1-D "
                            "array or a batch as a 2-D array (or a list of 1-D ones)")
        return [prompts] if prompts.ndim == 1 else list(prompts)
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts={prompts!r} ({type(prompts).__name__}): give a string, a list of token ids, "
                        "or a list of those")
    if prompts and not isinstance(prompts[0], (str, list, tuple, *_ARRAYS)):
        return [prompts]   # a flat list: the token ids of one prompt
    return list(prompts)


def token_ids_of(prompt) -> list[int]:
    """The token ids of a non-text prompt, as Python ints."""
    if isinstance(prompt, _ARRAYS):
        is_int = (not (prompt.is_floating_point() or prompt.is_complex()) and prompt.dtype != torch.bool
                  if isinstance(prompt, torch.Tensor) else np.issubdtype(prompt.dtype, np.integer))
        if not is_int or prompt.ndim != 1:
            raise TypeError(f"a {prompt.dtype} array of shape {tuple(prompt.shape)} as one prompt: token ids "
                            "are a 1-D array of integers (an int64 tensor or array, or a list of ints)")
        return [int(t) for t in prompt.tolist()]
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"prompt {prompt!r} ({type(prompt).__name__}) is neither a string nor a list of token ids")
    for position, t in enumerate(prompt):
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise TypeError(f"token id {t!r} at position {position} is a {type(t).__name__}, not an int: "
                            "pass token ids as ints (or the prompt as one string)")
    return [int(t) for t in prompt]


def params_list(params, count: int) -> list[SamplingParams]:
    """One SamplingParams for all prompts, or one each."""
    params = SamplingParams() if params is None else params
    if isinstance(params, SamplingParams):
        return [params] * count
    if not isinstance(params, (list, tuple)) or not all(isinstance(p, SamplingParams) for p in params):
        raise TypeError(f"params={params!r}: give a SamplingParams, a list of them (one per prompt), or None")
    if len(params) != count:
        raise ValueError(f"{count} prompts but {len(params)} SamplingParams: give one, or one each")
    return list(params)


def chat_prompts(tokenizer, conversations, model: str) -> tuple[list[list[int]], list[str]]:
    """Token ids (and text) of each conversation through the tokenizer's chat template,
    exactly as HF's apply_chat_template(..., add_generation_prompt=True) makes them."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the checkpoint {model} has no chat template (no 'chat_template' in "
                         "tokenizer_config.json, no chat_template.jinja): it is probably a base model, not "
                         "an instruct one. Use generate() with a text prompt, or an -Instruct checkpoint")
    if not isinstance(conversations, (list, tuple)):
        raise TypeError(f"messages={conversations!r}: give a list of messages such as "
                        "[{'role': 'user', 'content': 'Hello'}] (or a list of such lists)")
    if conversations and isinstance(conversations[0], dict):
        conversations = [conversations]   # one conversation
    for conv in conversations:
        if not (isinstance(conv, (list, tuple)) and conv
                and all(isinstance(m, dict) and "role" in m and "content" in m for m in conv)):
            raise TypeError(f"conversation {conv!r}: give a list of messages such as "
                            "[{'role': 'user', 'content': 'Hello'}] (or a list of such lists)")
    ids = [tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"]
           for c in conversations]
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    return ids, texts
