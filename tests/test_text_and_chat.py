"""Text prompts and chat() tokenize exactly as the checkpoint's HF tokenizer does.

The tokenizers are real BPE tokenizers trained here with the `tokenizers` library, one with a
BOS-adding post-processor (as Llama's), one without, one with a chat template.
"""
import json
import shutil

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

from workbench import LLM, SamplingParams

CORPUS = ["the quick brown fox jumps over the lazy dog", "sort: 3 1 2 -> 1 2 3", "hello world, hello there",
          "<|user|> what is two plus two? <|assistant|> four"] * 20
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PARAMS = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
PROMPTS = ["hello world", "the lazy fox, sorted: 3 1 2", "é?"]


def _bpe_checkpoint(src, dst, *, bos: bool, chat_template: str | None = None):
    """A copy of the tiny checkpoint with a trained byte-level BPE tokenizer (< 512 ids)."""
    shutil.copytree(src, dst)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(dst / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
    if chat_template:
        config["chat_template"] = chat_template
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("bos", [False, True])
def test_text_prompts_use_the_tokenizers_defaults(tiny_ckpt, tmp_path, bos):
    path = _bpe_checkpoint(tiny_ckpt, tmp_path / "ckpt", bos=bos)
    hf = AutoTokenizer.from_pretrained(str(path))
    with LLM(path, block_size=16, max_model_len=128, num_kv_blocks=32) as llm:
        outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
        streamed = "".join(e.text for e in llm.stream(PROMPTS[0], PARAMS))
    for prompt, out in zip(PROMPTS, outs):
        assert out.prompt_token_ids == hf(prompt).input_ids
        assert (out.prompt_token_ids[0] == 0) == bos   # <s> is id 0: there exactly when the tokenizer adds it
        assert out.text == hf.decode(out.token_ids, skip_special_tokens=True)
    assert streamed == outs[0].text


def test_chat_uses_the_chat_template(tiny_ckpt, tmp_path):
    path = _bpe_checkpoint(tiny_ckpt, tmp_path / "ckpt", bos=True, chat_template=TEMPLATE)
    hf = AutoTokenizer.from_pretrained(str(path))
    conversations = [[{"role": "user", "content": "what is two plus two?"}],
                     [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]]
    with LLM(path, block_size=16, max_model_len=128, num_kv_blocks=32) as llm:
        outs = llm.chat(conversations, PARAMS, use_tqdm=False)
        one = llm.chat(conversations[0], PARAMS, use_tqdm=False)[0]   # one conversation, not a list of them
        events = list(llm.chat_stream(conversations[1], PARAMS))
    for conv, out in zip(conversations, outs):
        expected = hf.apply_chat_template(conv, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert out.prompt_token_ids == expected
        text = "<s>" + "".join(f"<|{m['role']}|> {m['content']}\n" for m in conv) + "<|assistant|>"
        assert out.prompt == text   # the template ran, with the generation prompt ...
        assert expected == hf(text, add_special_tokens=False).input_ids   # ... and BOS once, from the template
    assert one.token_ids == outs[0].token_ids
    assert [e.token_id for e in events] == outs[1].token_ids and events[-1].finished


def test_chat_without_a_template_says_so(tiny_ckpt):
    with LLM(tiny_ckpt, max_model_len=128, num_kv_blocks=16, block_size=16) as llm:
        with pytest.raises(ValueError, match="has no chat template .* base model"):
            llm.chat([{"role": "user", "content": "hi"}], PARAMS)
        with pytest.raises(ValueError, match="has no chat template"):
            llm.chat_stream([{"role": "user", "content": "hi"}], PARAMS)
        assert not llm.scheduler.has_unfinished()


def test_bad_conversations_name_the_value(tiny_ckpt, tmp_path):
    path = _bpe_checkpoint(tiny_ckpt, tmp_path / "ckpt", bos=False, chat_template=TEMPLATE)
    with LLM(path, max_model_len=128, num_kv_blocks=16, block_size=16) as llm:
        with pytest.raises(TypeError, match="messages='hi'"):
            llm.chat("hi", PARAMS)
        with pytest.raises(TypeError, match="conversation \\[{'role': 'user'}\\]"):
            llm.chat([[{"role": "user"}]], PARAMS)
        assert not llm.scheduler.has_unfinished()
