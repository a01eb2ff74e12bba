"""Verification: does a (compressed) policy still act like the original?

Closed loop: run the policy in an environment for N seeded episodes and report the success rate with a
Wilson 95% interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ActFn = Callable[[dict], np.ndarray]  # frames {"image","state","instruction"} -> actions (B, T, A)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for z=1.96); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class SuccessRate:
    """Closed-loop result: truthy when at least one episode succeeded."""

    successes: int
    episodes: int
    steps: int  # env steps taken, over all episodes
    per_episode: list[bool]

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    def __bool__(self) -> bool:
        return self.successes > 0

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"{self.successes}/{self.episodes} = {self.rate:.0%} (95% CI {lo:.0%}-{hi:.0%})"


def closed_loop(act: ActFn, episodes: int = 100, seed: int = 10_000, execute: int = 2,
                image_size: int = 64, max_steps: int = 40) -> SuccessRate:
    """Runs `act` on the tabletop task for `episodes` seeded episodes, all envs batched together.

    Args:
        act: frames -> action chunks (B, T, A); e.g. `policy.act` or a runtime-backed function.
        episodes: number of episodes (seeds `seed`, `seed + 1`, ...). Held-out seeds by default:
            demonstrations are recorded from seeds below 10000.
        execute: actions of each predicted chunk executed before re-planning.
        image_size: rendered camera size.
        max_steps: episode time limit.

    Returns:
        The success rate with its per-episode outcomes.
    """
    from vlaedge.sim import TabletopEnv

    envs = [TabletopEnv(image_size=image_size, max_steps=max_steps) for _ in range(episodes)]
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    done = [False] * episodes
    success = [False] * episodes
    steps = 0
    while not all(done):
        live = [i for i in range(episodes) if not done[i]]
        frames = {"image": np.stack([obs[i]["image"] for i in live]),
                  "state": np.stack([obs[i]["state"] for i in live]),
                  "instruction": [obs[i]["instruction"] for i in live]}
        chunks = act(frames)
        for k in range(min(execute, chunks.shape[1])):
            for row, i in enumerate(live):
                if done[i]:
                    continue
                obs[i], _, terminated, truncated, info = envs[i].step(chunks[row, k])
                steps += 1
                success[i] = bool(info["success"])
                done[i] = terminated or truncated
    return SuccessRate(sum(success), episodes, steps, success)
