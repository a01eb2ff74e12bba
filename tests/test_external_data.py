"""External data (issue 23, item 2): a model forced through the external-data path (`export.external_data:
always`) is written as NAME.onnx + one NAME.onnx.data per model, never loose per-tensor files; every reader
opens it from another working directory; the manifest lists the data file with its sha256, and a tampered
data file is caught. Also: torch's loose files are consolidated, staging left by killed runs is removed."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_runner import run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from vlaedge.artifact import OutputDir, model_sha256, sha256, sigterm_as_exit
from vlaedge.compress.export import export_onnx
from vlaedge.compress.external_data import write_one_data_file
from vlaedge.errors import VlaedgeError
from vlaedge.recipe import ExportConfig

ROOT = Path(__file__).resolve().parent.parent
ALWAYS = ExportConfig(external_data="always")
FAST = ["--set", "quantize.num_calib_frames=32", "--set", "export.check_frames=4", "--set",
        "verify.eval_frames=16", "--set", "verify.profile_runs=5", "--set", "export.external_data=always"]


def _data_files(folder: Path) -> list[str]:
    """Files that are neither an .onnx nor a vlaedge output: what external data left behind."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".onnx")


@pytest.fixture(scope="module")
def external_model(tmp_path_factory, tiny_run):
    """tiny_run's policy exported with every weight in model.onnx.data."""
    folder = tmp_path_factory.mktemp("external")
    result = export_onnx(tiny_run.policy, folder / "model.onnx", ALWAYS, tiny_run.policy.example_inputs(2))
    return folder / "model.onnx", result


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """An unrelated working directory: readers must find the data file beside the .onnx, not here."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_export_writes_one_data_file_named_after_the_model(external_model):
    path, result = external_model
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert result.external_data and result.data_file == "model.onnx.data"
    assert result.data_sha256 == sha256(path.with_name("model.onnx.data"))
    assert result.data_bytes == path.with_name("model.onnx.data").stat().st_size
    assert result.size_bytes == path.stat().st_size + result.data_bytes
    assert path.stat().st_size < result.data_bytes / 5  # the graph alone
    assert "model.onnx.data" in result.summary() and result.data_sha256[:16] in result.summary()
    assert result.check and result.check.max_abs < 1e-4  # ONNX Runtime read the weights back


def test_every_reader_opens_it_from_another_directory(external_model, tiny_run, elsewhere, capsys,
                                                      monkeypatch):
    path, _ = external_model
    from vlaedge.check.profile import model_file_bytes
    from vlaedge.deploy.engine import build_engine
    from vlaedge.deploy.estimate import estimate
    from vlaedge.recipe import EngineConfig
    from vlaedge.runtimes import open_runtime

    feeds = tiny_run.policy.example_inputs(2)
    ours = open_runtime("ort-cpu", tiny_run.policy, path).infer(feeds)
    theirs = open_runtime("ort-cpu", tiny_run.policy, tiny_run.onnx).infer(feeds)
    assert all(np.allclose(ours[k], theirs[k], atol=1e-5) for k in theirs)
    assert model_file_bytes(path) == path.stat().st_size + path.with_name("model.onnx.data").stat().st_size
    assert estimate(path, "agx-orin-64gb").weights_bytes > 0
    code, text = run_cli(["estimate", path, "--target", "agx-orin-64gb"], capsys, monkeypatch)
    assert code == 0 and "estimated latency" in text, text
    bundle = build_engine(path, EngineConfig(build=False), "agx-orin-64gb", None, elsewhere / "b")
    folder = Path(bundle.bundle)
    assert (folder / "model.onnx.data").read_bytes() == path.with_name("model.onnx.data").read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "model.onnx.data" in json.dumps(manifest)
    code, text = run_cli(["engine", path, "--target", "agx-orin-64gb", "--out", elsewhere / "cli"], capsys,
                         monkeypatch)
    assert code == 0, text
    code, text = run_cli(["profile", path, "--checkpoint", tiny_run.checkpoint, "--runs", 3, "--warmup", 1,
                          "--out", elsewhere / "prof"], capsys, monkeypatch)
    assert code == 0, text
    assert sorted(os.listdir(elsewhere)) == ["b", "cli", "prof"]  # only what was asked for


def test_a_missing_data_file_is_named(external_model, tmp_path, elsewhere, capsys, monkeypatch):
    path, _ = external_model
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.onnx").write_bytes(path.read_bytes())
    code, text = run_cli(["estimate", lone / "model.onnx", "--target", "agx-orin-64gb"], capsys, monkeypatch)
    assert code == 2 and "model.onnx.data, which is missing beside it" in text, text


def test_compress_keeps_each_model_in_its_own_data_file_and_the_manifest_lists_them(
        tiny_run, tmp_path, elsewhere, capsys, monkeypatch):
    out = tmp_path / "run"
    code, text = run_cli(["compress", tiny_run.checkpoint, "--data", tiny_run.data, "--recipe",
                          ROOT / "recipes/cpu-int8.yaml", "--out", out, *FAST], capsys, monkeypatch)
    assert code in (0, 1), text  # 1: an untrained policy may miss a budget; the output is complete
    files = sorted(p.name for p in out.iterdir())
    assert [f for f in files if "onnx" in f] == ["model.onnx", "model.onnx.data", "model_fp32.onnx",
                                                 "model_fp32.onnx.data"]
    assert not [f for f in files if f.startswith(("onnx__", "."))]  # no loose tensors, no staging
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("model.onnx", "model_fp32.onnx"):
        entry, data = manifest["outputs"][name], manifest["outputs"][f"{name}.data"]
        assert entry["external_data"] == [f"{name}.data"] and data["sha256"] == sha256(out / f"{name}.data")
        assert entry["model_sha256"] == model_sha256(out / name) != entry["sha256"]
    assert manifest["stages"]["export_fp32"]["data_file"] == "model_fp32.onnx.data"
    assert manifest["stages"]["export_fp32"]["data_sha256"] == \
        manifest["outputs"]["model_fp32.onnx.data"]["sha256"]
    assert any("model.onnx.data" in note for note in manifest["stages"]["quantize"]["notes"])
    report = json.loads((out / "report.json").read_text())
    assert report["candidate"]["sha256"] == manifest["outputs"]["model.onnx"]["model_sha256"]
    assert "weights in external data model_fp32.onnx.data" in text
    assert not list(elsewhere.iterdir())  # nothing written to the working directory (no augmented_model.onnx)

    # the reader of a run directory, and the gate, from here
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("max_drift_mean_pct: 100.0\n")
    code, text = run_cli(["gate", out, "--budgets", budgets], capsys, monkeypatch)
    assert code == 0, text
    code, text = run_cli(["verify", out, "--frames", 8, "--no-profile", "--out", tmp_path / "v"], capsys,
                         monkeypatch)
    assert code == 0, text
    assert json.loads((tmp_path / "v" / "report.json").read_text())["candidate"]["sha256"] == \
        manifest["outputs"]["model.onnx"]["model_sha256"]

    # a tampered data file: the fingerprint changes and the gate refuses the run
    data = out / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    assert model_sha256(out / "model.onnx") != manifest["outputs"]["model.onnx"]["model_sha256"]
    code, text = run_cli(["gate", out, "--budgets", budgets], capsys, monkeypatch)
    assert code == 2 and "model.onnx.data changed after the run wrote it" in text, text


def test_loose_per_tensor_files_become_one_data_file(tmp_path):
    rng = np.random.default_rng(0)
    weights = [nh.from_array(rng.random((64, 64)).astype(np.float32), f"onnx__MatMul_{i}") for i in range(3)]
    nodes = [h.make_node("MatMul", [f"x{i}", w.name], [f"x{i + 1}"]) for i, w in enumerate(weights)]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x0", T.FLOAT, ["B", 64])],
                         [h.make_tensor_value_info("x3", T.FLOAT, ["B", 64])], weights)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    assert len(list(tmp_path.iterdir())) == 4  # loose per-tensor files, as torch's exporter wrote them
    data = write_one_data_file(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert data.sha256 == sha256(tmp_path / "model.onnx.data")
    loaded = onnx.load(str(path))
    for w in weights:
        got = next(i for i in loaded.graph.initializer if i.name == w.name)
        assert np.array_equal(nh.to_array(got), nh.to_array(w))


def test_never_refuses_a_graph_that_needs_external_data(tiny_run, tmp_path, monkeypatch):
    """`external_data: never` refuses a graph over the 2 GB limit (lowered here) and leaves nothing; `auto`
    keeps such a graph's weights in its data file."""
    import vlaedge.compress.export_graph as export_graph
    import vlaedge.compress.export_weights as export_weights

    for module in (export_graph, export_weights):
        monkeypatch.setattr(module, "TWO_GB", 4096)
    policy = tiny_run.policy
    with pytest.raises(VlaedgeError, match="over protobuf's 2 GB limit") as info:
        export_onnx(policy, tmp_path / "never" / "model.onnx", ExportConfig(external_data="never"))
    assert "external_data: auto" in info.value.hint
    assert list((tmp_path / "never").iterdir()) == []
    result = export_onnx(policy, tmp_path / "auto" / "model.onnx", ExportConfig(), policy.example_inputs(2))
    assert result.data_file == "model.onnx.data" and result.check.max_abs < 1e-4
    assert _data_files(tmp_path / "auto") == ["model.onnx.data"]


def test_a_graph_under_2_gb_is_self_contained_with_the_same_weights(external_model, tiny_run, tmp_path):
    """The default export checks the graph on its data file, then writes the weights back into the .onnx
    (one initializer record at a time): same initializers as the external-data export, one file."""
    path, _ = external_model
    result = export_onnx(tiny_run.policy, tmp_path / "model.onnx", ExportConfig(),
                         tiny_run.policy.example_inputs(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert not result.external_data and result.data_file is None
    assert result.size_bytes == (tmp_path / "model.onnx").stat().st_size
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    inline, external = onnx.load(str(tmp_path / "model.onnx")), onnx.load(str(path))
    assert not any(t.data_location == T.EXTERNAL for t in inline.graph.initializer)
    got = {t.name: nh.to_array(t) for t in inline.graph.initializer}
    want = {t.name: nh.to_array(t) for t in external.graph.initializer}
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_inline_weights_appends_initializer_records_that_every_parser_merges(external_model, tmp_path):
    import shutil

    import onnxruntime as ort

    from vlaedge.compress.export_weights import inline_weights

    path, _ = external_model
    for f in path.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    inline_weights(tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert len(model.graph.node) == len(onnx.load(str(path), load_external_data=False).graph.node)
    feeds = {i.name: np.zeros([1 if isinstance(d, str) else d for d in
                               [x.dim_param or x.dim_value for x in i.type.tensor_type.shape.dim]],
                              nh.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
             for i in model.graph.input}
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)
            for p in (path, tmp_path / "model.onnx")]
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


def test_staging_left_by_killed_runs_is_removed(tiny_run, tmp_path):
    stale_export = tmp_path / ".model.onnx.partial"
    stale_export.mkdir()
    (stale_export / "model.onnx.data").write_bytes(b"half")
    export_onnx(tiny_run.policy, tmp_path / "model.onnx", ALWAYS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    # a compress killed while writing another --out in the same folder (its lock is not held)
    killed = tmp_path / ".other-run.partial-abc123"
    (killed / ".model.onnx.partial").mkdir(parents=True)
    with OutputDir(tmp_path / "run") as od:
        assert not killed.exists()
        od.commit()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_unwinds_so_staging_is_removed(tmp_path):
    with pytest.raises(SystemExit) as info, OutputDir(tmp_path / "run") as od:
        (od.path / "model.onnx.data").write_bytes(b"x" * 100)
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_exit():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_device_check_builds_from_an_external_data_run(external_model, tiny_run, tmp_path, elsewhere,
                                                       monkeypatch):
    """device-check on stand-ins (as tests/test_device_check.py): the fake tensorrt builds from the bundle's
    model.onnx, whose data file the bundle copied beside it; ONNX Runtime plays the plan."""
    from trt_fakes import fake_orin_run

    import vlaedge.runtimes
    from vlaedge.device_check import device_check

    path, _ = external_model
    run = tmp_path / "run"
    run.mkdir()
    for f in path.parent.glob("model.onnx*"):
        (run / f.name).write_bytes(f.read_bytes())
    fake_orin_run(run, tiny_run, monkeypatch)
    real = vlaedge.runtimes.open_runtime
    monkeypatch.setattr(vlaedge.runtimes, "open_runtime",
                        lambda name, policy, model=None, threads=None, qdq="fused":
                        real("ort-cpu" if name == "trt" else name, policy, model, threads, qdq))
    import vlaedge.device_check

    # profiling measures memory in a fresh process, which cannot see the fake tensorrt: not judged here
    monkeypatch.setattr(vlaedge.device_check, "_profile", lambda *args: {"runs": 0})
    check = device_check(run, frames=4, runs=2, warmup=1, log=lambda line: None)
    assert check and check.compare["drift_max_pct"] == 0.0
    assert (run / "engine" / "model.onnx.data").read_bytes() == (run / "model.onnx.data").read_bytes()
    assert not list(elsewhere.iterdir())


def test_a_run_made_from_relative_paths_is_read_from_another_folder_and_a_moved_checkpoint_is_named(
        tiny_run, tmp_path, capsys, monkeypatch):
    import shutil

    shutil.copytree(tiny_run.checkpoint, tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)  # the run is made with relative paths, as typed at a shell
    code, text = run_cli(["compress", "ckpt", "--data", tiny_run.data, "--recipe",
                          ROOT / "recipes/cpu-int8.yaml", "--out", "run", *FAST], capsys, monkeypatch)
    assert code in (0, 1), text
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["inputs"]["checkpoint"]["path"] == str((tmp_path / "ckpt").resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, text = run_cli(["verify", tmp_path / "run", "--frames", 8, "--no-profile", "--out", "v"], capsys,
                         monkeypatch)
    assert code == 0, text
    report = json.loads((tmp_path / "elsewhere" / "v" / "report.json").read_text())
    assert report["policy"]["sha256"] == manifest["inputs"]["checkpoint"]["sha256"]  # not the default policy
    (tmp_path / "ckpt").rename(tmp_path / "moved")
    code, text = run_cli(["verify", tmp_path / "run", "--frames", 8, "--no-profile", "--out", "v2"], capsys,
                         monkeypatch)
    assert code == 2 and "verify: the run's checkpoint" in text and "is not found from" in text, text
    assert "pass it with -c / --checkpoint" in text and not (tmp_path / "elsewhere" / "v2").exists()
    code, text = run_cli(["verify", tmp_path / "run", "-c", tmp_path / "moved", "--frames", 8, "--no-profile",
                          "--out", "v3"], capsys, monkeypatch)
    assert code == 0, text
