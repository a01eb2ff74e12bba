"""Checkpoints as Hugging Face users have them: sharded safetensors with their index, a save_pretrained
folder with a vlaedge.json beside its own config.json, fp16/bf16 weights, tied embeddings; and every
way such a folder can be wrong is one line naming the file or tensor (issue 11, item 1)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vlaedge.errors import VlaedgeError
from vlaedge.models import load_policy
from vlaedge.models.checkpoint import INDEX_FILE, SPEC_FILE

pytest.importorskip("transformers")

POLICY_FILE = Path(__file__).parent / "hf_checkpoint" / "policy.py"

SPEC = {
    "family": "python",
    "factory": "policy.py:from_config",
    "factory_config": "config.json",
    "inputs": [
        {"name": "rgb", "shape": ["B", 3, 32, 32], "dtype": "float32", "low": 0, "high": 1,
         "source": "image"},
        {"name": "text", "shape": ["B", 6], "dtype": "int64", "low": 0, "high": 39, "source": "instruction"},
        {"name": "proprio", "shape": ["B", 4], "dtype": "float32", "source": "state"},
    ],
    "tokenizer": {"vocab": ["pick", "up", "the", "red", "block"]},
    "outputs": ["actions"],
    "actions": {"names": ["dx", "dy", "grip"], "low": [-1, -1, 0], "high": [1, 1, 1], "gripper_dims": [2],
                "chunk": 2, "normalised": True},
    "action_head": ["action_head"],
}


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_test_policy", POLICY_FILE)
    source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source)
    torch.manual_seed(0)
    return source.TinyVLA(source.TinyVLAConfig())


def save_pretrained(folder: Path, shard: str | None = "20KB", dtype=None) -> tuple[Path, dict]:
    """A save_pretrained folder + policy.py + vlaedge.json, and the module's state dict as saved."""
    model = _module()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder, max_shard_size=shard or "10GB")
    shutil.copyfile(POLICY_FILE, folder / "policy.py")
    (folder / SPEC_FILE).write_text(json.dumps(SPEC))
    return folder, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(policy, state: dict) -> None:
    loaded = policy.module.state_dict()
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], tensor.float()), name


def test_sharded_save_pretrained_loads_exactly_its_weights(tmp_path):
    folder, state = save_pretrained(tmp_path / "ck")
    index = json.loads((folder / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 3  # really sharded
    assert "lm_head.weight" not in index["weight_map"]  # tied: save_pretrained wrote it once
    policy = load_policy(folder, trust_code=True)
    _same_weights(policy, state)
    assert policy.module.lm_head.weight is policy.module.decoder.embed_tokens.weight


def test_factory_random_weights_differ(tmp_path):
    """The check above can fail: a freshly built module does not have the saved weights."""
    folder, state = save_pretrained(tmp_path / "ck")
    torch.manual_seed(1)
    fresh = _module().__class__(_module().config)
    assert not all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


def test_single_file_and_reduced_precision(tmp_path):
    for dtype in (torch.float16, torch.bfloat16):
        folder, state = save_pretrained(tmp_path / str(dtype), shard=None, dtype=dtype)
        assert (folder / "model.safetensors").is_file()
        _same_weights(load_policy(folder, trust_code=True), state)


def test_saved_again_keeps_the_layout(tmp_path, frames):
    folder, _ = save_pretrained(tmp_path / "ck")
    policy = load_policy(folder, trust_code=True)
    out = policy.save(tmp_path / "again")
    assert (out / SPEC_FILE).is_file() and (out / "policy.py").is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "tiny_vla_test"  # untouched
    again = load_policy(out, trust_code=True)
    assert np.array_equal(again.act(frames), policy.act(frames))


def test_save_pretrained_without_spec_says_what_to_add(tmp_path):
    folder, _ = save_pretrained(tmp_path / "ck")
    (folder / SPEC_FILE).unlink()
    with pytest.raises(VlaedgeError, match=r"Hugging Face config \(tiny_vla_test\) and no vlaedge.json") as e:
        load_policy(folder, trust_code=True)
    assert "Bring your own VLA" in e.value.hint


def test_factory_file_needs_trust(tmp_path):
    folder, _ = save_pretrained(tmp_path / "ck")
    with pytest.raises(VlaedgeError, match=r"vlaedge.json asks to import and call factory 'policy.py"):
        load_policy(folder)


def test_factory_that_raises_names_the_spec_file_it_reads(tmp_path):
    folder, _ = save_pretrained(tmp_path / "ck")
    spec = json.loads((folder / SPEC_FILE).read_text())
    (folder / SPEC_FILE).write_text(json.dumps({**spec, "factory_kwargs": {"no_such_option": 1}}))
    with pytest.raises(VlaedgeError, match=r"factory policy.py:from_config raised TypeError") as e:
        load_policy(folder, trust_code=True)
    assert "factory_kwargs in vlaedge.json" in e.value.hint
    assert "config.json as the first argument" in e.value.hint


@pytest.mark.parametrize("damage, message", [
    ("missing-shard", r"lacks shard\(s\) model-00002-of-0000\d.safetensors"),
    ("stray-shard", r"weight file\(s\) that would not be read: model-extra.safetensors"),
    ("two-layouts", r"holds both model.safetensors and model.safetensors.index.json"),
    ("moved-key", r"shard model-0000\d-of-0000\d.safetensors (holds|lacks) .*index.json puts"),
    ("no-weights", r"has no weights"),
    ("missing-key", r"1 missing: state.bias"),
    ("wrong-shape", r"tensor action_head.weight has shape"),
    ("escaping-shard", r"not a file beside it"),
])
def test_broken_checkpoints_are_one_line(tmp_path, damage, message):
    from safetensors.torch import load_file, save_file

    folder, _ = save_pretrained(tmp_path / "ck")
    index_path = folder / INDEX_FILE
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    if damage == "missing-shard":
        (folder / shards[1]).unlink()
    elif damage == "stray-shard":
        shutil.copyfile(folder / shards[0], folder / "model-extra.safetensors")
    elif damage == "two-layouts":
        shutil.copyfile(folder / shards[0], folder / "model.safetensors")
    elif damage == "moved-key":
        counts = {s: list(index["weight_map"].values()).count(s) for s in shards}
        source = next(s for s in shards if counts[s] > 1)  # still named by the index after the move
        key = next(k for k, v in index["weight_map"].items() if v == source)
        index["weight_map"][key] = next(s for s in shards if s != source)
        index_path.write_text(json.dumps(index))
    elif damage == "no-weights":
        for name in [*shards, INDEX_FILE]:
            (folder / name).unlink()
    elif damage in ("missing-key", "wrong-shape"):
        key = "state.bias" if damage == "missing-key" else "action_head.weight"
        shard = folder / index["weight_map"][key]
        part = load_file(str(shard))
        if damage == "missing-key":
            del part[key]
            del index["weight_map"][key]
            index_path.write_text(json.dumps(index))
        else:
            part[key] = torch.zeros(5, 32)
        save_file(part, str(shard))
    elif damage == "escaping-shard":
        index["weight_map"]["state.bias"] = "../elsewhere.safetensors"
        index_path.write_text(json.dumps(index))
    with pytest.raises(VlaedgeError, match=message):
        load_policy(folder, trust_code=True)


def test_pickle_shards_need_consent(tmp_path):
    folder, state = save_pretrained(tmp_path / "ck", shard=None)
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    parts = {"pytorch_model-00001-of-00002.bin": names[:half],
             "pytorch_model-00002-of-00002.bin": names[half:]}
    for file, keys in parts.items():
        torch.save({k: state[k] for k in keys}, folder / file)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, keys in parts.items() for k in keys}}))
    with pytest.raises(VlaedgeError, match="pickle file; unpickling runs arbitrary code"):
        load_policy(folder, trust_code=True)
    _same_weights(load_policy(folder, trust_code=True, allow_pickle=True), state)
