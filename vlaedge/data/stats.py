"""A dataset's normalisation statistics (LeRobot's ``meta/stats.json``): read and checked once, at load
(`read_stats`), and looked up through one function (`feature_stats`) by both `vlaedge data`, which prints
them, and compress, which normalises with them (`vlaedge.models.preprocess.resolve_stats`). Statistics are
never computed from the frames in their place: a policy must be fed with the statistics it was trained
with, so a dataset without them is shown as having none, and an input that needs them is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from vlaedge.errors import VlaedgeError

STAT_KEYS = ("mean", "std", "min", "max")  # what vlaedge reads; other keys (count, q01, ...) are left alone
_FIX = "fix or delete meta/stats.json (LeRobot recomputes it), or re-download the dataset"


def read_stats(root: Path, sizes: dict[str, int], cameras: tuple[str, ...] = ()) -> dict:
    """meta/stats.json, checked: feature -> {mean, std, min, max, ...}; {} when the file is absent.

    Args:
        root: the dataset root.
        sizes: feature -> number of values each statistic must hold (3 for a camera, per channel; the
            state and action dims); other features' statistics are only checked to be numbers.
        cameras: the camera features, whose std must be positive (pixels are divided by it).

    Returns:
        The file's mapping, unchanged.

    Raises:
        VlaedgeError: unreadable JSON, not a mapping of mappings, a statistic that is not finite numbers
            (strings, NaN), of the wrong size, a negative std (zero for a camera) or a min above its max.
    """
    path = root / "meta" / "stats.json"
    if not path.is_file():
        return {}
    try:
        stats = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise VlaedgeError(f"dataset: {path} is not readable JSON ({exc})", _FIX) from None
    if not isinstance(stats, dict):
        raise VlaedgeError(f"dataset: {path} is a {type(stats).__name__}, expected a mapping of feature -> "
                           "statistics", _FIX)
    for feature, entry in stats.items():
        if not isinstance(entry, dict):
            raise VlaedgeError(f"dataset: {path}: {feature!r} is {str(entry)[:60]!r}, expected a mapping "
                               f"with {'/'.join(STAT_KEYS)}", _FIX)
        values = {k: _finite(entry[k], f"{path}: {feature}.{k}", sizes.get(feature))
                  for k in STAT_KEYS if k in entry}
        _check_ranges(values, f"{path}: {feature}", feature in cameras)
    return stats


def _check_ranges(values: dict[str, np.ndarray], where: str, camera: bool) -> None:
    """std >= 0 (> 0 for a camera, whose pixels are divided by it) and min <= max."""
    std = values.get("std")
    if std is not None and ((std < 0).any() or camera and (std == 0).any()):
        raise VlaedgeError(f"dataset: {where}.std has the value {std.min():g}, expected "
                           f"{'positive' if camera else 'non-negative'} values", _FIX)
    low, high = values.get("min"), values.get("max")
    if low is not None and high is not None and low.shape == high.shape and (low > high).any():
        i = int(np.argmax(low > high))
        raise VlaedgeError(f"dataset: {where}.min[{i}] = {low[i]:g} is above max[{i}] = {high[i]:g}", _FIX)


def _finite(value, where: str, size: int | None) -> np.ndarray:
    """A statistic (a number or nested lists of numbers) as float64 [n]; `size`: the n it must have."""
    flat: list = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item):
            flat.append(item)
        else:
            raise VlaedgeError(f"dataset: {where} holds {repr(item)[:40]}, expected finite numbers", _FIX)
    if size is not None and len(flat) != size:
        raise VlaedgeError(f"dataset: {where} has {len(flat)} values, the feature has {size}", _FIX)
    return np.asarray(flat, np.float64)


def feature_stats(stats: dict, feature: str, keys: tuple[str, ...] = STAT_KEYS) -> dict | None:
    """The statistics `keys` of one feature from a dataset's (checked) stats, or None when any is missing.

    Args:
        stats: `EpisodeDataset.stats` (meta/stats.json; {} when the dataset has none).
        feature: e.g. ``observation.state``.
        keys: the statistics wanted, e.g. ("mean", "std") for ``mean_std`` normalisation.

    Returns:
        {key: the values as stored} or None.

    Example:
        >>> feature_stats({"action": {"mean": [0.0], "std": [1.0]}}, "action", ("mean", "std"))
        {'mean': [0.0], 'std': [1.0]}
    """
    entry = stats.get(feature)
    if not isinstance(entry, dict) or not all(k in entry for k in keys):
        return None
    return {k: entry[k] for k in keys}
