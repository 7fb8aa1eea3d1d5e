"""Streams are exact: any interleaving of stream() consumers and generate() calls on one engine
gives every stream exactly its own tokens, ending with finished=True, and frees every KV block."""
import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench import LLM, SamplingParams

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [1] * 20, list(range(40, 75)), [300, 2]]
MAX_TOKENS = [1, 3, 6, 9, 12]


@pytest.fixture(scope="module")
def llm(tiny_ckpt):
    with LLM(tiny_ckpt, block_size=16, max_model_len=256, num_kv_blocks=64, max_num_seqs=4) as engine:
        yield engine   # max_num_seqs=4: some requests wait in the queue while others run


@pytest.fixture(scope="module")
def expected(llm):
    """Each request's tokens and text, generated alone."""
    return {i: llm.generate([PROMPTS[i]], _params(i), use_tqdm=False)[0] for i in range(len(PROMPTS))}


def _params(i):
    return SamplingParams(temperature=0, max_tokens=MAX_TOKENS[i], ignore_eos=True)


def _open(llm, requests):
    return llm.stream([PROMPTS[i] for i in requests], [_params(i) for i in requests])


def _assert_clean(llm):
    assert not llm.scheduler.has_unfinished() and not llm._listeners
    assert llm.block_manager.num_free_blocks == llm.block_manager.num_blocks


OPS = st.one_of(
    st.tuples(st.just("open"), st.lists(st.integers(0, len(PROMPTS) - 1), min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("next"), st.integers(0, 5)),
    st.tuples(st.just("generate"), st.integers(0, len(PROMPTS) - 1)),
    st.tuples(st.just("step"), st.just(0)),
    st.tuples(st.just("close"), st.integers(0, 5)),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(OPS, min_size=1, max_size=12))
def test_any_interleaving_gives_each_stream_its_own_tokens(llm, expected, ops):
    streams = []   # [stream, {request id: prompt index}, events so far, closed early]
    for op, arg in ops:
        if op == "open":
            ids = {llm._next_id + n: i for n, i in enumerate(arg)}   # ids are given in order
            streams.append([_open(llm, arg), ids, [], False])
        elif op == "generate":
            out = llm.generate([PROMPTS[arg]], _params(arg), use_tqdm=False)[0]
            assert out.token_ids == expected[arg].token_ids
        elif op == "step":
            llm.step()   # a bare step advances everyone's requests; the streams still get theirs
        elif streams:
            entry = streams[arg % len(streams)]
            if op == "close":
                entry[0].close()
                entry[3] = True
            else:
                entry[2].extend(e for e in [next(entry[0], None)] if e is not None)
    for stream, ids, events, closed in streams:
        if not closed:
            events.extend(stream)
        assert {e.request_id for e in events} <= set(ids)   # nobody else's tokens
        for rid, index in ids.items():
            got, want = [e for e in events if e.request_id == rid], expected[index]
            assert [e.token_id for e in got] == want.token_ids[:len(got)]
            if closed:   # what arrived before close() is a prefix of the request's output
                continue
            assert len(got) == len(want.token_ids)
            assert [e.finished for e in got] == [False] * (len(got) - 1) + [True]
            assert got[-1].finish_reason == want.finish_reason
            assert "".join(e.text for e in got) == want.text
    _assert_clean(llm)


def test_side_by_side_streams_and_a_generate_in_between(llm, expected):
    a, b = _open(llm, [0, 1]), _open(llm, [2])
    first = [next(a), next(a)]
    middle = llm.generate([PROMPTS[3]], _params(3), use_tqdm=False)[0]
    pairs = list(zip(a, b))   # read side by side (the issue: KeyError)
    rest_a, rest_b = [e for e, _ in pairs] + list(a), [e for _, e in pairs] + list(b)
    events = first + rest_a
    for i, rid in ((0, events[0].request_id), (1, events[0].request_id + 1)):
        got = [e for e in events if e.request_id == rid]
        assert [e.token_id for e in got] == expected[i].token_ids and got[-1].finished
    assert [e.token_id for e in rest_b] == expected[2].token_ids and rest_b[-1].finished
    assert middle.token_ids == expected[3].token_ids
    _assert_clean(llm)


def test_abandoned_streams_free_their_blocks(llm):
    s = _open(llm, [3, 4])
    next(s)
    del s   # dropped mid-way: the garbage collector closes it
    gc.collect()
    _assert_clean(llm)
    _open(llm, [1])   # never read at all
    gc.collect()
    _assert_clean(llm)
    s = _open(llm, [2])
    next(s)
    s.close()
    assert list(s) == []
    _assert_clean(llm)


def test_a_stream_closed_during_a_step_is_aborted_after_it(llm, expected):
    """The garbage collector may finalize a stream while the engine is mid-step."""
    victim = _open(llm, [3])
    next(victim)
    execute = llm.runner.execute

    def execute_and_close(*args):
        victim.close()   # as if collected here
        return execute(*args)

    llm.runner.execute = execute_and_close
    try:
        out = llm.generate([PROMPTS[0]], _params(0), use_tqdm=False)[0]
    finally:
        llm.runner.execute = execute
    assert out.token_ids == expected[0].token_ids
    _assert_clean(llm)


def test_abort_all_ends_each_request_of_a_stream_with_a_finished_event(llm, expected):
    base, requests = llm._next_id, [0, 1, 2, 3, 4]
    s = _open(llm, requests)   # max_num_seqs=4: request 4 waits in the queue
    events = [next(s)]         # one step ran: the other running requests' tokens wait in the stream
    assert llm.abort_all() >= 2
    events += list(s)
    for n, i in enumerate(requests):
        got = [e for e in events if e.request_id == base + n]
        assert [e.finished for e in got] == [False] * (len(got) - 1) + [True], (i, got)
        tokens = [e.token_id for e in got if e.token_id is not None]
        assert tokens == expected[i].token_ids[:len(tokens)]
        whole = len(tokens) == len(expected[i].token_ids)   # request 0 (1 token) finished in that step
        assert got[-1].finish_reason == (expected[i].finish_reason if whole else "abort"), (i, got)
    assert got[-1].token_id is None and got[-1].text == ""   # request 4 never ran: an event with no token
    _assert_clean(llm)
