"""Before a closed loop on a user's env: do its action and observation spaces fit the policy?

`check_spaces(env, adapter, policy, action_spec)` reads the env's `action_space` and `observation_space`
(`gymnasium.spaces.Box` / `Dict` of `Box`, or anything duck-typed with `spaces` / `shape`, `dtype`, `low`,
`high`; an env without them, or with other space kinds, is not checked) and refuses, with one line, what
would otherwise crash inside the env or pass silently:

- actions: a different action dimension, or the policy's [low, high] outside the box (`[-1, 1]`
  actions sent to gym-pusht's `[0, 512]` box);
- observations: a deterministic sample of the observation space goes through the adapter (none: the
  observation itself must be the frame dict), and what comes out must feed the policy's inputs: an
  `image` that is uint8 RGB [H, W, 3] (any H x W: it is resized as dataset frames are, see
  `vlaedge.models.preprocess.image_feed`), a `state` with the input's number of values, an `instruction`
  string where the adapter returns one (an env without language is fed ""). A policy with several
  cameras needs one frame per camera, keyed by the camera's feature name (``observation.images.cam_high``);
  one ``image`` for all of them is refused. A key the adapter reads that the space lacks, or a frame key
  the policy reads that the adapter does not return, is named with the keys found; a mismatch names the
  env's observation key (traced back through the adapter when it passes the value on) and both shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vlaedge.errors import VlaedgeError
from vlaedge.models.preprocess import GENERIC

ADAPTER_FIX = ("set verify.env_adapter to a function mapping the env's observation to {'image': uint8 "
               "[H, W, 3], 'state': float [S], 'instruction': str}")


def check_spaces(env, adapter: Callable[[Any], dict] | None = None, policy: Any = None,
                 action_spec: Any = None) -> None:
    """Refuses an env whose spaces do not fit the policy, before any episode (nothing is reset or stepped).

    Args:
        env: one env built by the user's `make_env`; its `action_space` / `observation_space` are read.
        adapter: env observation -> frame dict, or None (the observation is the frame dict).
        policy: the policy whose inputs the frames feed (`input_spec`, `fed`); None: observations unchecked.
        action_spec: the policy's `ActionSpec`; None: actions unchecked.

    Raises:
        VlaedgeError: the first misfit, one line naming the key or dimension and both shapes or bounds.

    Example:
        >>> check_spaces(gym.make("gym_pusht/PushT-v0", obs_type="pixels_agent_pos"), adapt, policy,
        ...              policy.action_spec)
    """
    if action_spec is not None:
        _check_actions(getattr(env, "action_space", None), action_spec)
    if policy is not None:
        _check_observations(getattr(env, "observation_space", None), adapter, policy)


def _check_actions(space, action_spec) -> None:
    if space is None or not hasattr(space, "shape"):
        return
    low, high = np.asarray(action_spec.low, np.float64), np.asarray(action_spec.high, np.float64)
    shape = tuple(int(d) for d in (space.shape or ()))
    if shape != (low.size,):
        raise VlaedgeError(
            f"env: action space has shape {shape}, the policy's actions have shape ({low.size},) "
            f"({', '.join(action_spec.names)})",
            "use a policy with the env's action dimension, or wrap the env so its actions match the policy's",
        )
    env_low = np.broadcast_to(np.asarray(getattr(space, "low", -np.inf), np.float64), shape)
    env_high = np.broadcast_to(np.asarray(getattr(space, "high", np.inf), np.float64), shape)
    tol = 1e-6 * np.maximum(1.0, np.abs(np.concatenate([env_low, env_high])).max(initial=1.0))
    outside = (low < env_low - tol) | (high > env_high + tol)
    if outside.any():
        raise VlaedgeError(
            f"env: the policy's action bounds low={_fmt(low)} high={_fmt(high)} leave the env's action "
            f"space low={_fmt(env_low)} high={_fmt(env_high)} (dims "
            f"{', '.join(action_spec.names[i] for i in np.flatnonzero(outside))})",
            f"check that the policy was trained for this env: its bounds come from "
            f"{action_spec.bounds_from}, which must be in the env's units; or wrap the env to rescale "
            "actions",
        )


def _check_observations(space, adapter, policy) -> None:
    sample = _sample(space, np.random.default_rng(0))
    if sample is None:
        return
    keys = sorted(map(str, sample)) if isinstance(sample, dict) else []
    try:
        frame = adapter(sample) if adapter is not None else sample
    except (KeyError, IndexError) as e:  # a key the space lacks (IndexError: a str index into a Box array)
        what = (f"reads {e.args[0]!r}, which the env's observation space does not have (observation keys: "
                f"{keys})" if isinstance(e, KeyError) and isinstance(sample, dict) else
                f"fails on the env's observations, {_describe(sample)} ({type(e).__name__}: {e})")
        raise VlaedgeError(f"env: the adapter {what}",
                           "read the env's own keys in the adapter, or make the env with the observations "
                           "the adapter expects (gym-pusht: obs_type='pixels_agent_pos')") from None
    if not isinstance(frame, dict):
        what = "the adapter returned" if adapter is not None else "observations are"
        raise VlaedgeError(f"env: {what} {_describe(frame)}, not a dict of frames", ADAPTER_FIX)
    fed = [(spec, policy.fed(spec.name)[0]) for spec in policy.input_spec]
    cameras = [d.feature for _, d in fed if d.source == "image"]
    for spec, d in fed:
        if d.source not in GENERIC:  # noise: not from the env
            continue
        key = d.feature if d.feature in frame else GENERIC[d.source]
        if d.source == "image" and len(cameras) > 1 and d.feature not in frame:
            raise VlaedgeError(
                f"env: the policy reads {len(cameras)} cameras ({', '.join(cameras)}) and the "
                f"{'adapter' if adapter is not None else 'observation'} gives "
                f"{'one image' if 'image' in frame else f'none of them (keys: {sorted(map(str, frame))})'}"
                f", so input {spec.name!r} would not see its own camera",
                "return each camera under its feature name from the adapter, e.g. "
                + ", ".join(f"{c!r}: uint8 [H, W, 3]" for c in cameras))
        if key not in frame and d.source in ("instruction", "instruction_mask"):
            continue  # an env without language: the closed loop feeds "" (the space describes arrays only)
        if key not in frame:
            whose = "the adapter's output" if adapter is not None else "the observation"
            raise VlaedgeError(
                f"env: {whose} has no {key!r}, which input {spec.name!r} reads ({whose} keys: "
                f"{sorted(map(str, frame))})",
                f"return {key!r} from the adapter" if adapter is not None else ADAPTER_FIX)
        where = _where(frame[key], sample, key, adapter is not None)
        _check_value(frame[key], where, d, spec)


def _check_value(value, where: str, d, spec) -> None:
    """One frame value against the input it feeds (`d`: its `DataInput`, `spec`: its `TensorSpec`)."""
    shape = list(spec.shape)
    if d.source == "image":
        x = np.asarray(value)
        if x.ndim != 3 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise VlaedgeError(
                f"env: {where} is {x.dtype} {tuple(x.shape)}, input {spec.name!r} ({shape} {spec.dtype}, "
                f"{d.layout}) is fed from uint8 RGB frames [H, W, 3]",
                "return the camera frame as uint8 [H, W, 3] from the adapter (e.g. np.moveaxis for CHW, "
                "(x * 255).astype(np.uint8) for [0, 1] floats)")
    elif d.source == "state":
        x = np.asarray(value)
        want = int(np.prod([int(n) for n in shape[1 + (d.history > 1):]]))  # one step of a history
        if x.size != want or not np.issubdtype(x.dtype, np.number):
            raise VlaedgeError(
                f"env: {where} has shape {tuple(x.shape)} {x.dtype}, input {spec.name!r} takes ({want},) "
                f"({shape} {spec.dtype})",
                "use a policy built for the env's state, or map the env's observation to the policy's "
                "state in the adapter")
    elif not isinstance(value, str):
        raise VlaedgeError(f"env: {where} is {_describe(value)}, input {spec.name!r} takes an instruction "
                           "string", "return 'instruction': str (the task's words) from the adapter")


def _where(value, sample, key: str, adapted: bool) -> str:
    """Which env observation key a frame value came from: the adapter's output traced back to the sample
    it was given (the same array, or equal values), else the adapter's own key."""
    if not adapted:
        return f"observation {key!r}"
    candidates = sample.items() if isinstance(sample, dict) else [(None, sample)]
    for name, v in candidates:
        if value is v or _same(value, v):
            return "the observation" if name is None else f"observation {name!r}"
    return f"the adapter's {key!r}"


def _same(a, b) -> bool:
    if not (isinstance(b, np.ndarray) and np.shape(a) == b.shape and b.size):
        return False
    a = np.asarray(a)
    if not (np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number)):
        return False
    return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-6, atol=0.0))


def _sample(space, rng: np.random.Generator):
    """A deterministic observation of `space` (a Box: uniform within its finite bounds; a Dict: one per
    key), or None for a space this check does not know (it is then not checked)."""
    subs = getattr(space, "spaces", None)
    if isinstance(subs, Mapping):
        out = {k: _sample(s, rng) for k, s in subs.items()}
        return None if any(v is None for v in out.values()) else out
    shape = getattr(space, "shape", None)
    if space is None or shape is None or not hasattr(space, "dtype"):
        return None
    shape = tuple(int(n) for n in shape)
    dtype = np.dtype(space.dtype)
    low = np.broadcast_to(np.asarray(getattr(space, "low", -np.inf), np.float64), shape)
    high = np.broadcast_to(np.asarray(getattr(space, "high", np.inf), np.float64), shape)
    low = np.where(np.isfinite(low), low, np.where(np.isfinite(high), high - 1.0, -1.0))
    high = np.where(np.isfinite(high), high, low + 1.0)
    x = rng.uniform(low, high)
    if np.issubdtype(dtype, np.integer):
        x = np.clip(np.rint(x), low, high)
    return x.astype(dtype)


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {tuple(value.shape)} arrays"
    return f"a {type(value).__name__}"


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
