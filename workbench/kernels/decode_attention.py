"""Decode attention over the paged KV cache: one query token per sequence (FlashDecoding's idea).

Why a kernel of its own. In a decode step each sequence brings one query token, and attention
reads every cached key and value of that sequence once: 4 FLOPs per K/V value, so the time is the
K/V bytes over the bandwidth. At Qwen3-0.6B's shape (8 KV heads x 128 dims, bf16) a context of N
tokens is N x 4 KB of K and V per layer: 640 tokens, 2.6 MB, ~0.65 us at 4 TB/s. A kernel built
for prefill (flash-attn's, tiled over blocks of 64-128 query rows) runs its machinery for a
query tile with one row in it: measured ~6.6 us per layer call on an H200.

Choice 1, GQA: one program per (sequence, KV head), not per query head. Qwen3 has 2 query heads
per KV head; the program loads both (padded to 16 rows, the smallest `tl.dot`) and reads its K/V
once for the group. The padded rows cost tensor-core time, which decode has to spare.

Choice 2, split-KV (FlashDecoding, Dao et al. 2023). At batch 1 there are only 8 (sequence, KV
head) pairs: 8 programs on a GPU of 132 SMs, each walking its whole context alone. So each pair's
keys are dealt out to S programs, each running its own online softmax over its share and
writing an unnormalized partial output `o` with its running max `m` and sum `l` (fp32). A second,
tiny kernel merges the splits with the same rescaling the online softmax does inside a program:
    out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s,    M = max_s m_s.
With S = 1 (enough sequences fill the GPU) the one kernel normalizes and writes the
output itself: no partials, no second launch.

Choice 3, CUDA-graph capturable. The grid depends only on quantities fixed for a captured graph:
the batch, the KV heads, and S (from the block table's width and the SM count,
`num_splits`). The lengths are read on the device: each program cuts its sequence's key tiles
into S even shares and takes its own, so a short context gives each program one tile
(and leaves some with none), a long one several -- no host sync, no re-capture. Every program
writes its partial, an empty one m = -inf, l = 0, o = 0, which the merge weighs by e^-inf = 0.
S is a run-time argument, not a compile-time constant: eager decode steps (no graphs) change the
table's width, hence S, every few steps, and each new constant would JIT-compile a new kernel.

Choice 4, measured and not taken: the merge without its own launch (`merge="last_program"`).
Each kernel boundary costs a launch, a ramp-up and a first dependent load, more than the merge's
few KB of bytes. So the split programs merge themselves, as split-K GEMMs do: each writes its
partial, then adds 1 to its (sequence, KV head) counter with an atomic that releases those writes
(acq_rel); the program that sees the count reach S - 1 is the last of its group, so every partial
is written: it merges them (the same code as the merge kernel), writes the output and resets the
counter to 0 for the next call. One launch a layer fewer -- and on an H200 inside the engine (all
on, PDL) the step's GPU time rose 723 -> 762 us: the merge kernel's launch was hidden under PDL,
while the last program's atomic round trip and its serial merge sit on the critical path. Kept,
off, as the lesson that one launch fewer is not always faster (docs/perf-notes.md, session 9).

Choice 5: K and V before the PDL wait (`prefetch_kv`, on by default since an H200 run inside the
engine measured the step's GPU time 723 -> 707 us; it changes anything only under PDL). Under PDL
(kernels/pdl.py) a kernel may start while the one before it still runs, and must wait before
reading anything that kernel writes. The kernel before decode attention writes q and the newest
token's K and V; every other cached key was complete before it started, and the lengths and
block tables are the step's inputs. So each program reads its length, its first tile's block id
and that tile's K and V *before* the wait -- unless the tile holds the newest key -- and only q
after it. At short contexts a program has one tile: its whole read overlaps the kernel before.
Measured and not taken (session 22, docs/results/decode-ab-dattn-last-tile-early-h200.json; the code
is in git history, commit a76818d): the newest key's tile before the wait too, all but the newest
key, whose K and V rows alone were read after it. The split kernel added ~0.2 us a layer less, and
the step's GPU time did not move: the merge still waited as long.

Choice 6, measured and not taken (off): the layer's next weights into L2 (`prefetch`). At short
contexts most split programs find no key tile, and the whole kernel reads little: HBM idles while
attention's dependent loads wait. With `prefetch` (a weight, e.g. the layer's gate_up_proj) every
program asks L2 for its share of that weight's lines before its PDL wait (gemv.py's
`_prefetch_l2`: fire and forget, no value changes), so the GEMV that reads it finds it in L2.
Session 17 asked the same of a prefetch kernel on a side stream and the split kernel grew; here no
stream is forked and no kernel added (`l2_prefetch.install_attention`). On an H200 (session 20,
docs/results/decode-ab-dattn-prefetch-h200.json) the step got slower all the same: the split
kernel grew ~1.9 us a layer, gate_up shrank ~0.6. So it was not the fork: 12.6 MB of prefetch
traffic lengthens the split's own dependent loads, and gate_up, its weights in L2, stays ~5.5 us
-- its time is not its bytes (docs/perf-notes.md, session 20).

Choice 7, measured and not taken (`merge="tagged"`; session 24 on an H200: 0.71x tok/s, and 0.95x
polling the m and l words first -- the merge shortened, o_proj lengthened, docs/perf-notes.md): the merge
without the PDL wait. Under PDL the merge kernel starts while the split kernel runs, but its wait
returns only when every split program of every head has finished and the grid has ended; a merge
program needs only its own head's S partials. Here each split program stores its partials as
tagged words (kernels/tagged.py: value and tag in one 64-bit store) and each merge program polls
its head's words, then lets o_proj's kernel in. The tag: one more than the merge program's own count
of calls (`epochs`, one int32 per (sequence, query head), on the device), which the merge program
moves on once it has merged, or given up. Why both sides read the same count:
  - the merge reads its own count, written by itself one call (six or more launches) before;
  - the split reads it before its PDL wait, i.e. before it lets the merge in: the call before's
    merge had finished by then (o_proj, the kernel after it, waits for it; every later kernel waits
    in turn), and this call's merge has not started.
Why it cannot hang: the merge is launched only once every split program has reached its trigger
(after its own wait), so every program a merge program polls is already running. (Session 22's
first kernel-to-kernel tagged probe let each kernel in first thing, with no bound on its polls,
and never finished, for a reason not yet known: see docs/perf-notes.md.) The words and counts live in buffers of their own
(`tagged_buffers`, kept across calls like the last-program merge's counters), so nothing else
ever writes a word there. The merge's math is the same code on the same values (`_combine`): bit
for bit the two-kernel merge's under the interpreter; on a GPU its 8 warps may sum in another order
(to rounding). A merge program that gives up waiting (MAX_POLLS reads) writes NaN, which turns
every logit to NaN: the tokens go wrong in a way any parity check catches, never plausible tokens
made from the call before's partials; and a split's word that lands after it carries a tag the
next call does not expect.
What to expect: session 22's probe measured a wait on one head's writers through tagged words at
0.75-0.79 us a step against 1.11 for a PDL boundary -- in one persistent kernel, each program polling
~1 KB. Here the wait is between two kernels, which that probe has not yet timed, and each merge
program polls all of its head's partials: at 33 splits, ~34 KB of words. The A/B decides; its
other form (`m_l_first`) polls the 8 bytes of m and l a split until they are in, then reads the
partials' words: far fewer bytes while it waits, one round trip more once they land.

Choice 8, measured and not taken (`o_proj_weight=`; session 24 on an H200: +13 to +19 us of GPU
time a step, 0.99x tok/s; in fixed point 0.95x -- docs/perf-notes.md): o_proj inside
the merge. After the merge comes o_proj's GEMV, which needs every head's output: a boundary on which
all of the layer's attention waits, then a kernel whose weights (4 MB at Qwen3-0.6B's shape) it
can read early only once the merge lets it in. Here the merge's programs do it themselves, split-K
over the heads: program (sequence, head, chunk) reads its [128 rows x head_dim] slice of W_o
before its wait (no kernel writes weights), merges its head after it, multiplies, and adds its
128 partial outputs into an fp32 sum with relaxed atomic adds -- one kernel and one boundary fewer
a layer, each head merged eight times over (by its eight row chunks; the partials come from L2).
Two things make it fit: the sum starts at 0 because the split kernel zeroes it (after its wait:
gate_up's GEMV of the layer before, the last to read the buffer, had finished by then), and it is
handed on in fp32, since no program knows when the sum is complete -- gate_up's folded norm
rounds it to bf16 as it loads it (kernels/gemv.py, `_residual_sum`), where o_proj's GEMV would
have rounded its output. So the result equals the unfolded chain's up to the order of the fp32
additions -- and that order is whichever program's add lands first: from run to run the sum can
differ in its last bits, its bf16 rounding by one unit, and a near-tie token with it, where the
rest of the decode path is deterministic (no atomics anywhere else on it). `o_proj_fixed_point`
removes that price: each program adds its partials as int64 fixed point (kernels/fixed_point.py),
whose sum is the same in any order, and gate_up's norm turns it back to fp32 as it loads it -- 8
bytes a value instead of 4, and a term off by < 4e-9. (Session 9's last-program merge put an
atomic round trip on the chain and lost; here the adds are fire-and-forget -- the kernel after
waits for this one to end, as always.) At batch > 1 every sequence's programs read their W_o tiles
again (2,048 programs at 16), a cost no run has measured yet.

Measured and not taken either (docs/perf-notes.md, session 9; the code is in git history,
commit 36f5ffc): this kernel doing q/k norm + RoPE + the newest key's cache write itself, in
place of the kernel before it. 28 launches fewer a step, and +57 us: every program's work after
the wait grew, and under PDL the boundary it removed had cost little.

Keys through the block table: key j of sequence b is row j % block_size of cache block
block_tables[b, j // block_size]. With blocks of BLOCK_N keys or more (the engine's 128) a tile
of BLOCK_N keys lies in one block: one id a tile, one 64-bit block offset plus 32-bit offsets
inside the block. With smaller blocks (16, say) a tile spans blocks: an id per key row. The first
form needs fewer registers (scripts/kernel_resources.py, sm_90a: 94 -> 72 a thread at the 0.6B shape).

Numerics: scores, softmax and accumulators in fp32; the probabilities are cast to the cache's
dtype for the P @ V product (as flash-attn does); the output is in q's dtype.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import pdl
from .pdl import pdl_trigger, pdl_wait   # by name, not pdl.wait: torch.compile copies a traced kernel's helpers by name
from . import fixed_point
from .fixed_point import to_fixed
from .gemv import _prefetch_l2, prefetch_args
from .tagged import poll_tagged, store_tagged

BLOCK_N = 64         # keys per loop step: 64 x 128 bf16 = 16 KB of K and 16 KB of V per head
MIN_GROUP_ROWS = 16  # tl.dot's smallest M: a GQA group of 2 query heads is padded to 16 rows
# Triton's CPU interpreter (3.9) returns garbage for a bf16 tl.dot (gemv.py says the same): under
# it the operands go to fp32. float32 caches use exact fp32 dots (not tf32) on the GPU too.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


MERGES = ("kernel", "last_program", "tagged")   # paged_decode_attention's `merge`: Choices 2, 4 and 7
MAX_POLLS = 1 << 16   # merge="tagged": reads of its words before a merge program gives up (a step needs a few)
# merge="tagged": a merge program holds its head's S x D words as int64 (twice the plain merge's
# fp32): with 4 warps that spilled at 33 splits (255 registers, sm_90a); 8 warps: 143, no spills
TAGGED_MERGE_WARPS = 8
# Choice 8: o_proj's output rows a merge program makes (its W_o tile: ROWS x head_dim, 32 KB in bf16
# at 128 x 128, read before its wait), and its warps
O_PROJ_ROWS = 128
O_PROJ_WARPS = 8

# merge="last_program"'s counters, one int32 per (sequence, KV head), kept across calls: each
# call's last program puts its counter back to 0, so a buffer is zeroed once, when first made,
# and never again (a memset per call would be the launch we are saving). Module-level, keyed by
# device and size: every call of one shape (all layers, eager steps, graph replays) uses the same
# buffer at the same address, which a captured graph bakes in. It is normally made by an eager
# call before any capture (the runner and torch.cuda.graph users warm up first); made inside a
# capture, its zeroing is recorded into the graph (each replay re-zeroes it: harmless) and the
# block stays allocated because this dict holds it. Two calls of one shape must not run at once
# on two streams: they would share counters.
_COUNTERS: dict[tuple[str, int], torch.Tensor] = {}


def merge_counters(device: torch.device, batch: int, kv_heads: int) -> torch.Tensor:
    """The counters merge="last_program" uses for this shape on this device (all 0 between calls)."""
    key = (str(device), batch * kv_heads)
    if key not in _COUNTERS:
        _COUNTERS[key] = torch.zeros(batch * kv_heads, dtype=torch.int32, device=device)
    return _COUNTERS[key]


# merge="tagged"'s buffers, kept across calls for the same reason as the counters above (and with
# the same caveats): the words are written by nothing else, and each (sequence, query head)'s
# count of merged calls must survive from one call to the next. Keyed by everything that sizes them.
_TAGGED: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def tagged_buffers(device: torch.device, batch: int, num_heads: int, splits: int,
                   head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(partials' words [B*Hq*S, D], their m and l words [B*Hq*S, 2], counts of merged calls [B*Hq])
    for merge="tagged": int64 words (kernels/tagged.py) and int32 counts, all 0 when made."""
    key = (str(device), batch, num_heads, splits, head_dim)
    if key not in _TAGGED:
        slots = batch * num_heads * splits
        _TAGGED[key] = (torch.zeros(slots, head_dim, dtype=torch.int64, device=device),
                        torch.zeros(slots, 2, dtype=torch.int64, device=device),
                        torch.zeros(batch * num_heads, dtype=torch.int32, device=device))
    return _TAGGED[key]


def num_splits(batch: int, kv_heads: int, table_width: int, block_size: int, num_sms: int,
               block_n: int = BLOCK_N) -> int:
    """Splits per (sequence, KV head): ~2 programs per SM, never more than the widest possible
    sequence (table_width blocks) has key tiles. Static: graph-safe."""
    want = triton.cdiv(2 * num_sms, batch * kv_heads)
    return max(1, min(want, triton.cdiv(table_width * block_size, block_n)))


@triton.jit
def _dot(a, b, FP32: tl.constexpr):
    if FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _share(lens_ptr, seq, split, num_splits, BLOCK_N: tl.constexpr):
    """(length, first tile, end tile, tiles): this program's share of its sequence's key tiles,
    from the length on the device."""
    seq_len = tl.load(lens_ptr + seq)
    num_tiles = tl.cdiv(seq_len, BLOCK_N)
    per_split = tl.cdiv(num_tiles, num_splits)
    first = split * per_split
    return seq_len, first, tl.minimum(first + per_split, num_tiles), num_tiles


@triton.jit
def _load_kv(k_ptr, v_ptr, tables_ptr, seq, kv_head, tile, seq_len, dims, wanted,
             stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_table,
             HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    """K and V of key tile `tile` ([BLOCK_N, BLOCK_D] each; 0 past the length). MASKED (the
    prefetch): nothing where not `wanted` -- a masked-off load reads no memory -- and the block id
    masked too (a program with no tile asks for one past the table's end); the loop's loads
    are never masked off whole (a mask there cost 8-13 registers)."""
    keys = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    if MASKED:
        limit = tl.where(wanted, seq_len, 0)   # not wanted: no key is valid
    else:
        limit = seq_len
    valid = keys < limit
    kv_mask = valid[:, None] & (dims[None, :] < HEAD_DIM)
    # Key j is row j % BLOCK_SIZE of block block_tables[seq, j // BLOCK_SIZE]. The block's offset
    # (id x stride_kb) is 64-bit, as a cache may pass 2^31 elements; the offset inside it is 32-bit.
    if BLOCK_SIZE % BLOCK_N == 0:   # the tile lies in one block (128-key blocks): one id a tile
        # (masked: a program with no tile, or whose first tile is the newest, asks for a tile
        # past the table's end when it prefetches)
        if MASKED:
            block = tl.load(tables_ptr + seq * stride_table + tile * BLOCK_N // BLOCK_SIZE,
                            mask=tile * BLOCK_N < limit, other=0).to(tl.int64)
        else:
            block = tl.load(tables_ptr + seq * stride_table + tile * BLOCK_N // BLOCK_SIZE).to(tl.int64)
        row = tile * BLOCK_N % BLOCK_SIZE + tl.arange(0, BLOCK_N)
    else:                           # smaller blocks: one id per key row, a [BLOCK_N, 1] column
        block = tl.load(tables_ptr + seq * stride_table + keys // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        block = block[:, None]
        row = keys % BLOCK_SIZE
    k = tl.load(k_ptr + block * stride_kb + (row[:, None] * stride_kt + kv_head * stride_kh + dims[None, :]),
                mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + block * stride_vb + (row[:, None] * stride_vt + kv_head * stride_vh + dims[None, :]),
                mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def _attend(q, k, v, valid, m, l, acc, scale, DOT_FP32: tl.constexpr):
    """One key tile of the online softmax: the new (running max, running sum, accumulator)."""
    s = _dot(q, tl.trans(k), DOT_FP32) * scale      # [BLOCK_H, BLOCK_N]
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))             # finite: every visited tile has a valid key
    alpha = tl.exp(m - m_new)                       # rescales what was summed under the old max
    p = tl.exp(s - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_FP32)
    return m_new, l, acc


@triton.jit
def _attention_split_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, part_ptr, m_ptr, l_ptr, count_ptr,
                  scale, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                  stride_table, stride_ot, stride_oh, num_splits,
                  NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_SIZE: tl.constexpr, SPLIT: tl.constexpr, LAST_MERGES: tl.constexpr, DOT_FP32: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                  USE_PDL: tl.constexpr, PREFETCH_KV: tl.constexpr,
                  next_ptr=None, next_bytes=0, PREFETCH_LINES: tl.constexpr = 0,   # Choice 6 only
                  epochs_ptr=None, TAGGED: tl.constexpr = False, INTERPRET: tl.constexpr = False,   # Choice 7 only
                  zero_ptr=None, zero_n=0, zero_chunk=0, ZERO_BLOCK: tl.constexpr = 0):   # Choice 8 only
    seq, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    dims = tl.arange(0, BLOCK_D)
    if TAGGED:   # Choice 7: this call's tag, first thing -- before the wait, so before this program lets
        # the merge in: a merge that gave up and moved its count on can never make a slow split
        # program label this call's partials with the next call's tag. (Safe before the wait: the
        # count is written only by merges six or more launches back.) Volatile: from memory, not L1.
        group_rows = tl.arange(0, BLOCK_H)
        tag = tl.load(epochs_ptr + seq * NUM_HEADS + kv_head * GROUP + group_rows, mask=group_rows < GROUP,
                      other=0, volatile=True) + 1
    if PREFETCH_KV:   # (with USE_PDL only) Choice 5: the first tile's K and V before the wait
        # The lengths and tables are the step's inputs, written before the step's kernels run;
        # the kernel before this one writes q and the newest key's K/V (key seq_len - 1, in the
        # last tile): every other cached key was complete before it started.
        seq_len, first, last, num_tiles = _share(lens_ptr, seq, split, num_splits, BLOCK_N)
        early = (first < last) & (first < num_tiles - 1)
        k_early, v_early = _load_kv(k_ptr, v_ptr, tables_ptr, seq, kv_head, first, seq_len, dims, early,
                                    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_table,
                                    HEAD_DIM, BLOCK_SIZE, BLOCK_N, True)
        if PREFETCH_LINES > 0:   # Choice 6: after our own first tile is asked for, before the wait
            _prefetch_l2(next_ptr, next_bytes, PREFETCH_LINES)
        pdl_wait(USE_PDL)
    else:
        pdl_wait(USE_PDL)   # q, the lengths, the table and the cache are all written by kernels
        seq_len, first, last, num_tiles = _share(lens_ptr, seq, split, num_splits, BLOCK_N)

    rows = tl.arange(0, BLOCK_H)                    # the GQA group's query heads, padded
    heads = kv_head * GROUP + rows                  # query head h reads KV head h // GROUP
    hd_mask = (rows[:, None] < GROUP) & (dims[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + dims[None, :], mask=hd_mask, other=0.0)

    m = tl.full([BLOCK_H], float("-inf"), tl.float32)   # running max of the scores
    l = tl.zeros([BLOCK_H], tl.float32)                 # running sum of e^(score - m)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)      # running sum of e^(score - m) * v
    start = first
    if PREFETCH_KV:   # the prefetched tile first, then the loop over the others (held through the
        # loop and selected per tile instead, its K/V took 255 registers: scripts/kernel_resources.py)
        if early:
            valid = first * BLOCK_N + tl.arange(0, BLOCK_N) < seq_len
            m, l, acc = _attend(q, k_early, v_early, valid, m, l, acc, scale, DOT_FP32)
        start = first + early.to(tl.int32)
    for tile in range(start, last):
        valid = tile * BLOCK_N + tl.arange(0, BLOCK_N) < seq_len
        k, v = _load_kv(k_ptr, v_ptr, tables_ptr, seq, kv_head, tile, seq_len, dims, True,
                        stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_table,
                        HEAD_DIM, BLOCK_SIZE, BLOCK_N, False)
        m, l, acc = _attend(q, k, v, valid, m, l, acc, scale, DOT_FP32)

    if ZERO_BLOCK > 0:   # Choice 8: this layer's o_proj sum [batch, zero_n] zeroed before the merge adds to it
        if split == 0:   # after the wait, as every store: gate_up of the layer before, which read the
            # buffer last, finished before the kernel before this one did
            cols = kv_head * zero_chunk + tl.arange(0, ZERO_BLOCK)
            tl.store(zero_ptr + seq * zero_n + cols, tl.zeros([ZERO_BLOCK], zero_ptr.dtype.element_ty),
                     mask=(cols < zero_n) & (tl.arange(0, ZERO_BLOCK) < zero_chunk))
    if not SPLIT:   # the whole context was ours: normalize and write the output
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(out_ptr + seq * stride_ot + heads[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=hd_mask)
    elif TAGGED:    # Choice 7: the partials as tagged words (part_ptr: [batch, heads, split, D]; m_ptr: m and l)
        slot = (seq * NUM_HEADS + heads) * num_splits + split
        store_tagged(part_ptr + slot[:, None] * HEAD_DIM + dims[None, :], acc, tag[:, None], hd_mask, INTERPRET)
        pair = tl.arange(0, 2)
        m_l = tl.join(m, l)   # [BLOCK_H, 2]
        store_tagged(m_ptr + slot[:, None] * 2 + pair[None, :], m_l, tag[:, None],
                     (rows[:, None] < GROUP) & (pair[None, :] < 2), INTERPRET)
    else:           # partials [batch, heads, split, ...], fp32, for the merge
        slot = (seq * NUM_HEADS + heads) * num_splits + split
        tl.store(part_ptr + slot[:, None] * HEAD_DIM + dims[None, :], acc, mask=hd_mask)
        tl.store(m_ptr + slot, m, mask=rows < GROUP)
        tl.store(l_ptr + slot, l, mask=rows < GROUP)
        if LAST_MERGES:   # merge="last_program": the group's last program to get here merges
            # The pattern of CUTLASS's GenericBarrier: a barrier orders every thread's partial
            # stores before thread 0's atomic, whose release makes them visible GPU-wide; the
            # last program's acquire (same atomic) and a barrier order its loads after them all.
            tl.debug_barrier()
            count_ptr += seq * tl.num_programs(1) + kv_head
            done = tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu")   # how many got here before us
            if done == num_splits - 1:
                tl.debug_barrier()
                for g in tl.static_range(GROUP):
                    _merge_head(part_ptr, m_ptr, l_ptr, out_ptr, seq, kv_head * GROUP + g, stride_ot, stride_oh,
                                num_splits, NUM_HEADS, HEAD_DIM, BLOCK_S, BLOCK_D)
                tl.store(count_ptr, 0)   # every split has counted: nobody else touches it in this launch


@triton.jit
def _merge_head(part_ptr, m_ptr, l_ptr, out_ptr, seq, head, stride_ot, stride_oh, num_splits,
                NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """One query head's output from its splits' partials (both merge paths run this code)."""
    dims = tl.arange(0, BLOCK_D)
    out = _merged(part_ptr, m_ptr, l_ptr, seq, head, num_splits, NUM_HEADS, HEAD_DIM, BLOCK_S, BLOCK_D)
    tl.store(out_ptr + seq * stride_ot + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty),
             mask=dims < HEAD_DIM)


@triton.jit
def _merged(part_ptr, m_ptr, l_ptr, seq, head, num_splits, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
            BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """One query head's output [BLOCK_D] in fp32, from its splits' partials."""
    splits = tl.arange(0, BLOCK_S)                  # padded to a power of two: masked
    slot = (seq * NUM_HEADS + head) * num_splits + splits
    dims = tl.arange(0, BLOCK_D)
    m = tl.load(m_ptr + slot, mask=splits < num_splits, other=float("-inf"))
    l = tl.load(l_ptr + slot, mask=splits < num_splits, other=0.0)
    o = tl.load(part_ptr + slot[:, None] * HEAD_DIM + dims[None, :],
                mask=(splits[:, None] < num_splits) & (dims[None, :] < HEAD_DIM), other=0.0)
    return _combine(m, l, o)


@triton.jit
def _combine(m, l, o):
    """The splits' partials of one query head ([S] maxima and sums, [S, D] outputs) as its output."""
    weight = tl.exp(m - tl.max(m, 0))               # split 0 is never empty, so max(m) is finite
    return tl.sum(o * weight[:, None], 0) / tl.sum(l * weight, 0)


@triton.jit
def _attention_merge_kernel(part_ptr, m_ptr, l_ptr, out_ptr, stride_ot, stride_oh, num_splits,
                  NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                  USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    _merge_head(part_ptr, m_ptr, l_ptr, out_ptr, tl.program_id(0), tl.program_id(1), stride_ot, stride_oh,
                num_splits, NUM_HEADS, HEAD_DIM, BLOCK_S, BLOCK_D)


@triton.jit
def _attention_merge_o_proj_kernel(part_ptr, m_ptr, l_ptr, w_ptr, b_ptr, out_ptr, q_ptr, num_splits, hidden,
                                   NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
                                   BLOCK_D: tl.constexpr, ROWS: tl.constexpr, HAS_BIAS: tl.constexpr,
                                   FIXED: tl.constexpr, USE_PDL: tl.constexpr):
    """Choice 8: query head `head`'s merge, then its share of o_proj for `ROWS` output rows: those
    rows of W_o times the head's output, added into the sum out [batch, hidden] (zeroed by the
    split kernel): fp32, or with FIXED int64 fixed point (kernels/fixed_point.py: the same sum in
    any order). The weight tile first, before the wait: no kernel writes it."""
    seq, head, chunk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = chunk * ROWS + tl.arange(0, ROWS)
    dims = tl.arange(0, BLOCK_D)
    w = tl.load(w_ptr + rows[:, None].to(tl.int64) * (NUM_HEADS * HEAD_DIM) + head * HEAD_DIM + dims[None, :],
                mask=(rows[:, None] < hidden) & (dims[None, :] < HEAD_DIM), other=0.0)
    pdl_wait(USE_PDL)
    out = _merged(part_ptr, m_ptr, l_ptr, seq, head, num_splits, NUM_HEADS, HEAD_DIM, BLOCK_S, BLOCK_D)
    out = out.to(q_ptr.dtype.element_ty).to(tl.float32)   # rounded as the attention output is (q's dtype)
    y = tl.sum(w.to(tl.float32) * out[None, :], axis=1)   # [ROWS]: this head's part of those outputs
    if HAS_BIAS:
        y += tl.where(head == 0, tl.load(b_ptr + rows, mask=rows < hidden, other=0.0).to(tl.float32), 0.0)
    if FIXED:
        tl.atomic_add(out_ptr + seq * hidden + rows, to_fixed(y), mask=rows < hidden, sem="relaxed")
    else:
        tl.atomic_add(out_ptr + seq * hidden + rows, y, mask=rows < hidden, sem="relaxed")


@triton.jit
def _attention_merge_tagged_kernel(words_ptr, m_l_ptr, epochs_ptr, out_ptr, stride_ot, stride_oh, num_splits,
                                   NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
                                   BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr, MAX_POLLS: tl.constexpr,
                                   M_L_FIRST: tl.constexpr = False):
    """Choice 7: one query head's merge from its splits' tagged words, polled instead of waiting for
    the split kernel to finish; then the next kernel may start (PDL's trigger, where pdl_wait has it).
    M_L_FIRST: poll the m and l words alone until they are all in, then the partials' words (a
    round trip more once they land; far fewer bytes read while it waits)."""
    seq, head = tl.program_id(0), tl.program_id(1)
    # this call's tag: one more than the calls this program merged (volatile: from memory, not a
    # copy in L1 -- the count changes every layer, between kernels that never wait for each other)
    tag = tl.load(epochs_ptr + seq * NUM_HEADS + head, volatile=True) + 1
    splits = tl.arange(0, BLOCK_S)
    slot = (seq * NUM_HEADS + head) * num_splits + splits
    dims, pair = tl.arange(0, BLOCK_D), tl.arange(0, 2)
    used = splits < num_splits
    m_l_at, m_l_used = m_l_ptr + slot[:, None] * 2 + pair[None, :], used[:, None] & (pair[None, :] < 2)
    if M_L_FIRST:   # wait on the m and l words alone (8 bytes a split), then read the partials once
        poll_tagged(m_l_at, m_l_used, m_l_at, m_l_used & (pair[None, :] < 0), tag, MAX_POLLS)   # (b: no words)
    o, m_l, late, _ = poll_tagged(words_ptr + slot[:, None] * HEAD_DIM + dims[None, :],
                                  used[:, None] & (dims[None, :] < HEAD_DIM), m_l_at, m_l_used, tag, MAX_POLLS)
    o, m_l = o.to(tl.float32, bitcast=True), m_l.to(tl.float32, bitcast=True)   # the words held float32 bits
    pdl_trigger(USE_PDL)   # no pdl_wait: the words are what this kernel waits for (kernels/pdl.py)
    m, l = tl.split(m_l)
    m = tl.where(used, m, float("-inf"))            # a padding split weighs e^-inf = 0, as _merge_head's
    out = _combine(m, l, o)
    out = tl.where(late == 0, out, float("nan"))    # gave up waiting: say so (NaN), never a stale value
    tl.store(out_ptr + seq * stride_ot + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty),
             mask=dims < HEAD_DIM)
    tl.store(epochs_ptr + seq * NUM_HEADS + head, tag)   # merged: the next call's tag is one more


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float, *,
                           splits: int | None = None, block_n: int = BLOCK_N, merge: str = "kernel",
                           prefetch_kv: bool = True, prefetch: torch.Tensor | None = None,
                           m_l_first: bool = False, o_proj_weight: torch.Tensor | None = None,
                           o_proj_bias: torch.Tensor | None = None, o_proj_fixed_point: bool = False) -> torch.Tensor:
    """q [B, Hq, D] (one token per sequence, the newest) attends to the first seq_lens[b] >= 1 keys
    (a decoded token always sees itself; the merge relies on it) of its paged cache (k_cache/v_cache [blocks, block_size, Hkv, D], block_tables [B, width] int32).
    Returns [B, Hq, D] in q's dtype. splits: None = `num_splits`'s choice (a sweep may set it).
    merge: "kernel" (a second launch merges the splits), "last_program" (Choice 4, measured slower) or
    "tagged" (Choice 7, a candidate: the merge polls the splits' tagged words instead of waiting);
    m_l_first (with "tagged"): each merge program polls its splits' m and l words alone first.
    o_proj_weight [hidden, Hq * D] (and o_proj_bias): Choice 8, a candidate -- returns o_proj of the
    attention output instead, [B, hidden] in fp32 (a sum made by atomics: the folded norm after it
    rounds it to the residual's dtype, kernels/gemv.py), the merge's programs doing o_proj too;
    with o_proj_fixed_point, int64 fixed point instead (kernels/fixed_point.py), the same in every run.
    prefetch_kv: under PDL, each program's first tile before the wait (Choice 5).
    prefetch: a weight whose lines the programs ask L2 for before the wait (Choice 6; with
    prefetch_kv under PDL only, where there is a before)."""
    if merge not in MERGES:
        raise ValueError(f"paged_decode_attention: merge={merge!r}; choose from {list(MERGES)}")
    if m_l_first and merge != "tagged":
        raise ValueError(f"paged_decode_attention: m_l_first=True is a form of merge='tagged', not of {merge!r}")
    if o_proj_weight is not None and (merge != "kernel" or o_proj_weight.shape[1] != q.shape[1] * q.shape[2]
                                      or not o_proj_weight.is_contiguous()):
        raise ValueError(f"paged_decode_attention: o_proj_weight {tuple(o_proj_weight.shape)} must be contiguous "
                         f"[hidden, {q.shape[1] * q.shape[2]}], with merge='kernel' (Choice 8), not {merge!r}")
    if o_proj_fixed_point and (o_proj_weight is None or q.shape[1] > fixed_point.MAX_TERMS):   # a term a head
        raise ValueError(f"paged_decode_attention: o_proj_fixed_point is a form of the o_proj fold (o_proj_weight), "
                         f"for at most {fixed_point.MAX_TERMS} query heads; got {q.shape[1]} heads, "
                         f"o_proj_weight {'given' if o_proj_weight is not None else 'None'}")
    batch, num_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if num_heads % kv_heads or k_cache.shape[-1] != head_dim or seq_lens.shape[0] != batch:
        raise ValueError(f"paged_decode_attention: q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, "
                         f"seq_lens {tuple(seq_lens.shape)}: want q [B, Hq, D], cache [blocks, block_size, "
                         "Hkv, D] with Hq a multiple of Hkv, and one length per sequence")
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or block_tables.stride(-1) != 1:
        raise ValueError("paged_decode_attention: q, the caches and block_tables need unit stride along the last dim")
    group = num_heads // kv_heads
    if splits is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 132
        splits = num_splits(batch, kv_heads, block_tables.shape[1], block_size, sms, block_n)
    if o_proj_weight is not None and splits == 1:   # no merge to fold it into: the two ops, the same contract
        out = paged_decode_attention(q, k_cache, v_cache, seq_lens, block_tables, scale, splits=1, block_n=block_n,
                                     prefetch_kv=prefetch_kv, prefetch=prefetch).flatten(1)
        summed = torch.nn.functional.linear(out, o_proj_weight, o_proj_bias).float()
        return fixed_point.encode(summed) if o_proj_fixed_point else summed
    out = torch.empty_like(q)
    part = m = l = epochs = out   # not read when splits == 1
    tagged = splits > 1 and merge == "tagged"
    if tagged:   # the partials' words, m and l side by side (l unused), and the counts that make the tags
        part, m, epochs = tagged_buffers(q.device, batch, num_heads, splits, head_dim)
    elif splits > 1:
        part = torch.empty((batch, num_heads, splits, head_dim), dtype=torch.float32, device=q.device)
        m, l = torch.empty((2, batch, num_heads, splits), dtype=torch.float32, device=q.device)
    last = splits > 1 and merge == "last_program"
    counts = merge_counters(q.device, batch, kv_heads) if last else out   # not read unless `last`
    block_d = triton.next_power_of_2(head_dim)
    launch = pdl.launch_options()
    early = prefetch_kv and launch["USE_PDL"]
    ahead, ahead_bytes, lines = prefetch_args(prefetch if early else None, batch * kv_heads * splits, 4 * 32, q)
    fold = {}
    if o_proj_weight is not None:   # Choice 8: the sum the merge adds into (fp32, or int64 fixed point), zeroed by the split kernel
        hidden = o_proj_weight.shape[0]
        summed = torch.empty((batch, hidden), dtype=torch.int64 if o_proj_fixed_point else torch.float32, device=q.device)
        chunk = triton.cdiv(hidden, kv_heads)
        fold = dict(zero_ptr=summed, zero_n=hidden, zero_chunk=chunk, ZERO_BLOCK=triton.next_power_of_2(chunk))
    _attention_split_kernel[(batch, kv_heads, splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part, m, l, counts, float(scale),
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3], block_tables.stride(0),
        out.stride(0), out.stride(1), splits,
        NUM_HEADS=num_heads, GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, SPLIT=splits > 1,
        LAST_MERGES=last, DOT_FP32=_INTERPRET or q.dtype == torch.float32,
        BLOCK_H=max(MIN_GROUP_ROWS, triton.next_power_of_2(group)), BLOCK_N=block_n, BLOCK_D=block_d,
        BLOCK_S=triton.next_power_of_2(splits) if last else 1,   # 1: no recompile per S when unused
        num_warps=4, num_stages=2, **launch, PREFETCH_KV=early,
        next_ptr=ahead, next_bytes=ahead_bytes, PREFETCH_LINES=lines, epochs_ptr=epochs, TAGGED=tagged,
        INTERPRET=_INTERPRET and tagged, **fold)
    if fold:
        _attention_merge_o_proj_kernel[(batch, num_heads, triton.cdiv(hidden, O_PROJ_ROWS))](
            part, m, l, o_proj_weight, o_proj_bias if o_proj_bias is not None else o_proj_weight, summed, q, splits,
            hidden, NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d,
            ROWS=O_PROJ_ROWS, HAS_BIAS=o_proj_bias is not None, FIXED=o_proj_fixed_point, num_warps=O_PROJ_WARPS,
            **pdl.launch_options())
        return summed
    if tagged:
        _attention_merge_tagged_kernel[(batch, num_heads)](
            part, m, epochs, out, out.stride(0), out.stride(1), splits, NUM_HEADS=num_heads, HEAD_DIM=head_dim,
            BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d, num_warps=TAGGED_MERGE_WARPS, **pdl.launch_options(),
            MAX_POLLS=MAX_POLLS, M_L_FIRST=m_l_first)
    elif splits > 1 and not last:
        _attention_merge_kernel[(batch, num_heads)](part, m, l, out, out.stride(0), out.stride(1), splits, NUM_HEADS=num_heads,
                                          HEAD_DIM=head_dim, BLOCK_S=triton.next_power_of_2(splits),
                                          BLOCK_D=block_d, num_warps=4, **pdl.launch_options())
    return out
