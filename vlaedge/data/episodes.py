"""The episode dataset model (`Episode`, `EpisodeDataset`), the .npz layout, and the split by episode.

`vlaedge.data.load_dataset` reads a dataset into an `EpisodeDataset`, validated once (`check_episode`);
`save_npz` (here) and `vlaedge.data.lerobot.save_lerobot` write them atomically. `split_episodes` makes the
calibration/evaluation split by episode, and `sample_frames` / `iter_frames` produce the frame batches a
policy adapter consumes.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import shutil
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlaedge.errors import VlaedgeError

FrameBatch = dict[str, Any]
"""A batch of B frames: ``image`` uint8 [B, H, W, 3], ``state`` float32 [B, S], ``action`` float32 [B, A],
``instruction`` list[str], ``episode`` int64 [B] (`Episode.index`) and ``frame`` int64 [B] (within it)."""

EVAL_FRACTION = 0.5  # share of episodes in the evaluation split (recorded in every manifest)
DATA_HINT = "point --data at a LeRobot v3 dataset root, a folder of .npz episodes or one .npz file"


@dataclass
class Episode:
    """One recorded episode: N frames of one camera, proprio state and the action taken.

    Attributes:
        instruction: the language instruction, one per episode.
        images: uint8 [N, H, W, 3] camera frames (HWC, RGB).
        state: float32 [N, S] proprio state.
        action: float32 [N, A] action labels, in the environment's units.
        index: episode index within its dataset.
        success: whether the episode reached its goal (None when unknown).
    """

    instruction: str
    images: np.ndarray
    state: np.ndarray
    action: np.ndarray
    index: int = 0
    success: bool | None = None
    extra: dict = field(default_factory=dict)

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
        return {
            "image": np.stack([ep.images[f] for ep, f in zip(eps, frame, strict=True)]),
            "state": np.stack([ep.state[f] for ep, f in zip(eps, frame, strict=True)]),
            "action": np.stack([ep.action[f] for ep, f in zip(eps, frame, strict=True)]),
            "instruction": [ep.instruction for ep in eps],
            "episode": np.array([ep.index for ep in eps], dtype=np.int64),
            "frame": frame,
        }


def save_npz(dataset: EpisodeDataset, path: str | Path, overwrite: bool = False) -> Path:
    """Write a dataset as a folder with one compressed .npz file per episode.

    Layout: ``path/episode_000000.npz``, ``episode_000001.npz``, ... (episodes renumbered 0..n-1 in
    order), each with ``images`` uint8 [N, H, W, 3], ``state`` float32 [N, S], ``action`` float32 [N, A],
    ``instruction`` (0-d str), ``fps`` (0-d float), ``state_names`` / ``action_names`` (1-d str) and
    ``success`` (0-d bool, only when known). `load_dataset` requires the first four and ``fps``.
    The folder is written next to `path` and renamed into place, like `save_lerobot`.

    Args:
        dataset: the episodes to write.
        path: the folder to create.
        overwrite: replace `path` if it exists.

    Returns:
        `path` as a Path.

    Raises:
        VlaedgeError: `path` exists and is not empty while `overwrite` is False.
    """
    path = Path(path)
    with atomic_dir(path, overwrite) as tmp:
        for i, ep in enumerate(dataset.episodes):
            arrays = {"images": ep.images, "state": ep.state, "action": ep.action}
            arrays |= {"instruction": np.array(ep.instruction), "fps": np.array(dataset.fps)}
            arrays |= {"state_names": np.array(dataset.state_names, dtype=str)}
            arrays |= {"action_names": np.array(dataset.action_names, dtype=str)}
            if ep.success is not None:
                arrays["success"] = np.array(ep.success)
            np.savez_compressed(tmp / f"episode_{i:06d}.npz", **arrays)
    return path


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
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[3] != 3
    ):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise VlaedgeError(
            f"{where}: images are {got}, expected uint8 [N, H, W, 3]", "store RGB frames as uint8"
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
    shape = (first.images.shape[1:], first.state.shape[1], first.action.shape[1])
    seen: set[int] = set()
    for ep in ds.episodes:
        if ep.index in seen:
            raise VlaedgeError(
                f"dataset: {ds.source} has episode index {ep.index} twice", "renumber the episodes"
            )
        seen.add(ep.index)
        got = (ep.images.shape[1:], ep.state.shape[1], ep.action.shape[1])
        if got != shape:
            raise VlaedgeError(
                f"dataset: {ds.source}: episode {ep.index} has (image HWC, state dim, action dim) {got}, "
                f"episode {first.index} has {shape}",
                "all episodes need the same camera resolution, state and action layout",
            )
    for kind, names, dim in (("action", ds.action_names, shape[2]), ("state", ds.state_names, shape[1])):
        if len(names) != dim:
            raise VlaedgeError(
                f"dataset: {ds.source} has {len(names)} {kind} names for {dim} dims", DATA_HINT
            )


def default_names(prefix: str, dim: int) -> list[str]:
    return [f"{prefix}_{i}" for i in range(dim)]


# --- npz and file helpers ---------------------------------------------------------------------------------


def load_npz(files: list[Path], source: str) -> EpisodeDataset:
    episodes, first_meta = [], []
    for i, path in enumerate(files):
        arrays = _read_npz(path)
        missing = [k for k in ("images", "state", "action", "instruction", "fps") if k not in arrays]
        if missing:
            raise VlaedgeError(
                f"dataset: {path} lacks array(s) {missing}; it has {sorted(arrays)}",
                "write them with vlaedge.data.save_npz (fps: the control rate in Hz, e.g. np.array(10.0))",
            )
        instruction = arrays["instruction"]
        if instruction.ndim != 0 or instruction.dtype.kind != "U":
            raise VlaedgeError(
                f"dataset: {path}: instruction is {instruction.dtype} {instruction.shape}",
                "store it as a 0-d string array, np.array('pick up the cube')",
            )
        meta = [arrays[k].tolist() if k in arrays else None for k in ("fps", "state_names", "action_names")]
        if first_meta and meta != first_meta:
            raise VlaedgeError(
                f"dataset: {path} has fps/names {meta}, {files[0]} has {first_meta}", "make them agree"
            )
        first_meta = meta
        success = bool(arrays["success"]) if "success" in arrays else None
        ep = Episode(
            str(instruction), arrays["images"], arrays["state"], arrays["action"], index=i, success=success
        )
        episodes.append(check_episode(ep, f"dataset: {path}"))
    fps, state_names, action_names = first_meta
    action_names = action_names or default_names("action", episodes[0].action.shape[1])
    state_names = state_names or default_names("state", episodes[0].state.shape[1])
    return EpisodeDataset(episodes, float(fps), action_names, state_names, source)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise VlaedgeError(
            f"dataset: {path} is not a readable .npz ({type(exc).__name__}: {exc})",
            "it is truncated or corrupt, or holds object arrays; re-export it with vlaedge.data.save_npz",
        ) from None


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
