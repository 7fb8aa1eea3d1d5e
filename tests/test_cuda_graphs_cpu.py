"""The CUDA-graph bookkeeping that needs no GPU: which batch-size buckets get a graph, and the
padding a prefill graph (prefill_graphs) replays, run eagerly."""
import numpy as np
import pytest
import torch

from workbench.optimizations.cuda_graphs import decode_buckets
from workbench.optimizations.prefill_graphs import oversized, pad_prefill, prefill_buckets


def test_buckets_cover_every_batch_size():
    assert decode_buckets(1) == [1]
    assert decode_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    buckets = decode_buckets(256)
    assert buckets[:6] == [1, 2, 4, 8, 16, 32] and buckets[-1] == 256
    assert all(b - a == 16 for a, b in zip(buckets[5:], buckets[6:]))   # every 16 after 16
    for batch in range(1, 257):   # every batch pads up to a bucket no more than 15 rows larger
        assert next(b for b in buckets if b >= batch) - batch < 16


# prefill_graphs: the padding a prefill graph replays, checked eagerly on the CPU (no capture here)

def test_one_prefill_graph_by_default_that_fits_the_step_and_the_sequence():
    assert prefill_buckets(8192, 4096) == [512]   # one graph: two or more slowed decoding (module docstring)
    assert prefill_buckets(100, 4096) == [100]
    assert prefill_buckets(8192, 40) == [40]
    assert prefill_buckets(8192, 4096, (512, 16, 128, 16)) == [16, 128, 512]   # asked for: sorted, once each
    assert oversized([16, 128, 512], 8192, 100) == [128, 512] and oversized([512], 8192, 4096) == []


def _run(runner, step, last_row):
    ids, pos, meta = step.to_device(runner.device)
    return runner.model.compute_logits(runner.forward(ids, pos, meta)[last_row:last_row + 1])


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_a_padded_prefill_step_is_the_unpadded_one(tiny_ckpt, attention):
    """A prompt's second chunk (its first 150 tokens already in the cache) run padded to its bucket
    (a dummy second sequence, as the graph replays it) and unpadded: the same last-token logits
    and the same KV cache afterwards (the same slots written: the padding writes none; their
    values to rounding, since a matmul of 16 rows may round a row unlike one of 5); also a
    5-token prompt alone."""
    from workbench import LLM, Optimizations
    from workbench.engine.step_inputs import pack_step
    with LLM(tiny_ckpt, opts=Optimizations(attention=attention), max_num_seqs=1) as llm:
        runner = llm.runner
        tokens = np.random.default_rng(0).integers(1, llm.model_config.vocab_size, 200)
        bs = runner.block_size
        table = list(range(3, 3 + -(-200 // bs)))   # not block 0: the dummy reads that one
        with torch.inference_mode():
            _run(runner, pack_step([(tokens, table, 0, 150)], bs), 149)   # the first chunk, into the cache
            cases = [(pack_step([(tokens, table, 150, 200)], bs), 64),
                     (pack_step([(tokens[:5], [7], 0, 5)], bs), 16)]
            for step, bucket in cases:
                t = len(step.input_ids)
                before = runner.kv_cache.clone()
                want = _run(runner, step, t - 1)
                want_cache = runner.kv_cache.clone()
                runner.kv_cache.copy_(before)
                padded = pad_prefill(step, bucket, runner.max_blocks_per_seq, runner.max_model_len)
                assert len(padded.input_ids) == bucket and padded.slot_mapping[t:].tolist() == [-1] * (bucket - t)
                got = _run(runner, padded, t - 1)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                written = lambda cache: (cache != before).flatten(end_dim=-3).any(-1).any(-1)   # noqa: E731
                assert torch.equal(written(runner.kv_cache), written(want_cache)), "the padding must write no slot"
                torch.testing.assert_close(runner.kv_cache, want_cache, rtol=1e-5, atol=1e-5)


def test_prefill_graphs_without_cuda_graphs_is_refused(tiny_ckpt):
    from workbench import LLM, Optimizations
    with pytest.raises(ValueError, match="prefill_graphs=True .* cuda_graphs is off"):
        LLM(tiny_ckpt, opts=Optimizations(), prefill_graphs=True)


def test_prefill_graph_sizes_that_do_not_fit_or_size_nothing_are_refused(tiny_ckpt):
    from workbench import LLM
    with pytest.raises(ValueError, match=r"a graph of 16 tokens .*\(max_num_batched_tokens=8"):
        LLM(tiny_ckpt, prefill_graphs=True, max_num_batched_tokens=8, prefill_graph_sizes=(16,))
    with pytest.raises(ValueError, match="prefill_graph_sizes=.* prefill_graphs is off"):
        LLM(tiny_ckpt, prefill_graph_sizes=(16, 512))   # a CPU: no graphs to size
    for bad in ((), (0,), [16], (16.0,)):
        with pytest.raises(ValueError, match="prefill_graph_sizes=.* must be a tuple of token counts"):
            LLM(tiny_ckpt, prefill_graph_sizes=bad)


def test_the_defaults_resolve_to_what_runs_here(tiny_ckpt):
    """prefill_graphs and fused_sampling default to None, "on where it runs": on a CPU (no graphs,
    no GPU for the sampler's kernel) both resolve to off, not to an error."""
    from workbench import LLM
    with LLM(tiny_ckpt) as llm:
        assert llm.config.prefill_graphs is False and llm.config.fused_sampling is False
