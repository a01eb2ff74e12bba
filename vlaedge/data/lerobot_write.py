"""Writing the LeRobot v3.0 layout (`save_lerobot`): parquet frames with PNG cameras, or one mp4 per camera
holding every episode (`vlaedge.data.video.encode_video`), plus meta/info.json, tasks, episodes and stats.
`vlaedge.data.lerobot` reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlaedge.data.episodes import EpisodeDataset, atomic_dir
from vlaedge.data.images import encode_png
from vlaedge.data.video import encode_video

VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"  # LeRobot's default


def save_lerobot(
    dataset: EpisodeDataset,
    root: str | Path,
    image_key: str = "observation.images.top",
    overwrite: bool = False,
    video_codec: str | None = None,
    stats: bool = True,
) -> Path:
    """Write a dataset in the LeRobot v3.0 layout, cameras as PNG images or as mp4 video.

    Writes ``meta/info.json``, ``meta/tasks.parquet``, ``meta/episodes/chunk-000/file-000.parquet``
    (with a ``success`` column), ``meta/stats.json`` and ``data/chunk-000/file-000.parquet`` (one row per
    frame) into a temporary folder next to `root`, then renames it into place: an interrupted save leaves
    no dataset. Episodes are renumbered 0..n-1 in order, as LeRobot expects. With `video_codec` each
    camera is one ``videos/<key>/chunk-000/file-000.mp4`` holding every episode, located by
    ``from_timestamp``/``to_timestamp`` in meta/episodes, as LeRobot records by default.

    Args:
        dataset: the episodes to write.
        root: the dataset root to create.
        image_key: name of the camera feature when the episodes have no named `Episode.cameras`.
        overwrite: replace `root` if it exists (otherwise an existing non-empty `root` is an error).
        video_codec: "av1", "h264" or "hevc" to store cameras as video; None: PNG in parquet.
        stats: write meta/stats.json (mean/std/min/max per feature, images per channel in [0, 1]).

    Returns:
        `root` as a Path.

    Raises:
        VlaedgeError: `root` exists and is not empty while `overwrite` is False.
    """
    root = Path(root)
    tasks = list(dict.fromkeys(ep.instruction for ep in dataset.episodes))
    cameras = {k: [np.asarray(ep.cameras[k]) for ep in dataset.episodes] for k in dataset.camera_keys} or {
        image_key: [np.asarray(ep.images) for ep in dataset.episodes]}
    with atomic_dir(root, overwrite) as tmp:
        images = {} if video_codec else cameras
        _write_parquet(_data_table(dataset, images, tasks), tmp / "data/chunk-000/file-000.parquet")
        _write_parquet(_tasks_table(tasks), tmp / "meta/tasks.parquet")
        videos = {k: _write_video(tmp, k, v, dataset.fps, video_codec) for k, v in cameras.items()
                  if video_codec}
        _write_parquet(_episodes_table(dataset, videos), tmp / "meta/episodes/chunk-000/file-000.parquet")
        info = _info(dataset, cameras, video_codec, len(tasks))
        (tmp / "meta/info.json").write_text(json.dumps(info, indent=4))
        if stats:
            (tmp / "meta/stats.json").write_text(json.dumps(_stats(dataset, cameras), indent=4))
    return root


def _write_video(tmp: Path, key: str, frames: list[np.ndarray], fps: float, codec: str) -> np.ndarray:
    """One mp4 for all episodes of a camera; returns each episode's from_timestamp (s)."""
    encode_video(np.concatenate(frames), tmp / f"videos/{key}/chunk-000/file-000.mp4", fps, codec)
    return np.cumsum([0] + [len(f) for f in frames])[:-1] / fps


def _stats(ds: EpisodeDataset, cameras: dict[str, list[np.ndarray]]) -> dict:
    """LeRobot's meta/stats.json: per feature mean/std/min/max/count; images per channel, in [0, 1]."""
    out = {}
    for name, values in (("observation.state", [ep.state for ep in ds.episodes]),
                         ("action", [ep.action for ep in ds.episodes])):
        v = np.concatenate(values).astype(np.float64)
        out[name] = {"mean": v.mean(0).tolist(), "std": v.std(0).tolist(), "min": v.min(0).tolist(),
                     "max": v.max(0).tolist(), "count": [len(v)]}
    for key, frames in cameras.items():
        v = np.concatenate(frames).reshape(-1, 3).astype(np.float64) / 255.0
        channel = {"mean": v.mean(0), "std": v.std(0), "min": v.min(0), "max": v.max(0)}
        out[key] = {k: x.reshape(3, 1, 1).tolist() for k, x in channel.items()} | {
            "count": [sum(len(f) for f in frames)]}
    return out




def _data_table(ds: EpisodeDataset, cameras: dict[str, list[np.ndarray]], tasks: list[str]) -> pa.Table:
    lengths = [len(ep) for ep in ds.episodes]
    frame_index = np.concatenate([np.arange(n) for n in lengths])
    task_of = {task: i for i, task in enumerate(tasks)}
    images = {}
    for key, frames in cameras.items():
        pngs = pa.array([encode_png(image) for ep in frames for image in ep], pa.binary())
        images[key] = pa.StructArray.from_arrays([pngs, pa.nulls(len(pngs), pa.string())],
                                                 names=["bytes", "path"])
    return pa.table(
        {
            **images,
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


def _episodes_table(ds: EpisodeDataset, videos: dict[str, np.ndarray]) -> pa.Table:
    lengths = np.array([len(ep) for ep in ds.episodes], np.int64)
    ends = np.cumsum(lengths)
    zeros = pa.array(np.zeros(len(lengths), np.int64))
    located = {}
    for key, starts in videos.items():
        located |= {f"videos/{key}/chunk_index": zeros, f"videos/{key}/file_index": zeros,
                    f"videos/{key}/from_timestamp": pa.array(starts),
                    f"videos/{key}/to_timestamp": pa.array(starts + lengths / ds.fps)}
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
            **located,
            "success": pa.array([ep.success for ep in ds.episodes], pa.bool_()),
        }
    )


def _info(ds: EpisodeDataset, cameras: dict[str, list[np.ndarray]], codec: str | None,
          num_tasks: int) -> dict:
    fps = int(ds.fps) if float(ds.fps).is_integer() else ds.fps
    features = {}
    for key, frames in cameras.items():
        height, width, _ = frames[0].shape[1:]
        features[key] = {"dtype": "video" if codec else "image", "shape": [height, width, 3],
                         "names": ["height", "width", "channels"]}
        if codec:
            features[key]["info"] = {"video.height": height, "video.width": width, "video.codec": codec,
                                     "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                                     "video.fps": fps, "video.channels": 3, "has_audio": False}
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
        "fps": fps,
        "splits": {"train": f"0:{len(ds.episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": VIDEO_PATH if codec else None,
        "features": {
            **features,
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
