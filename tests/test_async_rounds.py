"""async_rounds (EngineConfig; workbench/optimizations/async_rounds.py): the next decode round is
launched before the running one is read. It changes when the host looks, never the tokens: greedy
and seeded sampling, stop tokens met inside a round, max_tokens, preemption, streams and aborts
give what multi-step decoding alone gives; an abort or an error mid-step loses nobody else's
tokens. (The fused sampler's counter offset is checked under Triton's interpreter:
tests/test_sample_kernel.py, engine_seeded_requests_reproduce.)"""
import pytest

from workbench import LLM, Optimizations, SamplingParams

from test_multi_step import ENGINE, _mixed_params, _run, prompts  # noqa: F401 (a fixture)


def _stops_inside_rounds(ckpt, prompts, decode_steps):
    """Seeded sampling (the random tiny model's greedy tokens repeat one id: a position off by one
    would not show); every other request stops at a token first drawn at the start of its third
    round (token 0 comes from the prefill), the round after it already launched, the others go on."""
    params = [SamplingParams(temperature=1.0, seed=7 + i, max_tokens=30, ignore_eos=True) for i in range(len(prompts))]
    drawn, _ = _run(ckpt, prompts, params)
    for p, (tokens, _) in list(zip(params, drawn))[::2]:
        stop = next((t for i, t in enumerate(tokens) if i >= 2 * decode_steps + 1 and t not in tokens[:i]), None)
        p.stop_token_ids = [stop] if stop is not None else []
    assert sum(bool(p.stop_token_ids) for p in params) >= 2   # the check has stops to check
    return params


@pytest.mark.parametrize("decode_steps", [2, 4])
def test_async_rounds_same_tokens(tiny_ckpt, prompts, decode_steps):
    greedy, _ = _run(tiny_ckpt, prompts, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    for params in (_mixed_params([tokens for tokens, _ in greedy]), _stops_inside_rounds(tiny_ckpt, prompts, decode_steps)):
        want, sync_stats = _run(tiny_ckpt, prompts, params, decode_steps=decode_steps, async_rounds=False)
        got, stats = _run(tiny_ckpt, prompts, params, decode_steps=decode_steps, async_rounds=True)
        assert got == want
        assert stats.decode_tokens == sync_stats.decode_tokens   # tokens past a stop are not counted as work


def _seeded(n, max_tokens):
    return [SamplingParams(temperature=1.0, seed=50 + i, max_tokens=max_tokens, ignore_eos=True) for i in range(n)]


def test_async_rounds_with_preemption(tiny_ckpt, prompts):
    params = _seeded(len(prompts), 40)
    want, _ = _run(tiny_ckpt, prompts, params, num_kv_blocks=200)
    got, stats = _run(tiny_ckpt, prompts, params, num_kv_blocks=24, decode_steps=4, async_rounds=True)
    assert stats.preemptions > 0
    assert got == want


def test_async_rounds_stream_what_rounds_read_one_at_a_time_give(tiny_ckpt, prompts):
    params = _seeded(3, 13)
    want, _ = _run(tiny_ckpt, prompts[:3], params, decode_steps=4, async_rounds=False)
    with LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), decode_steps=4, async_rounds=True, **ENGINE) as llm:
        events = list(llm.stream(prompts[:3], params))
    for rid, (tokens, _) in zip(sorted({e.request_id for e in events}), want):
        assert [e.token_id for e in events if e.request_id == rid] == tokens


def test_a_round_is_launched_before_the_last_is_read(tiny_ckpt, prompts):
    """The point of the switch: after a step, a round is on its way (launched, not read) while
    sequences still want tokens -- only those: one whose max_tokens the launched round reaches
    is left out of the next; when all are done, nothing is left in flight."""
    short, long = (SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (9, 20))
    with LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), decode_steps=4, async_rounds=True, **ENGINE) as llm:
        first, second = llm._queue(prompts[:2], [short, long])
        llm.step()   # the prefill: token 1 of each
        llm.step()   # round 1 (tokens 2-5) launched, then round 2 (6-9), then round 1 read
        assert llm._launched is not None and llm._launched.seqs == [first, second]
        llm.step()   # round 3 launched without `first` (round 2 ends it), round 2 read
        assert llm._launched.seqs == [second] and llm._launched.num_steps == 4
        while llm.step():
            pass
        assert llm._launched is None
        assert [len(seq.output_token_ids) for seq in (first, second)] == [9, 20]


def test_abort_while_a_round_is_launched(tiny_ckpt, prompts):
    """A request aborted between steps, its round launched: its tokens are dropped, the other
    requests' tokens are what they would have been, and its blocks all come back."""
    params = _seeded(3, 20)
    want, _ = _run(tiny_ckpt, prompts[1:3], params[1:], decode_steps=4, async_rounds=False)
    with LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), decode_steps=4, async_rounds=True, **ENGINE) as llm:
        free = llm.block_manager.num_free_blocks
        doomed, *others = llm._queue(prompts[:3], params)
        llm.step(), llm.step()
        assert llm._launched is not None and doomed in llm._launched.seqs
        kept = len(doomed.output_token_ids)
        llm.abort([doomed])
        while llm.step():
            pass
        assert doomed.finish_reason == "abort" and len(doomed.output_token_ids) == kept
        assert [seq.output_token_ids for seq in others] == [tokens for tokens, _ in want]
        assert llm.block_manager.num_free_blocks == free


def test_abort_all_then_a_new_request(tiny_ckpt, prompts):
    """Every request aborted with a round launched: that round is never read, and the next step
    serves the new request (its prefill token), not a dead round."""
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    with LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), decode_steps=4, async_rounds=True, **ENGINE) as llm:
        llm._queue(prompts[:2], params)
        llm.step(), llm.step()
        assert llm._launched is not None
        assert llm.abort_all() == 2 and llm._launched is None
        steps = llm.stats.steps
        fresh, = llm._queue(prompts[2:3], params)
        assert llm.step() == [(fresh, fresh.output_token_ids[0])] and llm.stats.steps == steps + 1


def test_an_error_mid_step_loses_nobody_elses_tokens():
    """Ctrl-C while a round is read, the round after it launched: the requests that keep running
    get the tokens they would have got (the launched round is forgotten, not read in place of the
    lost one). The trained sorter, greedy: its tokens depend on every token before them (a seeded
    request's would not come back anyway: the lost round's draws advanced its generator)."""
    from workbench.assets import DEFAULT_MODEL_DIR, make_sort_prompts
    sort_prompts = [p for p, _ in make_sort_prompts(2, seed=4, min_len=7)]
    params = SamplingParams(temperature=0, max_tokens=40)
    engine = {"block_size": 16, "max_model_len": 64}   # the sorter's own length
    want, _ = _run(DEFAULT_MODEL_DIR, sort_prompts, params, decode_steps=4, async_rounds=False, **engine)
    assert min(len(set(tokens)) for tokens, _ in want) > 4
    with LLM(DEFAULT_MODEL_DIR, opts=Optimizations(attention="sdpa"), decode_steps=4, async_rounds=True, **engine) as llm:
        seqs = llm._queue(sort_prompts, params)
        llm.step(), llm.step()
        read, interrupted = llm.runner.read_round, []

        def interrupt_once(launched, host_seconds=None):
            if not interrupted:
                interrupted.append(launched)
                raise KeyboardInterrupt
            return read(launched, host_seconds)
        llm.runner.read_round = interrupt_once
        with pytest.raises(KeyboardInterrupt):
            llm.step()
        while llm.step():
            pass
        assert [seq.output_token_ids for seq in seqs] == [tokens for tokens, _ in want]


def test_async_rounds_needs_rounds_and_is_on_wherever_there_are(tiny_ckpt):
    with pytest.raises(ValueError, match="async_rounds=True: .*set decode_steps > 1"):
        LLM(tiny_ckpt, async_rounds=True)
    for steps, on in ((1, False), (4, True)):
        with LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), decode_steps=steps) as llm:
            assert llm.config.async_rounds is on
            assert ("the next round launched before this one is read" in llm.describe()) is on


def test_measurements_refuse_a_round_in_flight(tiny_ckpt, prompts):
    """The host's view is a round behind while a round is launched: decode_step_inputs() would
    describe a step the GPU already runs, and decode_steps_override(1)'s next step() would read
    that round. Both say so; after abort_all() both work."""
    with LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), decode_steps=4, **ENGINE) as llm:
        llm._queue(prompts[:2], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
        llm.step(), llm.step()
        for measure in (llm.decode_step_inputs, lambda: llm.decode_steps_override(1).__enter__()):
            with pytest.raises(RuntimeError, match="a decode round is in flight"):
                measure()
        llm.abort_all()
        with llm.decode_steps_override(1):
            llm._queue(prompts[:1], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
            llm.prefill_all()
            assert llm.decode_step_inputs().num_seqs == 1

