"""A fleet of two "devices": two throwaway sshd on 127.0.0.1 (tests/sshd.py), named in an inventory with
different targets. `vlaedge profile --inventory` profiles on both at once and judges each against its own
target's budgets; a device that fails stops the run with one line naming it, and nothing is written at
--out; an inventory with a typo is refused like a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx import save
from sshd import MISSING, REASON, VLAEDGE, Sshd

from vlaedge.deploy.fleet import load_inventory
from vlaedge.errors import VlaedgeError

pytestmark = pytest.mark.skipif(MISSING, reason=REASON)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """(inventory path, folder) for devices orin-a (agx-orin-64gb) and nano-b (orin-nano-8gb)."""
    d = tmp_path_factory.mktemp("fleet")
    servers = [Sshd(d / "orin-a", "orin-a"), Sshd(d / "nano-b", "nano-b")]
    (d / "known_hosts").write_text("".join(s.known_hosts for s in servers))
    (d / "ssh_config").write_text("".join(s.host_block + f"  UserKnownHostsFile {d / 'known_hosts'}\n"
                                          for s in servers))
    for server in servers:
        why = server.start()
        if why:
            pytest.skip(why)
    devices = [("orin-a", "agx-orin-64gb"), ("nano-b", "orin-nano-8gb")]
    (d / "fleet.yaml").write_text("ssh_config: ssh_config\ndevices:\n" + "".join(
        f"  - name: {name}\n    ssh: {name}\n    target: {target}\n    vlaedge: {VLAEDGE}\n"
        f"    remote_dir: {d / name / 'remote'}\n" for name, target in devices))
    yield d / "fleet.yaml", d
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    graph = h.make_graph([h.make_node("MatMul", ["state", "W"], ["actions"])], "g",
                         [h.make_tensor_value_info("state", T.FLOAT, ["B", 4])],
                         [h.make_tensor_value_info("actions", T.FLOAT, ["B", 2])],
                         [nh.from_array(np.ones((4, 2), np.float32), "W")])
    path = tmp_path_factory.mktemp("model") / "policy.onnx"
    save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_fleet_profile_gives_one_table_per_device_judged_by_its_target(fleet, model, tmp_path, capsys,
                                                                       monkeypatch):
    inventory, d = fleet
    # a quiet machine: the gate would otherwise (rightly) not judge milliseconds timed under load
    monkeypatch.setattr("vlaedge.check.gate.load_warnings", lambda load: [])
    budgets = tmp_path / "budgets.yaml"  # the nano's own p99 budget cannot be met; the Orin's can
    budgets.write_text("max_latency_p99_ms: 1000\ntargets:\n  orin-nano-8gb:\n"
                       "    max_latency_p99_ms: 0.00001\n")
    out = tmp_path / "out"
    code, output = run_cli(["profile", model, "--inventory", inventory, "--budgets", budgets, "--runs", 5,
                            "--warmup", 1, "--threads", 1, "--out", out], capsys, monkeypatch)
    assert code == 1, output
    last = output.strip().splitlines()[-1]
    assert "fleet profile: budgets violated on nano-b (orin-nano-8gb): max_latency_p99_ms" in last
    assert "orin-a" not in last
    report = json.loads((out / "fleet.json").read_text())
    rows = {r["name"]: r for r in report["devices"]}
    assert [r["name"] for r in report["devices"]] == ["orin-a", "nano-b"] and not report["passed"]
    assert rows["orin-a"]["passed"] and rows["orin-a"]["checks"][0]["allowed"] == 1000
    assert not rows["nano-b"]["passed"] and rows["nano-b"]["checks"][0]["allowed"] == 0.00001
    for name in rows:  # each device profiled on its own machine: its run dir, its pulled report
        assert (out / name / "profile.json").is_file()
        assert list((d / name / "remote").glob("run-*/model.onnx"))
    text = (out / "fleet.md").read_text()
    assert "## orin-a (orin-a, target agx-orin-64gb): within its target's budgets" in text
    assert "## nano-b (nano-b, target orin-nano-8gb): OVER BUDGET" in text


def test_a_failing_device_is_named_and_nothing_is_written(fleet, model, tmp_path, capsys, monkeypatch):
    inventory, d = fleet
    broken = tmp_path / "fleet.yaml"
    nano = f"    remote_dir: {d / 'nano-b'}"
    text = inventory.read_text().replace(f"vlaedge: {VLAEDGE}\n{nano}",
                                         f"vlaedge: /nonexistent/vlaedge\n{nano}")
    broken.write_text(text.replace("ssh_config: ssh_config", f"ssh_config: {d / 'ssh_config'}"))
    out = tmp_path / "out"
    code, output = run_cli(["profile", model, "--inventory", broken, "--runs", 3, "--warmup", 0,
                            "--out", out], capsys, monkeypatch)
    assert code == 2
    line = next(ln for ln in output.splitlines() if ln.startswith("error:"))
    assert line.startswith("error: fleet: profile on nano-b (nano-b): '/nonexistent/vlaedge' is not "
                           "found on nano-b"), line
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_fleet_device_check_names_the_device_without_tensorrt(fleet, tmp_path, capsys, monkeypatch):
    inventory, _ = fleet
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    out = tmp_path / "out"
    code, output = run_cli(["device-check", run, "--inventory", inventory, "--out", out], capsys, monkeypatch)
    assert code == 2
    assert "fleet: device-check on orin-a (orin-a): device-check failed on orin-a" in output, output
    assert "TensorRT is not importable" in output and not out.exists()


def test_an_inventory_is_validated_like_a_recipe(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("devices:\n  - name: a\n    ssh: a\n    target: agx-orin-64gb\n    prot: 22\n")
    with pytest.raises(VlaedgeError, match="prot"):
        load_inventory(bad)
    bad.write_text("devices:\n  - {name: a, ssh: a, target: orin-nano}\n  - {name: a, ssh: b, target: x}\n")
    with pytest.raises(VlaedgeError, match="unknown target 'orin-nano'"):
        load_inventory(bad)
    bad.write_text("devices:\n  - {name: a, ssh: a, target: agx-orin-64gb}\n"
                   "  - {name: a, ssh: b, target: agx-orin-64gb}\n")
    with pytest.raises(VlaedgeError, match="a appear twice"):
        load_inventory(bad)
