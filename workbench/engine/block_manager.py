"""Paged KV cache bookkeeping: which fixed-size block holds which tokens, and who shares it.

The KV cache is one big array of blocks of `block_size` token slots each. A sequence owns an
ordered list of block ids (its block table); token t lives in block_table[t // block_size] at
offset t % block_size. No sequence needs contiguous memory, so nothing is wasted to padding or
fragmentation -- the idea of paged attention.

Prefix caching: once a block is full, it gets a hash of its tokens *and* of its parent block's
hash, so equal hashes mean equal whole prefixes. A new prompt that starts with the same prefix
reuses those blocks (ref_count + 1) and skips their prefill. Freed blocks keep their hash until
they are handed out again, so a later request can still hit them (LRU eviction).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import xxhash

from .sequence import Sequence


class Block:
    __slots__ = ("id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


def block_hash(parent_hash: int | None, token_ids) -> int:
    h = xxhash.xxh64()
    if parent_hash is not None:
        h.update(parent_hash.to_bytes(8, "little"))
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return h.intdigest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 hasher=block_hash):
        self.block_size = block_size
        self.hasher = hasher   # (parent_hash, token_ids) -> int: a seam (LLM overrides "block_hasher")
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # oldest first
        self.hash_to_block: dict[int, int] = {}
        self.block_hashes: dict[int, list[int]] = {}   # request id -> hashes of its full blocks
        self.prefix_hit_tokens = 0                      # prefill tokens skipped thanks to the cache

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # Prefix cache ----------------------------------------------------------------------------
    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Blocks already holding a prefix of this sequence's tokens (no side effects).

        The last token is never taken from the cache: its logits are needed to sample the
        next token, so at least one token must run through the model."""
        if not self.enable_prefix_caching:
            return []
        hits, parent = [], None
        num_eligible = (len(seq) - 1) // self.block_size
        for start in range(0, num_eligible * self.block_size, self.block_size):
            tokens = tuple(seq.token_ids[start:start + self.block_size])
            parent = self.hasher(parent, tokens)
            block_id = self.hash_to_block.get(parent)
            if block_id is None or self.blocks[block_id].token_ids != tokens:  # miss (or collision)
                break
            hits.append(block_id)
        return hits

    # Allocation ------------------------------------------------------------------------------
    def can_allocate(self, seq: Sequence, num_new_tokens: int, prefix_hits: list[int] = ()) -> bool:
        computed = seq.num_computed_tokens + len(prefix_hits) * self.block_size
        new_blocks = self.blocks_for(computed + num_new_tokens) - len(seq.block_table) - len(prefix_hits)
        revived = sum(1 for b in prefix_hits if self.blocks[b].ref_count == 0)  # hits now in the free list
        return max(new_blocks, 0) + revived <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int, prefix_hits: list[int] = ()) -> bool:
        """Make room for `num_new_tokens` more tokens of `seq`; False (and no change) if full.

        `prefix_hits` (from lookup_prefix, only for a sequence holding no blocks yet) are
        attached first and count as computed."""
        if not self.can_allocate(seq, num_new_tokens, prefix_hits):
            return False
        if prefix_hits:
            assert not seq.block_table, "prefix hits attach to a sequence without blocks"
            for block_id in prefix_hits:
                self._ref(block_id)
            seq.block_table = list(prefix_hits)
            self.block_hashes[seq.request_id] = [self.blocks[b].hash for b in prefix_hits]
            seq.num_computed_tokens = len(prefix_hits) * self.block_size
            seq.stats.num_cached_prompt_tokens += seq.num_computed_tokens
            self.prefix_hit_tokens += seq.num_computed_tokens
        needed = self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        for _ in range(needed):
            seq.block_table.append(self._take_free_block())
        return True

    def commit_computed(self, seq: Sequence) -> None:
        """Hash blocks that became full of computed tokens, so later prompts can reuse them."""
        if not self.enable_prefix_caching:
            return
        hashes = self.block_hashes.setdefault(seq.request_id, [])
        num_full = seq.num_computed_tokens // self.block_size
        for index in range(len(hashes), num_full):
            tokens = tuple(seq.token_ids[index * self.block_size:(index + 1) * self.block_size])
            h = self.hasher(hashes[-1] if hashes else None, tokens)
            hashes.append(h)
            block = self.blocks[seq.block_table[index]]
            if h not in self.hash_to_block:   # an identical block computed elsewhere keeps its entry
                block.hash, block.token_ids = h, tokens
                self.hash_to_block[h] = block.id

    def free(self, seq: Sequence) -> None:
        # Tail blocks go first, so they are evicted before the shared-looking head blocks.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        self.block_hashes.pop(seq.request_id, None)

    # Internals -------------------------------------------------------------------------------
    def _ref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_blocks[block_id]
        block.ref_count += 1

    def _take_free_block(self) -> int:
        block_id, _ = self.free_blocks.popitem(last=False)   # least recently freed
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
            del self.hash_to_block[block.hash]   # evict its cached content
        block.hash, block.token_ids = None, ()
        block.ref_count = 1
        return block_id
