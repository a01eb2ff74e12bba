"""The `trt` runtime's own logic against fake tensorrt / torch.cuda modules (tests/trt_fakes.py): CUDA-graph
capture that TensorRT refuses, one context per shape set, shapes outside the profile, I/O types numpy
lacks, and the DLA core set before deserializing (issue 17, bugs 2 and 3)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from trt_fakes import FakeTensorRT, FakeTorch

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import TensorSpec
from vlaedge.runtimes.plan import write_plan_sidecar
from vlaedge.runtimes.trt import TrtRuntime

SPEC = (TensorSpec("x", ("B", 4), "float32", -1.0, 1.0),)


@pytest.fixture
def fake(monkeypatch):
    """Installs a fake tensorrt (keyword arguments: see FakeTensorRT) and torch for this test only."""

    def install(**kwargs) -> FakeTensorRT:
        trt = FakeTensorRT(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "torch", FakeTorch(trt))
        return trt

    return install


def _plan(tmp_path, dla_core=None):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"fake plan")
    write_plan_sidecar(plan, "10.3.0", "8.7", "agx-orin-64gb", dla_core)
    return plan


def _expected(x: np.ndarray) -> np.ndarray:
    return x @ np.ones((4, 2), np.float32)


def _feeds(batch: int, value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((batch, 4), value, np.float32)}


def test_refused_capture_falls_back_to_plain_enqueue(fake, tmp_path):
    trt = fake(enqueue_in_capture=False)
    rt = TrtRuntime(_plan(tmp_path), SPEC, ("y",))
    for value in (0.25, -0.5, 1.0):  # every call computes from its own input, none replays an empty graph
        np.testing.assert_array_equal(rt.infer(_feeds(1, value))["y"], _expected(_feeds(1, value)["x"]))
    assert not any(c[0] == "replay" for c in trt.calls)


def test_captured_graph_replays_on_fresh_inputs_with_one_context_per_shape_set(fake, tmp_path):
    trt = fake()
    rt = TrtRuntime(_plan(tmp_path), SPEC, ("y",))
    for batch, value in ((1, 0.5), (2, -0.25), (1, 0.75), (2, 1.0)):
        feeds = _feeds(batch, value)
        np.testing.assert_array_equal(rt.infer(feeds)["y"], _expected(feeds["x"]))
    assert [c for c in trt.calls if c[0] == "replay"] == [("replay", 1)] * 4
    assert trt.calls.count(("create_execution_context",)) == 2  # batch 1 and batch 2


def test_shape_outside_the_profile_is_a_clear_error(fake, tmp_path):
    fake()
    rt = TrtRuntime(_plan(tmp_path), SPEC, ("y",))
    with pytest.raises(VlaedgeError, match=r"refuses input x with shape \(9, 4\)") as e:
        rt.infer(_feeds(9, 0.0))
    assert "max_batch" in e.value.hint


def test_io_type_without_a_numpy_type_is_a_clear_error(fake, tmp_path):
    fake(output_dtype="BF16")
    with pytest.raises(VlaedgeError, match="plan tensor y is 7, which has no numpy type"):
        TrtRuntime(_plan(tmp_path), SPEC, ("y",))


def test_dla_core_is_set_before_deserializing(fake, tmp_path):
    trt = fake(dla_cores=2)
    TrtRuntime(_plan(tmp_path, dla_core=1), SPEC, ("y",))
    assert ("deserialize", 1) in trt.calls
    trt = fake(dla_cores=2)
    TrtRuntime(_plan(tmp_path, dla_core=None), SPEC, ("y",))  # a GPU plan leaves the runtime's default
    assert ("deserialize", -1) in trt.calls
    fake(dla_cores=0)
    with pytest.raises(VlaedgeError, match="built for DLA core 1, this device has 0 DLA core"):
        TrtRuntime(_plan(tmp_path, dla_core=1), SPEC, ("y",))


def test_an_input_tensorrt_removed_as_unused_is_not_fed(fake, tmp_path, capsys):
    """The export keeps an input the model never reads as an unconsumed graph input; TensorRT's dead-layer
    pass may remove it from the plan. The plan then runs on the policy's feeds without it."""
    fake()
    unused = TensorSpec("task_id", ("B",), "int64", 0.0, 3.0)
    rt = TrtRuntime(_plan(tmp_path), (*SPEC, unused), ("y",))
    assert rt.ignored_inputs == ("task_id",)
    assert "takes no input task_id" in capsys.readouterr().err
    feeds = {**_feeds(2, 0.5), "task_id": np.zeros(2, np.int64)}
    np.testing.assert_allclose(rt.infer(feeds)["y"], _expected(feeds["x"]))


def test_a_plan_input_the_policy_does_not_give_is_refused(fake, tmp_path):
    fake()
    with pytest.raises(VlaedgeError, match=r"the policy gives \['state'\] \(no x\)"):
        TrtRuntime(_plan(tmp_path), (TensorSpec("state", ("B", 4), "float32", -1.0, 1.0),), ("y",))
