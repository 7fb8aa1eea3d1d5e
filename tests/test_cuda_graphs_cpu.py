"""The CUDA-graph bookkeeping that needs no GPU: which batch-size buckets get a graph."""
from workbench.optimizations.cuda_graphs import decode_buckets


def test_buckets_cover_every_batch_size():
    assert decode_buckets(1) == [1]
    assert decode_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    buckets = decode_buckets(256)
    assert buckets[:6] == [1, 2, 4, 8, 16, 32] and buckets[-1] == 256
    assert all(b - a == 16 for a, b in zip(buckets[5:], buckets[6:]))   # every 16 after 16
    for batch in range(1, 257):   # every batch pads up to a bucket no more than 15 rows larger
        assert next(b for b in buckets if b >= batch) - batch < 16
