"""Episode datasets: the LeRobot v3 layout and plain .npz, split by episode.

`load_dataset` reads either layout into an `EpisodeDataset`, validating it once at the boundary;
`save_lerobot` and `save_npz` write them atomically. `split_episodes` makes the calibration/evaluation
split by episode, and `sample_frames` / `iter_frames` produce the frame batches a policy adapter consumes.
"""

from __future__ import annotations

import dataclasses
import json
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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlaedge.errors import VlaedgeError
from vlaedge.png import PngError, decode_pngs, encode_png

FrameBatch = dict[str, Any]
"""A batch of B frames: ``image`` uint8 [B, H, W, 3], ``state`` float32 [B, S], ``action`` float32 [B, A],
``instruction`` list[str], ``episode`` int64 [B] (`Episode.index`) and ``frame`` int64 [B] (within it)."""

_DATA_HINT = "point --data at a LeRobot v3 dataset root, a folder of .npz episodes or one .npz file"
_DATA_COLUMNS = ["observation.state", "action", "episode_index", "frame_index", "task_index"]


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
            _check_episode(ep, f"dataset: {self.source}: episode {ep.index}") for ep in self.episodes
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
        first = _check_episode(episodes[0], f"dataset: {source}: episode {episodes[0].index}")
        action_names = action_names or _default_names("action", first.action.shape[1])
        state_names = state_names or _default_names("state", first.state.shape[1])
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


def load_dataset(path: str | Path, image_key: str | None = None) -> EpisodeDataset:
    """Load a LeRobot v3.0 dataset root, a folder of .npz episodes or one .npz episode.

    A LeRobot root is recognised by ``meta/info.json``; its images must be embedded PNGs (feature dtype
    "image"), not videos. The .npz layout is the one `save_npz` writes.

    Args:
        path: the dataset root, folder or file.
        image_key: LeRobot camera feature to use, e.g. ``"observation.images.top"``; default: the first
            ``observation.image(s)`` feature in info.json. Ignored for .npz.

    Returns:
        The validated dataset, episodes sorted by index.

    Raises:
        VlaedgeError: the path is missing or not a dataset, a file is truncated or corrupt, a column is
            missing, lengths disagree, images are not uint8 RGB, or state/action hold NaN/Inf.

    Example:
        >>> ds = load_dataset("datasets/pick_cube")  # doctest: +SKIP
        >>> ds.num_frames, ds.action_low()  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise VlaedgeError(f"dataset: {path} does not exist", _DATA_HINT)
    if path.is_file():
        if path.suffix != ".npz":
            raise VlaedgeError(f"dataset: {path} is a file but not a .npz episode", _DATA_HINT)
        return _load_npz([path], str(path))
    if (path / "meta" / "info.json").is_file():
        return _load_lerobot(path, image_key)
    files = sorted(path.glob("*.npz"))
    if not files:
        raise VlaedgeError(f"dataset: {path} has no meta/info.json and no .npz files", _DATA_HINT)
    return _load_npz(files, str(path))


def save_lerobot(
    dataset: EpisodeDataset,
    root: str | Path,
    image_key: str = "observation.images.top",
    overwrite: bool = False,
) -> Path:
    """Write a dataset in the LeRobot v3.0 layout, images embedded as PNG.

    Writes ``meta/info.json``, ``meta/tasks.parquet``, ``meta/episodes/chunk-000/file-000.parquet``
    (with a ``success`` column) and ``data/chunk-000/file-000.parquet`` (one row per frame) into a
    temporary folder next to `root`, then renames it into place: an interrupted save leaves no dataset.
    Episodes are renumbered 0..n-1 in order, as LeRobot expects. No ``stats.json`` is written.

    Args:
        dataset: the episodes to write.
        root: the dataset root to create.
        image_key: name of the camera feature.
        overwrite: replace `root` if it exists (otherwise an existing non-empty `root` is an error).

    Returns:
        `root` as a Path.

    Raises:
        VlaedgeError: `root` exists and is not empty while `overwrite` is False.
    """
    root = Path(root)
    tasks = list(dict.fromkeys(ep.instruction for ep in dataset.episodes))
    with _atomic_dir(root, overwrite) as tmp:
        _write_parquet(_data_table(dataset, image_key, tasks), tmp / "data/chunk-000/file-000.parquet")
        _write_parquet(_tasks_table(tasks), tmp / "meta/tasks.parquet")
        _write_parquet(_episodes_table(dataset), tmp / "meta/episodes/chunk-000/file-000.parquet")
        info = _info(dataset, image_key, len(tasks))
        (tmp / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root


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
    with _atomic_dir(path, overwrite) as tmp:
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
    dataset: EpisodeDataset, eval_fraction: float = 0.5, seed: int = 0
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


def _check_episode(ep: Episode, where: str) -> Episode:
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
                f"{where}: {name} is {value.dtype} {value.shape}, expected float [N, D]", _DATA_HINT
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
            f"{where}: instruction is {type(ep.instruction).__name__}, expected str", _DATA_HINT
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
                f"dataset: {ds.source} has {len(names)} {kind} names for {dim} dims", _DATA_HINT
            )


# --- LeRobot v3 -----------------------------------------------------------------------------------------


def _load_lerobot(root: Path, image_key: str | None) -> EpisodeDataset:
    info = _read_info(root)
    key = _image_key(info["features"], image_key, root)
    tasks = _read_tasks(root)
    files = sorted((root / "data").glob("*/*.parquet"))
    if not files:
        raise VlaedgeError(
            f"dataset: {root / 'data'} has no */*.parquet files", "re-download or re-export it"
        )
    episodes: dict[int, Episode] = {}
    for path in files:
        for ep in _episodes_in_file(path, key, tasks):
            if ep.index in episodes:
                raise VlaedgeError(
                    f"dataset: episode {ep.index} appears in two data files (one is {path})",
                    "remove the duplicate data file or re-export the dataset",
                )
            episodes[ep.index] = ep
    meta = _read_episodes_meta(root)
    for index in sorted(set(meta) | set(episodes)):
        length, success = meta.get(index, (None, None))
        found = len(episodes[index]) if index in episodes else 0
        if length is not None and found != length:
            raise VlaedgeError(
                f"dataset: {root}: episode {index} has {found} frames in data/, meta/episodes says {length}",
                "a data file is probably truncated; re-download or re-export the dataset",
            )
        if index in episodes:
            episodes[index].success = success
    if not episodes:
        raise VlaedgeError(f"dataset: {root} holds no frames", "record or convert at least one episode")
    first = next(iter(episodes.values()))
    features = info["features"]
    return EpisodeDataset(
        [episodes[i] for i in sorted(episodes)],
        float(info["fps"]),
        _feature_names(features.get("action"), first.action.shape[1], "action"),
        _feature_names(features.get("observation.state"), first.state.shape[1], "state"),
        str(root),
    )


def _read_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VlaedgeError(
            f"dataset: {path} is not readable JSON ({exc})", "re-download the dataset"
        ) from None
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise VlaedgeError(f"dataset: {path} has no 'features' mapping", "is this a LeRobot dataset?")
    version = str(info.get("codebase_version"))
    if not version.startswith("v3"):
        raise VlaedgeError(
            f"dataset: {root} is LeRobot codebase_version {version}, vlaedge reads v3.x",
            "convert it with LeRobot's convert_dataset_v21_to_v30 script",
        )
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0:
        raise VlaedgeError(f"dataset: {path} has fps={fps!r}, expected a positive number", "fix info.json")
    return info


def _image_key(features: dict, requested: str | None, root: Path) -> str:
    cameras = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") in ("image", "video")]
    preferred = [k for k in cameras if k == "observation.image" or k.startswith("observation.images.")]
    key = requested or next(iter(preferred or cameras), None)
    if key is None:
        raise VlaedgeError(
            f"dataset: {root}/meta/info.json has no image feature", "add a camera (dtype 'image')"
        )
    if key not in cameras:
        raise VlaedgeError(
            f"dataset: image key {key!r} is not a camera in {root}/meta/info.json; cameras: {cameras}",
            "pass one of these as the image key",
        )
    if features[key]["dtype"] == "video":
        raise VlaedgeError(
            f"dataset: camera {key!r} in {root} is stored as video (mp4); vlaedge does not decode video",
            "decode it with LeRobot (torchcodec/pyav) and re-save the frames as images (feature dtype "
            "'image', embedded PNG) or as .npz episodes",
        )
    return key


def _read_tasks(root: Path) -> dict[int, str]:
    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        raise VlaedgeError(
            f"dataset: {path} is missing", "re-download the dataset (LeRobot v3 stores tasks there)"
        )
    table = _read_parquet(path, ["task_index"], optional=["task", "__index_level_0__"])
    text = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if text is None:
        raise VlaedgeError(f"dataset: {path} has no 'task' column", "re-export it with LeRobot")
    return dict(zip(table["task_index"].to_pylist(), table[text].to_pylist(), strict=True))


def _read_episodes_meta(root: Path) -> dict[int, tuple[int, bool | None]]:
    """Episode index -> (length, success) from meta/episodes, when present."""
    meta = {}
    for path in sorted((root / "meta" / "episodes").glob("*/*.parquet")):
        table = _read_parquet(path, ["episode_index", "length"], optional=["success"])
        success = table["success"].to_pylist() if "success" in table.column_names else [None] * table.num_rows
        rows = zip(table["episode_index"].to_pylist(), table["length"].to_pylist(), success, strict=True)
        meta |= {index: (length, ok) for index, length, ok in rows}
    return meta


def _episodes_in_file(path: Path, key: str, tasks: dict[int, str]) -> list[Episode]:
    table = _read_parquet(path, [key, *_DATA_COLUMNS])
    if table.num_rows == 0:
        return []
    for name in ("episode_index", "frame_index", "task_index"):
        if table[name].null_count:
            raise VlaedgeError(f"dataset: {path}: column {name} has null values", "re-export the dataset")
    ep_of, frame_of, task_of = (table[c].to_numpy() for c in ("episode_index", "frame_index", "task_index"))
    state, action = _matrix(table, "observation.state", path), _matrix(table, "action", path)
    blobs = table[key].combine_chunks().field("bytes").to_pylist()
    episodes = []
    for index in np.unique(ep_of):
        rows = np.flatnonzero(ep_of == index)
        rows = rows[np.argsort(frame_of[rows], kind="stable")]
        where = f"dataset: {path}: episode {index}"
        task = int(task_of[rows[0]])
        if task not in tasks:
            raise VlaedgeError(
                f"{where}: task_index {task} is not in meta/tasks.parquet", "re-export the dataset"
            )
        images = _decode_frames([blobs[r] for r in rows], where)
        ep = Episode(tasks[task], images, state[rows], action[rows], index=int(index))
        episodes.append(_check_episode(ep, where))
    return episodes


def _matrix(table: pa.Table, name: str, path: Path) -> np.ndarray:
    """A list-of-numbers column as float32 [rows, D]."""
    col = table[name].combine_chunks()
    kind = col.type
    if pa.types.is_floating(kind) or pa.types.is_integer(kind):
        return col.to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if not is_list or not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise VlaedgeError(f"dataset: {path}: column {name} is {kind}, expected a list of floats", _DATA_HINT)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if col.null_count or (lengths != lengths[0]).any():
        raise VlaedgeError(
            f"dataset: {path}: column {name} has null rows or rows of different lengths",
            "every frame needs a complete vector; re-export the dataset",
        )
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), -1)


def _decode_frames(blobs: list[bytes | None], where: str) -> np.ndarray:
    """Decode one episode's PNG frames to uint8 [N, H, W, 3] (gray is repeated, alpha dropped)."""
    if None in blobs:
        raise VlaedgeError(
            f"{where}: frame {blobs.index(None)} has no embedded image bytes", "embed the images"
        )
    try:
        frames = decode_pngs(blobs)
    except PngError as exc:
        raise VlaedgeError(
            f"{where}: {exc}", "the camera column must hold 8-bit PNGs; re-encode it"
        ) from None
    rgb = [np.repeat(f, 3, axis=2) if f.shape[2] == 1 else f[:, :, :3] for f in frames]
    if len({f.shape for f in rgb}) > 1:
        raise VlaedgeError(
            f"{where}: frames have different sizes {sorted({f.shape for f in rgb})}", "resize them"
        )
    return np.stack(rgb)


def _feature_names(feature: dict | None, dim: int, prefix: str) -> list[str]:
    names = (feature or {}).get("names")
    if isinstance(names, dict):  # LeRobot v2 style: {"motors": [...]}
        names = [n for group in names.values() for n in group]
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return names
    return _default_names(prefix, dim)


def _default_names(prefix: str, dim: int) -> list[str]:
    return [f"{prefix}_{i}" for i in range(dim)]


def _read_parquet(path: Path, columns: list[str], optional: Sequence[str] = ()) -> pa.Table:
    try:
        pfile = pq.ParquetFile(path)
        names = pfile.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise VlaedgeError(
            f"dataset: {path} is not a readable parquet file ({exc})",
            "it is truncated or corrupt; re-export it",
        ) from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise VlaedgeError(f"dataset: {path} lacks column(s) {missing}; it has {names}", _DATA_HINT)
    try:
        return pfile.read(columns=[*columns, *(c for c in optional if c in names)])
    except (pa.ArrowException, OSError) as exc:
        raise VlaedgeError(f"dataset: {path} is corrupt ({exc})", "re-download or re-export it") from None


def _data_table(ds: EpisodeDataset, image_key: str, tasks: list[str]) -> pa.Table:
    lengths = [len(ep) for ep in ds.episodes]
    frame_index = np.concatenate([np.arange(n) for n in lengths])
    task_of = {task: i for i, task in enumerate(tasks)}
    pngs = pa.array([encode_png(image) for ep in ds.episodes for image in ep.images], pa.binary())
    images = pa.StructArray.from_arrays([pngs, pa.nulls(len(pngs), pa.string())], names=["bytes", "path"])
    return pa.table(
        {
            image_key: images,
            "observation.state": _fixed_list(np.concatenate([ep.state for ep in ds.episodes])),
            "action": _fixed_list(np.concatenate([ep.action for ep in ds.episodes])),
            "timestamp": pa.array((frame_index / ds.fps).astype(np.float32)),
            "frame_index": pa.array(frame_index, pa.int64()),
            "episode_index": pa.array(np.repeat(np.arange(len(lengths)), lengths), pa.int64()),
            "index": pa.array(np.arange(sum(lengths)), pa.int64()),
            "task_index": pa.array(
                np.repeat([task_of[ep.instruction] for ep in ds.episodes], lengths), pa.int64()
            ),
        }
    )


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).reshape(-1)), values.shape[1])


def _tasks_table(tasks: list[str]) -> pa.Table:
    """Task strings with their task_index; pandas metadata makes "task" the index, as LeRobot expects."""
    columns = [("task_index", "int64", "int64"), ("task", "unicode", "object")]
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": n, "field_name": n, "pandas_type": pt, "numpy_type": nt, "metadata": None}
            for n, pt, nt in columns
        ],
        "pandas_version": "2.2.0",
    }
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())}
    )
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


def _episodes_table(ds: EpisodeDataset) -> pa.Table:
    lengths = np.array([len(ep) for ep in ds.episodes], np.int64)
    ends = np.cumsum(lengths)
    zeros = pa.array(np.zeros(len(lengths), np.int64))
    return pa.table(
        {
            "episode_index": pa.array(np.arange(len(lengths)), pa.int64()),
            "tasks": pa.array([[ep.instruction] for ep in ds.episodes], pa.list_(pa.string())),
            "length": pa.array(lengths),
            "data/chunk_index": zeros,
            "data/file_index": zeros,
            "dataset_from_index": pa.array(ends - lengths),
            "dataset_to_index": pa.array(ends),
            "meta/episodes/chunk_index": zeros,
            "meta/episodes/file_index": zeros,
            "success": pa.array([ep.success for ep in ds.episodes], pa.bool_()),
        }
    )


def _info(ds: EpisodeDataset, image_key: str, num_tasks: int) -> dict:
    height, width, _ = ds.episodes[0].images.shape[1:]
    counters = ["frame_index", "episode_index", "index", "task_index"]
    scalar = {name: {"dtype": "int64", "shape": [1], "names": None} for name in counters}
    scalar["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    return {
        "codebase_version": "v3.0",
        "robot_type": None,
        "total_episodes": len(ds.episodes),
        "total_frames": ds.num_frames,
        "total_tasks": num_tasks,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": int(ds.fps) if float(ds.fps).is_integer() else ds.fps,
        "splits": {"train": f"0:{len(ds.episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": None,
        "features": {
            image_key: {
                "dtype": "image",
                "shape": [height, width, 3],
                "names": ["height", "width", "channel"],
            },
            "observation.state": {
                "dtype": "float32",
                "shape": [len(ds.state_names)],
                "names": ds.state_names,
            },
            "action": {"dtype": "float32", "shape": [len(ds.action_names)], "names": ds.action_names},
            **scalar,
        },
    }


# --- npz and file helpers ---------------------------------------------------------------------------------


def _load_npz(files: list[Path], source: str) -> EpisodeDataset:
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
        episodes.append(_check_episode(ep, f"dataset: {path}"))
    fps, state_names, action_names = first_meta
    action_names = action_names or _default_names("action", episodes[0].action.shape[1])
    state_names = state_names or _default_names("state", episodes[0].state.shape[1])
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


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


@contextmanager
def _atomic_dir(root: Path, overwrite: bool) -> Iterator[Path]:
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
