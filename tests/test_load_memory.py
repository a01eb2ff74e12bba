"""Lean loading: the module is built on the meta device and the memory-mapped weights are assigned, so
`load_policy` holds the weights once; load dtypes; too-large checkpoints are refused before loading."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vlaedge.errors import VlaedgeError
from vlaedge.models import load_policy
from vlaedge.models import weights as weights_mod
from vlaedge.models.checkpoint import write_checkpoint
from vlaedge.models.python import PythonPolicy
from vlaedge.models.weights import weight_bytes

POLICY_PY = textwrap.dedent('''
    import torch
    from torch import nn


    class Wide(nn.Module):
        """Tied embedding/unembedding, a computed non-persistent buffer and `blocks` wide layers."""

        def __init__(self, width=64, blocks=1, vocab=32):
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
            self.unembed = nn.Linear(width, vocab, bias=False)
            self.unembed.weight = self.embed.weight
            self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, width, 2).float() / width),
                                 persistent=False)
            self.register_buffer("step", torch.zeros((), dtype=torch.int64))

        def forward(self, ids, state):
            h = self.embed(ids).mean(1) + state.sum(-1, keepdim=True) * self.inv_freq.repeat(2)
            for block in self.blocks:
                h = torch.tanh(block(h))
            return self.unembed(h)[:, :6].reshape(-1, 2, 3)


    def build(width=64, blocks=1, vocab=32):
        return Wide(width, blocks, vocab)
''')


def _write(path: Path, width: int = 64, blocks: int = 1, dtype=torch.float32) -> Path:
    """A python-family checkpoint of `Wide`, saved as Hugging Face does (the tied unembedding left out)."""
    spec = {
        "family": "python", "factory": "policy.py:build",
        "factory_kwargs": {"width": width, "blocks": blocks},
        "inputs": [{"name": "ids", "shape": ["B", 4], "dtype": "int64", "low": 0, "high": 31,
                    "source": "instruction"},
                   {"name": "state", "shape": ["B", 2], "dtype": "float32", "source": "state"}],
        "tokenizer": {"vocab": ["pick", "up", "the", "cup"]},
        "outputs": ["actions"],
        "actions": {"names": ["x", "y", "grip"], "low": [-1, -1, 0], "high": [1, 1, 1], "chunk": 2},
    }
    source = path.parent / f"{path.name}-policy.py"
    source.write_text(POLICY_PY)
    namespace: dict = {}
    exec(compile(POLICY_PY, str(source), "exec"), namespace)  # noqa: S102 (our own test source)
    torch.manual_seed(0)
    module = namespace["build"](width, blocks)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in module.state_dict().items()
             if k != "unembed.weight"}
    return write_checkpoint(path, spec, state, files={"policy.py": source})


MEASURE = textwrap.dedent('''
    import json, sys
    import torch
    import safetensors.torch, vlaedge.models.python  # noqa: F401 (code, not weights: before the baseline)
    from vlaedge.models import load_policy

    def status(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

    torch.isfinite(torch.ones(1 << 21)).all()  # torch's thread pool starts here, not in the measured load
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = status("VmHWM:")
    policy = load_policy(sys.argv[1], trust_code=True, dtype=sys.argv[2])
    print(json.dumps({"peak_added": status("VmHWM:") - base, "rss_added": status("VmRSS:") - base}))
''')


def run_measurement(script: str, *args: str, timeout: int = 120) -> dict:
    """Runs `script` in a fresh Python process (so nothing earlier in pytest counts) and returns the JSON
    object its last output line holds."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(checkpoint: Path, dtype: str = "float32") -> dict:
    return run_measurement(MEASURE, str(checkpoint), dtype)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_load_peak_rss_is_at_most_1_3x_the_weights(tmp_path):
    """80 MB of FP32 weights: the old loader peaked near 2x (random module + state dict), lean <= 1.3x."""
    checkpoint = _write(tmp_path / "wide", width=1024, blocks=20)
    weights = (checkpoint / "model.safetensors").stat().st_size
    assert weights > 60e6
    got = _measure(checkpoint)
    assert got["peak_added"] <= 1.3 * weights, (
        f"peak RSS added by load_policy {got['peak_added'] / 1e6:.1f} MB for {weights / 1e6:.1f} MB of "
        "weights")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_bfloat16_load_takes_half_the_memory(tmp_path):
    checkpoint = _write(tmp_path / "wide", width=1024, blocks=20)
    weights = (checkpoint / "model.safetensors").stat().st_size
    got = _measure(checkpoint, "bfloat16")
    assert got["peak_added"] <= 1.3 * weights / 2, f"{got['peak_added'] / 1e6:.1f} MB"


def test_lean_load_keeps_ties_buffers_and_values(tmp_path):
    checkpoint = _write(tmp_path / "wide")
    policy = load_policy(checkpoint, trust_code=True)
    m = policy.module
    assert m.unembed.weight is m.embed.weight  # one parameter, as the factory tied it
    assert not any(t.is_meta for t in [*m.parameters(), *m.buffers()])
    assert torch.equal(m.inv_freq, 1.0 / 10000 ** (torch.arange(0, 64, 2).float() / 64))  # computed, kept
    eager = policy.__class__(policy.spec, root=checkpoint)  # the old way: a full module, then a copy
    eager.module.load_state_dict(m.state_dict())
    feeds = policy.example_inputs(batch=3, seed=1)
    assert np.array_equal(policy.run_torch(feeds)["actions"], eager.run_torch(feeds)["actions"])


def test_half_precision_load(tmp_path):
    checkpoint = _write(tmp_path / "wide")
    half = load_policy(checkpoint, trust_code=True, dtype="bfloat16")
    assert {p.dtype for p in half.module.parameters()} == {torch.bfloat16}
    assert half.module.inv_freq.dtype == torch.bfloat16 and half.module.step.dtype == torch.int64
    assert half.module.unembed.weight is half.module.embed.weight
    out = half.run_torch(half.example_inputs(batch=2))["actions"]  # float32 feeds, bfloat16 module
    assert out.dtype == np.float32 and np.isfinite(out).all()
    stored_half = _write(tmp_path / "bf16", dtype=torch.bfloat16)
    auto = load_policy(stored_half, trust_code=True, dtype="auto")
    assert auto.module.embed.weight.dtype == torch.bfloat16
    assert load_policy(stored_half, trust_code=True).module.embed.weight.dtype == torch.float32


def test_unknown_dtype_is_refused(tmp_path):
    with pytest.raises(VlaedgeError, match="dtype 'fp16' is not a load dtype.*float16"):
        load_policy(_write(tmp_path / "wide"), trust_code=True, dtype="fp16")


def test_weight_bytes_counts_at_the_load_dtype(tmp_path):
    files = [_write(tmp_path / "wide") / "model.safetensors"]
    fp32, _ = weight_bytes(files, "float32")
    assert fp32 == pytest.approx(files[0].stat().st_size, rel=0.05)
    half, resolved = weight_bytes(files, "bfloat16")
    assert resolved == "bfloat16" and half < 0.6 * fp32  # the int64 buffer keeps its 8 bytes
    assert weight_bytes(files, "auto") == (fp32, "float32")


def test_too_large_for_memory_is_refused_before_loading(tmp_path, monkeypatch):
    checkpoint = _write(tmp_path / "wide", width=256, blocks=4)
    fp32, _ = weight_bytes([checkpoint / "model.safetensors"], "float32")
    built = []
    monkeypatch.setattr(weights_mod, "available_memory", lambda: int(fp32 * 0.6))
    stub = type("Built", (), {"to": lambda self, device: self})()  # what load_policy moves to its device
    monkeypatch.setattr(PythonPolicy, "from_checkpoint", lambda *a: built.append(a) or stub)
    with pytest.raises(VlaedgeError) as e:
        load_policy(checkpoint, trust_code=True)
    assert "GB as float32" in e.value.message and "GB of memory is available" in e.value.message
    assert "--dtype bfloat16" in e.value.hint and "per stage" in e.value.hint
    assert not built  # refused before the factory ran
    load_policy(checkpoint, trust_code=True, dtype="float16")  # the option the message names fits
    assert built and built[-1][-1] == "float16"
    monkeypatch.setattr(weights_mod, "available_memory", lambda: int(fp32 * 0.3))
    with pytest.raises(VlaedgeError) as e:
        load_policy(checkpoint, trust_code=True)
    assert "--dtype" not in e.value.hint and "more memory" in e.value.hint


ROOT = Path(__file__).resolve().parent.parent
FAST = ["--set", "quantize.num_calib_frames=64", "--set", "export.check_frames=8"]


def test_compress_records_the_load_dtype_and_casts_for_export(tmp_path, trained_checkpoint, capsys,
                                                              monkeypatch):
    from cli_runner import run_cli

    out = tmp_path / "run"
    code, text = run_cli(["compress", trained_checkpoint("chunk"), "--recipe", ROOT / "recipes/cpu-int8.yaml",
                          "--out", out, *FAST, "--set", "verify=null", "--set", "budgets=null",
                          "--dtype", "bfloat16"], capsys, monkeypatch)
    assert code == 0, text
    load = json.loads((out / "manifest.json").read_text())["load"]
    assert load["dtype"] == "bfloat16" and load["cast"].startswith("export: bfloat16 weights cast to float32")
    assert "export: bfloat16 weights cast to float32" in text
    code, text = run_cli(["compress", trained_checkpoint("chunk"), "--recipe", "cpu-pruned-int8", "--out",
                          tmp_path / "pruned", "--dtype", "float16"], capsys, monkeypatch)
    assert code == 2 and "pruning" in text and "--dtype float32" in text


def test_modelopt_quantizes_in_place_and_verify_gets_the_fp32_reference_back(tmp_path, trained_checkpoint,
                                                                            monkeypatch):
    """orin-int8 no longer deep-copies the policy: ModelOpt quantizes it in place, and the FP32 reference
    that verify compares against is reloaded from the checkpoint (memory-mapped) after the export."""
    pytest.importorskip("modelopt.torch.quantization")
    from vlaedge import pipeline
    from vlaedge.compress.quantize import modelopt_quantizers
    from vlaedge.recipe import load_recipe

    seen = {}
    monkeypatch.setattr(pipeline, "_run_verify", lambda od, recipe, target, inputs, log: seen.update(
        policy=inputs.policy) or None)
    checkpoint = Path(trained_checkpoint("chunk"))
    recipe = load_recipe("orin-int8", ["quantize.num_calib_frames=64", "export.check_frames=8",
                                       "budgets=null", "engine=null"])
    pipeline.compress(recipe, tmp_path / "run", checkpoint, log=lambda line: None)
    reference = seen["policy"].module
    assert not modelopt_quantizers(reference)
    fresh = load_policy(checkpoint).module.state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in reference.state_dict().items())
