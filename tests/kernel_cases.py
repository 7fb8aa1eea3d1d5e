"""Cases shared by the kernel tests on the CPU (Triton's interpreter) and on the GPU, and the
harness that runs a test file's checks under the interpreter in a child process."""
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def interpreter_verdicts(script: str, timeout: int = 300) -> dict:
    """Run `script` (a test file) as a child process with TRITON_INTERPRET=1 -- the variable must
    be set before triton creates the kernels -- and return its {check name: "ok" | traceback}."""
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_checks(names, namespace: dict, *args) -> None:
    """In the child: call namespace[f"check_{name}"](*args) for each name; print the verdicts as
    one JSON line (every failure is reported, not just the first)."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run through pytest (sets TRITON_INTERPRET=1)"
    verdicts = {}
    for name in names:
        try:
            start = time.perf_counter()
            namespace[f"check_{name}"](*args)
            verdicts[name] = "ok"
            print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        except Exception:
            verdicts[name] = traceback.format_exc()
    print(json.dumps(verdicts))


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


def qk_norm_rope_store_outputs(torch, Hq, Hk, D, dtype, T, norm, device="cpu", max_pos=4096, blocks=(8, 4)):
    """q/k norm (norm=False: RoPE alone, as Llama) + RoPE + the KV-cache write three ways on the same
    inputs: 'plain' (plain torch forms, then store_kv), 'fused' (fused_kernels' Triton forms, then
    store_kv) and 'one' (qk_norm_rope_store). The cache starts as noise; slots are spread over it,
    rows 1 and T-1 padding (-1), as a CUDA-graph bucket's. Returns ({way: (q, k_cache, v_cache)},
    cache before, slot_mapping)."""
    from workbench.attention import store_kv
    from workbench.kernels.qk_norm_rope_store import qk_norm_rope_store
    from workbench.model.layers import RMSNorm, RotaryEmbedding
    from workbench.optimizations.fused_kernels import forms_for
    rotary = RotaryEmbedding(D, max_pos, 1e6).to(device)
    norms = [RMSNorm(D, 1e-6).to(device, dtype) for _ in range(2)]   # q_norm, k_norm
    for n in norms:
        n.weight.data = (1 + 0.1 * torch.randn(D, device=device)).to(dtype)
    qkv = 3 * torch.randn(T, (Hq + 2 * Hk) * D, device=device, dtype=dtype)   # rms far from 1
    pos = torch.randint(0, max_pos, (T,), device=device)
    pos[0] = max_pos - 1   # the table's last row
    slots = torch.randperm(blocks[0] * blocks[1], device=device)[:T]
    slots[[i for i in {1, T - 1} if 0 < i < T]] = -1   # T = 1: no padding
    cache = torch.randn(2, *blocks, Hk, D, device=device, dtype=dtype)
    outs = {}
    for way in ("plain", "fused", "one"):
        buf, kc, vc = qkv.clone(), cache[0].clone(), cache[1].clone()
        q, k, v = buf.split([Hq * D, Hk * D, Hk * D], dim=-1)
        q, k, v = q.unflatten(-1, (Hq, D)), k.unflatten(-1, (Hk, D)), v.unflatten(-1, (Hk, D))
        if way == "one":
            q = qk_norm_rope_store(q, k, v, pos, rotary.cos_sin_cache, kc, vc, slots, *(norms if norm else ()))
        else:
            for module in (rotary, *norms):
                module.forms = forms_for(way == "fused")
            q, k = rotary.norm_and_rotate(pos, q, k, *norms) if norm else rotary(pos, q, k)
            store_kv(k, v, kc, vc, slots)
        assert torch.equal(buf, qkv), f"{way}: the QKV output must be left alone"
        outs[way] = (q, kc, vc)
    return outs, cache, slots


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


def decode_attention_inputs(torch, lens, hq, hkv, head_dim, block_size, dtype, device="cpu"):
    """Fresh random decode-attention inputs over a paged cache whose blocks are handed out in
    shuffled order (a real block table is not 0, 1, 2, ...), one unused table column.
    Returns (q, k_cache, v_cache, seq_lens, table, scale, meta)."""
    from workbench.attention import AttentionMetadata
    batch, width = len(lens), max(-(-n // block_size) for n in lens) + 1   # + 1: an unused column
    num_blocks = batch * width + 3
    k_cache = torch.randn(num_blocks, block_size, hkv, head_dim, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(num_blocks, device=device)[:batch * width].view(batch, width).int()
    q = torch.randn(batch, hq, head_dim, device=device, dtype=dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    meta = AttentionMetadata(torch.arange(batch + 1, dtype=torch.int32, device=device), seq_lens, table,
                             torch.full((batch,), -1, device=device), 1, max(lens), is_decode=True)
    return q, k_cache, v_cache, seq_lens, table, head_dim ** -0.5, meta


def naive_decode_attention(q, k_cache, v_cache, meta, scale):
    """The reference: the naive backend in float64 on the upcast inputs."""
    from workbench.attention.naive import NaiveAttention
    return NaiveAttention()(q.double(), k_cache.double(), v_cache.double(), meta, scale)


def decode_attention_errors(torch, lens, hq, hkv, head_dim, block_size, dtype, splits=None, device="cpu",
                            wrong_table=False, reference=None, merge="kernel") -> list[float]:
    """The Triton decode kernel on fresh random inputs (decode_attention_inputs) vs attention over
    the same paged cache, one ||got - ref|| / ||ref|| per sequence. reference: a backend callable
    (q, k_cache, v_cache, meta, scale); default: naive_decode_attention.
    wrong_table: run the kernel on the blocks in order instead (a planted bug the check must catch)."""
    from workbench.kernels.decode_attention import paged_decode_attention
    q, k_cache, v_cache, seq_lens, table, scale, meta = decode_attention_inputs(
        torch, lens, hq, hkv, head_dim, block_size, dtype, device)
    want = (naive_decode_attention if reference is None else reference)(q, k_cache, v_cache, meta, scale).double()
    batch, width = table.shape
    run_table = torch.arange(batch * width, device=device).view(batch, width).int() if wrong_table else table
    got = paged_decode_attention(q, k_cache, v_cache, seq_lens, run_table, scale, splits=splits, merge=merge)
    assert got.shape == q.shape and got.dtype == dtype, (got.shape, got.dtype)
    assert torch.isfinite(got).all(), "non-finite output (an element left unwritten?)"
    return [((g.double() - w).norm() / w.norm()).item() for g, w in zip(got, want)]


def assert_engine_parity(tmp_dir, settings, prompts: int, max_num_seqs: int) -> None:
    """The parity bar on the GPU: each setting against all-off on a random Qwen3-0.6B-shaped bf16
    checkpoint, 32 greedy tokens a prompt (>= 99 % tokens outside near-ties, first-step logit
    rel err < 2e-2); prints the table."""
    from workbench.check import parity_table, random_prompts
    from workbench.measure import format_table
    from workbench.model import make_checkpoint
    path = make_checkpoint(tmp_dir, "qwen3-0.6b", seed=0, dtype="bfloat16")
    rows = parity_table(path, settings, random_prompts(prompts, 151936), 32, with_hf=False,
                        max_num_seqs=max_num_seqs)
    print(format_table(rows))
    for row in rows:
        assert row["vs_all_off_match_rate_excl_ties"] >= 0.99, row
        assert row["vs_all_off_first_step_logit_rel_err"] < 2e-2, row


def stub_pdl_wait(module, hooks: list) -> None:
    """The interpreter cannot run gdc_wait; it runs kernels as Python, so a plain function stands
    in for `module.pdl_wait` (install it before the module's kernels first run: the interpreter
    resolves it once). With PDL on it runs `hooks`' actions -- the writes of the kernel before,
    finishing -- and off, nothing, as the real one."""
    def pdl_wait(USE_PDL):
        if USE_PDL:
            for action in hooks:
                action()
    module.pdl_wait = pdl_wait
