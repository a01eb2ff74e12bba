import json

import numpy as np
import pytest
import torch

from vlaedge.errors import VlaedgeError
from vlaedge.models import load_policy
from vlaedge.models.reference import ReferencePolicy
from vlaedge.models.tokenizer import WordTokenizer
from vlaedge.models.vla import HEADS, SIZES, count_parameters

VOCAB = ["pick", "up", "the", "red", "block", "put", "blue", "on", "cyan", "square"]


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("size", ["nano", "small"])
def test_forward_shapes(size, head, frames):
    policy = ReferencePolicy.build(size, head, vocab=VOCAB)
    out = policy.run_torch(policy.make_inputs(frames))
    T, A = policy.action_spec.chunk, policy.action_spec.dim
    if head == "tokens":
        assert out["action_logits"].shape == (2, T, A, 256)
    else:
        assert out["actions"].shape == (2, T, A)
    actions = policy.decode(out)
    assert actions.shape == (2, T, A)
    assert np.all(actions >= -1) and np.all(actions <= 1)


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_base_forward_shape(head):
    policy = ReferencePolicy.build("base", head, vocab=VOCAB)
    assert count_parameters(policy.module) > 100e6
    out = policy.run_torch(policy.example_inputs(batch=1))
    assert next(iter(out.values())).shape[:3] == (1, 4, 3)


def test_sizes_match_their_names():
    params = {s: count_parameters(ReferencePolicy.build(s, "chunk", vocab=VOCAB).module)
              for s in ("nano", "small")}
    assert params["nano"] < 1e6
    assert 10e6 <= params["small"] <= 30e6
    assert set(SIZES) == {"nano", "small", "base"}


def test_flow_noise_is_an_input(frames):
    policy = ReferencePolicy.build("nano", "flow", vocab=VOCAB)
    a = policy.make_inputs(frames, seed=1)
    b = policy.make_inputs(frames, seed=1)
    c = policy.make_inputs(frames, seed=2)
    assert np.array_equal(a["noise"], b["noise"]) and not np.array_equal(a["noise"], c["noise"])
    assert np.array_equal(policy.act(frames, seed=1), policy.act(frames, seed=1))
    assert not np.array_equal(policy.act(frames, seed=1), policy.act(frames, seed=2))


@pytest.mark.parametrize("head", HEADS)
def test_safetensors_round_trip(tmp_path, head, frames):
    policy = ReferencePolicy.build("nano", head, vocab=VOCAB)
    policy.save(tmp_path / "ck")
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    loaded = load_policy(tmp_path / "ck")
    assert loaded.config == policy.config
    assert np.array_equal(loaded.act(frames), policy.act(frames))


def test_tokenizer():
    tok = WordTokenizer(VOCAB, max_len=6)
    ids = tok.encode(["Pick up the RED block!", "put the purple block on the cyan square"])
    assert ids.dtype == np.int64 and ids.shape == (2, 6)
    assert ids[0].tolist() == [2, 3, 4, 5, 6, 0]
    assert ids[1].tolist() == [7, 4, 1, 6, 9, 4]  # "purple" unknown -> 1; cut at max_len
    assert tok.decode(ids[0]) == "pick up the red block"


@pytest.fixture
def checkpoint(tmp_path):
    return ReferencePolicy.build("nano", "chunk", vocab=VOCAB).save(tmp_path / "ck")


def _error(path, **kw) -> str:
    with pytest.raises(VlaedgeError) as e:
        load_policy(path, **kw)
    return e.value.message + " | " + (e.value.hint or "")


def test_pickle_is_refused_without_opt_in(checkpoint, frames):
    policy = load_policy(checkpoint)
    torch.save(policy.module.state_dict(), checkpoint / "model.pt")
    (checkpoint / "model.safetensors").unlink()
    assert "pickle" in _error(checkpoint) and "--allow-pickle" in _error(checkpoint)
    assert np.array_equal(load_policy(checkpoint, allow_pickle=True).act(frames), policy.act(frames))


def test_missing_checkpoint(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in _error(tmp_path / "empty")


def test_truncated_weights(checkpoint):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "truncated or corrupt" in _error(checkpoint)


def test_unknown_config_key(checkpoint):
    raw = json.loads((checkpoint / "config.json").read_text())
    raw["config"]["dimm"] = 3
    (checkpoint / "config.json").write_text(json.dumps(raw))
    msg = _error(checkpoint)
    assert "unknown key(s) dimm" in msg and "valid keys:" in msg and "dim," in msg


def test_wrong_tensor_shape(checkpoint):
    raw = json.loads((checkpoint / "config.json").read_text())
    raw["config"]["dim"] = 64
    raw["config"]["head_dim"] = 16
    (checkpoint / "config.json").write_text(json.dumps(raw))
    msg = _error(checkpoint)
    assert "has shape" in msg and "config needs" in msg


def test_corrupt_config_json(checkpoint):
    (checkpoint / "config.json").write_text("{not json")
    assert "not valid JSON" in _error(checkpoint)


def test_unknown_family(checkpoint):
    (checkpoint / "config.json").write_text(json.dumps({"family": "jax"}))
    assert "family 'jax'" in _error(checkpoint)
