"""vlaedge works as an installed package, not only in the git checkout: build the wheel, install it into
a fresh virtual environment (pinned by constraints.txt, as `make setup` does; every dependency installed
afresh but torch, which is linked from this environment), and run the default compress from an empty
folder, where no recipes/ or calibration/ folder is in reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(cmd: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (
        f"{cmd} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `vlaedge` console script of a fresh venv that has only the wheel, its pinned dependencies and
    this environment's torch."""
    work = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", work / "dist", ROOT], work)
    (wheel,) = (work / "dist").glob("vlaedge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vlaedge/recipes/cpu-int8.yaml" in names
    assert "vlaedge/assets/calibration/tabletop/meta/info.json" in names
    assert "vlaedge/assets/default_policy/model.safetensors" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    venv = work / "venv"
    run([sys.executable, "-m", "venv", venv], work)
    # torch (750 MB, a minute to unpack on 2 cores) is the only dependency not installed afresh: the venv
    # sees this environment's pinned CPU torch through a .pth file naming a folder that holds torch alone,
    # so pip finds `torch` satisfied and installs every other dependency from the wheel's metadata.
    link_torch(venv)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "-c", ROOT / "constraints.txt"]
    run(pip + [wheel], work)
    return venv / "bin" / "vlaedge"


def link_torch(venv: Path) -> None:
    """Make this environment's torch (and only torch: its packages and dist-info, from its RECORD) importable
    in `venv`."""
    import importlib.metadata

    dist = importlib.metadata.distribution("torch")
    tops = {Path(f.parts[0]) for f in dist.files if f.parts[0] != ".."}
    source = Path(dist.locate_file(""))
    only_torch = venv / "torch-only"
    only_torch.mkdir()
    for top in tops:
        (only_torch / top).symlink_to(source / top)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "torch-only.pth").write_text(f"{only_torch}\n")


def test_installed_wheel_compresses_the_default_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    listing = run([installed, "recipes"], tmp_path).stdout
    assert "cpu-int8" in listing and "orin-int8" in listing
    # the speed budget is timed and this test is about packaging: judge drift and success only
    result = run([installed, "compress", "--recipe", "cpu-int8", "--out", "run",
                  "--set", "budgets.min_speedup=null"], tmp_path)
    assert "gate: PASS" in result.stdout, result.stdout[-2000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    data = Path(manifest["inputs"]["data"]["path"])
    assert "site-packages" in data.parts and data.name == "tabletop"  # the calibration sample in the wheel
    assert manifest["gate"]["passed"]
    assert ".run.partial" not in (tmp_path / "run" / "report.json").read_text()  # final paths only
    assert {"model.onnx", "report.json", "report.md", "report.html", "junit.xml"} <= set(manifest["outputs"])
    # a path still works, and a missing one names the shipped recipes
    recipe = Path(manifest["inputs"]["data"]["path"]).parents[2] / "recipes" / "cpu-int8.yaml"
    assert run([installed, "compress", "--recipe", recipe, "--out", "run2", "--set", "verify=null",
                "--set", "budgets=null"], tmp_path).returncode == 0
    missing = subprocess.run([installed, "compress", "--recipe", "recipes/cpu-int8.yaml", "--out", "run3"],
                             cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and "cpu-int8" in missing.stderr + missing.stdout
    assert not (tmp_path / "run3").exists()
