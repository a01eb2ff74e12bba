"""The episode dataset model (`Episode`, `EpisodeDataset`) and the split by episode.

`vlaedge.data.load_dataset` reads a dataset into an `EpisodeDataset`, validated once (`check_episode`);
`vlaedge.data.npz.save_npz` and `vlaedge.data.lerobot.save_lerobot` write them atomically (`atomic_dir`).
`split_episodes` makes the calibration/evaluation split by episode, and `sample_frames` / `iter_frames`
produce the frame batches a policy adapter consumes.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlaedge import progress
from vlaedge.errors import VlaedgeError

FrameBatch = dict[str, Any]
"""A batch of B frames: ``image`` uint8 [B, H, W, 3] (the first camera), ``state`` float32 [B, S],
``action`` float32 [B, A], ``instruction`` list[str], ``episode`` int64 [B] (`Episode.index`) and
``frame`` int64 [B] (within it); plus every camera under its dataset key (e.g.
``observation.images.cam_high``, uint8 [B, H, W, 3]) and the LeRobot names of the others
(``observation.state``, ``action``, ``task``), which is what a policy spec's ``feature`` names."""

EVAL_FRACTION = 0.5  # share of episodes in the evaluation split (recorded in every manifest)
DATA_HINT = ("give the dataset path (--data, or DATASET for vlaedge data) as a LeRobot v3 dataset root, a "
             "folder of .npz episodes or one .npz file")


@dataclass
class Episode:
    """One recorded episode: N frames of one or more cameras, proprio state and the action taken.

    Attributes:
        instruction: the language instruction, one per episode.
        images: uint8 [N, H, W, 3] frames of the first camera (HWC, RGB): an array, or a lazily decoded
            `vlaedge.data.video.VideoFrames`.
        state: float32 [N, S] proprio state.
        action: float32 [N, A] action labels, in the environment's units.
        index: episode index within its dataset.
        success: whether the episode reached its goal (None when unknown).
        cameras: every camera by its dataset key (``observation.images.cam_high``), each like `images`;
            empty for a one-camera dataset without keys (.npz, the simulator).
    """

    instruction: str
    images: np.ndarray
    state: np.ndarray
    action: np.ndarray
    index: int = 0
    success: bool | None = None
    extra: dict = field(default_factory=dict)
    cameras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.action)


@dataclass
class EpisodeDataset:
    """Validated episodes of one camera, all with the same image size, state and action dimensions.

    Construction validates every episode (uint8 [N, H, W, 3] images, equal lengths, finite state and
    action, cast to float32) and that the episodes agree with each other and with the names.

    Attributes:
        episodes: the episodes, each with a distinct `Episode.index`.
        fps: control rate the episodes were recorded at, in Hz.
        action_names: one name per action dimension.
        state_names: one name per state dimension.
        source: where the dataset was loaded from (for messages and manifests).
    """

    episodes: list[Episode]
    fps: float
    action_names: list[str]
    state_names: list[str]
    source: str = "<memory>"
    features: dict = field(default_factory=dict)  # LeRobot info.json features (+ "storage" for cameras)
    stats: dict = field(default_factory=dict)  # meta/stats.json: feature -> {mean, std, min, max, count}

    def __post_init__(self) -> None:
        self.episodes = [
            check_episode(ep, f"dataset: {self.source}: episode {ep.index}") for ep in self.episodes
        ]
        _check_dataset(self)

    @classmethod
    def from_episodes(
        cls,
        episodes: Sequence[Episode],
        fps: float,
        action_names: list[str] | None = None,
        state_names: list[str] | None = None,
        source: str = "<memory>",
    ) -> EpisodeDataset:
        """Build a dataset, naming the dimensions ``action_0, ...`` and ``state_0, ...`` unless told.

        Args:
            episodes: episodes with distinct indices.
            fps: control rate in Hz.
            action_names: one per action dimension.
            state_names: one per state dimension.
            source: where the episodes come from, quoted in error messages.

        Returns:
            The dataset.

        Raises:
            VlaedgeError: an episode is malformed or the episodes disagree with each other.
        """
        if not episodes:
            raise VlaedgeError(
                f"dataset: {source} holds no episodes", "record or convert at least one episode"
            )
        first = check_episode(episodes[0], f"dataset: {source}: episode {episodes[0].index}")
        action_names = action_names or default_names("action", first.action.shape[1])
        state_names = state_names or default_names("state", first.state.shape[1])
        return cls(list(episodes), fps, action_names, state_names, source)

    @property
    def num_frames(self) -> int:
        """Total number of frames over all episodes."""
        return sum(len(ep) for ep in self.episodes)

    @property
    def episode_indices(self) -> list[int]:
        """`Episode.index` of each episode, in order (what a manifest records for a split)."""
        return [ep.index for ep in self.episodes]

    def action_low(self) -> np.ndarray:
        """Per-dimension minimum action over the dataset: float32 [A] (the low end of the action range)."""
        return np.min([ep.action.min(axis=0) for ep in self.episodes], axis=0).astype(np.float32)

    def action_high(self) -> np.ndarray:
        """Per-dimension maximum action over the dataset: float32 [A] (the high end of the action range)."""
        return np.max([ep.action.max(axis=0) for ep in self.episodes], axis=0).astype(np.float32)

    def frames(self, indices: Sequence[int] | np.ndarray) -> FrameBatch:
        """Gather frames by global index (0 .. num_frames - 1, episodes in order) into a `FrameBatch`.

        Raises:
            IndexError: an index is out of range or `indices` is empty.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= self.num_frames:
            raise IndexError(f"frame indices must be non-empty and in [0, {self.num_frames}), got {idx}")
        starts = np.cumsum([0] + [len(ep) for ep in self.episodes])
        owner = np.searchsorted(starts, idx, side="right") - 1
        frame = idx - starts[owner]
        eps = [self.episodes[i] for i in owner]
        cameras = {key: _gather(self.episodes, owner, frame, lambda ep, key=key: ep.cameras[key])
                   for key in self.camera_keys}
        batch = {
            "image": next(iter(cameras.values()), None)
            if cameras else _gather(self.episodes, owner, frame, lambda ep: ep.images),
            "state": np.stack([ep.state[f] for ep, f in zip(eps, frame, strict=True)]),
            "action": np.stack([ep.action[f] for ep, f in zip(eps, frame, strict=True)]),
            "instruction": [ep.instruction for ep in eps],
            "episode": np.array([ep.index for ep in eps], dtype=np.int64),
            "frame": frame,
        }
        batch |= cameras | {"observation.state": batch["state"], "task": batch["instruction"]}
        return batch

    @property
    def camera_keys(self) -> list[str]:
        """The dataset keys of the cameras (``observation.images.*``); [] for unnamed one-camera data."""
        return list(self.episodes[0].cameras)


def _gather(episodes: list[Episode], owner: np.ndarray, frame: np.ndarray, camera) -> np.ndarray:
    """Frames `frame` of episodes `owner` from one camera, uint8 [B, H, W, 3]; one `take` per episode for
    video cameras (decoded together, in order), plain indexing for arrays."""
    first = camera(episodes[owner[0]])
    out = np.empty((len(owner), *first.shape[1:]), np.uint8)
    for e in progress.track(np.unique(owner), "dataset: frames by episode (video decoded)"):
        rows = np.flatnonzero(owner == e)
        source = camera(episodes[e])
        out[rows] = source[frame[rows]] if isinstance(source, np.ndarray) else source.take(frame[rows])
    return out


def split_episodes(
    dataset: EpisodeDataset, eval_fraction: float = EVAL_FRACTION, seed: int = 0
) -> tuple[EpisodeDataset, EpisodeDataset]:
    """Split by episode into calibration and evaluation parts; no episode (so no frame) is in both.

    The split depends only on the number of episodes, `eval_fraction` and `seed`. Both parts keep the
    dataset's episode order; record each part's `episode_indices` in the manifest.

    Args:
        dataset: at least two episodes.
        eval_fraction: share of episodes for evaluation, in (0, 1); each part gets at least one.
        seed: seed of the shuffle.

    Returns:
        (calibration, evaluation).

    Raises:
        VlaedgeError: fewer than two episodes, or `eval_fraction` outside (0, 1).
    """
    n = len(dataset.episodes)
    if n < 2:
        raise VlaedgeError(
            f"split: {dataset.source} has {n} episode, a calibration/evaluation split needs at least 2",
            "record or convert more episodes",
        )
    if not 0.0 < eval_fraction < 1.0:
        raise VlaedgeError(f"split: eval_fraction={eval_fraction} is not in (0, 1)", "use e.g. 0.5")
    n_eval = min(max(round(n * eval_fraction), 1), n - 1)
    is_eval = np.zeros(n, bool)
    is_eval[np.random.default_rng(seed).permutation(n)[:n_eval]] = True
    calib = [ep for ep, e in zip(dataset.episodes, is_eval, strict=True) if not e]
    evals = [ep for ep, e in zip(dataset.episodes, is_eval, strict=True) if e]
    return dataclasses.replace(dataset, episodes=calib), dataclasses.replace(dataset, episodes=evals)


def split_as_recorded(
    dataset: EpisodeDataset, split: dict | None, seed: int = 0
) -> tuple[EpisodeDataset, EpisodeDataset]:
    """(calibration, evaluation) as a run's manifest recorded them, else a fresh `split_episodes`.

    Args:
        dataset: the dataset the run was compressed with.
        split: the manifest's ``split`` section (``evaluation_episodes``: episode indices), or None.
        seed: seed of the fresh split when nothing is recorded (compress uses 0).

    Raises:
        VlaedgeError: the dataset lacks an episode of the recorded evaluation split, or has no other.
    """
    wanted = set((split or {}).get("evaluation_episodes") or [])
    if not wanted:
        return split_episodes(dataset, EVAL_FRACTION, seed)
    evaluation = [ep for ep in dataset.episodes if ep.index in wanted]
    calibration = [ep for ep in dataset.episodes if ep.index not in wanted]
    if len(evaluation) != len(wanted) or not calibration:
        raise VlaedgeError(
            f"data: {dataset.source} lacks the run's evaluation episodes "
            f"{sorted(wanted - {ep.index for ep in evaluation})[:5]}",
            "pass the dataset the run was compressed with (--data)",
        )
    return (dataclasses.replace(dataset, episodes=calibration),
            dataclasses.replace(dataset, episodes=evaluation))


def iter_frames(dataset: EpisodeDataset, batch_size: int = 32) -> Iterator[FrameBatch]:
    """Yield every frame once, in order, in batches of `batch_size` (the last may be smaller).

    Args:
        dataset: the frames' dataset.
        batch_size: frames per batch, at least 1.

    Yields:
        `FrameBatch` dicts.

    Raises:
        VlaedgeError: `batch_size` is below 1.
    """
    if batch_size < 1:
        raise VlaedgeError(f"frames: batch_size={batch_size} must be at least 1", "use e.g. 32")
    for start in range(0, dataset.num_frames, batch_size):
        yield dataset.frames(np.arange(start, min(start + batch_size, dataset.num_frames)))


def sample_frames(dataset: EpisodeDataset, n: int, seed: int = 0) -> FrameBatch:
    """Sample `n` distinct frames uniformly over the dataset, deterministically for a seed.

    Args:
        dataset: the frames' dataset.
        n: number of frames, 1 .. `dataset.num_frames`.
        seed: seed of the draw.

    Returns:
        A `FrameBatch`, frames in dataset order.

    Raises:
        VlaedgeError: `n` is below 1 or more than the dataset holds.
    """
    total = dataset.num_frames
    if not 1 <= n <= total:
        raise VlaedgeError(
            f"frames: {n} frames requested, {dataset.source} has {total} in {len(dataset.episodes)} episodes",
            f"ask for 1 to {total} frames or add episodes",
        )
    return dataset.frames(np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False)))


# --- validation ---------------------------------------------------------------------------------------


def check_episode(ep: Episode, where: str) -> Episode:
    """Check one episode's arrays; return it with float32 state and action. `where` names it in errors."""
    images = ep.images
    for key, frames in {"images": images, **ep.cameras}.items():
        if (
            not hasattr(frames, "shape")
            or frames.dtype != np.uint8
            or frames.ndim != 4
            or frames.shape[3] != 3
            or len(frames) != len(images)
        ):
            got = f"{frames.dtype} {frames.shape}" if hasattr(frames, "shape") else type(frames).__name__
            raise VlaedgeError(
                f"{where}: {key} are {got}, expected uint8 [{len(images)}, H, W, 3]",
                "store RGB frames as uint8, the same number for every camera",
            )
    arrays = {}
    for name in ("state", "action"):
        value = np.asarray(getattr(ep, name))
        if value.ndim != 2 or not (
            np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)
        ):
            raise VlaedgeError(
                f"{where}: {name} is {value.dtype} {value.shape}, expected float [N, D]", DATA_HINT
            )
        arrays[name] = value.astype(np.float32, copy=False)
        bad = np.argwhere(~np.isfinite(arrays[name]))
        if len(bad):
            frame, dim = bad[0]
            raise VlaedgeError(
                f"{where}: {name} has {len(bad)} NaN/Inf values (first at frame {frame}, dim {dim})",
                "clean or drop this episode",
            )
    lengths = {"images": len(images), "state": len(arrays["state"]), "action": len(arrays["action"])}
    if len(set(lengths.values())) != 1 or lengths["action"] == 0:
        raise VlaedgeError(
            f"{where}: frame counts differ or are zero: {lengths}", "every frame needs all three"
        )
    if not isinstance(ep.instruction, str):
        raise VlaedgeError(
            f"{where}: instruction is {type(ep.instruction).__name__}, expected str", DATA_HINT
        )
    return dataclasses.replace(ep, **arrays)


def _check_dataset(ds: EpisodeDataset) -> None:
    """Check that the episodes agree with each other and with the dataset's names and fps."""
    if not ds.episodes:
        raise VlaedgeError(
            f"dataset: {ds.source} holds no episodes", "record or convert at least one episode"
        )
    if isinstance(ds.fps, bool) or not isinstance(ds.fps, numbers.Real) or not 0 < ds.fps < np.inf:
        raise VlaedgeError(
            f"dataset: {ds.source} has fps={ds.fps!r}, expected a positive number",
            "pass the control rate in Hz",
        )
    ds.fps = float(ds.fps)
    first = ds.episodes[0]
    shape = (first.images.shape[1:], first.state.shape[1], first.action.shape[1], _cameras(first))
    seen: set[int] = set()
    for ep in ds.episodes:
        if ep.index in seen:
            raise VlaedgeError(
                f"dataset: {ds.source} has episode index {ep.index} twice", "renumber the episodes"
            )
        seen.add(ep.index)
        got = (ep.images.shape[1:], ep.state.shape[1], ep.action.shape[1], _cameras(ep))
        if got != shape:
            raise VlaedgeError(
                f"dataset: {ds.source}: episode {ep.index} has (image HWC, state dim, action dim, cameras) "
                f"{got}, "
                f"episode {first.index} has {shape}",
                "all episodes need the same camera resolution, state and action layout",
            )
    for kind, names, dim in (("action", ds.action_names, shape[2]), ("state", ds.state_names, shape[1])):
        if len(names) != dim:
            raise VlaedgeError(
                f"dataset: {ds.source} has {len(names)} {kind} names for {dim} dims", DATA_HINT
            )


def _cameras(ep: Episode) -> list[tuple[str, tuple]]:
    return [(key, tuple(frames.shape[1:])) for key, frames in ep.cameras.items()]


def default_names(prefix: str, dim: int) -> list[str]:
    return [f"{prefix}_{i}" for i in range(dim)]


# --- file helpers ---------------------------------------------------------------------------------


@contextmanager
def atomic_dir(root: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh folder next to `root`; when the block succeeds, rename it to `root`; else delete it."""
    if root.exists() and not overwrite and not (root.is_dir() and not any(root.iterdir())):
        raise VlaedgeError(f"dataset: {root} already exists", "pick a new path or pass overwrite=True")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if root.exists():
            old = tmp.with_name(tmp.name + ".old")
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
