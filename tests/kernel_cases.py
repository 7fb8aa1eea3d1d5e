"""Cases shared by the kernel tests on the CPU (Triton's interpreter) and on the GPU."""


def qk_norm_rope_outputs(torch, Hq, Hk, D, dtype, T, device="cpu", max_pos=4096):
    """Run Qwen3's q/k norm + RoPE on q/k views of one QKV buffer, unfused and fused.
    Returns (qkv before, buffer after the fused run, (want_q, want_k), (got_q, got_k))."""
    from workbench.model.layers import RMSNorm, RotaryEmbedding
    from workbench.optimizations.fused_kernels import forms_for
    rotary = RotaryEmbedding(D, max_pos, 1e6).to(device)
    norms = [RMSNorm(D, 1e-6).to(device, dtype) for _ in range(2)]   # q_norm, k_norm
    for norm in norms:
        norm.weight.data = (1 + 0.1 * torch.randn(D, device=device)).to(dtype)   # near 1, as trained
    qkv = torch.randn(T, (Hq + 2 * Hk) * D, device=device, dtype=dtype)
    pos = torch.randint(0, max_pos, (T,), device=device)
    pos[0] = max_pos - 1   # the table's last row

    def run(fused):
        forms = forms_for(fused)   # the forms the fused_kernels switch installs
        for module in (rotary, *norms):
            module.forms = forms
        buf = qkv.clone()
        q, k = buf[:, :Hq * D].view(T, Hq, D), buf[:, Hq * D:(Hq + Hk) * D].view(T, Hk, D)
        return buf, rotary.norm_and_rotate(pos, q, k, *norms)

    _, want = run(False)
    buf, got = run(True)
    assert torch.equal(buf, qkv), "the fused form must leave its input (the QKV buffer) alone"
    assert all(t.is_contiguous() for t in got)
    return qkv, buf, want, got


def gemv_rel_err(torch, m, n, k, dtype, bias, config=None, device="cpu", x_stride=None):
    """The decode GEMV against float64 F.linear on fresh random inputs: ||got - ref|| / ||ref||.
    x_stride: read x as a strided view (rows x_stride apart), as a slice of a wider buffer is."""
    from torch.nn.functional import linear as f_linear

    from workbench.kernels.gemv import gemv
    buf = torch.randn(m, x_stride or k, device=device, dtype=dtype)
    x, w = buf[:, :k], torch.randn(n, k, device=device, dtype=dtype)
    b = torch.randn(n, device=device, dtype=dtype) if bias else None
    got = gemv(x, w, b, config)
    assert got.shape == (m, n) and got.dtype == dtype, (got.shape, got.dtype)
    ref = f_linear(x.double(), w.double(), None if b is None else b.double())
    assert torch.isfinite(got).all(), "non-finite output (an element left unwritten?)"
    return ((got.double() - ref).norm() / ref.norm()).item()


# (M, N, K, config) for the interpreter: small, odd (N not a multiple of the block, K not of
# split x block), split-K on and off, M = 1 (elementwise path) and M > 1 (tl.dot path).
def gemv_interpreter_cases(GemvConfig):
    cases = []
    for m in (1, 3, 16):
        bn = 4 if m == 1 else 16
        for n, k in ((40, 72), (32, 256)):
            for split in (1, 3):
                cases.append((m, n, k, GemvConfig(block_n=bn, block_k=32, split_k=split)))
        cases.append((m, 24, 100, None))   # the heuristic default
    return cases
