"""A small word-level tokenizer for instructions, stored inside the checkpoint's config."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    """Maps lower-cased words to ids: 0 is padding, 1 is an unknown word, then the vocabulary.

    Args:
        vocab: the known words, in id order (ids start at 2).
        max_len: instructions are padded or cut to this many tokens.

    Example:
        >>> WordTokenizer(["pick", "up"], max_len=4).encode(["Pick up!"])
        array([[2, 3, 0, 0]])
    """

    def __init__(self, vocab: Sequence[str], max_len: int):
        self.vocab = list(vocab)
        self.max_len = max_len
        self._ids = {w: i + 2 for i, w in enumerate(self.vocab)}

    @property
    def size(self) -> int:
        return len(self.vocab) + 2

    def words(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Returns int64 [len(texts), max_len] token ids."""
        out = np.full((len(texts), self.max_len), PAD, dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self._ids.get(w, UNK) for w in self.words(text)][: self.max_len]
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids: np.ndarray) -> str:
        inverse = {i: w for w, i in self._ids.items()}
        return " ".join(inverse.get(int(i), "<unk>") for i in ids if i != PAD)
