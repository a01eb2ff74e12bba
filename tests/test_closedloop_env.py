"""Closed loop on a user's Gymnasium-style env: success keys, action-space checks, max_steps counts, the
reference success floor in the gate, and `verify RUN_DIR` reusing the recorded env.

The envs are duck-typed (gymnasium is not a dependency): `action_space` has `shape`, `low` and `high` like
`gymnasium.spaces.Box`."""

from __future__ import annotations

import numpy as np
import pytest

from vlaedge.check.closedloop import ClosedLoopReport, SuccessRate, closed_loop, compare_closed_loop
from vlaedge.check.gate import _closed_loop_checks
from vlaedge.errors import VlaedgeError
from vlaedge.models.base import ActionSpec
from vlaedge.pipeline import recorded_env
from vlaedge.recipe import Budgets, VerifyConfig


class Box:
    """The parts of gymnasium.spaces.Box the check reads."""

    def __init__(self, low, high, shape):
        self.shape = shape
        self.low = np.full(shape, low, np.float32)
        self.high = np.full(shape, high, np.float32)


class PushLike:
    """A PushT-shaped env: 2-dim actions in [0, 512], `is_success` in info, succeeds when action[0] > 256
    three times; never ends by itself before `limit` steps."""

    resets = built = 0

    def __init__(self, limit=300, info_key="is_success"):
        PushLike.built += 1
        self.action_space = Box(0.0, 512.0, (2,))
        self.limit, self.info_key = limit, info_key

    def reset(self, seed=None):
        PushLike.resets += 1
        self.t, self.hits = 0, 0
        return {"pixels": np.zeros((8, 8, 3), np.uint8), "agent_pos": np.zeros(2, np.float32)}, {}

    def step(self, action):
        assert np.shape(action) == (2,), "the env got actions of the wrong shape"
        self.t += 1
        self.hits += int(action[0] > 256)
        ok = self.hits >= 3
        obs = {"pixels": np.zeros((8, 8, 3), np.uint8), "agent_pos": np.full(2, self.t, np.float32)}
        return obs, float(ok), ok, self.t >= self.limit, {self.info_key: ok, "coverage": 0.0}


def make_pusht():
    return PushLike()


def make_custom_key():
    return PushLike(info_key="solved")


def adapter(obs):
    return {"image": obs["pixels"], "state": obs["agent_pos"], "instruction": "push the T"}


def spec(dim=2, low=0.0, high=512.0):
    return ActionSpec(tuple(f"a{i}" for i in range(dim)), (low,) * dim, (high,) * dim, (), 2)


def const(value, dim=2):
    return lambda f: np.full((len(f["state"]), 2, dim), value, np.float32)


class FakePolicy:
    """`compare_closed_loop` reads the action spec from a bound `policy.act`."""

    def __init__(self, action_spec, value):
        self.action_spec, self.value = action_spec, value

    def act(self, frames):
        return np.full((len(frames["state"]), 2, self.action_spec.dim), self.value, np.float32)


def test_success_is_read_from_is_success_or_the_named_key():
    report = compare_closed_loop(const(400.0), const(100.0), episodes=4, min_episodes=4, seed=0,
                                 env="test_closedloop_env:make_pusht", adapter="test_closedloop_env:adapter",
                                 action_spec=spec(), max_steps=20)
    assert report.reference.successes == 4 and report.candidate.successes == 0
    custom = closed_loop(const(400.0), 2, make_env=make_custom_key, adapter=adapter, success_key="solved")
    assert custom.successes == 2


def test_a_missing_success_key_lists_the_info_keys_found():
    keys = r"'success' or 'is_success' \(info keys: \['coverage', 'solved'\]\)"
    with pytest.raises(VlaedgeError, match=keys):
        closed_loop(const(400.0), 1, make_env=make_custom_key, adapter=adapter)
    keys = r"without 'done' \(info keys: \['coverage', 'is_success'\]\)"
    with pytest.raises(VlaedgeError, match=keys) as e:
        closed_loop(const(400.0), 1, make_env=make_pusht, adapter=adapter, success_key="done")
    assert "verify.success_key" in e.value.hint


@pytest.mark.parametrize(
    ("policy_spec", "message"),
    [
        (spec(dim=1), r"action space has shape \(2,\), the policy's actions have shape \(1,\)"),
        (spec(dim=3), r"action space has shape \(2,\), the policy's actions have shape \(3,\)"),
        (spec(low=-1.0, high=1.0), r"low=\[-1, -1\] high=\[1, 1\] leave the env's action space "
                                   r"low=\[0, 0\] high=\[512, 512\]"),
        (spec(low=0.0, high=600.0), r"high=\[600, 600\] leave"),
    ],
)
def test_a_mismatched_action_space_is_refused_before_the_first_episode(policy_spec, message):
    PushLike.resets = PushLike.built = 0
    policy = FakePolicy(policy_spec, 1.0)
    with pytest.raises(VlaedgeError, match=message) as e:
        compare_closed_loop(policy.act, policy.act, episodes=3, min_episodes=1,
                            env="test_closedloop_env:make_pusht", adapter="test_closedloop_env:adapter")
    assert PushLike.resets == 0 and PushLike.built == 1  # refused before any episode started
    assert "\n" not in e.value.message


def test_a_fitting_action_space_runs_and_envs_without_one_are_not_checked():
    policy = FakePolicy(spec(low=10.0, high=500.0), 300.0)  # inside [0, 512]
    report = compare_closed_loop(policy.act, policy.act, episodes=2, min_episodes=1,
                                 env="test_closedloop_env:make_pusht", adapter="test_closedloop_env:adapter")
    assert report.reference.successes == 2

    class NoSpace(PushLike):
        def __init__(self):
            super().__init__()
            del self.action_space

    assert closed_loop(const(400.0), 1, make_env=NoSpace, adapter=adapter, action_spec=spec(dim=2)).successes


def test_episodes_cut_at_max_steps_are_counted_and_shown():
    report = compare_closed_loop(const(400.0), const(100.0), episodes=3, min_episodes=1, seed=0,
                                 env="test_closedloop_env:make_pusht", adapter="test_closedloop_env:adapter",
                                 max_steps=6)
    assert report.reference.hit_max_steps == 0 and report.candidate.hit_max_steps == 3
    d = report.to_dict()
    assert d["max_steps"] == 6 and d["hit_max_steps"] == {"reference": 0, "candidate": 3}
    assert d["candidate"]["hit_max_steps"] == 3
    assert "hit max_steps=6: reference 0/3, candidate 3/3 episodes" in report.summary()
    # an env's own shorter limit is not our cap
    short = closed_loop(const(100.0), 2, make_env=lambda: PushLike(limit=4), adapter=adapter, max_steps=10)
    assert short.hit_max_steps == 0 and short.steps == 8
    # the env's own limit at the same step is the env's: raising max_steps would not give it longer
    same = closed_loop(const(100.0), 2, make_env=lambda: PushLike(limit=6), adapter=adapter, max_steps=6)
    assert same.hit_max_steps == 0 and same.steps == 12


def _loop(ref, cand, n=60, min_episodes=50):
    def rate(s):
        return SuccessRate(s, n, 0, [True] * s + [False] * (n - s))

    return {"closed_loop": ClosedLoopReport("pusht", rate(ref), rate(cand), min_episodes, 0, 300).to_dict()}


def test_a_success_drop_from_a_reference_below_the_floor_is_inconclusive_never_a_pass():
    (check,) = _closed_loop_checks(_loop(0, 0), Budgets(max_success_drop=0.05))
    assert check.status == "inconclusive"
    assert "reference succeeds in 0%, below min_reference_success 20%" in check.detail
    (check,) = _closed_loop_checks(_loop(6, 6), Budgets(max_success_drop=0.1))  # 10% < 20%
    assert check.status == "inconclusive"
    (check,) = _closed_loop_checks(_loop(0, 0), Budgets(max_success_drop=0.05, min_reference_success=0.0))
    assert check.status == "pass"  # the user lowered the floor
    (check,) = _closed_loop_checks(_loop(54, 54), Budgets(max_success_drop=0.2))
    assert check.status == "pass"


def test_verify_run_dir_reuses_the_env_recorded_in_the_manifest():
    manifest = {"recipe": {"verify": {**VerifyConfig().model_dump(mode="json"),
                                      "env": "gym_pusht_wrap:make_env", "env_adapter": "gym_pusht_wrap:adapt",
                                      "max_steps": 300, "success_key": "is_success"}}}
    logged = []
    config = recorded_env(VerifyConfig(closed_loop_episodes=10), manifest, logged.append)
    assert (config.env, config.env_adapter, config.max_steps, config.success_key) == (
        "gym_pusht_wrap:make_env", "gym_pusht_wrap:adapt", 300, "is_success")
    assert config.closed_loop_episodes == 10 and "gym_pusht_wrap:make_env" in logged[0]
    own = VerifyConfig(env="mine:make", max_steps=50)
    assert recorded_env(own, manifest, logged.append) == own  # the command line's env wins, whole
    assert recorded_env(VerifyConfig(max_steps=77), manifest).max_steps == 77  # not a default: kept
    assert recorded_env(VerifyConfig(), {}) == VerifyConfig()
