"""The LeRobot v3.0 dataset layout: `meta/info.json`, `meta/tasks.parquet`, `meta/episodes/**.parquet`
and `data/**.parquet` with images embedded as PNG (decoded with Pillow, `vlaedge.data.images`).
`vlaedge.data.load_dataset` reads it through `load_lerobot`; `save_lerobot` writes it atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlaedge.data.episodes import (
    DATA_HINT,
    Episode,
    EpisodeDataset,
    atomic_dir,
    check_episode,
    default_names,
)
from vlaedge.data.images import decode_images, encode_png
from vlaedge.errors import VlaedgeError

_DATA_COLUMNS = ["observation.state", "action", "episode_index", "frame_index", "task_index"]


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
    with atomic_dir(root, overwrite) as tmp:
        _write_parquet(_data_table(dataset, image_key, tasks), tmp / "data/chunk-000/file-000.parquet")
        _write_parquet(_tasks_table(tasks), tmp / "meta/tasks.parquet")
        _write_parquet(_episodes_table(dataset), tmp / "meta/episodes/chunk-000/file-000.parquet")
        info = _info(dataset, image_key, len(tasks))
        (tmp / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root




def load_lerobot(root: Path, image_key: str | None = None) -> EpisodeDataset:
    """Reads and validates a LeRobot v3.0 dataset root (see `vlaedge.data.load_dataset`)."""
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
        images = decode_images([blobs[r] for r in rows], where)
        ep = Episode(tasks[task], images, state[rows], action[rows], index=int(index))
        episodes.append(check_episode(ep, where))
    return episodes


def _matrix(table: pa.Table, name: str, path: Path) -> np.ndarray:
    """A list-of-numbers column as float32 [rows, D]."""
    col = table[name].combine_chunks()
    kind = col.type
    if pa.types.is_floating(kind) or pa.types.is_integer(kind):
        return col.to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if not is_list or not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise VlaedgeError(f"dataset: {path}: column {name} is {kind}, expected a list of floats", DATA_HINT)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if col.null_count or (lengths != lengths[0]).any():
        raise VlaedgeError(
            f"dataset: {path}: column {name} has null rows or rows of different lengths",
            "every frame needs a complete vector; re-export the dataset",
        )
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), -1)


def _feature_names(feature: dict | None, dim: int, prefix: str) -> list[str]:
    names = (feature or {}).get("names")
    if isinstance(names, dict):  # LeRobot v2 style: {"motors": [...]}
        names = [n for group in names.values() for n in group]
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return names
    return default_names(prefix, dim)



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
        raise VlaedgeError(f"dataset: {path} lacks column(s) {missing}; it has {names}", DATA_HINT)
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


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
