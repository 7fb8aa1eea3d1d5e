"""The decode-attention switch (Optimizations.decode_attention) and its Triton kernel on the CPU.

The kernel runs under Triton's interpreter (TRITON_INTERPRET=1, in a child process: this file run
as a script, kernel_cases.run_checks) against the naive attention backend over the same paged
cache, and inside a tiny engine against all-off's greedy tokens. The GPU twin:
tests/gpu/test_decode_attention_gpu.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util

import pytest

CHECKS = ["matches_naive", "wrong_table_is_caught", "last_program_merge", "tagged_merge", "tagged_merge_gives_up",
          "o_proj_in_the_merge", "o_proj_fixed_point_is_order_free", "o_proj_fixed_point_poisons", "prefetch_kv", "engine_greedy_parity", "o_proj_variant_matches_the_engine"]


# --- the switch on the board (plain pytest, no kernel runs) ------------------------------------
def test_switch_on_the_board():
    from workbench import Optimizations
    from workbench.measure.bench import bench_presets
    from workbench.optimizations.board import SWITCHES
    assert "decode_attention" in SWITCHES
    assert Optimizations.all_on().decode_attention and not Optimizations.all_off().decode_attention
    assert "dattn" in Optimizations.all_on().label()
    assert "needs a CUDA GPU" in Optimizations(decode_attention=True).why_not("cpu")["decode_attention"]
    with pytest.raises(ValueError, match="decode_attention=True"):
        Optimizations(decode_attention=True).resolve("cpu")
    _, opts = bench_presets()["all_on-decode_attention"]
    assert opts == dataclasses.replace(Optimizations.all_on(), decode_attention=False)


def test_decode_steps_go_to_the_kernel_the_rest_to_the_backend(monkeypatch):
    import torch

    from workbench.attention import AttentionMetadata
    from workbench.kernels import decode_attention as kernel
    from workbench.optimizations import decode_attention
    calls = []
    monkeypatch.setattr(kernel, "paged_decode_attention", lambda *a: calls.append("kernel") or a[0])
    backend = lambda *a: calls.append("backend") or a[0]  # noqa: E731

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = torch.nn.Module()
            self.self_attn.backend = backend
    model = torch.nn.Module()
    model.layers = [Layer()]
    decode_attention.install(model, True)
    decode_attention.install(model, True)   # installing twice wraps once
    meta = lambda decode: AttentionMetadata(torch.zeros(2), torch.ones(1), torch.zeros(1, 1), torch.zeros(1), 1, 1,  # noqa: E731
                                            decode)
    q = torch.zeros(1, 2, 4)
    model.layers[0].self_attn.backend(q, None, None, meta(True), 1.0)
    model.layers[0].self_attn.backend(q, None, None, meta(False), 1.0)
    assert calls == ["kernel", "backend"]
    decode_attention.install(model, False)
    assert model.layers[0].self_attn.backend is backend
    decode_attention.install(model, True, override=backend)   # a student's attention runs every step
    assert model.layers[0].self_attn.backend is backend


def test_split_count_is_static_and_bounded():
    from workbench.kernels.decode_attention import num_splits
    assert num_splits(1, 8, 5, 128, 132) == 10      # batch 1: every key tile of a 640-key table its own program
    assert num_splits(1, 8, 320, 128, 132) == 33    # a wide table: ~2 programs per SM
    assert num_splits(64, 8, 320, 128, 132) == 1    # many sequences fill the GPU alone: one kernel


def test_merge_must_be_named_right():
    import torch

    from workbench.kernels.decode_attention import paged_decode_attention
    q, cache = torch.zeros(1, 2, 8), torch.zeros(1, 16, 1, 8)
    with pytest.raises(ValueError, match="choose from"):
        paged_decode_attention(q, cache, cache, torch.ones(1, dtype=torch.int32), torch.zeros(1, 1, dtype=torch.int32),
                               1.0, merge="last")


def test_fixed_point_is_a_form_of_the_o_proj_fold_for_at_most_127_heads():
    """o_proj_fixed_point without o_proj_weight, or with more query heads than fixed_point.MAX_TERMS
    (one term a head: past it a poisoned sum could wrap round), is refused before any launch."""
    import torch

    from workbench.kernels.decode_attention import paged_decode_attention
    lens, table = torch.ones(1, dtype=torch.int32), torch.zeros(1, 1, dtype=torch.int32)
    for heads, w in ((2, None), (128, torch.zeros(4, 128 * 8))):
        q, cache = torch.zeros(1, heads, 8), torch.zeros(1, 16, 1, 8)
        with pytest.raises(ValueError, match="at most 127 query heads"):
            paged_decode_attention(q, cache, cache, lens, table, 1.0, o_proj_weight=w, o_proj_fixed_point=True)


def test_microbenchmark_without_cuda_says_why():
    from workbench.measure.decode_attention import measure_decode_attention
    from workbench.model import ModelConfig
    cfg = ModelConfig.from_preset("qwen3-0.6b")
    records = measure_decode_attention(cfg, contexts=(640,))
    assert [r.impl for r in records] == ["flash", "triton"] and not any(r.available for r in records)
    assert "GPU" in records[0].reason
    assert [r.impl for r in measure_decode_attention(cfg, ("triton", "triton-last"), contexts=(640,))] == \
        ["triton", "triton-last"]   # the one-launch candidate, timed beside the two-kernel merge
    with pytest.raises(ValueError, match="choose from"):
        measure_decode_attention(cfg, ("cutlass",))


# --- the kernel under the interpreter ---------------------------------------------------------
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture(scope="module")
def verdicts() -> dict:
    from kernel_cases import interpreter_verdicts   # tests/ is on sys.path (its conftest.py)
    return interpreter_verdicts(__file__, timeout=600)


@needs_triton
@pytest.mark.parametrize("name", CHECKS)
def test_kernel_under_interpreter(verdicts, name):
    assert verdicts[name] == "ok", verdicts[name]


# (lengths, block_size, splits, (query heads, KV heads, head_dim)): lengths 1, block_size +- 1,
# several blocks, batch 1..8; splits None = num_splits' choice, 1 = the single-kernel path, 3 =
# forced split-KV (not a power of two: the merge pads) + merge; GQA ratios 1 and 2, head_dim 64 and 128.
CASES = [([1, 15, 16, 17, 70, 3, 33, 64], 16, None, (4, 2, 128)), ([1, 15, 16, 17, 70, 3, 33, 64], 16, 1, (4, 4, 64)),
         ([127, 128, 129], 128, 3, (4, 2, 64)), ([200], 16, None, (4, 4, 128))]


def check_matches_naive(torch):
    from kernel_cases import decode_attention_errors
    for dtype in (torch.float32, torch.bfloat16):
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        for lens, block_size, splits, heads in CASES:
            errs = decode_attention_errors(torch, lens, *heads, block_size, dtype, splits)
            assert max(errs) < tol, f"{dtype} {heads} lens={lens} bs={block_size} splits={splits}: {errs}"


def check_wrong_table_is_caught(torch):
    """The same check on a kernel handed the wrong block table (blocks in order, not the shuffled
    table the cache was filled through) must fail: the check can tell."""
    from kernel_cases import decode_attention_errors
    errs = decode_attention_errors(torch, [1, 40, 70], 4, 2, 64, 16, torch.float32, None, wrong_table=True)
    assert max(errs) > 0.3, f"a wrong table passed the check: {errs}"


# merge="last_program" (one launch): (lengths, block_size, splits, (query heads, KV heads, head_dim)).
# Length 1 (every split but the first empty), lengths off the 64-key tile, mixed lengths, batch
# 1..8, splits 2, 3 (the merge pads to 4), 5, and num_splits' choice; GQA 1 and 2.
LAST_CASES = [([1], 16, 3, (4, 2, 32)), ([70], 16, None, (4, 2, 32)), ([200, 1], 16, 2, (2, 2, 32)),
              ([1, 15, 16, 17, 70, 3, 33, 64], 16, None, (4, 2, 32)), ([127, 128, 129], 128, 5, (4, 2, 64))]


@contextlib.contextmanager
def nan_filled_empty(torch):
    """torch.empty and empty_like hand out NaN-filled floats (and int64s of 2^40, 4,096 as a
    fixed-point sum): a merge that reads a partial before it is written, or an output left
    unwritten, shows as NaN (or as 4,096 too much). (On the CPU a freed buffer's old bytes --
    often the very partials of the call before -- would hide it.)"""
    empty, empty_like = torch.empty, torch.empty_like
    poison = lambda t: (t.fill_(float("nan")) if t.is_floating_point() else  # noqa: E731
                        t.fill_(1 << 40) if t.dtype == torch.int64 else t)
    torch.empty = lambda *a, **kw: poison(empty(*a, **kw))
    torch.empty_like = lambda *a, **kw: poison(empty_like(*a, **kw))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


def check_last_program_merge(torch):
    """On the same inputs, merge="last_program" equals the two-kernel merge and the fp64
    reference, twice in a row: the counters are back at 0 after each call, the second call equals
    the first. (The interpreter runs programs one by one, split S-1 last; which program is last on
    a GPU and the memory ordering are the GPU test's job.)"""
    from kernel_cases import decode_attention_inputs, naive_decode_attention
    from workbench.kernels import decode_attention as kernel
    for lens, block_size, splits, heads in LAST_CASES:
        q, k, v, seq_lens, table, scale, meta = decode_attention_inputs(torch, lens, *heads, block_size, torch.float32)
        want = naive_decode_attention(q, k, v, meta, scale)
        two = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=splits)
        counts = kernel.merge_counters(q.device, len(lens), heads[1])
        ones = []   # kept alive: a second call's output must not land on the first's memory
        for _ in range(2):
            with nan_filled_empty(torch):
                ones.append(kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=splits,
                                                          merge="last_program"))
            case = f"lens={lens} bs={block_size} splits={splits} heads={heads} call {len(ones)}"
            assert counts.eq(0).all(), f"{case}: counters not reset: {counts.tolist()}"
            torch.testing.assert_close(ones[-1], two, rtol=1e-6, atol=1e-6, msg=lambda m: f"{case}: {m}")
            err = max(((g.double() - w).norm() / w.norm()).item() for g, w in zip(ones[-1], want))
            assert err < 1e-5, f"{case}: rel err vs fp64 reference {err}"
        assert torch.equal(ones[0], ones[1]), "the second call differs from the first"


def check_tagged_merge(torch):
    """merge="tagged" (Choice 7) equals the two-kernel merge bit for bit, three calls in a row on the
    same buffers: each call's tags are one more than the last's, and every (sequence, query head)'s
    count of merged calls has moved on by one. (The interpreter runs the split kernel whole before
    the merge: every word is there at the first read. The waiting is the GPU test's, and the
    giving up tagged_merge_gives_up's.)"""
    from kernel_cases import decode_attention_inputs
    from workbench.kernels import decode_attention as kernel
    for lens, block_size, splits, heads in LAST_CASES:
        q, k, v, seq_lens, table, scale, _ = decode_attention_inputs(torch, lens, *heads, block_size, torch.float32)
        two = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=splits)
        used = splits or kernel.num_splits(len(lens), heads[1], table.shape[1], block_size, 132)
        epochs = kernel.tagged_buffers(q.device, len(lens), heads[0], used, heads[2])[2]
        before = epochs.clone()
        for call, m_l_first in enumerate((False, True, False)):   # (m_l_first: the form that polls m and l first)
            got = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=splits, merge="tagged",
                                                m_l_first=m_l_first)
            case = f"lens={lens} bs={block_size} splits={splits} heads={heads} call {call + 1}"
            assert torch.equal(got, two), f"{case}: differs from the two-kernel merge"
        assert torch.equal(epochs, before + 3), f"counts {epochs.tolist()}, before {before.tolist()}"


def check_tagged_merge_gives_up(torch):
    """A merge program whose words never get this call's tag (the merge launched again with no split
    before it: every word still carries the call before's) stops after MAX_POLLS reads and writes
    NaN, where a merge that trusted its words would write the call before's output. Its count moves on
    all the same, so a word of the failed call that lands late (its split read its tag before the
    merge could start) carries a tag the next call does not expect. The one-word plant: a single
    stale word, one head's output NaN, the others right."""
    from kernel_cases import decode_attention_inputs
    from workbench.kernels import decode_attention as kernel
    lens, heads, splits = [70, 3], (4, 2, 32), 3
    q, k, v, seq_lens, table, scale, _ = decode_attention_inputs(torch, lens, *heads, 16, torch.float32)
    want = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=splits, merge="tagged")
    words, m_l, epochs = kernel.tagged_buffers(q.device, len(lens), heads[0], splits, heads[2])

    def merge_again(out, m_l_first):
        kernel._attention_merge_tagged_kernel[(len(lens), heads[0])](
            words, m_l, epochs, out, out.stride(0), out.stride(1), splits, NUM_HEADS=heads[0], HEAD_DIM=heads[2],
            BLOCK_S=4, BLOCK_D=heads[2], USE_PDL=False, MAX_POLLS=3, M_L_FIRST=m_l_first)
        return out

    for m_l_first in (False, True):
        form = "m and l first" if m_l_first else "all words at once"
        counts = epochs.clone()
        stale = merge_again(torch.zeros_like(want), m_l_first)
        assert stale.isnan().all(), f"{form}: a merge read words of the call before as this call's"
        assert torch.equal(epochs, counts + 1), f"{form}: a merge that gave up kept its count"
        epochs -= 2   # the words' tags are this call's again: the merge finds them all ...
        again = merge_again(torch.zeros_like(want), m_l_first)
        assert torch.equal(again, want) and torch.equal(epochs, counts), f"{form}: the words are all there"
        epochs -= 1
        for stale_word in (words[1 * splits + 2, 5:6], m_l[1 * splits + 2, 1:]):   # a partial's word; an l word
            stale_word -= 1 << 32   # ... but one word of (sequence 0, head 1), split 2, a tag behind
            one = merge_again(torch.zeros_like(want), m_l_first)
            assert one[0, 1].isnan().all() and not one[0, 0].isnan().any() and torch.equal(one[1], want[1]), \
                f"{form}: one stale word: only its head's output is NaN"
            stale_word += 1 << 32
            epochs -= 1
        epochs += 1   # back where the next form's first merge expects a call ahead of the words


def check_o_proj_in_the_merge(torch):
    """Choice 8 (o_proj_weight): o_proj of the attention output, fp32 (or int64 fixed point,
    o_proj_fixed_point), against the attention kernel then F.linear (fp32 inputs: to fp32
    rounding), with and without a bias, an o_proj width not a multiple of the merge's rows (200:
    two chunks, the second part masked), one split (the fallback) and several. Every torch.empty
    starts NaN (int64: 2^40): a sum the split kernel did not zero first would come out NaN, or
    4,096 off (seen failing with the zeroing removed, in both forms)."""
    import torch.nn.functional as F
    from kernel_cases import decode_attention_inputs
    from workbench.kernels import decode_attention as kernel
    from workbench.kernels import fixed_point
    g = torch.Generator().manual_seed(3)
    for lens, block_size, splits, heads in LAST_CASES[:4]:
        q, k, v, seq_lens, table, scale, _ = decode_attention_inputs(torch, lens, *heads, block_size, torch.float32)
        attention = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=splits).flatten(1)
        for hidden, bias in ((200, False), (48, True)):
            w = torch.randn(hidden, heads[0] * heads[2], generator=g)
            b = torch.randn(hidden, generator=g) if bias else None
            for s in (splits, 1):
                for fixed in (False, True):
                    with nan_filled_empty(torch):
                        got = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=s, o_proj_weight=w,
                                                            o_proj_bias=b, o_proj_fixed_point=fixed)
                    case = f"lens={lens} splits={s} heads={heads} hidden={hidden} bias={bias} fixed={fixed}"
                    assert got.dtype == (torch.int64 if fixed else torch.float32), case
                    assert got.shape == (len(lens), hidden), case
                    torch.testing.assert_close(fixed_point.decode(got) if fixed else got, F.linear(attention, w, b),
                                               rtol=1e-4, atol=1e-4, msg=lambda m: f"{case}: {m}")


def _kv_groups_reversed(torch, q, k, v, w):
    """The same attention and o_proj with the KV heads (and their query heads, and W_o's columns)
    in reverse order: every head's partials are what they were, at other program ids -- so the
    merge's programs add them into the sum in another order."""
    batch, hq, d = q.shape
    hkv = k.shape[2]
    q = q.view(batch, hkv, hq // hkv, d).flip(1).reshape(batch, hq, d)
    w = w.view(w.shape[0], hkv, hq // hkv, d).flip(1).reshape(w.shape[0], hq * d)
    return q, k.flip(2).contiguous(), v.flip(2).contiguous(), w


def check_o_proj_fixed_point_is_order_free(torch):
    """o_proj_fixed_point: the sum is the same, bit for bit, whatever order the heads' adds land
    in (here: the heads in reverse program order), where the fp32 form's sum is not -- the fp32
    form is this check's wrong input, seen failing here on the same cases (so the check can fail)."""
    from kernel_cases import decode_attention_inputs
    from workbench.kernels import decode_attention as kernel
    g = torch.Generator().manual_seed(5)
    fp32_moved = 0
    for lens, block_size, splits, heads in (([70, 33], 16, 3, (8, 4, 32)), ([129], 128, 5, (6, 3, 64))):
        q, k, v, seq_lens, table, scale, _ = decode_attention_inputs(torch, lens, *heads, block_size, torch.float32)
        w = torch.randn(300, heads[0] * heads[2], generator=g)
        for fixed in (True, False):
            sums = [kernel.paged_decode_attention(q_, k_, v_, seq_lens, table, scale, splits=splits, o_proj_weight=w_,
                                                  o_proj_fixed_point=fixed)
                    for q_, k_, v_, w_ in ((q, k, v, w), _kv_groups_reversed(torch, q, k, v, w))]
            if fixed:
                assert torch.equal(*sums), f"lens={lens}: the fixed-point sum depends on the order of the adds"
            else:
                fp32_moved += int((sums[0] != sums[1]).sum())
    assert fp32_moved > 0, "the fp32 sums did not move with the order either: this check could not fail"


def check_o_proj_fixed_point_poisons(torch):
    """A term fixed point cannot hold -- beyond fixed_point.LIMIT, or NaN -- makes its output NaN,
    as the fp32 sum's overflow or NaN would have; the other outputs are untouched (seen failing
    with to_fixed's limit removed: the big term then came back as a number)."""
    from kernel_cases import decode_attention_inputs
    from workbench.kernels import decode_attention as kernel
    from workbench.kernels import fixed_point
    q, k, v, seq_lens, table, scale, _ = decode_attention_inputs(torch, [70], 4, 2, 32, 16, torch.float32)
    w = torch.randn(48, 4 * 32, generator=torch.Generator().manual_seed(6))
    w[5, :32] *= 1e8       # row 5: head 0's term far beyond LIMIT
    w[9, 32:64] = float("nan")   # row 9: head 1's term NaN
    plain = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=3, o_proj_weight=w)
    assert plain[0, 5].abs() > 2 * fixed_point.LIMIT, f"the test's premise: a term beyond LIMIT, got {plain[0, 5]}"
    got = fixed_point.decode(kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=3, o_proj_weight=w,
                                                           o_proj_fixed_point=True))
    assert got[0, 5].isnan() and got[0, 9].isnan(), (got[0, 5], got[0, 9])
    rest = [r for r in range(48) if r not in (5, 9)]
    torch.testing.assert_close(got[:, rest], plain[:, rest], rtol=1e-4, atol=1e-4)


WAIT_HOOK = []   # what the (stubbed) PDL wait does: the writes of the kernel before, finishing


def check_prefetch_kv(torch):
    """prefetch_kv=True (Choice 5, under PDL) equals the kernel without it, bit for bit, and reads
    no K/V of the newest key before the wait. The newest key's K and V start as NaN and the wait
    writes the real ones, as the kernel before (q/k norm + RoPE + cache write) would finish them:
    a program that read them early returns NaN. One program a launch (batch 1, one KV head, one
    split: the interpreter runs programs one by one, so a later program would see the wait's
    writes of an earlier one); lengths put the newest key first in a tile, last in one, alone."""
    from kernel_cases import decode_attention_inputs

    from workbench.kernels import decode_attention as kernel
    from workbench.kernels import pdl
    for lens, block_size, splits, heads in CASES:
        q, k, v, seq_lens, table, scale, _ = decode_attention_inputs(torch, lens, *heads, block_size, torch.float32)
        plain = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=splits)
        with pdl.launching(True):
            early = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=splits, prefetch_kv=True)
        assert torch.equal(plain, early), f"lens={lens} bs={block_size} splits={splits}: prefetch changed the output"
    for n in (1, 63, 64, 65, 128, 130):
        for block_size in (16, 128):
            q, k, v, seq_lens, table, scale, _ = decode_attention_inputs(torch, [n], 2, 1, 32, block_size, torch.float32)
            want = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=1)
            block, row = int(table[0, (n - 1) // block_size]), (n - 1) % block_size
            real_k, real_v = k[block, row].clone(), v[block, row].clone()
            k[block, row], v[block, row] = float("nan"), float("nan")
            WAIT_HOOK[:] = [lambda: (k[block, row].copy_(real_k), v[block, row].copy_(real_v))]
            try:
                with pdl.launching(True):
                    got = kernel.paged_decode_attention(q, k, v, seq_lens, table, scale, splits=1, prefetch_kv=True)
            finally:
                WAIT_HOOK.clear()
            assert torch.equal(got, want), f"length {n}, blocks of {block_size}: the newest key was read before the wait"


def check_engine_greedy_parity(torch):
    """A tiny engine (fp32, CPU): greedy tokens with decode_attention on equal all-off's, the
    decode steps' logits too (a tiny random model's tokens alone barely depend on attention), and
    the kernel really ran. The switch needs CUDA: its why_not is told the interpreter can run it."""
    import tempfile

    from workbench import LLM, Optimizations, SamplingParams
    from workbench.kernels import decode_attention as kernel
    from workbench.model import make_checkpoint
    from workbench.optimizations import decode_attention
    decode_attention.why_not = lambda device, tp_size=1: None
    calls, real = [], kernel.paged_decode_attention
    kernel.paged_decode_attention = lambda *a, **kw: calls.append(a[0].shape[0]) or real(*a, **kw)
    path = make_checkpoint(tempfile.mkdtemp(), "tiny", seed=0)
    prompts = [[5, 9, 2], list(range(1, 40)), list(range(100, 170))]   # 70 keys, 2 tiles: split-KV
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, return_logits=True)
    runs = {}
    for opts in (Optimizations.all_off(), Optimizations(attention="naive", decode_attention=True)):
        with LLM(path, opts=opts, block_size=16, max_num_seqs=3) as llm:
            runs[opts.decode_attention] = llm.generate(prompts, params, use_tqdm=False)
    assert calls and max(calls) == 3, f"the kernel ran on batches {calls}"
    for on, off in zip(runs[True], runs[False]):
        assert on.token_ids == off.token_ids, (on.token_ids, off.token_ids)
        torch.testing.assert_close(on.logits, off.logits, rtol=1e-4, atol=1e-4)


def check_o_proj_variant_matches_the_engine(torch):
    """The A/B variants dattn-o-proj and dattn-o-proj-fixed (scripts/ab_decode_candidates.py: o_proj
    inside the merge, gate_up's folded norm reading the fp32 or fixed-point sum) give the engine's
    greedy tokens and logits, a tiny fp32 model with decode attention and fused_decode's hooks
    (installed by hand: the CPU engine refuses them), and the folded form really ran at every
    decode step (seen failing with to_fixed's products scaled by 1.01)."""
    import sys
    import tempfile
    from pathlib import Path

    from workbench import LLM, Optimizations, SamplingParams
    from workbench.kernels import decode_attention as kernel
    from workbench.model import make_checkpoint
    from workbench.model.qwen3 import DecoderLayer
    from workbench.optimizations import decode_attention, fused_decode
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import ab_decode_candidates as ab
    path = make_checkpoint(tempfile.mkdtemp(), "tiny", seed=0)
    prompts = [[5, 9, 2], list(range(1, 40)), list(range(100, 170))]   # 70 keys, 2 tiles: split-KV
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, return_logits=True)

    def run():
        with LLM(path, opts=Optimizations.all_off(), block_size=16, max_num_seqs=3, device="cpu",
                 enable_prefix_caching=False) as llm:
            decode_attention.install(llm.runner.model, True)
            fused_decode.install(llm.runner.model, True)
            return llm.generate(prompts, params, use_tqdm=False)
    base, forward, real = run(), DecoderLayer.forward, kernel.paged_decode_attention
    for variant, fixed in (("dattn-o-proj", False), ("dattn-o-proj-fixed", True)):
        folded = []   # per decode call: (o_proj folded in, in fixed point)
        kernel.paged_decode_attention = lambda *a, **kw: folded.append(
            (kw.get("o_proj_weight") is not None, kw.get("o_proj_fixed_point", False))) or real(*a, **kw)
        try:
            ab.PATCHED[variant]()
            runs = run()
        finally:
            DecoderLayer.forward, kernel.paged_decode_attention = forward, real
        assert folded and all(f == (True, fixed) for f in folded), f"{variant}: decode steps' forms {folded}"
        for a, b in zip(base, runs):
            assert a.token_ids == b.token_ids, (variant, a.token_ids, b.token_ids)
            torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-4, msg=lambda m: f"{variant}: {m}")


if __name__ == "__main__":
    import torch

    from kernel_cases import run_checks   # tests/ is this script's folder
    from kernel_cases import stub_pdl_wait

    from workbench.kernels import decode_attention
    torch.manual_seed(0)
    stub_pdl_wait(decode_attention, WAIT_HOOK)
    run_checks(CHECKS, globals(), torch)
