"""The shipped recipes on any policy (issue 11, item 4): `quantize.keep_action_head` resolves through the
adapter, keep patterns and per-dimension budget names are checked before any stage runs, token agreement
is measured for every tokens head whatever its output is called, and the flow noise is found by `source`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import toy_policy
from cli_runner import run_cli
from test_python_adapter import SPEC

from vlaedge.check.drift import open_loop_drift
from vlaedge.check.gate import gate
from vlaedge.errors import VlaedgeError
from vlaedge.models.python import PythonPolicy, PythonPolicySpec
from vlaedge.pipeline import fit_recipe
from vlaedge.recipe import Budgets, load_recipe
from vlaedge.runtimes import open_runtime

NAMES = {**SPEC["actions"], "names": ["x", "y", "grip"]}  # not the reference's dx/dy


def _policy(**changes) -> PythonPolicy:
    return PythonPolicy(PythonPolicySpec.model_validate({**SPEC, "actions": NAMES, **changes}))


def test_action_head_declared_or_found():
    recipe = load_recipe("cpu-int8")
    assert recipe.quantize.keep_action_head and not recipe.quantize.keep
    found = fit_recipe(recipe, _policy())
    assert found.quantize.keep == ["head"]  # toy_policy's last layer with weights
    declared = fit_recipe(recipe, _policy(action_head=["conv*"]))
    assert declared.quantize.keep == ["conv*"]


def test_recipe_names_are_checked_before_work():
    policy = _policy()
    with pytest.raises(VlaedgeError, match=r"quantize.keep: pattern\(s\) 'action_head\*' match no module"):
        fit_recipe(load_recipe("cpu-int8", ["quantize.keep=[action_head*]"]), policy)
    with pytest.raises(VlaedgeError, match=r"per_dim_p99_pct names dimension\(s\) 'dx'.*x, y, grip"):
        fit_recipe(load_recipe("cpu-int8", ["budgets.max_drift_per_dim_p99_pct={dx: 20}"]), policy)


def test_shipped_recipe_on_a_user_policy(tmp_path, capsys, monkeypatch):
    ck = _policy().save(tmp_path / "ck")
    fast = ["--set", "verify.closed_loop_episodes=0", "--set", "verify.eval_frames=64",
            "--set", "quantize.num_calib_frames=64", "--set", "budgets.max_success_drop=null"]
    base = ["compress", ck, "--recipe", "cpu-int8", "--trust-code"]
    code, out = run_cli([*base, "--out", tmp_path / "run", *fast], capsys, monkeypatch)
    assert code in (0, 1), out  # ran to the gate (an untrained toy may miss the drift budgets)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    names = {c["name"] for c in report["gate"]["checks"]}
    assert "max_drift_continuous_p99_pct" in names
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["recipe"]["quantize"]["keep_action_head"] is True
    decisions = json.dumps(manifest["stages"]["quantize"])
    assert "kept by recipe pattern 'head'" in decisions

    bad = [*base, "--out", tmp_path / "refused", "--set", "budgets.max_drift_per_dim_pct={dx: 1}"]
    code, out = run_cli(bad, capsys, monkeypatch)
    assert code == 2 and "names dimension(s) 'dx'" in out and not (tmp_path / "refused").exists()


TOKENS = {
    **SPEC, "factory": "test_recipe_fit:build_tokens", "factory_kwargs": {}, "outputs": ["logits"],
    "actions": {**NAMES, "decode": "tokens", "normalised": False},
}


def build_tokens():
    """A tokens head whose output is called `logits`: [B, T=2, A=3, bins=16]."""
    import torch
    from torch import nn

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 8, stride=8)
            self.embed = nn.Embedding(16, 4)
            self.head = nn.Linear(4 * 16 + 4 + 4, 2 * 3 * 16)

        def forward(self, rgb, text, proprio):
            x = torch.cat([self.conv(rgb.float() / 255).flatten(1), self.embed(text).mean(1), proprio], 1)
            return self.head(x).view(-1, 2, 3, 16)

    torch.manual_seed(0)
    return Tokens()


def test_token_agreement_for_any_tokens_output(tmp_path, frames):
    policy = PythonPolicy(PythonPolicySpec.model_validate(TOKENS))
    assert policy.logits_output == "logits"
    path = tmp_path / "m.onnx"
    from vlaedge.compress.export import export_onnx
    from vlaedge.recipe import ExportConfig

    export_onnx(policy, path, ExportConfig())
    report, _, _ = open_loop_drift(policy, open_runtime("ort-cpu", policy, path), frames)
    assert report.token_agreement is not None and report.token_agreement > 0.99
    result = gate({"drift": report.to_dict(), "policy": {"gripper_dims": [2]}},
                  Budgets(min_token_agreement=0.98))
    check = next(c for c in result.checks if c.name == "min_token_agreement")
    assert check.status == "pass" and check.measured == pytest.approx(report.token_agreement)


def test_noise_found_by_source():
    spec = {**SPEC, "inputs": [*SPEC["inputs"], {"name": "eps", "shape": ["B", 2, 3], "source": "noise"}]}
    policy = PythonPolicy(PythonPolicySpec.model_validate(spec), module=toy_policy.build(width=8))
    assert policy.noise_inputs == ("eps",) and policy.has_noise_input
    eps = policy.example_inputs(batch=512)["eps"]
    assert abs(float(eps.std()) - 1.0) < 0.05 and eps.min() < -2  # standard normal, not uniform in [-1, 1]
    assert np.array_equal(eps, policy.example_inputs(batch=512)["eps"])  # seeded
