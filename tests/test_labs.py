"""Course labs: every check passes the reference and fails wrong solutions with the lesson's message;
the student versions carry no solution; otter's autograder scores reference and wrong submissions.

Reference solutions exist only in the master notebooks (labs/); the tests read them from there.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat")

from lab_fill import solution_cells  # noqa: E402
from workbench import lab  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MASTERS = lab.master_notebooks()


def solutions() -> dict:
    """Execute every master's solution cells (not the Triton one: it needs the interpreter set up
    before triton is imported, so it is covered by the notebook runs below)."""
    ns = {"torch": torch, "math": math}
    for master in MASTERS:
        for src in solution_cells(nbformat.read(master, 4)):
            if "triton" not in src and "torch.cuda.CUDAGraph" not in src:
                exec(compile(src, str(master), "exec"), ns)
    return ns


SOL = solutions()
FAST = dict(engine=False)   # the engine stage is exercised once per exercise in test_engine_stage


def _wrong_attention(**kw):
    from workbench.lab.naive_attention import _variant
    return lambda q, kc, vc, meta, scale: _variant(q, kc, vc, meta, scale, **kw)


def _tiled(q, k, v, scale, tile, upto=None, scores=None, rescale=True, m0=-1e30, times=None, causal=True):
    """A right online softmax, with a mistake switchable: keys past `upto` never seen (the causal
    offset still counted from Lk), `scores(q, k_tile)` -> [H, Lq, tile] computed another way, the
    earlier tiles not rescaled when the running max grows (rescale=False), the running max started
    at `m0`, the scores multiplied by `times` instead of `scale`, or no causal mask."""
    lq, lk, h = q.shape[0], k.shape[0], q.shape[1]
    m, l, acc = torch.full((h, lq), m0), torch.zeros(h, lq), torch.zeros(h, lq, q.shape[2])
    pos = torch.arange(lq)[:, None] + lk - lq
    for s0 in range(0, lk if upto is None else upto, tile):
        s = (scores or (lambda q_, kt: torch.einsum("qhd,khd->hqk", q_, kt)))(q, k[s0:s0 + tile])
        s = s * (scale if times is None else times)
        if causal:
            s = s.masked_fill(torch.arange(s0, min(s0 + tile, lk))[None, :] > pos, float("-inf"))
        m_new = torch.maximum(m, s.amax(-1))
        p, fix = torch.exp(s - m_new[..., None]), torch.exp(m - m_new) if rescale else torch.ones_like(m)
        l, acc = l * fix + p.sum(-1), acc * fix[..., None] + torch.einsum("hqk,khd->hqd", p, v[s0:s0 + tile])
        m = m_new
    return (acc / l[..., None]).transpose(0, 1)


def _tiled_no_rescale(q, k, v, scale, tile):
    """Forgets to rescale the earlier tiles when the running max grows."""
    return _tiled(q, k, v, scale, tile, rescale=False)


def _tiled_drops_the_last_tile(q, k, v, scale, tile):
    """Walks whole tiles only: the keys past the last multiple of `tile` are never seen."""
    return _tiled(q, k, v, scale, tile, upto=k.shape[0] // tile * tile)


def _tiled_broadcasts(q, k, v, scale, tile):
    """Tiled and right, but its scores come from a broadcast product: an Lq x tile x H x D tensor."""
    return _tiled(q, k, v, scale, tile, scores=lambda q_, kt: (q_[:, None] * kt[None]).sum(-1).permute(2, 0, 1))


def _tiled_max_from_zero(q, k, v, scale, tile):
    """Right wherever some score is above about -88; starts the running max at 0, not -inf."""
    return _tiled(q, k, v, scale, tile, m0=0.0)


def _tiled_no_scale(q, k, v, scale, tile):
    return _tiled(q, k, v, scale, tile, times=1.0)


def _tiled_scaled_twice(q, k, v, scale, tile):
    """`scale` is 1/sqrt(head_dim) already; this divides by sqrt(head_dim) again."""
    return _tiled(q, k, v, scale, tile, times=scale / math.sqrt(q.shape[-1]))


def _tiled_not_causal(q, k, v, scale, tile):
    return _tiled(q, k, v, scale, tile, causal=False)


def _gather_off_by_one(q, k_cache, v_cache, meta, scale):
    """Attention right but for the gather: position t read from block (t + 1) // block_size."""
    from workbench.lab.naive_attention import attend
    out, cu, block = [], meta.cu_seqlens_q.tolist(), k_cache.shape[1]
    for b in range(meta.num_seqs):
        n = int(meta.seq_lens[b])
        pos = torch.arange(n)
        blocks = meta.block_tables[b].long()[((pos + 1) // block).clamp(max=meta.block_tables.shape[1] - 1)]
        group = q.shape[1] // k_cache.shape[2]
        k, v = (c[blocks, pos % block].repeat_interleave(group, 1) for c in (k_cache, v_cache))
        out.append(attend(q[cu[b]:cu[b + 1]], k, v, scale))
    return torch.cat(out).to(q.dtype)


def _tiled_materializes(q, k, v, scale, tile):
    from workbench.lab.online_softmax import _dense
    return _dense(q, k, v, scale)


def _dense_a_few_queries_at_a_time(q, k, v, scale, tile):
    """Right, and never N x N when Lq = Lk: the dense softmax over all keys, `tile` queries at a time."""
    from workbench.lab.online_softmax import _dense
    lq, lk = q.shape[0], k.shape[0]
    # each query chunk sees the keys up to its own last position: the dense helper's causal offset
    return torch.cat([_dense(q[i:i + tile], k[:lk - lq + min(i + tile, lq)], v[:lk - lq + min(i + tile, lq)], scale)
                      for i in range(0, lq, tile)])


def _dense_in_numpy(q, k, v, scale, tile):
    """Right, the N x N matrix built where torch cannot see it."""
    import numpy as np
    qn, kn, vn = (t.double().numpy() for t in (q, k, v))
    lq, lk = qn.shape[0], kn.shape[0]
    s = np.einsum("qhd,khd->hqk", qn, kn) * scale
    s[:, np.arange(lk)[None, :] > np.arange(lq)[:, None] + lk - lq] = -np.inf
    p = np.exp(s - s.max(-1, keepdims=True))
    return torch.from_numpy(np.einsum("hqk,khd->qhd", p / p.sum(-1, keepdims=True), vn)).to(q.dtype)


def _sample_no_temperature(logits, t, k, p, g):
    return SOL["sample_row"](logits, 1.0, k, p, g)


def _sample_global_rng(logits, t, k, p, g):
    return SOL["sample_row"](logits, t, k, p, None)


def _sample_no_top_k(logits, t, k, p, g):
    return SOL["sample_row"](logits, t, 0, p, g)


def _sample_kept(logits, t, k, p, top_p_first=False, keep_crossing=True):
    """A sampler's kept probabilities, with a classic mistake switchable: top-p before top-k, or
    the token crossing top_p dropped."""
    def top_k(x):
        return x if k <= 0 else x.masked_fill(x < x.topk(min(k, x.numel())).values[-1], float("-inf"))

    def top_p(x):
        probs = x.softmax(-1)
        order = probs.argsort(descending=True)
        before = probs[order].cumsum(0) - (probs[order] if keep_crossing else 0)
        drop = order[before >= p] if keep_crossing else order[before > p]
        return x.index_fill(0, drop, float("-inf")) if p < 1 else x
    x = logits / t
    x = top_k(top_p(x)) if top_p_first else top_p(top_k(x))
    return x.softmax(-1)


def _sample_top_p_first(logits, t, k, p, g):
    return int(torch.multinomial(_sample_kept(logits, t, k, p, top_p_first=True), 1, generator=g))


def _sample_drops_the_crossing_token(logits, t, k, p, g):
    return int(torch.multinomial(_sample_kept(logits, t, k, p, keep_crossing=False), 1, generator=g))


def _sample_unsorted_top_p(logits, t, k, p, g):
    """The nucleus summed in vocabulary order: the sort forgotten."""
    probs = _sample_kept(logits, t, k, 1.0)
    probs = probs.masked_fill(probs.cumsum(-1) - probs >= p, 0.0)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=g))


def _sample_greedy_when_confident(logits, t, k, p, g):
    probs = _sample_kept(logits, t, k, p)
    return int(probs.argmax()) if probs.max() > 0.5 else int(torch.multinomial(probs, 1, generator=g))


def _rms_eps_outside(x, r, w, eps):
    s = x + r if r is not None else x
    return w * s / (s.pow(2).mean(-1, keepdim=True).sqrt() + eps), s


def _rms_by_block(x, r, w, eps):
    s = x + r if r is not None else x
    return w * s * torch.rsqrt(s.pow(2).sum(-1, keepdim=True) / 2 ** math.ceil(math.log2(s.shape[-1])) + eps), s


def _rms_old_residual(x, r, w, eps):
    from workbench.lab.add_rms_norm import reference
    return reference(x, r, w, eps)[0], x


def _reference_rms(x, r, w, eps):
    """Right numbers from torch ops: the unfused form, not the one-kernel exercise."""
    from workbench.lab.add_rms_norm import reference
    return reference(x, r, w, eps)


def _break_even_ratio(c, e, k):
    if c < 0 or e <= 0 or k <= 0:
        raise ValueError
    return math.inf if k <= e else c * e / (k / e - 1)


def _break_even_negative(c, e, k):
    return c / (1 / e - 1 / k) if k != e else math.inf


def _break_even_no_check(c, e, k):
    return math.inf if k <= e else c / (1 / e - 1 / k)


def _break_even_sign(c, e, k):
    if c < 0 or e <= 0 or k <= 0:
        raise ValueError
    return math.inf if k <= e else c / (1 / k - 1 / e)


# exercise -> (reference, [(wrong solution, expected words in the message), ...])
WRONG = {
    "block_hash": ("block_hasher", [
        (lambda p, t: SOL["block_hasher"](None, t), "ignores parent_hash"),
        (lambda p, t: (hash(p) * 31 + sum(t)) % 2 ** 64, "loses their order"),
        (lambda p, t: str(SOL["block_hasher"](p, t)), "return a Python int"),
        (lambda p, t: hash((p, t)), "mask it"),   # signed: negative for some (parent, tokens), not all
        (lambda p, t: SOL["block_hasher"](p, tuple(x % 256 for x in t)), "keep every bit"),   # ids as bytes
        (lambda p, t: SOL["block_hasher"](p, (int("".join(map(str, t))) % 2 ** 60,)), "no separator"),
        (lambda p, t: SOL["block_hasher"](p, t[:-1]), "ignores the last token"),   # an off-by-one slice
        (lambda p, t: SOL["block_hasher"](p, t[1:]), "ignores token 0")]),
    "preemption": ("pick_victim", [
        (lambda running: running[0], "loses the least"),
        (lambda running: running.pop(), "changed the `running` list"),
        (lambda running: min(running, key=lambda s: s.num_computed_tokens), "on a tie take the newest"),
        (lambda running: min(reversed(running), key=len), "loses the least")]),   # tokens held, not computed
    "naive_attention": ("attention", [
        (_wrong_attention(causal=False), "without* the causal mask"),
        (_wrong_attention(offset=False), "ignores the cached prefix"),
        (_wrong_attention(sees_itself=False), "its own position included"),
        (_wrong_attention(scale_power=0), "without the scale"),
        (_wrong_attention(scale_power=2), "scaled twice"),
        (_wrong_attention(scale_power=-1), "divided by `scale`"),
        (_gather_off_by_one, "(cached, new) tokens [(0, 5), (0, 19), (0, 1)], block_size 8"),
        (_wrong_attention(interleave=False), "h % num_kv_heads"),
        (lambda q, kc, vc, meta, scale: torch.full_like(q, float("nan")), "wrong output at")]),   # NaN is wrong
    "online_softmax": ("tiled_attention", [
        (_tiled_no_rescale, "exp(m_old - m_new)"),
        (_tiled_materializes, "Lq x Lk tensor still exists"),
        (_tiled_drops_the_last_tile, "the last, shorter tile"),
        (_tiled_broadcasts, "No Lq x Lk tensor, but an intermediate as big as one"),
        (_dense_a_few_queries_at_a_time, "Lq=4, Lk=4096"),
        (_dense_in_numpy, "out of torch"),
        (_tiled_max_from_zero, "start m at -inf"),
        (_tiled_no_scale, "without the scale"),
        (_tiled_scaled_twice, "scaled twice"),
        (_tiled_not_causal, "without* the causal mask")]),
    "add_rms_norm": (None, [
        (_rms_eps_outside, "eps outside the square root"),
        (_rms_by_block, "not by BLOCK"),
        (_rms_old_residual, "new_residual is x + residual"),
        (lambda x, r, w, eps: _reference_rms(x, r, w, eps), "the unfused form this replaces")]),
    "graph_buckets": ("bucket_for", [
        (lambda b, bs: next((x for x in bs if x > b), None), "bucket"),
        (lambda b, bs: next((x for x in bs if x >= b), bs[-1]), "return None"),
        (lambda b, bs: bs[__import__("bisect").bisect_left(bs, b)], "bucket_for(2, [1]) raised IndexError")]),
    "sampling": ("sample_row", [
        (_sample_no_temperature, "Divide by the temperature"),
        (_sample_global_rng, "generator=generator"),
        (_sample_no_top_k, "outside the kept set"),
        (_sample_top_p_first, "outside the kept set"),
        (_sample_drops_the_crossing_token, "never drawn"),
        (_sample_unsorted_top_p, "sort the probabilities in descending order before the cumulative sum"),
        (_sample_greedy_when_confident, "never the argmax, however dominant")]),
    "compile_break_even": ("break_even_tokens", [
        (_break_even_ratio, "speed-up ratio is not a time saved"),
        (_break_even_negative, "return math.inf"),
        (_break_even_no_check, "ValueError"),
        (_break_even_sign, "you subtracted in the wrong order"),
        (lambda c, e, k: c / abs(1 / e - 1 / k), "(5.0, 20.0, 20.0) raised ZeroDivisionError: float division by "
         "zero; expected inf"),
        (lambda c, e, k: None if min(c, e - 1e-300, k - 1e-300) < 0 else _break_even_no_check(c, e, k),
         "returned None instead of raising ValueError")]),
}


IN_ENGINE = ["block_hash", "naive_attention", "online_softmax", "preemption", "sampling"]


@pytest.mark.parametrize("name", sorted(set(WRONG) - set(IN_ENGINE)))   # the others: test_engine_stage_and_measure
def test_reference_passes_alone_and_measured(name):
    ref = WRONG[name][0]
    if ref is None:
        pytest.skip("the Triton reference runs in the notebook tests (interpreter set before import)")
    result = lab.check(name, SOL[ref], **FAST)
    assert result.passed and result.score == 1.0, str(result)


@pytest.mark.parametrize("name,index", [(n, i) for n in sorted(WRONG) for i in range(len(WRONG[n][1]))])
def test_wrong_solution_fails_with_its_message(name, index):
    wrong, words = WRONG[name][1][index]
    result = lab.check(name, wrong, **FAST)
    assert not result.passed and result.score < 1.0, str(result)
    assert words in "\n".join(result.messages), str(result)


@pytest.mark.parametrize("name", sorted(n for n in WRONG if n != "graph_buckets"))   # (None is an answer there)
def test_a_function_not_written_yet_is_told_so(name):
    """A body still `pass` returns None: the check says the function is not written yet, not an
    error from wherever the None first lands."""
    def unwritten(*args):
        pass
    result = lab.check(name, unwritten, **FAST)
    assert not result.passed and "returned None: not written yet" in "\n".join(result.messages), str(result)


def test_cuda_graph_capture_skips_clearly_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("on a GPU the capture is graded (tests/gpu)")
    result = lab.check("cuda_graph", lambda step, static: step)
    assert set(result.stages.values()) == {"skip"} and "CUDA GPU" in "\n".join(result.messages)
    assert "not checked" in str(result) and "score" not in str(result), str(result)   # (seen: "score 0.00")


def test_the_engines_own_piece_handed_in_is_refused():
    """A student who hands in the engine's implementation (a function or a module instance, as the
    assignments name them for comparison) has written nothing: refused before any stage runs."""
    from workbench.attention.naive import NaiveAttention
    from workbench.engine.block_manager import block_hash
    for name, theirs in (("block_hash", block_hash), ("naive_attention", NaiveAttention())):
        result = lab.check(name, theirs, **FAST)
        assert not result.passed and "the engine's own implementation" in "\n".join(result.messages), str(result)


def test_the_hidden_grade_ignores_what_the_notebook_did_to_the_grader(monkeypatch):
    """The hidden tests grade through lab.grade after reloading workbench.lab: a notebook that replaced
    lab.check or patched the exercise cannot pass an unwritten function. (Seen
    failing with grade() checking through the package's own, patched, exercise.)"""
    import importlib

    def unwritten(parent_hash, token_ids):
        ...
    passing = lab.Result("block_hash")
    passing.stages = {"alone": "pass", "engine": "pass", "measure": "pass"}
    monkeypatch.setattr(lab, "check", lambda *a, **k: passing)   # what a notebook cell could do
    monkeypatch.setattr(lab.exercise("block_hash"), "check", lambda *a, **k: passing)
    assert lab.check("block_hash", unwritten).passed   # the notebook's own check is fooled...
    fresh = importlib.reload(importlib.import_module("workbench.lab"))   # ...the hidden cell's is not
    result = fresh.grade("block_hash", unwritten, engine=False, measure=False)
    assert not result.passed and "not written yet" in "\n".join(result.messages), str(result)


def test_grade_reports_its_summary_where_the_environment_asks(monkeypatch, tmp_path):
    """Where WORKBENCH_LAB_REPORT names a file (scripts/labs.py grade sets it around `otter run`),
    lab.grade appends one JSON line per graded exercise, pass or fail, carrying the Result's own
    summary -- measured numbers included; unset, it writes nothing."""
    import json
    report = tmp_path / "measured.jsonl"
    monkeypatch.delenv(lab.REPORT_ENV, raising=False)
    lab.grade("graph_buckets", SOL["bucket_for"], **FAST)
    assert not report.exists()
    monkeypatch.setenv(lab.REPORT_ENV, str(report))
    passing = lab.grade("graph_buckets", SOL["bucket_for"], **FAST)
    failing = lab.grade("graph_buckets", WRONG["graph_buckets"][1][0][0], **FAST)
    assert passing.passed and "padded rows" in str(passing) and not failing.passed, (passing, failing)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert lines == [{"exercise": "graph_buckets", "summary": str(passing)},
                     {"exercise": "graph_buckets", "summary": str(failing)}]


def test_unknown_exercise_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        lab.exercise("flash")


@pytest.mark.parametrize("name", IN_ENGINE)
def test_engine_stage_and_measure(name):
    """Plugged into the engine through LLM(overrides=...): the reference passes all stages here."""
    result = lab.check(name, SOL[WRONG[name][0]])
    assert result.stages == {"alone": "pass", "engine": "pass", "measure": "pass"}, str(result)
    assert result.effect["machine"]
    assert f"bar: {result.effect['bar']}" in str(result), str(result)   # the bar is stated on a pass too


def test_check_runs_afresh_after_a_helper_is_fixed():
    """lab.check grades what the function does now: a helper it calls, fixed and the check re-run,
    counts (seen failing when check memoised results by the function's identity and code)."""
    ns = {}
    exec("def key(seq):\n    return seq.num_computed_tokens\n"             # ties go to the oldest
         "def pick_victim(running):\n    return min(running, key=key)\n", ns)
    assert not lab.check("preemption", ns["pick_victim"], **FAST).passed
    exec("def key(seq):\n    return (seq.num_computed_tokens, -seq.request_id)\n", ns)   # fixed
    result = lab.check("preemption", ns["pick_victim"], **FAST)
    assert result.passed, str(result)


# engine runs with an override in one check: the student's once (+ preemption's built-in policy on
# the tight cache, the bar its measure compares against; a run without overrides is the reference)
OVERRIDDEN_RUNS = {"block_hash": 1, "preemption": 2}


@pytest.mark.parametrize("name", sorted(OVERRIDDEN_RUNS))
def test_engine_and_measure_share_the_students_run(name, monkeypatch):
    """One check runs the student's engine workload once; its engine and measure stages share it."""
    exercise_module = sys.modules["workbench.lab.exercise"]
    runs, run = [], exercise_module._run_engine
    monkeypatch.setattr(exercise_module, "_run_engine",
                        lambda prompts, overrides, *a: runs.append(overrides) or run(prompts, overrides, *a))
    result = lab.check(name, SOL[WRONG[name][0]])
    assert result.passed and result.stages["measure"] == "pass", str(result)
    assert sum(bool(o) for o in runs) == OVERRIDDEN_RUNS[name], runs


def test_engine_catches_what_the_unit_stage_cannot():
    """A hasher ignoring the parent reuses a block after another prefix; a policy preempting the
    oldest throws away more work: both only show up in the engine."""
    from workbench.lab import block_hash, preemption
    with pytest.raises(lab.Wrong, match="after a different prefix"):
        block_hash.engine(lambda parent, tokens: SOL["block_hasher"](None, tokens))
    with pytest.raises(lab.Wrong, match="above the bar"):
        preemption.measure(lambda running: running[0])


def test_measure_compile_counts_the_compile_at_start_up():
    """The lab's compile_s includes what the engine compiled while it started (runner.timings), not
    only the first generate's extra (seen failing with compile_s = that extra alone)."""
    from workbench.lab import compile_break_even
    numbers = compile_break_even.measure_compile(max_tokens=4)
    assert numbers["compile_at_start_s"] > 0, numbers
    assert abs(numbers["compile_s"] - numbers["compile_at_start_s"] - numbers["first_generate_extra_s"]) < 1e-9
    assert numbers["compile_s"] > numbers["first_generate_extra_s"], numbers
    for rate in ("eager", "compiled"):   # each rate a median of repeated runs, its spread beside it
        low, high = numbers[f"{rate}_tok_s_range"]
        assert low <= numbers[f"{rate}_tok_s"] <= high, numbers


def test_no_break_even_is_read_from_rates_whose_runs_overlap():
    """The measured stage reads a break-even off the student's rates only where their runs do not
    overlap (seen failing with the ranges ignored: 'pays off after' printed for noise)."""
    from workbench.lab import compile_break_even
    numbers = dict(compile_s=5.0, eager_tok_s=600.0, compiled_tok_s=620.0)
    apart = compile_break_even.measure(SOL["break_even_tokens"], **numbers, eager_range=(590.0, 605.0),
                                       compiled_range=(612.0, 630.0))
    overlapping = compile_break_even.measure(SOL["break_even_tokens"], **numbers, eager_range=(560.0, 640.0),
                                             compiled_range=(600.0, 650.0))
    assert apart["summary"].startswith("compile pays off after"), apart["summary"]
    assert "did not resolve" in overlapping["summary"] and "pays off after" not in overlapping["summary"]
    # whose numbers: the run that measured them (the grader re-measures; seen saying "your" runs)
    assert "your" not in overlapping["summary"] and "measured by this run of the notebook, on " in apart["summary"]


def test_add_rms_norm_wants_its_math_inside_one_kernel(monkeypatch):
    """The fused exercise's check counts Triton launches and records torch's math outside them: a
    torch add before one Triton norm kernel is refused (the half-fused form), math done inside a
    launch (the interpreter's) is not the student's, and the whole of it inside one launch passes.
    A stand-in `run` plays the kernel: it calls its "kernel", a Python function (no Triton here)."""
    from triton.runtime.jit import JITFunction

    from workbench.lab.add_rms_norm import reference, triton_launches
    monkeypatch.setattr(JITFunction, "run", lambda kernel, *args, **kwargs: kernel(*args))

    def half_fused(x, r, w, eps):
        s = x + r if r is not None else x   # the add in torch, then "one kernel" for the norm
        return JITFunction.run(lambda s_, w_, e_: reference(s_, None, w_, e_)[0], s, w, eps), s

    def fused(x, r, w, eps):
        return JITFunction.run(lambda *a: reference(*a), x, r, w, eps)
    with triton_launches() as launched:
        JITFunction.run(lambda: torch.ones(2) * 2)
    assert (launched.count, launched.torch_math) == (1, []), vars(launched)
    result = lab.check("add_rms_norm", half_fused, **FAST)
    assert not result.passed and "torch computed add outside your kernel" in "\n".join(result.messages), str(result)
    assert lab.check("add_rms_norm", fused, **FAST).passed

    def in_numpy(x, r, w, eps):   # a kernel that does nothing, the math in numpy (a student's cheat)
        import numpy as np
        JITFunction.run(lambda: None)
        s = x.numpy().astype(np.float32) + (r.numpy().astype(np.float32) if r is not None else 0)
        normed = s / np.sqrt((s ** 2).mean(-1, keepdims=True) + eps) * w.numpy()
        return torch.from_numpy(normed).to(x.dtype), torch.from_numpy(s).to(x.dtype)
    result = lab.check("add_rms_norm", in_numpy, **FAST)
    assert not result.passed and "out of torch outside the kernel" in "\n".join(result.messages), str(result)


def test_each_assignment_cell_is_its_exercise_docstring():
    """The masters' assignment cells and the exercise modules' docstrings are one text (a fix to one
    reaches the other), and the tiled exercise states the shapes its measure stage counts in."""
    import importlib
    import inspect

    from workbench.lab import online_softmax
    cells = [c.source for m in MASTERS for c in nbformat.read(m, 4).cells if c.cell_type == "markdown"]
    for module, _ in set(lab.MODULES.values()):
        doc = importlib.import_module(f"workbench.lab.{module}").__doc__
        assert doc in cells, f"{module}: its docstring is not a cell of a master notebook"
    shapes = {k: p.default for k, p in inspect.signature(online_softmax.measure).parameters.items() if k != "fn"}
    said = " ".join(online_softmax.__doc__.split())
    for words in (f"tile {shapes['tile']}, {shapes['heads']} heads, head_dim {shapes['dim']}",
                  f"Lq = Lk = {shapes['n']}", f"Lq = {shapes['few']} queries over Lk = {4 * shapes['n']}"):
        assert words in said, words


# the master's Triton solution, one edit each: (old, new, words in the message); run under the interpreter
TRITON_WRONG = [
    # (which message comes depends on what memory the unwritten columns of new_residual held: both name BLOCK's rule)
    ("BLOCK=triton.next_power_of_2(x.shape[-1])", "BLOCK=128", "BLOCK = triton.next_power_of_2(N), not a fixed size"),
    ("_kernel[(x.shape[0],)]", "_kernel[(min(x.shape[0], 8),)]", "rows 8..9 of 10 are wrong"),
    (".to(tl.float32)", "", "overflows: load with .to(tl.float32)"),
    ("    x = x.contiguous()\n", "    if residual is None:\n        return reference(x, None, weight, eps)\n"
     "    x = x.contiguous()\n", "launches for one call with residual=None")]


def test_the_fused_kernel_check_fails_a_fixed_block_or_grid_float16_math_and_a_torch_half():
    """The master's kernel passes alone; with a fixed BLOCK=128, a grid of at most 8 programs, no
    float32 upcast, or torch when residual is None, it fails with the cause named (seen passing all
    four, score 1.00, when the cases were float32 only, N <= 128, T <= 6, and one launch was counted
    only with a residual)."""
    import json
    import os
    import subprocess
    src = next(s for s in solution_cells(nbformat.read(LABS_DIR_MASTER("lab04"), 4)) if "triton" in s)
    variants = [src] + [src.replace(old, new) for old, new, _ in TRITON_WRONG]
    assert all(v != src for v in variants[1:])
    script = ("import json, sys, torch\nfrom workbench import lab\nfrom workbench.lab.add_rms_norm import reference\n"
              "out = []\nfor src in json.loads(sys.stdin.read()):\n    ns = {'torch': torch, 'reference': reference}\n"
              "    exec(src, ns)\n    r = lab.check('add_rms_norm', ns['add_rms_norm'], engine=False)\n"
              "    out.append([r.passed, str(r)])\nprint(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", script], input=json.dumps(variants), capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO)), check=True)
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert results[0][0], results[0][1]
    for (passed, text), (_, _, words) in zip(results[1:], TRITON_WRONG):
        assert not passed and words in text, text


def LABS_DIR_MASTER(prefix):
    return next(m for m in MASTERS if m.stem.startswith(prefix))
