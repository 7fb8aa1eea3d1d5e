"""The fused sampler (workbench/kernels/sample.py, EngineConfig.fused_sampling) on the CPU, under
Triton's interpreter: greedy rows against torch.argmax, the distribution of sampled rows against
softmax(logits / T), the Philox stream's promise (a seeded row's token depends only on its seed
and how many tokens it sampled before), -inf logits, a mixed batch through Sampler, and the
engine end to end. As in test_fused_decode_interpret.py the checks run in one child process
(TRITON_INTERPRET=1) and each pytest test reads its verdict; the GPU twin is
tests/gpu/test_sampler_gpu.py. (The interpreter runs a program in ~10 ms however small: the
draws here are kept to a few thousand.)
"""
from __future__ import annotations

import importlib.util

import pytest

CHECKS = ["greedy_rows_are_torch_argmax", "distribution_matches_softmax", "noise_reaches_the_tail", "seeded_draws_ignore_the_batch",
          "minus_inf_is_never_sampled", "nan_is_the_maximum", "mixed_batch_through_the_sampler",
          "engine_seeded_requests_reproduce", "noise_early_reads_the_logits_after_the_wait",
          "graph_sampling_stages_what_the_sampler_reads"]
# chi-square, 7 degrees of freedom: P(X > 35) ~ 1e-5 for a right sampler; the wrong ones the check
# was written against land far above it (T applied twice ~200, E = U instead of -log U ~100)
CHI2_BOUND = 35.0

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture(scope="module")
def verdicts() -> dict:
    from kernel_cases import interpreter_verdicts
    return interpreter_verdicts(__file__, timeout=900)


@pytest.mark.parametrize("name", CHECKS)
def test_fused_sampler(verdicts, name):
    assert verdicts[name] == "ok", verdicts[name]


def test_the_engine_refuses_what_cannot_run(tiny_ckpt, monkeypatch):
    """No GPU and no interpreter, or a sampler override: fused_sampling=True is an error, not ignored."""
    from workbench import LLM, Optimizations
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="fused_sampling=True: its Triton kernel needs a CUDA GPU"):
        LLM(tiny_ckpt, opts=Optimizations.all_off(), device="cpu", fused_sampling=True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="fused_sampling=True: overrides=\\{'sampler'"):
        LLM(tiny_ckpt, opts=Optimizations.all_off(), device="cpu", fused_sampling=True,
            overrides={"sampler": lambda logits, seqs: logits.argmax(-1)})


def test_philox_keys_cover_every_accepted_seed():
    from workbench.engine.sampler import philox_key
    assert philox_key(5) == 5 and philox_key(2**63 - 1) == 2**63 - 1
    assert philox_key(2**63) == -2**63 and philox_key(2**64 - 1) == -1 == philox_key(-1)


# --- the checks, run in the child process ----------------------------------------------------
def _rows(torch, n, temperature=0.0, seed=0, count=0):
    """temperatures, seeds, counts for n rows alike."""
    return (torch.full((n,), float(temperature)), torch.full((n,), seed, dtype=torch.int64),
            torch.full((n,), count, dtype=torch.int64))


def check_greedy_rows_are_torch_argmax(torch):
    """Temperature 0: exactly torch.argmax, first index on ties within and across chunks, any
    dtype, a vocabulary not a multiple of the chunk, strided rows, an all -inf row."""
    from workbench.kernels.sample import sample
    for dtype, block in ((torch.float32, 64), (torch.bfloat16, 64), (torch.float32, 1024)):
        wide = torch.randn(6, 1200, dtype=dtype)
        logits = wide[:, :1000]   # rows 1,200 apart: a slice of a wider buffer
        logits[1, [5, 40]] = 9    # a tie inside one chunk (block 64)
        logits[2, [70, 700]] = 9  # a tie across chunks
        logits[3] = 0             # every entry ties: 0
        logits[4] = float("-inf")  # all -inf: 0, as torch.argmax
        logits[5, 999] = 9        # the last entry, in the last (partial) chunk
        got = sample(logits, *_rows(torch, 6), block=block)
        assert torch.equal(got, logits.argmax(dim=-1)), (dtype, block, got, logits.argmax(dim=-1))


def check_distribution_matches_softmax(torch):
    """2,000 draws (rows of different seeds, two steps) from 8 logits at T = 0.7 against
    softmax(logits / T), chi-square."""
    from workbench.kernels.sample import sample
    logits = torch.tensor([1.5, 0.9, 0.3, 0.0, -0.4, -1.0, -1.6, -2.5])
    n, temperature = 1000, 0.7
    temps, _, counts = _rows(torch, n, temperature, count=3)
    tokens = torch.cat([sample(logits.expand(n, -1), temps, torch.arange(n) * 7919 + 1, counts, step=step, block=8)
                        for step in (0, 5)])
    want = len(tokens) * torch.softmax(logits / temperature, dim=0).double()
    got = torch.bincount(tokens, minlength=len(logits)).double()
    chi2 = ((got - want) ** 2 / want).sum().item()
    assert chi2 < CHI2_BOUND, f"chi2 {chi2:.1f} >= {CHI2_BOUND}: counts {got.tolist()}, expected {want.tolist()}"


def _noise_kernel():
    """A one-program kernel: out = _gumbel(u). Made at module level (the interpreter resolves a
    kernel's helpers among its module's globals, not a function's locals)."""
    global _gumbel
    import triton
    import triton.language as tl

    from workbench.kernels.sample import _gumbel

    @triton.jit
    def noise(u_ptr, out_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(out_ptr + i, _gumbel(tl.load(u_ptr + i)))
    return noise


def check_noise_reaches_the_tail(torch):
    """The kernel's Gumbel noise on tl.rand's own values u = k x 2^-31 (k = 0, 1, 2, ... 2^31 - 1)
    against -log(-log(1 - u')) in float64, u' = u + 2^-32 in float32: the largest noise ~22.2 at u = 0 (finite: inf
    plus a masked -inf is NaN), and within 2e-5 everywhere, across the series' threshold too (a
    dropped u^3 term is 8e-5 off there). A token ~e^17 times less likely than the row's best wins
    only on noise that large: with -log(-log u) the float32 steps near u = 1 stopped it at ~16.6
    (the H200 drew the long tail of a 151,936-token row 27 times where softmax expects 100); no
    CPU-sized draw count sees that, so the check looks at the noise itself."""
    noise = _noise_kernel()
    step = 4.6566127342e-10   # tl.rand: k x this, k < 2^31
    k = torch.cat([torch.tensor([0.0, 1, 2, 3, 5, 10]), 2.0 ** torch.arange(4.0, 31.0, 0.25)])
    u = torch.cat([k.double() * step, torch.tensor([0.0150, 0.0155, 0.01562, 0.01563, 0.0157, 0.016]),
                   torch.linspace(0.02, 1 - 2 ** -24, 256 - len(k) - 6, dtype=torch.float64)]).float()
    assert len(u) == 256
    got = torch.empty_like(u)
    noise[(1,)](u, got, N=256)
    assert 22.1 < got[0] < 22.3 and got.max() == got[0], f"u = 0 gives {got[0].item()}, the largest {got.max().item()}"
    shifted = (u + 2.3283064e-10).double()   # u + 2^-32 in float32: near 1 it rounds back to u
    want = -torch.log(-torch.log1p(-shifted))
    err = (got.double() - want).abs()
    assert err.max() < 2e-5, f"noise off by {err.max().item():.2g} at u = {u[err.argmax()].item():.6g}"


def check_seeded_draws_ignore_the_batch(torch):
    """A row's token depends on (seed, count + step, logits) only: not on its row, its batch, the
    chunk size, or how the count is split between counts and step; other steps and seeds differ."""
    from workbench.kernels.sample import sample
    gen = torch.Generator().manual_seed(1)
    flat = 0.01 * torch.randn(300, generator=gen)   # near uniform: a different draw shows
    alone = sample(flat[None], *_rows(torch, 1, 0.8, seed=-12345, count=4), step=2, block=64)
    # the same row third in a batch of 5 others, counts 6 + step 0, another block size
    batch = 0.01 * torch.randn(5, 300, generator=gen)
    batch[1] = batch[2] = flat
    temps = torch.tensor([0.0, 0.8, 0.8, 1.3, 0.8])
    seeds = torch.tensor([3, -12345, -12345, 99, 7], dtype=torch.int64)
    counts = torch.tensor([0, 6, 6, 6, 6], dtype=torch.int64)
    got = sample(batch, temps, seeds, counts, step=0, block=128)
    assert got[1] == alone[0] and got[2] == alone[0], (got.tolist(), alone.tolist())
    steps = [sample(flat[None], *_rows(torch, 1, 0.8, seed=-12345, count=4), step=s, block=64).item()
             for s in range(12)]
    assert len(set(steps)) >= 9, f"12 steps, near-uniform over 300 tokens, yet only {len(set(steps))} distinct: {steps}"
    seeds = [sample(flat[None], *_rows(torch, 1, 0.8, seed=s, count=4), step=2, block=64).item() for s in range(12)]
    assert len(set(seeds)) >= 9, f"12 seeds, only {len(set(seeds))} distinct tokens: {seeds}"


def check_minus_inf_is_never_sampled(torch):
    """-inf logits (masked tokens) never come out, however hot; nor does an index past the
    vocabulary (the last chunk's padding). A row with one finite logit always gives it."""
    from workbench.kernels.sample import sample
    vocab, n = 37, 300   # 37: not a multiple of the 16-entry chunk
    logits = torch.randn(n, vocab)
    masked = torch.arange(vocab) % 3 != 0   # every third token allowed, the last (36) among them
    logits[:, masked] = float("-inf")
    logits[0, :] = float("-inf")
    logits[0, 35] = 0.0   # one finite logit, in the last (partial) chunk
    temps, _, counts = _rows(torch, n, 5.0)
    tokens = sample(logits, temps, torch.arange(n), counts, block=16)
    assert not masked[tokens[1:]].any() and tokens[0] == 35, tokens.tolist()
    assert len(set(tokens[1:].tolist())) == (~masked).sum(), "at T = 5 every allowed token should come out"


def check_nan_is_the_maximum(torch):
    """NaN logits (a model gone wrong) give an index inside the vocabulary, as torch.argmax does:
    NaN counts as the maximum, the first NaN wins. Without the rule a NaN loses every comparison,
    even to the last chunk's padding (-inf, past the vocabulary): the next step's embedding
    lookup would then fail on the GPU with a device-side assert."""
    from workbench.kernels.sample import sample
    vocab = 37   # the last 16-entry chunk holds 5 real entries and 11 padding lanes
    logits = torch.full((3, vocab), float("nan"))
    logits[1, :32] = torch.randn(32)        # the partial chunk all NaN, the others finite
    logits[2, 33] = float("nan")
    logits[2, [i for i in range(vocab) if i != 33]] = torch.randn(vocab - 1)
    for temperature in (0.0, 1.0):
        temps, _, counts = _rows(torch, 3, temperature)
        tokens = sample(logits, temps, torch.arange(3), counts, block=16)
        assert tokens.tolist() == logits.argmax(dim=-1).tolist() == [0, 32, 33], (temperature, tokens.tolist())


def check_mixed_batch_through_the_sampler(torch):
    """Sampler(fused=True) on greedy, unseeded, seeded and top-k/top-p rows: greedy = argmax;
    a seeded row = the kernel with its key and output count; a filtered row = today's eager path
    (its own generator); unseeded rows repeat with the engine seed and move between rounds."""
    from workbench import SamplingParams
    from workbench.engine.sampler import Sampler, philox_key
    from workbench.engine.sequence import Sequence
    from workbench.kernels.sample import sample

    def seqs():
        params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0),
                  SamplingParams(temperature=0.9, seed=42), SamplingParams(temperature=0.9, top_k=5, top_p=0.8, seed=5)]
        out = [Sequence(i, [1, 2], p) for i, p in enumerate(params)]
        out[2].token_ids += [7, 7, 7]   # three tokens sampled already
        return out

    logits = 0.01 * torch.randn(4, 200, generator=torch.Generator().manual_seed(2))
    sampler = Sampler("cpu", seed=3, fused=True)
    batch = seqs()   # one set through the round: the filtered row's generator moves on
    rows = sampler.rows(batch, 200, logits.device)
    first = sampler.sample(logits, batch, rows)
    second = sampler.sample(logits, batch, rows)   # the round's next step
    assert first[0] == second[0] == logits[0].argmax()
    for step, token in enumerate((first[2], second[2])):
        want = sample(logits[2:3], torch.tensor([0.9]), torch.tensor([philox_key(42)]), torch.tensor([3]), step=step)
        assert token == want[0], (step, token, want)
    eager = Sampler("cpu", seed=0)   # the filtered row alone, candidate off: the same two tokens
    alone = [seqs()[3]]
    eager_rows = eager.rows(alone, 200, logits.device)
    assert [eager.sample(logits[3:4], alone, eager_rows).item() for _ in range(2)] == [first[3], second[3]]
    again = Sampler("cpu", seed=3, fused=True)   # the same engine seed: the same unseeded tokens
    rows = again.rows(seqs(), 200, logits.device)
    assert torch.equal(again.sample(logits, seqs(), rows), first)
    rounds = {again.sample(logits, seqs())[1].item() for _ in range(10)}   # fresh keys each round
    assert len(rounds) >= 7, f"an unseeded row gave {rounds} in 10 rounds over 200 near-uniform tokens"


def check_engine_seeded_requests_reproduce(torch):
    """Tiny model, fused_sampling on: a seeded request gives the same tokens alone and in a batch
    with greedy, unseeded and top-p requests, at 1 or 3 decode steps a round, rounds read before
    the next is launched or after (async_rounds); greedy requests
    match the candidate off; the kernel ran."""
    import tempfile

    from workbench import LLM, Optimizations, SamplingParams
    from workbench.kernels import sample as kernel
    from workbench.model import make_checkpoint
    path = make_checkpoint(tempfile.mkdtemp(), "tiny", seed=0)
    prompts = [[5, 17, 99, 3], [42, 7, 250, 11, 64, 9, 1], [8, 8, 30]]
    seeded = SamplingParams(temperature=0.9, seed=123, max_tokens=6, ignore_eos=True)
    others = [SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
              SamplingParams(temperature=1.0, top_p=0.9, max_tokens=6, ignore_eos=True)]
    calls = []
    launch = kernel.sample
    kernel.sample = lambda *a, **k: calls.append(1) or launch(*a, **k)

    def run(prompt_list, params, decode_steps=1, fused=True, async_rounds=False):
        with LLM(path, opts=Optimizations.all_off(), device="cpu", enable_prefix_caching=False,
                 fused_sampling=fused, decode_steps=decode_steps, async_rounds=async_rounds) as llm:
            return [out.token_ids for out in llm.generate(prompt_list, params, use_tqdm=False)]

    alone = run([prompts[1]], seeded)[0]
    assert calls, "the fused kernel never ran"
    batch = run(prompts, [others[0], seeded, others[1]], decode_steps=3)
    assert batch[1] == alone, (alone, batch[1])
    # async_rounds: the second round is launched before the first is read, its counters 3 tokens on
    assert run(prompts, [others[0], seeded, others[1]], decode_steps=3, async_rounds=True)[1] == alone
    assert run([prompts[2], prompts[1]], [SamplingParams(max_tokens=6, ignore_eos=True), seeded])[1] == alone
    assert batch[0] == run([prompts[0]], others[0], fused=False)[0]


WAIT_HOOK = []   # what the (stubbed) PDL wait does: the LM head's writes, finishing


def check_noise_early_reads_the_logits_after_the_wait(torch):
    """noise_early under PDL (the wait stubbed): the same tokens as the plain launches, bit for bit,
    greedy and sampled rows; and no logit read before the wait -- the logits start negated and the
    wait writes the real ones, as the LM head would finish them, so an early read picks another
    token. One chunk a row, one row a launch (the interpreter runs programs one by one: a later
    program would see an earlier one's wait)."""
    from workbench.kernels import pdl
    from workbench.kernels.sample import sample
    logits = 8 * torch.randn(1, 500, generator=torch.Generator().manual_seed(4))   # above the noise: -logits wins elsewhere
    for temperature in (0.0, 0.6, 1.3):
        for seed, count, step in ((7, 0, 0), (2**40 + 3, 11, 5)):
            rows = (torch.tensor([temperature]), torch.tensor([seed]), torch.tensor([count]))
            want = sample(logits, *rows, step=step, block=512)
            buffer = -logits   # what the LM head's output buffer holds before it finishes
            WAIT_HOOK[:] = [lambda: buffer.copy_(logits)]
            try:
                with pdl.launching(True):
                    got = sample(buffer, *rows, step=step, block=512, noise_early=True)
            finally:
                WAIT_HOOK.clear()
            assert torch.equal(got, want), f"T={temperature} seed={seed}: {got} != {want} (a logit read before the wait?)"
            early = sample(-logits, *rows, step=step, block=512)
            assert not torch.equal(early, want), "the negated logits pick the same token: the check could not fail"


def check_graph_sampling_stages_what_the_sampler_reads(torch):
    """graph_sampling's inputs (optimizations/graph_sampling.py) as a decode graph reads them, run
    eagerly here (no capture on a CPU): staged once a round, with the host's counts written each
    step, the recorded pair gives each step's tokens of the sampler launched after the forward --
    greedy, unseeded, seeded and top-k rows over three steps; then the next round's rows, fewer
    (restaged when the rows change; the rows past them keep stale values, which only padding rows
    read), and an all-greedy round (the temperatures zeroed). Counts asked for another batch size
    than the staged rows' are refused (a replay whose rows were not staged)."""
    from workbench import SamplingParams
    from workbench.engine.sampler import Sampler
    from workbench.engine.sequence import Sequence
    from workbench.optimizations.graph_sampling import GraphSampling

    def seqs(params):
        out = [Sequence(i, [1, 2], p) for i, p in enumerate(params)]
        out[2].token_ids += [7, 7]   # two tokens sampled already
        return out

    mixed = [SamplingParams(temperature=0), SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, seed=42),
             SamplingParams(temperature=0.9, top_k=5, seed=5)]
    logits = [0.02 * torch.randn(4, 300, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    want_sampler, got_sampler = Sampler("cpu", seed=3, fused=True), Sampler("cpu", seed=3, fused=True)
    want_seqs, got_seqs = seqs(mixed), seqs(mixed)
    want_rows, got_rows = want_sampler.rows(want_seqs, 300, "cpu"), got_sampler.rows(got_seqs, 300, "cpu")
    graph = GraphSampling(8, torch.device("cpu"))
    counts = torch.zeros(8, dtype=torch.int64)   # the decode graphs' int64 field, written by the host
    for step in range(3):
        want = want_sampler.sample(logits[step], want_seqs, want_rows)
        graph.stage(got_rows)
        counts[:4] = torch.tensor(graph.counts(4))
        recorded = graph.record(torch.cat([logits[step], torch.zeros(4, 300)]), counts)[:4]   # a bucket of 8
        got = got_sampler.finish_fused(recorded.clone(), logits[step], got_seqs, got_rows)
        assert torch.equal(got, want), (step, got, want)
    small = [SamplingParams(temperature=1.0, seed=9)] * 3   # the next round's rows: seeded, keys need no generator
    want = want_sampler.sample(logits[1][:3], seqs(small))
    graph.stage(got_sampler.rows(seqs(small), 300, "cpu"))
    counts[:3] = torch.tensor(graph.counts(3))
    assert torch.equal(graph.record(logits[1][:3], counts), want)
    try:
        graph.counts(4)
        raise AssertionError("counts for 4 rows from rows staged for 3 must be refused")
    except RuntimeError as e:
        assert "stage this batch's rows" in str(e), e
    graph.stage(None)   # an all-greedy round: the staged temperatures must not linger
    counts[:2] = torch.tensor(graph.counts(2))
    got = graph.record(logits[0][:2], counts)
    assert torch.equal(got, logits[0][:2].argmax(dim=-1)), got


def _main() -> None:
    import torch
    from kernel_cases import run_checks, stub_pdl_wait

    from workbench.kernels import sample
    torch.manual_seed(0)
    stub_pdl_wait(sample, WAIT_HOOK)
    run_checks(CHECKS, globals(), torch)


if __name__ == "__main__":
    _main()
