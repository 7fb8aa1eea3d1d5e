"""The model's shape and math, read from a Hugging Face config.json -- every field accounted for.

Qwen3, Qwen2/2.5 and Llama share one decoder; they differ in a few knobs: q/k RMSNorm (Qwen3),
biases (Qwen2 always has q/k/v biases; Llama and Qwen3 add q/k/v *and* o_proj biases when
`attention_bias` is true; Llama adds gate/up/down biases when `mlp_bias` is true), the MLP's
activation (`hidden_act`) and RoPE scaling (Llama 3).

The rule for config.json: every top-level field is in exactly one of three groups, or the load
fails with a ValueError that names it.
  read       the decoder implements it (shape, eps, RoPE, biases, activation, ...);
  IGNORED    it cannot change the tokens at inference (dropout, init, generation defaults, ...);
  CHECKED    it would change the math if it had another value, so only the value the decoder
             implements is accepted (no sliding window, no quantization, ...).
An unknown field is refused too: a field nobody looked at is how silently wrong tokens happen.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_MODEL_TYPES = ("qwen3", "llama", "qwen2")
# hidden_act values as transformers' ACT2FN names them; layers.ACTIVATIONS implements these.
SUPPORTED_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh")
ROPE_TYPES = ("default", "llama3")

# Fields that cannot change the tokens the forward pass produces, grouped by why.
IGNORED = {
    # bookkeeping
    "architectures", "transformers_version", "_name_or_path", "is_llama_config", "transformers.js_config",
    # training only: weight init, dropout (off at inference: HF runs in eval() mode too)
    "initializer_range", "attention_dropout", "hidden_dropout", "dropout", "embd_pdrop",
    "resid_pdrop", "use_bfloat16", "tf_legacy_loss",
    # Llama's pretraining_tp split matmuls into slices during pretraining: the same math (only the
    # summation order differs), and transformers 5 (the reference) ignores it as well
    "pretraining_tp",
    # the tokenizer's and the sampler's business (SamplingParams, generation_config.json)
    "bos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "tokenizer_class",
    "use_cache", "max_length", "min_length", "do_sample", "temperature", "top_k", "top_p",
    "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "num_beams",
    "num_return_sequences", "early_stopping", "bad_words_ids", "forced_bos_token_id",
    "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens",
    # what HF's forward returns, not what it computes
    "output_attentions", "output_hidden_states", "return_dict", "torchscript", "output_scores",
    "return_dict_in_generate", "chunk_size_feed_forward",
    # heads and tasks this engine does not build (it only runs the causal LM head)
    "id2label", "label2id", "num_labels", "problem_type", "finetuning_task", "task_specific_params",
    "prefix", "pruned_heads", "is_decoder",
    # only used together with a sliding window, which CHECKED refuses
    "sliding_window", "max_window_layers",
}

# field -> (accepted values, what to say). Absent counts as the first accepted value.
CHECKED = {
    "use_sliding_window": ((False, None), "sliding-window attention is not implemented (full causal attention only)"),
    "rope_interleaved": ((False, None), "only the 'rotate half' RoPE layout is implemented"),
    "partial_rotary_factor": ((1.0, None), "RoPE over part of the head is not implemented"),
    "is_encoder_decoder": ((False, None), "encoder-decoders are not implemented"),
    "add_cross_attention": ((False, None), "cross-attention is not implemented"),
    "tie_encoder_decoder": ((False, None), "encoder-decoders are not implemented"),
    "quantization_config": ((None,), "quantized weights are not implemented; use an unquantized "
                                     "(bf16/fp16/fp32) checkpoint"),
    "auto_map": ((None,), "custom modeling code (trust_remote_code) is not implemented; only "
                          "transformers' built-in qwen3/qwen2/llama architectures"),
}

# Per family: q/k RMSNorm or not, and which bias fields its transformers code reads (a bias field it
# does not read must be absent or false: the weights were trained without it)
_FAMILIES = {
    "qwen3": dict(qk_norm=True, bias_fields=("attention_bias",)),
    "llama": dict(qk_norm=False, bias_fields=("attention_bias", "mlp_bias")),
    "qwen2": dict(qk_norm=False, bias_fields=()),   # q/k/v biases always, o_proj never (HF hard-codes it)
}
_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
_READ = {   # the fields from_hf reads, for the unknown-field check
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta", "rope_parameters",
    "rope_scaling", "max_position_embeddings", "tie_word_embeddings", "attention_bias", "mlp_bias",
    "hidden_act", "eos_token_id", "torch_dtype", "dtype", "layer_types",
}
_ROPE_KEYS = {"default": {"rope_type", "type", "rope_theta", "partial_rotary_factor"},
              "llama3": {"rope_type", "type", "rope_theta", "partial_rotary_factor", "factor",
                         "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}}


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
    attention_bias: bool = False   # biases on q/k/v (Qwen2; Llama/Qwen3 with attention_bias)
    o_bias: bool = False           # a bias on o_proj (Llama/Qwen3 with attention_bias; not Qwen2)
    mlp_bias: bool = False         # biases on gate/up/down (Llama with mlp_bias)
    hidden_act: str = "silu"       # the gated MLP's activation: act(gate) * up
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
        raw = _read_json_object(config_file)
        get = _Fields(raw, config_file)
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type={model_type!r} in {config_file} is not supported; "
                             f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}")
        _check_fields(raw, config_file)
        missing = [key for key in _REQUIRED if key not in raw]
        if missing:
            raise ValueError(f"{config_file} is missing {', '.join(missing)}: the decoder needs these "
                             "to know its shape; re-export the checkpoint's config.json")
        family = _FAMILIES[model_type]
        for name in ("attention_bias", "mlp_bias"):   # a bias the family's HF code never reads
            if name not in family["bias_fields"] and get.bool(name, False):
                raise ValueError(f"{name}=true in {config_file}: transformers' {model_type} ignores this "
                                 f"field, so the weights were not trained with it; supported: {name}=false")
        heads = get.int("num_attention_heads")
        kv_heads = get.int("num_key_value_heads", heads)
        hidden = get.int("hidden_size")
        head_dim = get.int("head_dim", hidden // heads)
        if heads % kv_heads:
            raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads="
                             f"{kv_heads} in {config_file}: grouped-query attention needs whole groups")
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim} in {config_file} is odd; RoPE rotates pairs of dimensions")
        max_pos = get.int("max_position_embeddings", 4096)
        theta, scaling = _rope(raw, get, config_file, max_pos)
        hidden_act = get.str("hidden_act", "silu")
        if hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act={hidden_act!r} in {config_file} is not supported; "
                             f"supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
        attention_bias = get.bool("attention_bias", False) if family["bias_fields"] else False
        return cls(
            model_type=model_type,
            hidden_size=hidden,
            num_layers=get.int("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=get.int("intermediate_size"),
            vocab_size=get.int("vocab_size"),
            rms_norm_eps=get.float("rms_norm_eps", 1e-6),
            rope_theta=theta,
            max_position_embeddings=max_pos,
            tie_word_embeddings=get.bool("tie_word_embeddings", False),
            qk_norm=family["qk_norm"],
            attention_bias=attention_bias or model_type == "qwen2",
            o_bias=attention_bias,
            mlp_bias=get.bool("mlp_bias", False),
            hidden_act=hidden_act,
            rope_scaling=scaling,
            eos_token_ids=_eos_ids(raw, path),
            torch_dtype=get.str("torch_dtype", None) or get.str("dtype", None),
        )


def _read_json_object(file: Path) -> dict:
    try:
        raw = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err}); re-download or re-export it") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file} holds a JSON {type(raw).__name__}, not an object of config fields; "
                         "re-download or re-export it")
    return raw


class _Fields:
    """Typed reads of config.json fields: a wrong type or a null names the field (not a TypeError
    deep inside the model). Absent: `default` (required when not given). null counts as absent
    only for the fields transformers itself derives when null (NULLABLE)."""
    _REQUIRED = object()
    NULLABLE = {"num_key_value_heads", "head_dim", "torch_dtype", "dtype"}

    def __init__(self, raw: dict, file):
        self.raw, self.file = raw, file

    def _get(self, name, types, what, default):
        if name not in self.raw or (self.raw[name] is None and name in self.NULLABLE):
            if default is self._REQUIRED:
                raise ValueError(f"{self.file} is missing {name}: the decoder needs it; re-export config.json")
            return default
        value = self.raw[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise ValueError(f"{name}={value!r} in {self.file} should be {what}")
        return value

    def int(self, name, default=_REQUIRED):
        value = self._get(name, (int,), "a positive integer", default)
        if value is not default and value < 1:
            raise ValueError(f"{name}={value!r} in {self.file} should be a positive integer")
        return value

    def float(self, name, default=_REQUIRED):
        value = self._get(name, (int, float), "a positive number", default)
        if value is not default and not 0 < value < float("inf"):
            raise ValueError(f"{name}={value!r} in {self.file} should be a positive number")
        return value if value is default else float(value)

    def bool(self, name, default=_REQUIRED):
        return self._get(name, (bool,), "true or false", default)

    def str(self, name, default=_REQUIRED):
        return self._get(name, (str,), "a string", default)


def _same(value, accepted) -> bool:
    """JSON equality: false is not 0, null is not false."""
    return (value is None) == (accepted is None) and isinstance(value, bool) == isinstance(accepted, bool) \
        and value == accepted


def _check_fields(raw: dict, file: Path) -> None:
    """Every field is read, IGNORED or CHECKED (see the module docstring); else a ValueError."""
    for name, value in raw.items():
        if name in _READ or name in IGNORED:
            continue
        if name in CHECKED:
            accepted, why = CHECKED[name]
            if not any(_same(value, a) for a in accepted):
                raise ValueError(f"{name}={value!r} in {file} is not supported: {why}; supported: "
                                 f"{' or '.join(json.dumps(a) for a in accepted)} (or leave it out)")
            continue
        raise ValueError(f"{name}={value!r} in {file} is a config field this engine does not know, so it "
                         "cannot tell whether it changes the model's math. If it does not, add it to "
                         "IGNORED in workbench/model/config.py (and say why)")
    layer_types = raw.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or any(t != "full_attention" for t in layer_types):
            raise ValueError(f"layer_types={layer_types!r} in {file} is not supported: only full causal "
                             "attention is implemented (every entry 'full_attention')")


def _rope(raw: dict, get: _Fields, file: Path, max_pos: int) -> tuple[float, dict | None]:
    """(rope_theta, llama3 scaling or None). transformers 5 writes `rope_parameters` (theta inside);
    4.x wrote a top-level `rope_theta` and `rope_scaling` (null unless scaled)."""
    name = "rope_parameters" if raw.get("rope_parameters") is not None else "rope_scaling"
    rope = raw.get(name) or {}
    if not isinstance(rope, dict):
        raise ValueError(f"{name}={rope!r} in {file} should be an object (or null)")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{name}.rope_type={rope_type!r} in {file} is not supported; supported: "
                         f"{', '.join(ROPE_TYPES)}")
    extra = sorted(set(rope) - _ROPE_KEYS[rope_type])
    if extra:
        raise ValueError(f"{name} in {file} sets {', '.join(extra)}, which rope_type={rope_type!r} does not "
                         f"implement; supported keys: {', '.join(sorted(_ROPE_KEYS[rope_type]))}")
    sub = _Fields(rope, f"{file} ({name})")
    if "partial_rotary_factor" in rope and rope["partial_rotary_factor"] != 1.0:
        raise ValueError(f"{name}.partial_rotary_factor={rope['partial_rotary_factor']!r} in {file} is not "
                         "supported: RoPE over part of the head is not implemented; supported: 1.0")
    theta = sub.float("rope_theta") if "rope_theta" in rope else get.float("rope_theta", 10000.0)
    if rope_type == "default":
        return theta, None
    scaling = {"factor": sub.float("factor"), "low_freq_factor": sub.float("low_freq_factor"),
               "high_freq_factor": sub.float("high_freq_factor"),
               "original_max_position_embeddings": sub.int("original_max_position_embeddings", max_pos)}
    if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ValueError(f"{name} in {file}: high_freq_factor must exceed low_freq_factor for llama3 RoPE")
    return theta, scaling


def _eos_ids(raw: dict, path: Path) -> list[int]:
    eos = raw.get("eos_token_id")
    where = path / "config.json"
    generation_config = path / "generation_config.json"
    if generation_config.is_file():   # chat models list extra end-of-turn ids here
        gen = _read_json_object(generation_config)
        if "eos_token_id" in gen:
            eos, where = gen["eos_token_id"], generation_config
    ids = [eos] if isinstance(eos, int) else eos if isinstance(eos, list) else [] if eos is None else None
    if ids is None or any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in ids):
        raise ValueError(f"eos_token_id={eos!r} in {where} should be a token id, a list of them, or null")
    return ids
