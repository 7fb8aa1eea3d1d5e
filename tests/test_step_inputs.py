"""Packing a step on the host: every sequence's new tokens end to end, with their cache slots."""
import numpy as np
import torch

from workbench.engine.step_inputs import pack_step

BLOCK = 4


def test_prefill_chunks_are_packed_end_to_end_with_their_slots():
    # seq A: 6 tokens, 2 cached, 4 new; seq B: 3 tokens, none cached (a fresh prompt)
    items = [([10, 11, 12, 13, 14, 15], [7, 2], 2, 6), ([20, 21, 22], [5], 0, 3)]
    step = pack_step(items, BLOCK)
    assert not step.is_decode
    assert step.input_ids.tolist() == [12, 13, 14, 15, 20, 21, 22]
    assert step.positions.tolist() == [2, 3, 4, 5, 0, 1, 2]
    # position p of a sequence lives in block table[p // 4], offset p % 4
    assert step.slot_mapping.tolist() == [7 * 4 + 2, 7 * 4 + 3, 2 * 4 + 0, 2 * 4 + 1, 5 * 4 + 0, 5 * 4 + 1, 5 * 4 + 2]
    assert step.cu_seqlens_q.tolist() == [0, 4, 7]
    assert step.seq_lens.tolist() == [6, 3]
    assert step.block_tables.tolist() == [[7, 2], [5, 0]]   # padded with block 0 to one width
    assert (step.max_seqlen_q, step.max_seqlen_k) == (4, 6)


def test_decode_step_takes_one_token_per_sequence():
    items = [([1, 2, 3, 4, 5], [3, 9], 4, 5), ([6, 7], [1], 1, 2)]
    step = pack_step(items, BLOCK)
    assert step.is_decode and step.num_seqs == 2
    assert step.input_ids.tolist() == [5, 7]
    assert step.positions.tolist() == [4, 1]
    assert step.slot_mapping.tolist() == [9 * 4 + 0, 1 * 4 + 1]
    assert step.input_ids.dtype == np.int64 and step.seq_lens.dtype == np.int32


def test_to_device_keeps_values_and_dtypes():
    step = pack_step([([1, 2, 3], [0], 0, 3)], BLOCK)
    ids, positions, meta = step.to_device(torch.device("cpu"))
    assert ids.tolist() == [1, 2, 3] and positions.tolist() == [0, 1, 2]
    assert meta.cu_seqlens_q.dtype == torch.int32 and meta.slot_mapping.dtype == torch.int64
    assert meta.num_seqs == 1 and meta.max_seqlen_k == 3 and not meta.is_decode


def test_next_decode_step_moves_every_sequence_one_token_on():
    from workbench.engine.step_inputs import next_decode_step
    # seq A: 4 tokens, its next position 4 opens its second block (9); seq B at position 1
    step = pack_step([([1, 2, 3, 4], [3, 9], 3, 4), ([6, 7], [1], 1, 2)], BLOCK)
    after = next_decode_step(step, BLOCK)
    assert after.is_decode and after.positions.tolist() == [4, 2]
    assert after.slot_mapping.tolist() == [9 * 4 + 0, 1 * 4 + 2]
    assert after.seq_lens.tolist() == [5, 3] and after.max_seqlen_k == 5
    assert (after.input_ids == -1).all()   # the previous step's samples: only the GPU has them


def test_decode_step_at_is_the_packed_decode_step_without_its_tokens():
    """async_rounds packs a decode step whose tokens are still on the GPU: everything but the
    input ids (-1 placeholders) is what pack_step makes for the same positions."""
    from workbench.engine.step_inputs import decode_step_at
    items = [([1, 2, 3, 4, 5, 6, 7, 8, 9], [3, 9, 4], 8, 9), ([6, 7], [1], 1, 2), ([1, 2, 3, 4], [2], 3, 4)]
    want = pack_step(items, BLOCK)
    got = decode_step_at([table for _, table, _, _ in items], [start for _, _, start, _ in items], BLOCK)
    assert got.input_ids.tolist() == [-1, -1, -1]
    for field in ("positions", "slot_mapping", "cu_seqlens_q", "seq_lens", "block_tables"):
        assert getattr(got, field).tolist() == getattr(want, field).tolist(), field
        assert getattr(got, field).dtype == getattr(want, field).dtype, field
    assert (got.max_seqlen_q, got.max_seqlen_k, got.is_decode) == (want.max_seqlen_q, want.max_seqlen_k, True)
