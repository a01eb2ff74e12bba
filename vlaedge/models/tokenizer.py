"""Instruction tokenizers: the built-in word tokenizer (its vocabulary stored inside the checkpoint's
config; the reference family uses it) and `FileTokenizer` for a Hugging Face tokenizer.json or a
SentencePiece model shipped in the checkpoint folder."""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlaedge.errors import VlaedgeError

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


class FileTokenizer:
    """A tokenizer shipped in the checkpoint folder: Hugging Face ``tokenizer.json`` (the `tokenizers`
    library) or a SentencePiece ``.model`` (the `sentencepiece` library), padded or truncated to `max_len`.

    Args:
        path: the tokenizer file; ``.json`` loads with `tokenizers`, anything else with `sentencepiece`.
        max_len: token ids per instruction (the model input's last dimension).
        padding: "right" or "left": where pad ids go.
        truncation: "right" or "left": which end is cut when an instruction is longer than `max_len`.
        pad_id: the padding id; default: the tokenizer's own pad token, else 0.
        add_special_tokens: let the tokenizer add its BOS/EOS (Hugging Face post-processor; SentencePiece
            adds BOS and EOS when its model defines them).

    Raises:
        VlaedgeError: the file is missing or unreadable, its library is not installed, or the pad id (given
            or the tokenizer's own) is not a token id of its vocabulary.

    Example:
        >>> FileTokenizer(Path("ckpt/tokenizer.json"), 16).encode(["pick up the cup"])  # doctest: +SKIP
    """

    def __init__(self, path: Path, max_len: int, padding: str = "right", truncation: str = "right",
                 pad_id: int | None = None, add_special_tokens: bool = True):
        self.path, self.max_len, self.padding, self.truncation = path, max_len, padding, truncation
        self.add_special_tokens = add_special_tokens
        if not path.is_file():
            raise VlaedgeError(f"tokenizer: {path} does not exist",
                               "ship the tokenizer file in the checkpoint folder or fix tokenizer.file")
        self._encode, self.size, own_pad = _open_tokenizer(path, add_special_tokens)
        self.pad_id = _check_pad(own_pad if pad_id is None else pad_id, self.size, path, pad_id is None)

    def ids(self, text: str) -> list[int]:
        """Token ids of one instruction, before padding and truncation."""
        return self._encode(text)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Returns int64 [len(texts), max_len] token ids, padded and truncated as configured."""
        return self.encode_with_mask(texts)[0]

    def encode_with_mask(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention mask): int64 [len(texts), max_len] each; the mask is 1 on tokens, 0 on padding."""
        ids = np.full((len(texts), self.max_len), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), self.max_len), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = self._encode(text)
            tokens = tokens[: self.max_len] if self.truncation == "right" else tokens[-self.max_len:]
            start = 0 if self.padding == "right" else self.max_len - len(tokens)
            cols = slice(start, start + len(tokens))
            if tokens:
                ids[row, cols], mask[row, cols] = tokens, 1
        return ids, mask


def _check_pad(pad_id, size: int, path: Path, own: bool) -> int:
    """The pad id, refused unless a token id of the vocabulary (an embedding lookup of -1 or of `size`
    fails inside the model, far from its cause)."""
    if isinstance(pad_id, int) and not isinstance(pad_id, bool) and 0 <= pad_id < size:
        return pad_id
    where = f"{path.name}'s own pad token" if own else "tokenizer.pad_id in config.json"
    raise VlaedgeError(f"tokenizer: pad id {pad_id!r} ({where}) is not a token id of {path.name}, whose "
                       f"ids are 0..{size - 1}",
                       "set tokenizer.pad_id in config.json to the id of the pad token (or leave it out to "
                       "use the tokenizer's own)")


def _open_tokenizer(path: Path, add_special_tokens: bool):
    """(encode: str -> list[int], vocabulary size, pad id) for a tokenizer.json or a SentencePiece model."""
    json_file = path.suffix == ".json"
    library = "tokenizers" if json_file else "sentencepiece"
    try:
        module = importlib.import_module(library)
    except ImportError as e:
        raise VlaedgeError(f"tokenizer: {path.name} needs the {library} package, which is not installed",
                           "pip install -c constraints.txt 'vlaedge[tokenizers]'") from e
    try:
        if json_file:
            tok = module.Tokenizer.from_file(str(path))
        else:
            sp = module.SentencePieceProcessor(model_file=str(path))
    except Exception as e:  # noqa: BLE001  tokenizers raises a bare Exception for a bad file
        raise VlaedgeError(f"tokenizer: cannot load {path} ({e})",
                           "ship a valid tokenizer.json or SentencePiece .model") from e
    if json_file:
        pad = tok.padding["pad_id"] if tok.padding else tok.token_to_id("<pad>") or tok.token_to_id("[PAD]")
        return (lambda text: tok.encode(text, add_special_tokens=add_special_tokens).ids,
                tok.get_vocab_size(), pad or 0)
    bos, eos = add_special_tokens and sp.bos_id() >= 0, add_special_tokens and sp.eos_id() >= 0
    return (lambda text: sp.encode(text, add_bos=bos, add_eos=eos), sp.get_piece_size(),
            max(sp.pad_id(), 0))
