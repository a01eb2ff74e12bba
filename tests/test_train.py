"""Training the reference VLA: the gripper loss keeps learning where tanh saturates; DAgger adds frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaedge.models.reference import ReferencePolicy
from vlaedge.sim import VOCABULARY
from vlaedge.sim.train import TrainConfig, _loss, train_policy


def _saturated_gripper_batch(policy: ReferencePolicy) -> dict:
    """One frame whose gripper output is pinned at -1 (tanh saturated) while the label says close."""
    module = policy.module
    with torch.no_grad():
        module.action_head[-1].bias[2] = -20.0  # tanh(-20) = -1 to float precision
    frames = {"image": np.zeros((1, 32, 32, 3), np.uint8), "state": np.zeros((1, 4), np.float32),
              "instruction": ["pick up the red block"]}
    feeds = policy.make_inputs(frames)
    batch = {k: torch.from_numpy(v) for k, v in feeds.items()}
    batch["action"] = torch.zeros(1, policy.config.chunk, 3)
    batch["action"][..., 2] = 1.0  # close
    return batch


def test_a_saturated_wrong_gripper_still_gets_a_gradient():
    """With L1 on tanh the gradient through tanh(-20) is ~1e-17: a policy that learnt "always open"
    could never learn to close. The logistic loss on the same logit keeps a gradient of order one."""
    policy = ReferencePolicy.build("nano", "chunk", vocab=list(VOCABULARY), image_size=32)
    batch = _saturated_gripper_batch(policy)
    bias = policy.module.action_head[-1].bias
    _loss(policy.module, batch).backward()
    assert bias.grad[2] < -0.1  # pushes the gripper logit up, towards closing
    assert torch.tanh(bias.detach()[2]).item() == -1.0  # really saturated


@pytest.mark.parametrize("head", ["tokens", "chunk", "flow"])
def test_dagger_rounds_add_on_policy_frames(head):
    common = {"size": "nano", "head": head, "episodes": 6, "steps": 8, "batch_size": 8, "image_size": 32,
              "camera_size": 32, "threads": 1}
    _, plain = train_policy(TrainConfig(**common, dagger_rounds=0), progress=False)
    _, dagger = train_policy(TrainConfig(**common, dagger_rounds=2, dagger_episodes=3), progress=False)
    assert plain["episodes"] == dagger["episodes"] == 6
    assert dagger["frames"] >= plain["frames"] + 2 * 3  # at least one frame per on-policy episode
