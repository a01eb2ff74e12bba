"""Shared fixtures. Heavy imports (torch, modelopt) are paid once per test session.

`trained_policy(head)` gives a briefly trained nano reference policy (32x32 camera) for tests whose
claims need trained weights (random weights hide quantization failures). The trained checkpoints are
committed in tests/fixtures/trained/ (3.9 and 4.2 MB: the suite trains nothing, and every CPU tests the
same weights) and copied to .cache/test-policies/ at first use; a CACHE_VERSION with no committed copy is
trained there instead (bump it when vla.py or train.py change, then commit the new folders from the cache).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "test-policies"
COMMITTED = ROOT / "tests" / "fixtures" / "trained"
CACHE_VERSION = 7  # bump when vla.py or train.py change


@pytest.fixture
def frames():
    """A batch of two tabletop-like frames."""
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
        "state": rng.uniform(-1, 1, (2, 4)).astype(np.float32),
        "instruction": ["pick up the red block", "put the blue block on the cyan square"],
    }


@pytest.fixture(scope="session")
def trained_checkpoint():
    """`trained_checkpoint(head)` -> the checkpoint directory of a nano policy trained briefly on the
    tabletop task (32x32 camera), trained at first use and cached."""
    from vlaedge.sim.train import TrainConfig, train_policy

    def get(head: str = "chunk") -> Path:
        path = CACHE / f"nano32-{head}-v{CACHE_VERSION}"
        committed = COMMITTED / path.name
        if not (path / "model.safetensors").is_file() and (committed / "model.safetensors").is_file():
            shutil.copytree(committed, path, dirs_exist_ok=True)
        if not (path / "model.safetensors").is_file():
            config = TrainConfig(size="nano", head=head, episodes=200, steps=400, image_size=32, seed=0,
                                 dagger_rounds=0)
            policy, _ = train_policy(config, progress=False)
            policy.save(path)
        return path

    return get


@pytest.fixture(scope="session")
def trained_policy(trained_checkpoint):
    """`trained_policy(head)` -> the `trained_checkpoint(head)` policy, loaded."""
    from vlaedge.models import load_policy

    return lambda head="chunk": load_policy(trained_checkpoint(head))


@pytest.fixture(scope="session")
def tabletop_frames():
    """`tabletop_frames(n, seed=1, image_size=32)` -> n expert frames as a frame batch."""
    from vlaedge.data import EpisodeDataset, sample_frames
    from vlaedge.sim import record_episodes

    def get(n: int, seed: int = 1, image_size: int = 32) -> dict:
        episodes = record_episodes(max(8, n // 6), seed=seed, image_size=image_size)
        dataset = EpisodeDataset.from_episodes(episodes, fps=10)
        return sample_frames(dataset, n, seed)

    return get


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """An untrained nano chunk policy (32x32 camera) saved as a checkpoint, its FP32 ONNX export, and a
    6-episode tabletop dataset as .npz: fast inputs for verify/profile/gate tests that need no accuracy.
    Returns a namespace with `policy`, `checkpoint`, `onnx`, `data`, `dataset`."""
    from types import SimpleNamespace

    from vlaedge.compress.export import export_onnx
    from vlaedge.data import EpisodeDataset, save_npz
    from vlaedge.models.reference import ReferencePolicy
    from vlaedge.recipe import ExportConfig
    from vlaedge.sim import record_episodes

    root = tmp_path_factory.mktemp("tiny-run")
    policy = ReferencePolicy.build("nano", "chunk", image_size=32)
    policy.save(root / "ckpt")
    export_onnx(policy, root / "model.onnx", ExportConfig(), policy.example_inputs(2))
    dataset = EpisodeDataset.from_episodes(record_episodes(6, seed=5, image_size=32), fps=10,
                                           action_names=["dx", "dy", "gripper"])
    save_npz(dataset, root / "data")
    return SimpleNamespace(policy=policy, checkpoint=root / "ckpt", onnx=root / "model.onnx",
                           data=root / "data", dataset=dataset)
