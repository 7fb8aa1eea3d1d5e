"""Train the workbench's embedded default model: a tiny Qwen3 that sorts digits.

Why a toy model? An inference engine is only convincing if you can check its output by eye.
A model trained on a synthetic task with one right answer gives us exactly that:

    prompt:      sort: 7 3 9 1 ->
    completion:  1 3 7 9 <eos>

The model is a real `transformers.Qwen3ForCausalLM` (RMSNorm, RoPE, grouped-query attention,
QK-norm, SwiGLU, tied embeddings) -- just very small -- so every code path the engine needs for
real Qwen3 checkpoints is exercised by a model that fits in the repository (< 2 MB).

The tokenizer is word-level: one token per word, so the vocabulary is just
    <pad> <eos> <unk> sort: -> 0 1 2 3 4 5 6 7 8 9

Usage (from the repository root):
    python scripts/train_sorter.py --out workbench/assets/sorter
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast, Qwen3Config,
                          Qwen3ForCausalLM)

from workbench.assets import make_sort_prompts   # one prompt format for training, tests and demo

SPECIALS = ["<pad>", "<eos>", "<unk>"]   # ids 0, 1, 2
WORDS = ["sort:", "->"] + [str(d) for d in range(10)]
PAD, EOS = 0, 1


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    """Word-level tokenizer saved so that AutoTokenizer.from_pretrained(out) loads it."""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()   # split on spaces, nothing else
    # No decoder needed: with none, decode() joins the words with single spaces.
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=64, clean_up_tokenization_spaces=False)
    hf_tok.save_pretrained(out)                 # writes tokenizer.json + tokenizer_config.json
    # transformers 5 records its new class name; the classic name loads in 4.x and 5.x alike.
    cfg_path = out / "tokenizer_config.json"
    cfg_path.write_text(cfg_path.read_text().replace('"TokenizersBackend"',
                                                     '"PreTrainedTokenizerFast"'))
    return AutoTokenizer.from_pretrained(out)   # reload: prove the saved files are enough


def encode_batch(tok, pairs):
    """Token ids for `prompt answer <eos>`, right-padded; labels are -100 except on the answer.

    Loss on the answer only: the prompt digits are random, so predicting them teaches nothing.
    """
    rows, labels = [], []
    for prompt, answer in pairs:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [EOS]
        rows.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    lab = torch.tensor([row + [-100] * (width - len(row)) for row in labels])
    # Right padding never affects earlier positions under a causal mask, so no attention_mask.
    return ids, lab


# ---------------------------------------------------------------------------------------------
# Evaluation: greedy exact match with HF generate, one batch per prompt length (no padding).
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, tok, pairs, show: int = 3) -> float:
    model.eval()
    by_len: dict[int, list] = {}
    for prompt, answer in pairs:
        by_len.setdefault(len(prompt.split()), []).append((prompt, answer))
    correct = shown = 0
    for group in by_len.values():
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"] for p, _ in group])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=12)
        for (prompt, answer), row in zip(group, out[:, ids.shape[1]:].tolist()):
            # Correct = exactly the sorted digits, then <eos> (the model must also stop).
            got = tok.decode(row[:row.index(EOS)] if EOS in row else row)
            correct += EOS in row and got == answer
            if shown < show:
                print(f"  {prompt!r} -> {got!r}  (expected {answer!r})")
                shown += 1
    model.train()
    return correct / len(pairs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("workbench/assets/sorter"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(args.out)
    assert len(tok) == len(SPECIALS) + len(WORDS) and tok.eos_token_id == EOS

    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,  # GQA
        # head_dim * heads (128) != hidden (64), as in real Qwen3 checkpoints: an engine must
        # read head_dim from the config, never compute it as hidden_size // num_heads.
        head_dim=args.head_dim, max_position_embeddings=64, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD,   # like Qwen: no separate BOS
        attention_dropout=0.0, use_cache=True)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, do_sample=False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Qwen3: {args.layers} layers, hidden {args.hidden}, 4 q / 2 kv heads of dim "
          f"{args.head_dim}: {n_params:,} parameters")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01,
                            betas=(0.9, 0.98))
    warmup = args.steps // 20
    # Linear warmup, then cosine decay to 0: a standard recipe that trains tiny models fast.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5
                                              * (1 + math.cos(math.pi * min(s / args.steps, 1))))
    # Training data uses its own seed stream; the held-out eval set uses seed + 10**6.
    data_rng = random.Random(args.seed)
    t0 = time.time()
    model.train()
    for step in range(1, args.steps + 1):
        ids, labels = encode_batch(tok, make_sort_prompts(args.batch, data_rng.randrange(2**31)))
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 200 == 0 or step == 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:6.1f}s", flush=True)
    train_s = time.time() - t0

    eval_pairs = make_sort_prompts(args.eval_n, args.seed + 10**6)
    acc = evaluate(model, tok, eval_pairs)
    print(f"trained {args.steps} steps in {train_s:.0f}s; "
          f"held-out greedy exact match: {acc:.2%} on {len(eval_pairs)} prompts")

    model.save_pretrained(args.out, safe_serialization=True)  # config, safetensors, gen config
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"saved to {args.out} ({size / 1e6:.2f} MB)")
    (args.out / "train_log.json").write_text(json.dumps(dict(
        vars(args), out=str(args.out), params=n_params, train_seconds=round(train_s, 1),
        heldout_accuracy=acc, eval_seed=args.seed + 10**6), indent=2) + "\n")


if __name__ == "__main__":
    main()
