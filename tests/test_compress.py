"""End to end: `vlaedge compress` from a recipe into a complete output directory, or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import run_cli

from vlaedge.artifact import sha256

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
# small calibration / check sizes so every recipe runs in seconds on the nano test policy
FAST = ["--set", "quantize.num_calib_frames=64", "--set", "export.check_frames=8"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_cpu_int8_writes_a_complete_output_with_a_checked_manifest(tmp_path, trained_checkpoint, capsys,
                                                                   monkeypatch):
    out = tmp_path / "run"
    code, text = run_cli(["compress", trained_checkpoint("chunk"), "--recipe", ROOT / "recipes/cpu-int8.yaml",
                          "--out", out, *FAST], capsys, monkeypatch)
    assert code in (0, 1), text  # 1 only if a budget was violated: the output is still complete
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"model.onnx", "model_fp32.onnx"} <= set(manifest["outputs"])
    for name, entry in manifest["outputs"].items():
        assert sha256(out / name) == entry["sha256"], name
    assert manifest["target"] == "cpu"
    split = manifest["split"]
    assert split["calibration_episodes"] and split["evaluation_episodes"]
    assert not set(split["calibration_episodes"]) & set(split["evaluation_episodes"])
    assert {"export_fp32", "quantize", "export"} <= set(manifest["stages"])
    # INT8 weights: the quantized file is far smaller than the FP32 one
    assert (out / "model.onnx").stat().st_size < 0.5 * (out / "model_fp32.onnx").stat().st_size
    assert leftovers(tmp_path) == []


def test_existing_output_is_refused_without_force_and_replaced_with_it(tmp_path, trained_checkpoint, capsys,
                                                                        monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["compress", trained_checkpoint("chunk"), "--recipe", ROOT / "recipes/cpu-int8.yaml", "--out", out,
            *FAST, "--set", "verify=null", "--set", "budgets=null"]
    code, text = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "already exists" in text and "--force" in text and "Traceback" not in text
    assert (out / "keep.txt").read_text() == "mine"
    code, text = run_cli([*args, "--force"], capsys, monkeypatch)
    assert code == 0, text
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()


def test_interrupted_compress_leaves_nothing_behind(tmp_path, trained_checkpoint, capsys, monkeypatch):
    import vlaedge.compress.quantize

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vlaedge.compress.quantize, "quantize", interrupted)
    out = tmp_path / "run"
    code, text = run_cli(["compress", trained_checkpoint("chunk"), "--recipe", ROOT / "recipes/cpu-int8.yaml",
                          "--out", out, *FAST], capsys, monkeypatch)
    # the real message, not a word that pytest's temporary folder name (test_interrupted_...) also holds
    lines = text.strip().splitlines()
    assert code == 2 and "interrupted: stopped by Ctrl-C" in text, text
    assert lines[-2].startswith("interrupted: ") and lines[-1].startswith("  fix: ")
    assert "Traceback" not in text
    assert list(tmp_path.iterdir()) == []  # no output, no partial staging directory


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_compresses_a_trained_policy(recipe, tmp_path, trained_checkpoint, capsys, monkeypatch):
    """Every stage of every shipped recipe runs; the recovery training is shortened (its hundreds of steps
    only change how close the pruned policy gets: the shipped budgets are judged on the examples with the
    recipes as shipped, tests/test_examples.py)."""
    out = tmp_path / "run"
    recover = ["--set", "prune.recover.steps=20", "--set", "prune.num_frames=32"] \
        if "\n  recover:" in recipe.read_text() else []
    code, text = run_cli(["compress", trained_checkpoint("chunk"), "--recipe", recipe, "--out", out, *FAST,
                          *recover, "--set", "verify=null", "--set", "budgets=null"], capsys, monkeypatch)
    assert code == 0, text
    manifest = json.loads((out / "manifest.json").read_text())
    assert "model.onnx" in manifest["outputs"]
    assert "Traceback" not in text


def test_bad_inputs_fail_with_one_line_and_no_output(tmp_path, trained_checkpoint, capsys, monkeypatch):
    out = tmp_path / "run"
    cases = [
        (["--recipe", tmp_path / "missing.yaml"], "missing.yaml"),
        (["--recipe", ROOT / "recipes/cpu-int8.yaml", "--set", "quantise.precision=int8"], "quantise"),
        (["--recipe", ROOT / "recipes/orin-int8.yaml", "--set", "quantize.precision=fp8"], "fp8"),
        (["--recipe", ROOT / "recipes/cpu-int8.yaml", "--data", tmp_path / "nowhere"], "does not exist"),
    ]
    for extra, needle in cases:
        code, text = run_cli(["compress", trained_checkpoint("chunk"), "--out", out, *extra], capsys,
                             monkeypatch)
        assert code == 2, (extra, text)
        assert needle in text and "Traceback" not in text, (extra, text)
        assert not out.exists()
    code, text = run_cli(["compress", tmp_path / "no-such-checkpoint", "--out", out], capsys, monkeypatch)
    assert code == 2 and "no-such-checkpoint" in text and not out.exists()


def test_messages_name_the_final_output_not_the_staging_folder():
    from vlaedge.artifact import final_path

    assert final_path("runs/.demo.partial-zs0p_hd3/model.onnx") == Path("runs/demo/model.onnx")
    assert final_path("/tmp/.my.run.partial-ab12/engine/build.sh") == Path("/tmp/my.run/engine/build.sh")
    assert final_path("runs/.hidden/model.onnx") == Path("runs/.hidden/model.onnx")
