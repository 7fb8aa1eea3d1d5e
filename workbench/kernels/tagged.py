"""The data as its own flag: values handed from one kernel's programs to the next kernel's programs
in tagged words, without waiting for the first kernel to finish.

Why. Under PDL (kernels/pdl.py) a kernel's wait returns when the whole kernel before it has finished
and its writes are visible: every program waits for the slowest program of the grid before, and for
the grid's end. Where a program needs only a few programs' outputs (one attention head's, say), it
could start as soon as those are written. A flag per writer says "done", but then the reader needs
the flag and, after it, the data: two dependent round trips and a fence (measure boundaries,
persistent-flags: slower than a PDL boundary on an H200, session 22).

The trick, NCCL's low-latency protocol: each 32-bit value travels in one 64-bit word together with
a tag that names the call that wrote it, (tag << 32) | bits. A 64-bit store is single-copy atomic, so
a reader that sees the tag it expects sees the value stored with it: no fence, no flag, one round
trip. The reader polls its words until every one carries its tag. (Session 22's probe, in one
persistent kernel: 0.75-0.79 us a step where each program waits on one head's writers, against 1.11
for a PDL boundary.)

What makes it correct:
  - Tags never repeat at an address while a reader might still look at it: a call's tag is one
    more than the last call's (the caller keeps a count on the device), and words start zeroed
    with counts at 0, so tag 0 never passes for data.
  - The words are the caller's own buffer, written by nothing else.
  - Every writer a reader polls is already running when the reader starts: under PDL the reading
    kernel is launched only once every program of the writing kernel has let it in, and the
    writers do that after their own wait, not first thing. (A probe chain whose kernels each let
    the next in first thing, polling without a bound, never finished on an H200 -- why is not
    known yet: session 22, docs/perf-notes.md.)
  - A reader gives up after MAX_POLLS reads and says so (`late` > 0): a broken handoff shows up
    as a wrong result (the caller writes NaN), never as a GPU that spins forever.
Stores by several threads of one value (Triton may keep copies of a value in several threads, and
inline asm stores each copy) are harmless: every copy is the same word.

Under Triton's interpreter, programs run one after another and plain stores and loads stand in.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def store_tagged(ptrs, values, tag, mask, INTERPRET: tl.constexpr):
    """Store 32-bit `values` (float32 or int32) at `ptrs` (int64 words) with `tag` (int32, a scalar
    or broadcast to values) in each word's high half: one relaxed 64-bit store a word, where `mask`
    (None: every word)."""
    bits = values.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    word = ((tl.zeros(values.shape, tl.int64) + tag) << 32) | bits   # (tag: an int, a scalar or a tensor)
    if INTERPRET:
        tl.store(ptrs, word, mask=mask)
    elif mask is None:   # st.relaxed.gpu: a store other programs may read while this kernel runs (a plain st is "weak")
        tl.inline_asm_elementwise("st.relaxed.gpu.global.b64 [$1], $2; mov.u32 $0, 0;", "=r,l,l",
                                  [ptrs, word], dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.relaxed.gpu.global.b64 [$1], $2; } mov.u32 $0, 0;",
            "=r,l,l,r", [ptrs, word, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _read(ptrs, mask):
    """The words at `ptrs` from memory, not from a copy in L1 (volatile); 0 where not `mask`."""
    if mask is None:
        words = tl.load(ptrs, volatile=True)
    else:
        words = tl.load(ptrs, mask=mask, other=0, volatile=True)
    return words


@triton.jit
def _late(words, mask, tag):
    """How many words (under `mask`, None: all) do not carry `tag` yet."""
    late = (words >> 32).to(tl.int32) != tag
    if mask is not None:
        late = mask & late
    return tl.sum(tl.ravel(late.to(tl.int32)), axis=0)


@triton.jit
def poll_tagged(a_ptrs, a_mask, b_ptrs, b_mask, tag, MAX_POLLS: tl.constexpr):
    """Read two sets of words together (a and b: two shapes a kernel reads at once; a mask of None:
    every word) until every word under its mask carries `tag` -- one round trip a poll, not two --
    at most MAX_POLLS times. Returns their values' bits (int32, the words' low halves; 0 where
    masked; bitcast for floats), how many words were still late when it stopped (0: all arrived),
    and the reads it took (the tests' window on the wait: the interpreter never has to wait)."""
    a, b = _read(a_ptrs, a_mask), _read(b_ptrs, b_mask)
    late = _late(a, a_mask, tag) + _late(b, b_mask, tag)
    polls = 1
    while (late > 0) & (polls < MAX_POLLS):   # scalars in the condition (Triton 3.6 failed on a reduction there)
        a, b = _read(a_ptrs, a_mask), _read(b_ptrs, b_mask)
        late = _late(a, a_mask, tag) + _late(b, b_mask, tag)
        polls += 1
    return a.to(tl.int32), b.to(tl.int32), late, polls
