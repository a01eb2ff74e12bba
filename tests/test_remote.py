"""Remote profiling end to end against a real sshd on 127.0.0.1, started by the test as a "device"
without a GPU: throwaway host and user keys, strict host key checking, batch mode (no passwords).
Skipped when /usr/sbin/sshd is absent (`make test-deps` installs Debian's openssh-server as root)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx import save

from vlaedge.deploy.engine import build_engine
from vlaedge.deploy.remote import profile_remote
from vlaedge.errors import VlaedgeError
from vlaedge.recipe import EngineConfig

ROOT = Path(__file__).resolve().parent.parent
SSHD = Path("/usr/sbin/sshd")
VLAEDGE = ROOT / ".venv" / "bin" / "vlaedge"

pytestmark = pytest.mark.skipif(
    not SSHD.exists() or not shutil.which("ssh") or not shutil.which("ssh-keygen"),
    reason="needs /usr/sbin/sshd, ssh and ssh-keygen (run 'make test-deps' as root to install "
    "openssh-server)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """(ssh config path, host alias, work dir) of a running throwaway sshd."""
    d = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(d / "host_key")
    (d / "authorized_keys").write_text(_keygen(d / "user_key") + "\n")
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / "host_key"}
AuthorizedKeysFile {d / "authorized_keys"}
PidFile {d / "sshd.pid"}
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
""")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = open(d / "sshd.log", "w")  # noqa: SIM115 (open while sshd runs)
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stderr=log)
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (d / "ssh_config").write_text(f"""Host device
  HostName 127.0.0.1
  Port {port}
  User {getpass.getuser()}
  IdentityFile {d / "user_key"}
  IdentitiesOnly yes
  UserKnownHostsFile {d / "known_hosts"}
  GlobalKnownHostsFile /dev/null
""")
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-300:]}")
            time.sleep(0.05)
    yield d / "ssh_config", "device", d
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


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
    closed.write_text(cfg.read_text().replace(f"Port {_port(cfg)}", f"Port {_free_port()}"))
    with pytest.raises(VlaedgeError, match="cannot reach device"):
        _profile((closed, host, d), model, tmp_path)


def _port(cfg: Path) -> str:
    return next(line.split()[1] for line in cfg.read_text().splitlines() if line.strip().startswith("Port "))
