"""Hugging Face checkpoint directory -> CausalLM with its weights.

A checkpoint is config.json + one or more *.safetensors files (sharded ones come with a
model.safetensors.index.json, but globbing the shards is enough). Tensors keep their HF names,
except that q/k/v and gate/up are concatenated into the merged projections the decoder uses.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from workbench.parallel.tensor_parallel import shard_tensor

from .config import ModelConfig
from .qwen3 import CausalLM

# checkpoint name piece -> (merged parameter name piece, position in the merge)
_MERGED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0), "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0), "mlp.up_proj": ("mlp.gate_up_proj", 1),
}


def safetensor_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist: pass the folder that holds "
                                "config.json and *.safetensors (or make one with make_checkpoint)")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}: the engine loads safetensors only; "
                                "convert .bin/.pt weights with transformers' save_pretrained(safe_serialization=True)")
    return files


def load_model(path: str | Path, cfg: ModelConfig, backend, *, fused: bool, dtype: torch.dtype,
               device: str, tp_rank: int = 0, tp_size: int = 1) -> CausalLM:
    """tp_size > 1: build and fill rank `tp_rank`'s shard only (workbench.parallel)."""
    with torch.device("meta"):   # no memory, no random init: every weight comes from disk
        model = CausalLM(cfg, backend, fused, tp_size)
    model.to(dtype)                    # still on 'meta': costs nothing
    model.to_empty(device=device)      # one allocation, already in the target dtype
    model.tie_weights()   # moving modules one by one unties shared parameters: tie again
    params = dict(model.named_parameters())
    pending = {name: [None] * (3 if "qkv" in name else 2) for name in params
               if "qkv_proj.weight" in name or "qkv_proj.bias" in name or "gate_up_proj" in name}
    loaded = set()
    for file in safetensor_files(path):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for hf_name in f.keys():
                name = hf_name.removeprefix("model.")
                if cfg.tie_word_embeddings and name == "lm_head.weight":
                    continue   # tied: the embedding is the head
                # tensor parallelism: keep this rank's slice, cut before q/k/v (gate/up) are merged
                tensor = shard_tensor(name, f.get_tensor(hf_name), tp_rank, tp_size)
                for piece, (merged, index) in _MERGED.items():
                    if piece in name:
                        name = name.replace(piece, merged)
                        pending[name][index] = tensor
                        tensor = None
                        if all(part is not None for part in pending[name]):
                            tensor = torch.cat(pending[name], dim=0)
                        break
                if tensor is None:
                    continue
                if name not in params:
                    continue   # e.g. rotary inv_freq saved by old exporters
                if params[name].shape != tensor.shape:
                    raise ValueError(f"{hf_name} in {file.name} has shape {tuple(tensor.shape)} but "
                                     f"config.json implies {tuple(params[name].shape)}: config and weights disagree")
                with torch.no_grad():
                    params[name].copy_(tensor)
                loaded.add(name)
    missing = sorted(set(params) - loaded - ({"lm_head.weight"} if cfg.tie_word_embeddings else set()))
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} weights, e.g. {missing[:3]}: "
                         "is it a complete export of this model_type?")
    model.rotary.build_cache(device)   # built on 'meta' above; computed for real, in float32
    return model.eval()
