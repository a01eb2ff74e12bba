"""Remote profiling end to end against a real sshd on 127.0.0.1, started by the test as a "device"
without a GPU: throwaway host and user keys, strict host key checking, batch mode (no passwords).
Skipped when /usr/sbin/sshd is absent (`make test-deps` installs Debian's openssh-server as root)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx import save
from sshd import MISSING, REASON, VLAEDGE, Sshd, free_port

from vlaedge.deploy.engine import build_engine
from vlaedge.deploy.remote import profile_remote
from vlaedge.errors import VlaedgeError
from vlaedge.recipe import EngineConfig

pytestmark = pytest.mark.skipif(MISSING, reason=REASON)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """(ssh config path, host alias, work dir) of a running throwaway sshd."""
    d = tmp_path_factory.mktemp("sshd")
    server = Sshd(d, "device")
    (d / "known_hosts").write_text(server.known_hosts)
    (d / "ssh_config").write_text(server.host_block + f"  UserKnownHostsFile {d / 'known_hosts'}\n")
    why = server.start()
    if why:
        pytest.skip(why)
    yield d / "ssh_config", "device", d
    server.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    nodes = [h.make_node("MatMul", ["state", "W"], ["actions"])]
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("state", T.FLOAT, ["B", 4])],
        [h.make_tensor_value_info("actions", T.FLOAT, ["B", 2])],
        [nh.from_array(np.ones((4, 2), np.float32), "W")],
    )
    path = tmp_path_factory.mktemp("model") / "policy.onnx"
    save(
        h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=9), path
    )  # ORT reads IR <= 10
    return path


def _profile(device, model, tmp_path, **kw):
    cfg, host, d = device
    args = {
        "runtime": "ort-cpu",
        "runs": 5,
        "warmup": 1,
        "out": tmp_path / "pulled",
        "remote_dir": str(d / "remote"),
        "remote_vlaedge": str(VLAEDGE),
        "ssh_config": cfg,
        "timeout_s": 120,
        **kw,
    }
    return profile_remote(host, model, **args)


def test_profile_over_ssh_end_to_end_with_ort_cpu(device, model, tmp_path):
    path = _profile(device, model, tmp_path, threads=1)
    assert path == tmp_path / "pulled" / "profile.json"
    report = json.loads(path.read_text())
    (entry,) = report["models"]
    assert entry["runtime"] == "ort-cpu" and entry["latency"]["runs"] == 5
    runs = list((device[2] / "remote").glob("run-*/model.onnx"))
    assert runs  # the model was copied into a fresh run directory on the "device"


def test_trt_on_a_device_without_tensorrt_fails_clearly(device, model, tmp_path):
    build_engine(model, EngineConfig(), "agx-orin-64gb", "int8", tmp_path)
    with pytest.raises(VlaedgeError, match="TensorRT is absent on device") as e:
        _profile(device, tmp_path / "engine", tmp_path, runtime="trt")
    assert "nvidia-tensorrt" in e.value.hint


def test_trt_needs_a_bundle(device, model, tmp_path):
    with pytest.raises(VlaedgeError, match="needs an engine bundle"):
        _profile(device, model, tmp_path, runtime="trt")


def test_missing_remote_vlaedge(device, model, tmp_path):
    with pytest.raises(VlaedgeError, match="is not found on device") as e:
        _profile(device, model, tmp_path, remote_vlaedge="/nonexistent/bin/vlaedge")
    assert "--remote-vlaedge" in e.value.hint


def test_unknown_host_key_is_refused(device, model, tmp_path):
    cfg, host, d = device
    strict = tmp_path / "ssh_config"
    strict.write_text(cfg.read_text().replace(str(d / "known_hosts"), str(tmp_path / "empty_known_hosts")))
    with pytest.raises(VlaedgeError, match="host key of device is unknown"):
        _profile((strict, host, d), model, tmp_path)


def test_unreachable_host(device, model, tmp_path):
    cfg, host, d = device
    closed = tmp_path / "ssh_config"
    closed.write_text(cfg.read_text().replace(f"Port {_port(cfg)}", f"Port {free_port()}"))
    with pytest.raises(VlaedgeError, match="cannot reach device"):
        _profile((closed, host, d), model, tmp_path)


def _port(cfg: Path) -> str:
    return next(line.split()[1] for line in cfg.read_text().splitlines() if line.strip().startswith("Port "))
