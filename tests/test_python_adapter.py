import json

import numpy as np
import pytest

from vlaedge.errors import VlaedgeError
from vlaedge.models import load_policy
from vlaedge.models.python import PythonPolicy, PythonPolicySpec

SPEC = {
    "family": "python",
    "factory": "toy_policy:build",
    "factory_kwargs": {"width": 8, "chunk": 2},
    "inputs": [
        {"name": "rgb", "shape": ["B", 3, 32, 32], "dtype": "uint8", "low": 0, "high": 255,
         "source": "image"},
        {"name": "text", "shape": ["B", 6], "dtype": "int64", "low": 0, "high": 12, "source": "instruction"},
        {"name": "proprio", "shape": ["B", 4], "dtype": "float32", "source": "state"},
    ],
    "tokenizer": {"vocab": ["pick", "up", "the", "red", "block"]},
    "outputs": ["actions"],
    "actions": {"names": ["dx", "dy", "grip"], "low": [-2, -2, 0], "high": [2, 2, 1], "gripper_dims": [2],
                "chunk": 2, "normalised": True},
}


def test_factory_policy_round_trip(tmp_path, frames):
    policy = PythonPolicy(PythonPolicySpec.model_validate(SPEC))
    feeds = policy.make_inputs(frames)
    assert feeds["rgb"].shape == (2, 3, 32, 32) and feeds["rgb"].dtype == np.uint8  # resized 64 -> 32
    assert feeds["text"][0].tolist() == [2, 3, 4, 5, 6, 0]
    actions = policy.act(frames)
    assert actions.shape == (2, 2, 3)
    assert actions[..., :2].min() >= -2 and actions[..., 2].min() >= 0 and actions[..., 2].max() <= 1
    policy.save(tmp_path / "ck")
    loaded = load_policy(tmp_path / "ck", trust_code=True)
    assert isinstance(loaded, PythonPolicy)
    assert np.array_equal(loaded.act(frames), actions)


def _write(tmp_path, spec):
    (tmp_path / "config.json").write_text(json.dumps(spec))
    return tmp_path


def test_spec_typo_is_reported(tmp_path):
    spec = {**SPEC, "factroy": "x"}
    with pytest.raises(VlaedgeError, match="factroy: Extra inputs are not permitted"):
        load_policy(_write(tmp_path, spec), trust_code=True)


def test_bad_factory(tmp_path):
    with pytest.raises(VlaedgeError, match="cannot import 'no_such_pkg.mod'"):
        load_policy(_write(tmp_path, {**SPEC, "factory": "no_such_pkg.mod:build"}), trust_code=True)
    with pytest.raises(VlaedgeError, match="not of the form"):
        load_policy(_write(tmp_path, {**SPEC, "factory": "toy_policy"}), trust_code=True)
