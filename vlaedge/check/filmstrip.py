"""Rollout filmstrips: what the robot did in a closed-loop episode, reference next to candidate.

While `closedloop.closed_loop` runs, a `Recorder` keeps, for each of the first `MAX_EPISODES` episodes, the
instruction, every executed action and a thinned, downscaled set of frames: one every
ceil(max_steps / MAX_FRAMES) steps plus the last, at most `MAX_SIDE` px on the longer side, PNG-encoded as
they come (a 100-episode run holds a few MB). A frame is the env's `render()` when it returns an RGB
array [H, W, 3] uint8, else the observation's `image`. `filmstrip` then picks what to show: the first
episode whose outcome differs between reference and candidate, or the first `SHOWN_WHEN_EQUAL` episodes
when none differs, and finds the step where the executed actions diverge.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_FRAMES = 24  # frames kept per episode (plus its last frame)
MAX_SIDE = 96  # px, longer side of a kept frame
MAX_EPISODES = 100  # episodes recorded per policy; later ones are run but not filmed
SHOWN_WHEN_EQUAL = 2  # episodes shown when every outcome agrees
DIVERGE_FRACTION = 0.10  # actions diverge where any dim differs by more than 10% of its range


@dataclass
class Episode:
    """One recorded episode: instruction, executed actions [steps][A] and kept frames (step, PNG bytes)."""

    instruction: str = ""
    actions: list[np.ndarray] = field(default_factory=list)
    frames: list[tuple[int, bytes]] = field(default_factory=list)


class Recorder:
    """Collects frames and actions of the first `MAX_EPISODES` episodes of one closed-loop run.

    Args:
        max_steps: the episode step limit (sets the frame stride).
    """

    def __init__(self, max_steps: int):
        self.stride = max(1, math.ceil(max_steps / MAX_FRAMES))
        self.episodes: dict[int, Episode] = {}

    def start(self, i: int, env: Any, obs: dict) -> None:
        """Episode `i` was reset: keeps its instruction and first frame (step 0)."""
        if i < MAX_EPISODES:
            self.episodes[i] = Episode(str(obs.get("instruction", "")))
            self._keep(i, 0, env, obs)

    def step(self, i: int, step: int, action: np.ndarray, env: Any, obs: dict, done: bool) -> None:
        """Episode `i` executed `action` as its step number `step` (1-based) and observed `obs`."""
        if i not in self.episodes:
            return
        self.episodes[i].actions.append(np.asarray(action, np.float64).copy())
        if done or step % self.stride == 0:
            self._keep(i, step, env, obs)

    def _keep(self, i: int, step: int, env: Any, obs: dict) -> None:
        image = _rgb(env, obs)
        if image is not None:
            self.episodes[i].frames.append((step, _png(image)))


def filmstrip(reference: Recorder, candidate: Recorder, ref_success: list[bool], cand_success: list[bool],
              seed: int, low: Any = None, high: Any = None) -> dict | None:
    """The episodes report.html shows, with frames as base64 PNG.

    Args:
        reference: the reference run's recorder.
        candidate: the candidate run's recorder (same seeds).
        ref_success: per-episode success of the reference.
        cand_success: per-episode success of the candidate.
        seed: the first episode's seed (episode i ran on seed + i).
        low: float [A] lower action bounds, environment units (None: the actions' own range).
        high: float [A] upper action bounds.

    Returns:
        {"reason", "diverge_fraction", "episodes": [{episode, seed, instruction, diverge_step,
        reference: {success, steps, frames: [{step, png}]}, candidate: {...}}]}, or None when no frame
        was recorded (an env without images).
    """
    recorded = sorted(set(reference.episodes) & set(candidate.episodes))
    if not any(reference.episodes[i].frames for i in recorded):
        return None
    differ = [i for i in recorded if ref_success[i] != cand_success[i]]
    chosen = differ[:1] or recorded[:SHOWN_WHEN_EQUAL]
    reason = "first episode whose outcome differs" if differ else "every outcome agrees: the first episodes"
    episodes = []
    for i in chosen:
        ref, cand = reference.episodes[i], candidate.episodes[i]
        episodes.append({
            "episode": i,
            "seed": seed + i,
            "instruction": ref.instruction,
            "diverge_step": diverge_step(ref.actions, cand.actions, low, high),
            "reference": _side(ref, ref_success[i]),
            "candidate": _side(cand, cand_success[i]),
        })
    return {"reason": reason, "diverge_fraction": DIVERGE_FRACTION, "episodes": episodes}


def diverge_step(reference: list, candidate: list, low: Any = None, high: Any = None) -> int | None:
    """The first step (1-based) where the executed actions differ by more than `DIVERGE_FRACTION` of the
    action range on any dimension, or None when they never do (over the steps both ran).

    Args:
        reference: [steps][A] executed reference actions.
        candidate: [steps][A] executed candidate actions.
        low, high: float [A] action bounds; None: the range both policies' actions span.
    """
    n = min(len(reference), len(candidate))
    if n == 0:
        return None
    ref, cand = np.asarray(reference[:n], np.float64), np.asarray(candidate[:n], np.float64)
    if low is None or high is None:
        both = np.concatenate([ref, cand])
        low, high = both.min(axis=0), both.max(axis=0)
    span = np.maximum(np.asarray(high, np.float64) - np.asarray(low, np.float64), 1e-9)
    apart = (np.abs(ref - cand) / span > DIVERGE_FRACTION).any(axis=1) | ~np.isfinite(cand).all(axis=1)
    hits = np.flatnonzero(apart)
    return int(hits[0]) + 1 if hits.size else None


def _side(ep: Episode, success: bool) -> dict:
    return {"success": bool(success), "steps": len(ep.actions),
            "frames": [{"step": s, "png": base64.b64encode(png).decode("ascii")} for s, png in ep.frames]}


def _rgb(env: Any, obs: dict) -> np.ndarray | None:
    """The env's rendered RGB frame, else the observation's image, as uint8 [H, W, 3]; None if neither."""
    render = getattr(env, "render", None)
    mode = getattr(env, "render_mode", "rgb_array")  # a Gymnasium env renders only in "rgb_array" mode
    image = render() if callable(render) and mode == "rgb_array" else None
    if not _is_rgb(image):
        image = obs.get("image") if isinstance(obs, dict) else None
    if not _is_rgb(image):
        return None
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return image[..., :3]


def _is_rgb(image: Any) -> bool:
    return isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] in (3, 4) and image.size > 0


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    scale = MAX_SIDE / max(picture.size)
    if scale < 1:
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=False)
    return out.getvalue()
