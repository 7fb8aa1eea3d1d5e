"""Sampler behaviour, the stream API, describe/close, and bad input."""
import random

import pytest
import torch

from workbench import LLM, Optimizations, SamplingParams
from workbench.engine.sampler import Sampler
from workbench.engine.sequence import Sequence


@pytest.fixture(scope="module")
def llm(tiny_ckpt):
    with LLM(tiny_ckpt, block_size=16, max_model_len=256, num_kv_blocks=64) as engine:
        yield engine


def _seq(params):
    return Sequence(0, [1], params)


def test_top_k_1_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50)
    sampler = Sampler("cpu", seed=0)
    greedy = logits.argmax(-1).tolist()
    assert sampler(logits, [_seq(SamplingParams(temperature=1.0, top_k=1)) for _ in range(4)]) == greedy
    assert sampler(logits, [_seq(SamplingParams(temperature=1.0, top_p=1e-6)) for _ in range(4)]) == greedy


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 1e-9]])).repeat(4000, 1)
    sampler = Sampler("cpu", seed=0)
    picks = torch.tensor(sampler(logits, [_seq(SamplingParams()) for _ in range(4000)]))
    freq = torch.bincount(picks, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.03), freq
    top2 = torch.tensor(sampler(logits, [_seq(SamplingParams(top_k=2)) for _ in range(4000)]))
    assert set(top2.tolist()) == {0, 1}


def _mixed_batch():
    """greedy, unseeded (the shared generator), seeded and top-k/top-p rows in one batch."""
    return [_seq(SamplingParams(temperature=0)), _seq(SamplingParams(temperature=0.7)),
            _seq(SamplingParams(temperature=1.0, seed=5)), _seq(SamplingParams(temperature=0.9, top_k=3, top_p=0.8)),
            _seq(SamplingParams(temperature=0))]


def test_rows_built_once_sample_as_rows_built_each_time():
    """Multi-step decoding moves a round's sampling parameters to the device once and reuses them
    (workbench/engine/sampler.py: a per-step torch.tensor(list, device="cuda") would make the
    host wait for the GPU every step); the tokens must be the ones sample() makes alone."""
    logits = 0.01 * torch.randn(5, 64, generator=torch.Generator().manual_seed(0))   # near uniform
    want = [Sampler("cpu", seed=3).sample(logits, _mixed_batch()) for _ in range(2)]
    sampler, seqs = Sampler("cpu", seed=3), _mixed_batch()
    rows = sampler.rows(seqs, 64, logits.device)
    got = sampler.sample(logits, seqs, rows)
    assert torch.equal(got, want[0]) and got[0] == logits[0].argmax() and got[4] == logits[4].argmax()
    greedy_rows = sampler.rows([_seq(SamplingParams(temperature=0)) for _ in range(5)], 64, "cpu")
    other = Sampler("cpu", seed=3).sample(logits, _mixed_batch(), greedy_rows)
    assert not torch.equal(other, want[0])   # another batch's rows change the tokens: the check can fail


def test_seeded_requests_reproduce_in_any_batch(llm):
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 512) for _ in range(n)] for n in (5, 30, 12)]
    seeded = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, max_tokens=12, seed=123, ignore_eos=True)
    alone = llm.generate([prompts[1]], seeded, use_tqdm=False)[0].token_ids
    unseeded = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    batch = llm.generate(prompts, [unseeded, seeded, unseeded], use_tqdm=False)
    assert batch[1].token_ids == alone


def test_stop_conditions(llm):
    out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True), use_tqdm=False)[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"
    stop = out.token_ids[2]
    out2 = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True,
                                                    stop_token_ids=[stop]), use_tqdm=False)[0]
    assert out2.token_ids == out.token_ids[:out.token_ids.index(stop) + 1] and out2.finish_reason == "stop"


def test_stream_yields_the_generate_tokens(llm):
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    expected = [o.token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    got = {}
    for event in llm.stream(prompts, params):
        got.setdefault(event.request_id, []).append(event.token_id)
    assert list(got.values()) == expected


def test_text_prompts_and_describe(llm):
    out = llm.generate("hello", SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), use_tqdm=False)[0]
    assert out.prompt == "hello" and len(out.token_ids) == 3 and isinstance(out.text, str)
    text = llm.describe()
    assert "attention  sdpa" in text and "kv cache   64 blocks" in text
    assert "gemv       off (torch F.linear" in text and "fused      off" in text
    assert "prefill    eager (no prefill graphs)" in text   # (a CPU: no graphs)


@pytest.mark.parametrize("make_params", [
    lambda: SamplingParams(temperature=-0.1), lambda: SamplingParams(top_p=0.0), lambda: SamplingParams(top_p=1.5),
    lambda: SamplingParams(top_k=0), lambda: SamplingParams(top_k=-2), lambda: SamplingParams(max_tokens=0)])
def test_bad_sampling_params(make_params):
    with pytest.raises(ValueError, match="must be"):
        make_params()


@pytest.mark.parametrize("prompt,match", [
    ([], "empty prompt"), ("", "empty prompt"), ([1, 10**6], "outside the vocabulary"),
    ([1] * 300, "max_model_len")])
def test_bad_requests_raise_and_lose_nothing(llm, prompt, match):
    good = [[3, 4, 5]]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    expected = llm.generate(good, params, use_tqdm=False)
    pending = llm.add_request([7, 8, 9], params)      # queued before the bad call
    with pytest.raises(ValueError, match=match):
        llm.generate(good + [prompt], params, use_tqdm=False)
    again = llm.generate(good, params, use_tqdm=False)   # the engine still serves ...
    assert again[0].token_ids == expected[0].token_ids
    assert not llm.scheduler.has_unfinished()         # ... and the earlier request also finished
    assert pending >= 0


def test_request_too_big_for_the_kv_cache(tiny_ckpt):
    with LLM(tiny_ckpt, block_size=16, max_model_len=256, num_kv_blocks=8) as small:
        with pytest.raises(ValueError, match="needs 13 KV blocks but the cache has only 8"):
            small.generate([[1] * 200], SamplingParams(max_tokens=4), use_tqdm=False)
        assert small.generate([[1] * 20], SamplingParams(max_tokens=4), use_tqdm=False)[0].token_ids


def test_bad_model_dirs(tmp_path, tiny_ckpt):
    with pytest.raises(FileNotFoundError, match="does not exist|config.json"):
        LLM(tmp_path / "nope")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="supported model types: qwen3, llama"):
        LLM(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen3", "hidden_size": 8}')
    with pytest.raises(ValueError, match="missing num_hidden_layers"):
        LLM(tmp_path)
    (tmp_path / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        LLM(tmp_path)


def test_cuda_only_switches_on_cpu(tiny_ckpt):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        LLM(tiny_ckpt, opts=Optimizations(attention="flash"), device="cpu")
    with LLM(tiny_ckpt, opts=Optimizations.all_on(), device="cpu", max_model_len=128) as llm:
        assert llm.opts.attention == "sdpa" and not llm.opts.cuda_graphs
        assert any("cuda_graphs=True: skipped" in note for note in llm.skipped)
        assert "skipped" in llm.describe()


def test_engines_can_be_recreated(tiny_ckpt):
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    runs = []
    for _ in range(2):
        with LLM(tiny_ckpt, max_model_len=128) as llm:
            runs.append(llm.generate([[1, 2]], params, use_tqdm=False)[0].token_ids)
    assert runs[0] == runs[1]


def test_stream_stopped_early_leaves_a_clean_engine(llm):
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
    for n, _ in enumerate(llm.stream([[1, 2, 3], [4, 5]], params)):
        if n == 3:
            break
    assert not llm.scheduler.has_unfinished()
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks


def test_top_k_renormalizes_before_top_p():
    # after top-k=2 the probabilities are 0.625 / 0.375, so top_p=0.55 keeps token 0 alone
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(500, 1)
    picks = Sampler("cpu", seed=0)(logits, [_seq(SamplingParams(top_k=2, top_p=0.55)) for _ in range(500)])
    assert set(picks) == {0}


def test_stream_text_never_splits_a_character(tiny_ckpt):
    with LLM(tiny_ckpt, max_model_len=128) as llm:
        wanted = llm.tokenizer.encode("aé€b", add_special_tokens=False)   # 1 + 2 + 3 + 1 byte tokens
        forced = iter(wanted)
        real_execute = llm.runner.execute

        def execute(scheduled, *args):   # the model "samples" the bytes of aé€b, one per step
            tokens, logits = real_execute(scheduled, *args)
            return [None if t is None else next(forced) for t in tokens], logits

        llm.runner.execute = execute
        deltas = [e.text for e in llm.stream([[5]], SamplingParams(max_tokens=len(wanted), ignore_eos=True))]
    assert "".join(deltas) == "aé€b" and not any("\ufffd" in d for d in deltas)


def test_preset_objects_drop_cuda_switches_on_cpu(tiny_ckpt):
    with LLM(tiny_ckpt, opts=Optimizations.all_on(), device="cpu", max_model_len=128) as llm:
        assert llm.opts.attention == "sdpa" and llm.skipped


def test_closed_engine_says_so(tiny_ckpt):
    llm = LLM(tiny_ckpt, max_model_len=128)
    llm.close()
    with pytest.raises(RuntimeError, match="closed"):
        llm.generate([[1, 2]], SamplingParams(max_tokens=2), use_tqdm=False)


def test_request_that_exactly_fits_the_cache_is_accepted(tiny_ckpt):
    # 100 + 29 tokens: the last sampled token gets no K/V, so 128 slots = 8 blocks of 16 suffice
    with LLM(tiny_ckpt, block_size=16, max_model_len=256, num_kv_blocks=8) as llm:
        out = llm.generate([[1] * 100], SamplingParams(max_tokens=29, ignore_eos=True), use_tqdm=False)[0]
        assert len(out.token_ids) == 29


def test_a_setting_asks_only_its_own_switches_why_not(monkeypatch):
    """Asking attention='flash' imports flash-attn (seconds on a GPU): a setting without flash
    must not pay for that question, while the board's full list still asks every switch."""
    from workbench.optimizations import board

    def no(*_):
        raise AssertionError("flash was asked though the setting does not use it")
    monkeypatch.setattr(board.SWITCHES["flash"], "why_not", no)
    assert Optimizations(attention="sdpa").why_not("cpu") == {}
    assert "fused_kernels" in Optimizations(attention="sdpa", fused_kernels=True).why_not("cpu")
    with pytest.raises(AssertionError, match="flash was asked"):
        board.why_not("cpu")


def test_fused_decode_on_the_board():
    """fused_decode: in all_on, not in all_off; refused when asked for directly where it cannot
    run (a CPU, or tensor parallelism even on a GPU), dropped with a note from a preset."""
    from workbench.optimizations import fused_decode
    assert Optimizations.all_on().fused_decode and not Optimizations.all_off().fused_decode
    assert Optimizations(fused_decode=True).label() == "sdpa+fdec"
    with pytest.raises(ValueError, match="fused_decode=True: needs a CUDA GPU"):
        Optimizations(fused_decode=True).resolve("cpu")
    opts, notes = Optimizations.all_on().resolve("cpu")
    assert not opts.fused_decode and any(n.startswith("fused_decode=True: skipped") for n in notes)
    assert "one GPU" in fused_decode.why_not("cuda", tp_size=2)
    assert fused_decode.why_not("cpu") is not None


def test_warmup_progress_bar_only_when_asked(tiny_ckpt, capsys, monkeypatch):
    """warmup_progress=True draws a bar over warm-up's stages (here: the compile stage; the
    compiler itself is stubbed out, the stage is what is tested)."""
    from workbench.optimizations import compile as torch_compile
    monkeypatch.setattr(torch_compile, "install", lambda model: model.forward)
    with LLM(tiny_ckpt, opts=Optimizations(compile=True), warmup_progress=True):
        pass
    assert "warm-up" in capsys.readouterr().err
    with LLM(tiny_ckpt, opts=Optimizations(compile=True)):
        pass
    assert "warm-up" not in capsys.readouterr().err
