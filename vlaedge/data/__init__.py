"""Data: the episodes calibration and evaluation run on.

The public verb is `load_dataset` (a LeRobot v3 dataset root, a folder of .npz episodes or one .npz file ->
a validated `EpisodeDataset`). `episodes` holds the dataset model, the .npz layout and the split by
episode (`split_episodes`, `sample_frames`); `lerobot` reads and `lerobot_write` writes the LeRobot v3
layout, `lerobot_meta` checks every number and template of its metadata, `stats` reads meta/stats.json,
`images` decodes PNG cameras and `video` mp4 cameras (PyAV, lazily, by seeking); `summary` is what
`vlaedge data` prints and the frame-count check `compress` runs before any stage.
"""

from __future__ import annotations

from pathlib import Path

from vlaedge.data.episodes import (
    DATA_HINT,
    EVAL_FRACTION,
    Episode,
    EpisodeDataset,
    FrameBatch,
    iter_frames,
    sample_frames,
    split_as_recorded,
    split_episodes,
)
from vlaedge.data.lerobot import load_lerobot, save_lerobot
from vlaedge.data.npz import load_npz, save_npz
from vlaedge.errors import VlaedgeError

__all__ = [
    "EVAL_FRACTION",
    "Episode",
    "EpisodeDataset",
    "FrameBatch",
    "iter_frames",
    "load_dataset",
    "sample_frames",
    "save_lerobot",
    "save_npz",
    "split_as_recorded",
    "split_episodes",
]


def load_dataset(path: str | Path, image_key: str | None = None) -> EpisodeDataset:
    """Load a LeRobot v3.0 dataset root, a folder of .npz episodes or one .npz episode.

    A LeRobot root is recognised by ``meta/info.json``; every camera is loaded (PNG images in parquet
    are decoded now, mp4 video cameras lazily when frames are read, after the first and last frame of
    every video file were decoded here). The .npz layout is the one `save_npz` writes.

    Args:
        path: the dataset root, folder or file.
        image_key: LeRobot camera to put first (`Episode.images`, the frame batches' ``image``), e.g.
            ``"observation.images.top"``; default: the first ``observation.image(s)`` feature in info.json.
            Ignored for .npz.

    Returns:
        The validated dataset, episodes sorted by index.

    Raises:
        VlaedgeError: the path is missing or not a dataset, a file is truncated or corrupt, a column is
            missing, lengths disagree, images are not uint8 RGB, a video camera is not located in
            meta/episodes, a metadata number, shape, template or statistic is out of range (the file,
            field and value named), a video file does not decode to the frames meta/episodes and
            info.json promise, or state/action hold NaN/Inf.

    Example:
        >>> ds = load_dataset("datasets/pick_cube")  # doctest: +SKIP
        >>> ds.num_frames, ds.action_low()  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise VlaedgeError(f"dataset: {path} does not exist", DATA_HINT)
    if path.is_file():
        if path.suffix != ".npz":
            raise VlaedgeError(f"dataset: {path} is a file but not a .npz episode", DATA_HINT)
        return load_npz([path], str(path))
    if (path / "meta" / "info.json").is_file():
        return load_lerobot(path, image_key)
    files = sorted(path.glob("*.npz"))
    if not files:
        raise VlaedgeError(f"dataset: {path} has no meta/info.json and no .npz files", DATA_HINT)
    return load_npz(files, str(path))
