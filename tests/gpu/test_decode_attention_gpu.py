"""The decode-attention kernel (Optimizations.decode_attention) on the GPU: Qwen3-0.6B's attention
shape in bf16 against flash-attn and SDPA over the same paged cache, inside a CUDA graph with
lengths changed between replays, the same for merge="last_program" (one launch, the last split
program merges) against the two-kernel merge, and the engine's greedy parity with the switch on (graphs on)
against all-off. Run: pytest -m gpu tests/gpu/test_decode_attention_gpu.py
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HEADS = (16, 8, 128)   # Qwen3-0.6B: query heads, KV heads, head_dim
LENGTHS = [[1], [640], [1, 127, 128, 129, 640, 2000, 4095, 33], [5000]]


def _poison_allocator(mb: int = 512) -> None:
    """Free cached memory full of NaN: an output element the kernel skips shows up as NaN."""
    torch.empty(mb << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)


def _references():
    from workbench.attention.flash import FlashAttention, flash_status
    from workbench.attention.sdpa import SdpaAttention
    refs = {"fp64 naive": None, "sdpa": SdpaAttention()}
    if flash_status()[0] is not None:
        refs["flash"] = FlashAttention()
    return refs


@pytest.mark.parametrize("lens", LENGTHS)
@pytest.mark.parametrize("splits", [None, 1, 8])
def test_real_shape_matches_flash_and_sdpa(lens, splits):
    from kernel_cases import decode_attention_errors   # tests/ is on sys.path (its conftest.py)
    for name, ref in _references().items():
        _poison_allocator()
        errs = decode_attention_errors(torch, lens, *HEADS, 128, torch.bfloat16, splits, device="cuda",
                                       reference=ref)
        assert max(errs) < 1e-2, f"vs {name}, lens={lens}, splits={splits}: rel errs {errs}"


@pytest.mark.parametrize("merge", ["kernel", "last_program"])
def test_both_block_lookups_match_sdpa_and_do_not_spill(merge):
    """16-key blocks take the per-row block lookup, 128-key blocks the per-tile one (a tile of 64
    keys inside one block). Then the split kernels this GPU's Triton compiled and launched must not
    spill (tests/test_kernel_resources.py says so for the CPU machine's Triton 3.9 and ptxas)."""
    from kernel_cases import decode_attention_errors
    from workbench.attention.sdpa import SdpaAttention
    from workbench.kernels import decode_attention as kernel
    for block_size in (16, 128):
        errs = decode_attention_errors(torch, LENGTHS[2], *HEADS, block_size, torch.bfloat16, device="cuda",
                                       reference=SdpaAttention(), merge=merge)
        assert max(errs) < 1e-2, f"block_size={block_size}, merge={merge}: rel errs {errs}"
    # Triton's JIT cache: device -> (compiled variants by specialization, ...); read after a launch
    compiled = [k for cache in kernel._attention_split_kernel.device_caches.values() for k in cache[0].values()]
    seen = [(k.n_regs, k.n_spills) for k in compiled]
    print("split kernels this process launched (registers, spill bytes):", seen)
    assert compiled and all(k.n_spills == 0 for k in compiled), seen


def test_graph_replay_reads_lengths_on_the_device():
    """Captured once at one set of lengths; replayed with others written into the same buffers:
    the replay must equal an eager call at the new lengths (same kernels, same split count)."""
    from workbench.kernels.decode_attention import paged_decode_attention
    batch, (hq, hkv, d), bs, width = 4, HEADS, 128, 40
    k_cache = torch.randn(batch * width, bs, hkv, d, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(batch * width, device="cuda").view(batch, width).int()
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    seq_lens = torch.tensor([1, 128, 129, 300], dtype=torch.int32, device="cuda")
    attend = lambda: paged_decode_attention(q, k_cache, v_cache, seq_lens, table, d ** -0.5)  # noqa: E731
    attend()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attend()
    for lens in ([5000, 1, 64, 129], [17, 2048, 4000, 2]):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        q.copy_(torch.randn_like(q))
        graph.replay()
        torch.testing.assert_close(out, attend(), rtol=0, atol=0)


@pytest.mark.parametrize("lens", LENGTHS)
@pytest.mark.parametrize("splits", [None, 2, 8, 33])
def test_last_program_merge_matches_the_merge_kernel(lens, splits):
    """merge="last_program" (the split programs merge themselves) against the two-kernel merge on
    the same inputs and against the fp64 reference: here the programs finish in any order, so the
    last one to count is any split (empty ones too, at length 1). Counters back at 0 each call."""
    from kernel_cases import decode_attention_inputs, naive_decode_attention
    from workbench.kernels.decode_attention import merge_counters, paged_decode_attention
    q, k, v, seq_lens, table, scale, meta = decode_attention_inputs(torch, lens, *HEADS, 128, torch.bfloat16, "cuda")
    want = naive_decode_attention(q, k, v, meta, scale)
    two = paged_decode_attention(q, k, v, seq_lens, table, scale, splits=splits)
    for _ in range(3):
        _poison_allocator()
        one = paged_decode_attention(q, k, v, seq_lens, table, scale, splits=splits, merge="last_program")
        assert not merge_counters(q.device, len(lens), HEADS[1]).any(), "counters not back at 0"
        torch.testing.assert_close(one, two, rtol=1e-2, atol=1e-2)   # same partials, same merge code
        errs = [((g.double() - w).norm() / w.norm()).item() for g, w in zip(one, want)]
        assert max(errs) < 1e-2, f"lens={lens}, splits={splits}: rel errs {errs}"


@pytest.mark.parametrize("pdl", [False, True])
def test_last_program_merge_in_a_graph(pdl):
    """Both merges captured at one set of lengths, replayed with others (and the layer loop's
    back-to-back calls on one counter buffer, with PDL too): each replay equals its eager call bit
    for bit, the two merges agree, and the counters are 0 after every replay (no zeroing between)."""
    from workbench.kernels.decode_attention import merge_counters, paged_decode_attention
    from workbench.kernels.pdl import launching
    if pdl and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9.0+ (Hopper)")
    batch, (hq, hkv, d), bs, width, layers = 4, HEADS, 128, 40, 3
    k_cache = torch.randn(layers, batch * width, bs, hkv, d, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(batch * width, device="cuda").view(batch, width).int()
    q = torch.randn(batch, hq, d, device="cuda", dtype=torch.bfloat16)
    seq_lens = torch.tensor([1, 128, 129, 300], dtype=torch.int32, device="cuda")

    def attend(merge):   # one call per layer, as a decode step does
        with launching(pdl):
            return [paged_decode_attention(q, k_cache[i], v_cache[i], seq_lens, table, d ** -0.5, merge=merge)
                    for i in range(layers)]
    attend("kernel"), attend("last_program")   # eager first: JIT and the counters outside the capture
    graphs, outs = {}, {}
    for merge in ("kernel", "last_program"):
        graphs[merge] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graphs[merge]):
            outs[merge] = attend(merge)
    counts = merge_counters(q.device, batch, hkv)
    for lens in ([5000, 1, 64, 129], [17, 2048, 4000, 2], [1, 1, 1, 1]):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        q.copy_(torch.randn_like(q))
        for merge, graph in graphs.items():
            graph.replay()
            torch.cuda.synchronize()
            assert not counts.any(), f"{merge}, lens={lens}: counters {counts.tolist()}"
            for got, eager in zip(outs[merge], attend(merge)):
                torch.testing.assert_close(got, eager, rtol=0, atol=0)
        for one, two in zip(outs["last_program"], outs["kernel"]):
            torch.testing.assert_close(one, two, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("inputs_early", [False, True])
@pytest.mark.parametrize("ahead", [False, True], ids=["", "l2-ahead"])
def test_prefetch_kv_waits_for_the_newest_key(inputs_early, ahead):
    """prefetch_kv=True (Choice 5) right after the kernel that writes the newest K/V, as in a
    decode step: each layer's qk_norm_rope_store, then attention, all under PDL in one graph.
    Before every replay the newest slots hold NaN and the new token's k/v are fresh: a program
    that read the newest key before its wait would return NaN or the last replay's values. Each
    replay equals the eager run without prefetch (PDL off) bit for bit, at contexts of one tile,
    one tile + 1 and many tiles, 20 replays each. inputs_early: qk_norm_rope_store's candidate
    (position, cos/sin and slot before its wait) on in the graph too. ahead: Choice 6, each program
    also asks L2 for a gate_up-sized weight before its wait (l2_prefetch.install_attention): a hint
    that must change nothing (this case can fail only by a crash or a changed value; whether the
    lines land in L2 is the A/B's and ncu's question)."""
    from workbench.kernels.decode_attention import paged_decode_attention
    from workbench.kernels.pdl import launching
    from workbench.kernels.qk_norm_rope_store import qk_norm_rope_store
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9.0+ (Hopper)")
    batch, (hq, hkv, d), bs, width, layers = 4, HEADS, 128, 40, 4
    caches = torch.randn(2, layers, batch * width, bs, hkv, d, device="cuda", dtype=torch.bfloat16)
    table = torch.randperm(batch * width, device="cuda").view(batch, width).int()
    q, k, v = (torch.randn(batch, h, d, device="cuda", dtype=torch.bfloat16) for h in (hq, hkv, hkv))
    positions = torch.zeros(batch, dtype=torch.long, device="cuda")
    slots = torch.zeros(batch, dtype=torch.long, device="cuda")
    seq_lens = torch.zeros(batch, dtype=torch.int32, device="cuda")
    cos_sin = torch.randn(8192, d, device="cuda")
    gate_up = torch.randn(6144, 1024, device="cuda", dtype=torch.bfloat16) if ahead else None

    def step(prefetch):
        outs = []
        for i in range(layers):
            q_rot = qk_norm_rope_store(q, k, v, positions, cos_sin, caches[0, i], caches[1, i], slots,
                                       inputs_early=prefetch and inputs_early)
            outs.append(paged_decode_attention(q_rot, caches[0, i], caches[1, i], seq_lens, table, d ** -0.5,
                                               prefetch_kv=prefetch, prefetch=gate_up if prefetch else None))
        return outs

    def set_lengths(lens):
        pos = torch.tensor(lens, device="cuda") - 1                       # the newest key
        seq_lens.copy_(pos + 1)
        positions.copy_(pos)
        slots.copy_(table[torch.arange(batch, device="cuda"), pos // bs].long() * bs + pos % bs)

    set_lengths([64, 65, 700, 3000])
    with launching(True):
        step(True)                                                       # JIT outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = step(True)
    for lens in ([64, 65, 700, 3000], [1, 128, 129, 4000], [63, 2, 640, 1000]):
        set_lengths(lens)
        for _ in range(20):
            for t in (q, k, v):
                t.copy_(torch.randn_like(t))
            flat = caches.view(2, layers, -1, hkv, d)
            flat[:, :, slots] = float("nan")                             # the newest slots, every layer
            graph.replay()
            torch.cuda.synchronize()
            with launching(False):
                want = step(False)                                       # rewrites the same slots
            for layer, (a, b) in enumerate(zip(got, want)):
                assert torch.equal(a, b), f"lens={lens}, layer {layer}: prefetch read the newest key early"


class _LayerChain:
    """A decode step's attention inputs for `layers` layers on the GPU (Qwen3-0.6B's heads): the
    caches, a shuffled block table, this token's q/k/v; `set_lengths` puts the newest key at
    length - 1 of each sequence, `fresh` draws new q/k/v and writes NaN into the newest slots (a
    kernel that read them before the token's own write would return NaN), `rope(i)` is layer i's
    q/k norm + RoPE + cache write. The candidate tests below run their kernels after it."""

    def __init__(self, batch: int, layers: int, width: int = 40, block_size: int = 128):
        hq, hkv, d = HEADS
        self.batch, self.layers, self.bs, self.d = batch, layers, block_size, d
        self.caches = torch.randn(2, layers, batch * width, block_size, hkv, d, device="cuda", dtype=torch.bfloat16)
        self.table = torch.randperm(batch * width, device="cuda").view(batch, width).int()
        self.q, self.k, self.v = (torch.randn(batch, h, d, device="cuda", dtype=torch.bfloat16) for h in (hq, hkv, hkv))
        self.positions, self.slots = (torch.zeros(batch, dtype=torch.long, device="cuda") for _ in range(2))
        self.seq_lens = torch.zeros(batch, dtype=torch.int32, device="cuda")
        self.cos_sin = torch.randn(8192, d, device="cuda")

    def set_lengths(self, lens):
        pos = torch.tensor(lens, device="cuda") - 1
        self.seq_lens.copy_(pos + 1)
        self.positions.copy_(pos)
        self.slots.copy_(self.table[torch.arange(self.batch, device="cuda"), pos // self.bs].long() * self.bs
                         + pos % self.bs)

    def fresh(self):
        for t in (self.q, self.k, self.v):
            t.copy_(torch.randn_like(t))
        self.caches.view(2, self.layers, -1, HEADS[1], self.d)[:, :, self.slots] = float("nan")

    def rope(self, i):
        from workbench.kernels.qk_norm_rope_store import qk_norm_rope_store
        return qk_norm_rope_store(self.q, self.k, self.v, self.positions, self.cos_sin, self.caches[0, i],
                                  self.caches[1, i], self.slots)

    def attend(self, i, q_rot, **kwargs):
        from workbench.kernels.decode_attention import paged_decode_attention
        return paged_decode_attention(q_rot, self.caches[0, i], self.caches[1, i], self.seq_lens, self.table,
                                      self.d ** -0.5, **kwargs)

    def captured(self, step, pdl: bool, lens):
        """step() run once eagerly (JIT, buffers) and captured in a graph, under PDL or not."""
        from workbench.kernels.pdl import launching
        self.set_lengths(lens)
        with launching(pdl):
            step()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = step()
        return graph, outputs


def _needs_hopper_for(pdl: bool):
    if pdl and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9.0+ (Hopper)")


@pytest.mark.parametrize("pdl", [False, True])
def test_tagged_merge_in_the_layer_chain(pdl):
    """merge="tagged" (Choice 7) where a decode step runs it: each layer's qk_norm_rope_store, then
    attention, 4 layers back to back on the same words, captured in one graph (with PDL: the merge
    programs start while the split kernel runs and poll). Before every replay q/k/v are fresh and
    the newest slots NaN. 20 replays at each of three sets of lengths: no NaN (a merge program that
    gave up writes NaN), each replay equals the eager step with the two-kernel merge (PDL off; the
    tagged merge sums with 8 warps, so to rounding, not bit for bit), and each (sequence, head)'s
    count of merged calls moves on by one a layer."""
    from workbench.kernels.decode_attention import num_splits, tagged_buffers
    from workbench.kernels.pdl import launching
    _needs_hopper_for(pdl)
    chain = _LayerChain(batch=2, layers=4)
    step = lambda merge: [chain.attend(i, chain.rope(i), merge=merge) for i in range(chain.layers)]  # noqa: E731
    splits = num_splits(2, HEADS[1], 40, 128, torch.cuda.get_device_properties(0).multi_processor_count)
    assert splits > 1, "one split: no merge to test"
    epochs = tagged_buffers(chain.q.device, 2, HEADS[0], splits, HEADS[2])[2]
    graph, got = chain.captured(lambda: step("tagged"), pdl, [65, 3000])
    for lens in ([65, 3000], [1, 129], [640, 4000]):
        chain.set_lengths(lens)
        for _ in range(20):
            chain.fresh()
            before = epochs.clone()
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(epochs, before + chain.layers), "a count did not move on once a layer"
            outs = [o.clone() for o in got]
            with launching(False):
                want = step("kernel")
            for layer, (a, b) in enumerate(zip(outs, want)):
                assert not a.isnan().any(), f"lens={lens}, layer {layer}: a merge program gave up"
                torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2, msg=lambda m: f"lens={lens}, layer {layer}: {m}")


def test_engine_parity_with_the_tagged_merge(tmp_path_factory, monkeypatch):
    """All on with decode attention's merge="tagged" (the A/B variant dattn-tagged-merge) against
    all-off: the parity bar, batch 1 and 16."""
    import functools

    from kernel_cases import assert_engine_parity

    from workbench import Optimizations
    from workbench.kernels import decode_attention
    monkeypatch.setattr(decode_attention, "paged_decode_attention",
                        functools.partial(decode_attention.paged_decode_attention, merge="tagged"))
    for max_num_seqs, prompts in ((1, 4), (16, 16)):
        assert_engine_parity(tmp_path_factory.mktemp("q06b"), [Optimizations.all_on()], prompts, max_num_seqs)


@pytest.mark.parametrize("fixed_point", [False, True])
@pytest.mark.parametrize("pdl", [False, True])
def test_o_proj_in_the_merge_in_the_layer_chain(pdl, fixed_point):
    """Choice 8 where a decode step runs it: per layer q/k norm + RoPE, attention with o_proj folded
    into the merge (a sum the split kernel zeroes: fp32, or int64 fixed point), then gate_up's
    folded norm reading that sum -- 4 layers back to back in one graph, PDL on and off, fresh
    q/k/v and NaN in the newest slots before each of 20 replays at three sets of lengths: each
    replay equals the unfolded chain (attention, o_proj's GEMV, the same fold on its bf16 output)
    to bf16 rounding, and the residual stream stays bf16. In fixed point a second replay on the
    same inputs gives the same bits (the point of it: the adds' order does not show); for the fp32
    sum the test prints how often a second replay gave other bits, the control (not asserted: two
    replays may well add in the same order)."""
    from workbench.kernels.fused_gemv import rms_norm_linear
    from workbench.kernels.gemv import gemv
    from workbench.kernels.pdl import launching
    _needs_hopper_for(pdl)
    chain, hidden = _LayerChain(batch=1, layers=4), 1024
    gen = torch.Generator(device="cuda").manual_seed(11)
    w_o = (torch.randn(chain.layers, hidden, HEADS[0] * HEADS[2], device="cuda", generator=gen) / 32).bfloat16()
    w_gu = (torch.randn(chain.layers, 6144, hidden, device="cuda", generator=gen) / 32).bfloat16()
    norm_w = torch.ones(hidden, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn(1, hidden, device="cuda", dtype=torch.bfloat16)

    def step(folded):
        outs = []
        for i in range(chain.layers):
            q_rot = chain.rope(i)
            x = (chain.attend(i, q_rot, o_proj_weight=w_o[i], o_proj_fixed_point=fixed_point) if folded else
                 gemv(chain.attend(i, q_rot).flatten(1), w_o[i]))
            outs.append(rms_norm_linear(x, residual, norm_w, 1e-6, w_gu[i], silu_out=True))
        return outs

    graph, got = chain.captured(lambda: step(True), pdl, [65])
    replays_moved = 0
    for lens in ([65], [1], [3000]):
        chain.set_lengths(lens)
        for _ in range(20):
            chain.fresh()
            graph.replay()
            torch.cuda.synchronize()
            outs = [(a.clone(), b.clone()) for a, b in got]
            graph.replay()   # the same inputs again (rope rewrites the same newest keys)
            torch.cuda.synchronize()
            same = all(torch.equal(a, a2) and torch.equal(b, b2) for (a, b), (a2, b2) in zip(outs, got))
            assert same or not fixed_point, f"lens={lens}: the fixed-point sum changed from one replay to the next"
            replays_moved += not same   # the fp32 form: counted, not asserted (the order may repeat)
            with launching(False):
                want = step(False)
            for layer, ((gated, stream), (gated_want, stream_want)) in enumerate(zip(outs, want)):
                assert gated.dtype == stream.dtype == torch.bfloat16
                torch.testing.assert_close(stream, stream_want, rtol=2e-2, atol=2e-2,
                                           msg=lambda m: f"lens={lens}, layer {layer}, the stream: {m}")
                torch.testing.assert_close(gated, gated_want, rtol=3e-2, atol=3e-2,
                                           msg=lambda m: f"lens={lens}, layer {layer}, gate_up: {m}")
    print(f"\n{'fixed point' if fixed_point else 'fp32'} sum, PDL {'on' if pdl else 'off'}: {replays_moved} of 60 "
          "second replays on the same inputs gave other bits")   # the fp32 form's count: how often order showed


@pytest.mark.parametrize("variant", ["dattn-o-proj", "dattn-o-proj-fixed"])
def test_engine_parity_with_o_proj_in_the_merge(tmp_path_factory, monkeypatch, variant):
    """All on with the A/B variant dattn-o-proj (o_proj inside the merge; -fixed: its sum in fixed
    point) against all-off: the parity bar, batch 1 and 16 -- and the folded form did run (at
    decode steps of both), in the variant's form."""
    import sys
    from pathlib import Path

    from kernel_cases import assert_engine_parity

    from workbench import Optimizations
    from workbench.kernels import decode_attention
    from workbench.model.qwen3 import DecoderLayer
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import ab_decode_candidates as ab
    monkeypatch.setattr(DecoderLayer, "forward", DecoderLayer.forward)   # restored after the test
    real, folded = decode_attention.paged_decode_attention, []

    def spy(*args, **kwargs):   # which batches the folded form ran at
        if kwargs.get("o_proj_weight") is not None:
            assert kwargs.get("o_proj_fixed_point", False) == variant.endswith("fixed"), kwargs
            folded.append(args[0].shape[0])
        return real(*args, **kwargs)
    monkeypatch.setattr(decode_attention, "paged_decode_attention", spy)
    ab.PATCHED[variant]()
    for max_num_seqs, prompts in ((1, 4), (16, 16)):
        assert_engine_parity(tmp_path_factory.mktemp("q06b"), [Optimizations.all_on()], prompts, max_num_seqs)
    assert 1 in folded and max(folded) > 1, f"batches the folded form ran at: {sorted(set(folded))}"


@pytest.mark.parametrize("max_num_seqs,prompts", [(1, 4), (16, 16)])
def test_engine_parity_with_decode_attention(tmp_path_factory, max_num_seqs, prompts):
    from kernel_cases import assert_engine_parity

    from workbench import Optimizations
    settings = [Optimizations(attention="sdpa", decode_attention=True),
                Optimizations(attention="flash", fused_kernels=True, decode_gemv=True, decode_attention=True,
                              cuda_graphs=True),
                Optimizations.all_on()]
    assert Optimizations.all_on().decode_attention
    assert_engine_parity(tmp_path_factory.mktemp("q06b"), settings, prompts, max_num_seqs)


def test_microbenchmark_runs():
    from workbench.measure.decode_attention import measure_decode_attention
    from workbench.model import ModelConfig
    records = measure_decode_attention(ModelConfig.from_preset("qwen3-0.6b"), ("triton", "triton-last"),
                                       contexts=(640,))
    assert all(r.available and r.us_per_call > 0 for r in records), records
