"""The sampler on a GPU queues its work and never makes the host wait (run on the device).

A host-to-device copy from pageable memory (`torch.tensor(list, device="cuda")`) synchronizes
the stream: the host stops until every kernel queued before it has run. In multi-step decoding
that would undo the point of the round -- the host preparing step i+1 while the GPU runs step i.
torch's sync debug mode turns every such hidden synchronization into an error."""
import pytest
import torch

from workbench import SamplingParams
from workbench.engine.sampler import Sampler
from workbench.engine.sequence import Sequence

pytestmark = pytest.mark.gpu


def _batch():
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.6),
              SamplingParams(temperature=1.0, seed=7), SamplingParams(temperature=0.8, top_k=20, top_p=0.9)]
    return [Sequence(i, [1], p) for i, p in enumerate(params)]


@pytest.fixture
def no_hidden_syncs():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_sampling_queues_without_a_host_sync(no_hidden_syncs):
    sampler, seqs = Sampler("cuda", seed=0), _batch()
    for seq in seqs:
        seq.generator = sampler.generator_for(seq.params)
    logits = torch.randn(len(seqs), 151_936, device="cuda", dtype=torch.bfloat16)
    rows = sampler.rows(seqs, logits.shape[-1], logits.device)   # once a round
    for _ in range(3):                                           # the round's steps
        tokens = sampler.sample(logits, seqs, rows)
    sampler.sample(logits, seqs)                                 # rows built inside: no sync either
    torch.cuda.set_sync_debug_mode("default")
    assert tokens.shape == (4,) and tokens[0].item() == logits[0].argmax().item()


def test_the_sync_check_catches_a_pageable_copy(no_hidden_syncs):
    """The check can fail: the copy the sampler used to make raises under it."""
    with pytest.raises(RuntimeError, match="synchroniz"):
        torch.tensor([0.6, 1.0], device="cuda")


# --- the fused sampler candidate (kernels/sample.py, EngineConfig.fused_sampling) --------------
# Its CPU twin is tests/test_sample_kernel.py (the interpreter); here the compiled kernel at the
# real vocabulary. The interpreter ignores tl.max's tie-break flag (numpy's argmax takes the first
# index anyway): the first-index rule inside a chunk is checked only here.
VOCAB = 151_936


def _fused_rows(n, temperature, seeds, counts=0):
    return (torch.full((n,), float(temperature), device="cuda"), torch.as_tensor(seeds, device="cuda"),
            torch.full((n,), counts, dtype=torch.int64, device="cuda"))


@pytest.mark.parametrize("batch", [1, 64])
def test_fused_greedy_rows_are_torch_argmax(batch):
    from workbench.kernels.sample import sample
    logits = torch.randn(batch, VOCAB, device="cuda").bfloat16()
    logits[0, [100, 900]] = 20      # a tie inside one chunk (1,024 entries)
    logits[-1, [3000, 151_900]] = 19  # a tie across chunks, one in the last (partial) one; batch 1: row 0
    got = sample(logits, *_fused_rows(batch, 0.0, torch.zeros(batch, dtype=torch.int64)))
    assert torch.equal(got, logits.argmax(dim=-1)) and got[0] == 100 and (batch == 1 or got[-1] == 3000)


@pytest.mark.parametrize("path", ["fused", "eager"])
def test_distribution_at_the_full_vocabulary(path):
    """16,384 draws (1,024 rows x 16 steps; the rows are one logits row expanded, stride 0) against
    softmax(logits / T) in 9 buckets: 8 tokens spread over the chunks, and all the others. The
    specials sit ~e^16 above the rest: the rest is drawn only on noise beyond where float32 steps
    near u = 1 stop it (the fused kernel's first noise form drew it 27 times, softmax expects 100).
    The eager path is the engine's default: it draws its noise in float64, because torch's float32
    exponential_ on CUDA has the same cap (engine/sampler.py, _exponential)."""
    special = torch.tensor([0, 1_023, 1_024, 40_000, 77_777, 120_000, 151_000, VOCAB - 1], device="cuda")
    row = torch.zeros(VOCAB, device="cuda")
    row[special] = 10 + torch.tensor([1.5, 0.9, 0.3, 0.0, -0.4, -1.0, -1.6, -2.5], device="cuda")
    n, temperature = 1024, 0.7
    logits = row.bfloat16().expand(n, -1)
    if path == "fused":
        from workbench.kernels.sample import sample
        temps, seeds, counts = _fused_rows(n, temperature, torch.arange(n, device="cuda") * 7919 - 5)
        tokens = torch.cat([sample(logits, temps, seeds, counts, step=s) for s in range(16)])
    else:
        sampler = Sampler("cuda", seed=11)
        seqs = [Sequence(i, [1], SamplingParams(temperature=temperature)) for i in range(n)]
        tokens = torch.cat([sampler.sample(logits, seqs) for _ in range(16)])
    probs = torch.softmax(row.bfloat16().double() / temperature, dim=0)
    want = torch.cat([probs[special], (1 - probs[special].sum()).reshape(1)]) * len(tokens)
    is_special = tokens[:, None] == special[None, :]
    got = torch.cat([is_special.sum(0), (~is_special.any(1)).sum().reshape(1)]).double()
    chi2 = ((got - want) ** 2 / want).sum().item()
    assert chi2 < 40, f"chi2 {chi2:.1f} (8 degrees of freedom): counts {got.tolist()}, expected {want.tolist()}"


@pytest.mark.parametrize("batch", [1, 64])
def test_fused_seeded_rows_reproduce_without_a_host_sync(no_hidden_syncs, batch):
    """Through Sampler(fused=True), 3 steps of a round with no hidden sync: a seeded request's
    tokens are the same alone and at row 37 of a batch of 64 (greedy, unseeded, top-p rows around
    it), and equal the kernel called with its key and counts."""
    from workbench.engine.sampler import philox_key
    from workbench.kernels.sample import sample
    seeded = SamplingParams(temperature=0.6, seed=2024)
    kinds = [SamplingParams(temperature=0), SamplingParams(temperature=0.6),
             SamplingParams(temperature=0.8, top_p=0.9)]
    params = [kinds[i % 3] for i in range(batch)]
    where = 37 if batch > 37 else 0
    params[where] = seeded
    seqs = [Sequence(i, [1, 2, 3], p) for i, p in enumerate(params)]
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(batch, VOCAB, device="cuda", generator=gen).bfloat16()
    alone_logits = logits[where:where + 1].clone()
    sampler = Sampler("cuda", seed=0, fused=True)
    torch.cuda.set_sync_debug_mode("default")   # compile the kernels first (not part of a step)
    sampler.sample(logits, seqs)
    torch.cuda.set_sync_debug_mode("error")
    rows = sampler.rows(seqs, VOCAB, logits.device)
    in_batch = [sampler.sample(logits, seqs, rows)[where] for _ in range(3)]
    alone_seq = [Sequence(0, [1, 2, 3], seeded)]
    alone_rows = sampler.rows(alone_seq, VOCAB, logits.device)
    alone = [sampler.sample(alone_logits, alone_seq, alone_rows)[0] for _ in range(3)]
    torch.cuda.set_sync_debug_mode("default")   # (_fused_rows copies a host list: a sync)
    direct = [sample(alone_logits, *_fused_rows(1, 0.6, [philox_key(2024)]), step=s)[0] for s in range(3)]
    assert torch.stack(in_batch).tolist() == torch.stack(alone).tolist() == torch.stack(direct).tolist()


def test_fused_sampler_in_a_cuda_graph():
    """The kernel pair captures: a replay gives the eager call's tokens."""
    from workbench.kernels.sample import sample
    logits = torch.randn(8, VOCAB, device="cuda").bfloat16()
    inputs = _fused_rows(8, 0.6, torch.arange(8, device="cuda"), counts=5)
    want = sample(logits, *inputs, step=2)   # also compiles before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = sample(logits, *inputs, step=2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, want)


def test_engine_fused_sampling_seeded_request_reproduces():
    """A tiny bf16 model with graphs, fused_sampling on: a seeded request's tokens alone (1 decode
    step a round) and in a batch (8 steps a round) are the same."""
    import tempfile

    from workbench import LLM, Optimizations
    from workbench.model import make_checkpoint
    path = make_checkpoint(tempfile.mkdtemp(), "tiny", seed=3, dtype="bfloat16")
    seeded = SamplingParams(temperature=0.6, seed=77, max_tokens=20, ignore_eos=True)
    other = SamplingParams(temperature=0.6, max_tokens=20, ignore_eos=True)
    prompts = [[5, 17, 99, 3], [42, 7, 250, 11, 64, 9, 1], [8, 8, 30]]
    outs = []
    for batch, steps in ((False, 1), (True, 8)):
        with LLM(path, opts=Optimizations(attention="naive", cuda_graphs=True), fused_sampling=True,
                 decode_steps=steps, max_num_seqs=8) as llm:
            got = llm.generate(prompts if batch else [prompts[1]], [other, seeded, other] if batch else seeded,
                               use_tqdm=False)
            outs.append(got[1 if batch else 0].token_ids)
    assert outs[0] == outs[1], outs


@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_noise_early_under_pdl_equals_the_plain_pair(temperature):
    """kernels/sample.py's noise_early (the pair under PDL, the noise before the wait) right after an
    LM-head GEMV launched under PDL: the tokens of the plain pair on the same logits, eagerly and
    replayed from a graph. Two inputs in turn, whose tokens differ: each GEMV's output block is the
    one the call before freed, so a pair that read the logits before its wait would find the other
    input's logits there and give the other token. (The interpreter check,
    tests/test_sample_kernel.py, plants that read and sees it fail.) In the engine's default path
    the pair is launched after the decode graph's replay, where it cannot overlap the LM head: the
    A/B variant greedy-in-graph captures it inside the graph, as here."""
    from workbench.kernels import pdl
    from workbench.kernels.gemv import gemv
    from workbench.kernels.sample import sample
    gen = torch.Generator(device="cuda").manual_seed(5)
    head = (torch.randn(VOCAB, 1024, device="cuda", generator=gen) / 8).bfloat16()
    xs = [torch.randn(1, 1024, device="cuda", generator=gen).bfloat16() for _ in range(2)]
    rows = _fused_rows(1, temperature, [12345])
    want = [[sample(gemv(x, head), *rows, step=s).item() for s in range(8)] for x in xs]
    assert want[0] != want[1], "the two inputs give the same tokens: an early read could not show"
    with pdl.launching(True):
        got = [[sample(gemv(xs[s % 2], head), *rows, step=s, noise_early=True).item() for s in range(8)]
               for _ in range(2)]
        x_in, out = xs[0].clone(), {}
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out["tokens"] = sample(gemv(x_in, head), *rows, step=3, noise_early=True)
    for run in got:
        assert run == [want[s % 2][s] for s in range(8)]
    for i in range(6):
        x_in.copy_(xs[i % 2])
        graph.replay()
        assert out["tokens"].item() == want[i % 2][3], f"replay {i}"


def test_greedy_in_graph_variant_gives_todays_tokens(monkeypatch):
    """The A/B variant greedy-in-graph (scripts/ab_decode_candidates.py: the pair recorded in each
    decode graph after the LM head, under PDL) gives the engine's greedy tokens, all on, 8 steps a
    round, batch 1 and 3 -- and the tokens did come out of the graphs."""
    import sys
    import tempfile
    from pathlib import Path

    from workbench import LLM, Optimizations
    from workbench.model import make_checkpoint
    from workbench.optimizations.cuda_graphs import DecodeGraphs
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import ab_decode_candidates as ab
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("all on includes PDL: compute capability 9.0+ (Hopper)")
    path = make_checkpoint(tempfile.mkdtemp(), "tiny", seed=3, dtype="bfloat16")
    prompts = [[5, 17, 99, 3], [42, 7, 250, 11, 64, 9, 1], [8, 8, 30]]
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    def run():
        with LLM(path, opts=Optimizations.all_on(), decode_steps=8, max_num_seqs=4) as llm:
            return [o.token_ids for batch in ([prompts[0]], prompts) for o in llm.generate(batch, greedy, use_tqdm=False)]
    today = run()
    monkeypatch.setattr(DecodeGraphs, "__init__", DecodeGraphs.__init__)   # restored after the test
    monkeypatch.setattr(Sampler, "sample", Sampler.sample)
    served = ab.PATCHED["greedy-in-graph"]()
    assert run() == today
    assert 1 in served and 3 in served, f"steps served from a graph, by batch: {served}"
