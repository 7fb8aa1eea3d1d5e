"""Checkpoints written by HF transformers itself, in every variant the engine claims to load.

Each variant is a tiny random model (fp32) with non-zero biases and norm weights (HF initializes
biases to zero and norms to one, which would hide a dropped bias or a misplaced norm). The
engine must pick HF's greedy tokens on prompts of 1 to 300 tokens. Config fields the decoder does
not implement must be refused at load, naming the field; the CLI turns a bad checkpoint into one
`error:` line and exit code 2.
"""
import json
import random
import shutil

import pytest
import torch

from workbench import LLM, SamplingParams
from workbench.__main__ import main
from workbench.check import run_engine
from workbench import Optimizations
from workbench.model import ModelConfig, make_checkpoint
from workbench.model.checkpoint import PRESETS
from workbench.model.layers import ActAndMul, LayerForms
from workbench.parallel.tensor_parallel import shard_tensor
from workbench.reference import compare, hf_greedy, load_hf_model

LENGTHS = [1, 2, 9, 33, 100, 129, 256, 300]
NEW_TOKENS = 12
ENGINE = dict(block_size=16, max_num_batched_tokens=256, max_model_len=512)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}   # every branch at head_dim 16
VARIANTS = {
    "qwen3-tied": ("qwen3", dict(tie_word_embeddings=True)),
    "qwen3-untied-attention_bias": ("qwen3", dict(tie_word_embeddings=False, attention_bias=True)),
    "qwen2-tied": ("qwen2", dict(tie_word_embeddings=True)),   # Qwen2.5-0.5B's layout
    "llama-attention_bias": ("llama", dict(attention_bias=True)),
    "llama-mlp_bias": ("llama", dict(mlp_bias=True)),
    "llama-gelu": ("llama", dict(hidden_act="gelu")),
    "llama-gelu_pytorch_tanh-tied": ("llama", dict(hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True)),
    "llama3-rope": ("llama", dict(rope_parameters=LLAMA3_ROPE)),
}


def write_hf_checkpoint(path, model_type: str, seed: int = 0, **config):
    """transformers builds the model from its own config class and saves it (safetensors)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(model_type, **PRESETS["tiny"], rms_norm_eps=1e-6, eos_token_id=0, **config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:   # biases random, norm weights near one
                p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def variant_dir(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            model_type, config = VARIANTS[name]
            made[name] = write_hf_checkpoint(tmp_path_factory.mktemp(name), model_type, seed=len(made), **config)
        return made[name]
    return get


def _prompts(seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(1, PRESETS["tiny"]["vocab_size"]) for _ in range(n)] for n in LENGTHS]


@pytest.mark.parametrize("name", VARIANTS)
def test_engine_matches_hf_on_hf_written_checkpoints(name, variant_dir):
    ckpt = variant_dir(name)
    hf = load_hf_model(str(ckpt))
    ref = [hf_greedy(hf, p, NEW_TOKENS) for p in _prompts()]
    run = run_engine(ckpt, Optimizations(attention="sdpa"), _prompts(), NEW_TOKENS, **ENGINE)
    report = compare(run["tokens"], run["logits"], [t for t, _ in ref], [lg for _, lg in ref])
    assert report["token_match_rate"] == 1.0, report
    worst = max(float((e - r).abs().max() / r.abs().max()) for e, (_, r) in zip(run["logits"], ref))
    assert worst < 1e-4, worst


@pytest.mark.parametrize("name", ["qwen2-tied", "llama-attention_bias"])
def test_the_reference_loop_is_what_hf_generate_does(name, variant_dir):
    """hf_greedy (the loop above, which also returns logits) picks the tokens of HF's own
    `generate(do_sample=False)` on the same prompt ids, so 'matches hf_greedy' means 'matches
    what an HF user gets'. EOS is switched off on both sides (hf_greedy ignores it)."""
    hf = load_hf_model(str(variant_dir(name)))
    for prompt in _prompts()[:4]:
        ids = torch.tensor([prompt])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                          min_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)
        assert out[0, len(prompt):].tolist() == hf_greedy(hf, prompt, NEW_TOKENS)[0]


def test_config_reads_the_variant_knobs(variant_dir):
    qwen2 = ModelConfig.from_hf(variant_dir("qwen2-tied"))
    assert (qwen2.attention_bias, qwen2.o_bias, qwen2.qk_norm, qwen2.tie_word_embeddings) == (True, False, False, True)
    llama = ModelConfig.from_hf(variant_dir("llama-attention_bias"))
    assert (llama.attention_bias, llama.o_bias, llama.mlp_bias) == (True, True, False)
    rope = ModelConfig.from_hf(variant_dir("llama3-rope"))
    assert rope.rope_theta == 10000.0 and rope.rope_scaling["original_max_position_embeddings"] == 64


def test_transformers_4_rope_format_reads_the_same(variant_dir, tmp_path):
    """transformers 4.x wrote `rope_theta` at the top and `rope_scaling` with `type` or `rope_type`."""
    src = variant_dir("llama3-rope")
    raw = json.loads((src / "config.json").read_text())
    rope = raw.pop("rope_parameters")
    raw["rope_theta"] = rope.pop("rope_theta")
    raw["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    old, new = ModelConfig.from_hf(tmp_path), ModelConfig.from_hf(src)
    assert (old.rope_theta, old.rope_scaling) == (new.rope_theta, new.rope_scaling)


@pytest.mark.parametrize("config_class", ["LlamaConfig", "Qwen2Config", "Qwen3Config"])
def test_every_field_transformers_writes_is_accounted_for(config_class, tmp_path):
    """A full dump (use_diff=False) of each HF config class loads: every field is read, IGNORED or CHECKED."""
    import transformers
    cfg = getattr(transformers, config_class)(**PRESETS["tiny"])
    cfg.to_json_file(str(tmp_path / "config.json"), use_diff=False)
    assert ModelConfig.from_hf(tmp_path).num_layers == 2


# The config.json fields of the course's usual checkpoints (shapes abridged to the tiny preset).
HUB_STYLE = {
    "Qwen2.5-0.5B-Instruct": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", attention_dropout=0.0, bos_token_id=151643,
        eos_token_id=151645, hidden_act="silu", initializer_range=0.02, max_window_layers=21, rms_norm_eps=1e-6,
        rope_theta=1000000.0, sliding_window=32768, tie_word_embeddings=True, torch_dtype="bfloat16",
        transformers_version="4.43.1", use_cache=True, use_sliding_window=False),
    "SmolLM2-135M": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False, attention_dropout=0.0,
        bos_token_id=0, eos_token_id=0, hidden_act="silu", initializer_range=0.0417, is_llama_config=True,
        mlp_bias=False, pretraining_tp=1, rms_norm_eps=1e-5, rope_interleaved=False, rope_scaling=None,
        rope_theta=100000, tie_word_embeddings=True, torch_dtype="bfloat16", use_cache=True,
        **{"transformers.js_config": {"kv_cache_dtype": {"fp16": "float16"}}}),
    "TinyLlama-1.1B-Chat": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False, bos_token_id=1,
        eos_token_id=2, hidden_act="silu", initializer_range=0.02, pretraining_tp=1, rms_norm_eps=1e-5,
        rope_scaling=None, rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="bfloat16", use_cache=True),
    "Llama-3.2-1B": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False, attention_dropout=0.0,
        bos_token_id=128000, eos_token_id=128001, hidden_act="silu", initializer_range=0.02, mlp_bias=False,
        pretraining_tp=1, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, torch_dtype="bfloat16",
        rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"}, use_cache=True),
    "Qwen3-0.6B": dict(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", attention_bias=False, attention_dropout=0.0,
        bos_token_id=151643, eos_token_id=151645, hidden_act="silu", initializer_range=0.02, max_window_layers=28,
        rms_norm_eps=1e-6, rope_scaling=None, rope_theta=1000000, sliding_window=None, tie_word_embeddings=True,
        torch_dtype="bfloat16", use_cache=True, use_sliding_window=False),
}


@pytest.mark.parametrize("name", HUB_STYLE)
def test_configs_as_the_hub_publishes_them_load(name, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**PRESETS["tiny"], **HUB_STYLE[name]}))
    cfg = ModelConfig.from_hf(tmp_path)
    assert cfg.model_type == HUB_STYLE[name]["model_type"] and cfg.o_bias is False


def _with_config(ckpt, tmp_path, edit):
    """A copy of checkpoint `ckpt` whose config.json is edit(config) (dropped keys: value None)."""
    out = tmp_path / "ckpt"
    shutil.copytree(ckpt, out)
    raw = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(edit(raw)))
    return out


REFUSED = [   # (config change, words the error must contain)
    (dict(hidden_act="relu"), "hidden_act='relu' in .* supported: silu, gelu, gelu_pytorch_tanh"),
    (dict(use_sliding_window=True), "use_sliding_window=True .* sliding-window attention is not implemented"),
    (dict(layer_types=["sliding_attention", "full_attention"]), "layer_types=.*only full causal attention"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     "rope_parameters.rope_type='yarn' .* supported: default, llama3"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
     "partial_rotary_factor=0.5"),
    (dict(quantization_config={"quant_method": "gptq"}), "quantization_config=.*quantized weights"),
    (dict(mlp_bias=True), "mlp_bias=true .* transformers' qwen3 ignores this field"),
    (dict(rope_interleaved=True), "rope_interleaved=True"),
    (dict(brand_new_knob=3), "brand_new_knob=3 .* does not know"),
    (dict(rope_parameters=None, rope_theta=None), "rope_theta=None .* should be a positive number"),
    (dict(num_hidden_layers="2"), "num_hidden_layers='2' .* should be a positive integer"),
    (dict(tie_word_embeddings="yes"), "tie_word_embeddings='yes' .* true or false"),
    (dict(num_key_value_heads=3), "num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
    (dict(eos_token_id="0"), "eos_token_id='0'"),
]


@pytest.mark.parametrize("change,message", REFUSED, ids=[next(iter(c)) for c, _ in REFUSED])
def test_unsupported_config_fields_are_refused_by_name(change, message, tiny_ckpt, tmp_path):
    ckpt = _with_config(tiny_ckpt, tmp_path, lambda raw: {**raw, **change})
    if "eos_token_id" in change:
        (ckpt / "generation_config.json").unlink()
    with pytest.raises(ValueError, match=message):
        LLM(ckpt, **ENGINE)


def test_dropout_and_other_inference_irrelevant_fields_load(tiny_ckpt, tmp_path):
    ckpt = _with_config(tiny_ckpt, tmp_path, lambda raw: {
        **raw, "attention_dropout": 0.1, "initializer_range": 0.5, "pretraining_tp": 1, "use_cache": False,
        "sliding_window": 4096, "use_sliding_window": False, "layer_types": ["full_attention"] * 2})
    assert ModelConfig.from_hf(ckpt).num_layers == 2


def test_fused_activation_never_silently_runs_silu():
    """The fused Triton kernel only knows silu: with gelu the fused form computes gelu in torch."""
    gate_up = torch.randn(5, 16)
    gate, up = gate_up.chunk(2, dim=-1)
    kernel_calls = []
    forms = LayerForms(silu_and_mul=lambda gu: kernel_calls.append(gu) or gu[:, :8])   # stands in for the kernel
    for act, fn in [("gelu", torch.nn.functional.gelu),
                    ("gelu_pytorch_tanh", lambda x: torch.nn.functional.gelu(x, approximate="tanh"))]:
        module = ActAndMul(act)
        module.forms = forms
        assert torch.equal(module(gate_up), fn(gate) * up)
    assert not kernel_calls
    module = ActAndMul("silu")
    module.forms = forms
    module(gate_up)
    assert len(kernel_calls) == 1   # silu keeps the kernel (tests/test_kernels_interpret.py)


def test_row_parallel_biases_are_whole_on_every_rank():
    bias = torch.arange(4.0)
    for name in ("layers.0.self_attn.o_proj.bias", "layers.0.mlp.down_proj.bias"):
        assert all(shard_tensor(name, bias, r, 2) is bias for r in (0, 1))   # added once, after the all-reduce
    assert torch.equal(torch.cat([shard_tensor("layers.0.mlp.up_proj.bias", bias, r, 2) for r in (0, 1)]), bias)


def test_tp2_with_every_bias_gives_the_tokens_of_tp1(tmp_path):
    ckpt = write_hf_checkpoint(tmp_path, "llama", seed=5, attention_bias=True, mlp_bias=True)
    prompts = _prompts()[:4]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    with LLM(ckpt, **ENGINE) as llm:
        one = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    with LLM(ckpt, tensor_parallel_size=2, **ENGINE) as llm:
        two = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert one == two


def test_weights_the_config_does_not_declare_are_refused(variant_dir, tmp_path):
    ckpt = _with_config(variant_dir("llama-attention_bias"), tmp_path, lambda raw: {**raw, "attention_bias": False})
    with pytest.raises(ValueError, match="tensors this model does not use, e.g. model.layers.0.self_attn.._proj.bias"):
        LLM(ckpt, **ENGINE)


def test_a_tied_head_must_equal_the_embedding(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    weights = load_file(ckpt / "model.safetensors")
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, ckpt / "model.safetensors")
    LLM(ckpt, **ENGINE).close()   # a tied head saved anyway: harmless
    weights["lm_head.weight"][0, 0] += 1
    save_file(weights, ckpt / "model.safetensors")
    with pytest.raises(ValueError, match="tie_word_embeddings=true but an lm_head.weight that differs"):
        LLM(ckpt, **ENGINE)


# --- the CLI: a bad checkpoint is one `error:` line and exit code 2 -----------------------------
def _damage_weights(how):
    def damage(ckpt):
        file = ckpt / "model.safetensors"
        data = file.read_bytes()
        file.write_bytes({"truncated": data[:len(data) // 2], "empty": b"",
                          "random": random.Random(0).randbytes(4096)}[how])
    return damage


def _set(**fields):
    return lambda ckpt: (ckpt / "config.json").write_text(
        json.dumps({**json.loads((ckpt / "config.json").read_text()), **fields}))


BAD_CHECKPOINTS = {   # name -> (damage, words the error line must contain)
    "truncated": (_damage_weights("truncated"), "model.safetensors is not a readable safetensors file"),
    "empty": (_damage_weights("empty"), "model.safetensors is not a readable safetensors file"),
    "random-bytes": (_damage_weights("random"), "model.safetensors is not a readable safetensors file"),
    "config-is-a-list": (lambda c: (c / "config.json").write_text("[1, 2]"), "config.json holds a JSON list"),
    "config-not-json": (lambda c: (c / "config.json").write_text("{oops"), "config.json is not valid JSON"),
    "rope_theta-null": (_set(rope_theta=None), "rope_theta=None"),
    "wrong-type": (_set(hidden_size=64.5), "hidden_size=64.5"),
    "more-layers-than-weights": (_set(num_hidden_layers=3), "lacks .* weights, e.g. \\['layers.2"),
    "fewer-layers-than-weights": (_set(num_hidden_layers=1), "tensors this model does not use, e.g. model.layers.1"),
    "qwen2-without-biases": (_set(model_type="qwen2", architectures=["Qwen2ForCausalLM"]),
                             "does not use, e.g. model.layers.0.self_attn.k_norm"),
    "shape-mismatch": (_set(intermediate_size=96), "in model.safetensors has shape .* config.json implies"),
    "qk-norm-unused": (_set(model_type="llama"), "does not use, e.g. model.layers.0.self_attn.k_norm.weight"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_cli_reports_a_bad_checkpoint_in_one_line(case, tiny_ckpt, tmp_path, capsys):
    import re
    damage, message = BAD_CHECKPOINTS[case]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    damage(ckpt)
    assert main(["demo", "--model", str(ckpt), "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err, err
    assert re.search(message, err.splitlines()[0]), err
