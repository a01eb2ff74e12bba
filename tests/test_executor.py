"""The executor seam (`vlaedge.executor`) on a local Ray cluster of this machine's 2 CPUs (one per module):
a small tune and a 20-episode closed loop through Ray equal the local executor's results; a worker killed
mid-unit is retried, and one that is lost past its retries stops the run with one line naming the unit,
the node and the cause; a blob whose bytes do not match its sha256 is refused where it arrives; the time
box cancels what is still pending. The CLI flags are checked against the recipe section, and Ray is never
imported by `import vlaedge`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlaedge.errors import VlaedgeError
from vlaedge.executor import NOT_RUN, Blob, Unit, open_executor, using

ROOT = Path(__file__).resolve().parent.parent


def test_import_vlaedge_and_the_cli_do_not_import_ray():
    code = ("import sys, vlaedge, vlaedge.cli, vlaedge.executor, vlaedge.tune, vlaedge.check.closedloop; "
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_a_blob_is_checked_where_it_is_opened():
    blob = Blob.of_object("feeds", {"a": [1, 2]})
    assert blob.load() == {"a": [1, 2]}
    with pytest.raises(VlaedgeError, match="tampered arrived with sha256 .* it was sent as 000000000000"):
        Blob("tampered", "0" * 64, b"other bytes").open()
    with pytest.raises(VlaedgeError, match="holds a file outside its folder"):
        Blob.of_object("files", {"../escape": b"x"}).unpack(Path("/tmp/never-written"))


def test_bad_executor_settings_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from cli_runner import run_cli

    code, output = run_cli(["tune", "--address", "10.0.0.1:6379", "--out", tmp_path / "t"], capsys,
                           monkeypatch)
    assert code == 2 and "executor.address" in output and "ray://HOST:PORT" in output
    assert not (tmp_path / "t").exists()
    from vlaedge.commands import executor_config

    assert executor_config(None, None, None) is None  # verify without flags or recipe: local
    assert executor_config(None, None, "ray://head:10001").kind == "ray"  # --address alone implies ray
    with pytest.raises(VlaedgeError, match="executor: kind: .*'dask'"):
        executor_config(None, "dask", None)
    with pytest.raises(VlaedgeError, match="needs the ray executor"):
        open_executor("local", timing_resource="jetson-orin")
    with pytest.raises(VlaedgeError, match="'dask' is not an executor"):
        open_executor("dask")


def _pid_once(marker: str) -> int:
    """Dies (as a lost worker does) the first time it runs; returns the worker's pid after that."""
    if not os.path.exists(marker):
        Path(marker).write_text("died once")
        os._exit(1)
    return os.getpid()


def _open(blob: Blob) -> int:
    return len(blob.open())


@pytest.fixture(scope="module")
def ray_executor():
    """A Ray instance on this machine's 2 CPUs, one node with the custom resource jetson-orin."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, resources={"jetson-orin": 1}, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    try:
        with open_executor("ray", max_retries=2, episodes_per_task=10,  # joins that instance
                           log=lambda _: None) as executor:
            yield executor
    finally:
        ray.shutdown()


def test_a_killed_worker_is_retried_and_a_lost_unit_is_named(ray_executor, tmp_path):
    pid = ray_executor.run([Unit("unit that dies once", _pid_once, (str(tmp_path / "m"),))])[0]
    assert pid != os.getpid() and ray_executor.nodes["unit that dies once"].endswith(")")
    ray_executor.max_retries = 0
    try:
        with pytest.raises(VlaedgeError) as e:
            ray_executor.run([Unit("closed loop: candidate episodes 0-9", _pid_once, (str(tmp_path / "n"),))])
    finally:
        ray_executor.max_retries = 2
    assert e.value.message.startswith(f"executor ray: closed loop: candidate episodes 0-9 was lost on node "
                                      f"{ray_executor.node} after 1 attempt (max_retries=0): its worker "
                                      "process died")
    assert "\n" not in e.value.message and "executor.max_retries" in e.value.hint


def test_blobs_travel_through_the_object_store_and_are_checked_on_arrival(ray_executor):
    good = Blob.of("weights", b"x" * 100_000)
    assert ray_executor.run([Unit("a", _open, (good,)), Unit("b", _open, (good,))]) == [100_000, 100_000]
    with pytest.raises(VlaedgeError, match=r"^tune: variant x \(on .*\): executor: tampered arrived with "):
        ray_executor.run([Unit("tune: variant x", _open, (Blob("tampered", "0" * 64, b"bytes"),))])


def test_a_20_episode_closed_loop_through_ray_equals_the_local_run(ray_executor, trained_policy, tmp_path):
    from vlaedge.check.closedloop import compare_closed_loop
    from vlaedge.check.sendable import RuntimeAct
    from vlaedge.compress.export import export_onnx
    from vlaedge.executor import Executor
    from vlaedge.recipe import ExportConfig
    from vlaedge.runtimes import open_runtime

    policy = trained_policy("chunk")
    export_onnx(policy, tmp_path / "m.onnx", ExportConfig(), policy.example_inputs(2))

    def run(executor):
        with using(executor):
            candidate = RuntimeAct(policy, open_runtime("ort-cpu", policy, tmp_path / "m.onnx", 1),
                                   tmp_path / "m.onnx", 1)
            return compare_closed_loop(policy.act, candidate, 20, 10, image_size=32, max_steps=20)

    local = Executor()
    local.episodes_per_task = 10  # as the cluster's: the same partition of the 20 episodes
    here, there = run(local), run(ray_executor)
    assert here.to_dict() == there.to_dict()  # outcomes, steps, and the filmstrip's actions and frames
    assert here.candidate.episodes == 20 and here.candidate.steps > 20 * 4
    units = [n for n in ray_executor.nodes if n.startswith("closed loop:")]
    assert sorted(units) == sorted(f"closed loop: {who} episodes {a}-{a + 9}"
                                   for who in ("reference", "candidate") for a in (0, 10))


def test_a_small_tune_through_ray_equals_the_local_run(ray_executor, trained_checkpoint, tmp_path):
    import json

    from vlaedge.recipe import load_recipe
    from vlaedge.tune import tune

    fast = ["quantize.num_calib_frames=32", "export.check_frames=8", "verify.eval_frames=32",
            "verify.profile_runs=5", "verify.profile_warmup=1", "verify.closed_loop_episodes=0",
            "budgets.max_success_drop=null", "budgets.min_speedup=null"]
    recipe = load_recipe(ROOT / "recipes/cpu-int8.yaml", fast)
    space = {"dynamic-pt": {"mode": "dynamic", "per_channel": False}}
    runs = {}
    for name, executor in (("local", None), ("ray", ray_executor)):
        lines = []
        runs[name] = tune(recipe, tmp_path / name, trained_checkpoint("chunk"), max_minutes=3, space=space,
                          search_frames=16, log=lines.append, executor=executor)
    local, ray = ({r["name"]: r for r in runs[k].rows} for k in ("local", "ray"))
    assert list(local) == list(ray) == ["fp32", "dynamic-pt"]
    for name in local:  # the same model (by sha256) and the same drift, built on a worker
        assert ray[name]["model_sha256"] == local[name]["model_sha256"]
        assert ray[name]["drift"] == local[name]["drift"] and ray[name]["search_drift"] == local[name][
            "search_drift"]
    assert (tmp_path / "ray" / "variants" / "dynamic-pt.onnx").is_file()
    assert any(line.startswith("tune: dynamic-pt: drift mean") and line.endswith(f"on {ray_executor.node}")
               for line in lines), lines
    data = json.loads((tmp_path / "ray" / "tune.json").read_text())
    assert data["timing_node"] == ray_executor.node  # latency: one interleaved run, on the node named
    assert data["latency_source"].endswith(f"on {ray_executor.node}")


def test_latency_is_timed_on_the_one_node_with_the_timing_resource(ray_executor, tiny_run, tmp_path):
    import shutil

    from vlaedge.tune.fanout import timed_profile

    models = [tmp_path / "fp32.onnx", tmp_path / "variant.onnx"]
    for path in models:
        shutil.copy(tiny_run.onnx, path)
    ray_executor.timing_resource = "jetson-orin"
    try:
        prof, node = timed_profile(ray_executor, models, "ort-cpu", tiny_run.policy, 3, 1, 1)
        assert len(prof.models) == 2 and node == ray_executor.nodes["tune: latency of 2 models"]
        ray_executor.timing_resource = "thor"
        with pytest.raises(VlaedgeError, match="needs a node with resource 'thor'; the cluster has none"):
            timed_profile(ray_executor, models, "ort-cpu", tiny_run.policy, 3, 1, 1)
    finally:
        ray_executor.timing_resource = None


def test_ctrl_c_cancels_the_tasks_on_the_cluster(ray_executor, monkeypatch):
    import ray

    cancelled, cancel = [], ray.cancel

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "wait", interrupt)  # Ctrl-C while waiting for the first result
    monkeypatch.setattr(ray, "cancel", lambda ref, force: (cancelled.append(ref), cancel(ref, force=force)))
    with pytest.raises(KeyboardInterrupt):
        ray_executor.run([Unit(f"sleep {i}", time.sleep, (30,)) for i in range(2)])
    assert len(cancelled) == 2


def test_the_time_box_cancels_pending_units(ray_executor):  # last: cancelling kills the busy workers
    start = time.monotonic()
    results = ray_executor.run([Unit(f"sleep {i}", time.sleep, (30,)) for i in range(3)],
                               deadline=time.monotonic() + 1)
    assert results == [NOT_RUN] * 3 and time.monotonic() - start < 15
