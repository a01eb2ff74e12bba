"""Recipes: the shipped ones load; typos, bad values and recipes a target cannot run are refused with
`path.to.field: message` errors that name the alternatives."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlaedge.errors import VlaedgeError
from vlaedge.recipe import (
    REFERENCE_END,
    REFERENCE_PAGE,
    REFERENCE_START,
    Recipe,
    _sections,
    load_recipe,
    recipe_reference,
    validate_recipe,
    write_reference,
)

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "recipes.md"  # the docs site's recipe reference
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def refused(raw: dict) -> str:
    """The error message for a recipe given as a dict (which must be refused)."""
    with pytest.raises(VlaedgeError) as e:
        validate_recipe(raw, "r.yaml")
    return e.value.message


def test_the_recipes_are_shipped():
    assert {p.name for p in RECIPES} >= {
        "cpu-int8.yaml", "cpu-pruned-int8.yaml", "orin-int8.yaml", "orin-int8-sparse.yaml",
        "orin-nano-int8.yaml", "thor-fp8.yaml", "x86-fp8.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_says_when_to_use_it(path):
    recipe = load_recipe(path)
    assert path.read_text().startswith(f"# {path.stem}:")
    assert "When:" in path.read_text() and "What:" in path.read_text()
    assert recipe.quantize is not None and recipe.budgets.max_drift_mean_pct is not None
    if recipe.target != "cpu":  # no on-device latency numbers we cannot justify
        assert recipe.budgets.max_latency_p99_ms is None and recipe.budgets.min_rate_hz is None
    else:  # a shared CI runner: speed relative to FP32 timed interleaved, never absolute milliseconds
        assert recipe.budgets.min_speedup is not None, path.name
        assert recipe.budgets.max_latency_p99_ms is None and recipe.budgets.min_rate_hz is None, path.name
        assert not any(t.max_latency_p99_ms or t.min_rate_hz for t in recipe.budgets.targets.values())


def test_shipped_recipes_keep_layernorm_unquantized():
    for path in RECIPES:
        assert load_recipe(path).quantize.quantize_layernorm is False, path.name


def test_typo_at_top_level_lists_the_valid_keys():
    msg = refused({"target": "cpu", "quantise": {"precision": "int8"}})
    assert msg.startswith("r.yaml: quantise: unknown key (did you mean 'quantize'?)")
    assert "quantize" in msg and "budgets" in msg


def test_typo_inside_a_section_lists_its_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("target: cpu\nquantize:\n  precison: int8\n")
    with pytest.raises(VlaedgeError) as e:
        load_recipe(path)
    assert "quantize.precison: unknown key (did you mean 'precision'?)" in e.value.message
    assert "precision, algorithm, num_calib_frames" in e.value.message


def test_missing_required_field():
    assert refused({"target": "cpu", "quantize": {"algorithm": "minmax"}}) == (
        "r.yaml: quantize.precision: required field is missing")
    assert refused({"quantize": {"precision": "int8"}}) == "r.yaml: target: required field is missing"


def test_bad_value_quotes_it():
    msg = refused({"target": "cpu", "quantize": {"precision": "fp16"}})
    assert msg.startswith("r.yaml: quantize.precision: ") and "'fp16'" in msg


def test_fp8_on_orin_names_the_fp8_targets():
    msg = refused({"target": "agx-orin-64gb", "quantize": {"precision": "fp8"}})
    assert msg == ("r.yaml: quantize.precision: fp8 is not supported on agx-orin-64gb (Ampere, sm_87); "
                   "targets with fp8: agx-thor, thor-t4000, x86-ada, x86-hopper")
    assert validate_recipe({"target": "x86-hopper", "quantize": {"precision": "fp8"}}).target == "x86-hopper"


def test_cpu_runs_only_ort_int8():
    msg = refused({"target": "cpu", "quantize": {"precision": "int4-weight-only"}})
    assert "quantize.precision: int4-weight-only is not supported on cpu" in msg and "int8 only" in msg
    assert "agx-orin-64gb" in msg  # the targets that can
    assert "ModelOpt" in refused({"target": "cpu", "quantize": {"precision": "int8", "algorithm": "max"}})
    # without an explicit algorithm the cpu target gets ONNX Runtime's minmax, TensorRT targets ModelOpt max
    for target, algorithm in (("cpu", "minmax"), ("x86-ada", "max")):
        recipe = validate_recipe({"target": target, "quantize": {"precision": "int8"}})
        assert recipe.quantize.algorithm == algorithm


def test_algorithm_must_fit_the_precision():
    msg = refused({"target": "agx-orin-64gb", "quantize": {"precision": "int8", "algorithm": "awq"}})
    assert msg.startswith("r.yaml: quantize.algorithm: awq is for int4-weight-only")
    msg = refused({"target": "agx-orin-64gb", "quantize": {"precision": "int8", "algorithm": "entropy"}})
    assert "quantize.algorithm: entropy is an ONNX Runtime (cpu target) calibrator" in msg
    assert "smoothquant" in refused({"target": "agx-thor", "quantize": {"precision": "fp8",
                                                                         "algorithm": "smoothquant"}})
    ok = {"target": "orin-nano-8gb", "quantize": {"precision": "int4-weight-only", "algorithm": "awq"}}
    assert validate_recipe(ok).quantize.algorithm == "awq"


@pytest.mark.parametrize("target", ["orin-nano-8gb-super", "agx-thor"])
def test_dla_refused_where_there_is_none(target):
    msg = refused({"target": target, "engine": {"dla_core": 0, "max_batch": 1}})
    assert msg.startswith(f"r.yaml: engine.dla_core: {target} has no DLA")
    assert "AGX Orin, Orin NX" in msg and "agx-orin-64gb" in msg and "orin-nx-8gb" in msg


def test_dla_core_must_exist_and_take_static_int8():
    msg = refused({"target": "orin-nx-8gb", "engine": {"dla_core": 1, "max_batch": 1}})
    assert "engine.dla_core: orin-nx-8gb has 1 DLA core(s) (got dla_core 1)" in msg
    assert "static shapes" in refused({"target": "agx-orin-64gb", "engine": {"dla_core": 0}})
    msg = refused({"target": "agx-orin-64gb", "quantize": {"precision": "int8-weight-only"},
                   "engine": {"dla_core": 1, "max_batch": 1}})
    assert "DLA runs INT8 and FP16 only" in msg
    ok = validate_recipe({"target": "agx-orin-64gb", "quantize": {"precision": "int8"},
                          "engine": {"dla_core": 1, "max_batch": 1}})
    assert ok.engine.dla_core == 1


def test_2_4_sparsity_refused_on_cpu():
    msg = refused({"target": "cpu", "prune": {"method": "sparsity-2:4"}})
    assert msg.startswith("r.yaml: prune.method: sparsity-2:4")
    assert "no CPU speedup" in msg and "TensorRT" in msg


def test_engine_section_refused_on_cpu():
    msg = refused({"target": "cpu", "engine": {"build": True}})
    assert msg.startswith("r.yaml: engine: cpu runs ONNX Runtime, not TensorRT")


def test_engine_batches_must_be_ordered():
    msg = refused({"target": "x86-ada", "engine": {"min_batch": 4, "opt_batch": 2, "max_batch": 8}})
    assert "engine.opt_batch: needs min_batch <= opt_batch <= max_batch (got 4 <= 2 <= 8)" in msg


def test_verify_runtime_must_fit_the_target():
    assert "verify.runtime: trt cannot verify a model for cpu" in refused(
        {"target": "cpu", "verify": {"runtime": "trt"}})
    msg = refused({"target": "agx-orin-64gb", "verify": {"runtime": "ort-gpu"}})
    assert "verify.runtime: unknown runtime 'ort-gpu'" in msg and "ort-cuda" in msg
    msg = refused({"target": "agx-orin-64gb", "quantize": {"precision": "int4-weight-only"},
                   "verify": {"runtime": "ort-cpu"}})
    assert "TensorRT-only ops" in msg


def test_unknown_target_suggests_one():
    msg = refused({"target": "agx-orin-64"})
    assert msg.startswith("r.yaml: target: unknown target 'agx-orin-64'")
    with pytest.raises(VlaedgeError) as e:
        validate_recipe({"target": "agx-orin-64"})
    assert e.value.hint == "did you mean agx-orin-64gb?"


def test_overrides_apply_and_are_validated():
    path = next(p for p in RECIPES if p.name == "cpu-int8.yaml")
    recipe = load_recipe(path, ["quantize.num_calib_frames=64", "verify.threads=4"])
    assert recipe.quantize.num_calib_frames == 64 and recipe.verify.threads == 4
    with pytest.raises(VlaedgeError) as e:
        load_recipe(path, ["quantize.precision=fp8"])
    assert "quantize.precision: fp8 is not supported on cpu" in e.value.message
    with pytest.raises(VlaedgeError) as e:
        load_recipe(path, ["quantize.num_calib_frames"])
    assert "section.field=value" in e.value.message


def test_a_data_map_override_takes_an_input_name_with_dots():
    """LeRobot inputs are named like features (observation.state): --set data.map.INPUT=FEATURE keeps the
    dots of INPUT (the dataset error's own fix line suggests this form)."""
    path = next(p for p in RECIPES if p.name == "cpu-int8.yaml")
    recipe = load_recipe(path, ["data.map.observation.state=observation.joints",
                                "data.map.observation.images.top=observation.images.cam_high"])
    assert recipe.data.map == {"observation.state": "observation.joints",
                               "observation.images.top": "observation.images.cam_high"}


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(VlaedgeError) as e:
        load_recipe(tmp_path / "nope.yaml")
    assert e.value.message == f"recipe: {tmp_path / 'nope.yaml'} does not exist"
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: cpu\nquantize: [precision: int8\n")
    with pytest.raises(VlaedgeError) as e:
        load_recipe(bad)
    assert "is not valid YAML" in e.value.message and "\n" not in e.value.message
    (tmp_path / "list.yaml").write_text("- target: cpu\n")
    with pytest.raises(VlaedgeError) as e:
        load_recipe(tmp_path / "list.yaml")
    assert "must be a mapping of sections" in e.value.message


def test_the_docs_carry_the_current_recipe_reference():
    assert REFERENCE_PAGE == PAGE  # where `python -m vlaedge.recipe` writes
    page = PAGE.read_text()
    assert f"{REFERENCE_START}\n{recipe_reference()}\n{REFERENCE_END}" in page, (
        "docs/reference/recipes.md: the recipe reference is out of date; regenerate it with "
        "'python -m vlaedge.recipe' or 'make docs' (rewrites the block between the recipe-reference markers "
        "from vlaedge/recipe.py)")


def test_the_docs_list_every_shipped_recipe():
    recipes = PAGE.read_text().partition("## Shipped recipes")[2].partition(REFERENCE_START)[0]
    for path in RECIPES:
        assert f"| `{path.stem}` | `{load_recipe(path).target}` |" in recipes, (
            f"docs/reference/recipes.md: add {path.name} to the table under '## Shipped recipes'")


def test_every_recipe_field_has_a_meaning_in_pipeline_order():
    sections = dict(_sections(Recipe, ""))
    assert list(sections) == ["", "data", "load", "prune", "prune.recover", "quantize", "export", "engine",
                              "verify", "budgets", "budgets.targets.<name>", "executor"]
    for path, model in sections.items():
        for name, field in model.model_fields.items():
            assert field.description, f"{path or 'recipe'}.{name}: add Field(description=...)"
    reference = recipe_reference()
    assert "| `num_calib_frames` | int (>= 1) | `256` | calibration frames from the calibration split |" in (
        reference)
    assert "| `precision` | one of `int8`, `fp8`, `int8-weight-only`, `int4-weight-only` | required |" in (
        reference)
    assert "| `heads` | float (>= 0, < 1) | `0.0` |" in reference


def test_the_reference_helper_rewrites_only_its_block(tmp_path):
    page = tmp_path / "recipes.md"
    page.write_text(f"# x\n\n{REFERENCE_START}\nold\n{REFERENCE_END}\n\n## After\n")
    write_reference(page)
    block = f"{REFERENCE_START}\n{recipe_reference()}\n{REFERENCE_END}"
    assert page.read_text() == f"# x\n\n{block}\n\n## After\n"
    page.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no <!-- recipe-reference:start -->"):
        write_reference(page)
