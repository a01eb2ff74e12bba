"""Memory of ONNX Runtime static quantization when a batch's activations are large against the weights
(issue 23: peak RSS <= 2.5x the FP32 bytes), measured in a fresh process on a 34 MB policy of 128 tokens.

ONNX Runtime's calibration graph ends every calibrated tensor in a ReduceMin / ReduceMax pair whose outputs
are graph outputs; in its default execution order those pairs ran after the whole forward, so every
calibrated activation of the batch was alive at once (the 123 M policy: +5.6 GB on one 32-frame batch of
224 px images; +0.66 GB in priority-based order, with byte-identical ranges and INT8 file)."""

import textwrap
from pathlib import Path

import pytest
import torch
from test_load_memory import run_measurement

from vlaedge.models.checkpoint import write_checkpoint

TOKENS, WIDTH, BLOCKS = 128, 1024, 8

POLICY_PY = textwrap.dedent('''
    import torch
    from torch import nn


    class Tokens(nn.Module):
        """`blocks` wide layers over (B, tokens, width): activations, not weights, dominate a batch."""

        def __init__(self, width=64, blocks=1):
            super().__init__()
            self.embed = nn.Embedding(32, width)
            self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
            self.head = nn.Linear(width, 6)

        def forward(self, ids):
            h = self.embed(ids)  # (B, T, W)
            for block in self.blocks:
                h = h + torch.tanh(block(h))
            return self.head(h.mean(1)).reshape(-1, 2, 3)


    def build(width=64, blocks=1):
        return Tokens(width, blocks)
''')

MEASURE = r'''
import json, sys
from pathlib import Path
import onnxruntime.quantization, torch  # noqa: F401  (code, not weights: before the baselines)
import vlaedge.compress.export, vlaedge.compress.quantize  # noqa: F401
from vlaedge.compress.export import export_onnx
from vlaedge.compress.quantize import quantize
from vlaedge.models import load_policy
from vlaedge.recipe import ExportConfig, QuantizeConfig
from vlaedge.targets import get_target

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

import vlaedge.compress.quantize_ort as quantize_ort
quantize_ort.SPLIT_RUNS_FROM_BYTES = 1 << 40  # each 32-frame batch in one run: the order alone bounds it
policy = load_policy(sys.argv[1], trust_code=True)
out = Path(sys.argv[2])
fp32 = sum(p.numel() * p.element_size() for p in policy.module.parameters())
export_onnx(policy, out / "model_fp32.onnx", ExportConfig(), policy.example_inputs(batch=4))
feeds = [policy.example_inputs(batch=32, seed=s) for s in (0, 1)]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
base = status("VmRSS:")
quantize(policy, QuantizeConfig(precision="int8", algorithm="minmax", num_calib_frames=64), feeds,
         get_target("cpu"), fp32_onnx=out / "model_fp32.onnx", out_onnx=out / "model.onnx")
batch = 32 * int(sys.argv[3]) * int(sys.argv[4]) * 4  # one (B, T, W) float32 activation
print(json.dumps({"fp32": fp32, "activation": batch, "peak": status("VmHWM:") - base}))
'''


def _checkpoint(path: Path) -> Path:
    spec = {
        "family": "python", "factory": "policy.py:build",
        "factory_kwargs": {"width": WIDTH, "blocks": BLOCKS},
        "inputs": [{"name": "ids", "shape": ["B", TOKENS], "dtype": "int64", "low": 0, "high": 31,
                    "source": "instruction"}],
        "tokenizer": {"vocab": ["pick", "up", "the", "cup"]},
        "outputs": ["actions"],
        "actions": {"names": ["x", "y", "grip"], "low": [-1, -1, 0], "high": [1, 1, 1], "chunk": 2},
    }
    source = path.parent / "tokens-policy.py"
    source.write_text(POLICY_PY)
    namespace: dict = {}
    exec(compile(POLICY_PY, str(source), "exec"), namespace)  # noqa: S102 (our own test source)
    torch.manual_seed(0)
    module = namespace["build"](WIDTH, BLOCKS)
    return write_checkpoint(path, spec, module.state_dict(), files={"policy.py": source})


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_ort_calibration_does_not_hold_every_activation_of_a_batch(tmp_path):
    got = run_measurement(MEASURE, str(_checkpoint(tmp_path / "tokens")), str(tmp_path), str(TOKENS),
                          str(WIDTH), timeout=300)
    fp32, peak = got["fp32"], got["peak"]
    assert fp32 > 30e6 and got["activation"] > 0.2 * fp32  # the batch's activations matter here
    # Each 32-frame batch in one run (the split into 8-frame runs turned off above), so the execution order
    # alone decides: priority-based 5.0-5.7x, ONNX Runtime's default order 9.5-9.8x (three runs each, with a
    # benchmark beside them). As compress runs it (8-frame runs) the peak is 2.0-2.4x on an idle machine and
    # up to 3.0x beside another job (ONNX Runtime's threads): issue 23's 2.5x is not met reliably.
    assert peak <= 7.0 * fp32, (f"quantize peak {peak / 1e6:.0f} MB above what the process held before, "
                                f"{peak / fp32:.2f}x the {fp32 / 1e6:.0f} MB of FP32 weights")
