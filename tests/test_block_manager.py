"""Property tests: any order of allocate / append / free never leaks or double-frees a block."""
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.engine.block_manager import BlockManager
from workbench.engine.sampling_params import SamplingParams
from workbench.engine.sequence import Sequence

BLOCK = 4
NUM_BLOCKS = 24


def check_invariants(bm: BlockManager, live: dict[int, Sequence]) -> None:
    refs = [0] * bm.num_blocks
    for seq in live.values():
        assert len(set(seq.block_table)) == len(seq.block_table), "a sequence holds a block twice"
        assert len(seq.block_table) * BLOCK >= seq.num_computed_tokens
        for b in seq.block_table:
            refs[b] += 1
    for block in bm.blocks:
        assert block.ref_count == refs[block.id], f"block {block.id}: ref_count {block.ref_count} != {refs[block.id]}"
        assert (block.ref_count == 0) == (block.id in bm.free_blocks), f"block {block.id} free-list mismatch"
    for h, b in bm.hash_to_block.items():
        assert bm.blocks[b].hash == h


ops = st.lists(st.tuples(st.sampled_from(["add", "grow", "free"]), st.integers(0, 10**6)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(ops=ops, caching=st.booleans())
def test_random_operations_keep_accounting_exact(ops, caching):
    bm = BlockManager(NUM_BLOCKS, BLOCK, enable_prefix_caching=caching)
    live: dict[int, Sequence] = {}
    next_id = 0
    for op, r in ops:
        if op == "add":
            # few distinct prompts, so prefixes repeat and the cache gets hits
            prompt = [1 + (r % 3)] * (1 + r % 13) + [r % 5] * (r % 7)
            seq = Sequence(next_id, prompt, SamplingParams())
            next_id += 1
            hits = bm.lookup_prefix(seq)
            n = len(seq) - len(hits) * BLOCK
            if bm.allocate(seq, n, hits):
                seq.num_computed_tokens = len(seq)
                bm.commit_computed(seq)
                live[seq.request_id] = seq
            else:
                assert seq.block_table == [] and seq.num_computed_tokens == 0   # failure changes nothing
        elif op == "grow" and live:
            seq = live[sorted(live)[r % len(live)]]
            seq.token_ids.append(r % 5)   # a decode step: one more token
            if bm.allocate(seq, 1):
                seq.num_computed_tokens += 1
                bm.commit_computed(seq)
        elif op == "free" and live:
            bm.free(live.pop(sorted(live)[r % len(live)]))
        check_invariants(bm, live)
    for seq in list(live.values()):
        bm.free(seq)
    check_invariants(bm, {})
    assert bm.num_free_blocks == NUM_BLOCKS


def test_prefix_hit_reuses_blocks_and_counts_tokens():
    bm = BlockManager(NUM_BLOCKS, BLOCK)
    a = Sequence(0, list(range(10)), SamplingParams())
    assert bm.allocate(a, 10)
    a.num_computed_tokens = 10
    bm.commit_computed(a)
    b = Sequence(1, list(range(9)) + [99], SamplingParams())
    hits = bm.lookup_prefix(b)
    assert hits == a.block_table[:2]            # two full blocks of 4 shared; the third differs
    assert bm.allocate(b, len(b) - 8, hits)
    assert b.num_computed_tokens == 8 and bm.prefix_hit_tokens == 8
    assert bm.blocks[hits[0]].ref_count == 2


def test_freed_blocks_stay_cached_until_reused():
    bm = BlockManager(NUM_BLOCKS, BLOCK)
    a = Sequence(0, list(range(9)), SamplingParams())
    bm.allocate(a, 9)
    a.num_computed_tokens = 9
    bm.commit_computed(a)
    bm.free(a)
    b = Sequence(1, list(range(9)), SamplingParams())
    assert len(bm.lookup_prefix(b)) == 2        # still there after the owner finished
