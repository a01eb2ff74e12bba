"""The LeRobot v3.0 dataset layout: `meta/info.json`, `meta/tasks.parquet`, `meta/episodes/**.parquet`,
`meta/stats.json` (optional) and `data/**.parquet`; cameras are images embedded as PNG (decoded with
Pillow, `vlaedge.data.images`) or mp4 videos under `videos/` holding several episodes each (decoded
lazily with PyAV, `vlaedge.data.video`). Every camera is loaded, the first one is also `Episode.images`.
`vlaedge.data.load_dataset` reads it through `load_lerobot`; `save_lerobot` writes it atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlaedge import progress
from vlaedge.data.episodes import (
    DATA_HINT,
    Episode,
    EpisodeDataset,
    check_episode,
    default_names,
)
from vlaedge.data.images import decode_images
from vlaedge.data.lerobot_meta import (
    check_episode_row,
    check_features,
    check_fps,
    frame_size,
    video_file,
    video_template,
)
from vlaedge.data.lerobot_write import VIDEO_PATH, save_lerobot
from vlaedge.data.stats import read_stats
from vlaedge.data.video import VideoFrames, check_ends
from vlaedge.errors import VlaedgeError

__all__ = ["load_lerobot", "save_lerobot"]  # save_lerobot lives in lerobot_write

_DATA_COLUMNS = ["observation.state", "action", "episode_index", "frame_index", "task_index"]


def load_lerobot(root: Path, image_key: str | None = None) -> EpisodeDataset:
    """Reads and validates a LeRobot v3.0 dataset root (see `vlaedge.data.load_dataset`)."""
    info = _read_info(root)
    cameras = _camera_keys(info["features"], image_key, root)
    tasks = _read_tasks(root)
    video_keys = [k for k in cameras if info["features"][k]["dtype"] == "video"]
    meta = _read_episodes_meta(root, video_keys)
    videos = {k: _video_locator(root, info, k, meta) for k in video_keys}
    files = sorted((root / "data").glob("*/*.parquet"))
    if not files:
        raise VlaedgeError(
            f"dataset: {root / 'data'} has no */*.parquet files", "re-download or re-export it"
        )
    episodes: dict[int, Episode] = {}
    for path in progress.track(files, f"dataset: reading {root.name}/data files"):
        for ep in _episodes_in_file(path, cameras, tasks, videos):
            if ep.index in episodes:
                raise VlaedgeError(
                    f"dataset: episode {ep.index} appears in two data files (one is {path})",
                    "remove the duplicate data file or re-export the dataset",
                )
            episodes[ep.index] = ep
    for index in sorted(set(meta) | set(episodes)):
        length, success = (meta[index].get("length"), meta[index].get("success")) if index in meta else (None,
                                                                                                          None)
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
    sizes = {"observation.state": first.state.shape[1], "action": first.action.shape[1]}
    sizes |= dict.fromkeys(cameras, 3)  # per-channel camera statistics
    dataset = EpisodeDataset(
        [episodes[i] for i in sorted(episodes)],
        info["fps"],
        _feature_names(features.get("action"), first.action.shape[1], "action"),
        _feature_names(features.get("observation.state"), first.state.shape[1], "state"),
        str(root),
        features=_described(features, videos),
        stats=read_stats(root, sizes, tuple(cameras)),
    )
    check_ends([ep.cameras[k] for ep in dataset.episodes for k in videos])
    return dataset


def _read_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
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
    info["fps"] = check_fps(info.get("fps"), f"{path}: fps")
    check_features(info["features"], path)
    return info


def _camera_keys(features: dict, requested: str | None, root: Path) -> list[str]:
    """Every camera feature, the requested (else the first ``observation.image(s)``) one first."""
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
    return [key, *(k for k in cameras if k != key)]


def _video_locator(root: Path, info: dict, key: str, meta: dict[int, dict]):
    """episode index -> a `VideoFrames` maker (given the length) for a video camera, from meta/episodes
    (whose numbers `check_episode_row` checked) and info.json (checked here)."""
    path = root / "meta" / "info.json"
    template = video_template(info.get("video_path") or VIDEO_PATH, path)
    columns = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
    feature = info["features"][key]
    height, width = frame_size(feature, key, path)
    video = feature.get("info") if isinstance(feature.get("info"), dict) else {}
    fps = check_fps(video["video.fps"], f"{path}: features[{key!r}].info['video.fps']") if (
        "video.fps" in video) else info["fps"]
    where = {}
    for index, row in meta.items():
        if any(row.get(c) is None for c in columns):
            raise VlaedgeError(f"dataset: {root}/meta/episodes lacks {columns} for episode {index}",
                               "re-export the dataset with LeRobot v3 (video cameras need them)")
        chunk, file, start = (row[c] for c in columns)
        mp4 = video_file(root, template, key, chunk, file, path)
        where[index] = partial(VideoFrames, mp4, start, fps=fps, height=height, width=width)
    return where


def _described(features: dict, videos: dict) -> dict:
    """info.json's features with how each camera is stored (``storage``: "png in parquet" / "video av1")."""
    out = {}
    for key, f in features.items():
        if not isinstance(f, dict):
            continue
        out[key] = dict(f)
        if f.get("dtype") == "image":
            out[key]["storage"] = "image in parquet"
        elif f.get("dtype") == "video":
            video = f.get("info") if isinstance(f.get("info"), dict) else {}
            codec = str(video.get("video.codec", "?"))[:20]
            files = {make.args[0] for make in videos.get(key, {}).values()}
            out[key]["storage"] = f"video {codec} ({len(files)} mp4 file{'s' * (len(files) != 1)})"
    return out


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


def _read_episodes_meta(root: Path, videos: list[str]) -> dict[int, dict]:
    """Episode index -> its meta/episodes row (length, success, locations of the `videos` cameras), its
    numbers checked, when present."""
    meta = {}
    for path in sorted((root / "meta" / "episodes").glob("*/*.parquet")):
        extra = ["success", *(f"videos/{k}/{c}" for k in videos
                              for c in ("chunk_index", "file_index", "from_timestamp"))]
        table = _read_parquet(path, ["episode_index", "length"], optional=extra)
        for row in table.to_pylist():
            row = check_episode_row(row, path, videos)
            meta[row["episode_index"]] = row
    return meta


def _episodes_in_file(path: Path, cameras: list[str], tasks: dict[int, str], videos: dict) -> list[Episode]:
    images = [k for k in cameras if k not in videos]
    table = _read_parquet(path, [*images, *_DATA_COLUMNS])
    if table.num_rows == 0:
        return []
    for name in ("episode_index", "frame_index", "task_index"):
        if table[name].null_count or not pa.types.is_integer(table[name].type):
            raise VlaedgeError(f"dataset: {path}: column {name} is {table[name].type} with "
                               f"{table[name].null_count} nulls, expected integers without nulls",
                               "re-export the dataset")
    ep_of, frame_of, task_of = (table[c].to_numpy() for c in ("episode_index", "frame_index", "task_index"))
    state, action = _matrix(table, "observation.state", path), _matrix(table, "action", path)
    blobs = {k: table[k].combine_chunks().field("bytes").to_pylist() for k in images}
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
        frames = {}
        for key in cameras:
            if key in videos:
                if int(index) not in videos[key]:
                    raise VlaedgeError(f"{where}: not in meta/episodes, so camera {key} cannot be located",
                                       "re-export the dataset")
                frames[key] = videos[key][int(index)](length=len(rows))
            else:
                frames[key] = decode_images([blobs[key][r] for r in rows], f"{where}: {key}")
        ep = Episode(tasks[task], frames[cameras[0]], state[rows], action[rows], index=int(index),
                     cameras=frames)
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
