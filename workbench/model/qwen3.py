"""The decoder: Qwen3 (and Qwen2 and Llama, which are Qwen3 without q/k norm; see config.py).

Reads top-down: CausalLM -> DecoderLayer -> (Attention, MLP). Everything works on packed tokens
[T, hidden]: no batch dimension, no padding. q/k/v and gate/up projections are stored merged
(one matmul instead of three or two), the standard layout of inference engines; the loader
concatenates the checkpoint's separate tensors.
"""
from __future__ import annotations

import torch
from torch import nn

from workbench.attention import AttentionMetadata, store_kv
from workbench.parallel.tensor_parallel import ColumnParallelLinear, Linear, RowParallelLinear

from .config import ModelConfig
from .layers import ActAndMul, RMSNorm, RotaryEmbedding


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, tp_size: int = 1):
        super().__init__()
        # Tensor parallelism (workbench.parallel): this rank computes num_heads/tp query heads and
        # num_kv_heads/tp kv heads; qkv_proj is column-parallel (holds [q|k|v] rows of those heads),
        # o_proj row-parallel (all-reduces the ranks' partial sums). tp_size=1: plain Linears.
        self.num_heads, self.num_kv_heads = cfg.num_heads // tp_size, cfg.num_kv_heads // tp_size
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * cfg.head_dim
        self.kv_size = self.num_kv_heads * cfg.head_dim
        self.qkv_proj = ColumnParallelLinear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim,
                                             bias=cfg.attention_bias, tp_size=tp_size)
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_bias, tp_size=tp_size)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.rotary = rotary   # one table shared by all layers
        self.backend = None   # the attention switch's function, installed by workbench.optimizations.attention
        self.scale = cfg.head_dim ** -0.5
        self.k_cache = self.v_cache = torch.empty(0)   # views into the engine's KV cache, set by the runner

    # fused_decode installs fold(attn, positions, q, k, v, meta) -> q, or None where it does not
    # apply (more than 16 tokens): q/k norm + RoPE + the cache write of k and v as one kernel
    fold = None

    def forward(self, positions, qkv, meta: AttentionMetadata):
        """qkv = qkv_proj(normed hidden), computed by the layer (it may fold the norm into it)."""
        return self.o_proj(self.heads_output(positions, qkv, meta))

    def split_heads(self, qkv):
        """q [T, heads, head_dim], k and v [T, kv_heads, head_dim]: views into qkv_proj's output."""
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return (q.unflatten(-1, (self.num_heads, self.head_dim)), k.unflatten(-1, (self.num_kv_heads, self.head_dim)),
                v.unflatten(-1, (self.num_kv_heads, self.head_dim)))

    def heads_output(self, positions, qkv, meta: AttentionMetadata) -> torch.Tensor:
        """Every head's attention output, side by side [T, heads x head_dim]: what o_proj reads."""
        q, k, v = self.split_heads(qkv)
        folded_q = self.fold(self, positions, q, k, v, meta) if self.fold is not None else None
        if folded_q is not None:   # k and v are in the cache already
            out = self.attend(folded_q, None, None, meta)
        else:
            out = self.attend(*self.rotate(positions, q, k), v, meta)
        return out.flatten(-2)

    def rotate(self, positions, q, k):
        if self.qk_norm:   # Qwen3 normalizes each q/k head before RoPE (Llama does not)
            return self.rotary.norm_and_rotate(positions, q, k, self.q_norm, self.k_norm)
        return self.rotary(positions, q, k)

    # l2_prefetch's side-stream form sets this: called at a decode step's attention, it asks L2
    # for the weights the layer reads next, on a stream of its own (optimizations/l2_prefetch.py)
    side_prefetch = None

    # Kept out of torch.compile: the attention switch alone decides how attention runs, and the
    # step's lengths (host ints that change every step) never reach the compiler's guards.
    @torch.compiler.disable
    def attend(self, q, k, v, meta: AttentionMetadata) -> torch.Tensor:
        """k, v None: already in the cache (written by fused_decode's fold)."""
        if self.side_prefetch is not None and meta.is_decode:
            self.side_prefetch()
        if k is not None:
            store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        return self.backend(q, self.k_cache, self.v_cache, meta, self.scale)


class MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); act = silu is SwiGLU. The decoder layer runs its parts
    itself (DecoderLayer.forward: the norm before it, gate_up and the activation asked as one
    piece, which fused_decode makes one kernel); forward is the MLP alone, as the formula says."""

    def __init__(self, cfg: ModelConfig, tp_size: int = 1):
        super().__init__()
        # Tensor parallelism: each rank holds intermediate_size/tp of gate and of up (column-
        # parallel, rows [gate_r | up_r]) and the matching columns of down (row-parallel + all-reduce).
        self.gate_up_proj = ColumnParallelLinear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias,
                                                 tp_size=tp_size)
        self.act = ActAndMul(cfg.hidden_act)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias, tp_size=tp_size)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, tp_size: int = 1):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, rotary, tp_size)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, tp_size)

    def forward(self, positions, hidden, residual, meta):
        # The residual stream travels beside the hidden state so that "add residual, then
        # normalize" is one call -- one kernel when fused -- and each norm is asked together with
        # the matmul it feeds: with fused_decode, one kernel at decode. On the first layer
        # residual is None: the residual stream starts as the embeddings. The MLP's activation
        # is asked with its gate_up_proj too: fused_decode computes it in that GEMV's epilogue,
        # so down_proj reads act(gate) * up, half of gate_up's width.
        qkv, residual = self.input_layernorm.then(self.self_attn.qkv_proj, hidden, residual)
        hidden = self.self_attn(positions, qkv, meta)
        mlp = self.mlp
        gated, residual = self.post_attention_layernorm.then(mlp.gate_up_proj, hidden, residual, act=mlp.act)
        return mlp.down_proj(gated), residual


class CausalLM(nn.Module):
    """tp_size > 1: this is one rank's shard (see workbench.parallel); the embedding, norms and
    lm_head are replicated on every rank. The switches are installed into a built model by
    workbench.optimizations (attention backend, layer forms, decode GEMV), not passed in here."""

    def __init__(self, cfg: ModelConfig, tp_size: int = 1):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta,
                                      cfg.rope_scaling)
        self.layers = nn.ModuleList(DecoderLayer(cfg, self.rotary, tp_size)
                                    for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Small models reuse the embedding matrix as the output head (saves vocab x hidden)."""
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids, positions, meta: AttentionMetadata) -> torch.Tensor:
        """Packed token ids [T] -> final hidden states [T, hidden]."""
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
