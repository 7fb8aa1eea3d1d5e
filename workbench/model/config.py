"""The model's shape, read from a Hugging Face config.json.

Only the fields the decoder needs are kept. Qwen3 and Llama share one decoder; they differ in
three knobs: q/k RMSNorm (Qwen3), biases on q/k/v (Qwen2-style configs), and RoPE scaling (Llama 3).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_MODEL_TYPES = ("qwen3", "llama")


@dataclass
class ModelConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = True
    qk_norm: bool = False          # Qwen3 normalizes q and k per head
    attention_bias: bool = False   # Qwen2-style q/k/v biases
    model_type: str = "qwen3"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 4096
    rope_scaling: dict | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    torch_dtype: str | None = None

    @classmethod
    def from_preset(cls, name: str) -> "ModelConfig":
        """The shape of a make_checkpoint preset ('tiny', 'qwen3-0.6b') without writing weights."""
        from .checkpoint import PRESETS
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        p = PRESETS[name]
        return cls(hidden_size=p["hidden_size"], num_layers=p["num_hidden_layers"],
                   num_heads=p["num_attention_heads"], num_kv_heads=p["num_key_value_heads"],
                   head_dim=p["head_dim"], intermediate_size=p["intermediate_size"],
                   vocab_size=p["vocab_size"], qk_norm=True,
                   max_position_embeddings=p["max_position_embeddings"])

    @classmethod
    def from_hf(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{config_file} not found: point the engine at a Hugging Face checkpoint directory "
                "(config.json + *.safetensors), or make one with workbench.model.make_checkpoint()")
        raw = json.loads(config_file.read_text())
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type={model_type!r} in {config_file} is not supported; "
                             f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}")
        required = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "vocab_size"]
        missing = [key for key in required if key not in raw]
        if missing:
            raise ValueError(f"{config_file} is missing {', '.join(missing)}: the decoder needs these "
                             "to know its shape; re-export the checkpoint's config.json")
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}   # transformers 5 vs 4
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ValueError(f"rope type {rope_type!r} in {config_file} is not supported; "
                             "supported: default, llama3")
        eos = raw.get("eos_token_id")
        generation_config = path / "generation_config.json"
        if generation_config.is_file():   # chat models list extra end-of-turn ids here
            eos = json.loads(generation_config.read_text()).get("eos_token_id", eos)
        heads = raw["num_attention_heads"]
        return cls(
            model_type=model_type,
            hidden_size=raw["hidden_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            intermediate_size=raw["intermediate_size"],
            vocab_size=raw["vocab_size"],
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=raw.get("rope_theta", rope.get("rope_theta", 10000.0)),
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            qk_norm=model_type == "qwen3",
            attention_bias=raw.get("attention_bias", False),
            rope_scaling=rope if rope_type == "llama3" else None,
            eos_token_ids=[eos] if isinstance(eos, int) else list(eos or []),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        )
