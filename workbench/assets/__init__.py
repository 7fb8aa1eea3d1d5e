"""Assets shipped inside the package: the embedded default model.

`sorter/` is a tiny Qwen3 (about 250k parameters, 1 MB) trained by `scripts/train_sorter.py`
to sort single-digit numbers, so any output of the engine can be checked by eye:

    prompt      "sort: 7 3 9 1 ->"
    completion  "1 3 7 9"  then <eos>

(The tokenizer is word-level, so decoding only the generated ids gives "1 3 7 9" with no
leading space; the full text is prompt + " " + completion.)
"""
from __future__ import annotations

import random
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).parent / "sorter"


def make_sort_prompts(n: int, seed: int, min_len: int = 2,
                      max_len: int = 8) -> list[tuple[str, str]]:
    """n random (prompt, expected_completion) pairs in exactly the training format.

    Lists have min_len..max_len digits, repeats allowed. Same sampler as the training script,
    so make_sort_prompts(n, 1_000_000) reproduces its held-out evaluation set.
    """
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        digits = [rng.randrange(10) for _ in range(rng.randint(min_len, max_len))]
        prompt = "sort: " + " ".join(map(str, digits)) + " ->"
        pairs.append((prompt, " ".join(map(str, sorted(digits)))))
    return pairs
