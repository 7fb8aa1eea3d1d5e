"""Cases shared by the kernel tests on the CPU (Triton's interpreter) and on the GPU."""


def qk_norm_rope_outputs(torch, Hq, Hk, D, dtype, T, device="cpu", max_pos=4096):
    """Run Qwen3's q/k norm + RoPE on q/k views of one QKV buffer, unfused and fused.
    Returns (qkv before, buffer after the fused run, (want_q, want_k), (got_q, got_k))."""
    from workbench.model.layers import RMSNorm, RotaryEmbedding
    rotary = RotaryEmbedding(D, max_pos, 1e6).to(device)
    norms = [RMSNorm(D, 1e-6).to(device, dtype) for _ in range(2)]   # q_norm, k_norm
    for norm in norms:
        norm.weight.data = (1 + 0.1 * torch.randn(D, device=device)).to(dtype)   # near 1, as trained
    qkv = torch.randn(T, (Hq + 2 * Hk) * D, device=device, dtype=dtype)
    pos = torch.randint(0, max_pos, (T,), device=device)
    pos[0] = max_pos - 1   # the table's last row

    def run(fused):
        rotary.fused, buf = fused, qkv.clone()
        q, k = buf[:, :Hq * D].view(T, Hq, D), buf[:, Hq * D:(Hq + Hk) * D].view(T, Hk, D)
        return buf, rotary.norm_and_rotate(pos, q, k, *norms)

    _, want = run(False)
    buf, got = run(True)
    assert torch.equal(buf, qkv), "the fused form must leave its input (the QKV buffer) alone"
    assert all(t.is_contiguous() for t in got)
    return qkv, buf, want, got
