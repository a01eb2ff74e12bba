"""Scripted expert for `TabletopEnv`, the episode recorder (with DART noise), on-policy relabelling
(DAgger) and the chance baseline."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from vlaedge.data import Episode
from vlaedge.sim.instructions import BLOCKS, ZONES, Task, sample_task
from vlaedge.sim.render import ZONE_SIZE
from vlaedge.sim.tabletop import GRASP_RADIUS, STEP_SIZE, TabletopEnv

# The expert closes on a block once within half the grasp radius, and opens once the block is well inside
# the zone (half-way from its centre to its edge): decisions with a margin that a policy seeing a 32-64 px
# image can learn, rather than a pixel-exact arrival it cannot see.
GRASP_DISTANCE = GRASP_RADIUS / 2
RELEASE_DISTANCE = ZONE_SIZE / 4  # Chebyshev distance from the zone centre


def _action(ee: np.ndarray, goal: np.ndarray, grip: float) -> np.ndarray:
    """Proportional move towards `goal` that lands exactly when it is one step away."""
    move = np.clip((goal - ee) / STEP_SIZE, -1.0, 1.0)
    return np.array([move[0], move[1], grip], np.float32)


class ScriptedExpert:
    """Privileged scripted policy: reach the block, close, and for "place" carry it to the zone and open.

    Gripper command +1 closes (or keeps holding), -1 opens. A wrong block in hand is dropped, and a
    gripper that closed on nothing is reopened before the next attempt.

    Example:
        >>> env, expert = TabletopEnv(), ScriptedExpert()
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(expert.act(env))
    """

    def act(self, env: TabletopEnv, task: Task | None = None) -> np.ndarray:
        """The expert's next action.

        Args:
            env: the environment, read through its privileged `sim_state`.
            task: the task to pursue instead of the episode's true one (for the chance baseline).

        Returns:
            float32 [3] = (dx, dy, grip).
        """
        state = env.sim_state
        task = state.task if task is None else task
        target = BLOCKS.index(task.block)
        ee = state.ee
        if state.held is not None and state.held != target:
            return _action(ee, ee, -1.0)
        if state.held == target:
            if task.verb == "pick":
                return _action(ee, ee, 1.0)
            zone = state.zone_pos[ZONES.index(task.zone)]
            return _action(ee, zone, -1.0 if np.abs(zone - ee).max() < RELEASE_DISTANCE else 1.0)
        block = state.block_pos[target]
        close = np.linalg.norm(block - ee) < GRASP_DISTANCE and not state.gripper_closed
        return _action(ee, block, 1.0 if close else -1.0)


def _episode_seeds(seed: int, count: int) -> list[tuple[int, int]]:
    """(env seed, auxiliary seed) per episode, derived deterministically from `seed`."""
    children = np.random.SeedSequence(seed).spawn(count)
    return [tuple(int(s) for s in child.generate_state(2)) for child in children]


def _record_one(
    env: TabletopEnv, seeds: tuple[int, int], index: int, action_noise: float, noise_prob: float
) -> Episode:
    expert, noise_rng = ScriptedExpert(), np.random.default_rng(seeds[1])
    obs, info = env.reset(seed=seeds[0])
    images, states, actions = [], [], []
    done = False
    while not done:
        action = expert.act(env)
        images.append(obs["image"])
        states.append(obs["state"])
        actions.append(action)
        executed = action.copy()
        if noise_rng.random() < noise_prob:
            executed[:2] += noise_rng.normal(0.0, action_noise, size=2)
        obs, _, terminated, truncated, info = env.step(np.clip(executed, -1.0, 1.0))
        done = terminated or truncated
    return Episode(
        instruction=env.instruction,
        images=np.stack(images),
        state=np.stack(states),
        action=np.stack(actions),
        index=index,
        success=bool(info["success"]),
        extra={"seed": seeds[0], "verb": env.task.verb},
    )


def record_episodes(
    num_episodes: int,
    seed: int,
    image_size: int = 64,
    max_steps: int = 40,
    action_noise: float = 0.3,
    noise_prob: float = 0.3,
) -> list[Episode]:
    """Record expert demonstrations with DART-style noise injection.

    The label is always the clean expert action; with probability `noise_prob` per step the executed
    action gets Gaussian noise (std `action_noise`) on dx and dy, so the data covers recovery states.
    All episodes are kept, with `success` set on each.

    Args:
        num_episodes: how many episodes to record.
        seed: seeds every episode (layouts, tasks and noise) deterministically.
        image_size: rendered image size in pixels, at least 32.
        max_steps: steps before an episode is truncated.
        action_noise: std of the noise added to executed dx and dy; 0 disables it.
        noise_prob: per-step probability of perturbing the executed action, in [0, 1].

    Returns:
        The episodes: N frames, each with the state it was observed in and the action taken from it.

    Raises:
        ValueError: on a negative count or noise, or a probability outside [0, 1].

    Example:
        >>> episodes = record_episodes(10, seed=0)
        >>> sum(e.success for e in episodes)
        10
    """
    if num_episodes < 0:
        raise ValueError(f"num_episodes: {num_episodes} must be at least 0")
    if action_noise < 0:
        raise ValueError(f"action_noise: {action_noise} must be at least 0")
    if not 0.0 <= noise_prob <= 1.0:
        raise ValueError(f"noise_prob: {noise_prob} must be in [0, 1]")
    env = TabletopEnv(image_size=image_size, max_steps=max_steps)
    return [
        _record_one(env, seeds, i, action_noise, noise_prob)
        for i, seeds in enumerate(_episode_seeds(seed, num_episodes))
    ]


def expert_chunk(env: TabletopEnv, horizon: int) -> np.ndarray:
    """The expert's next `horizon` actions from the env's current state, simulated on a copy.

    Once the look-ahead ends the episode (success or wrong grasp) its last action is repeated, the same
    convention as the chunk targets of recorded episodes. The env itself is not touched.

    Returns:
        float32 [horizon, 3].
    """
    expert, sim = ScriptedExpert(), copy.copy(env)
    actions, ended = [], False
    for _ in range(horizon):
        if not ended:
            action = expert.act(sim)
            ended = any(sim._apply(action.astype(np.float64)))
        actions.append(action)
    return np.stack(actions)


def record_on_policy(
    act: Callable[[dict], np.ndarray],
    num_episodes: int,
    seed: int,
    horizon: int,
    image_size: int = 64,
    max_steps: int = 40,
    execute: int = 2,
) -> tuple[dict, np.ndarray]:
    """DAgger data: run `act` closed loop and label every visited frame with the expert's chunk.

    The states come from the policy's own mistakes (stopping short of a zone, a missed grasp), which
    recorded demonstrations rarely visit; the labels say how the expert would recover from them.

    Args:
        act: frames -> action chunks (B, T, A), e.g. `policy.act`.
        num_episodes: episodes to run, all batched together.
        seed: seeds the episodes (spawned like `record_episodes`, so disjoint from held-out seeds).
        horizon: length of each expert label chunk.
        image_size: rendered camera size.
        max_steps: steps before an episode is truncated.
        execute: actions of each predicted chunk executed before re-planning.

    Returns:
        (frames {"image", "state", "instruction"}, expert chunks float32 [N, horizon, 3]).
    """
    envs = [TabletopEnv(image_size=image_size, max_steps=max_steps) for _ in range(num_episodes)]
    obs = [env.reset(seed=s)[0] for env, (s, _) in zip(envs, _episode_seeds(seed, num_episodes), strict=True)]
    live, done = list(range(num_episodes)), [False] * num_episodes
    images, states, texts, labels = [], [], [], []
    while live:
        chunks = act({"image": np.stack([obs[i]["image"] for i in live]),
                      "state": np.stack([obs[i]["state"] for i in live]),
                      "instruction": [obs[i]["instruction"] for i in live]})
        for row, i in enumerate(live):
            for k in range(min(execute, chunks.shape[1])):
                images.append(obs[i]["image"])
                states.append(obs[i]["state"])
                texts.append(obs[i]["instruction"])
                labels.append(expert_chunk(envs[i], horizon))
                obs[i], _, terminated, truncated, _ = envs[i].step(chunks[row, k])
                done[i] = terminated or truncated
                if done[i]:
                    break
        live = [i for i in live if not done[i]]
    frames = {"image": np.stack(images), "state": np.stack(states), "instruction": texts}
    return frames, np.stack(labels).astype(np.float32)


def chance_success_rate(num_episodes: int, seed: int, max_steps: int = 40) -> float:
    """Success of the expert pursuing a random task while the env judges the true one.

    The random task is re-sampled with `sample_task` (same verb, block and zone odds), so this is the
    score of a perfect policy that ignores the instruction: the instruction ablation's chance level.

    Args:
        num_episodes: how many episodes to run, at least 1.
        seed: seeds the episodes and the random tasks.
        max_steps: steps before an episode is truncated.

    Returns:
        The success rate in [0, 1].

    Raises:
        ValueError: if `num_episodes` is below 1.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes: {num_episodes} must be at least 1")
    env, expert = TabletopEnv(image_size=32, max_steps=max_steps), ScriptedExpert()
    successes = 0
    for env_seed, task_seed in _episode_seeds(seed, num_episodes):
        env.reset(seed=env_seed)
        guess = sample_task(np.random.default_rng(task_seed))
        done, info = False, {"success": False}
        while not done:
            _, _, terminated, truncated, info = env.step(expert.act(env, task=guess))
            done = terminated or truncated
        successes += bool(info["success"])
    return successes / num_episodes
