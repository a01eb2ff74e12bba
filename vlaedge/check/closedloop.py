"""Closed loop: run a policy in an environment for N seeded episodes; compare reference and candidate.

The environment is the built-in tabletop task by default, or any Gymnasium-style env given as
`package.module:make_env` (a callable with no arguments returning an env) plus an observation adapter
`package.module:adapter` (env observation -> `{"image": uint8 [H,W,3], "state": float32 [S],
"instruction": str}`). The env protocol is duck-typed, so gymnasium itself is not needed:
`reset(seed=...) -> (obs, info)` and `step(action) -> (obs, reward, terminated, truncated, info)` with a
boolean `info["success"]`.

Success rates come with Wilson 95% intervals; the reference-minus-candidate difference with Newcombe's
hybrid score interval (method 10 of Newcombe 1998, built from the two Wilson intervals). Below
`min_episodes` episodes the comparison refuses to conclude (status "inconclusive").
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlaedge.errors import VlaedgeError

ActFn = Callable[[dict], np.ndarray]  # frames {"image","state","instruction"} -> actions (B, T, A)
TABLETOP = "tabletop"


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for z=1.96); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(s1: int, n1: int, s2: int, n2: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of p1 - p2 from the two Wilson intervals (Newcombe's hybrid score, method 10)."""
    p1, p2 = (s1 / n1 if n1 else 0.0), (s2 / n2 if n2 else 0.0)
    (l1, u1), (l2, u2) = wilson_interval(s1, n1, z), wilson_interval(s2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


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

    def to_dict(self) -> dict:
        lo, hi = self.interval
        return {
            "successes": self.successes,
            "episodes": self.episodes,
            "rate": self.rate,
            "interval": [lo, hi],
            "steps": self.steps,
            "per_episode": self.per_episode,
        }


def load_callable(spec: str, what: str) -> Callable:
    """Imports `package.module:name` and returns the callable.

    Raises:
        VlaedgeError: malformed spec, module not importable, or no such callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise VlaedgeError(
            f"{what}: {spec!r} is not of the form package.module:name", "e.g. my_robot.envs:make_env"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise VlaedgeError(
            f"{what}: cannot import {module_name!r} ({e})", "install the package or add it to PYTHONPATH"
        ) from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise VlaedgeError(
            f"{what}: {module_name} has no callable {attr!r}", f"define {attr} in {module_name}"
        )
    return fn


def closed_loop(
    act: ActFn,
    episodes: int = 100,
    seed: int = 10_000,
    execute: int = 2,
    image_size: int = 64,
    max_steps: int = 40,
    make_env: Callable[[], Any] | None = None,
    adapter: Callable[[Any], dict] | None = None,
) -> SuccessRate:
    """Runs `act` for `episodes` seeded episodes, all envs batched together.

    Args:
        act: frames -> action chunks (B, T, A); e.g. `policy.act` or a runtime-backed function.
        episodes: number of episodes (seeds `seed`, `seed + 1`, ...). Held-out seeds by default:
            tabletop demonstrations are recorded from seeds below 10000.
        execute: actions of each predicted chunk executed before re-planning.
        image_size: rendered camera size (tabletop).
        max_steps: episode time limit: the tabletop's own, and a cap for other envs (an episode still
            running at the cap counts as a failure).
        make_env: builds one env (default: the tabletop task).
        adapter: env observation -> frame dict (default: the observation is already one).

    Returns:
        The success rate with its per-episode outcomes.

    Raises:
        VlaedgeError: the env breaks the protocol (no `info["success"]`, wrong reset return).
    """
    if make_env is None:
        from vlaedge.sim import TabletopEnv

        def make_env():
            return TabletopEnv(image_size=image_size, max_steps=max_steps)

    adapt = adapter or (lambda o: o)
    envs = [make_env() for _ in range(episodes)]
    obs = [adapt(_reset(env, seed + i)) for i, env in enumerate(envs)]
    done, success, lengths = [False] * episodes, [False] * episodes, [0] * episodes
    steps = 0
    while not all(done):
        live = [i for i in range(episodes) if not done[i]]
        frames = {
            "image": np.stack([obs[i]["image"] for i in live]),
            "state": np.stack([obs[i]["state"] for i in live]),
            "instruction": [obs[i]["instruction"] for i in live],
        }
        chunks = act(frames)
        for k in range(min(execute, chunks.shape[1])):
            for row, i in enumerate(live):
                if done[i]:
                    continue
                raw, _, terminated, truncated, info = envs[i].step(chunks[row, k])
                obs[i] = adapt(raw)
                steps, lengths[i] = steps + 1, lengths[i] + 1
                if not isinstance(info, dict) or "success" not in info:
                    raise VlaedgeError(
                        f"env: step() returned info without a 'success' key ({type(info).__name__})",
                        "return info={'success': bool, ...} from the env's step()",
                    )
                success[i] = bool(info["success"])
                done[i] = bool(terminated or truncated or lengths[i] >= max_steps)
    return SuccessRate(sum(success), episodes, steps, success)


def _reset(env, seed: int):
    out = env.reset(seed=seed)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise VlaedgeError(
            f"env: reset(seed=...) returned {type(out).__name__}, expected (obs, info)",
            "follow the Gymnasium API: reset(seed=...) -> (obs, info)",
        )
    return out[0]


@dataclass
class ClosedLoopReport:
    """Reference and candidate on the same env seeds.

    Truthy only when conclusive (at least `min_episodes` episodes) and the candidate is not significantly
    worse (the 95% interval of the drop includes zero or lies below it). The budget `max_success_drop`
    is judged by `vlaedge.check.gate`.
    """

    env: str
    reference: SuccessRate
    candidate: SuccessRate
    min_episodes: int
    seed: int

    @property
    def status(self) -> str:
        return "inconclusive" if self.candidate.episodes < self.min_episodes else "ok"

    @property
    def drop(self) -> float:
        """Reference rate minus candidate rate (positive: the candidate succeeds less)."""
        return self.reference.rate - self.candidate.rate

    @property
    def drop_interval(self) -> tuple[float, float]:
        r, c = self.reference, self.candidate
        return newcombe_interval(r.successes, r.episodes, c.successes, c.episodes)

    def __bool__(self) -> bool:
        return self.status == "ok" and self.drop_interval[0] <= 0.0

    def summary(self) -> str:
        lo, hi = self.drop_interval
        text = (
            f"closed loop ({self.env}, {self.candidate.episodes} episodes): reference {self.reference}, "
            f"candidate {self.candidate}, drop {self.drop:+.1%} (95% CI {lo:+.1%} to {hi:+.1%})"
        )
        if self.status == "inconclusive":
            text += f"; inconclusive: fewer than min_episodes={self.min_episodes}"
        return text

    def to_dict(self) -> dict:
        both = sum(
            a and b for a, b in zip(self.reference.per_episode, self.candidate.per_episode, strict=True)
        )
        return {
            "env": self.env,
            "status": self.status,
            "min_episodes": self.min_episodes,
            "seed": self.seed,
            "reference": self.reference.to_dict(),
            "candidate": self.candidate.to_dict(),
            "drop": self.drop,
            "drop_interval": list(self.drop_interval),
            "reference_only_successes": self.reference.successes - both,
            "candidate_only_successes": self.candidate.successes - both,
        }


def compare_closed_loop(
    reference: ActFn,
    candidate: ActFn,
    episodes: int,
    min_episodes: int,
    seed: int = 10_000,
    env: str | None = None,
    adapter: str | None = None,
    **kwargs,
) -> ClosedLoopReport:
    """Runs reference and candidate for `episodes` episodes each on the same seeds.

    Args:
        reference: the FP32 reference's act function.
        candidate: the candidate's act function.
        episodes: episodes per policy.
        min_episodes: below this, the report's status is "inconclusive" (it never passes a budget).
        seed: first episode seed.
        env: `package.module:make_env`, or None for the tabletop task.
        adapter: `package.module:adapter` for `env` observations (None: observations are frames).
        **kwargs: `execute`, `image_size`, `max_steps` for `closed_loop`.

    Returns:
        The `ClosedLoopReport`.

    Example:
        >>> compare_closed_loop(policy.act, candidate_act, episodes=100, min_episodes=50)
    """
    make_env = load_callable(env, "verify.env") if env else None
    adapt = load_callable(adapter, "verify.env_adapter") if adapter else None
    ref = closed_loop(reference, episodes, seed, make_env=make_env, adapter=adapt, **kwargs)
    cand = closed_loop(candidate, episodes, seed, make_env=make_env, adapter=adapt, **kwargs)
    return ClosedLoopReport(env or TABLETOP, ref, cand, min_episodes, seed)
