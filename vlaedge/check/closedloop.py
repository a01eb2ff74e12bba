"""Closed loop: run a policy in an environment for N seeded episodes; compare reference and candidate.

The environment is the built-in tabletop task by default, or any Gymnasium-style env given as
`package.module:make_env` (a callable with no arguments returning an env) plus an observation adapter
`package.module:adapter` (env observation -> `{"image": uint8 [H,W,3], "state": float32 [S],
"instruction": str}`). The env protocol is duck-typed, so gymnasium itself is not needed:
`reset(seed=...) -> (obs, info)` and `step(action) -> (obs, reward, terminated, truncated, info)` with a
boolean success flag in `info`: `info["success"]`, else `info["is_success"]` (Gymnasium robotics envs), or
the key given as `success_key`. Before the first episode the env's `action_space` and `observation_space`
(gymnasium `Box` / `Dict` of `Box`, or duck-typed alike) are checked against the policy's action spec and
inputs (`vlaedge.check.envspace.check_spaces`): action dimension and bounds; the adapter's frames from a
sample observation (image uint8 [H, W, 3], state dims, keys present). `check_env` runs the same checks up
front (`compress` does, before any stage). A policy with several cameras reads one frame per camera from
the adapter, keyed by each camera input's feature name (`observation.images.cam_high`: uint8 [H,W,3]);
any other array key the adapter returns reaches the policy the same way. An env without language may
omit `instruction` (fed as "").
Episodes that end at `max_steps` (not by the env) are counted (`SuccessRate.hit_max_steps`). Envs are
closed after their episodes.

`compare_closed_loop` runs its episodes as units of `episodes_per_task` episodes on the current executor
(`vlaedge.executor.current`: here, or Ray tasks): each unit's seeds are fixed before fan-out, so the results
are the same on every executor; a candidate runtime travels to a worker as a
`vlaedge.check.sendable.RuntimeAct`.

Success rates come with Wilson 95% intervals; the reference-minus-candidate difference with Newcombe's
hybrid score interval (method 10 of Newcombe 1998, built from the two Wilson intervals). Below
`min_episodes` episodes the comparison refuses to conclude (status "inconclusive").
"""

from __future__ import annotations

import importlib
import inspect
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlaedge import progress
from vlaedge.check.envspace import check_spaces
from vlaedge.check.filmstrip import MAX_EPISODES, Recorder, filmstrip
from vlaedge.errors import VlaedgeError
from vlaedge.executor import Blob, Unit, current

ActFn = Callable[[dict], np.ndarray]  # frames {"image","state","instruction"} -> actions (B, T, A)
TABLETOP = "tabletop"
SUCCESS_KEYS = ("success", "is_success")  # looked up in this order when no success_key is given
REFERENCE_FLOOR = 0.2  # below this reference success rate a success-drop check is inconclusive (gate default)


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
    hit_max_steps: int = 0  # episodes still running (not succeeded, not ended by the env) at max_steps

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
            "hit_max_steps": self.hit_max_steps,
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


TABLETOP_FIX = ("the built-in tabletop closed loop takes 3 actions (dx, dy, gripper in [-1, 1]), a 4-dim "
                "state and one camera: set verify.env to your robot's env (docs: guides/closed-loop.md "
                "'Closed loop on your own env'), or run without a closed loop: "
                "--set verify.closed_loop_episodes=0 --set budgets.max_success_drop=null")


def check_env(env: str | None, adapter: str | None, policy) -> None:
    """Builds one env from `env` (`package.module:make_env`; None: the built-in tabletop task), checks
    its action and observation spaces against `policy` (`vlaedge.check.envspace.check_spaces`) and
    closes it, without any episode: what `compress` runs before its first stage when the recipe has a
    closed loop.

    Raises:
        VlaedgeError: the env or adapter cannot be loaded, or its spaces do not fit the policy (on the
            tabletop the fix says which policies it fits and how to drop the closed loop).
    """
    adapt = load_callable(adapter, "verify.env_adapter") if adapter else None
    if env is None:
        from vlaedge.sim import TabletopEnv

        one = TabletopEnv()
    else:
        one = load_callable(env, "verify.env")()
    try:
        check_spaces(one, adapt, policy, policy.action_spec)
    except VlaedgeError as e:
        if env is not None:
            raise
        raise VlaedgeError(e.message.replace("env: ", "closed loop (tabletop): ", 1),
                           TABLETOP_FIX) from None
    finally:
        if callable(getattr(one, "close", None)):
            one.close()


def closed_loop(
    act: ActFn,
    episodes: int = 100,
    seed: int = 10_000,
    execute: int = 2,
    image_size: int = 64,
    max_steps: int = 40,
    make_env: Callable[[], Any] | None = None,
    adapter: Callable[[Any], dict] | None = None,
    success_key: str | None = None,
    action_spec: Any = None,
    recorder: Recorder | None = None,
    policy: Any = None,
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
        success_key: the `info` key holding success (default: "success", else "is_success").
        action_spec: the policy's `ActionSpec` (names/low/high); checked against the env's
            `action_space` before the first episode. None: not checked.
        recorder: keeps frames and actions for a filmstrip (`vlaedge.check.filmstrip`); None: nothing kept.
        policy: the policy whose inputs the env's observations feed (through `adapter`), checked against the
            env's `observation_space` before the first episode; default: `act.__self__` when `act` is a
            policy's bound `act` (`vlaedge.check.envspace`).

    Returns:
        The success rate with its per-episode outcomes.

    Raises:
        VlaedgeError: the env breaks the protocol (no success key in `info`, wrong reset return), or its
            action or observation space does not fit the policy.
    """
    if make_env is None:
        from vlaedge.sim import TabletopEnv

        def make_env():
            return TabletopEnv(image_size=image_size, max_steps=max_steps)

    adapt = adapter or (lambda o: o)
    envs = [make_env() for _ in range(min(episodes, 1))]
    if policy is None and hasattr(getattr(act, "__self__", None), "input_spec"):
        policy = act.__self__
    if envs:  # before building the others and before any episode
        check_spaces(envs[0], adapter, policy, action_spec)
    envs += [make_env() for _ in range(episodes - len(envs))]
    obs = [adapt(_reset(env, seed + i)) for i, env in enumerate(envs)]
    for i, env in enumerate(envs if recorder is not None else ()):
        recorder.start(i, env, obs[i])
    done, success, lengths = [False] * episodes, [False] * episodes, [0] * episodes
    with progress.stage("closed loop: episodes", total=episodes) as running:
        steps, capped = 0, 0
        while not all(done):
            live = [i for i in range(episodes) if not done[i]]
            frames = {key: np.stack([obs[i][key] for i in live]) for key, value in obs[live[0]].items()
                      if key != "instruction" and isinstance(value, (np.ndarray, np.generic, int, float))}
            frames["instruction"] = [obs[i].get("instruction", "") for i in live]  # envs without language
            chunks = act(frames)
            for k in range(min(execute, chunks.shape[1])):
                for row, i in enumerate(live):
                    if done[i]:
                        continue
                    raw, _, terminated, truncated, info = envs[i].step(chunks[row, k])
                    obs[i] = adapt(raw)
                    steps, lengths[i] = steps + 1, lengths[i] + 1
                    success[i] = _success(info, success_key)
                    ended = bool(terminated or truncated)
                    if lengths[i] >= max_steps and not success[i] and not ended:
                        capped += 1  # cut by our cap; the env's own limit at the same step is the env's
                    done[i] = ended or lengths[i] >= max_steps
                    if recorder is not None:
                        recorder.step(i, lengths[i], chunks[row, k], envs[i], obs[i], done[i])
                    running.advance(int(done[i]))
    for env in envs:  # gymnasium envs hold windows / simulators
        if callable(getattr(env, "close", None)):
            env.close()
    return SuccessRate(sum(success), episodes, steps, success, capped)


def _success(info, key: str | None) -> bool:
    """The episode's success flag from a step's `info` (key `key`, else "success" or "is_success")."""
    keys = (key,) if key else SUCCESS_KEYS
    if isinstance(info, dict):
        for k in keys:
            if k in info:
                return bool(np.asarray(info[k]).any())
    found = sorted(map(str, info)) if isinstance(info, dict) else f"not a dict but {type(info).__name__}"
    tried = " or ".join(repr(k) for k in keys)
    raise VlaedgeError(
        f"env: step() returned info without {tried} (info keys: {found})",
        "set verify.success_key to the info key that says the task succeeded, or return "
        "info={'success': bool, ...} from the env's step()",
    )


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
    max_steps: int | None = None  # the episode cap the rollouts ran under (None: not recorded)
    filmstrip: dict | None = None  # episodes to show in report.html (`vlaedge.check.filmstrip.filmstrip`)

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
        capped = self.max_steps_note()
        if capped:
            text += f"; {capped}"
        if self.reference.rate < REFERENCE_FLOOR:
            text += (f"; the reference succeeds in under {REFERENCE_FLOOR:.0%} of episodes, so a success "
                     "drop says little (check the env, adapter and max_steps)")
        if self.status == "inconclusive":
            text += f"; inconclusive: fewer than min_episodes={self.min_episodes}"
        return text

    def max_steps_note(self) -> str:
        """'hit max_steps=N: reference a/n, candidate b/n episodes', or '' when no episode was cut."""
        r, c = self.reference.hit_max_steps, self.candidate.hit_max_steps
        if not (r or c):
            return ""
        cap = f"max_steps={self.max_steps}" if self.max_steps is not None else "max_steps"
        return (f"hit {cap}: reference {r}/{self.reference.episodes}, candidate "
                f"{c}/{self.candidate.episodes} episodes (counted as failures; raise verify.max_steps if "
                "the env needs longer)")

    def to_dict(self) -> dict:
        both = sum(
            a and b for a, b in zip(self.reference.per_episode, self.candidate.per_episode, strict=True)
        )
        return {
            "env": self.env,
            "status": self.status,
            "min_episodes": self.min_episodes,
            "seed": self.seed,
            "max_steps": self.max_steps,
            "hit_max_steps": {"reference": self.reference.hit_max_steps,
                              "candidate": self.candidate.hit_max_steps},
            "max_steps_note": self.max_steps_note(),
            "reference": self.reference.to_dict(),
            "candidate": self.candidate.to_dict(),
            "drop": self.drop,
            "drop_interval": list(self.drop_interval),
            "reference_only_successes": self.reference.successes - both,
            "candidate_only_successes": self.candidate.successes - both,
            "filmstrip": self.filmstrip,
        }


def compare_closed_loop(
    reference: ActFn,
    candidate: ActFn,
    episodes: int,
    min_episodes: int,
    seed: int = 10_000,
    env: str | None = None,
    adapter: str | None = None,
    success_key: str | None = None,
    action_spec: Any = None,
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
        success_key: the `info` key holding success (default: "success", else "is_success").
        action_spec: the policy's `ActionSpec`, checked against the env's `action_space` before the first
            episode; default: `reference.__self__.action_spec` when `reference` is a policy's bound `act`.
            That policy's inputs are checked against the env's `observation_space` too.
        **kwargs: `execute`, `image_size`, `max_steps` for `closed_loop`.

    Returns:
        The `ClosedLoopReport`.

    Example:
        >>> compare_closed_loop(policy.act, candidate_act, episodes=100, min_episodes=50)
    """
    make_env = load_callable(env, "verify.env") if env else None
    adapt = load_callable(adapter, "verify.env_adapter") if adapter else None
    policy = getattr(reference, "__self__", None)
    if action_spec is None:
        action_spec = getattr(policy, "action_spec", None)
    common = {"make_env": make_env, "adapter": adapt, "success_key": success_key, "action_spec": action_spec,
              "policy": policy if hasattr(policy, "input_spec") else None, **kwargs}
    max_steps = kwargs.get("max_steps", inspect.signature(closed_loop).parameters["max_steps"].default)
    (ref, cand), films = _fan_out(current(), (reference, candidate), episodes, seed, common, max_steps)
    bounds = (action_spec.low, action_spec.high) if action_spec is not None else (None, None)
    strip = filmstrip(*films, ref.per_episode, cand.per_episode, seed, *bounds)
    return ClosedLoopReport(env or TABLETOP, ref, cand, min_episodes, seed, max_steps, strip)


def _fan_out(executor, acts: tuple, episodes: int, seed: int, common: dict, max_steps: int):
    """Both policies' episodes as units of `executor.episodes_per_task` episodes each (episode i keeps seed
    `seed + i` and its place in its unit's batch on every executor); returns ((reference, candidate)
    SuccessRates, (reference, candidate) Recorders) merged in episode order."""
    per = executor.episodes_per_task
    blocks = [(start, min(per, episodes - start)) for start in range(0, episodes, per)]
    sources, shared = acts, common
    if executor.kind != "local":  # sent once per run through the object store, sha256-checked on arrival
        sources = tuple(_blob(f"closed loop: the {who}'s act", a) for who, a in zip(WHO, acts, strict=True))
        shared = _blob("closed loop: env, adapter and checks", common)
    units = [Unit(f"closed loop: {who} episodes {start}-{start + n - 1}", run_block,
                  (source, shared, start, n, seed + start, max_steps))
             for who, source in zip(WHO, sources, strict=True) for start, n in blocks]
    results = executor.run(units, description="closed loop: episode units")
    merged = []
    for k in range(2):
        parts = results[k * len(blocks):(k + 1) * len(blocks)]
        film = Recorder(max_steps)
        for (start, _), (_, part) in zip(blocks, parts, strict=True):
            film.episodes.update({start + i: e for i, e in part.episodes.items() if start + i < MAX_EPISODES})
        rates = [rate for rate, _ in parts]
        merged.append((SuccessRate(sum(r.successes for r in rates), episodes, sum(r.steps for r in rates),
                                   [ok for r in rates for ok in r.per_episode],
                                   sum(r.hit_max_steps for r in rates)), film))
    return (merged[0][0], merged[1][0]), (merged[0][1], merged[1][1])


WHO = ("reference", "candidate")


def run_block(act, common, start: int, episodes: int, seed: int, max_steps: int):
    """One unit of the closed loop: `episodes` episodes from seed `seed` (episodes `start`...); `act` and
    `common` (`closed_loop`'s other arguments) are the objects, or `Blob`s of them on a worker.

    Returns:
        (SuccessRate, Recorder) of these episodes (the recorder's episodes numbered from 0).
    """
    act = act.load() if isinstance(act, Blob) else act
    common = dict(common.load() if isinstance(common, Blob) else common)
    recorder = Recorder(max_steps) if start < MAX_EPISODES else None
    rate = closed_loop(act, episodes, seed, **common, recorder=recorder)
    return rate, recorder or Recorder(max_steps)


def _blob(name: str, obj) -> Blob:
    """`obj` pickled for a worker; a user error when it cannot be (a lambda, an open session)."""
    try:
        return Blob.of_object(name, obj)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise VlaedgeError(f"{name} cannot be sent to a worker ({type(e).__name__}: {str(e)[:120]})",
                           "give a module-level make_env / adapter / act, or run with --executor local"
                           ) from None
