"""Open-loop drift metrics on constructed cases with known answers, candidate input checks, the closed
loop (Wilson/Newcombe intervals, the inconclusive rule, the tabletop and a duck-typed env)."""

from __future__ import annotations

import numpy as np
import pytest

from vlaedge.check.closedloop import (
    ClosedLoopReport,
    SuccessRate,
    closed_loop,
    compare_closed_loop,
    newcombe_interval,
    wilson_interval,
)
from vlaedge.check.drift import action_drift, check_candidate_inputs, open_loop_drift
from vlaedge.errors import VlaedgeError
from vlaedge.models.base import ActionSpec
from vlaedge.runtimes.base import Runtime

# dx in [-1, 1] (range 2), dy in [0, 4] (range 4), gripper in [-1, 1]
SPEC = ActionSpec(("dx", "dy", "gripper"), (-1.0, 0.0, -1.0), (1.0, 4.0, 1.0), (2,), chunk=4)


def _actions(n=50, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-0.9, 0.9, (n, 4, 3))
    a[..., 1] = rng.uniform(0.5, 3.5, (n, 4))
    return a.astype(np.float32)


def test_constant_offset_gives_known_percent_of_range_per_dimension():
    ref = _actions()
    cand = ref + np.array([0.02, 0.2, 0.0], np.float32)  # 1% of dx's range, 5% of dy's, 0 on the gripper
    report = action_drift(ref, cand, SPEC)
    per = {d.name: d for d in report.per_dim}
    assert per["dx"].mean_pct == pytest.approx(1.0, rel=1e-3) and per["dx"].max_pct == pytest.approx(
        1.0, rel=1e-3
    )
    assert per["dy"].mean_pct == pytest.approx(5.0, rel=1e-3) and per["dy"].p99_pct == pytest.approx(
        5.0, rel=1e-3
    )
    assert per["gripper"].mean_pct == 0.0
    assert report.mean_pct == pytest.approx(2.0, rel=1e-3)  # (1 + 5 + 0) / 3
    assert report.worst == {"dim": "dy", "mean_pct": pytest.approx(5.0, rel=1e-3)}
    assert report.step_mean_pct == pytest.approx([2.0] * 4, rel=1e-3)
    assert report.gripper_flip_rate == 0.0 and report.token_agreement is None


def test_p99_and_max_pick_out_a_single_outlier():
    ref = np.zeros((100, 1, 3), np.float32)
    ref[..., 1] = 2.0
    cand = ref.copy()
    cand[7, 0, 0] = 1.0  # one error of 50% of dx's range among 100
    report = action_drift(ref, cand, SPEC)
    dx = report.per_dim[0]
    assert dx.max_pct == pytest.approx(50.0) and dx.mean_pct == pytest.approx(0.5)
    assert dx.p99_pct == pytest.approx(np.percentile([0] * 99 + [50], 99))


def test_error_growth_along_the_chunk_is_reported_per_step():
    ref = _actions()
    growth = np.array([0.0, 0.02, 0.04, 0.06], np.float32)[None, :, None]  # 0, 1, 2, 3 % on dx and gripper
    cand = ref + growth * np.array([1.0, 0.0, 1.0], np.float32)
    report = action_drift(ref, cand, SPEC)
    # per step: (dx% + 0 + gripper%) / 3 = 2 * t / 3
    assert report.step_mean_pct == pytest.approx([0.0, 2 / 3, 4 / 3, 2.0], abs=1e-3)


def test_gripper_flip_rate_counts_open_close_decisions_across_the_midpoint():
    ref = _actions()
    ref[..., 2] = np.where(np.arange(50)[:, None] % 2 == 0, 0.8, -0.8)  # closed on even frames
    cand = ref.copy()
    cand[:10, :, 2] *= -1  # flip the first 10 of 50 frames
    cand[10:, :, 2] *= 0.9  # same side of the midpoint: no flip, small error
    report = action_drift(ref, cand, SPEC)
    assert report.gripper_flip_rate == pytest.approx(10 / 50)
    assert report.per_dim[2].gripper_flip_rate == pytest.approx(0.2)
    assert report.per_dim[0].gripper_flip_rate is None


def test_token_agreement_compares_argmax_bins():
    ref = _actions(n=10)
    logits = np.random.default_rng(1).normal(size=(10, 4, 3, 16)).astype(np.float32)
    cand_logits = logits.copy()
    bins = logits.argmax(-1)
    # move the winning bin on dim 1 for 5 of 10 frames: dim agreement 50%, overall 5/6
    for i in range(5):
        for t in range(4):
            cand_logits[i, t, 1, (bins[i, t, 1] + 1) % 16] = 100.0
    report = action_drift(ref, ref, SPEC, logits, cand_logits)
    assert [d.token_agreement for d in report.per_dim] == pytest.approx([1.0, 0.5, 1.0])
    assert report.token_agreement == pytest.approx(5 / 6)


def test_cosine_sees_sign_flips_but_not_scale_and_is_one_when_identical():
    ref = _actions()
    assert action_drift(ref, ref, SPEC).cosine_mean == pytest.approx(1.0)
    centred = np.array([0.0, 2.0, 0.0], np.float32)  # range midpoints
    mirrored = centred - (ref - centred)
    report = action_drift(ref, mirrored, SPEC)
    assert report.cosine_mean == pytest.approx(-1.0) and report.cosine_min == pytest.approx(-1.0)


def test_nonfinite_candidate_actions_are_full_errors_and_make_the_report_falsy():
    ref = _actions(n=4)
    cand = ref.copy()
    cand[0, 0, 0] = np.nan
    report = action_drift(ref, cand, SPEC)
    assert report.nonfinite == 1 and report.per_dim[0].max_pct == 100.0 and not report
    assert action_drift(ref, ref, SPEC, tolerance_pct=0.1)
    assert not action_drift(ref, ref + 0.02, SPEC, tolerance_pct=0.5)


def test_mismatched_shapes_are_a_user_error():
    with pytest.raises(VlaedgeError, match="candidate actions"):
        action_drift(_actions(), _actions()[:, :2], SPEC)


class OffsetRuntime(Runtime):
    """A deliberately broken candidate: the reference torch module plus an offset on one output dim."""

    name = "broken"

    def __init__(self, policy, dim: int, offset: float):
        self.policy, self.input_spec, self.output_names = policy, policy.input_spec, policy.output_names
        self.dim, self.offset = dim, offset

    def _infer(self, feeds):
        out = self.policy.run_torch(feeds)
        out["actions"][..., self.dim] += self.offset
        return out


def test_open_loop_drift_on_a_policy_names_the_broken_dimension(tiny_run, tabletop_frames):
    policy = tiny_run.policy
    frames = tabletop_frames(24)
    report, ref, cand = open_loop_drift(policy, OffsetRuntime(policy, 2, 0.6), frames, batch_size=10)
    assert ref.shape == cand.shape == (24, 4, 3)
    assert report.worst["dim"] == "gripper"
    assert report.per_dim[0].mean_pct == pytest.approx(0.0, abs=1e-4)
    assert 0 < report.per_dim[2].mean_pct <= 30.0 + 1e-4  # decode clips to [-1, 1]: at most 0.6 / 2


def test_flow_head_reference_and_candidate_get_identical_noise(tabletop_frames):
    from vlaedge.models.reference import ReferencePolicy
    from vlaedge.runtimes import open_runtime

    policy = ReferencePolicy.build("nano", "flow", image_size=32)
    report, _, _ = open_loop_drift(policy, open_runtime("torch", policy), tabletop_frames(8), seed=3)
    assert report.max_pct == 0.0  # any difference in noise would show here
    feeds_a, feeds_b = (
        policy.make_inputs(tabletop_frames(2), seed=3),
        policy.make_inputs(tabletop_frames(2), seed=4),
    )
    assert not np.array_equal(feeds_a["noise"], feeds_b["noise"])  # the seed does drive the noise


def _onnx_with_inputs(path, image_dtype, image_shape):
    """A tiny ONNX graph taking image/instruction_ids/state and returning zeros actions [B, 4, 3]."""
    import onnx
    from onnx import TensorProto, helper

    elem = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT}[image_dtype]
    inputs = [
        helper.make_tensor_value_info("image", elem, ["B", *image_shape]),
        helper.make_tensor_value_info("instruction_ids", TensorProto.INT64, ["B", 12]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, ["B", 4]),
    ]
    out = helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["B", 4, 3])
    nodes = [
        helper.make_node("ReduceSum", ["state", "axes"], ["s"], keepdims=1),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Expand", ["z", "shape"], ["zz"]),
        helper.make_node("Reshape", ["zz", "shape3"], ["actions"]),
    ]
    inits = [
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("shape", TensorProto.INT64, [2], [1, 12]),
        helper.make_tensor("shape3", TensorProto.INT64, [3], [-1, 4, 3]),
    ]
    graph = helper.make_graph(nodes, "g", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older ONNX Runtime releases too
    onnx.save(model, str(path))
    return path


def test_candidate_with_other_input_dtype_or_shape_is_refused_in_one_line(tiny_run, tmp_path):
    from vlaedge.runtimes import open_runtime

    policy = tiny_run.policy
    assert policy.input_spec[1].shape[1] == 12, "test graph assumes 12 instruction ids"
    check_candidate_inputs(
        policy, open_runtime("ort-cpu", policy, _onnx_with_inputs(tmp_path / "ok.onnx", "uint8", [3, 32, 32]))
    )
    wrong_dtype = open_runtime(
        "ort-cpu", policy, _onnx_with_inputs(tmp_path / "f.onnx", "float32", [3, 32, 32])
    )
    with pytest.raises(VlaedgeError) as e:
        check_candidate_inputs(policy, wrong_dtype)
    assert (
        "'image' is float32" in e.value.message and "uint8" in e.value.message and "\n" not in e.value.message
    )
    wrong_shape = open_runtime(
        "ort-cpu", policy, _onnx_with_inputs(tmp_path / "s.onnx", "uint8", [3, 64, 64])
    )
    with pytest.raises(VlaedgeError, match=r"\[B,3,64,64\].*\[B,3,32,32\]"):
        check_candidate_inputs(policy, wrong_shape)


# --- closed loop ----------------------------------------------------------------------------------------


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I (Wilson score, method 3)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 3.8416 / 23.8416), abs=1e-4)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_newcombe_difference_interval_matches_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, 56/70 - 48/80, method 10: 0.0524 to 0.3339
    assert newcombe_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def _rate(successes, n):
    return SuccessRate(successes, n, 0, [True] * successes + [False] * (n - successes))


def test_closed_loop_report_refuses_to_conclude_below_min_episodes():
    small = ClosedLoopReport("tabletop", _rate(10, 10), _rate(10, 10), min_episodes=50, seed=0)
    assert small.status == "inconclusive" and not small  # even a perfect candidate is no pass
    enough = ClosedLoopReport("tabletop", _rate(45, 60), _rate(44, 60), min_episodes=50, seed=0)
    assert enough.status == "ok" and enough
    worse = ClosedLoopReport("tabletop", _rate(55, 60), _rate(20, 60), min_episodes=50, seed=0)
    assert worse.status == "ok" and not worse and worse.drop_interval[0] > 0
    d = worse.to_dict()
    assert d["reference_only_successes"] == 35 and d["drop"] == pytest.approx(35 / 60)


class CountdownEnv:
    """A duck-typed Gymnasium env: succeed by sending action[0] > 0 three times; observations are dicts
    with a 'pixels' key so an adapter is needed."""

    def reset(self, seed=None):
        self.left, self.t = 3, 0
        return {"pixels": np.full((8, 8, 3), seed % 255, np.uint8), "proprio": np.zeros(2, np.float32)}, {}

    def step(self, action):
        self.t += 1
        self.left -= int(action[0] > 0)
        done = self.left == 0
        obs = {"pixels": np.zeros((8, 8, 3), np.uint8), "proprio": np.full(2, self.t, np.float32)}
        return obs, float(done), done, self.t >= 10, {"success": done}


def make_env():
    return CountdownEnv()


def adapter(obs):
    return {"image": obs["pixels"], "state": obs["proprio"], "instruction": "count down"}


def test_a_duck_typed_env_with_an_adapter_runs_by_module_path():
    always = compare_closed_loop(
        lambda f: np.ones((len(f["state"]), 2, 1), np.float32),
        lambda f: -np.ones((len(f["state"]), 2, 1), np.float32),
        episodes=6,
        min_episodes=5,
        seed=0,
        env="test_verify:make_env",
        adapter="test_verify:adapter",
        max_steps=10,
    )
    assert always.env == "test_verify:make_env"
    assert always.reference.successes == 6 and always.candidate.successes == 0
    assert always.candidate.steps == 6 * 10  # truncated at 10 steps each
    assert always.status == "ok" and not always


def test_env_protocol_violations_and_bad_paths_are_user_errors():
    class NoSuccess(CountdownEnv):
        def step(self, action):
            obs, r, term, trunc, _ = super().step(action)
            return obs, r, term, trunc, {}

    with pytest.raises(VlaedgeError, match="success"):
        closed_loop(lambda f: np.ones((1, 1, 1), np.float32), 1, make_env=NoSuccess, adapter=adapter)
    with pytest.raises(VlaedgeError, match="package.module:name"):
        compare_closed_loop(None, None, 1, 1, env="no_colon")
    with pytest.raises(VlaedgeError, match="cannot import"):
        compare_closed_loop(None, None, 1, 1, env="no_such_module_xyz:make_env")


@pytest.mark.slow
def test_tabletop_closed_loop_is_deterministic_per_seed_for_reference_and_candidate(trained_policy):
    from vlaedge.runtimes import open_runtime

    policy = trained_policy("chunk")
    rt = open_runtime("torch", policy)
    report = compare_closed_loop(
        policy.act,
        lambda f: policy.decode(rt.infer(policy.make_inputs(f))),
        episodes=8,
        min_episodes=8,
        seed=10_000,
    )
    assert report.env == "tabletop" and report.status == "ok"
    # same policy, same seeds, same noise: identical outcomes episode by episode
    assert report.reference.per_episode == report.candidate.per_episode
    assert report.drop == 0.0 and report.reference.steps == report.candidate.steps > 0
    assert report.drop_interval[0] < 0 < report.drop_interval[1]


def test_traces_run_in_drift_sized_batches(tiny_run, monkeypatch):
    """Action traces follow whole episodes (up to 80 frames each) in batches of the drift's size: one batch
    of 80 frames of a pi0-size policy took more than 19 GB."""
    from vlaedge.check import verify as verify_module
    from vlaedge.recipe import VerifyConfig
    from vlaedge.runtimes import open_runtime

    monkeypatch.setattr("vlaedge.check.drift.BATCH_SIZE", 8)
    inner, batches = open_runtime("ort-cpu", tiny_run.policy, tiny_run.onnx), []

    class Recording(Runtime):
        name, session, input_spec = "ort-cpu", inner.session, inner.input_spec

        def _infer(self, feeds):
            batches.append(len(feeds["state"]))
            return inner.infer(feeds)

    episodes = tiny_run.dataset.episodes[:2]
    traces = verify_module._traces(tiny_run.policy, Recording(), tiny_run.dataset,
                                   VerifyConfig(trace_episodes=2))
    lengths = [min(len(ep), verify_module.MAX_TRACE_FRAMES) for ep in episodes]
    assert [len(t["candidate"]) for t in traces] == [len(t["reference"]) for t in traces] == lengths
    assert max(batches) == 8 and sum(batches) == sum(lengths) and len(batches) > 2
    assert np.allclose(traces[0]["reference"], traces[0]["candidate"], atol=1e-3)  # FP32 ONNX vs torch
