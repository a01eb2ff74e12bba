"""What a dataset holds, for `vlaedge data DATASET` (`summarize`) and the up-front count check of `compress`
(`check_counts`): episodes, frames, fps, the calibration/evaluation split compress makes, features with
shapes/dtypes, cameras and how they are stored, task strings and stats.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from vlaedge.data.episodes import EVAL_FRACTION, EpisodeDataset, split_episodes
from vlaedge.data.stats import STAT_KEYS, feature_stats
from vlaedge.errors import VlaedgeError

_COUNTERS = {"timestamp", "frame_index", "episode_index", "index", "task_index"}


def summarize(dataset: EpisodeDataset) -> str:
    """A dataset's contents as text: counts, every feature (shape, dtype, storage), cameras, tasks, stats.

    Args:
        dataset: a loaded dataset (`vlaedge.data.load_dataset`).

    Returns:
        Lines of text, as `vlaedge data` prints them.

    Example:
        >>> print(summarize(load_dataset("datasets/aloha_sim")))  # doctest: +SKIP
    """
    lengths = [len(ep) for ep in dataset.episodes]
    lines = [
        f"dataset: {dataset.source}",
        f"episodes: {len(lengths)}, frames: {sum(lengths)} (per episode {min(lengths)}-{max(lengths)}, "
        f"mean {np.mean(lengths):.1f}), fps: {dataset.fps:g}",
    ]
    if len(lengths) >= 2:
        calibration, evaluation = split_episodes(dataset, EVAL_FRACTION, 0)
        lines.append(f"split (compress, by episode, seed 0): calibration {calibration.num_frames} frames "
                     f"({len(calibration.episodes)} episodes) for quantize.num_calib_frames / "
                     "prune.num_frames, "
                     f"evaluation {evaluation.num_frames} frames ({len(evaluation.episodes)} episodes) for "
                     "verify.eval_frames")
    lines.append("features:")
    ep = dataset.episodes[0]
    cameras = dict(ep.cameras) or {"image": ep.images}
    features = dict(dataset.features) or {
        "image": {"dtype": "image", "shape": list(ep.images.shape[1:]), "storage": "npz"},
        "observation.state": {"dtype": "float32", "shape": [ep.state.shape[1]]},
        "action": {"dtype": "float32", "shape": [ep.action.shape[1]]},
    }
    for key, info in features.items():
        if key in _COUNTERS:
            continue
        vector = key in ("observation.state", "action")
        role = "camera" if key in cameras else "vector" if vector else "not loaded"
        storage = f", {info['storage']}" if "storage" in info else ""
        names = info.get("names")
        named = f", names {names[:4]}{'...' if len(names) > 4 else ''}" if isinstance(names, list) and (
            role == "vector") else ""
        lines.append(f"  {key}: {info.get('dtype')} {list(info.get('shape') or [])} ({role}{storage}{named})")
    lines.append(f"cameras: {', '.join(cameras)} (the first one is the default image input)")
    tasks = Counter(e.instruction for e in dataset.episodes)
    lines.append(f"tasks: {len(tasks)}")
    lines += [f"  {task!r}: {n} episode{'s' * (n != 1)}" for task, n in tasks.most_common(10)]
    if len(tasks) > 10:
        lines.append(f"  ... and {len(tasks) - 10} more")
    lines += _stats_lines(dataset)
    return "\n".join(lines)


def _stats_lines(dataset: EpisodeDataset) -> list[str]:
    """meta/stats.json as compress reads it (`feature_stats`): never statistics computed from the frames,
    which compress would not normalise with."""
    if not dataset.stats:
        return ["stats: none (no meta/stats.json): an input normalised with mean_std or min_max needs its "
                "statistics in the checkpoint's config.json"]
    out = ["stats (meta/stats.json):"]
    for key in ("observation.state", "action"):
        for name in STAT_KEYS:
            x = feature_stats(dataset.stats, key, (name,))
            if x is not None:
                x = np.asarray(x[name], np.float64).reshape(-1)
                shown = ", ".join(f"{a:.3g}" for a in x[:32]) + (", ..." if len(x) > 32 else "")  # ALOHA: 14
                out.append(f"  {key}.{name}: [{shown}]")
    for key in dataset.camera_keys:
        given = feature_stats(dataset.stats, key, ("mean", "std"))
        if given is not None:
            mean, std = (np.asarray(given[k], np.float64).reshape(-1) for k in ("mean", "std"))
            out.append(f"  {key}: mean RGB {np.round(mean, 3).tolist()}, std {np.round(std, 3).tolist()} "
                       "(pixels in [0, 1])")
    missing = [k for k in ("observation.state", "action", *dataset.camera_keys)
               if not any(feature_stats(dataset.stats, k, (name,)) for name in STAT_KEYS)]
    if missing:
        out.append(f"  none for {', '.join(missing)}: an input normalised from them needs its statistics in "
                   "the checkpoint's config.json")
    return out


def check_counts(dataset: EpisodeDataset, calibration: EpisodeDataset,
                 needs: dict[str, int | tuple[int, str]]) -> None:
    """Check, before any stage runs, that the calibration split has the frames each recipe field asks for.

    Args:
        dataset: the whole dataset (named in the message).
        calibration: its calibration split.
        needs: recipe field -> frames it needs, e.g. ``{"quantize.num_calib_frames": 256}``, or ->
            (frames, fix) where lowering the field itself is not the fix.

    Raises:
        VlaedgeError: one line naming the field, the frames it needs and the frames the split has.
    """
    have = calibration.num_frames
    needs = {k: v if isinstance(v, tuple) else (v, f"lower it (--set {k}={have}) or add episodes")
             for k, v in needs.items()}
    short = {k: v for k, v in needs.items() if v[0] > have}
    if short:
        field, (n, fix) = max(short.items(), key=lambda kv: kv[1][0])
        raise VlaedgeError(
            f"data: {field} needs {n} frames, the calibration split of {dataset.source} has {have} "
            f"({len(calibration.episodes)} of {len(dataset.episodes)} episodes)", fix)
