"""Per-stage graphs (issue 23 item 3): a small vision / prefix / expert policy with a denoise loop exports one
ONNX per stage plus stages.json, quantizes per stage (cpu-int8), reports per-stage parity and end-to-end
drift, profiles per stage; a plan that does not match the module is one error line; the staged ONNX
runtime equals the single unrolled graph in FP32."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from torch import nn

from vlaedge.compress.export import export_onnx
from vlaedge.errors import VlaedgeError
from vlaedge.models import load_policy
from vlaedge.models.python import PythonPolicy, PythonPolicySpec
from vlaedge.recipe import ExportConfig, QuantizeConfig
from vlaedge.runtimes import open_runtime

STEPS = 4
VOCAB = ["block", "blue", "cyan", "grab", "green", "in", "move", "on", "pick", "place", "purple", "put",
         "red", "square", "the", "to", "up", "yellow"]


class Expert(nn.Module):
    """Velocity (B, T, A) of the noisy chunk x (B, T, A) at time t (B,) given the context (B, T, W)."""

    def __init__(self, width: int, action_dim: int):
        super().__init__()
        self.action_in, self.time_in = nn.Linear(action_dim, width), nn.Linear(1, width)
        self.context_in, self.mid = nn.Linear(width, width), nn.Linear(width, width)
        self.action_out = nn.Linear(width, action_dim)

    def forward(self, x, t, context):
        h = self.action_in(x) + self.time_in(t[:, None])[:, None] + self.context_in(context)
        return self.action_out(torch.tanh(self.mid(torch.relu(h))))


class TinyStaged(nn.Module):
    """vision (32x32 image -> 16 patches) -> prefix (patches, words, state -> context) -> expert x STEPS."""

    def __init__(self, width: int = 16, chunk: int = 2, steps: int = STEPS):
        super().__init__()
        self.patchify, self.vision_mlp = nn.Conv2d(3, width, 8, stride=8), nn.Linear(width, width)
        self.embed, self.state_in = nn.Embedding(24, width), nn.Linear(4, width)
        self.queries = nn.Parameter(torch.randn(1, chunk, width) * 0.5)
        self.mix = nn.Linear(width, width)
        self.action_head = Expert(width, 3)
        self.steps = steps

    def encode_image(self, image):
        p = self.patchify(image.float() / 127.5 - 1.0).flatten(2).transpose(1, 2)  # (B, 16, W)
        return p + self.vision_mlp(torch.relu(p))

    def encode_prefix(self, patches, instruction_ids, state):
        summary = patches.mean(1) + self.embed(instruction_ids).mean(1) + self.state_in(state)  # (B, W)
        return self.queries + self.mix(torch.tanh(summary))[:, None]  # (B, T, W)

    def forward(self, image, instruction_ids, state, noise):
        ctx, x = self.encode_prefix(self.encode_image(image), instruction_ids, state), noise
        for k in range(self.steps):
            x = x + self.action_head(x, torch.full((x.shape[0],), k / self.steps), ctx) / self.steps
        return x


def build(**kwargs) -> TinyStaged:
    torch.manual_seed(0)
    return TinyStaged(**kwargs)


STAGES = {"graphs": [
    {"name": "vision", "call": "encode_image", "inputs": ["image"], "outputs": ["patches"]},
    {"name": "prefix", "call": "encode_prefix", "inputs": ["patches", "instruction_ids", "state"],
     "outputs": ["context"]},
    {"name": "expert", "call": "action_head", "inputs": ["x", "t", "context"], "outputs": ["velocity"]}],
    "denoise": {"stage": "expert", "steps": STEPS, "init": "noise", "output": "actions"}}


def spec(stages: dict | None = STAGES, **kwargs) -> dict:
    return {"family": "python", "factory": "test_stages:build", "factory_kwargs": kwargs,
            "inputs": [{"name": "image", "shape": ["B", 3, 32, 32], "dtype": "uint8", "low": 0, "high": 255,
                        "source": "image"},
                       {"name": "instruction_ids", "shape": ["B", 8], "dtype": "int64", "low": 0, "high": 19,
                        "source": "instruction"},
                       {"name": "state", "shape": ["B", 4], "dtype": "float32", "source": "state"},
                       {"name": "noise", "shape": ["B", 2, 3], "dtype": "float32", "low": -4, "high": 4,
                        "source": "noise"}],
            "tokenizer": {"vocab": VOCAB}, "outputs": ["actions"],
            "actions": {"names": ["dx", "dy", "gripper"], "low": [-1, -1, -1], "high": [1, 1, 1],
                        "gripper_dims": [2], "chunk": 2, "normalised": True},
            **({"stages": stages} if stages else {})}


def checkpoint(folder, stages: dict | None = STAGES, **kwargs):
    """Writes the tiny policy as a python checkpoint (the spec's stages as given, even invalid ones)."""
    PythonPolicy(PythonPolicySpec.model_validate(spec(None, **kwargs)), module=build(**kwargs)).save(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **({"stages": stages} if stages else {})}))
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("staged") / "ckpt")


@pytest.fixture(scope="module")
def exports(ckpt, tmp_path_factory):
    """(policy, stages.json, the single unrolled graph) in FP32."""
    policy = load_policy(ckpt, trust_code=True)
    out = tmp_path_factory.mktemp("exports")
    staged = export_onnx(policy, out / "model.onnx", check_feeds=policy.example_inputs(8, seed=1))
    single = export_onnx(policy, out / "single.onnx", ExportConfig(stages=False))
    return policy, staged, single


def test_staged_export_equals_single_graph_in_fp32(exports):
    policy, staged, single = exports
    assert staged.path.endswith("stages.json") and single.path.endswith("single.onnx")
    plan = json.loads(Path(staged.path).read_text())
    assert [g["name"] for g in plan["graphs"]] == ["vision", "prefix", "expert"]
    assert plan["denoise"]["steps"] == STEPS and all(len(g["sha256"]) == 64 for g in plan["graphs"])
    expert = next(s for s in staged.stages if s["name"] == "expert")
    assert staged.nodes < single.nodes and expert["nodes"] * STEPS <= single.nodes  # not unrolled
    assert len(staged.parity) == 3 and all(p["cosine_min"] > 0.99999 for p in staged.parity)
    assert staged.check.max_abs < 1e-4
    feeds = policy.example_inputs(5, seed=7)
    a = open_runtime("ort-cpu", policy, staged.path).infer(feeds)["actions"]
    b = open_runtime("ort-cpu", policy, single.path).infer(feeds)["actions"]
    assert np.abs(a - b).max() < 1e-4


def test_the_staged_checks_say_they_run(exports, tmp_path, monkeypatch, capsys):
    from vlaedge import progress
    from vlaedge.compress.export_stages import check_staged

    monkeypatch.setattr(progress, "quiet", False)
    monkeypatch.setattr(progress, "SHOW_AFTER_SECONDS", 0.0)  # minutes at SmolVLA size; instant here
    policy, staged, _ = exports
    check_staged(policy, Path(staged.path), policy.example_inputs(4, seed=2), 2.5)
    err = capsys.readouterr().err
    for what in ("export: torch on 4 frames (the actions and every stage call)",
                 "export: ONNX Runtime (staged) vs torch on 4 frames",
                 "export: per-stage parity on 4 frames (stages fed torch's inputs)"):
        assert f"{what} ..." in err and f"{what}: done in " in err, err


def test_quantize_stages_keeps_the_stage_the_recipe_names(exports, tmp_path):
    from vlaedge.compress.quantize_stages import quantize_stages
    from vlaedge.targets import get_target

    policy, staged, _ = exports
    config = QuantizeConfig(precision="int8", num_calib_frames=16, stages={"expert": "fp32"})
    calib = [policy.example_inputs(16, seed=3)]
    source = Path(staged.path)  # the FP32 plan, named as compress names it
    shutil.copytree(source.with_name("stages"), tmp_path / "stages_fp32")
    (tmp_path / "stages_fp32.json").write_text(source.read_text().replace('"stages/', '"stages_fp32/'))
    result = quantize_stages(policy, config, calib, get_target("cpu"), tmp_path / "stages_fp32.json",
                             tmp_path / "model.onnx")
    assert result.stages["expert"] is None and result.stages["vision"] and result.stages["prefix"]
    plan = json.loads((tmp_path / "stages.json").read_text())
    assert {g["name"]: g["precision"] for g in plan["graphs"]} == {"vision": "int8", "prefix": "int8",
                                                                   "expert": "fp32"}
    assert result.stages["prefix"].calib_frames == 16
    out = open_runtime("ort-cpu", policy, tmp_path / "stages.json").infer(policy.example_inputs(2))
    assert np.isfinite(out["actions"]).all()


def test_a_stage_too_large_for_the_memory_is_refused_before_any_stage_is_quantized(exports, tmp_path,
                                                                                    monkeypatch):
    """ONNX Runtime's quantizer holds ~3x a graph: a stage whose 3x exceeds MemAvailable is refused in one
    line naming it and `quantize.stages` before anything is calibrated; kept in FP32 it is not checked."""
    import vlaedge.models.weights
    from vlaedge.compress.quantize_stages import quantize_stages
    from vlaedge.targets import get_target

    policy, staged, _ = exports
    source = Path(staged.path)
    shutil.copytree(source.with_name("stages"), tmp_path / "stages_fp32")
    (tmp_path / "stages_fp32.json").write_text(source.read_text().replace('"stages/', '"stages_fp32/'))
    sizes = {p.stem: p.stat().st_size for p in (tmp_path / "stages_fp32").glob("*.onnx")}
    big = max(sizes, key=sizes.get)  # room for 3x every stage but the largest
    assert sorted(sizes.values())[-1] > sorted(sizes.values())[-2], sizes
    room = 3 * sorted(sizes.values())[-2] + 1
    monkeypatch.setattr(vlaedge.models.weights, "available_memory", lambda: room)
    calib = [policy.example_inputs(16, seed=3)]
    args = (calib, get_target("cpu"), tmp_path / "stages_fp32.json", tmp_path / "model.onnx")
    with pytest.raises(VlaedgeError, match=f"quantize: stage {big} is .* is available") as info:
        quantize_stages(policy, QuantizeConfig(precision="int8", num_calib_frames=16), *args)
    assert f"--set quantize.stages.{big}=fp32" in info.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stages_fp32", "stages_fp32.json"]
    kept = QuantizeConfig(precision="int8", num_calib_frames=16, stages={big: "fp32"})
    result = quantize_stages(policy, kept, *args)
    assert result.stages[big] is None and all(r for n, r in result.stages.items() if n != big)


def test_a_stage_kept_in_fp32_keeps_its_data_file(ckpt, tmp_path):
    """A stage with external data (forced here; a pi0-size prefix has it at 10 GB) kept in FP32 is linked
    with its data file (the pi0-size compress stopped at "prefix.onnx.data, which is missing"), and plans
    opened together share its session (the pi0-size verify was OOM-killed holding two 10 GB prefixes)."""
    from vlaedge.compress.quantize_stages import quantize_stages
    from vlaedge.runtimes.staged import SharedStages
    from vlaedge.targets import get_target

    policy = load_policy(ckpt, trust_code=True)
    export_onnx(policy, tmp_path / "model_fp32.onnx", ExportConfig(external_data="always"))  # stages_fp32/
    assert (tmp_path / "stages_fp32" / "prefix.onnx.data").is_file()
    config = QuantizeConfig(precision="int8", num_calib_frames=16, stages={"prefix": "fp32"})
    quantize_stages(policy, config, [policy.example_inputs(16, seed=3)], get_target("cpu"),
                    tmp_path / "stages_fp32.json", tmp_path / "model.onnx")
    for name in ("prefix.onnx", "prefix.onnx.data"):  # one file on disk, not a 10 GB copy
        assert os.path.samefile(tmp_path / "stages" / name, tmp_path / "stages_fp32" / name)
    feeds = policy.example_inputs(2)
    shared = SharedStages()
    int8 = open_runtime("ort-cpu", policy, tmp_path / "stages.json", shared=shared)
    fp32 = open_runtime("ort-cpu", policy, tmp_path / "stages_fp32.json", shared=shared)
    assert int8.stages["prefix"] is fp32.stages["prefix"]
    assert int8.stages["vision"] is not fp32.stages["vision"]
    assert len(shared) == 5  # vision and expert twice, the prefix once
    out = int8.infer(feeds)
    assert np.isfinite(out["actions"]).all()
    alone = open_runtime("ort-cpu", policy, tmp_path / "stages.json").infer(feeds)
    assert np.array_equal(out["actions"], alone["actions"])
    int8.close()
    assert len(shared) == 3 and np.isfinite(fp32.infer(feeds)["actions"]).all()  # its prefix stays open
    fp32.close()
    assert len(shared) == 0
    data = tmp_path / "stages_fp32" / "prefix.onnx.data"  # a copy cut short: its size, not a hash, tells
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size - 4)
    with pytest.raises(VlaedgeError, match=r"stage 'prefix' is [\d,]+ bytes with its data file.*truncated"):
        open_runtime("ort-cpu", policy, tmp_path / "stages.json")
    data.unlink()
    with pytest.raises(VlaedgeError, match="prefix.onnx.data, which is missing"):
        open_runtime("ort-cpu", policy, tmp_path / "stages_fp32.json")


RECIPE = """target: cpu
quantize: {precision: int8, num_calib_frames: 32, keep_action_head: false}
export: {check_frames: 8}
verify: {eval_frames: 32, profile_runs: 20, profile_warmup: 2, closed_loop_episodes: 0, trace_episodes: 0}
"""


@pytest.fixture(scope="module")
def cpu_run(ckpt, tmp_path_factory):
    """`compress` of the tiny policy with RECIPE (cpu-int8), shared by the CLI tests below: (the run folder,
    what it logged)."""
    from vlaedge.pipeline import compress
    from vlaedge.recipe import load_recipe

    folder = tmp_path_factory.mktemp("cpu_run")
    (folder / "r.yaml").write_text(RECIPE)
    lines: list[str] = []
    result = compress(load_recipe(folder / "r.yaml"), folder / "run", ckpt, log=lines.append, trust_code=True)
    return result.out, "\n".join(lines + result.summaries)


@pytest.mark.parametrize("file", ["stages/expert.onnx", "stages.json"])
def test_the_gate_refuses_a_run_whose_stage_files_changed(cpu_run, tmp_path, capsys, monkeypatch, file):
    out, _ = cpu_run
    run = tmp_path / "run"
    shutil.copytree(out, run)  # the module's run stays intact for the other tests
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("max_drift_mean_pct: 100.0\n")
    code, text = run_cli(["gate", run, "--budgets", budgets], capsys, monkeypatch)
    assert code == 0, text
    with (run / file).open("ab") as f:
        f.write(b" ")
    code, text = run_cli(["gate", run, "--budgets", budgets], capsys, monkeypatch)
    assert code == 2 and f"{run / file} changed after the run wrote it" in text, text


def test_compress_cpu_int8_per_stage(cpu_run):
    out, text = cpu_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "stages.json"
    for name in ("stages.json", "stages_fp32.json", "stages/expert.onnx", "stages_fp32/vision.onnx"):
        assert name in manifest["outputs"], name
    parity = manifest["stages"]["export"]["parity"]
    assert [p["stage"] for p in parity] == ["vision", "prefix", "expert"]
    assert all(p["cosine_mean"] > 0.99 for p in parity) and parity[2]["calls"] == STEPS
    quantized = manifest["stages"]["quantize"]["stages"]
    assert set(quantized) == {"vision", "prefix", "expert"}
    # the denoise loop's stage dynamically (ranges per step), the others static (loop_stage_default)
    assert quantized["expert"]["algorithm"] == "dynamic" and quantized["vision"]["algorithm"] == "minmax"
    report = json.loads((out / "report.json").read_text())
    staged = report["profile"]["models"][0]["stages"]
    assert staged["stages"]["expert"]["calls"] == STEPS and staged["stages"]["vision"]["calls"] == 1
    assert report["drift"]["frames"] == 32 and "stages of" in text and "stage expert (velocity)" in text
    assert report["baseline"]["median_speedup"] is not None  # timed against stages_fp32.json


def test_verify_reports_and_gates_per_stage_parity(cpu_run):
    """Drift on the evaluation frames carries each INT8 stage's parity against the FP32 torch stage fed
    torch's inputs (report.json, report.md, report.html), and `min_stage_cosine` judges the worst stage;
    a single-graph report skips it."""
    from vlaedge.check.gate import gate
    from vlaedge.recipe import Budgets

    out, _ = cpu_run
    report = json.loads((out / "report.json").read_text())
    parity = report["drift"]["stages"]
    assert [(p["stage"], p["output"]) for p in parity] == [("vision", "patches"), ("prefix", "context"),
                                                          ("expert", "velocity")]
    assert parity[2]["calls"] == STEPS and parity[0]["calls"] == 1  # 32 frames: one batch
    assert all(0.99 < p["cosine_mean"] < 1.0 and 0 < p["rel_l2"] < 0.2 for p in parity), parity
    assert "Per-stage parity" in (out / "report.md").read_text()
    assert "Per-stage parity" in (out / "report.html").read_text()
    worst = min(parity, key=lambda p: p["cosine_mean"])
    passed = gate(report, Budgets(min_stage_cosine=0.99)).checks[0]
    failed = gate(report, Budgets(min_stage_cosine=1.0)).checks[0]
    assert passed.status == "pass" and failed.status == "fail" and failed.measured == worst["cosine_mean"]
    assert f"worst stage {worst['stage']}" in failed.detail
    assert report["drift"]["stage_parity_frames"] == 8  # verify.stage_parity_frames' default
    assert "on the first 8 evaluation frames" in (out / "report.md").read_text()
    tight = gate(report, Budgets(min_stage_cosine=0.99999))  # not "measured 1, allowed >= 1"
    assert "allowed >= 0.99999 (" in tight.summary() and "measured 1," not in tight.summary()
    single = {**report, "drift": {**report["drift"], "stages": [], "stage_parity_frames": None}}
    check = gate(single, Budgets(min_stage_cosine=0.99)).checks[0]
    assert check.status == "skipped" and "single-graph" in check.detail
    unmeasured = {**report, "drift": {**report["drift"], "stages": [], "stage_parity_frames": 0}}
    with pytest.raises(VlaedgeError, match="did not measure.*stage_parity_frames above 0"):
        gate(unmeasured, Budgets(min_stage_cosine=0.99))


def test_verify_without_per_stage_parity(cpu_run, ckpt, tmp_path, capsys, monkeypatch):
    out, _ = cpu_run
    recipe = tmp_path / "r.yaml"
    recipe.write_text("target: cpu\nverify: {eval_frames: 8, stage_parity_frames: 0, "
                      "closed_loop_episodes: 0, trace_episodes: 0}\n")
    code, text = run_cli(["verify", out, "-c", ckpt, "--trust-code", "--recipe", recipe, "--no-profile",
                          "--out", tmp_path / "v"], capsys, monkeypatch)
    assert code == 0, text[-2000:]
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert report["drift"]["frames"] == 8 and report["drift"]["stages"] == []
    assert report["drift"]["stage_parity_frames"] == 0
    assert "per-stage parity" not in text
    assert "Per-stage parity" not in (tmp_path / "v" / "report.md").read_text()


@pytest.mark.parametrize("bad, words", [
    ("encode_nothing", ["stage 'vision'", "encode_nothing"]),
    ("ctx", ["stage 'prefix'", "'ctx'"]),
])
def test_a_plan_that_does_not_match_the_module_is_one_line(tmp_path, capsys, monkeypatch, bad, words):
    stages = json.loads(json.dumps(STAGES))
    if bad == "encode_nothing":
        stages["graphs"][0]["call"] = bad
    else:
        stages["graphs"][1]["inputs"][0] = bad
    ckpt = checkpoint(tmp_path / "ckpt", stages)
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "run"
    code, text = run_cli(["compress", ckpt, "--recipe", tmp_path / "r.yaml", "--out", out, "--trust-code"],
                         capsys, monkeypatch)
    assert code == 2
    error = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and all(w in error[0] for w in words), text
    assert not out.exists()


def test_a_plan_whose_composition_is_not_forward_is_refused(tmp_path):
    stages = json.loads(json.dumps(STAGES))
    stages["denoise"]["steps"] = STEPS + 1
    policy = load_policy(checkpoint(tmp_path / "ckpt", stages), trust_code=True)
    with pytest.raises(VlaedgeError, match="differs from .*forward"):
        export_onnx(policy, tmp_path / "out" / "model.onnx")
    assert not (tmp_path / "out" / "stages.json").exists()


def test_bundle_builds_one_engine_per_stage_and_estimate_prices_the_loop(exports, tmp_path):
    from vlaedge.deploy.stage_plan import build_stage_engines, estimate_plan
    from vlaedge.recipe import EngineConfig

    _, staged, _ = exports
    result = build_stage_engines(staged.path, EngineConfig(build=False), "agx-orin-64gb", None, tmp_path)
    bundle = tmp_path / "engine"
    assert set(result.stages) == {"vision", "prefix", "expert"} and (bundle / "build.sh").is_file()
    plan = json.loads((bundle / "stages.json").read_text())
    assert all((bundle / g["file"]).is_file() and (bundle / g["file"]).with_name("build.sh").is_file()
               for g in plan["graphs"])
    priced = estimate_plan(staged.path, "agx-orin-64gb")
    expert = priced["stages"]["expert"]
    assert expert["calls"] == STEPS and expert["latency_ms"] == pytest.approx(STEPS * expert["per_call_ms"])
    assert priced["latency_ms"] == pytest.approx(sum(s["latency_ms"] for s in priced["stages"].values()))


def test_the_loop_stage_is_quantized_dynamically_on_cpu_unless_the_recipe_says(exports):
    from vlaedge.pipeline import fit_recipe
    from vlaedge.recipe import validate_recipe

    policy = exports[0]

    def fitted(target: str, **quantize):
        raw = {"target": target, "quantize": {"precision": "int8", **quantize}}
        return fit_recipe(validate_recipe(raw, "test"), policy).quantize.stages

    assert fitted("cpu") == {"expert": "dynamic"}
    assert fitted("cpu", mode="static") == {}  # said explicitly: every stage static
    assert fitted("cpu", stages={"expert": "fp32"}) == {"expert": "fp32"}
    assert fitted("agx-orin-64gb", algorithm="max") == {}  # ModelOpt: Q/DQ per stage, no runtime ranges
    with pytest.raises(VlaedgeError, match=r"quantize.stages.expert: dynamic .*ONNX Runtime"):
        fitted("agx-orin-64gb", algorithm="max", stages={"expert": "dynamic"})


def _counting_torch_runs(monkeypatch) -> dict[str, int]:
    """Counts torch stage calls by stage name (in `StageInputs`)."""
    import vlaedge.models.stages as stages_mod

    counts: dict[str, int] = {}
    real = stages_mod.torch_runner

    def runner(module):
        inner = real(module)

        def run(stage, feeds):
            counts[stage.name] = counts.get(stage.name, 0) + 1
            return inner(stage, feeds)
        return run

    monkeypatch.setattr(stages_mod, "torch_runner", runner)
    return counts


def test_stage_inputs_run_each_torch_stage_once_and_calibration_reads_them_back(exports, tmp_path,
                                                                                 monkeypatch):
    from vlaedge.compress.quantize_feeds import StageCalibration, StageInputs
    from vlaedge.models.stages import plan_of, record_torch

    policy = exports[0]
    plan = plan_of(policy)
    batches = [policy.example_inputs(4, seed=s) for s in (3, 4)]
    recorded = [record_torch(policy, plan, b)[1].calls for b in batches]
    counts = _counting_torch_runs(monkeypatch)
    every = {"vision", "prefix", "expert"}
    inputs = StageInputs(policy, plan, batches, tmp_path / "all", full=every).record()
    # per batch: vision and prefix once, the expert for all steps but the last (whose output nobody reads)
    assert counts == {"vision": 2, "prefix": 2, "expert": 2 * (STEPS - 1)}
    expert, vision = StageCalibration(inputs, "expert"), StageCalibration(inputs, "vision")
    assert len(expert) == 2 * STEPS and expert.frames == 8 * STEPS and len(vision) == 2
    # the context is written once per batch, not once per step
    assert len(list((tmp_path / "all").glob("expert.*.context.npy"))) == 2
    for i, feeds in enumerate(expert):  # what the calibrator reads, in order
        want = recorded[i // STEPS]["expert"][i % STEPS][0]
        for name in ("x", "t", "context"):
            np.testing.assert_array_equal(feeds[name], want[name])
    np.testing.assert_array_equal(vision[1]["image"], batches[1]["image"])

    counts.clear()  # static vision and prefix, dynamic expert: the expert's calls of the first batch only
    inputs = StageInputs(policy, plan, batches, tmp_path / "some", full={"vision", "prefix"},
                         first={"expert"}).record()
    assert counts == {"vision": 2, "prefix": 1, "expert": STEPS - 1}
    assert len(StageCalibration(inputs, "expert")) == STEPS


def test_profile_prints_each_stage_of_a_run_folder(cpu_run, tmp_path, capsys, monkeypatch):
    run, _ = cpu_run
    code, text = run_cli(["profile", run, "--runs", 5, "--warmup", 1, "--out", tmp_path / "p",
                          "--trust-code"], capsys, monkeypatch)
    assert code == 0, text[-2000:]
    line = next(x for x in text.splitlines() if x.startswith("stages of"))
    assert "vision" in line and "prefix" in line and "expert" in line and f"({STEPS}x" in line, line
    timed = json.loads((tmp_path / "p" / "profile.json").read_text())["models"][0]["stages"]
    stages = timed["stages"]
    assert stages["expert"]["calls"] == STEPS and stages["vision"]["calls"] == 1
    assert timed["runs"] == 5  # the timed runs themselves, no extra ones (7 s each for a 100-step sampler)


def test_estimate_and_engine_take_a_run_folder_or_its_stages_json(cpu_run, tmp_path, capsys, monkeypatch):
    run, _ = cpu_run
    for i, model in enumerate((run, run / "stages.json")):
        out = tmp_path / f"e{i}.json"  # estimate --json refuses an existing file
        code, text = run_cli(["estimate", model, "--target", "agx-orin-64gb", "--json", out],
                             capsys, monkeypatch)
        assert code == 0, text[-2000:]
        assert any(x.split()[:2] == ["expert", str(STEPS)] for x in text.splitlines()), text
        priced = json.loads(out.read_text())
        assert priced["stages"]["expert"]["calls"] == STEPS and "per inference" in text
    code, text = run_cli(["estimate", run, "--target", "agx-orin-64gb", "--input-shape", "nope=1x2"],
                         capsys, monkeypatch)
    assert code == 2 and "no stage takes 'nope'" in text
    for model in (run, run / "stages.json"):
        out = tmp_path / model.name
        code, text = run_cli(["engine", model, "--target", "agx-orin-64gb", "--out", out], capsys,
                             monkeypatch)
        assert code == 0, text[-2000:]
        plan = json.loads((out / "engine" / "stages.json").read_text())
        assert [g["name"] for g in plan["graphs"]] == ["vision", "prefix", "expert"]
        assert (out / "engine" / "build.sh").is_file() and "3 stage engines" in text


@pytest.mark.parametrize("tamper", ["swap", "edit"])
def test_a_tampered_stage_file_is_one_line(exports, ckpt, tmp_path, capsys, monkeypatch, tamper):
    _, staged, _ = exports
    source = Path(staged.path)
    shutil.copytree(source.with_name("stages"), tmp_path / "stages")
    shutil.copyfile(source, tmp_path / "stages.json")
    vision, prefix = tmp_path / "stages" / "vision.onnx", tmp_path / "stages" / "prefix.onnx"
    if tamper == "swap":
        vision.write_bytes(prefix.read_bytes())
    else:
        vision.write_bytes(vision.read_bytes() + b"\0")
    code, text = run_cli(["profile", tmp_path / "stages.json", "-c", ckpt, "--trust-code", "--runs", 2,
                          "--out", tmp_path / "p"], capsys, monkeypatch)
    assert code == 2
    error = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "stage 'vision'" in error[0] and "sha256" in error[0], text


ORIN_RECIPE = """target: agx-orin-64gb
quantize: {precision: int8, algorithm: max, num_calib_frames: 32}
export: {check_frames: 8}
engine: {build: false}
verify: {eval_frames: 32, profile_runs: 5, profile_warmup: 1, closed_loop_episodes: 0, trace_episodes: 0}
"""


def test_compress_orin_int8_per_stage_with_modelopt(ckpt, tmp_path, capsys, monkeypatch):
    """ModelOpt quantizes the module in place through its full forward (every stage, the expert at every
    step: one amax per quantizer, shared by the steps as in the unrolled graph), then each stage is
    exported with its Q/DQ nodes, checked per stage, and bundled one engine per stage."""
    pytest.importorskip("modelopt.torch.quantization")
    import onnx

    (tmp_path / "r.yaml").write_text(ORIN_RECIPE)
    out = tmp_path / "run"
    code, text = run_cli(["compress", ckpt, "--recipe", tmp_path / "r.yaml", "--out", out, "--trust-code"],
                         capsys, monkeypatch)
    assert code == 0, text[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "stages.json" and manifest["stages"]["quantize"]["path"] == "modelopt"
    plan = json.loads((out / "stages.json").read_text())
    for g in plan["graphs"]:
        ops = [n.op_type for n in onnx.load(str(out / g["file"]), load_external_data=False).graph.node]
        assert g["precision"] == "int8" and ops.count("QuantizeLinear") > 0, g["name"]
    parity = manifest["stages"]["export"]["parity"]
    assert [p["stage"] for p in parity] == ["vision", "prefix", "expert"] and parity[2]["calls"] == STEPS
    assert all(p["cosine_mean"] > 0.99 for p in parity), parity
    bundle = json.loads((out / "engine" / "stages.json").read_text())
    assert all((out / "engine" / g["file"]).is_file() for g in bundle["graphs"])
    assert json.loads((out / "report.json").read_text())["drift"]["frames"] == 32


def test_profile_of_a_stage_plan_without_its_checkpoint_is_one_line(cpu_run, capsys, monkeypatch, tmp_path):
    out, _ = cpu_run
    code, text = run_cli(["profile", out / "stages.json", "--out", tmp_path / "p"], capsys, monkeypatch)
    assert code == 2 and "a stage plan (stages.json) is run through its policy's stage calls" in text, text
    assert "Traceback" not in text and not (tmp_path / "p").exists()


def test_export_of_a_staged_policy_keeps_its_plan_without_force(ckpt, tmp_path, capsys, monkeypatch):
    args = ["export", ckpt, "--trust-code", "--out", tmp_path / "model.onnx"]
    code, text = run_cli(args, capsys, monkeypatch)
    assert code == 0 and (tmp_path / "stages.json").is_file(), text
    code, text = run_cli(args, capsys, monkeypatch)
    assert code == 2 and f"output: {tmp_path / 'stages.json'} already exists" in text, text
    code, text = run_cli([*args, "--force"], capsys, monkeypatch)
    assert code == 0, text
