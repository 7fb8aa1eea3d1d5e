"""GPU checks: the Triton kernels and FlashAttention against plain-torch references, in bf16.

Outputs start out poisoned (NaN) so a kernel that skips an element cannot pass by luck, and cache
blocks no sequence owns are NaN so a kernel that reads the wrong block cannot either.
Run: pytest -m gpu tests/gpu
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV, BF16 = "cuda", torch.bfloat16


def _poison_allocator(mb: int = 256) -> None:
    """Fill free cached memory with NaN so that torch.empty() inside a kernel wrapper returns NaNs."""
    torch.empty(mb << 20, dtype=torch.uint8, device=DEV).fill_(0xFF)   # 0xFFFF.. is NaN in bf16/fp32


def _ops():
    pytest.importorskip("triton")
    from workbench.kernels import triton_ops
    return triton_ops


# --- Triton kernels --------------------------------------------------------------------------
def test_store_kvcache():
    ops = _ops()
    T, H, D, blocks, bs = 37, 8, 128, 16, 16
    kv = torch.randn(T, 3 * H * D, device=DEV, dtype=BF16)     # strided views, like a QKV split
    k, v = kv[:, :H * D].view(T, H, D), kv[:, H * D:2 * H * D].view(T, H, D)
    slots = torch.randperm(blocks * bs, device=DEV)[:T]
    slots[::5] = -1                                            # padding tokens: skipped
    k_cache = torch.full((blocks, bs, H, D), float("nan"), device=DEV, dtype=BF16)
    v_cache = torch.full_like(k_cache, float("nan"))
    ops.store_kvcache(k, v, k_cache, v_cache, slots)
    keep = slots >= 0
    assert torch.equal(k_cache.view(-1, H, D)[slots[keep]], k[keep])
    assert torch.equal(v_cache.view(-1, H, D)[slots[keep]], v[keep])
    assert k_cache.isnan().any(dim=(2, 3)).sum() == blocks * bs - keep.sum()   # nothing else written


def _ref_norm(x, weight, eps):   # as RMSNorm._norm in workbench/model/layers.py
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@pytest.mark.parametrize("hidden", [1024, 2560, 1000])
def test_fused_add_rms_norm(hidden):
    ops = _ops()
    x = torch.randn(67, hidden, device=DEV, dtype=BF16)
    res = torch.randn(67, hidden, device=DEV, dtype=BF16)
    w = (1 + 0.1 * torch.randn(hidden, device=DEV)).to(BF16)
    _poison_allocator()
    out, new_res = ops.fused_add_rms_norm(x, res, w, 1e-6)
    assert torch.equal(new_res, x + res)                       # rounds exactly like torch
    torch.testing.assert_close(out, _ref_norm(x + res, w, 1e-6), atol=2e-2, rtol=1e-2)
    out, same = ops.fused_add_rms_norm(x, None, w, 1e-6)
    assert same is x
    torch.testing.assert_close(out, _ref_norm(x, w, 1e-6), atol=2e-2, rtol=1e-2)


def test_rms_norm_per_head():
    ops = _ops()
    qkv = torch.randn(67, 32 * 128, device=DEV, dtype=BF16)
    q = qkv[:, :16 * 128].view(67, 16, 128)                     # strided [T, heads, D]
    w = torch.randn(128, device=DEV).to(BF16)
    _poison_allocator()
    torch.testing.assert_close(ops.rms_norm(q, w, 1e-6), _ref_norm(q, w, 1e-6), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("inter", [3072, 1000])
def test_silu_and_mul(inter):
    ops = _ops()
    gate_up = 3 * torch.randn(67, 2 * inter, device=DEV, dtype=BF16)
    gate, up = gate_up.float().chunk(2, dim=-1)
    _poison_allocator()
    got = ops.silu_and_mul(gate_up)
    torch.testing.assert_close(got, (torch.nn.functional.silu(gate) * up).to(BF16), atol=2e-2, rtol=1e-2)


def test_apply_rope():
    ops = _ops()
    T, Hq, Hk, D, max_pos = 67, 16, 8, 128, 4096
    inv_freq = 1.0 / 1e6 ** (torch.arange(0, D, 2, device=DEV, dtype=torch.float32) / D)
    freqs = torch.outer(torch.arange(max_pos, device=DEV, dtype=torch.float32), inv_freq)
    table = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
    qkv = torch.randn(T, (Hq + 2 * Hk) * D, device=DEV, dtype=BF16)
    q, k = qkv[:, :Hq * D].view(T, Hq, D), qkv[:, Hq * D:(Hq + Hk) * D].view(T, Hk, D)
    pos = torch.randint(0, max_pos, (T,), device=DEV)
    cos, sin = table[pos].unsqueeze(1).chunk(2, dim=-1)

    def rotate(x):   # as workbench/model/layers.py::_rotate
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(BF16)

    want_q, want_k, qkv_before = rotate(q), rotate(k), qkv.clone()
    got_q, got_k = ops.apply_rope(q, k, pos, table)
    torch.testing.assert_close(got_q, want_q, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(got_k, want_k, atol=2e-2, rtol=1e-2)
    assert torch.equal(qkv, qkv_before)


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("heads", [(16, 8, 128), (4, 2, 16), (8, 2, 64)])   # Qwen3-0.6B, tiny, D=64
def test_qk_norm_rope(heads, dtype, T):
    """Fused q/k RMSNorm + RoPE (one kernel) vs the unfused modules, on q/k views of one QKV."""
    _ops()
    from kernel_cases import qk_norm_rope_outputs   # tests/ is on sys.path (its conftest.py)
    _, _, (want_q, want_k), (got_q, got_k) = qk_norm_rope_outputs(torch, *heads, dtype, T, device=DEV,
                                                                  max_pos=40960)
    for got, want in ((got_q, want_q), (got_k, want_k)):
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-6)
        else:
            torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)
            # It rounds where torch rounds: only a rare near-tie (summation order) may differ;
            # one rounding step more or less would change ~30% of the values.
            assert (got != want).float().mean() < 5e-2


# --- FlashAttention over the paged cache -----------------------------------------------------
def _flash():
    from workbench.attention.flash import FlashAttention, flash_status
    name, reason = flash_status()
    if name is None:
        pytest.skip(f"no flash-attn: {reason}")
    return FlashAttention()


def _paged_problem(seq_lens, q_lens, block_size, Hq=16, Hkv=8, D=128, seed=0):
    """Random queries, a random paged cache, random block tables -> (q, k_cache, v_cache, meta)."""
    from workbench.attention.metadata import AttentionMetadata
    g = torch.Generator(device=DEV).manual_seed(seed)
    need = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(need) + 3                                   # a few blocks nobody owns
    perm = torch.randperm(num_blocks, device=DEV, generator=g).to(torch.int32)
    tables = torch.zeros(len(seq_lens), max(need) + 1, dtype=torch.int32, device=DEV)  # pad: 0
    start = 0
    for b, n in enumerate(need):
        tables[b, :n] = perm[start:start + n]
        start += n
    k_cache = torch.randn(num_blocks, block_size, Hkv, D, device=DEV, dtype=BF16, generator=g)
    v_cache = torch.randn(num_blocks, block_size, Hkv, D, device=DEV, dtype=BF16, generator=g)
    k_cache[perm[start:].long()] = float("nan")                 # unowned blocks: must not be read
    v_cache[perm[start:].long()] = float("nan")
    q = torch.randn(sum(q_lens), Hq, D, device=DEV, dtype=BF16, generator=g)
    cu = torch.tensor([0] + q_lens, device=DEV).cumsum(0).to(torch.int32)
    meta = AttentionMetadata(cu, torch.tensor(seq_lens, dtype=torch.int32, device=DEV), tables,
                             torch.zeros(0, dtype=torch.int64, device=DEV), max(q_lens),
                             max(seq_lens), all(n == 1 for n in q_lens))
    return q, k_cache, v_cache, meta


def _reference(q, k_cache, v_cache, meta, scale):
    """float32 attention, K/V gathered through the block table; queries are each sequence's last."""
    outs = []
    for b in range(meta.num_seqs):
        L, (q0, q1) = int(meta.seq_lens[b]), meta.cu_seqlens_q[b:b + 2].tolist()
        blocks = meta.block_tables[b].long()
        k = k_cache[blocks].flatten(0, 1)[:L].float()           # [L, Hkv, D]
        v = v_cache[blocks].flatten(0, 1)[:L].float()
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        qb = q[q0:q1].float()
        scores = torch.einsum("qhd,khd->hqk", qb, k) * scale
        q_pos = torch.arange(L - (q1 - q0), L, device=q.device)    # bottom-right aligned
        mask = torch.arange(L, device=q.device)[None, :] <= q_pos[:, None]
        scores = scores.masked_fill(~mask, float("-inf"))
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v))
    return torch.cat(outs)


CASES = {   # name: (seq_lens, q_lens)
    "decode": ([1, 17, 300, 129, 1000, 64], [1] * 6),
    "prefill": ([5, 300, 129, 700], [5, 300, 129, 700]),
    "prefix_hits_and_chunks": ([300, 129, 700, 40, 1], [20, 129, 256, 1, 1]),
}


@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize("case", list(CASES))
def test_flash_attention_matches_reference(case, block_size):
    attn = _flash()
    q, k_cache, v_cache, meta = _paged_problem(*CASES[case], block_size)
    scale = q.shape[-1] ** -0.5
    if attn.kind == "fa2" and block_size % 256:
        with pytest.raises(ValueError, match="multiple of 256"):
            attn(q, k_cache, v_cache, meta, scale)
        return
    _poison_allocator()
    out = attn(q, k_cache, v_cache, meta, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.float(), _reference(q, k_cache, v_cache, meta, scale),
                               atol=2e-2, rtol=2e-2)


def test_flash_decode_cuda_graph_replay():
    """Capture decode once, then replay with longer sequences: the graph must stay correct."""
    attn = _flash()
    block_size = 128 if attn.kind == "fa4" else 256
    final = torch.tensor([100, 300, 5, 700], device=DEV) + 128
    q, k_cache, v_cache, meta = _paged_problem(final.tolist(), [1] * 4, block_size)  # tables fit final
    meta.seq_lens -= 128
    scale = q.shape[-1] ** -0.5
    attn(q, k_cache, v_cache, meta, scale)                      # JIT-compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attn(q, k_cache, v_cache, meta, scale)
    for grow in (0, 1, 128):                                    # same tables, longer sequences
        meta.seq_lens.copy_(final - 128 + grow)
        meta.max_seqlen_k = int(meta.seq_lens.max())
        q.copy_(torch.randn_like(q))
        graph.replay()
        torch.testing.assert_close(out.float(), _reference(q, k_cache, v_cache, meta, scale),
                                   atol=2e-2, rtol=2e-2)
