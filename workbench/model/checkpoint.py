"""Write random-weight Hugging Face checkpoints, so tests and speed runs need no downloads.

Speed does not depend on weight values, so `qwen3-0.6b` (Qwen3-0.6B's real shape) gives honest
timings; `tiny` is small enough for CPU tests. Both load in HF transformers too, which is how
the tests check the engine against a reference on the same weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=1024),
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       max_position_embeddings=40960),
}
EOS_ID = 0


def _hf_config(preset: str, model_type: str, dtype: str) -> dict:
    shape = PRESETS[preset]
    config = dict(model_type=model_type, architectures=[
        "Qwen3ForCausalLM" if model_type == "qwen3" else "LlamaForCausalLM"],
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=model_type == "qwen3",
        hidden_act="silu", attention_bias=False, bos_token_id=EOS_ID, eos_token_id=EOS_ID,
        torch_dtype=dtype, **shape)
    return config


def _random_weights(cfg: dict, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d

    def normal(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(dtype)

    def norm(size):   # near 1, not exactly: a wrong norm weight must change the output
        return (1.0 + 0.1 * torch.randn(size, generator=gen)).to(dtype)

    weights = {"model.embed_tokens.weight": normal(cfg["vocab_size"], h), "model.norm.weight": norm(h)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        weights.update({
            p + "input_layernorm.weight": norm(h), p + "post_attention_layernorm.weight": norm(h),
            p + "self_attn.q_proj.weight": normal(q, h), p + "self_attn.k_proj.weight": normal(kv, h),
            p + "self_attn.v_proj.weight": normal(kv, h), p + "self_attn.o_proj.weight": normal(h, q),
            p + "mlp.gate_proj.weight": normal(i, h), p + "mlp.up_proj.weight": normal(i, h),
            p + "mlp.down_proj.weight": normal(h, i),
        })
        if cfg["model_type"] == "qwen3":
            weights[p + "self_attn.q_norm.weight"] = norm(d)
            weights[p + "self_attn.k_norm.weight"] = norm(d)
    if not cfg["tie_word_embeddings"]:
        weights["lm_head.weight"] = normal(cfg["vocab_size"], h)
    return weights


def _save_sharded(weights: dict, out: Path, max_shard_bytes: int | None) -> None:
    if max_shard_bytes is None:
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    shards, current, size = [], {}, 0
    for name, tensor in weights.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name], size = tensor, size + nbytes
    shards.append(current)
    index = {"metadata": {}, "weight_map": {}}
    for n, shard in enumerate(shards, 1):
        file = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        index["weight_map"].update({name: file for name in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def write_byte_tokenizer(out: Path) -> None:
    """A byte-level tokenizer (256 byte tokens, no merges) with <eos> as id 0.

    Random weights make random text anyway; this only has to encode any string and decode ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<eos>": EOS_ID, **{ch: n + 1 for n, ch in enumerate(sorted(byte_chars))}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<eos>"])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "pad_token": "<eos>"}))


def make_checkpoint(path: str | Path, preset: str = "tiny", seed: int = 0, *, model_type: str = "qwen3",
                    dtype: str = "float32", max_shard_bytes: int | None = None) -> Path:
    """Write config.json, safetensors weights and a tokenizer to `path`; return the path.

    preset: 'tiny' (a few MB, CPU tests) or 'qwen3-0.6b' (real shape, GPU speed runs).
    model_type: 'qwen3' or 'llama' (same shapes, Llama without q/k norm, untied head).
    max_shard_bytes: split the weights into several files, as big checkpoints are.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if model_type not in ("qwen3", "llama"):
        raise ValueError(f"model_type={model_type!r}: make_checkpoint writes 'qwen3' or 'llama'")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _hf_config(preset, model_type, dtype)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": EOS_ID}))
    _save_sharded(_random_weights(cfg, seed, getattr(torch, dtype)), out, max_shard_bytes)
    write_byte_tokenizer(out)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))   # last: its presence means complete
    return out


def random_checkpoint(preset: str, root: str | Path | None = None) -> Path:
    """A random-weight checkpoint of `preset` under `root` (default: the temp folder), written
    once and reused (bf16 for the real shapes, fp32 for 'tiny')."""
    import tempfile
    path = Path(root or tempfile.gettempdir()) / f"workbench-{preset}"
    if not (path / "config.json").is_file():
        print(f"writing a random-weight {preset} checkpoint to {path} ...")
        make_checkpoint(path, preset, seed=0, dtype="float32" if preset == "tiny" else "bfloat16")
    return path
