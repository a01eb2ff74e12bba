"""Instruction tokenizers shipped in a checkpoint: Hugging Face tokenizer.json and SentencePiece models,
padded and truncated as the policy spec declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlaedge.errors import VlaedgeError
from vlaedge.models import load_policy
from vlaedge.models.python import PythonPolicy, PythonPolicySpec
from vlaedge.models.tokenizer import FileTokenizer

tokenizers = pytest.importorskip("tokenizers")
spm = pytest.importorskip("sentencepiece")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "pick", "up", "the", "red", "blue", "block", "put", "on", "square"]


def write_tokenizer_json(path: Path) -> Path:
    """A word-level tokenizer.json with a [CLS] prefix, as BERT-style text encoders ship it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 2)])
    tok.save(str(path))
    return path


def write_sentencepiece(folder: Path) -> Path:
    text = folder / "corpus.txt"
    text.write_text("\n".join(["pick up the red block", "put the blue block on the red square"] * 20))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "spm"), vocab_size=13,
                                   model_type="word", pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   minloglevel=2)
    return folder / "spm.model"


def test_tokenizer_json_pads_and_truncates_as_declared(tmp_path: Path) -> None:
    path = write_tokenizer_json(tmp_path / "tokenizer.json")
    right = FileTokenizer(path, 5)
    ids, mask = right.encode_with_mask(["pick up the red block", "pick up"])
    assert ids.tolist() == [[2, 3, 4, 5, 6], [2, 3, 4, 0, 0]]  # [CLS] added, cut on the right, right pad
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    left = FileTokenizer(path, 5, padding="left", truncation="left", pad_id=0, add_special_tokens=False)
    assert left.encode(["put the blue block on the red square", "pick up"]).tolist() == [
        [8, 10, 5, 6, 11], [0, 0, 0, 3, 4]]


def test_sentencepiece_model_adds_bos_eos_and_pads(tmp_path: Path) -> None:
    tok = FileTokenizer(write_sentencepiece(tmp_path), 8)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))
    ids, mask = tok.encode_with_mask(["pick up the red block"])
    words = sp.encode("pick up the red block")
    assert ids[0].tolist() == [2, *words, 3] + [0] * (8 - len(words) - 2)
    assert mask[0].sum() == len(words) + 2


def test_policy_with_a_shipped_tokenizer_round_trips(tmp_path: Path) -> None:
    ck = tmp_path / "src"
    ck.mkdir()
    write_tokenizer_json(ck / "tokenizer.json")
    spec = {
        "family": "python", "factory": "toy_policy:build", "factory_kwargs": {"width": 8, "chunk": 2},
        "inputs": [{"name": "rgb", "shape": ["B", 3, 32, 32], "dtype": "uint8", "low": 0, "high": 255,
                    "source": "image"},
                   {"name": "text", "shape": ["B", 6], "dtype": "int64", "low": 0, "high": 11,
                    "source": "instruction"},
                   {"name": "proprio", "shape": ["B", 4], "source": "state"}],
        "tokenizer": {"file": "tokenizer.json", "padding": "left"},
        "outputs": ["actions"],
        "actions": {"names": ["dx", "dy", "grip"], "low": [-1, -1, 0], "high": [1, 1, 1], "chunk": 2},
    }
    policy = PythonPolicy(PythonPolicySpec.model_validate(spec), root=ck)
    frames = {"image": np.zeros((1, 64, 64, 3), np.uint8), "state": np.zeros((1, 4), np.float32),
              "instruction": ["pick up the block"]}
    assert policy.make_inputs(frames)["text"].tolist() == [[0, 2, 3, 4, 5, 8]]
    saved = policy.save(tmp_path / "saved")
    assert (saved / "tokenizer.json").is_file()
    loaded = load_policy(saved, trust_code=True)
    assert np.array_equal(loaded.make_inputs(frames)["text"], [[0, 2, 3, 4, 5, 8]])
    (saved / "tokenizer.json").unlink()
    with pytest.raises(VlaedgeError, match="tokenizer: .*tokenizer.json does not exist"):
        load_policy(saved, trust_code=True)
    with pytest.raises(ValueError, match="exactly one of 'vocab'"):
        PythonPolicySpec.model_validate({**spec, "tokenizer": {"vocab": ["a"], "file": "tokenizer.json"}})
