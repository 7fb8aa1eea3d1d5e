"""The bottleneck map (workbench.measure.bottleneck) from a real run of the tiny engine on CPU."""
import pytest

from workbench import LLM, Optimizations
from workbench.measure.bottleneck import Ceilings, measure_ceilings, measure_points, verdicts
from workbench.model import ModelConfig


def test_ceilings_are_measured_and_meet_at_the_balance():
    c = measure_ceilings("cpu", repeats=2)
    assert c.bandwidth > 1e8 and c.peak_flops > 1e8   # any real CPU moves > 100 MB/s, > 0.1 GFLOP/s
    assert c.balance == pytest.approx(c.peak_flops / c.bandwidth)
    assert c.how.startswith("measured")


def test_prefill_sits_right_of_decode_and_verdicts_follow_the_numbers(tiny_ckpt):
    shape = ModelConfig.from_hf(tiny_ckpt)
    with LLM(tiny_ckpt, opts=Optimizations(attention="sdpa"), max_num_batched_tokens=512, max_num_seqs=4,
             enable_prefix_caching=False, max_model_len=128) as llm:
        points = measure_points(llm, label="sdpa", batches=(1, 4), prompt_len=32, decode_tokens=4)
        # the older call, shape and dtype_bytes passed, models the same steps when they are the engine's
        given = measure_points(llm, shape, "x", batches=(1,), prompt_len=4, decode_tokens=2, dtype_bytes=4)
        read = measure_points(llm, label="x", batches=(1,), prompt_len=4, decode_tokens=2)
        assert [(p.flops, p.bytes) for p in given] == [(p.flops, p.bytes) for p in read]
        with pytest.raises(ValueError, match="dtype_bytes=2 but the engine runs torch.float32"):
            measure_points(llm, label="x", dtype_bytes=2)
        with pytest.raises(ValueError, match="not the engine's model"):
            measure_points(llm, ModelConfig.from_preset("qwen3-0.6b"), "x")
    assert [(p.phase, p.batch) for p in points] == [("prefill", 1), ("decode", 1), ("prefill", 4), ("decode", 4)]
    by = {(p.phase, p.batch): p for p in points}
    # one token per sequence vs 32: prefill's intensity is far higher; batching raises decode's
    assert by["prefill", 1].intensity > 10 * by["decode", 1].intensity
    assert by["decode", 4].intensity > 2 * by["decode", 1].intensity
    assert all(p.seconds > 0 and p.achieved_flops == pytest.approx(p.flops / p.seconds) for p in points)
    # a balance between the two phases puts decode on the memory side and prefill on the compute side
    ceilings = Ceilings("test", bandwidth=1e9, peak_flops=1e9 * by["decode", 4].intensity * 2, dtype="float32", how="x")
    lines = verdicts(ceilings, points)
    assert "memory-bound" in lines[1] and "compute-bound" in lines[0], lines
    ceilings.peak_flops = 1e9 * by["prefill", 4].intensity * 2   # a balance above every point: all memory-bound
    assert all("memory-bound" in line for line in verdicts(ceilings, points))
    # a roof far above what a point achieves: the line says the ceiling is not what sets its time
    far = Ceilings("test", bandwidth=1e3 * by["decode", 1].achieved_flops / by["decode", 1].intensity,
                   peak_flops=1e30, dtype="float32", how="x")
    assert "far under it" in verdicts(far, [by["decode", 1]])[0]
    near = Ceilings("test", bandwidth=2 * by["decode", 1].achieved_flops / by["decode", 1].intensity,
                    peak_flops=1e30, dtype="float32", how="x")   # at half its roof: no such remark
    assert "far under it" not in verdicts(near, [by["decode", 1]])[0]
