"""Checks on every number and template a LeRobot v3 dataset's metadata holds, before any of it is used.

`meta/info.json` and `meta/episodes/*.parquet` are believed nowhere else: a frame rate of 0, a NaN or huge
``from_timestamp``, a 300000x300000 video shape, a ``video_path`` template with an unknown key or a
``../`` in it, a camera without a shape each end here in one `VlaedgeError` naming the file, the field
and the value (not in a ZeroDivisionError, OverflowError or a 7 TiB allocation further on).
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path

from vlaedge.errors import VlaedgeError

MAX_FPS = 1000.0  # frames per second accepted in info.json (LeRobot datasets record at 10-200)
MIN_FPS = 0.1
MAX_SIDE = 8192  # pixels per side of a video camera (H.264's largest level is 8192x4320)
MAX_VIDEO_S = 1e6  # seconds into an mp4 file an episode may start (11.6 days of video)
TEMPLATE_KEYS = ("video_key", "chunk_index", "file_index")  # what LeRobot v3's video_path may name
_INDEX_SPEC = re.compile(r"0?\d{0,2}d?")  # format specs of an index in video_path, e.g. "03d"
FIX_INFO = "fix meta/info.json or re-export the dataset with LeRobot"
FIX_EPISODES = "fix meta/episodes or re-export the dataset with LeRobot"


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_fps(value, where: str) -> float:
    """A frame rate as a float in [MIN_FPS, MAX_FPS]; `where` names the file and field."""
    if not _number(value) or not MIN_FPS <= value <= MAX_FPS:
        raise VlaedgeError(f"dataset: {where} is {value!r}, expected frames per second in "
                           f"[{MIN_FPS:g}, {MAX_FPS:g}]", FIX_INFO)
    return float(value)


def check_index(value, where: str, fix: str = FIX_EPISODES) -> int:
    """A count or index: a non-negative integer (an integral float from a float column is accepted)."""
    if _number(value) and math.isfinite(value) and value == int(value) and value >= 0:
        return int(value)
    raise VlaedgeError(f"dataset: {where} is {value!r}, expected a non-negative integer", fix)


def check_timestamp(value, where: str) -> float:
    """An episode's start in its video file: finite seconds in [0, MAX_VIDEO_S]."""
    if not _number(value) or not 0.0 <= value <= MAX_VIDEO_S:
        raise VlaedgeError(f"dataset: {where} is {value!r}, expected seconds in [0, {MAX_VIDEO_S:g}]",
                           FIX_EPISODES)
    return float(value)


def check_features(features: dict, path: Path) -> None:
    """Each feature of info.json is a mapping with a string dtype and, when given, a shape of counts."""
    for key, feature in features.items():
        where = f"{path}: features[{key!r}]"
        if not isinstance(feature, dict) or not isinstance(feature.get("dtype"), str):
            raise VlaedgeError(f"dataset: {where} is {repr(feature)[:80]}, expected a mapping with a "
                               "'dtype' string", FIX_INFO)
        shape = feature.get("shape")
        if shape is not None and (not isinstance(shape, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and 0 < n < 2**31 for n in shape)):
            raise VlaedgeError(f"dataset: {where}.shape is {str(shape)[:80]}, expected a list of positive "
                               "integers", FIX_INFO)


def frame_size(feature: dict, key: str, path: Path) -> tuple[int, int]:
    """(height, width) of a video camera: info's ``video.height``/``video.width``, else its ``shape``
    ([H, W, C], or [C, H, W] when ``names`` puts the channels first), each in [1, MAX_SIDE]."""
    where = f"{path}: features[{key!r}]"
    video = feature.get("info")
    video = video if isinstance(video, dict) else {}
    if "video.height" in video or "video.width" in video:
        size = [(f"{where}.info['video.{n}']", video.get(f"video.{n}")) for n in ("height", "width")]
    else:
        shape = feature.get("shape")
        if not isinstance(shape, list) or len(shape) != 3:
            raise VlaedgeError(f"dataset: {where} is a video camera with shape {shape!r} and no "
                               "info['video.height'], expected a shape [height, width, 3]", FIX_INFO)
        names = feature.get("names")
        first = isinstance(names, list) and bool(names) and str(names[0]).startswith("channel")
        at = (1, 2) if first else (0, 1)
        size = [(f"{where}.shape[{i}]", shape[i]) for i in at]
    for name, value in size:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIDE:
            raise VlaedgeError(f"dataset: {name} is {value!r}, expected pixels in [1, {MAX_SIDE}] (the "
                               f"camera is {size[0][1]!r}x{size[1][1]!r} H x W)", FIX_INFO)
    return size[0][1], size[1][1]


def video_template(template, path: Path) -> str:
    """info.json's ``video_path``, checked: a relative path inside the dataset naming only
    `TEMPLATE_KEYS`, indices formatted as integers (e.g. ``chunk-{chunk_index:03d}``)."""
    where = f"dataset: {path}: video_path {repr(template)[:120]}"
    if not isinstance(template, str):
        raise VlaedgeError(f"{where} is not a string", FIX_INFO)
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise VlaedgeError(f"{where} is not a format template ({exc})", FIX_INFO) from None
    for field, spec, conversion in fields:
        index = field in ("chunk_index", "file_index")
        if field not in TEMPLATE_KEYS or conversion or spec and not (index and _INDEX_SPEC.fullmatch(spec)):
            raise VlaedgeError(f"{where} has the field {{{field}{'!' + conversion if conversion else ''}"
                               f"{':' + spec if spec else ''}}}, expected only {{video_key}}, "
                               "{chunk_index[:03d]} and {file_index[:03d]}", FIX_INFO)
    relative = Path(template.format(video_key="KEY", chunk_index=0, file_index=0))
    if relative.is_absolute() or ".." in relative.parts:
        raise VlaedgeError(f"{where} leads outside the dataset folder ({relative})", FIX_INFO)
    return template


def video_file(root: Path, template: str, key: str, chunk: int, file: int, path: Path) -> Path:
    """The mp4 that `template` (checked by `video_template`) names, refused unless inside `root`."""
    relative = Path(template.format(video_key=key, chunk_index=chunk, file_index=file))
    if relative.is_absolute() or ".." in relative.parts:
        raise VlaedgeError(f"dataset: {path}: video_path {template!r} for camera {key!r} gives {relative}, "
                           "which leads outside the dataset folder", FIX_INFO)
    return root / relative


def check_episode_row(row: dict, path: Path, videos: list[str]) -> dict:
    """One meta/episodes row with its numbers checked: episode_index and length non-negative integers,
    success a bool or null, and for each video camera of `videos` its chunk_index, file_index and
    from_timestamp (a missing one is reported by the loader, which knows the cameras in use)."""
    index = check_index(row.get("episode_index"), f"{path}: episode_index")
    where = f"{path}: episode {index}:"
    out = dict(row, episode_index=index)
    if row.get("length") is not None:
        out["length"] = check_index(row["length"], f"{where} length")
    if not isinstance(row.get("success"), bool | None):
        raise VlaedgeError(f"dataset: {where} success is {row['success']!r}, expected true, false or null",
                           FIX_EPISODES)
    for key in videos:
        for name in ("chunk_index", "file_index", "from_timestamp"):
            column = f"videos/{key}/{name}"
            if row.get(column) is None:
                continue
            check = check_timestamp if name == "from_timestamp" else check_index
            out[column] = check(row[column], f"{where} {column}")
    return out
