"""`make setup-jetson`: a venv that keeps JetPack's torch and TensorRT (issue 17). What runs here: the pip
commands never name the registry's torch or the x86 lock, the venv sees the system packages and pins the
torch it finds, and a Python without JetPack's torch and TensorRT is refused with one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlaedge.info import tensorrt_version

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_setup_jetson_installs_against_the_pinned_jetpack_torch_only(tmp_path):
    venv = tmp_path / "jv"
    run = _make("-n", "setup-jetson", f"JETSON_VENV={venv}")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any(f"-m venv --system-site-packages {venv}" in line for line in lines)
    pips = [line for line in lines if "pip install" in line]
    assert pips, lines
    for line in pips:
        assert f"-c {venv}/jetpack-pins.txt" in line and "constraints.txt" not in line and "torch" not in line


def test_jetson_venv_pins_the_torch_it_finds(tmp_path):
    fakes = tmp_path / "jetpack"  # stand-ins for JetPack's torch wheel and apt's tensorrt
    (fakes / "torch").mkdir(parents=True)
    (fakes / "torch" / "__init__.py").write_text("__version__ = '2.5.0a0+872d972e41.nv24.08'\n")
    (fakes / "tensorrt").mkdir()
    (fakes / "tensorrt" / "__init__.py").write_text("__version__ = '10.3.0.30'\n")
    venv = tmp_path / "jv"
    env = {**os.environ, "PYTHONPATH": str(fakes)}
    run = _make("jetson-venv", f"PYTHON={sys.executable}", f"JETSON_VENV={venv}", env=env)
    assert run.returncode == 0, run.stderr
    assert (venv / "jetpack-pins.txt").read_text() == "torch==2.5.0a0+872d972e41.nv24.08\n"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()


@pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")
def test_setup_jetson_refuses_a_python_without_jetpack(tmp_path):
    venv = tmp_path / "jv"
    run = _make("setup-jetson", f"PYTHON={sys.executable}", f"JETSON_VENV={venv}")
    assert run.returncode != 0 and not venv.exists()
    assert "cannot import torch and tensorrt" in run.stderr and "nvidia-jetpack" in run.stderr
