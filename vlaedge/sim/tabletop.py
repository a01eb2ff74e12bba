"""`TabletopEnv`: a deterministic top-down pick-and-place task with a Gymnasium-style API, numpy only."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vlaedge.sim.instructions import BLOCKS, ZONES, Task, instruction_for, sample_task
from vlaedge.sim.render import ZONE_SIZE, Renderer, SimState

STEP_SIZE = 0.07  # end-effector travel per step at |dx| = 1, table units
GRASP_RADIUS = 0.06  # a closing gripper grasps the nearest block whose centre is this close
EE_LOW, EE_HIGH = 0.05, 0.95  # end-effector bounds on both axes
EE_START_MARGIN = 0.1  # the end effector starts uniformly in [margin, 1 - margin]^2
ZONE_MARGIN = 0.16  # zone centres lie in [margin, 1 - margin]^2
BLOCK_MARGIN = 0.12  # block centres lie in [margin, 1 - margin]^2
ZONE_SEPARATION = 0.28  # minimum Chebyshev distance between zone centres (0.06 gap between zones)
BLOCK_SEPARATION = 0.16  # minimum Chebyshev distance between block centres (0.06 gap between blocks)
BLOCK_ZONE_SEPARATION = 0.2  # minimum Chebyshev distance from a block centre to a zone centre (0.04 gap)
_TRIES_PER_OBJECT = 100
_LAYOUT_TRIES = 1000


def _sample_points(
    rng: np.random.Generator, margin: float, separation: float, avoid: np.ndarray, avoid_separation: float
) -> np.ndarray | None:
    """Three points in [margin, 1 - margin]^2, pairwise and from `avoid` far enough apart (Chebyshev)."""
    points: list[np.ndarray] = []
    for _ in range(_TRIES_PER_OBJECT):
        p = rng.uniform(margin, 1.0 - margin, size=2)
        if all(np.abs(p - q).max() >= separation for q in points) and all(
            np.abs(p - a).max() >= avoid_separation for a in avoid
        ):
            points.append(p)
            if len(points) == 3:
                return np.array(points)
    return None


def sample_layout(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw non-overlapping block and zone centres; no block starts inside a zone.

    Args:
        rng: the random generator to draw from.

    Returns:
        (block_pos, zone_pos), each float64 [3, 2].
    """
    for _ in range(_LAYOUT_TRIES):
        zones = _sample_points(rng, ZONE_MARGIN, ZONE_SEPARATION, np.empty((0, 2)), 0.0)
        if zones is None:
            continue
        blocks = _sample_points(rng, BLOCK_MARGIN, BLOCK_SEPARATION, zones, BLOCK_ZONE_SEPARATION)
        if blocks is not None:
            return blocks, zones
    raise RuntimeError(f"no feasible layout in {_LAYOUT_TRIES} tries; the separation constants are too large")


def _grasp(ee: np.ndarray, block_pos: np.ndarray) -> int | None:
    dist = np.linalg.norm(block_pos - ee, axis=1)
    nearest = int(np.argmin(dist))
    return nearest if dist[nearest] <= GRASP_RADIUS else None


@dataclasses.dataclass(frozen=True)
class Box:
    """The parts of a `gymnasium.spaces.Box` that vlaedge reads (shape, dtype, bounds), without gymnasium."""

    low: float
    high: float
    shape: tuple[int, ...]
    dtype: type = np.float32


@dataclasses.dataclass(frozen=True)
class DictSpace:
    """The part of a `gymnasium.spaces.Dict` that vlaedge reads: its `spaces` by key."""

    spaces: dict[str, Box]


class TabletopEnv:
    """Pick up a coloured block, or place it on a coloured square, following a language instruction.

    Actions are float32 [3] = (dx, dy, grip) in [-1, 1] (clipped): the end effector moves by
    0.07 * (dx, dy); grip > 0 closes the gripper, which grasps the nearest block within 0.06 on the
    open-to-closed transition and releases it at the end-effector position on closed-to-open.
    Observations are dicts with `image` (uint8 [H, W, 3]), `state` (float32 [4]: ee_x and ee_y in
    [-1, 1], gripper and holding as +1/-1) and `instruction` (str); `action_space` and `observation_space`
    describe the arrays as gymnasium's Box / Dict would (duck-typed, gymnasium is not imported). Grasping
    the wrong block ends the episode as a failure. The same seed gives bit-identical frames and outcomes.

    Args:
        image_size: height and width of the rendered image, at least 32.
        max_steps: steps before the episode is truncated.

    Example:
        >>> env = TabletopEnv()
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(np.zeros(3, np.float32))
    """

    fps = 10
    gripper_dims = (2,)
    action_names = ("dx", "dy", "gripper")
    state_names = ("ee_x", "ee_y", "gripper", "holding")

    def __init__(self, image_size: int = 64, max_steps: int = 40):
        if max_steps < 1:
            raise ValueError(f"max_steps: {max_steps} must be at least 1")
        self.max_steps = int(max_steps)
        self.renderer = Renderer(image_size)
        self.image_size = self.renderer.image_size
        self.action_space = Box(-1.0, 1.0, (3,))
        size = self.image_size
        self.observation_space = DictSpace({"image": Box(0, 255, (size, size, 3), np.uint8),
                                            "state": Box(-1.0, 1.0, (4,))})  # and the instruction string
        self.action_low = np.full(3, -1.0, np.float32)
        self.action_high = np.full(3, 1.0, np.float32)
        self._rng: np.random.Generator | None = None
        self._state: SimState | None = None
        self._instruction = ""
        self._steps = 0
        self._done = True

    @property
    def sim_state(self) -> SimState:
        """The privileged scene state (read-only snapshot) of the current episode."""
        if self._state is None:
            raise RuntimeError("TabletopEnv: call reset() before reading the state")
        return self._state

    @property
    def task(self) -> Task:
        """The current episode's true task."""
        return self.sim_state.task

    @property
    def instruction(self) -> str:
        """The current episode's instruction."""
        return self._instruction

    def reset(
        self, seed: int | None = None, task: Task | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode.

        Args:
            seed: seeds the layout, start pose, task and template; None continues the previous stream.
            task: the task to give instead of a sampled one (the layout does not depend on it).

        Returns:
            (observation, info) with info["success"] False and info["task"].
        """
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(seed)
        block_pos, zone_pos = sample_layout(self._rng)
        ee = self._rng.uniform(EE_START_MARGIN, 1.0 - EE_START_MARGIN, size=2)
        task = sample_task(self._rng) if task is None else task
        self._instruction = instruction_for(task, self._rng)
        self._state = SimState(ee, False, None, block_pos, zone_pos, task)
        self._steps, self._done = 0, False
        return self._observation(), {"success": False, "task": task}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Apply one action.

        Args:
            action: float [3] = (dx, dy, grip); values are clipped to [-1, 1].

        Returns:
            (observation, reward, terminated, truncated, info): reward is 1.0 on the success step;
            terminated on success or on grasping the wrong block; info has "success" and "task".

        Raises:
            ValueError: if the action is not 3 finite numbers.
            RuntimeError: if the episode has ended (or never started); call reset().
        """
        if self._done:
            raise RuntimeError("TabletopEnv: the episode has ended; call reset() first")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (3,) or not np.isfinite(action).all():
            raise ValueError(f"action: {action!r} must be 3 finite numbers (dx, dy, grip)")
        action = np.clip(action, -1.0, 1.0)
        success, failure = self._apply(action)
        self._steps += 1
        truncated = not (success or failure) and self._steps >= self.max_steps
        self._done = success or failure or truncated
        info = {"success": success, "task": self._state.task}
        return self._observation(), float(success), success or failure, truncated, info

    def _apply(self, action: np.ndarray) -> tuple[bool, bool]:
        """Move, grasp or release; return (success, failure) of this step."""
        state = self._state
        ee = np.clip(state.ee + STEP_SIZE * action[:2], EE_LOW, EE_HIGH)
        closed = bool(action[2] > 0)
        block_pos, held = state.block_pos.copy(), state.held
        grasped = released = None
        if held is not None:
            block_pos[held] = ee
        if closed and not state.gripper_closed:
            held = grasped = _grasp(ee, block_pos)
            if grasped is not None:
                block_pos[grasped] = ee
        elif not closed and state.gripper_closed and held is not None:
            released, held = held, None
        self._state = dataclasses.replace(state, ee=ee, gripper_closed=closed, held=held, block_pos=block_pos)
        task, target = state.task, BLOCKS.index(state.task.block)
        if grasped is not None and grasped != target:
            return False, True
        if task.verb == "pick":
            return grasped == target, False
        zone = state.zone_pos[ZONES.index(task.zone)]
        return released == target and bool(np.abs(ee - zone).max() <= ZONE_SIZE / 2), False

    def _observation(self) -> dict[str, Any]:
        state = self._state
        gripper = 1.0 if state.gripper_closed else -1.0
        holding = -1.0 if state.held is None else 1.0
        proprio = np.array([state.ee[0] * 2 - 1, state.ee[1] * 2 - 1, gripper, holding], np.float32)
        return {"image": self.renderer.render(state), "state": proprio, "instruction": self._instruction}
