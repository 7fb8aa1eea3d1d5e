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


# Tensors some exporters save that hold no weights: RoPE's table, recomputed from config.json.
_HARMLESS = ("rotary_emb.inv_freq",)


def _piece_shape(cfg: ModelConfig, merged_param: torch.Tensor, merged: str, index: int, tp_size: int) -> tuple:
    """The shape one checkpoint tensor (q_proj, k_proj, ..., gate_proj, up_proj) must have on this rank."""
    if "qkv" in merged:
        rows = (cfg.num_heads, cfg.num_kv_heads, cfg.num_kv_heads)[index] * cfg.head_dim
    else:
        rows = cfg.intermediate_size
    return (rows // tp_size, *merged_param.shape[1:])


def _tensors(file: Path):
    """(name, tensor) pairs of one safetensors file; a damaged file is a ValueError naming it."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    except Exception as err:   # safetensors raises its own SafetensorError (not an OSError)
        if type(err).__name__ != "SafetensorError" and not isinstance(err, OSError):
            raise
        raise ValueError(f"{file} is not a readable safetensors file ({err}): the download or export "
                         "is incomplete or damaged; fetch it again") from None


def load_model(path: str | Path, cfg: ModelConfig, *, dtype: torch.dtype,
               device: str, tp_rank: int = 0, tp_size: int = 1) -> CausalLM:
    """tp_size > 1: build and fill rank `tp_rank`'s shard only (workbench.parallel).

    Every tensor the model has must come from the files, and every tensor in the files must have
    a place in the model (else a ValueError): a weight loaded nowhere is a silently wrong model."""
    with torch.device("meta"):   # no memory, no random init: every weight comes from disk
        model = CausalLM(cfg, tp_size)
    model.to(dtype)                    # still on 'meta': costs nothing
    model.to_empty(device=device)      # one allocation, already in the target dtype
    model.tie_weights()   # moving modules one by one unties shared parameters: tie again
    params = dict(model.named_parameters())
    pending = {name: [None] * (3 if "qkv" in name else 2) for name in params
               if "qkv_proj" in name or "gate_up_proj" in name}
    loaded, unexpected, tied_head = set(), [], None
    for file in safetensor_files(path):
        for hf_name, tensor in _tensors(file):
            name = hf_name.removeprefix("model.")
            if name.endswith(_HARMLESS):
                continue
            if cfg.tie_word_embeddings and name == "lm_head.weight":
                tied_head = tensor   # tied: the embedding is the head; checked equal below
                continue
            # tensor parallelism: keep this rank's slice, cut before q/k/v (gate/up) are merged
            tensor = shard_tensor(name, tensor, tp_rank, tp_size)
            for piece, (merged, index) in _MERGED.items():
                if piece in name:
                    name = name.replace(piece, merged)
                    if name not in pending:
                        break   # e.g. a bias the config does not declare: reported as unexpected
                    want = _piece_shape(cfg, params[name], merged, index, tp_size)
                    if tuple(tensor.shape) != want:
                        raise ValueError(f"{hf_name} in {file.name} has shape {tuple(tensor.shape)} but config.json "
                                         f"implies {want}: config and weights disagree")
                    pending[name][index] = tensor
                    tensor = None
                    if all(part is not None for part in pending[name]):
                        tensor = torch.cat(pending[name], dim=0)
                    break
            if tensor is None:
                continue
            if name not in params:
                unexpected.append(f"{hf_name} ({file.name})")
                continue
            if params[name].shape != tensor.shape:
                raise ValueError(f"{hf_name} in {file.name} has shape {tuple(tensor.shape)} but "
                                 f"config.json implies {tuple(params[name].shape)}: config and weights disagree")
            with torch.no_grad():
                params[name].copy_(tensor)
            loaded.add(name)
    if unexpected:
        raise ValueError(f"checkpoint {path} has {len(unexpected)} tensors this model does not use, e.g. "
                         f"{', '.join(unexpected[:3])}: config.json does not describe these weights (a bias "
                         "flag, the layer count, or the model_type is off); the engine will not drop them")
    missing = sorted(set(params) - loaded - ({"lm_head.weight"} if cfg.tie_word_embeddings else set()))
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} weights, e.g. {missing[:3]}: "
                         "is it a complete export of this model_type, and does config.json match it?")
    embed = params["embed_tokens.weight"]
    if tied_head is not None and not torch.equal(tied_head.to(embed.device, embed.dtype), embed):
        raise ValueError(f"checkpoint {path} has tie_word_embeddings=true but an lm_head.weight that differs "
                         "from embed_tokens.weight: set tie_word_embeddings to false in config.json if the "
                         "head is its own matrix")
    model.rotary.build_cache(device)   # built on 'meta' above; computed for real, in float32
    return model.eval()
