"""Dataset features -> model inputs: which feature feeds each input, its preprocessing, and the checks.

A policy says per model input which dataset feature feeds it (`DataInput`: ``observation.images.cam_high``,
``observation.state``, ``task``) and how it is preprocessed; `bind_data` resolves that against a loaded
dataset (with a user's ``data.map`` override), checks every mismatch before any stage runs, takes the
normalisation statistics (the checkpoint's, else the dataset's meta/stats.json) and stores the result
on the policy, so that calibration, the export check, drift and the profiler all build their feeds with
the same `make_inputs`. `DataBinding` is what is printed and recorded in the manifest.

Preprocessing (`image_feed`, `vector_feed`):
- images: uint8 HWC frames are resized (nearest) to the input's H x W and laid out CHW or HWC; a uint8
  input gets the pixels as they are; a float input gets pixel / 255 in [0, 1], then either scaled to the
  input's declared [low, high] (``normalize: none``) or standardised with per-channel mean/std given in
  [0, 1] units (``mean_std``, as LeRobot's stats.json stores them);
- vectors (state): as recorded (``none``), ``(x - mean) / std`` (``mean_std``) or mapped from [min, max]
  to [-1, 1] (``min_max``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace

import numpy as np

from vlaedge.errors import VlaedgeError

# the frame field a source falls back to in batches without dataset keys
GENERIC = {"image": "image", "state": "state", "instruction": "instruction",
           "instruction_mask": "instruction"}
_ALIASES = {"state": "observation.state", "instruction": "task"}  # generic frame field -> LeRobot feature
_COUNTERS = {"timestamp", "frame_index", "episode_index", "index", "task_index"}  # LeRobot bookkeeping
_STATS_KEYS = {"mean_std": ("mean", "std"), "min_max": ("min", "max")}
MAP_FIX = ("set the input's feature in the checkpoint's config.json, or map it without editing the "
           "checkpoint: recipe data: {map: {INPUT: FEATURE}}, or --set data.map.INPUT=FEATURE (vlaedge data: "
           "--map INPUT=FEATURE)")


@dataclass(frozen=True)
class DataInput:
    """Which dataset feature feeds one model input, and how.

    Attributes:
        input: the model input's name.
        source: "image", "state", "instruction", "instruction_mask" or "noise".
        feature: the dataset feature, e.g. ``observation.images.cam_high``; "image" means the first camera.
        layout: "CHW" or "HWC" for images.
        normalize: "none", "mean_std" or "min_max".
        stats: statistics from the checkpoint (``mean``/``std``/``min``/``max`` lists); None: the dataset's.
        history: observation steps the input holds on axis 1 ([B, history, ...]; 1: no history axis), as
            LeRobot's `n_obs_steps`.
    """

    input: str
    source: str
    feature: str
    layout: str = "CHW"
    normalize: str = "none"
    stats: dict | None = None
    history: int = 1


@dataclass
class DataBinding:
    """The resolved mapping: one row per fed input, the action feature and the cameras used."""

    rows: list[dict] = field(default_factory=list)
    action: dict = field(default_factory=dict)
    mapping: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def cameras(self) -> list[str]:
        return [r["feature"] for r in self.rows if r["source"] == "image"]

    def lines(self) -> list[str]:
        """What `compress` prints: one line per input, then the action comparison and any notes."""
        out = [f"data: {r['input']} <- {r['feature']} ({r['preprocess']})" for r in self.rows]
        if self.action:
            out.append(f"data: actions -> {self.action['feature']} ({self.action['dims']} dims, "
                       f"{self.action['units']})")
        return out + [f"data: note: {n}" for n in self.notes]

    def to_dict(self) -> dict:
        return {"inputs": self.rows, "action": self.action, "cameras": self.cameras, "map": self.mapping,
                "notes": self.notes}


def frame_field(frames: dict, feature: str, source: str):
    """The frame batch's values for `feature`; frames without dataset keys (the simulator's observations:
    ``image``, ``state``, ``instruction`` only) give the generic field of `source` instead.

    Raises:
        VlaedgeError: neither is in the batch.
    """
    if feature in frames:
        return frames[feature]
    generic = GENERIC.get(source)
    if generic in frames and "observation.state" not in frames:
        return frames[generic]
    raise VlaedgeError(f"frames: no {feature!r} in the frame batch (it has {sorted(frames)})", MAP_FIX)


def resize_nearest(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of uint8 [B, h, w, 3] to [B, height, width, 3] (identity when it fits)."""
    h, w = images.shape[1:3]
    if (h, w) == (height, width):
        return images
    rows = (np.arange(height) * h // height).astype(np.intp)
    cols = (np.arange(width) * w // width).astype(np.intp)
    return images[:, rows][:, :, cols]


def image_feed(images: np.ndarray, shape: tuple[int, ...], dtype: str, low: float, high: float,
               spec: DataInput, stats: dict | None) -> np.ndarray:
    """uint8 [B, H, W, 3] camera frames -> the input tensor of `shape` ([B, 3, H', W'] or [B, H', W', 3]).

    Raises:
        VlaedgeError: frames that are not uint8 RGB.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise VlaedgeError(f"frames: {spec.feature} has shape {images.shape} {images.dtype}, expected uint8 "
                           "[B, H, W, 3]", "store camera frames as RGB uint8")
    height, width = (shape[2], shape[3]) if spec.layout == "CHW" else (shape[1], shape[2])
    x = resize_nearest(images, height, width)
    if np.issubdtype(np.dtype(dtype), np.floating):
        x = x.astype(np.float32) / 255.0
        if spec.normalize == "mean_std":
            x = (x - _channel(stats["mean"])) / _channel(stats["std"])
        elif spec.normalize == "min_max":
            lo, hi = _channel(stats["min"]), _channel(stats["max"])
            x = (x - lo) / np.maximum(hi - lo, 1e-8) * 2.0 - 1.0
        else:
            x = low + x * (high - low)
    if spec.layout == "CHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=dtype)


def vector_feed(values, shape: tuple[int, ...], dtype: str, spec: DataInput,
                stats: dict | None) -> np.ndarray:
    """float [B, D] (state) -> the input tensor of `shape`, normalised as `spec` says."""
    x = np.asarray(values, np.float32)
    if spec.normalize == "mean_std":
        mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
        x = (x - mean) / np.maximum(std, 1e-8)
    elif spec.normalize == "min_max":
        lo, hi = np.asarray(stats["min"], np.float32), np.asarray(stats["max"], np.float32)
        x = (x - lo) / np.maximum(hi - lo, 1e-8) * 2.0 - 1.0
    return np.ascontiguousarray(x.reshape(shape), dtype=dtype)


def _channel(values) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(-1)[-3:]  # [3, 1, 1] (LeRobot) or [3] -> [3], HWC last


def resolve_stats(spec: DataInput, dataset_stats: dict) -> dict | None:
    """The statistics `spec.normalize` needs: the checkpoint's, else the dataset's (None: none needed or
    none found)."""
    if spec.normalize == "none":
        return None
    from vlaedge.data.stats import feature_stats  # the same lookup `vlaedge data` prints

    keys = _STATS_KEYS[spec.normalize]
    if spec.stats and all(k in spec.stats for k in keys):
        return {k: spec.stats[k] for k in keys}
    return feature_stats(dataset_stats, spec.feature, keys)


def bind_data(policy, dataset, mapping: dict[str, str] | None = None) -> DataBinding:
    """Resolve which dataset feature feeds each model input, check them all, and store it on `policy`.

    Checked before any stage runs, each mismatch one line naming the feature, the dataset's value, the
    policy's and the fix: a mapped feature the dataset lacks; a camera that is not RGB or an input that
    is not 3-channel; a state dimension or action dimension that differs; statistics a normalisation
    needs but neither the checkpoint nor meta/stats.json has; dataset actions outside the policy's range
    (a note, not an error: recorded actions may exceed the bounds a little).

    Args:
        policy: a `vlaedge.models.Policy`.
        dataset: a `vlaedge.data.EpisodeDataset` (its features, stats and first episode are read).
        mapping: model input name -> dataset feature, overriding the policy's (the recipe's ``data.map``);
            the key "action" names the action feature.

    Returns:
        The `DataBinding` (what to print and record in the manifest).

    Raises:
        VlaedgeError: the first mismatch, with the number of others.
    """
    mapping = dict(mapping or {})
    specs = {s.name: s for s in policy.input_spec}
    inputs = policy.data_inputs()
    features = describe_features(dataset)
    problems: list[tuple[str, str]] = []
    unknown = sorted(set(mapping) - {d.input for d in inputs} - {"action"})
    if unknown:
        problems.append((f"data.map: {unknown} are not inputs of the policy (inputs: "
                         f"{[d.input for d in inputs if d.source != 'noise']}, or 'action')",
                         "use the model input names from the policy's config.json"))
    rows, bound, stats = [], {}, {}
    for d in inputs:
        if d.source == "noise":
            continue
        d = replace(d, feature=_concrete(mapping.get(d.input, d.feature), dataset))
        info = features.get(d.feature)
        if info is None:
            close = difflib.get_close_matches(d.feature, list(features), n=1)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            problems.append((f"data: input {d.input!r} reads feature {d.feature!r}, which {dataset.source} "
                             f"does not have (it has {sorted(features)}){guess}", MAP_FIX))
            continue
        problem, preprocess = _check_input(d, specs[d.input], info)
        d_stats = resolve_stats(d, dataset.stats)
        if d.normalize != "none" and d_stats is None and problem is None:
            need = "/".join(_STATS_KEYS[d.normalize])
            problem = (f"data: input {d.input!r} is normalised ({d.normalize}) but neither config.json nor "
                       f"{dataset.source}/meta/stats.json has {need} for {d.feature!r}",
                       f"add \"stats\": {{{need}}} to the input in config.json, or compute meta/stats.json")
        if problem:
            problems.append(problem)
            continue
        rows.append({"input": d.input, "feature": d.feature, "source": d.source, "dataset": info["text"],
                     "preprocess": preprocess + (f", {d.normalize}" if d.normalize != "none" else "")})
        bound[d.input], stats[d.input] = d, d_stats
    action = _check_actions(policy, dataset, features, mapping.get("action", "action"), problems)
    if problems:
        others = "; ".join(m for m, _ in problems[1:])
        more = f" (and {len(problems) - 1} more: {others})" if others else ""
        raise VlaedgeError(problems[0][0] + more, problems[0][1])
    policy.bound, policy.bound_stats = bound, stats
    notes = _action_range_notes(policy, dataset, action)
    return DataBinding(rows, action, mapping, notes)


def _concrete(feature: str, dataset) -> str:
    """The generic names ("image": the first camera, "state", "instruction") as the dataset's keys."""
    if feature == "image":
        return (dataset.camera_keys or ["image"])[0]
    return _ALIASES.get(feature, feature)


def describe_features(dataset) -> dict[str, dict]:
    """feature -> {kind, shape, dtype, text} for what the loaded dataset can feed (the sizes actually
    loaded; LeRobot features vlaedge does not load are listed as kind "other")."""
    ep = dataset.episodes[0]
    cameras = {key: frames.shape[1:] for key, frames in ep.cameras.items()} or {"image": ep.images.shape[1:]}
    out = {}
    for key, info in dataset.features.items():
        if key in _COUNTERS:
            continue
        out[key] = {"kind": "other", "shape": tuple(info.get("shape") or ()), "dtype": str(info.get("dtype"))}
    for key, shape in cameras.items():
        storage = dataset.features.get(key, {}).get("storage", "in memory")
        out[key] = {"kind": "camera", "shape": tuple(shape), "dtype": "uint8", "storage": storage}
    out["observation.state"] = {"kind": "vector", "shape": (ep.state.shape[1],), "dtype": "float32"}
    out["action"] = {"kind": "vector", "shape": (ep.action.shape[1],), "dtype": "float32"}
    out["task"] = {"kind": "text", "shape": (), "dtype": "string"}
    for info in out.values():
        info["text"] = f"{info['kind']} {info['dtype']} {list(info['shape'])}"
    return out


def _check_input(d: DataInput, spec, info: dict) -> tuple[tuple[str, str] | None, str]:
    """(mismatch or None, preprocessing text) for one input against its dataset feature."""
    shape = list(spec.shape[2:] if d.history > 1 else spec.shape[1:])  # one observation step
    if d.source == "image":
        if info["kind"] != "camera":
            return (f"data: input {d.input!r} takes images, feature {d.feature!r} is {info['text']}",
                    MAP_FIX), ""
        channels = shape[0] if d.layout == "CHW" else shape[-1]
        if len(shape) != 3 or channels != 3:
            return (f"data: input {d.input!r} has shape {list(spec.shape)} ({d.layout}), an RGB camera needs "
                    f"3 channels", "declare the image input as [B, 3, H, W] (CHW) or [B, H, W, 3] (HWC)"), ""
        h, w = (shape[1], shape[2]) if d.layout == "CHW" else (shape[0], shape[1])
        scale = "pixels 0-255" if spec.dtype == "uint8" else f"{spec.dtype} [{spec.low:g}, {spec.high:g}]"
        size = f"{info['shape'][1]}x{info['shape'][0]} -> {w}x{h}, " if (h, w) != info["shape"][:2] else ""
        return None, f"{info.get('storage', '')}, {size}{d.layout}, {scale}".lstrip(", ")
    if d.source == "state":
        want = int(np.prod(shape))
        if info["kind"] != "vector":
            return (f"data: input {d.input!r} takes a {want}-dim vector, feature {d.feature!r} is "
                    f"{info['text']}; vlaedge feeds vectors from observation.state", MAP_FIX), ""
        if info["shape"] != (want,):
            return (f"data: feature {d.feature!r} has {info['shape'][0]} dims in the dataset, input "
                    f"{d.input!r} takes {want} ({list(spec.shape)})",
                    f"use a dataset recorded for this policy, or a policy built for {info['shape'][0]}-dim "
                    "state"), ""
        return None, f"{want} dims, {spec.dtype}"
    if info["kind"] != "text":
        return (f"data: input {d.input!r} takes the instruction, feature {d.feature!r} is {info['text']}",
                "map it to 'task'"), ""
    return None, f"tokens [{shape[-1]}]" if d.source == "instruction" else f"attention mask [{shape[-1]}]"


def _check_actions(policy, dataset, features: dict, feature: str, problems: list) -> dict:
    a = policy.action_spec
    info = features.get(feature)
    if info is None or info["kind"] != "vector":
        problems.append((f"data: action feature {feature!r} is not a vector in {dataset.source}",
                         "map 'action' to the dataset's action feature"))
        return {}
    if info["shape"] != (a.dim,):
        dims = info["shape"][0]
        problems.append((f"data: feature {feature!r} has {dims} dims in the dataset, the policy's "
                         f"actions have {a.dim} ({', '.join(a.names)})",
                         f"use a dataset recorded for this policy, or a policy built for {dims}-dim actions"))
        return {}
    return {"feature": feature, "dims": a.dim, "units": policy.dataset_action_units}


def _action_range_notes(policy, dataset, action: dict) -> list[str]:
    """Dims whose recorded actions leave the policy's [low, high] by more than 10% of the range."""
    a = policy.action_spec
    low, high = np.asarray(a.low, np.float32), np.asarray(a.high, np.float32)
    if action.get("units") == "normalised":
        low, high = -np.ones_like(low), np.ones_like(high)
    margin = 0.1 * (high - low)
    got_low, got_high = dataset.action_low(), dataset.action_high()
    out = [i for i in range(a.dim) if got_low[i] < low[i] - margin[i] or got_high[i] > high[i] + margin[i]]
    return [f"recorded {a.names[i]} spans [{got_low[i]:.3g}, {got_high[i]:.3g}], the policy's range is "
            f"[{low[i]:.3g}, {high[i]:.3g}] ({action['units']} units)" for i in out]
